//! The cell's own process: waits for the node's go, jails itself, starts the WebAssembly
//! runtime, closes the last gates (capabilities, seccomp) and serves the node's requests on
//! its standard input and output until the node closes them.
//!
//! Order matters: the jail forks, so it comes while the process is single-threaded, and so
//! does dropping capabilities (they are per thread: every thread started afterwards has
//! none); the runtime opens and maps artifacts and starts its threads (tokio workers, the
//! epoch ticker, the slow lane) before the seccomp filter is installed on all of them, and
//! every thread started later inherits the filter.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tern_runtime::isolation::InProcess;
use tern_runtime::{MemoryProfile, Meu, RunSinks, Runtime, RuntimeConfig, RuntimeProfile};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::proto::{FromCell, GO, Outcome, ToCell};

/// Answers queued for the node before the cell stops reading (a slow node holds back the
/// cell, not the other way round).
const ANSWER_QUEUE: usize = 256;

/// How a cell is configured: built by the node ([`CellArgs::to_args`]) and parsed by the cell
/// ([`CellArgs::parse`]). The engine settings must be the node's, or the artifacts the node
/// compiled are not the cell's (their file names carry the engine's compatibility hash).
#[derive(Clone, Debug, PartialEq)]
pub struct CellArgs {
    pub artifacts: PathBuf,
    pub root: PathBuf,
    pub hostname: String,
    pub user_namespace: bool,
    /// The unprivileged user and group the cell becomes (a root node gives each tenant's
    /// cells a user of their own); `None`: root inside, without capabilities.
    pub run_as: Option<tern_cell::RunAs>,
    /// Given to guests as `TERN_NODE`.
    pub node_name: String,
    pub max_instances: u32,
    pub memory_budget_mb: u64,
    pub max_memory_mb: u32,
    pub keep_resident_bytes: usize,
    pub max_output_bytes: usize,
    /// A guest's stderr kept per MEU, bytes (0: discarded), sent to the node with its answer.
    pub guest_log_bytes: usize,
    pub memory_profile: MemoryProfile,
    /// The node's: a cell compiles on first use when its node does.
    pub runtime_profile: RuntimeProfile,
    pub epoch_tick: Duration,
    /// Largest frame either side accepts.
    pub max_frame: usize,
    /// `RLIMIT_NOFILE` inside the cell.
    pub max_open_files: u64,
    /// Most modules the cell keeps loaded (the node's setting).
    pub max_loaded_modules: usize,
}

/// Files a cell needs open besides its loaded modules: its pipes to the node, epoll, event
/// and timer descriptors, the standard streams, an artifact being read.
const CELL_OPEN_FILES: u64 = 64;

impl CellArgs {
    /// A cell for a node running `cfg`, building its root in `root`.
    pub fn for_node(cfg: &RuntimeConfig, root: PathBuf, max_frame: usize) -> Self {
        Self {
            artifacts: cfg.artifact_dir.clone(),
            root,
            hostname: "cell".into(),
            user_namespace: !tern_cell::jail::is_root(),
            run_as: None,
            node_name: cfg.node_name.clone(),
            max_instances: cfg.max_instances,
            memory_budget_mb: cfg.memory_budget_mb,
            max_memory_mb: cfg.max_memory_mb,
            keep_resident_bytes: cfg.keep_resident_bytes,
            max_output_bytes: cfg.max_output_bytes,
            guest_log_bytes: cfg.guest_log_bytes,
            memory_profile: cfg.memory_profile,
            runtime_profile: cfg.runtime_profile,
            epoch_tick: cfg.epoch_tick,
            max_frame,
            // wasmtime keeps each loaded artifact's file open (it is mapped from it): one
            // descriptor per module the cell may keep loaded, besides its own.
            max_open_files: CELL_OPEN_FILES.saturating_add(cfg.max_loaded_modules as u64),
            max_loaded_modules: cfg.max_loaded_modules,
        }
    }

