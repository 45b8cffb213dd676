//! Results: per-run records, medians, the comparison table and the files written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::cpu::CpuUsage;
use super::intervals;
use super::rawloop::RawLoop;
use super::scenarios::{Better, Layer, Scenario, LATENCY_PERCENTILES};
use super::svg::{self, LatencySeries, ThroughputPanel};
use super::systems::{StopReport, SystemKind};

/// One generator run.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Repetition, from 0.
    pub rep: usize,
    /// The system measured.
    pub system: SystemKind,
    /// The scenario.
    pub scenario: Scenario,
    /// The generator command line.
    pub command: String,
    /// Metric values (see [`Scenario::metrics`]).
    pub metrics: BTreeMap<String, f64>,
    /// CPU seconds during the run.
    pub cpu: CpuUsage,
    /// The generator's raw JSON report.
    pub generator: Value,
}

/// What a system left behind when it was stopped after a repetition.
#[derive(Debug, Clone, Serialize)]
pub struct SystemRecord {
    /// Repetition, from 0.
    pub rep: usize,
    /// The system.
    pub system: SystemKind,
    /// Its final stats.
    #[serde(flatten)]
    pub stop: StopReport,
}

/// One row of the comparison table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: &'static str,
    /// L4 (xlb against the kernel) or L7 (xlb against NGINX and HAProxy).
    pub layer: Layer,
    /// Metric key.
    pub metric: &'static str,
    /// Label shown in the table.
    pub label: &'static str,
    /// Median over the repetitions per system of the scenario's layer (`null`: not measured).
    pub values: BTreeMap<&'static str, Option<f64>>,
    /// `xlb / peer` per peer of the layer, when both are known and the peer's is not 0.
    pub xlb_vs: BTreeMap<&'static str, Option<f64>>,
    /// `xlb-ks / peer` per [`Layer::key_server_peers`] (HTTPS rows; empty elsewhere).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ks_vs: BTreeMap<&'static str, Option<f64>>,
    /// Which direction is better.
    pub better: Better,
}

impl Row {
    /// The median of `system` (`None` if not measured or not of this row's layer).
    pub fn value(&self, system: SystemKind) -> Option<f64> {
        self.values.get(system.name()).copied().flatten()
    }

    /// `xlb / peer` (`None` if either is unknown or the peer's is 0).
    pub fn ratio(&self, peer: SystemKind) -> Option<f64> {
        self.xlb_vs.get(peer.name()).copied().flatten()
    }

    /// `xlb-ks / peer` (`None` if either is unknown or the peer's is 0).
    pub fn ks_ratio(&self, peer: SystemKind) -> Option<f64> {
        self.ks_vs.get(peer.name()).copied().flatten()
    }
}

/// `x / peer`, when both are known and `peer` is not 0.
pub fn ratio(x: Option<f64>, peer: Option<f64>) -> Option<f64> {
    match (x, peer) {
        (Some(x), Some(p)) if p != 0.0 => Some(x / p),
        _ => None,
    }
}

/// Medians by scenario, then system, then metric.
pub type Medians = BTreeMap<&'static str, BTreeMap<&'static str, BTreeMap<&'static str, f64>>>;

/// The median of `values` (mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Values of `metric` over the repetitions of (`scenario`, `system`), in repetition order.
pub fn series(runs: &[RunRecord], scenario: Scenario, system: SystemKind, metric: &str) -> Vec<f64> {
    let mut selected: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.scenario == scenario && r.system == system)
        .collect();
    selected.sort_by_key(|r| r.rep);
    selected.iter().filter_map(|r| r.metrics.get(metric).copied()).collect()
}

/// Medians of every metric of every scenario and system.
pub fn medians(runs: &[RunRecord]) -> Medians {
    let mut out = Medians::new();
    for scenario in Scenario::ALL {
        for &system in scenario.systems() {
            let per_metric = scenario
                .metrics()
                .iter()
                .filter_map(|m| median(&series(runs, scenario, system, m.key)).map(|v| (m.key, v)))
                .collect();
            out.entry(scenario.name())
                .or_default()
                .insert(system.name(), per_metric);
        }
    }
    out
}

