//! Microbenchmarks of the per-request host path of the virtual IOMMU:
//! what one guest MAP/UNMAP costs the host CPU, below and above the
//! virtqueue, and what translation costs an emulated device.
//!
//! `cargo bench -p iovmm-benches --bench request_path`; the numbers and
//! what each bench covers are in docs/performance.md.
//!
//! Every request is a 4 KiB MAP or UNMAP of domain 1, to which endpoint 8
//! is attached with an IOTLB (an emulated device's); the setup checks once
//! that the requests succeed, so no bench measures an error path. MAP and
//! UNMAP are timed separately in blocks of [`BLOCK`] distinct ranges (the
//! other half of each block runs untimed) so the domain stays small, and
//! together as the MAP+UNMAP pair of one range that the guest driver sends
//! per DMA.

use std::hint::black_box;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use devices::dma::{DmaIotlb, NoTranslation};
use vfio_passthrough::dma::DmaMapper;
use vfio_passthrough::VfioBackend;
use viommu::backend::HostIommu;
use viommu::bench::{self as vb, PlacedRequest, RequestQueue};
use viommu::device::IommuState;
use viommu::protocol::{status, Request, MAP_F_READ, MAP_F_WRITE};
use viommu::tables::{Limits, Tables, GRANULE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions};

/// Distinct ranges per timed block.
const BLOCK: u64 = 64;
/// Requests per pass in the batched bench (as in the lab flood).
const BATCH: u64 = 128;
const DOMAIN: u32 = 1;
const ENDPOINT: u32 = 8;
/// First IOVA of the benched ranges.
const IOVA: u64 = 0x1000_0000;
/// Guest-physical target of the benched ranges.
const PHYS: u64 = 0x8_0000;
const RW: u32 = MAP_F_READ | MAP_F_WRITE;

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("bench RAM")
}

fn iova(i: u64) -> u64 {
    IOVA + i * GRANULE
}

fn map_req(i: u64) -> Request {
    Request::Map {
        domain: DOMAIN,
        virt_start: iova(i),
        virt_end: iova(i) + GRANULE - 1,
        phys_start: PHYS,
        flags: RW,
    }
}

fn unmap_req(i: u64) -> Request {
    Request::Unmap {
        domain: DOMAIN,
        virt_start: iova(i),
        virt_end: iova(i) + GRANULE - 1,
    }
}

/// Times `timed` over `iters` calls in blocks of [`BLOCK`], running
/// `untimed` on the same indexes after each block.
fn blocks(iters: u64, mut timed: impl FnMut(u64), mut untimed: impl FnMut(u64)) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(BLOCK);
        let t = Instant::now();
        for i in 0..n {
            timed(i);
        }
        total += t.elapsed();
        for i in 0..n {
            untimed(i);
        }
        done += n;
    }
    total
}

/// IOMMU state with endpoint 8 attached to domain 1 and an IOTLB in front
/// of it whose misses are resolved by the IOMMU, as for a virtio device.
fn iommu() -> (Arc<IommuState>, DmaIotlb) {
    let state = IommuState::new(Tables::new(Limits::default(), None)).expect("eventfd");
    let tlb = DmaIotlb::new(state.endpoint(ENDPOINT));
    let mut t = state.tables.write().expect("tables");
    t.add_endpoint(ENDPOINT, Some(tlb.clone()), false);
    assert_eq!(t.attach(DOMAIN, ENDPOINT, 0).status, status::OK);
    drop(t);
    (state, tlb)
}

/// MAP and UNMAP requests for ranges `0..BLOCK`, laid out in guest memory
/// as the driver does.
fn placed(mem: &GuestMemoryMmap) -> (Vec<PlacedRequest>, Vec<PlacedRequest>) {
    let at = |i: u64, k: u64| 0x10000 + i * 0x80 + k * 0x40;
    let maps = (0..BLOCK)
        .map(|i| vb::place(mem, at(i, 0), &map_req(i)).expect("place"))
        .collect();
    let unmaps = (0..BLOCK)
        .map(|i| vb::place(mem, at(i, 1), &unmap_req(i)).expect("place"))
        .collect();
    (maps, unmaps)
}

