//! The control API: routes HTTP+JSON requests on the control socket to reads of the running state and to
//! configuration changes. Every change is validated as a whole config and applied live (see [`L4Runtime`]);
//! an invalid change is refused with the field named and leaves the running config untouched.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/v1/status` | node, uptime, whether every worker runs |
//! | GET | `/v1/stats` | counters: workers, interfaces, L4 listeners and servers |
//! | GET | `/v1/config` | running listeners, groups and `[l4]` |
//! | GET, PUT, DELETE | `/v1/listeners/{name}` | a listener (PUT body: the `[[listener]]` fields as JSON) |
//! | GET, PUT, DELETE | `/v1/groups/{name}` | a group (PUT body: the `[[group]]` fields as JSON) |
//! | PUT, DELETE | `/v1/groups/{group}/servers/{ip:port}` | add or set a server (body `{"weight": N}`), remove it |
//! | POST | `/v1/groups/{group}/servers/{ip:port}/drain` | weight 0: no new flows, existing ones continue |
//! | POST | `/v1/reload` | re-read the config file and apply the difference |
//! | GET | `/v1/conns?listener=&server=&client=&state=&limit=` | connection entries (default limit 1000) |
//! | GET | `/v1/ha` | HA state (master/backup), resync, sync counters |
//! | POST | `/v1/ha/drain` | hand mastership over (maintenance), like SIGUSR2 |

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};
use xlb_api::{Applied, ConnRow, Conns, ErrorReply, Ha, RunningConfig, ServerWeight, StatsDoc, Status};
use xlb_l4::config::{check_name, GroupConfig, ListenerConfig, ServerConfig};
use xlb_l4::forward::ConnFilter;
use xlb_stack::xsk::filter::AttachedMode;
use xlb_stack::xsk::Datapath;

use crate::config::Config;
use crate::ha::HaStatus;
use crate::lb::L4Runtime;
use crate::stats;

/// The control plane of a running appliance.
pub struct Api {
    runtime: Mutex<L4Runtime>,
    dp: Arc<Datapath>,
    started: Instant,
    config_path: PathBuf,
    ha: Option<(Arc<HaStatus>, Arc<AtomicBool>)>,
}

/// An answer: HTTP status and JSON body.
pub type Reply = (u16, Value);

fn error(status: u16, message: impl Into<String>) -> Reply {
    reply(status, &ErrorReply::new(message))
}

/// A typed answer as (status, JSON).
fn reply(status: u16, body: &impl Serialize) -> Reply {
    match serde_json::to_value(body) {
        Ok(v) => (status, v),
        Err(e) => (500, json!({ "error": format!("encoding the answer: {e}") })),
    }
}

fn applied(summary: impl Into<String>) -> Reply {
    reply(
        200,
        &Applied {
            applied: summary.into(),
        },
    )
}

impl Api {
    /// The API over a running datapath and its L4 runtime; `config_path` is what reload re-reads.
    pub fn new(runtime: L4Runtime, dp: Arc<Datapath>, started: Instant, config_path: PathBuf) -> Api {
        Api {
            runtime: Mutex::new(runtime),
            dp,
            started,
            config_path,
            ha: None,
        }
    }

    /// Serves HA status and drain requests from a running HA node.
    pub fn set_ha(&mut self, status: Arc<HaStatus>, drain: Arc<AtomicBool>) {
        self.ha = Some((status, drain));
    }

    /// The datapath.
    pub fn datapath(&self) -> &Arc<Datapath> {
        &self.dp
    }

    /// Gives up the API, returning the datapath (for shutdown).
    pub fn into_datapath(self) -> Arc<Datapath> {
        self.dp
    }

    fn runtime(&self) -> MutexGuard<'_, L4Runtime> {
        // Only control-plane threads take this lock; a panic while holding it leaves valid state behind.
        self.runtime.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Samples per-listener connection rates (the main thread calls this once a second).
    pub fn sample_rates(&self) {
        self.runtime().sample_rates(Instant::now());
    }

    /// After a health change: the Maglev tables that changed are built and sent to the workers.
    pub fn refresh_maglev(&self) -> bool {
        self.runtime().refresh_maglev()
    }

    /// Re-reads the config file and applies the difference.
    pub fn reload(&self) -> Result<String, String> {
        let new = Config::load(&self.config_path)?;
        let mut rt = self.runtime();
        rt.apply(new, &self.dp)
    }

