//! The fixed limits of the virtual IOMMU (its config space), validated
//! once so the request handling can rely on them.

/// Fixed properties of the IOMMU (its config space). Built only through
/// [`Limits::new`], which enforces the invariants the request handling
/// relies on (so `end - start + 1` over any of its ranges cannot
/// overflow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    input_start: u64,
    input_end: u64,
    domain_start: u32,
    domain_end: u32,
    max_mappings: usize,
    msi_window: (u64, u64),
}

/// Why [`Limits::new`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// The IOVA range is empty, reversed or ends at `u64::MAX`.
    #[error("invalid IOVA range {0:#x}..={1:#x} (start <= end < 2^64 - 1)")]
    InputRange(u64, u64),
    /// The domain range is reversed.
    #[error("invalid domain range {0}..={1}")]
    DomainRange(u32, u32),
    /// `max_mappings` is zero.
    #[error("max_mappings must be at least 1")]
    MaxMappings,
    /// The MSI window is reversed or not inside the IOVA range.
    #[error("MSI window {0:#x}..={1:#x} must be ordered and inside the IOVA range")]
    MsiWindow(u64, u64),
}

impl Limits {
    /// Limits with the IOVA range `input` and domain range `domains`
    /// (inclusive), at most `max_mappings` per domain, and the MSI
    /// `msi_window` (inclusive) reported by PROBE. Refuses `input` not
    /// ordered or ending at `u64::MAX`, `domains` not ordered,
    /// `max_mappings == 0`, and an MSI window not ordered or not inside
    /// `input`.
    pub fn new(
        input: (u64, u64),
        domains: (u32, u32),
        max_mappings: usize,
        msi_window: (u64, u64),
    ) -> Result<Self, LimitsError> {
        if input.0 > input.1 || input.1 == u64::MAX {
            return Err(LimitsError::InputRange(input.0, input.1));
        }
        if domains.0 > domains.1 {
            return Err(LimitsError::DomainRange(domains.0, domains.1));
        }
        if max_mappings == 0 {
            return Err(LimitsError::MaxMappings);
        }
        let (lo, hi) = msi_window;
        if lo > hi || lo < input.0 || hi > input.1 {
            return Err(LimitsError::MsiWindow(lo, hi));
        }
        Ok(Limits {
            input_start: input.0,
            input_end: input.1,
            domain_start: domains.0,
            domain_end: domains.1,
            max_mappings,
            msi_window,
        })
    }

    /// The same limits with another MSI window (validated as by
    /// [`Limits::new`]).
    pub fn with_msi_window(self, lo: u64, hi: u64) -> Result<Self, LimitsError> {
        Self::new(
            (self.input_start, self.input_end),
            (self.domain_start, self.domain_end),
            self.max_mappings,
            (lo, hi),
        )
    }

    /// First valid IOVA.
    pub fn input_start(&self) -> u64 {
        self.input_start
    }

    /// Last valid IOVA (`< u64::MAX`).
    pub fn input_end(&self) -> u64 {
        self.input_end
    }

    /// First valid domain ID.
    pub fn domain_start(&self) -> u32 {
        self.domain_start
    }

    /// Last valid domain ID.
    pub fn domain_end(&self) -> u32 {
        self.domain_end
    }

    /// Most mappings per domain (beyond: NOMEM); at least 1.
    pub fn max_mappings(&self) -> usize {
        self.max_mappings
    }

    /// The MSI doorbell window `[start, end]`, reported by PROBE.
    pub fn msi_window(&self) -> (u64, u64) {
        self.msi_window
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(
            (0, (1 << 48) - 1),
            (0, 0xffff),
            1 << 20,
            (0xfee0_0000, 0xfeef_ffff),
        )
        .expect("the default limits are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSI: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

    #[test]
    fn new_refuses_what_the_arithmetic_cannot_take() {
        let input = (0, (1 << 48) - 1);
        assert!(Limits::new(input, (0, 0xffff), 1, MSI).is_ok());
        assert_eq!(
            Limits::new((0, u64::MAX), (0, 1), 1, MSI),
            Err(LimitsError::InputRange(0, u64::MAX))
        );
        assert!(Limits::new((5, 4), (0, 1), 1, (5, 5)).is_err(), "reversed");
        assert_eq!(
            Limits::new(input, (2, 1), 1, MSI),
            Err(LimitsError::DomainRange(2, 1))
        );
        assert_eq!(
            Limits::new(input, (0, 1), 0, MSI),
            Err(LimitsError::MaxMappings)
        );
        let bad = [(2, 1), (0xfee0_0000, 1 << 48)];
        for w in bad {
            assert_eq!(
                Limits::new(input, (0, 1), 1, w),
                Err(LimitsError::MsiWindow(w.0, w.1))
            );
        }
        // The largest accepted range: one below u64::MAX, one domain.
        let l = Limits::new((0, u64::MAX - 1), (7, 7), 1, (0, 0)).unwrap();
        assert_eq!(
            (l.input_end(), l.domain_start(), l.max_mappings()),
            (u64::MAX - 1, 7, 1)
        );
        let moved = Limits::default().with_msi_window(0x1000, 0x1fff).unwrap();
        assert_eq!(moved.msi_window(), (0x1000, 0x1fff));
        assert!(Limits::default().with_msi_window(1 << 50, 1 << 50).is_err());
    }
}
