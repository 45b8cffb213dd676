use super::*;
use prometheus_parse::{Sample, Scrape, Value as Sampled};
use std::collections::HashSet;

/// A stats document shaped like the daemon's: two workers, one interface, two listeners (one with a name that
/// needs escaping), three servers.
fn document() -> StatsDoc {
    let worker = |name: &str, rx: u64, tcp_no_listener: u64| doc::Worker {
        name: name.into(),
        counters: doc::WorkerCounters {
            rx_frames: rx,
            rx_bytes: rx * 100,
            tx_frames: 5,
            tx_bytes: 500,
            tx_ring_full: 0,
            fill_starved: 1,
            kernel_rx_ring_full: 2,
            kernel_fill_ring_empty: 3,
            kernel_rx_dropped: 4,
            arp_replies: 6,
            arp_requests: 7,
            icmp_echo_replies: 8,
            tcp_resets: 9,
            icmp_unreachables: 10,
            icmp_time_exceeded: 0,
            reassembled: 0,
            drops: [
                ("tcp_no_listener".to_string(), tcp_no_listener),
                ("not_our_mac".to_string(), 0),
            ]
            .into_iter()
            .collect(),
            free_frames: 4000,
            total_frames: 4096,
        },
        batch_us: doc::BatchHistogram {
            le: vec![Some(1), Some(2), None],
            counts: vec![3, 1, 1],
            sum: 9,
        },
    };
    let workers = vec![worker("w0", 10, 3), worker("w1", 20, 0)];
    let server = |addr: &str, healthy: bool, active: u64| doc::Server {
        addr: addr.into(),
        weight: 100,
        removed: false,
        healthy,
        active_conns: active,
        inactive_conns: 1,
        conns_total: 42,
        packets_in: 1000,
        bytes_in: 64000,
        packets_out: 900,
        bytes_out: 18_446_744_073_709_551_615,
    };
    let l4_worker = |w: usize, conns: u64, base: u64| doc::L4Worker {
        worker: w,
        conns,
        handoff_out: base + 1,
        handoff_in: base + 2,
        expired: base + 3,
        ..doc::L4Worker::default()
    };
    StatsDoc {
        node: "lb-a".into(),
        uptime_s: 3600,
        totals: crate::stats::totals(&workers),
        workers,
        interfaces: vec![doc::Interface {
            name: "eth1".into(),
            xdp_mode: "native".into(),
            to_socket: 30,
            passed_not_ours: 2,
            passed_no_socket: 0,
            passed_malformed: 1,
            datapath_ok: None,
            sockets: None,
        }],
        datapath_ok: None,
        l4: doc::L4 {
            conns: 7,
            listeners: vec![
                doc::Listener {
                    name: "web".into(),
                    vip: "10.0.0.10".into(),
                    port: 80,
                    protocol: "tcp".into(),
                    scheduler: "wrr".into(),
                    forwarding: "fullnat".into(),
                    group: "web-servers".into(),
                    conns_total: 42,
                    conns_per_sec: 3,
                    packets_in: 2000,
                    bytes_in: 128000,
                    packets_out: 1800,
                    bytes_out: 900000,
                    servers: vec![server("10.1.0.1:8080", true, 4), server("10.1.0.2:8080", false, 0)],
                    ..doc::Listener::default()
                },
                doc::Listener {
                    name: "say \"hi\"\\now\nplease".into(),
                    vip: "10.0.0.11".into(),
                    port: 53,
                    protocol: "udp".into(),
                    scheduler: "rr".into(),
                    forwarding: "fullnat".into(),
                    group: "dns".into(),
                    conns_total: 1,
                    packets_in: 1,
                    bytes_in: 60,
                    packets_out: 1,
                    bytes_out: 90,
                    no_server: 5,
                    stateless: 2,
                    drops: [("no_healthy_server".to_string(), 5), ("handoff_full".to_string(), 1)]
                        .into_iter()
                        .collect(),
                    servers: vec![server("10.1.0.3:53", true, 0)],
                    ..doc::Listener::default()
                },
            ],
            workers: vec![l4_worker(0, 4, 10), l4_worker(1, 3, 20)],
            health: doc::Health {
                probes: 40,
                successes: 30,
                failures: 10,
                timeouts: 9,
                bad_checksum: 9,
                port_waits: 0,
            },
            ..doc::L4::default()
        },
        l7: Some(doc::L7 {
            counts: [("requests".to_string(), 5), ("upstream_connects".to_string(), 1)]
                .into_iter()
                .collect(),
            sessions: 2,
            connections: 3,
            idle_upstreams: 1,
            buffer_bytes: 8192,
            upstream_reuse: 0.8,
        }),
        ha: None,
    }
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses")
}

