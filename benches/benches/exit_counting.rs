//! What iovmm's own exit counting adds to every vCPU exit it handles
//! (docs/performance.md, "VM exits by reason"): the clock read pair
//! around the handler and the single-writer update of the per-vCPU
//! counters, against the handler alone.
//!
//! `cargo bench -p iovmm-benches --bench exit_counting`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use vmm::vstate::exit_stats::{ExitKind, ExitRegion, ExitStats};

fn exit_counting(c: &mut Criterion) {
    let stats = ExitStats::new();
    let mut g = c.benchmark_group("exit_counting");
    // The counter update alone (what a vCPU thread writes per exit).
    g.bench_function("record", |b| {
        b.iter(|| {
            stats.record(
                black_box(ExitKind::MmioWrite),
                black_box(Some(ExitRegion::MmioPciBar)),
                black_box(120),
            )
        })
    });
    // Region lookup of an MMIO address (a few compares).
    g.bench_function("region_of_mmio", |b| {
        b.iter(|| ExitRegion::of_mmio(black_box(0xc000_1000)))
    });
    // Everything the run loop adds per exit: two clock reads, the region
    // and the update.
    g.bench_function("clock_pair_and_record", |b| {
        b.iter(|| {
            let t0 = Instant::now();
            let region = ExitRegion::of_mmio(black_box(0xc000_1000));
            stats.record(
                ExitKind::MmioWrite,
                Some(region),
                t0.elapsed().as_nanos() as u64,
            )
        })
    });
    g.finish();
    assert!(stats.get(ExitKind::MmioWrite).0 > 0);
}

criterion_group!(benches, exit_counting);
criterion_main!(benches);
