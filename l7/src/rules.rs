//! Listener rules: a request's host and path choose a group, a redirect or a fixed response; first match wins,
//! the listener's default group otherwise.
//!
//! A [`RuleSet`] is compiled once from a validated [`HttpListenerConfig`] (patterns lowercased, group names turned
//! into indices into the caller's group list), so routing a request allocates nothing; only a redirect builds its
//! Location.

use crate::config::{FixedResponseConfig, HttpListenerConfig, RedirectConfig};

/// Index of a group in the list the rule set was compiled against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupId(pub usize);

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len() && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

/// What a matching rule does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleAction {
    /// Forward to a group.
    Forward(GroupId),
    /// Answer with a redirect.
    Redirect(RedirectConfig),
    /// Answer with a fixed response.
    Fixed(FixedResponseConfig),
}

#[derive(Clone, Debug)]
struct Rule {
    host: Option<HostMatch>,
    path_prefix: Option<String>,
    action: RuleAction,
}

/// A listener's compiled rules.
#[derive(Clone, Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    default: RuleAction,
    scheme: &'static str,
}

impl RuleSet {
    /// The listener's scheme, for redirects that keep it (`https` behind TLS termination).
    pub fn set_scheme(&mut self, scheme: &'static str) {
        self.scheme = scheme;
    }

    /// Compiles `cfg` (validated) against `groups`; `scheme` is the listener's (`http`). Names not in `groups`
    /// (which validation rules out) are an error naming them.
    pub fn new(cfg: &HttpListenerConfig, groups: &[&str], scheme: &'static str) -> Result<Self, String> {
        let group = |name: &str| {
            groups
                .iter()
                .position(|g| *g == name)
                .map(GroupId)
                .ok_or_else(|| format!("no group named {name:?}"))
        };
        let mut rules = Vec::with_capacity(cfg.rules.len());
        for r in &cfg.rules {
            let host = r.host.as_ref().map(|h| match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
                None => HostMatch::Exact(h.to_ascii_lowercase()),
            });
            let action = match (&r.group, &r.redirect, &r.fixed) {
                (Some(g), _, _) => RuleAction::Forward(group(g)?),
                (_, Some(rd), _) => RuleAction::Redirect(rd.clone()),
                (_, _, Some(f)) => RuleAction::Fixed(f.clone()),
                _ => return Err("a rule needs group, redirect or fixed".to_owned()),
            };
            rules.push(Rule {
                host,
                path_prefix: r.path_prefix.clone(),
                action,
            });
        }
        Ok(RuleSet {
            rules,
            default: RuleAction::Forward(group(&cfg.group)?),
            scheme,
        })
    }

    /// The action for a request to `host` (lowercase, no port, as [`crate::http1::request::RequestHead::host`])
    /// and `path` (without query).
    pub fn route(&self, host: &str, path: &str) -> &RuleAction {
        self.rules
            .iter()
            .find(|r| {
                r.host.as_ref().is_none_or(|h| h.matches(host))
                    && r.path_prefix.as_ref().is_none_or(|p| path.starts_with(p.as_str()))
            })
            .map_or(&self.default, |r| &r.action)
    }

    /// The Location of a redirect for a request to `host` with `target` (path and query). Without any host
    /// (an HTTP/1.0 request without Host and none configured) the Location is the path alone.
    pub fn location(&self, rd: &RedirectConfig, host: &str, target: &str) -> String {
        let scheme = rd.scheme.as_deref().unwrap_or(self.scheme);
        let host = rd.host.as_deref().unwrap_or(host);
        let path = rd.path.as_deref().unwrap_or(target);
        if host.is_empty() {
            return path.to_owned();
        }
        match rd.port {
            Some(p) => format!("{scheme}://{host}:{p}{path}"),
            None => format!("{scheme}://{host}{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;

    fn set() -> RuleSet {
        let rule = |host: Option<&str>, path: Option<&str>, group: Option<&str>| RuleConfig {
            host: host.map(Into::into),
            path_prefix: path.map(Into::into),
            group: group.map(Into::into),
            ..RuleConfig::default()
        };
        let mut redirect = rule(Some("old.example.com"), None, None);
        redirect.redirect = Some(RedirectConfig {
            status: 301,
            scheme: Some("https".into()),
            host: None,
            port: None,
            path: None,
        });
        let mut fixed = rule(None, Some("/health"), None);
        fixed.fixed = Some(FixedResponseConfig {
            status: 200,
            body: "ok".into(),
            content_type: "text/plain".into(),
        });
        let cfg = HttpListenerConfig {
            protocol: crate::config::ListenerProtocol::Http,
            group: "web".into(),
            rules: vec![
                rule(Some("*.Example.com"), Some("/api/"), Some("api")),
                rule(Some("static.example.com"), None, Some("static")),
                redirect,
                fixed,
                rule(None, Some("/api/"), Some("api")),
            ],
            sticky: None,
            hash: None,
        };
        RuleSet::new(&cfg, &["web", "api", "static"], "http").unwrap()
    }

    #[test]
    fn first_match_wins_and_default() {
        let s = set();
        let fwd = |g| RuleAction::Forward(GroupId(g));
        assert_eq!(s.route("a.example.com", "/api/x"), &fwd(1));
        assert_eq!(s.route("a.b.example.com", "/api/"), &fwd(1));
        assert_eq!(s.route("static.example.com", "/api/x"), &fwd(1), "earlier rule wins");
        assert_eq!(s.route("static.example.com", "/img"), &fwd(2));
        assert_eq!(s.route("example.com", "/img"), &fwd(0), "wildcard needs a label");
        assert_eq!(s.route("xexample.com", "/api/x"), &fwd(1), "only the path rule");
        assert_eq!(s.route("other", "/api"), &fwd(0), "prefix /api/ does not match /api");
        assert_eq!(s.route("STATIC.example.COM", "/"), &fwd(2), "case-insensitive");
        assert!(matches!(s.route("x", "/healthz"), RuleAction::Fixed(f) if f.body == "ok"));
    }

    #[test]
    fn redirects_keep_host_and_path() {
        let s = set();
        let RuleAction::Redirect(rd) = s.route("old.example.com", "/a") else {
            panic!("redirect")
        };
        assert_eq!(
            s.location(rd, "old.example.com", "/a/b?c=d"),
            "https://old.example.com/a/b?c=d"
        );
        let rd2 = RedirectConfig {
            status: 302,
            scheme: None,
            host: Some("new.example".into()),
            port: Some(8443),
            path: Some("/".into()),
        };
        assert_eq!(s.location(&rd2, "old", "/x"), "http://new.example:8443/");
        assert_eq!(s.location(rd, "", "/x"), "/x");
    }
}
