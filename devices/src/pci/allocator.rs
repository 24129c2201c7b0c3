//! Aligned address allocation for BARs.
