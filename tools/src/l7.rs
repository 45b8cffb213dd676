//! The L7 part of the appliance outside the datapath: what each worker's L7 stage is built from (the `http`
//! listeners, the groups, `[l7]`), the checks of the HTTP listeners' settings, and live group changes.

use std::net::SocketAddrV4;
use std::sync::Arc;

use xlb_keyserver::client::KeyServerClient;
use xlb_l4::config::{ListenerConfig, ListenerProtocol};
use xlb_l4::health::CheckKind;
use xlb_l4::layout::Layout;
use xlb_l4::sched::SchedulerKind;
use xlb_l7::config::HttpListenerConfig;
use xlb_l7::proxy::ProxyConfig;
use xlb_l7::stage::upstreams::{GroupSpec, ServerSpec};
use xlb_l7::stage::StageListener;
use xlb_l7::tls::certs::{CertStore, ListenerCert};
use xlb_l7::tls::config::{load_certs, RemoteKeys, TlsListener, TlsListenerConfig};
use xlb_l7::tls::upstream::{UpstreamTls, UpstreamTlsConfig};

use crate::config::Config;

/// The `http` and `https` listeners, with their index among all listeners.
pub fn http_listeners(config: &Config) -> impl Iterator<Item = (usize, &ListenerConfig)> {
    config.listeners.iter().enumerate().filter(|(_, l)| l.protocol.is_l7())
}

/// The `tls` table of an `https` listener, read.
fn tls_config(config: &Config, i: usize, l: &ListenerConfig) -> Result<Option<TlsListenerConfig>, String> {
    let at = format!("listener[{i}] ({})", l.name);
    let mut tls = l
        .tls
        .as_ref()
        .map(|t| TlsListenerConfig::from_table(t, &at))
        .transpose()?;
    if let Some(tls) = tls.as_mut().filter(|_| !config.l7.http2) {
        tls.alpn.retain(|p| p != "h2"); // HTTP/2 is off
    }
    Ok(tls)
}

fn group_names(config: &Config) -> Vec<&str> {
    config.groups.iter().map(|g| g.name.as_str()).collect()
}

/// The key of sticky-session cookies: the same on every node with the same groups (HA peers), so a cookie set
/// by one node is understood by the other.
fn sticky_secret(config: &Config) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for g in &config.groups {
        eat(g.name.as_bytes());
        for s in &g.servers {
            eat(s.addr.to_string().as_bytes());
        }
    }
    h
}

fn proxy_config(config: &Config, i: usize, l: &ListenerConfig) -> Result<ProxyConfig, String> {
    let at = format!("listener[{i}] ({})", l.name);
    let http = HttpListenerConfig::from_listener(l, &at)?;
    let mut proxy = ProxyConfig::new(
        config.l7.clone(),
        &http,
        &at,
        &group_names(config),
        sticky_secret(config),
    )?;
    proxy.access_log = config.l7.access_log.is_some();
    if l.protocol == ListenerProtocol::Https {
        proxy.set_scheme("https");
    }
    Ok(proxy)
}

