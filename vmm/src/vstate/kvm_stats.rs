//! KVM's binary statistics (`KVM_GET_STATS_FD`, Linux 5.14+): one file
//! per VM and per vCPU with a header, a descriptor per counter (name,
//! type, unit, size) and a data block of `u64`s.
//!
//! [`KvmStats::open`] gets the file from a VM or vCPU fd and parses the
//! header and the descriptors once; [`KvmStats::read`] reads the whole
//! data block with one `pread` into the snapshot it returns (the only
//! allocation of a read). The parser trusts nothing in the file: sizes
//! and offsets are checked, a short or malformed file is an error, and
//! types and units it does not know are kept as raw numbers.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{
    KVM_STATS_BASE_MASK, KVM_STATS_BASE_POW10, KVM_STATS_BASE_POW2, KVM_STATS_TYPE_CUMULATIVE,
    KVM_STATS_TYPE_INSTANT, KVM_STATS_TYPE_LINEAR_HIST, KVM_STATS_TYPE_LOG_HIST,
    KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_PEAK, KVM_STATS_UNIT_BOOLEAN, KVM_STATS_UNIT_BYTES,
    KVM_STATS_UNIT_CYCLES, KVM_STATS_UNIT_MASK, KVM_STATS_UNIT_NONE, KVM_STATS_UNIT_SECONDS,
    KVM_STATS_UNIT_SHIFT,
};
use serde_json::{Map, Value};

/// The ioctl number, private to this module (kvm-ioctls 0.25 lacks it).
mod ioctls {
    vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);
}
use ioctls::KVM_GET_STATS_FD;

/// Size of `struct kvm_stats_header`.
const HEADER_LEN: usize = 24;
/// Size of `struct kvm_stats_desc` without its name.
const DESC_LEN: usize = 16;
/// Largest descriptor name accepted (the kernel uses 48 bytes).
const MAX_NAME_SIZE: u32 = 1024;
/// Most descriptors accepted (kernels have about a hundred).
const MAX_DESCS: u32 = 4096;
/// Largest data block accepted.
const MAX_DATA_LEN: usize = 1 << 20;

/// What a counter measures over time (`KVM_STATS_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatKind {
    /// Only grows (exits, halts).
    Cumulative,
    /// A current value.
    Instant,
    /// The highest value seen.
    Peak,
    /// Histogram with buckets of `bucket_size`.
    LinearHist,
    /// Histogram with power-of-two buckets.
    LogHist,
    /// A type this code does not know (raw type bits).
    Unknown(u32),
}

/// The unit of a counter (`KVM_STATS_UNIT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatUnit {
    /// A plain count.
    None,
    /// Bytes.
    Bytes,
    /// Seconds (scaled by the exponent, e.g. -9 for ns).
    Seconds,
    /// CPU cycles.
    Cycles,
    /// 0 or 1.
    Boolean,
    /// A unit this code does not know (raw unit bits).
    Unknown(u32),
}

/// One counter of a stats file, as its descriptor states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatDesc {
    /// The kernel's name (e.g. `exits`, `halt_successful_poll`).
    pub name: String,
    /// Type.
    pub kind: StatKind,
    /// Unit.
    pub unit: StatUnit,
    /// Base of the exponent: 10 or 2 (0 if the kernel said something else).
    pub base: u32,
    /// The value is `raw * base^exponent` in `unit`.
    pub exponent: i16,
    /// Number of `u64`s (1, or the buckets of a histogram).
    pub size: u16,
    /// Byte offset of the first `u64` in the data block.
    pub offset: u32,
    /// Bucket width of a linear histogram.
    pub bucket_size: u32,
}

/// An open stats file of a VM or a vCPU with its parsed descriptors.
#[derive(Debug)]
pub struct KvmStats {
    file: File,
    id: String,
    descs: Vec<StatDesc>,
    data_offset: u64,
    data_len: usize,
}

/// The data block of one read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsSnapshot {
    data: Vec<u8>,
}

