//! ACPI hardware-reduced sleep control/status and reset registers.
//!
//! Three byte-wide I/O ports: +0 sleep control (SLP_TYPx in bits 4:2,
//! SLP_EN bit 5), +1 sleep status, +2 reset register. The FADT points at them.

use std::sync::Arc;

use super::{ExitReason, ExitSignal};
use crate::bus::BusDevice;

const SLP_EN: u8 = 1 << 5;

/// The ACPI PM register block.
pub struct AcpiPm {
    exit: Arc<ExitSignal>,
    s5_slp_typ: u8,
    reset_value: u8,
}

impl AcpiPm {
    /// `s5_slp_typ` is the SLP_TYP the DSDT announces for S5 (power off);
    /// writing `reset_value` to the reset register resets the VM.
    pub fn new(exit: Arc<ExitSignal>, s5_slp_typ: u8, reset_value: u8) -> Self {
        AcpiPm {
            exit,
            s5_slp_typ,
            reset_value,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 if v & SLP_EN != 0 => {
                let typ = (v >> 2) & 0x7;
                if typ == self.s5_slp_typ {
                    tracing::info!("guest powered off (ACPI S5)");
                    self.exit.request(ExitReason::PowerOff);
                } else {
                    tracing::warn!(typ, "guest asked for an unsupported sleep state; ignored");
                }
            }
            2 if v == self.reset_value => {
                tracing::info!("guest reset through the ACPI reset register");
                self.exit.request(ExitReason::Reset);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_other_states_do_not() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPm::new(exit.clone(), 5, 0xfe);
        pm.write(0x600, 0, &[(3 << 2) | SLP_EN]);
        assert!(!exit.is_requested());
        pm.write(0x600, 0, &[5 << 2]);
        assert!(!exit.is_requested());
        pm.write(0x600, 0, &[(5 << 2) | SLP_EN]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn reset_register() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPm::new(exit.clone(), 5, 0xfe);
        pm.write(0x600, 2, &[0x01]);
        assert!(!exit.is_requested());
        pm.write(0x600, 2, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
