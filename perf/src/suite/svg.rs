//! A small SVG writer and the suite's two plots.
//!
//! [`Svg`] appends elements to a string; [`latency_plot`] and [`throughput_plot`] draw from plain numbers, so
//! they are easy to test and need no plotting library.

use std::fmt::Write as _;

/// Colour of each system in every plot: xlb first, then the kernel.
pub const COLORS: [&str; 5] = ["#1f6fb4", "#d0542a", "#2e9b4f", "#8a4fb0", "#17a2b8"];

const FONT: &str = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\"";

/// Horizontal text anchor.
#[derive(Debug, Clone, Copy)]
pub enum Anchor {
    /// Text starts at x.
    Start,
    /// Text is centred on x.
    Middle,
    /// Text ends at x.
    End,
}

impl Anchor {
    fn as_str(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

/// An SVG document being built.
#[derive(Debug)]
pub struct Svg {
    width: f64,
    height: f64,
    body: String,
}

impl Svg {
    /// An empty white canvas of `width` × `height` pixels.
    pub fn new(width: f64, height: f64) -> Svg {
        let mut svg = Svg {
            width,
            height,
            body: String::new(),
        };
        svg.rect(0.0, 0.0, width, height, "#ffffff", None);
        svg
    }

    /// A straight line.
    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, width: f64) {
        let _ = writeln!(
            self.body,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{stroke}\" \
             stroke-width=\"{width}\"/>"
        );
    }

    /// A dashed straight line.
    pub fn dashed(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, width: f64) {
        let _ = writeln!(
            self.body,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{stroke}\" \
             stroke-width=\"{width}\" stroke-dasharray=\"6 4\"/>"
        );
    }

    /// An open polyline through `points`, with the given opacity.
    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: &str, width: f64, opacity: f64) {
        let pts: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            self.body,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"{width}\" \
             stroke-opacity=\"{opacity}\" stroke-linejoin=\"round\"/>",
            pts.join(" ")
        );
    }

    /// A filled rectangle with an optional outline colour.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, stroke: Option<&str>) {
        let stroke = stroke.map_or_else(String::new, |s| format!(" stroke=\"{s}\""));
        let _ = writeln!(
            self.body,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"{stroke}/>",
            w.max(0.0),
            h.max(0.0)
        );
    }

    /// A filled circle.
    pub fn circle(&mut self, (cx, cy): (f64, f64), r: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"{r}\" fill=\"{fill}\"/>"
        );
    }

    /// Text at (x, y) (y is the baseline), escaped.
    pub fn text(&mut self, (x, y): (f64, f64), text: &str, size: f64, anchor: Anchor, fill: &str) {
        let _ = writeln!(
            self.body,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\" {FONT} text-anchor=\"{}\" \
             fill=\"{fill}\">{}</text>",
            anchor.as_str(),
            escape(text)
        );
    }

    /// Text rotated by -90° around (x, y), for a y-axis title.
    pub fn vertical_text(&mut self, (x, y): (f64, f64), text: &str, size: f64) {
        let _ = writeln!(
            self.body,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\" {FONT} text-anchor=\"middle\" \
             transform=\"rotate(-90 {x:.1} {y:.1})\" fill=\"#333333\">{}</text>",
            escape(text)
        );
    }

    /// The finished document.
    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n{}</svg>\n",
            self.body,
            w = self.width,
            h = self.height
        )
    }
}

/// Escapes text for SVG content.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// A compact number: `950`, `12.3k`, `10k`, `1.25M`, `2.5`.
pub fn compact(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    let a = v.abs();
    if a >= 1e6 {
        trim(format!("{:.2}", v / 1e6)) + "M"
    } else if a >= 1e3 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.2}"))
    }
}

/// The 1-2-5 series value at or below `v` (`down`) or at or above it.
fn step125(v: f64, down: bool) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    let steps = [1.0, 2.0, 5.0, 10.0];
    if down {
        steps
            .iter()
            .rev()
            .map(|m| m * mag)
            .find(|s| *s <= v * (1.0 + 1e-9))
            .unwrap_or(mag)
    } else {
        steps
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= v * (1.0 - 1e-9))
            .unwrap_or(10.0 * mag)
    }
}