    pub fn to_args(&self) -> Vec<String> {
        let values = [
            ("artifacts", self.artifacts.display().to_string()),
            ("root", self.root.display().to_string()),
            ("hostname", self.hostname.clone()),
            ("node-name", self.node_name.clone()),
            ("max-instances", self.max_instances.to_string()),
            ("memory-budget-mb", self.memory_budget_mb.to_string()),
            ("max-memory-mb", self.max_memory_mb.to_string()),
            ("keep-resident-bytes", self.keep_resident_bytes.to_string()),
            ("max-output-bytes", self.max_output_bytes.to_string()),
            ("guest-log-bytes", self.guest_log_bytes.to_string()),
            ("memory-profile", self.memory_profile.as_str().to_owned()),
            ("runtime-profile", self.runtime_profile.as_str().to_owned()),
            ("epoch-tick-us", self.epoch_tick.as_micros().to_string()),
            ("max-frame", self.max_frame.to_string()),
            ("max-open-files", self.max_open_files.to_string()),
            ("max-loaded-modules", self.max_loaded_modules.to_string()),
        ];
        let mut a: Vec<String> = values
            .into_iter()
            .flat_map(|(key, value)| [format!("--{key}"), value])
            .collect();
        if self.user_namespace {
            a.push("--user-namespace".into());
        }
        if let Some(who) = self.run_as {
            a.extend([
                "--uid".into(),
                who.uid.to_string(),
                "--gid".into(),
                who.gid.to_string(),
            ]);
        }
        a
    }

    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut values: HashMap<&str, &str> = HashMap::new();
        let mut user_namespace = false;
        let mut it = args.iter();
        while let Some(key) = it.next() {
            if key == "--user-namespace" {
                user_namespace = true;
                continue;
            }
            let name = key
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {key:?}"))?;
            let value = it.next().ok_or_else(|| format!("{key} needs a value"))?;
            values.insert(name, value);
        }
        let text = |k: &str| {
            values
                .get(k)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| format!("--{k} is missing"))
        };
        fn num<T: std::str::FromStr>(k: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("--{k} {v:?} is not a number"))
        }
        let memory_profile = match text("memory-profile")?.as_str() {
            "guard-pages" => MemoryProfile::GuardPages,
            "explicit-bounds" => MemoryProfile::ExplicitBounds,
            other => return Err(format!("--memory-profile {other:?} is unknown")),
        };
        let runtime_profile = match text("runtime-profile")?.as_str() {
            "optimised" => RuntimeProfile::Optimised,
            "baseline" => RuntimeProfile::Baseline,
            other => return Err(format!("--runtime-profile {other:?} is unknown")),
        };
        let run_as = match (values.get("uid"), values.get("gid")) {
            (None, None) => None,
            (Some(uid), Some(gid)) => Some(tern_cell::RunAs {
                uid: num("uid", (*uid).to_owned())?,
                gid: num("gid", (*gid).to_owned())?,
            }),
            _ => return Err("--uid and --gid go together".into()),
        };
        Ok(Self {
            artifacts: text("artifacts")?.into(),
            root: text("root")?.into(),
            hostname: text("hostname")?,
            user_namespace,
            run_as,
            node_name: text("node-name")?,
            max_instances: num("max-instances", text("max-instances")?)?,
            memory_budget_mb: num("memory-budget-mb", text("memory-budget-mb")?)?,
            max_memory_mb: num("max-memory-mb", text("max-memory-mb")?)?,
            keep_resident_bytes: num("keep-resident-bytes", text("keep-resident-bytes")?)?,
            max_output_bytes: num("max-output-bytes", text("max-output-bytes")?)?,
            guest_log_bytes: num("guest-log-bytes", text("guest-log-bytes")?)?,
            memory_profile,
            runtime_profile,
            epoch_tick: Duration::from_micros(num("epoch-tick-us", text("epoch-tick-us")?)?),
            max_frame: num("max-frame", text("max-frame")?)?,
            max_open_files: num("max-open-files", text("max-open-files")?)?,
            max_loaded_modules: num("max-loaded-modules", text("max-loaded-modules")?)?,
        })
    }

    fn runtime_config(&self) -> RuntimeConfig {
        let mut cfg = RuntimeConfig::new(self.node_name.clone(), self.artifacts_inside());
        cfg.max_instances = self.max_instances;
        cfg.memory_budget_mb = self.memory_budget_mb;
        cfg.max_memory_mb = self.max_memory_mb;
        cfg.keep_resident_bytes = self.keep_resident_bytes;
        cfg.max_output_bytes = self.max_output_bytes;
        cfg.guest_log_bytes = self.guest_log_bytes;
        cfg.memory_profile = self.memory_profile;
        cfg.runtime_profile = self.runtime_profile;
        cfg.max_loaded_modules = self.max_loaded_modules;
        cfg.epoch_tick = self.epoch_tick;
        cfg
    }

    fn artifacts_inside(&self) -> PathBuf {
        PathBuf::from(tern_cell::ARTIFACTS)
    }
}

