//! The node's handle on one cell process: starts it in its cgroup, installs functions in
//! it, runs MEUs in it with a bounded number in flight, and turns its death into typed errors
//! for every caller waiting on it.
//!
//! Trust: a cell runs strangers' code, so its answers are checked like a peer's: frames are
//! bounded and must decode, an answer must name an id this handle is waiting on with the
//! kind of request it sent. Anything else ends the cell (`SIGKILL`), and every waiting caller
//! gets [`Error::CellExited`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_cell::{CellCgroup, CellLimits, Hierarchy};
use tern_runtime::StreamTo;
use tern_wire::{ApiError, FunctionInfo, FunctionName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::error::Error;
use crate::inside::CellArgs;
use crate::proto::{FromCell, GO, Outcome, ToCell};

/// Requests queued for the cell's pipe.
const REQUEST_QUEUE: usize = 256;
/// How long the reader and the reaper of a dead cell wait for each other.
const READ_OUT: Duration = Duration::from_secs(1);

/// How to start a cell.
#[derive(Clone, Debug)]
pub struct CellSpec {
    /// Names the cell's cgroup (`[a-z0-9_-]`, at most 64).
    pub name: String,
    /// The executable whose main is [`crate::inside::main`] (the node's own binary with its
    /// `cell` subcommand, or `tern-cell`), and the arguments before the cell's own.
    pub program: PathBuf,
    pub program_args: Vec<String>,
    pub args: CellArgs,
    pub limits: CellLimits,
    /// MEUs sent to the cell and not answered yet, at most.
    pub max_in_flight: usize,
    /// From spawn to the cell's `Ready`.
    pub start_timeout: Duration,
}

/// What a waiting caller is owed.
enum Waiting {
    Install(oneshot::Sender<Result<(), ApiError>>),
    Ping(oneshot::Sender<()>),
    Run {
        answer: oneshot::Sender<Result<Outcome, ApiError>>,
        /// The cell said it started the MEU.
        started: Arc<std::sync::atomic::AtomicBool>,
        /// Where the guest's stderr goes, for which function.
        log: Option<(FunctionName, LogTo)>,
        /// Added to: the guest CPU time the cell reports, nanoseconds.
        cpu_ns: Option<Arc<AtomicU64>>,
        /// Where the answer's parts go, for a run asked to stream.
        stream: Option<StreamTo>,
    },
}

/// Where a run's guest stderr goes on the node: `sink`, under `request_id`, at most `cap`
/// bytes of it (a cell may send more; the node keeps no more than it would itself).
#[derive(Clone)]
pub struct LogTo {
    pub sink: Arc<dyn tern_runtime::guest_logs::LogSink>,
    pub request_id: Arc<str>,
    pub cap: usize,
}

struct Shared {
    waiting: Mutex<HashMap<u64, Waiting>>,
    /// Set once the cell is gone (with why); waiting callers are answered then, new ones
    /// refused.
    ended: watch::Sender<Option<String>>,
    /// The next request id: an answer naming one at or above it was never asked.
    next_id: AtomicU64,
    /// Answers the node may still get for requests it stopped waiting for (a cancelled run
    /// may yet be started and answered, a timed-out ping answered). An answer for no waiter
    /// beyond these is a cell flooding the node: a protocol violation.
    tolerated: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cell is gone: every waiting caller learns why (the first reason given stays).
    fn end(&self, why: String) {
        self.ended.send_if_modified(|ended| {
            let first = ended.is_none();
            if first {
                *ended = Some(why.clone());
            }
            first
        });
        for (_, waiting) in self.lock().drain() {
            let error = ApiError::new(tern_wire::ErrorCode::Internal, why.clone());
            match waiting {
                Waiting::Install(tx) => drop(tx.send(Err(error))),
                Waiting::Ping(_) => {}
                Waiting::Run { answer, .. } => drop(answer.send(Err(error))),
            }
        }
    }
}

/// One running cell.
pub struct CellProcess {
    name: String,
    pid: u32,
    cgroup: CellCgroup,
    requests: mpsc::Sender<ToCell>,
    shared: Arc<Shared>,
    in_flight: Semaphore,
    kill: mpsc::Sender<()>,
    exit: watch::Receiver<Option<std::process::ExitStatus>>,
    /// Set once the dead cell's cgroup has been removed (or left, logged).
    cleaned_up: watch::Receiver<bool>,
}

impl CellProcess {
    /// Starts a cell: spawns it, puts it in its cgroup (created under `hierarchy` with the
    /// spec's limits), lets it jail itself and waits for its `Ready`.
    pub async fn start(hierarchy: &Hierarchy, spec: CellSpec) -> Result<Arc<Self>, Error> {
        // Two pipes, one per direction, rather than a socket pair: a Unix socket wakes its
        // writer's epoll (a fresh edge-triggered `EPOLLOUT`) each time the reader takes data,
        // so every answer would also wake the cell, and every request the node, for nothing.
        // A pipe wakes its writer only when it was full.
        let (cell_in, node_out) = std::io::pipe().map_err(Error::Spawn)?;
        let (node_in, cell_out) = std::io::pipe().map_err(Error::Spawn)?;
        let mut child = tokio::process::Command::new(&spec.program)
            .args(&spec.program_args)
            .args(spec.args.to_args())
            // Nothing of the node's environment (credentials, paths) reaches a cell.
            .env_clear()
            .stdin(Stdio::from(cell_in))
            .stdout(Stdio::from(cell_out))
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::Spawn)?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_stderr(spec.name.clone(), stderr));
        }
        let pid = child
            .id()
            .ok_or(Error::Protocol("the cell exited at once".into()))?;
        let placed = hierarchy
            .create(&spec.name, &spec.limits)
            .and_then(|cgroup| cgroup.add_process(pid).map(|()| cgroup));
        let cgroup = match placed {
            Ok(c) => c,
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                if let Ok(c) = hierarchy.cell(&spec.name) {
                    remove_when_empty(c).await;
                }
                return Err(Error::Cell(e));
            }
        };
        let go = async {
            let reader = pipe::Receiver::from_owned_fd(OwnedFd::from(node_in))?;
            let mut writer = pipe::Sender::from_owned_fd(OwnedFd::from(node_out))?;
            writer.write_all(&[GO]).await?;
            Ok::<_, std::io::Error>((reader, writer))
        };
        let (mut reader, mut writer) = match go.await {
            Ok(halves) => halves,
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                remove_when_empty(cgroup).await;
                return Err(Error::Spawn(e));
            }
        };

        let shared = Arc::new(Shared {
            waiting: Mutex::default(),
            ended: watch::channel(None).0,
            next_id: AtomicU64::new(1),
            tolerated: AtomicU64::new(0),
        });
        let (requests, mut outgoing) = mpsc::channel::<ToCell>(REQUEST_QUEUE);
        let max_frame = spec.args.max_frame;
        tokio::spawn(async move {
            // Callers check sizes before queueing; a request that still does not fit is
            // dropped here and its caller answered by the reader's end of the cell.
            crate::outbox::write_batched(&mut outgoing, &mut writer, |request: ToCell| {
                tern_wire::encode(&request, max_frame)
                    .and_then(|b| tern_wire::encode_frame(&b, max_frame))
                    .ok()
            })
            .await;
        });
        // The child is owned by one task: it kills on request, reaps, and reports.
        let (kill, mut kills) = mpsc::channel::<()>(1);
        let (exit_tx, exit) = watch::channel(None);
        let (cleaned_tx, cleaned_up) = watch::channel(false);
        {
            let (shared, cgroup) = (shared.clone(), cgroup.clone());
            tokio::spawn(async move {
                let status = tokio::select! {
                    status = child.wait() => status,
                    _ = kills.recv() => {
                        let _ = child.start_kill();
                        child.wait().await
                    }
                };
                let why = match &status {
                    Ok(s) => format!("the cell exited ({})", describe(s)),
                    Err(e) => format!("the cell could not be waited for: {e}"),
                };
                exit_tx.send_replace(status.ok());
                // The reader answers the waiters once it has read what the cell sent before
                // it died (a result in the pipe is still a result); if it does not within
                // a second, the waiters are answered from here.
                let mut ended = shared.ended.subscribe();
                let read_out = tokio::time::timeout(READ_OUT, ended.wait_for(Option::is_some));
                if !matches!(read_out.await, Ok(Ok(_))) {
                    shared.end(why);
                }
                remove_when_empty(cgroup).await;
                cleaned_tx.send_replace(true);
            });
        }
        let (ready_tx, ready_rx) = oneshot::channel();
        {
            let (shared, kill, mut exit) = (shared.clone(), kill.clone(), exit.clone());
            tokio::spawn(async move {
                let why = read_answers(&mut reader, max_frame, &shared, ready_tx).await;
                // Whatever ended the conversation, the cell is of no further use.
                let _ = kill.try_send(());
                // Say how the cell ended if it did (it closing its pipe is how it ends).
                let status = tokio::time::timeout(READ_OUT, exit.wait_for(Option::is_some)).await;
                let why = match status {
                    Ok(Ok(status)) => match status.as_ref() {
                        Some(s) => format!("the cell exited ({}); {why}", describe(s)),
                        None => why,
                    },
                    _ => why,
                };
                shared.end(why);
            });
        }
        let cell = Arc::new(Self {
            name: spec.name,
            pid,
            cgroup,
            requests,
            shared,
            in_flight: Semaphore::new(spec.max_in_flight.max(1)),
            kill,
            exit,
            cleaned_up,
        });
        match tokio::time::timeout(spec.start_timeout, ready_rx).await {
            Ok(Ok(())) => Ok(cell),
            Ok(Err(_)) => Err(Error::CellExited(cell.wait_exit().await)),
            Err(_) => {
                cell.kill();
                Err(Error::StartTimeout(spec.start_timeout))
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cell's process as the node sees it (the one that waits for the cell's PID 1).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn cgroup(&self) -> &CellCgroup {
        &self.cgroup
    }

    /// Makes `info` callable in the cell (its artifact must be in the artifact directory).
    pub async fn install(&self, info: FunctionInfo) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(id, Waiting::Install(tx), ToCell::Install { id, info })
            .await?;
        self.answer(rx).await
    }

    pub async fn remove(&self, name: FunctionName) -> Result<(), Error> {
        self.requests
            .send(ToCell::Remove(name))
            .await
            .map_err(|_| self.ended())
    }

    /// Runs one MEU of `function` in the cell. At most `max_in_flight` wait for the cell at
    /// once; the rest wait for their turn here. Dropped before the answer (the caller went
    /// away), the MEU is cancelled in the cell. If the cell dies, the error says whether the
    /// MEU had started ([`Error::CellExited`]) or certainly had not
    /// ([`Error::EndedBeforeStart`]: safe to run again).
    pub async fn run(
        &self,
        function: FunctionName,
        hash: tern_wire::ModuleHash,
        input: Vec<u8>,
        items: u32,
    ) -> Result<Outcome, Error> {
        self.run_logged(function, hash, input, items, "", None, None, None)
            .await
    }

    /// [`CellProcess::run`] of the node's request `request_id` (what the guest sees as
    /// `TERN_REQUEST_ID`), with the guest's stderr recorded in `log` and the CPU time it used
    /// added to `cpu_ns` when the cell answers, whatever the answer; with `stream`, a
    /// component's answer is sent there as it is written (and the outcome has no body).
    #[allow(clippy::too_many_arguments)] // one run's identity, input and the three sinks its answer fills
    pub async fn run_logged(
        &self,
        function: FunctionName,
        hash: tern_wire::ModuleHash,
        input: Vec<u8>,
        items: u32,
        request_id: &str,
        log: Option<LogTo>,
        cpu_ns: Option<Arc<AtomicU64>>,
        stream: Option<StreamTo>,
    ) -> Result<Outcome, Error> {
        let not_started = |e: Error| match e {
            Error::CellExited(why) => Error::EndedBeforeStart(why),
            other => other,
        };
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| not_started(self.ended()))?;
        let (tx, rx) = oneshot::channel();
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let request = ToCell::Run {
            id,
            function: function.clone(),
            hash,
            input,
            items,
            request_id: request_id.to_owned(),
            stream: stream.is_some(),
        };
        let waiting = Waiting::Run {
            answer: tx,
            started: started.clone(),
            log: log.map(|to| (function, to)),
            cpu_ns,
            stream,
        };
        self.send(id, waiting, request).await.map_err(not_started)?;
        let mut cancel = CancelOnDrop {
            id: Some(id),
            cell: self,
        };
        let answer = self.answer(rx).await;
        cancel.id = None;
        match answer {
            Err(e) if !started.load(Ordering::Acquire) => Err(not_started(e)),
            other => other,
        }
    }

    /// Whether the cell answers a ping within `within` (a cell that does not is hung: its
    /// process lives but it serves nothing).
    pub async fn ping(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        // The whole exchange is bounded: a cell so far behind that its request queue is full
        // is as good as hung.
        let exchange = async {
            self.send(id, Waiting::Ping(tx), ToCell::Ping { id })
                .await
                .ok()?;
            rx.await.ok()
        };
        let answered = matches!(tokio::time::timeout(within, exchange).await, Ok(Some(())));
        if self.shared.lock().remove(&id).is_some() {
            // Asked and not answered: its pong may still come.
            self.shared.tolerated.fetch_add(1, Ordering::Relaxed);
        }
        answered
    }

    /// Kills the cell; every waiting caller gets [`Error::CellExited`].
    pub fn kill(&self) {
        let _ = self.kill.try_send(());
    }

    /// Waits until the cell's process has exited (its cgroup may still be going: see
    /// `remove_when_empty`).
    pub async fn wait_exited(&self) {
        let _ = self.exit.clone().wait_for(Option::is_some).await;
    }

    /// Waits until the cell process has exited and its cgroup is gone; how it ended.
    pub async fn wait_exit(&self) -> String {
        let _ = self.cleaned_up.clone().wait_for(|done| *done).await;
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(status) => status.as_ref().map_or_else(String::new, describe),
            Err(_) => "unknown".into(),
        }
    }

    /// Whether the cell has ended.
    pub fn has_ended(&self) -> bool {
        self.shared.ended.borrow().is_some()
    }

    async fn send(&self, id: u64, waiting: Waiting, request: ToCell) -> Result<(), Error> {
        {
            // Registered under the same lock `end` drains, so a caller is either answered by
            // the end or sees it here.
            let mut map = self.shared.lock();
            if self.has_ended() {
                return Err(self.ended());
            }
            map.insert(id, waiting);
        }
        if self.requests.send(request).await.is_err() {
            self.shared.lock().remove(&id);
            return Err(self.ended());
        }
        Ok(())
    }

    async fn answer<T>(&self, rx: oneshot::Receiver<Result<T, ApiError>>) -> Result<T, Error> {
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if self.has_ended() && e.code == tern_wire::ErrorCode::Internal => {
                Err(Error::CellExited(e.message))
            }
            Ok(Err(e)) => Err(Error::Guest(e)),
            Err(_) => Err(self.ended()),
        }
    }

    fn ended(&self) -> Error {
        Error::CellExited(
            self.shared
                .ended
                .borrow()
                .clone()
                .unwrap_or_else(|| "the cell is stopping".into()),
        )
    }
}

