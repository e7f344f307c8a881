//! Turns a task waking itself while it runs into an immediate re-poll.
//!
//! hyper's HTTP/1 server hands a request body from the connection to the service through a
//! channel inside one task, so reading a body wakes the very task that is being polled. Tokio
//! then treats that task as having yielded: it goes to the back of the run queue and another
//! worker thread is woken (a futex wake and a context switch) to steal it, only to poll a
//! connection that has nothing new to do. Measured on a node serving one closed-loop
//! connection, that was about one futex wake per request.
//!
//! [`RepollOnSelfWake`] records a wake that arrives while it is polling its future and polls
//! again at once instead. It does so at most [`MAX_REPOLLS`] times per poll, so a future that
//! yields on purpose (tokio's cooperative budget, hyper's own fairness yield) still yields.
//! Wakes that arrive while it is not polling go straight to the task, as before.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Re-polls within one poll of the task; past this, the wake goes to the scheduler.
pub const MAX_REPOLLS: usize = 4;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN_WHILE_POLLING: u8 = 2;

/// A future that polls `F` again at once when `F` wakes its own task during a poll.
pub struct RepollOnSelfWake<F> {
    inner: Pin<Box<F>>,
    shared: Arc<Shared>,
    waker: Waker,
}

struct Shared {
    state: AtomicU8,
    /// The task's own waker, for wakes that arrive between polls.
    task: Mutex<Option<Waker>>,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN_WHILE_POLLING, AcqRel, Acquire)
        {
            // The poll loop sees this and polls again.
            Ok(_) | Err(WOKEN_WHILE_POLLING) => {}
            // Between polls (or racing with the end of one, when the task's waker is the safe
            // answer: at worst one spurious poll).
            Err(_) => {
                // Woken outside the lock: an executor may poll the task inside `wake`.
                let task = self
                    .task
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if let Some(w) = task {
                    w.wake();
                }
            }
        }
    }
}

impl<F: Future> RepollOnSelfWake<F> {
    pub fn new(inner: F) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            task: Mutex::new(None),
        });
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(shared.clone()),
            shared,
        }
    }
}

impl<F: Future> Future for RepollOnSelfWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        {
            let mut task = self
                .shared
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let this = &mut *self;
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..MAX_REPOLLS {
            this.shared.state.store(POLLING, Release);
            if let Poll::Ready(out) = this.inner.as_mut().poll(&mut inner_cx) {
                this.shared.state.store(IDLE, Release);
                return Poll::Ready(out);
            }
            // Still POLLING: nobody woke us during the poll, so wait for the next wake.
            if this
                .shared
                .state
                .compare_exchange(POLLING, IDLE, AcqRel, Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        this.shared.state.store(IDLE, Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    /// Counts the wakes that reach the task.
    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    /// Wakes itself `self_wakes` times (once per poll) before it is ready, counting its polls.
    struct SelfWaking {
        self_wakes: usize,
        polls: Arc<AtomicUsize>,
    }

    impl Future for SelfWaking {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Relaxed);
            if self.self_wakes == 0 {
                return Poll::Ready(());
            }
            self.self_wakes -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// A [`SelfWaking`] future inside the wrapper, and its poll counter.
    fn wrapped_self_waking(self_wakes: usize) -> (RepollOnSelfWake<SelfWaking>, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let fut = RepollOnSelfWake::new(SelfWaking {
            self_wakes,
            polls: polls.clone(),
        });
        (fut, polls)
    }

    fn task_waker() -> (Arc<CountWakes>, Waker) {
        let count = Arc::new(CountWakes(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_self_wake_during_a_poll_polls_again_without_waking_the_task() {
        let (count, waker) = task_waker();
        let (fut, polls) = wrapped_self_waking(2);
        let mut fut = std::pin::pin!(fut);
        let ready = fut.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(ready.is_ready());
        assert_eq!(polls.load(Relaxed), 3);
        assert_eq!(
            count.0.load(Relaxed),
            0,
            "no wake went through the scheduler"
        );
    }

    #[test]
    fn a_future_that_keeps_waking_itself_still_yields_to_the_scheduler() {
        let (count, waker) = task_waker();
        let (fut, polls) = wrapped_self_waking(usize::MAX);
        let mut fut = std::pin::pin!(fut);
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert_eq!(polls.load(Relaxed), MAX_REPOLLS);
        assert_eq!(
            count.0.load(Relaxed),
            1,
            "the task was woken to run again later"
        );
    }

    #[test]
    fn a_wake_between_polls_reaches_the_latest_task_waker() {
        let (first, first_waker) = task_waker();
        let (second, second_waker) = task_waker();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut fut = std::pin::pin!(RepollOnSelfWake::new(rx));
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        // Polled again by a task with another waker (a task moved to another executor).
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&second_waker))
                .is_pending()
        );
        tx.send(7).unwrap();
        assert_eq!(first.0.load(Relaxed), 0);
        assert_eq!(second.0.load(Relaxed), 1);
        match fut.as_mut().poll(&mut Context::from_waker(&second_waker)) {
            Poll::Ready(Ok(7)) => {}
            other => panic!("expected the value, got {other:?}"),
        }
    }

    /// Wakes from other threads race with the poll loop; none may be lost (a lost wake hangs
    /// the receiving task, caught by the timeout).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wakes_from_other_threads_are_never_lost() {
        const MESSAGES: u32 = 20_000;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
        let receiver = tokio::spawn(RepollOnSelfWake::new(async move {
            let mut sum = 0u64;
            while let Some(v) = rx.recv().await {
                sum += u64::from(v);
            }
            sum
        }));
        let sender = std::thread::spawn(move || {
            for v in 0..MESSAGES {
                tx.blocking_send(v).unwrap();
            }
        });
        let sum = tokio::time::timeout(std::time::Duration::from_secs(60), receiver)
            .await
            .expect("a wake was lost: the receiver never finished")
            .unwrap();
        sender.join().unwrap();
        assert_eq!(sum, u64::from(MESSAGES) * u64::from(MESSAGES - 1) / 2);
    }
}
