//! vCPUs: boot register state and the run loop that dispatches exits to
//! the port-I/O and MMIO buses and counts them ([`super::exit_stats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use devices::bus::Bus;
use devices::legacy::{ExitReason, ExitSignal};

use super::cpuid;
use super::exit_stats::{ExitKind, ExitRegion, ExitStats};
use super::vm::{Vm, VmError};
use crate::layout;

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode, identity-mapped first GiB,
    /// `rsi` = zero page.
    Linux64 {
        /// 64-bit entry point (load address + 0x200).
        rip: u64,
    },
    /// PVH: 32-bit protected mode, paging off, `rbx` = `hvm_start_info`.
    Pvh {
        /// PVH entry point from the ELF note.
        rip: u64,
    },
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Local APIC LVT LINT0/LINT1 register offsets and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// Bumped by [`request_state_dump`]; each vCPU logs its registers when it
/// sees a new value.
static DUMP_REQUEST: AtomicU64 = AtomicU64::new(0);
/// Stack words logged with a state dump.
const DUMP_STACK_WORDS: u64 = 24;

/// The signal that kicks a vCPU thread out of KVM_RUN (its handler does
/// nothing; the interrupted ioctl returns EINTR).
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the (empty) handler of [`kick_signal`], without SA_RESTART so
/// that KVM_RUN returns to the run loop.
pub fn install_kick_handler() -> std::io::Result<()> {
    // SAFETY: `sa` is fully initialised (zeroed, then handler and an empty
    // mask set) before sigaction reads it; the handler is async-signal-safe
    // (it does nothing).
    let r = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(kick_signal(), &sa, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Asks every vCPU in `threads` to log its registers and the top of its
/// stack (for diagnosing a hung guest): bumps the request and kicks the
/// threads out of KVM_RUN.
pub fn request_state_dump(threads: &[libc::pthread_t]) {
    DUMP_REQUEST.fetch_add(1, Ordering::SeqCst);
    for &t in threads {
        // SAFETY: `t` belongs to a vCPU thread whose JoinHandle the VM
        // keeps (never joined), so the id stays valid; the signal has a
        // handler installed by `install_kick_handler`.
        unsafe { libc::pthread_kill(t, kick_signal()) };
    }
}

/// Kicks every vCPU thread in `threads` out of KVM_RUN (they return from
/// their run loop once an exit was requested).
pub fn kick(threads: &[libc::pthread_t]) {
    for &t in threads {
        // SAFETY: as in `request_state_dump`: the ids stay valid (the
        // handles are kept, never joined) and the signal has a handler.
        unsafe { libc::pthread_kill(t, kick_signal()) };
    }
}

/// Flat GDT: null, 64-bit code, data, TSS, 32-bit code.
const GDT: [u64; 5] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
    0x00cf_9b00_0000_ffff,
];

fn segment(index: usize) -> kvm_segment {
    let e = GDT[index];
    let base = ((e >> 16) & 0xff_ffff) | (((e >> 56) & 0xff) << 24);
    let limit = ((e & 0xffff) | (((e >> 48) & 0xf) << 16)) as u32;
    let g = ((e >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: (index * 8) as u16,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        padding: 0,
        unusable: if (e >> 47) & 1 == 1 { 0 } else { 1 },
    }
}

/// Errors configuring or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {0}: KVM {1} failed: {2}")]
    Kvm(u8, &'static str, kvm_ioctls::Error),
    /// Writing boot structures to guest memory failed.
    #[error("vCPU boot state: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// VM-level error.
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// One vCPU.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    exits: Arc<ExitStats>,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` with filtered CPUID, boot MSRs, FPU and LAPIC LINT setup.
    pub fn new(vm: &Vm, id: u8, count: u8) -> Result<Self, VcpuError> {
        let k = |what, e| VcpuError::Kvm(id, what, e);
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|e| k("CREATE_VCPU", e))?;
        let mut c = vm
            .kvm()
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| k("GET_SUPPORTED_CPUID", e))?;
        cpuid::filter(&mut c, id, count);
        fd.set_cpuid2(&c).map_err(|e| k("SET_CPUID2", e))?;

        let msr = |index, data| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        let entries = [
            msr(MSR_IA32_SYSENTER_CS, 0),
            msr(MSR_IA32_SYSENTER_ESP, 0),
            msr(MSR_IA32_SYSENTER_EIP, 0),
            msr(MSR_STAR, 0),
            msr(MSR_CSTAR, 0),
            msr(MSR_KERNEL_GS_BASE, 0),
            msr(MSR_SYSCALL_MASK, 0),
            msr(MSR_LSTAR, 0),
            msr(MSR_IA32_TSC, 0),
            msr(MSR_IA32_MISC_ENABLE, 1),          // fast strings
            msr(MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, default write-back
        ];
        let msrs = Msrs::from_entries(&entries)
            .map_err(|_| k("SET_MSRS", kvm_ioctls::Error::new(libc::EINVAL)))?;
        let n = fd.set_msrs(&msrs).map_err(|e| k("SET_MSRS", e))?;
        if n != entries.len() {
            tracing::warn!(
                vcpu = id,
                set = n,
                wanted = entries.len(),
                "KVM accepted only some boot MSRs"
            );
        }
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(|e| k("SET_FPU", e))?;

        let mut lapic = fd.get_lapic().map_err(|e| k("GET_LAPIC", e))?;
        for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let mut b = [0u8; 4];
            for (i, x) in b.iter_mut().enumerate() {
                *x = lapic.regs[off + i] as u8;
            }
            let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
            for (i, x) in v.to_le_bytes().iter().enumerate() {
                lapic.regs[off + i] = *x as _;
            }
        }
        fd.set_lapic(&lapic).map_err(|e| k("SET_LAPIC", e))?;
        Ok(Vcpu {
            id,
            fd,
            exits: Arc::new(ExitStats::new()),
        })
    }

    /// The KVM vCPU fd (for its binary stats file).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The exit counters the run loop of this vCPU writes.
    pub fn exit_stats(&self) -> Arc<ExitStats> {
        self.exits.clone()
    }

    /// Sets the boot vCPU's registers, segments and (for Linux64) page tables.
    pub fn setup_boot(&self, mem: &GuestMemoryMmap, entry: BootEntry) -> Result<(), VcpuError> {
        let k = |what, e| VcpuError::Kvm(self.id, what, e);
        for (i, e) in GDT.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(layout::BOOT_GDT_START + 8 * i as u64))?;
        }
        mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))?;
        let mut sregs = self.fd.get_sregs().map_err(|e| k("GET_SREGS", e))?;
        sregs.gdt.base = layout::BOOT_GDT_START;
        sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
        sregs.idt.base = layout::BOOT_IDT_START;
        sregs.idt.limit = 7;
        let (code, rip) = match entry {
            BootEntry::Linux64 { rip } => (segment(1), rip),
            BootEntry::Pvh { rip } => (segment(4), rip),
        };
        let data = segment(2);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = segment(3);
        let mut regs = kvm_regs {
            rflags: 0x2,
            rip,
            ..Default::default()
        };
        match entry {
            BootEntry::Linux64 { .. } => {
                // Identity map the first GiB with 2 MiB pages.
                mem.write_obj(layout::PDPTE_START | 0x3, GuestAddress(layout::PML4_START))?;
                mem.write_obj(layout::PDE_START | 0x3, GuestAddress(layout::PDPTE_START))?;
                for i in 0..512u64 {
                    mem.write_obj((i << 21) | 0x83, GuestAddress(layout::PDE_START + i * 8))?;
                }
                sregs.cr3 = layout::PML4_START;
                sregs.cr4 |= X86_CR4_PAE;
                sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
                sregs.efer |= EFER_LME | EFER_LMA;
                regs.rsp = layout::BOOT_STACK_POINTER;
                regs.rbp = layout::BOOT_STACK_POINTER;
                regs.rsi = layout::ZERO_PAGE_START;
            }
            BootEntry::Pvh { .. } => {
                sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
                sregs.cr4 = 0;
                sregs.efer = 0;
                regs.rbx = layout::PVH_INFO_START;
            }
        }
        self.fd.set_sregs(&sregs).map_err(|e| k("SET_SREGS", e))?;
        self.fd.set_regs(&regs).map_err(|e| k("SET_REGS", e))?;
        Ok(())
    }

    /// Runs the vCPU until the VM must stop; exits go to `pio`/`mmio`, and
    /// power-off, reset and fatal errors are reported through `exit`.
    pub fn run(
        mut self,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSignal>,
        mem: GuestMemoryMmap,
    ) {
        let id = self.id;
        let exits = self.exits.clone();
        let mut dumps_seen = DUMP_REQUEST.load(Ordering::SeqCst);
        loop {
            if exit.is_requested() {
                return;
            }
            let dumps = DUMP_REQUEST.load(Ordering::SeqCst);
            if dumps != dumps_seen {
                dumps_seen = dumps;
                self.log_state(&mem);
            }
            let run = self.fd.run();
            // One clock read pair per exit: handling time in the VMM.
            let t0 = Instant::now();
            let (kind, region, stop) = match run {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !pio.read(u64::from(port), data) {
                        exits.unclaimed(false);
                        data.fill(0xff);
                    }
                    (ExitKind::IoIn, Some(ExitRegion::of_port(port)), None)
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    if !pio.write(u64::from(port), data) {
                        exits.unclaimed(false);
                    }
                    (ExitKind::IoOut, Some(ExitRegion::of_port(port)), None)
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !mmio.read(addr, data) {
                        exits.unclaimed(true);
                        tracing::trace!(vcpu = id, addr, "read of unclaimed MMIO");
                        data.fill(0xff);
                    }
                    (ExitKind::MmioRead, Some(ExitRegion::of_mmio(addr)), None)
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !mmio.write(addr, data) {
                        exits.unclaimed(true);
                        tracing::trace!(vcpu = id, addr, "write to unclaimed MMIO");
                    }
                    (ExitKind::MmioWrite, Some(ExitRegion::of_mmio(addr)), None)
                }
                Ok(VcpuExit::Hlt) => (ExitKind::Hlt, None, None),
                Ok(VcpuExit::Intr) => (ExitKind::Intr, None, None),
                Ok(VcpuExit::IrqWindowOpen) => (ExitKind::IrqWindowOpen, None, None),
                Ok(VcpuExit::Shutdown) => {
                    tracing::info!(
                        vcpu = id,
                        "guest triple fault / shutdown: treating as reset"
                    );
                    (ExitKind::Shutdown, None, Some(ExitReason::Reset))
                }
                Ok(VcpuExit::SystemEvent(ty, _)) => {
                    let reason = match ty {
                        KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                        KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                        KVM_SYSTEM_EVENT_CRASH => ExitReason::Crash,
                        other => {
                            tracing::error!(vcpu = id, other, "unknown KVM system event");
                            ExitReason::Error
                        }
                    };
                    (ExitKind::SystemEvent, None, Some(reason))
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    tracing::error!(vcpu = id, reason, cpu, "KVM entry failure");
                    (ExitKind::Fatal, None, Some(ExitReason::Error))
                }
                Ok(VcpuExit::InternalError) => {
                    tracing::error!(vcpu = id, "KVM internal error (emulation failure)");
                    (ExitKind::Fatal, None, Some(ExitReason::Error))
                }
                Ok(other) => {
                    tracing::error!(vcpu = id, exit = ?other, "unexpected vCPU exit");
                    (ExitKind::Fatal, None, Some(ExitReason::Error))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    (ExitKind::Signal, None, None)
                }
                Err(e) => {
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    tracing::error!(vcpu = id, error = %e, rip = format_args!("{rip:#x}"), "KVM_RUN failed");
                    (ExitKind::Fatal, None, Some(ExitReason::Error))
                }
            };
            exits.record(kind, region, t0.elapsed().as_nanos() as u64);
            let Some(reason) = stop else { continue };
            exit.request(reason);
            return;
        }
    }

    /// Logs RIP, RSP, RFLAGS, CR3 and the top of the stack (guest-virtual
    /// addresses translated by KVM) in one line.
    fn log_state(&self, mem: &GuestMemoryMmap) {
        let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            tracing::warn!(vcpu = self.id, "vCPU state: registers unreadable");
            return;
        };
        let mut stack = String::new();
        for i in 0..DUMP_STACK_WORDS {
            let gva = r.rsp.wrapping_add(i * 8);
            let word = self
                .fd
                .translate_gva(gva)
                .ok()
                .filter(|t| t.valid != 0)
                .and_then(|t| mem.read_obj::<u64>(GuestAddress(t.physical_address)).ok());
            match word {
                Some(w) => stack.push_str(&format!(" {w:#x}")),
                None => break,
            }
        }
        tracing::warn!(
            vcpu = self.id,
            rip = format_args!("{:#x}", r.rip),
            rsp = format_args!("{:#x}", r.rsp),
            rflags = format_args!("{:#x}", r.rflags),
            interrupts = if r.rflags & 0x200 != 0 { "on" } else { "off" },
            cr3 = format_args!("{:#x}", s.cr3),
            stack = stack.trim_start(),
            "vCPU state"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_segments_decode() {
        let cs = segment(1);
        assert_eq!((cs.l, cs.db, cs.type_, cs.present, cs.s), (1, 0, 0xb, 1, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.selector, 8);
        let cs32 = segment(4);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let ds = segment(2);
        assert_eq!((ds.type_, ds.db, ds.selector), (3, 1, 16));
        let tr = segment(3);
        assert_eq!(tr.type_, 0xb);
        assert_eq!(segment(0).unusable, 1);
    }
}
