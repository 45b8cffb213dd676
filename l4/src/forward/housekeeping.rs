//! Timers of the forwarder: connection expiry (budget following the insert rate) and counter publication.

use std::time::Instant;

use crate::conn::Forwarding;

use super::*;

/// Table slots the pressure walk looks at per housekeeping turn (a 262 144-entry table in 4 turns).
const PRESSURE_WALK_CHUNK: usize = 65_536;

impl Forwarder {
    /// Expires connections whose time is up, with a budget that follows the insert rate; what is left over is
    /// done in the next turns (`poll_timeout` asks for them at once).
    pub(super) fn expire(&mut self, now: Instant, ports: &mut LocalPorts) {
        if !self.conns.expiry_due(now) {
            return;
        }
        let inserted = self.conns.inserted() - self.inserted_at_expiry;
        self.inserted_at_expiry = self.conns.inserted();
        let budget = EXPIRE_BASE_BUDGET + 2 * inserted as usize;
        let listeners = &mut self.listeners;
        let (sync, sync_policy, counters) = (&mut self.sync, &self.sync_policy, &mut self.counters);
        let expired = self.conns.expire(now, budget, |c| {
            if c.forwarding == Forwarding::Fullnat {
                ports.give_back(*c.local.ip(), c.backend, c.local.port());
            }
            if let (true, Some(outbox)) = (sync_policy.on_end(c), sync.as_mut()) {
                if !outbox.push(SyncEvent::Delete(c.client_key())) {
                    counters.sync_dropped += 1;
                }
            }
            let listener = &mut listeners[usize::from(c.listener)];
            listener.entries = listener.entries.saturating_sub(1);
            if c.state == crate::conn::ConnState::SynRecv {
                listener.half_open = listener.half_open.saturating_sub(1);
            }
            let s = &mut listener.servers[usize::from(c.server)];
            let n = if c.state.is_active() {
                &mut s.active
            } else {
                &mut s.inactive
            };
            *n = n.saturating_sub(1);
        });
        self.counters.expired += expired as u64;
    }

    /// Whether the table or the fullest local port pool is above `[l4] pressure_percent`: then half-open TCP
    /// and unanswered UDP entries get the short timeouts, and `auto` SYN proxies switch on.
    fn update_pressure(&mut self, now: Instant, ports: &LocalPorts) {
        let pct = u64::from(self.defence.pressure_percent);
        let table = self.conns.len() as u64 * 100 >= self.conns.capacity() as u64 * pct;
        let ports = ports.occupancy();
        let pool = ports.per_pool > 0 && ports.busiest * 100 >= ports.per_pool * pct;
        let on = table || pool;
        if on != self.conns.under_pressure() {
            if on {
                tracing::warn!(
                    worker = self.worker,
                    entries = self.conns.len(),
                    capacity = self.conns.capacity(),
                    busiest_pool = ports.busiest,
                    per_pool = ports.per_pool,
                    "connection table or local ports above [l4] pressure_percent ({pct}%): new half-open TCP and \
                     unanswered UDP entries get the short timeouts ([l4.timeouts] tcp_syn_recv_pressure, \
                     udp_unanswered_pressure), auto SYN proxies switch on at a tenth of [l4] syn_proxy_threshold. If this is real load, not a flood: raise \
                     [l4] conn_table_size, add local IPs or widen the local port range"
                );
            } else {
                tracing::info!(
                    worker = self.worker,
                    "connection table and local ports below pressure again"
                );
            }
            self.conns.set_pressure(on);
            self.pressure_walk = on.then_some(0);
        }
        self.counters.pressure = u64::from(on);
        // The entries made before the pressure: a chunk of the table per turn.
        if let Some(from) = self.pressure_walk {
            let (shortened, next) = self.conns.shorten_slots(now, from, from + PRESSURE_WALK_CHUNK);
            self.counters.short_timeouts += shortened as u64;
            self.pressure_walk = next;
        }
    }

    /// The SYN proxy mode of listener `l` (only TCP FULLNAT listeners have one).
    pub(super) fn syn_proxy_mode(&self, l: usize) -> SynProxyMode {
        let c = &self.listeners[l].config;
        if c.protocol != crate::config::ListenerProtocol::Tcp || c.forwarding != Forwarding::Fullnat {
            return SynProxyMode::Off;
        }
        c.syn_proxy.unwrap_or(self.defence.syn_proxy)
    }

