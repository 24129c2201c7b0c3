//! Tests of the VFIO wiring that need no VFIO device or KVM: BAR
//! placement, KVM slots of a (fake) assigned function through the PCI
//! root and their removal at teardown, the limits checks, progress and
//! the stats document.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use devices::interrupt::{MsiInterruptGroup, MsiMessage};
use devices::pci::root::IoEventRegistry;
use vfio_passthrough::dma::DmaMapper;
use vfio_passthrough::fake::{FakeDevice, FAKE_MMAP_BASE};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::layout;
use crate::vstate::vm::{KvmMmioSlots, SlotAllocator, UserMemory};

/// Records KVM_SET_USER_MEMORY_REGION calls as `(slot, gpa, size, hva)`.
#[derive(Default)]
struct Kvm(Mutex<Vec<(u32, u64, u64, u64)>>);

impl UserMemory for Kvm {
    unsafe fn set_region(&self, slot: u32, g: u64, size: u64, h: u64) -> io::Result<()> {
        self.0.lock().unwrap().push((slot, g, size, h));
        Ok(())
    }
}

struct Vectors(Vec<EventFd>);

impl MsiInterruptGroup for Vectors {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn update(&self, _index: usize, _msg: MsiMessage, _enabled: bool) -> io::Result<()> {
        Ok(())
    }
    fn trigger(&self, index: usize) -> io::Result<()> {
        self.0[index].write(1)
    }
    fn notifier(&self, index: usize) -> Option<&EventFd> {
        self.0.get(index)
    }
}

struct NoIoEvents;

impl IoEventRegistry for NoIoEvents {
    fn register(&self, _addr: u64, _fd: &EventFd) -> io::Result<()> {
        Ok(())
    }
    fn unregister(&self, _addr: u64, _fd: &EventFd) -> io::Result<()> {
        Ok(())
    }
}

