//! L7 configuration: the `[l7]` section (limits and timeouts) and the L7 keys of an HTTP `[[listener]]`
//! (`protocol = "http"`, `[[listener.rule]]`, `sticky`).
//!
//! ```toml
//! [l7]
//! max_header_bytes = 32768
//! client_idle_timeout_s = 75
//!
//! [[listener]]
//! protocol = "http"
//! group = "web"                      # default group: requests no rule matches
//! sticky = { mode = "insert", cookie = "XLBSRV", timeout_s = 3600 }
//! hash = { cookie = "sid" }          # or { header = "X-User-Id" }: consistent hashing ([`crate::affinity`])
//!
//! [[listener.rule]]                  # first match wins
//! host = "*.example.com"
//! path_prefix = "/api/"
//! group = "api"
//!
//! [[listener.rule]]
//! host = "old.example.com"
//! redirect = { status = 301, scheme = "https" }
//! ```
//!
//! [`HttpListenerConfig`] reads only its own keys, so it can be read from the same table as the L4 listener
//! (name, vip, port, scheduler).

use crate::affinity::HashKeyConfig;
use std::collections::HashSet;

use serde::Deserialize;

use crate::http1::body::is_tchar;

/// `[l7]`: limits and timeouts for HTTP listeners (defaults after NGINX).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct L7Config {
    /// Largest request or response head, and largest trailer section (431 / 502 beyond). NGINX: 4 × 8 KiB.
    pub max_header_bytes: usize,
    /// Largest request body (413 beyond; 0: no limit). NGINX `client_max_body_size`: 1 MiB.
    pub max_body_bytes: u64,
    /// Time to receive a complete request head once it started (408). NGINX `client_header_timeout`.
    pub client_header_timeout_s: u64,
    /// Longest pause between two reads of a request body (408). NGINX `client_body_timeout`.
    pub client_body_timeout_s: u64,
    /// Idle keep-alive connection with no request in progress: closed silently. NGINX `keepalive_timeout`.
    pub client_idle_timeout_s: u64,
    /// Time for an upstream connection to be established (504). NGINX `proxy_connect_timeout`.
    pub upstream_connect_timeout_s: u64,
    /// Longest wait for the response head, and between two reads of its body (504 before the head, else the
    /// connections are closed). NGINX `proxy_read_timeout`.
    pub upstream_response_timeout_s: u64,
    /// In-stack TCP connections per worker at most, client and upstream (SYNs beyond are refused, counted).
    pub max_connections: usize,
    /// Receive and send buffer of each in-stack TCP connection (bytes each way).
    pub socket_buffer_bytes: usize,
    /// Receive and send buffer of a half-open connection, and of a kept-alive one between requests (bytes
    /// each way): a SYN flood or many idle clients cost this, not `socket_buffer_bytes`.
    pub idle_buffer_bytes: usize,
    /// Idle upstream connections kept per server and worker for reuse (0: none kept). NGINX `keepalive`.
    /// Default 256: above what one HTTP/2 client can have in flight (128 streams), so a burst of responses does
    /// not close connections the next burst of requests opens again (32 kept 97 % reuse with 256 streams in
    /// flight over three servers, 256 keeps 99.9 %); unused ones close after `upstream_idle_timeout_s`.
    pub upstream_keepalive: usize,
    /// An idle kept upstream connection is closed after this long. NGINX `keepalive_timeout` (upstream).
    pub upstream_idle_timeout_s: u64,
    /// File the access log is appended to, one line per answered request (none by default).
    pub access_log: Option<String>,
    /// HTTP/2 to clients: h2c (prior knowledge or `Upgrade: h2c`) on `http` listeners, ALPN `h2` on `https`
    /// listeners.
    pub http2: bool,
    /// Streams an HTTP/2 client may have open at once (more are refused with REFUSED_STREAM).
    pub http2_max_concurrent_streams: u32,
    /// Key Servers holding the private keys of certificates configured without `key` (`[l7.key_server]`).
    pub key_server: Option<KeyServerConfig>,
    /// Threads running TLS full handshakes (certificate signatures) for the workers; resumptions have one
    /// more of their own. Used by `https` listeners only.
    pub tls_handshake_threads: usize,
    /// Removed settings, read only to refuse them with the fix (`l7.local_port_min` / `local_port_max`: L7
    /// upstream connections take their local ports from `[l4] local_port_min..max`, one pool with FULLNAT).
    #[serde(rename = "local_port_min")]
    pub(crate) removed_local_port_min: Option<u16>,
    #[serde(rename = "local_port_max")]
    pub(crate) removed_local_port_max: Option<u16>,
}

