//! Trace replay: a per-minute invocation trace (the Azure Functions 2019 layout, parsed by
//! [`tern_policy::trace::Trace`]) turned into a [`ReplayPlan`] of timed requests that
//! [`crate::load::run`] sends open loop (latency from each request's planned send time, so
//! there is no coordinated omission).
//!
//! # The mapping
//!
//! * **Arrivals.** Minute `m` of trace function `f` holds `count[f][m]` invocations; each is
//!   sent `scale` times, at a time drawn uniformly at random within its minute (seeded; the same
//!   draw as the policy simulator's, [`Trace::arrivals`]). `speedup` compresses time: a trace
//!   minute lasts `60 / speedup` seconds (the rate rises by the same factor; idle gaps shrink
//!   with it, which matters against keep-resident and idle timeouts).
//! * **Functions.** Trace function `f` (its row in the file, from 0) calls the deployed function
//!   named by the template with `{i}` replaced by `f` as (at least) three digits (`mm-{i}` →
//!   `mm-007`); a
//!   template without `{i}` sends every trace function to one deployed function.
//! * **Work.** Either every request carries the same body ([`Work::Fixed`]), or it is a
//!   `matmul-json` request ([`Work::Matmul`]) whose matrix size `n` is fixed per trace function
//!   and drawn log-uniformly from `[n_lo, n_hi]` with the seed: execution time grows as `n³`,
//!   so the sizes spread the per-function execution times over orders of magnitude, as the
//!   Azure 2019 dataset's per-function durations spread (Shahrad et al., ATC '20, Fig. 7: the
//!   averages span milliseconds to minutes, roughly log-normal). The trace file carries no
//!   durations, so no finer fit is claimed. The body is padded to `body_bytes` (the paper's
//!   requests are ~1 KB of JSON). A function's `n` depends only on the seed and its row, not
//!   on the minutes replayed.
//!
//! Planning is pure (no I/O, no clock); the caller reads the trace file.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tern_policy::rng::Rng;
/// The trace parser ([`Trace::parse`]) replays are planned from.
pub use tern_policy::trace::Trace;

use crate::BenchError;

/// Most requests a plan may hold (each costs ~40 bytes while it is planned): a bound on what
/// a mistyped `--scale` can allocate.
pub const MAX_PLANNED_REQUESTS: u64 = 20_000_000;
/// Longest replay: a mistyped `--speedup` must not plan a run of years.
pub const MAX_LENGTH: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest `matmul-json` body (each trace function has its own): the node's default limit on
/// a request body is far below it.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest matrix size `matmul-json` accepts.
pub const MAX_N: u32 = 1024;
/// Where `{i}` goes in a function name template.
pub const INDEX_PLACEHOLDER: &str = "{i}";
/// Seed offset for the per-function work sizes, so they are not correlated with the arrival
/// times drawn from the same seed.
const WORK_SEED_SALT: u64 = 0x5eed_0f4b_5ed0_e500;

/// What each request carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// The same body for every request.
    Fixed(Bytes),
    /// A `matmul-json` request with `n` fixed per trace function, log-uniform in
    /// `[n_lo, n_hi]`, padded to `body_bytes`.
    Matmul {
        n_lo: u32,
        n_hi: u32,
        body_bytes: usize,
    },
}

/// How to turn a trace into requests.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySpec {
    /// Trace minutes replayed, `[start, end)`.
    pub minutes: Range<usize>,
    /// Each traced invocation is sent this many times (≥ 1).
    pub scale: u32,
    /// Time compression: a trace minute lasts `60 / speedup` seconds (> 0).
    pub speedup: f64,
    pub seed: u64,
    /// Deployed function name, with `{i}` for the trace function's row.
    pub function_template: String,
    pub work: Work,
}