/// Checks `[l7]` and the L7 keys of every `http` listener; the error names the field.
pub fn validate(config: &Config) -> Result<(), String> {
    config.l7.validate()?;
    if let Some(path) = &config.l7.access_log {
        crate::access_log::check(std::path::Path::new(path))?;
    }
    for (i, l) in http_listeners(config) {
        proxy_config(config, i, l)?;
        if let Some(tls) = tls_config(config, i, l)? {
            // Certificates and keys are read now, so a bad file is refused before anything changes.
            let at = format!("listener[{i}] ({}).tls", l.name);
            let ks = match (&config.l7.key_server, tls.needs_key_server()) {
                (Some(cfg), true) => Some(crate::key_server::client(cfg)?),
                _ => None,
            };
            let remote = ks
                .as_ref()
                .map(|c| move |chain: &[_]| crate::key_server::remote_key(c, chain));
            let remote = remote.as_ref().map(|f| f as RemoteKeys<'_>);
            TlsListener::build(&tls, remote).map_err(|e| format!("{at}: {e}"))?;
        }
    }
    group_tls(config)?;
    // Upstream connections take their local ports from L4's pools (`l4.local_port_min..max`): the L4 checks
    // (probe ports, `ha.sync_group`) cover them.
    Ok(())
}

/// An HTTPS listener's certificates as the control plane holds them: replaced live by `xlbctl cert reload` or
/// a reload that changes only `[[listener.tls.cert]]`.
pub struct TlsHandle {
    /// The listener's name.
    pub listener: String,
    /// Its `tls` table (the certificate files to read).
    pub config: TlsListenerConfig,
    /// The store its handshakes choose from.
    pub certs: Arc<CertStore>,
    /// The node's Key Server client (certificates without a key file).
    pub key_server: Option<KeyServerClient>,
}

impl TlsHandle {
    /// Re-reads the certificate and key files; nothing is replaced if one fails.
    pub fn load(&self) -> Result<Vec<ListenerCert>, String> {
        let remote = self
            .key_server
            .as_ref()
            .map(|c| move |chain: &[_]| crate::key_server::remote_key(c, chain));
        let remote = remote.as_ref().map(|f| f as RemoteKeys<'_>);
        load_certs(&self.config, &self.config.policy.provider(), remote)
            .map_err(|e| format!("listener {}: {e}", self.listener))
    }
}

/// The stage's listeners: every `http` and `https` listener (the config was validated), and the certificate
/// stores of the `https` ones. Built once and shared by the workers (an HTTPS listener's session tickets are
/// then valid on every worker).
pub fn listeners(config: &Config) -> (Vec<StageListener>, Vec<TlsHandle>) {
    let mut handles = Vec::new();
    // One Key Server client for the node (it connects in the background).
    let key_server = match &config.l7.key_server {
        Some(cfg) => match crate::key_server::client(cfg) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("{e}: certificates without a key file cannot be served");
                None
            }
        },
        None => None,
    };
    let mut build = |i: usize, l: &ListenerConfig| -> Result<StageListener, String> {
        let tls = match tls_config(config, i, l)? {
            Some(tls) => {
                let remote = key_server
                    .as_ref()
                    .map(|c| move |chain: &[_]| crate::key_server::remote_key(c, chain));
                let built = TlsListener::build(&tls, remote.as_ref().map(|f| f as RemoteKeys<'_>))?;
                handles.push(TlsHandle {
                    listener: l.name.clone(),
                    key_server: key_server.clone().filter(|_| tls.needs_key_server()),
                    config: tls,
                    certs: built.certs,
                });
                Some(built.config)
            }
            None => None,
        };
        Ok(StageListener {
            name: l.name.clone(),
            vip: SocketAddrV4::new(l.vip, l.port),
            proxy: Arc::new(proxy_config(config, i, l)?),
            tls,
        })
    };
    let listeners = http_listeners(config)
        .filter_map(|(i, l)| match build(i, l) {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::error!(listener = %l.name, "not served: {e}");
                None
            }
        })
        .collect();
    (listeners, handles)
}

/// Reads the certificates of every `https` listener of `new` into `handles` (all or nothing), with a new Key
/// Server client if `[l7.key_server]` changed from `old`; returns how many listeners were re-read.
pub fn replace_certs(handles: &mut [TlsHandle], old: &Config, new: &Config) -> Result<usize, String> {
    let key_server = if old.l7.key_server != new.l7.key_server {
        new.l7.key_server.as_ref().map(crate::key_server::client).transpose()?
    } else {
        handles.iter().find_map(|h| h.key_server.clone())
    };
    let mut loaded = Vec::new();
    for h in handles.iter() {
        let Some((i, l)) = http_listeners(new).find(|(_, l)| l.name == h.listener) else {
            continue;
        };
        let Some(tls) = tls_config(new, i, l)? else { continue };
        let handle = TlsHandle {
            listener: h.listener.clone(),
            key_server: key_server.clone().filter(|_| tls.needs_key_server()),
            config: tls,
            certs: h.certs.clone(),
        };
        loaded.push((handle.load()?, handle));
    }
    let n = loaded.len();
    for (certs, handle) in loaded {
        handle.certs.replace(certs);
        if let Some(h) = handles.iter_mut().find(|h| h.listener == handle.listener) {
            h.config = handle.config;
            h.key_server = handle.key_server;
        }
    }
    Ok(n)
}

/// The TLS towards the servers of every group with a `[group.tls]` table (reads its files); the error names the
/// group and the field.
fn group_tls(config: &Config) -> Result<Vec<Option<Arc<UpstreamTls>>>, String> {
    config
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let Some(table) = &g.tls else { return Ok(None) };
            let at = format!("group[{i}] ({})", g.name);
            if g.health_check.as_ref().is_some_and(|h| h.kind == CheckKind::Http) {
                return Err(format!(
                    "{at}.health_check: kind = \"http\" sends plain HTTP, which a server that speaks TLS refuses: \
                     use kind = \"tcp\""
                ));
            }
            let tls = UpstreamTlsConfig::from_table(table, &at)?;
            let built = UpstreamTls::build(&tls).map_err(|e| format!("{at}: {e}"))?;
            Ok(Some(Arc::new(built)))
        })
        .collect()
}

/// Whether a group sends HTTPS to its servers (the handshake pool is needed then too).
pub fn any_group_tls(config: &Config) -> bool {
    config.groups.iter().any(|g| g.tls.is_some())
}

/// Every group (in config order: the rules' group ids), with the health-board targets of `layout` and its TLS
/// towards the servers (built once here and shared by the workers: one TLS session cache per group). A
/// group's scheduler is that of the first `http` listener whose default group it is (else wrr).
pub fn groups(config: &Config, layout: &Layout) -> Result<Vec<GroupSpec>, String> {
    let tls = group_tls(config)?;
    Ok(config
        .groups
        .iter()
        .zip(tls)
        .map(|(g, tls)| GroupSpec {
            name: g.name.clone(),
            scheduler: http_listeners(config)
                .find(|(_, l)| l.group == g.name)
                .map_or(SchedulerKind::Wrr, |(_, l)| l.scheduler),
            servers: g
                .servers
                .iter()
                .map(|s| ServerSpec {
                    addr: s.addr,
                    weight: s.weight,
                    target: layout
                        .targets
                        .iter()
                        .position(|t| t.group == g.name && t.addr == s.addr),
                })
                .collect(),
            tls,
        })
        .collect())
}

/// Whether the change from `old` to `new` touches what the L7 stage reads only at start (its listeners and
/// `[l7]`); group changes are applied live.
pub fn restart_needed(old: &Config, new: &Config) -> bool {
    // Certificates change live (`replace_certs`): compare the listeners without them.
    let http = |c: &Config| -> Vec<ListenerConfig> {
        http_listeners(c)
            .map(|(_, l)| {
                let mut l = l.clone();
                if let Some(tls) = l.tls.as_mut() {
                    tls.remove("cert");
                }
                l
            })
            .collect()
    };
    // So do the Key Server endpoints (`replace_certs` makes a new client).
    let l7 = |c: &Config| {
        let mut l7 = c.l7.clone();
        l7.key_server = None;
        l7
    };
    l7(old) != l7(new) || http(old) != http(new) || (!http(new).is_empty() && group_names(old) != group_names(new))
}
