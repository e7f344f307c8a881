//! The gate the epoch ticker parks behind when no guest is running (see `tern-actors`'
//! `runtime::epoch`), and the protocol that keeps the next guest's wake from being lost.
//!
//! A ticker with no guest to tick for parks its thread; the next guest to start unparks it
//! before running any wasm. No wake may be lost, or a guest could spin past its deadline with
//! no epoch to stop it. The ticker announces `parked` and then re-reads `running`; a guest
//! increments `running` and then reads `parked`. Each side has a `SeqCst` fence between its
//! write and its read, so at least one side sees the other: either the ticker sees the guest
//! and does not park, or the guest sees `parked` and unparks it (an unpark before the park
//! makes the park return at once). A stop sets `stop` and then unparks unconditionally, and
//! the park loop checks `stop` too.
//!
//! The accesses themselves are `SeqCst` as well, which alone would be enough in the C++/Rust
//! memory model. The fences are there for loom: it treats `SeqCst` *accesses* as `AcqRel`
//! (its README, "Unsupported features"; tokio-rs/loom#180). So without the fences it reports
//! this store-buffering pattern as a lost wake that cannot happen, while it models a
//! `SeqCst` fence exactly. With the fences, the code loom checks is the code that runs. The
//! cost is one full fence per guest start and per park (an `mfence` on x86), which is nothing
//! next to instantiating a guest.
//!
//! `tests/loom.rs` model-checks this.

use std::sync::atomic::Ordering::SeqCst;

use crate::shim::{Arc, AtomicBool, AtomicUsize, Thread, fence, thread};

/// A hook run by the ticker just before it announces a park (see
/// [`ParkGate::set_before_park`]).
#[cfg(any(test, feature = "test-hooks"))]
pub type BeforePark = Box<dyn FnMut() + Send>;

/// The guests' and the owner's side of the gate: starts guests, stops the ticker. Cloning it
/// gives another handle to the same gate.
#[derive(Clone)]
pub struct ParkGate {
    shared: Arc<Shared>,
    /// The ticker thread, to unpark.
    ticker: Thread,
}

/// The ticker thread's side of the gate. Use it only on the thread whose handle the spawn
/// function of [`ParkGate::start`] returned: [`park_while_idle`](Self::park_while_idle) parks
/// the calling thread, and the gate unparks that one.
pub struct Ticker {
    shared: Arc<Shared>,
}

struct Shared {
    /// Guests running now (each holds a [`RunningGuest`]).
    running: AtomicUsize,
    parked: AtomicBool,
    stop: AtomicBool,
    /// Runs when the ticker has decided to park, just before it announces it.
    #[cfg(any(test, feature = "test-hooks"))]
    before_park: std::sync::Mutex<Option<BeforePark>>,
}

/// Held while a guest may run: keeps the ticker from parking (and ticking after a stop).
pub struct RunningGuest {
    shared: Arc<Shared>,
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        self.shared.running.fetch_sub(1, SeqCst);
    }
}

impl ParkGate {
    /// Creates a gate and its ticker side, and has `spawn` start the ticker thread with the
    /// latter: `spawn` returns that thread's handle (the one the gate unparks), or its error.
    pub fn start<E>(spawn: impl FnOnce(Ticker) -> Result<Thread, E>) -> Result<Self, E> {
        let shared = Arc::new(Shared {
            running: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            #[cfg(any(test, feature = "test-hooks"))]
            before_park: std::sync::Mutex::new(None),
        });
        let ticker = spawn(Ticker {
            shared: shared.clone(),
        })?;
        Ok(Self { shared, ticker })
    }

    /// Call before a guest runs, and hold the guard until it cannot run any more: the ticker
    /// does not park meanwhile, and is unparked now if it is parked.
    pub fn guest_running(&self) -> RunningGuest {
        self.shared.running.fetch_add(1, SeqCst);
        // Orders the increment before the read of `parked` (see the module comment).
        fence(SeqCst);
        if self.shared.parked.load(SeqCst) {
            self.ticker.unpark();
        }
        RunningGuest {
            shared: self.shared.clone(),
        }
    }

    /// Whether the ticker is parked (or about to park) for want of running guests.
    pub fn is_parked(&self) -> bool {
        self.shared.parked.load(SeqCst)
    }

