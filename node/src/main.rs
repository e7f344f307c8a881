//! `tern`: run a node, deploy and invoke functions, and benchmark a node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hyper::Method;
use tern_bench::{LoadConfig, LoadMode};
use tern_node::Config;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Serverless WebAssembly functions at the edge"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `tern=debug`.
    #[arg(long, env = "TERN_LOG", default_value = "info", global = true)]
    log: String,
    /// Log lines as `text` (for people) or `json` (one object per line, for log pipelines).
    #[arg(long, env = "TERN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// How `list`, `result`, `status`, `logs` and the tenant and token lists print: `table`
    /// (for people) or `json` (the node's answer, for scripts).
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A line of `tern up`'s own about its life (listening, stopping, restarting): plain on stderr
/// for people; with `--log-format json` an event like every other log line, so that a log
/// pipeline can parse every line the node writes.
fn announce(format: LogFormat, warning: bool, message: &str) {
    match (format, warning) {
        (LogFormat::Text, _) => eprintln!("{message}"),
        (LogFormat::Json, false) => tracing::info!(target: "tern", "{message}"),
        (LogFormat::Json, true) => tracing::warn!(target: "tern", "{message}"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
struct Server {
    /// Address of the node's HTTP API.
    #[arg(long, env = "TERN_SERVER", default_value = "127.0.0.1:7878")]
    server: SocketAddr,
    /// Bearer token for a node with `auth = "tokens"`. Unset: the admin token a node with the
    /// default data directory wrote, `./tern-data/admin.token`, if there is one.
    #[arg(long, env = "TERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Server {
    /// The `Authorization` header value to send, if any token is known.
    fn authorization(&self) -> Option<String> {
        let token = match &self.token {
            Some(t) => t.trim().to_owned(),
            None => std::fs::read_to_string(
                tern_node::Config::default()
                    .data_dir
                    .join(tern_node::auth::ADMIN_TOKEN_FILE),
            )
            .ok()?
            .trim()
            .to_owned(),
        };
        (!token.is_empty()).then(|| format!("Bearer {token}"))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (and deploy the example functions found in `examples_dir`).
    Up {
        /// TOML config file; `TERN_*` environment variables and these flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (sled and compiled artifacts).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        node_name: Option<String>,
        /// Directory with the example functions' `.wasm` files.
        #[arg(long)]
        examples_dir: Option<PathBuf>,
        /// Join a cluster: the directory written by `tern cluster init` (needs --node-name).
        #[arg(long)]
        cluster_dir: Option<PathBuf>,
        /// UDP address of this node's mesh endpoint.
        #[arg(long)]
        cluster_listen: Option<SocketAddr>,
        /// Another member, as `name=host:port`; repeat for each.
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// `standard`, `edge-small` or `cpu-burst`.
        #[arg(long)]
        node_class: Option<tern_wire::NodeClass>,
        /// UDP address of the QUIC API for tern-client.
        #[arg(long)]
        client_listen: Option<SocketAddr>,
    },
    /// Deploy (or replace) a function.
    Deploy {
        name: String,
        file: PathBuf,
        #[arg(long)]
        timeout_ms: Option<u32>,
        #[arg(long)]
        memory_mb: Option<u32>,
        /// At most this many instances of the function at once on each node (default: only
        /// the tenant's caps).
        #[arg(long)]
        max_instances: Option<u32>,
        #[command(flatten)]
        server: Server,
    },
    /// Invoke a function and print its output.
    Invoke {
        name: String,
        /// Request body: literal text, or `@FILE`.
        #[arg(long, default_value = "")]
        data: String,
        /// Return an invocation id at once; fetch the result with `tern result ID`.
        #[arg(long = "async")]
        asynchronous: bool,
        /// Split a JSON array input into parallel units and join the results.
        #[arg(long)]
        map: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Call a component at its HTTP route (`/fn/NAME/PATH`), as curl would: print the
    /// component's response body (`-i`: its status and headers first).
    Call {
        name: String,
        /// The path (and query) the component sees, e.g. `/users/7?full=1`.
        #[arg(default_value = "/")]
        path: String,
        /// The method (default: POST with `--data`, GET without).
        #[arg(short = 'X', long)]
        method: Option<String>,
        /// A request header, `'Name: value'` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Request body: literal text, or `@FILE`.
        #[arg(short, long)]
        data: Option<String>,
        /// Print the response's status line and headers before its body (and its trailers,
        /// if any, after it).
        #[arg(short, long)]
        include: bool,
        /// Return an invocation id at once; the stored response is `tern result ID`'s.
        #[arg(long = "async")]
        asynchronous: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Show the status and result of an async invocation.
    Result {
        id: String,
        /// Poll until it has finished.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        server: Server,
    },
    /// List deployed functions.
    List {
        #[command(flatten)]
        server: Server,
    },
    /// Show what a function's guests wrote to stderr on this node (its last lines).
    Logs {
        name: String,
        /// Keep printing new lines as they come (every 500 ms), until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Print the lines as JSON, one object per line (the same as `-o json`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Show this node and the cluster members it sees (state, class, queue, session).
    Status {
        #[command(flatten)]
        server: Server,
    },
    /// Print a shell completion script, e.g. `tern completions bash > /etc/bash_completion.d/tern`.
    Completions {
        /// `bash`, `zsh`, `fish`, `elvish` or `powershell`.
        shell: clap_complete::Shell,
    },
    /// Remove a function.
    Remove {
        name: String,
        #[command(flatten)]
        server: Server,
    },
    /// Cluster administration.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Fault injection for testers: run a scenario against a cluster started on this machine
    /// and check what held.
    #[command(subcommand)]
    Chaos(ChaosCommand),
    /// Bearer tokens of a node with `auth = "tokens"` (admin token needed).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Tenants: who owns functions and tokens, with weights and quotas (admin token needed).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Load-test a function over HTTP and report latency percentiles and throughput; or
    /// replay a per-minute invocation trace (`--trace`) open loop.
    Bench {
        /// The function called. With `--trace`, a template: `{i}` becomes the trace
        /// function's row as three digits (`mm-{i}` → `mm-007`); without `{i}` every trace
        /// function calls this one function.
        #[arg(long, default_value = "echo")]
        function: String,
        /// Request body: literal text, or `@FILE`.
        #[arg(long, default_value = "hello", conflicts_with = "work_n")]
        data: String,
        /// Connections (closed loop: each sends, waits, repeats; open loop and replay: the
        /// pool requests are sent on).
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Open loop at this many requests per second instead of a closed loop.
        #[arg(long, conflicts_with = "trace")]
        rate: Option<f64>,
        /// Measured duration, e.g. `10s`, `500ms`, `1m` (a replay lasts its minutes).
        #[arg(long, default_value = "10s", value_parser = parse_duration, conflicts_with = "trace")]
        duration: Duration,
        /// Sent but not measured [default: 2s; 0 with `--trace`].
        #[arg(long, value_parser = parse_duration)]
        warmup: Option<Duration>,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        #[arg(long, conflicts_with = "trace")]
        map: bool,
        /// Replay this per-minute trace (Azure Functions 2019 layout: owner, app, function,
        /// trigger, then one count per minute) open loop: each invocation at a seeded random
        /// time within its minute.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Trace minutes replayed, START-END with END exclusive (`60-70` is ten minutes).
        #[arg(long, default_value = "0-1", requires = "trace")]
        minutes: String,
        /// Send each traced invocation this many times.
        #[arg(long, default_value_t = 1, requires = "trace")]
        scale: u32,
        /// Compress time: a trace minute lasts 60/SPEEDUP seconds.
        #[arg(long, default_value_t = 1.0, requires = "trace")]
        speedup: f64,
        /// Seed of the arrival times and work sizes.
        #[arg(long, default_value_t = 1, requires = "trace")]
        seed: u64,
        /// `matmul-json` requests instead of `--data`: each trace function gets a matrix
        /// size drawn log-uniformly from LO-HI (fixed per function, seeded).
        #[arg(long, value_name = "LO-HI", requires = "trace")]
        work_n: Option<String>,
        /// Pad `matmul-json` requests to this many bytes (the paper's are ~1 KB).
        #[arg(long, default_value_t = 1024, requires = "work_n")]
        body_bytes: usize,
        /// Before the run, deploy this module (or component) under every function name the
        /// run calls that the node does not have yet.
        #[arg(long, value_name = "WASM")]
        deploy: Option<PathBuf>,
        /// Time limit of the functions `--deploy` deploys (the node's default otherwise).
        #[arg(long, requires = "deploy")]
        deploy_timeout_ms: Option<u32>,
        /// Memory limit of the functions `--deploy` deploys (the node's default otherwise).
        #[arg(long, requires = "deploy")]
        deploy_memory_mb: Option<u32>,
        /// Write one JSON line per measured request (planned time, function, status, error
        /// code, latency, server time, node, cold start) to this file.
        #[arg(long)]
        records: Option<PathBuf>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        no_progress: bool,
        /// Another entry node (repeatable): the connections are spread round-robin over
        /// `--server` and these, and the node counters in the report are summed over all of
        /// them. `--deploy` deploys through `--server` only (a cluster replicates it).
        #[arg(long, value_name = "ADDR")]
        entry: Vec<SocketAddr>,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it with its secret (shown this once).
    Create {
        /// `admin`, `developer` (deploy, remove, invoke, read) or `invoker` (invoke, read
        /// results).
        #[arg(long)]
        role: String,
        /// The tenant the token acts for.
        #[arg(long, default_value = "default")]
        tenant: String,
        #[command(flatten)]
        server: Server,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Revoke a token for good.
    Revoke {
        id: String,
        #[command(flatten)]
        server: Server,
    },
}

/// A tenant's settings; what is left out keeps its current value (its default for a new
/// tenant).
#[derive(clap::Args)]
struct TenantSettings {
    /// Share weight under contention (1..=10000).
    #[arg(long)]
    weight: Option<u32>,
    /// `latency-critical`, `standard` or `batch`.
    #[arg(long)]
    sla: Option<String>,
    /// A quota, `NAME=VALUE` (repeatable): max_concurrent, memory_budget_bytes, max_queued,
    /// max_timeout_ms, max_functions, max_module_bytes, max_stored_results,
    /// max_stored_result_bytes, max_rate_per_s, rate_burst.
    #[arg(long = "quota", value_name = "NAME=VALUE", value_parser = parse_quota)]
    quotas: Vec<(String, u64)>,
}

impl TenantSettings {
    fn body(&self, name: Option<&str>) -> String {
        let mut body = serde_json::Map::new();
        if let Some(name) = name {
            body.insert("name".into(), name.into());
        }
        if let Some(w) = self.weight {
            body.insert("weight".into(), w.into());
        }
        if let Some(sla) = &self.sla {
            body.insert("sla".into(), sla.as_str().into());
        }
        if !self.quotas.is_empty() {
            let quotas: serde_json::Map<String, serde_json::Value> = self
                .quotas
                .iter()
                .map(|(k, v)| (k.clone(), (*v).into()))
                .collect();
            body.insert("quotas".into(), quotas.into());
        }
        serde_json::Value::Object(body).to_string()
    }
}

fn parse_quota(s: &str) -> Result<(String, u64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    let value = value
        .parse()
        .map_err(|_| format!("{name}: {value:?} is not a non-negative integer"))?;
    Ok((name.to_owned(), value))
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant.
    Create {
        name: String,
        #[command(flatten)]
        settings: TenantSettings,
        #[command(flatten)]
        server: Server,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        server: Server,
    },
    /// Show one tenant with what it uses.
    Show {
        name: String,
        #[command(flatten)]
        server: Server,
    },
    /// Change a tenant's weight, class or quotas.
    Update {
        name: String,
        #[command(flatten)]
        settings: TenantSettings,
        #[command(flatten)]
        server: Server,
    },
    /// Remove a tenant that owns no function; its tokens are revoked.
    Remove {
        name: String,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Subcommand)]
enum ChaosCommand {
    /// The scenarios shipped with Tern (`chaos/scenarios/`).
    List,
    /// Run a scenario (a file, or the name of a shipped one): start its cluster as `tern up`
    /// processes here, send its load, inject its faults, check the history. Exits non-zero
    /// when an invariant broke; the report, verdict and history are in `--out`.
    Run {
        scenario: String,
        /// The workload's seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Where the run writes everything (default: chaos-runs/<scenario>-<unix time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where the workload's function is.
        #[arg(long, default_value = "functions/dist")]
        examples_dir: PathBuf,
    },
    /// UDP relays on every mesh link of a cluster about to start, holding each datagram a delay
    /// each way (as a link between distant nodes would). Start it first: it prints one line per
    /// direction, `FROM TO ADDRESS` (node FROM dials node TO at ADDRESS), then start each node
    /// with those addresses as its `--peer`s. Runs until SIGTERM or SIGINT.
    Relay {
        /// A node and its mesh address (its `--cluster-listen`), `NAME=HOST:PORT`; two or more.
        #[arg(long = "node", required = true, value_parser = tern_node::config::parse_peer)]
        nodes: Vec<(String, SocketAddr)>,
        /// Every link's delay each way, in milliseconds (at most 60,000).
        #[arg(long, default_value_t = 0)]
        delay_ms: u32,
        /// One link's delay each way in place of `--delay-ms`, `A-B=MS` (repeatable).
        #[arg(long = "link")]
        links: Vec<tern_chaos::links::LinkDelay>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Create a cluster CA and one mTLS certificate per node (`ca.pem`, `NAME.pem`, `NAME.key`).
    /// Refuses to overwrite existing files.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated node names, e.g. `a,b,c`.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Also write the CA key here (mode 0600), to add nodes later with `add-node`. Keep it
        /// outside `--out` (which is copied to every node) and offline. Without it the CA key
        /// is discarded and the node set is final.
        #[arg(long)]
        ca_key: Option<PathBuf>,
    },
    /// Issue the certificate of a new node (`NAME.pem`, `NAME.key` in `--dir`) with the CA key
    /// kept by `init --ca-key`. Then start the node with every member as `--peer`, and restart
    /// the members one at a time with the new node added to their peers.
    AddNode {
        /// The cluster directory written by `init`.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        ca_key: PathBuf,
        #[arg(long)]
        node: String,
    },
    /// Create the cluster's client CA: `client-ca.pem` in `--dir` (copy it to every node with
    /// the rest of the directory; the client API then accepts certificates it issues, and no
    /// others) and its key at `--key` (mode 0600; keep it offline, outside `--dir`).
    ClientCa {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Issue a client certificate for the QUIC client API: it acts for `--tenant` with
    /// `--role`, like a bearer token of that tenant and role (`NAME.pem`, `NAME.key` in
    /// `--out`). Needs the client CA key written by `client-ca`.
    ClientCert {
        /// The cluster directory holding `client-ca.pem`.
        #[arg(long)]
        dir: PathBuf,
        /// The client CA key.
        #[arg(long)]
        key: PathBuf,
        /// Who holds it: a DNS label (a-z, 0-9, '-').
        #[arg(long)]
        name: String,
        #[arg(long)]
        tenant: String,
        /// admin, developer or invoker.
        #[arg(long)]
        role: String,
        /// Where to write the certificate and key (default: the current directory).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn body_arg(data: &str) -> Result<Bytes> {
    match data.strip_prefix('@') {
        Some(path) => Ok(Bytes::from(
            std::fs::read(path).with_context(|| format!("reading {path}"))?,
        )),
        None => Ok(Bytes::from(data.to_owned())),
    }
}

async fn call(
    server: &Server,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<tern_bench::Response> {
    let authorization = server.authorization();
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let req = tern_bench::request_once(server.server, method, path, &headers, body);
    tokio::time::timeout(Duration::from_secs(120), req)
        .await
        .context("request timed out")?
        .with_context(|| format!("cannot reach the node at {}", server.server))
}

/// [`call`], again while the node answers a retryable refusal (`overloaded`, `unavailable`:
/// a full node, or a cluster member that has not synced the registry yet), with a growing
/// pause, for up to 30 s.
async fn call_retrying(
    server: &Server,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<tern_bench::Response> {
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    let mut pause = Duration::from_millis(100);
    loop {
        let resp = call(server, method.clone(), path, body.clone()).await?;
        let retryable = tern_wire::ApiError::from_json(&resp.body)
            .is_some_and(|e| e.code.is_retryable() && !(200..300).contains(&resp.status));
        if !retryable || std::time::Instant::now() + pause > give_up {
            return Ok(resp);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Limits a deploy asks for (`tern deploy`, `tern bench --deploy`); unset ones are the
/// node's defaults.
#[derive(Clone, Copy)]
struct DeployLimits {
    timeout_ms: Option<u32>,
    memory_mb: Option<u32>,
    max_instances: Option<u32>,
}

impl DeployLimits {
    /// `PUT` target deploying `name` with these limits.
    fn path(&self, name: &str) -> String {
        let mut path = format!("/v1/functions/{name}");
        let mut sep = '?';
        for (k, v) in [
            ("timeout_ms", self.timeout_ms),
            ("memory_mb", self.memory_mb),
            ("max_instances", self.max_instances),
        ] {
            if let Some(v) = v {
                path.push_str(&format!("{sep}{k}={v}"));
                sep = '&';
            }
        }
        path
    }
}

/// Waits (up to 60 s in all) until the node at `server` serves every function in `names`,
/// asked by name (`GET /v1/functions/{name}`: the node resolves the name for the caller's
/// tenant as the load's requests will). Asked again while it answers `not_found`,
/// `unavailable` or `unauthorized` (a replicated deploy or token not there yet); any other
/// answer ends it with an error naming the node, the function and the answer.
async fn wait_until_served(server: &Server, names: &[&str]) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let show =
        |r: &tern_bench::Response| format!("{} {}", r.status, String::from_utf8_lossy(&r.body));
    for name in names {
        let path = format!("/v1/functions/{name}");
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let answer = tokio::time::timeout(left, call(server, Method::GET, &path, Bytes::new()))
                .await
                .ok()
                .transpose()?;
            match answer {
                Some(r) if r.status == 200 => break,
                Some(r) if ![401, 404, 503].contains(&r.status) => bail!(
                    "the entry node {} answered {} for {name}",
                    server.server,
                    show(&r)
                ),
                Some(r) => last = Some(r),
                None => {}
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "the entry node {} did not serve {name} within 60 s (last answer: {})",
                    server.server,
                    last.as_ref().map_or("none".to_owned(), show)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Deploys `wasm` under each of `names` the node does not list yet (deployed functions are
/// left as they are: a new version would cost every one a cold start).
async fn deploy_missing(
    server: &Server,
    names: &[&str],
    wasm: &std::path::Path,
    limits: DeployLimits,
) -> Result<()> {
    let listed = call(server, Method::GET, "/v1/functions", Bytes::new()).await?;
    if !(200..300).contains(&listed.status) {
        return finish(listed);
    }
    let listed: serde_json::Value =
        serde_json::from_slice(&listed.body).context("the node's function list is not JSON")?;
    let have: std::collections::HashSet<&str> = listed
        .as_array()
        .map(|fs| fs.iter().filter_map(|f| f["name"].as_str()).collect())
        .unwrap_or_default();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !have.contains(n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let bytes =
        Bytes::from(std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?);
    for (i, name) in missing.iter().enumerate() {
        let what = format!("deploying {name} ({} of {})", i + 1, missing.len());
        let path = limits.path(name);
        let put = call_retrying(server, Method::PUT, &path, bytes.clone());
        let resp = with_progress(&what, put).await?;
        if !(200..300).contains(&resp.status) {
            return finish(resp).with_context(|| format!("deploying {name}"));
        }
    }
    eprintln!(
        "deployed {} as {} function(s) ({} already there)",
        wasm.display(),
        missing.len(),
        names.len() - missing.len()
    );
    Ok(())
}

/// Runs `work`, and while it takes longer than half a second shows `what` and the time
/// elapsed on stderr, when stderr is a terminal (never in a pipe or a log).
async fn with_progress<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    use std::io::{IsTerminal, Write};
    if !std::io::stderr().is_terminal() {
        return work.await;
    }
    let started = std::time::Instant::now();
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(500),
        Duration::from_millis(250),
    );
    let mut drawn = false;
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tick.tick() => {
                let line = tern_node::present::waiting_line(what, started.elapsed());
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{line}");
                let _ = err.flush();
                drawn = true;
            }
        }
    };
    if drawn {
        // Clear the line: the answer (or error) prints next.
        eprint!("\r\x1b[2K");
    }
    out
}

/// Prints a successful body, or turns an API error into a non-zero exit.
/// `tern logs`: prints the function's lines, then (with `follow`) new ones as they come.
async fn logs(server: &Server, name: &str, follow: bool, json: bool) -> Result<()> {
    use std::io::Write;
    let mut after = 0u64;
    loop {
        let path = format!("/v1/functions/{name}/logs?after={after}");
        let resp = call(server, Method::GET, &path, Bytes::new()).await?;
        if !(200..300).contains(&resp.status) {
            return finish(resp);
        }
        let page: tern_wire::LogPage =
            serde_json::from_slice(&resp.body).context("the node's answer is not a log page")?;
        let mut out = std::io::stdout().lock();
        // Lines numbered between the last one read and the first one here were pushed out
        // before this read: said on stderr, so stdout stays the lines alone.
        if let Some(first) = page.lines.first()
            && after > 0
            && first.seq > after + 1
        {
            eprintln!(
                "[{} lines were pushed out before they could be read]",
                first.seq - after - 1
            );
        }
        for line in &page.lines {
            if json {
                writeln!(out, "{}", serde_json::to_string(line)?)?;
            } else {
                writeln!(
                    out,
                    "{} {} {}",
                    format_ms(line.at_ms),
                    line.request_id,
                    printable(&line.text)
                )?;
            }
        }
        out.flush()?;
        after = page.next;
        // A full page may have more behind it: read on at once.
        if page.lines.len() >= 1000 {
            continue;
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A guest's text with control characters shown escaped (`\u{1b}`), so a guest cannot drive
/// the reader's terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `at_ms` (ms since the Unix epoch) as UTC `HH:MM:SS.mmm`.
fn format_ms(at_ms: u64) -> String {
    let (s, ms) = (at_ms / 1000, at_ms % 1000);
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

/// A successful answer shown for a person (`table`) or as the node's JSON; an error as
/// [`finish`] prints it.
fn show(
    resp: tern_bench::Response,
    output: Output,
    present: impl Fn(&serde_json::Value) -> String,
) -> Result<()> {
    if output == Output::Json || !(200..300).contains(&resp.status) {
        return finish(resp);
    }
    let value: serde_json::Value =
        serde_json::from_slice(&resp.body).context("the node's answer is not JSON")?;
    print!("{}", present(&value));
    Ok(())
}

/// Now, in ms since the Unix epoch (for ages).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn finish(resp: tern_bench::Response) -> Result<()> {
    if (200..300).contains(&resp.status) {
        use std::io::Write;
        let mut out = std::io::stdout();
        out.write_all(&resp.body)?;
        if !resp.body.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    match tern_wire::ApiError::from_json(&resp.body) {
        Some(e) => bail!(
            "{}",
            tern_node::present::error_line(e.code.as_str(), resp.status, &e.message)
        ),
        None => bail!(
            "HTTP {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        ),
    }
}

/// mimalloc instead of glibc's malloc, for the node and its cells (the same binary): per-thread
/// free lists with no consolidation pass. Measured side by side under the echo load in
/// `bench/reports/vs-wasmtime-serve/`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // `tern cell …` is how a node with `isolation = "lci"` starts a tenant's cell: not a user
    // command, and it must jail itself while still single-threaded, before any runtime.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("cell") {
        let code = tern_isolator::inside::main(&args[2..]);
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    // Taken before the runtime starts its threads: taking them edits the environment.
    let inherited = match &cli.command {
        Command::Up { .. } => match tern_node::Sockets::from_listen_fds() {
            Ok(sockets) => sockets,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => tern_node::Sockets::default(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, inherited)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line with its causes, not a backtrace: these are user errors.
            eprintln!("error: {e:#}");
            if store_damaged(&e) {
                std::process::ExitCode::from(EXIT_STORE_DAMAGED)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// The exit status of a node that refuses to start on a damaged store (EX_DATAERR), so a
/// supervisor does not start it again in a loop and a tester can tell it from a crash.
const EXIT_STORE_DAMAGED: u8 = 65;

fn store_damaged(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let store = match cause.downcast_ref::<tern_node::NodeError>() {
            Some(tern_node::NodeError::Store(store)) => Some(store),
            Some(_) => None,
            None => cause.downcast_ref::<tern_node::store::StoreError>(),
        };
        store.is_some_and(tern_node::store::StoreError::is_damage)
    })
}

/// Marks a process that a restart of its own started: it waits [`SELF_RESTART_GAP`] before
/// restarting again, so a disk that keeps failing costs a restart a minute, not a loop.
const SELF_RESTART_ENV: &str = "TERN_SELF_RESTARTED";
const SELF_RESTART_GAP: Duration = Duration::from_secs(60);

/// Re-executes the running binary (`/proc/self/exe`: the same file even if its path was
/// replaced since) with the same arguments, as the same process (a supervisor, a chaos runner
/// or a shell job sees one process). Sockets inherited through socket activation were closed
/// by the stop, so such a node exits instead (75, EX_TEMPFAIL) for its service manager to
/// start it again. Never returns; no destructors run (see `tern up`'s `store`).
fn restart_process(socket_activated: bool, format: LogFormat) -> ! {
    use std::os::unix::process::CommandExt;
    if socket_activated {
        announce(
            format,
            true,
            "error: the store needs opening again and the node's sockets came from socket \
             activation: exiting for the service manager to start it again",
        );
        std::process::exit(75);
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "tern".into());
    announce(
        format,
        false,
        &format!("restarting: {}", arg0.to_string_lossy()),
    );
    let e = std::process::Command::new("/proc/self/exe")
        .arg0(&arg0)
        .args(args)
        .env(SELF_RESTART_ENV, "1")
        .exec();
    eprintln!("error: cannot restart: {e}");
    std::process::exit(1);
}

/// SIGTERM and SIGINT, listened for from when this is made, so one that arrives between two
/// waits is not lost.
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Waits for either (for ever if neither could be listened for).
    async fn recv(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            let got = match s {
                Some(s) => s.recv().await.is_some(),
                None => false,
            };
            if !got {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            () = one(&mut self.term) => {}
            () = one(&mut self.int) => {}
        }
    }

    /// Whether one has arrived and not been waited for.
    fn fired(&mut self) -> bool {
        futures_now(self.recv())
    }
}

/// Polls `f` once: whether it is ready now.
fn futures_now(f: impl std::future::Future<Output = ()>) -> bool {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    f.as_mut().poll(&mut cx).is_ready()
}

/// Sets the process's subscriber: log lines on stderr as `filter` and `format` say (never
/// the exported trace spans), the trace exporter's layer when export is on, and the same
/// lines as OTLP log records when `node_logs` is given.
fn init_logging(
    filter: &str,
    format: LogFormat,
    export: Option<&tern_telemetry::Export>,
    node_logs: Option<tern_telemetry::NodeLogs>,
) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_default()
            .add_directive(
                format!("{}=off", tern_telemetry::TARGET)
                    .parse()
                    .expect("a static directive"),
            )
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter()).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter()).boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(export.map(|e| e.layer()))
        .with(node_logs.map(|l| l.with_filter(filter())))
        .init();
}

async fn run(cli: Cli, inherited: tern_node::Sockets) -> Result<()> {
    // Thousands of concurrent connections need thousands of descriptors.
    let nofile = rlimit::increase_nofile_limit(u64::MAX);
    let warn_nofile = || {
        if let Err(e) = &nofile {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    };
    let output = cli.output;
    // `up` sets up logging once its configuration (which may turn trace export on) is read.
    if !matches!(cli.command, Command::Up { .. }) {
        init_logging(&cli.log, cli.log_format, None, None);
        warn_nofile();
    }
    match cli.command {
        Command::Up {
            config,
            listen,
            data,
            node_name,
            examples_dir,
            cluster_dir,
            cluster_listen,
            peers,
            node_class,
            client_listen,
        } => {
            // Validated once the flags below are applied.
            let mut cfg = Config::load_unvalidated(config.as_deref(), std::env::vars())?;
            if let Some(v) = listen {
                cfg.listen = v;
            }
            if let Some(v) = data {
                cfg.data_dir = v;
            }
            if let Some(v) = node_name {
                cfg.node_name = v;
            }
            if let Some(v) = examples_dir {
                cfg.examples_dir = v;
            }
            if cluster_dir.is_some() {
                cfg.cluster_dir = cluster_dir;
            }
            if let Some(v) = cluster_listen {
                cfg.cluster_listen = v;
            }
            if !peers.is_empty() {
                cfg.peers = peers;
            }
            if let Some(v) = node_class {
                cfg.node_class = v;
            }
            if client_listen.is_some() {
                cfg.client_listen = client_listen;
            }
            cfg.validate()?;
            let env: std::collections::HashMap<String, String> = std::env::vars().collect();
            let export = match cfg.trace_export(&env)? {
                Some(settings) => Some(tern_telemetry::Export::install(&settings)?),
                None => None,
            };
            let log_export = match cfg.log_export(&env)? {
                Some(settings) => Some(std::sync::Arc::new(tern_telemetry::LogExport::install(
                    &settings,
                )?)),
                None => None,
            };
            let node_logs = log_export
                .as_ref()
                .filter(|_| cfg.node_logs_otlp)
                .map(|l| l.node_layer());
            init_logging(&cli.log, cli.log_format, export.as_ref(), node_logs);
            let guest_logs = log_export.clone().filter(|_| cfg.guest_logs_otlp);
            warn_nofile();
            let token_file = (cfg.auth == tern_node::config::AuthMode::Tokens)
                .then(|| cfg.data_dir.join(tern_node::auth::ADMIN_TOKEN_FILE));
            let socket_activated =
                inherited.http.is_some() || inherited.mesh.is_some() || inherited.client.is_some();
            let node = tern_node::start_with(cfg, inherited).await?;
            if let Some(guest_logs) = &guest_logs {
                let guest_logs = guest_logs.clone();
                node.services().runtime.logs().forward_to(Box::new(
                    move |function, request_id, at_ms, lines| {
                        guest_logs.emit_guest_lines(
                            &function.to_string(),
                            function.tenant().as_str(),
                            request_id,
                            at_ms,
                            lines,
                        );
                    },
                ));
            }
            let say = |warning: bool, message: &str| announce(cli.log_format, warning, message);
            match token_file.filter(|f| f.exists()) {
                Some(f) => say(
                    false,
                    &format!(
                        "tern node listening on http://{} (bearer tokens on; admin token in {})",
                        node.addr(),
                        f.display()
                    ),
                ),
                None => say(
                    false,
                    &format!("tern node listening on http://{}", node.addr()),
                ),
            }
            let started = std::time::Instant::now();
            // Listened for from here on: a stop asked for while the node drains to restart
            // must not be lost.
            let mut stop = StopSignals::new();
            // Kept to the end: dropping a failing store's last handle flushes it, and that
            // flush may never end.
            let store = node.app().store.clone();
            let mut restart_wanted = node.restart_wanted();
            let wanted = async {
                if restart_wanted.wait_for(|w| *w).await.is_err() {
                    // The store's watch has ended without asking: nothing more to wait for.
                    std::future::pending::<()>().await;
                }
            };
            let mut restart = tokio::select! {
                () = stop.recv() => false,
                () = wanted => true,
            };
            if restart && std::env::var_os(SELF_RESTART_ENV).is_some() {
                let wait = SELF_RESTART_GAP.saturating_sub(started.elapsed());
                if !wait.is_zero() {
                    say(
                        true,
                        &format!(
                            "restarted less than {} s ago: restarting again in {} s",
                            SELF_RESTART_GAP.as_secs(),
                            wait.as_secs()
                        ),
                    );
                    restart = tokio::select! {
                        () = stop.recv() => false,
                        () = tokio::time::sleep(wait) => true,
                    };
                }
            }
            say(
                restart,
                if restart {
                    "stopping to restart (the store needs opening again)"
                } else {
                    "shutting down"
                },
            );
            let stopped = node.shutdown().await;
            let stopped = match stopped {
                Ok(()) => Ok(()),
                // Its final flush fails as every write since the first error did; what was
                // acknowledged is on disk.
                Err(e) if store.failed() => {
                    say(true, &format!("stopped with the store failing: {e}"));
                    Ok(())
                }
                Err(e) => Err(e),
            };
            if let Some(export) = export
                && let Err(e) = export.shutdown(Duration::from_secs(5))
            {
                say(true, &format!("warning: traces not all sent: {e}"));
            }
            drop(guest_logs);
            if let Some(log_export) = log_export
                && let Err(e) = log_export.shutdown(Duration::from_secs(5))
            {
                say(true, &format!("warning: log records not all sent: {e}"));
            }
            stopped?;
            if restart && stop.fired() {
                say(
                    false,
                    "asked to stop while stopping to restart: not restarting",
                );
                restart = false;
            }
            if restart {
                restart_process(socket_activated, cli.log_format);
            }
            if store.failed() {
                // Without destructors: see `store` above.
                std::process::exit(0);
            }
            Ok(())
        }
        Command::Deploy {
            name,
            file,
            timeout_ms,
            memory_mb,
            max_instances,
            server,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let what = format!(
                "deploying {name} ({}: upload, validation, compilation at the node)",
                tern_node::present::size(bytes.len() as u64)
            );
            let path = DeployLimits {
                timeout_ms,
                memory_mb,
                max_instances,
            }
            .path(&name);
            let put = call_retrying(&server, Method::PUT, &path, Bytes::from(bytes));
            show(
                with_progress(&what, put).await?,
                output,
                tern_node::present::deployed,
            )
        }
        Command::Invoke {
            name,
            data,
            asynchronous,
            map,
            server,
        } => {
            let mut path = format!("/v1/functions/{name}/invoke");
            match (asynchronous, map) {
                (true, true) => path.push_str("?mode=async&map=1"),
                (true, false) => path.push_str("?mode=async"),
                (false, true) => path.push_str("?map=1"),
                (false, false) => {}
            }
            let resp = call(&server, Method::POST, &path, body_arg(&data)?).await?;
            if asynchronous {
                show(resp, output, tern_node::present::accepted)
            } else {
                // The function's own output, as it wrote it.
                finish(resp)
            }
        }
        Command::Call {
            name,
            path,
            method,
            headers,
            data,
            include,
            asynchronous,
            server,
        } => {
            let method = match method {
                Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .with_context(|| format!("{m:?} is not an HTTP method"))?,
                None if data.is_some() => Method::POST,
                None => Method::GET,
            };
            let body = body_arg(data.as_deref().unwrap_or(""))?;
            let path = if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            };
            let mut sent: Vec<(String, String)> = Vec::new();
            for h in &headers {
                let (k, v) = h
                    .split_once(':')
                    .with_context(|| format!("-H {h:?}: expected 'Name: value'"))?;
                sent.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            if asynchronous {
                sent.push(("x-tern-mode".into(), "async".into()));
            }
            // So the node sends the component's trailers, if it sets any.
            sent.push(("te".into(), "trailers".into()));
            if let Some(a) = server.authorization() {
                sent.push(("authorization".into(), a));
            }
            let pairs: Vec<(&str, &str)> =
                sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let url = format!("/fn/{name}{path}");
            let req = tern_bench::request_once(server.server, method, &url, &pairs, body);
            let resp = tokio::time::timeout(Duration::from_secs(120), req)
                .await
                .context("request timed out")?
                .with_context(|| format!("cannot reach the node at {}", server.server))?;
            if asynchronous {
                return show(resp, output, tern_node::present::accepted);
            }
            // The component's own answer, whatever its status, says whether it was a cold
            // start; without that the answer is the node's (an unknown function, a refused
            // call, a trap): a one-line error.
            if resp.header("x-tern-cold-start").is_none() {
                return finish(resp);
            }
            use std::io::Write;
            let mut out = std::io::stdout();
            if include {
                writeln!(out, "HTTP {}", resp.status)?;
                for (k, v) in &resp.headers {
                    writeln!(out, "{k}: {v}")?;
                }
                writeln!(out)?;
            }
            out.write_all(&resp.body)?;
            if include && !resp.trailers.is_empty() {
                // After the body, as they came: a blank line, then one per line.
                writeln!(out)?;
                writeln!(out)?;
                for (k, v) in &resp.trailers {
                    writeln!(out, "{k}: {v}")?;
                }
            }
            Ok(())
        }
        Command::Result { id, wait, server } => loop {
            let resp = call(
                &server,
                Method::GET,
                &format!("/v1/invocations/{id}"),
                Bytes::new(),
            )
            .await?;
            let pending = resp.status == 200
                && serde_json::from_slice::<serde_json::Value>(&resp.body)
                    .is_ok_and(|v| v["status"] == "pending");
            if wait && pending {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            break show(resp, output, |v| {
                tern_node::present::invocation(v, now_ms())
            });
        },
        Command::Chaos(ChaosCommand::List) => {
            for (name, text) in tern_chaos::SHIPPED {
                let description = tern_chaos::Scenario::parse(text)
                    .map(|s| s.description)
                    .unwrap_or_default();
                println!("{name:<26} {description}");
            }
            Ok(())
        }
        Command::Chaos(ChaosCommand::Relay {
            nodes,
            delay_ms,
            links,
        }) => {
            let names: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
            let delays = tern_chaos::links::link_delays(&names, delay_ms, &links)?;
            let mesh: Vec<SocketAddr> = nodes.iter().map(|(_, a)| *a).collect();
            let mut stop = StopSignals::new();
            let relays = tern_chaos::relay::Relays::start(&mesh, 1)
                .await
                .context("starting the relays")?;
            let mut lines = String::new();
            for &((from, to), ms) in &delays {
                relays.impair(
                    from,
                    to,
                    tern_chaos::links::Impairment::link(0.0, ms, 0.0, 0.0),
                );
                let at = relays
                    .address(from, to)
                    .context("a relay for every direction")?;
                lines.push_str(&format!("{} {} {at}\n", names[from], names[to]));
            }
            {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                out.write_all(lines.as_bytes())
                    .and_then(|()| out.flush())
                    .context("writing the relays' addresses")?;
            }
            stop.recv().await;
            Ok(())
        }
        Command::Chaos(ChaosCommand::Run {
            scenario,
            seed,
            out,
            examples_dir,
        }) => {
            let text = match tern_chaos::SHIPPED.iter().find(|(n, _)| *n == scenario) {
                Some((_, text)) => (*text).to_owned(),
                None => std::fs::read_to_string(&scenario).with_context(|| {
                    format!(
                        "reading {scenario} (not a shipped scenario either; see `tern chaos list`)"
                    )
                })?,
            };
            let parsed = tern_chaos::Scenario::parse(&text)
                .with_context(|| format!("scenario {scenario}"))?;
            // Its node settings must be settings a node has, with values of the right type.
            let mut table = toml::Table::try_from(Config::default())
                .context("rendering the default configuration")?;
            table.extend(parsed.cluster.config.clone());
            table
                .try_into::<Config>()
                .with_context(|| format!("scenario {scenario}: cluster.config"))?;
            let out = out.unwrap_or_else(|| {
                PathBuf::from("chaos-runs").join(format!("{}-{}", parsed.name, now_ms() / 1000))
            });
            let options = tern_chaos::runner::RunOptions {
                tern: std::env::current_exe().context("finding this executable")?,
                examples_dir,
                out: out.clone(),
                seed,
            };
            let report = tern_chaos::runner::run(&parsed, &options).await?;
            print!("{}", tern_chaos::runner::markdown(&parsed, &report));
            if report.passed() {
                Ok(())
            } else {
                anyhow::bail!(
                    "{} invariant(s) broke; see {}",
                    report.violations.len(),
                    out.join("report.md").display()
                )
            }
        }
        Command::Cluster(ClusterCommand::Init { out, nodes, ca_key }) => {
            let names = nodes
                .iter()
                .map(|n| n.parse::<tern_cluster::NodeName>())
                .collect::<Result<Vec<_>, _>>()?;
            for path in tern_cluster::pki::init_keeping_ca_key(&out, &names, ca_key.as_deref())? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Cluster(ClusterCommand::ClientCa { dir, key }) => {
            for path in tern_cluster::pki::init_client_ca(&dir, &key)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Cluster(ClusterCommand::ClientCert {
            dir,
            key,
            name,
            tenant,
            role,
            out,
        }) => {
            let label = format!("{name}.{role}.{tenant}");
            tern_node::client_api::parse_client_label(&label)
                .map_err(|why| anyhow::anyhow!("cannot issue {label}: {why}"))?;
            for path in tern_cluster::pki::issue_client(&dir, &key, &label, &out, &name)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Cluster(ClusterCommand::AddNode { dir, ca_key, node }) => {
            let name = node.parse::<tern_cluster::NodeName>()?;
            for path in tern_cluster::pki::add_node(&dir, &ca_key, &name)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            role,
            tenant,
            server,
        }) => {
            let body = serde_json::json!({ "role": role, "tenant": tenant }).to_string();
            finish(call(&server, Method::POST, "/v1/tokens", Bytes::from(body)).await?)
        }
        Command::Token(TokenCommand::List { tenant, server }) => {
            let path = match tenant {
                Some(t) => format!("/v1/tokens?tenant={t}"),
                None => "/v1/tokens".to_owned(),
            };
            show(
                call(&server, Method::GET, &path, Bytes::new()).await?,
                output,
                |v| tern_node::present::tokens(v, now_ms()),
            )
        }
        Command::Tenant(TenantCommand::Create {
            name,
            settings,
            server,
        }) => {
            let body = Bytes::from(settings.body(Some(&name)));
            show(
                call(&server, Method::POST, "/v1/tenants", body).await?,
                output,
                tern_node::present::tenant,
            )
        }
        Command::Tenant(TenantCommand::List { server }) => show(
            call(&server, Method::GET, "/v1/tenants", Bytes::new()).await?,
            output,
            tern_node::present::tenants,
        ),
        Command::Tenant(TenantCommand::Show { name, server }) => show(
            call(
                &server,
                Method::GET,
                &format!("/v1/tenants/{name}"),
                Bytes::new(),
            )
            .await?,
            output,
            tern_node::present::tenant,
        ),
        Command::Tenant(TenantCommand::Update {
            name,
            settings,
            server,
        }) => {
            let body = Bytes::from(settings.body(None));
            show(
                call(&server, Method::PUT, &format!("/v1/tenants/{name}"), body).await?,
                output,
                tern_node::present::tenant,
            )
        }
        Command::Tenant(TenantCommand::Remove { name, server }) => finish(
            call(
                &server,
                Method::DELETE,
                &format!("/v1/tenants/{name}"),
                Bytes::new(),
            )
            .await?,
        ),
        Command::Token(TokenCommand::Revoke { id, server }) => finish(
            call(
                &server,
                Method::DELETE,
                &format!("/v1/tokens/{id}"),
                Bytes::new(),
            )
            .await?,
        ),
        Command::List { server } => show(
            call(&server, Method::GET, "/v1/functions", Bytes::new()).await?,
            output,
            |v| tern_node::present::functions(v, now_ms()),
        ),
        Command::Logs {
            name,
            follow,
            json,
            server,
        } => logs(&server, &name, follow, json || output == Output::Json).await,
        Command::Status { server } => show(
            call(&server, Method::GET, "/v1/cluster", Bytes::new()).await?,
            output,
            tern_node::present::status,
        ),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "tern", &mut std::io::stdout());
            Ok(())
        }
        Command::Remove { name, server } => finish(
            call(
                &server,
                Method::DELETE,
                &format!("/v1/functions/{name}"),
                Bytes::new(),
            )
            .await?,
        ),
        Command::Bench {
            function,
            data,
            connections,
            rate,
            duration,
            warmup,
            timeout,
            map,
            trace,
            minutes,
            scale,
            speedup,
            seed,
            work_n,
            body_bytes,
            deploy,
            deploy_timeout_ms,
            deploy_memory_mb,
            records,
            json,
            no_progress,
            entry,
            server,
        } => {
            let plan = match &trace {
                None => None,
                Some(file) => {
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let parsed = tern_bench::replay::Trace::parse(&text)
                        .with_context(|| format!("parsing the trace {}", file.display()))?;
                    let work = match &work_n {
                        Some(sizes) => {
                            let (n_lo, n_hi) = tern_bench::replay::parse_sizes(sizes)?;
                            tern_bench::replay::Work::Matmul {
                                n_lo,
                                n_hi,
                                body_bytes,
                            }
                        }
                        None => tern_bench::replay::Work::Fixed(body_arg(&data)?),
                    };
                    let spec = tern_bench::replay::ReplaySpec {
                        minutes: tern_bench::replay::parse_minutes(&minutes)?,
                        scale,
                        speedup,
                        seed,
                        function_template: function.clone(),
                        work,
                    };
                    Some(std::sync::Arc::new(tern_bench::replay::ReplayPlan::new(
                        &parsed, &spec,
                    )?))
                }
            };
            if let Some(wasm) = &deploy {
                let names: Vec<&str> = match &plan {
                    Some(plan) => plan.functions(),
                    None => vec![function.as_str()],
                };
                let limits = DeployLimits {
                    timeout_ms: deploy_timeout_ms,
                    memory_mb: deploy_memory_mb,
                    max_instances: None,
                };
                deploy_missing(&server, &names, wasm, limits).await?;
                // The other entries get them by replication: the load waits for it.
                for addr in &entry {
                    let at = Server {
                        server: *addr,
                        token: server.token.clone(),
                    };
                    wait_until_served(&at, &names).await?;
                }
            }
            let mode = match (&plan, rate) {
                (Some(plan), _) => LoadMode::Replay {
                    plan: plan.clone(),
                    connections,
                },
                (None, Some(rate_per_sec)) => LoadMode::Open {
                    rate_per_sec,
                    connections,
                },
                (None, None) => LoadMode::Closed { connections },
            };
            let warmup = warmup.unwrap_or(if plan.is_some() {
                Duration::ZERO
            } else {
                Duration::from_secs(2)
            });
            let cfg = LoadConfig {
                addrs: std::iter::once(server.server).chain(entry).collect(),
                method: Method::POST,
                path_and_query: format!(
                    "/v1/functions/{function}/invoke{}",
                    if map { "?map=1" } else { "" }
                ),
                headers: server
                    .authorization()
                    .map(|a| vec![("authorization".to_owned(), a)])
                    .unwrap_or_default(),
                body: body_arg(&data)?,
                mode,
                duration,
                warmup,
                progress: !no_progress,
                request_timeout: timeout,
            };
            // Created before the run: a path that cannot be written fails now, not after it.
            let records_file = match &records {
                Some(path) => Some(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                ),
                None => None,
            };
            let (report, written) = match records_file {
                Some(file) => {
                    let (report, written) = tern_bench::run_with_records(&cfg, file).await?;
                    (report, Some(written))
                }
                None => (tern_bench::run(&cfg).await?, None),
            };
            println!("{}", report.render_text());
            if let Some(path) = &json {
                std::fs::write(path, report.to_json_pretty())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let (Some(path), Some(written)) = (&records, written) {
                written.with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}
