//! The HTTP/1.1 response a stream's proxy writes, parsed incrementally into an HTTP/2 response.
//!
//! The head is collected (bounded) and parsed with the crate's strict parser; 1xx interim responses (the
//! proxy's own `100 Continue` for a request with `Expect: 100-continue`, a server's 102 or 103 Early Hints) are
//! passed on as informational HTTP/2 responses, before the final one; the body is decoded with
//! [`BodyDecoder`] (Content-Length, chunked or until the proxy says it is done). Hop-by-hop fields are removed.
//! Chunked trailers become HTTP/2 trailers (fields that are not valid or not allowed in trailers are dropped).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::http1::body::{BodyDecoder, BodyEvent};
use crate::http1::response::{parse_response, ResponseHead};
use crate::http1::{list_elements, BodyFraming, HeadScanner, Refusal};

/// What one parsing step produced.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// An interim (1xx) response head; the final one follows.
    Interim(http::Response<()>),
    /// A final response head, and whether it has a body.
    Head(http::Response<()>, bool),
    /// Body bytes (a slice of the input).
    Data(&'a [u8]),
    /// The body is complete, with its trailers (empty if none).
    End(HeaderMap),
    /// All input consumed, more is needed.
    NeedMore,
}

#[derive(Debug)]
enum Phase {
    Head { buf: Vec<u8>, scanner: HeadScanner },
    Body(BodyDecoder),
    Done,
}

/// Incremental response parser of one stream.
#[derive(Debug)]
pub(crate) struct ResponseParser {
    phase: Phase,
    is_head: bool,
    max_head: usize,
    max_trailers: usize,
}

impl ResponseParser {
    /// A parser for the response to a request (`is_head`: a HEAD request).
    pub fn new(is_head: bool, max_head: usize, max_trailers: usize) -> Self {
        ResponseParser {
            phase: Phase::Head {
                buf: Vec::new(),
                scanner: HeadScanner::default(),
            },
            is_head,
            max_head,
            max_trailers,
        }
    }

    /// Whether the final head was parsed.
    pub fn head_done(&self) -> bool {
        !matches!(self.phase, Phase::Head { .. })
    }

    /// The proxy finished: completes a close-delimited body. Returns whether the body is complete.
    pub fn finish(&mut self) -> bool {
        match &mut self.phase {
            Phase::Body(d) => d.finish_on_close(),
            Phase::Done => true,
            Phase::Head { .. } => false,
        }
    }

    /// Parses from the start of `input`: bytes consumed and what they produced.
    pub fn step<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Step<'a>), Refusal> {
        match &mut self.phase {
            Phase::Head { buf, scanner } => {
                let before = buf.len();
                let n = input.len().min(self.max_head.saturating_sub(before));
                buf.extend_from_slice(&input[..n]);
                let Some(end) = scanner.scan(buf)? else {
                    if buf.len() >= self.max_head {
                        return Err(Refusal::HeadTooLarge);
                    }
                    return Ok((n, Step::NeedMore));
                };
                let used = end - before;
                let head = parse_response(&buf[scanner.skip()..end], self.is_head)?;
                if head.is_interim() {
                    buf.clear();
                    *scanner = HeadScanner::default();
                    return Ok((used, Step::Interim(to_h2(&head))));
                }
                if head.status == 101 {
                    return Err(Refusal::BadStartLine);
                }
                let response = to_h2(&head);
                let body = !matches!(head.framing, BodyFraming::None | BodyFraming::Length(0));
                self.phase = if body {
                    Phase::Body(BodyDecoder::new(head.framing, u64::MAX, self.max_trailers))
                } else {
                    Phase::Done
                };
                Ok((used, Step::Head(response, body)))
            }
            Phase::Body(d) => {
                let (n, ev) = d.decode(input)?;
                match ev {
                    Some(BodyEvent::Data(data)) => Ok((n, Step::Data(data))),
                    Some(BodyEvent::End) => {
                        let trailers = trailers_to_h2(d.trailers());
                        self.phase = Phase::Done;
                        Ok((n, Step::End(trailers)))
                    }
                    None => Ok((n, Step::NeedMore)),
                }
            }
            // Bytes after the end of the one response: nothing expects them; dropped.
            Phase::Done => Ok((input.len(), Step::NeedMore)),
        }
    }
}

/// Hop-by-hop fields never forwarded to an HTTP/2 client (RFC 9113 §8.2.2).
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// The HTTP/2 response for a parsed HTTP/1.1 head: status and end-to-end fields (also dropping any named in
/// `Connection`; fields whose name or value `http` refuses are dropped too).
pub(crate) fn to_h2(head: &ResponseHead) -> http::Response<()> {
    let tokens: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|h| h.is("connection"))
        .flat_map(|h| list_elements(&h.value))
        .collect();
    let mut resp = http::Response::new(());
    *resp.status_mut() = http::StatusCode::from_u16(head.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let map = resp.headers_mut();
    for h in &head.headers {
        if hop_by_hop(&h.name) || tokens.iter().any(|t| t.eq_ignore_ascii_case(h.name.as_bytes())) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(&h.value),
        ) {
            map.append(n, v);
        }
    }
    resp
}

/// Chunked trailer lines (`name: value\r\n`, already checked by the decoder) as HTTP/2 trailers.
fn trailers_to_h2(lines: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = crate::http1::trim_ows(&line[colon + 1..]);
        let Ok(name) = HeaderName::from_bytes(name) else {
            continue;
        };
        if hop_by_hop(name.as_str()) || name == header::CONTENT_LENGTH || name == header::HOST {
            continue;
        }
        if let Ok(v) = HeaderValue::from_bytes(value) {
            map.append(name, v);
        }
    }
    map
}
