//! The PCI root bus: host bridge, ECAM and 0xCF8/0xCFC access.
