//! Request and response bodies of the control API routes (see the daemon's `api` module for the route table).
//!
//! Every refusal is an [`ErrorReply`] with a status other than 200; every accepted change answers [`Applied`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Any refused request: `{"error": "..."}` naming the field, header or limit at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

impl ErrorReply {
    pub fn new(message: impl Into<String>) -> ErrorReply {
        ErrorReply { error: message.into() }
    }
}

/// An accepted change (`PUT`/`DELETE` of listeners, groups and servers, `POST /v1/reload`, `POST /v1/ha/drain`):
/// what was applied, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub applied: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The node's name (`[node] name`).
    pub node: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Every worker thread runs and the datapath is attached as started.
    pub healthy: bool,
    /// `ok`, or `LOST (…)` naming the interfaces whose XDP program or AF_XDP sockets are gone (as the kernel
    /// says; checked once a second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<String>,
    /// Per interface: `name`, `xdp_mode` (the kernel's), `datapath_ok`, `sockets` (queue, worker, zero_copy as
    /// the kernel reports it, open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<Value>>,
}

/// `GET /v1/config`: the running listeners, groups and `[l4]` section, as in the config file. Their types belong
/// to the L4 crate (which this crate does not depend on), so they are carried as JSON here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningConfig {
    pub listeners: Vec<Value>,
    pub groups: Vec<Value>,
    pub l4: Value,
}

/// `PUT /v1/listeners/{name}` body as `xlbctl listener add` sends it: the `[[listener]]` fields it knows; the daemon
/// reads the body as a whole `[[listener]]` table, so fields left out take their config-file defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSpec {
    pub name: String,
    pub vip: String,
    pub port: u16,
    /// `tcp` | `udp`
    pub protocol: String,
    /// `rr` | `wrr` | `wlc` | `sh` | `mh`
    pub scheduler: String,
    /// `fullnat` | `dr`
    pub forwarding: String,
    pub group: String,
    /// Interface to announce the VIP on.
    pub interface: Option<String>,
}

/// `PUT /v1/groups/{group}/servers/{ip:port}` body: the weight (1 for a new server, unchanged for an existing one
/// when left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerWeight {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// `GET /v1/conns`: connection entries from every worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conns {
    pub conns: Vec<ConnRow>,
}

/// One connection entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnRow {
    pub listener: String,
    /// `tcp` | `udp`
    pub protocol: String,
    /// `fullnat` | `dr`
    pub forwarding: String,
    /// Client `ip:port`.
    pub client: String,
    /// VIP `ip:port`.
    pub vip: String,
    /// The appliance's local `ip:port` towards the server (FULLNAT).
    pub local: String,
    /// Server `ip:port`.
    pub server: String,
    pub state: String,
    pub expires_in_s: f64,
    pub client_packets: u64,
    pub worker: usize,
}

/// `GET /v1/ha`, and `ha` in the stats document: `state` is `master`, `backup`, `initialize`, or `disabled` (no
/// `[ha]` section, and then nothing else is present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ha {
    pub state: String,
    #[serde(flatten)]
    pub counters: Option<HaCounters>,
}

/// The HA node's progress and sync counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaCounters {
    /// The bulk resync finished (or found no peer).
    pub resynced: bool,
    /// Mastership is being handed over (`xlbctl ha drain`, SIGUSR2).
    pub draining: bool,
    pub became_master: u64,
    pub sync_records_sent: u64,
    pub sync_records_received: u64,
    pub sync_rejected: u64,
    pub sync_replayed: u64,
    pub vrrp_rejected: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ha_disabled_is_the_state_alone_and_enabled_carries_counters() {
        let disabled = Ha {
            state: "disabled".into(),
            counters: None,
        };
        assert_eq!(serde_json::to_value(&disabled).unwrap(), json!({"state": "disabled"}));
        let back: Ha = serde_json::from_value(json!({"state": "disabled"})).unwrap();
        assert_eq!(back, disabled);
        let master = Ha {
            state: "master".into(),
            counters: Some(HaCounters {
                sync_records_sent: 3,
                ..HaCounters::default()
            }),
        };
        let v = serde_json::to_value(&master).unwrap();
        assert_eq!(v["sync_records_sent"], 3);
        assert_eq!(v["resynced"], false);
        assert_eq!(serde_json::from_value::<Ha>(v).unwrap(), master);
    }

    #[test]
    fn server_weight_left_out_is_absent() {
        assert_eq!(serde_json::to_value(ServerWeight::default()).unwrap(), json!({}));
        let w: ServerWeight = serde_json::from_str(r#"{"weight": 0}"#).unwrap();
        assert_eq!(w.weight, Some(0));
    }
}

/// `GET /v1/certs`: the certificates of one `https` listener, the first being its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerCerts {
    pub listener: String,
    pub certs: Vec<CertInfo>,
}

/// One certificate of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// The certificate file.
    pub source: String,
    /// The DNS names SNI chooses it for (from its subject alternative names).
    pub names: Vec<String>,
}
