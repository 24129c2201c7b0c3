//! The disks and NICs of a configuration: ids, MAC addresses and tap
//! names checked, specs built into [`DiskConfig`]s and [`NetConfig`]s.

use super::*;

/// The default id of the `index`-th disk: `vda`, `vdb`, ..., `vdz`, `vdaa`...
pub fn default_disk_id(index: usize) -> String {
    let mut letters = Vec::new();
    let mut n = index;
    loop {
        // n % 26 < 26, so the sum is an ASCII lowercase letter.
        letters.push(char::from(b'a' + (n % 26) as u8));
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    let suffix: String = letters.into_iter().rev().collect();
    format!("vd{suffix}")
}

pub(super) fn build_disks(specs: Vec<DiskSpec>) -> Result<Vec<DiskConfig>, ConfigError> {
    let mut disks: Vec<DiskConfig> = Vec::with_capacity(specs.len());
    for (i, d) in specs.into_iter().enumerate() {
        let id = d.id.unwrap_or_else(|| default_disk_id(i));
        if id.is_empty() || id.len() > DISK_ID_MAX_LEN || !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ConfigError::new(
                format!("disk id `{id}` is invalid"),
                format!("use 1 to {DISK_ID_MAX_LEN} printable ASCII characters without spaces"),
            ));
        }
        if disks.iter().any(|o| o.id == id) {
            return Err(ConfigError::new(
                format!("two disks have the id `{id}`"),
                "give each disk a unique id (id=... / [[disk]] id)",
            ));
        }
        let what = format!("disk {id}:");
        let fix = format!(
            "create the image (e.g. truncate -s 1G {}) or fix the disk path",
            d.path.display()
        );
        check_readable_file(&what, &d.path, &fix)?;
        if !d.readonly {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&d.path)
                .map_err(|e| {
                    ConfigError::new(
                        format!("disk {id}: {} is not writable ({e})", d.path.display()),
                        "fix its permissions or set readonly=on / readonly = true",
                    )
                })?;
        }
        let canon = std::fs::canonicalize(&d.path).unwrap_or_else(|_| d.path.clone());
        for o in &disks {
            let same = std::fs::canonicalize(&o.path).unwrap_or_else(|_| o.path.clone()) == canon;
            if same && !(o.readonly && d.readonly) {
                return Err(ConfigError::new(
                    format!(
                        "disks {} and {id} use the same image {}",
                        o.id,
                        d.path.display()
                    ),
                    "give each writable disk its own image, or make both readonly",
                ));
            }
        }
        disks.push(DiskConfig {
            path: d.path,
            readonly: d.readonly,
            id,
            iommu: d.iommu,
        });
    }
    Ok(disks)
}

/// The default MAC of the `index`-th network device: locally administered
/// `52:54:00:12:xx:xx` with the index in the last two bytes.
pub fn default_mac(index: usize) -> [u8; 6] {
    let i = (index as u16).wrapping_add(0x3456);
    let [hi, lo] = i.to_be_bytes();
    [0x52, 0x54, 0x00, 0x12, hi, lo]
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`); rejects multicast and zero.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let bad = || {
        ConfigError::new(
            format!("MAC address `{s}` is invalid"),
            "use six hex bytes of a unicast address, e.g. 52:54:00:12:34:56",
        )
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for byte in mac.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks a TAP name the way Linux does (`dev_valid_name`).
pub fn check_tap_name(name: &str) -> Result<(), ConfigError> {
    let fix = || {
        format!(
            "use 1 to {} characters without '/', ':' or spaces, e.g. tap0",
            IFNAMSIZ - 1
        )
    };
    if name.is_empty() {
        return Err(ConfigError::new("tap name is empty", fix()));
    }
    if name.len() > IFNAMSIZ - 1 {
        return Err(ConfigError::new(
            format!("tap name `{name}` is longer than {} bytes", IFNAMSIZ - 1),
            fix(),
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError::new(
            format!("tap name `{name}` is invalid"),
            fix(),
        ));
    }
    Ok(())
}

pub(super) fn build_nets(specs: Vec<NetSpec>) -> Result<Vec<NetConfig>, ConfigError> {
    let mut nets: Vec<NetConfig> = Vec::with_capacity(specs.len());
    for (i, n) in specs.into_iter().enumerate() {
        check_tap_name(&n.tap)?;
        if nets.iter().any(|o| o.tap == n.tap) {
            return Err(ConfigError::new(
                format!("tap `{}` is used by two network devices", n.tap),
                "give each --net / [[net]] its own tap",
            ));
        }
        let mac = n.mac.unwrap_or_else(|| default_mac(i));
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(ConfigError::new(
                format!("MAC address {} is not a unicast address", format_mac(&mac)),
                "use e.g. 52:54:00:12:34:56",
            ));
        }
        if let Some(o) = nets.iter().find(|o| o.mac == mac) {
            return Err(ConfigError::new(
                format!(
                    "taps {} and {} have the same MAC {}",
                    o.tap,
                    n.tap,
                    format_mac(&mac)
                ),
                "give each network device its own mac",
            ));
        }
        nets.push(NetConfig {
            tap: n.tap,
            mac,
            iommu: n.iommu,
        });
    }
    Ok(nets)
}
