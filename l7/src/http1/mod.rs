//! HTTP/1.1 (RFC 9112) message handling for the proxy: heads, bodies, header rewriting.
//!
//! Heads are collected into a bounded buffer by [`HeadScanner`] (which also enforces line discipline: CRLF only,
//! no bare CR or LF, no obs-fold), then parsed by `httparse` and checked by [`request`] / [`response`]. Every
//! refusal is a [`Refusal`] with a status code and a counter name.

pub mod body;
pub mod headers;
pub mod request;
pub mod response;

/// Protocol version of a message (HTTP/1.0 or HTTP/1.1; anything else is refused by the parser).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

/// Why a message was refused: each has a status code (for requests) and a name for the operator's counters.
///
/// For a message from an upstream server the proxy answers 502 whatever the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Request line or status line that `httparse` refuses (method, target, version, status code).
    BadStartLine,
    /// A header name that is not an RFC 9110 token.
    BadHeaderName,
    /// A header value with a control character.
    BadHeaderValue,
    /// A header line folded onto the next (obs-fold, RFC 9112 §5.2).
    ObsFold,
    /// A CR not followed by LF.
    BareCr,
    /// An LF not preceded by CR.
    BareLf,
    /// HTTP/1.1 request without Host.
    MissingHost,
    /// More than one Host header.
    MultipleHost,
    /// A Host value (or absolute-form authority) that is not a valid `host[:port]`.
    BadHost,
    /// Request target that is not origin-form, absolute-form or `*` (for OPTIONS), or CONNECT's authority-form.
    BadTarget,
    /// More than one Content-Length (also `5, 5`).
    DuplicateContentLength,
    /// A Content-Length that is not a decimal number that fits 63 bits.
    BadContentLength,
    /// Both Content-Length and Transfer-Encoding.
    ContentLengthWithTransferEncoding,
    /// Transfer-Encoding whose final coding is not `chunked`, or `chunked` applied twice.
    TransferEncodingNotChunked,
    /// Transfer-Encoding with a coding other than `chunked` (only `chunked` is supported), answered 501.
    UnsupportedTransferCoding,
    /// Transfer-Encoding in an HTTP/1.0 message (RFC 9112 §6.1: framing is faulty).
    TransferEncodingInHttp10,
    /// The head is larger than `max_header_bytes`.
    HeadTooLarge,
    /// More headers than `max_headers`.
    TooManyHeaders,
    /// Declared or streamed body larger than `max_body_bytes`.
    BodyTooLarge,
    /// A chunk-size line that is not hex, overflows, or has a bad extension; or missing CRLF after chunk data.
    BadChunk,
    /// A malformed trailer section, or one larger than the limit.
    BadTrailer,
    /// An Expect value other than `100-continue`, answered 417.
    ExpectationFailed,
    /// CONNECT: not proxied by an HTTP listener, answered 405.
    MethodNotAllowed,
    /// Upstream bytes when no response is expected (after the end of one, or on an idle connection).
    UnsolicitedResponse,
}

impl Refusal {
    /// Every reason, for counter tables.
    pub const ALL: [Refusal; 24] = [
        Refusal::BadStartLine,
        Refusal::BadHeaderName,
        Refusal::BadHeaderValue,
        Refusal::ObsFold,
        Refusal::BareCr,
        Refusal::BareLf,
        Refusal::MissingHost,
        Refusal::MultipleHost,
        Refusal::BadHost,
        Refusal::BadTarget,
        Refusal::DuplicateContentLength,
        Refusal::BadContentLength,
        Refusal::ContentLengthWithTransferEncoding,
        Refusal::TransferEncodingNotChunked,
        Refusal::UnsupportedTransferCoding,
        Refusal::TransferEncodingInHttp10,
        Refusal::HeadTooLarge,
        Refusal::TooManyHeaders,
        Refusal::BodyTooLarge,
        Refusal::BadChunk,
        Refusal::BadTrailer,
        Refusal::ExpectationFailed,
        Refusal::MethodNotAllowed,
        Refusal::UnsolicitedResponse,
    ];

