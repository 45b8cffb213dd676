//! L7 counters: plain integers in the worker, published once per interval to relaxed atomics that the control
//! thread reads (one writer per worker, as for the L4 counters).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! l7_counts {
    ($($variant:ident => $name:literal: $doc:literal,)*) => {
        /// What the L7 stage counts.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum L7Count {
            $(#[doc = $doc] $variant,)*
        }

        impl L7Count {
            /// Every count, in order.
            pub const ALL: &'static [L7Count] = &[$(L7Count::$variant,)*];
            /// Number of counts.
            pub const COUNT: usize = Self::ALL.len();

            /// The count's name in stats and metrics (snake_case).
            pub fn name(self) -> &'static str {
                match self { $(L7Count::$variant => $name,)* }
            }

            /// What the count counts (metric help).
            pub fn doc(self) -> &'static str {
                match self { $(L7Count::$variant => $doc,)* }
            }
        }
    };
}

l7_counts! {
    Accepted => "accepted": "Client connections accepted (SYN answered).",
    Requests => "requests": "Responses relayed from a server.",
    LocalAnswers => "local_answers": "Responses xlb answered itself: redirects, fixed responses and errors.",
    Status1xx => "responses_1xx": "Final responses with a 1xx status (101 Switching Protocols).",
    Status2xx => "responses_2xx": "Responses with a 2xx status.",
    Status3xx => "responses_3xx": "Responses with a 3xx status.",
    Status4xx => "responses_4xx": "Responses with a 4xx status.",
    Status5xx => "responses_5xx": "Responses with a 5xx status.",
    ClientRefused => "client_refused": "Requests refused (400, 408, 413, 431, ...: see the log at debug level).",
    UpstreamRefused => "upstream_refused": "Server responses refused (malformed, unsolicited, smuggling attempts).",
    UpstreamConnects => "upstream_connects": "Upstream connections opened.",
    UpstreamReused => "upstream_reused": "Requests sent over an upstream connection taken from the idle pool.",
    NoHealthyServer => "no_healthy_server": "Requests whose group had no healthy server (503).",
    UpstreamConnectFailed => "upstream_connect_failed": "Upstream connections refused or not established in time (502/504).",
    Retries => "retries": "Idempotent requests sent to another server after connecting failed or timed out.",
    UpstreamReset => "upstream_reset": "Upstream connections reset or closed mid-response (502 or an aborted response).",
    Timeouts => "timeouts": "Client or upstream timers that fired (408, 504, idle closes).",
    Aborted => "aborted": "Exchanges cut short by a connection closing mid-message.",
    Tunnels => "tunnels": "Connections upgraded to a tunnel (WebSocket).",
    NoConnection => "no_connection": "Segments of no known connection (answered with RST).",
    BadSegments => "bad_segments": "Malformed segments or bad TCP checksums.",
    ConnectionLimit => "connection_limit": "SYNs refused at l7.max_connections (answered with RST).",
    LocalPortsExhausted => "local_ports_exhausted": "Upstream connections not opened: no free local port for the server (502).",
    NoRoute => "no_route": "Upstream connections not opened: no route to the server (502).",
    AccessLogDropped => "access_log_dropped": "Access-log lines dropped: the logger thread fell behind (its queue was full).",
    HandedOff => "handed_off": "Segments handed to the worker that owns their connection.",
    HandoffFull => "handoff_full": "Segments dropped: the hand-off queue to their owner was full.",
    TlsFull => "tls_full_handshakes": "TLS handshakes completed with a certificate signature.",
    TlsResumed => "tls_resumed_handshakes": "TLS handshakes completed by resuming a session (ticket or session id).",
    Tls13 => "tls13_handshakes": "TLS handshakes completed with TLS 1.3.",
    Tls12 => "tls12_handshakes": "TLS handshakes completed with TLS 1.2.",
    TlsFailed => "tls_handshake_failed": "TLS handshakes or records that failed (alert sent, connection closed; see the log at debug level).",
    TlsAborted => "tls_handshake_aborted": "TLS handshakes the client abandoned (closed or reset before the end, e.g. it did not trust the certificate).",
    TlsPoolFull => "tls_pool_full": "TLS handshakes refused at once: the handshake pool's queue was full.",
    UpstreamTlsFull => "upstream_tls_full_handshakes": "TLS handshakes with servers (groups with tls) completed in full.",
    UpstreamTlsResumed => "upstream_tls_resumed_handshakes": "TLS handshakes with servers completed by resuming a session.",
    UpstreamTlsFailed => "upstream_tls_failed": "TLS handshakes with servers that failed: certificate not trusted or not for the name, no common version (502; the cause is logged).",
    H2Connections => "h2_connections": "Client connections that speak HTTP/2 (prior knowledge, or ALPN h2).",
    H2Streams => "h2_streams": "HTTP/2 streams (requests) opened by clients.",
    H2Upgrades => "h2_upgrades": "HTTP/1.1 connections switched to HTTP/2 by `Upgrade: h2c` (101; counted in h2_connections too).",
    H2ClientProtocolError => "h2_client_protocol_error": "HTTP/2 connections ended on a client protocol error.",
    H2RapidReset => "h2_rapid_reset": "HTTP/2 connections ended for resetting too many streams (Rapid Reset, CVE-2023-44487): GOAWAY.",
    H2TooManyErrorResets => "h2_too_many_error_resets": "HTTP/2 connections ended for too many streams reset for the client's errors: GOAWAY.",
    H2ContinuationFlood => "h2_continuation_flood": "HTTP/2 connections ended for a header block over too many CONTINUATION frames: GOAWAY.",
    H2DataFlood => "h2_data_flood": "HTTP/2 connections ended for too many small DATA frames: GOAWAY.",
    H2HeaderListTooLarge => "h2_header_list_too_large": "HTTP/2 requests with a header list over the limit (431, or GOAWAY when far over).",
    H2TooManyStreams => "h2_too_many_streams": "HTTP/2 streams refused over max_concurrent_streams (REFUSED_STREAM).",
    H2MalformedRequest => "h2_malformed_request": "Malformed HTTP/2 requests (RST_STREAM PROTOCOL_ERROR).",
    H2ConnectRefused => "h2_connect_refused": "HTTP/2 CONNECT requests (405).",
    H2BadResponse => "h2_bad_response": "Responses that could not be carried over HTTP/2 (502 or RST_STREAM).",
    RespUnder1ms => "response_time_le_1ms": "Responses whose head went out at most 1 ms after the request's head was complete (latency histogram).",
    RespUnder10ms => "response_time_le_10ms": "Responses whose head went out over 1 ms and at most 10 ms after the request's head.",
    RespUnder100ms => "response_time_le_100ms": "Responses whose head went out over 10 ms and at most 100 ms after the request's head.",
    RespUnder1s => "response_time_le_1s": "Responses whose head went out over 100 ms and at most 1 s after the request's head.",
    RespOver1s => "response_time_over_1s": "Responses whose head went out over 1 s after the request's head.",
    TlsUnder1ms => "tls_handshake_le_1ms": "TLS handshakes that took at most 1 ms from the ClientHello (latency histogram).",
    TlsUnder10ms => "tls_handshake_le_10ms": "TLS handshakes that took over 1 ms and at most 10 ms.",
    TlsUnder100ms => "tls_handshake_le_100ms": "TLS handshakes that took over 10 ms and at most 100 ms.",
    TlsUnder1s => "tls_handshake_le_1s": "TLS handshakes that took over 100 ms and at most 1 s.",
    TlsOver1s => "tls_handshake_over_1s": "TLS handshakes that took over 1 s.",
}

