//! The result of a load run: a [`Report`], rendered as a text table or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::replay::ReplayEcho;

/// Everything measured by one [`crate::load::run`].
///
/// Only requests *scheduled* inside the measured window are counted (closed loop: sent
/// at or after the end of warm-up and before its end; open loop: intended send time in
/// the window). Requests in flight at the end of the window are waited for (up to the
/// request timeout) and counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What was run.
    pub config: ConfigEcho,
    /// `ok` + all errors.
    pub requests: u64,
    /// Requests answered with a 2xx status.
    pub ok: u64,
    /// Failed requests by code: for a status of 400 or more, the `error.code` of the
    /// JSON error body (else `http_<status>`); `io` for transport errors (the
    /// connection is re-opened); `client_timeout` for requests that exceeded the
    /// request timeout.
    pub errors_by_code: BTreeMap<String, u64>,
    /// `requests` / measured window length.
    pub throughput_rps: f64,
    /// Latency of the *successful* (2xx) requests, in microseconds. Open loop: measured
    /// from the intended send time, so queueing in the client is included.
    pub latency_us: LatencySummary,
    /// Responses (any status) carrying `x-tern-cold-start: true`.
    pub cold_start_responses: u64,
    /// Deltas of the server's own counters over the measured window (from `/metrics`).
    pub server: ServerStats,
}

/// Echo of the load configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigEcho {
    pub mode: ModeName,
    pub connections: usize,
    /// Target rate (open loop only).
    pub rate_per_sec: Option<f64>,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub method: String,
    /// Replay: the path with the function name template.
    pub path: String,
    /// What a trace replay replayed (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayEcho>,
    /// The entry nodes' addresses: connections round-robin over them, each request sent on
    /// whichever connection is free (so a slower entry gets fewer). Reports from before there
    /// could be several have none.
    #[serde(default)]
    pub entries: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    Closed,
    Open,
    Replay,
}

