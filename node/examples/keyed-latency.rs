//! What a keyed call costs when its function is owned by the node the caller reached and when
//! it is owned by another: `tern-client` calls through one node, each with a fresh
//! idempotency key, to a function whose keys' home (its warm-affinity owner) is that node
//! ("entry": run there, its result copied to the key's successor) or another member ("other":
//! the call goes over the mesh to the home, which runs it and copies the result), alternated
//! in rounds on one connection, closed loop. `scripts/bench-keyed-hop.sh` starts the
//! cluster and runs this; its report is generated from what this prints.
//!
//! `--entry` names the entry node's client API (its `client_listen`), not its HTTP port.
//! `--pick PREFIX` prints two function names, `PREFIX-N`, one homed at the entry and one
//! elsewhere, for the script to deploy, and exits.
//!
//! ```sh
//! cargo run --release -p tern-node --example keyed-latency -- \
//!     --ca DIR/ca.pem --entry a=127.0.0.1:7951 --members a,b,c --calls 2000 --rounds 5 \
//!     echo-0 echo-1
//! ```
//!
//! The token comes from `TERN_TOKEN`. Prints one JSON object per round and group:
//! `{"round", "group": "entry"|"other", "function", "calls", "p50_us", "p90_us", "p99_us",
//! "mean_us", "ran_on": {node: calls}}`; a call that fails stops the run.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tern_client::{Client, ClientConfig, InvokeOptions, parse_seed};
use tern_cluster::NodeName;

struct Args {
    config: ClientConfig,
    entry: String,
    members: Vec<NodeName>,
    calls: usize,
    rounds: usize,
    functions: Vec<String>,
    pick: Option<String>,
}

const USAGE: &str = "usage: keyed-latency --ca FILE --entry NAME=HOST:PORT --members a,b,c \
[--calls N] [--rounds R] (--pick PREFIX | FUNCTION...)";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut ca, mut entry, mut members) = (None, None, Vec::new());
    let (mut calls, mut rounds, mut functions, mut pick) = (2000, 5, Vec::new(), None);
    let number = |v: Option<String>, what: &str| {
        v.and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{what} needs a positive number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ca" => ca = Some(args.next().ok_or("--ca needs a file")?),
            "--entry" => {
                let seed = args.next().ok_or("--entry needs NAME=HOST:PORT")?;
                entry = Some(parse_seed(&seed).map_err(|e| e.to_string())?)
            }
            "--members" => {
                members = args
                    .next()
                    .ok_or("--members needs a,b,c")?
                    .split(',')
                    .map(|n| n.parse::<NodeName>().map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--calls" => calls = number(args.next(), "--calls")?,
            "--rounds" => rounds = number(args.next(), "--rounds")?,
            "--pick" => pick = Some(args.next().ok_or("--pick needs a prefix")?),
            other if other.starts_with("--") => return Err(format!("unknown flag {other}")),
            other => functions.push(other.to_owned()),
        }
    }
    let (name, addr) = entry.ok_or("--entry is required")?;
    if members.len() < 2 || !members.iter().any(|m| m.as_str() == name) {
        return Err("--members must list the entry and at least one other node".into());
    }
    let mut config = ClientConfig::new(
        vec![(name.clone(), addr)],
        std::path::PathBuf::from(ca.ok_or("--ca is required")?),
    );
    if let Ok(token) = std::env::var("TERN_TOKEN") {
        config = config.with_token(token);
    }
    config.request_timeout = Duration::from_secs(10);
    Ok(Args {
        config,
        entry: name,
        members,
        calls,
        rounds,
        functions,
        pick,
    })
}

/// The value at rank `q` (0..1) of sorted `v`.
fn rank(v: &[u64], q: f64) -> u64 {
    v[((v.len() as f64 * q).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let home_is_entry = |function: &str| {
        let scope = tern_link::key_home::scope(function, "");
        tern_link::key_home::home_among(&scope, &args.members)
            .is_some_and(|home| home.as_str() == args.entry)
    };
    if let Some(prefix) = &args.pick {
        let name = |entry: bool| {
            (0..)
                .map(|i| format!("{prefix}-{i}"))
                .find(|f| home_is_entry(f) == entry)
                .unwrap_or_default()
        };
        println!("{} {}", name(true), name(false));
        return ExitCode::SUCCESS;
    }
    let pick = |entry: bool| {
        args.functions
            .iter()
            .find(|f| home_is_entry(f) == entry)
            .cloned()
    };
    let (Some(at_entry), Some(elsewhere)) = (pick(true), pick(false)) else {
        eprintln!(
            "the functions need one homed at {} and one elsewhere (see --pick)\n{USAGE}",
            args.entry
        );
        return ExitCode::from(2);
    };
    let client = match Client::connect(args.config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Fresh keys for every call (a repeated key would be a replay, not a run).
    let mut counter = 0u64;
    let mut next_key = || {
        counter += 1;
        format!("hop-{counter}")
    };
    let input = b"hello echo".to_vec();
    for round in 1..=args.rounds {
        // Alternate which group goes first, round by round.
        let order = if round % 2 == 1 {
            [true, false]
        } else {
            [false, true]
        };
        for entry in order {
            let function = if entry { &at_entry } else { &elsewhere };
            let mut took = Vec::with_capacity(args.calls);
            let mut ran_on: BTreeMap<String, u64> = BTreeMap::new();
            for _ in 0..args.calls {
                let options = InvokeOptions {
                    idempotency_key: Some(next_key()),
                    ..Default::default()
                };
                let started = Instant::now();
                match client.invoke_with(function, input.clone(), options).await {
                    Ok(out) if out.output[..] == input[..] => {
                        took.push(started.elapsed().as_micros() as u64);
                        *ran_on.entry(out.node).or_default() += 1;
                    }
                    Ok(out) => {
                        eprintln!("wrong output: {:?}", String::from_utf8_lossy(&out.output));
                        return ExitCode::FAILURE;
                    }
                    Err(e) => {
                        eprintln!("a call failed: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            took.sort_unstable();
            let mean = took.iter().sum::<u64>() as f64 / took.len() as f64;
            let line = serde_json::json!({
                "round": round,
                "group": if entry { "entry" } else { "other" },
                "function": function,
                "calls": took.len(),
                "p50_us": rank(&took, 0.50),
                "p90_us": rank(&took, 0.90),
                "p99_us": rank(&took, 0.99),
                "mean_us": (mean * 10.0).round() / 10.0,
                "ran_on": ran_on,
            });
            println!("{line}");
        }
    }
    ExitCode::SUCCESS
}