fn malformed(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("KVM stats file: {what}"),
    )
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// A NUL-terminated name in `b` (the whole slice if it has no NUL).
fn c_name(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl StatKind {
    fn from_flags(flags: u32) -> Self {
        match flags & KVM_STATS_TYPE_MASK {
            KVM_STATS_TYPE_CUMULATIVE => StatKind::Cumulative,
            KVM_STATS_TYPE_INSTANT => StatKind::Instant,
            KVM_STATS_TYPE_PEAK => StatKind::Peak,
            KVM_STATS_TYPE_LINEAR_HIST => StatKind::LinearHist,
            KVM_STATS_TYPE_LOG_HIST => StatKind::LogHist,
            other => StatKind::Unknown(other),
        }
    }
}

impl StatUnit {
    fn from_flags(flags: u32) -> Self {
        match flags & KVM_STATS_UNIT_MASK {
            KVM_STATS_UNIT_NONE => StatUnit::None,
            KVM_STATS_UNIT_BYTES => StatUnit::Bytes,
            KVM_STATS_UNIT_SECONDS => StatUnit::Seconds,
            KVM_STATS_UNIT_CYCLES => StatUnit::Cycles,
            KVM_STATS_UNIT_BOOLEAN => StatUnit::Boolean,
            other => StatUnit::Unknown(other >> KVM_STATS_UNIT_SHIFT),
        }
    }
}

impl KvmStats {
    /// Opens the stats file of the VM or vCPU behind `fd` (a `VmFd` or a
    /// `VcpuFd`) and parses its descriptors.
    pub fn open(fd: &impl AsRawFd) -> io::Result<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and only returns a
        // new fd (or -1); `fd` is a live KVM VM or vCPU fd borrowed for
        // the call.
        let r = unsafe { vmm_sys_util::ioctl::ioctl(fd, KVM_GET_STATS_FD()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `r` is a new fd that nothing else owns; the File takes
        // ownership and closes it.
        let file = unsafe { File::from_raw_fd(r) };
        Self::parse(file)
    }

    /// Parses the header and descriptors of an already open stats file
    /// (a hand-made one in tests).
    pub fn parse(file: File) -> io::Result<Self> {
        let mut h = [0u8; HEADER_LEN];
        file.read_exact_at(&mut h, 0)
            .map_err(|e| malformed(format!("header: {e}")))?;
        let (name_size, num_desc) = (u32_at(&h, 4), u32_at(&h, 8));
        let (id_offset, desc_offset, data_offset) =
            (u32_at(&h, 12), u32_at(&h, 16), u32_at(&h, 20));
        if name_size == 0 || name_size > MAX_NAME_SIZE {
            return Err(malformed(format!("name size {name_size}")));
        }
        if num_desc > MAX_DESCS {
            return Err(malformed(format!("{num_desc} descriptors")));
        }
        let mut id = vec![0u8; name_size as usize];
        file.read_exact_at(&mut id, u64::from(id_offset))
            .map_err(|e| malformed(format!("id at {id_offset}: {e}")))?;
        let stride = DESC_LEN + name_size as usize;
        let mut block = vec![0u8; stride * num_desc as usize];
        file.read_exact_at(&mut block, u64::from(desc_offset))
            .map_err(|e| malformed(format!("{num_desc} descriptors at {desc_offset}: {e}")))?;
        let mut descs = Vec::with_capacity(num_desc as usize);
        let mut data_len = 0usize;
        for d in block.chunks_exact(stride) {
            let flags = u32_at(d, 0);
            let desc = StatDesc {
                name: c_name(&d[DESC_LEN..]),
                kind: StatKind::from_flags(flags),
                unit: StatUnit::from_flags(flags),
                base: match flags & KVM_STATS_BASE_MASK {
                    KVM_STATS_BASE_POW10 => 10,
                    KVM_STATS_BASE_POW2 => 2,
                    _ => 0,
                },
                exponent: u16_at(d, 4) as i16,
                size: u16_at(d, 6),
                offset: u32_at(d, 8),
                bucket_size: u32_at(d, 12),
            };
            if !desc.offset.is_multiple_of(8) {
                return Err(malformed(format!(
                    "{}: offset {} not a multiple of 8",
                    desc.name, desc.offset
                )));
            }
            let end = desc.offset as usize + 8 * usize::from(desc.size);
            if end > MAX_DATA_LEN {
                return Err(malformed(format!("{}: data ends at {end}", desc.name)));
            }
            data_len = data_len.max(end);
            descs.push(desc);
        }
        Ok(KvmStats {
            file,
            id: c_name(&id),
            descs,
            data_offset: u64::from(data_offset),
            data_len,
        })
    }

    /// The kernel's id of the file (`kvm-PID` or `kvm-PID/vcpu-N`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The descriptors, in the kernel's order.
    pub fn descs(&self) -> &[StatDesc] {
        &self.descs
    }

    /// Reads every counter now (one `pread` of the data block).
    pub fn read(&self) -> io::Result<StatsSnapshot> {
        let mut data = vec![0u8; self.data_len];
        self.file
            .read_exact_at(&mut data, self.data_offset)
            .map_err(|e| malformed(format!("data block of {} bytes: {e}", self.data_len)))?;
        Ok(StatsSnapshot { data })
    }

    /// The `u64`s of descriptor `i` in `snap` (empty for an index out of
    /// range or a snapshot of another file).
    pub fn values<'a>(&self, snap: &'a StatsSnapshot, i: usize) -> impl Iterator<Item = u64> + 'a {
        let (start, n) = self
            .descs
            .get(i)
            .map(|d| (d.offset as usize, usize::from(d.size)))
            .filter(|(s, n)| s + 8 * n <= snap.data.len())
            .unwrap_or((0, 0));
        snap.data[start..start + 8 * n]
            .chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().expect("chunks_exact(8) gives 8 bytes")))
    }

    /// The value of the one-`u64` counter `name`, if the file has it.
    pub fn scalar(&self, snap: &StatsSnapshot, name: &str) -> Option<u64> {
        let i = self
            .descs
            .iter()
            .position(|d| d.name == name && d.size == 1)?;
        self.values(snap, i).next()
    }

    /// `snap` as a JSON object, name → raw value (a number; an array for
    /// a histogram or any counter of more than one `u64`).
    pub fn to_json(&self, snap: &StatsSnapshot) -> Map<String, Value> {
        let mut m = Map::new();
        for (i, d) in self.descs.iter().enumerate() {
            let v: Vec<u64> = self.values(snap, i).collect();
            let v = if d.size == 1 && v.len() == 1 {
                Value::from(v[0])
            } else {
                Value::from(v)
            };
            m.insert(d.name.clone(), v);
        }
        m
    }
}

