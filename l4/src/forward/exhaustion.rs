//! Warnings for exhausted resources (local ports, the connection table): logged at most once per interval per
//! worker, with the cause and the fix, while the refusals are counted per packet elsewhere.

use std::time::{Duration, Instant};

use super::lports::LocalPorts;
use crate::conn::ConnTable;

/// Shortest time between two warnings of one kind from one worker.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The last warning of one kind: when, and the refusal count it covered.
#[derive(Debug, Default)]
struct Warned {
    at: Option<Instant>,
    count: u64,
}

impl Warned {
    /// The refusals since the last warning, if they are to be warned about now.
    fn due(&mut self, now: Instant, count: u64) -> Option<u64> {
        if count <= self.count || self.at.is_some_and(|at| now < at + WARN_INTERVAL) {
            return None;
        }
        let new = count - self.count;
        *self = Warned { at: Some(now), count };
        Some(new)
    }
}

/// The warning state of one worker.
#[derive(Debug, Default)]
pub struct ExhaustionWarnings {
    ports: Warned,
    table: Warned,
    quarantine: Warned,
    cookies: Warned,
    /// Per listener: refusals at its connection cap.
    caps: Vec<Warned>,
}

impl ExhaustionWarnings {
    /// Logs what ran out since the last warning: `ports_exhausted` and `table_full` are the worker's refusal
    /// counts so far.
    pub fn check(
        &mut self,
        now: Instant,
        worker: usize,
        ports_exhausted: u64,
        table_full: u64,
        lports: &LocalPorts,
        conns: &ConnTable,
    ) {
        if let Some(refused) = self.ports.due(now, ports_exhausted) {
            let occupancy = lports.occupancy();
            let busiest = lports
                .busiest()
                .map(|(ip, server, used)| format!("{ip} -> {server}: {used}/{} ports in use", occupancy.per_pool));
            tracing::warn!(
                worker,
                refused,
                busiest = busiest.unwrap_or_default(),
                quarantined = occupancy.quarantined,
                "FULLNAT local ports exhausted: new flows refused (local_ports_exhausted). Add local IPs on the \
                 servers' link, widen [l4] local_port_min..local_port_max, or shorten [l4.timeouts] tcp_time_wait"
            );
        }
        if let Some(released) = self.quarantine.due(now, lports.occupancy().quarantine_overflow) {
            tracing::warn!(
                worker,
                released,
                "FULLNAT port quarantine full: ports of connections that ended early were freed before the \
                 servers' TIME_WAIT ended (a server may refuse a new client's SYN on them). Raise [l4] \
                 conn_table_size (the quarantine has as many places)"
            );
        }
        if let Some(refused) = self.table.due(now, table_full) {
            tracing::warn!(
                worker,
                refused,
                entries = conns.len(),
                capacity = conns.capacity(),
                "connection table full and nothing closed to evict: new flows refused (conn_table_full). Raise \
                 [l4] conn_table_size or shorten [l4.timeouts]"
            );
        }
    }
}

impl ExhaustionWarnings {
    /// Logs the flood defences' refusals since the last warning: `cookies_invalid` is the worker's count of
    /// ACKs with a wrong or expired cookie, `capped[l]` listener `l`'s refusals at its cap (with its name and cap).
    pub fn check_defences(
        &mut self,
        now: Instant,
        worker: usize,
        cookies_invalid: u64,
        capped: &[(u64, &str, Option<u32>)],
    ) {
        if let Some(refused) = self.cookies.due(now, cookies_invalid) {
            tracing::warn!(
                worker,
                refused,
                "ACKs with a wrong or expired SYN cookie dropped (syn_cookie_invalid): an ACK flood against a \
                 SYN-proxied listener (nothing was opened for them), or clients whose handshake took over 64 s. \
                 Nothing to fix unless legitimate clients fail: then set the listener's syn_proxy = \"off\""
            );
        }
        self.caps.resize_with(capped.len(), Warned::default);
        for (w, (count, name, cap)) in self.caps.iter_mut().zip(capped) {
            if let Some(refused) = w.due(now, *count) {
                tracing::warn!(
                    worker,
                    listener = *name,
                    refused,
                    cap_per_worker = cap.unwrap_or(0),
                    "listener at its connection cap: new flows refused (listener_conn_limit), so its flood cannot \
                     take the other listeners' local ports and table. Raise the listener's max_conns (or [l4] \
                     listener_max_conns) if this is real load"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_interval_and_only_about_new_refusals() {
        let t0 = Instant::now();
        let mut w = Warned::default();
        assert_eq!(w.due(t0, 0), None, "nothing refused");
        assert_eq!(w.due(t0, 5), Some(5));
        assert_eq!(w.due(t0 + Duration::from_secs(1), 9), None, "within the interval");
        assert_eq!(w.due(t0 + WARN_INTERVAL, 9), Some(4));
        assert_eq!(w.due(t0 + WARN_INTERVAL * 3, 9), None, "no new refusal");
    }
}