    /// The stats document.
    pub fn stats(&self) -> StatsDoc {
        let rt = self.runtime();
        let workers: Vec<_> = self
            .dp
            .worker_counters()
            .iter()
            .map(|(name, s)| stats::worker(name, s))
            .collect();
        let interfaces = self
            .dp
            .filter_stats()
            .iter()
            .map(|(name, mode, f)| {
                let mode = match mode {
                    AttachedMode::Native => "native",
                    AttachedMode::Generic => "generic",
                };
                stats::interface(name, mode, f)
            })
            .collect();
        StatsDoc {
            node: rt.config().node.name.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            totals: stats::totals(&workers),
            workers,
            interfaces,
            datapath_ok: None,
            l4: stats::l4(&rt),
            l7: stats::l7(&rt),
            ha: self.ha.as_ref().map(|(status, _)| status.report()),
        }
    }

    /// Answers one request.
    pub fn handle(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            ("GET", ["v1", "conns"]) => self.conns(query),
            ("GET", ["v1", "status"]) => {
                let rt = self.runtime();
                let status = Status {
                    node: rt.config().node.name.clone(),
                    uptime_s: self.started.elapsed().as_secs(),
                    healthy: self.dp.healthy(),
                    datapath: None,
                    interfaces: None,
                };
                reply(200, &status)
            }
            ("GET", ["v1", "stats"]) => reply(200, &self.stats()),
            ("GET", ["v1", "ha"]) => match &self.ha {
                Some((status, _)) => reply(200, &status.report()),
                None => reply(
                    200,
                    &Ha {
                        state: "disabled".into(),
                        counters: None,
                    },
                ),
            },
            ("POST", ["v1", "ha", "drain"]) => match &self.ha {
                Some((_, drain)) => {
                    drain.store(true, std::sync::atomic::Ordering::Relaxed);
                    applied("draining: mastership handed over")
                }
                None => error(400, "ha: no [ha] section configured"),
            },
            ("GET", ["v1", "config"]) => {
                let rt = self.runtime();
                let c = rt.config();
                let running = serde_json::to_value(&c.listeners).and_then(|listeners| {
                    Ok(RunningConfig {
                        listeners: serde_json::from_value(listeners)?,
                        groups: serde_json::from_value(serde_json::to_value(&c.groups)?)?,
                        l4: serde_json::to_value(&c.l4)?,
                    })
                });
                match running {
                    Ok(running) => reply(200, &running),
                    Err(e) => error(500, format!("encoding the running config: {e}")),
                }
            }
            ("POST", ["v1", "reload"]) => match self.reload() {
                Ok(summary) => applied(summary),
                Err(e) => error(400, e),
            },
            ("GET", ["v1", "certs"]) => reply(200, &self.runtime().certs()),
            ("POST", ["v1", "certs", "reload"]) => match self.runtime().reload_certs() {
                Ok(summary) => applied(summary),
                Err(e) => error(400, e),
            },
            ("GET", ["v1", "listeners"]) => (200, json!(self.runtime().config().listeners)),
            ("GET", ["v1", "groups"]) => (200, json!(self.runtime().config().groups)),
            ("GET", ["v1", "listeners", name]) => {
                match self.runtime().config().listeners.iter().find(|l| l.name == *name) {
                    Some(l) => (200, json!(l)),
                    None => error(404, format!("no listener {name:?}")),
                }
            }
            ("GET", ["v1", "groups", name]) => match self.runtime().config().groups.iter().find(|g| g.name == *name) {
                Some(g) => (200, json!(g)),
                None => error(404, format!("no group {name:?}")),
            },
            ("PUT", ["v1", "listeners", name]) => self.put_listener(name, body),
            ("DELETE", ["v1", "listeners", name]) => self.change(|listeners, _| {
                let before = listeners.len();
                listeners.retain(|l| l.name != *name);
                found(before != listeners.len(), "listener", name)
            }),
            ("PUT", ["v1", "groups", name]) => self.put_group(name, body),
            ("DELETE", ["v1", "groups", name]) => self.change(|_, groups| {
                let before = groups.len();
                groups.retain(|g| g.name != *name);
                found(before != groups.len(), "group", name)
            }),
            ("PUT", ["v1", "groups", group, "servers", addr]) => self.put_server(group, addr, body),
            ("POST", ["v1", "groups", group, "servers", addr, "drain"]) => {
                self.put_server(group, addr, br#"{"weight": 0}"#)
            }
            ("DELETE", ["v1", "groups", group, "servers", addr]) => match addr.parse::<SocketAddrV4>() {
                Ok(addr) => self.change(|_, groups| {
                    let g = group_mut(groups, group)?;
                    let before = g.servers.len();
                    g.servers.retain(|s| s.addr != addr);
                    found(before != g.servers.len(), "server", &addr.to_string())
                }),
                Err(_) => error(400, format!("server address {addr:?} is not ip:port")),
            },
            (_, ["v1", ..]) => error(404, format!("no endpoint {method} {path}")),
            _ => error(404, format!("no endpoint {path} (the API is under /v1)")),
        }
    }

