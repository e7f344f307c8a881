//! `tern bench --trace`: a per-minute trace replayed open loop against a real node, onto
//! functions it deploys itself, with a record per request.

use std::collections::BTreeMap;

use bytes::Bytes;
use hyper::Method;

use crate::support::*;

/// Three trace functions over two minutes: 4+2, 0+3 and 1+0 invocations.
const TRACE: &str = "o1,a1,f0,http,4,2\no1,a2,f1,http,0,3\no2,a3,f2,http,1,0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_replay_deploys_its_functions_sends_every_planned_request_and_records_each() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let server = addr.to_string();
    let work = tempfile::tempdir().unwrap();
    let trace = work.path().join("trace.csv");
    std::fs::write(&trace, TRACE).unwrap();
    let matmul = functions_dir().join("matmul-json.wasm");
    let bench = |extra: &[&str]| {
        run_tern(
            tern_command()
                .arg("bench")
                .arg("--trace")
                .arg(&trace)
                .args([
                    "--speedup",
                    "60",
                    "--function",
                    "mm-{i}",
                    "--work-n",
                    "4-16",
                ])
                .args(["--connections", "4", "--no-progress", "--deploy"])
                .arg(&matmul)
                .args(["--deploy-timeout-ms", "700", "--deploy-memory-mb", "64"])
                .args(extra)
                .args(["--server", &server])
                .env_remove("TERN_TOKEN"),
        )
    };
    let records = work.path().join("records.jsonl");
    let report = work.path().join("report.json");
    let started = std::time::Instant::now();
    let (ok, out, err) = bench(&[
        "--minutes",
        "0-2",
        "--scale",
        "2",
        "--records",
        records.to_str().unwrap(),
        "--json",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    // Two trace minutes at 60x speed last two seconds, however early the last call ends.
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert!(err.contains("as 3 function(s) (0 already there)"), "{err}");
    assert!(
        out.contains("trace replay, minutes 0-2 x2 at 60x speed, 20 request(s) planned"),
        "{out}"
    );

    // Every trace function that occurs was deployed under its own name, once.
    let list = json(&request(addr, Method::GET, "/v1/functions", Bytes::new()).await);
    let versions: BTreeMap<String, (u64, u64, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            // Deployed with the limits asked for.
            (
                f["name"].as_str().unwrap().to_owned(),
                (
                    f["version"].as_u64().unwrap(),
                    f["timeout_ms"].as_u64().unwrap(),
                    f["memory_mb"].as_u64().unwrap(),
                ),
            )
        })
        .filter(|(name, _)| name.starts_with("mm-"))
        .collect();
    assert_eq!(
        versions,
        BTreeMap::from([
            ("mm-000".to_owned(), (1, 700, 64)),
            ("mm-001".to_owned(), (1, 700, 64)),
            ("mm-002".to_owned(), (1, 700, 64))
        ])
    );

    // A record per planned request: every traced invocation twice, answered by the node.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&records)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    let mut per_function: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for line in &lines {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["node"], "test-node", "{line}");
        assert!(line["latency_us"].as_u64().unwrap() > 0, "{line}");
        assert!(line["server_us"].as_u64().is_some(), "{line}");
        let function = line["function"].as_str().unwrap();
        *per_function.entry(function).or_default() += 1;
        let n = line["n"].as_u64().unwrap();
        assert!((4..=16).contains(&n), "{line}");
        // One size per function.
        assert_eq!(*sizes.entry(function).or_insert(n), n, "{line}");
        let at_s = line["at_ms"].as_f64().unwrap() / 1_000.0;
        assert!((0.0..2.0).contains(&at_s), "{line}");
    }
    assert_eq!(
        per_function,
        BTreeMap::from([("mm-000", 12), ("mm-001", 6), ("mm-002", 2)])
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["requests"], 20);
    assert_eq!(report["ok"], 20);
    assert_eq!(report["config"]["mode"], "replay");
    assert_eq!(report["config"]["replay"]["planned_requests"], 20);
    assert_eq!(report["config"]["replay"]["deployed_functions"], 3);

    // Again over the second minute: the functions are there, so nothing is redeployed.
    let (ok, out, err) = bench(&["--minutes", "1-2"]);
    assert!(ok, "{out}\n{err}");
    assert!(!err.contains("deployed"), "{err}");
    assert!(out.contains("5 request(s) planned"), "{out}");
    let list = json(&request(addr, Method::GET, "/v1/functions/mm-000", Bytes::new()).await);
    assert_eq!(list["version"], 1);

    // A window past the trace is refused with one line saying so.
    let (ok, _, err) = bench(&["--minutes", "0-3"]);
    assert!(!ok);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: invalid load configuration: minutes 0-3 go past the trace"),
        "{err}"
    );
    node.shutdown().await.unwrap();
}

/// `tern bench --entry`: the load goes through both nodes (standalone, each with the `echo`
/// example, so `--deploy` has nothing to deploy and the entry serves it at once), and the
/// report names both entries and sums their counters. An entry given twice is refused before
/// any load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_spreads_its_connections_over_every_entry_node() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        start(config(d1.path())).await,
        start(config(d2.path())).await,
    );
    let (sa, sb) = (a.addr().to_string(), b.addr().to_string());
    let echo = functions_dir().join("echo.wasm");
    let out_dir = tempfile::tempdir().unwrap();
    let report = out_dir.path().join("report.json");
    let bench = |entry: &str| {
        run_tern(
            tern_command()
                .args(["bench", "--function", "echo", "--deploy"])
                .arg(&echo)
                .args(["--duration", "1s", "--warmup", "0s", "--connections", "4"])
                .args(["--no-progress", "--json"])
                .arg(&report)
                .args(["--server", &sa, "--entry", entry])
                .env_remove("TERN_TOKEN"),
        )
    };
    let (ok, out, err) = bench(&sb);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("(2 nodes;"), "{out}");
    let (on_a, on_b) = (
        metric(a.addr(), "tern_meus_total").await,
        metric(b.addr(), "tern_meus_total").await,
    );
    assert!(on_a > 0.0 && on_b > 0.0, "a ran {on_a}, b ran {on_b}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["config"]["entries"], serde_json::json!([sa, sb]));
    assert_eq!(
        r["server"]["meus"].as_f64().unwrap(),
        r["requests"].as_f64().unwrap(),
        "counted over both nodes: {r}"
    );
    let (ok, _, err) = bench(&sa);
    assert!(!ok && err.contains("given twice"), "{err}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
