//! The Grafana dashboard (`deploy/grafana/tern.json`) asks only for what a node exports: every
//! metric its queries name, with the labels they select or group by.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use hyper::Method;

use crate::support::*;

/// Every `expr` in the dashboard's panels.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The metrics a query names, each with the label names its selector uses.
fn selected(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tern_") {
        let name = ident(&rest[at..]).to_owned();
        rest = &rest[at + name.len()..];
        let mut labels = Vec::new();
        if let Some(selector) = rest.strip_prefix('{') {
            let inner = &selector[..selector.find('}').unwrap()];
            for matcher in inner.split(',') {
                labels.push(ident(matcher.trim()).to_owned());
            }
        }
        out.push((name, labels));
    }
    out
}

/// The label names of every `by (...)` in a query.
fn grouped_by(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        rest = &rest[at + 4..];
        let inner = &rest[..rest.find(')').unwrap()];
        out.extend(inner.split(',').map(|l| l.trim().to_owned()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_a_metric_and_labels_the_node_exports() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/tern.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    queries(&dashboard["panels"], &mut exprs);
    assert!(exprs.len() >= 20, "{} queries", exprs.len());

    // A node with work done and a tenant with quotas, so every family has samples.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    let node = start(cfg).await;
    let addr = node.addr();
    let r = request(
        addr,
        Method::POST,
        "/v1/tenants",
        r#"{"name":"acme","quotas":{"max_stored_results":5}}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(invoke(addr, "echo", "x").await.status, 200);
    let scrape = request(addr, Method::GET, "/metrics", Bytes::new()).await;
    let text = String::from_utf8(scrape.body.to_vec()).unwrap();

    // Families, with the names of the series a histogram has.
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split(' ');
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    // Label names seen on each series name.
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = ident(line).to_owned();
        let set = labels.entry(name.clone()).or_default();
        if let Some(inner) = line[name.len()..].strip_prefix('{') {
            for pair in inner[..inner.find('}').unwrap()].split(',') {
                set.insert(ident(pair).to_owned());
            }
        }
    }
    // Added by Prometheus at scrape time, not by the node.
    let scrape_labels = ["instance", "job"];

    for expr in &exprs {
        let metrics = selected(expr);
        assert!(!metrics.is_empty(), "a query without a Tern metric: {expr}");
        let mut available: BTreeSet<&str> = scrape_labels.into_iter().collect();
        for (name, used) in &metrics {
            assert!(names.contains(name), "{name} is not exported ({expr})");
            let have = labels.get(name).cloned().unwrap_or_default();
            for label in used {
                assert!(
                    scrape_labels.contains(&label.as_str()) || have.contains(label),
                    "{name} has no label {label} ({expr})"
                );
            }
            available.extend(labels.get(name).into_iter().flatten().map(String::as_str));
        }
        for label in grouped_by(expr) {
            assert!(
                available.contains(label.as_str()),
                "grouped by {label}, which none of its metrics has ({expr})"
            );
        }
    }
    node.shutdown().await.unwrap();
}
