//! What a server serves: a [`Handler`] turns a call into a reply or a
//! watch of a [`Feed`]; a [`StopSignal`] ends a listener and its
//! connections. Both wake the [`crate::Mux`] that drives them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::grpc::Status;
use crate::mux::MUX_WAKE;

/// What a call turns into.
#[derive(Debug)]
pub enum Call {
    /// A unary reply: the encoded response message, or an error status.
    Reply(Result<Vec<u8>, Status>),
    /// A server stream: send the feed's message now and on every change;
    /// end with OK when it closes.
    Watch(Arc<Feed>),
}

/// The service behind one socket.
pub trait Handler: Send + Sync + 'static {
    /// Handle a call to `path` (e.g. `/v1beta1.DevicePlugin/Allocate`)
    /// with the encoded request message `msg`. All watch calls on one
    /// connection share the first one's feed (one socket serves one
    /// resource, so they are the same anyway).
    fn call(&self, path: &str, msg: &[u8]) -> Call;
}

/// The message a watch call streams: its newest encoded value, a version
/// that counts changes, and a wake-up. One per resource, shared by every
/// connection watching it; encoded once per change, not per connection.
#[derive(Debug)]
pub struct Feed {
    state: std::sync::Mutex<FeedState>,
}

#[derive(Debug)]
struct FeedState {
    version: u64,
    msg: Vec<u8>,
    closed: bool,
}

impl Feed {
    /// A feed whose first message is `msg`.
    pub fn new(msg: Vec<u8>) -> Self {
        Self {
            state: std::sync::Mutex::new(FeedState {
                version: 0,
                msg,
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Make `msg` the newest message (if it differs) and wake the watchers.
    pub fn publish(&self, msg: Vec<u8>) {
        {
            let mut st = self.lock();
            if st.closed || st.msg == msg {
                return;
            }
            st.msg = msg;
            st.version += 1;
        }
        MUX_WAKE.notify_waiters();
    }

    /// End every watch of this feed (with status OK).
    pub fn close(&self) {
        self.lock().closed = true;
        MUX_WAKE.notify_waiters();
    }

    /// The newest message.
    pub fn current(&self) -> Vec<u8> {
        self.lock().msg.clone()
    }

    pub(crate) fn version(&self) -> (u64, bool) {
        let st = self.lock();
        (st.version, st.closed)
    }
}

/// Tells a server's connections to stop; its strong count tells how many
/// are still open. Lighter than a watch channel, which counts with one
/// server per resource.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: AtomicBool,
}

impl StopSignal {
    /// Stop every connection holding this signal.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        MUX_WAKE.notify_waiters();
    }

    /// [`StopSignal::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}