impl Default for L7Config {
    fn default() -> Self {
        L7Config {
            max_header_bytes: 32 * 1024,
            max_body_bytes: 1024 * 1024,
            client_header_timeout_s: 60,
            client_body_timeout_s: 60,
            client_idle_timeout_s: 75,
            upstream_connect_timeout_s: 60,
            upstream_response_timeout_s: 60,
            max_connections: 65_536,
            socket_buffer_bytes: 32 * 1024,
            idle_buffer_bytes: 1024,
            upstream_keepalive: 256,
            upstream_idle_timeout_s: 60,
            access_log: None,
            tls_handshake_threads: 2,
            key_server: None,
            http2: true,
            http2_max_concurrent_streams: 128,
            removed_local_port_min: None,
            removed_local_port_max: None,
        }
    }
}

/// `[l7.key_server]`: where the private keys of certificates without a `key` file are (see docs/KEYSERVER.md).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyServerConfig {
    /// `unix:/run/xlb-keyserver.sock`, `unix+tls:/path` or `198.18.0.5:7443` (TCP, mutual TLS); requests go
    /// to any that is connected.
    pub endpoints: Vec<String>,
    /// This node's client certificate (chain, PEM) for TLS endpoints.
    #[serde(default)]
    pub cert: Option<std::path::PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub key: Option<std::path::PathBuf>,
    /// The CA the Key Servers' certificates chain to.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// The name in the Key Servers' certificates.
    #[serde(default = "default_key_server_name")]
    pub server_name: String,
    /// How long a signature may take before the handshake fails (counted `timeout`).
    #[serde(default = "default_key_server_timeout")]
    pub timeout_ms: u64,
    /// Full handshakes that may wait for a Key Server signature at once: the handshake pool gets this many
    /// threads more (they mostly wait on the network, so several round trips are in flight).
    #[serde(default = "default_key_server_waiters")]
    pub waiting_handshakes: usize,
}

fn default_key_server_waiters() -> usize {
    16
}

fn default_key_server_name() -> String {
    "keyserver".to_owned()
}

fn default_key_server_timeout() -> u64 {
    1000
}

impl L7Config {
    /// The limits of an HTTP/2 client connection.
    pub fn h2_limits(&self) -> crate::h2::H2Limits {
        crate::h2::H2Limits {
            max_concurrent_streams: self.http2_max_concurrent_streams,
            max_header_list_bytes: self.max_header_bytes as u32,
            ..Default::default()
        }
    }

