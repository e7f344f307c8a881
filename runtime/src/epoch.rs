//! The epoch ticker: the clock of guest deadlines and CPU slices. wasmtime checks a running
//! guest against its deadline each time the engine's epoch advances, and this thread advances
//! it once per tick (1 ms by default).
//!
//! Epochs only matter while a guest runs, so a node with no guest running parks the thread
//! once it has been idle for [`IDLE_BEFORE_PARK`], instead of waking a thousand times a second
//! for nothing (on this VM that was 3–4 % of a core per idle node). The next guest to start
//! unparks it before running any wasm.
//!
//! No wake may be lost, or a guest could spin past its deadline with no epoch to stop it. The
//! park/unpark protocol is [`tern_sync::ParkGate`]'s (see its module comment): the ticker
//! announces `parked` and then re-reads `running`; a guest increments `running` and then reads
//! `parked`, so at least one side sees the other. tern-sync model-checks it with loom.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

pub use tern_sync::RunningGuest;
use tern_sync::{ParkGate, Ticker};
use wasmtime::Engine;

/// How long the ticker keeps ticking with no guest running before it parks.
pub const IDLE_BEFORE_PARK: Duration = Duration::from_millis(100);

/// Owns the ticker thread; stops it when dropped (once no guest runs).
pub struct EpochTicker {
    gate: ParkGate,
}

impl EpochTicker {
    /// Starts the thread. `ticks` counts the epoch increments (exported as
    /// `tern_epoch_ticks_total`).
    pub fn spawn(
        engine: Engine,
        tick: Duration,
        idle_before_park: Duration,
        ticks: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let idle_ticks_before_park = idle_before_park
            .as_nanos()
            .div_ceil(tick.as_nanos().max(1))
            .max(1);
        let gate = ParkGate::start(|ticker| {
            std::thread::Builder::new()
                .name("tern-epoch".into())
                .spawn(move || run(&engine, tick, idle_ticks_before_park, &ticks, &ticker))
                .map(|handle| handle.thread().clone())
        })?;
        Ok(Self { gate })
    }

    /// Call before a guest runs any wasm, and hold the guard until it cannot run any more.
    pub fn guest_running(&self) -> RunningGuest {
        self.gate.guest_running()
    }

    /// Whether the thread is parked (or about to park) for want of running guests.
    pub fn is_parked(&self) -> bool {
        self.gate.is_parked()
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.gate.stop();
    }
}

