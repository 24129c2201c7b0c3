//! Tests of [`VfioPciDevice`] against [`FakeDevice`]: configuration-space
//! virtualization, BARs and slots, capabilities, MSI/MSI-X through the
//! seam, and hostile guest input.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::{BarKind, PciDevice};

use crate::device::{DeviceError, MmioSlots, VfioPciDevice};
use crate::fake::{FakeDevice, IrqCall, FAKE_MMAP_BASE};
use crate::irq::tests::TestGroup;
use crate::region::{IrqKind, RegionInfo, CONFIG_REGION};

const BAR0: u64 = 0xc000_0000;
const BAR2: u64 = 0x1_0000_0000;
const BAR4: u64 = 0x2_0000_0000;

/// Records slot calls as strings.
#[derive(Default)]
struct Slots {
    log: Mutex<Vec<String>>,
    fail: AtomicBool,
}

impl Slots {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.log.lock().unwrap())
    }
}

impl MmioSlots for Slots {
    fn map(&self, guest_addr: u64, size: u64, host_addr: u64) -> io::Result<()> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        let h = host_addr - FAKE_MMAP_BASE;
        self.log
            .lock()
            .unwrap()
            .push(format!("map {guest_addr:#x} {size:#x} {h:#x}"));
        Ok(())
    }
    fn unmap(&self, guest_addr: u64, size: u64) -> io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("unmap {guest_addr:#x} {size:#x}"));
        Ok(())
    }
}

struct Rig {
    fake: Arc<FakeDevice>,
    group: Arc<TestGroup>,
    slots: Arc<Slots>,
    dev: VfioPciDevice,
}

fn build_from(fake: FakeDevice) -> Result<Rig, DeviceError> {
    let fake = Arc::new(fake);
    let layout = VfioPciDevice::probe(&*fake)?;
    let group = TestGroup::new(layout.vectors());
    let slots = Arc::new(Slots::default());
    let dev = VfioPciDevice::new(
        fake.clone(),
        layout,
        &[(0, BAR0), (2, BAR2), (4, BAR4)],
        group.clone(),
        slots.clone(),
    )?;
    Ok(Rig {
        fake,
        group,
        slots,
        dev,
    })
}

fn rig() -> Rig {
    build_from(FakeDevice::new()).unwrap()
}

impl Rig {
    fn rd(&mut self, byte: usize) -> u32 {
        self.dev.read_config_register(byte / 4)
    }
    fn wr(&mut self, byte: usize, data: &[u8]) -> Option<devices::pci::BarMove> {
        self.dev
            .write_config_register(byte / 4, (byte % 4) as u64, data)
    }
    fn wr32(&mut self, byte: usize, v: u32) -> Option<devices::pci::BarMove> {
        self.wr(byte, &v.to_le_bytes())
    }
    fn wr16(&mut self, byte: usize, v: u16) {
        self.wr(byte, &v.to_le_bytes());
    }
    fn bar_rd32(&mut self, bar: usize, off: u64) -> u32 {
        let mut d = [0u8; 4];
        self.dev.read_bar(bar, off, &mut d);
        u32::from_le_bytes(d)
    }
    fn bar_wr32(&mut self, bar: usize, off: u64, v: u32) {
        self.dev.write_bar(bar, off, &v.to_le_bytes());
    }
}

#[test]
fn header_shows_the_host_identity_and_hides_the_rest() {
    let mut r = rig();
    assert_eq!(r.rd(0x00), 0x10d3_8086);
    assert_eq!(r.rd(0x08), 0x0200_0001);
    assert_eq!(r.rd(0x2c), 0xa01f_8086);
    assert_eq!(
        r.rd(0x04),
        0x0210_0000,
        "cap list + DEVSEL; command starts at 0"
    );
    assert_eq!(r.rd(0x0c), 0, "single function, no cache line/BIST");
    assert_eq!(r.rd(0x30), 0, "no expansion ROM");
    r.wr32(0x30, 0xffff_ffff);
    assert_eq!(r.rd(0x30), 0, "ROM sizing finds nothing");
    assert_eq!(r.rd(0x3c) >> 8, 0, "no INTx pin");
    r.wr(0x3c, &[0x0a]);
    assert_eq!(r.rd(0x3c), 0x0a, "interrupt line is scratch");
    // Identity is read-only.
    r.wr32(0x00, 0);
    r.wr32(0x08, 0);
    assert_eq!(r.rd(0x00), 0x10d3_8086);
    assert_eq!(r.rd(0x08), 0x0200_0001);
    assert!(
        r.fake.writes_to(CONFIG_REGION).is_empty(),
        "nothing reached the host"
    );
    // Extended configuration space is empty.
    assert_eq!(r.rd(0x100), 0);
    assert_eq!(r.rd(0xffc), 0);
}

