//! A fake host PCI function behind the [`DeviceRegions`] seam, for tests.
//!
//! [`FakeDevice::new`] builds a NIC-like function:
//!
//! | what | layout |
//! |---|---|
//! | IDs | 8086:10d3, class 02/00/00, subsystem 8086:a01f, multi-function header |
//! | BAR0 | 128 KiB 32-bit memory, mmap-able |
//! | BAR1 | 32-byte I/O ports |
//! | BAR2 | 16 KiB 64-bit memory, mmap-able; MSI-X table at 0x0, PBA at 0x3000 |
//! | BAR4 | 1 MiB 64-bit prefetchable, sparse mmap areas 0..256K and 512K..1M |
//! | ROM | 128 KiB |
//! | capabilities | 0x40 PM → 0x50 MSI (64-bit, per-vector mask, 4 vectors) → 0x70 PCIe v2 → 0xb0 MSI-X (5 vectors) → 0xc0 vendor |
//! | extended | AER at 0x100 |
//!
//! Every access is recorded; configuration writes are applied to the
//! fake's bytes as a permissive device would. `mmap` returns fake
//! addresses (nothing is mapped) that encode the region and offset.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::region::{DeviceRegions, IrqKind, RegionInfo, CONFIG_REGION};

/// Base of the fake host addresses `mmap` returns.
pub const FAKE_MMAP_BASE: u64 = 0x7f00_0000_0000;

/// A VFIO interrupt call the fake received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrqCall {
    /// `enable_irqs` with the raw fds given.
    Enable(IrqKind, Vec<RawFd>),
    /// `set_irq` of one vector to a raw fd.
    Set(IrqKind, u32, RawFd),
    /// `disable_irqs`.
    Disable(IrqKind),
}

/// One recorded region access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Region index.
    pub index: u32,
    /// Offset in the region.
    pub offset: u64,
    /// Bytes written (or the length read, as zeros).
    pub data: Vec<u8>,
}

/// A fake PCI function; see the module documentation for its layout.
pub struct FakeDevice {
    regions: Vec<RegionInfo>,
    data: Mutex<Vec<Vec<u8>>>,
    irq_counts: HashMap<IrqKind, u32>,
    writes: Mutex<Vec<Access>>,
    reads: Mutex<Vec<Access>>,
    mmaps: Mutex<Vec<(u32, u64, u64)>>,
    irq_calls: Mutex<Vec<IrqCall>>,
    wired: Mutex<HashMap<IrqKind, Vec<EventFd>>>,
    /// When set, `mmap` fails (tests the trap-everything fallback).
    pub fail_mmap: AtomicBool,
}

fn region(size: u64, mmap: bool, sparse: Vec<(u64, u64)>) -> RegionInfo {
    RegionInfo {
        size,
        readable: size > 0,
        writable: size > 0,
        mmap,
        sparse_mmap: sparse,
    }
}

fn put(cfg: &mut [u8], off: usize, bytes: &[u8]) {
    cfg[off..off + bytes.len()].copy_from_slice(bytes);
}

