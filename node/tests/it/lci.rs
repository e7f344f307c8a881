//! `isolation = "lci"` on a real node (root): each tenant's guests run in a cell of its own,
//! and a cell killed under load costs only its own callers, with typed errors.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use tern_node::config::{AuthMode, Config, Isolation};

use crate::auth::{new_token_for, with_token};
use crate::support::*;

fn body(r: &tern_bench::Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lci_each_tenant_runs_in_its_own_cell_and_a_killed_cell_costs_only_its_callers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    cfg.examples = vec!["echo".into()];
    cfg.auth = AuthMode::Tokens;
    let node = start(cfg).await;
    let addr = node.addr();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let admin = admin.trim();
    use_admin_token(addr, admin.to_owned());
    let r = with_token(
        addr,
        Method::POST,
        "/v1/tenants",
        Some(admin),
        r#"{"name":"acme"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let (dev, _) = new_token_for(addr, admin, "developer", "acme").await;
    for (name, module, query) in [("work", "echo", ""), ("spin", "loop", "?timeout_ms=10000")] {
        let path = format!("/v1/functions/{name}{query}");
        let r = with_token(addr, Method::PUT, &path, Some(&dev), wasm(module)).await;
        assert_eq!(r.status, 201, "{}", body(&r));
    }
    let call = |token: String, name: &'static str, input: &'static str| async move {
        with_token(
            addr,
            Method::POST,
            &format!("/v1/functions/{name}/invoke"),
            Some(&token),
            input,
        )
        .await
    };
    let r = call(admin.to_owned(), "echo", "default's").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "default's"));
    let r = call(dev.clone(), "work", "acme's").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "acme's"));
    // A redeploy reaches the cell: the next call runs the new version.
    let r = with_token(
        addr,
        Method::PUT,
        "/v1/functions/other",
        Some(&dev),
        wasm("exit-code"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let r = call(dev.clone(), "other", "").await;
    assert_eq!(code(&r), "guest_error", "{}", body(&r));
    let r = with_token(
        addr,
        Method::PUT,
        "/v1/functions/other",
        Some(&dev),
        wasm("echo"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let r = call(dev.clone(), "other", "new version").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "new version"));
    let text = metrics_text(addr, Some(admin)).await;
    assert!(
        text.contains("tern_isolation_mode{mode=\"lci\"} 1"),
        "{text}"
    );
    assert!(text.contains("tern_cells_running 2\n"), "{text}");
    // Eq. 4 with unit weights: two cells of equal weight share the CPU half and half and
    // nothing else, so (0.5 + 5) / 6.
    assert!(
        text.contains("tern_isolation_strength{tenant=\"acme\"} 0.9167\n"),
        "{text}"
    );
    assert!(
        text.contains("tern_isolation_sharing{tenant=\"acme\",resource=\"cpu\"} 0.5000\n"),
        "{text}"
    );
    assert!(
        text.contains("tern_cell_start_seconds_count{} 2\n"),
        "{text}"
    );
    let cells = node.app().cells.get().unwrap().clone();
    let acme: tern_tenancy::TenantName = "acme".parse().unwrap();
    let default = tern_tenancy::TenantName::default_tenant();
    let acme_cell = cells.processes(&acme).await;
    let default_cell = cells.processes(&default).await;
    assert!(!acme_cell.is_empty() && !default_cell.is_empty());
    assert!(
        acme_cell.iter().all(|p| !default_cell.contains(p)),
        "two tenants, two cells"
    );
    assert!(
        !acme_cell.contains(&std::process::id()),
        "guests do not run in the node process"
    );
    // A root node's cells run as unprivileged users, one per tenant (the jail's waiting
    // first process, which holds no capability, stays root).
    let users = |pids: &[u32]| -> Vec<u32> {
        let mut uids: Vec<u32> = pids
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|s| {
                let line = s.lines().find(|l| l.starts_with("Uid:"))?;
                line.split_whitespace().nth(1)?.parse().ok()
            })
            .filter(|uid| *uid != 0)
            .collect();
        uids.dedup();
        uids
    };
    let (acme_users, default_users) = (users(&acme_cell), users(&default_cell));
    assert_eq!(acme_users.len(), 1, "{acme_users:?}");
    assert_eq!(default_users.len(), 1, "{default_users:?}");
    assert!(acme_users[0] > tern_isolator::cells::CELL_USERS && acme_users != default_users);
    // Each cell sees only its tenant's artifacts: acme's has `loop` (deployed by acme alone),
    // default's has not; the module both deployed (echo) is the node's one file in both.
    let listing = |view: Option<std::path::PathBuf>| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(view.expect("a running cell"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let acme_sees = listing(cells.artifact_dir(&acme).await);
    let default_sees = listing(cells.artifact_dir(&default).await);
    let hash_of = |module: &str| tern_runtime::Runtime::module_hash(&wasm(module)).to_hex();
    assert!(
        acme_sees.iter().any(|n| n.starts_with(&hash_of("loop"))),
        "{acme_sees:?}"
    );
    assert!(
        !default_sees.iter().any(|n| n.starts_with(&hash_of("loop"))),
        "{default_sees:?}"
    );
    assert!(
        default_sees.iter().any(|n| n.starts_with(&hash_of("echo"))),
        "{default_sees:?}"
    );

    // A long call in acme's cell, killed once the guest is surely running in it (the cell
    // has burnt CPU for it; before that, the call would rightly run again in a new cell).
    let cpu_ticks = || -> u64 {
        acme_cell
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .filter_map(|s| {
                let f: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .sum()
    };
    let before = cpu_ticks();
    let spinning = tokio::spawn(call(dev.clone(), "spin", ""));
    let t0 = Instant::now();
    while cpu_ticks() < before + 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the guest never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal_all(&acme_cell, "-9");
    let t0 = Instant::now();
    let r = spinning.await.unwrap();
    assert_eq!(
        (r.status, code(&r).as_str()),
        (500, "isolation_fault"),
        "{}",
        body(&r)
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // The other tenant never noticed; acme's next call gets a new cell.
    let r = call(admin.to_owned(), "echo", "still here").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "still here"));
    let r = call(dev.clone(), "work", "again").await;
    assert_eq!(
        (r.status, body(&r).as_str()),
        (200, "again"),
        "{}",
        body(&r)
    );
    let new_cell = cells.processes(&acme).await;
    assert!(!new_cell.is_empty() && new_cell.iter().all(|p| !acme_cell.contains(p)));
    // Killed again with nothing running: the next call had not started in it, so it runs in
    // the cell that replaces it instead of failing.
    signal_all(&new_cell, "-9");
    let r = call(dev.clone(), "work", "after a quiet kill").await;
    assert_eq!(
        (r.status, body(&r).as_str()),
        (200, "after a quiet kill"),
        "{}",
        body(&r)
    );
    let stats = cells.stats();
    assert!(stats.starts >= 3 && stats.deaths >= 1, "{stats:?}");
    // Restarts are counted per tenant: acme's two kills, none for the other tenant.
    let text = metrics_text(addr, Some(admin)).await;
    assert!(
        text.contains("tern_cell_restarts_total{tenant=\"acme\"} 2\n")
            && text.contains("tern_cell_restarts_total{tenant=\"default\"} 0\n"),
        "{text}"
    );
    node.shutdown().await.unwrap();
}

/// A node configuration in `dir` with `isolation` and this build's `tern` as the cell
/// program, or `None` after a loud SKIPPED line (a failure where skips are not allowed) when
/// this process is not root.
pub(crate) fn cells_config(dir: &std::path::Path, isolation: Isolation) -> Option<Config> {
    if !tern_cell::jail::is_root() {
        skip_or_fail("cells need root (namespaces, cgroups)");
        return None;
    }
    let mut cfg = config(dir);
    cfg.isolation = isolation;
    cfg.cell_program = Some(env!("CARGO_BIN_EXE_tern").into());
    Some(cfg)
}

/// Sends `signal` (`kill`'s name for it) to each of `pids`.
fn signal_all(pids: &[u32], signal: &str) {
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    }
}

/// `isolation = "auto"` on a host that can give cells (root here) runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_isolation_runs_cells_where_the_host_allows_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cfg) = cells_config(dir.path(), Isolation::Auto) else {
        return;
    };
    let node = start(cfg).await;
    let r = invoke(node.addr(), "echo", "in a cell").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "in a cell"));
    let text = metrics_text(node.addr(), None).await;
    assert!(
        text.contains("tern_isolation_mode{mode=\"lci\"} 1"),
        "{text}"
    );
    assert!(text.contains("tern_cells_running 1\n"), "{text}");
    node.shutdown().await.unwrap();
}