impl Drop for CellProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Cancels MEU `id` in the cell unless the answer came (then `id` is taken out first).
struct CancelOnDrop<'a> {
    id: Option<u64>,
    cell: &'a CellProcess,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.cell.shared.lock().remove(&id);
            // Its `Started` and `Ran` may still come, for no one.
            self.cell.shared.tolerated.fetch_add(2, Ordering::Relaxed);
            // Best effort: a full queue means the cell is far behind, and the answers, when
            // they come, are tolerated above.
            let _ = self.cell.requests.try_send(ToCell::Cancel { id });
        }
    }
}

/// An answer for request `id` that no one waits for: tolerated only for an id the node asked
/// and then stopped waiting for, as many times as such answers may come.
fn unsolicited(shared: &Shared, id: u64) -> Result<(), String> {
    if id >= shared.next_id.load(Ordering::Relaxed) {
        return Err(format!("the cell answered {id}, which was never asked"));
    }
    shared
        .tolerated
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .map(drop)
        .map_err(|_| format!("the cell answered {id} again or unasked"))
}

/// Reads the cell's answers until the stream ends or the cell breaks the protocol; why it
/// stopped.
async fn read_answers(
    reader: &mut pipe::Receiver,
    max_frame: usize,
    shared: &Shared,
    ready: oneshot::Sender<()>,
) -> String {
    let mut ready = Some(ready);
    let mut decoder = tern_wire::FrameDecoder::new(max_frame);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let frame = match decoder.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => match reader.read(&mut buf).await {
                Ok(0) => return "the cell closed its end of the pipe".into(),
                Err(e) => return format!("reading from the cell: {e}"),
                Ok(n) => {
                    if let Err(e) = decoder.push(&buf[..n]) {
                        return format!("the cell sent a bad frame: {e}");
                    }
                    continue;
                }
            },
            Err(e) => return format!("the cell sent a bad frame: {e}"),
        };
        let answer = match tern_wire::decode::<FromCell>(&frame, max_frame) {
            Ok(a) => a,
            Err(e) => return format!("the cell sent an undecodable answer: {e}"),
        };
        match answer {
            FromCell::Ready => match ready.take() {
                Some(tx) => drop(tx.send(())),
                None => return "the cell said ready twice".into(),
            },
            FromCell::Installed { id, result } => match shared.lock().remove(&id) {
                Some(Waiting::Install(tx)) => drop(tx.send(result)),
                Some(_) => return format!("the cell answered {id} as an install"),
                None => return format!("the cell answered install {id}, which was not asked"),
            },
            FromCell::Pong { id } => match shared.lock().remove(&id) {
                Some(Waiting::Ping(tx)) => drop(tx.send(())),
                Some(_) => return format!("the cell answered {id} with a pong"),
                // A ping that timed out meanwhile.
                None => {
                    if let Err(violation) = unsolicited(shared, id) {
                        return violation;
                    }
                }
            },
            FromCell::Started { id } => match shared.lock().get(&id) {
                Some(Waiting::Run { started, .. }) => started.store(true, Ordering::Release),
                Some(_) => return format!("the cell started {id} as a run"),
                // Cancelled meanwhile.
                None => {
                    if let Err(violation) = unsolicited(shared, id) {
                        return violation;
                    }
                }
            },
            FromCell::Part { id, mut part } => {
                // A cell does not say which node ran it: this one did (a peer's parts are
                // named by the link, after the peer it heard them from).
                if let tern_wire::AnswerPart::Head { node, .. } = &mut part {
                    *node = None;
                }
                match shared.lock().get_mut(&id) {
                    Some(Waiting::Run {
                        stream: Some(to),
                        started,
                        ..
                    }) if started.load(Ordering::Acquire) => {
                        if let Err(how) = to.take(part) {
                            return format!("the cell streamed {id} {how}");
                        }
                    }
                    Some(_) => {
                        return format!("the cell streamed {id}, which is not a started stream");
                    }
                    // A run the node stopped waiting for may have streamed any number of parts.
                    None if id < shared.next_id.load(Ordering::Relaxed) => {}
                    None => return format!("the cell streamed {id}, which was never asked"),
                }
            }
            FromCell::Ran {
                id,
                result,
                mut stderr,
                stderr_cut,
                guest_cpu_ns,
            } => match shared.lock().remove(&id) {
                Some(Waiting::Run {
                    answer,
                    log,
                    cpu_ns,
                    ..
                }) => {
                    if let Some(cpu_ns) = cpu_ns {
                        cpu_ns.fetch_add(guest_cpu_ns, Ordering::Relaxed);
                    }
                    if let Some((function, to)) = log
                        && (!stderr.is_empty() || stderr_cut > 0)
                    {
                        let over = stderr.len().saturating_sub(to.cap) as u64;
                        stderr.truncate(to.cap);
                        to.sink.record(
                            &function,
                            &to.request_id,
                            bytes::Bytes::from(stderr),
                            stderr_cut.saturating_add(over),
                        );
                    }
                    drop(answer.send(result))
                }
                Some(_) => return format!("the cell answered {id} as a run"),
                // A cancelled run whose answer crossed the cancel: nobody waits for it.
                None => {
                    if let Err(violation) = unsolicited(shared, id) {
                        return violation;
                    }
                }
            },
        }
    }
}

