//! Drives the request queue with arbitrary bytes: the body of the fuzz
//! target (`viommu/fuzz`) and of the corpus-replay unit test.

use std::sync::Arc;

use devices::virtio::testing::{NoInterrupt, TestQueue};
use vm_memory::{Bytes, GuestAddress};

use crate::device::{IommuState, IommuWorker};
use crate::tables::{Limits, Tables};

/// Where request bytes are placed in guest memory.
const DATA: u64 = 0x10000;

/// Interprets `data` as guest activity: bytes 0..4096 become guest memory
/// at 0x10000 (request contents), then each 8-byte record is one raw
/// descriptor (address offset, length, flags, next) made available as the
/// head of a chain. The queue is processed as the device would; nothing
/// may panic, and every popped chain must be returned.
pub fn run(data: &[u8]) -> Arc<IommuState> {
    let (mem_part, descs) = data.split_at(data.len().min(4096));
    let mut tq = TestQueue::new(16);
    tq.ram
        .write_slice(mem_part, GuestAddress(DATA))
        .expect("RAM covers the data area");
    let mut tables = Tables::new(Limits::default(), None);
    tables.add_endpoint(8, None, false);
    tables.add_endpoint(16, None, false);
    tables.bypass_config = true;
    let state = IommuState::new(tables).expect("eventfd");
    for (i, rec) in descs.chunks_exact(8).take(16).enumerate() {
        let off = u64::from(u16::from_le_bytes([rec[0], rec[1]]));
        // Mostly inside the data area; the top bit aims anywhere.
        let addr = if rec[1] & 0x80 != 0 {
            u64::from(u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]])) << 4
        } else {
            DATA + off % 4096
        };
        let len = u32::from(u16::from_le_bytes([rec[4], rec[5]])) % 512;
        let flags = u16::from(rec[6] & 0x7);
        let next = u16::from(rec[7] % 16);
        tq.write_desc(i as u16, addr, len, flags, next);
        if rec[6] & 0x80 == 0 {
            tq.publish(i as u16);
        }
    }
    let mut w = IommuWorker::for_test(
        state.clone(),
        tq.memory(),
        tq.queue(),
        Arc::new(NoInterrupt),
    )
    .expect("eventfd");
    let _ = w.run_requests();
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn corpus_replays_without_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/requests");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("corpus directory") {
            let data = std::fs::read(entry.expect("entry").path()).expect("read");
            run(&data);
            n += 1;
        }
        assert!(n >= 5, "corpus has {n} inputs");
    }

    #[test]
    fn a_valid_attach_and_map_go_through() {
        // Memory: ATTACH(domain 1, ep 8) at 0, tail at 0x20; MAP at 0x40, tail at 0x80.
        let mut m = vec![0u8; 0x100];
        m[0] = 1;
        m[4..8].copy_from_slice(&1u32.to_le_bytes());
        m[8..12].copy_from_slice(&8u32.to_le_bytes());
        m[0x40] = 3;
        m[0x44..0x48].copy_from_slice(&1u32.to_le_bytes());
        m[0x48..0x50].copy_from_slice(&0x1000u64.to_le_bytes());
        m[0x50..0x58].copy_from_slice(&0x1fffu64.to_le_bytes());
        m[0x58..0x60].copy_from_slice(&0x8000u64.to_le_bytes());
        m[0x60..0x64].copy_from_slice(&3u32.to_le_bytes());
        m.resize(4096, 0);
        let d = |off: u16, len: u16, flags: u8, next: u8| {
            let mut r = off.to_le_bytes().to_vec();
            r.extend_from_slice(&[0, 0]);
            r.extend_from_slice(&len.to_le_bytes());
            r.extend_from_slice(&[flags, next]);
            r
        };
        // Chains: 0 → 1 (attach), 2 → 3 (map); 1 and 3 not published.
        m.extend(d(0, 20, 1, 1));
        m.extend(d(0x20, 4, 2 | 0x80, 0));
        m.extend(d(0x40, 36, 1, 3));
        m.extend(d(0x80, 4, 2 | 0x80, 0));
        let s = run(&m);
        assert_eq!(s.stats.requests[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.requests[2].load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.failed[2].load(Ordering::Relaxed), 0);
        assert_eq!(s.tables.read().unwrap().mapped_bytes(), 0x1000);
    }

    #[test]
    fn corpus_seeds_for_reserved_fields_and_indirect_tables() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/requests");
        // seed-12: ATTACH with a reserved byte set (INVAL), then a valid one.
        let s = run(&std::fs::read(dir.join("seed-12")).expect("seed-12"));
        assert_eq!(s.stats.requests[0].load(Ordering::Relaxed), 2);
        assert_eq!(s.stats.failed[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.tables.read().unwrap().domain_of(8), Some(1));
        // seed-13: a MAP through an indirect table (no domain: NOENT), and
        // a nested table (returned unwritten, counted).
        let s = run(&std::fs::read(dir.join("seed-13")).expect("seed-13"));
        assert_eq!(s.stats.requests[2].load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.failed[2].load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.malformed.load(Ordering::Relaxed), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_guest_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4300)) {
            run(&data);
        }
    }
}
