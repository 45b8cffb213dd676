//! Tests of the netns lab harness itself, against the real kernel (needs root).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use xlb_tests::lab::{netns_list, reap_stale_namespaces, wait_until, wait_until_ok, workspace_bin, Lab, Netns};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Two namespaces joined by one veth, with addresses `a` and `b` on `eth0`.
fn pair(lab: &Lab, a: &str, b: &str) -> (Netns, Netns) {
    let left = lab.netns("left").unwrap();
    let right = lab.netns("right").unwrap();
    lab.veth((&left, "eth0"), (&right, "eth0")).unwrap();
    left.addr("eth0", a).unwrap();
    right.addr("eth0", b).unwrap();
    (left, right)
}

/// Whether `pid` names a live (not zombie) process.
fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

fn has_address(ns: &Netns, ifname: &str, addr: &str) -> bool {
    ns.ip(&["-o", "addr", "show", "dev", ifname]).unwrap().contains(addr)
}

#[test]
fn veth_pair_pings_both_ways() {
    let lab = Lab::new("veth_pair_pings_both_ways").unwrap();
    let (a, b) = pair(&lab, "198.18.0.1/30", "198.18.0.2/30");

    a.ping("198.18.0.2").unwrap();
    b.ping("198.18.0.1").unwrap();

    // After the ping, b has resolved a's MAC: it matches what `mac` reports.
    let mac_a = a.mac("eth0").unwrap();
    let mac_b = b.mac("eth0").unwrap();
    assert_ne!(mac_a, mac_b);
    let neigh = b.ip(&["neigh", "show", "198.18.0.1"]).unwrap();
    let shown = mac_a.map(|byte| format!("{byte:02x}")).join(":");
    assert!(neigh.contains(&shown), "{neigh:?} lacks {shown}");

    // Nothing of the lab appears in the root namespace.
    let root_links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    assert!(!root_links.contains(a.name()) && !root_links.contains(b.name()));
}

#[test]
fn bridge_joins_three_namespaces() {
    let lab = Lab::new("bridge_joins_three_namespaces").unwrap();
    let switch = lab.netns("switch").unwrap();
    let hosts: Vec<Netns> = (1..=3)
        .map(|i| {
            let host = lab.netns(&format!("h{i}")).unwrap();
            lab.veth((&host, "eth0"), (&switch, &format!("port{i}"))).unwrap();
            host.addr("eth0", &format!("198.18.1.{i}/24")).unwrap();
            host
        })
        .collect();
    lab.bridge(&switch, "br0", &["port1", "port2", "port3"]).unwrap();

    let ports = switch.ip(&["-o", "link", "show", "master", "br0"]).unwrap();
    assert_eq!(ports.lines().count(), 3, "bridge ports: {ports}");
    for (i, host) in hosts.iter().enumerate() {
        for j in (1..=3).filter(|&j| j != i + 1) {
            host.ping(&format!("198.18.1.{j}")).unwrap();
        }
    }
}

#[test]
fn socat_echo_server_answers_across_namespaces() {
    let lab = Lab::new("socat_echo_server").unwrap();
    let (server_ns, client_ns) = pair(&lab, "198.18.2.1/24", "198.18.2.2/24");

    let server = lab
        .spawn(
            &server_ns,
            "socat",
            &["-d", "TCP-LISTEN:7000,bind=198.18.2.1,reuseaddr,fork", "PIPE"],
        )
        .unwrap();
    server_ns.wait_tcp_listen(7000, TIMEOUT).unwrap();
    server.check_running().unwrap();

    let reply = client_ns
        .run_input("socat", &["-", "TCP:198.18.2.1:7000"], b"hello xlb\n")
        .unwrap();
    assert_eq!(reply, "hello xlb\n");

    // socat exits on SIGTERM with status 143 (128 + 15) or by the signal.
    let status = server.stop(Duration::from_secs(2)).unwrap();
    assert!(!status.success(), "{status}");
    assert!(!server.is_running());
    assert!(server.signal(libc::SIGTERM).is_err());
}

#[test]
fn proc_captures_output_and_waits_boundedly() {
    let lab = Lab::new("proc_captures_output").unwrap();
    let ns = lab.netns("solo").unwrap();

    let echo = lab
        .spawn(&ns, "sh", &["-c", "echo to-out; echo to-err >&2; exit 3"])
        .unwrap();
    let status = echo.wait_timeout(TIMEOUT).unwrap().expect("sh exited");
    assert_eq!(status.code(), Some(3));
    assert_eq!(echo.stdout(), "to-out\n");
    assert_eq!(echo.stderr(), "to-err\n");
    let err = format!("{:#}", echo.check_running().unwrap_err());
    assert!(err.contains("to-err") && err.contains("exit status: 3"), "{err}");

    let sleeper = lab.spawn(&ns, "sleep", &["1000"]).unwrap();
    let start = Instant::now();
    assert_eq!(sleeper.wait_timeout(Duration::from_millis(200)).unwrap(), None);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(sleeper.is_running());
    // The spawned pid is sleep's own pid: `ip netns exec` execs the program.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", sleeper.pid())).unwrap();
    assert_eq!(comm.trim(), "sleep");
    sleeper.kill();
    assert!(!sleeper.is_running());
    assert!(!pid_alive(sleeper.pid()));
}

