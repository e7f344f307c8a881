//! A run's timeline for people: per interval of the run, the calls answered, their p99 latency
//! and the errors by code, with the faults' windows shaded, as an SVG drawn by `plotters` (its
//! SVG backend alone: text is left to the viewer, so no font stack is built).
//!
//! [`Timeline::of`] is pure (it reads only the history); [`Timeline::svg`] draws it.

use std::collections::BTreeMap;

use plotters::prelude::*;

use crate::history::{Event, History, Outcome, Phase};

/// The most intervals a timeline has: a long soak is drawn in wider intervals, not more of them.
pub const MAX_INTERVALS: u64 = 600;

/// Errors counted without an API code: calls that got no answer (Jepsen's "info").
pub const NO_ANSWER: &str = "no answer";

/// A fault while it held: `what` on `node`, from `start_us` to `end_us` (the end of the run when
/// it never healed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    pub node: String,
    pub what: String,
    pub start_us: u64,
    pub end_us: u64,
}

/// What the calls of a run did, interval by interval, by when each call ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    /// The width of an interval: a second, or wider for runs over [`MAX_INTERVALS`] seconds.
    pub interval_us: u64,
    /// Calls answered (an output, or an async invocation accepted) in each interval.
    pub answered: Vec<u64>,
    /// The p99 latency (ms, from the call's scheduled send to its answer) of the calls answered
    /// in each interval; `None` for an interval with none.
    pub p99_ms: Vec<Option<f64>>,
    /// Per error code (the API's, or [`NO_ANSWER`]): the calls that ended so in each interval.
    pub errors: BTreeMap<String, Vec<u64>>,
    pub faults: Vec<FaultWindow>,
}