/// A cell with no call for `cell_keep_warm_secs` is stopped, and its tenant's next call
/// starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cell_is_stopped_after_its_keep_warm_time_and_comes_back_on_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    cfg.cell_keep_warm_secs = 1;
    let node = start(cfg).await;
    let addr = node.addr();
    let r = invoke(addr, "echo", "warm").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "warm"));
    metric_until(
        addr,
        "tern_cells_reaped_total",
        Duration::from_secs(10),
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(metric(addr, "tern_cells_running").await, 0.0);
    let r = invoke(addr, "echo", "again").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "again"));
    assert_eq!(metric(addr, "tern_cells_running").await, 1.0);
    // The cell of the example's deploy, perhaps one for the first call if that one was
    // reaped before the call on a slow machine, and the one after the reap.
    assert!(metric(addr, "tern_cell_starts_total").await >= 2.0);
    node.shutdown().await.unwrap();
}

/// A cell that is alive but answers nothing (stopped here with SIGSTOP) fails its health
/// check, is killed, and its tenant's next call runs in a new cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_stops_answering_is_killed_by_its_health_check_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    // Checked every second; never idle long enough to be reaped instead.
    cfg.cell_keep_warm_secs = 600;
    let node = start(cfg).await;
    let addr = node.addr();
    let r = invoke(addr, "echo", "before").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "before"));
    let cells = node.app().cells.get().unwrap().clone();
    let default = tern_tenancy::TenantName::default_tenant();
    let stopped = cells.processes(&default).await;
    assert!(!stopped.is_empty());
    signal_all(&stopped, "-STOP");
    metric_until(
        addr,
        "tern_cell_hangs_total",
        Duration::from_secs(10),
        |v| v >= 1.0,
    )
    .await;
    let r = invoke(addr, "echo", "after").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "after"));
    let now = cells.processes(&default).await;
    assert!(!now.is_empty() && now.iter().all(|p| !stopped.contains(p)));
    let cgroup = cells
        .cgroup_dir(&default, tern_cell::Controller::Pids)
        .await
        .expect("the running cell's cgroup");
    assert!(cgroup.exists());
    // No cell outlives its node: stopped and its cgroup removed.
    node.shutdown().await.unwrap();
    for pid in &now {
        // Gone, or dead and waiting for init to reap it (the cell's PID 1 was reparented).
        let state = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("State:"))
                    .map(str::to_owned)
            });
        assert!(
            state.as_deref().is_none_or(|s| s.contains("zombie")),
            "cell {pid} outlived its node: {state:?}"
        );
    }
    // Its cgroup goes once empty, in the background.
    let t0 = std::time::Instant::now();
    while cgroup.exists() && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
}

