//! virtio-iommu wire format (virtio 1.2, section 5.13): feature bits,
//! configuration layout, request and fault-event encodings, status codes.

/// Feature: the config's `input_range` is valid.
pub const F_INPUT_RANGE: u64 = 1 << 0;
/// Feature: the config's `domain_range` is valid.
pub const F_DOMAIN_RANGE: u64 = 1 << 1;
/// Feature: MAP and UNMAP requests.
pub const F_MAP_UNMAP: u64 = 1 << 2;
/// Feature: PROBE requests; the config's `probe_size` is valid.
pub const F_PROBE: u64 = 1 << 4;
/// Feature: the MMIO flag of MAP.
pub const F_MMIO: u64 = 1 << 5;
/// Feature: the config's `bypass` field and the ATTACH bypass flag.
pub const F_BYPASS_CONFIG: u64 = 1 << 6;
/// Vendor feature (iovmm): the cooperative DMA tracking table and its
/// requests, [`req::COOP_REGISTER`] and [`req::COOP_PIN`] (docs/coop.md).
pub const F_IOVMM_COOP: u64 = 1 << 23;

/// Request types.
pub mod req {
    /// Attach an endpoint to a domain.
    pub const ATTACH: u8 = 1;
    /// Detach an endpoint from a domain.
    pub const DETACH: u8 = 2;
    /// Map a range.
    pub const MAP: u8 = 3;
    /// Unmap a range.
    pub const UNMAP: u8 = 4;
    /// Probe an endpoint's properties.
    pub const PROBE: u8 = 5;
    /// iovmm vendor request: register the guest's DMA tracking table.
    pub const COOP_REGISTER: u8 = 0x80;
    /// iovmm vendor request: pin pages the table marks mapped.
    pub const COOP_PIN: u8 = 0x81;
}

/// Request status codes (virtio 1.2, 5.13.6). Chains the device cannot
/// parse at all (no type, unknown type, no room for the tail) get no
/// status: they are returned unwritten, with used length 0.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Virtio communication error (not used by iovmm).
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
    /// Internal device error: the host IOMMU backend failed to apply the
    /// request, or the domain is fenced after such a failure.
    pub const DEVERR: u8 = 3;
    /// Invalid parameter (flags, non-zero reserved fields, truncated
    /// body, domain state, overlapping mapping, reserved region).
    pub const INVAL: u8 = 4;
    /// Out-of-range parameter (domain ID, IOVA range, split mapping).
    pub const RANGE: u8 = 5;
    /// Unknown endpoint or domain.
    pub const NOENT: u8 = 6;
    /// The request itself could not be read from guest memory.
    pub const FAULT: u8 = 7;
    /// Out of resources (too many mappings or domains).
    pub const NOMEM: u8 = 8;
}

/// ATTACH flag: the domain is a bypass (identity) domain.
pub const ATTACH_F_BYPASS: u32 = 1;
/// MAP flag: readable.
pub const MAP_F_READ: u32 = 1;
/// MAP flag: writable.
pub const MAP_F_WRITE: u32 = 2;
/// MAP flag: the target is MMIO.
pub const MAP_F_MMIO: u32 = 4;

/// PROBE property type: end of list.
pub const PROBE_T_NONE: u16 = 0;
/// PROBE property type: reserved memory region.
pub const PROBE_T_RESV_MEM: u16 = 1;
/// Reserved-memory subtype: MSI doorbell window.
pub const RESV_MEM_T_MSI: u8 = 1;

/// Fault reason: the endpoint is not attached to a domain.
pub const FAULT_R_DOMAIN: u8 = 1;
/// Fault reason: no mapping (or not the right permission).
pub const FAULT_R_MAPPING: u8 = 2;
/// Fault flag: read access.
pub const FAULT_F_READ: u32 = 1;
/// Fault flag: write access.
pub const FAULT_F_WRITE: u32 = 2;
/// Fault flag: the address field is valid.
pub const FAULT_F_ADDRESS: u32 = 1 << 8;

/// Size of the request head (type + reserved).
pub const HEAD_LEN: usize = 4;
/// Size of the request tail (status + reserved).
pub const TAIL_LEN: usize = 4;
/// Size of a fault event.
pub const FAULT_LEN: usize = 24;
/// Size of the PROBE request body before its property buffer.
pub const PROBE_BODY_LEN: usize = 4 + 64;

