//! The L7 access log (`[l7] access_log`): the workers queue one line per answered request on a bounded channel
//! (never blocking: a full queue drops the line and counts it as `access_log_dropped`); this thread appends them
//! to the file in batches, flushing whenever the queue runs dry.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use xlb_l7::stage::access::AccessLine;

/// Lines that may wait for the writer.
const QUEUE: usize = 65_536;

fn open(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {} for appending: {e}", path.display()))
}

/// Checks that the log file can be opened for appending (config validation; the file is created if missing).
pub fn check(path: &Path) -> Result<(), String> {
    open(path).map(drop).map_err(|e| format!("l7.access_log: {e}"))
}

/// Opens the file and starts the writer thread; returns the queue the workers send to. The thread ends when
/// every sender is gone.
pub fn start(path: &Path) -> Result<Sender<AccessLine>, String> {
    let file = open(path)?;
    let (tx, rx) = bounded(QUEUE);
    let name = path.display().to_string();
    std::thread::Builder::new()
        .name("xlb-access-log".into())
        .spawn(move || write_lines(rx, BufWriter::with_capacity(256 * 1024, file), &name))
        .map_err(|e| format!("cannot start the access-log thread: {e}"))?;
    Ok(tx)
}

fn write_lines(rx: Receiver<AccessLine>, mut out: BufWriter<File>, name: &str) {
    let mut text = String::with_capacity(4096);
    let mut failed = false;
    loop {
        let line = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        text.clear();
        line.format(&mut text);
        for more in rx.try_iter().take(4096) {
            more.format(&mut text);
        }
        let written = out
            .write_all(text.as_bytes())
            .and_then(|()| if rx.is_empty() { out.flush() } else { Ok(()) });
        match written {
            Err(e) if !failed => {
                tracing::error!(file = %name, error = %e, "access log: writing failed (lines are lost until it works again)");
                failed = true;
            }
            Ok(()) if failed => {
                tracing::info!(file = %name, "access log: writing works again");
                failed = false;
            }
            _ => {}
        }
    }
    let _ = out.flush();
}
