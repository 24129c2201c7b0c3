//! How a running VM asks to stop.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5 or KVM shutdown event).
    PowerOff = 1,
    /// The guest reset (reboot, i8042 or ACPI reset, triple fault).
    Reset = 2,
    /// The guest reported a crash (KVM crash event).
    Crash = 3,
    /// The VMM failed (KVM error, unexpected exit).
    Error = 4,
    /// The VMM was asked to stop (SIGTERM or SIGINT).
    Terminated = 5,
}

impl ExitReason {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => ExitReason::PowerOff,
            2 => ExitReason::Reset,
            3 => ExitReason::Crash,
            4 => ExitReason::Error,
            5 => ExitReason::Terminated,
            _ => return None,
        })
    }
}

/// One-shot stop request shared by vCPUs and devices; the first reason wins.
pub struct ExitSignal {
    reason: AtomicU8,
    evt: EventFd,
}

impl ExitSignal {
    /// Creates an unsignalled exit signal.
    pub fn new() -> io::Result<Self> {
        Ok(ExitSignal {
            reason: AtomicU8::new(0),
            evt: EventFd::new(0)?,
        })
    }

    /// Requests a stop for `reason`; later requests do not override it.
    pub fn request(&self, reason: ExitReason) {
        if self
            .reason
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            // Cannot fail: the counter only overflows after 2^64 writes.
            let _ = self.evt.write(1);
        }
    }

    /// True once a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.reason.load(Ordering::SeqCst) != 0
    }

    /// The requested reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        ExitReason::from_u8(self.reason.load(Ordering::SeqCst))
    }

    /// Blocks until a stop is requested and returns why.
    pub fn wait(&self) -> ExitReason {
        loop {
            if let Some(r) = self.reason() {
                return r;
            }
            let _ = self.evt.read();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins_and_wakes_waiter() {
        let s = Arc::new(ExitSignal::new().unwrap());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait());
        s.request(ExitReason::PowerOff);
        s.request(ExitReason::Reset);
        assert_eq!(t.join().unwrap(), ExitReason::PowerOff);
        assert!(s.is_requested());
        assert_eq!(s.reason(), Some(ExitReason::PowerOff));
    }
}
