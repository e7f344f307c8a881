//! Workloads: the Azure Functions 2019 per-minute trace and synthetic profiles, turned into
//! timestamped arrivals. Parsing takes a string (the caller does the I/O: this crate is pure).

use crate::error::{PolicyError, Result};
use crate::rng::Rng;

/// One function of the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceFunction {
    /// Owner (tenant) hash.
    pub owner: String,
    /// App hash.
    pub app: String,
    /// Function hash.
    pub function: String,
    /// Invocations per minute.
    pub per_minute: Vec<u32>,
}

/// A parsed per-minute trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Functions in file order.
    pub functions: Vec<TraceFunction>,
    /// Number of minutes (the shortest row).
    pub minutes: usize,
}

impl Trace {
    /// Parse the Azure 2019 layout: `owner,app,function,trigger,count,count,…`. The dataset's
    /// header row (`HashOwner,HashApp,HashFunction,Trigger,1,2,…`) is skipped if it is the
    /// first line: its minute labels would otherwise parse as counts.
    pub fn parse(text: &str) -> Result<Self> {
        let mut functions = Vec::new();
        let mut minutes = usize::MAX;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (i == 0 && line.starts_with("HashOwner,")) {
                continue;
            }
            let mut it = line.split(',');
            let mut field = |name: &str| {
                it.next()
                    .map(str::to_string)
                    .ok_or_else(|| PolicyError::Trace {
                        line: i + 1,
                        msg: format!("missing {name}"),
                    })
            };
            let owner = field("owner")?;
            let app = field("app")?;
            let function = field("function")?;
            let _trigger = field("trigger")?;
            let per_minute = it
                .map(|c| {
                    c.trim().parse::<u32>().map_err(|e| PolicyError::Trace {
                        line: i + 1,
                        msg: format!("count {c:?}: {e}"),
                    })
                })
                .collect::<Result<Vec<u32>>>()?;
            if per_minute.is_empty() {
                return Err(PolicyError::Trace {
                    line: i + 1,
                    msg: "no counts".into(),
                });
            }
            minutes = minutes.min(per_minute.len());
            functions.push(TraceFunction {
                owner,
                app,
                function,
                per_minute,
            });
        }
        if functions.is_empty() {
            return Err(PolicyError::Trace {
                line: 0,
                msg: "empty trace".into(),
            });
        }
        Ok(Trace { functions, minutes })
    }

    /// Total invocations.
    pub fn total(&self) -> u64 {
        self.functions
            .iter()
            .flat_map(|f| f.per_minute.iter().take(self.minutes))
            .map(|&c| c as u64)
            .sum()
    }

    /// Distinct owners, in first-seen order; `tenant_of[i]` is the owner index of function `i`.
    pub fn tenants(&self) -> (Vec<String>, Vec<usize>) {
        let mut owners: Vec<String> = Vec::new();
        let tenant_of = self
            .functions
            .iter()
            .map(|f| match owners.iter().position(|o| *o == f.owner) {
                Some(p) => p,
                None => {
                    owners.push(f.owner.clone());
                    owners.len() - 1
                }
            })
            .collect();
        (owners, tenant_of)
    }

    /// Arrivals for minutes `[from, to)`, times relative to minute `from`, each counted
    /// invocation repeated `scale` times (to load a cluster harder than the trace's ~2 req/s),
    /// spread uniformly at random within its minute. Sorted by time; ties keep function order.
    pub fn arrivals(&self, from: usize, to: usize, scale: u32, seed: u64) -> Vec<Arrival> {
        let mut rng = Rng::new(seed);
        let to = to.min(self.minutes);
        let mut out = Vec::new();
        for m in from..to {
            let base = (m - from) as f64 * 60_000.0;
            let start = out.len();
            for (fi, f) in self.functions.iter().enumerate() {
                for _ in 0..f.per_minute[m] as u64 * scale as u64 {
                    out.push(Arrival {
                        t_ms: base + rng.next_f64() * 60_000.0,
                        function: fi,
                    });
                }
            }
            out[start..].sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        }
        out
    }
}

/// One invocation arriving at the cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// Arrival time, ms from the start of the run.
    pub t_ms: f64,
    /// Function index.
    pub function: usize,
}

/// Synthetic load shapes from the paper's experiments.
///
/// With the `candle` feature it is serialisable, internally tagged (`{"kind": "steady", "rps":
/// …}`): `policy-bench` writes it to its JSON as is, so a change here changes that format.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(
    feature = "candle",
    derive(serde::Serialize, serde::Deserialize),
    serde(tag = "kind", rename_all = "snake_case")
)]
pub enum Profile {
    /// Poisson arrivals at a constant rate (the paper's steady 200 req/s).
    Steady {
        /// Requests per second.
        rps: f64,
    },
    /// Alternating base and burst phases; burst rate uniform in `[burst_lo, burst_hi]` each burst
    /// (the paper's 500–1,000 req/s bursts).
    Bursty {
        /// Base rate, req/s.
        base_rps: f64,
        /// Burst rate range, req/s.
        burst_lo: f64,
        /// Burst rate range, req/s.
        burst_hi: f64,
        /// Burst length, s.
        burst_s: f64,
        /// Period between burst starts, s.
        period_s: f64,
    },
    /// `tasks` invocations all arriving within `spread_ms` (the paper's 3,000 concurrent tasks),
    /// repeated every `period_s`.
    Concurrent {
        /// Tasks per wave.
        tasks: usize,
        /// Arrival spread of a wave, ms.
        spread_ms: f64,
        /// Seconds between waves.
        period_s: f64,
    },
}

