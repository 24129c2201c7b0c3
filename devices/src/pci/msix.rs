//! MSI-X capability, table and PBA emulation.