#[test]
fn bars_size_like_hardware_and_io_bars_are_hidden() {
    let mut r = rig();
    assert_eq!(r.rd(0x10), BAR0 as u32);
    assert_eq!(r.rd(0x18), 0x4, "64-bit, low half of 0x1_0000_0000");
    assert_eq!(r.rd(0x1c), 1);
    assert_eq!(r.rd(0x20), 0xc, "64-bit prefetchable");
    assert_eq!(r.rd(0x24), 2);
    assert_eq!(r.rd(0x14), 0, "I/O BAR hidden");
    for bar in 0..6 {
        assert_eq!(
            r.wr32(0x10 + 4 * bar, 0xffff_ffff),
            None,
            "sizing is not a move"
        );
    }
    assert_eq!(r.rd(0x10), 0xfffe_0000);
    assert_eq!(r.rd(0x14), 0);
    assert_eq!(r.rd(0x18), 0xffff_c004);
    assert_eq!(r.rd(0x1c), 0xffff_ffff);
    assert_eq!(r.rd(0x20), 0xfff0_000c);
    assert_eq!(r.rd(0x24), 0xffff_ffff);
    let kinds: Vec<(usize, BarKind, u64)> = r
        .dev
        .bars()
        .iter()
        .map(|b| (b.index, b.kind, b.size))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, BarKind::Mmio32, 0x20000),
            (2, BarKind::Mmio64, 0x4000),
            (4, BarKind::Mmio64, 0x10_0000),
        ]
    );
    assert!(
        r.fake.writes_to(CONFIG_REGION).is_empty(),
        "BARs never reach the host"
    );
}

#[test]
fn memory_enable_and_bar_moves_drive_the_slots() {
    let mut r = rig();
    assert!(
        r.slots.take().is_empty(),
        "no slots while memory decoding is off"
    );
    r.wr16(0x04, 0x0002);
    let mut log = r.slots.take();
    log.sort();
    assert_eq!(
        log,
        vec![
            "map 0x100001000 0x2000 0x200001000",
            "map 0x200000000 0x40000 0x400000000",
            "map 0x200080000 0x80000 0x400080000",
            "map 0xc0000000 0x20000 0x0",
        ]
    );
    // The guest moves BAR0 while decoding is on: the slot follows.
    let m = r.wr32(0x10, 0xd000_0000).unwrap();
    assert_eq!((m.old.addr, m.new_addr), (BAR0, 0xd000_0000));
    assert_eq!(
        r.slots.take(),
        vec!["unmap 0xc0000000 0x20000", "map 0xd0000000 0x20000 0x0"]
    );
    // Decoding off: every slot goes; a move then maps nothing.
    r.wr16(0x04, 0);
    assert_eq!(r.slots.take().len(), 4);
    r.wr32(0x18, 0x0000_0004);
    r.wr32(0x1c, 0x3);
    assert!(r.slots.take().is_empty());
    r.wr16(0x04, 0x0002);
    let log = r.slots.take();
    assert!(
        log.contains(&"map 0x300001000 0x2000 0x200001000".to_string()),
        "{log:?}"
    );
    drop(r.dev);
    assert_eq!(r.slots.take().len(), 4, "drop removes every slot");
}

