//! Legacy platform devices: COM1 serial, i8042 reset, ACPI power management.