/// Longest line of a cell's stderr the node logs (longer ones are cut).
const STDERR_LINE: usize = 512;
/// Bytes of a cell's stderr the node logs per minute; beyond them lines are counted, not
/// logged, so a cell cannot flood the node's log.
const STDERR_PER_MINUTE: usize = 16 << 10;

/// Logs what a cell writes to stderr (its own errors: guests' stderr is discarded), named by
/// the cell, each line cut to [`STDERR_LINE`] and at most [`STDERR_PER_MINUTE`] bytes a
/// minute.
async fn forward_stderr(cell: String, stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    let mut window = tokio::time::Instant::now();
    let (mut logged, mut dropped) = (0usize, 0u64);
    loop {
        line.clear();
        // Read at most a line's worth past the cap, so a line without an end cannot grow
        // this buffer without bound.
        let mut limited = (&mut reader).take(STDERR_LINE as u64 * 2);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if window.elapsed() >= Duration::from_secs(60) {
            if dropped > 0 {
                tracing::warn!(%cell, dropped, "lines of the cell's stderr were not logged");
            }
            window = tokio::time::Instant::now();
            (logged, dropped) = (0, 0);
        }
        let text = String::from_utf8_lossy(&line[..line.len().min(STDERR_LINE)]);
        let text = text.trim_end();
        if logged + text.len() > STDERR_PER_MINUTE {
            dropped += 1;
            continue;
        }
        logged += text.len();
        tracing::warn!(%cell, "cell stderr: {text}");
    }
}

