//! The KVM VM: in-kernel irqchip and PIT, guest memory slots, ioeventfds,
//! and the memory slots that map assigned devices' BARs into the guest.
//!
//! KVM memory slots are numbered by the VMM. Guest RAM takes `0..n` when
//! it is registered; [`SlotAllocator`] hands out the numbers above (lowest
//! free first, returned ones reused) up to KVM's limit, and
//! [`KvmMmioSlots`] implements the VFIO crate's [`MmioSlots`] with them.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_pit_config,
    kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{DeviceFd, IoEventAddress, Kvm, NoDatamatch, VmFd};
use vfio_passthrough::MmioSlots;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use devices::pci::root::IoEventRegistry;

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("{0}")]
    NoKvm(String),
    /// A KVM ioctl failed.
    #[error("KVM {0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// The host KVM lacks a capability iovmm needs.
    #[error(
        "KVM lacks {0}: iovmm needs a Linux host with the in-kernel irqchip, irqfd and ioeventfd"
    )]
    MissingCap(&'static str),
}

/// The VM and the KVM system handle it came from.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    slots: Arc<Mutex<SlotAllocator>>,
}

/// Address of the 3-page TSS region KVM needs on Intel hosts (inside the 32-bit hole).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

impl Vm {
    /// Opens /dev/kvm and creates a VM with an in-kernel IOAPIC/PIC/LAPIC and PIT.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(|e| {
            let err = io::Error::from_raw_os_error(e.errno());
            VmError::NoKvm(crate::config::kvm_open_hint(&err).to_string())
        })?;
        for (cap, name) in [
            (kvm_ioctls::Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (kvm_ioctls::Cap::Irqfd, "KVM_CAP_IRQFD"),
            (kvm_ioctls::Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (kvm_ioctls::Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
            (kvm_ioctls::Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(|e| VmError::Kvm("CREATE_VM", e))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(|e| VmError::Kvm("SET_TSS_ADDR", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Kvm("CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Kvm("CREATE_PIT2", e))?;
        let slots = SlotAllocator::new(u32::try_from(kvm.get_nr_memslots()).unwrap_or(u32::MAX));
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            slots: Arc::new(Mutex::new(slots)),
        })
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    /// Registers every region of `mem` as a KVM memory slot (slots 0..n).
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        lock(&self.slots).reserve_below(mem.num_regions() as u32);
        for (slot, region) in mem.iter().enumerate() {
            let host = mem.get_host_address(region.start_addr()).map_err(|_| {
                VmError::Kvm("get_host_address", kvm_ioctls::Error::new(libc::EFAULT))
            })?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of `region.len()` bytes owned by
            // `mem`, which the VMM keeps alive for as long as the VM exists.
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(|e| VmError::Kvm("SET_USER_MEMORY_REGION", e))?;
        }
        Ok(())
    }
}

impl Vm {
    /// Memory slots for BAR areas of assigned devices, numbered after
    /// guest RAM (call [`Vm::register_memory`] first).
    pub fn mmio_slots(&self) -> Arc<KvmMmioSlots<VmFd>> {
        Arc::new(KvmMmioSlots::new(self.fd.clone(), self.slots.clone()))
    }

    /// Creates the KVM VFIO pseudo-device (`KVM_DEV_TYPE_VFIO`), through
    /// which KVM learns about the VFIO groups of assigned functions.
    pub fn create_vfio_device(&self) -> Result<DeviceFd, VmError> {
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        self.fd
            .create_device(&mut dev)
            .map_err(|e| VmError::Kvm("CREATE_DEVICE(VFIO)", e))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// KVM memory slot numbers: `0..first` belong to guest RAM, the rest up
/// to `limit` are handed out lowest first and reused once released.
#[derive(Debug)]
pub struct SlotAllocator {
    first: u32,
    limit: u32,
    used: BTreeSet<u32>,
}

impl SlotAllocator {
    /// An allocator for a VM with `limit` slots (`KVM_CAP_NR_MEMSLOTS`).
    pub fn new(limit: u32) -> Self {
        SlotAllocator {
            first: 0,
            limit,
            used: BTreeSet::new(),
        }
    }

    /// Keeps `0..n` out of the allocator (guest RAM's slots).
    pub fn reserve_below(&mut self, n: u32) {
        self.first = self.first.max(n);
    }

    /// The lowest free slot, or `None` when all `limit` are in use.
    pub fn allocate(&mut self) -> Option<u32> {
        let mut slot = self.first;
        for &u in self.used.range(self.first..) {
            if u != slot {
                break;
            }
            slot += 1;
        }
        if slot >= self.limit {
            return None;
        }
        self.used.insert(slot);
        Some(slot)
    }

    /// Returns `slot` for reuse.
    pub fn release(&mut self, slot: u32) {
        self.used.remove(&slot);
    }

    /// Slots currently handed out.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

/// `KVM_SET_USER_MEMORY_REGION`, behind a seam so the slot bookkeeping is
/// tested without KVM.
pub trait UserMemory: Send + Sync {
    /// Makes `slot` map `[guest_addr, guest_addr + size)` to the VMM's
    /// `host_addr`; `size` 0 deletes the slot.
    ///
    /// # Safety
    ///
    /// Until the slot is deleted, the guest may read and write
    /// `[host_addr, host_addr + size)` at any time: it must stay mapped and
    /// must not be memory Rust code holds references into.
    unsafe fn set_region(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
    ) -> io::Result<()>;
}

impl UserMemory for VmFd {
    unsafe fn set_region(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
    ) -> io::Result<()> {
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller upholds the contract on the host range (see
        // UserMemory::set_region).
        unsafe { self.set_user_memory_region(r) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// [`MmioSlots`] on KVM memory slots: each mmapped BAR area of an
/// assigned device becomes one slot while the guest decodes the BAR, so
/// its accesses go straight to the device without a VM exit.
pub struct KvmMmioSlots<U: UserMemory> {
    mem: Arc<U>,
    numbers: Arc<Mutex<SlotAllocator>>,
    /// Guest address → (slot, size) of every live slot.
    live: Mutex<BTreeMap<u64, (u32, u64)>>,
}

const SLOT_PAGE: u64 = 4096;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl<U: UserMemory> KvmMmioSlots<U> {
    /// Slots created through `mem`, numbered by `numbers`.
    pub fn new(mem: Arc<U>, numbers: Arc<Mutex<SlotAllocator>>) -> Self {
        KvmMmioSlots {
            mem,
            numbers,
            live: Mutex::new(BTreeMap::new()),
        }
    }

    /// Live slots as `(guest address, slot, size)`, ascending.
    pub fn live(&self) -> Vec<(u64, u32, u64)> {
        lock(&self.live)
            .iter()
            .map(|(&g, &(s, l))| (g, s, l))
            .collect()
    }
}

impl<U: UserMemory> MmioSlots for KvmMmioSlots<U> {
    fn map(&self, guest_addr: u64, size: u64, host_addr: u64) -> io::Result<()> {
        let aligned = (guest_addr | size | host_addr).is_multiple_of(SLOT_PAGE);
        let Some(last) = guest_addr.checked_add(size.wrapping_sub(1)) else {
            return Err(invalid(format!("slot {guest_addr:#x}+{size:#x} wraps")));
        };
        if size == 0 || !aligned {
            return Err(invalid(format!(
                "slot {guest_addr:#x}+{size:#x} at {host_addr:#x} is not page aligned"
            )));
        }
        let mut live = lock(&self.live);
        if let Some((&g, &(_, l))) = live.range(..=last).next_back() {
            if g + l > guest_addr {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("slot {guest_addr:#x}+{size:#x} overlaps the slot at {g:#x}"),
                ));
            }
        }
        let slot = lock(&self.numbers)
            .allocate()
            .ok_or_else(|| io::Error::other("all KVM memory slots are in use"))?;
        // SAFETY: MmioSlots::map is only called by VfioPciDevice with an
        // mmap of its device's BAR (VfioRegions::mmap): device memory, never
        // behind a Rust reference, that stays mapped until the device is
        // dropped; VfioPciDevice::drop removes every slot (unmap below)
        // before the mapping goes.
        let r = unsafe { self.mem.set_region(slot, guest_addr, size, host_addr) };
        if let Err(e) = r {
            lock(&self.numbers).release(slot);
            return Err(e);
        }
        live.insert(guest_addr, (slot, size));
        Ok(())
    }

    fn unmap(&self, guest_addr: u64, size: u64) -> io::Result<()> {
        let mut live = lock(&self.live);
        let Some(&(slot, l)) = live.get(&guest_addr).filter(|(_, l)| *l == size) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no slot at {guest_addr:#x}+{size:#x}"),
            ));
        };
        // SAFETY: size 0 deletes the slot: afterwards the guest cannot reach
        // the host range any more, so no new obligation arises.
        unsafe { self.mem.set_region(slot, guest_addr, 0, 0) }?;
        live.remove(&guest_addr);
        lock(&self.numbers).release(slot);
        tracing::trace!(slot, guest_addr, size = l, "BAR slot removed");
        Ok(())
    }
}

/// Registers ioeventfds for MMIO addresses with KVM (used by the PCI root
/// for virtio notification registers).
pub struct KvmIoEvents(pub Arc<VmFd>);

impl IoEventRegistry for KvmIoEvents {
    fn register(&self, addr: u64, fd: &EventFd) -> io::Result<()> {
        self.0
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, addr: u64, fd: &EventFd) -> io::Result<()> {
        self.0
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records region calls; fails the next one on request.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(u32, u64, u64, u64)>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl UserMemory for Recorder {
        unsafe fn set_region(&self, slot: u32, g: u64, size: u64, h: u64) -> io::Result<()> {
            if self.fail.swap(false, std::sync::atomic::Ordering::Relaxed) {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            lock(&self.calls).push((slot, g, size, h));
            Ok(())
        }
    }

    fn slots(
        limit: u32,
        ram: u32,
    ) -> (
        Arc<Recorder>,
        Arc<Mutex<SlotAllocator>>,
        KvmMmioSlots<Recorder>,
    ) {
        let rec = Arc::new(Recorder::default());
        let mut a = SlotAllocator::new(limit);
        a.reserve_below(ram);
        let numbers = Arc::new(Mutex::new(a));
        let s = KvmMmioSlots::new(rec.clone(), numbers.clone());
        (rec, numbers, s)
    }

    #[test]
    fn slot_numbers_start_after_ram_and_are_reused() {
        let mut a = SlotAllocator::new(6);
        a.reserve_below(2);
        assert_eq!(a.allocate(), Some(2));
        assert_eq!(a.allocate(), Some(3));
        assert_eq!(a.allocate(), Some(4));
        a.release(3);
        assert_eq!(a.allocate(), Some(3), "lowest free first");
        assert_eq!(a.allocate(), Some(5));
        assert_eq!(a.allocate(), None, "KVM's limit");
        a.release(2);
        assert_eq!(a.in_use(), 3);
        assert_eq!(a.allocate(), Some(2));
    }

    #[test]
    fn bar_areas_become_slots_and_go_away() {
        let (rec, numbers, s) = slots(8, 2);
        s.map(0xc000_0000, 0x2_0000, 0x7f00_0000_0000).unwrap();
        s.map(0x1_0000_0000, 0x1000, 0x7f00_1000_0000).unwrap();
        assert_eq!(
            s.live(),
            vec![(0xc000_0000, 2, 0x2_0000), (0x1_0000_0000, 3, 0x1000)]
        );
        s.unmap(0xc000_0000, 0x2_0000).unwrap();
        assert_eq!(
            *lock(&rec.calls),
            vec![
                (2, 0xc000_0000, 0x2_0000, 0x7f00_0000_0000),
                (3, 0x1_0000_0000, 0x1000, 0x7f00_1000_0000),
                (2, 0xc000_0000, 0, 0),
            ]
        );
        // A BAR move: the freed number is reused at the new address.
        s.map(0xd000_0000, 0x2_0000, 0x7f00_0000_0000).unwrap();
        assert_eq!(s.live()[0], (0xd000_0000, 2, 0x2_0000));
        assert_eq!(lock(&numbers).in_use(), 2);
    }

    #[test]
    fn bad_requests_leave_no_slot_behind() {
        let (rec, numbers, s) = slots(4, 2);
        for (g, size, h) in [
            (0x1800, 0x1000, 0),
            (0x1000, 0x800, 0),
            (0x1000, 0x1000, 0x10),
            (0, 0, 0),
        ] {
            let e = s.map(g, size, h).unwrap_err();
            assert_eq!(
                e.kind(),
                io::ErrorKind::InvalidInput,
                "{g:#x} {size:#x} {h:#x}"
            );
        }
        assert!(s.map(u64::MAX - 0xfff, 0x2000, 0).is_err(), "wraps");
        s.map(0x10000, 0x4000, 0x1000).unwrap();
        let e = s.map(0x12000, 0x1000, 0x2000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        rec.fail.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(s.map(0x20000, 0x1000, 0x3000).is_err(), "KVM refuses");
        assert_eq!(lock(&numbers).in_use(), 1, "the refused slot was released");
        s.map(0x20000, 0x1000, 0x3000).unwrap();
        assert!(s.map(0x30000, 0x1000, 0x4000).is_err(), "out of slots");
        assert_eq!(
            s.unmap(0x10000, 0x1000).unwrap_err().kind(),
            io::ErrorKind::NotFound,
            "size must match"
        );
        assert_eq!(
            s.unmap(0x50000, 0x1000).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(s.live().len(), 2);
    }
}