/// One trace function's request.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayTarget {
    /// Row of the trace function in the trace file.
    pub trace_function: usize,
    /// Deployed function it calls.
    pub function: String,
    /// `POST` target, `/v1/functions/{function}/invoke`.
    pub path_and_query: String,
    pub body: Bytes,
    /// `matmul-json` size, with [`Work::Matmul`].
    pub n: Option<u32>,
}

/// One planned request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedRequest {
    /// Planned send time, from the start of the replay.
    pub at: Duration,
    /// Index into [`ReplayPlan::targets`].
    pub target: u32,
}

/// The requests of a replay, in send order.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayPlan {
    /// One per trace function that has at least one request in the plan.
    pub targets: Vec<ReplayTarget>,
    /// Sorted by `at`; every `at` is below `length`.
    pub requests: Vec<PlannedRequest>,
    /// The replayed minutes, compressed by the speedup.
    pub length: Duration,
    pub echo: ReplayEcho,
}

/// What was replayed, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayEcho {
    /// First minute replayed.
    pub minute_start: usize,
    /// One past the last minute replayed.
    pub minute_end: usize,
    pub scale: u32,
    pub speedup: f64,
    pub seed: u64,
    pub function_template: String,
    /// Trace functions with at least one request, and distinct deployed functions they call.
    pub trace_functions: usize,
    pub deployed_functions: usize,
    /// `fixed` or `matmul n=LO..HI, BYTES-byte bodies`.
    pub work: String,
    pub planned_requests: u64,
}

impl ReplayPlan {
    /// Plan the replay of `trace` by `spec`.
    pub fn new(trace: &Trace, spec: &ReplaySpec) -> Result<ReplayPlan, BenchError> {
        validate(trace, spec)?;
        let Range { start, end } = spec.minutes.clone();
        let sizes = work_sizes(trace.functions.len(), &spec.work, spec.seed);
        let arrivals = trace.arrivals(start, end, spec.scale, spec.seed);

        // Targets for the functions that occur, in row order.
        let mut target_of: Vec<Option<u32>> = vec![None; trace.functions.len()];
        for a in &arrivals {
            target_of[a.function] = Some(0);
        }
        let mut targets = Vec::new();
        for (row, slot) in target_of.iter_mut().enumerate() {
            if slot.is_none() {
                continue;
            }
            *slot = Some(targets.len() as u32);
            let function = function_name(&spec.function_template, row);
            let n = sizes.get(row).copied();
            let body = match &spec.work {
                Work::Fixed(body) => body.clone(),
                Work::Matmul { body_bytes, .. } => {
                    matmul_body(row, n.unwrap_or(1), spec.seed, *body_bytes)
                }
            };
            targets.push(ReplayTarget {
                trace_function: row,
                path_and_query: format!("/v1/functions/{function}/invoke"),
                function,
                body,
                n,
            });
        }
        let length = Duration::from_secs_f64((end - start) as f64 * 60.0 / spec.speedup);
        // Truncated to whole nanoseconds and kept inside the plan: an arrival at the very end
        // of the last minute must not round up to the plan's end.
        let last = length.saturating_sub(Duration::from_nanos(1));
        let requests: Vec<PlannedRequest> = arrivals
            .iter()
            .map(|a| PlannedRequest {
                at: Duration::from_nanos((a.t_ms * 1e6 / spec.speedup) as u64).min(last),
                target: target_of[a.function].unwrap_or_default(),
            })
            .collect();
        let deployed = distinct_functions(&targets).len();
        let echo = ReplayEcho {
            minute_start: start,
            minute_end: end,
            scale: spec.scale,
            speedup: spec.speedup,
            seed: spec.seed,
            function_template: spec.function_template.clone(),
            trace_functions: targets.len(),
            deployed_functions: deployed,
            work: match &spec.work {
                Work::Fixed(_) => "fixed".to_owned(),
                Work::Matmul {
                    n_lo,
                    n_hi,
                    body_bytes,
                } => format!("matmul n={n_lo}..{n_hi}, {body_bytes}-byte bodies"),
            },
            planned_requests: requests.len() as u64,
        };
        Ok(ReplayPlan {
            targets,
            requests,
            length,
            echo,
        })
    }