    /// Re-decides whether listener `l`'s SYN proxy is on (logged when it changes).
    pub(super) fn update_guard(&mut self, now: Instant, l: usize) {
        let mode = self.syn_proxy_mode(l);
        let pressure = self.conns.under_pressure();
        // Under pressure a tenth of the threshold will do: the ports or the table are running out. (Pressure
        // alone does not switch it on: a table full of TIME_WAIT from real load is no flood.)
        let threshold = if pressure {
            (self.defence.syn_proxy_threshold / 10).max(1)
        } else {
            self.defence.syn_proxy_threshold
        };
        let syn_recv_s = if pressure {
            self.conns.timeouts().tcp_syn_recv_pressure
        } else {
            self.conns.timeouts().tcp_syn_recv
        };
        let counters = &self.counters.listeners[l];
        let (sent, valid) = (counters.syn_cookies_sent, counters.syn_cookies_valid);
        let listener = &mut self.listeners[l];
        let half_open = listener.half_open;
        let change = match mode {
            SynProxyMode::Off | SynProxyMode::Always => {
                let on = mode == SynProxyMode::Always && !listener.removed;
                let was = std::mem::replace(&mut listener.guard.engaged, on);
                (was != on).then_some(if on {
                    synproxy::Change::On
                } else {
                    synproxy::Change::Off
                })
            }
            SynProxyMode::Auto => listener
                .guard
                .update(now, half_open, threshold, syn_recv_s, sent, valid),
        };
        let name = listener.config.name.as_str();
        match change {
            Some(synproxy::Change::On) if mode == SynProxyMode::Auto => tracing::warn!(
                listener = name,
                worker = self.worker,
                half_open,
                threshold,
                pressure,
                "SYN proxy on (syn_proxy = auto): a SYN flood, or more half-open connections than [l4] \
                 syn_proxy_threshold, or the table or local ports under pressure. SYNs are answered with cookies: \
                 no entry, port or server until the client's ACK (options beyond MSS are not negotiated). If this \
                 is real load, raise [l4] syn_proxy_threshold"
            ),
            Some(synproxy::Change::On) => tracing::info!(
                listener = name,
                worker = self.worker,
                "SYN proxy on (syn_proxy = always)"
            ),
            Some(synproxy::Change::Off) => {
                tracing::info!(
                    listener = name,
                    worker = self.worker,
                    "SYN proxy off: the SYN flood has stopped"
                )
            }
            None => {}
        }
        self.counters.listeners[l].syn_proxy_on = u64::from(self.listeners[l].guard.engaged);
    }

    pub(super) fn publish(&mut self, ports: &LocalPorts) {
        self.counters.conns = self.conns.len() as u64;
        self.counters.local_ports = ports.occupancy();
        for (l, listener) in self.listeners.iter().enumerate() {
            for (s, view) in listener.servers.iter().enumerate() {
                self.counters.servers[l][s].active = u64::from(view.active);
                self.counters.servers[l][s].inactive = u64::from(view.inactive);
            }
        }
        self.shared.publish(&self.counters);
    }

    /// Every [`HOUSEKEEPING`]: quarantined ports come back, health changes are taken, counters are published and
    /// exhausted resources are warned about.
    pub(super) fn housekeeping(&mut self, now: Instant, ports: &mut LocalPorts) {
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + HOUSEKEEPING;
        ports.release_due(now);
        self.sync_health();
        self.update_pressure(now, ports);
        for l in 0..self.listeners.len() {
            self.update_guard(now, l);
        }
        self.publish(ports);
        let table_full = self
            .counters
            .listeners
            .iter()
            .map(|l| l.drops[DropReason::ConnTableFull.index()])
            .sum();
        let ports_exhausted = self
            .counters
            .listeners
            .iter()
            .map(|l| l.drops[DropReason::LocalPortsExhausted.index()])
            .sum();
        self.warnings
            .check(now, self.worker, ports_exhausted, table_full, ports, &self.conns);
        let cookies_invalid = self
            .counters
            .listeners
            .iter()
            .map(|l| l.drops[DropReason::SynCookieInvalid.index()])
            .sum();
        let mut warnings = std::mem::take(&mut self.warnings);
        let capped: Vec<(u64, &str, Option<u32>)> = (0..self.listeners.len())
            .map(|l| {
                let count = self.counters.listeners[l].drops[DropReason::ListenerConnLimit.index()];
                (count, self.listeners[l].config.name.as_str(), self.conn_cap(l))
            })
            .collect();
        warnings.check_defences(now, self.worker, cookies_invalid, &capped);
        drop(capped);
        self.warnings = warnings;
    }
}