/// Removes a dead cell's cgroup once the kernel has taken its last process out: the cell's
/// PID 1 is meant to die with its parent, and whatever is still in the cell is killed (a
/// stopped or stuck PID 1 survives its parent); left in place, and logged, if that takes
/// longer than a second.
async fn remove_when_empty(cgroup: CellCgroup) {
    for attempt in 0..100 {
        if cgroup.processes().is_ok_and(|p| p.is_empty()) {
            break;
        }
        // The cell's process in the node's namespace has ended: whatever it left in the
        // cell (its init inside, which a kill of the outer process does not reach) goes too.
        if attempt % 10 == 0
            && let Err(e) = cgroup.kill_all()
        {
            tracing::warn!(error = %e, "cannot kill what is left of a dead cell");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Err(e) = cgroup.remove() {
        tracing::warn!(error = %e, "cannot remove a dead cell's cgroup");
    }
}

fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        // The jail's first process reports its cell's death by signal s as 128 + s.
        (Some(code), _) if code > 128 => format!("killed by signal {}", code - 128),
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_for_no_one_are_tolerated_only_as_often_as_requests_were_abandoned() {
        let shared = Shared {
            waiting: Mutex::default(),
            ended: watch::channel(None).0,
            next_id: AtomicU64::new(10),
            tolerated: AtomicU64::new(2),
        };
        assert!(unsolicited(&shared, 10).is_err(), "never asked");
        assert!(unsolicited(&shared, 3).is_ok());
        assert!(unsolicited(&shared, 4).is_ok());
        assert!(unsolicited(&shared, 5).is_err(), "one more than abandoned");
    }

    /// `frames` written to a pipe as a cell would (after `Ready`), then read by `read_answers`
    /// with run 1 waiting (streamed, with a budget of `budget` bytes) and ids up to 99 asked:
    /// what it stopped with and the parts run 1's stream got.
    async fn read_streamed(
        frames: &[FromCell],
        budget: usize,
    ) -> (String, Vec<tern_wire::AnswerPart>) {
        let (read, write) = std::io::pipe().unwrap();
        let mut bytes = Vec::new();
        for f in std::iter::once(&FromCell::Ready).chain(frames) {
            let body = tern_wire::encode(f, 1 << 20).unwrap();
            bytes.extend(tern_wire::encode_frame(&body, 1 << 20).unwrap());
        }
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut write = write;
            write.write_all(&bytes).unwrap();
        });
        let (parts, mut received) = tokio::sync::mpsc::unbounded_channel();
        let (answer, _answered) = oneshot::channel();
        let shared = Shared {
            waiting: Mutex::new(HashMap::from([(
                1,
                Waiting::Run {
                    answer,
                    started: Arc::default(),
                    log: None,
                    cpu_ns: None,
                    stream: Some(StreamTo::new(parts, budget)),
                },
            )])),
            ended: watch::channel(None).0,
            next_id: AtomicU64::new(100),
            tolerated: AtomicU64::new(0),
        };
        let mut reader = pipe::Receiver::from_owned_fd(OwnedFd::from(read)).unwrap();
        let (ready, _) = oneshot::channel();
        let why = read_answers(&mut reader, 1 << 20, &shared, ready).await;
        writer.join().unwrap();
        drop(shared);
        let mut got = Vec::new();
        while let Some(p) = received.recv().await {
            got.push(p);
        }
        (why, got)
    }

    fn data(n: usize) -> tern_wire::AnswerPart {
        tern_wire::AnswerPart::Data(vec![b'x'; n])
    }

    fn head() -> tern_wire::AnswerPart {
        tern_wire::AnswerPart::Head {
            status: 200,
            headers: vec![("x".into(), b"y".to_vec())],
            cold_start: false,
            node: None,
        }
    }

    /// A budget for a head and parts of `bytes` in all.
    fn budget(parts: usize, bytes: usize) -> usize {
        tern_runtime::part_size(&head()) + parts * tern_runtime::PART_OVERHEAD + bytes
    }

    #[tokio::test]
    async fn streamed_parts_reach_their_run_within_its_budget_and_one_past_it_ends_the_cell() {
        let part = |id, part| FromCell::Part { id, part };
        let (why, got) = read_streamed(
            &[
                FromCell::Started { id: 1 },
                part(1, head()),
                part(1, data(4)),
                // A run the node stopped waiting for: dropped, however many come.
                part(7, data(50)),
                part(7, data(50)),
                part(1, data(6)),
                part(1, data(1)),
            ],
            budget(2, 10),
        )
        .await;
        assert!(why.contains("streamed 1 more than its output cap"), "{why}");
        assert_eq!(got, vec![head(), data(4), data(6)]);
        // Each part counts its overhead: empty parts run the budget down too.
        let empties: Vec<_> = std::iter::once(FromCell::Started { id: 1 })
            .chain(std::iter::once(part(1, head())))
            .chain((0..4).map(|_| part(1, data(0))))
            .collect();
        let (why, got) = read_streamed(&empties, budget(3, 0)).await;
        assert!(why.contains("more than its output cap"), "{why}");
        assert_eq!(got.len(), 4);
    }

    #[tokio::test]
    async fn a_cells_head_naming_a_node_reaches_the_run_naming_none() {
        let named = tern_wire::AnswerPart::Head {
            status: 200,
            headers: vec![("x".into(), b"y".to_vec())],
            cold_start: false,
            node: Some("another-node".into()),
        };
        let (_, got) = read_streamed(
            &[
                FromCell::Started { id: 1 },
                FromCell::Part { id: 1, part: named },
            ],
            1 << 20,
        )
        .await;
        assert_eq!(got, vec![head()]);
    }

    #[tokio::test]
    async fn parts_out_of_order_or_for_a_run_never_asked_or_not_started_end_the_cell() {
        let part = |id, part| FromCell::Part { id, part };
        let started = FromCell::Started { id: 1 };
        let (why, got) = read_streamed(&[started.clone(), part(100, head())], 1 << 20).await;
        assert!(why.contains("never asked"), "{why}");
        assert!(got.is_empty());
        // Parts come only between `Started` and `Ran`.
        let (why, got) = read_streamed(&[part(1, head())], 1 << 20).await;
        assert!(why.contains("not a started stream"), "{why}");
        assert!(got.is_empty());
        // The head first, once; nothing after the end.
        for (frames, taken) in [
            (vec![part(1, data(1))], 0),
            (vec![part(1, head()), part(1, head())], 1),
            (
                vec![
                    part(1, head()),
                    part(1, tern_wire::AnswerPart::End),
                    part(1, data(1)),
                ],
                2,
            ),
        ] {
            let all: Vec<_> = std::iter::once(started.clone()).chain(frames).collect();
            let (why, got) = read_streamed(&all, 1 << 20).await;
            assert!(why.contains("streamed 1 out of order"), "{why}");
            assert_eq!(got.len(), taken);
        }
    }
}
