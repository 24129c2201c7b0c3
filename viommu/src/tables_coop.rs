//! The tables' side of cooperative mode ([`crate::coop`]): the requests,
//! the scans, and what unpinning must do to the endpoints' IOTLBs and the
//! host residue.

use std::collections::BTreeMap;

use super::{Endpoint, Outcome, Tables};
use crate::backend::{HostIommu, NoBackend};
use crate::coop::{Coop, Unpinned};
use crate::protocol::status;

/// Where a coop pin or scan reports: IOTLBs to drop, residue to keep.
struct Sink<'a> {
    endpoints: &'a BTreeMap<u32, Endpoint>,
    residue: Vec<(u64, u64)>,
}

impl Unpinned for Sink<'_> {
    fn invalidate(&mut self, first: u64, last: u64) {
        for tlb in self.endpoints.values().filter_map(|e| e.iotlb.as_ref()) {
            tlb.invalidate(first, last - first + 1);
        }
    }

    fn residue(&mut self, first: u64, last: u64) {
        self.residue.push((first, last));
    }
}

impl Tables {
    /// The same tables in cooperative mode: the device offers
    /// [`crate::protocol::F_IOVMM_COOP`], and a bypassing hardware
    /// endpoint reaches the pinned set instead of an identity map of
    /// guest RAM (docs/coop.md).
    pub fn with_coop(mut self, coop: Coop) -> Self {
        self.coop = Some(coop);
        self
    }

    /// Cooperative mode's state, when configured.
    pub fn coop(&self) -> Option<&Coop> {
        self.coop.as_ref()
    }

    /// Runs `f` on the coop state with the backend and a sink, then keeps
    /// what failed as residue.
    fn with_coop_host<R>(
        &mut self,
        f: impl FnOnce(&mut Coop, &dyn HostIommu, &mut dyn Unpinned) -> R,
    ) -> Option<R> {
        let Tables {
            coop,
            endpoints,
            backend,
            ..
        } = self;
        let coop = coop.as_mut()?;
        let mut sink = Sink {
            endpoints,
            residue: Vec::new(),
        };
        let r = match backend.as_deref() {
            Some(b) => f(coop, b, &mut sink),
            None => f(coop, &NoBackend, &mut sink),
        };
        let residue = sink.residue;
        if !residue.is_empty() {
            for (s, l) in residue {
                self.add_residue(s, l);
            }
            self.update_residue_gauge();
        }
        Some(r)
    }

    /// COOP_REGISTER (UNSUPP unless the feature was negotiated).
    pub fn coop_register(&mut self, dir_gpa: u64, nr_leaves: u32) -> Outcome {
        let st = match self.coop.as_mut() {
            Some(c) if self.coop_acked => c.register(dir_gpa, nr_leaves),
            _ => status::UNSUPP,
        };
        Outcome::status(st)
    }

    /// COOP_PIN (UNSUPP unless the feature was negotiated).
    pub fn coop_pin(&mut self, gfn: u64, nr_pages: u32) -> Outcome {
        if !self.coop_acked {
            return Outcome::status(status::UNSUPP);
        }
        let msi = self.limits.msi_window();
        let st = self
            .with_coop_host(|c, b, s| c.pin(gfn, nr_pages, msi, b, s))
            .unwrap_or(status::UNSUPP);
        Outcome::status(st)
    }

    /// One periodic unpin scan (the `viommu-coop` thread); nothing
    /// without a registered table.
    pub fn coop_scan(&mut self) {
        if self.coop.as_ref().is_some_and(|c| c.registered()) {
            self.with_coop_host(|c, b, s| c.scan(false, b, s));
        }
    }

    /// Reset: the pinned runs become residue (unmapped by the deferred
    /// host work, off the vCPU thread); the table is forgotten.
    pub(super) fn coop_reset(&mut self) {
        self.coop_acked = false;
        let Some(c) = self.coop.as_mut() else { return };
        for (s, l) in c.reset() {
            self.add_residue(s, s + l - 1);
        }
        self.update_residue_gauge();
    }
}
