//! Stable slots for listeners and servers across live reconfigurations.
//!
//! Connection entries refer to their listener and server by index. A reconfiguration must never change what an
//! index means, or live connections would be counted to — or forwarded by — the wrong listener. The control
//! thread therefore computes a [`Layout`]: listener slots matched by name and server slots matched by address
//! keep their index, new ones are appended, and removed ones stay as tombstones (never scheduled again) so the
//! connections still using them keep working until they end. Every worker applies the same layout, so every
//! worker agrees on every index.

use std::net::SocketAddrV4;

pub use crate::config::RemovedServerPolicy;
use crate::config::{GroupConfig, ListenerConfig};
use crate::health::HealthCheckConfig;

/// A server slot of a listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSlot {
    /// Address.
    pub addr: SocketAddrV4,
    /// Current weight (0 while drained or removed).
    pub weight: u32,
    /// Removed from the group: never scheduled again; existing connections follow the policy.
    pub removed: bool,
    /// Index of the server's health target in [`Layout::targets`], if its group has a check.
    pub target: Option<usize>,
}

/// A listener slot.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSlot {
    /// The listener's current (or last) config.
    pub config: ListenerConfig,
    /// Removed: no new flows; its VIP:port no longer belongs to it.
    pub removed: bool,
    /// Server slots of its group.
    pub servers: Vec<ServerSlot>,
}

/// A health-check target: one server of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSlot {
    /// Group name.
    pub group: String,
    /// Server address.
    pub addr: SocketAddrV4,
    /// The group's check.
    pub check: HealthCheckConfig,
}

/// Listener and server slots, plus the health targets of the current config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    /// Listener slots (index = the listener index in connection entries and counters).
    pub listeners: Vec<ListenerSlot>,
    /// Health targets (index = position on the health board).
    pub targets: Vec<TargetSlot>,
    /// Policy for connections of removed servers.
    pub removed_server_policy: RemovedServerPolicy,
}

impl Layout {
    /// The first layout for a config.
    pub fn new(listeners: &[ListenerConfig], groups: &[GroupConfig], policy: RemovedServerPolicy) -> Layout {
        Layout::default().next(listeners, groups, policy)
    }

    /// The layout after changing to `listeners` and `groups`: existing slots keep their index.
    pub fn next(&self, listeners: &[ListenerConfig], groups: &[GroupConfig], policy: RemovedServerPolicy) -> Layout {
        let targets: Vec<TargetSlot> = groups
            .iter()
            .flat_map(|g| {
                g.health_check.iter().flat_map(move |check| {
                    g.servers.iter().map(move |s| TargetSlot {
                        group: g.name.clone(),
                        addr: s.addr,
                        check: check.clone(),
                    })
                })
            })
            .collect();
        let target_of =
            |group: &str, addr: SocketAddrV4| targets.iter().position(|t| t.group == group && t.addr == addr);

        let mut slots = self.listeners.clone();
        for slot in &mut slots {
            slot.removed = true;
        }
        for l in listeners {
            let group = groups.iter().find(|g| g.name == l.group);
            let index = match slots.iter().position(|s| s.config.name == l.name) {
                Some(i) => i,
                None => {
                    slots.push(ListenerSlot {
                        config: l.clone(),
                        removed: false,
                        servers: Vec::new(),
                    });
                    slots.len() - 1
                }
            };
            let slot = &mut slots[index];
            slot.config = l.clone();
            slot.removed = false;
            for s in &mut slot.servers {
                s.removed = true;
                s.weight = 0;
                s.target = None;
            }
            for server in group.map(|g| g.servers.as_slice()).unwrap_or_default() {
                let target = target_of(&l.group, server.addr);
                match slot.servers.iter_mut().find(|s| s.addr == server.addr) {
                    Some(s) => {
                        s.weight = server.weight;
                        s.removed = false;
                        s.target = target;
                    }
                    None => slot.servers.push(ServerSlot {
                        addr: server.addr,
                        weight: server.weight,
                        removed: false,
                        target,
                    }),
                }
            }
        }
        Layout {
            listeners: slots,
            targets,
            removed_server_policy: policy,
        }
    }

    /// Number of server slots per listener slot (the shape of the counters).
    pub fn shape(&self) -> Vec<usize> {
        self.listeners.iter().map(|l| l.servers.len()).collect()
    }

    /// The slot of the listener named `name`, if it is live.
    pub fn listener(&self, name: &str) -> Option<usize> {
        self.listeners.iter().position(|l| !l.removed && l.config.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ListenerProtocol, ServerConfig};
    use crate::conn::Forwarding;
    use crate::sched::SchedulerKind;

    fn listener(name: &str, port: u16) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            vip: "198.18.0.100".parse().unwrap(),
            port,
            protocol: ListenerProtocol::Tcp,
            scheduler: SchedulerKind::Rr,
            forwarding: Forwarding::Fullnat,
            group: "web".into(),
            interface: None,
            syn_proxy: None,
            max_conns: None,
            rules: Vec::new(),
            sticky: None,
            hash: None,
            tls: None,
        }
    }

    fn group(servers: &[(&str, u32)]) -> GroupConfig {
        GroupConfig {
            name: "web".into(),
            servers: servers
                .iter()
                .map(|(a, w)| ServerConfig {
                    addr: a.parse().unwrap(),
                    weight: *w,
                })
                .collect(),
            health_check: Some(HealthCheckConfig::new(crate::health::CheckKind::Tcp)),
            tls: None,
        }
    }

    #[test]
    fn slots_keep_their_index_across_changes() {
        let p = RemovedServerPolicy::Keep;
        let a = Layout::new(
            &[listener("web", 80)],
            &[group(&[("198.19.0.2:80", 1), ("198.19.0.3:80", 1)])],
            p,
        );
        assert_eq!(a.shape(), vec![2]);
        assert_eq!(a.targets.len(), 2);
        assert_eq!(a.listeners[0].servers[1].target, Some(1));

        // Remove .2, add .4, change .3's weight, add a second listener.
        let b = a.next(
            &[listener("web", 80), listener("api", 8080)],
            &[group(&[("198.19.0.3:80", 5), ("198.19.0.4:80", 1)])],
            p,
        );
        let web = &b.listeners[0];
        assert_eq!(web.servers[0].addr.to_string(), "198.19.0.2:80");
        assert!(web.servers[0].removed && web.servers[0].weight == 0 && web.servers[0].target.is_none());
        assert_eq!((web.servers[1].weight, web.servers[1].removed), (5, false));
        assert_eq!(web.servers[2].addr.to_string(), "198.19.0.4:80");
        assert_eq!(b.listener("api"), Some(1));
        assert_eq!(b.shape(), vec![3, 2]);

        // Remove the first listener: it stays as a tombstone; re-adding it reuses the slot.
        let c = b.next(&[listener("api", 8080)], &[group(&[("198.19.0.3:80", 5)])], p);
        assert!(c.listeners[0].removed);
        assert_eq!(c.listener("web"), None);
        assert_eq!(c.listener("api"), Some(1));
        let d = c.next(
            &[listener("web", 80), listener("api", 8080)],
            &[group(&[("198.19.0.2:80", 1)])],
            p,
        );
        assert_eq!(d.listener("web"), Some(0));
        assert!(!d.listeners[0].servers[0].removed, "re-added server reuses its slot");
        assert_eq!(d.listeners.len(), 2);
    }
}