    /// Checks ranges; the error is one line naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.removed_local_port_min.is_some() || self.removed_local_port_max.is_some() {
            return Err(
                "l7.local_port_min/local_port_max: removed. L7 upstream connections take their local \
                        ports from [l4] local_port_min..max (one pool shared with FULLNAT flows): delete them \
                        from [l7] and widen the [l4] range if needed"
                    .into(),
            );
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(format!(
                "l7.max_header_bytes: {} is outside 1024..=1048576",
                self.max_header_bytes
            ));
        }
        let timeouts = [
            ("client_header_timeout_s", self.client_header_timeout_s),
            ("client_body_timeout_s", self.client_body_timeout_s),
            ("client_idle_timeout_s", self.client_idle_timeout_s),
            ("upstream_connect_timeout_s", self.upstream_connect_timeout_s),
            ("upstream_response_timeout_s", self.upstream_response_timeout_s),
            ("upstream_idle_timeout_s", self.upstream_idle_timeout_s),
        ];
        if !(16..=4 * 1024 * 1024).contains(&self.max_connections) {
            return Err(format!(
                "l7.max_connections: {} is outside 16..=4194304",
                self.max_connections
            ));
        }
        if !(4096..=4 * 1024 * 1024).contains(&self.socket_buffer_bytes) {
            return Err(format!(
                "l7.socket_buffer_bytes: {} is outside 4096..=4194304",
                self.socket_buffer_bytes
            ));
        }
        if !(1024..=self.socket_buffer_bytes).contains(&self.idle_buffer_bytes) {
            return Err(format!(
                "l7.idle_buffer_bytes: {} is outside 1024..=socket_buffer_bytes ({})",
                self.idle_buffer_bytes, self.socket_buffer_bytes
            ));
        }
        if !(1..=10_000).contains(&self.http2_max_concurrent_streams) {
            return Err(format!(
                "l7.http2_max_concurrent_streams: {} is outside 1..=10000",
                self.http2_max_concurrent_streams
            ));
        }
        if let Some(ks) = &self.key_server {
            if !(1..=256).contains(&ks.waiting_handshakes) {
                return Err(format!(
                    "l7.key_server.waiting_handshakes: {} is outside 1..=256",
                    ks.waiting_handshakes
                ));
            }
            if ks.endpoints.is_empty() {
                return Err("l7.key_server.endpoints: at least one endpoint is needed".to_owned());
            }
        }
        if !(1..=64).contains(&self.tls_handshake_threads) {
            return Err(format!(
                "l7.tls_handshake_threads: {} is outside 1..=64",
                self.tls_handshake_threads
            ));
        }
        if self.upstream_keepalive > 4096 {
            return Err(format!(
                "l7.upstream_keepalive: {} is above 4096",
                self.upstream_keepalive
            ));
        }
        for (name, v) in timeouts {
            if !(1..=86_400).contains(&v) {
                return Err(format!("l7.{name}: {v} is outside 1..=86400 seconds"));
            }
        }
        Ok(())
    }
}

/// A listener's protocol as far as L7 is concerned.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.x terminated by xlb.
    Http,
    /// Plain L4 TCP (not handled by this crate).
    Tcp,
    /// Plain L4 UDP (not handled by this crate).
    Udp,
}

/// The L7 keys of a `[[listener]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct HttpListenerConfig {
    /// Must be `http` for this config to apply.
    pub protocol: ListenerProtocol,
    /// Default group: requests that no rule matches.
    pub group: String,
    /// `[[listener.rule]]`, first match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// Sticky sessions.
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
    /// Consistent hashing on a request header or cookie (`hash = { header = … }` or `{ cookie = … }`).
    #[serde(default)]
    pub hash: Option<HashKeyConfig>,
}

/// One `[[listener.rule]]`: conditions (all given must match; none: matches everything) and one action.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `www.example.com` (exact) or `*.example.com` (one or more labels before `.example.com`); case-insensitive,
    /// compared without the port.
    #[serde(default)]
    pub host: Option<String>,
    /// Prefix of the request path (byte-wise, like an NGINX prefix location): `/api/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Forward to this group.
    #[serde(default)]
    pub group: Option<String>,
    /// Answer with a redirect.
    #[serde(default)]
    pub redirect: Option<RedirectConfig>,
    /// Answer with a fixed response.
    #[serde(default)]
    pub fixed: Option<FixedResponseConfig>,
}

/// A redirect: each part not given is kept from the request (the port is dropped when the scheme changes).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host to redirect to.
    #[serde(default)]
    pub host: Option<String>,
    /// Port to redirect to.
    #[serde(default)]
    pub port: Option<u16>,
    /// Path (and query) replacing the request's.
    #[serde(default)]
    pub path: Option<String>,
}

