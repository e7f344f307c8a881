//! The bounded export queue of both signals Tern sends (trace spans and guest log records).
//!
//! Ours rather than the SDK's batch processors: those count what they drop when their queue is
//! full but only log the number at shutdown, and an operator needs it as a metric while the
//! node runs. A producer hands each item to a bounded queue without waiting (a full queue
//! drops the item and counts it), and one thread batches and exports, so a slow or absent
//! receiver never blocks a request or a guest.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};

use crate::export::{Error, ExportStats};

/// How one signal's batches leave the process.
pub(crate) trait BatchExport<T>: Send + 'static {
    /// Sends `items` (on the export thread's runtime); whether the receiver took them.
    fn export(&self, rt: &tokio::runtime::Runtime, items: Vec<T>) -> bool;
    /// Called once, after the last batch.
    fn shutdown(&self);
}

enum Msg<T> {
    Item(Box<T>),
    /// Export what is queued, then answer.
    Flush(mpsc::Sender<()>),
    /// Export what is queued, answer, and end the thread.
    Shutdown(mpsc::Sender<()>),
}

/// How big the queue and the batches are, and how long a partial batch waits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batching {
    /// Items waiting for export at most; more are dropped and counted.
    pub queue: usize,
    /// Items per export request at most.
    pub batch: usize,
    /// Longest wait before a partial batch is sent.
    pub delay: Duration,
}

/// The producers' end of the queue.
#[derive(Debug)]
pub(crate) struct Bounded<T> {
    queue: SyncSender<Msg<T>>,
    /// Set when shutdown begins: an item offered later is dropped (and counted) at once.
    closed: AtomicBool,
    stats: &'static ExportStats,
}

impl<T: Send + 'static> Bounded<T> {
    /// Starts the export thread `name`, sending through `exporter`.
    pub(crate) fn start<X: BatchExport<T>>(
        name: &str,
        exporter: X,
        batching: Batching,
        stats: &'static ExportStats,
    ) -> Result<Self, Error> {
        let (queue, rx) = mpsc::sync_channel(batching.queue);
        let (batch, delay) = (batching.batch.max(1), batching.delay);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || export_loop(exporter, rx, batch, delay, stats))
            .map_err(Error::Thread)?;
        Ok(Self {
            queue,
            closed: AtomicBool::new(false),
            stats,
        })
    }

    /// Queues `item` without waiting; a full or closed queue drops it and counts it.
    pub(crate) fn offer(&self, item: T) {
        if self.closed.load(Relaxed) {
            self.stats.dropped.fetch_add(1, Relaxed);
            return;
        }
        match self.queue.try_send(Msg::Item(Box::new(item))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Exports what is queued (waiting at most 30 s).
    pub(crate) fn flush(&self) -> OTelSdkResult {
        self.ask(Msg::Flush, Duration::from_secs(30))
    }

    /// Exports what is queued and stops the thread, `timeout` in all; later items are
    /// dropped and counted.
    pub(crate) fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
        self.closed.store(true, Relaxed);
        self.ask(Msg::Shutdown, timeout)
    }

    /// Queues a flush or shutdown request and waits for its answer, `timeout` in all: a full
    /// queue in front of an unreachable receiver must not hold a shutting-down node longer.
    fn ask(&self, make: fn(mpsc::Sender<()>) -> Msg<T>, timeout: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let (tx, rx) = mpsc::channel();
        let mut msg = make(tx);
        loop {
            match self.queue.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return Err(OTelSdkError::Timeout(timeout));
                    }
                    msg = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

/// The export thread: batches of at most `batch` items, sent when full or `delay` after the
/// first item of the batch arrived. The OTLP client is async (hyper), so the thread runs a
/// small current-thread runtime of its own, apart from the node's workers.
fn export_loop<T, X: BatchExport<T>>(
    exporter: X,
    rx: Receiver<Msg<T>>,
    batch: usize,
    delay: Duration,
    stats: &'static ExportStats,
) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        // Without a runtime nothing can be sent: every item is dropped (and counted).
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Item(_) => {
                    stats.dropped.fetch_add(1, Relaxed);
                }
                Msg::Flush(done) => {
                    let _ = done.send(());
                }
                Msg::Shutdown(done) => {
                    let _ = done.send(());
                    return;
                }
            }
        }
        return;
    };
    let send = |items: &mut Vec<T>| {
        if items.is_empty() {
            return;
        }
        let n = items.len() as u64;
        if exporter.export(&rt, std::mem::take(items)) {
            stats.exported.fetch_add(n, Relaxed);
        } else {
            stats.failed.fetch_add(n, Relaxed);
        }
    };
    let mut items: Vec<T> = Vec::with_capacity(batch);
    let mut deadline: Option<Instant> = None;
    loop {
        let msg = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        match msg {
            Ok(Msg::Item(item)) => {
                items.push(*item);
                deadline.get_or_insert_with(|| Instant::now() + delay);
                if items.len() >= batch {
                    send(&mut items);
                    deadline = None;
                }
            }
            Ok(Msg::Flush(done)) => {
                send(&mut items);
                deadline = None;
                let _ = done.send(());
            }
            Ok(Msg::Shutdown(done)) => {
                // What was queued behind the request goes too (in batches), and flushes
                // asked for meanwhile are answered after it; then the queue closes.
                let mut waiting = vec![done];
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        Msg::Item(item) => {
                            items.push(*item);
                            if items.len() >= batch {
                                send(&mut items);
                            }
                        }
                        Msg::Flush(done) | Msg::Shutdown(done) => waiting.push(done),
                    }
                }
                drop(rx);
                send(&mut items);
                exporter.shutdown();
                for done in waiting {
                    let _ = done.send(());
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut items);
                deadline = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut items);
                return;
            }
        }
    }
}
