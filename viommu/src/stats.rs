//! Counters of one virtual IOMMU, kept in one place and written as JSON.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::backend::HostErrors;
use crate::coop::{CoopConfig, CoopStats};
use crate::protocol::{status, KINDS, KIND_NAMES};
use crate::tables::GRANULE;

/// Request counters, mapping sizes, faults and per-type handling time.
///
/// The worker updates it once per request with [`PassClock::complete`]:
/// one clock read, relaxed atomic counters, and one uncontended lock for
/// both histograms it feeds.
pub struct Stats {
    /// Requests handled, by type ([`crate::protocol::Request::kind`]).
    pub requests: [AtomicU64; KINDS],
    /// Requests answered with a status other than OK, by type.
    pub failed: [AtomicU64; KINDS],
    /// Chains that could not be decoded (short, unknown type, no room for
    /// the status).
    pub malformed: AtomicU64,
    /// Request-queue notifications received from the driver.
    pub notifications: AtomicU64,
    /// Passes over the request queue (one per wake-up).
    pub batches: AtomicU64,
    /// Passes that contained at least one UNMAP.
    pub unmap_batches: AtomicU64,
    /// 4 KiB pages mapped.
    pub pages_mapped: AtomicU64,
    /// 4 KiB pages unmapped (UNMAP, or domains destroyed by DETACH/ATTACH).
    pub pages_unmapped: AtomicU64,
    /// Bytes mapped now.
    pub mapped_bytes: AtomicU64,
    /// Most bytes ever mapped at once.
    pub peak_mapped_bytes: AtomicU64,
    /// Device accesses refused by the IOMMU (unmapped or not permitted).
    pub faults: AtomicU64,
    /// Fault events delivered to the driver.
    pub fault_events: AtomicU64,
    /// Fault events lost because the driver gave no event buffers.
    pub fault_events_dropped: AtomicU64,
    /// Queues the driver broke (`devices::virtio::ring`): each stopped
    /// being served until the device is reset.
    pub broken_rings: AtomicU64,
    /// Request-queue polling ([`crate::poll`]).
    pub poll: PollStats,
    histograms: Mutex<Histograms>,
    created: Instant,
    /// Host backend failures, counted by the tables.
    pub host: Arc<HostErrors>,
    /// Cooperative mode's counters and parameters, when configured.
    pub coop: Option<(Arc<CoopStats>, CoopConfig)>,
}

/// The latency histograms, under one lock (the worker updates two of them
/// per request).
struct Histograms {
    /// Device time per request, by type: from the previous request's used
    /// entry in the same pass (or the pass seeing its first request) to
    /// this one's.
    latency: [Histogram<u64>; KINDS],
    /// Time from the device seeing a request (wake-up or poll) to its
    /// completion being visible to the guest.
    response: Histogram<u64>,
}

/// What a decoded request did, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed {
    /// Request type ([`crate::protocol::Request::kind`]).
    pub kind: usize,
    /// Status answered.
    pub status: u8,
    /// Bytes it mapped (MAP) or unmapped (others).
    pub bytes: u64,
    /// Bytes mapped after it.
    pub mapped_now: u64,
}

/// The clock of one pass over the request queue, read once per request
/// when its used entry has been published: that reading ends this
/// request's handling time and starts the next one's. The response time
/// (since the pass saw its first request) is the sum of the handling
/// times so far, so each reading costs one subtraction.
#[derive(Clone, Copy, Debug)]
pub struct PassClock {
    last: Instant,
    since_seen: u64,
}

fn nanos(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_nanos()).unwrap_or(u64::MAX)
}

impl PassClock {
    /// Starts the clock when the pass sees its first request.
    pub fn start() -> Self {
        PassClock {
            last: Instant::now(),
            since_seen: 0,
        }
    }

    /// Records one chain whose completion the guest can see now: `done`
    /// for a decoded request, `None` for a malformed one (only its
    /// response time is recorded).
    pub fn complete(&mut self, stats: &Stats, done: Option<Completed>) {
        let now = Instant::now();
        let handling = nanos(self.last, now);
        self.last = now;
        self.since_seen = self.since_seen.saturating_add(handling);
        stats.record_completion(done, handling, self.since_seen);
    }
}

/// Counters of request-queue polling.
#[derive(Default)]
pub struct PollStats {
    /// Requests served by the poll loop, with no notification.
    pub polled_requests: AtomicU64,
    /// Poll passes that found new requests: each replaced one kick of the
    /// driver, i.e. one VM exit.
    pub kicks_avoided: AtomicU64,
    /// Times polling started (after a notification).
    pub sessions: AtomicU64,
    /// Handovers whose re-check after re-enabling notifications found a
    /// request (which was then served by polling).
    pub handover_rechecks: AtomicU64,
    /// CPU time of the device thread spent polling.
    pub cpu_ns: AtomicU64,
    /// Wall time spent polling.
    pub wall_ns: AtomicU64,
}