/// The comparison table's rows: every metric of every scenario that was run, with the medians of the
/// scenario's systems and xlb's ratio to each peer.
pub fn table(medians: &Medians) -> Vec<Row> {
    let mut rows = Vec::new();
    for scenario in Scenario::ALL {
        let get = |system: SystemKind, key: &str| {
            medians
                .get(scenario.name())
                .and_then(|s| s.get(system.name()))
                .and_then(|m| m.get(key))
                .copied()
        };
        let layer = scenario.layer();
        for m in scenario.metrics() {
            let values: BTreeMap<&'static str, Option<f64>> =
                layer.systems().iter().map(|&s| (s.name(), get(s, m.key))).collect();
            if values.values().all(Option::is_none) {
                continue; // scenario not run
            }
            let xlb = get(SystemKind::Xlb, m.key);
            let xlb_vs = layer
                .peers()
                .iter()
                .map(|&p| (p.name(), ratio(xlb, get(p, m.key))))
                .collect();
            let ks = get(SystemKind::XlbKs, m.key);
            let ks_vs = layer
                .key_server_peers()
                .iter()
                .map(|&p| (p.name(), ratio(ks, get(p, m.key))))
                .collect();
            rows.push(Row {
                scenario: scenario.name(),
                layer,
                metric: m.key,
                label: m.label,
                values,
                xlb_vs,
                ks_vs,
                better: m.better,
            });
        }
    }
    rows
}

/// A table number: integers for large values, a few decimals for small ones.
pub fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The raw-loop summary line, with xlb's UDP packet rate as a fraction of the loop's.
pub fn raw_loop_line(raw: &RawLoop, medians: &Medians) -> String {
    match raw.reflected_pps {
        Some(pps) => {
            let xlb = medians
                .get(Scenario::UdpPps64.name())
                .and_then(|s| s.get(SystemKind::Xlb.name()))
                .and_then(|m| m.get("pps"))
                .copied();
            let fraction = xlb_loop_fraction(raw, medians)
                .map(|f| {
                    format!(
                        "; xlb udp_pps_64 forwards {} packets/s (2 per reply) = {:.1}% of it",
                        fmt_value(xlb.map(|x| 2.0 * x)),
                        100.0 * f
                    )
                })
                .unwrap_or_default();
            format!(
                "raw AF_XDP loop ({}): {} frames/s reflected{fraction}",
                raw.command,
                fmt_value(Some(pps))
            )
        }
        None => format!(
            "raw AF_XDP loop ({}): n/a ({})",
            if raw.command.is_empty() {
                "xlb-perf xdp-loop"
            } else {
                &raw.command
            },
            raw.error.as_deref().unwrap_or("no number")
        ),
    }
}

/// Packets xlb forwards per second in `udp_pps_64` (two per reply: the request and the reply) divided by
/// the raw loop's reflected frames per second.
pub fn xlb_loop_fraction(raw: &RawLoop, medians: &Medians) -> Option<f64> {
    let pps = medians
        .get(Scenario::UdpPps64.name())?
        .get(SystemKind::Xlb.name())?
        .get("pps")?;
    let reflected = raw.reflected_pps.filter(|r| *r > 0.0)?;
    Some(2.0 * pps / reflected)
}

