//! Address-range dispatch for port I/O and MMIO exits.
//!
//! A [`Bus`] maps non-overlapping `[base, base + len)` ranges to devices.
//! The vCPU thread that takes an exit looks the address up and calls the
//! device with the offset inside its range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` within the range registered at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` within the range registered at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors from [`Bus`] registration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already registered.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// Zero-length range or one that wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// No device registered at that base.
    #[error("no device registered at {0:#x}")]
    NotFound(u64),
}

/// Shared handle to a bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    dev: SharedDevice,
}

/// A set of address ranges, each served by one device. Cheap to share
/// between vCPU threads (`Arc<Bus>`); registration takes a write lock.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `dev` for `[base, base + len)`.
    pub fn insert(&self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let mut map = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        if let Some((&b, e)) = map.range(..=base + len - 1).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        map.insert(base, Entry { len, dev });
        Ok(())
    }

    /// Removes the range registered at `base`.
    pub fn remove(&self, base: u64) -> Result<SharedDevice, BusError> {
        let mut map = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&base)
            .map(|e| e.dev)
            .ok_or(BusError::NotFound(base))
    }

    /// Moves the range registered at `old_base` to `new_base` (same
    /// length), under one lock: every access sees the range at one place
    /// or the other. On error the range stays where it was.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let mut map = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.remove(&old_base).ok_or(BusError::NotFound(old_base))?;
        let len = entry.len;
        let free = new_base.checked_add(len - 1).map(|last| {
            map.range(..=last)
                .next_back()
                .is_none_or(|(&b, e)| b + e.len <= new_base)
        });
        let err = match free {
            Some(true) => None,
            Some(false) => Some(BusError::Overlap {
                base: new_base,
                len,
            }),
            None => Some(BusError::InvalidRange {
                base: new_base,
                len,
            }),
        };
        let at = if err.is_some() { old_base } else { new_base };
        map.insert(at, entry);
        err.map_or(Ok(()), Err)
    }

    fn resolve(&self, addr: u64) -> Option<(u64, u64, SharedDevice)> {
        let map = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, e) = map.range(..=addr).next_back()?;
        if addr - base < e.len {
            Some((base, addr - base, e.dev.clone()))
        } else {
            None
        }
    }

    /// Dispatches a read; returns false if no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((base, off, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(base, off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((base, off, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(base, off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        last: Option<(u64, u64, Vec<u8>)>,
    }
    impl BusDevice for Rec {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
            self.last = Some((base, offset, vec![]));
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let bus = Bus::new();
        let d = Arc::new(Mutex::new(Rec::default()));
        bus.insert(d.clone(), 0x1000, 0x10).unwrap();
        assert_eq!(
            bus.insert(d.clone(), 0x100f, 2),
            Err(BusError::Overlap {
                base: 0x100f,
                len: 2
            })
        );
        assert_eq!(
            bus.insert(d.clone(), 0xff8, 9),
            Err(BusError::Overlap {
                base: 0xff8,
                len: 9
            })
        );
        bus.insert(d.clone(), 0x1010, 4).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x1003, &mut b));
        assert_eq!(b, [3, 3]);
        assert!(bus.write(0x1012, &[7]));
        assert_eq!(d.lock().unwrap().last, Some((0x1010, 2, vec![7])));
        assert!(!bus.read(0x1014, &mut b));
        assert!(!bus.read(0xfff, &mut b));
        assert!(matches!(
            bus.insert(d.clone(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
    }

    #[test]
    fn relocate_moves_range() {
        let bus = Bus::new();
        let d = Arc::new(Mutex::new(Rec::default()));
        bus.insert(d.clone(), 0x2000, 0x100).unwrap();
        bus.insert(d.clone(), 0x4000, 0x100).unwrap();
        assert!(bus.relocate(0x2000, 0x3ff0).is_err());
        assert!(bus.write(0x2000, &[1]));
        assert!(matches!(
            bus.relocate(0x2000, u64::MAX - 0x10),
            Err(BusError::InvalidRange { .. })
        ));
        assert_eq!(
            bus.relocate(0x2100, 0x9000),
            Err(BusError::NotFound(0x2100))
        );
        // Onto its own old range, shifted: only the moving range is gone.
        bus.relocate(0x2000, 0x2080).unwrap();
        assert!(bus.write(0x2100, &[1]));
        bus.relocate(0x2080, 0x2000).unwrap();
        bus.relocate(0x2000, 0x8000).unwrap();
        assert!(!bus.write(0x2000, &[1]));
        assert!(bus.write(0x8001, &[1]));
        assert_eq!(d.lock().unwrap().last, Some((0x8000, 1, vec![1])));
    }
}
