//! COM1: a 16550A UART (vm-superio) whose interrupt is an eventfd wired to
//! a KVM irqfd on IRQ 4.

use std::io::{self, Write};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// An interrupt line implemented by writing an eventfd (an irqfd in KVM).
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The serial port as a bus device.
pub struct SerialDevice {
    inner: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// Creates a UART writing the guest's output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            inner: Serial::new(EventFdTrigger(irq), out),
        }
    }

    /// Queues input bytes for the guest; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.inner
            .enqueue_raw_bytes(bytes)
            .map_err(|e| io::Error::other(format!("{e:?}")))
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) {
        let _ = self.inner.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset > 7 {
            data.fill(0xff);
            return;
        }
        data[0] = self.inner.read(offset as u8);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset > 7 {
            return;
        }
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            tracing::warn!(error = ?e, "serial write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_writer_and_input_raises_irq() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        for b in b"ok\n" {
            s.write(0x3f8, 0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"ok\n");
        // Enable the received-data interrupt (IER bit 0), then feed input.
        s.write(0x3f8, 1, &[1]);
        s.enqueue_input(b"x").unwrap();
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        s.read(0x3f8, 0, &mut b);
        assert_eq!(b[0], b'x');
        // Wide accesses are ignored, not panics.
        let mut w = [0u8; 2];
        s.read(0x3f8, 0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
    }
}
