//! Access-log lines: what the stage hands to the logger thread (outside the datapath) for each answered
//! request, and how a line reads.
//!
//! Sessions queue their lines in the stage's [`AccessOutbox`] while a batch is processed; the worker's
//! per-turn `flush_events` hands them to the logger's channel, so no channel operation happens per packet.

use std::collections::VecDeque;
use std::fmt::Write;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;

use crate::proxy::AccessRecord;

/// Lines held at most between two flushes (a turn's worth at any request rate a worker reaches).
pub const OUTBOX_CAPACITY: usize = 4096;

/// Access-log lines waiting for the end of the worker's turn.
pub struct AccessOutbox {
    queue: VecDeque<AccessLine>,
    out: Sender<AccessLine>,
}

impl AccessOutbox {
    /// An empty outbox for the logger's channel `out` (room reserved up front).
    pub fn new(out: Sender<AccessLine>) -> Self {
        AccessOutbox {
            queue: VecDeque::with_capacity(OUTBOX_CAPACITY),
            out,
        }
    }

    /// Queues a line; `false` (the line is dropped) if the outbox is full.
    pub fn push(&mut self, line: AccessLine) -> bool {
        if self.queue.len() >= OUTBOX_CAPACITY {
            return false;
        }
        self.queue.push_back(line);
        true
    }

    /// Hands the queued lines to the logger until its channel is full; returns how many were handed over. What
    /// does not fit waits for the next flush (the outbox then refuses new lines once full).
    pub fn flush(&mut self) -> usize {
        let mut sent = 0;
        while let Some(line) = self.queue.pop_front() {
            if let Err(e) = self.out.try_send(line) {
                self.queue.push_front(e.into_inner());
                break;
            }
            sent += 1;
        }
        sent
    }

    /// Lines queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// One answered request.
#[derive(Clone, Debug)]
pub struct AccessLine {
    /// When the response head was sent.
    pub at: SystemTime,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The client's address.
    pub client: SocketAddrV4,
    /// The request and its status.
    pub record: AccessRecord,
    /// The server that answered (`None`: answered by xlb).
    pub server: Option<SocketAddrV4>,
    /// From the complete request head to the response head.
    pub elapsed: Option<Duration>,
}

/// Appends `s` with spaces, quotes, backslashes and control bytes escaped (`\xHH`), so a line stays one line
/// with fields split by spaces.
fn escaped(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

impl AccessLine {
    /// Appends the line (with its newline):
    /// `<unix time.ms> <client> <listener> "<method> <target>" <host> <status> <server|-> <seconds|-> <upstream|xlb>`.
    pub fn format(&self, out: &mut String) {
        let t = self.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let _ = write!(out, "{}.{:03} {} ", t.as_secs(), t.subsec_millis(), self.client);
        escaped(out, &self.listener);
        out.push_str(" \"");
        escaped(out, &self.record.method);
        out.push(' ');
        escaped(out, &self.record.target);
        out.push_str("\" ");
        escaped(out, &self.record.host);
        let _ = write!(out, " {} ", self.record.status);
        match self.server {
            Some(s) => {
                let _ = write!(out, "{s}");
            }
            None => out.push('-'),
        }
        match self.elapsed {
            Some(d) => {
                let _ = write!(out, " {:.3}", d.as_secs_f64());
            }
            None => out.push_str(" -"),
        }
        out.push_str(if self.record.local { " xlb\n" } else { " upstream\n" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(status: u16) -> AccessLine {
        AccessLine {
            at: UNIX_EPOCH,
            listener: "www".into(),
            client: "198.18.0.1:40000".parse().unwrap(),
            record: AccessRecord {
                method: "GET".into(),
                target: "/".into(),
                host: "example.com".into(),
                started: None,
                status,
                local: true,
            },
            server: None,
            elapsed: None,
        }
    }

    #[test]
    fn lines_reach_the_logger_at_the_flush_and_wait_while_it_is_full() {
        let (tx, rx) = crossbeam_channel::bounded(2);
        let mut outbox = AccessOutbox::new(tx);
        for status in [200, 201, 202] {
            assert!(outbox.push(line(status)));
        }
        assert!(rx.is_empty(), "nothing is sent while the batch is processed");
        assert_eq!(outbox.flush(), 2, "the channel takes two");
        assert_eq!(outbox.len(), 1, "the third waits for the next flush");
        let got: Vec<u16> = rx.try_iter().map(|l| l.record.status).collect();
        assert_eq!(got, [200, 201]);
        assert_eq!(outbox.flush(), 1);
        assert_eq!(rx.try_recv().unwrap().record.status, 202, "in order");
        assert!(outbox.is_empty());
        // A full outbox refuses lines (the caller counts them as dropped).
        for _ in 0..OUTBOX_CAPACITY {
            assert!(outbox.push(line(200)));
        }
        assert!(!outbox.push(line(200)));
    }

    #[test]
    fn a_line_is_one_line_of_space_separated_fields() {
        let line = AccessLine {
            at: UNIX_EPOCH + Duration::from_millis(1_764_520_800_123),
            listener: "www".into(),
            client: "198.18.0.1:40000".parse().unwrap(),
            record: AccessRecord {
                method: "GET".into(),
                target: "/a b\"\n".into(),
                host: "www.example.com".into(),
                started: None,
                status: 200,
                local: false,
            },
            server: Some("198.19.0.2:8080".parse().unwrap()),
            elapsed: Some(Duration::from_millis(4)),
        };
        let mut out = String::new();
        line.format(&mut out);
        assert_eq!(
            out,
            "1764520800.123 198.18.0.1:40000 www \"GET /a\\x20b\\x22\\x0a\" www.example.com 200 198.19.0.2:8080 0.004 upstream\n"
        );
    }
}
