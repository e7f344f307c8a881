//! Cell processes end to end, as root: the node's runtime compiles functions, a cell (every
//! layer on: namespaces, empty root, cgroup, capabilities dropped, seccomp) loads their
//! artifacts and runs them, and its death reaches every waiting caller as a typed error.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_cell::{CellLimits, Hierarchy};
use tern_isolator::{CellArgs, CellProcess, CellSpec, Error};
use tern_runtime::{Runtime, RuntimeConfig};
use tern_wire::{ErrorCode, FunctionInfo};

/// Skips (loudly) without root, or fails where `TERN_NO_SKIP=1` (CI as root).
fn root_or_skip() -> bool {
    if tern_cell::jail::is_root() {
        return true;
    }
    if std::env::var_os("TERN_NO_SKIP").is_some_and(|v| v == "1") {
        panic!("TERN_NO_SKIP=1 but cells need root");
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: cells need root (namespaces, cgroups)"
    );
    false
}

fn wasm(name: &str) -> Bytes {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("functions/dist").join(format!("{name}.wasm"));
    if !path.exists() {
        let status = std::process::Command::new("bash")
            .arg(root.join("scripts/build-functions.sh"))
            .status()
            .unwrap();
        assert!(status.success(), "scripts/build-functions.sh failed");
    }
    Bytes::from(std::fs::read(&path).unwrap())
}

/// A node-side runtime that compiles `functions` into `artifacts`, and their infos.
async fn compiled(
    artifacts: &Path,
    functions: &[(&str, u32)],
) -> (RuntimeConfig, Vec<FunctionInfo>) {
    let mut cfg = RuntimeConfig::new("n1", artifacts);
    cfg.max_instances = 16;
    cfg.memory_budget_mb = 16 * 64;
    cfg.max_memory_mb = 64;
    let runtime = Runtime::new(cfg.clone(), Arc::default()).unwrap();
    let mut infos = Vec::new();
    for (name, timeout_ms) in functions {
        let prepared = runtime.prepare(wasm(name)).await.unwrap();
        infos.push(FunctionInfo {
            name: name.parse().unwrap(),
            hash: prepared.hash,
            version: 1,
            timeout_ms: *timeout_ms,
            memory_mb: 32,
            size_bytes: prepared.size_bytes,
            deployed_at_ms: 0,
            max_instances: None,
        });
    }
    (cfg, infos)
}