/// The cell process's main: its exit code. 0 when the node closed the connection; 2 for
/// bad arguments or no go; 3 when a layer could not be built (the message on stderr).
pub fn main(args: &[String]) -> i32 {
    let args = match CellArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tern cell: {e}");
            return 2;
        }
    };
    // Read from the descriptor itself: `std::io::stdin()` buffers, and could take frames
    // that came after the byte out of the pipe the runtime reads later.
    let mut go = [0u8; 1];
    let unbuffered = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from);
    if !unbuffered.is_ok_and(|mut fd0| fd0.read_exact(&mut go).is_ok()) || go[0] != GO {
        eprintln!("tern cell: no go from the node");
        return 2;
    }
    let spec = tern_cell::JailSpec {
        root: args.root.clone(),
        artifacts: Some(args.artifacts.clone()),
        hostname: args.hostname.clone(),
        max_open_files: args.max_open_files,
        user_namespace: args.user_namespace,
    };
    if let Err(e) = tern_cell::enter(&spec) {
        eprintln!("tern cell: jail: {e}");
        return 3;
    }
    // Capabilities belong to each thread: dropped while this is still the only one, so no
    // thread started later (tokio's, the runtime's) ever has one.
    if let Err(e) = tern_cell::drop_privileges(args.run_as) {
        eprintln!("tern cell: {e}");
        return 3;
    }
    // Threads are bounded: the cell's `pids.max` counts them.
    let threads = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build();
    match threads {
        // On a worker, not on this thread: `block_on` polls its future on the calling thread,
        // so every request read would wake this thread and then hand the spawned run over to
        // a worker (a cross-thread wake-up per call). From a worker, a spawned run goes to that
        // worker's own queue.
        Ok(rt) => match rt.block_on(rt.spawn(serve(args))) {
            Ok(code) => code,
            // A panic ends the cell as a panic would have on this thread.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => {
                eprintln!("tern cell: {e}");
                3
            }
        },
        Err(e) => {
            eprintln!("tern cell: tokio: {e}");
            3
        }
    }
}

