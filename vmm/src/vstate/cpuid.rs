//! CPUID for guest vCPUs: KVM's supported set, with the topology, APIC IDs,
//! hypervisor bit and KVM paravirtual leaves made consistent.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// CPUID.1:ECX hypervisor-present bit.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX HTT (more than one logical processor per package).
const EDX_HTT: u32 = 1 << 28;
/// KVM_CPUID_FEATURES leaf.
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// KVM_FEATURE_NOP_IO_DELAY: the guest skips port 0x80 I/O delays.
const KVM_FEATURE_NOP_IO_DELAY: u32 = 1 << 1;
/// KVM_HINTS_REALTIME (EDX of the features leaf): never promised by iovmm,
/// as vCPUs are not pinned to dedicated cores.
const KVM_HINTS_REALTIME: u32 = 1 << 0;
/// KVM PV features iovmm does not offer, the same set QEMU leaves off by
/// default: PV_UNHALT (7), PV_TLB_FLUSH (9), PV_SEND_IPI (11),
/// POLL_CONTROL (12), PV_SCHED_YIELD (13). They change how the guest
/// flushes remote TLBs and waits for other vCPUs; plain IPIs are what both
/// VMMs are compared on.
const KVM_FEATURES_HIDDEN: u32 = (1 << 7) | (1 << 9) | (1 << 11) | (1 << 12) | (1 << 13);

/// Number of bits needed to number `n` items (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts `cpuid` (KVM's supported set) for vCPU `id` of `count` vCPUs.
/// Topology: one package, one core per vCPU, one thread per core.
pub fn filter(cpuid: &mut CpuId, id: u8, count: u8) {
    let id = u32::from(id);
    let count = u32::from(count.max(1));
    let core_bits = bits_for(count);
    for e in cpuid.as_mut_slice().iter_mut() {
        filter_entry(e, id, count, core_bits);
    }
}

fn filter_entry(e: &mut kvm_cpuid_entry2, id: u32, count: u32, core_bits: u32) {
    match e.function {
        0x1 => {
            e.ecx |= ECX_HYPERVISOR;
            // EBX: [31:24] initial APIC ID, [23:16] logical processors per
            // package, [15:8] CLFLUSH line size (8 x 8 bytes), [7:0] brand.
            e.ebx = (id << 24) | ((1u32 << core_bits).max(count) << 16) | (8 << 8) | (e.ebx & 0xff);
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        0x4 => {
            // Deterministic cache parameters: cores per package in [31:26],
            // sharing in [25:14]; caches shared by one logical CPU except L3.
            let cache_level = (e.eax >> 5) & 0x7;
            let share = if cache_level >= 3 { count - 1 } else { 0 };
            e.eax = (e.eax & 0x3ff) | (share << 14) | (((1u32 << core_bits) - 1) << 26);
        }
        0xb | 0x1f => {
            // Extended topology: level 0 = SMT (1 thread), level 1 = core.
            e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = core_bits;
                    e.ebx = count;
                    e.ecx = (2 << 8) | 1;
                }
                n => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = n;
                }
            }
            e.edx = id;
        }
        0x8000_0008 => {
            // AMD: [7:0] NC = cores - 1, [15:12] APIC ID size.
            e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (count - 1);
        }
        0x8000_001e => {
            // AMD extended APIC ID / core / node: one thread per core.
            e.eax = id;
            e.ebx = id & 0xff;
            e.ecx = 0;
        }
        KVM_CPUID_FEATURES => {
            e.eax = (e.eax | KVM_FEATURE_NOP_IO_DELAY) & !KVM_FEATURES_HIDDEN;
            e.edx &= !KVM_HINTS_REALTIME;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn topology_and_apic_ids() {
        let mut c = CpuId::from_entries(&[
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0x8000_0008, 0),
            entry(KVM_CPUID_FEATURES, 0),
        ])
        .unwrap();
        filter(&mut c, 3, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(s[0].edx & EDX_HTT, 0);
        assert_eq!((s[1].ebx, s[1].edx), (1, 3));
        assert_eq!((s[2].eax, s[2].ebx, s[2].ecx >> 8), (2, 4, 2));
        assert_eq!(s[3].ecx & 0xff, 3);
        assert_eq!((s[3].ecx >> 12) & 0xf, 2);
        assert_ne!(s[4].eax & KVM_FEATURE_NOP_IO_DELAY, 0);
    }

    #[test]
    fn pv_features_qemu_leaves_off_are_hidden() {
        let mut e = kvm_cpuid_entry2 {
            function: KVM_CPUID_FEATURES,
            eax: u32::MAX,
            ..Default::default()
        };
        filter_entry(&mut e, KVM_CPUID_FEATURES, 0, 0);
        for bit in [7, 9, 11, 12, 13] {
            assert_eq!(e.eax & (1 << bit), 0, "bit {bit}");
        }
        assert_ne!(e.eax & (1 << 3), 0, "steal time stays");
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut c = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            edx: EDX_HTT,
            ..Default::default()
        }])
        .unwrap();
        filter(&mut c, 0, 1);
        assert_eq!(c.as_slice()[0].edx & EDX_HTT, 0);
        assert_eq!((c.as_slice()[0].ebx >> 16) & 0xff, 1);
    }

    #[test]
    fn bits() {
        assert_eq!([1, 2, 3, 4, 5, 16].map(bits_for), [0, 1, 2, 2, 3, 4]);
    }
}