/// Quota network weights that always choose 0.5 cores and 256 MiB per guest and one guest
/// kept warm (the last layer's biases decide), as a checkpoint file in `dir`.
fn quota_network_choosing_half_a_core(dir: &std::path::Path) -> std::path::PathBuf {
    use tern_policy::policy::{PolicyWeights, quota_head_ranges};
    let mut w = PolicyWeights::init(9).unwrap();
    let last = w.quota.layers.last_mut().unwrap();
    last.weight.iter_mut().for_each(|x| *x = 0.0);
    last.bias.iter_mut().for_each(|x| *x = 0.0);
    let [cpu, mem, keep] = quota_head_ranges();
    last.bias[cpu.start] = 5.0;
    last.bias[mem.start + 1] = 5.0;
    last.bias[keep.start + 1] = 5.0;
    let path = dir.join("quota.safetensors");
    std::fs::write(&path, w.to_safetensors(Default::default()).unwrap()).unwrap();
    path
}

/// With a quota network (`cell_quota = "learned"`), its decision for a busy tenant reaches the
/// tenant's cell cgroup: a CPU cap of half a core and a `memory_high` of one 256 MiB guest plus
/// the cell's overhead, where the tenant's spec sets neither. The guard's probes hand some
/// intervals to the static shares, which lift the cap again: both are seen in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_networks_decision_reaches_the_cells_cgroup_and_the_static_shares_lift_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    cfg.cell_quota = tern_node::config::CellQuota::Learned;
    cfg.policy_checkpoint = Some(quota_network_choosing_half_a_core(dir.path()));
    cfg.quota_interval_ms = 100;
    let node = start(cfg).await;
    let addr = node.addr();
    let cells = node.app().cells.get().unwrap().clone();
    let default = tern_tenancy::TenantName::default_tenant();
    let (mut capped, mut lifted, mut soft) = (false, false, None);
    let until = Instant::now() + Duration::from_secs(30);
    while !(capped && lifted && soft.is_some()) && Instant::now() < until {
        let r = invoke(addr, "echo", "busy").await;
        assert_eq!((r.status, body(&r).as_str()), (200, "busy"));
        let (Some(cpu), Some(memory)) = (
            cells.cgroup_dir(&default, tern_cell::Controller::Cpu).await,
            cells
                .cgroup_dir(&default, tern_cell::Controller::Memory)
                .await,
        ) else {
            continue;
        };
        // v1 here; v2 hosts keep both numbers in `cpu.max`.
        let quota = match std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")) {
            Ok(v1) => v1.trim().to_owned(),
            Err(_) => std::fs::read_to_string(cpu.join("cpu.max"))
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned(),
        };
        match quota.as_str() {
            "50000" => capped = true,
            // Only a cap lifted after one was set counts: the cell starts uncapped.
            "-1" | "max" => lifted |= capped,
            other => panic!("a CPU cap nobody decided: {other}"),
        }
        let high = std::fs::read_to_string(memory.join("memory.soft_limit_in_bytes"))
            .or_else(|_| std::fs::read_to_string(memory.join("memory.high")))
            .unwrap();
        if capped && high.trim() != "max" && high.trim() != "9223372036854771712" {
            soft = Some(high.trim().parse::<u64>().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(capped, "the network's cap never reached the cgroup");
    assert!(lifted, "the static shares never lifted the cap");
    assert_eq!(
        soft,
        Some((256 << 20) + tern_node::app::CELL_OVERHEAD_BYTES)
    );
    let text = metrics_text(addr, None).await;
    let learned = metric_labelled(addr, "tern_quota_decisions_total", "policy=\"learned\"").await;
    let eq6 = metric_labelled(addr, "tern_quota_decisions_total", "policy=\"eq6\"").await;
    assert!(learned >= 1.0 && eq6 >= 1.0, "{text}");
    node.shutdown().await.unwrap();
}

/// A tenant whose guests together use more memory than its cell's cgroup allows (each within
/// its own `memory_mb`) gets its cell OOM-killed: its callers get typed answers, its next call
/// a new cell; another tenant's calls all succeed meanwhile and the node's memory does not grow
/// by the guests' memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_memory_bomb_across_instances_kills_only_its_own_cell() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    cfg.examples = vec!["echo".into()];
    cfg.auth = AuthMode::Tokens;
    let node = start(cfg).await;
    let addr = node.addr();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let admin = admin.trim().to_owned();
    use_admin_token(addr, admin.clone());
    let r = with_token(
        addr,
        Method::POST,
        "/v1/tenants",
        Some(&admin),
        r#"{"name":"acme"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let (dev, _) = new_token_for(addr, &admin, "developer", "acme").await;
    let path = "/v1/functions/bomb?memory_mb=128&timeout_ms=20000";
    let r = with_token(addr, Method::PUT, path, Some(&dev), wasm("membomb")).await;
    assert_eq!(r.status, 201, "{}", body(&r));
    // The cell's hard limit, smaller than what its guests may hold together (8 × 128 MiB):
    // the cgroup, not the runtime's accounting, is what stops them.
    let cells = node.app().cells.get().unwrap().clone();
    let acme: tern_tenancy::TenantName = "acme".parse().unwrap();
    let small = tern_cell::CellLimits {
        memory_max: Some(300 << 20),
        ..tern_cell::CellLimits::default()
    };
    cells.set_limits(&acme, small).await.unwrap();
    let rss_before = rss_bytes();
    let bombs: Vec<_> = (0..8)
        .map(|_| {
            let dev = dev.clone();
            tokio::spawn(async move {
                with_token(
                    addr,
                    Method::POST,
                    "/v1/functions/bomb/invoke",
                    Some(&dev),
                    "alloc",
                )
                .await
            })
        })
        .collect();
    let mut echoes = 0;
    let t0 = Instant::now();
    while !bombs.iter().all(|b| b.is_finished()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the bombs never ended"
        );
        let r = with_token(
            addr,
            Method::POST,
            "/v1/functions/echo/invoke",
            Some(&admin),
            "fine",
        )
        .await;
        assert_eq!(
            (r.status, body(&r).as_str()),
            (200, "fine"),
            "the other tenant saw an error"
        );
        echoes += 1;
    }
    let mut codes = Vec::new();
    for b in bombs {
        codes.push(code(&b.await.unwrap()));
    }
    // Each bomb ends with its cell (an isolation fault) or, in a replacing cell, trapping at
    // its own 128 MiB; never anything untyped.
    assert!(
        codes
            .iter()
            .all(|c| c == "isolation_fault" || c == "guest_trap"),
        "{codes:?}"
    );
    assert!(
        codes.iter().any(|c| c == "isolation_fault"),
        "no cell was OOM-killed: {codes:?}"
    );
    assert!(echoes > 0);
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "the node grew by {} MiB", grown >> 20);
    // The tenant's next call gets a new cell; the restart is counted for it alone.
    let r = with_token(
        addr,
        Method::PUT,
        "/v1/functions/hello",
        Some(&dev),
        wasm("echo"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let r = with_token(
        addr,
        Method::POST,
        "/v1/functions/hello/invoke",
        Some(&dev),
        "back",
    )
    .await;
    assert_eq!((r.status, body(&r).as_str()), (200, "back"));
    let text = metrics_text(addr, Some(&admin)).await;
    assert!(
        text.contains("tern_cell_restarts_total{tenant=\"default\"} 0\n")
            && text.contains("tern_cell_restarts_total{tenant=\"acme\"} ")
            && !text.contains("tern_cell_restarts_total{tenant=\"acme\"} 0\n"),
        "{text}"
    );
    node.shutdown().await.unwrap();
}

/// What a guest in a cell writes to stderr reaches the node's guest logs with its answer, a
/// trapping guest's panic message included, and a flood stays within the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_stderr_in_a_cell_reaches_the_nodes_logs() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    let node = start(cfg).await;
    let addr = node.addr();
    let r = deploy(addr, "logger", "").await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let r = invoke(addr, "logger", "from a cell").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "from a cell"));
    let r = invoke(addr, "logger", "panic").await;
    assert_eq!(r.status, 500, "{}", body(&r));
    let r = invoke(addr, "logger", "flood").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "flooded"));
    let r = request(
        addr,
        Method::GET,
        "/v1/functions/logger/logs?limit=10000",
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let page: tern_wire::LogPage = serde_json::from_slice(&r.body).unwrap();
    let texts: Vec<&str> = page.lines.iter().map(|l| l.text.as_str()).collect();
    let kept: usize = texts.iter().map(|t| t.len()).sum();
    assert!(kept <= 16 << 10, "{kept}");
    assert!(page.dropped > 0, "the flood pushed older lines out");
    assert!(
        texts
            .last()
            .unwrap()
            .contains("more bytes of stderr not kept"),
        "{texts:?}"
    );
    // Before the flood pushed them out, the first lines were there: read them again from a
    // fresh function.
    let r = request(addr, Method::PUT, "/v1/functions/again", wasm("logger")).await;
    assert_eq!(r.status, 201);
    invoke(addr, "again", "one line").await;
    invoke(addr, "again", "panic").await;
    let r = request(
        addr,
        Method::GET,
        "/v1/functions/again/logs",
        bytes::Bytes::new(),
    )
    .await;
    let page: tern_wire::LogPage = serde_json::from_slice(&r.body).unwrap();
    let texts: Vec<&str> = page.lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts[0], "log: one line");
    assert!(
        texts.iter().any(|t| t.contains("asked to panic")),
        "{texts:?}"
    );
    // The node's request ids, not the cell's run numbers, in the logs and for the guest.
    assert!(
        page.lines.iter().all(|l| l.request_id.len() > 8),
        "{:?}",
        page.lines
    );
    let r = deploy(addr, "sandbox-probe", "").await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let r = invoke(addr, "sandbox-probe", "").await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        seen["env"]["TERN_REQUEST_ID"].as_str(),
        r.header("x-tern-request-id"),
        "{seen}"
    );
    node.shutdown().await.unwrap();
}

