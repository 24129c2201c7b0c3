//! Legacy platform devices: COM1 serial, i8042 reset, the ACPI power
//! management registers, and the signal through which devices and vCPUs
//! ask the VMM to stop.

mod acpi_pm;
mod exit;
mod i8042;
mod serial;

pub use acpi_pm::AcpiPm;
pub use exit::{ExitReason, ExitSignal};
pub use i8042::I8042;
pub use serial::{EventFdTrigger, SerialDevice};
