//! Which streams of an [`super::H2Front`] have something to do: each stream polls `h2` with a waker of its own,
//! and a wake (from `h2`: DATA, trailers or RST_STREAM received, send capacity or window granted; or from the
//! front: response bytes, the end of the response, request bytes consumed) files its id in the front's
//! [`ReadySet`]. The front then polls those streams only, not every open one on every input.
//!
//! Everything runs on the front's thread: the mutex is never contended (it keeps the front `Send`).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

/// Ids of the streams woken since they were last polled (each once).
#[derive(Debug, Default)]
pub(crate) struct ReadySet(Mutex<Vec<u32>>);

impl ReadySet {
    /// Moves the woken ids into `out` (emptied first).
    pub fn take(&self, out: &mut Vec<u32>) {
        out.clear();
        std::mem::swap(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()), out);
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

/// The waker of one stream.
#[derive(Debug)]
pub(crate) struct StreamWake {
    id: u32,
    /// In the ready set, not yet polled.
    queued: AtomicBool,
    ready: Arc<ReadySet>,
}

impl StreamWake {
    /// The waker for stream `id`, filing it in `ready`; the stream starts out ready (its first poll).
    pub fn new(id: u32, ready: &Arc<ReadySet>) -> (Arc<StreamWake>, Waker) {
        let wake = Arc::new(StreamWake {
            id,
            queued: AtomicBool::new(false),
            ready: ready.clone(),
        });
        wake.wake_by_ref();
        let waker = Waker::from(wake.clone());
        (wake, waker)
    }

    /// The stream is about to be polled: a wake from now on files it again.
    pub fn polling(&self) {
        self.queued.store(false, Relaxed);
    }
}

impl Wake for StreamWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Relaxed) {
            self.ready.0.lock().unwrap_or_else(|e| e.into_inner()).push(self.id);
        }
    }
}
