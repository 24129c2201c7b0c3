//! iovmm's own count of the vCPU exits it handles: per exit reason the
//! number of exits and the time spent handling them in the VMM (from the
//! return of KVM_RUN to the end of the handler: one clock read pair per
//! exit), and for port I/O and MMIO the same split by the address range
//! the access hit.
//!
//! Each vCPU thread owns one [`ExitStats`] and is its only writer, so a
//! count is a relaxed load and store of an atomic (no locked instruction,
//! no lock, no allocation); the stats writer reads the counters of every
//! vCPU at a snapshot. Exits that KVM handles in the kernel (ioeventfd
//! notifications, in-kernel LAPIC/IOAPIC/PIT, halts while the vCPU waits)
//! never reach the VMM and are counted only by KVM's own statistics
//! ([`super::kvm_stats`]).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use crate::layout;

/// The exit reasons iovmm tells apart, in JSON order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// Port read (`KVM_EXIT_IO`, in).
    IoIn,
    /// Port write.
    IoOut,
    /// MMIO read (`KVM_EXIT_MMIO`).
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// `KVM_EXIT_HLT` (only without the in-kernel LAPIC's halt handling).
    Hlt,
    /// `KVM_EXIT_INTR`.
    Intr,
    /// `KVM_EXIT_IRQ_WINDOW_OPEN`.
    IrqWindowOpen,
    /// KVM_RUN returned EINTR or EAGAIN (a kick signal, a state dump).
    Signal,
    /// Triple fault (`KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// `KVM_EXIT_SYSTEM_EVENT` (power-off, reset, crash).
    SystemEvent,
    /// Entry failure, internal error, any other exit or KVM_RUN error
    /// (each stops the VM).
    Fatal,
}

impl ExitKind {
    /// Every kind, in the order of the counters.
    pub const ALL: [ExitKind; 11] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Intr,
        ExitKind::IrqWindowOpen,
        ExitKind::Signal,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::Fatal,
    ];

    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io_in",
            ExitKind::IoOut => "io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Hlt => "hlt",
            ExitKind::Intr => "intr",
            ExitKind::IrqWindowOpen => "irq_window_open",
            ExitKind::Signal => "signal",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system_event",
            ExitKind::Fatal => "fatal",
        }
    }
}

/// The address ranges port I/O and MMIO exits are split by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitRegion {
    /// Ports 0xcf8-0xcff: PCI configuration mechanism #1.
    PioPciConfig,
    /// COM1's eight ports.
    PioSerial,
    /// The PCI I/O window (I/O BARs).
    PioPciBar,
    /// Any other port (i8042, ACPI PM, unclaimed).
    PioOther,
    /// The PCI ECAM window (configuration space).
    MmioPciEcam,
    /// The 32-bit or 64-bit PCI MMIO windows: device BARs (virtio-pci
    /// common/device config, ISR, MSI-X; assigned BARs that trap). The
    /// virtio notification registers are ioeventfds and do not exit.
    MmioPciBar,
    /// Any other address (unclaimed).
    MmioOther,
}

impl ExitRegion {
    /// Every region, in the order of the counters.
    pub const ALL: [ExitRegion; 7] = [
        ExitRegion::PioPciConfig,
        ExitRegion::PioSerial,
        ExitRegion::PioPciBar,
        ExitRegion::PioOther,
        ExitRegion::MmioPciEcam,
        ExitRegion::MmioPciBar,
        ExitRegion::MmioOther,
    ];

    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            ExitRegion::PioPciConfig => "pio_pci_config",
            ExitRegion::PioSerial => "pio_serial",
            ExitRegion::PioPciBar => "pio_pci_bar",
            ExitRegion::PioOther => "pio_other",
            ExitRegion::MmioPciEcam => "mmio_pci_ecam",
            ExitRegion::MmioPciBar => "mmio_pci_bar",
            ExitRegion::MmioOther => "mmio_other",
        }
    }

    /// The range of port `port` (a few compares, no lookup).
    pub fn of_port(port: u16) -> Self {
        let p = u64::from(port);
        if (0xcf8..0xd00).contains(&p) {
            ExitRegion::PioPciConfig
        } else if (layout::COM1_PORT..layout::COM1_PORT + 8).contains(&p) {
            ExitRegion::PioSerial
        } else if (layout::PCI_IO_START..layout::PCI_IO_START + layout::PCI_IO_SIZE).contains(&p) {
            ExitRegion::PioPciBar
        } else {
            ExitRegion::PioOther
        }
    }

    /// The range of guest-physical MMIO address `addr`.
    pub fn of_mmio(addr: u64) -> Self {
        if (layout::PCI_ECAM_START..layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE).contains(&addr)
        {
            ExitRegion::MmioPciEcam
        } else if (layout::PCI_MMIO32_START..layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE)
            .contains(&addr)
            || addr >= layout::RAM_64BIT_START
        {
            // Above 4 GiB only RAM (which does not exit) and the 64-bit
            // PCI window live.
            ExitRegion::MmioPciBar
        } else {
            ExitRegion::MmioOther
        }
    }
}

/// A count and a handling time.
#[derive(Debug, Default)]
struct Cell {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Cell {
    /// Adds one exit of `ns` (single writer: load and store, no RMW).
    fn add(&self, ns: u64) {
        self.count.store(
            self.count.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        self.ns.store(
            self.ns.load(Ordering::Relaxed).wrapping_add(ns),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.ns.load(Ordering::Relaxed),
        )
    }
}

/// The exit counters of one vCPU (written by its thread only).
#[derive(Debug, Default)]
pub struct ExitStats {
    kinds: [Cell; ExitKind::ALL.len()],
    regions: [Cell; ExitRegion::ALL.len()],
    /// Port I/O and MMIO accesses no device claimed.
    unclaimed: [AtomicU64; 2],
}

impl ExitStats {
    /// Zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one exit of `kind` handled in `ns`, in `region` for port
    /// I/O and MMIO. Call only from the vCPU thread that owns the
    /// counters (a second writer would lose counts, never corrupt memory).
    pub fn record(&self, kind: ExitKind, region: Option<ExitRegion>, ns: u64) {
        self.kinds[kind as usize].add(ns);
        if let Some(r) = region {
            self.regions[r as usize].add(ns);
        }
    }