impl Timeline {
    /// The timeline of `history`.
    pub fn of(history: &History) -> Self {
        let mut sent = BTreeMap::new();
        let mut end_us = 0u64;
        for e in &history.events {
            match e {
                Event::Invoke { op, at_us, .. } => {
                    sent.insert(*op, *at_us);
                    end_us = end_us.max(*at_us);
                }
                Event::Complete { at_us, .. } | Event::Fault { at_us, .. } => {
                    end_us = end_us.max(*at_us);
                }
                _ => {}
            }
        }
        let seconds = end_us.div_ceil(1_000_000).max(1);
        let interval_us = seconds.div_ceil(MAX_INTERVALS) * 1_000_000;
        let intervals = (end_us / interval_us + 1) as usize;
        let mut answered = vec![0u64; intervals];
        let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); intervals];
        let mut errors: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut open: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut faults = Vec::new();
        for e in &history.events {
            match e {
                Event::Complete { op, at_us, outcome } => {
                    let i = (*at_us / interval_us) as usize;
                    match outcome {
                        Outcome::Ok { .. } | Outcome::Accepted { .. } => {
                            answered[i] += 1;
                            if let Some(&from) = sent.get(op) {
                                latencies[i].push(at_us.saturating_sub(from));
                            }
                        }
                        Outcome::Failed { code, .. } => {
                            errors
                                .entry(code.clone())
                                .or_insert_with(|| vec![0; intervals])[i] += 1;
                        }
                        Outcome::Unknown { .. } => {
                            errors
                                .entry(NO_ANSWER.to_owned())
                                .or_insert_with(|| vec![0; intervals])[i] += 1;
                        }
                    }
                }
                Event::Fault {
                    node,
                    at_us,
                    phase,
                    what,
                } => match phase {
                    Phase::Start => {
                        open.entry((node, what)).or_insert(*at_us);
                    }
                    Phase::End => {
                        let start_us = open.remove(&(node.as_str(), what.as_str())).unwrap_or(0);
                        faults.push(FaultWindow {
                            node: node.clone(),
                            what: what.clone(),
                            start_us,
                            end_us: *at_us,
                        });
                    }
                },
                _ => {}
            }
        }
        for ((node, what), start_us) in open {
            faults.push(FaultWindow {
                node: node.to_owned(),
                what: what.to_owned(),
                start_us,
                end_us,
            });
        }
        faults.sort_by_key(|f| (f.start_us, f.end_us));
        let p99_ms = latencies
            .into_iter()
            .map(|mut v| {
                if v.is_empty() {
                    return None;
                }
                v.sort_unstable();
                let rank = (v.len() * 99).div_ceil(100).max(1);
                Some(v[rank - 1] as f64 / 1000.0)
            })
            .collect();
        Timeline {
            interval_us,
            answered,
            p99_ms,
            errors,
            faults,
        }
    }

    /// The timeline drawn: three panels sharing the time axis (answered per second, p99, errors
    /// per second by code), each fault's window shaded in all three and named in the first.
    pub fn svg(&self) -> Result<String, String> {
        let mut out = String::new();
        self.draw(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn draw(&self, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
        let width = self.interval_us as f64 / 1e6;
        let end_s = self.answered.len() as f64 * width;
        let x = |i: usize| (i as f64 + 0.5) * width;
        let per_s = |n: u64| n as f64 / width;
        let root = SVGBackend::with_string(out, (1000, 760)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((3, 1));
        let answered: Vec<(f64, f64)> = self
            .answered
            .iter()
            .enumerate()
            .map(|(i, &n)| (x(i), per_s(n)))
            .collect();
        let p99: Vec<(f64, f64)> = self
            .p99_ms
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (x(i), v)))
            .collect();

        // Answered calls, with the faults named.
        let y_max = top(answered.iter().map(|p| p.1));
        let mut chart = panel(&panels[0], "calls answered", "per second", end_s, y_max)?;
        self.shade(&mut chart, y_max, width)?;
        for f in &self.faults {
            chart.draw_series(std::iter::once(Text::new(
                format!("{} {}", f.what, f.node),
                (f.start_us as f64 / 1e6, y_max * 0.97),
                ("sans-serif", 13).into_font().color(&RED),
            )))?;
        }
        chart.draw_series(LineSeries::new(answered, &BLUE))?;

        // p99 latency: a line through the intervals that had answers.
        let y_max = top(p99.iter().map(|p| p.1));
        let mut chart = panel(
            &panels[1],
            "p99 latency of the calls answered",
            "ms",
            end_s,
            y_max,
        )?;
        self.shade(&mut chart, y_max, width)?;
        chart.draw_series(LineSeries::new(p99, &BLACK))?;

        // Errors by code, one line each, with a legend.
        let y_max = top(self
            .errors
            .values()
            .flat_map(|v| v.iter().map(|&n| per_s(n))));
        let mut chart = panel(&panels[2], "errors by code", "per second", end_s, y_max)?;
        self.shade(&mut chart, y_max, width)?;
        for (k, (code, counts)) in self.errors.iter().enumerate() {
            let points = counts.iter().enumerate().map(|(i, &n)| (x(i), per_s(n)));
            chart
                .draw_series(LineSeries::new(points, Palette99::pick(k).stroke_width(2)))?
                .label(code.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 16, y)],
                        Palette99::pick(k).stroke_width(2),
                    )
                });
        }
        if !self.errors.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    }

    /// Each fault's window shaded across `chart` (at least a quarter interval wide, so that an
    /// instant fault still shows).
    fn shade<DB: DrawingBackend>(
        &self,
        chart: &mut Chart<'_, DB>,
        y_max: f64,
        width: f64,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        for f in &self.faults {
            let (a, b) = (f.start_us as f64 / 1e6, f.end_us as f64 / 1e6);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(a, 0.0), (b.max(a + width / 4.0), y_max)],
                FAULT.mix(0.25).filled(),
            )))?;
        }
        Ok(())
    }
}

/// The colour of a fault's window.
const FAULT: RGBColor = RGBColor(240, 128, 128);

type Chart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A little above the largest of `values` (1 when there are none or all are 0).
fn top(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(1.0f64, f64::max) * 1.1
}

