//! The HTTP status line of a probe's response, read incrementally as segments arrive.
//!
//! Only `HTTP/1.x NNN` (12 bytes) matters: the verdict is reached as soon as they are in, or as soon as a
//! byte shows the response is not HTTP/1.x. The bytes live in a fixed array, so reading allocates nothing.

/// Length of `HTTP/1.x NNN`.
const STATUS_PREFIX_LEN: usize = 12;

/// What the response says so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Fewer than 12 bytes, all plausible so far.
    Incomplete,
    /// The status code.
    Code(u16),
    /// Not an HTTP/1.x status line.
    Invalid,
}

/// The first bytes of a response.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StatusLine {
    buf: [u8; STATUS_PREFIX_LEN],
    len: usize,
}

/// Whether `b` may stand at position `at` of `HTTP/1.x NNN`.
fn plausible(at: usize, b: u8) -> bool {
    match at {
        0..=6 => b == b"HTTP/1."[at],
        7 | 9..=11 => b.is_ascii_digit(),
        8 => b == b' ',
        _ => true,
    }
}

impl StatusLine {
    /// Takes the next in-order bytes of the response and says what is known.
    pub fn push(&mut self, data: &[u8]) -> Status {
        for &b in data.iter().take(STATUS_PREFIX_LEN - self.len) {
            if !plausible(self.len, b) {
                return Status::Invalid;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        if self.len < STATUS_PREFIX_LEN {
            return Status::Incomplete;
        }
        let code = self.buf[9..12]
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
        Status::Code(code)
    }

    /// Whether any response byte has arrived.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_status_line() {
        let mut s = StatusLine::default();
        assert_eq!(
            s.push(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Status::Code(200)
        );
    }

    #[test]
    fn split_anywhere() {
        let line = b"HTTP/1.0 503 Service Unavailable\r\n";
        for cut in 0..=STATUS_PREFIX_LEN {
            let mut s = StatusLine::default();
            let first = s.push(&line[..cut]);
            if cut < STATUS_PREFIX_LEN {
                assert_eq!(first, Status::Incomplete, "cut {cut}");
                assert_eq!(s.push(&line[cut..]), Status::Code(503), "cut {cut}");
            } else {
                assert_eq!(first, Status::Code(503));
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let mut s = StatusLine::default();
        let line = b"HTTP/1.1 404";
        for (i, b) in line.iter().enumerate() {
            let r = s.push(std::slice::from_ref(b));
            if i + 1 < line.len() {
                assert_eq!(r, Status::Incomplete);
            } else {
                assert_eq!(r, Status::Code(404));
            }
        }
    }

    #[test]
    fn garbage_is_invalid_early() {
        assert_eq!(StatusLine::default().push(b"SSH-2.0"), Status::Invalid);
        assert_eq!(StatusLine::default().push(b"HTTP/2 200"), Status::Invalid);
        assert_eq!(StatusLine::default().push(b"HTTP/1.1 2x0"), Status::Invalid);
        assert_eq!(StatusLine::default().push(b"HTTP/1.1"), Status::Incomplete);
    }
}