fn windows() -> (AddressAllocator, AddressAllocator) {
    let l = crate::layout::MemoryLayout::new(512 << 20);
    (
        AddressAllocator::new(layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
        AddressAllocator::new(l.mmio64.start, l.mmio64.len),
    )
}

#[test]
fn bars_go_to_their_window_aligned_largest_first() {
    let fake = FakeDevice::new();
    let layout = VfioPciDevice::probe(&fake).unwrap();
    let (mut m32, mut m64) = windows();
    // A virtio device already took the first 16 KiB of the 64-bit window.
    let first64 = m64.allocate(0x4000, 0x4000).unwrap();
    let addrs = allocate_bars(&layout.bars, &mut m32, &mut m64).unwrap();
    // BAR4 (1 MiB) first, aligned past the virtio BAR; BAR2 after it.
    assert_eq!(
        addrs,
        vec![
            (0, 0xc000_0000),
            (2, first64 + 0x20_0000),
            (4, first64 + 0x10_0000)
        ]
    );
    for (i, a) in &addrs {
        let size = layout.bars.iter().find(|b| b.index == *i).unwrap().size;
        assert_eq!(a % size, 0, "BAR {i} aligned to its size");
    }
    // A 64-bit window too small for a BAR: one line naming it.
    let mut tiny = AddressAllocator::new(0x1_0000_0000, 0x8_0000);
    let e = allocate_bars(&layout.bars, &mut m32, &mut tiny).unwrap_err();
    assert_eq!(
        e,
        "BAR 4 (1M) does not fit in what is left of the guest's 64-bit PCI window: assign fewer or smaller devices"
    );
}

#[test]
fn sub_page_bars_get_a_page_of_their_own() {
    let mut fake = FakeDevice::new();
    fake.set_region(
        0,
        vfio_passthrough::region::RegionInfo {
            size: 0x100,
            readable: true,
            writable: true,
            mmap: false,
            sparse_mmap: vec![],
        },
    );
    let layout = VfioPciDevice::probe(&fake).unwrap();
    let (mut m32, mut m64) = windows();
    let a = allocate_bars(&layout.bars, &mut m32, &mut m64).unwrap();
    assert_eq!(a[0], (0, 0xc000_0000));
    assert_eq!(m32.allocate(0x100, 0x100), Some(0xc000_1000));
}

/// The fake NIC on a PCI root with KVM slots recorded: slots appear when
/// the guest enables memory decoding and go away when the device is
/// removed and dropped at teardown, before its mappings.
#[test]
fn bar_areas_are_kvm_slots_until_teardown() {
    let fake = Arc::new(FakeDevice::new());
    let layout = VfioPciDevice::probe(&*fake).unwrap();
    let (mut m32, mut m64) = windows();
    let addrs = allocate_bars(&layout.bars, &mut m32, &mut m64).unwrap();
    let kvm = Arc::new(Kvm::default());
    let mut numbers = SlotAllocator::new(32);
    numbers.reserve_below(1);
    let slots = Arc::new(KvmMmioSlots::new(
        kvm.clone(),
        Arc::new(Mutex::new(numbers)),
    ));
    let vectors = (0..layout.vectors())
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let dev = VfioPciDevice::new(
        fake.clone(),
        layout,
        &addrs,
        Arc::new(Vectors(vectors)),
        slots.clone(),
    )
    .unwrap();
    let mmio = Arc::new(devices::bus::Bus::new());
    let pci = Arc::new(Mutex::new(PciRoot::new(
        mmio.clone(),
        Arc::new(devices::bus::Bus::new()),
        Arc::new(NoIoEvents),
    )));
    let dev = Arc::new(Mutex::new(dev));
    let slot = pci.lock().unwrap().add_device(dev.clone()).unwrap();
    assert!(kvm.0.lock().unwrap().is_empty(), "no slot before decoding");
    // The guest sets Memory Space Enable in the command register.
    pci.lock()
        .unwrap()
        .config_write(0, slot, 0, 1, 0, &[0x02, 0x00]);
    let bar = |i: usize| addrs.iter().find(|(b, _)| *b == i).unwrap().1;
    let live: Vec<(u64, u64)> = slots.live().iter().map(|&(g, _, l)| (g, l)).collect();
    assert_eq!(
        live,
        {
            let mut v = vec![
                (bar(0), 0x2_0000),
                (bar(2) + 0x1000, 0x2000),
                (bar(4), 0x4_0000),
                (bar(4) + 0x8_0000, 0x8_0000),
            ];
            v.sort();
            v
        },
        "BAR0 whole, BAR2 without the MSI-X table and PBA pages, BAR4's sparse areas"
    );
    assert!(
        slots.live().iter().all(|&(_, s, _)| s >= 1),
        "after RAM's slot"
    );
    let hva = kvm.0.lock().unwrap()[0].3;
    assert!(hva >= FAKE_MMAP_BASE);
    // MMIO outside the slots still traps to the device.
    let mut b = [0u8; 4];
    assert!(mmio.read(bar(2), &mut b), "MSI-X table is emulated");
    // Teardown: off the root, then dropped: every slot deleted.
    let mut vfio = VfioDevices::default();
    vfio.pci = Some(pci.clone());
    vfio.devices.push(Assigned {
        address: "0000:03:00.0".parse().unwrap(),
        iommu: false,
        slot,
        dev: Some(dev),
    });
    vfio.shutdown();
    assert!(slots.live().is_empty());
    let deletes = kvm.0.lock().unwrap().iter().filter(|c| c.2 == 0).count();
    assert_eq!(deletes, 4);
    assert!(!mmio.read(bar(0), &mut b), "BARs left the bus");
    assert_eq!(pci.lock().unwrap().config_read(0, slot, 0, 0), u32::MAX);
    vfio.shutdown();
}

/// Counts VFIO DMA ioctls without doing them.
#[derive(Default)]
struct Mapper(AtomicU64);

impl DmaMapper for Mapper {
    unsafe fn map_dma(&self, _: u64, _: u64, _: u64, _: bool, _: bool) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn unmap_dma(&self, _iova: u64, len: u64) -> io::Result<u64> {
        Ok(len)
    }
}

#[test]
fn stats_report_the_dma_ioctls_per_container() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
    let backend = Arc::new(VfioBackend::new(Arc::new(Mapper::default()), Arc::new(mem)));
    backend.map_all_guest_ram(|_, _| {}).unwrap();
    backend
        .map(0x4000_0000, 0x1000, 0x1000, vm_memory::Permissions::Read)
        .unwrap();
    let s = VfioStats {
        devices: vec![("0000:03:00.0".into(), true, 4)],
        backends: vec![("viommu", backend.clone())],
    };
    let j = s.to_json();
    assert_eq!(j["devices"][0]["host"], "0000:03:00.0");
    assert_eq!(j["devices"][0]["guest_slot"], 4);
    assert_eq!(j["devices"][0]["iommu"], true);
    assert_eq!(j["dma"]["viommu"]["map"]["calls"], 2);
    assert_eq!(j["dma"]["viommu"]["map"]["bytes"], 0x20_1000);
    assert_eq!(j["dma"]["viommu"]["mapped_bytes"], 0x20_1000);
    assert!(j["dma"]["viommu"]["map"]["max_ns"].is_u64());
    backend.shutdown().unwrap();
    let j = s.to_json();
    assert_eq!(j["dma"]["viommu"]["unmap"]["calls"], 1);
    assert_eq!(j["dma"]["viommu"]["mapped_bytes"], 0);
}