#[test]
fn drop_removes_namespaces_and_processes() {
    let lab = Lab::new("drop_removes").unwrap();
    let (a, b) = pair(&lab, "198.18.3.1/30", "198.18.3.2/30");
    let names = [a.name().to_owned(), b.name().to_owned()];
    let listed = netns_list().unwrap();
    assert!(names.iter().all(|n| listed.contains(n)), "{listed:?}");

    // A spawned process whose Proc outlives the lab, and a background child
    // the lab never saw.
    let sleeper = lab.spawn(&a, "sleep", &["1000"]).unwrap();
    let parent = lab.spawn(&b, "sh", &["-c", "sleep 1000 & echo $!; wait"]).unwrap();
    let orphan: u32 = wait_until_ok(TIMEOUT, "background pid", || Ok(parent.stdout().trim().parse()?)).unwrap();
    assert!(pid_alive(orphan));
    let dir = lab.dir().to_owned();
    assert!(dir.is_dir());

    drop(lab);

    let listed = netns_list().unwrap();
    assert!(names.iter().all(|n| !listed.contains(n)), "{listed:?}");
    assert!(!sleeper.is_running());
    assert!(!parent.is_running());
    wait_until(TIMEOUT, "background sleep to die", || !pid_alive(orphan)).unwrap();
    if std::env::var("XLB_LAB_KEEP").as_deref() != Ok("1") {
        assert!(!dir.exists());
    }
    assert!(a.ping("198.18.3.2").is_err(), "namespace handle still works");
}

#[test]
fn drop_during_panic_removes_namespaces() {
    let created = Mutex::new(Vec::new());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::new("drop_during_panic").unwrap();
        let (a, b) = pair(&lab, "198.18.4.1/30", "198.18.4.2/30");
        let proc = lab.spawn(&a, "sleep", &["1000"]).unwrap();
        created
            .lock()
            .unwrap()
            .extend([a.name().to_owned(), b.name().to_owned()]);
        let pid = proc.pid();
        std::mem::forget(proc); // only the lab can stop it now
        created.lock().unwrap().push(pid.to_string());
        panic!("test body panics");
    }));
    assert!(result.is_err());

    let created = created.into_inner().unwrap();
    assert_eq!(created.len(), 3);
    let listed = netns_list().unwrap();
    for name in &created[..2] {
        assert!(!listed.contains(name), "{name} survived: {listed:?}");
    }
    assert!(!pid_alive(created[2].parse().unwrap()));
}

#[test]
fn namespaces_of_dead_processes_are_reaped() {
    // A namespace named like a lab's, created by a process that has exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = format!("xlb{dead_pid:x}n0-stale");
    let ip = |args: &[&str]| {
        let status = std::process::Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}: {status}");
    };
    ip(&["netns", "add", &stale]);
    // Something unrelated that merely starts with the prefix is left alone.
    let unrelated = format!("xlbench-{}", std::process::id());
    ip(&["netns", "add", &unrelated]);

    let reaped = reap_stale_namespaces();
    let listed = netns_list().unwrap();
    ip(&["netns", "delete", &unrelated]);

    // A concurrent Lab::new may have reaped it first; either way it is gone.
    reaped.unwrap();
    assert!(!listed.contains(&stale), "{listed:?}");
    assert!(listed.contains(&unrelated), "{listed:?}");
}

#[test]
fn addresses_outside_lab_range_are_refused() {
    let lab = Lab::new("addresses_refused").unwrap();
    let ns = lab.netns("guard").unwrap();
    lab.veth((&ns, "eth0"), (&ns, "eth1")).unwrap();

    for bad in [
        "10.0.0.1/24",
        "192.168.1.1/24",
        "198.17.255.254/24",
        "198.20.0.1/24",
        "198.18.0.1/8",
        "2001:db8::1/64",
        "not-an-address",
    ] {
        let err = ns.addr("eth0", bad).unwrap_err().to_string();
        assert!(err.contains("refused"), "{bad}: {err}");
        assert!(!has_address(&ns, "eth0", bad.split('/').next().unwrap()));
    }
    ns.addr("eth0", "198.19.255.254/24").unwrap();
    assert!(has_address(&ns, "eth0", "198.19.255.254/24"));

    assert!(ns.route(&["10.0.0.0/8", "dev", "eth0"]).is_err());
    assert!(ns.route(&["0.0.0.0/0", "dev", "eth0"]).is_err());
    assert!(ns.ping("10.0.0.1").is_err());
    ns.route(&["198.18.9.0/24", "via", "198.19.255.1"]).unwrap();
    let routes = ns.ip(&["route", "show"]).unwrap();
    assert!(routes.contains("198.18.9.0/24 via 198.19.255.1"), "{routes}");
    assert!(!routes.contains("10.0.0.0"), "{routes}");
}