/// For every scenario measured in intervals and every repetition: the rate of each interval for both
/// systems, each system's total and last/first ratio, and xlb's total over the kernel's.
pub fn interval_lines(runs: &[RunRecord]) -> Vec<String> {
    let mut lines = Vec::new();
    for scenario in Scenario::ALL {
        let mut reps: Vec<usize> = runs.iter().filter(|r| r.scenario == scenario).map(|r| r.rep).collect();
        reps.dedup();
        for rep in reps {
            let of = |system: SystemKind| {
                runs.iter()
                    .find(|r| r.scenario == scenario && r.system == system && r.rep == rep)
            };
            let Some(secs) = runs
                .iter()
                .find(|r| r.scenario == scenario && r.rep == rep)
                .and_then(|r| r.generator["interval_s"].as_f64())
            else {
                continue;
            };
            lines.push(format!(
                "{}, rep {}: connections/s per {secs:.0} s interval",
                scenario.name(),
                rep + 1
            ));
            let mut totals = Vec::new();
            for &system in scenario.systems() {
                let Some(run) = of(system) else { continue };
                let rates: Vec<String> = intervals::interval_rates(&run.generator)
                    .iter()
                    .map(|r| format!("{:>7}", fmt_value(Some(*r))))
                    .collect();
                let total = run.generator.pointer("/counts/completed").and_then(Value::as_f64);
                totals.push(total);
                lines.push(format!(
                    "  {:<7}{}   total {}, last/first interval {}",
                    system.name(),
                    rates.join(""),
                    fmt_value(total),
                    run.generator["last_vs_first"]
                        .as_f64()
                        .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
                ));
            }
            if let [Some(x), Some(k)] = totals[..] {
                if k > 0.0 {
                    lines.push(format!("  xlb total / kernel total = {:.2}", x / k));
                }
            }
        }
    }
    lines
}

/// The table as text, followed by `notes` (one line each): one block per layer that has rows — L4 with
/// columns xlb, kernel and `xlb/kernel`, L7 with xlb, nginx, haproxy, `xlb/nginx` and `xlb/haproxy` —
/// separated by an empty line.
pub fn render_table(rows: &[Row], notes: &[String]) -> String {
    let mut out = String::new();
    for layer in [Layer::L4, Layer::L7, Layer::Https] {
        let block: Vec<&Row> = rows.iter().filter(|r| r.layer == layer).collect();
        if block.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        render_block(&mut out, layer, &block);
    }
    for note in notes {
        let _ = writeln!(out, "{note}");
    }
    out
}

/// One layer's rows as an aligned text table.
fn render_block(out: &mut String, layer: Layer, rows: &[&Row]) {
    let mut header: Vec<String> = vec!["scenario".into(), "metric".into()];
    header.extend(layer.systems().iter().map(|s| s.name().to_owned()));
    header.extend(layer.peers().iter().map(|p| format!("xlb/{}", p.name())));
    header.extend(layer.key_server_peers().iter().map(|p| format!("ks/{}", p.name())));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![r.scenario.to_owned(), r.label.to_owned()];
            row.extend(layer.systems().iter().map(|&s| fmt_value(r.value(s))));
            row.extend(
                layer
                    .peers()
                    .iter()
                    .map(|&p| r.ratio(p).map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))),
            );
            row.extend(
                layer
                    .key_server_peers()
                    .iter()
                    .map(|&p| r.ks_ratio(p).map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))),
            );
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, row: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            if i > 0 {
                text.push_str("  ");
            }
            if i < 2 {
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', pad));
            } else {
                text.extend(std::iter::repeat_n(' ', pad));
                text.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(out, &header.iter().map(String::as_str).collect::<Vec<_>>());
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    let _ = writeln!(out, "{}", "-".repeat(total));
    let mut last = "";
    for row in &cells {
        let scenario = if row[0] == last { "" } else { row[0].as_str() };
        last = &row[0];
        let mut shown: Vec<&str> = vec![scenario];
        shown.extend(row[1..].iter().map(String::as_str));
        line(out, &shown);
    }
}

/// Paths of the files written for one suite run.
#[derive(Debug, Clone)]
pub struct OutputFiles {
    /// `<date>-<host>.json`.
    pub json: PathBuf,
    /// `<date>-<host>-latency.svg`.
    pub latency_svg: PathBuf,
    /// `<date>-<host>-throughput.svg`.
    pub throughput_svg: PathBuf,
}

impl OutputFiles {
    /// The files for `stem` (`<date>-<host>`) in `dir`.
    pub fn new(dir: &Path, stem: &str) -> OutputFiles {
        OutputFiles {
            json: dir.join(format!("{stem}.json")),
            latency_svg: dir.join(format!("{stem}-latency.svg")),
            throughput_svg: dir.join(format!("{stem}-throughput.svg")),
        }
    }
}

