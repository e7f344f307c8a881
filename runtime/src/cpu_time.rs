//! CPU time, per thread and per future: what a guest costs the machine, on whichever threads
//! run it (a guest that outlives its first time slice moves to the slow lane's thread). Its
//! energy is this time at the CPU-time model's watts (`tern_metrics::MODEL_WATTS_PER_CORE`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

/// CPU time this thread has used.
pub(crate) fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// `inner`, adding the CPU time of each of its polls (nanoseconds) to a shared counter, so
/// that what a guest used is known however it ends: finished, failed, or dropped at its
/// deadline.
pub(crate) struct CpuMetered<F> {
    inner: F,
    used_ns: Arc<AtomicU64>,
}

impl<F> CpuMetered<F> {
    pub(crate) fn new(inner: F, used_ns: Arc<AtomicU64>) -> Self {
        Self { inner, used_ns }
    }
}

impl<F: Future + Unpin> Future for CpuMetered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = thread_cpu_time();
        let polled = Pin::new(&mut self.inner).poll(cx);
        let used = thread_cpu_time().saturating_sub(start);
        self.used_ns.fetch_add(used.as_nanos() as u64, Relaxed);
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future that burns `spins` rounds of CPU on each of `polls` polls.
    struct Burn {
        polls: u32,
        spins: u64,
        sink: u64,
    }

    impl Future for Burn {
        type Output = u64;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
            for i in 0..self.spins {
                self.sink = std::hint::black_box(self.sink.wrapping_mul(31).wrapping_add(i));
            }
            self.polls -= 1;
            if self.polls == 0 {
                Poll::Ready(self.sink)
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_metered_future_counts_the_cpu_of_every_poll_and_only_its_own() {
        let used = Arc::new(AtomicU64::new(0));
        let wall = std::time::Instant::now();
        let burn = Burn {
            polls: 3,
            spins: 20_000_000,
            sink: 1,
        };
        CpuMetered::new(burn, used.clone()).await;
        let elapsed = wall.elapsed();
        let metered = Duration::from_nanos(used.load(Relaxed));
        // Three polls of real work: clearly more than nothing, and never more than the wall
        // time they took (one poll runs on one thread at a time).
        assert!(metered > Duration::from_millis(1), "{metered:?}");
        assert!(metered <= elapsed, "{metered:?} of CPU in {elapsed:?}");
        let idle = Arc::new(AtomicU64::new(0));
        CpuMetered::new(
            Box::pin(tokio::time::sleep(Duration::from_millis(20))),
            idle.clone(),
        )
        .await;
        let slept = Duration::from_nanos(idle.load(Relaxed));
        assert!(
            slept < Duration::from_millis(5),
            "a future that sleeps uses (almost) no CPU: {slept:?}"
        );
    }
}
