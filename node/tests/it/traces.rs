//! OpenTelemetry traces across a cluster of `tern` processes, and guests' stderr forwarded as
//! OTLP log records, checked against an OTLP/HTTP receiver run by the test: it decodes what
//! the nodes send with the protocol's generated types, as a collector would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

use crate::cluster::{NAMES, eventually, init_pki};
use crate::cluster_process::{Listen, Listeners, deploy_owned_by_b, member_state, spawn_node_in};
use crate::support::*;

/// One span as the receiver got it, with the node (`service.instance.id`) that sent it.
#[derive(Clone, Debug)]
struct Got {
    node: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_id: Vec<u8>,
    kind: i32,
    attributes: HashMap<String, String>,
}

/// One log record as the receiver got it: its node, scope, severity, body and attributes.
#[derive(Clone, Debug)]
struct GotLog {
    node: String,
    scope: String,
    severity: i32,
    severity_text: String,
    body: String,
    attributes: HashMap<String, String>,
}

#[derive(Default)]
struct Received {
    spans: Vec<Got>,
    logs: Vec<GotLog>,
}

/// An OTLP/HTTP traces and logs receiver on a local port.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Received>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Received::default()));
        let store = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let store = store.clone();
                        async move { receive(req, &store).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, got }
    }

    fn logs(&self) -> Vec<GotLog> {
        self.got.lock().unwrap().logs.clone()
    }

    fn of_trace(&self, trace_id: &[u8]) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

async fn receive(
    req: hyper::Request<hyper::body::Incoming>,
    store: &Mutex<Received>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let protobuf = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/x-protobuf");
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let status = match (path.as_str(), protobuf, body) {
        ("/v1/traces", true, Ok(body)) => match ExportTraceServiceRequest::decode(body) {
            Ok(export) => {
                store.lock().unwrap().spans.extend(flatten(export));
                200
            }
            Err(_) => 400,
        },
        ("/v1/logs", true, Ok(body)) => match ExportLogsServiceRequest::decode(body) {
            Ok(export) => {
                store.lock().unwrap().logs.extend(flatten_logs(export));
                200
            }
            Err(_) => 400,
        },
        _ => 400,
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(resp)
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The sending node: the resource's `service.instance.id`.
fn instance_id(resource: &Option<opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.instance.id")
        .map(|kv| text(&kv.value))
        .unwrap_or_default()
}

fn flatten_logs(export: ExportLogsServiceRequest) -> Vec<GotLog> {
    let mut out = Vec::new();
    for rl in export.resource_logs {
        let node = instance_id(&rl.resource);
        for sl in rl.scope_logs {
            let scope = sl.scope.map(|s| s.name).unwrap_or_default();
            for r in sl.log_records {
                out.push(GotLog {
                    node: node.clone(),
                    scope: scope.clone(),
                    severity: r.severity_number,
                    severity_text: r.severity_text.clone(),
                    body: text(&r.body),
                    attributes: r
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                });
            }
        }
    }
    out
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<Got> {
    let mut out = Vec::new();
    for rs in export.resource_spans {
        let node = instance_id(&rs.resource);
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Got {
                    node: node.clone(),
                    name: s.name,
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    parent_id: s.parent_span_id,
                    kind: s.kind,
                    attributes: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                });
            }
        }
    }
    out
}

fn one<'a>(spans: &'a [Got], name: &str) -> &'a Got {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span expected in {spans:#?}");
    found[0]
}