/// A latency histogram as JSON: count, mean, p50, p99 and max in ns.
fn histogram_json(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "mean_ns": h.mean().round() as u64,
        "p50_ns": h.value_at_quantile(0.5),
        "p99_ns": h.value_at_quantile(0.99),
        "max_ns": h.max(),
    })
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: Default::default(),
            failed: Default::default(),
            malformed: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            unmap_batches: AtomicU64::new(0),
            pages_mapped: AtomicU64::new(0),
            pages_unmapped: AtomicU64::new(0),
            mapped_bytes: AtomicU64::new(0),
            peak_mapped_bytes: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            fault_events: AtomicU64::new(0),
            fault_events_dropped: AtomicU64::new(0),
            broken_rings: AtomicU64::new(0),
            poll: PollStats::default(),
            histograms: Mutex::new(Histograms {
                latency: std::array::from_fn(|_| histogram()),
                response: histogram(),
            }),
            created: Instant::now(),
            host: Arc::default(),
            coop: None,
        }
    }
}

impl Stats {
    /// The same counters, with the host failures read from `host` (the
    /// tables' [`crate::tables::Tables::host_errors`]).
    pub fn with_host(mut self, host: Arc<HostErrors>) -> Self {
        self.host = host;
        self
    }

    /// The same counters, with cooperative mode's (`coop` in the JSON).
    pub fn with_coop(mut self, coop: Arc<CoopStats>, cfg: CoopConfig) -> Self {
        self.coop = Some((coop, cfg));
        self
    }

    /// Records one handled request of `kind` with its status, the bytes it
    /// mapped (MAP) or unmapped (others), the bytes mapped afterwards, and
    /// its handling time.
    pub fn record(&self, kind: usize, st: u8, bytes: u64, mapped_now: u64, nanos: u64) {
        if self.count(kind, st, bytes, mapped_now) {
            self.histograms().latency[kind].saturating_record(nanos.max(1));
        }
    }

    /// Records the response time of one request (see [`Stats`]).
    pub fn record_response(&self, nanos: u64) {
        self.histograms().response.saturating_record(nanos.max(1));
    }

    /// Records one completed chain (see [`PassClock::complete`]): the
    /// counters and handling time of `done` if it was decoded, and the
    /// response time, under one lock.
    pub fn record_completion(&self, done: Option<Completed>, handling: u64, response: u64) {
        let kind = done
            .filter(|d| self.count(d.kind, d.status, d.bytes, d.mapped_now))
            .map(|d| d.kind);
        let mut h = self.histograms();
        if let Some(k) = kind {
            h.latency[k].saturating_record(handling.max(1));
        }
        h.response.saturating_record(response.max(1));
    }

    /// The counters of one request; false for an unknown `kind`.
    fn count(&self, kind: usize, st: u8, bytes: u64, mapped_now: u64) -> bool {
        let Some(r) = self.requests.get(kind) else {
            return false;
        };
        r.fetch_add(1, Ordering::Relaxed);
        if st != status::OK {
            self.failed[kind].fetch_add(1, Ordering::Relaxed);
        }
        let pages = bytes / GRANULE;
        if pages > 0 {
            let c = if kind == 2 {
                &self.pages_mapped
            } else {
                &self.pages_unmapped
            };
            c.fetch_add(pages, Ordering::Relaxed);
        }
        self.mapped_bytes.store(mapped_now, Ordering::Relaxed);
        // Only the worker raises the peak: a plain check first saves the
        // read-modify-write in the common case.
        if mapped_now > self.peak_mapped_bytes.load(Ordering::Relaxed) {
            self.peak_mapped_bytes
                .fetch_max(mapped_now, Ordering::Relaxed);
        }
        true
    }