    /// Applies an edit of the running listeners and groups: validated as a whole, then applied live.
    fn change(&self, edit: impl FnOnce(&mut Vec<ListenerConfig>, &mut Vec<GroupConfig>) -> Result<(), Reply>) -> Reply {
        let mut rt = self.runtime();
        let mut failure = None;
        let candidate = rt.edited(|l, g| {
            edit(l, g).map_err(|reply| {
                failure = Some(reply);
                String::new()
            })
        });
        let new = match (candidate, failure) {
            (_, Some(reply)) => return reply,
            (Err(e), None) => return error(400, e),
            (Ok(c), None) => c,
        };
        match rt.apply(new, &self.dp) {
            Ok(summary) => applied(summary),
            Err(e) => error(400, e),
        }
    }

    /// `GET /v1/conns?listener=&server=&client=&state=&limit=`: connection entries from every worker.
    fn conns(&self, query: &str) -> Reply {
        let (filter, limit) = match conns_query(query) {
            Ok(q) => q,
            Err(reply) => return reply,
        };
        let conns = match self.runtime().conns(&filter, limit) {
            Ok(c) => c,
            Err(e) => return error(500, e),
        };
        let conns = conns
            .iter()
            .map(|i| {
                let c = &i.conn;
                ConnRow {
                    listener: i.listener.clone(),
                    protocol: format!("{:?}", c.proto).to_lowercase(),
                    forwarding: format!("{:?}", c.forwarding).to_lowercase(),
                    client: c.client.to_string(),
                    vip: c.vip.to_string(),
                    local: c.local.to_string(),
                    server: c.backend.to_string(),
                    state: c.state.name().to_string(),
                    expires_in_s: i.expires_in.as_secs_f64(),
                    client_packets: c.client_packets.into(),
                    worker: i.worker,
                }
            })
            .collect();
        reply(200, &Conns { conns })
    }

    fn put_listener(&self, name: &str, body: &[u8]) -> Reply {
        let listener = match listener_body(name, body) {
            Ok(l) => l,
            Err(reply) => return reply,
        };
        self.change(|listeners, _| {
            match listeners.iter_mut().find(|l| l.name == name) {
                Some(l) => *l = listener,
                None => listeners.push(listener),
            }
            Ok(())
        })
    }

    fn put_group(&self, name: &str, body: &[u8]) -> Reply {
        let group = match group_body(name, body) {
            Ok(g) => g,
            Err(reply) => return reply,
        };
        self.change(|_, groups| {
            match groups.iter_mut().find(|g| g.name == name) {
                Some(g) => *g = group,
                None => groups.push(group),
            }
            Ok(())
        })
    }

    fn put_server(&self, group: &str, addr: &str, body: &[u8]) -> Reply {
        let (addr, weight) = match server_body(addr, body) {
            Ok(s) => s,
            Err(reply) => return reply,
        };
        self.change(|_, groups| set_server(groups, group, addr, weight))
    }
}

// The request decoding, apart from the running appliance (also what the fuzz targets drive: `crate::fuzzing`).

/// The filter and limit of `GET /v1/conns?…`.
pub fn conns_query(query: &str) -> Result<(ConnFilter, usize), Reply> {
    let mut filter = ConnFilter::default();
    let mut limit = 1000;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "listener" => filter.listener = Some(value.to_string()),
            "state" => filter.state = Some(value.to_string()),
            "server" => match value.parse() {
                Ok(a) => filter.server = Some(a),
                Err(_) => return Err(error(400, format!("server: {value:?} is not ip:port"))),
            },
            "client" => match value.parse() {
                Ok(a) => filter.client = Some(a),
                Err(_) => return Err(error(400, format!("client: {value:?} is not an IPv4 address"))),
            },
            "limit" => match value.parse() {
                Ok(n) => limit = n,
                Err(_) => return Err(error(400, format!("limit: {value:?} is not a number"))),
            },
            other => {
                return Err(error(
                    400,
                    format!("unknown filter {other:?} (listener, server, client, state, limit)"),
                ))
            }
        }
    }
    Ok((filter, limit))
}