async fn serve(args: CellArgs) -> i32 {
    let runtime = match Runtime::new(
        args.runtime_config(),
        Arc::new(tern_metrics::Metrics::default()),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern cell: runtime: {e}");
            return 3;
        }
    };
    // Last: on every thread (the filter is synchronised to all of them), after the runtime
    // has mapped what it needs.
    let gates = tern_cell::Policy::cell().and_then(|p| p.install());
    if let Err(e) = gates {
        eprintln!("tern cell: {e}");
        return 3;
    }
    // The node's requests come on standard input and answers go out on standard output,
    // each a pipe (see `CellProcess::start` for why not a socket).
    use tokio::net::unix::pipe;
    let pipes = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(pipe::Receiver::from_owned_fd)
        .and_then(|reader| {
            let writer = std::io::stdout().as_fd().try_clone_to_owned()?;
            Ok((reader, pipe::Sender::from_owned_fd(writer)?))
        });
    let (mut reader, mut writer) = match pipes {
        Ok(ends) => ends,
        Err(e) => {
            eprintln!("tern cell: the node's pipes: {e}");
            return 3;
        }
    };
    let (tx, mut rx) = mpsc::channel::<FromCell>(ANSWER_QUEUE);
    let max_frame = args.max_frame;
    let writing = tokio::spawn(async move {
        crate::outbox::write_batched(&mut rx, &mut writer, |answer: FromCell| {
            let frame = tern_wire::encode(&answer, max_frame)
                .and_then(|b| tern_wire::encode_frame(&b, max_frame));
            match frame {
                Ok(f) => Some(f),
                // An answer too large to send (an output over the frame limit) becomes an
                // error answer with the same id, so the node is never left waiting.
                Err(e) => too_large(answer, &e.to_string())
                    .and_then(|a| tern_wire::encode(&a, max_frame).ok())
                    .and_then(|b| tern_wire::encode_frame(&b, max_frame).ok()),
            }
        })
        .await;
    });
    if tx.send(FromCell::Ready).await.is_err() {
        return 0;
    }
    let sandbox = InProcess {
        max_output_bytes: args.max_output_bytes,
    };
    let running: Arc<Mutex<HashMap<u64, tokio::task::AbortHandle>>> = Arc::default();
    let mut decoder = tern_wire::FrameDecoder::new(args.max_frame);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let frame = match decoder.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if decoder.push(&buf[..n]).is_err() {
                        break;
                    }
                    continue;
                }
            },
            Err(_) => break,
        };
        let Ok(request) = tern_wire::decode::<ToCell>(&frame, args.max_frame) else {
            break;
        };
        match request {
            ToCell::Install { id, info } => {
                // Off the reading loop: loading an artifact must not hold up pings or runs.
                let (runtime, tx) = (runtime.clone(), tx.clone());
                tokio::spawn(async move {
                    let result = runtime
                        .load_compiled(info.hash, info.size_bytes)
                        .await
                        .map(|prepared| {
                            runtime.install(info, prepared);
                        })
                        .map_err(|e| e.to_api());
                    let _ = tx.send(FromCell::Installed { id, result }).await;
                });
            }
            ToCell::Remove(name) => {
                runtime.remove(&name);
            }
            ToCell::Run {
                id,
                function,
                hash,
                input,
                items,
                request_id,
                stream,
            } => {
                // Only the version the node asked for runs (two installs racing may have left
                // another one here); the node installs it and asks again.
                if runtime.get(&function).map(|d| d.info.hash) != Some(hash) {
                    let missing = tern_wire::ApiError::new(
                        tern_wire::ErrorCode::NotFound,
                        format!("version {hash} of {function} is not installed in this cell"),
                    );
                    let answer = FromCell::Ran {
                        id,
                        result: Err(missing),
                        stderr: Vec::new(),
                        stderr_cut: 0,
                        guest_cpu_ns: 0,
                    };
                    if tx.send(answer).await.is_err() {
                        break;
                    }
                    continue;
                }
                let (runtime, tx, running_map) = (runtime.clone(), tx.clone(), running.clone());
                let sandbox = sandbox.clone();
                // Spawned and registered under the map's lock, which the task takes to remove
                // itself: a task that ends at once cannot leave its entry behind.
                let mut map = running.lock().unwrap_or_else(|p| p.into_inner());
                let task = tokio::spawn(async move {
                    if tx.send(FromCell::Started { id }).await.is_err() {
                        return;
                    }
                    let request_id = match request_id.is_empty() {
                        true => id.to_string(),
                        false => request_id,
                    };
                    let mut meu =
                        Meu::new(request_id, function, Bytes::from(input), items as usize);
                    // A streamed answer's parts go out as they come, all before `Ran`.
                    let mut parts = None;
                    if stream {
                        let (slot, rx) = tern_runtime::AnswerStream::new();
                        meu.stream = slot;
                        parts = Some(rx);
                    }
                    let forward = {
                        let tx = tx.clone();
                        async move {
                            let Some(mut parts) = parts else { return };
                            while let Some(part) = parts.recv().await {
                                if tx.send(FromCell::Part { id, part }).await.is_err() {
                                    return;
                                }
                            }
                        }
                    };
                    // This run's own stderr: it goes with the run (a cancelled run's with it).
                    let stderr = Arc::new(RunStderr::default());
                    let cpu_ns = Arc::new(AtomicU64::new(0));
                    let sinks = RunSinks {
                        log: Some(stderr.clone()),
                        cpu_ns: Some(cpu_ns.clone()),
                    };
                    let (result, ()) =
                        tokio::join!(runtime.execute_with(meu, &sandbox, sinks), forward);
                    let result = result
                        .map(|o| Outcome {
                            output: o.output.to_vec(),
                            cold_start: o.cold_start,
                            timings: o.timings,
                            memory_grows: o.memory_grows,
                        })
                        .map_err(|e| e.to_api());
                    running_map
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    let (stderr, stderr_cut) = stderr.take();
                    let answer = FromCell::Ran {
                        id,
                        result,
                        stderr,
                        stderr_cut,
                        guest_cpu_ns: cpu_ns.load(Ordering::Relaxed),
                    };
                    let _ = tx.send(answer).await;
                });
                map.insert(id, task.abort_handle());
            }
            ToCell::Ping { id } => {
                if tx.send(FromCell::Pong { id }).await.is_err() {
                    break;
                }
            }
            ToCell::Cancel { id } => {
                if let Some(task) = running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id)
                {
                    task.abort();
                }
            }
        }
    }
    // The node went away (or broke the protocol): nothing more will be asked or read.
    drop(tx);
    writing.abort();
    0
}