    /// Status code the proxy answers a client request refused for this reason.
    pub fn status(self) -> u16 {
        match self {
            Refusal::HeadTooLarge | Refusal::TooManyHeaders => 431,
            Refusal::BodyTooLarge => 413,
            Refusal::UnsupportedTransferCoding => 501,
            Refusal::ExpectationFailed => 417,
            Refusal::MethodNotAllowed => 405,
            _ => 400,
        }
    }

    /// Counter name (snake case) for stats and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::BadStartLine => "bad_start_line",
            Refusal::BadHeaderName => "bad_header_name",
            Refusal::BadHeaderValue => "bad_header_value",
            Refusal::ObsFold => "obs_fold",
            Refusal::BareCr => "bare_cr",
            Refusal::BareLf => "bare_lf",
            Refusal::MissingHost => "missing_host",
            Refusal::MultipleHost => "multiple_host",
            Refusal::BadHost => "bad_host",
            Refusal::BadTarget => "bad_target",
            Refusal::DuplicateContentLength => "duplicate_content_length",
            Refusal::BadContentLength => "bad_content_length",
            Refusal::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            Refusal::TransferEncodingNotChunked => "transfer_encoding_not_chunked",
            Refusal::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Refusal::TransferEncodingInHttp10 => "transfer_encoding_in_http10",
            Refusal::HeadTooLarge => "head_too_large",
            Refusal::TooManyHeaders => "too_many_headers",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::BadChunk => "bad_chunk",
            Refusal::BadTrailer => "bad_trailer",
            Refusal::ExpectationFailed => "expectation_failed",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::UnsolicitedResponse => "unsolicited_response",
        }
    }
}

/// A header as received: name in its original case, value with surrounding whitespace removed. Both are stored
/// inline when short (names up to 24 bytes, values up to 32: nearly every field of a request or response), so
/// parsing a head costs one allocation (the list) rather than two per field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Field name.
    pub name: FieldName,
    /// Field value (may hold obs-text bytes, never CR or LF).
    pub value: FieldValue,
}

/// A header's name: inline up to 24 bytes.
pub type FieldName = compact_str::CompactString;
/// A header's value: inline up to 32 bytes.
pub type FieldValue = smallvec::SmallVec<[u8; 32]>;

impl Header {
    /// Whether this header's name is `name` (ASCII case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// Comma-separated list elements of `value`, trimmed, empty ones skipped (RFC 9110 §5.6.1).
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows).filter(|e| !e.is_empty())
}

/// `bytes` without leading and trailing spaces and tabs.
pub fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |p| p + 1);
    &bytes[start..end]
}

/// Whether any `name` header lists `token` (case-insensitive), e.g. `Connection: close`.
pub fn has_token(headers: &[Header], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.is(name))
        .flat_map(|h| list_elements(&h.value))
        .any(|e| e.eq_ignore_ascii_case(token.as_bytes()))
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes (Content-Length).
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Finds the end of a message head in a growing buffer, checking line discipline on the way.
///
/// Feed it the whole buffer each time (it resumes where it stopped, so every byte is looked at once); once it
/// has found the end it keeps answering it, and a new scanner is needed for the next head. Leading
/// empty lines (CRLF) before the start line are allowed (RFC 9112 §2.2); their length is [`HeadScanner::skip`].
#[derive(Clone, Debug, Default)]
pub struct HeadScanner {
    pos: usize,
    state: ScanState,
    lines: usize,
    skip: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ScanState {
    #[default]
    LineStart,
    InLine,
    Cr,
    CrAtLineStart,
}

impl HeadScanner {
    /// Scans `buf[self.pos..]`; returns the head's length (through the empty line) once it is complete.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, Refusal> {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            self.pos += 1;
            self.state = match (self.state, b) {
                (ScanState::LineStart, b'\r') => ScanState::CrAtLineStart,
                (ScanState::LineStart, b' ' | b'\t') if self.lines > 0 => return Err(Refusal::ObsFold),
                (ScanState::LineStart | ScanState::InLine, b'\n') => return Err(Refusal::BareLf),
                (ScanState::InLine, b'\r') => ScanState::Cr,
                (ScanState::LineStart | ScanState::InLine, _) => ScanState::InLine,
                (ScanState::Cr, b'\n') => {
                    self.lines += 1;
                    ScanState::LineStart
                }
                (ScanState::CrAtLineStart, b'\n') if self.lines == 0 => {
                    self.skip = self.pos;
                    ScanState::LineStart
                }
                (ScanState::CrAtLineStart, b'\n') => {
                    // Stays here (and `skip` stays valid) until the owner starts a new scanner for the next head.
                    self.pos -= 1;
                    return Ok(Some(self.pos + 1));
                }
                (ScanState::Cr | ScanState::CrAtLineStart, _) => return Err(Refusal::BareCr),
            };
        }
        Ok(None)
    }

    /// Bytes of leading empty lines seen so far.
    pub fn skip(&self) -> usize {
        self.skip
    }

    /// Bytes scanned so far.
    pub fn scanned(&self) -> usize {
        self.pos
    }
}