/// Writes the JSON document and both plots.
pub fn write_files(
    files: &OutputFiles,
    document: &Value,
    runs: &[RunRecord],
    medians: &Medians,
    subtitle: &str,
) -> Result<()> {
    if let Some(dir) = files.json.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let write =
        |path: &Path, text: &str| fs::write(path, text).with_context(|| format!("cannot write {}", path.display()));
    write(&files.json, &(serde_json::to_string_pretty(document)? + "\n"))?;
    write(&files.latency_svg, &latency_svg(runs, medians, subtitle))?;
    write(&files.throughput_svg, &throughput_svg(runs, medians, subtitle))?;
    Ok(())
}

fn latency_svg(runs: &[RunRecord], medians: &Medians, subtitle: &str) -> String {
    let points: Vec<(&str, Option<f64>)> = LATENCY_PERCENTILES.iter().map(|(_, label, q)| (*label, *q)).collect();
    let series: Vec<LatencySeries> = Scenario::Latency
        .systems()
        .iter()
        .map(|&system| {
            let med = medians.get(Scenario::Latency.name()).and_then(|s| s.get(system.name()));
            let median = LATENCY_PERCENTILES
                .iter()
                .map(|(key, _, _)| med.and_then(|m| m.get(key)).copied().unwrap_or(0.0))
                .collect();
            let per_key: Vec<Vec<f64>> = LATENCY_PERCENTILES
                .iter()
                .map(|(key, _, _)| series(runs, Scenario::Latency, system, key))
                .collect();
            let n = per_key.iter().map(Vec::len).min().unwrap_or(0);
            let reps = (0..n).map(|r| per_key.iter().map(|v| v[r]).collect()).collect();
            LatencySeries {
                label: system.name().to_owned(),
                median,
                reps,
            }
        })
        .collect();
    let title = format!(
        "UDP round-trip latency through the LB (open loop, {} req/s, 64 B)",
        super::scenarios::LATENCY_RATE
    );
    svg::latency_plot(&title, subtitle, &points, &series)
}

fn throughput_svg(runs: &[RunRecord], medians: &Medians, subtitle: &str) -> String {
    let panel = |scenario: Scenario, title: &str| {
        let key = scenario.headline();
        let systems = scenario.systems();
        ThroughputPanel {
            title: title.to_owned(),
            systems: systems
                .iter()
                .map(|&s| (s.name().to_owned(), series(runs, scenario, s, key)))
                .collect(),
            colors: systems.iter().map(|&s| system_color(s)).collect(),
            medians: systems
                .iter()
                .map(|s| {
                    medians
                        .get(scenario.name())
                        .and_then(|m| m.get(s.name()))
                        .and_then(|m| m.get(key))
                        .copied()
                        .unwrap_or(0.0)
                })
                .collect(),
        }
    };
    let panels: Vec<ThroughputPanel> = [
        panel(Scenario::TcpCps, "tcp_cps: connections/s"),
        panel(Scenario::UdpPps64, "udp_pps_64: replies/s (64 B)"),
        panel(
            Scenario::TcpCpsServerClose,
            "tcp_cps_server_close: connections/s (all intervals)",
        ),
        panel(Scenario::HttpRpsKeepalive, "http_rps_keepalive: requests/s (L7)"),
        panel(Scenario::HttpCps, "http_cps: connections/s (L7)"),
        panel(Scenario::Http2Rps, "http2_rps: requests/s (L7, h2c)"),
        panel(Scenario::HttpsRpsKeepalive, "https_rps_keepalive: requests/s"),
        panel(Scenario::TlsHandshakesEcdsa, "tls_handshakes_ecdsa: full handshakes/s"),
        panel(Scenario::TlsHandshakesRsa, "tls_handshakes_rsa: full handshakes/s"),
        panel(Scenario::TlsResumed, "tls_resumed: resumed handshakes/s"),
    ]
    .into_iter()
    .filter(|p| p.systems.iter().any(|(_, v)| !v.is_empty()))
    .collect();
    svg::throughput_plot("Throughput through the LB per repetition", subtitle, &panels)
}

