//! The learning-curve chart (`learning-curve.svg`): validation p99 per PPO iteration, one line
//! per seed, with the heuristics' median validation p99 as dashed references. Hand-written SVG,
//! so the benchmark needs no plotting dependency.

use super::data::BenchData;
use super::{LEAST_LOADED, WARM_AFFINITY, median};
use std::fmt::Write as _;

/// Colours of the per-seed learning curves.
const CURVE_COLORS: [&str; 8] = [
    "#c0392b", "#2980b9", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#2c3e50", "#f39c12",
];

/// The chart of `data`'s learning curves.
pub fn learning_curve(data: &BenchData) -> String {
    let curves: Vec<(String, Vec<(usize, f64)>)> = data
        .seeds
        .iter()
        .map(|r| {
            (
                format!("seed {}", r.seed),
                r.curve.iter().map(|c| (c.iteration, c.p99_ms)).collect(),
            )
        })
        .collect();
    let refs: Vec<(String, f64)> = [LEAST_LOADED, WARM_AFFINITY]
        .iter()
        .map(|n| {
            let v: Vec<f64> = data
                .seeds
                .iter()
                .flat_map(|r| {
                    r.validation_refs
                        .iter()
                        .filter(|x| x.policy == *n)
                        .map(|x| x.p99_ms)
                })
                .collect();
            (format!("{n} (median)"), median(v))
        })
        .collect();
    chart(&curves, &refs)
}

/// Polylines for `curves` (name, (iteration, p99 ms) points) and horizontal lines for `refs`.
fn chart(curves: &[(String, Vec<(usize, f64)>)], refs: &[(String, f64)]) -> String {
    let (w, h, pad) = (720.0, 360.0, 50.0);
    let max_it = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let ys: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.1))
        .chain(refs.iter().map(|r| r.1))
        .collect();
    let ymax = ys.iter().cloned().fold(1.0, f64::max) * 1.1;
    let x = |i: f64| pad + (w - 2.0 * pad) * i / max_it;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / ymax;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">PPO iteration</text>
<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">validation p99 latency (ms)</text>
<text x="{}" y="20" text-anchor="middle">PPO learning curves (validation window, greedy policy, one line per seed)</text>
"#,
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        w / 2.0,
        h - 12.0,
        h / 2.0,
        h / 2.0,
        w / 2.0
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
            pad - 4.0,
            y(v) + 4.0,
            v
        );
    }
    for (k, (name, curve)) in curves.iter().enumerate() {
        let c = CURVE_COLORS[k % CURVE_COLORS.len()];
        let pts: Vec<String> = curve
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0 as f64), y(p.1)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{c}">{name}</text>"#,
            pad + 8.0 + 70.0 * k as f64,
            pad + 12.0
        );
    }
    for (k, (name, v)) in refs.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<line x1="{pad}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#7f8c8d" stroke-dasharray="{}"/><text x="{}" y="{:.1}" fill="#7f8c8d" text-anchor="end">{name}</text>"##,
            y(*v),
            w - pad,
            y(*v),
            if k == 0 { "5,4" } else { "2,3" },
            w - pad,
            y(*v) - 3.0
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}