/// The one sample of `metric` whose labels include all of `labels`.
fn find<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> &'a Sample {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
    found[0]
}

/// Undoes [`escape_label`] (`prometheus-parse` returns label values as written).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => panic!("dangling backslash in {s:?}"),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

#[test]
fn samples_and_labels_come_through_a_parser() {
    let text = render(&document());
    let scrape = parse(&text);

    assert_eq!(find(&scrape, "xlb_up", &[]).value, Sampled::Gauge(1.0));
    assert_eq!(
        find(&scrape, "xlb_node_info", &[("node", "lb-a")]).value,
        Sampled::Gauge(1.0)
    );
    assert_eq!(find(&scrape, "xlb_uptime_seconds", &[]).value, Sampled::Gauge(3600.0));
    assert_eq!(
        find(&scrape, "xlb_l7_events_total", &[("event", "requests")]).value,
        Sampled::Counter(5.0)
    );
    assert_eq!(find(&scrape, "xlb_l7_sessions", &[]).value, Sampled::Gauge(2.0));
    assert_eq!(find(&scrape, "xlb_l7_idle_upstreams", &[]).value, Sampled::Gauge(1.0));
    let drop = find(
        &scrape,
        "xlb_drops_total",
        &[("worker", "w0"), ("reason", "tcp_no_listener")],
    );
    assert_eq!(drop.value, Sampled::Counter(3.0));
    assert_eq!(
        find(&scrape, "xlb_health_bad_checksum_total", &[]).value,
        Sampled::Counter(9.0)
    );
    assert_eq!(
        find(&scrape, "xlb_health_probes_total", &[]).value,
        Sampled::Counter(40.0)
    );
    assert_eq!(
        find(&scrape, "xlb_worker_rx_frames_total", &[("worker", "w1")]).value,
        Sampled::Counter(20.0)
    );
    assert_eq!(
        find(&scrape, "xlb_worker_umem_frames", &[("worker", "w0")]).value,
        Sampled::Gauge(4096.0)
    );
    let xdp = find(
        &scrape,
        "xlb_xdp_frames_total",
        &[("interface", "eth1"), ("verdict", "to_socket")],
    );
    assert_eq!(xdp.labels.get("xdp_mode"), Some("native"));
    assert_eq!(xdp.value, Sampled::Counter(30.0));
    assert_eq!(find(&scrape, "xlb_conntrack_entries", &[]).value, Sampled::Gauge(7.0));
    // L4 workers are listed by index; their samples carry the worker names.
    assert_eq!(
        find(&scrape, "xlb_worker_conntrack_entries", &[("worker", "w1")]).value,
        Sampled::Gauge(3.0)
    );
    let handoff = find(
        &scrape,
        "xlb_handoff_frames_total",
        &[("worker", "w0"), ("direction", "out")],
    );
    assert_eq!(handoff.value, Sampled::Counter(11.0));

    let web = find(&scrape, "xlb_listener_connections_total", &[("listener", "web")]);
    assert_eq!(web.labels.get("vip"), Some("10.0.0.10"));
    assert_eq!(web.labels.get("port"), Some("80"));
    assert_eq!(web.labels.get("protocol"), Some("tcp"));
    assert_eq!(web.value, Sampled::Counter(42.0));
    let rate = find(
        &scrape,
        "xlb_listener_new_connections_per_second",
        &[("listener", "web")],
    );
    assert_eq!(rate.value, Sampled::Gauge(3.0));
    let bytes = find(
        &scrape,
        "xlb_listener_bytes_total",
        &[("listener", "web"), ("direction", "out")],
    );
    assert_eq!(bytes.value, Sampled::Counter(900000.0));
    let info = find(&scrape, "xlb_listener_info", &[("listener", "web")]);
    assert_eq!(info.labels.get("scheduler"), Some("wrr"));

    let up = |server| {
        find(&scrape, "xlb_server_up", &[("listener", "web"), ("server", server)])
            .value
            .clone()
    };
    assert_eq!(up("10.1.0.1:8080"), Sampled::Gauge(1.0));
    assert_eq!(up("10.1.0.2:8080"), Sampled::Gauge(0.0));
    let active = find(&scrape, "xlb_server_active_connections", &[("server", "10.1.0.1:8080")]);
    assert_eq!(active.value, Sampled::Gauge(4.0));
    // Integers are written exactly, not rounded through f64.
    assert!(text.contains(
        "xlb_server_bytes_total{listener=\"web\",server=\"10.1.0.1:8080\",direction=\"out\"} 18446744073709551615\n"
    ));

    // The quote, backslash and newline of the second listener's name are escaped: its samples stay on one line
    // each and the label reads back as the original name.
    let dns = find(&scrape, "xlb_listener_no_server_total", &[("vip", "10.0.0.11")]);
    assert_eq!(dns.value, Sampled::Counter(5.0));
    let dropped = find(
        &scrape,
        "xlb_listener_drops_total",
        &[("vip", "10.0.0.11"), ("reason", "handoff_full")],
    );
    assert_eq!(dropped.value, Sampled::Counter(1.0));
    let name = dns.labels.get("listener").unwrap();
    assert_eq!(name, r#"say \"hi\"\\now\nplease"#);
    assert_eq!(unescape(name), "say \"hi\"\\now\nplease");
    let server = find(&scrape, "xlb_server_up", &[("server", "10.1.0.3:53")]);
    assert_eq!(
        unescape(server.labels.get("listener").unwrap()),
        "say \"hi\"\\now\nplease"
    );
}

#[test]
fn families_are_declared_once_and_grouped() {
    let text = render(&document());
    let scrape = parse(&text);
    let mut declared: Vec<(String, String)> = Vec::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(declared.iter().all(|(n, _)| n != name), "{name} declared twice");
            match kind {
                "counter" => assert!(name.ends_with("_total"), "counter {name}"),
                "gauge" => assert!(!name.ends_with("_total"), "gauge {name}"),
                "histogram" => assert_eq!(name, "xlb_worker_batch_duration_seconds"),
                other => panic!("unexpected type {other} for {name}"),
            }
            declared.push((name.to_string(), kind.to_string()));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(scrape.docs.contains_key(name), "HELP of {name}");
        } else {
            let mut name = line.split(['{', ' ']).next().unwrap().to_string();
            let (family, kind) = declared.last().expect("a sample before any TYPE");
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    if let Some(base) = name.strip_suffix(suffix) {
                        name = base.to_string();
                    }
                }
            }
            assert_eq!(&name, family, "sample of {name} outside its family");
            if current.as_ref() != Some(&name) {
                assert!(closed.insert(name.clone()), "samples of {name} are not grouped");
                current = Some(name);
            }
        }
    }
    assert_eq!(scrape.docs.len(), declared.len(), "one HELP per family");
    // Every sample was typed by its declaration.
    let untyped: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| !matches!(s.value, Sampled::Counter(_) | Sampled::Gauge(_) | Sampled::Histogram(_)))
        // prometheus-parse reads a histogram's `_sum` and `_count` as untyped.
        .filter(|s| !s.metric.starts_with("xlb_worker_batch_duration_seconds_"))
        .collect();
    assert!(untyped.is_empty(), "{untyped:?}");
    for family in [
        "xlb_drops_total",
        "xlb_xdp_frames_total",
        "xlb_server_up",
        "xlb_handoff_frames_total",
        "xlb_health_bad_checksum_total",
    ] {
        assert!(declared.iter().any(|(n, _)| n == family), "{family} missing");
    }
}