/// A guest's own memory growths in a cell are counted by the node as in-process ones are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_grows_of_guests_in_cells_reach_the_nodes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    let node = start(cfg).await;
    let addr = node.addr();
    for name in ["echo", "matmul-json"] {
        let r = deploy(addr, name, "").await;
        assert_eq!(r.status, 201, "{}", body(&r));
    }
    for _ in 0..2 {
        let r = invoke(addr, "echo", "x").await;
        assert_eq!((r.status, body(&r).as_str()), (200, "x"));
        let r = invoke(addr, "matmul-json", r#"{"n":64,"seed":1}"#).await;
        assert_eq!(r.status, 200, "{}", body(&r));
    }
    assert_eq!(
        metric(addr, "tern_cells_running").await,
        1.0,
        "the guests ran in a cell"
    );
    let name = "tern_guest_memory_grows_total";
    assert_eq!(metric_labelled(addr, name, r#"function="echo""#).await, 0.0);
    let matmul = metric_labelled(addr, name, r#"function="matmul-json""#).await;
    assert!(matmul >= 2.0, "matmul-json grew {matmul} times in 2 calls");
    node.shutdown().await.unwrap();
}

/// Where a cell cannot actually start (here its program is not a cell at all, as when a
/// container's seccomp profile or an LSM refuses what a cell needs), `auto` runs guests
/// in-process and `lci` refuses to start, naming the failed probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_a_probe_cell_fails_auto_runs_in_process_and_lci_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = cells_config(dir.path(), Isolation::Auto) else {
        return;
    };
    cfg.cell_program = Some("/bin/false".into());
    let node = start(cfg.clone()).await;
    let r = invoke(node.addr(), "echo", "in process").await;
    assert_eq!((r.status, body(&r).as_str()), (200, "in process"));
    let text = metrics_text(node.addr(), None).await;
    assert!(
        text.contains("tern_isolation_mode{mode=\"in-process\"} 1"),
        "{text}"
    );
    node.shutdown().await.unwrap();
    cfg.isolation = Isolation::Lci;
    let refused = tern_node::start(cfg).await.err().expect("refused to start");
    assert!(refused.to_string().contains("probe cell"), "{refused}");
}

/// A `wasi:http/proxy` component runs in its tenant's cell like a command: its status, headers
/// and body come back through the cell, and its stderr reaches the node's logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_runs_in_a_cell_with_its_own_status_headers_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    let node = start(cfg).await;
    let addr = node.addr();
    let r = request(
        addr,
        Method::PUT,
        "/v1/functions/inspect",
        component("inspect"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let r = tern_bench::request_once(
        addr,
        Method::PUT,
        "/fn/inspect/in/a/cell?q=1",
        &[("x-status", "201")],
        bytes::Bytes::from_static(b"four"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", body(&r));
    assert_eq!(r.header("x-inspected"), Some("yes"));
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen["path"], "/in/a/cell");
    assert_eq!(seen["body_bytes"], 4);
    let r = request(
        addr,
        Method::GET,
        "/v1/functions/inspect/logs",
        bytes::Bytes::new(),
    )
    .await;
    let page: tern_wire::LogPage = serde_json::from_slice(&r.body).unwrap();
    assert!(
        page.lines
            .iter()
            .any(|l| l.text == "inspect: PUT /in/a/cell"),
        "{:?}",
        page.lines
    );
    let text = metrics_text(addr, None).await;
    assert!(text.contains("tern_cells_running 1\n"), "{text}");
    node.shutdown().await.unwrap();
}

/// A component's answer still being written after its head reaches the caller from the cell
/// as it is written (see the components tests for the same in-process), and a caller that
/// goes away mid-answer costs the cell nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_components_answer_streams_from_its_cell() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    let node = start(cfg).await;
    let addr = node.addr();
    let r = request(addr, Method::PUT, "/v1/functions/drip", component("drip")).await;
    assert_eq!(r.status, 201, "{}", body(&r));
    // The cell up and the function loaded before anything is timed.
    let quick = || {
        tern_bench::request_once(
            addr,
            Method::GET,
            "/fn/drip",
            &[("x-drip-ms", "0")],
            bytes::Bytes::new(),
        )
    };
    assert_eq!(quick().await.unwrap().status, 200);
    crate::components::check_a_slow_answer_arrives_as_it_is_written(addr, "/fn/drip").await;

    // A caller that goes away mid-answer: its run is cancelled, the cell's parts and answer
    // for it that were already on their way are dropped, and the same cell serves on.
    let starts = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("tern_cell_starts_total "))
            .map(str::to_owned)
    };
    let before = starts(&metrics_text(addr, None).await);
    assert!(before.is_some());
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                b"GET /fn/drip HTTP/1.1\r\nHost: tern\r\n\
                  x-drip-chunks: 3\r\nx-drip-ms: 400\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = Vec::new();
        assert!(
            crate::components::read_until(
                &mut stream,
                &mut buf,
                b"drip 0\n",
                std::time::Duration::from_secs(5)
            )
            .await
        );
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let r = quick().await.unwrap();
    assert_eq!(
        (r.status, &r.body[..]),
        (200, &b"drip 0\ndrip 1\ndrip 2\n"[..])
    );
    let text = metrics_text(addr, None).await;
    assert!(text.contains("tern_cells_running 1\n"), "{text}");
    assert_eq!(starts(&text), before, "the cell was replaced");
    node.shutdown().await.unwrap();
}