/// The colour of `system` in every plot.
pub fn system_color(system: SystemKind) -> &'static str {
    svg::COLORS[SystemKind::ALL.iter().position(|&s| s == system).unwrap_or(0) % svg::COLORS.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn raw_loop_line_with_and_without_a_number() {
        let mut m = Medians::new();
        m.entry("udp_pps_64")
            .or_default()
            .insert("xlb", [("pps", 100_000.0)].into_iter().collect());
        let raw = RawLoop {
            reflected_pps: Some(1_000_000.0),
            command: "xlb-perf xdp-loop".into(),
            report: None,
            error: None,
        };
        assert_eq!(xlb_loop_fraction(&raw, &m), Some(0.2));
        assert!(raw_loop_line(&raw, &m).contains("20.0% of it"));
        let missing = RawLoop {
            reflected_pps: None,
            error: Some("workspace binary `xlb-perf` not found".into()),
            ..raw
        };
        assert_eq!(xlb_loop_fraction(&missing, &m), None);
        assert!(raw_loop_line(&missing, &m).contains("n/a (workspace binary"));
    }

    #[test]
    fn interval_lines_show_both_series_and_the_ratio() {
        let run = |system, completed: f64, rates: &[f64]| RunRecord {
            rep: 0,
            system,
            scenario: Scenario::TcpCpsServerClose,
            command: String::new(),
            metrics: BTreeMap::new(),
            cpu: CpuUsage::sum(&[]),
            generator: serde_json::json!({
                "interval_s": 10.0,
                "counts": {"completed": completed},
                "last_vs_first": rates[rates.len() - 1] / rates[0],
                "intervals": rates.iter().map(|r| serde_json::json!({"rate": r})).collect::<Vec<_>>(),
            }),
        };
        let runs = [
            run(SystemKind::Xlb, 50_000.0, &[5115.0, 37.0]),
            run(SystemKind::Kernel, 200_000.0, &[15000.0, 15010.0]),
        ];
        let lines = interval_lines(&runs);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("tcp_cps_server_close, rep 1: connections/s per 10 s interval"));
        assert!(
            lines[1].contains("5115") && lines[1].contains("37.0") && lines[1].contains("last/first interval 0.01")
        );
        assert!(lines[2].starts_with("  kernel") && lines[2].contains("total 200000"));
        assert_eq!(lines[3], "  xlb total / kernel total = 0.25");
        // Scenarios run once per repetition give no lines.
        let mut single = runs[0].clone();
        single.scenario = Scenario::TcpCps;
        single.generator = serde_json::json!({"rate": 1.0});
        assert!(interval_lines(&[single]).is_empty());
    }

    #[test]
    fn table_has_every_metric_and_ratios() {
        let mut m = Medians::new();
        for s in Scenario::ALL {
            for &sys in s.systems() {
                let v = match sys {
                    SystemKind::Xlb => 2.0,
                    SystemKind::Kernel | SystemKind::Nginx => 4.0,
                    SystemKind::Haproxy => 1.0,
                    SystemKind::XlbKs => 8.0,
                };
                let metrics = s.metrics().iter().map(|d| (d.key, v)).collect();
                m.entry(s.name()).or_default().insert(sys.name(), metrics);
            }
        }
        let rows = table(&m);
        let n: usize = Scenario::ALL.iter().map(|s| s.metrics().len()).sum();
        assert_eq!(rows.len(), n);
        for r in &rows {
            match r.layer {
                Layer::L4 => {
                    assert_eq!(r.ratio(SystemKind::Kernel), Some(0.5));
                    assert_eq!(r.xlb_vs.len(), 1);
                    assert_eq!(r.value(SystemKind::Nginx), None);
                }
                Layer::L7 => {
                    assert_eq!(r.ratio(SystemKind::Nginx), Some(0.5));
                    assert_eq!(r.ratio(SystemKind::Haproxy), Some(2.0));
                    assert_eq!(r.ratio(SystemKind::Kernel), None);
                    assert_eq!(r.values.len(), 3);
                    assert!(r.ks_vs.is_empty());
                }
                Layer::Https if r.scenario == "tls_keyserver_outage" => {
                    // Only xlb with the Key Server runs it: no ratios.
                    assert_eq!(r.value(SystemKind::XlbKs), Some(8.0));
                    assert_eq!(
                        (r.ratio(SystemKind::Nginx), r.ks_ratio(SystemKind::Nginx)),
                        (None, None)
                    );
                }
                Layer::Https => {
                    assert_eq!(r.ratio(SystemKind::Nginx), Some(0.5));
                    assert_eq!(r.ratio(SystemKind::Haproxy), Some(2.0));
                    assert_eq!(r.values.len(), 4);
                    let handshakes = r.scenario.starts_with("tls_handshakes") || r.scenario == "tls_resumed";
                    if handshakes {
                        assert_eq!(r.ks_ratio(SystemKind::Nginx), Some(2.0));
                        assert_eq!(r.ks_ratio(SystemKind::Xlb), Some(4.0));
                    } else {
                        assert_eq!(r.value(SystemKind::XlbKs), None);
                        assert_eq!(r.ks_ratio(SystemKind::Xlb), None);
                    }
                }
            }
        }
        let text = render_table(&rows, &["raw".to_owned()]);
        assert!(text.starts_with("scenario"));
        assert!(text.contains("connections/s") && text.trim_end().ends_with("raw"));
        let lines: Vec<&str> = text.lines().collect();
        // L4 block: every data line lines up with the header.
        assert!(lines[0].ends_with("xlb/kernel"), "{text}");
        assert_eq!(lines[0].chars().count(), lines[2].chars().count(), "{text}");
        // L7 block after an empty line, with both ratio columns.
        let l7 = lines
            .iter()
            .position(|l| l.contains("xlb/nginx"))
            .expect("an L7 header");
        assert_eq!(lines[l7 - 1], "", "{text}");
        assert!(
            lines[l7].contains("nginx") && lines[l7].ends_with("xlb/haproxy"),
            "{text}"
        );
        assert!(lines[l7 + 2].starts_with("http_rps_keepalive"), "{text}");
        assert!(lines[l7 + 2].ends_with("0.50         2.00"), "{text}");
        assert_eq!(lines[l7].chars().count(), lines[l7 + 2].chars().count(), "{text}");
        // The HTTPS block comes last, after another empty line, with the same columns.
        let https = lines
            .iter()
            .position(|l| l.starts_with("tls_idle_memory"))
            .expect("an HTTPS block");
        assert_eq!(lines[https - 3], "", "{text}");
        assert!(lines[https - 2].ends_with("ks/xlb"), "{text}");
        let last_resumed = rows.iter().rposition(|r| r.scenario == "tls_resumed").unwrap();
        let json = serde_json::to_value(&rows[last_resumed]).unwrap();
        assert_eq!(json["ks_vs"]["xlb"], 4.0);
        assert_eq!(json["layer"], "https");
        assert_eq!(json["xlb_vs"]["haproxy"], 2.0);
        assert_eq!(json["values"]["nginx"], 4.0);
    }

    #[test]
    fn only_l7_rows_give_only_the_l7_block() {
        let mut m = Medians::new();
        for &sys in Scenario::HttpCps.systems() {
            let metrics = Scenario::HttpCps.metrics().iter().map(|d| (d.key, 3.0)).collect();
            m.entry("http_cps").or_default().insert(sys.name(), metrics);
        }
        // haproxy failed to give a number for one metric: its cells and ratio are `-`.
        m.get_mut("http_cps")
            .unwrap()
            .get_mut("haproxy")
            .unwrap()
            .remove("conns_per_s");
        let rows = table(&m);
        assert_eq!(rows.len(), Scenario::HttpCps.metrics().len());
        assert_eq!(rows[0].ratio(SystemKind::Haproxy), None);
        let text = render_table(&rows, &[]);
        assert!(text.starts_with("scenario") && !text.contains("kernel"), "{text}");
        let first = text.lines().nth(2).unwrap();
        assert!(
            first.starts_with("http_cps") && first.ends_with("1.00            -"),
            "{text}"
        );
    }
}
