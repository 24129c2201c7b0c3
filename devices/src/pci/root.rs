//! The PCI root bus: host bridge at 00.0, configuration access through
//! ECAM and the legacy 0xCF8/0xCFC ports, and BAR placement on the MMIO
//! and port buses (including KVM ioeventfds for notification registers).

use std::io;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::config::{PciConfiguration, PciIds};
use super::{BarInfo, BarKind, BarMove, PciDevice};
use crate::bus::{Bus, BusDevice};

/// Registers eventfds that KVM signals on guest writes to an MMIO address,
/// without a VM exit to userspace.
pub trait IoEventRegistry: Send + Sync {
    /// Signal `fd` on any write to `addr`.
    fn register(&self, addr: u64, fd: &EventFd) -> io::Result<()>;
    /// Undo [`IoEventRegistry::register`].
    fn unregister(&self, addr: u64, fd: &EventFd) -> io::Result<()>;
}

/// Configuration registers of BAR0..BAR5.
const BAR_REGS: RangeInclusive<usize> = 4..=9;

/// Shared handle to a PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Errors adding devices.
#[derive(Debug, thiserror::Error)]
pub enum PciRootError {
    /// All 32 device slots are in use.
    #[error("no free PCI slot")]
    NoSlot,
    /// A BAR could not be placed on its bus.
    #[error("BAR {0} of device {1:02x}: {2}")]
    Bar(usize, u8, crate::bus::BusError),
    /// An ioeventfd could not be registered.
    #[error("ioeventfd: {0}")]
    IoEvent(io::Error),
}

fn lock(d: &SharedPciDevice) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// The host bridge (00.0): a bare header, class 06/00.
struct HostBridge(PciConfiguration);

impl PciDevice for HostBridge {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        self.0.read_reg(reg)
    }
    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        self.0.write_reg(reg, offset, data)
    }
    fn bars(&self) -> Vec<BarInfo> {
        Vec::new()
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// Routes bus accesses inside one BAR to its device.
struct BarWindow {
    dev: SharedPciDevice,
    bar: usize,
}

impl BusDevice for BarWindow {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.dev).read_bar(self.bar, offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        lock(&self.dev).write_bar(self.bar, offset, data);
    }
}

/// Bus 0 with its functions (function 0 of each slot only).
pub struct PciRoot {
    slots: Vec<Option<SharedPciDevice>>,
    mmio: Arc<Bus>,
    pio: Arc<Bus>,
    ioevents: Arc<dyn IoEventRegistry>,
    refused_moves: AtomicU64,
}