impl L7Count {
    /// The count of an HTTP/2 front's refusal or defence.
    pub fn from_h2(c: crate::h2::H2Count) -> L7Count {
        use crate::h2::H2Count as H;
        match c {
            H::ClientProtocolError => L7Count::H2ClientProtocolError,
            H::RapidReset => L7Count::H2RapidReset,
            H::TooManyErrorResets => L7Count::H2TooManyErrorResets,
            H::ContinuationFlood => L7Count::H2ContinuationFlood,
            H::DataFlood => L7Count::H2DataFlood,
            H::HeaderListTooLarge => L7Count::H2HeaderListTooLarge,
            H::TooManyStreams => L7Count::H2TooManyStreams,
            H::MalformedRequest => L7Count::H2MalformedRequest,
            H::ConnectRefused => L7Count::H2ConnectRefused,
            H::BadResponse => L7Count::H2BadResponse,
        }
    }

    /// The latency bucket of a response whose head went out `elapsed` after the request's.
    pub fn response_time(elapsed: std::time::Duration) -> L7Count {
        match elapsed.as_micros() {
            0..=1_000 => L7Count::RespUnder1ms,
            1_001..=10_000 => L7Count::RespUnder10ms,
            10_001..=100_000 => L7Count::RespUnder100ms,
            100_001..=1_000_000 => L7Count::RespUnder1s,
            _ => L7Count::RespOver1s,
        }
    }

