//! What every connection of a listener shares: [`ProxyConfig`], and the [`AccessRecord`] of an answered request.

use std::time::Instant;

use crate::affinity::HashKeyConfig;
use crate::config::{L7Config, StickyConfig};
use crate::rules::RuleSet;
use crate::sticky::StickyCodec;

/// What every connection of a listener shares (immutable snapshot).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Limits and timeouts.
    pub limits: L7Config,
    /// Compiled listener rules.
    pub rules: RuleSet,
    /// Sticky sessions.
    pub sticky: Option<StickyConfig>,
    /// Consistent hashing on a header or cookie.
    pub hash: Option<HashKeyConfig>,
    /// Token codec for sticky cookies (same secret on every worker and HA peer).
    pub codec: StickyCodec,
    /// The listener's scheme (`http`), for X-Forwarded-Proto.
    pub scheme: &'static str,
    /// Keep an [`AccessRecord`] of every answered request ([`HttpProxy::poll_access`]).
    pub access_log: bool,
}

/// One answered request, for the access log: kept when [`ProxyConfig::access_log`] is set, at the moment the
/// response head is sent (by the server or by xlb).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRecord {
    /// Method, target and routing host of the request (`-` for a request refused before its head parsed).
    pub method: String,
    /// Request target (origin form).
    pub target: String,
    /// Host used for routing.
    pub host: String,
    /// When its head was complete.
    pub started: Option<Instant>,
    /// Status sent.
    pub status: u16,
    /// Answered by xlb itself (redirect, fixed response, error).
    pub local: bool,
}

impl ProxyConfig {
    /// The snapshot for one HTTP listener: `limits` and `listener` validated, rules compiled against `groups`
    /// (the datapath's group list: [`GroupId`] indexes it), sticky tokens keyed with `sticky_secret`.
    pub fn new(
        limits: L7Config,
        listener: &crate::config::HttpListenerConfig,
        at: &str,
        groups: &[&str],
        sticky_secret: u64,
    ) -> Result<Self, String> {
        limits.validate()?;
        listener.validate(at, groups)?;
        let rules = RuleSet::new(listener, groups, "http").map_err(|e| format!("{at}: {e}"))?;
        Ok(ProxyConfig {
            limits,
            rules,
            sticky: listener.sticky.clone(),
            hash: listener.hash.clone(),
            codec: StickyCodec::new(sticky_secret),
            scheme: "http",
            access_log: false,
        })
    }

    /// The listener's scheme (`https` behind TLS termination): X-Forwarded-Proto and redirects that keep it.
    pub fn set_scheme(&mut self, scheme: &'static str) {
        self.scheme = scheme;
        self.rules.set_scheme(scheme);
    }

    pub(super) fn max_body(&self) -> u64 {
        if self.limits.max_body_bytes == 0 {
            u64::MAX
        } else {
            self.limits.max_body_bytes
        }
    }
}