impl PciRoot {
    /// A root bus with the host bridge in slot 0.
    pub fn new(mmio: Arc<Bus>, pio: Arc<Bus>, ioevents: Arc<dyn IoEventRegistry>) -> Self {
        let bridge = HostBridge(PciConfiguration::new(PciIds {
            vendor: 0x1b36,
            device: 0x0008,
            class: (0x06, 0x00, 0x00),
            ..Default::default()
        }));
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; 32];
        slots[0] = Some(Arc::new(Mutex::new(bridge)));
        PciRoot {
            slots,
            mmio,
            pio,
            ioevents,
            refused_moves: AtomicU64::new(0),
        }
    }

    fn bus_for(&self, kind: BarKind) -> &Bus {
        match kind {
            BarKind::Io => &self.pio,
            _ => &self.mmio,
        }
    }

    /// The slot [`PciRoot::add_device`] will use next.
    pub fn next_slot(&self) -> Option<u8> {
        self.slots.iter().position(Option::is_none).map(|s| s as u8)
    }

    /// Puts `dev` in the first free slot, maps its BARs and registers its
    /// ioeventfds. Returns the slot (device number).
    pub fn add_device(&mut self, dev: SharedPciDevice) -> Result<u8, PciRootError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciRootError::NoSlot)? as u8;
        let bars = lock(&dev).bars();
        for b in &bars {
            let window = Arc::new(Mutex::new(BarWindow {
                dev: dev.clone(),
                bar: b.index,
            }));
            self.bus_for(b.kind)
                .insert(window, b.addr, b.size)
                .map_err(|e| PciRootError::Bar(b.index, slot, e))?;
        }
        {
            let d = lock(&dev);
            for (bar, off, fd) in d.ioeventfds() {
                if let Some(b) = bars.iter().find(|b| b.index == bar) {
                    self.ioevents
                        .register(b.addr + off, fd)
                        .map_err(PciRootError::IoEvent)?;
                }
            }
        }
        self.slots[usize::from(slot)] = Some(dev);
        Ok(slot)
    }

    /// Takes the device out of `slot` (never the host bridge): its BARs
    /// leave the buses and its ioeventfds are unregistered, so no guest
    /// access reaches it any more. Returns it, so that the caller can drop
    /// the last reference (the buses and the root otherwise keep it alive
    /// for the life of the process).
    pub fn remove_device(&mut self, slot: u8) -> Option<SharedPciDevice> {
        if slot == 0 {
            return None;
        }
        let dev = self.slots.get_mut(usize::from(slot))?.take()?;
        let d = lock(&dev);
        let bars = d.bars();
        for (bar, off, fd) in d.ioeventfds() {
            if let Some(b) = bars.iter().find(|b| b.index == bar) {
                if let Err(e) = self.ioevents.unregister(b.addr + off, fd) {
                    tracing::warn!("PCI: cannot unregister ioeventfd: {e}");
                }
            }
        }
        for b in &bars {
            if let Err(e) = self.bus_for(b.kind).remove(b.addr) {
                tracing::warn!("PCI: removing BAR {} of slot {slot}: {e}", b.index);
            }
        }
        drop(d);
        Some(dev)
    }

    /// Reads configuration register `reg` of 00:`dev`.`func`; absent
    /// functions read as all ones.
    pub fn config_read(&self, bus: u8, dev: u8, func: u8, reg: usize) -> u32 {
        match self.function(bus, dev, func) {
            Some(d) => lock(d).read_config_register(reg),
            None => u32::MAX,
        }
    }

    /// Writes configuration register `reg` of 00:`dev`.`func` and moves a
    /// BAR the write reprogrammed. A move the buses cannot follow (the new
    /// range overlaps another, or its ioeventfds cannot be registered) is
    /// refused as a whole: the register gets its old value back, so config
    /// space, bus and ioeventfds keep agreeing on the old address.
    pub fn config_write(&self, bus: u8, dev: u8, func: u8, reg: usize, offset: u64, data: &[u8]) {
        let Some(d) = self.function(bus, dev, func) else {
            return;
        };
        // The device stays locked until the bus agrees with it, so none
        // of its BAR accesses sees a half-done move.
        let mut guard = lock(d);
        let before = BAR_REGS
            .contains(&reg)
            .then(|| guard.read_config_register(reg));
        let Some(m) = guard.write_config_register(reg, offset, data) else {
            return;
        };
        if let Err(e) = self.move_bar(&*guard, m) {
            tracing::warn!(
                "PCI: guest moved BAR {} of slot {dev} from {:#x} to {:#x}: {e}; move refused",
                m.old.index,
                m.old.addr,
                m.new_addr
            );
            self.refused_moves.fetch_add(1, Ordering::Relaxed);
            if let Some(v) = before {
                // One write changes one dword of the BAR, so restoring that
                // dword restores the old address (the device follows: the
                // move back it reports is where the bus still is).
                let _ = guard.write_config_register(reg, 0, &v.to_le_bytes());
            }
        }
    }

    /// BAR moves refused because the buses could not follow them.
    pub fn refused_moves(&self) -> u64 {
        self.refused_moves.load(Ordering::Relaxed)
    }

    fn function(&self, bus: u8, dev: u8, func: u8) -> Option<&SharedPciDevice> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.as_ref()
    }

    /// Moves BAR `m` on its bus with its ioeventfds, all or nothing.
    fn move_bar(&self, d: &dyn PciDevice, m: BarMove) -> Result<(), String> {
        let fds: Vec<(u64, &EventFd)> = d
            .ioeventfds()
            .into_iter()
            .filter(|(bar, _, _)| *bar == m.old.index)
            .map(|(_, off, fd)| (off, fd))
            .collect();
        let bus = self.bus_for(m.old.kind);
        bus.relocate(m.old.addr, m.new_addr)
            .map_err(|e| e.to_string())?;
        for (i, (off, fd)) in fds.iter().enumerate() {
            if let Err(e) = self.ioevents.register(m.new_addr + off, fd) {
                for (off, fd) in &fds[..i] {
                    let _ = self.ioevents.unregister(m.new_addr + off, fd);
                }
                // Back where it was: the old range is free (it was ours).
                if let Err(e) = bus.relocate(m.new_addr, m.old.addr) {
                    tracing::error!("PCI: cannot move BAR {} back: {e}", m.old.index);
                }
                return Err(format!("ioeventfd at {:#x}: {e}", m.new_addr + off));
            }
        }
        for (off, fd) in &fds {
            if let Err(e) = self.ioevents.unregister(m.old.addr + off, fd) {
                tracing::warn!("PCI: cannot unregister ioeventfd: {e}");
            }
        }
        Ok(())
    }
}

