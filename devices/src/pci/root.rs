//! The PCI root bus: host bridge at 00.0, configuration access through
//! ECAM and the legacy 0xCF8/0xCFC ports, and BAR placement on the MMIO
//! and port buses (including KVM ioeventfds for notification registers).

use std::io;
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
    /// BAR the write reprogrammed.
    pub fn config_write(&self, bus: u8, dev: u8, func: u8, reg: usize, offset: u64, data: &[u8]) {
        let Some(d) = self.function(bus, dev, func) else {
            return;
        };
        let moved = lock(d).write_config_register(reg, offset, data);
        if let Some(m) = moved {
            self.move_bar(d, m);
        }
    }

    fn function(&self, bus: u8, dev: u8, func: u8) -> Option<&SharedPciDevice> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.as_ref()
    }

    fn move_bar(&self, dev: &SharedPciDevice, m: BarMove) {
        let d = lock(dev);
        let fds: Vec<(u64, &EventFd)> = d
            .ioeventfds()
            .into_iter()
            .filter(|(bar, _, _)| *bar == m.old.index)
            .map(|(_, off, fd)| (off, fd))
            .collect();
        for (off, fd) in &fds {
            if let Err(e) = self.ioevents.unregister(m.old.addr + off, fd) {
                tracing::warn!("PCI: cannot unregister ioeventfd: {e}");
            }
        }
        if let Err(e) = self.bus_for(m.old.kind).relocate(m.old.addr, m.new_addr) {
            tracing::warn!(
                "PCI: guest moved BAR {} from {:#x} to {:#x}: {e}",
                m.old.index,
                m.old.addr,
                m.new_addr
            );
        }
        for (off, fd) in &fds {
            if let Err(e) = self.ioevents.register(m.new_addr + off, fd) {
                tracing::warn!("PCI: cannot register ioeventfd: {e}");
            }
        }
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

    #[derive(Default)]
    struct Events(Mutex<Vec<(bool, u64)>>);
    impl IoEventRegistry for Events {
        fn register(&self, addr: u64, _fd: &EventFd) -> io::Result<()> {
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

    fn setup() -> (Arc<Mutex<PciRoot>>, Arc<Bus>, Arc<Events>) {
        let mmio = Arc::new(Bus::new());
        let ev = Arc::new(Events::default());
        let root = PciRoot::new(mmio.clone(), Arc::new(Bus::new()), ev.clone());
        let root = Arc::new(Mutex::new(root));
        let mut cfg = PciConfiguration::new(PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            ..Default::default()
        });
        cfg.add_bar(0, 0xc000_0000, 0x1000, BarKind::Mmio32)
            .unwrap();
        let fake = Fake {
            cfg,
            mem: [0; 64],
            evt: EventFd::new(0).unwrap(),
        };
        let slot = root.lock().unwrap().add_device(Arc::new(Mutex::new(fake)));
        assert_eq!(slot.unwrap(), 1);
        (root, mmio, ev)
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
        assert_eq!(
            ev.0.lock().unwrap()[1..],
            [(false, 0xc000_0010), (true, 0xd000_0010)]
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
}