/// One run's guest stderr inside a cell, sent back with the run's answer.
#[derive(Default)]
struct RunStderr(Mutex<(Bytes, u64)>);

impl RunStderr {
    fn take(&self) -> (Vec<u8>, u64) {
        let (bytes, cut) = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        (bytes.to_vec(), cut)
    }
}

impl tern_runtime::guest_logs::LogSink for RunStderr {
    fn record(
        &self,
        _function: &tern_wire::FunctionName,
        _request_id: &str,
        stderr: Bytes,
        cut: u64,
    ) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = (stderr, cut);
    }
}

/// The error answer for an answer that cannot be sent as it is.
fn too_large(answer: FromCell, why: &str) -> Option<FromCell> {
    let error = tern_wire::ApiError::new(
        tern_wire::ErrorCode::OutputTooLarge,
        format!("the answer does not fit the cell's frame limit: {why}"),
    );
    match answer {
        FromCell::Ran {
            id, guest_cpu_ns, ..
        } => Some(FromCell::Ran {
            id,
            result: Err(error),
            stderr: Vec::new(),
            stderr_cut: 0,
            guest_cpu_ns,
        }),
        FromCell::Installed { id, .. } => Some(FromCell::Installed {
            id,
            result: Err(error),
        }),
        // A part is at most a body chunk or the head and trailers, which count against the
        // output cap like the whole answer the frame limit is sized for.
        FromCell::Ready
        | FromCell::Started { .. }
        | FromCell::Pong { .. }
        | FromCell::Part { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cell_arguments_round_trip_and_bad_ones_are_named() {
        let mut cfg = RuntimeConfig::new("n1", "/data/artifacts");
        cfg.memory_profile = MemoryProfile::ExplicitBounds;
        cfg.runtime_profile = RuntimeProfile::Baseline;
        cfg.max_instances = 7;
        let mut args = CellArgs::for_node(&cfg, "/data/cells/acme".into(), 1 << 20);
        assert_eq!(CellArgs::parse(&args.to_args()).unwrap(), args);
        args.run_as = Some(tern_cell::RunAs { uid: 7, gid: 8 });
        assert_eq!(CellArgs::parse(&args.to_args()).unwrap(), args);
        let mut half = args.to_args();
        let at = half.iter().position(|a| a == "--gid").unwrap();
        half.drain(at..at + 2);
        assert_eq!(
            CellArgs::parse(&half).unwrap_err(),
            "--uid and --gid go together"
        );
        let mut bad = args.to_args();
        let at = bad.iter().position(|a| a == "--max-instances").unwrap();
        bad[at + 1] = "many".into();
        assert_eq!(
            CellArgs::parse(&bad).unwrap_err(),
            "--max-instances \"many\" is not a number"
        );
        assert_eq!(
            CellArgs::parse(&["--root".into()]).unwrap_err(),
            "--root needs a value"
        );
    }
}