/// Legacy configuration mechanism #1: address at 0xCF8, data at 0xCFC.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    /// Config ports for `root`; register at port 0xCF8 with length 8.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigIo { root, address: 0 }
    }

    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let a = self.address;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            ((a >> 2) & 0x3f) as usize,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let value = match offset {
            0..=3 => self.address,
            _ => match self.target() {
                Some((b, d, f, r)) => {
                    let root = self.root.lock().unwrap_or_else(|e| e.into_inner());
                    root.config_read(b, d, f, r)
                }
                None => u32::MAX,
            },
        };
        let shift = (offset % 4) as usize;
        let bytes = value.to_le_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            if let Some(b) = bytes.get(shift + i) {
                *out = *b;
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut w = [0u8; 4];
                w.copy_from_slice(data);
                self.address = u32::from_le_bytes(w);
            }
            4..=7 => {
                if let Some((b, d, f, r)) = self.target() {
                    let off = offset - 4;
                    if off as usize + data.len() <= 4 {
                        let root = self.root.lock().unwrap_or_else(|e| e.into_inner());
                        root.config_write(b, d, f, r, off, data);
                    }
                }
            }
            _ => {}
        }
    }
}

/// PCIe enhanced configuration access (ECAM) for bus 0.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    /// ECAM window for `root`; register at the MCFG base, 1 MiB for bus 0.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigMmio { root }
    }

    fn decode(offset: u64) -> (u8, u8, u8, usize, u64) {
        (
            ((offset >> 20) & 0xff) as u8,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 0x7) as u8,
            ((offset & 0xfff) >> 2) as usize,
            offset & 3,
        )
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let (b, d, f, r, off) = Self::decode(offset);
        if off as usize + data.len() > 4 {
            return;
        }
        let v = self
            .root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_read(b, d, f, r);
        let bytes = v.to_le_bytes();
        data.copy_from_slice(&bytes[off as usize..off as usize + data.len()]);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (b, d, f, r, off) = Self::decode(offset);
        if off as usize + data.len() > 4 {
            return;
        }
        self.root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_write(b, d, f, r, off, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records (un)registrations; `fail_at` makes registering there fail.
    #[derive(Default)]
    struct Events(Mutex<Vec<(bool, u64)>>, Mutex<Option<u64>>);
    impl IoEventRegistry for Events {
        fn register(&self, addr: u64, _fd: &EventFd) -> io::Result<()> {
            if *self.1.lock().unwrap() == Some(addr) {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            self.0.lock().unwrap().push((true, addr));
            Ok(())
        }
        fn unregister(&self, addr: u64, _fd: &EventFd) -> io::Result<()> {
            self.0.lock().unwrap().push((false, addr));
            Ok(())
        }
    }

    /// A function with one 4 KiB MMIO BAR that stores writes, and one
    /// ioeventfd at offset 0x10.
    struct Fake {
        cfg: PciConfiguration,
        mem: [u8; 64],
        evt: EventFd,
    }

    impl PciDevice for Fake {
        fn read_config_register(&mut self, reg: usize) -> u32 {
            self.cfg.read_reg(reg)
        }
        fn write_config_register(&mut self, reg: usize, o: u64, d: &[u8]) -> Option<BarMove> {
            self.cfg.write_reg(reg, o, d)
        }
        fn bars(&self) -> Vec<BarInfo> {
            self.cfg.bars()
        }
        fn read_bar(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.mem[o..o + data.len()]);
        }
        fn write_bar(&mut self, _bar: usize, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.mem[o..o + data.len()].copy_from_slice(data);
        }
        fn ioeventfds(&self) -> Vec<(usize, u64, &EventFd)> {
            vec![(0, 0x10, &self.evt)]
        }
    }

    fn fake(addr: u64, kind: BarKind) -> Arc<Mutex<Fake>> {
        let mut cfg = PciConfiguration::new(PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            ..Default::default()
        });
        cfg.add_bar(0, addr, 0x1000, kind).unwrap();
        Arc::new(Mutex::new(Fake {
            cfg,
            mem: [0; 64],
            evt: EventFd::new(0).unwrap(),
        }))
    }

    fn setup() -> (Arc<Mutex<PciRoot>>, Arc<Bus>, Arc<Events>) {
        let mmio = Arc::new(Bus::new());
        let ev = Arc::new(Events::default());
        let root = PciRoot::new(mmio.clone(), Arc::new(Bus::new()), ev.clone());
        let root = Arc::new(Mutex::new(root));
        let slot = root
            .lock()
            .unwrap()
            .add_device(fake(0xc000_0000, BarKind::Mmio32));
        assert_eq!(slot.unwrap(), 1);
        (root, mmio, ev)
    }

    /// The address BAR0 of slot `dev` holds in config space (both dwords).
    fn bar0(root: &Arc<Mutex<PciRoot>>, dev: u8) -> u64 {
        let r = root.lock().unwrap();
        let lo = r.config_read(0, dev, 0, 4);
        let hi = if lo & 0x6 == 0x4 {
            r.config_read(0, dev, 0, 5)
        } else {
            0
        };
        u64::from(hi) << 32 | u64::from(lo & !0xf)
    }

    /// Writes a byte through BAR0 at `addr` + 4 and reads it back, or
    /// `None` when nothing decodes there.
    fn probe(mmio: &Bus, addr: u64, v: u8) -> Option<u8> {
        if !mmio.write(addr + 4, &[v]) {
            return None;
        }
        let mut b = [0u8; 1];
        mmio.read(addr + 4, &mut b).then_some(b[0])
    }

    fn cf8(io: &mut PciConfigIo, dev: u32, reg: u32) -> u32 {
        io.write(0, 0, &(0x8000_0000 | dev << 11 | reg << 2).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(0, 4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn legacy_ports_and_ecam_see_the_same_functions() {
        let (root, _, _) = setup();
        let mut io = PciConfigIo::new(root.clone());
        assert_eq!(cf8(&mut io, 0, 0), 0x0008_1b36);
        assert_eq!(cf8(&mut io, 1, 0), 0x1042_1af4);
        assert_eq!(cf8(&mut io, 2, 0), u32::MAX);
        let mut ecam = PciConfigMmio::new(root);
        let mut d = [0u8; 2];
        ecam.read(0, 1 << 15 | 2, &mut d);
        assert_eq!(u16::from_le_bytes(d), 0x1042);
        let mut d = [0u8; 4];
        ecam.read(0, 1 << 15 | 1 << 12, &mut d);
        assert_eq!(d, [0xff; 4], "function 1 is absent");
        ecam.read(0, 1 << 20 | 1 << 15, &mut d);
        assert_eq!(d, [0xff; 4], "bus 1 is absent");
    }

    #[test]
    fn bars_are_reachable_and_follow_relocation_with_their_ioeventfds() {
        let (root, mmio, ev) = setup();
        assert!(mmio.write(0xc000_0004, &[7]));
        let mut b = [0u8; 1];
        assert!(mmio.read(0xc000_0004, &mut b));
        assert_eq!(b[0], 7);
        assert_eq!(*ev.0.lock().unwrap(), vec![(true, 0xc000_0010)]);
        let mut ecam = PciConfigMmio::new(root);
        ecam.write(0, 1 << 15 | 0x10, &0xd000_0000u32.to_le_bytes());
        assert!(!mmio.read(0xc000_0004, &mut b));
        assert!(mmio.read(0xd000_0004, &mut b));
        assert_eq!(b[0], 7);
        // Registered at the new address before leaving the old one, so a
        // failure can leave everything where it was.
        assert_eq!(
            ev.0.lock().unwrap()[1..],
            [(true, 0xd000_0010), (false, 0xc000_0010)]
        );
    }

    #[test]
    fn removed_devices_are_unreachable_and_released() {
        let (root, mmio, ev) = setup();
        let mut r = root.lock().unwrap();
        assert!(r.remove_device(0).is_none(), "the host bridge stays");
        assert!(r.remove_device(2).is_none());
        let dev = r.remove_device(1).unwrap();
        assert_eq!(Arc::strong_count(&dev), 1, "the buses let go of it");
        let mut b = [0u8; 1];
        assert!(!mmio.read(0xc000_0004, &mut b));
        assert_eq!(ev.0.lock().unwrap()[1..], [(false, 0xc000_0010)]);
        assert_eq!(r.config_read(0, 1, 0, 0), u32::MAX);
        assert_eq!(r.next_slot(), Some(1));
    }

    #[test]
    fn disabled_or_misaligned_accesses_are_harmless() {
        let (root, _, _) = setup();
        let mut io = PciConfigIo::new(root.clone());
        io.write(0, 0, &0x0000_0800u32.to_le_bytes());
        let mut d = [0u8; 4];
        io.read(0, 4, &mut d);
        assert_eq!(d, [0xff; 4], "enable bit clear");
        io.write(0, 6, &[1, 2, 3, 4]);
        let mut ecam = PciConfigMmio::new(root);
        ecam.write(0, 3, &[1, 2]);
        ecam.read(0, 2, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn a_move_onto_another_bar_is_refused_as_a_whole() {
        let (root, mmio, ev) = setup();
        let other = fake(0xc000_1000, BarKind::Mmio32);
        assert_eq!(root.lock().unwrap().add_device(other.clone()).unwrap(), 2);
        let mut ecam = PciConfigMmio::new(root.clone());
        let events = ev.0.lock().unwrap().clone();
        // A one-byte write of the second byte: 0xc000_0000 -> 0xc000_1000.
        ecam.write(0, 1 << 15 | 0x11, &[0x10]);
        assert_eq!(
            bar0(&root, 1),
            0xc000_0000,
            "config space keeps the old address"
        );
        assert_eq!(probe(&mmio, 0xc000_0000, 5), Some(5), "still decoded there");
        assert_eq!(probe(&mmio, 0xc000_1000, 6), Some(6));
        assert_eq!(
            other.lock().unwrap().mem[4],
            6,
            "the other BAR is untouched"
        );
        assert_eq!(*ev.0.lock().unwrap(), events, "ioeventfds untouched");
        assert_eq!(root.lock().unwrap().refused_moves(), 1);
        // A free address is fine.
        ecam.write(0, 1 << 15 | 0x10, &0xd000_0000u32.to_le_bytes());
        assert_eq!(bar0(&root, 1), 0xd000_0000);
        assert_eq!(probe(&mmio, 0xd000_0000, 5), Some(5));
        assert_eq!(probe(&mmio, 0xc000_0000, 5), None);
    }

    #[test]
    fn a_64_bit_bar_moves_by_dwords_and_a_refused_dword_keeps_the_whole_address() {
        let (root, mmio, ev) = setup();
        let a = fake(0x1_0000_0000, BarKind::Mmio64);
        let b = fake(0x2_0000_1000, BarKind::Mmio64);
        assert_eq!(root.lock().unwrap().add_device(a).unwrap(), 2);
        assert_eq!(root.lock().unwrap().add_device(b).unwrap(), 3);
        let mut ecam = PciConfigMmio::new(root.clone());
        let dev2 = 2 << 15;
        // High dword: 0x1_0000_0000 -> 0x2_0000_0000 (free).
        ecam.write(0, dev2 | 0x14, &2u32.to_le_bytes());
        assert_eq!(bar0(&root, 2), 0x2_0000_0000);
        assert_eq!(probe(&mmio, 0x2_0000_0000, 9), Some(9));
        assert_eq!(probe(&mmio, 0x1_0000_0000, 9), None);
        // Low dword onto the other 64-bit BAR: refused, both dwords kept.
        ecam.write(0, dev2 | 0x10, &0x1000u32.to_le_bytes());
        assert_eq!(bar0(&root, 2), 0x2_0000_0000);
        assert_eq!(probe(&mmio, 0x2_0000_0000, 3), Some(3));
        assert_eq!(bar0(&root, 3), 0x2_0000_1000);
        assert_eq!(root.lock().unwrap().refused_moves(), 1);
        // Then a free low dword moves it.
        ecam.write(0, dev2 | 0x10, &0x2000u32.to_le_bytes());
        assert_eq!(bar0(&root, 2), 0x2_0000_2000);
        assert_eq!(probe(&mmio, 0x2_0000_2000, 3), Some(3));
        let log = ev.0.lock().unwrap();
        assert_eq!(
            log[log.len() - 4..],
            [
                (true, 0x2_0000_0010),
                (false, 0x1_0000_0010),
                (true, 0x2_0000_2010),
                (false, 0x2_0000_0010)
            ]
        );
    }

    #[test]
    fn a_move_whose_ioeventfd_cannot_be_registered_is_refused() {
        let (root, mmio, ev) = setup();
        *ev.1.lock().unwrap() = Some(0xd000_0010);
        let mut ecam = PciConfigMmio::new(root.clone());
        ecam.write(0, 1 << 15 | 0x10, &0xd000_0000u32.to_le_bytes());
        assert_eq!(bar0(&root, 1), 0xc000_0000);
        assert_eq!(probe(&mmio, 0xc000_0000, 1), Some(1));
        assert_eq!(probe(&mmio, 0xd000_0000, 1), None);
        assert_eq!(*ev.0.lock().unwrap(), vec![(true, 0xc000_0010)]);
        assert_eq!(root.lock().unwrap().refused_moves(), 1);
    }
}