impl Default for FakeDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeDevice {
    /// The NIC-like function described in the module documentation.
    pub fn new() -> Self {
        let mut cfg = vec![0u8; 4096];
        put(&mut cfg, 0x00, &[0x86, 0x80, 0xd3, 0x10]);
        put(&mut cfg, 0x04, &[0x00, 0x00, 0x10, 0x02]);
        put(&mut cfg, 0x08, &[0x01, 0x00, 0x00, 0x02]);
        put(&mut cfg, 0x0c, &[0x10, 0x00, 0x80, 0x00]);
        put(&mut cfg, 0x10, &0xfebc_0000u32.to_le_bytes());
        put(&mut cfg, 0x14, &0x0000_e001u32.to_le_bytes());
        put(&mut cfg, 0x18, &0xfeb0_0004u32.to_le_bytes());
        put(&mut cfg, 0x20, &0x0000_000cu32.to_le_bytes());
        put(&mut cfg, 0x24, &0x0000_0001u32.to_le_bytes());
        put(&mut cfg, 0x2c, &[0x86, 0x80, 0x1f, 0xa0]);
        put(&mut cfg, 0x30, &0xfeb8_0000u32.to_le_bytes());
        put(&mut cfg, 0x34, &[0x40]);
        put(&mut cfg, 0x3c, &[0x0b, 0x01, 0x00, 0x00]);
        // Power management.
        put(
            &mut cfg,
            0x40,
            &[0x01, 0x50, 0x22, 0xc8, 0x00, 0x20, 0x00, 0x00],
        );
        // MSI: 64-bit, per-vector masking, 4 vectors capable.
        put(&mut cfg, 0x50, &[0x05, 0x70, 0x84, 0x01]);
        // PCI Express v2 endpoint: device capabilities/control, link.
        put(&mut cfg, 0x70, &[0x10, 0xb0, 0x02, 0x00]);
        put(&mut cfg, 0x74, &0x0000_8fc0u32.to_le_bytes());
        put(&mut cfg, 0x78, &0x0010_2810u32.to_le_bytes());
        put(&mut cfg, 0x7c, &0x0003_4c11u32.to_le_bytes());
        put(&mut cfg, 0x80, &0x1011_0040u32.to_le_bytes());
        // MSI-X: 5 vectors, table at BAR2+0, PBA at BAR2+0x3000.
        put(&mut cfg, 0xb0, &[0x11, 0xc0, 0x04, 0x00]);
        put(&mut cfg, 0xb4, &0x0000_0002u32.to_le_bytes());
        put(&mut cfg, 0xb8, &0x0000_3002u32.to_le_bytes());
        // Vendor specific.
        put(
            &mut cfg,
            0xc0,
            &[0x09, 0x00, 0x08, 0x00, 0xde, 0xad, 0xbe, 0xef],
        );
        // AER extended capability.
        put(&mut cfg, 0x100, &[0x01, 0x00, 0x01, 0x00, 0xff, 0xff, 0, 0]);

        let regions = vec![
            region(0x20000, true, vec![]),
            region(0x20, false, vec![]),
            region(0x4000, true, vec![]),
            region(0, false, vec![]),
            region(0x10_0000, true, vec![(0, 0x40000), (0x80000, 0x80000)]),
            region(0, false, vec![]),
            RegionInfo {
                writable: false,
                ..region(0x20000, false, vec![])
            },
            region(4096, false, vec![]),
        ];
        let mut data: Vec<Vec<u8>> = regions.iter().map(|r| vec![0u8; r.size as usize]).collect();
        data[CONFIG_REGION as usize] = cfg;
        FakeDevice {
            regions,
            data: Mutex::new(data),
            irq_counts: HashMap::from([(IrqKind::Msi, 4), (IrqKind::MsiX, 5)]),
            writes: Mutex::new(Vec::new()),
            reads: Mutex::new(Vec::new()),
            mmaps: Mutex::new(Vec::new()),
            irq_calls: Mutex::new(Vec::new()),
            wired: Mutex::new(HashMap::new()),
            fail_mmap: AtomicBool::new(false),
        }
    }

    /// Edits the configuration bytes before the device is used.
    pub fn edit_config(&mut self, f: impl FnOnce(&mut [u8])) {
        let data = self.data.get_mut().unwrap_or_else(|e| e.into_inner());
        f(&mut data[CONFIG_REGION as usize]);
    }

    /// Replaces the information of region `index`.
    pub fn set_region(&mut self, index: u32, info: RegionInfo) {
        let data = self.data.get_mut().unwrap_or_else(|e| e.into_inner());
        if let (Some(r), Some(d)) = (
            self.regions.get_mut(index as usize),
            data.get_mut(index as usize),
        ) {
            d.resize(info.size as usize, 0);
            *r = info;
        }
    }

    /// Sets the number of vectors the host offers for `kind`.
    pub fn set_irq_count(&mut self, kind: IrqKind, n: u32) {
        self.irq_counts.insert(kind, n);
    }