    /// The latency bucket of a TLS handshake that took `elapsed`.
    pub fn tls_latency(elapsed: std::time::Duration) -> L7Count {
        match elapsed.as_micros() {
            0..=1_000 => L7Count::TlsUnder1ms,
            1_001..=10_000 => L7Count::TlsUnder10ms,
            10_001..=100_000 => L7Count::TlsUnder100ms,
            100_001..=1_000_000 => L7Count::TlsUnder1s,
            _ => L7Count::TlsOver1s,
        }
    }
}

/// One worker's L7 counts and gauges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Counters {
    /// Counts by [`L7Count`].
    pub counts: [u64; L7Count::COUNT],
    /// Client connections being served.
    pub sessions: u64,
    /// In-stack TCP connections (client, upstream, idle, closing).
    pub connections: u64,
    /// Idle upstream connections kept for reuse.
    pub idle_upstreams: u64,
    /// Bytes of socket buffers of the in-stack connections.
    pub buffer_bytes: u64,
}

impl Default for L7Counters {
    fn default() -> Self {
        L7Counters {
            counts: [0; L7Count::COUNT],
            sessions: 0,
            connections: 0,
            idle_upstreams: 0,
            buffer_bytes: 0,
        }
    }
}

impl L7Counters {
    /// Counts one `c`.
    #[inline]
    pub fn bump(&mut self, c: L7Count) {
        self.counts[c as usize] += 1;
    }

    /// Counts `n` of `c`.
    #[inline]
    pub fn bump_by(&mut self, c: L7Count, n: u64) {
        self.counts[c as usize] += n;
    }

    /// The value of `c`.
    pub fn get(&self, c: L7Count) -> u64 {
        self.counts[c as usize]
    }

    /// Adds another worker's counters.
    pub fn add(&mut self, other: &L7Counters) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sessions += other.sessions;
        self.connections += other.connections;
        self.idle_upstreams += other.idle_upstreams;
        self.buffer_bytes += other.buffer_bytes;
    }

    /// Share of relayed responses that needed no new upstream connection (1.0 when there were none).
    pub fn upstream_reuse(&self) -> f64 {
        let requests = self.get(L7Count::Requests);
        if requests == 0 {
            return 1.0;
        }
        1.0 - (self.get(L7Count::UpstreamConnects) as f64 / requests as f64).min(1.0)
    }
}

/// A worker's published L7 counters.
#[derive(Debug)]
pub struct SharedL7Counters {
    counts: [AtomicU64; L7Count::COUNT],
    gauges: [AtomicU64; 4],
}

impl Default for SharedL7Counters {
    fn default() -> Self {
        SharedL7Counters {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            gauges: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl SharedL7Counters {
    /// Stores the worker's current values.
    pub fn publish(&self, c: &L7Counters) {
        for (slot, v) in self.counts.iter().zip(c.counts) {
            slot.store(v, Relaxed);
        }
        for (slot, v) in self
            .gauges
            .iter()
            .zip([c.sessions, c.connections, c.idle_upstreams, c.buffer_bytes])
        {
            slot.store(v, Relaxed);
        }
    }

    /// The values last published.
    pub fn snapshot(&self) -> L7Counters {
        let g = |i: usize| self.gauges[i].load(Relaxed);
        L7Counters {
            counts: std::array::from_fn(|i| self.counts[i].load(Relaxed)),
            sessions: g(0),
            connections: g(1),
            idle_upstreams: g(2),
            buffer_bytes: g(3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_counters_read_back_and_sum() {
        let mut c = L7Counters::default();
        c.bump(L7Count::Requests);
        c.bump(L7Count::Requests);
        c.bump(L7Count::UpstreamConnects);
        c.sessions = 3;
        let shared = SharedL7Counters::default();
        shared.publish(&c);
        let mut total = shared.snapshot();
        assert_eq!(total, c);
        total.add(&c);
        assert_eq!(total.get(L7Count::Requests), 4);
        assert_eq!(total.sessions, 6);
        assert_eq!(c.upstream_reuse(), 0.5);
        assert_eq!(L7Counters::default().upstream_reuse(), 1.0);
        let names: std::collections::HashSet<_> = L7Count::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), L7Count::COUNT, "names are unique");
    }
}
