//! A hand-built split virtqueue in guest memory, for device tests (here
//! and in crates that enable the `test-utils` feature).

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

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

/// An interrupt sink that counts what it was asked to signal.
#[derive(Debug, Default)]
pub struct RecordingInterrupt {
    used: AtomicU64,
    config: AtomicU64,
}

impl RecordingInterrupt {
    /// Used-buffer interrupts so far (any queue).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Configuration change interrupts so far.
    pub fn config_changes(&self) -> u64 {
        self.config.load(Ordering::SeqCst)
    }
}

impl super::VirtioInterrupt for RecordingInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> std::io::Result<()> {
        self.used.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        self.config.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Waits up to 10 s for `cond`, panicking with `what` if it never holds.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether `evt` holds an unread count (a kick the device has not taken).
pub fn is_pending(evt: &EventFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd that outlives the call; timeout 0.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

/// State letter ('R' running, 'S' sleeping, ...) and CPU time in clock
/// ticks (user + system) of thread `tid` of this process.
pub fn thread_state(tid: i32) -> (char, u64) {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("thread stat");
    // After the parenthesised name: state, then fields 4.. of proc(5).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    (f[0].chars().next().expect("state"), ticks)
}

/// Asserts that worker thread `tid` is idle: it reaches the sleeping state
/// (blocked in its event loop, which a spinning thread never is) and used
/// less than `max_ticks` clock ticks of CPU in total.
pub fn assert_idle(tid: i32, max_ticks: u64) {
    let ticks = wait_sleeping(tid);
    assert!(ticks < max_ticks, "worker used {ticks} ticks of CPU");
}

/// Waits until thread `tid` sleeps (a spinning thread never does);
/// returns the CPU clock ticks it used so far.
pub fn wait_sleeping(tid: i32) -> u64 {
    wait_for("the worker thread blocks", || thread_state(tid).0 == 'S');
    thread_state(tid).1
}

/// Owns a device whose worker may spin in a failing test: on a panic it
/// is leaked instead of dropped (dropping joins the worker thread, which
/// would hang the test instead of failing it).
pub struct LeakOnPanic<T>(std::mem::ManuallyDrop<T>);

impl<T> LeakOnPanic<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        LeakOnPanic(std::mem::ManuallyDrop::new(inner))
    }
}

impl<T> std::ops::Deref for LeakOnPanic<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for LeakOnPanic<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> Drop for LeakOnPanic<T> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: the inner value is dropped exactly once, here, and
            // never used afterwards.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.0) };
        }
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

    /// Writes an indirect descriptor table of `(addr, len, flags, next)`
    /// entries at guest address `at`.
    pub fn write_table(&self, at: u64, descs: &[(u64, u32, u16, u16)]) {
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let base = at + 16 * i as u64;
            self.ram.write_obj(addr, GuestAddress(base)).expect("table");
            self.ram
                .write_obj(len, GuestAddress(base + 8))
                .expect("table");
            self.ram
                .write_obj(flags, GuestAddress(base + 12))
                .expect("table");
            self.ram
                .write_obj(next, GuestAddress(base + 14))
                .expect("table");
        }
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

    /// Sets the available index to `idx` without adding entries (what a
    /// broken or hostile driver does).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.ram
            .write_obj(idx, GuestAddress(0x1002))
            .expect("avail");
    }

    /// Forgets the ring's contents, as a driver does when it re-initialises
    /// the queue after a reset (the device starts again at index 0).
    pub fn reinit(&mut self) {
        self.next_desc = 0;
        self.set_avail_idx(0);
        self.ram
            .write_obj(0u16, GuestAddress(0x2002))
            .expect("used");
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
