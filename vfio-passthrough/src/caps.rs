//! The device's capability list and the filtered list the guest sees.
//!
//! The guest sees only the capabilities this crate emulates or can safely
//! pass through: MSI and MSI-X (emulated) and PCI Express (passed through
//! to the host, whose VFIO driver already filters writes). Every other
//! capability (power management, vendor-specific, ...) is skipped by
//! relinking the next pointers, and reads of its bytes return zero. Kept
//! capabilities stay at their host offsets, so drivers that hard-code an
//! offset still find them.

/// Capability ID: power management (hidden).
pub const CAP_ID_PM: u8 = 0x01;
/// Capability ID: MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// Capability ID: vendor specific (hidden).
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Capability ID: PCI Express.
pub const CAP_ID_PCIE: u8 = 0x10;
/// Capability ID: MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// Offset of the capability pointer in the header.
const CAP_POINTER: usize = 0x34;
/// Status register bit: the capability list is valid.
pub(crate) const STATUS_CAP_LIST: u16 = 1 << 4;
/// First byte a capability may start at.
const CAP_AREA_START: usize = 0x40;
/// End of the conventional configuration space.
pub const CONFIG_SIZE: usize = 0x100;
/// At most this many capabilities fit in 192 bytes (4 bytes each); a
/// longer walk is a loop.
const MAX_CAPS: usize = 48;

/// One capability as laid out in configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID.
    pub id: u8,
    /// Offset of its first byte.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

impl Capability {
    /// True when `byte` lies inside the capability.
    pub fn contains(&self, byte: usize) -> bool {
        byte >= self.offset && byte < self.offset + self.len
    }

    /// One past its last byte.
    pub fn end(&self) -> usize {
        self.offset + self.len
    }
}

/// Walks the host's capability chain in a snapshot of the first 256 bytes
/// of configuration space. Stops at the end of the chain, at a pointer
/// outside the capability area, or when the chain loops.
pub fn walk(cfg: &[u8; CONFIG_SIZE]) -> Vec<(u8, usize)> {
    let status = u16::from_le_bytes([cfg[6], cfg[7]]);
    let mut out = Vec::new();
    if status & STATUS_CAP_LIST == 0 {
        return out;
    }
    let mut ptr = usize::from(cfg[CAP_POINTER] & !3);
    while ptr >= CAP_AREA_START && ptr + 2 <= CONFIG_SIZE && out.len() < MAX_CAPS {
        if out.iter().any(|&(_, o)| o == ptr) {
            break;
        }
        out.push((cfg[ptr], ptr));
        ptr = usize::from(cfg[ptr + 1] & !3);
    }
    out
}

/// Length of capability `id` at `offset`, for the kept kinds.
fn kept_len(cfg: &[u8; CONFIG_SIZE], id: u8, offset: usize) -> Option<usize> {
    let len = match id {
        CAP_ID_MSI => {
            let ctl = u16::from_le_bytes([cfg[offset + 2], *cfg.get(offset + 3)?]);
            crate::msi::cap_len(ctl)
        }
        CAP_ID_MSIX => 12,
        // PCIe capability version 1 ends after the slot registers; version
        // 2 adds the "2" registers up to 0x3c.
        CAP_ID_PCIE => match cfg.get(offset + 2)? & 0xf {
            1 => 0x24,
            _ => 0x3c,
        },
        _ => return None,
    };
    Some(len.min(CONFIG_SIZE - offset))
}

/// The guest-visible capability chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapLayout {
    kept: Vec<Capability>,
    hidden: Vec<(u8, usize)>,
}

impl CapLayout {
    /// Filters the host chain in `cfg`: keeps the first MSI, MSI-X and PCI
    /// Express capabilities (in chain order) and hides the rest. A kept
    /// capability that would overlap one already kept is hidden too.
    pub fn from_config(cfg: &[u8; CONFIG_SIZE]) -> Self {
        let mut layout = CapLayout::default();
        let all = walk(cfg);
        for &(id, offset) in &all {
            // A capability ends at the next one in configuration space at
            // the latest (a PCIe v1 endpoint may implement fewer registers).
            let limit = all
                .iter()
                .map(|&(_, o)| o)
                .filter(|&o| o > offset)
                .min()
                .unwrap_or(CONFIG_SIZE);
            let cap = kept_len(cfg, id, offset).map(|len| Capability {
                id,
                offset,
                len: len.min(limit - offset),
            });
            let keep = cap.filter(|c| {
                !layout
                    .kept
                    .iter()
                    .any(|k| k.id == c.id || (c.offset < k.end() && k.offset < c.end()))
            });
            match keep {
                Some(c) => layout.kept.push(c),
                None => layout.hidden.push((id, offset)),
            }
        }
        layout
    }

    /// The kept capabilities in chain order.
    pub fn kept(&self) -> &[Capability] {
        &self.kept
    }

    /// The hidden capabilities as `(id, offset)`, for logging.
    pub fn hidden(&self) -> &[(u8, usize)] {
        &self.hidden
    }

    /// Hides the kept capability with `id` (e.g. MSI when the host offers
    /// no MSI vectors), relinking around it.
    pub fn hide(&mut self, id: u8) {
        if let Some(i) = self.kept.iter().position(|c| c.id == id) {
            let c = self.kept.remove(i);
            self.hidden.push((c.id, c.offset));
        }
    }

