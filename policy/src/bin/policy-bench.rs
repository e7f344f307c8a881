//! Policy benchmark: train PPO on the first part of the Azure trace, evaluate every policy on a
//! later part it never saw, on a heterogeneous simulated cluster; write the results as JSON, a
//! markdown report, an SVG learning curve and the committed weights.
//!
//! `cargo run --release -p tern-policy --bin policy-bench -- [--iterations N] [--scale S]
//!  [--window MIN] [--seeds 1,2,3,4,5 | --seed S] [--calibration FILE] [--out DIR] [--quick]`
//!
//! `--calibration FILE`: the simulated classes take the constants measured on real nodes
//! (`bench/experiments/real-nodes.sh calibration` writes FILE, `calibration.json`).
//!
//! `cargo run -p tern-policy --bin policy-bench -- --render-only DIR/policy-bench.json [--out DIR]`
//! re-renders the report and the chart from a run's JSON without running anything.
//!
//! Without `--seed`/`--seeds` it runs the pre-registered multi-seed protocol (seeds 1–5; one seed
//! with `--quick`) and writes one report covering every seed. The protocol and the renderers live
//! in `tern_policy::bench`; this file is the command line and the files.

use std::error::Error;
use std::path::Path;
use std::time::Instant;
use tern_policy::bench::{self, BenchData, Host, Options};
use tern_policy::sim::Calibration;
use tern_policy::trace::Trace;

/// What the command line asks for.
struct Args {
    options: Options,
    out: String,
    /// Re-render from this JSON instead of running the protocol.
    render_only: Option<String>,
}

fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let v: Vec<u64> = s
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<u64>()
                .map_err(|e| format!("seed {x:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if v.is_empty() {
        return Err("--seeds needs at least one seed".into());
    }
    let mut d = v.clone();
    d.sort_unstable();
    d.dedup();
    if d.len() != v.len() {
        return Err("--seeds has a duplicate".into());
    }
    Ok(v)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        options: Options::default(),
        out: concat!(env!("CARGO_MANIFEST_DIR"), "/reports").to_string(),
        render_only: None,
    };
    // A re-render takes everything from the JSON: a protocol flag next to it would be ignored
    // silently, so it is refused instead.
    let mut protocol_flag = None;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{k} needs a value"));
        let o = &mut a.options;
        match k.as_str() {
            "--iterations" => o.iterations = val()?.parse().map_err(|e| format!("{e}"))?,
            "--scale" => o.scale = val()?.parse().map_err(|e| format!("{e}"))?,
            "--window" => o.window = val()?.parse().map_err(|e| format!("{e}"))?,
            "--seed" | "--seeds" => o.seeds = parse_seeds(&val()?)?,
            "--quick" => o.quick = true,
            "--calibration" => {
                let path = val()?;
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
                let cal: Calibration =
                    serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
                cal.validate().map_err(|e| format!("{path}: {e}"))?;
                o.calibration = Some(cal);
                o.calibration_file = Some(path);
            }
            "--out" => a.out = val()?,
            "--render-only" => a.render_only = Some(val()?),
            "--bench" => {} // passed by `cargo bench`; ignored
            other => return Err(format!("unknown argument {other}")),
        }
        if !matches!(k.as_str(), "--out" | "--render-only" | "--bench") {
            protocol_flag = Some(k);
        }
    }
    if let (Some(_), Some(flag)) = (&a.render_only, protocol_flag) {
        return Err(format!(
            "--render-only takes the options from the JSON; {flag} cannot be combined with it"
        ));
    }
    Ok(a)
}

/// Wall clock from the start of the run; progress on stderr.
struct Stderr {
    start: Instant,
}

impl Host for Stderr {
    fn now_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn progress(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("policy-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let out = Path::new(&args.out);
    let data = match &args.render_only {
        Some(json) => {
            let text = std::fs::read_to_string(json).map_err(|e| format!("reading {json}: {e}"))?;
            let data = BenchData::from_json(&text).map_err(|e| format!("{json}: {e}"))?;
            std::fs::create_dir_all(out)?;
            data
        }
        None => {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../traces/azure2019-http-12h.csv"
            );
            let trace = Trace::parse(&std::fs::read_to_string(path)?)?;
            let mut host = Stderr {
                start: Instant::now(),
            };
            let outcome = bench::run(&args.options, &trace, &mut host)?;
            let data = outcome.data;
            std::fs::create_dir_all(out)?;
            // The data first: whatever happens to the renderers later, the run is not lost.
            std::fs::write(out.join("policy-bench.json"), data.to_json()?)?;
            // The selected weights, loadable by the SchedulerAgent with
            // PolicyWeights::from_safetensors.
            std::fs::write(
                out.join("ppo-weights.safetensors"),
                outcome.weights.to_safetensors(data.checkpoint_metadata())?,
            )?;
            data
        }
    };
    std::fs::write(
        out.join("learning-curve.svg"),
        bench::svg::learning_curve(&data),
    )?;
    let md = bench::report::markdown(&data);
    std::fs::write(out.join("policy-bench.md"), &md)?;
    println!("{md}");
    Ok(())
}
