//! What the results file records besides measurements: parameters, versions, host name and date.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::lab::{self, GENERATOR_CORE, XLB_CORE};
use super::systems::{self, LAB_DIR_PLACEHOLDER, NFT_RULESET};
use super::SuiteOptions;

/// Everything that shaped the numbers, for the results file.
pub fn params(opts: &SuiteOptions, pinned: bool) -> Value {
    let scenarios: BTreeMap<&str, Vec<String>> = opts
        .scenarios
        .iter()
        .map(|s| (s.name(), s.generator_args(opts.run_duration(*s), opts.quick)))
        .collect();
    let pki = std::path::Path::new(LAB_DIR_PLACEHOLDER).join(lab::PKI_DIR);
    json!({
        "reps": opts.reps,
        "duration_s": opts.duration.as_secs_f64(),
        "order": "per repetition: xlb (L4 and L7 scenarios), xlb restarted pinned to one core (HTTPS scenarios), then kernel (L4 scenarios), nginx (L7, then HTTPS scenarios), haproxy (L7, then HTTPS scenarios); each system restarted between its L7 and its HTTPS scenarios",
        "intervals": opts
            .scenarios
            .iter()
            .filter_map(|s| s.intervals(opts.quick).map(|(n, secs)| (s.name(), json!({
                "count": n,
                "interval_s": secs,
                "before_each_system": "TIME_WAIT sockets in the servers' and client's namespaces removed (ss -K)",
            }))))
            .collect::<BTreeMap<_, _>>(),
        "lab": {
            "client": lab::CLIENT_CIDR,
            "lb_ext_kernel": lab::LB_EXT_KERNEL_CIDR,
            "lb_int": format!("{}/{}", lab::LB_INT_IP, lab::INT_PREFIX),
            "vip": lab::VIP,
            "servers": lab::SERVERS,
            "sinks": {"tcp_port": lab::TCP_PORT, "udp_port": lab::UDP_PORT, "http_port": lab::HTTP_PORT, "pinned": false},
            "offloads_off": ["cli0", "srv0"],
            "sysctls": {"client+servers": {"net.ipv4.ip_local_port_range": "1024 65000", "net.ipv4.tcp_tw_reuse": 1}},
        },
        "generator": {"core": GENERATOR_CORE, "pinned": pinned, "scenarios": scenarios},
        "xlb": {
            "core": XLB_CORE,
            "idle": "busy",
            "config": systems::xlb_config(systems::Setup::Standard, &pki, None),
            "https_rows": {
                "setup": "every thread of the xlb process pinned to the core with taskset -a after start; the worker \
                          sleeps when idle; one full-handshake thread and the resumption lane's one",
                "config": systems::xlb_config(systems::Setup::Tls, &pki, None),
            },
        },
        "xlb_ks": {
            "what": "xlb as in the HTTPS rows, the certificates without keys (a copy in LAB_DIR/ks-certs), every \
                     full handshake's signature made by xlb-keyserver over a Unix socket",
            "config": systems::xlb_config(
                systems::Setup::Tls,
                &std::path::Path::new(LAB_DIR_PLACEHOLDER).join(super::keyserver::CERTS_DIR),
                Some(&std::path::Path::new(LAB_DIR_PLACEHOLDER).join(super::keyserver::SOCKET)),
            ),
            "key_server": {
                "command": "taskset -c 1 xlb-keyserver --config LAB_DIR/keyserver.toml (in the lb namespace)",
                "config": super::keyserver::keyserver_config(
                    &std::path::Path::new(LAB_DIR_PLACEHOLDER).join(super::keyserver::KEYS_DIR),
                    &std::path::Path::new(LAB_DIR_PLACEHOLDER).join(super::keyserver::SOCKET),
                ),
                "cpu": "counted with xlb's in LB CPU (both processes' user+system time)",
            },
            "outage": {
                "loads": super::scenarios::outage_loads(),
                "kill_at_s": super::scenarios::OUTAGE_KILL_S,
                "restart_at_s": super::scenarios::OUTAGE_RESTART_S,
            },
        },
        "https": {
            "ports": {"ecdsa_p256": lab::VIP_HTTPS_ECDSA_PORT, "rsa_2048": lab::VIP_HTTPS_RSA_PORT},
            "server_name": lab::TLS_NAME,
            "certificates": "throw-away CA (P-256) made with openssl; the same leaf certificate and key for xlb, \
                             NGINX and HAProxy",
            "generator": "xlb-bench http --tls: rustls (ring) client, TLS 1.3 only, X25519, no certificate check \
                          (checked once by the probe)",
        },
        "kernel": {"nft_ruleset": NFT_RULESET, "ip_forward": 1, "vip_on": "ext0 (/32)"},
        "l7": {"vip_port": lab::VIP_L7_PORT, "backends": format!("the HTTP sinks on port {}", lab::HTTP_PORT)},
        "http2": {
            "vip_port": lab::VIP_H2C_PORT,
            "generator": "h2load (nghttp2-client) with prior knowledge (http:// URI), one thread pinned like xlb-bench; \
                          --log-file in the lab directory for the percentiles; generator.scenarios.http2_rps are its \
                          arguments",
            "systems": "xlb: an `http` listener on the port (h2c and HTTP/1.1); nginx: listen ... http2; haproxy: bind ... \
                        proto h2; all proxy to the HTTP sinks over HTTP/1.1 with keep-alive as in the L7 rows",
        },
        "nginx": {
            "core": XLB_CORE,
            "pinned_with": "taskset -c (master and its one worker)",
            "command": "nginx -c LAB_DIR/nginx.conf -g 'daemon off;'",
            "config": systems::nginx_config(std::path::Path::new(LAB_DIR_PLACEHOLDER), &pki),
            "vip_on": "ext0 (/32)",
        },
        "haproxy": {
            "core": XLB_CORE,
            "pinned_with": "taskset -c",
            "command": "haproxy -db -f LAB_DIR/haproxy.cfg",
            "config": systems::haproxy_config(&pki),
            "vip_on": "ext0 (/32)",
        },
    })
}