    /// Asks the ticker to stop (once no guest runs: see [`Ticker::should_tick_on`]), unparking
    /// it if need be.
    pub fn stop(&self) {
        self.shared.stop.store(true, SeqCst);
        self.ticker.unpark();
    }

    /// Sets (or with `None` clears) a hook that the ticker runs when it has decided to park,
    /// just before it announces it: lets a test start a guest in exactly the window the
    /// re-read of `running` exists for. The hook runs on the ticker thread.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn set_before_park(&self, hook: Option<BeforePark>) {
        *self
            .shared
            .before_park
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = hook;
    }
}

impl Ticker {
    /// Whether the ticker should go on: until a stop, and after one for as long as guests
    /// still run (one spinning when its owner is dropped must still meet its deadline).
    pub fn should_tick_on(&self) -> bool {
        !self.shared.stop.load(SeqCst) || self.shared.running.load(SeqCst) > 0
    }

    /// Whether no guest is running now.
    pub fn is_idle(&self) -> bool {
        self.shared.running.load(SeqCst) == 0
    }

    /// Parks the calling (ticker) thread until a guest runs or the gate is stopped, returning
    /// at once if either is already the case. [`ParkGate::is_parked`] is true meanwhile.
    pub fn park_while_idle(&self) {
        #[cfg(any(test, feature = "test-hooks"))]
        if let Some(hook) = self
            .shared
            .before_park
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            hook();
        }
        self.shared.parked.store(true, SeqCst);
        // Orders the announcement before the re-read of `running` (see the module comment).
        fence(SeqCst);
        // Re-read after announcing the park; `park` may also return spuriously, hence the
        // loop.
        while self.shared.running.load(SeqCst) == 0 && !self.shared.stop.load(SeqCst) {
            thread::park();
        }
        self.shared.parked.store(false, SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::convert::Infallible;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    /// A gate whose ticker side stays on this thread (so `park_while_idle` parks the test).
    fn gate_here() -> (ParkGate, Ticker) {
        let mut ticker = None;
        let gate = ParkGate::start(|t| {
            ticker = Some(t);
            Ok::<_, Infallible>(thread::current())
        })
        .unwrap();
        (gate, ticker.unwrap())
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < give_up, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_ticker_goes_on_after_a_stop_while_guests_run() {
        let (gate, ticker) = gate_here();
        assert!(ticker.should_tick_on());
        assert!(ticker.is_idle());
        let guest = gate.guest_running();
        assert!(!ticker.is_idle());
        gate.stop();
        assert!(ticker.should_tick_on(), "a guest still runs");
        drop(guest);
        assert!(!ticker.should_tick_on());
    }

    #[test]
    fn park_returns_at_once_with_a_guest_running_or_after_a_stop() {
        let (gate, ticker) = gate_here();
        let guest = gate.guest_running();
        ticker.park_while_idle();
        assert!(!gate.is_parked());
        drop(guest);
        gate.stop();
        ticker.park_while_idle();
        assert!(!gate.is_parked());
    }

    #[test]
    fn a_guest_unparks_the_parked_ticker() {
        let (tx, rx) = mpsc::channel();
        let gate = ParkGate::start(|ticker| {
            std::thread::Builder::new()
                .spawn(move || {
                    ticker.park_while_idle();
                    tx.send(ticker.is_idle()).unwrap();
                })
                .map(|handle| handle.thread().clone())
        })
        .unwrap();
        wait_until("the ticker parks", || gate.is_parked());
        assert!(rx.try_recv().is_err(), "it stays parked with no guest");
        let _guest = gate.guest_running();
        let idle = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!idle, "the ticker saw the guest");
        assert!(!gate.is_parked());
    }

    #[test]
    fn a_guest_started_by_the_hook_keeps_the_ticker_from_parking() {
        let (gate, ticker) = gate_here();
        let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (hook_gate, hook_slot) = (gate.clone(), slot.clone());
        gate.set_before_park(Some(Box::new(move || {
            // `parked` is still false: the guest does not unpark the ticker.
            *hook_slot.lock().unwrap() = Some(hook_gate.guest_running());
            assert!(!hook_gate.is_parked());
        })));
        // Would park this thread for good if the re-read of `running` were missing.
        ticker.park_while_idle();
        assert!(!ticker.is_idle());
        gate.set_before_park(None);
        drop(slot.lock().unwrap().take());
        assert!(ticker.is_idle());
    }
}
