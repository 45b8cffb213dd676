//! Sticky sessions by cookie: `Cookie` header parsing and the two modes.
//!
//! - **insert**: xlb sets `cookie=<token>` naming the server that answered; later requests carrying it go to that
//!   server (if the datapath still calls it healthy).
//! - **rewrite**: the server sets its own session cookie (`JSESSIONID=abc`); xlb prefixes the value with the
//!   server's token (`JSESSIONID=<token>.abc`) towards the client and strips the prefix again on the way back,
//!   so the server sees its own value.
//!
//! A token is 16 hex digits from [`StickyCodec`]: the server's index and a check value, mixed with a secret
//! (an invertible 64-bit permutation). It says nothing about the server's address and a forged or stale token
//! decodes to `None` with high probability; it is not a cryptographic MAC.

use crate::http1::{trim_ows, Header};

/// A server as the datapath knows it (its index in the group); opaque to L7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerId(pub u32);

/// The `name=value` pairs of a `Cookie` header value (RFC 6265 §5.4, leniently: empty parts and parts without
/// `=` are skipped, whitespace trimmed, one pair of surrounding quotes removed).
pub fn cookies(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    value.split(|&b| b == b';').filter_map(|pair| {
        let pair = trim_ows(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        let name = trim_ows(&pair[..eq]);
        let mut v = trim_ows(&pair[eq + 1..]);
        if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
            v = &v[1..v.len() - 1];
        }
        (!name.is_empty()).then_some((name, v))
    })
}

/// The value of the first cookie called `name` in any `Cookie` header.
pub fn find_cookie<'h>(headers: &'h [Header], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .filter(|h| h.is("cookie"))
        .flat_map(|h| cookies(&h.value))
        .find(|(n, _)| *n == name.as_bytes())
        .map(|(_, v)| v)
}

/// Encodes and decodes the opaque server tokens with a secret (same secret on every worker and HA peer).
#[derive(Clone, Copy, Debug)]
pub struct StickyCodec {
    secret: u64,
}

const MULT: u64 = 0x9e37_79b9_7f4a_7c15 | 1;
const MULT_INV: u64 = inverse(MULT);

/// Multiplicative inverse of an odd number modulo 2^64 (Newton's iteration).
const fn inverse(a: u64) -> u64 {
    let mut x = a;
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        i += 1;
    }
    x
}

impl StickyCodec {
    /// A codec keyed with `secret`.
    pub fn new(secret: u64) -> Self {
        StickyCodec { secret }
    }

    fn check(&self, server: u32) -> u64 {
        let x = (u64::from(server) ^ self.secret.rotate_left(17)).wrapping_mul(MULT);
        (x ^ (x >> 31)) >> 32
    }