    /// The kept capability with `id`.
    pub fn find_id(&self, id: u8) -> Option<Capability> {
        self.kept.iter().copied().find(|c| c.id == id)
    }

    /// The kept capability containing config byte `byte`.
    pub fn at(&self, byte: usize) -> Option<Capability> {
        self.kept.iter().copied().find(|c| c.contains(byte))
    }

    /// Value of the header's capability pointer (0: no capabilities).
    pub fn first(&self) -> u8 {
        self.kept.first().map_or(0, |c| c.offset as u8)
    }

    /// Value of the next pointer of the capability at `offset`.
    pub fn next_after(&self, offset: usize) -> u8 {
        let i = self.kept.iter().position(|c| c.offset == offset);
        i.and_then(|i| self.kept.get(i + 1))
            .map_or(0, |c| c.offset as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with(caps: &[(usize, &[u8])]) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[6] = STATUS_CAP_LIST as u8;
        c[CAP_POINTER] = caps.first().map_or(0, |c| c.0 as u8);
        for (i, (off, body)) in caps.iter().enumerate() {
            c[*off..*off + body.len()].copy_from_slice(body);
            c[off + 1] = caps.get(i + 1).map_or(0, |n| n.0 as u8);
        }
        c
    }

    #[test]
    fn keeps_msi_msix_pcie_and_relinks_around_the_rest() {
        let c = cfg_with(&[
            (0x40, &[CAP_ID_PM, 0, 3, 0]),
            (0x50, &[CAP_ID_MSI, 0, 0x80, 0]),
            (0x68, &[CAP_ID_VENDOR, 0, 8, 0]),
            (0x70, &[CAP_ID_PCIE, 0, 2, 0]),
            (0xb0, &[CAP_ID_MSIX, 0, 4, 0]),
        ]);
        let l = CapLayout::from_config(&c);
        let ids: Vec<u8> = l.kept().iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![CAP_ID_MSI, CAP_ID_PCIE, CAP_ID_MSIX]);
        assert_eq!(l.first(), 0x50);
        assert_eq!(l.next_after(0x50), 0x70);
        assert_eq!(l.next_after(0x70), 0xb0);
        assert_eq!(l.next_after(0xb0), 0);
        assert_eq!(l.next_after(0x40), 0, "hidden capabilities have no next");
        assert_eq!(l.hidden(), &[(CAP_ID_PM, 0x40), (CAP_ID_VENDOR, 0x68)]);
        assert_eq!(l.find_id(CAP_ID_MSI).unwrap().len, 14, "64-bit MSI");
        assert_eq!(l.find_id(CAP_ID_PCIE).unwrap().len, 0x3c);
        assert_eq!(l.at(0x7f).unwrap().id, CAP_ID_PCIE);
        assert_eq!(l.at(0x44), None);
        let mut l = l;
        l.hide(CAP_ID_PCIE);
        assert_eq!(l.next_after(0x50), 0xb0);
        assert_eq!(l.at(0x7f), None);
    }

    #[test]
    fn no_cap_list_bit_means_no_capabilities() {
        let mut c = cfg_with(&[(0x40, &[CAP_ID_MSIX, 0, 0, 0])]);
        c[6] = 0;
        assert!(walk(&c).is_empty());
        assert_eq!(CapLayout::from_config(&c).first(), 0);
    }

    #[test]
    fn hostile_chains_terminate() {
        // A loop, a pointer into the header, and a pointer at the last byte.
        let mut c = cfg_with(&[(0x40, &[CAP_ID_MSIX, 0]), (0x44, &[CAP_ID_PM, 0])]);
        c[0x45] = 0x40;
        assert_eq!(walk(&c).len(), 2);
        c[0x45] = 0x10;
        assert_eq!(walk(&c).len(), 2);
        c[0x45] = 0xff;
        let w = walk(&c);
        assert_eq!(w.last(), Some(&(0, 0xfc)));
        // A PCIe capability near the end is clipped, a duplicate hidden.
        let c = cfg_with(&[(0xf0, &[CAP_ID_PCIE, 0, 2, 0]), (0x40, &[CAP_ID_PCIE, 0])]);
        let l = CapLayout::from_config(&c);
        assert_eq!(l.kept()[0].len, 0x10);
        assert_eq!(l.hidden(), &[(CAP_ID_PCIE, 0x40)]);
    }

    #[test]
    fn capabilities_end_at_the_next_one() {
        let c = cfg_with(&[
            (0x40, &[CAP_ID_PCIE, 0, 1, 0]),
            (0x54, &[CAP_ID_MSIX, 0, 0, 0]),
            (0x60, &[CAP_ID_PM, 0, 0, 0]),
            (0x68, &[CAP_ID_MSI, 0, 0x80, 0]),
        ]);
        let l = CapLayout::from_config(&c);
        let spans: Vec<(u8, usize, usize)> =
            l.kept().iter().map(|c| (c.id, c.offset, c.len)).collect();
        assert_eq!(
            spans,
            vec![
                (CAP_ID_PCIE, 0x40, 0x14),
                (CAP_ID_MSIX, 0x54, 12),
                (CAP_ID_MSI, 0x68, 0x0e)
            ]
        );
        let c = cfg_with(&[
            (0x40, &[CAP_ID_PCIE, 0, 2, 0]),
            (0x48, &[CAP_ID_MSI, 0, 0, 0]),
        ]);
        assert_eq!(CapLayout::from_config(&c).kept()[0].len, 8);
    }
}