/// The listener of `PUT /v1/listeners/{name}` (its name from the path unless the body gives the same one).
pub fn listener_body(name: &str, body: &[u8]) -> Result<ListenerConfig, Reply> {
    if let Err(e) = check_name(name) {
        return Err(error(400, format!("listener.name: {e}")));
    }
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| error(400, format!("listener: body is not JSON: {e}")))?;
    if let Some(obj) = value.as_object_mut() {
        obj.entry("name").or_insert_with(|| json!(name));
    }
    let listener: ListenerConfig = serde_json::from_value(value).map_err(|e| error(400, format!("listener: {e}")))?;
    if listener.name != name {
        return Err(error(
            400,
            format!("listener.name: {:?} does not match the path ({name:?})", listener.name),
        ));
    }
    Ok(listener)
}

/// The group of `PUT /v1/groups/{name}`.
pub fn group_body(name: &str, body: &[u8]) -> Result<GroupConfig, Reply> {
    if let Err(e) = check_name(name) {
        return Err(error(400, format!("group.name: {e}")));
    }
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| error(400, format!("group: body is not JSON: {e}")))?;
    if let Some(obj) = value.as_object_mut() {
        obj.entry("name").or_insert_with(|| json!(name));
    }
    let group: GroupConfig = serde_json::from_value(value).map_err(|e| error(400, format!("group: {e}")))?;
    if group.name != name {
        return Err(error(
            400,
            format!("group.name: {:?} does not match the path ({name:?})", group.name),
        ));
    }
    Ok(group)
}

/// The server address and weight of `PUT /v1/groups/{group}/servers/{addr}` (no body: the weight stays, or 1).
pub fn server_body(addr: &str, body: &[u8]) -> Result<(SocketAddrV4, Option<u32>), Reply> {
    let Ok(addr) = addr.parse::<SocketAddrV4>() else {
        return Err(error(400, format!("server address {addr:?} is not ip:port")));
    };
    if body.is_empty() {
        return Ok((addr, None));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => match serde_json::from_value::<ServerWeight>(v.clone()) {
            Ok(w) => Ok((addr, w.weight)),
            Err(_) => Err(error(
                400,
                format!("server.weight: {} is not a non-negative integer", v["weight"]),
            )),
        },
        Err(e) => Err(error(400, format!("server: body is not JSON: {e}"))),
    }
}

/// Adds server `addr` to `group`, or sets its weight.
pub fn set_server(
    groups: &mut [GroupConfig],
    group: &str,
    addr: SocketAddrV4,
    weight: Option<u32>,
) -> Result<(), Reply> {
    let g = group_mut(groups, group)?;
    match g.servers.iter_mut().find(|s| s.addr == addr) {
        Some(s) => s.weight = weight.unwrap_or(s.weight),
        None => g.servers.push(ServerConfig {
            addr,
            weight: weight.unwrap_or(1),
        }),
    }
    Ok(())
}

fn group_mut<'a>(groups: &'a mut [GroupConfig], name: &str) -> Result<&'a mut GroupConfig, Reply> {
    groups
        .iter_mut()
        .find(|g| g.name == name)
        .ok_or_else(|| error(404, format!("no group {name:?}")))
}

fn found(found: bool, what: &str, name: &str) -> Result<(), Reply> {
    if found {
        Ok(())
    } else {
        Err(error(404, format!("no {what} {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xlb_api::ListenerSpec;

    /// What `xlbctl listener add` sends is a `[[listener]]` table the daemon reads.
    #[test]
    fn a_listener_spec_reads_as_a_listener_config() {
        let spec = ListenerSpec {
            name: "api".into(),
            vip: "198.18.0.101".into(),
            port: 81,
            protocol: "udp".into(),
            scheduler: "rr".into(),
            forwarding: "dr".into(),
            group: "web".into(),
            interface: Some("ext0".into()),
        };
        let l: ListenerConfig = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(l.name, "api");
        assert_eq!(l.vip.to_string(), "198.18.0.101");
        assert_eq!(l.port, 81);
        assert_eq!(l.scheduler.as_str(), "rr");
        assert_eq!(format!("{:?}", l.forwarding).to_lowercase(), "dr");
        assert_eq!(format!("{:?}", l.protocol).to_lowercase(), "udp");
        assert_eq!(l.interface.as_deref(), Some("ext0"));
        assert_eq!(l.group, "web");
    }

    /// A server weight as `xlbctl server add|set` sends it reads as the weight the API applies.
    #[test]
    fn server_weights_read_back() {
        let body = serde_json::to_vec(&ServerWeight { weight: Some(7) }).unwrap();
        let w: ServerWeight = serde_json::from_slice(&body).unwrap();
        assert_eq!(w.weight, Some(7));
    }
}