    /// Counts a port access (`mmio` false) or an MMIO access no device
    /// claimed. Same single-writer rule as [`Self::record`].
    pub fn unclaimed(&self, mmio: bool) {
        let c = &self.unclaimed[usize::from(mmio)];
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// Count and handling time of `kind`.
    pub fn get(&self, kind: ExitKind) -> (u64, u64) {
        self.kinds[kind as usize].get()
    }

    /// Count and handling time of `region`.
    pub fn region(&self, region: ExitRegion) -> (u64, u64) {
        self.regions[region as usize].get()
    }
}

fn cell_json((count, ns): (u64, u64)) -> Value {
    json!({"count": count, "ns": ns})
}

/// The `exits` key of the stats JSON, summed over the vCPUs in `vcpus`:
/// `total`, `by_reason` and `by_region` (`{count, ns}` each), and
/// `unclaimed` (`pio`, `mmio`).
pub fn to_json<'a>(vcpus: impl IntoIterator<Item = &'a ExitStats> + Clone) -> Value {
    let sum = |f: &dyn Fn(&ExitStats) -> (u64, u64)| {
        vcpus.clone().into_iter().fold((0u64, 0u64), |(c, n), s| {
            let (c2, n2) = f(s);
            (c.wrapping_add(c2), n.wrapping_add(n2))
        })
    };
    let mut by_reason = Map::new();
    let mut total = (0u64, 0u64);
    for k in ExitKind::ALL {
        let v = sum(&|s| s.get(k));
        total = (total.0.wrapping_add(v.0), total.1.wrapping_add(v.1));
        by_reason.insert(k.name().into(), cell_json(v));
    }
    let mut by_region = Map::new();
    for r in ExitRegion::ALL {
        by_region.insert(r.name().into(), cell_json(sum(&|s| s.region(r))));
    }
    let unclaimed = |i: usize| {
        vcpus
            .clone()
            .into_iter()
            .map(|s| s.unclaimed[i].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    };
    json!({
        "total": cell_json(total),
        "by_reason": by_reason,
        "by_region": by_region,
        "unclaimed": {"pio": unclaimed(0), "mmio": unclaimed(1)},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_by_address() {
        assert_eq!(ExitRegion::of_port(0xcf8), ExitRegion::PioPciConfig);
        assert_eq!(ExitRegion::of_port(0xcfc), ExitRegion::PioPciConfig);
        assert_eq!(ExitRegion::of_port(0x3fd), ExitRegion::PioSerial);
        assert_eq!(ExitRegion::of_port(0x1000), ExitRegion::PioPciBar);
        assert_eq!(ExitRegion::of_port(0x60), ExitRegion::PioOther);
        assert_eq!(ExitRegion::of_port(0xffff), ExitRegion::PioOther);
        assert_eq!(
            ExitRegion::of_mmio(layout::PCI_ECAM_START + 0x18),
            ExitRegion::MmioPciEcam
        );
        assert_eq!(
            ExitRegion::of_mmio(layout::PCI_MMIO32_START),
            ExitRegion::MmioPciBar
        );
        assert_eq!(ExitRegion::of_mmio(0x80_0000_0000), ExitRegion::MmioPciBar);
        assert_eq!(
            ExitRegion::of_mmio(layout::IOAPIC_START),
            ExitRegion::MmioOther
        );
        assert_eq!(ExitRegion::of_mmio(0), ExitRegion::MmioOther);
    }

    #[test]
    fn counts_and_times_sum_over_vcpus() {
        let a = ExitStats::new();
        let b = ExitStats::new();
        a.record(ExitKind::IoOut, Some(ExitRegion::PioSerial), 100);
        a.record(ExitKind::IoOut, Some(ExitRegion::PioSerial), 50);
        b.record(ExitKind::MmioWrite, Some(ExitRegion::MmioPciBar), 30);
        b.record(ExitKind::Signal, None, 5);
        b.unclaimed(true);
        assert_eq!(a.get(ExitKind::IoOut), (2, 150));
        let j = to_json([&a, &b]);
        assert_eq!(j["total"], json!({"count": 4, "ns": 185}));
        assert_eq!(j["by_reason"]["io_out"], json!({"count": 2, "ns": 150}));
        assert_eq!(j["by_reason"]["mmio_write"]["count"], 1);
        assert_eq!(j["by_reason"]["signal"]["ns"], 5);
        assert_eq!(j["by_reason"]["hlt"]["count"], 0, "every reason is present");
        assert_eq!(j["by_region"]["pio_serial"]["count"], 2);
        assert_eq!(j["by_region"]["mmio_pci_bar"]["ns"], 30);
        assert_eq!(j["by_region"]["mmio_pci_ecam"]["count"], 0);
        assert_eq!(j["unclaimed"], json!({"pio": 0, "mmio": 1}));
        assert_eq!(
            j["by_reason"].as_object().unwrap().len(),
            ExitKind::ALL.len()
        );
        let empty: [&ExitStats; 0] = [];
        assert_eq!(to_json(empty)["total"]["count"], 0);
    }

    #[test]
    fn kinds_and_regions_index_their_arrays() {
        for (i, k) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        for (i, r) in ExitRegion::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