/// Kernel, nftables and xlb versions, and the machine.
pub fn versions(host: &str) -> Value {
    let first_line = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
    };
    // `nginx -v` prints to stderr.
    let any_output = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| first_nonempty_line(&[o.stdout, o.stderr].concat()))
    };
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    });
    json!({
        "uname_r": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).ok(),
        "nft": first_line("nft", &["--version"]),
        "nginx": any_output("nginx", &["-v"]),
        "haproxy": any_output("haproxy", &["-v"]),
        "h2load": first_line("h2load", &["--version"]),
        "xlb": env!("CARGO_PKG_VERSION"),
        "git": first_line("git", &["rev-parse", "--short", "HEAD"]),
        "host": host,
        "cpu_model": cpu_model,
        "cpus": std::thread::available_parallelism().map_or(0, usize::from),
    })
}

/// The first non-empty line of `bytes` (lossy UTF-8), trimmed.
fn first_nonempty_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// The host name (from the kernel).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

/// `name` with anything but ASCII letters, digits, `-`, `_` and `.` replaced, for a file name.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `YYYY-MM-DD` (UTC) of a Unix time in seconds.
pub fn utc_date(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Proleptic Gregorian calendar date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift to 0000-03-01 so leap days fall at the end of each 400-year era's years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..11
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_709_251_199), "2024-02-29");
        assert_eq!(utc_date(1_735_689_600), "2025-01-01");
    }

    #[test]
    fn version_lines() {
        assert_eq!(
            first_nonempty_line(b"\nnginx version: nginx/1.22.1\n").as_deref(),
            Some("nginx version: nginx/1.22.1")
        );
        assert_eq!(first_nonempty_line(b" \n"), None);
    }

    #[test]
    fn params_carry_the_proxy_configs() {
        let opts = SuiteOptions::new(true, None, None, "x".into(), false).unwrap();
        let p = params(&opts, true);
        let nginx = p["nginx"]["config"].as_str().unwrap();
        assert!(
            nginx.contains("pid LAB_DIR/nginx.pid;") && nginx.contains("keepalive 768;"),
            "{nginx}"
        );
        assert!(p["haproxy"]["config"].as_str().unwrap().contains("http-reuse safe"));
        assert_eq!(p["l7"]["vip_port"], 8080);
        let scenarios = p["generator"]["scenarios"].as_object().unwrap();
        assert!(scenarios.contains_key("http_rps_keepalive") && scenarios.contains_key("http_cps"));
    }

    #[test]
    fn file_names() {
        assert_eq!(file_safe("a b/c.d"), "a_b_c.d");
    }
}