#[test]
fn command_memory_and_bus_master_reach_the_host() {
    let mut r = rig();
    r.wr16(0x04, 0x0406);
    let w = r.fake.writes_to(CONFIG_REGION);
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].offset, w[0].data.clone()), (4, vec![0x06, 0x00]));
    assert_eq!(r.rd(0x04) & 0xffff, 0x0406);
    r.wr(0x04, &[0x06]);
    assert_eq!(
        r.fake.writes_to(CONFIG_REGION).len(),
        1,
        "no change, no write"
    );
    r.wr(0x06, &[0xff, 0xff]);
    assert_eq!(r.rd(0x04) >> 16, 0x0210, "status writes are dropped");
}

#[test]
fn only_msi_msix_and_pcie_capabilities_are_visible() {
    let mut r = rig();
    let mut chain = Vec::new();
    let mut p = (r.rd(0x34) & 0xff) as usize;
    while p != 0 && chain.len() < 10 {
        let h = r.rd(p);
        chain.push((p, h & 0xff));
        p = ((h >> 8) & 0xff) as usize;
    }
    assert_eq!(chain, vec![(0x50, 0x05), (0x70, 0x10), (0xb0, 0x11)]);
    assert_eq!(r.rd(0x40), 0, "power management hidden");
    assert_eq!(r.rd(0x44), 0);
    assert_eq!(r.rd(0xc0), 0, "vendor capability hidden");
    assert_eq!(r.rd(0xc4), 0);
    r.wr32(0x44, 0x3);
    assert!(
        r.fake.writes_to(CONFIG_REGION).is_empty(),
        "hidden PM writes dropped"
    );
}

#[test]
fn pcie_capability_is_passed_through_except_its_next_pointer() {
    let mut r = rig();
    assert_eq!(r.rd(0x70), 0x0002_b010);
    assert_eq!(r.rd(0x74), 0x0000_8fc0);
    r.fake.poke(CONFIG_REGION, 0x7a, &[0x04, 0x00]);
    assert_eq!(r.rd(0x78), 0x0004_2810, "live device status");
    r.wr16(0x78, 0x5810);
    let w = r.fake.writes_to(CONFIG_REGION);
    assert_eq!((w[0].offset, w[0].data.clone()), (0x78, vec![0x10, 0x58]));
    assert_eq!(r.rd(0x70) >> 8 & 0xff, 0xb0);
}

#[test]
fn msix_enable_mask_and_delivery() {
    let mut r = rig();
    let cap = 0xb0;
    assert_eq!(r.rd(cap) >> 16, 0x0004, "5 vectors, disabled");
    assert_eq!(r.rd(cap + 4), 0x2, "table: BIR 2, offset 0");
    // Linux: enable with the function masked, program, unmask.
    r.wr(cap + 3, &[0xc0]);
    assert!(
        matches!(&r.fake.take_irq_calls()[..], [IrqCall::Enable(IrqKind::MsiX, f)] if f.len() == 5)
    );
    r.bar_wr32(2, 0x10, 0xfee0_0000);
    r.bar_wr32(2, 0x14, 0);
    r.bar_wr32(2, 0x18, 0x4021);
    r.wr(cap + 3, &[0x80]);
    assert_eq!(r.rd(cap) >> 16, 0x8004);
    assert!(r.fake.take_irq_calls().is_empty(), "vectors still masked");
    // The device fires vector 1 while masked; unmasking delivers it.
    assert!(r.fake.fire(IrqKind::MsiX, 1));
    r.bar_wr32(2, 0x1c, 0);
    assert_eq!(r.group.route(1).map(|m| m.data), Some(0x4021));
    assert_eq!(*r.group.triggered.lock().unwrap(), vec![1]);
    // Now the device's interrupt lands on the irqfd directly.
    assert!(r.fake.fire(IrqKind::MsiX, 1));
    assert_eq!(r.group.fds[1].read().unwrap(), 1);
    assert_eq!(r.bar_rd32(2, 0x18), 0x4021, "table reads are emulated");
    assert!(r.fake.reads_of(2).is_empty());
    assert!(
        r.fake.writes_to(2).is_empty(),
        "the table never reaches the device"
    );
    // Per-vector mask parks it again; disable unwires everything.
    r.bar_wr32(2, 0x1c, 1);
    assert_eq!(r.group.route(1), None);
    r.wr16(cap + 2, 0);
    assert_eq!(
        r.fake.take_irq_calls().last(),
        Some(&IrqCall::Disable(IrqKind::MsiX))
    );
}