/// A "nice" step (1, 2 or 5 × 10^k) giving about `target` ticks over `range`.
fn nice_step(range: f64, target: f64) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / target;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// The plot area inside a canvas.
#[derive(Debug, Clone, Copy)]
struct Area {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

impl Area {
    fn bottom(&self) -> f64 {
        self.top + self.height
    }
    fn right(&self) -> f64 {
        self.left + self.width
    }
}

/// One system's series for the latency plot.
#[derive(Debug, Clone)]
pub struct LatencySeries {
    /// Legend label.
    pub label: String,
    /// Median value of each percentile, in [`super::scenarios::LATENCY_PERCENTILES`] order (µs).
    pub median: Vec<f64>,
    /// The same per repetition, drawn thin.
    pub reps: Vec<Vec<f64>>,
}

/// x position of each percentile: `-log10(1 - q)`, so p50, p90, p99, p99.9 sit at 0.3, 1, 2, 3; max at 4.
fn percentile_x(quantile: Option<f64>) -> f64 {
    match quantile {
        Some(q) => -(1.0 - q).log10(),
        None => 4.0,
    }
}

/// The latency percentile curve of each system: x = percentile on a log-of-tail axis, y = µs (log scale).
pub fn latency_plot(title: &str, subtitle: &str, points: &[(&str, Option<f64>)], series: &[LatencySeries]) -> String {
    let (w, h) = (760.0, 460.0);
    let area = Area {
        left: 80.0,
        top: 70.0,
        width: 620.0,
        height: 320.0,
    };
    let mut svg = Svg::new(w, h);
    header(&mut svg, w, title, subtitle);

    let values = series
        .iter()
        .flat_map(|s| s.median.iter().chain(s.reps.iter().flatten()))
        .copied()
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if hi > 0.0 { (lo, hi) } else { (1.0, 10.0) };
    let (lo, hi) = (step125(lo, true), step125(hi, false));
    let (l0, l1) = (lo.log10(), hi.log10().max(lo.log10() + 1.0));
    let y = |v: f64| {
        let l = v.max(lo).log10();
        area.bottom() - (l - l0) / (l1 - l0) * area.height
    };
    let xs: Vec<f64> = points.iter().map(|(_, q)| percentile_x(*q)).collect();
    let (x0, x1) = (0.0, 4.2);
    let x = |v: f64| area.left + 20.0 + (v - x0) / (x1 - x0) * (area.width - 40.0);

    // Grid at 1, 2 and 5 per decade; decades darker.
    let mut decade = l0.floor();
    while decade <= l1 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(decade);
            if v < lo * (1.0 - 1e-9) || v > hi * (1.0 + 1e-9) {
                continue;
            }
            let yy = y(v);
            let color = if m == 1.0 { "#bbbbbb" } else { "#e6e6e6" };
            svg.line((area.left, yy), (area.right(), yy), color, 1.0);
            svg.text((area.left - 8.0, yy + 4.0), &compact(v), 11.0, Anchor::End, "#333333");
        }
        decade += 1.0;
    }
    for ((label, _), xv) in points.iter().zip(&xs) {
        let xx = x(*xv);
        svg.line((xx, area.top), (xx, area.bottom()), "#eeeeee", 1.0);
        svg.text((xx, area.bottom() + 18.0), label, 12.0, Anchor::Middle, "#333333");
    }
    frame(&mut svg, area);
    svg.text(
        (area.left + area.width / 2.0, area.bottom() + 40.0),
        "percentile (tail on a log scale)",
        12.0,
        Anchor::Middle,
        "#333333",
    );
    svg.vertical_text(
        (22.0, area.top + area.height / 2.0),
        "round-trip time (µs, log scale)",
        12.0,
    );

    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for rep in &s.reps {
            let pts: Vec<(f64, f64)> = xs.iter().zip(rep).map(|(xv, v)| (x(*xv), y(*v))).collect();
            svg.polyline(&pts, color, 1.0, 0.35);
        }
        let pts: Vec<(f64, f64)> = xs.iter().zip(&s.median).map(|(xv, v)| (x(*xv), y(*v))).collect();
        svg.polyline(&pts, color, 2.5, 1.0);
        for p in &pts {
            svg.circle(*p, 3.5, color);
        }
    }
    let labels: Vec<(&str, &str)> = series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.label.as_str(), COLORS[i % COLORS.len()]))
        .collect();
    legend(
        &mut svg,
        (area.right() - 178.0, area.bottom() - 66.0),
        &labels,
        "thick: median; thin: each rep",
    );
    svg.finish()
}

