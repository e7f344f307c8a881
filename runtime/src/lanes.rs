//! Two execution lanes for guests, so that a flood of long-running guests cannot starve short
//! requests on a 2-core machine.
//!
//! A guest starts on the caller's task (the fast lane, normal OS priority). A guest that
//! uses a whole epoch slice yields (wasmtime epoch interruption with `UpdateDeadline::Yield`);
//! at that first yield its future is moved, boxed, to the slow lane: a separate tokio runtime
//! whose threads run at the lowest OS priority (nice 19). Short requests therefore keep
//! preempting CPU hogs, which still run to their deadline when the CPU is otherwise idle.
//!
//! That first slice is spent on a fast-lane worker, so a flood of calls to a CPU hog (or of
//! calls that are abandoned and retried, each starting a fresh guest) would still hold the
//! workers a slice per call, and short requests would wait behind those slices. A function
//! whose guests keep outliving their slice therefore starts on the slow lane directly
//! ([`LaneHistory`]), except for a probe every few starts that tells when it stops doing so.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
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

    /// Runs `fut` to completion: inline until its first yield, then on the slow lane; or,
    /// with `start_slow`, on the slow lane from the start. `moved` is called once if the
    /// future moves.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, Error>> + Send + 'static,
        start_slow: bool,
        moved: impl FnOnce(),
    ) -> Result<T, Error> {
        let mut fut: Pin<Box<dyn Future<Output = Result<T, Error>> + Send>> = Box::pin(fut);
        if !start_slow {
            let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
            if let Poll::Ready(out) = first {
                return out;
            }
            moved();
        }
        let Some(slow) = &self.slow else {
            return fut.await;
        };
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

/// Consecutive guests of a function that outlived their first slice before its guests start
/// on the slow lane.
const HOG_STREAK: u32 = 4;
/// Of a hog's starts, one in this many is still on the fast lane at first: a probe that
/// resets the streak if the function has stopped outliving its slice. Each probe that moves
/// too doubles the interval, up to `MAX_PROBE_EVERY`, so a function that stays a hog costs
/// the fast lane fewer and fewer slices.
const PROBE_EVERY: u32 = 8;
const MAX_PROBE_EVERY: u32 = 1024;

/// Where a guest starts, as [`LaneHistory::start`] decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// The fast lane, as every guest of a function not known to outlive its slice.
    Fast,
    /// The fast lane, as a hog's probe.
    Probe,
    /// The slow lane from the start.
    Slow,
}

/// How a function's recent guests ran, to choose the lane its next guest starts on. Only
/// guests started on the fast lane are reported: a guest started on the slow lane cannot
/// tell whether it would have outlived its slice there. Any fast-lane guest that finishes
/// within its slice ends the streak: a function whose guests are sometimes short is never
/// started slow for long (so a tenant can keep its hog on the fast lane by making the
/// probes short, at the cost of its own calls' latency; the slice per start is the bound).
#[derive(Debug, Default)]
pub(crate) struct LaneHistory {
    /// Fast-lane guests in a row that moved to the slow lane.
    streak: AtomicU32,
    /// Starts since the last probe (or since the function became a hog).
    starts: AtomicU32,
    /// Starts per probe; 0 until a probe has moved (then `PROBE_EVERY` doubled per probe).
    probe_every: AtomicU32,
}

impl LaneHistory {
    /// Where the next guest starts.
    pub(crate) fn start(&self) -> Start {
        if self.streak.load(Relaxed) < HOG_STREAK {
            return Start::Fast;
        }
        let every = self.probe_every.load(Relaxed).max(PROBE_EVERY);
        let n = self.starts.fetch_add(1, Relaxed).saturating_add(1);
        if n.is_multiple_of(every) {
            Start::Probe
        } else {
            Start::Slow
        }
    }

