//! Loading a Linux kernel: bzImage (64-bit boot protocol) or ELF vmlinux
//! (PVH entry), the initramfs and the command line, plus the zero page or
//! PVH start info describing memory.

use std::fs::File;
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

use crate::layout::{self, E820Kind, MemoryLayout};
use crate::vstate::vcpu::BootEntry;

/// PVH module list (the initramfs), after the memory map.
const PVH_MODLIST_START: u64 = 0x6800;
/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Boot protocol magic "HdrS" and the boot flag.
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_BOOT_FLAG: u16 = 0xaa55;
/// loadflags: the kernel may use the heap from the end of setup.
const CAN_USE_HEAP: u8 = 0x80;

/// Errors loading the guest kernel. All are user-facing.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel or initramfs file could not be opened or read.
    #[error("cannot read {what} {path}: {err}")]
    Read {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path.
        path: String,
        /// The I/O error.
        err: std::io::Error,
    },
    /// The kernel is neither a bzImage nor a PVH-capable ELF vmlinux.
    #[error("kernel {0} is neither a bzImage nor an ELF vmlinux with a PVH entry point: pass a Linux bzImage (e.g. /boot/vmlinuz-*)")]
    BadKernel(String),
    /// The initramfs does not fit in guest memory below the kernel's limit.
    #[error(
        "initramfs of {0} bytes does not fit in guest memory: give the VM more memory (--memory)"
    )]
    InitramfsTooLarge(u64),
    /// The command line is invalid.
    #[error("bad kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot structures failed.
    #[error("writing boot structures to guest memory: {0}")]
    Setup(String),
}

/// Result of loading: where the boot vCPU starts.
pub struct LoadedKernel {
    /// Entry state for the boot vCPU.
    pub entry: BootEntry,
}

fn read_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BootError + 'a {
    move |err| BootError::Read {
        what,
        path: path.display().to_string(),
        err,
    }
}

/// Loads kernel, initramfs and command line and writes the boot structures.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &str,
    rsdp: GuestAddress,
) -> Result<LoadedKernel, BootError> {
    let mut f = File::open(kernel).map_err(read_err("kernel", kernel))?;
    let himem = GuestAddress(layout::HIMEM_START);
    // ELF first (PVH), then bzImage.
    let (res, pvh) = match Elf::load(mem, None, &mut f, Some(himem)) {
        Ok(r) => match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (r, Some(addr)),
            _ => return Err(BootError::BadKernel(kernel.display().to_string())),
        },
        Err(_) => {
            let r = BzImage::load(mem, None, &mut f, Some(himem))
                .map_err(|_| BootError::BadKernel(kernel.display().to_string()))?;
            (r, None)
        }
    };

    let mut cl =
        Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cl)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cl
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();

    let max_addr = res
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&a| a != 0)
        .unwrap_or(0x7fff_ffff);
    let initrd = match initramfs {
        Some(p) => Some(load_initramfs(mem, layout, p, max_addr, res.kernel_end)?),
        None => None,
    };

    let e820 = layout.e820();
    match pvh {
        Some(entry) => {
            write_pvh_info(mem, &e820, initrd, rsdp)?;
            Ok(LoadedKernel {
                entry: BootEntry::Pvh {
                    rip: entry.raw_value(),
                },
            })
        }
        None => {
            let Some(mut hdr) = res.setup_header else {
                return Err(BootError::BadKernel(kernel.display().to_string()));
            };
            hdr.type_of_loader = 0xff;
            hdr.boot_flag = KERNEL_BOOT_FLAG;
            hdr.header = KERNEL_HDR_MAGIC;
            hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
            hdr.cmdline_size = cmdline_len as u32;
            hdr.loadflags |= CAN_USE_HEAP;
            hdr.heap_end_ptr = 0xfe00;
            if let Some((addr, size)) = initrd {
                hdr.ramdisk_image = addr as u32;
                hdr.ramdisk_size = size as u32;
            }
            let mut params = boot_params {
                hdr,
                acpi_rsdp_addr: rsdp.raw_value(),
                ..Default::default()
            };
            if e820.len() > params.e820_table.len() {
                return Err(BootError::Setup("too many e820 entries".into()));
            }
            for (i, (addr, size, kind)) in e820.iter().enumerate() {
                params.e820_table[i] = boot_e820_entry {
                    addr: *addr,
                    size: *size,
                    r#type: *kind as u32,
                };
            }
            params.e820_entries = e820.len() as u8;
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
                &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START)),
                mem,
            )
            .map_err(|e| BootError::Setup(e.to_string()))?;
            Ok(LoadedKernel {
                entry: BootEntry::Linux64 {
                    rip: res.kernel_load.raw_value() + 0x200,
                },
            })
        }
    }
}

/// Places the initramfs page-aligned at the top of low RAM below `max_addr`,
/// above the kernel. Returns (address, size).
fn load_initramfs(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    path: &Path,
    max_addr: u64,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let mut f = File::open(path).map_err(read_err("initramfs", path))?;
    let size = f.metadata().map_err(read_err("initramfs", path))?.len();
    let low_end = layout.ram[0].end().min(max_addr + 1);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end.max(layout::HIMEM_START))
        .ok_or(BootError::InitramfsTooLarge(size))?;
    let mut slice = mem
        .get_slice(GuestAddress(addr), size as usize)
        .map_err(|e| BootError::Setup(e.to_string()))?;
    f.read_exact_volatile(&mut slice)
        .map_err(|e| BootError::Setup(format!("reading initramfs: {e}")))?;
    Ok((addr, size))
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    e820: &[(u64, u64, E820Kind)],
    initrd: Option<(u64, u64)>,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        rsdp_paddr: rsdp.raw_value(),
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    let map: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|(addr, size, kind)| hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *kind as u32,
            reserved: 0,
        })
        .collect();
    let mut params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_START));
    if let Some((addr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr: addr,
                size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    params.set_sections(&map, GuestAddress(layout::PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| BootError::Setup(e.to_string()))?;
    Ok(())
}

/// `cmdline` plus `reboot=k`, unless the user chose a reboot method.
///
/// Linux's default emergency restart (a panic with `panic=-1`, SysRq-b)
/// tries the ACPI reset register first; in the lab that path hung before
/// reaching the register, so the VM never exited. The keyboard-controller
/// reset goes straight to iovmm's i8042 and ends the run with exit code 3.
pub fn cmdline_with_reboot(cmdline: &str) -> String {
    if cmdline.split_whitespace().any(|w| w.starts_with("reboot=")) {
        cmdline.to_string()
    } else {
        format!("{cmdline} reboot=k")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboot_method_is_added_unless_chosen() {
        assert_eq!(
            cmdline_with_reboot("console=ttyS0"),
            "console=ttyS0 reboot=k"
        );
        assert_eq!(cmdline_with_reboot("reboot=a quiet"), "reboot=a quiet");
    }
}