fn run(
    engine: &Engine,
    tick: Duration,
    idle_ticks_before_park: u128,
    ticks: &AtomicU64,
    ticker: &Ticker,
) {
    let mut idle_ticks = 0u128;
    // After a stop, keep ticking while guests still run (one spinning on a slow-lane thread
    // when the runtime is dropped must still meet its deadline and end).
    while ticker.should_tick_on() {
        std::thread::sleep(tick);
        engine.increment_epoch();
        ticks.fetch_add(1, SeqCst);
        if !ticker.is_idle() {
            idle_ticks = 0;
            continue;
        }
        idle_ticks += 1;
        if idle_ticks < idle_ticks_before_park {
            continue;
        }
        // Until a guest starts or the ticker is stopped.
        ticker.park_while_idle();
        idle_ticks = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Instant;

    use super::*;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    /// A ticker on a fresh engine, and its tick counter.
    fn ticker(tick: Duration, idle_before_park: Duration) -> (EpochTicker, Arc<AtomicU64>) {
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = EpochTicker::spawn(engine(), tick, idle_before_park, ticks.clone()).unwrap();
        (ticker, ticks)
    }

    fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let give_up = Instant::now() + limit;
        while !f() {
            assert!(Instant::now() < give_up, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn parks_when_idle_and_ticks_again_for_a_guest() {
        let (ticker, ticks) = ticker(Duration::from_millis(1), Duration::from_millis(20));
        wait_until("the idle ticker parks", Duration::from_secs(5), || {
            ticker.is_parked()
        });
        let parked_at = ticks.load(SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            ticks.load(SeqCst),
            parked_at,
            "a parked ticker does not tick"
        );

        let guest = ticker.guest_running();
        wait_until("ticks resume for a guest", Duration::from_secs(5), || {
            ticks.load(SeqCst) >= parked_at + 3
        });
        // It keeps ticking for as long as the guest runs, well past the idle period.
        std::thread::sleep(Duration::from_millis(60));
        assert!(!ticker.is_parked());
        let before = ticks.load(SeqCst);
        wait_until("it still ticks", Duration::from_secs(5), || {
            ticks.load(SeqCst) > before
        });
        drop(guest);
        wait_until("it parks again", Duration::from_secs(5), || {
            ticker.is_parked()
        });
    }

    #[test]
    fn a_dropped_ticker_ticks_until_its_last_guest_ends() {
        let (ticker, ticks) = ticker(Duration::from_millis(1), Duration::from_millis(20));
        let guest = ticker.guest_running();
        drop(ticker);
        let at_drop = ticks.load(SeqCst);
        wait_until(
            "ticks go on for the running guest",
            Duration::from_secs(5),
            || ticks.load(SeqCst) >= at_drop + 3,
        );
        drop(guest);
        std::thread::sleep(Duration::from_millis(20));
        let stopped_at = ticks.load(SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            ticks.load(SeqCst),
            stopped_at,
            "the thread ends with its last guest"
        );
    }

    /// The interleaving the re-read of `running` is for: a guest starts after the ticker
    /// decided to park but before it announced it, so the guest sees `parked == false` and
    /// does not unpark. The ticker must notice the guest and keep ticking.
    #[test]
    fn a_guest_starting_as_the_ticker_decides_to_park_still_gets_ticks() {
        let (ticker, ticks) = ticker(Duration::from_millis(1), Duration::from_millis(5));
        let guest_slot = Arc::new(std::sync::Mutex::new(None::<RunningGuest>));
        let (gate, slot) = (ticker.gate.clone(), guest_slot.clone());
        ticker.gate.set_before_park(Some(Box::new(move || {
            let mut slot = slot.lock().unwrap();
            if slot.is_none() {
                // A guest starting at the worst moment: `parked` is still false, so
                // `guest_running` does not unpark the ticker.
                let guest = gate.guest_running();
                assert!(!gate.is_parked());
                *slot = Some(guest);
            }
        })));
        wait_until(
            "the guest started in the window",
            Duration::from_secs(5),
            || guest_slot.lock().unwrap().is_some(),
        );
        let at_start = ticks.load(SeqCst);
        wait_until(
            "ticks go on for the guest (a lost wake parks the ticker)",
            Duration::from_secs(2),
            || ticks.load(SeqCst) >= at_start + 20,
        );
        assert!(!ticker.is_parked());
        ticker.gate.set_before_park(None);
        drop(guest_slot.lock().unwrap().take());
        wait_until(
            "it parks once the guest ends",
            Duration::from_secs(5),
            || ticker.is_parked(),
        );
    }

    /// Guests start from several threads at random moments around the park: every one of them
    /// must see the epoch advance (a lost unpark would leave one waiting forever).
    #[test]
    fn no_guest_ever_runs_without_ticks() {
        let (ticker, ticks) = ticker(Duration::from_micros(200), Duration::from_micros(400));
        let ticker = Arc::new(ticker);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let ticker = ticker.clone();
                let ticks = ticks.clone();
                std::thread::spawn(move || {
                    let mut seed = t + 1;
                    for _ in 0..150 {
                        // xorshift: idle gaps of 0–1.5 ms, straddling the park.
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        std::thread::sleep(Duration::from_micros(seed % 1500));
                        let _guest = ticker.guest_running();
                        let start = ticks.load(SeqCst);
                        wait_until("a running guest sees ticks", Duration::from_secs(5), || {
                            ticks.load(SeqCst) >= start + 2
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
