//! `health_check` settings of a server group: what to probe, how often, and when to change a server's state.
//!
//! Parsing rejects unknown fields; [`HealthCheckConfig::validate`] checks what parsing cannot and names the
//! field in its error.

use std::net::SocketAddrV4;
use std::time::Duration;

use serde::Deserialize;

/// Default probe interval.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
/// Default probe timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
/// Default number of consecutive successes that bring a down server up.
pub const DEFAULT_RISE: u32 = 2;
/// Default number of consecutive failures that take an up server down.
pub const DEFAULT_FALL: u32 = 2;
/// Default HTTP request path.
pub const DEFAULT_PATH: &str = "/";
/// Default UDP probe payload.
pub const DEFAULT_PAYLOAD: &str = "xlb-health";
/// Longest HTTP path accepted (so the request fits one segment).
pub const MAX_PATH_LEN: usize = 1024;
/// Longest HTTP `Host` header value accepted.
pub const MAX_HOST_LEN: usize = 255;
/// Longest UDP payload accepted.
pub const MAX_PAYLOAD_LEN: usize = 1024;
/// Longest interval (and so timeout) accepted: one day.
pub const MAX_INTERVAL_MS: u64 = 86_400_000;

/// The kind of probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP handshake: SYN-ACK is success, RST or ICMP unreachable is failure.
    Tcp,
    /// A UDP datagram: any reply is success, ICMP unreachable or silence is failure.
    Udp,
    /// An HTTP/1.0 `GET`: success when the status line matches `expect_status`.
    Http,
}

/// `health_check` of a server group.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// The probe: `"tcp"`, `"udp"` or `"http"`.
    pub kind: CheckKind,
    /// Time between the starts of two probes of one server, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Time a probe may take before it counts as failed, in milliseconds; below `interval_ms`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down server up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take an up server down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// http: the request path (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// http: the status that counts as success. When unset, any 2xx or 3xx status does.
    #[serde(default)]
    pub expect_status: Option<u16>,
    /// http: the `Host` header (default: the server's address, with `:port` unless the port is 80).
    #[serde(default)]
    pub host: Option<String>,
    /// udp: the probe payload (default `xlb-health`).
    #[serde(default)]
    pub payload: Option<String>,
}

