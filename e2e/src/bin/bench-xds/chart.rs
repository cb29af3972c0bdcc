//! The scaling curve drawn as an SVG: four panels (memory, CPU, initial push, p99) against
//! the number of services on a log scale, one line per stream count.

use std::fmt::Write as _;

use crate::scenario::{Figures, percentile};

const PANEL_W: f64 = 340.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 36.0;
const TOP: f64 = 26.0;
const RIGHT: f64 = 14.0;
const LEGEND: f64 = 30.0;
const COLOURS: [&str; 4] = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"];

/// What each panel plots.
struct Panel {
    title: &'static str,
    value: fn(&Figures) -> f64,
}

const PANELS: [Panel; 4] = [
    Panel {
        title: "Peak resident memory (MiB)",
        value: |f| f.rss_kib[4] as f64 / 1024.0,
    },
    Panel {
        title: "Control plane CPU (s)",
        value: |f| f.cpu,
    },
    Panel {
        title: "Initial push to all streams (s)",
        value: |f| f.initial.as_secs_f64(),
    },
    Panel {
        title: "Change → all streams, p99 (ms)",
        value: |f| percentile(&f.latencies, 0.99).as_secs_f64() * 1000.0,
    },
];

/// A round axis maximum at or above `v`.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|m| *m >= v)
        .unwrap_or(10.0 * mag)
}

fn label(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The chart of `points`.
pub fn svg(points: &[Figures]) -> String {
    let mut streams: Vec<usize> = points.iter().map(|f| f.streams).collect();
    streams.sort();
    streams.dedup();
    let mut services: Vec<usize> = points.iter().map(|f| f.services).collect();
    services.sort();
    services.dedup();
    let (w, h) = (2.0 * PANEL_W, LEGEND + 2.0 * PANEL_H);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
    );
    for (k, s) in streams.iter().enumerate() {
        let x = LEFT + k as f64 * 140.0;
        let c = COLOURS[k % COLOURS.len()];
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"15\" x2=\"{}\" y2=\"15\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{}\" y=\"19\">{s} streams</text>",
            x + 24.0,
            x + 30.0
        );
    }
    for (p, panel) in PANELS.iter().enumerate() {
        let (ox, oy) = ((p % 2) as f64 * PANEL_W, LEGEND + (p / 2) as f64 * PANEL_H);
        draw_panel(&mut out, panel, points, &streams, &services, ox, oy);
    }
    out.push_str("</svg>\n");
    out
}

fn draw_panel(
    out: &mut String,
    panel: &Panel,
    points: &[Figures],
    streams: &[usize],
    services: &[usize],
    ox: f64,
    oy: f64,
) {
    let (x0, x1) = (ox + LEFT, ox + PANEL_W - RIGHT);
    let (y0, y1) = (oy + PANEL_H - BOTTOM, oy + TOP);
    let max = nice_max(points.iter().map(panel.value).fold(0.0, f64::max));
    let (lo, hi) = (
        (*services.first().unwrap_or(&1) as f64).log10(),
        (*services.last().unwrap_or(&10) as f64).log10(),
    );
    let span = if hi > lo { hi - lo } else { 1.0 };
    let x = |s: usize| x0 + ((s as f64).log10() - lo) / span * (x1 - x0);
    let y = |v: f64| y0 - v / max * (y0 - y1);
    let _ = writeln!(
        out,
        "<text x=\"{x0}\" y=\"{}\" font-weight=\"bold\">{}</text>",
        y1 - 8.0,
        panel.title
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let _ = writeln!(
            out,
            "<line x1=\"{x0}\" y1=\"{0}\" x2=\"{x1}\" y2=\"{0}\" stroke=\"#ddd\"/><text x=\"{1}\" y=\"{2}\" text-anchor=\"end\">{3}</text>",
            y(v),
            x0 - 4.0,
            y(v) + 4.0,
            label(v)
        );
    }
    for s in services {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{s}</text>",
            x(*s),
            y0 + 14.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">services</text>",
        (x0 + x1) / 2.0,
        y0 + 28.0
    );
    for (k, n) in streams.iter().enumerate() {
        let line: Vec<String> = points
            .iter()
            .filter(|f| f.streams == *n)
            .map(|f| format!("{:.1},{:.1}", x(f.services), y((panel.value)(f))))
            .collect();
        let c = COLOURS[k % COLOURS.len()];
        let _ = writeln!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>",
            line.join(" ")
        );
        for p in &line {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(out, "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{c}\"/>");
        }
    }
}
