//! A device worker: one thread running an `EventManager` for a device's
//! queue eventfds and backend fds, until stopped.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Stops the loop when its eventfd fires.
struct KillSwitch {
    evt: EventFd,
    stop: Arc<Mutex<bool>>,
}

impl MutEventSubscriber for KillSwitch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("worker: cannot watch the kill eventfd: {e:?}");
        }
    }
}

/// A running device thread.
pub struct Worker {
    kill: EventFd,
    handle: Option<JoinHandle<()>>,
    tid: i32,
}

impl Worker {
    /// Starts a thread named `name` that dispatches events to `subscriber`.
    pub fn spawn<S: MutEventSubscriber + Send + 'static>(
        name: &str,
        subscriber: S,
    ) -> io::Result<Worker> {
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let evt = kill.try_clone()?;
        let mut em: EventManager<Box<dyn MutEventSubscriber + Send>> =
            EventManager::new().map_err(|e| io::Error::other(format!("{e:?}")))?;
        let stop = Arc::new(Mutex::new(false));
        em.add_subscriber(Box::new(KillSwitch {
            evt,
            stop: stop.clone(),
        }));
        em.add_subscriber(Box::new(subscriber));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread_name = name.to_string();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                crate::cpus::place_io_thread(&thread_name);
                // SAFETY: gettid has no preconditions and cannot fail.
                let _ = tid_tx.send(unsafe { libc::gettid() });
                loop {
                    if let Err(e) = em.run() {
                        tracing::error!("worker: event loop failed: {e:?}");
                        return;
                    }
                    if *stop.lock().unwrap_or_else(|e| e.into_inner()) {
                        return;
                    }
                }
            })?;
        let tid = tid_rx.recv().unwrap_or(0);
        Ok(Worker {
            kill,
            handle: Some(handle),
            tid,
        })
    }

    /// The kernel thread id of the worker thread (for diagnostics and
    /// tests that look at the thread in `/proc`).
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Stops the thread and waits for it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.kill.write(1);
            if h.join().is_err() {
                tracing::error!("worker thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Registers `fd` for `events` with data `data` in `ops`, logging failures.
pub fn watch<F: AsRawFd>(ops: &mut EventOps, fd: &F, data: u32, events: EventSet) {
    if let Err(e) = ops.add(Events::with_data(fd, data, events)) {
        tracing::error!("worker: cannot watch fd {}: {e:?}", fd.as_raw_fd());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    struct Counter {
        evt: EventFd,
        seen: Arc<AtomicU32>,
    }

    impl MutEventSubscriber for Counter {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            if let Ok(n) = self.evt.read() {
                self.seen.fetch_add(n as u32, Ordering::SeqCst);
            }
        }
        fn init(&mut self, ops: &mut EventOps) {
            watch(ops, &self.evt, 0, EventSet::IN);
        }
    }

    #[test]
    fn dispatches_events_and_stops() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let mut w = Worker::spawn(
            "test-worker",
            Counter {
                evt: evt.try_clone().unwrap(),
                seen: seen.clone(),
            },
        )
        .unwrap();
        evt.write(3).unwrap();
        let t = Instant::now();
        while seen.load(Ordering::SeqCst) != 3 {
            assert!(t.elapsed() < Duration::from_secs(5), "event not dispatched");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(Arc::strong_count(&seen), 2, "the subscriber is alive");
        w.stop();
        w.stop();
        // The acknowledgement that nothing can count later events: the
        // thread was joined and dropped its event manager, subscriber and
        // all (no sleep-and-hope).
        assert_eq!(
            Arc::strong_count(&seen),
            1,
            "the stopped worker dropped its subscriber"
        );
        evt.write(1).unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        assert_ne!(w.tid(), 0);
    }
}