/// Device-readable body length of each request type (after the head).
pub fn body_len(ty: u8) -> Option<usize> {
    match ty {
        req::ATTACH => Some(16),
        req::DETACH => Some(16),
        req::MAP => Some(32),
        req::UNMAP => Some(24),
        req::PROBE => Some(PROBE_BODY_LEN),
        req::COOP_REGISTER | req::COOP_PIN => Some(16),
        _ => None,
    }
}

/// False when a reserved field the device must check is not zero: the
/// ATTACH `reserved[4]` (MUST reject with INVAL) and the UNMAP
/// `reserved[4]` (MAY reject; iovmm does, without unmapping). DETACH and
/// PROBE reserved fields and the head's are ignored, as the spec says.
/// The coop requests' `reserved` must be zero (docs/coop.md).
/// `body` as for [`Request::decode`].
pub fn reserved_is_zero(ty: u8, body: &[u8]) -> bool {
    let at = match ty {
        req::ATTACH => 12,
        req::UNMAP => 20,
        req::COOP_REGISTER | req::COOP_PIN => 12,
        _ => return true,
    };
    body.get(at..at + 4).is_some_and(|r| r == [0; 4])
}

/// A decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// ATTACH.
    Attach {
        /// Domain ID.
        domain: u32,
        /// Endpoint ID.
        endpoint: u32,
        /// Flags ([`ATTACH_F_BYPASS`]).
        flags: u32,
    },
    /// DETACH.
    Detach {
        /// Domain ID.
        domain: u32,
        /// Endpoint ID.
        endpoint: u32,
    },
    /// MAP `[virt_start, virt_end]` (inclusive) to `phys_start`.
    Map {
        /// Domain ID.
        domain: u32,
        /// First IOVA.
        virt_start: u64,
        /// Last IOVA (inclusive).
        virt_end: u64,
        /// Guest-physical address of `virt_start`.
        phys_start: u64,
        /// `MAP_F_*` flags.
        flags: u32,
    },
    /// UNMAP `[virt_start, virt_end]` (inclusive).
    Unmap {
        /// Domain ID.
        domain: u32,
        /// First IOVA.
        virt_start: u64,
        /// Last IOVA (inclusive).
        virt_end: u64,
    },
    /// PROBE.
    Probe {
        /// Endpoint ID.
        endpoint: u32,
    },
    /// COOP_REGISTER (vendor): the DMA tracking table's directory.
    CoopRegister {
        /// Guest-physical address of the directory.
        dir_gpa: u64,
        /// Number of directory entries (leaves).
        nr_leaves: u32,
    },
    /// COOP_PIN (vendor): pin `[gfn, gfn + nr_pages)`.
    CoopPin {
        /// First guest page frame.
        gfn: u64,
        /// Number of 4 KiB pages.
        nr_pages: u32,
    },
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Request {
    /// Decodes the body of a request of type `ty`. `body` must hold at
    /// least [`body_len`]`(ty)` bytes; `None` for unknown types or short
    /// bodies.
    pub fn decode(ty: u8, body: &[u8]) -> Option<Request> {
        if body.len() < body_len(ty)? {
            return None;
        }
        Some(match ty {
            req::ATTACH => Request::Attach {
                domain: le32(body, 0),
                endpoint: le32(body, 4),
                flags: le32(body, 8),
            },
            req::DETACH => Request::Detach {
                domain: le32(body, 0),
                endpoint: le32(body, 4),
            },
            req::MAP => Request::Map {
                domain: le32(body, 0),
                virt_start: le64(body, 4),
                virt_end: le64(body, 12),
                phys_start: le64(body, 20),
                flags: le32(body, 28),
            },
            req::UNMAP => Request::Unmap {
                domain: le32(body, 0),
                virt_start: le64(body, 4),
                virt_end: le64(body, 12),
            },
            req::PROBE => Request::Probe {
                endpoint: le32(body, 0),
            },
            req::COOP_REGISTER => Request::CoopRegister {
                dir_gpa: le64(body, 0),
                nr_leaves: le32(body, 8),
            },
            req::COOP_PIN => Request::CoopPin {
                gfn: le64(body, 0),
                nr_pages: le32(body, 8),
            },
            _ => return None,
        })
    }

    /// Index of the request type for per-type counters (into [`KIND_NAMES`]).
    pub fn kind(&self) -> usize {
        match self {
            Request::Attach { .. } => 0,
            Request::Detach { .. } => 1,
            Request::Map { .. } => 2,
            Request::Unmap { .. } => 3,
            Request::Probe { .. } => 4,
            Request::CoopRegister { .. } => 5,
            Request::CoopPin { .. } => 6,
        }
    }
}

