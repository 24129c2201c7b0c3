//! The KVM VM: in-kernel irqchip and PIT, guest memory slots, ioeventfds.

use std::io;
use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
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
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
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