/// The stats files of one VM: the VM's own and one per vCPU.
#[derive(Debug, Default)]
pub struct VmKvmStats {
    vm: Option<KvmStats>,
    vcpus: Vec<KvmStats>,
    errors: Vec<String>,
}

/// The suffix of the per-vCPU counters that count exits of one reason.
const EXITS_SUFFIX: &str = "_exits";

impl VmKvmStats {
    /// An empty set (files are added as the VM and its vCPUs are created).
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the VM's stats file; a failure is kept for the JSON and logged.
    pub fn open_vm(&mut self, fd: &impl AsRawFd) {
        match KvmStats::open(fd) {
            Ok(s) => self.vm = Some(s),
            Err(e) => self.failed("vm", e),
        }
    }

    /// Opens the stats file of the next vCPU.
    pub fn open_vcpu(&mut self, index: usize, fd: &impl AsRawFd) {
        match KvmStats::open(fd) {
            Ok(s) => self.vcpus.push(s),
            Err(e) => self.failed(&format!("vcpu{index}"), e),
        }
    }

    fn failed(&mut self, what: &str, e: io::Error) {
        tracing::warn!("KVM binary stats of {what} unavailable: {e}");
        self.errors.push(format!("{what}: {e}"));
    }

    /// The JSON of the stats file's `kvm` key: `vm` and `vcpus` (name →
    /// raw value), `exits` (`total`: the sum of the vCPUs' `exits`;
    /// `by_reason`: the sum of each `<reason>_exits`), and `errors` (files
    /// that could not be opened or read).
    pub fn to_json(&self) -> Value {
        let mut errors = self.errors.clone();
        let vm = self.vm.as_ref().and_then(|s| match s.read() {
            Ok(snap) => Some(Value::Object(s.to_json(&snap))),
            Err(e) => {
                errors.push(format!("vm: {e}"));
                None
            }
        });
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        let mut total: Option<u64> = None;
        let mut by_reason = Map::new();
        for s in &self.vcpus {
            let snap = match s.read() {
                Ok(snap) => snap,
                Err(e) => {
                    errors.push(format!("{}: {e}", s.id()));
                    continue;
                }
            };
            if let Some(n) = s.scalar(&snap, "exits") {
                total = Some(total.unwrap_or(0).saturating_add(n));
            }
            for (i, d) in s.descs().iter().enumerate() {
                let Some(reason) = d.name.strip_suffix(EXITS_SUFFIX) else {
                    continue;
                };
                if d.size != 1 || reason.is_empty() {
                    continue;
                }
                let n = s.values(&snap, i).next().unwrap_or(0);
                let e = by_reason
                    .entry(reason.to_string())
                    .or_insert(Value::from(0u64));
                *e = Value::from(e.as_u64().unwrap_or(0).saturating_add(n));
            }
            vcpus.push(Value::Object(s.to_json(&snap)));
        }
        serde_json::json!({
            "vm": vm,
            "vcpus": vcpus,
            "exits": {"total": total, "by_reason": by_reason},
            "errors": errors,
        })
    }
}

#[cfg(test)]
#[path = "kvm_stats_tests.rs"]
mod tests;