/// One panel of the throughput plot: a metric per system per repetition.
#[derive(Debug, Clone)]
pub struct ThroughputPanel {
    /// Panel title, e.g. "tcp_cps: connections/s".
    pub title: String,
    /// Per system: legend label and one value per repetition.
    pub systems: Vec<(String, Vec<f64>)>,
    /// Per system: its colour (the same system has the same colour in every panel).
    pub colors: Vec<&'static str>,
    /// Per system: the median, drawn as a dashed line.
    pub medians: Vec<f64>,
}

/// Bars of each throughput metric per system and repetition, one panel per metric.
pub fn throughput_plot(title: &str, subtitle: &str, panels: &[ThroughputPanel]) -> String {
    // Every system of any panel, once, in order of appearance, for the legend.
    let mut entries: Vec<(&str, &str)> = Vec::new();
    for panel in panels {
        for (s, (label, _)) in panel.systems.iter().enumerate() {
            if !entries.iter().any(|(l, _)| l == label) {
                entries.push((label.as_str(), panel.color(s)));
            }
        }
    }
    let panel_w = 380.0;
    let w = 40.0 + panel_w * panels.len().max(1) as f64;
    let h = 464.0 + 18.0 * entries.len().max(2) as f64;
    let mut svg = Svg::new(w, h);
    header(&mut svg, w, title, subtitle);
    for (p, panel) in panels.iter().enumerate() {
        let area = Area {
            left: 40.0 + p as f64 * panel_w + 50.0,
            top: 90.0,
            width: panel_w - 80.0,
            height: 290.0,
        };
        svg.text(
            (area.left + area.width / 2.0, area.top - 12.0),
            &panel.title,
            13.0,
            Anchor::Middle,
            "#222222",
        );
        let max = panel
            .systems
            .iter()
            .flat_map(|(_, v)| v.iter())
            .chain(&panel.medians)
            .fold(0.0f64, |m, v| m.max(*v));
        let step = nice_step(max.max(1e-9), 5.0);
        let top = (max / step).ceil().max(1.0) * step;
        let y = |v: f64| area.bottom() - v / top * area.height;
        let mut tick = 0.0;
        while tick <= top + step / 2.0 {
            let yy = y(tick);
            svg.line((area.left, yy), (area.right(), yy), "#e6e6e6", 1.0);
            svg.text(
                (area.left - 6.0, yy + 4.0),
                &compact(tick),
                11.0,
                Anchor::End,
                "#333333",
            );
            tick += step;
        }
        let reps = panel.systems.iter().map(|(_, v)| v.len()).max().unwrap_or(0).max(1);
        let group_w = area.width / reps as f64;
        let nsys = panel.systems.len().max(1) as f64;
        let bar_w = (group_w * 0.75 / nsys).min(40.0);
        for r in 0..reps {
            let gx = area.left + r as f64 * group_w + (group_w - bar_w * nsys) / 2.0;
            for (s, (_, values)) in panel.systems.iter().enumerate() {
                let Some(v) = values.get(r) else { continue };
                let bx = gx + s as f64 * bar_w;
                svg.rect(bx, y(*v), bar_w - 2.0, area.bottom() - y(*v), panel.color(s), None);
                svg.text(
                    (bx + bar_w / 2.0 - 1.0, y(*v) - 4.0),
                    &compact(*v),
                    9.0,
                    Anchor::Middle,
                    "#333333",
                );
            }
            svg.text(
                (area.left + (r as f64 + 0.5) * group_w, area.bottom() + 16.0),
                &format!("rep {}", r + 1),
                11.0,
                Anchor::Middle,
                "#333333",
            );
        }
        for (s, m) in panel.medians.iter().enumerate() {
            if *m > 0.0 {
                svg.dashed((area.left, y(*m)), (area.right(), y(*m)), panel.color(s), 1.5);
            }
        }
        frame(&mut svg, area);
    }
    if !entries.is_empty() {
        let top = h - 30.0 - 18.0 * entries.len() as f64;
        legend(&mut svg, (w / 2.0 - 85.0, top), &entries, "dashed: median over reps");
    }
    svg.finish()
}

