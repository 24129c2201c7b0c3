//! Minimal i8042 controller: enough for Linux's keyboard-controller reset
//! (command 0xfe on port 0x64) and for probes to find "no keyboard".

use std::sync::Arc;

use super::{ExitReason, ExitSignal};
use crate::bus::BusDevice;

/// Offset of the command/status port (0x64) relative to the data port (0x60).
pub const COMMAND_OFFSET: u64 = 4;
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

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
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
}
