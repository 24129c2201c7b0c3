//! A hand-built split virtqueue in guest memory, for device tests (here
//! and in crates that enable the `test-utils` feature).

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::dma::{untranslated, DmaMemory};

/// An interrupt sink that accepts every signal (tests poll the rings).
pub struct NoInterrupt;

impl super::VirtioInterrupt for NoInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A split queue of `size` entries at fixed addresses: descriptors at
/// 0x0, available ring at 0x1000, used ring at 0x2000. Buffers should live
/// at 0x10000 and above.
pub struct TestQueue {
    /// Guest RAM (1 MiB from address 0 unless built with `with_ram`).
    pub ram: GuestMemoryMmap,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl TestQueue {
    /// A queue of `size` entries over 1 MiB of fresh RAM.
    pub fn new(size: u16) -> Self {
        let ram =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("test RAM");
        Self::with_ram(ram, size)
    }

    /// A queue of `size` entries in `ram` (which must cover 0..0x3000).
    pub fn with_ram(ram: GuestMemoryMmap, size: u16) -> Self {
        TestQueue {
            ram,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Untranslated device memory over the same RAM.
    pub fn memory(&self) -> DmaMemory {
        untranslated(self.ram.clone())
    }

    /// A ready `Queue` pointing at this ring.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue");
        q.set_size(self.size);
        q.set_desc_table_address(Some(0), Some(0));
        q.set_avail_ring_address(Some(0x1000), Some(0));
        q.set_used_ring_address(Some(0x2000), Some(0));
        q.set_ready(true);
        q
    }

    /// Writes a chain of `(addr, len, device_writable)` descriptors and
    /// makes it available. Returns the head index.
    pub fn add_chain(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % self.size;
            let mut flags = if write { F_WRITE } else { 0 };
            let mut next = 0u16;
            if i + 1 < descs.len() {
                flags |= F_NEXT;
                next = (idx + 1) % self.size;
            }
            self.write_desc(idx, addr, len, flags, next);
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Writes raw descriptor `idx` (for malformed-chain tests).
    pub fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = GuestAddress(u64::from(idx) * 16);
        let ram = &self.ram;
        ram.write_obj(addr, base).expect("desc");
        ram.write_obj(len, GuestAddress(base.0 + 8)).expect("desc");
        ram.write_obj(flags, GuestAddress(base.0 + 12))
            .expect("desc");
        ram.write_obj(next, GuestAddress(base.0 + 14))
            .expect("desc");
    }

    /// Puts `head` in the available ring.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.ram
            .write_obj(head, GuestAddress(0x1004 + 2 * slot))
            .expect("avail");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ram
            .write_obj(self.avail_idx, GuestAddress(0x1002))
            .expect("avail");
    }

    /// Number of used entries the device has published.
    pub fn used_idx(&self) -> u16 {
        self.ram.read_obj(GuestAddress(0x2002)).expect("used")
    }

    /// Used entry `i`: (descriptor head, written length).
    pub fn used(&self, i: u16) -> (u16, u32) {
        let at = 0x2004 + 8 * u64::from(i % self.size);
        let id: u32 = self.ram.read_obj(GuestAddress(at)).expect("used");
        let len: u32 = self.ram.read_obj(GuestAddress(at + 4)).expect("used");
        (id as u16, len)
    }
}
