//! Consistent hashing on a request header or cookie: `hash = { header = "X-User-Id" }` or
//! `hash = { cookie = "sid" }` on an `http`/`https` listener (NGINX `hash $cookie_sid consistent`, HAProxy
//! `balance hdr(X-User-Id)` with `hash-type consistent`).
//!
//! Requests carrying the same value go to the same server while it is available. The server is chosen by
//! weighted rendezvous hashing (highest random weight): each available server scores the key, the best score
//! wins. A server that goes away moves only its own keys (to their second choice), one that comes back takes
//! back only its own, and weights are respected in proportion. It needs no table, so nothing is rebuilt on
//! health changes. Requests without the header or cookie are scheduled by the group's scheduler; a sticky
//! cookie (`sticky`) wins over the hash.

use serde::Deserialize;

use crate::http1::Header;
use crate::sticky::find_cookie;

/// `hash = { header = … }` or `hash = { cookie = … }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HashKeyConfig {
    /// A request header whose value is hashed (the first occurrence).
    #[serde(default)]
    pub header: Option<String>,
    /// A cookie whose value is hashed.
    #[serde(default)]
    pub cookie: Option<String>,
}

impl HashKeyConfig {
    /// Checks that exactly one of `header` and `cookie` is given, as a valid name.
    pub fn validate(&self, at: &str) -> Result<(), String> {
        let name = match (&self.header, &self.cookie) {
            (Some(h), None) => h,
            (None, Some(c)) => c,
            _ => return Err(format!("{at}.hash: needs exactly one of header, cookie")),
        };
        if name.is_empty() || !name.bytes().all(crate::http1::body::is_tchar) {
            return Err(format!("{at}.hash: {name:?} is not a header or cookie name"));
        }
        Ok(())
    }

    /// The hash of the request's key, if the request carries it (an empty value counts as absent).
    pub fn key_of(&self, headers: &[Header]) -> Option<u64> {
        let value = match (&self.header, &self.cookie) {
            (Some(name), _) => headers.iter().find(|h| h.is(name)).map(|h| &h.value[..]),
            (None, Some(name)) => find_cookie(headers, name),
            (None, None) => None,
        }?;
        (!value.is_empty()).then(|| hash_bytes(value))
    }
}

/// FNV-1a, then a final mix (keys are short strings; the mix spreads them over all 64 bits).
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Weighted rendezvous hashing: among `candidates` (a server's identity hash and weight, or `None` if it may
/// not be picked), the index whose score for `key` is best. Weight 0 is never picked.
pub fn rendezvous(key: u64, candidates: impl Iterator<Item = Option<(u64, u32)>>) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (i, c) in candidates.enumerate() {
        let Some((id, weight)) = c.filter(|(_, w)| *w > 0) else {
            continue;
        };
        // A uniform draw in (0, 1] from the pair; the score -ln(u) / w is exponentially distributed with rate
        // w, so the smallest wins with probability proportional to the weight.
        let u = ((mix(key ^ mix(id)) >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let score = -u.ln() / f64::from(weight);
        if best.is_none_or(|(b, _)| score < b) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
}

/// A server's identity for [`rendezvous`]: from its address, so every worker and HA peer agrees.
pub fn server_identity(addr: std::net::SocketAddrV4) -> u64 {
    let mut bytes = [0u8; 6];
    bytes[..4].copy_from_slice(&addr.ip().octets());
    bytes[4..].copy_from_slice(&addr.port().to_be_bytes());
    hash_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.as_bytes().into(),
        }
    }

    #[test]
    fn keys_come_from_the_header_or_the_cookie() {
        let by_header = HashKeyConfig {
            header: Some("X-User".into()),
            cookie: None,
        };
        let by_cookie = HashKeyConfig {
            header: None,
            cookie: Some("sid".into()),
        };
        let req = [h("x-user", "alice"), h("Cookie", "a=1; sid=abc")];
        assert_eq!(
            by_header.key_of(&req),
            Some(hash_bytes(b"alice")),
            "case-insensitive name"
        );
        assert_eq!(by_cookie.key_of(&req), Some(hash_bytes(b"abc")));
        assert_eq!(by_header.key_of(&[h("x-user", "")]), None, "empty is absent");
        assert_eq!(by_cookie.key_of(&[h("Cookie", "other=1")]), None);
        assert!(by_header.validate("listener[0]").is_ok());
        let both = HashKeyConfig {
            header: Some("a".into()),
            cookie: Some("b".into()),
        };
        assert!(both.validate("listener[0]").unwrap_err().contains("exactly one"));
        let bad = HashKeyConfig {
            header: Some("bad name".into()),
            cookie: None,
        };
        assert!(bad.validate("listener[0]").is_err());
    }

    fn ids(n: u64) -> Vec<u64> {
        (0..n).map(|i| mix(i + 1)).collect()
    }

    #[test]
    fn a_server_going_away_moves_only_its_own_keys() {
        let servers = ids(5);
        let pick = |down: Option<usize>, key: u64| {
            rendezvous(
                key,
                servers
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| (Some(i) != down).then_some((id, 1))),
            )
            .unwrap()
        };
        let keys: Vec<u64> = (0..10_000u64).map(|k| mix(k ^ 0x5555)).collect();
        let before: Vec<usize> = keys.iter().map(|&k| pick(None, k)).collect();
        let after: Vec<usize> = keys.iter().map(|&k| pick(Some(2), k)).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(a, b, "a key of another server stays where it was");
            } else {
                assert_ne!(*a, 2);
            }
        }
        let mut counts = [0usize; 5];
        for b in &before {
            counts[*b] += 1;
        }
        // 10 000 keys over 5 servers: each gets 2 000 on average (the bound is ~9 standard deviations).
        assert!(counts.iter().all(|&c| (1_650..=2_350).contains(&c)), "{counts:?}");
    }

    #[test]
    fn weights_are_respected_and_zero_is_never_picked() {
        let servers = ids(3);
        let weights = [1u32, 3, 0];
        let mut counts = [0usize; 3];
        for k in 0..12_000u64 {
            let i = rendezvous(mix(k), servers.iter().zip(weights).map(|(&id, w)| Some((id, w)))).unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts[2], 0, "{counts:?}");
        // Expected 3 000 and 9 000.
        assert!((2_600..=3_400).contains(&counts[0]), "{counts:?}");
        assert_eq!(rendezvous(1, [None, Some((5, 0))].into_iter()), None);
    }
}