fn default_redirect_status() -> u16 {
    301
}

/// A response xlb answers itself.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FixedResponseConfig {
    /// Status code, 200..=599.
    pub status: u16,
    /// Body.
    #[serde(default)]
    pub body: String,
    /// Content-Type of the body.
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_content_type() -> String {
    "text/plain".to_owned()
}

/// How sticky sessions work.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StickyMode {
    /// xlb sets a cookie naming the server (opaque).
    Insert,
    /// The server sets `cookie`; xlb prefixes its value with the server's token and removes it again upstream.
    Rewrite,
}

/// `sticky = { mode = …, cookie = …, timeout_s = … }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// Insert or rewrite.
    pub mode: StickyMode,
    /// Cookie name (xlb's for insert, the server's for rewrite).
    #[serde(default = "default_sticky_cookie")]
    pub cookie: String,
    /// Lifetime of an inserted cookie (Max-Age); 0: a session cookie. Not used by rewrite.
    #[serde(default = "default_sticky_timeout")]
    pub timeout_s: u64,
}

fn default_sticky_cookie() -> String {
    "XLBSERVERID".to_owned()
}

fn default_sticky_timeout() -> u64 {
    1000
}

impl HttpListenerConfig {
    /// The L7 keys of an `http` `[[listener]]` as L4 parsed it (`rule` and `sticky` kept as TOML there); the
    /// error names the field.
    pub fn from_listener(l: &xlb_l4::config::ListenerConfig, at: &str) -> Result<Self, String> {
        let rules = l
            .rules
            .iter()
            .enumerate()
            .map(|(i, t)| {
                RuleConfig::deserialize(t.clone()).map_err(|e| format!("{at}.rule[{i}]: {}", e.message().trim()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hash = l
            .hash
            .as_ref()
            .map(|t| HashKeyConfig::deserialize(t.clone()).map_err(|e| format!("{at}.hash: {}", e.message().trim())))
            .transpose()?;
        let sticky = l
            .sticky
            .as_ref()
            .map(|t| StickyConfig::deserialize(t.clone()).map_err(|e| format!("{at}.sticky: {}", e.message().trim())))
            .transpose()?;
        Ok(HttpListenerConfig {
            protocol: ListenerProtocol::Http,
            group: l.group.clone(),
            rules,
            sticky,
            hash,
        })
    }

    /// Checks rules and sticky settings against the configured group names; the error is one line naming the
    /// field (`at` is the listener's path, e.g. `listener[0] (web)`).
    pub fn validate(&self, at: &str, groups: &[&str]) -> Result<(), String> {
        if self.protocol != ListenerProtocol::Http {
            return Err(format!("{at}.protocol: L7 settings need protocol = \"http\""));
        }
        let known: HashSet<&str> = groups.iter().copied().collect();
        if !known.contains(self.group.as_str()) {
            return Err(format!("{at}.group: no group named {:?}", self.group));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("{at}.rule[{i}]");
            if let Some(host) = &r.host {
                check_host_pattern(host).map_err(|e| format!("{at}.host: {e}"))?;
            }
            if let Some(p) = &r.path_prefix {
                if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(format!(
                        "{at}.path_prefix: {p:?} must start with / and hold no space or control"
                    ));
                }
            }
            let actions =
                usize::from(r.group.is_some()) + usize::from(r.redirect.is_some()) + usize::from(r.fixed.is_some());
            if actions != 1 {
                return Err(format!("{at}: needs exactly one of group, redirect, fixed"));
            }
            if let Some(g) = &r.group {
                if !known.contains(g.as_str()) {
                    return Err(format!("{at}.group: no group named {g:?}"));
                }
            }
            if let Some(rd) = &r.redirect {
                if ![301, 302, 303, 307, 308].contains(&rd.status) {
                    return Err(format!(
                        "{at}.redirect.status: {} is not 301, 302, 303, 307 or 308",
                        rd.status
                    ));
                }
                if let Some(s) = &rd.scheme {
                    if s != "http" && s != "https" {
                        return Err(format!("{at}.redirect.scheme: {s:?} is not http or https"));
                    }
                }
                if let Some(h) = &rd.host {
                    if h.is_empty() || h.starts_with('*') {
                        return Err(format!("{at}.redirect.host: {h:?} is not a host name"));
                    }
                    check_host_pattern(h).map_err(|e| format!("{at}.redirect.host: {e}"))?;
                }
                if rd.port == Some(0) {
                    return Err(format!("{at}.redirect.port: 0 is not a port"));
                }
                if let Some(p) = &rd.path {
                    if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                        return Err(format!(
                            "{at}.redirect.path: {p:?} must start with / and hold no space or control"
                        ));
                    }
                }
                if rd.scheme.is_none() && rd.host.is_none() && rd.port.is_none() && rd.path.is_none() {
                    return Err(format!(
                        "{at}.redirect: would redirect to itself (give scheme, host, port or path)"
                    ));
                }
            }
            if let Some(f) = &r.fixed {
                if !(200..=599).contains(&f.status) {
                    return Err(format!("{at}.fixed.status: {} is outside 200..=599", f.status));
                }
                if matches!(f.status, 204 | 304) && !f.body.is_empty() {
                    return Err(format!("{at}.fixed.body: a {} response has no body", f.status));
                }
                if f.content_type.is_empty() || f.content_type.bytes().any(|b| b < b' ' || b == 0x7f) {
                    return Err(format!(
                        "{at}.fixed.content_type: {:?} is not a header value",
                        f.content_type
                    ));
                }
            }
        }
        if let Some(h) = &self.hash {
            h.validate(at)?;
        }
        if let Some(s) = &self.sticky {
            if s.cookie.is_empty() || !s.cookie.bytes().all(is_tchar) {
                return Err(format!(
                    "{at}.sticky.cookie: {:?} is not a cookie name (token characters)",
                    s.cookie
                ));
            }
            if s.timeout_s > 10 * 365 * 86_400 {
                return Err(format!("{at}.sticky.timeout_s: {} is over ten years", s.timeout_s));
            }
        }
        Ok(())
    }
}

/// `name.example` or `*.example`: letters, digits, `-`, `.`, `_`.
fn check_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !name.starts_with('.')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!("{host:?} is not a host name or *.suffix pattern"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        l7: L7Config,
        listener: Vec<HttpListenerConfig>,
    }

    const EXAMPLE: &str = r#"
        [l7]
        max_header_bytes = 16384
        client_idle_timeout_s = 30

        [[listener]]
        name = "web"
        vip = "10.0.0.1"
        port = 80
        protocol = "http"
        group = "web"
        sticky = { mode = "insert", cookie = "XLBSRV", timeout_s = 3600 }

        [[listener.rule]]
        host = "*.Example.com"
        path_prefix = "/api/"
        group = "api"

        [[listener.rule]]
        host = "old.example.com"
        redirect = { status = 308, scheme = "https" }

        [[listener.rule]]
        path_prefix = "/health"
        fixed = { status = 200, body = "ok\n" }
    "#;

    fn example() -> File {
        toml::from_str(EXAMPLE).unwrap()
    }

    #[test]
    fn parses_with_defaults() {
        let f = example();
        assert_eq!(f.l7.max_header_bytes, 16384);
        assert_eq!(f.l7.client_idle_timeout_s, 30);
        assert_eq!(f.l7.max_body_bytes, 1024 * 1024);
        assert_eq!(f.l7.upstream_connect_timeout_s, 60);
        let l = &f.listener[0];
        assert_eq!(l.protocol, ListenerProtocol::Http);
        assert_eq!(l.rules.len(), 3);
        assert_eq!(l.rules[1].redirect.as_ref().unwrap().status, 308);
        assert_eq!(l.rules[2].fixed.as_ref().unwrap().content_type, "text/plain");
        assert_eq!(
            l.sticky,
            Some(StickyConfig {
                mode: StickyMode::Insert,
                cookie: "XLBSRV".into(),
                timeout_s: 3600
            })
        );
        f.l7.validate().unwrap();
        l.validate("listener[0] (web)", &["web", "api"]).unwrap();
        let s: StickyConfig = toml::from_str("mode = \"rewrite\"\ncookie = \"JSESSIONID\"").unwrap();
        assert_eq!((s.mode, s.timeout_s), (StickyMode::Rewrite, 1000));
    }

    #[test]
    fn errors_name_the_field() {
        let at = "listener[0] (web)";
        let groups = ["web", "api"];
        let check = |edit: &dyn Fn(&mut HttpListenerConfig)| {
            let mut l = example().listener.remove(0);
            edit(&mut l);
            l.validate(at, &groups).unwrap_err()
        };
        assert_eq!(
            check(&|l| l.group = "nope".into()),
            "listener[0] (web).group: no group named \"nope\""
        );
        assert_eq!(
            check(&|l| l.rules[0].group = Some("x".into())),
            "listener[0] (web).rule[0].group: no group named \"x\""
        );
        assert!(check(&|l| l.rules[0].host = Some("a b".into())).starts_with("listener[0] (web).rule[0].host: "));
        assert!(check(&|l| l.rules[0].host = Some("*".into())).starts_with("listener[0] (web).rule[0].host: "));
        assert!(check(&|l| l.rules[0].path_prefix = Some("api".into()))
            .starts_with("listener[0] (web).rule[0].path_prefix: "));
        assert_eq!(
            check(&|l| l.rules[0].fixed = l.rules[2].fixed.clone()),
            "listener[0] (web).rule[0]: needs exactly one of group, redirect, fixed"
        );
        assert!(check(&|l| l.rules[1].redirect.as_mut().unwrap().status = 305)
            .starts_with("listener[0] (web).rule[1].redirect.status: 305"));
        assert!(
            check(&|l| l.rules[1].redirect.as_mut().unwrap().scheme = Some("ftp".into()))
                .starts_with("listener[0] (web).rule[1].redirect.scheme: ")
        );
        assert!(check(&|l| l.rules[1].redirect.as_mut().unwrap().scheme = None)
            .starts_with("listener[0] (web).rule[1].redirect: would redirect to itself"));
        assert!(check(&|l| l.rules[2].fixed.as_mut().unwrap().status = 99)
            .starts_with("listener[0] (web).rule[2].fixed.status: "));
        assert_eq!(
            check(&|l| l.rules[2].fixed.as_mut().unwrap().status = 204),
            "listener[0] (web).rule[2].fixed.body: a 204 response has no body"
        );
        assert!(check(&|l| l.sticky.as_mut().unwrap().cookie = "a=b".into())
            .starts_with("listener[0] (web).sticky.cookie: "));
        assert!(check(&|l| l.protocol = ListenerProtocol::Tcp).starts_with("listener[0] (web).protocol: "));
        let l7 = L7Config {
            client_body_timeout_s: 0,
            ..L7Config::default()
        };
        assert_eq!(
            l7.validate().unwrap_err(),
            "l7.client_body_timeout_s: 0 is outside 1..=86400 seconds"
        );
        let l7 = L7Config {
            max_header_bytes: 10,
            ..L7Config::default()
        };
        assert!(l7.validate().unwrap_err().starts_with("l7.max_header_bytes: "));
        assert!(
            toml::from_str::<L7Config>("max_header_byte = 1").is_err(),
            "unknown keys refused"
        );
        // The removed local-port settings are refused with where the range lives now.
        let old: L7Config = toml::from_str("local_port_min = 62000\nlocal_port_max = 65535").unwrap();
        let err = old.validate().unwrap_err();
        assert!(err.starts_with("l7.local_port_min/local_port_max: removed"), "{err}");
        assert!(err.contains("[l4] local_port_min..max"), "{err}");
    }
}
