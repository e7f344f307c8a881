//! Loom models of the crate's protocols: loom runs each model under every interleaving of its
//! threads' atomic accesses, fences, locks, parks and unparks, and fails on
//! a failed assertion or a deadlock (all threads blocked, as when a wake is lost and a thread
//! stays parked for good). Run with
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target-loom cargo test -p tern-sync --release --test loom
//! ```
#![cfg(loom)]
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::task::{Context, Poll, Wake, Waker};

use loom::sync::Mutex;
use loom::sync::atomic::{AtomicBool, AtomicUsize};
use loom::thread::{self, JoinHandle};
use tern_sync::{ParkGate, RepollOnSelfWake, Ticker};

/// Runs `model` under loom. The models are small enough to explore every interleaving (no
/// preemption bound) in a couple of seconds in release mode; `LOOM_MAX_PREEMPTIONS` bounds
/// them if they ever grow.
fn check(model: impl Fn() + Sync + Send + 'static) {
    loom::model::Builder::new().check(model);
}

/// A gate whose ticker thread runs `ticker`; the thread's join handle.
fn start_ticker<T: 'static>(
    ticker: impl FnOnce(Ticker) -> T + 'static,
) -> (ParkGate, JoinHandle<T>) {
    let mut handle = None;
    let gate = ParkGate::start(|t| {
        let h = thread::spawn(move || ticker(t));
        let thread = h.thread().clone();
        handle = Some(h);
        Ok::<_, Infallible>(thread)
    })
    .unwrap();
    (gate, handle.unwrap())
}

/// (a) A guest starts while the idle ticker goes to park: whatever the interleaving, the
/// ticker returns from `park_while_idle` having seen the guest. A lost wake leaves it parked
/// for good, which loom reports as a deadlock (the main thread waits to join it).
///
/// Catches a ticker that does not re-read `running` after announcing `parked` (it parks on
/// a count read before the guest started, while the guest read `parked == false`), a guest
/// that reads `parked` before incrementing `running`, and a missing `SeqCst` fence on either
/// side (store-buffering: both sides may read the old value).
#[test]
fn a_guest_starting_as_the_ticker_parks_always_wakes_it() {
    check(|| {
        let (gate, ticker) = start_ticker(|ticker| {
            // It has been idle long enough and decided to park.
            ticker.park_while_idle();
            assert!(!ticker.is_idle(), "woken only by the guest");
            ticker.should_tick_on()
        });
        let guest = thread::spawn(move || {
            let running = gate.guest_running();
            (gate, running)
        });
        let (gate, running) = guest.join().unwrap();
        assert!(ticker.join().unwrap(), "it ticks on for the guest");
        assert!(!gate.is_parked());
        drop(running);
    });
}

/// (b) A stop races the idle ticker's park: the ticker's loop (as the epoch ticker runs it,
/// without the ticks) ends whatever the interleaving, and a guest that runs across the stop
/// keeps it going until the guest ends.
///
/// Catches a stop that unparks only when it sees `parked`, and a park loop that does not
/// check `stop`.
#[test]
fn a_stop_racing_a_park_ends_the_ticker() {
    check(|| {
        let (gate, ticker) = start_ticker(|ticker| {
            while ticker.should_tick_on() {
                if ticker.is_idle() {
                    ticker.park_while_idle();
                }
                // A guest runs: this is where the ticker sleeps a tick; let loom run others.
                thread::yield_now();
            }
            assert!(ticker.is_idle(), "the ticker ends only when no guest runs");
        });
        gate.stop();
        ticker.join().unwrap();
        assert!(!gate.is_parked());
    });
}

/// (b') As (b), with a guest that started before the stop and ends after it, concurrently
/// with the ticker: the ticker must not end while the guest runs, and must end after.
///
/// Catches a ticker that ends on a stop while a guest still runs (a guest spinning on a
/// slow-lane thread as the runtime is dropped would then never meet its deadline).
#[test]
fn a_stopped_ticker_ticks_on_until_its_last_guest_ends() {
    check(|| {
        let (gate, ticker) = start_ticker(|ticker| {
            while ticker.should_tick_on() {
                if ticker.is_idle() {
                    ticker.park_while_idle();
                }
                thread::yield_now();
            }
            assert!(ticker.is_idle(), "the ticker ended while a guest still ran");
        });
        let running = gate.guest_running();
        let guest_ended = Arc::new(AtomicBool::new(false));
        let ended = guest_ended.clone();
        let guest = thread::spawn(move || {
            drop(running);
            ended.store(true, SeqCst);
        });
        gate.stop();
        ticker.join().unwrap();
        guest.join().unwrap();
        assert!(guest_ended.load(SeqCst));
    });
}