/// Bodies of several MiB make the cell's heap grow (its allocator maps and names new
/// regions): every one comes back whole, and no cell dies for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_grow_a_cells_heap_without_killing_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    cfg.examples = vec!["echo".into()];
    let node = start(cfg).await;
    let addr = node.addr();
    for round in 0..8u8 {
        let input: Vec<u8> = (0..6_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 ^ round)
            .collect();
        let r = invoke(addr, "echo", input.clone()).await;
        assert_eq!(r.status, 200, "round {round}: {}", body(&r));
        assert!(
            r.body[..] == input[..],
            "round {round}: the body came back changed"
        );
    }
    assert_eq!(metric(addr, "tern_cell_deaths_total").await, 0.0);
    assert_eq!(metric(addr, "tern_cell_starts_total").await, 1.0);
    node.shutdown().await.unwrap();
}

/// A tenant with more functions than a cell once had file descriptors (wasmtime keeps each
/// loaded artifact's file open): every one is loaded in its cell and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_a_hundred_distinct_functions_runs_them_all_in_its_cell() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    cfg.examples.clear();
    let node = start(cfg).await;
    let addr = node.addr();
    let echo = wasm("echo");
    for i in 0..100 {
        // The same code, a different module: a custom section (id 0) naming the copy.
        let name = format!("copy-{i}");
        let payload = [&[name.len() as u8][..], name.as_bytes()].concat();
        let module = [&echo[..], &[0, payload.len() as u8], &payload].concat();
        let r = request(
            addr,
            Method::PUT,
            &format!("/v1/functions/{name}"),
            Bytes::from(module),
        )
        .await;
        assert_eq!(r.status, 201, "{name}: {}", body(&r));
    }
    for i in 0..100 {
        let r = invoke(addr, &format!("copy-{i}"), format!("{i}")).await;
        assert_eq!((r.status, body(&r)), (200, format!("{i}")), "copy-{i}");
    }
    assert_eq!(metric(addr, "tern_cell_deaths_total").await, 0.0);
    node.shutdown().await.unwrap();
}
