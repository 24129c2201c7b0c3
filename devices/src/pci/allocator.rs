//! A bump allocator for BAR address windows.
//!
//! The VMM assigns every BAR before the guest boots (there is no firmware),
//! so allocation only ever grows; addresses are never returned.

/// Hands out naturally aligned ranges from `[start, start + len)`.
#[derive(Clone, Debug)]
pub struct AddressAllocator {
    next: u64,
    end: u64,
}

impl AddressAllocator {
    /// An allocator over `[start, start + len)`.
    pub fn new(start: u64, len: u64) -> Self {
        AddressAllocator {
            next: start,
            end: start.saturating_add(len),
        }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two); `None`
    /// when the window is exhausted or the arguments are invalid.
    pub fn allocate(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let start = self.next.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_disjoint_and_bounded() {
        let mut a = AddressAllocator::new(0x1000, 0x10000);
        assert_eq!(a.allocate(0x100, 0x100), Some(0x1000));
        assert_eq!(a.allocate(0x4000, 0x4000), Some(0x4000));
        assert_eq!(a.allocate(0x10, 0x10), Some(0x8000));
        assert_eq!(a.allocate(0x10000, 0x1000), None);
        assert_eq!(a.allocate(0x7ff0, 0x10), Some(0x8010));
        assert_eq!(a.allocate(0x1000, 1), Some(0x10000));
        assert_eq!(a.allocate(1, 1), None);
    }

    #[test]
    fn rejects_bad_arguments() {
        let mut a = AddressAllocator::new(u64::MAX - 0x10, 0x100);
        assert_eq!(a.allocate(0, 1), None);
        assert_eq!(a.allocate(1, 3), None);
        assert_eq!(a.allocate(0x100, 0x100), None);
    }
}