/// Synthetic arrivals over `duration_s` for `functions` functions with Zipf(1.0) popularity.
pub fn synthetic(profile: Profile, functions: usize, duration_s: f64, seed: u64) -> Vec<Arrival> {
    let mut rng = Rng::new(seed);
    let functions = functions.max(1);
    let zipf: Vec<f64> = (1..=functions).map(|k| 1.0 / k as f64).collect();
    let pick = |rng: &mut Rng| rng.weighted(&zipf).unwrap_or(0);
    let end = duration_s.max(0.0) * 1000.0;
    let mut out = Vec::new();
    match profile {
        Profile::Steady { rps } => {
            let mut t = rng.exp(rps / 1000.0);
            while t < end {
                let f = pick(&mut rng);
                out.push(Arrival {
                    t_ms: t,
                    function: f,
                });
                t += rng.exp(rps / 1000.0);
            }
        }
        Profile::Bursty {
            base_rps,
            burst_lo,
            burst_hi,
            burst_s,
            period_s,
        } => {
            let period = period_s.max(0.001) * 1000.0;
            let mut t = 0.0;
            let mut burst_rate = burst_lo;
            let mut phase_start = -1.0;
            while t < end {
                let phase = (t / period).floor();
                if phase != phase_start {
                    phase_start = phase;
                    burst_rate = burst_lo + rng.next_f64() * (burst_hi - burst_lo).max(0.0);
                }
                let in_burst = t - phase * period < burst_s * 1000.0;
                let rate = if in_burst { burst_rate } else { base_rps };
                t += rng.exp(rate.max(1e-9) / 1000.0);
                if t < end {
                    let f = pick(&mut rng);
                    out.push(Arrival {
                        t_ms: t,
                        function: f,
                    });
                }
            }
        }
        Profile::Concurrent {
            tasks,
            spread_ms,
            period_s,
        } => {
            let mut wave = 0.0;
            while wave < end {
                let start = out.len();
                for _ in 0..tasks {
                    let f = pick(&mut rng);
                    out.push(Arrival {
                        t_ms: wave + rng.next_f64() * spread_ms.max(0.0),
                        function: f,
                    });
                }
                out[start..].sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
                wave += period_s.max(0.001) * 1000.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_layout_and_rejects_garbage() {
        let t =
            Trace::parse("o1,a,f1,http,1,0,2\no1,a,f2,http,0,3,0\no2,b,f3,http,1,1,1,9\n").unwrap();
        assert_eq!(t.functions.len(), 3);
        assert_eq!(t.minutes, 3);
        assert_eq!(t.total(), 9);
        let (owners, of) = t.tenants();
        assert_eq!(owners.len(), 2);
        assert_eq!(of, vec![0, 0, 1]);
        assert!(Trace::parse("").is_err());
        assert!(Trace::parse("o,a,f,http,1,x").is_err());
        assert!(Trace::parse("o,a").is_err());
    }

    #[test]
    fn the_datasets_header_row_is_skipped_not_read_as_a_function() {
        let t =
            Trace::parse("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,3,4\n").unwrap();
        assert_eq!(t.functions.len(), 1);
        assert_eq!(t.functions[0].per_minute, [3, 4]);
        // Only as the first line: later it is a malformed row... that happens to parse.
        let t = Trace::parse("o,a,f,http,3,4\nHashOwner,x,y,z,1,2\n").unwrap();
        assert_eq!(t.functions.len(), 2);
    }

    #[test]
    fn arrivals_are_sorted_scaled_and_seeded() {
        let t = Trace::parse("o,a,f1,http,2,1\no,a,f2,http,1,0\n").unwrap();
        let a = t.arrivals(0, 2, 3, 1);
        assert_eq!(a.len(), 12);
        assert!(a.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
        assert!(a[..9].iter().all(|x| x.t_ms < 60_000.0));
        assert!(a[9..].iter().all(|x| x.t_ms >= 60_000.0 && x.function == 0));
        assert_eq!(a, t.arrivals(0, 2, 3, 1));
        assert_ne!(a, t.arrivals(0, 2, 3, 2));
        assert_eq!(t.arrivals(1, 2, 1, 0).len(), 1);
    }

    #[test]
    fn repo_trace_matches_readme() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../traces/azure2019-http-12h.csv"
        ))
        .unwrap();
        let t = Trace::parse(&text).unwrap();
        assert_eq!(t.functions.len(), 306);
        assert_eq!(t.minutes, 720);
        assert_eq!(t.total(), 88_480);
    }

    #[test]
    fn synthetic_rates_are_about_right() {
        let s = synthetic(Profile::Steady { rps: 200.0 }, 20, 10.0, 1);
        assert!((1_800..2_200).contains(&s.len()), "{}", s.len());
        let b = synthetic(
            Profile::Bursty {
                base_rps: 200.0,
                burst_lo: 500.0,
                burst_hi: 1000.0,
                burst_s: 5.0,
                period_s: 10.0,
            },
            20,
            20.0,
            1,
        );
        // 10 s at 200 + 10 s at 500..1000 → 7,000..12,000
        assert!((6_500..12_500).contains(&b.len()), "{}", b.len());
        let c = synthetic(
            Profile::Concurrent {
                tasks: 3000,
                spread_ms: 100.0,
                period_s: 5.0,
            },
            20,
            10.0,
            1,
        );
        assert_eq!(c.len(), 6000);
        assert!(c.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
    }
}
