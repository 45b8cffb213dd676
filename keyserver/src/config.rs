//! Server configuration (`keyserver.toml`) and authorization rules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::keys::KeyEntry;

/// The whole server configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory holding the private keys (`*.pem`, `*.key`).
    pub keys_dir: PathBuf,
    /// Unix socket path for callers on the same host.
    #[serde(default)]
    pub listen_unix: Option<PathBuf>,
    /// Permissions of the Unix socket file, e.g. `0o660` (default: as the umask leaves them).
    #[serde(default)]
    pub unix_mode: Option<u32>,
    /// TCP address for remote appliances; requires `[tls]` (mutual TLS).
    #[serde(default)]
    pub listen_tcp: Option<SocketAddr>,
    /// Server certificate and client CA; used for `listen_tcp`, and for the Unix socket when `unix_tls`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Wrap the Unix socket in mutual TLS too (callers are then identified by certificate).
    #[serde(default)]
    pub unix_tls: bool,
    /// Signing threads (default: available cores).
    #[serde(default)]
    pub sign_threads: Option<usize>,
    /// Sign jobs queued at most; beyond, requests are answered `overloaded`.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Connections served at once; beyond, new ones are closed and counted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a peer may take to finish sending a started frame (and to finish a TLS handshake).
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout_secs: u64,
    /// Seconds between info-level counter summaries (0: never).
    #[serde(default = "default_stats_interval")]
    pub stats_interval_secs: u64,
    /// Who may use which keys.
    #[serde(default)]
    pub authorize: Vec<AuthorizeRule>,
}

fn default_queue_depth() -> usize {
    4096
}
fn default_max_connections() -> usize {
    256
}
fn default_frame_timeout() -> u64 {
    10
}
fn default_stats_interval() -> u64 {
    60
}

/// Mutual-TLS material.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM) — the key of the Key Server's own identity, not a served key.
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to.
    pub client_ca: PathBuf,
}

/// One `[[authorize]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRule {
    /// `"unix"` for plain Unix-socket callers, else a client certificate's subject CN or DNS SAN.
    pub client: String,
    /// For `"unix"`: only this peer uid (default: any uid).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Key file names, key ids (64 hex digits), or `"*"` for every key.
    pub keys: Vec<String>,
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A plain Unix-socket caller with its uid (from SO_PEERCRED), if known.
    Unix {
        /// Peer uid.
        uid: Option<u32>,
    },
    /// A TLS caller, by its certificate's subject CN and DNS SANs.
    Tls {
        /// CN first, then DNS SANs.
        names: Vec<String>,
    },
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Unix { uid: Some(uid) } => write!(f, "unix(uid {uid})"),
            Peer::Unix { uid: None } => write!(f, "unix(uid ?)"),
            Peer::Tls { names } => write!(f, "tls({})", names.join(",")),
        }
    }
}

/// The keys one peer may use: the union of the rules that match it.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    all: bool,
    patterns: Vec<String>,
}

impl Grants {
    /// Collects the rules matching `peer`.
    pub fn for_peer(rules: &[AuthorizeRule], peer: &Peer) -> Self {
        let mut g = Grants::default();
        for rule in rules {
            let matches = match peer {
                Peer::Unix { uid } => rule.client == "unix" && (rule.uid.is_none() || rule.uid == *uid),
                Peer::Tls { names } => {
                    rule.client != "unix" && names.iter().any(|n| n.eq_ignore_ascii_case(&rule.client))
                }
            };
            if matches {
                for k in &rule.keys {
                    if k == "*" {
                        g.all = true;
                    } else {
                        g.patterns.push(k.to_ascii_lowercase());
                    }
                }
            }
        }
        g
    }

    /// True when the peer may use `key`.
    pub fn allows(&self, key: &KeyEntry) -> bool {
        self.all
            || self
                .patterns
                .iter()
                .any(|p| *p == key.file_name.to_ascii_lowercase() || *p == key.id.to_string())
    }

    /// True when no rule matched at all.
    pub fn is_empty(&self) -> bool {
        !self.all && self.patterns.is_empty()
    }
}

impl Config {
    /// Reads and checks a TOML config file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    /// Parses and checks a TOML config.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.listen_unix.is_none() && self.listen_tcp.is_none() {
            anyhow::bail!("set listen_unix and/or listen_tcp: the server would listen nowhere");
        }
        if self.listen_tcp.is_some() && self.tls.is_none() {
            anyhow::bail!(
                "listen_tcp needs a [tls] section (cert, key, client_ca): TCP is served only with mutual TLS"
            );
        }
        if self.unix_tls && self.tls.is_none() {
            anyhow::bail!("unix_tls = true needs a [tls] section");
        }
        if self.queue_depth == 0 || self.max_connections == 0 {
            anyhow::bail!("queue_depth and max_connections must be at least 1");
        }
        for rule in &self.authorize {
            if rule.uid.is_some() && rule.client != "unix" {
                anyhow::bail!(
                    "authorize rule for {:?}: uid applies only to client = \"unix\"",
                    rule.client
                );
            }
            if rule.keys.is_empty() {
                anyhow::bail!(
                    "authorize rule for {:?}: keys is empty (use [\"*\"] for every key)",
                    rule.client
                );
            }
        }
        Ok(())
    }

    /// Number of signing threads to start.
    pub fn sign_threads(&self) -> usize {
        self.sign_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_rules_match_peers() {
        let cfg = Config::parse(
            r#"
            keys_dir = "/etc/xlb/keys"
            listen_unix = "/run/xlb-keyserver.sock"
            listen_tcp = "198.18.0.1:7443"
            [tls]
            cert = "server.pem"
            key = "server.key"
            client_ca = "ca.pem"
            [[authorize]]
            client = "unix"
            uid = 0
            keys = ["*"]
            [[authorize]]
            client = "lb-1.example"
            keys = ["www.pem"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.queue_depth, 4096);
        let root = Grants::for_peer(&cfg.authorize, &Peer::Unix { uid: Some(0) });
        assert!(root.all);
        assert!(Grants::for_peer(&cfg.authorize, &Peer::Unix { uid: Some(1000) }).is_empty());
        let lb = Grants::for_peer(
            &cfg.authorize,
            &Peer::Tls {
                names: vec!["LB-1.example".into()],
            },
        );
        assert_eq!(lb.patterns, vec!["www.pem".to_string()]);
        assert!(Grants::for_peer(
            &cfg.authorize,
            &Peer::Tls {
                names: vec!["unix".into()]
            }
        )
        .is_empty());
    }

    #[test]
    fn inconsistent_configs_are_refused_with_a_reason() {
        let e = Config::parse("keys_dir = \"k\"").unwrap_err().to_string();
        assert!(e.contains("listen nowhere"), "{e}");
        let e = Config::parse("keys_dir = \"k\"\nlisten_tcp = \"198.18.0.1:1\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[tls]"), "{e}");
        let e = Config::parse(
            "keys_dir = \"k\"\nlisten_unix = \"s\"\n[[authorize]]\nclient = \"x\"\nuid = 1\nkeys = [\"*\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("uid applies only"), "{e}");
    }
}