/// One panel: time from 0 to `end_s` across, 0 to `y_max` up.
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    end_s: f64,
    y_max: f64,
) -> Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..end_s, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_desc(y_label)
        .light_line_style(WHITE)
        .draw()?;
    Ok(chart)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::history::Mode;

    fn invoke(h: &mut History, op: u64, at_us: u64) {
        h.push(Event::Invoke {
            op,
            at_us,
            node: "a".into(),
            mode: Mode::Sync,
            input: String::new(),
        });
    }

    fn complete(h: &mut History, op: u64, at_us: u64, outcome: Outcome) {
        h.push(Event::Complete { op, at_us, outcome });
    }

    fn ok() -> Outcome {
        Outcome::Ok {
            output: String::new(),
            ran_on: "a".into(),
        }
    }

    fn fault(h: &mut History, node: &str, at_us: u64, phase: Phase) {
        h.push(Event::Fault {
            node: node.into(),
            at_us,
            phase,
            what: "kill".into(),
        });
    }

    /// 25 calls a second for 4 s, each answered 10 ms after it was sent (op 99 after 80 ms, op
    /// 97 never); b killed from 1.5 s to 2.5 s (every fifth call sent meanwhile fails), c killed
    /// at 3.2 s and never healed.
    fn run() -> History {
        let mut h = History::default();
        fault(&mut h, "b", 1_500_000, Phase::Start);
        for op in 0..100u64 {
            let at = op * 40_000;
            invoke(&mut h, op, at);
            let latency = if op == 99 { 80_000 } else { 10_000 };
            let outcome = if (1_500_000..2_500_000).contains(&at) && op % 5 == 0 {
                Outcome::Failed {
                    code: "unavailable".into(),
                    status: 503,
                }
            } else if op == 97 {
                Outcome::Unknown {
                    reason: "timed out".into(),
                }
            } else {
                ok()
            };
            complete(&mut h, op, at + latency, outcome);
        }
        fault(&mut h, "b", 2_500_000, Phase::End);
        fault(&mut h, "c", 3_200_000, Phase::Start);
        h
    }

    #[test]
    fn a_timeline_counts_answers_errors_by_code_and_p99_per_second_and_keeps_each_fault_window() {
        let t = Timeline::of(&run());
        assert_eq!(t.interval_us, 1_000_000);
        // The last answer is at 3.96 + 0.08 = 4.04 s: five one-second intervals.
        assert_eq!(t.answered.len(), 5);
        assert_eq!(t.answered.iter().sum::<u64>(), 100 - 5 - 1);
        // Calls sent in [1.5, 2.5) whose number is a multiple of 5: ops 40 and 45 answered
        // before 2 s, 50, 55 and 60 after.
        assert_eq!(t.errors["unavailable"], vec![0, 2, 3, 0, 0]);
        assert_eq!(t.errors[NO_ANSWER], vec![0, 0, 0, 1, 0]);
        assert_eq!(t.p99_ms[0], Some(10.0));
        assert_eq!(
            t.p99_ms[4],
            Some(80.0),
            "op 99 is the only answer after 4 s"
        );
        assert_eq!(
            t.faults,
            vec![
                FaultWindow {
                    node: "b".into(),
                    what: "kill".into(),
                    start_us: 1_500_000,
                    end_us: 2_500_000
                },
                FaultWindow {
                    node: "c".into(),
                    what: "kill".into(),
                    start_us: 3_200_000,
                    end_us: 4_040_000
                },
            ],
            "a fault never healed lasts to the end of the run"
        );
    }

    #[test]
    fn a_long_run_is_drawn_in_wider_intervals_never_more_than_the_most() {
        let mut h = History::default();
        invoke(&mut h, 0, 0);
        complete(&mut h, 0, 1_800_000_000, ok());
        let t = Timeline::of(&h);
        assert_eq!(t.interval_us, 3_000_000);
        assert!(t.answered.len() as u64 <= MAX_INTERVALS + 1);
        assert_eq!(t.answered.iter().sum::<u64>(), 1);
    }

    #[test]
    fn the_svg_names_every_fault_and_error_code_and_draws_a_line_per_series() {
        let svg = Timeline::of(&run()).svg().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for label in [
            "kill b",
            "kill c",
            "unavailable",
            NO_ANSWER,
            "calls answered",
            "errors by code",
        ] {
            assert!(svg.contains(label), "{label} is not in the timeline");
        }
        // Answered, p99, and one per error code.
        assert!(svg.matches("<polyline").count() >= 4, "{svg}");
        // Each fault shaded in each of the three panels.
        let shaded = svg.matches("fill=\"#F08080\"").count();
        assert_eq!(shaded, 2 * 3, "{svg}");
    }

    #[test]
    fn an_empty_history_still_draws() {
        let t = Timeline::of(&History::default());
        assert_eq!(t.answered, vec![0]);
        assert!(t.errors.is_empty() && t.faults.is_empty());
        assert!(t.svg().unwrap().contains("calls answered"));
    }
}
