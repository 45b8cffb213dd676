//! Access-log lines: what the stage hands to the logger thread (outside the datapath) for each answered
//! request, and how a line reads.

use std::fmt::Write;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proxy::AccessRecord;

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