fn default_interval_ms() -> u64 {
    DEFAULT_INTERVAL_MS
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_rise() -> u32 {
    DEFAULT_RISE
}

fn default_fall() -> u32 {
    DEFAULT_FALL
}

/// Whether `s` is non-empty visible ASCII (no spaces or control characters, so no header injection).
fn visible_ascii(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

impl HealthCheckConfig {
    /// A check of `kind` with every other setting at its default.
    pub fn new(kind: CheckKind) -> Self {
        HealthCheckConfig {
            kind,
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            path: None,
            expect_status: None,
            host: None,
            payload: None,
        }
    }

    /// The probe interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// The probe timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks what parsing cannot. The error names the field, e.g.
    /// `health_check.timeout_ms: must be below interval_ms (1000)`.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_ms == 0 || self.interval_ms > MAX_INTERVAL_MS {
            return Err(format!("health_check.interval_ms: must be 1-{MAX_INTERVAL_MS}"));
        }
        if self.timeout_ms == 0 {
            return Err("health_check.timeout_ms: must be at least 1".into());
        }
        if self.timeout_ms >= self.interval_ms {
            return Err(format!(
                "health_check.timeout_ms: must be below interval_ms ({})",
                self.interval_ms
            ));
        }
        if self.rise == 0 {
            return Err("health_check.rise: must be at least 1".into());
        }
        if self.fall == 0 {
            return Err("health_check.fall: must be at least 1".into());
        }
        let http = self.kind == CheckKind::Http;
        if let Some(path) = &self.path {
            if !http {
                return Err("health_check.path: only for kind = \"http\"".into());
            }
            if !path.starts_with('/') || !visible_ascii(path) || path.len() > MAX_PATH_LEN {
                return Err(format!(
                    "health_check.path: must start with '/', be visible ASCII without spaces and at most {MAX_PATH_LEN} bytes"
                ));
            }
        }
        if let Some(status) = self.expect_status {
            if !http {
                return Err("health_check.expect_status: only for kind = \"http\"".into());
            }
            if !(100..=599).contains(&status) {
                return Err("health_check.expect_status: must be 100-599".into());
            }
        }
        if let Some(host) = &self.host {
            if !http {
                return Err("health_check.host: only for kind = \"http\"".into());
            }
            if !visible_ascii(host) || host.len() > MAX_HOST_LEN {
                return Err(format!(
                    "health_check.host: must be visible ASCII without spaces, 1-{MAX_HOST_LEN} bytes"
                ));
            }
        }
        if let Some(payload) = &self.payload {
            if self.kind != CheckKind::Udp {
                return Err("health_check.payload: only for kind = \"udp\"".into());
            }
            if payload.len() > MAX_PAYLOAD_LEN {
                return Err(format!("health_check.payload: at most {MAX_PAYLOAD_LEN} bytes"));
            }
        }
        Ok(())
    }

    /// Whether an HTTP `status` counts as success: `expect_status` if set, else any 2xx or 3xx.
    pub fn status_ok(&self, status: u16) -> bool {
        match self.expect_status {
            Some(expected) => status == expected,
            None => (200..=399).contains(&status),
        }
    }

    /// The bytes a probe of `server` carries: the HTTP request, the UDP payload, or nothing for tcp.
    pub(crate) fn probe_payload(&self, server: SocketAddrV4) -> Vec<u8> {
        match self.kind {
            CheckKind::Tcp => Vec::new(),
            CheckKind::Udp => self.payload.as_deref().unwrap_or(DEFAULT_PAYLOAD).as_bytes().to_vec(),
            CheckKind::Http => {
                let path = self.path.as_deref().unwrap_or(DEFAULT_PATH);
                let host = match &self.host {
                    Some(host) => host.clone(),
                    None if server.port() == 80 => server.ip().to_string(),
                    None => server.to_string(),
                };
                format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: xlb-health\r\nConnection: close\r\n\r\n")
                    .into_bytes()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<HealthCheckConfig, String> {
        toml::from_str(src).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply() {
        let c = parse("kind = \"tcp\"").unwrap();
        assert_eq!(c, HealthCheckConfig::new(CheckKind::Tcp));
        assert_eq!(c.interval(), Duration::from_secs(1));
        assert_eq!(c.timeout(), Duration::from_millis(500));
        assert_eq!((c.rise, c.fall), (2, 2));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn http_fields_parse() {
        let c = parse(
            "kind = \"http\"\ninterval_ms = 2000\ntimeout_ms = 300\npath = \"/healthz\"\nexpect_status = 204\nhost = \"app.example\"",
        )
        .unwrap();
        assert_eq!(c.kind, CheckKind::Http);
        assert_eq!(c.path.as_deref(), Some("/healthz"));
        assert_eq!(c.expect_status, Some(204));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        assert!(parse("kind = \"tcp\"\nintervall_ms = 5").is_err());
        assert!(parse("kind = \"icmp\"").is_err());
        assert!(parse("interval_ms = 5").is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let mut c = HealthCheckConfig::new(CheckKind::Tcp);
        c.timeout_ms = 1000;
        assert_eq!(
            c.validate(),
            Err("health_check.timeout_ms: must be below interval_ms (1000)".into())
        );
        let mut c = HealthCheckConfig::new(CheckKind::Tcp);
        c.fall = 0;
        assert!(c.validate().unwrap_err().starts_with("health_check.fall:"));
        let mut c = HealthCheckConfig::new(CheckKind::Tcp);
        c.path = Some("/".into());
        assert!(c.validate().unwrap_err().starts_with("health_check.path:"));
        let mut c = HealthCheckConfig::new(CheckKind::Http);
        c.path = Some("/a\r\nX-Injected: 1".into());
        assert!(c.validate().unwrap_err().starts_with("health_check.path:"));
        let mut c = HealthCheckConfig::new(CheckKind::Http);
        c.expect_status = Some(99);
        assert!(c.validate().unwrap_err().starts_with("health_check.expect_status:"));
        let mut c = HealthCheckConfig::new(CheckKind::Http);
        c.payload = Some("x".into());
        assert!(c.validate().unwrap_err().starts_with("health_check.payload:"));
        let mut c = HealthCheckConfig::new(CheckKind::Udp);
        c.interval_ms = 0;
        assert!(c.validate().unwrap_err().starts_with("health_check.interval_ms:"));
    }

    #[test]
    fn status_rule_defaults_to_2xx_3xx() {
        let mut c = HealthCheckConfig::new(CheckKind::Http);
        assert!(c.status_ok(200) && c.status_ok(302) && c.status_ok(399));
        assert!(!c.status_ok(199) && !c.status_ok(404) && !c.status_ok(500));
        c.expect_status = Some(204);
        assert!(c.status_ok(204) && !c.status_ok(200));
    }

    #[test]
    fn http_request_is_rendered_with_default_host() {
        let c = HealthCheckConfig::new(CheckKind::Http);
        let req = c.probe_payload("10.0.0.5:8080".parse().unwrap());
        assert_eq!(
            req,
            b"GET / HTTP/1.0\r\nHost: 10.0.0.5:8080\r\nUser-Agent: xlb-health\r\nConnection: close\r\n\r\n"
        );
        let req = c.probe_payload("10.0.0.5:80".parse().unwrap());
        assert!(req.starts_with(b"GET / HTTP/1.0\r\nHost: 10.0.0.5\r\n"));
    }

    #[test]
    fn udp_payload_defaults() {
        let c = HealthCheckConfig::new(CheckKind::Udp);
        assert_eq!(c.probe_payload("10.0.0.5:53".parse().unwrap()), b"xlb-health");
        let tcp = HealthCheckConfig::new(CheckKind::Tcp);
        assert!(tcp.probe_payload("10.0.0.5:53".parse().unwrap()).is_empty());
    }
}