impl ThroughputPanel {
    /// The colour of system `s` (by index), falling back to [`COLORS`] order.
    fn color(&self, s: usize) -> &'static str {
        self.colors.get(s).copied().unwrap_or(COLORS[s % COLORS.len()])
    }
}

fn header(svg: &mut Svg, width: f64, title: &str, subtitle: &str) {
    svg.text((width / 2.0, 26.0), title, 16.0, Anchor::Middle, "#111111");
    svg.text((width / 2.0, 46.0), subtitle, 11.0, Anchor::Middle, "#555555");
}

fn frame(svg: &mut Svg, a: Area) {
    svg.line((a.left, a.bottom()), (a.right(), a.bottom()), "#333333", 1.0);
    svg.line((a.left, a.top), (a.left, a.bottom()), "#333333", 1.0);
}

/// A legend box with its top left corner at (x, y): a colour swatch per (label, colour), then a note.
fn legend(svg: &mut Svg, (x, y): (f64, f64), labels: &[(&str, &str)], note: &str) {
    let (bw, bh) = (170.0, 22.0 + 18.0 * labels.len() as f64);
    svg.rect(x, y, bw, bh, "#ffffff", Some("#cccccc"));
    for (i, (label, color)) in labels.iter().enumerate() {
        let yy = y + 16.0 + 18.0 * i as f64;
        svg.rect(x + 8.0, yy - 9.0, 14.0, 10.0, color, None);
        svg.text((x + 28.0, yy), label, 12.0, Anchor::Start, "#222222");
    }
    svg.text((x + 8.0, y + bh - 6.0), note, 10.0, Anchor::Start, "#666666");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
        assert_eq!(compact(950.0), "950");
        assert_eq!(compact(12_345.0), "12.3k");
        assert_eq!(compact(1_250_000.0), "1.25M");
        assert_eq!(compact(2.5), "2.5");
        assert_eq!(compact(10_000.0), "10k");
        assert_eq!(step125(96.0, true), 50.0);
        assert_eq!(step125(12_215.0, false), 20_000.0);
        assert_eq!(step125(100.0, false), 100.0);
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
    }

    #[test]
    fn plots_are_svg_documents() {
        let series = vec![
            LatencySeries {
                label: "xlb".into(),
                median: vec![30.0, 40.0, 80.0, 200.0, 900.0],
                reps: vec![vec![30.0, 41.0, 85.0, 210.0, 1000.0]],
            },
            LatencySeries {
                label: "kernel".into(),
                median: vec![20.0, 30.0, 60.0, 150.0, 700.0],
                reps: vec![],
            },
        ];
        let pts = [
            ("p50", Some(0.5)),
            ("p90", Some(0.9)),
            ("p99", Some(0.99)),
            ("p99.9", Some(0.999)),
            ("max", None),
        ];
        let svg = latency_plot("t", "s <x>", &pts, &series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("s &lt;x&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 3);

        let panel = ThroughputPanel {
            title: "cps".into(),
            systems: vec![("xlb".into(), vec![1.0, 2.0]), ("kernel".into(), vec![3.0, 4.0])],
            colors: vec![COLORS[0], COLORS[1]],
            medians: vec![1.5, 3.5],
        };
        let svg = throughput_plot("t", "s", &[panel.clone(), panel]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Background + 8 bars + one legend (box + 2 swatches).
        assert_eq!(svg.matches("<rect").count(), 1 + 8 + 3);
    }
}