#[test]
fn msix_pages_are_trapped_and_the_rest_of_the_bar_reaches_the_device() {
    let mut r = rig();
    let areas: Vec<(usize, u64, u64)> = r
        .dev
        .mmio_areas()
        .iter()
        .map(|a| (a.bar, a.offset, a.size))
        .collect();
    assert_eq!(
        areas,
        vec![
            (0, 0, 0x20000),
            (2, 0x1000, 0x2000),
            (4, 0, 0x40000),
            (4, 0x80000, 0x80000)
        ]
    );
    // In the table page but past the table: the device's register.
    r.fake.poke(2, 0x100, &0x1234_5678u32.to_le_bytes());
    assert_eq!(r.bar_rd32(2, 0x100), 0x1234_5678);
    r.bar_wr32(2, 0x3010, 7);
    assert_eq!(r.fake.writes_to(2)[0].offset, 0x3010);
    // PBA is emulated.
    r.fake.poke(2, 0x3000, &[0xff; 8]);
    assert_eq!(r.bar_rd32(2, 0x3000), 0);
    // Outside a BAR: all ones, nothing forwarded.
    assert_eq!(r.bar_rd32(0, 0x20000), 0xffff_ffff);
    assert_eq!(r.bar_rd32(5, 0), 0xffff_ffff);
    r.bar_wr32(1, 0, 1);
    assert_eq!(r.fake.writes_to(1).len(), 0, "hidden I/O BAR");
}

#[test]
fn msi_capability_programs_routes_through_config_writes() {
    let mut fake = FakeDevice::new();
    fake.set_irq_count(IrqKind::MsiX, 0);
    let mut r = build_from(fake).unwrap();
    let chain = (r.rd(0x34) & 0xff, r.rd(0x70) >> 8 & 0xff);
    assert_eq!(chain, (0x50, 0), "MSI-X hidden when VFIO offers no vectors");
    assert_eq!(r.rd(0x50) >> 16, 0x0184);
    r.wr32(0x54, 0xfee0_0000);
    r.wr32(0x58, 0);
    r.wr16(0x5c, 0x30);
    r.wr32(0x60, 0b01);
    r.wr16(0x52, 0x0021);
    assert_eq!(r.rd(0x50) >> 16, 0x01a5);
    assert_eq!(r.group.route(0), None, "vector 0 masked");
    assert_eq!(r.group.route(1).map(|m| m.data), Some(0x31));
    assert!(r.fake.fire(IrqKind::Msi, 1));
    assert_eq!(r.group.fds[1].read().unwrap(), 1);
    r.wr32(0x60, 0);
    assert_eq!(r.group.route(0).map(|m| m.data), Some(0x30));
}

#[test]
fn failed_mmaps_and_slots_leave_areas_trapped() {
    let fake = FakeDevice::new();
    fake.fail_mmap.store(true, Ordering::Relaxed);
    let mut r = build_from(fake).unwrap();
    assert!(r.dev.mmio_areas().is_empty());
    r.wr16(0x04, 0x0002);
    assert!(r.slots.take().is_empty());
    r.bar_wr32(0, 0x100, 5);
    assert_eq!(
        r.fake.writes_to(0)[0].offset,
        0x100,
        "trapped and forwarded"
    );
    let mut r = rig();
    r.slots.fail.store(true, Ordering::Relaxed);
    r.wr16(0x04, 0x0002);
    assert!(r.dev.mmio_areas().iter().all(|a| a.guest_addr.is_none()));
}