    /// A guest started on the fast lane (`start`) moved to the slow lane (`true`) or finished
    /// within its slice (`false`).
    pub(crate) fn ran(&self, start: Start, moved: bool) {
        if !moved {
            // Read first: most calls are of short functions, whose streak is already 0, and a
            // write on every call would bounce this line between the workers' caches.
            if self.streak.load(Relaxed) != 0 && self.streak.swap(0, Relaxed) != 0 {
                self.starts.store(0, Relaxed);
                self.probe_every.store(0, Relaxed);
            }
            return;
        }
        let before = self
            .streak
            .fetch_update(Relaxed, Relaxed, |s| Some(s.saturating_add(1)))
            .unwrap_or(u32::MAX);
        if start == Start::Probe {
            // A probe moved: still a hog, probe less often.
            let _ = self.probe_every.fetch_update(Relaxed, Relaxed, |e| {
                Some(e.max(PROBE_EVERY).saturating_mul(2).min(MAX_PROBE_EVERY))
            });
            self.starts.store(0, Relaxed);
        } else if before.saturating_add(1) == HOG_STREAK {
            // Just became a hog: the first probe comes after `PROBE_EVERY` starts.
            self.starts.store(0, Relaxed);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The lanes `n` starts take: `true` for slow. Every fast start is reported as moving.
    fn starts_of_a_hog(h: &LaneHistory, n: u32) -> Vec<bool> {
        (0..n)
            .map(|_| {
                let start = h.start();
                if start != Start::Slow {
                    h.ran(start, true);
                }
                start == Start::Slow
            })
            .collect()
    }

    #[test]
    fn a_function_whose_guests_keep_outliving_their_slice_starts_slow_with_ever_rarer_probes() {
        let h = LaneHistory::default();
        for _ in 0..HOG_STREAK - 1 {
            h.ran(Start::Fast, true);
            assert_eq!(h.start(), Start::Fast, "not yet a hog");
        }
        h.ran(Start::Fast, true);
        let starts = starts_of_a_hog(&h, 8 + 16 + 32);
        let probes: Vec<usize> = (0..starts.len()).filter(|i| !starts[*i]).collect();
        assert_eq!(
            probes,
            vec![7, 23, 55],
            "a probe after 8 starts, then after 16, then after 32"
        );
        let _backing_off = starts_of_a_hog(&h, 2 * MAX_PROBE_EVERY);
        let later = starts_of_a_hog(&h, 10 * MAX_PROBE_EVERY);
        let fast = later.iter().filter(|slow| !**slow).count();
        assert_eq!(fast, 10, "one probe in {MAX_PROBE_EVERY} once backed off");
    }

    #[test]
    fn only_probes_back_the_interval_off() {
        let h = LaneHistory::default();
        // Many fast-lane guests started before the function was known to be a hog move one
        // after another: none is a probe.
        for _ in 0..50 {
            h.ran(Start::Fast, true);
        }
        let starts = starts_of_a_hog(&h, 8);
        assert_eq!(
            starts.iter().filter(|slow| !**slow).count(),
            1,
            "{starts:?}"
        );
        assert!(!starts[7], "the first probe still comes after 8 starts");
    }

    #[test]
    fn a_probe_that_finishes_within_its_slice_ends_the_streak() {
        let h = LaneHistory::default();
        for _ in 0..HOG_STREAK {
            h.ran(Start::Fast, true);
        }
        let _ = starts_of_a_hog(&h, 100);
        // The next probe (the function changed, or the machine got idler) finishes in time.
        let probe = loop {
            match h.start() {
                Start::Slow => continue,
                other => break other,
            }
        };
        assert_eq!(probe, Start::Probe);
        h.ran(probe, false);
        assert!(
            (0..PROBE_EVERY).all(|_| h.start() == Start::Fast),
            "short again"
        );
        // A hog once more: probes start again from the shortest interval.
        for _ in 0..HOG_STREAK {
            h.ran(Start::Fast, true);
        }
        let starts = starts_of_a_hog(&h, 8);
        assert_eq!(
            starts.iter().filter(|slow| !**slow).count(),
            1,
            "{starts:?}"
        );
    }

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_owned()
    }

    #[tokio::test]
    async fn start_slow_runs_the_future_on_the_slow_lane_from_its_first_poll() {
        let lanes = Lanes::new(1).unwrap();
        let mut moves = 0;
        let fast = lanes
            .run(async { Ok(thread_name()) }, false, || moves += 1)
            .await
            .unwrap();
        assert_ne!(fast, "tern-slow-lane");
        let slow = lanes
            .run(async { Ok(thread_name()) }, true, || moves += 1)
            .await
            .unwrap();
        assert_eq!(slow, "tern-slow-lane");
        assert_eq!(moves, 0, "neither moved: one finished, one started there");
    }
}
