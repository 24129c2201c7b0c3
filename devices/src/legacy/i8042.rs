//! Minimal i8042 controller: enough for Linux's keyboard-controller reset
//! (command 0xfe on port 0x64) and for probes to find "no keyboard".

use std::sync::Arc;

use super::{ExitReason, ExitSignal};
use crate::bus::BusDevice;

/// Offset of the command/status port (0x64) relative to the data port (0x60).
pub const COMMAND_OFFSET: u64 = 4;
/// The data port.
pub const DATA_PORT: u64 = 0x60;
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 registered on the PIO bus at 0x60 with length 5.
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// Creates the controller; a reset command requests [`ExitReason::Reset`].
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        // Status register: output buffer empty, input buffer empty; data 0.
        // Port 0x61 (offset 1) is system control port B, handled by KVM's PIT
        // with KVM_PIT_SPEAKER_DUMMY, so it never reaches us.
        let _ = offset;
        data.fill(0);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        // The controller is registered as two one-byte ranges (0x60 and
        // 0x64), so the port is base + offset, not the offset alone.
        if base + offset == DATA_PORT + COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            tracing::info!("guest reset through the i8042");
            self.exit.request(ExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_reset() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut d = I8042::new(exit.clone());
        let mut b = [0xffu8];
        d.read(0x60, COMMAND_OFFSET, &mut b);
        assert_eq!(b[0], 0);
        d.write(0x60, 0, &[CMD_RESET_CPU]);
        assert!(!exit.is_requested());
        d.write(0x60, COMMAND_OFFSET, &[0xd1]);
        assert!(!exit.is_requested());
        d.write(0x60, COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    /// Registered as the VMM does (two one-byte ranges): a reset written
    /// to port 0x64 through the bus resets, one written to 0x60 does not.
    #[test]
    fn reset_through_the_bus_at_port_0x64() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let bus = crate::bus::Bus::new();
        let d = Arc::new(std::sync::Mutex::new(I8042::new(exit.clone())));
        bus.insert(d.clone(), DATA_PORT, 1).unwrap();
        bus.insert(d, DATA_PORT + COMMAND_OFFSET, 1).unwrap();
        assert!(bus.write(DATA_PORT, &[CMD_RESET_CPU]));
        assert!(!exit.is_requested());
        assert!(bus.write(DATA_PORT + COMMAND_OFFSET, &[CMD_RESET_CPU]));
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
