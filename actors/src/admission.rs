//! Admission control: a hard cap on invocations in flight.
//!
//! ractor mailboxes are unbounded, so nothing may enter the actor pipeline without a permit
//! from here; beyond the cap the caller gets `Overloaded` (HTTP 429 with `Retry-After`) at
//! once, and memory stays bounded however hard clients push.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Error;
use tern_metrics::Metrics;

#[derive(Debug)]
pub struct Admission {
    cap: usize,
    in_flight: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// Holding one means an invocation is in flight; dropping it frees the place.
#[derive(Debug)]
pub struct Permit(Arc<Admission>);

impl Admission {
    pub fn new(cap: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            cap,
            in_flight: AtomicUsize::new(0),
            metrics,
        })
    }

    pub fn try_admit(self: &Arc<Self>) -> Result<Permit, Error> {
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            });
        match admitted {
            Ok(_) => {
                self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                Ok(Permit(self.clone()))
            }
            Err(_) => {
                self.metrics
                    .rejected_overloaded
                    .fetch_add(1, Ordering::Relaxed);
                Err(Error::Overloaded { cap: self.cap })
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn admits_up_to_the_cap_then_refuses_then_recovers() {
        let a = Admission::new(2, Arc::default());
        let p1 = a.try_admit().unwrap();
        let _p2 = a.try_admit().unwrap();
        assert!(matches!(a.try_admit(), Err(Error::Overloaded { cap: 2 })));
        drop(p1);
        assert_eq!(a.in_flight(), 1);
        assert!(a.try_admit().is_ok());
    }
}