/// (a) Request decode + `handle_request`: guest memory reads, decoding,
/// the tables under their lock, the status write and the counters.
fn handle_request(c: &mut Criterion) {
    let (state, _tlb) = iommu();
    let ram = ram();
    let (maps, unmaps) = placed(&ram);
    // The worker reads its queues and requests from plain guest RAM.
    let handle = |r: &PlacedRequest| black_box(vb::handle(&state, &ram, r));
    handle(&maps[0]);
    handle(&unmaps[0]);
    assert_eq!(vb::status(&ram, &maps[0]), Some(status::OK));
    assert_eq!(vb::status(&ram, &unmaps[0]), Some(status::OK));

    let mut g = c.benchmark_group("handle_request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("map", |b| {
        b.iter_custom(|n| {
            blocks(
                n,
                |i| {
                    handle(&maps[i as usize]);
                },
                |i| {
                    handle(&unmaps[i as usize]);
                },
            )
        })
    });
    g.bench_function("unmap", |b| {
        b.iter_custom(|n| {
            blocks(
                n,
                |i| {
                    handle(&unmaps[i as usize]);
                },
                |i| {
                    handle(&maps[i as usize]);
                },
            )
        })
    });
    g.throughput(Throughput::Elements(2));
    g.bench_function("map_unmap_pair", |b| {
        b.iter(|| {
            handle(&maps[0]);
            handle(&unmaps[0]);
        })
    });
    g.finish();
}

/// (b) `Tables::map`/`unmap` alone (no lock, no guest memory), with an
/// IOTLB on the endpoint; and with a hardware endpoint whose mappings are
/// mirrored into a [`VfioBackend`] over [`NullMapper`].
fn tables(c: &mut Criterion) {
    let tables = |hardware: bool| {
        let backend: Option<Arc<dyn HostIommu>> =
            hardware.then(|| Arc::new(vfio_backend()) as Arc<dyn HostIommu>);
        let mut t = Tables::new(Limits::default(), backend);
        let tlb = DmaIotlb::new(Arc::new(NoTranslation));
        t.add_endpoint(ENDPOINT, Some(tlb), hardware);
        assert_eq!(t.attach(DOMAIN, ENDPOINT, 0).status, status::OK);
        t
    };
    let map = |t: &mut Tables, i: u64| {
        black_box(t.map(DOMAIN, iova(i), iova(i) + GRANULE - 1, PHYS, RW));
    };
    let unmap = |t: &mut Tables, i: u64| {
        black_box(t.unmap(DOMAIN, iova(i), iova(i) + GRANULE - 1));
    };
    let mut g = c.benchmark_group("tables");
    for (name, hw) in [("iotlb", false), ("vfio", true)] {
        let t = std::cell::RefCell::new(tables(hw));
        {
            let mut t = t.borrow_mut();
            assert_eq!(t.map(DOMAIN, iova(0), iova(1) - 1, PHYS, RW).status, 0);
            assert_eq!(t.unmap(DOMAIN, iova(0), iova(1) - 1).status, 0);
        }
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}/map"), |b| {
            b.iter_custom(|n| {
                blocks(
                    n,
                    |i| map(&mut t.borrow_mut(), i),
                    |i| unmap(&mut t.borrow_mut(), i),
                )
            })
        });
        g.bench_function(format!("{name}/unmap"), |b| {
            b.iter_custom(|n| {
                blocks(
                    n,
                    |i| unmap(&mut t.borrow_mut(), i),
                    |i| map(&mut t.borrow_mut(), i),
                )
            })
        });
        g.throughput(Throughput::Elements(2));
        g.bench_function(format!("{name}/map_unmap_pair"), |b| {
            let mut t = t.borrow_mut();
            b.iter(|| {
                map(&mut t, 0);
                unmap(&mut t, 0);
            })
        });
    }
    g.finish();
}