    /// The 16-hex-digit token for `server`.
    pub fn encode(&self, server: ServerId) -> [u8; 16] {
        let x = (u64::from(server.0) << 32 | self.check(server.0)) ^ self.secret;
        let mut y = x.wrapping_mul(MULT);
        y ^= y >> 29;
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = b"0123456789abcdef"[((y >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }

    /// The server a token names, if it is one this codec made.
    pub fn decode(&self, token: &[u8]) -> Option<ServerId> {
        if token.len() != 16 {
            return None;
        }
        let mut y = 0u64;
        for &b in token {
            y = y << 4 | u64::from((b as char).to_digit(16)?);
        }
        y ^= (y >> 29) ^ (y >> 58);
        let x = y.wrapping_mul(MULT_INV) ^ self.secret;
        let server = (x >> 32) as u32;
        (x & 0xffff_ffff == self.check(server)).then_some(ServerId(server))
    }

    /// insert: the server named by cookie `name`, if any.
    pub fn inserted_server(&self, headers: &[Header], name: &str) -> Option<ServerId> {
        find_cookie(headers, name).and_then(|v| self.decode(v))
    }

    /// insert: the `Set-Cookie` value naming `server` (`Max-Age` unless `timeout_s` is 0).
    pub fn insert_cookie(&self, name: &str, server: ServerId, timeout_s: u64) -> Vec<u8> {
        let token = self.encode(server);
        let mut v = Vec::with_capacity(name.len() + 64);
        v.extend_from_slice(name.as_bytes());
        v.push(b'=');
        v.extend_from_slice(&token);
        if timeout_s > 0 {
            v.extend_from_slice(format!("; Max-Age={timeout_s}").as_bytes());
        }
        v.extend_from_slice(b"; Path=/; HttpOnly");
        v
    }

    /// rewrite, request side: finds cookie `name` holding `<token>.<value>`, restores `name=<value>` in the
    /// Cookie header and returns the server. Other cookies and headers are untouched.
    pub fn strip_rewritten(&self, headers: &mut [Header], name: &str) -> Option<ServerId> {
        for h in headers.iter_mut().filter(|h| h.is("cookie")) {
            let base = h.value.as_ptr() as usize;
            let found = cookies(&h.value)
                .find(|(n, _)| *n == name.as_bytes())
                .map(|(_, v)| (v.as_ptr() as usize - base, v.len()));
            let Some((at, len)) = found else { continue };
            if len < 17 || h.value[at + 16] != b'.' {
                return None;
            }
            let server = self.decode(&h.value[at..at + 16])?;
            h.value.drain(at..at + 17);
            return Some(server);
        }
        None
    }

    /// rewrite, response side: prefixes the value of every `Set-Cookie: name=…` with `<token>.`.
    pub fn rewrite_set_cookie(&self, headers: &mut [Header], name: &str, server: ServerId) -> bool {
        let token = self.encode(server);
        let mut done = false;
        for h in headers.iter_mut().filter(|h| h.is("set-cookie")) {
            let v = trim_ows(&h.value);
            let Some(eq) = v.iter().position(|&b| b == b'=') else {
                continue;
            };
            if trim_ows(&v[..eq]) != name.as_bytes() {
                continue;
            }
            let mut at = eq + 1;
            while h.value.get(at) == Some(&b' ') {
                at += 1;
            }
            let quoted = h.value.get(at) == Some(&b'"');
            let at = at + usize::from(quoted);
            h.value.insert_many(at, token.iter().copied().chain([b'.']));
            done = true;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    fn h(n: &str, v: &str) -> Header {
        Header {
            name: n.into(),
            value: v.as_bytes().into(),
        }
    }

    #[test]
    fn cookie_parsing_is_lenient() {
        let got: Vec<_> = cookies(b" a=1;b = 2 ;;c;=x; d=\"q\" ;e=").collect();
        assert_eq!(
            got,
            vec![(&b"a"[..], &b"1"[..]), (b"b", b"2"), (b"d", b"q"), (b"e", b"")]
        );
        let headers = [h("Cookie", "x=1"), h("cookie", "SRV=abc; y=2")];
        assert_eq!(find_cookie(&headers, "SRV"), Some(&b"abc"[..]));
        assert_eq!(find_cookie(&headers, "srv"), None, "cookie names are case-sensitive");
    }

    #[test]
    fn tokens_round_trip_and_are_opaque() {
        let c = StickyCodec::new(0x1234_5678_9abc_def0);
        let mut rng = Rng::new(5);
        for s in [0, 1, 2, 7, u32::MAX]
            .into_iter()
            .chain((0..1000).map(|_| rng.next() as u32))
        {
            let t = c.encode(ServerId(s));
            assert_eq!(c.decode(&t), Some(ServerId(s)));
        }
        assert_ne!(
            c.encode(ServerId(1))[..8],
            c.encode(ServerId(2))[..8],
            "neighbours look unrelated"
        );
        let other = StickyCodec::new(42);
        assert_eq!(other.decode(&c.encode(ServerId(3))), None, "another secret refuses it");
        let forged = (0..1000).filter(|_| {
            let t: Vec<u8> = (0..16).map(|_| b"0123456789abcdef"[rng.below(16)]).collect();
            c.decode(&t).is_some()
        });
        assert_eq!(forged.count(), 0);
        assert_eq!(c.decode(b"xyz"), None);
        assert_eq!(c.decode(b"zzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn insert_mode() {
        let c = StickyCodec::new(9);
        let set = c.insert_cookie("XLB", ServerId(4), 3600);
        let s = String::from_utf8(set.clone()).unwrap();
        assert!(
            s.starts_with("XLB=") && s.ends_with("; Max-Age=3600; Path=/; HttpOnly"),
            "{s}"
        );
        let value = &s[4..20];
        let headers = [h("Cookie", &format!("other=1; XLB={value}"))];
        assert_eq!(c.inserted_server(&headers, "XLB"), Some(ServerId(4)));
        assert_eq!(c.inserted_server(&[h("Cookie", "XLB=garbage")], "XLB"), None);
        assert!(!String::from_utf8(c.insert_cookie("XLB", ServerId(4), 0))
            .unwrap()
            .contains("Max-Age"));
    }

    #[test]
    fn rewrite_mode_round_trip() {
        let c = StickyCodec::new(77);
        let mut resp = vec![
            h("Set-Cookie", "JSESSIONID=abc123; Path=/; HttpOnly"),
            h("Set-Cookie", "other=1"),
        ];
        assert!(c.rewrite_set_cookie(&mut resp, "JSESSIONID", ServerId(2)));
        let v = String::from_utf8(resp[0].value.to_vec()).unwrap();
        assert!(
            v.starts_with("JSESSIONID=") && v.ends_with(".abc123; Path=/; HttpOnly"),
            "{v}"
        );
        assert_eq!(&resp[1].value[..], b"other=1");
        let token = &v[11..27];
        let mut req = vec![h("Cookie", &format!("a=1; JSESSIONID={token}.abc123; b=2"))];
        assert_eq!(c.strip_rewritten(&mut req, "JSESSIONID"), Some(ServerId(2)));
        assert_eq!(&req[0].value[..], b"a=1; JSESSIONID=abc123; b=2");
        let mut req = vec![h("Cookie", "JSESSIONID=abc123")];
        assert_eq!(c.strip_rewritten(&mut req, "JSESSIONID"), None);
        assert_eq!(&req[0].value[..], b"JSESSIONID=abc123", "unprefixed cookies untouched");
        let mut quoted = vec![h("Set-Cookie", "JSESSIONID=\"q\"")];
        c.rewrite_set_cookie(&mut quoted, "JSESSIONID", ServerId(1));
        assert!(quoted[0].value.ends_with(b".q\""));
    }
}
