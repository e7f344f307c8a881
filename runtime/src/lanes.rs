//! Two execution lanes for guests, so that a flood of long-running guests cannot starve short
//! requests on a 2-core machine.
//!
//! Every guest starts on the caller's task (the fast lane, normal OS priority). A guest that
//! uses a whole epoch slice yields (wasmtime epoch interruption with `UpdateDeadline::Yield`);
//! at that first yield its future is moved, boxed, to the slow lane: a separate tokio runtime
//! whose threads run at the lowest OS priority (nice 19). Short requests therefore keep
//! preempting CPU hogs, which still run to their deadline when the CPU is otherwise idle.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crate::Error;

pub(crate) struct Lanes {
    slow: Option<tokio::runtime::Runtime>,
}

impl Lanes {
    pub(crate) fn new(threads: usize) -> Result<Self, Error> {
        let slow = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("tern-slow-lane")
            .on_thread_start(lower_this_threads_priority)
            .enable_time()
            .build()?;
        Ok(Self { slow: Some(slow) })
    }

    /// Runs `fut` to completion: inline until its first yield, then on the slow lane.
    /// `moved` is called once if the future moves.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, Error>> + Send + 'static,
        moved: impl FnOnce(),
    ) -> Result<T, Error> {
        let mut fut: Pin<Box<dyn Future<Output = Result<T, Error>> + Send>> = Box::pin(fut);
        let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = first {
            return out;
        }
        let Some(slow) = &self.slow else {
            return fut.await;
        };
        moved();
        // If the caller stops waiting (deadline), the guest must stop too, not linger on the
        // slow lane until it is next scheduled.
        let mut task = AbortOnDrop(slow.spawn(fut));
        match (&mut task.0).await {
            Ok(out) => out,
            Err(e) => Err(Error::TaskFailed {
                task: "guest",
                detail: e.to_string(),
            }),
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        if let Some(rt) = self.slow.take() {
            // Dropping a runtime inside another runtime's context panics; this does not block.
            rt.shutdown_background();
        }
    }
}

fn lower_this_threads_priority() {
    // On Linux the nice value is per thread: `setpriority(PRIO_PROCESS, 0)` changes only the
    // calling thread. Failure only costs fairness, so it is logged, not fatal.
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::warn!(error = %e, "could not lower the slow lane's thread priority");
    }
}