/// Latency percentiles in microseconds (all 0 when there was no successful request).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl LatencySummary {
    pub(crate) fn from_histogram(h: &hdrhistogram::Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        LatencySummary {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Server-side counter deltas over the measured window, read from `GET /metrics`
/// (sum over all label sets). All zero and `available == false` when `/metrics` could
/// not be scraped before and after the window, or never contained any of the three
/// counters.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ServerStats {
    pub available: bool,
    /// Δ `tern_cold_starts_total`.
    pub cold_starts: u64,
    /// Δ `tern_meus_total`.
    pub meus: u64,
    /// Δ `tern_module_reuse_total`.
    pub reuse_hits: u64,
    /// `reuse_hits / meus`; `None` if `meus == 0` or metrics are unavailable.
    pub reuse_hit_rate: Option<f64>,
}

impl Report {
    /// Total number of failed requests.
    pub fn errors(&self) -> u64 {
        self.errors_by_code.values().sum()
    }

    /// Pretty-printed JSON.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self)
            .expect("Report has string map keys and plain fields: serialising cannot fail")
    }

    /// Parse a report written by [`Report::to_json_pretty`].
    pub fn from_json(json: &str) -> Result<Report, BenchError> {
        Ok(serde_json::from_str(json)?)
    }

    /// A human-readable table.
    pub fn render_text(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let mode = match (c.mode, c.rate_per_sec) {
            (ModeName::Open, Some(rate)) => format!(
                "open loop, {rate} req/s scheduled over {} connection(s)",
                c.connections
            ),
            (ModeName::Open, None) => format!("open loop, {} connection(s)", c.connections),
            (ModeName::Closed, _) => format!("closed loop, {} connection(s)", c.connections),
            (ModeName::Replay, _) => match &c.replay {
                Some(r) => format!(
                    "trace replay, minutes {}-{} x{} at {}x speed, {} request(s) planned over {} \
                     connection(s)",
                    r.minute_start,
                    r.minute_end,
                    r.scale,
                    r.speedup,
                    r.planned_requests,
                    c.connections
                ),
                None => format!("trace replay, {} connection(s)", c.connections),
            },
        };
        let _ = writeln!(out, "{:<14}{mode}", "mode");
        let _ = writeln!(out, "{:<14}{} {}", "target", c.method, c.path);
        if c.entries.len() > 1 {
            let _ = writeln!(
                out,
                "{:<14}{} ({} nodes; connections round-robin over them, node counters summed)",
                "entries",
                c.entries.join(", "),
                c.entries.len()
            );
        }
        if let Some(r) = &c.replay {
            let _ = writeln!(
                out,
                "{:<14}{} trace function(s) onto {} deployed, work {}, seed {}",
                "functions", r.trace_functions, r.deployed_functions, r.work, r.seed
            );
        }
        let _ = writeln!(
            out,
            "{:<14}{:.1} s measured after {:.1} s warm-up",
            "window", c.duration_secs, c.warmup_secs
        );
        let errors = self.errors();
        let _ = writeln!(
            out,
            "{:<14}{} (ok {}, errors {}{})",
            "requests",
            self.requests,
            self.ok,
            errors,
            if self.requests > 0 {
                format!(
                    ", {:.2} % errors",
                    100.0 * errors as f64 / self.requests as f64
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(out, "{:<14}{:.1} req/s", "throughput", self.throughput_rps);
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "{:<14}{:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency (ok)", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let _ = writeln!(
            out,
            "{:<14}{:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "",
            fmt_us(l.p50 as f64),
            fmt_us(l.p90 as f64),
            fmt_us(l.p99 as f64),
            fmt_us(l.p999 as f64),
            fmt_us(l.max as f64),
            fmt_us(l.mean),
        );
        if self.errors_by_code.is_empty() {
            let _ = writeln!(out, "{:<14}none", "errors");
        } else {
            for (i, (code, n)) in self.errors_by_code.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{:<14}{code:<20} {n}",
                    if i == 0 { "errors" } else { "" }
                );
            }
        }
        let _ = writeln!(
            out,
            "{:<14}{} response(s) with x-tern-cold-start: true",
            "cold starts", self.cold_start_responses
        );
        let s = &self.server;
        if s.available {
            let rate = s
                .reuse_hit_rate
                .map_or_else(|| "n/a".to_owned(), |r| format!("{:.2} %", 100.0 * r));
            let _ = writeln!(
                out,
                "{:<14}cold starts {}, MEUs {}, reuse hits {}, reuse hit rate {rate}",
                "server (Δ)", s.cold_starts, s.meus, s.reuse_hits
            );
        } else {
            let _ = writeln!(out, "{:<14}/metrics unavailable", "server (Δ)");
        }
        out
    }
}

fn fmt_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn sample() -> Report {
        Report {
            config: ConfigEcho {
                mode: ModeName::Open,
                connections: 16,
                rate_per_sec: Some(250.5),
                duration_secs: 10.0,
                warmup_secs: 1.5,
                method: "POST".into(),
                path: "/invoke/echo?x=1".into(),
                replay: None,
                entries: vec!["127.0.0.1:7878".into()],
            },
            requests: 2505,
            ok: 2500,
            errors_by_code: BTreeMap::from([("overloaded".into(), 4), ("io".into(), 1)]),
            throughput_rps: 250.5,
            latency_us: LatencySummary {
                p50: 800,
                p90: 1500,
                p99: 20_000,
                p999: 1_200_000,
                max: 2_000_000,
                mean: 1234.25,
            },
            cold_start_responses: 3,
            server: ServerStats {
                available: true,
                cold_starts: 3,
                meus: 2500,
                reuse_hits: 2497,
                reuse_hit_rate: Some(0.9988),
            },
        }
    }

    #[test]
    fn json_round_trip() {
        let r = sample();
        let json = r.to_json_pretty();
        assert!(json.contains("\"mode\": \"open\""), "{json}");
        let back = Report::from_json(&json).expect("own JSON parses");
        assert_eq!(back, r);
        let mut unavailable = r;
        unavailable.server = ServerStats::default();
        unavailable.config.rate_per_sec = None;
        let back = Report::from_json(&unavailable.to_json_pretty()).expect("own JSON parses");
        assert_eq!(back, unavailable);
        assert!(Report::from_json("{\"requests\": 1}").is_err());
    }

    #[test]
    fn text_table_mentions_everything() {
        let r = sample();
        assert_eq!(r.errors(), 5);
        let t = r.render_text();
        for needle in [
            "open loop, 250.5 req/s",
            "POST /invoke/echo?x=1",
            "2505 (ok 2500, errors 5",
            "250.5 req/s",
            "800 µs",
            "1.50 ms",
            "1.20 s",
            "overloaded",
            "io ",
            "reuse hit rate 99.88 %",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
        let mut u = r;
        u.server = ServerStats::default();
        assert!(u.render_text().contains("/metrics unavailable"));
    }

    #[test]
    fn a_replay_report_says_what_was_replayed_and_round_trips() {
        let mut r = sample();
        r.config.mode = ModeName::Replay;
        r.config.rate_per_sec = None;
        r.config.path = "/v1/functions/mm-{i}/invoke".into();
        r.config.replay = Some(ReplayEcho {
            minute_start: 60,
            minute_end: 70,
            scale: 2,
            speedup: 6.0,
            seed: 3,
            function_template: "mm-{i}".into(),
            trace_functions: 40,
            deployed_functions: 40,
            work: "matmul n=16..256, 1024-byte bodies".into(),
            planned_requests: 2505,
        });
        let t = r.render_text();
        for needle in [
            "trace replay, minutes 60-70 x2 at 6x speed, 2505 request(s) planned over 16",
            "POST /v1/functions/mm-{i}/invoke",
            "40 trace function(s) onto 40 deployed, work matmul n=16..256, 1024-byte bodies, seed 3",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
        let json = r.to_json_pretty();
        assert!(json.contains("\"mode\": \"replay\""), "{json}");
        assert_eq!(Report::from_json(&json).unwrap(), r);
        // Reports written before replays existed (no `replay` key) still parse.
        let old = sample().to_json_pretty();
        assert!(!old.contains("replay"));
        assert_eq!(Report::from_json(&old).unwrap(), sample());
    }
}