#[test]
fn an_empty_document_has_node_samples_only_and_l4_workers_keep_their_index() {
    let scrape = parse(&render(&StatsDoc::default()));
    assert!(scrape.samples.iter().all(|s| !s.metric.starts_with("xlb_worker_")
        && !s.metric.starts_with("xlb_listener_")
        && !s.metric.starts_with("xlb_server_")));
    assert_eq!(find(&scrape, "xlb_up", &[]).value, Sampled::Gauge(1.0));
    // An L4 worker index with no matching worker keeps its index as the label.
    let mut d = document();
    d.l4.workers[0].worker = 9;
    let scrape = parse(&render(&d));
    find(&scrape, "xlb_worker_conntrack_entries", &[("worker", "9")]);
}

#[test]
fn the_batch_histogram_is_cumulative_in_seconds() {
    let text = render(&document());
    assert!(
        text.contains("xlb_worker_batch_duration_seconds_bucket{worker=\"w0\",le=\"1e-06\"} 3\n"),
        "{text}"
    );
    assert!(text.contains("xlb_worker_batch_duration_seconds_bucket{worker=\"w0\",le=\"+Inf\"} 5\n"));
    assert!(text.contains("xlb_worker_batch_duration_seconds_count{worker=\"w0\"} 5\n"));
}