#[test]
fn construction_errors_name_the_problem() {
    let err = |f: FakeDevice| build_from(f).err().unwrap();
    let mut f = FakeDevice::new();
    f.edit_config(|c| c[0..4].fill(0xff));
    assert!(matches!(err(f), DeviceError::Unreadable));
    let mut f = FakeDevice::new();
    f.edit_config(|c| c[0x0e] = 0x01);
    assert!(matches!(err(f), DeviceError::NotEndpoint(1)));
    let mut f = FakeDevice::new();
    f.set_irq_count(IrqKind::Msi, 0);
    f.set_irq_count(IrqKind::MsiX, 0);
    assert!(err(f).to_string().contains("INTx is not supported"));
    let mut f = FakeDevice::new();
    f.edit_config(|c| c[0xb4] = 0x01);
    assert!(matches!(err(f), DeviceError::MsixBar(1)));
    let f = Arc::new(FakeDevice::new());
    let layout = VfioPciDevice::probe(&*f).unwrap();
    assert_eq!(layout.vectors(), 5);
    assert_eq!(layout.hidden_io_bars, vec![1]);
    let new = |addrs: &[(usize, u64)], n| {
        VfioPciDevice::new(
            f.clone(),
            layout.clone(),
            addrs,
            TestGroup::new(n),
            Arc::new(Slots::default()),
        )
        .err()
        .unwrap()
    };
    assert!(matches!(
        new(&[], 4),
        DeviceError::Vectors { needed: 5, got: 4 }
    ));
    assert!(matches!(
        new(&[(0, BAR0)], 5),
        DeviceError::MissingBarAddress(2)
    ));
    let e = new(&[(0, BAR0 + 0x1000), (2, BAR2), (4, BAR4)], 5);
    assert!(matches!(e, DeviceError::BadBarAddress(0, _)), "{e}");
}

#[test]
fn vectors_can_be_limited() {
    let f = Arc::new(FakeDevice::new());
    let mut layout = VfioPciDevice::probe(&*f).unwrap();
    assert_eq!((layout.msix_vectors, layout.msi_vectors), (5, 4));
    layout.limit_vectors(3);
    assert_eq!((layout.msix_vectors, layout.msi_vectors), (3, 2));
    let group = TestGroup::new(layout.vectors());
    let mut dev = VfioPciDevice::new(
        f.clone(),
        layout,
        &[(0, BAR0), (2, BAR2), (4, BAR4)],
        group,
        Arc::new(Slots::default()),
    )
    .unwrap();
    assert_eq!(dev.read_config_register(0xb0 / 4) >> 16, 2, "table size 3");
    assert_eq!(
        (dev.read_config_register(0x50 / 4) >> 17) & 7,
        1,
        "MSI: 2 vectors"
    );
    dev.write_config_register(0xb0 / 4, 3, &[0x80]);
    assert!(matches!(&f.take_irq_calls()[..], [IrqCall::Enable(IrqKind::MsiX, v)] if v.len() == 3));
}

#[test]
fn a_region_with_no_mmap_is_fully_trapped() {
    let mut f = FakeDevice::new();
    f.set_region(
        0,
        RegionInfo {
            size: 0x20000,
            readable: true,
            writable: true,
            mmap: false,
            sparse_mmap: vec![],
        },
    );
    let r = build_from(f).unwrap();
    assert!(r.dev.mmio_areas().iter().all(|a| a.bar != 0));
}

#[test]
fn hostile_guest_input_never_panics() {
    let mut r = rig();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let v = next();
        let len = (v % 9) as usize;
        let data: Vec<u8> = (0..len).map(|i| (v >> (8 * (i % 8))) as u8).collect();
        let reg = (next() % 1100) as usize;
        let off = next() % 6;
        match v % 5 {
            0 => {
                r.dev.write_config_register(reg, off, &data);
            }
            1 => {
                r.dev.read_config_register(reg);
            }
            2 => {
                // Mostly the MSI/MSI-X capabilities and the BARs.
                let byte =
                    [0x04, 0x10, 0x18, 0x50, 0x54, 0x5c, 0x60, 0xb0, 0xb2][(v >> 40) as usize % 9];
                r.dev
                    .write_config_register(byte / 4, (byte % 4) as u64 + off % 2, &data);
            }
            3 => {
                let bar = (next() % 8) as usize;
                let o = if v & 1 == 0 { next() % 0x5000 } else { next() };
                r.dev.write_bar(bar, o, &data);
            }
            _ => {
                let bar = (next() % 8) as usize;
                let o = if v & 1 == 0 { next() % 0x5000 } else { next() };
                let mut buf = data.clone();
                r.dev.read_bar(bar, o, &mut buf);
            }
        }
    }
    // Still a working device afterwards.
    assert_eq!(r.rd(0), 0x10d3_8086);
}