    /// Writes recorded so far (configuration and BARs), oldest first.
    pub fn writes(&self) -> Vec<Access> {
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes to region `index` recorded so far.
    pub fn writes_to(&self, index: u32) -> Vec<Access> {
        self.writes()
            .into_iter()
            .filter(|a| a.index == index)
            .collect()
    }

    /// Reads of region `index` recorded so far.
    pub fn reads_of(&self, index: u32) -> Vec<Access> {
        let r = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().filter(|a| a.index == index).cloned().collect()
    }

    /// `(index, offset, size)` of every `mmap` call.
    pub fn mmaps(&self) -> Vec<(u32, u64, u64)> {
        self.mmaps.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Interrupt calls since the last call of this method.
    pub fn take_irq_calls(&self) -> Vec<IrqCall> {
        std::mem::take(&mut *self.irq_calls.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Simulates the device raising vector `vector` of `kind`: writes the
    /// eventfd VFIO would signal. False when nothing is wired.
    pub fn fire(&self, kind: IrqKind, vector: usize) -> bool {
        let wired = self.wired.lock().unwrap_or_else(|e| e.into_inner());
        match wired.get(&kind).and_then(|v| v.get(vector)) {
            Some(fd) => fd.write(1).is_ok(),
            None => false,
        }
    }

    /// Sets bytes of region `index` as the device would (e.g. registers).
    pub fn poke(&self, index: u32, offset: u64, bytes: &[u8]) {
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = data.get_mut(index as usize) {
            let o = offset as usize;
            if o + bytes.len() <= d.len() {
                d[o..o + bytes.len()].copy_from_slice(bytes);
            }
        }
    }

    fn record(&self, kind: IrqCall) {
        self.irq_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(kind);
    }
}

impl DeviceRegions for FakeDevice {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(index as usize).cloned()
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
        self.reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Access {
                index,
                offset,
                data: vec![0; data.len()],
            });
        let src = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let range = src.get(index as usize).and_then(|d| {
            let o = usize::try_from(offset).ok()?;
            d.get(o..o.checked_add(data.len())?)
        });
        match range {
            Some(s) => data.copy_from_slice(s),
            None => data.fill(0xff),
        }
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) {
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Access {
                index,
                offset,
                data: data.to_vec(),
            });
        let mut dst = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let range = dst.get_mut(index as usize).and_then(|d| {
            let o = usize::try_from(offset).ok()?;
            d.get_mut(o..o.checked_add(data.len())?)
        });
        if let Some(d) = range {
            d.copy_from_slice(data);
        }
    }

    fn mmap(&self, index: u32, offset: u64, size: u64) -> io::Result<u64> {
        if self.fail_mmap.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.mmaps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, offset, size));
        Ok(FAKE_MMAP_BASE + (u64::from(index) << 32) + offset)
    }

    fn irq_count(&self, kind: IrqKind) -> u32 {
        self.irq_counts.get(&kind).copied().unwrap_or(0)
    }

    fn enable_irqs(&self, kind: IrqKind, fds: &[&EventFd]) -> io::Result<()> {
        self.record(IrqCall::Enable(
            kind,
            fds.iter().map(|f| f.as_raw_fd()).collect(),
        ));
        if fds.is_empty() || fds.len() > self.irq_count(kind) as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let clones = fds
            .iter()
            .map(|f| f.try_clone())
            .collect::<io::Result<Vec<_>>>()?;
        let mut wired = self.wired.lock().unwrap_or_else(|e| e.into_inner());
        wired.insert(kind, clones);
        Ok(())
    }

    fn set_irq(&self, kind: IrqKind, vector: u32, fd: &EventFd) -> io::Result<()> {
        self.record(IrqCall::Set(kind, vector, fd.as_raw_fd()));
        let mut wired = self.wired.lock().unwrap_or_else(|e| e.into_inner());
        let slot = wired
            .get_mut(&kind)
            .and_then(|v| v.get_mut(vector as usize))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        *slot = fd.try_clone()?;
        Ok(())
    }

    fn disable_irqs(&self, kind: IrqKind) -> io::Result<()> {
        self.record(IrqCall::Disable(kind));
        self.wired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&kind);
        Ok(())
    }
}