async fn invoke_with_traceparent(
    addr: SocketAddr,
    f: &str,
    traceparent: &str,
) -> tern_bench::Response {
    let bearer = bearer_for(addr);
    let mut headers = authorization(&bearer);
    headers.push(("traceparent", traceparent));
    tern_bench::request_once(
        addr,
        Method::POST,
        &format!("/v1/functions/{f}/invoke"),
        &headers,
        Bytes::from_static(b"traced"),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_invocation_is_one_trace_across_two_nodes_with_correct_parentage() {
    let receiver = Receiver::start().await;
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    init_pki(&root.join("pki"));
    let listeners = Listeners::bind();
    let http = listeners.http_addrs();
    let endpoint = format!("http://{}", receiver.addr);
    // Node a also serves the client API, on a port free a moment ago.
    let client_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client_listen = client_port.to_string();
    let mut procs = Vec::new();
    for i in 0..3 {
        let mut env = vec![("TERN_OTLP_ENDPOINT", endpoint.as_str())];
        if i == 0 {
            env.push(("TERN_CLIENT_LISTEN", client_listen.as_str()));
        }
        procs.push(spawn_node_in(None, root, i, Listen::Inherited(&listeners), &env).await);
    }
    for (i, addr) in http.iter().enumerate() {
        for peer in NAMES.iter().filter(|p| **p != NAMES[i]) {
            eventually("mesh up", Duration::from_secs(30), || async {
                (member_state(*addr, peer).await == "up").then_some(())
            })
            .await;
        }
    }
    let (a, c) = (http[0], http[2]);
    let f = deploy_owned_by_b(a, c).await;

    // A caller that did not sample its span: the node follows it and records nothing.
    let unsampled_id = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
    let r = invoke_with_traceparent(a, &f, &format!("00-{unsampled_id}-1111111111111111-00")).await;
    assert_eq!(r.status, 200);
    let unsampled_request = r.header("x-tern-request-id").unwrap().to_owned();
    let trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = invoke_with_traceparent(a, &f, &format!("00-{trace_hex}-{caller_span}-01")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-tern-node"), Some("b"));

    let trace_id = hex(trace_hex);
    let spans = eventually(
        "the trace's spans from a and b",
        Duration::from_secs(20),
        || async {
            let spans = receiver.of_trace(&trace_id);
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            let complete = ["invoke", "admission", "placement", "forward", "meu"]
                .iter()
                .all(|n| names.contains(n))
                && names.iter().any(|n| *n == "guest" || *n == "cell");
            complete.then_some(spans)
        },
    )
    .await;

    // On the entry node: the request continues the caller's span; admission, placement and
    // forwarding are its children.
    let invoke = one(&spans, "invoke");
    assert_eq!(invoke.node, "a");
    assert_eq!(invoke.parent_id, hex(caller_span));
    assert_eq!(invoke.kind, SpanKind::Server as i32);
    assert_eq!(invoke.attributes["function"], f);
    assert_eq!(invoke.attributes["node"], "b");
    assert_eq!(invoke.attributes["cold_start"], "false");
    assert!(invoke.attributes.contains_key("exec_us"), "{invoke:?}");
    for name in ["admission", "placement", "forward"] {
        let s = one(&spans, name);
        assert_eq!(
            (s.node.as_str(), &s.parent_id),
            ("a", &invoke.span_id),
            "{name}"
        );
    }
    let placement = one(&spans, "placement");
    assert_eq!(placement.attributes["chosen"], "b");
    let forward = one(&spans, "forward");
    assert_eq!(forward.kind, SpanKind::Client as i32);
    assert_eq!(forward.attributes["peer"], "b");
    // Across the mesh: the peer's MEU span is the forwarding span's child, and the guest's
    // (or the cell's) is the MEU's.
    let meu = one(&spans, "meu");
    assert_eq!((meu.node.as_str(), &meu.parent_id), ("b", &forward.span_id));
    assert_eq!(meu.kind, SpanKind::Server as i32);
    let guest = spans
        .iter()
        .find(|s| s.name == "guest" || s.name == "cell")
        .unwrap();
    assert_eq!((guest.node.as_str(), &guest.parent_id), ("b", &meu.span_id));
    assert!(guest.attributes.contains_key("inst_us"), "{guest:?}");
    let nodes: std::collections::HashSet<_> = spans.iter().map(|s| s.node.as_str()).collect();
    assert!(spans.len() >= 6 && nodes.len() == 2, "{spans:#?}");

    // The unsampled call was sent before the sampled one, through the same queues: no span
    // of its trace, and no span that made it the root of a trace of its own either.
    assert!(receiver.of_trace(&hex(unsampled_id)).is_empty());
    assert!(
        !receiver
            .got
            .lock()
            .unwrap()
            .spans
            .iter()
            .any(|s| s.attributes.get("request_id") == Some(&unsampled_request)),
        "the unsampled call was traced under a trace of its own"
    );
    // The node counts a batch once the receiver has answered for it.
    eventually(
        "a's exported spans counted",
        Duration::from_secs(10),
        || async {
            let body = request(a, Method::GET, "/metrics", Bytes::new()).await.body;
            let exported = String::from_utf8_lossy(&body)
                .lines()
                .find_map(|l| l.strip_prefix("tern_trace_spans_exported_total "))
                .and_then(|v| v.parse::<u64>().ok())?;
            (exported >= 4).then_some(())
        },
    )
    .await;

    // tern-client starts a trace; the node continues it, and the peer's spans join it.
    let mut config = tern_client::ClientConfig::new(
        vec![("a".to_owned(), client_port)],
        root.join("pki").join("ca.pem"),
    );
    config.token = bearer_for(a).map(|b| b.trim_start_matches("Bearer ").to_owned());
    config.request_timeout = Duration::from_secs(20);
    let client = tokio::time::timeout(
        Duration::from_secs(30),
        tern_client::Client::connect(config),
    )
    .await
    .expect("connect timed out")
    .expect("client connects");
    // Every tern-client call carries an idempotency key and runs at the key's home: the
    // function's warm owner, b, which runs it there.
    let trace = client.start_trace();
    let out = client
        .invoke_with(
            &f,
            "via client",
            tern_client::InvokeOptions {
                trace: Some(trace),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(&out.output[..], b"via client");
    assert_eq!(out.node, "b");
    let spans = eventually("the client's trace", Duration::from_secs(20), || async {
        let spans = receiver.of_trace(&trace.trace_id);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        let complete = names.contains(&"invoke")
            && names.contains(&"home")
            && names.iter().any(|n| *n == "guest" || *n == "cell");
        complete.then_some(spans)
    })
    .await;
    // tern-client starts the trace; the entry node continues it.
    let invoke = one(&spans, "invoke");
    assert_eq!(invoke.node, "a");
    assert_eq!(invoke.parent_id, trace.parent_id.to_vec());
    assert_eq!(invoke.attributes["via"], "client");
    // The home roots its part in a `home` span, a child of a's `invoke`; placement sits
    // under it, and the guest runs there as its child, nothing forwarded on.
    let home = one(&spans, "home");
    assert_eq!(
        (home.node.as_str(), &home.parent_id),
        ("b", &invoke.span_id)
    );
    let placement = one(&spans, "placement");
    assert_eq!(
        (placement.node.as_str(), &placement.parent_id),
        ("b", &home.span_id)
    );
    let guest = spans
        .iter()
        .find(|s| s.name == "guest" || s.name == "cell")
        .unwrap();
    assert_eq!(
        (guest.node.as_str(), &guest.parent_id),
        ("b", &home.span_id)
    );
    assert!(spans.iter().all(|s| s.name != "forward" && s.name != "meu"));
    drop(procs);
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A `tern up` process named `a` sending OTLP to a new receiver, with `env` added, and the
/// `logger` function deployed on it: the receiver, the process, its HTTP address, its data
/// directory (removed when dropped) and the deploy's answer.
async fn logger_node_exporting_to_a_receiver(
    env: &[(&str, &str)],
) -> (
    Receiver,
    crate::persistence::KillOnDrop,
    SocketAddr,
    tempfile::TempDir,
    tern_bench::Response,
) {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let endpoint = format!("http://{}", receiver.addr);
    let mut all = vec![
        ("TERN_OTLP_ENDPOINT", endpoint.as_str()),
        ("TERN_NODE_NAME", "a"),
    ];
    all.extend_from_slice(env);
    let node = crate::persistence::spawn_tern_with(&dir.path().join("node"), &listener, &all).await;
    let r = request(addr, Method::PUT, "/v1/functions/logger", wasm("logger")).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    (receiver, node, addr, dir, r)
}

/// With `guest_logs_otlp`, the stderr lines a node keeps also reach the OTLP receiver as log
/// records: one per line, with the function, its tenant, the request that wrote it and the
/// node; the export counters say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_stderr_lines_reach_the_otlp_receiver_as_log_records_of_their_function_and_request() {
    let (receiver, node, addr, _dir, _) =
        logger_node_exporting_to_a_receiver(&[("TERN_GUEST_LOGS_OTLP", "true")]).await;
    let r = invoke(addr, "logger", "first\nsecond").await;
    assert_eq!(r.status, 200);
    let request_id = r.header("x-tern-request-id").unwrap().to_owned();
    let logs = eventually("two log records", Duration::from_secs(20), || async {
        let logs = receiver.logs();
        (logs.len() >= 2).then_some(logs)
    })
    .await;
    let bodies: Vec<&str> = logs.iter().map(|l| l.body.as_str()).collect();
    assert_eq!(bodies, ["log: first", "log: second"], "{logs:#?}");
    for l in &logs {
        assert_eq!(l.node, "a");
        assert_eq!(l.attributes["tern.function"], "logger");
        assert_eq!(l.attributes["tern.tenant"], "default");
        assert_eq!(l.attributes["tern.request_id"], request_id);
        assert_eq!(l.attributes["log.iostream"], "stderr");
    }
    // Counted once the node has read the receiver's answer, a moment after it stored them.
    metric_until(
        addr,
        "tern_log_records_exported_total",
        Duration::from_secs(10),
        |v| v == 2.0,
    )
    .await;
    assert_eq!(metric(addr, "tern_log_records_dropped_total").await, 0.0);
    // The lines are still kept on the node as well.
    let kept = request(addr, Method::GET, "/v1/functions/logger/logs", Bytes::new()).await;
    assert!(String::from_utf8_lossy(&kept.body).contains("log: second"));
    drop(node);
}

/// With `node_logs_otlp`, the node's own log lines reach the OTLP receiver as log records:
/// the message as the body, the level as the severity, the module as the scope, the fields as
/// attributes; guests' stderr stays on the node while `guest_logs_otlp` is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_own_log_lines_reach_the_otlp_receiver_with_their_level_and_fields() {
    let (receiver, node, addr, _dir, r) = logger_node_exporting_to_a_receiver(&[
        ("TERN_NODE_LOGS_OTLP", "true"),
        ("TERN_LOG", "info"),
    ])
    .await;
    let hash = json(&r)["hash"].as_str().unwrap().to_owned();
    let r = invoke(addr, "logger", "first").await;
    assert_eq!(r.status, 200);
    let deployed = eventually(
        "the deploy's log record",
        Duration::from_secs(20),
        || async {
            receiver.logs().into_iter().find(|l| {
                l.body == "deployed"
                    && l.attributes.get("function").map(String::as_str) == Some("logger")
            })
        },
    )
    .await;
    assert_eq!(deployed.node, "a");
    assert_eq!(deployed.scope, "tern_node::app");
    assert_eq!(
        (deployed.severity, deployed.severity_text.as_str()),
        (9, "INFO")
    );
    assert_eq!(deployed.attributes["hash"], hash);
    metric_until(
        addr,
        "tern_log_records_exported_total",
        Duration::from_secs(10),
        |v| v >= 1.0,
    )
    .await;
    // Guests' lines are not forwarded, and nothing below the node's level is.
    let logs = receiver.logs();
    assert!(
        logs.iter()
            .all(|l| !l.body.contains("log: first") && l.severity >= 9),
        "{logs:#?}"
    );
    drop(node);
}