    /// The distinct deployed functions the plan calls, sorted.
    pub fn functions(&self) -> Vec<&str> {
        distinct_functions(&self.targets)
    }
}

/// The distinct deployed functions `targets` call, sorted.
fn distinct_functions(targets: &[ReplayTarget]) -> Vec<&str> {
    let mut names: Vec<&str> = targets.iter().map(|t| t.function.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Parse `A-B` (minutes `[A, B)`) or a single minute `A`.
pub fn parse_minutes(s: &str) -> Result<Range<usize>, BenchError> {
    let bad = || {
        BenchError::Config(format!(
            "minutes must be START-END (END exclusive, e.g. 0-10) or one minute, got {s:?}"
        ))
    };
    let num = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
    match s.split_once('-') {
        Some((a, b)) => Ok(num(a)?..num(b)?),
        None => {
            let a = num(s)?;
            Ok(a..a.checked_add(1).ok_or_else(bad)?)
        }
    }
}

/// Parse `LO-HI` matrix sizes.
pub fn parse_sizes(s: &str) -> Result<(u32, u32), BenchError> {
    let bad = || BenchError::Config(format!("sizes must be LO-HI (e.g. 16-256), got {s:?}"));
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let num = |t: &str| t.trim().parse::<u32>().map_err(|_| bad());
    Ok((num(a)?, num(b)?))
}

fn validate(trace: &Trace, spec: &ReplaySpec) -> Result<(), BenchError> {
    let Range { start, end } = spec.minutes;
    if start >= end {
        return Err(BenchError::Config(format!(
            "minutes {start}-{end} replay nothing: the end is exclusive and must be above the start"
        )));
    }
    if end > trace.minutes {
        return Err(BenchError::Config(format!(
            "minutes {start}-{end} go past the trace, which has {} minute(s)",
            trace.minutes
        )));
    }
    if spec.scale == 0 {
        return Err(BenchError::Config("scale must be at least 1".into()));
    }
    if !(spec.speedup.is_finite() && spec.speedup > 0.0) {
        return Err(BenchError::Config(format!(
            "speedup must be a positive number, got {}",
            spec.speedup
        )));
    }
    // A replay shorter than a microsecond per minute would plan everything at once.
    if spec.speedup > 60e6 {
        return Err(BenchError::Config(format!(
            "speedup {} would squeeze a minute into less than a microsecond",
            spec.speedup
        )));
    }
    let length_s = (end - start) as f64 * 60.0 / spec.speedup;
    if length_s > MAX_LENGTH.as_secs_f64() {
        return Err(BenchError::Config(format!(
            "minutes {start}-{end} at speedup {} would last {:.0} hours, more than the {} a \
             replay may",
            spec.speedup,
            length_s / 3600.0,
            "week"
        )));
    }
    if spec.function_template.is_empty() {
        return Err(BenchError::Config("function name must not be empty".into()));
    }
    if let Work::Matmul {
        n_lo,
        n_hi,
        body_bytes,
    } = spec.work
    {
        if !(1 <= n_lo && n_lo <= n_hi && n_hi <= MAX_N) {
            return Err(BenchError::Config(format!(
                "matrix sizes {n_lo}-{n_hi}: need 1 <= LO <= HI <= {MAX_N}"
            )));
        }
        if body_bytes > MAX_BODY_BYTES {
            return Err(BenchError::Config(format!(
                "bodies of {body_bytes} bytes: at most {MAX_BODY_BYTES}"
            )));
        }
    }
    let planned: u64 = trace
        .functions
        .iter()
        .flat_map(|f| &f.per_minute[start..end])
        .map(|&c| u64::from(c))
        .sum::<u64>()
        .saturating_mul(u64::from(spec.scale));
    if planned > MAX_PLANNED_REQUESTS {
        return Err(BenchError::Config(format!(
            "minutes {start}-{end} at scale {} plan {planned} requests, more than the \
             {MAX_PLANNED_REQUESTS} a replay may hold: replay fewer minutes or a lower scale",
            spec.scale
        )));
    }
    Ok(())
}

/// `matmul-json` sizes per trace row (empty for [`Work::Fixed`]): log-uniform in `[lo, hi]`.
fn work_sizes(rows: usize, work: &Work, seed: u64) -> Vec<u32> {
    let Work::Matmul { n_lo, n_hi, .. } = *work else {
        return Vec::new();
    };
    let mut rng = Rng::new(seed ^ WORK_SEED_SALT);
    let (lo, hi) = (f64::from(n_lo).ln(), f64::from(n_hi).ln());
    (0..rows)
        .map(|_| {
            let n = (lo + rng.next_f64() * (hi - lo)).exp().round() as u32;
            n.clamp(n_lo, n_hi)
        })
        .collect()
}

fn function_name(template: &str, row: usize) -> String {
    template.replace(INDEX_PLACEHOLDER, &format!("{row:03}"))
}

/// `{"task_id":"f007","n":N,"seed":S,"pad":"…"}`, padded with `x` to `body_bytes` when shorter.
fn matmul_body(row: usize, n: u32, seed: u64, body_bytes: usize) -> Bytes {
    let head = format!(r#"{{"task_id":"f{row:03}","n":{n},"seed":{seed},"pad":""#);
    let tail = "\"}";
    let pad = body_bytes.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(head.len() + pad + tail.len());
    body.push_str(&head);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(tail);
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Three functions over four minutes; function 1 is silent in minutes 0-1.
    fn trace() -> Trace {
        Trace::parse(
            "o,a,f0,http,3,0,2,1\n\
             o,a,f1,http,0,0,5,0\n\
             o2,b,f2,http,1,1,1,1\n",
        )
        .expect("valid trace")
    }

    fn spec() -> ReplaySpec {
        ReplaySpec {
            minutes: 0..4,
            scale: 1,
            speedup: 1.0,
            seed: 7,
            function_template: "mm-{i}".into(),
            work: Work::Matmul {
                n_lo: 8,
                n_hi: 256,
                body_bytes: 1024,
            },
        }
    }

    #[test]
    fn a_plan_sends_every_traced_invocation_scale_times_within_its_minute() {
        let t = trace();
        let plan = ReplayPlan::new(&t, &ReplaySpec { scale: 3, ..spec() }).unwrap();
        assert_eq!(plan.requests.len(), 15 * 3);
        assert_eq!(plan.echo.planned_requests, 45);
        assert_eq!(plan.length, Duration::from_secs(240));
        assert!(plan.requests.windows(2).all(|w| w[0].at <= w[1].at));
        // Per function and minute, the counts match the trace times the scale.
        for (row, f) in t.functions.iter().enumerate() {
            for (m, &count) in f.per_minute.iter().enumerate() {
                let inside = plan
                    .requests
                    .iter()
                    .filter(|r| {
                        plan.targets[r.target as usize].trace_function == row
                            && r.at >= Duration::from_secs(60 * m as u64)
                            && r.at < Duration::from_secs(60 * (m as u64 + 1))
                    })
                    .count();
                assert_eq!(inside, count as usize * 3, "function {row}, minute {m}");
            }
        }
    }

    #[test]
    fn speedup_compresses_time_and_minutes_are_relative_to_the_start() {
        let t = trace();
        let slow = ReplayPlan::new(
            &t,
            &ReplaySpec {
                minutes: 2..4,
                ..spec()
            },
        )
        .unwrap();
        let fast = ReplayPlan::new(
            &t,
            &ReplaySpec {
                minutes: 2..4,
                speedup: 60.0,
                ..spec()
            },
        )
        .unwrap();
        assert_eq!(slow.requests.len(), 2 + 1 + 5 + 1 + 1);
        assert_eq!(fast.length, Duration::from_secs(2));
        for (s, f) in slow.requests.iter().zip(&fast.requests) {
            assert_eq!(s.target, f.target);
            let ratio = s.at.as_secs_f64() / f.at.as_secs_f64();
            assert!((ratio - 60.0).abs() < 1e-6, "{ratio}");
        }
        assert!(slow.requests.iter().all(|r| r.at < slow.length));
        assert!(fast.requests.iter().all(|r| r.at < fast.length));
    }

    #[test]
    fn functions_get_one_name_and_size_each_that_does_not_depend_on_the_minutes() {
        let t = trace();
        let all = ReplayPlan::new(&t, &spec()).unwrap();
        let late = ReplayPlan::new(
            &t,
            &ReplaySpec {
                minutes: 3..4,
                ..spec()
            },
        )
        .unwrap();
        let names: Vec<&str> = all.targets.iter().map(|t| t.function.as_str()).collect();
        assert_eq!(names, ["mm-000", "mm-001", "mm-002"]);
        assert_eq!(all.functions(), names);
        assert_eq!(all.targets[1].path_and_query, "/v1/functions/mm-001/invoke");
        // Function 1 does not occur in minute 3, so it has no target there.
        assert_eq!(late.functions(), ["mm-000", "mm-002"]);
        for lt in &late.targets {
            let at = &all.targets[lt.trace_function];
            assert_eq!((lt.n, &lt.body), (at.n, &at.body));
        }
        for target in &all.targets {
            let n = target.n.unwrap();
            assert!((8..=256).contains(&n), "{n}");
            assert_eq!(target.body.len(), 1024);
            let v: serde_json::Value = serde_json::from_slice(&target.body).unwrap();
            assert_eq!(v["n"], n);
            assert_eq!(v["seed"], 7);
            assert_eq!(v["task_id"], format!("f{:03}", target.trace_function));
        }
        // A template without {i} sends everything to one function.
        let one = ReplayPlan::new(
            &t,
            &ReplaySpec {
                function_template: "matmul-json".into(),
                ..spec()
            },
        )
        .unwrap();
        assert_eq!(one.functions(), ["matmul-json"]);
        assert_eq!(
            (one.echo.trace_functions, one.echo.deployed_functions),
            (3, 1)
        );
    }

    #[test]
    fn at_the_highest_speedup_every_request_stays_inside_the_plan() {
        // 3,000 arrivals in one minute squeezed into ~1 µs: times within a nanosecond of the
        // end must not round up to it.
        let t = Trace::parse("o,a,f,http,3000\n").unwrap();
        let plan = ReplayPlan::new(
            &t,
            &ReplaySpec {
                minutes: 0..1,
                speedup: 60e6,
                ..spec()
            },
        )
        .unwrap();
        assert_eq!(plan.length, Duration::from_micros(1));
        assert_eq!(plan.requests.len(), 3000);
        assert!(plan.requests.iter().all(|r| r.at < plan.length));
        assert!(plan.requests.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn the_same_seed_plans_the_same_replay_and_another_seed_does_not() {
        let t = trace();
        let a = ReplayPlan::new(&t, &spec()).unwrap();
        assert_eq!(a, ReplayPlan::new(&t, &spec()).unwrap());
        let b = ReplayPlan::new(&t, &ReplaySpec { seed: 8, ..spec() }).unwrap();
        assert_ne!(a.requests, b.requests);
    }

    #[test]
    fn work_sizes_cover_the_range_log_uniformly() {
        let sizes = work_sizes(
            10_000,
            &Work::Matmul {
                n_lo: 16,
                n_hi: 256,
                body_bytes: 0,
            },
            1,
        );
        assert!(sizes.iter().all(|n| (16..=256).contains(n)));
        // Log-uniform: as many sizes below the geometric middle (64) as above it.
        let below = sizes.iter().filter(|&&n| n < 64).count() as f64 / 1e4;
        assert!((below - 0.5).abs() < 0.03, "{below}");
        assert!(work_sizes(3, &Work::Fixed(Bytes::new()), 1).is_empty());
    }

    #[test]
    fn fixed_work_sends_the_given_body_and_short_bodies_are_not_padded() {
        let t = trace();
        let plan = ReplayPlan::new(
            &t,
            &ReplaySpec {
                work: Work::Fixed(Bytes::from_static(b"hi")),
                ..spec()
            },
        )
        .unwrap();
        assert!(
            plan.targets
                .iter()
                .all(|t| &t.body[..] == b"hi" && t.n.is_none())
        );
        assert_eq!(plan.echo.work, "fixed");
        let body = matmul_body(3, 64, 1, 0);
        assert_eq!(&body[..], br#"{"task_id":"f003","n":64,"seed":1,"pad":""}"#);
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let t = trace();
        let refused = |s: ReplaySpec| match ReplayPlan::new(&t, &s) {
            Err(BenchError::Config(msg)) => msg,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert!(
            refused(ReplaySpec {
                minutes: 2..2,
                ..spec()
            })
            .contains("exclusive")
        );
        assert!(
            refused(ReplaySpec {
                minutes: 0..5,
                ..spec()
            })
            .contains("4 minute(s)")
        );
        assert!(refused(ReplaySpec { scale: 0, ..spec() }).contains("scale"));
        assert!(
            refused(ReplaySpec {
                speedup: 0.0,
                ..spec()
            })
            .contains("speedup")
        );
        assert!(
            refused(ReplaySpec {
                speedup: f64::NAN,
                ..spec()
            })
            .contains("speedup")
        );
        assert!(
            refused(ReplaySpec {
                speedup: 1e9,
                ..spec()
            })
            .contains("microsecond")
        );
        assert!(
            refused(ReplaySpec {
                speedup: 1e-18,
                ..spec()
            })
            .contains("more than the week")
        );
        assert!(
            refused(ReplaySpec {
                work: Work::Matmul {
                    n_lo: 1,
                    n_hi: 2,
                    body_bytes: MAX_BODY_BYTES + 1
                },
                ..spec()
            })
            .contains("at most")
        );
        assert!(
            refused(ReplaySpec {
                function_template: String::new(),
                ..spec()
            })
            .contains("empty")
        );
        let sizes = |n_lo, n_hi| ReplaySpec {
            work: Work::Matmul {
                n_lo,
                n_hi,
                body_bytes: 10,
            },
            ..spec()
        };
        assert!(refused(sizes(0, 4)).contains("LO <= HI"));
        assert!(refused(sizes(9, 4)).contains("LO <= HI"));
        assert!(refused(sizes(4, 2048)).contains("LO <= HI"));
        assert!(
            refused(ReplaySpec {
                scale: u32::MAX,
                ..spec()
            })
            .contains("more than the")
        );
    }

    #[test]
    fn minutes_and_sizes_parse_or_say_what_they_expect() {
        assert_eq!(parse_minutes("0-10").unwrap(), 0..10);
        assert_eq!(parse_minutes(" 60 - 70").unwrap(), 60..70);
        assert_eq!(parse_minutes("5").unwrap(), 5..6);
        for bad in ["", "a-b", "1-", "-3", "1-2-3"] {
            assert!(
                matches!(parse_minutes(bad), Err(BenchError::Config(m)) if m.contains("START-END")),
                "{bad:?}"
            );
        }
        assert_eq!(parse_sizes("16-256").unwrap(), (16, 256));
        assert!(parse_sizes("16").is_err());
        assert!(parse_sizes("x-2").is_err());
    }
}