#[test]
fn failed_commands_report_command_status_and_stderr() {
    let lab = Lab::new("failed_commands").unwrap();
    let ns = lab.netns("errs").unwrap();

    let err = format!("{:#}", ns.ip(&["link", "set", "nope0", "up"]).unwrap_err());
    assert!(err.contains(&format!("ip -n {} link set nope0 up", ns.name())), "{err}");
    assert!(err.contains("exit status: 1"), "{err}");
    assert!(err.contains("nope0") && err.contains("stderr:"), "{err}");

    let err = format!("{:#}", ns.run("sh", &["-c", "echo oops >&2; exit 7"]).unwrap_err());
    assert!(err.contains("sh -c 'echo oops >&2; exit 7'"), "{err}");
    assert!(err.contains("exit status: 7") && err.contains("oops"), "{err}");

    // `output` reports without judging the status.
    let out = ns.output("sh", &["-c", "echo fine; exit 5"]).unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(out.stdout, b"fine\n");

    assert!(ns.sysctl("kernel.hostname", "x").is_err());
    assert!(lab.netns("bad/label").is_err());
    assert!(lab.veth((&ns, "much-too-long-name"), (&ns, "b")).is_err());
}

#[test]
fn sysctl_and_mtu_stay_inside_the_namespace() {
    let lab = Lab::new("sysctl_and_mtu").unwrap();
    let ns = lab.netns("knobs").unwrap();
    lab.veth((&ns, "eth0"), (&ns, "eth1")).unwrap();

    let root_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let flipped = if ns.sysctl_get("net.ipv4.ip_forward").unwrap() == "1" {
        "0"
    } else {
        "1"
    };
    ns.sysctl("net.ipv4.ip_forward", flipped).unwrap();
    assert_eq!(ns.sysctl_get("net.ipv4.ip_forward").unwrap(), flipped);
    let root_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(root_before, root_after);

    ns.set_mtu("eth0", 1400).unwrap();
    let link = ns.ip(&["-o", "link", "show", "dev", "eth0"]).unwrap();
    assert!(link.contains("mtu 1400"), "{link}");

    if ns.disable_offloads("eth0").unwrap() {
        let features = ns.run("ethtool", &["-k", "eth0"]).unwrap();
        assert!(
            features.contains("tx-checksumming: off"),
            "offloads still on: {features}"
        );
    }
}

#[test]
fn concurrent_labs_get_distinct_namespaces() {
    let names: Vec<String> = thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|i| {
                scope.spawn(move || {
                    let lab = Lab::new("concurrent").unwrap();
                    let (a, _b) = pair(&lab, "198.18.5.1/30", "198.18.5.2/30");
                    // Same labels and addresses in both labs, no interference.
                    a.ping("198.18.5.2").unwrap();
                    assert_eq!(lab.namespaces().len(), 2, "lab {i}");
                    a.name().to_owned()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_ne!(names[0], names[1]);
    assert!(names.iter().all(|n| n.ends_with("-left")), "{names:?}");
}

#[test]
fn wait_until_is_bounded_and_names_the_wait() {
    let start = Instant::now();
    let err = wait_until(Duration::from_millis(100), "the impossible", || false).unwrap_err();
    let elapsed = start.elapsed();
    assert!(err.to_string().contains("the impossible"), "{err}");
    assert!(elapsed >= Duration::from_millis(100) && elapsed < Duration::from_secs(1));

    let mut calls = 0;
    wait_until(TIMEOUT, "third call", || {
        calls += 1;
        calls == 3
    })
    .unwrap();
    assert_eq!(calls, 3);

    let err = wait_until_ok(Duration::from_millis(50), "a probe", || -> anyhow::Result<()> {
        anyhow::bail!("probe says no")
    })
    .unwrap_err();
    assert!(err.to_string().contains("probe says no"), "{err}");
}

#[test]
fn workspace_bin_finds_built_binaries() {
    if std::env::var_os("XLB_BIN_DIR").is_none() {
        let found = workspace_bin("xlb-demo").unwrap();
        assert_eq!(
            found.canonicalize().unwrap(),
            Path::new(env!("CARGO_BIN_EXE_xlb-demo")).canonicalize().unwrap()
        );
    }
    let err = workspace_bin("no-such-xlb-binary").unwrap_err().to_string();
    assert!(err.contains("cargo build --workspace --bins"), "{err}");
}
