//! Device backends that may block (disk images: a hung NFS mount, a frozen
//! filesystem) run on an event loop of their own, one thread per device.
//! Blocking file I/O there cannot delay the main event loop, so the stop
//! path, the NIC and every other device keep working; the VMM never waits
//! for such a thread when it stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use crate::seccomp::{self, ThreadKind};

/// How often an idle I/O thread looks at its stop flag.
const STOP_POLL_MS: i32 = 100;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Asks its thread to end when dropped, without waiting for it: a thread
/// stuck in a system call is left to the process exit.
pub struct IoThread {
    stop: Arc<AtomicBool>,
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// An I/O thread's event loop, made before the thread that starts it is
/// confined (its filter has no epoll_create1).
pub struct PendingIoThread {
    name: String,
    events: EventManager<Subscriber>,
}

/// The event loop for `subscriber`, to run on a thread called `name`.
pub fn prepare(name: String, subscriber: Subscriber) -> std::io::Result<PendingIoThread> {
    let mut events: EventManager<Subscriber> =
        EventManager::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    events.add_subscriber(subscriber);
    Ok(PendingIoThread { name, events })
}

impl PendingIoThread {
    /// Runs the loop on its own thread, under the caller's (vmm) seccomp
    /// filter if it has one.
    pub fn start(self) -> std::io::Result<IoThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let PendingIoThread { name, mut events } = self;
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                seccomp::note_inherited(ThreadKind::Vmm);
                while !flag.load(Ordering::Acquire) {
                    if let Err(e) = events.run_with_timeout(STOP_POLL_MS) {
                        log::error!("{name}: event loop failed: {e:?}; the device stops working");
                        return;
                    }
                }
            })?;
        Ok(IoThread { stop })
    }
}
