//! Request heads: parsing (`httparse`) plus the RFC 9112 checks a proxy needs so that it and the server behind it
//! agree on where every request ends.

use super::{declared_framing, has_token, own_headers, refusal_from_httparse, BodyFraming, Header, Refusal, Version};

/// Most headers a head may carry (more is refused with 431).
pub const MAX_HEADERS: usize = 100;

/// A parsed and checked request head (owned: one allocation per header and per request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Method, as sent (case-sensitive).
    pub method: String,
    /// Request target in origin form (`/path?query`, or `*`); an absolute-form target is reduced to this.
    pub target: String,
    /// Version.
    pub version: Version,
    /// Headers in order, as received.
    pub headers: Vec<Header>,
    /// Host for routing: lowercase, port stripped; from the absolute-form target if any, else from Host.
    pub host: String,
    /// Body framing (`None` when neither Content-Length nor Transfer-Encoding).
    pub framing: BodyFraming,
    /// Whether the client wants the connection kept open after this request (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
    /// A WebSocket upgrade request (`GET`, `Upgrade: websocket`, `Connection: upgrade`, HTTP/1.1).
    pub websocket: bool,
}

impl RequestHead {
    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target.as_str(), |(p, _)| p)
    }

    /// Whether the method is HEAD (its response never has a body).
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.is(name)).map(|h| h.value.as_slice())
    }
}

/// Parses a complete head (as delimited by [`super::HeadScanner`], leading empty lines removed).
pub fn parse_request(head: &[u8]) -> Result<RequestHead, Refusal> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(Refusal::BadStartLine),
        Err(e) => return Err(refusal_from_httparse(e)),
    }
    let method = req.method.ok_or(Refusal::BadStartLine)?;
    let raw_target = req.path.ok_or(Refusal::BadStartLine)?;
    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(Refusal::BadStartLine),
    };
    if method == "CONNECT" {
        return Err(Refusal::MethodNotAllowed);
    }
    let headers = own_headers(req.headers)?;

    let (target, target_authority) = split_target(method, raw_target)?;
    let mut host_header: Option<&[u8]> = None;
    for h in headers.iter().filter(|h| h.is("host")) {
        if host_header.is_some() {
            return Err(Refusal::MultipleHost);
        }
        host_header = Some(&h.value);
    }
    let authority = match (target_authority, host_header) {
        (Some(a), _) => {
            if let Some(h) = host_header {
                check_authority(h)?;
            }
            a.as_bytes()
        }
        (None, Some(h)) => h,
        (None, None) if version == Version::Http11 => return Err(Refusal::MissingHost),
        (None, None) => b"",
    };
    check_authority(authority)?;
    let host = host_without_port(authority);

    let framing = declared_framing(&headers, version)?.unwrap_or(BodyFraming::None);
    let close = has_token(&headers, "connection", "close");
    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => !close && has_token(&headers, "connection", "keep-alive"),
    };
    let mut expect_continue = false;
    for h in headers.iter().filter(|h| h.is("expect")) {
        if h.value.eq_ignore_ascii_case(b"100-continue") {
            expect_continue = version == Version::Http11;
        } else {
            return Err(Refusal::ExpectationFailed);
        }
    }
    let websocket = version == Version::Http11
        && method == "GET"
        && has_token(&headers, "connection", "upgrade")
        && has_token(&headers, "upgrade", "websocket");

    Ok(RequestHead {
        method: method.to_owned(),
        target,
        version,
        headers,
        host,
        framing,
        keep_alive,
        expect_continue,
        websocket,
    })
}

/// Splits a request target into (origin-form target, authority of an absolute-form target).
fn split_target<'a>(method: &str, target: &'a str) -> Result<(String, Option<&'a str>), Refusal> {
    if target.starts_with('/') {
        return Ok((target.to_owned(), None));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok((target.to_owned(), None))
        } else {
            Err(Refusal::BadTarget)
        };
    }
    let rest = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"))
        .ok_or(Refusal::BadTarget)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(Refusal::BadTarget);
    }
    let origin = if path.is_empty() {
        "/".to_owned()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok((origin, Some(authority)))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// Checks `host[:port]` (RFC 3986 reg-name, IPv4 or bracketed IPv6; port digits). Empty is allowed.
fn check_authority(a: &[u8]) -> Result<(), Refusal> {
    let (host, port) = if a.first() == Some(&b'[') {
        let close = a.iter().position(|&b| b == b']').ok_or(Refusal::BadHost)?;
        let inside = &a[1..close];
        if inside.is_empty() || !inside.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')) {
            return Err(Refusal::BadHost);
        }
        match &a[close + 1..] {
            [] => (&a[..0], None),
            [b':', port @ ..] => (&a[..0], Some(port)),
            _ => return Err(Refusal::BadHost),
        }
    } else {
        match a.iter().position(|&b| b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        }
    };
    let host_ok = host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(Refusal::BadHost)
    }
}