/// Sends a raw request to a running metrics server and returns (status, content type, body).
fn get(server: &MetricsServer, request: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(body_at)) = resp.parse(&raw) else {
        panic!("malformed response: {}", String::from_utf8_lossy(&raw));
    };
    let content_type = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .unwrap_or_default();
    (
        resp.code.unwrap(),
        content_type,
        String::from_utf8_lossy(&raw[body_at..]).into_owned(),
    )
}

#[test]
fn answers_http_requests() {
    // Over a lab's network, `tests/tests/control.rs` scrapes it with curl inside a namespace.
    let server = start("127.0.0.1:0".parse().unwrap(), Arc::new(document)).unwrap();
    let (status, content_type, body) = get(&server, "GET /metrics HTTP/1.1\r\nHost: xlb\r\n\r\n");
    assert_eq!(status, 200);
    assert!(content_type.starts_with(CONTENT_TYPE), "{content_type}");
    assert_eq!(body, render(&document()));
    assert_eq!(get(&server, "GET /metrics?x=1 HTTP/1.1\r\nHost: xlb\r\n\r\n").0, 200);
    assert_eq!(get(&server, "GET / HTTP/1.1\r\nHost: xlb\r\n\r\n").0, 200);
    assert_eq!(get(&server, "GET /nope HTTP/1.1\r\nHost: xlb\r\n\r\n").0, 404);
    assert_eq!(
        get(
            &server,
            "POST /metrics HTTP/1.1\r\nHost: xlb\r\nContent-Length: 0\r\n\r\n"
        )
        .0,
        405
    );
    assert_eq!(get(&server, "NOT HTTP\r\n\r\n").0, 400);
}

#[test]
fn an_address_that_cannot_be_bound_is_named() {
    // Not an address of this host: the bind fails, nothing is sent.
    let addr: SocketAddr = "198.18.255.254:9100".parse().unwrap();
    let err = start(addr, Arc::new(document)).err().unwrap();
    assert!(
        err.contains("node.metrics_address") && err.contains(&addr.to_string()),
        "{err}"
    );
}
