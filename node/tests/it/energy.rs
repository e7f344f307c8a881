//! Energy per invocation: each guest's CPU time, measured on the threads that ran it, is
//! counted for its function and its tenant, with the CPU-time model's energy beside it, the
//! same whether guests run in the node or in cells.

use tern_node::config::{Config, Isolation};

use crate::lci::cells_config;
use crate::support::*;

async fn guest_cpu_is_counted_for_function_and_tenant(cfg: Config) {
    let node = start(cfg).await;
    let addr = node.addr();
    for _ in 0..3 {
        let r = invoke(addr, "matmul-json", r#"{"n":160,"seed":3}"#).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let function = r#"function="matmul-json""#;
    let cpu = metric_labelled(addr, "tern_guest_cpu_seconds_total", function).await;
    let joules = metric_labelled(addr, "tern_guest_energy_joules_total", function).await;
    let exec = metric_labelled(addr, "tern_meu_exec_seconds_sum", function).await;
    let inst = metric_labelled(addr, "tern_meu_instantiate_seconds_sum", function).await;
    // A compute-bound guest's own CPU time: three 160×160 products are several milliseconds
    // of work whatever else the machine is doing (thread CPU time does not count time spent
    // descheduled, so no ratio to the wall-clock execution time is asserted), and never more
    // than the time it ran (histogram sums are rounded to the microsecond).
    assert!(cpu > 0.001, "{cpu} s of CPU in {exec} s of execution");
    assert!(
        cpu <= exec + inst + 0.001,
        "{cpu} s of CPU in {exec} + {inst} s"
    );
    assert!(
        (joules - cpu * tern_metrics::MODEL_WATTS_PER_CORE).abs() < 1e-6,
        "{joules} J for {cpu} s"
    );
    let tenant = r#"tenant="default""#;
    let tenant_cpu = metric_labelled(addr, "tern_tenant_guest_cpu_seconds_total", tenant).await;
    assert!(
        tenant_cpu >= cpu,
        "tenant {tenant_cpu} s < function {cpu} s"
    );
    let tenant_joules =
        metric_labelled(addr, "tern_tenant_guest_energy_joules_total", tenant).await;
    assert!((tenant_joules - tenant_cpu * tern_metrics::MODEL_WATTS_PER_CORE).abs() < 1e-6);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_cpu_and_energy_are_counted_per_function_and_tenant() {
    let dir = tempfile::tempdir().unwrap();
    guest_cpu_is_counted_for_function_and_tenant(config(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_cpu_and_energy_of_guests_in_cells_reach_the_nodes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    guest_cpu_is_counted_for_function_and_tenant(cfg).await;
}

/// A guest that fails cost the machine too: its CPU time is counted like a finished one's.
async fn a_failed_guests_cpu_is_counted(cfg: Config) {
    let node = start(cfg).await;
    let addr = node.addr();
    let r = deploy(addr, "membomb", "?timeout_ms=20000&memory_mb=64").await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // Allocates 1 MiB chunks, touching each, until the 64 MiB cap makes the allocator abort.
    let r = invoke(addr, "membomb", "alloc").await;
    assert_eq!((r.status, code(&r).as_str()), (500, "guest_trap"));
    let cpu = metric_labelled(
        addr,
        "tern_guest_cpu_seconds_total",
        r#"function="membomb""#,
    )
    .await;
    // Touching ~60 MiB takes well over half a millisecond of CPU.
    assert!(
        cpu > 0.0005,
        "{cpu} s of CPU counted for a guest that trapped"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_guests_cpu_is_counted_in_process() {
    let dir = tempfile::tempdir().unwrap();
    a_failed_guests_cpu_is_counted(config(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_guests_cpu_in_a_cell_reaches_the_nodes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    a_failed_guests_cpu_is_counted(cfg).await;
}