/// Maps an `httparse` error to a refusal.
pub(crate) fn refusal_from_httparse(e: httparse::Error) -> Refusal {
    match e {
        httparse::Error::HeaderName => Refusal::BadHeaderName,
        httparse::Error::HeaderValue => Refusal::BadHeaderValue,
        httparse::Error::TooManyHeaders => Refusal::TooManyHeaders,
        _ => Refusal::BadStartLine,
    }
}

/// Checks the framing headers shared by requests and responses: Content-Length and Transfer-Encoding.
///
/// Returns the declared framing (`None` when neither header is present).
pub(crate) fn declared_framing(headers: &[Header], version: Version) -> Result<Option<BodyFraming>, Refusal> {
    let mut length: Option<u64> = None;
    let mut codings = 0usize;
    let mut chunked_last = false;
    let mut saw_te = false;
    for h in headers {
        if h.is("content-length") {
            if length.is_some() {
                return Err(Refusal::DuplicateContentLength);
            }
            let v = &h.value;
            if v.contains(&b',') {
                return Err(Refusal::DuplicateContentLength);
            }
            if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                return Err(Refusal::BadContentLength);
            }
            length = Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        } else if h.is("transfer-encoding") {
            saw_te = true;
            for coding in h.value.split(|&b| b == b',').map(trim_ows) {
                if coding.is_empty() {
                    return Err(Refusal::TransferEncodingNotChunked);
                }
                if chunked_last {
                    // Something after chunked, or chunked twice.
                    return Err(Refusal::TransferEncodingNotChunked);
                }
                codings += 1;
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            }
        }
    }
    if saw_te {
        if version == Version::Http10 {
            return Err(Refusal::TransferEncodingInHttp10);
        }
        if length.is_some() {
            return Err(Refusal::ContentLengthWithTransferEncoding);
        }
        if !chunked_last {
            return Err(Refusal::TransferEncodingNotChunked);
        }
        if codings > 1 {
            return Err(Refusal::UnsupportedTransferCoding);
        }
        return Ok(Some(BodyFraming::Chunked));
    }
    Ok(length.map(BodyFraming::Length))
}