/// Lowercase host with any `:port` removed (`[v6]` keeps its brackets).
pub fn host_without_port(a: &[u8]) -> String {
    let host = if a.first() == Some(&b'[') {
        let close = a.iter().position(|&b| b == b']').map_or(a.len(), |c| c + 1);
        &a[..close]
    } else {
        a.iter().position(|&b| b == b':').map_or(a, |i| &a[..i])
    };
    String::from_utf8_lossy(host).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<RequestHead, Refusal> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn simple_get() {
        let r = parse("GET /a/b?c=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.host, "example.com");
        assert_eq!(r.version, Version::Http11);
        assert_eq!(r.framing, BodyFraming::None);
        assert!(r.keep_alive && !r.expect_continue && !r.websocket);
        assert_eq!(r.headers.len(), 2);
    }

    #[test]
    fn keep_alive_decisions() {
        let ka = |s: &str| parse(s).unwrap().keep_alive;
        assert!(ka("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"));
    }

    #[test]
    fn host_rules() {
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n"), Err(Refusal::MissingHost));
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(Refusal::MultipleHost)
        );
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), Err(Refusal::BadHost));
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), Err(Refusal::BadHost));
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n"), Err(Refusal::BadHost));
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").unwrap().host, "[::1]");
        assert_eq!(parse("GET / HTTP/1.0\r\n\r\n").unwrap().host, "");
        let r = parse("GET HTTP://Other.example:81/x?y HTTP/1.1\r\nHost: ignored\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.target.as_str()), ("other.example", "/x?y"));
        assert_eq!(parse("GET http://a HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().target, "/");
        assert_eq!(
            parse("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(Refusal::BadTarget)
        );
    }

    #[test]
    fn targets_and_methods() {
        assert_eq!(parse("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().target, "*");
        assert_eq!(parse("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), Err(Refusal::BadTarget));
        assert_eq!(parse("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n"), Err(Refusal::BadTarget));
        assert_eq!(
            parse("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(Refusal::MethodNotAllowed)
        );
        assert_eq!(parse("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), Err(Refusal::BadStartLine));
        assert_eq!(parse("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), Err(Refusal::BadStartLine));
        assert_eq!(parse("G@T / HTTP/1.1\r\nHost: a\r\n\r\n"), Err(Refusal::BadStartLine));
    }

    #[test]
    fn header_syntax() {
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"),
            Err(Refusal::BadHeaderName)
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nBad\"Name: x\r\n\r\n"),
            Err(Refusal::BadHeaderName)
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nName : x\r\n\r\n"),
            Err(Refusal::BadHeaderName)
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n"),
            Err(Refusal::BadHeaderName)
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"),
            Err(Refusal::BadHeaderValue)
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n"),
            Err(Refusal::BadHeaderValue)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: v\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            Err(Refusal::TooManyHeaders)
        );
    }

    #[test]
    fn framing_and_expect() {
        let r = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n").unwrap();
        assert_eq!(r.framing, BodyFraming::Length(5));
        assert!(r.expect_continue);
        let r = parse("POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert!(!r.expect_continue, "HTTP/1.0 expectations are ignored");
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n"),
            Err(Refusal::ExpectationFailed)
        );
        let r = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(r.framing, BodyFraming::Chunked);
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Refusal::ContentLengthWithTransferEncoding)
        );
    }

    #[test]
    fn websocket_upgrade() {
        let ws = "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\r\n";
        assert!(parse(ws).unwrap().websocket);
        assert!(
            !parse("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
                .unwrap()
                .websocket
        );
        assert!(
            !parse("POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
                .unwrap()
                .websocket
        );
        assert!(
            !parse("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n")
                .unwrap()
                .websocket
        );
    }
}