/// (c) Translation of an emulated device's 8-byte access (a descriptor
/// read) through its [`DmaMemory`]: an IOTLB hit, and a miss resolved by
/// the IOMMU's tables (after dropping the IOTLB, included in the time).
fn translate(c: &mut Criterion) {
    let (state, tlb) = iommu();
    let ram = ram();
    let mut t = state.tables.write().expect("tables");
    for i in 0..BLOCK {
        assert_eq!(
            t.map(DOMAIN, iova(i), iova(i) + GRANULE - 1, PHYS, RW)
                .status,
            status::OK
        );
    }
    drop(t);
    let mem = tlb.memory(ram, true);
    let at = GuestAddress(iova(BLOCK / 2) + 0x100);
    assert!(mem.read_obj::<u64>(at).is_ok());
    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("iotlb_hit", |b| {
        b.iter(|| black_box(mem.read_obj::<u64>(black_box(at))))
    });
    g.bench_function("iotlb_invalidate_all", |b| b.iter(|| tlb.invalidate_all()));
    g.bench_function("iotlb_miss", |b| {
        b.iter(|| {
            tlb.invalidate_all();
            black_box(mem.read_obj::<u64>(black_box(at)))
        })
    });
    g.finish();
    assert_eq!(
        state
            .stats
            .faults
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// A VFIO container that accepts every ioctl and does nothing: the
/// benches measure [`VfioBackend`]'s bookkeeping, not the kernel.
struct NullMapper;

impl DmaMapper for NullMapper {
    unsafe fn map_dma(&self, _: u64, _: u64, _: u64, _: bool, _: bool) -> io::Result<()> {
        Ok(())
    }

    fn unmap_dma(&self, _iova: u64, len: u64) -> io::Result<u64> {
        Ok(len)
    }
}

fn vfio_backend() -> VfioBackend {
    VfioBackend::new(Arc::new(NullMapper), Arc::new(ram()))
}

/// (d) [`VfioBackend`] map/unmap of 4 KiB of guest RAM over [`NullMapper`].
fn vfio(c: &mut Criterion) {
    let b = vfio_backend();
    let map = |i: u64| b.map(iova(i), PHYS, GRANULE, Permissions::ReadWrite);
    let unmap = |i: u64| b.unmap(iova(i), GRANULE);
    map(0).expect("map");
    assert_eq!(unmap(0), Ok(GRANULE));
    let mut g = c.benchmark_group("vfio_backend");
    g.throughput(Throughput::Elements(1));
    g.bench_function("map", |bn| {
        bn.iter_custom(|n| {
            blocks(
                n,
                |i| {
                    let _ = black_box(map(i));
                },
                |i| {
                    let _ = black_box(unmap(i));
                },
            )
        })
    });
    g.bench_function("unmap", |bn| {
        bn.iter_custom(|n| {
            blocks(
                n,
                |i| {
                    let _ = black_box(unmap(i));
                },
                |i| {
                    let _ = black_box(map(i));
                },
            )
        })
    });
    g.throughput(Throughput::Elements(2));
    g.bench_function("map_unmap_pair", |bn| {
        bn.iter(|| {
            let _ = black_box(map(0));
            let _ = black_box(unmap(0));
        })
    });
    g.finish();
}

/// (e) A whole pass: [`BATCH`] requests (MAP/UNMAP pairs of distinct
/// ranges) published on the request virtqueue, drained by the worker's
/// notification-driven pass. Publishing is the guest's work and is not
/// timed.
fn queue(c: &mut Criterion) {
    let (state, _tlb) = iommu();
    let mut q = RequestQueue::new(state.clone(), 256).expect("queue");
    let reqs: Vec<PlacedRequest> = (0..BATCH / 2)
        .flat_map(|i| [map_req(i), unmap_req(i)])
        .enumerate()
        .map(|(k, r)| vb::place(q.ram(), 0x10000 + k as u64 * 0x40, &r).expect("place"))
        .collect();
    let pass = |q: &mut RequestQueue| {
        for r in &reqs {
            q.publish(r);
        }
        let before = q.used_idx();
        let t = Instant::now();
        q.process();
        let d = t.elapsed();
        assert_eq!(q.used_idx().wrapping_sub(before), BATCH as u16);
        d
    };
    pass(&mut q);
    let ok = reqs
        .iter()
        .all(|r| vb::status(q.ram(), r) == Some(status::OK));
    assert!(ok, "every request of the batch succeeds");
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("batch_128_map_unmap", |b| {
        b.iter_custom(|n| (0..n).map(|_| pass(&mut q)).sum())
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = handle_request, tables, translate, vfio, queue
}
criterion_main!(benches);
