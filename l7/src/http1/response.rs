//! Response heads from upstream servers: the same strictness as requests (a refused head is answered 502), plus
//! the rules that say where a response ends (RFC 9112 §6.3): no body for HEAD, 1xx, 204 and 304.

use super::{declared_framing, has_token, own_headers, refusal_from_httparse, BodyFraming, Header, Refusal, Version};
use crate::http1::request::MAX_HEADERS;

/// A parsed and checked response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Version of the server.
    pub version: Version,
    /// Status code (100..=999 as httparse allows; the proxy treats anything below 200 as informational).
    pub status: u16,
    /// Reason phrase (may be empty).
    pub reason: String,
    /// Headers in order.
    pub headers: Vec<Header>,
    /// Where the body ends.
    pub framing: BodyFraming,
    /// Whether the server keeps the connection open after this response.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// 1xx other than 101: more heads follow for the same request.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses a complete head. `request_was_head`: the request was a HEAD (no body whatever the headers say).
pub fn parse_response(head: &[u8], request_was_head: bool) -> Result<ResponseHead, Refusal> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(Refusal::BadStartLine),
        Err(e) => return Err(refusal_from_httparse(e)),
    }
    let version = match resp.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(Refusal::BadStartLine),
    };
    let status = resp.code.ok_or(Refusal::BadStartLine)?;
    if !(100..=599).contains(&status) {
        return Err(Refusal::BadStartLine);
    }
    let reason = resp.reason.unwrap_or("").to_owned();
    let headers = own_headers(resp.headers)?;
    let declared = declared_framing(&headers, version)?;
    let bodyless = request_was_head || status < 200 || status == 204 || status == 304;
    let framing = match declared {
        _ if bodyless => BodyFraming::None,
        Some(f) => f,
        None => BodyFraming::UntilClose,
    };
    let close = has_token(&headers, "connection", "close");
    let keep_alive = framing != BodyFraming::UntilClose
        && match version {
            Version::Http11 => !close,
            Version::Http10 => !close && has_token(&headers, "connection", "keep-alive"),
        };
    Ok(ResponseHead {
        version,
        status,
        reason,
        headers,
        framing,
        keep_alive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ResponseHead, Refusal> {
        parse_response(s.as_bytes(), false)
    }

    #[test]
    fn framing_by_status_and_method() {
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), r.framing, r.keep_alive),
            (200, "OK", BodyFraming::Length(3), true)
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .framing,
            BodyFraming::Chunked
        );
        let r = parse("HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!((r.framing, r.keep_alive), (BodyFraming::UntilClose, false));
        for s in [
            "204 No Content",
            "304 Not Modified",
            "100 Continue",
            "103 Early Hints",
            "101 Switching",
        ] {
            let r = parse(&format!("HTTP/1.1 {s}\r\nContent-Length: 10\r\n\r\n")).unwrap();
            assert_eq!(r.framing, BodyFraming::None, "{s}");
        }
        assert!(parse("HTTP/1.1 103 Early Hints\r\n\r\n").unwrap().is_interim());
        assert!(!parse("HTTP/1.1 101 Switching Protocols\r\n\r\n").unwrap().is_interim());
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true).unwrap();
        assert_eq!(r.framing, BodyFraming::None);
    }

    #[test]
    fn keep_alive() {
        assert!(
            !parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            !parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn strictness() {
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(Refusal::DuplicateContentLength)
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Refusal::ContentLengthWithTransferEncoding)
        );
        assert_eq!(parse("HTTP/1.1 200 OK\r\nX y: 1\r\n\r\n"), Err(Refusal::BadHeaderName));
        assert_eq!(parse("HTTP/2 200 OK\r\n\r\n"), Err(Refusal::BadStartLine));
        assert_eq!(parse("HTTP/1.1 20 OK\r\n\r\n"), Err(Refusal::BadStartLine));
        assert_eq!(parse("HTTP/1.1 600 Odd\r\n\r\n"), Err(Refusal::BadStartLine));
    }
}