#[test]
fn limits_and_groups_fail_in_one_line() {
    assert!(has_ipc_lock("Name:\tiovmm\nCapEff:\t000001ffffffffff\n"));
    assert!(!has_ipc_lock("CapEff:\t0000000000000000\n"));
    assert!(!has_ipc_lock(
        "CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n"
    ));
    assert!(has_ipc_lock("CapEff:\t0000000000004000\n"));
    assert_eq!(memlock_problem(libc::RLIM_INFINITY, 1 << 40), None);
    assert_eq!(memlock_problem(1 << 30, 1 << 30), None);
    let p = memlock_problem(8 << 20, 2 << 30).unwrap();
    assert_eq!(
        p,
        "the locked-memory limit (8M) is below the 2G of guest RAM VFIO must pin for DMA: run iovmm as root, or raise it (ulimit -l unlimited, LimitMEMLOCK=infinity)"
    );
    let dev = |bdf: &str, group| {
        let address: PciAddress = bdf.parse().unwrap();
        HostDevice {
            address,
            sysfs_path: format!("/sys/bus/pci/devices/{address}").into(),
            group,
            group_members: vec![],
        }
    };
    let cfg = |bdf: &str, iommu| VfioConfig {
        address: bdf.parse().unwrap(),
        iommu,
    };
    let same_policy = [
        (cfg("03:00.0", false), dev("03:00.0", 7)),
        (cfg("03:00.1", false), dev("03:00.1", 7)),
        (cfg("04:00.0", true), dev("04:00.0", 8)),
    ];
    assert!(check_groups(&same_policy).is_ok());
    let mixed = [
        (cfg("03:00.0", true), dev("03:00.0", 7)),
        (cfg("03:00.1", false), dev("03:00.1", 7)),
    ];
    let e = check_groups(&mixed).unwrap_err();
    assert!(e.is_user_error());
    assert_eq!(
        e.to_string(),
        "vfio 0000:03:00.0: it shares IOMMU group 7 with 0000:03:00.1, but only one of them is behind the virtual IOMMU: a group has one DMA address space; set iommu=off on both"
    );
}

#[test]
fn probe_problems_are_user_errors_and_bugs_are_not() {
    let a: PciAddress = "0000:03:00.0".parse().unwrap();
    let e = probe_error(a, AssignedError::NoInterrupts);
    assert!(e.is_user_error());
    assert!(e
        .to_string()
        .starts_with("vfio 0000:03:00.0: the device offers neither MSI nor MSI-X"));
    assert!(!probe_error(a, AssignedError::MissingBarAddress(2)).is_user_error());
    let mut fake = FakeDevice::new();
    fake.edit_config(|c| c[0x0e] = 0x01);
    let e = probe_error(a, VfioPciDevice::probe(&fake).unwrap_err());
    assert!(e.to_string().contains("not an endpoint"), "{e}");
}

#[test]
fn progress_every_ten_percent() {
    let mut p = Progress::default();
    let total = 100 << 30;
    let seen: Vec<u64> = (1..=100).filter_map(|g| p.step(g << 30, total)).collect();
    assert_eq!(seen, vec![1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    let mut p = Progress::default();
    assert_eq!(p.step(512 << 20, 512 << 20), Some(100), "one chunk");
    assert_eq!(Progress::default().step(0, 0), Some(0));
}
