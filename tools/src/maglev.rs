//! The Maglev refresher: a control-side thread that has the L4 listeners' Maglev tables rebuilt after each
//! health change (see [`crate::lb::L4Runtime::refresh_maglev`]), so no worker ever builds one.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, select, Receiver, Sender};

use crate::api::Api;

/// The running refresher thread; stopped and joined when dropped.
pub struct MaglevRefresher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MaglevRefresher {
    /// Starts the thread: it waits for the health board's change signal (`changes`) and then has the runtime
    /// build and send the tables that changed. A signal that comes while tables are built is kept (the channel
    /// holds one), so the last change is never missed.
    pub fn start(api: Arc<Api>, changes: Receiver<()>) -> Result<MaglevRefresher, String> {
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("xlb-maglev".into())
            .spawn(move || loop {
                select! {
                    recv(changes) -> signal => if signal.is_err() { break },
                    recv(stop_rx) -> _ => break,
                }
                api.refresh_maglev();
            })
            .map_err(|e| format!("starting the Maglev thread: {e}"))?;
        Ok(MaglevRefresher {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for MaglevRefresher {
    fn drop(&mut self) {
        drop(self.stop.take()); // disconnects: the thread's select returns
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