/// Counts the wakes that reach the task.
struct CountWakes(AtomicUsize);

impl Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn task_waker() -> (Arc<CountWakes>, Waker) {
    let count = Arc::new(CountWakes(AtomicUsize::new(0)));
    (count.clone(), Waker::from(count))
}

/// A one-value channel: the future registers its waker and then checks for the value; the
/// sender stores the value and then wakes the registered waker, if any.
#[derive(Default)]
struct Signal {
    sent: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    fn send(&self) {
        self.sent.store(true, SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

/// Ready once the signal is sent, counting its polls.
struct Receive {
    signal: Arc<Signal>,
    polls: Arc<AtomicUsize>,
}

impl Future for Receive {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polls.fetch_add(1, SeqCst);
        *self.signal.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.signal.sent.load(SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// (c) A wake from another thread races a poll (arriving before, during or after the poll of
/// the inner future, or as the poll loop ends): it is never lost. Either the poll loop polls
/// again and finds the value, or the task's waker is called, and the next poll finds it.
///
/// Catches a poll loop that ends with a plain `store(IDLE)` instead of the
/// compare-exchange (a wake landing between the inner poll's `Pending` and the store is
/// overwritten), and a waker that ignores a wake finding IDLE instead of waking the task.
#[test]
fn a_wake_from_another_thread_is_never_lost() {
    check(|| {
        let signal = Arc::new(Signal::default());
        let polls = Arc::new(AtomicUsize::new(0));
        let sender = {
            let signal = signal.clone();
            thread::spawn(move || signal.send())
        };
        let (count, waker) = task_waker();
        let mut fut = std::pin::pin!(RepollOnSelfWake::new(Receive {
            signal,
            polls: polls.clone(),
        }));
        let first = fut.as_mut().poll(&mut Context::from_waker(&waker));
        sender.join().unwrap();
        match first {
            Poll::Ready(()) => {
                assert!(count.0.load(SeqCst) <= 1, "at most one spurious task wake");
            }
            Poll::Pending => {
                assert_eq!(count.0.load(SeqCst), 1, "the wake reached the task");
                assert_eq!(polls.load(SeqCst), 1, "it was not woken during the poll");
                assert!(
                    fut.as_mut()
                        .poll(&mut Context::from_waker(&waker))
                        .is_ready()
                );
            }
        }
    });
}

/// Wakes its own task on its first poll (and is ready on the second), counting its polls;
/// it also leaves its waker where another thread may wake it.
struct SelfWaking {
    polls: Arc<AtomicUsize>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl Future for SelfWaking {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.polls.fetch_add(1, SeqCst) > 0 {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// (d) A future that wakes itself during its poll is polled again at once, within the same
/// poll of the task, and its self-wake does not reach the task, even with a stray wake from
/// another thread at any moment (which, landing between polls, may reach the task: once).
///
/// Catches a self-wake that goes to the task's waker (a yield through the scheduler, what the
/// wrapper exists to avoid), and a `POLLING` state not set before the inner poll.
#[test]
fn a_self_wake_during_a_poll_polls_again_not_the_task() {
    check(|| {
        let polls = Arc::new(AtomicUsize::new(0));
        let slot = Arc::new(Mutex::new(None::<Waker>));
        let stray = {
            let slot = slot.clone();
            thread::spawn(move || {
                let waker = slot.lock().unwrap().clone();
                if let Some(w) = waker {
                    w.wake();
                }
            })
        };
        let (count, waker) = task_waker();
        let mut fut = std::pin::pin!(RepollOnSelfWake::new(SelfWaking {
            polls: polls.clone(),
            waker: slot.clone(),
        }));
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready(),
            "re-polled within the task's poll"
        );
        assert_eq!(polls.load(SeqCst), 2);
        stray.join().unwrap();
        assert!(
            count.0.load(SeqCst) <= 1,
            "only the stray wake may reach the task"
        );
    });
}