/// Names of the request kinds, indexed by [`Request::kind`].
pub const KIND_NAMES: [&str; KINDS] = [
    "attach",
    "detach",
    "map",
    "unmap",
    "probe",
    "coop_register",
    "coop_pin",
];
/// Number of request kinds.
pub const KINDS: usize = 7;

/// Encodes a fault event.
pub fn encode_fault(reason: u8, flags: u32, endpoint: u32, address: u64) -> [u8; FAULT_LEN] {
    let mut e = [0u8; FAULT_LEN];
    e[0] = reason;
    e[4..8].copy_from_slice(&flags.to_le_bytes());
    e[8..12].copy_from_slice(&endpoint.to_le_bytes());
    e[16..24].copy_from_slice(&address.to_le_bytes());
    e
}

/// Encodes a RESV_MEM property for `[start, end]` (inclusive).
pub fn encode_resv_mem(subtype: u8, start: u64, end: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0..2].copy_from_slice(&PROBE_T_RESV_MEM.to_le_bytes());
    p[2..4].copy_from_slice(&20u16.to_le_bytes());
    p[4] = subtype;
    p[8..16].copy_from_slice(&start.to_le_bytes());
    p[16..24].copy_from_slice(&end.to_le_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_request_type() {
        let mut b = [0u8; 68];
        b[0..4].copy_from_slice(&7u32.to_le_bytes());
        b[4..8].copy_from_slice(&8u32.to_le_bytes());
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            Request::decode(req::ATTACH, &b),
            Some(Request::Attach {
                domain: 7,
                endpoint: 8,
                flags: 1
            })
        );
        let mut m = [0u8; 32];
        m[0..4].copy_from_slice(&3u32.to_le_bytes());
        m[4..12].copy_from_slice(&0x1000u64.to_le_bytes());
        m[12..20].copy_from_slice(&0x1fffu64.to_le_bytes());
        m[20..28].copy_from_slice(&0x8000u64.to_le_bytes());
        m[28..32].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            Request::decode(req::MAP, &m),
            Some(Request::Map {
                domain: 3,
                virt_start: 0x1000,
                virt_end: 0x1fff,
                phys_start: 0x8000,
                flags: 3
            })
        );
        assert_eq!(
            Request::decode(req::PROBE, &b),
            Some(Request::Probe { endpoint: 7 })
        );
    }

    #[test]
    fn short_or_unknown_requests_do_not_decode() {
        assert_eq!(Request::decode(req::MAP, &[0; 31]), None);
        assert_eq!(Request::decode(req::PROBE, &[0; 67]), None);
        assert_eq!(Request::decode(9, &[0; 100]), None);
        assert_eq!(Request::decode(req::COOP_PIN, &[0; 15]), None);
        assert_eq!(body_len(0), None);
    }

    #[test]
    fn reserved_fields_that_must_be_zero() {
        let mut attach = [0u8; 16];
        assert!(reserved_is_zero(req::ATTACH, &attach));
        attach[15] = 1;
        assert!(!reserved_is_zero(req::ATTACH, &attach));
        let mut unmap = [0u8; 24];
        unmap[20] = 0x80;
        assert!(!reserved_is_zero(req::UNMAP, &unmap));
        let detach = [0xffu8; 16];
        assert!(reserved_is_zero(req::DETACH, &detach), "ignored");
        assert!(reserved_is_zero(req::PROBE, &[0xff; 68]), "ignored");
        assert!(!reserved_is_zero(req::ATTACH, &[0; 12]), "short");
        let mut pin = [0u8; 16];
        assert!(reserved_is_zero(req::COOP_PIN, &pin));
        pin[13] = 1;
        assert!(!reserved_is_zero(req::COOP_PIN, &pin));
    }

    #[test]
    fn event_and_property_encodings() {
        let f = encode_fault(
            FAULT_R_MAPPING,
            FAULT_F_WRITE | FAULT_F_ADDRESS,
            8,
            0xdead_0000,
        );
        assert_eq!(f[0], 2);
        assert_eq!(u32::from_le_bytes([f[4], f[5], f[6], f[7]]), 0x102);
        assert_eq!(u32::from_le_bytes([f[8], f[9], f[10], f[11]]), 8);
        assert_eq!(le64(&f, 16), 0xdead_0000);
        let p = encode_resv_mem(RESV_MEM_T_MSI, 0xfee0_0000, 0xfeef_ffff);
        assert_eq!(&p[0..4], &[1, 0, 20, 0]);
        assert_eq!(p[4], 1);
        assert_eq!(le64(&p, 16), 0xfeef_ffff);
    }
}