fn spec(cfg: &RuntimeConfig, root: PathBuf, name: &str) -> CellSpec {
    CellSpec {
        name: format!("it-{}-{name}", std::process::id()),
        program: env!("CARGO_BIN_EXE_tern-cell").into(),
        program_args: Vec::new(),
        args: CellArgs::for_node(cfg, root, 4 << 20),
        limits: CellLimits {
            memory_max: Some(1 << 30),
            pids_max: Some(64),
            ..CellLimits::default()
        },
        max_in_flight: 8,
        start_timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_behind_every_layer_runs_guests_and_its_death_answers_every_waiter() {
    if !root_or_skip() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let artifacts = data.path().join("artifacts");
    let root = data.path().join("cell-root");
    std::fs::create_dir_all(&root).unwrap();
    let (cfg, infos) = compiled(
        &artifacts,
        &[
            ("echo", 5_000),
            ("loop", 300),
            ("membomb", 5_000),
            ("recurse", 5_000),
            ("trap", 5_000),
            ("bigoutput", 5_000),
            ("exit-code", 5_000),
            ("matmul-json", 5_000),
        ],
    )
    .await;
    let hierarchy = Hierarchy::detect().unwrap();
    let t0 = Instant::now();
    let cell = CellProcess::start(&hierarchy, spec(&cfg, root.clone(), "a"))
        .await
        .unwrap();
    eprintln!("cell ready in {:?}", t0.elapsed());
    // No thread of any process of the cell holds a capability (they are per thread).
    let pids = cell.cgroup().processes().unwrap();
    assert!(!pids.is_empty());
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
                let line = status.lines().find(|l| l.starts_with(set)).unwrap();
                assert!(line.ends_with("0000000000000000"), "pid {pid}: {line}");
            }
        }
    }
    for info in &infos {
        cell.install(info.clone()).await.unwrap();
    }
    let echo: tern_wire::FunctionName = "echo".parse().unwrap();
    let hashes: std::collections::HashMap<String, tern_wire::ModuleHash> =
        infos.iter().map(|i| (i.name.to_string(), i.hash)).collect();
    // A function's version, or one no cell has for a function never installed.
    let hash = |n: &str| {
        hashes
            .get(n)
            .copied()
            .unwrap_or(tern_wire::ModuleHash([9; 32]))
    };
    let echo_hash = hash("echo");
    let out = cell
        .run(echo.clone(), echo_hash, b"hello cell".to_vec(), 1)
        .await
        .unwrap();
    assert_eq!(out.output, b"hello cell");
    // Many at once, more than may be in flight: each gets its own answer.
    let calls: Vec<_> = (0..24)
        .map(|i| {
            let (cell, echo) = (cell.clone(), echo.clone());
            tokio::spawn(async move {
                cell.run(echo, echo_hash, format!("call {i}").into_bytes(), 1)
                    .await
            })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(
            c.await.unwrap().unwrap().output,
            format!("call {i}").into_bytes()
        );
    }
    // The guest's own failures come back as the runtime's typed errors.
    let guest_code = |r: Result<_, Error>| match r {
        Err(Error::Guest(e)) => e.code,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        guest_code(
            cell.run("loop".parse().unwrap(), hash("loop"), Vec::new(), 1)
                .await
        ),
        ErrorCode::Timeout
    );
    // A memory bomb is held to its function's 32 MiB (512 pages) inside the cell too.
    let bomb = cell
        .run("membomb".parse().unwrap(), hash("membomb"), Vec::new(), 1)
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&bomb.output).unwrap();
    let pages = report["total_pages"].as_u64().unwrap();
    assert!((256..=512).contains(&pages), "{report}");
    assert_eq!(
        guest_code(
            cell.run("absent".parse().unwrap(), hash("absent"), Vec::new(), 1)
                .await
        ),
        ErrorCode::NotFound
    );
    // Another version than the one installed is refused, not run.
    assert_eq!(
        guest_code(cell.run(echo.clone(), hash("loop"), Vec::new(), 1).await),
        ErrorCode::NotFound
    );
    // wasmtime's trap paths (a stack overflow is a fault its signal handler turns into a
    // trap), output caps and exit codes work behind the seccomp filter.
    for (function, input, code) in [
        ("recurse", "", ErrorCode::GuestTrap),
        ("trap", "", ErrorCode::GuestTrap),
        ("membomb", "alloc", ErrorCode::GuestTrap),
        ("bigoutput", "", ErrorCode::OutputTooLarge),
        ("exit-code", "", ErrorCode::GuestError),
    ] {
        let r = cell
            .run(function.parse().unwrap(), hash(function), input.into(), 1)
            .await;
        assert_eq!(guest_code(r), code, "{function}");
    }
    let matmul = cell
        .run(
            "matmul-json".parse().unwrap(),
            hash("matmul-json"),
            br#"{"n":32,"seed":7}"#.to_vec(),
            1,
        )
        .await
        .unwrap();
    assert!(!matmul.output.is_empty());
    // A function whose artifact is not there cannot be installed, and the cell lives on.
    let mut missing = infos[0].clone();
    missing.hash = tern_wire::ModuleHash([9; 32]);
    assert!(matches!(cell.install(missing).await, Err(Error::Guest(_))));
    assert!(!cell.has_ended());

    // Killed under load: every waiter is answered at once with the cell's death.
    let mut long = infos[1].clone();
    long.name = "long".parse().unwrap();
    long.timeout_ms = 60_000;
    cell.install(long).await.unwrap();
    let loop_hash = hash("loop");
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let cell = cell.clone();
            tokio::spawn(async move {
                cell.run("long".parse().unwrap(), loop_hash, Vec::new(), 1)
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = Instant::now();
    cell.kill();
    // They had started: their answers are lost with the cell, and they say so.
    for w in waiters {
        match w.await.unwrap() {
            Err(Error::CellExited(why)) => assert!(why.contains("signal 9"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
    // A call on the dead cell certainly did not start: it says so, so it may be run again.
    assert!(matches!(
        cell.run(echo, echo_hash, Vec::new(), 1).await,
        Err(Error::EndedBeforeStart(_))
    ));
    let exit = cell.wait_exit().await;
    assert!(exit.contains("signal 9"), "{exit}");
    assert!(
        !cell.cgroup().dir(tern_cell::Controller::Pids).exists(),
        "the dead cell's cgroup is removed"
    );
}