    fn histograms(&self) -> std::sync::MutexGuard<'_, Histograms> {
        self.histograms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn poll_json(&self) -> Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let total: u64 = self.requests.iter().map(get).sum();
        let polled = get(&self.poll.polled_requests);
        let cpu = get(&self.poll.cpu_ns);
        let age = self.created.elapsed().as_nanos().max(1) as f64;
        let response = histogram_json(&self.histograms().response);
        json!({
            "polled_requests": polled,
            "notified_requests": total.saturating_sub(polled),
            "kicks_avoided": get(&self.poll.kicks_avoided),
            "sessions": get(&self.poll.sessions),
            "handover_rechecks": get(&self.poll.handover_rechecks),
            "cpu_ns": cpu,
            "wall_ns": get(&self.poll.wall_ns),
            "cpu_share_of_one_core": (cpu as f64 / age * 1e4).round() / 1e4,
            "response": response,
        })
    }

    /// The counters as a JSON object.
    pub fn to_json(&self) -> Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut requests = serde_json::Map::new();
        let mut failed = serde_json::Map::new();
        let mut latency = serde_json::Map::new();
        let h = self.histograms();
        for (i, name) in KIND_NAMES.iter().enumerate() {
            requests.insert(name.to_string(), json!(get(&self.requests[i])));
            failed.insert(name.to_string(), json!(get(&self.failed[i])));
            latency.insert(name.to_string(), histogram_json(&h.latency[i]));
        }
        drop(h);
        json!({
            "requests": requests,
            "failed": failed,
            "malformed": get(&self.malformed),
            "notifications": get(&self.notifications),
            "batches": get(&self.batches),
            "unmap_batches": get(&self.unmap_batches),
            "pages_mapped": get(&self.pages_mapped),
            "pages_unmapped": get(&self.pages_unmapped),
            "mapped_bytes": get(&self.mapped_bytes),
            "peak_mapped_bytes": get(&self.peak_mapped_bytes),
            "faults": get(&self.faults),
            "fault_events": get(&self.fault_events),
            "fault_events_dropped": get(&self.fault_events_dropped),
            "broken_rings": get(&self.broken_rings),
            "latency": latency,
            "poll": self.poll_json(),
            "host_errors": self.host.to_json(),
            "coop": self.coop.as_ref().map(|(c, cfg)| c.to_json(cfg)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_reports() {
        let s = Stats::default();
        s.record(2, status::OK, 0x3000, 0x3000, 500);
        s.record(3, status::OK, 0x1000, 0x2000, 700);
        s.record(3, status::RANGE, 0, 0x2000, 900);
        let j = s.to_json();
        assert_eq!(j["requests"]["map"], 1);
        assert_eq!(j["requests"]["unmap"], 2);
        assert_eq!(j["failed"]["unmap"], 1);
        assert_eq!(j["pages_mapped"], 3);
        assert_eq!(j["pages_unmapped"], 1);
        assert_eq!(j["mapped_bytes"], 0x2000);
        assert_eq!(j["peak_mapped_bytes"], 0x3000);
        assert_eq!(j["latency"]["unmap"]["count"], 2);
        assert!(j["latency"]["map"]["p50_ns"].as_u64().unwrap() >= 499);
        s.record(9, status::OK, 0, 0, 1);
        assert_eq!(j["poll"]["notified_requests"], 3);
    }

    #[test]
    fn a_pass_clock_records_each_chain_once() {
        let s = Stats::default();
        let mut clock = PassClock::start();
        let map = Completed {
            kind: 2,
            status: status::OK,
            bytes: 0x2000,
            mapped_now: 0x2000,
        };
        clock.complete(&s, Some(map));
        clock.complete(&s, None);
        clock.complete(
            &s,
            Some(Completed {
                kind: 3,
                status: status::OK,
                bytes: 0x2000,
                mapped_now: 0,
            }),
        );
        let j = s.to_json();
        assert_eq!(j["requests"]["map"], 1);
        assert_eq!(j["requests"]["unmap"], 1);
        assert_eq!(j["pages_mapped"], 2);
        assert_eq!(j["pages_unmapped"], 2);
        assert_eq!(j["mapped_bytes"], 0);
        assert_eq!(j["peak_mapped_bytes"], 0x2000);
        assert_eq!(j["latency"]["map"]["count"], 1);
        assert_eq!(j["latency"]["unmap"]["count"], 1);
        // The malformed chain has a response time but no request type.
        assert_eq!(j["poll"]["response"]["count"], 3);
        assert_eq!(j["poll"]["notified_requests"], 2);
    }

    #[test]
    fn poll_counters_split_requests() {
        let s = Stats::default();
        for _ in 0..4 {
            s.record(2, status::OK, 0x1000, 0x1000, 10);
        }
        s.poll.polled_requests.fetch_add(3, Ordering::Relaxed);
        s.poll.kicks_avoided.fetch_add(2, Ordering::Relaxed);
        s.record_response(1500);
        let j = s.to_json();
        assert_eq!(j["poll"]["polled_requests"], 3);
        assert_eq!(j["poll"]["notified_requests"], 1);
        assert_eq!(j["poll"]["kicks_avoided"], 2);
        assert_eq!(j["poll"]["response"]["count"], 1);
        let share = j["poll"]["cpu_share_of_one_core"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&share));
    }
}
