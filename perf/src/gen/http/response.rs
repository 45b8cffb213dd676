//! Reading HTTP/1.1 responses off a client connection: the head (status, framing, keep-alive, which server
//! answered) and the body, delimited as the head says, keeping only a prefix of it.

use std::io::{self, Read};

use super::super::server_name;
use super::{BODY_PREFIX, MAX_HEAD};

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// What the generator needs from a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) len: usize,
    pub(super) status: u16,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) server: Option<String>,
}

/// Parses a response head; `Ok(None)` if more bytes are needed.
pub(super) fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(protocol_error(format!("bad response head: {err}"))),
    };
    let status = resp.code.unwrap_or(0);
    let http10 = resp.version == Some(0);
    let mut keep_alive = !http10;
    let mut length = None;
    let mut chunked = false;
    let mut server = None;
    for header in resp.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| protocol_error(format!("bad Content-Length `{value}`")))?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("x-server") && !value.is_empty() {
            server = Some(value.to_owned());
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(Head {
        len,
        status,
        framing,
        keep_alive,
        server,
    }))
}

pub(super) fn protocol_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A completed response.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) server: Option<String>,
    pub(super) keep_alive: bool,
}

/// A client connection (any byte stream) with its unread bytes.
pub(super) struct Conn<S> {
    pub(super) stream: S,
    pub(super) buf: Vec<u8>,
}

impl<S: Read> Conn<S> {
    pub(super) fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Reads more bytes; `Ok(false)` at end of stream.
    pub(super) fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Waits for the end of stream after a complete answer: any further byte is a protocol error, a
    /// server that does not close within the read timeout a timeout.
    pub(super) fn await_close(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() || self.fill()? {
            return Err(protocol_error(
                "bytes after the answer where the server should have closed".to_owned(),
            ));
        }
        Ok(())
    }

    /// Like [`Conn::fill`], with end of stream an error.
    pub(super) fn fill_or_eof(&mut self, what: &str) -> io::Result<()> {
        if self.fill()? {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed in {what}"),
            ))
        }
    }

    /// Consumes `n` body bytes (reading as needed), keeping a prefix in `keep`.
    pub(super) fn consume(&mut self, mut n: usize, keep: &mut Vec<u8>) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill_or_eof("the response body")?;
            }
            let take = n.min(self.buf.len());
            let room = BODY_PREFIX.saturating_sub(keep.len()).min(take);
            keep.extend_from_slice(&self.buf[..room]);
            self.buf.drain(..take);
            n -= take;
        }
        Ok(())
    }

    /// Consumes one CRLF-terminated line and returns it without the CRLF.
    pub(super) fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(protocol_error("chunk line too long".to_owned()));
            }
            self.fill_or_eof("a chunked body")?;
        }
    }

    pub(super) fn read_response(&mut self) -> io::Result<Response> {
        let head = loop {
            match parse_head(&self.buf)? {
                // Interim answers (100 Continue) precede the real one.
                Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                    self.buf.drain(..head.len);
                }
                Some(head) => break head,
                None if self.buf.len() > MAX_HEAD => return Err(protocol_error("response head too large".to_owned())),
                None => self.fill_or_eof("the response head")?,
            }
        };
        self.buf.drain(..head.len);
        let mut body = Vec::new();
        match head.framing {
            Framing::Empty => {}
            Framing::Length(n) => self.consume(n, &mut body)?,
            Framing::Chunked => loop {
                let line = self.line()?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size =
                    usize::from_str_radix(size, 16).map_err(|_| protocol_error(format!("bad chunk size `{line}`")))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line()?.is_empty() {}
                    break;
                }
                self.consume(size, &mut body)?;
                if !self.line()?.is_empty() {
                    return Err(protocol_error("chunk not followed by CRLF".to_owned()));
                }
            },
            Framing::UntilClose => loop {
                let n = self.buf.len();
                self.consume(n, &mut body)?;
                if !self.fill()? {
                    break;
                }
            },
        }
        Ok(Response {
            status: head.status,
            server: head.server.or_else(|| server_name(&body)),
            keep_alive: head.keep_alive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::report::FailureKind;

    #[test]
    fn response_heads() {
        let sink = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Server: s1\r\n\r\nserver=s1\n";
        let head = parse_head(sink).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Length(10));
        assert!(head.keep_alive);
        assert_eq!(head.server.as_deref(), Some("s1"));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-").unwrap().is_none());
        let close = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(close.framing, Framing::UntilClose);
        assert!(!close.keep_alive);
        let chunked = parse_head(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(chunked.unwrap().framing, Framing::Chunked);
        let empty = parse_head(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").unwrap();
        let empty = empty.unwrap();
        assert_eq!((empty.framing, empty.keep_alive), (Framing::Empty, false));
        assert!(parse_head(b"NOT HTTP\r\n\r\n").is_err());
    }

    fn read_all(bytes: &[u8]) -> io::Result<Vec<Response>> {
        let mut conn = Conn::new(bytes);
        let mut responses = Vec::new();
        while !conn.buf.is_empty() || conn.fill()? {
            responses.push(conn.read_response()?);
        }
        Ok(responses)
    }

    #[test]
    fn bodies_of_every_framing() {
        let stream = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nserver=s1\n\
            HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            7;ext=1\r\nserver=\r\n3\r\ns2\n\r\n0\r\nTrailer: x\r\n\r\n\
            HTTP/1.1 503 Busy\r\nX-Server: s3\r\nContent-Length: 0\r\n\r\n\
            HTTP/1.0 200 OK\r\n\r\nserver=s4\nuntil close";
        let responses = read_all(stream).unwrap();
        let seen: Vec<(u16, Option<&str>, bool)> = responses
            .iter()
            .map(|r| (r.status, r.server.as_deref(), r.keep_alive))
            .collect();
        assert_eq!(
            seen,
            [
                (200, Some("s1"), true),
                (200, Some("s2"), true),
                (503, Some("s3"), true),
                (200, Some("s4"), false),
            ]
        );
    }

    #[test]
    fn server_close_needs_the_end_of_stream() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nserver=s1\n";
        let mut closed = Conn::new(&answer[..]);
        closed.read_response().unwrap();
        closed.await_close().unwrap();
        let more = [&answer[..], b"extra"].concat();
        let mut open = Conn::new(&more[..]);
        open.read_response().unwrap();
        let err = open.await_close().unwrap_err();
        assert_eq!(FailureKind::of(&err), FailureKind::Protocol);
    }

    #[test]
    fn truncated_bodies_are_errors() {
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nserver";
        let err = read_all(short).unwrap_err();
        assert_eq!(FailureKind::of(&err), FailureKind::Closed);
        let bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        let err = read_all(bad_chunk).unwrap_err();
        assert_eq!(FailureKind::of(&err), FailureKind::Protocol);
    }
}