/// Copies `httparse` headers into owned [`Header`]s (inline when short: see [`Header`]).
pub(crate) fn own_headers(parsed: &[httparse::Header<'_>]) -> Result<Vec<Header>, Refusal> {
    parsed
        .iter()
        .map(|h| {
            if h.name.is_empty() {
                return Err(Refusal::BadHeaderName);
            }
            Ok(Header {
                name: FieldName::new(h.name),
                value: FieldValue::from_slice(trim_ows(h.value)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(bytes: &[u8]) -> Result<Option<usize>, Refusal> {
        HeadScanner::default().scan(bytes)
    }

    #[test]
    fn scanner_finds_end_of_head() {
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Ok(Some(27)));
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
    }

    #[test]
    fn scanner_resumes_byte_by_byte() {
        let msg = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut s = HeadScanner::default();
        let mut end = None;
        for i in 1..=msg.len() {
            if let Some(e) = s.scan(&msg[..i]).unwrap() {
                end = Some((i, e));
                break;
            }
            assert_eq!(s.skip(), if i >= 2 { 2 } else { 0 });
        }
        assert_eq!(end, Some((msg.len(), msg.len())));
    }

    #[test]
    fn scanner_refuses_bad_line_endings() {
        assert_eq!(scan_all(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), Err(Refusal::BareLf));
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\n\n"), Err(Refusal::BareLf));
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), Err(Refusal::BareCr));
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n\rX"), Err(Refusal::BareCr));
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"), Err(Refusal::ObsFold));
        assert_eq!(
            scan_all(b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n"),
            Err(Refusal::ObsFold)
        );
    }

    #[test]
    fn framing_rules() {
        let h = |n: &str, v: &str| Header {
            name: n.into(),
            value: v.as_bytes().into(),
        };
        let v11 = Version::Http11;
        assert_eq!(declared_framing(&[], v11), Ok(None));
        assert_eq!(
            declared_framing(&[h("Content-Length", "12")], v11),
            Ok(Some(BodyFraming::Length(12)))
        );
        assert_eq!(
            declared_framing(&[h("transfer-encoding", "Chunked")], v11),
            Ok(Some(BodyFraming::Chunked))
        );
        let cases: &[(&[Header], Refusal)] = &[
            (
                &[h("Content-Length", "1"), h("content-length", "1")],
                Refusal::DuplicateContentLength,
            ),
            (&[h("Content-Length", "1, 1")], Refusal::DuplicateContentLength),
            (&[h("Content-Length", "+1")], Refusal::BadContentLength),
            (&[h("Content-Length", "-1")], Refusal::BadContentLength),
            (&[h("Content-Length", "0x10")], Refusal::BadContentLength),
            (&[h("Content-Length", "")], Refusal::BadContentLength),
            (&[h("Content-Length", "1 2")], Refusal::BadContentLength),
            (
                &[h("Content-Length", "99999999999999999999")],
                Refusal::BadContentLength,
            ),
            (
                &[h("Content-Length", "3"), h("Transfer-Encoding", "chunked")],
                Refusal::ContentLengthWithTransferEncoding,
            ),
            (
                &[h("Transfer-Encoding", "chunked"), h("Content-Length", "3")],
                Refusal::ContentLengthWithTransferEncoding,
            ),
            (
                &[h("Transfer-Encoding", "chunked, gzip")],
                Refusal::TransferEncodingNotChunked,
            ),
            (
                &[h("Transfer-Encoding", "chunked"), h("Transfer-Encoding", "chunked")],
                Refusal::TransferEncodingNotChunked,
            ),
            (&[h("Transfer-Encoding", "gzip")], Refusal::TransferEncodingNotChunked),
            (
                &[h("Transfer-Encoding", "xchunked")],
                Refusal::TransferEncodingNotChunked,
            ),
            (
                &[h("Transfer-Encoding", "chunked, ")],
                Refusal::TransferEncodingNotChunked,
            ),
            (&[h("Transfer-Encoding", "")], Refusal::TransferEncodingNotChunked),
            (
                &[h("Transfer-Encoding", "gzip, chunked")],
                Refusal::UnsupportedTransferCoding,
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(declared_framing(headers, v11), Err(*want), "{headers:?}");
        }
        assert_eq!(
            declared_framing(&[h("Transfer-Encoding", "chunked")], Version::Http10),
            Err(Refusal::TransferEncodingInHttp10)
        );
    }

    #[test]
    fn refusal_statuses_and_names() {
        let names: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Refusal::ALL.len(), "names are unique");
        assert_eq!(Refusal::HeadTooLarge.status(), 431);
        assert_eq!(Refusal::BodyTooLarge.status(), 413);
        assert_eq!(Refusal::ObsFold.status(), 400);
        assert_eq!(Refusal::ObsFold.name(), "obs_fold");
    }
}
