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
//!
//! `tests/loom.rs` model-checks that no wake is lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::PoisonError;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
// `std::sync::Arc`, not the shim's, even under loom: `Waker::from` needs an
// `Arc<impl std::task::Wake>` from std, and the alternative (a hand-made `RawWaker` vtable
// over `loom::sync::Arc`) needs `unsafe`, which the workspace denies. Loom loses nothing that
// matters: it still sees every access to the state and the lock below, which is the protocol;
// the Arc only keeps them alive.
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use crate::shim::{AtomicU8, Mutex};

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

#[cfg(all(test, not(loom)))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Condvar, mpsc};
    use std::time::Duration;

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

    /// A bounded channel of `u32` (std only, like the rest of the crate): an async receiver
    /// and blocking senders. Dropping the [`Sender`] closes it.
    struct Channel {
        state: std::sync::Mutex<ChannelState>,
        space: Condvar,
        capacity: usize,
    }

    struct ChannelState {
        queue: VecDeque<u32>,
        closed: bool,
        receiver: Option<Waker>,
    }

    struct Sender(Arc<Channel>);

    fn channel(capacity: usize) -> (Sender, Arc<Channel>) {
        let channel = Arc::new(Channel {
            state: std::sync::Mutex::new(ChannelState {
                queue: VecDeque::new(),
                closed: false,
                receiver: None,
            }),
            space: Condvar::new(),
            capacity,
        });
        (Sender(channel.clone()), channel)
    }

    impl Sender {
        fn blocking_send(&self, v: u32) {
            let mut state = self.0.state.lock().unwrap();
            while state.queue.len() >= self.0.capacity {
                state = self.0.space.wait(state).unwrap();
            }
            state.queue.push_back(v);
            let receiver = state.receiver.take();
            drop(state);
            if let Some(w) = receiver {
                w.wake();
            }
        }

        /// Sends `v` and closes the channel.
        fn send(self, v: u32) {
            self.blocking_send(v);
        }
    }

    impl Drop for Sender {
        fn drop(&mut self) {
            let mut state = self.0.state.lock().unwrap();
            state.closed = true;
            let receiver = state.receiver.take();
            drop(state);
            if let Some(w) = receiver {
                w.wake();
            }
        }
    }

    impl Channel {
        /// The next value, or `None` once the channel is closed and empty.
        fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            let mut state = self.state.lock().unwrap();
            if let Some(v) = state.queue.pop_front() {
                self.space.notify_one();
                Poll::Ready(Some(v))
            } else if state.closed {
                Poll::Ready(None)
            } else {
                state.receiver = Some(cx.waker().clone());
                Poll::Pending
            }
        }

        async fn recv(&self) -> Option<u32> {
            std::future::poll_fn(|cx| self.poll_recv(cx)).await
        }
    }

    /// Polls `fut` to completion on this thread, parking between polls until woken.
    fn block_on<F: Future>(fut: F) -> F::Output {
        use std::sync::atomic::AtomicBool;
        use std::sync::atomic::Ordering::SeqCst;

        struct Unpark {
            woken: AtomicBool,
            thread: std::thread::Thread,
        }
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.woken.store(true, SeqCst);
                self.thread.unpark();
            }
        }
        let unpark = Arc::new(Unpark {
            woken: AtomicBool::new(false),
            thread: std::thread::current(),
        });
        let waker = Waker::from(unpark.clone());
        let mut fut = std::pin::pin!(fut);
        loop {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut Context::from_waker(&waker)) {
                return out;
            }
            while !unpark.woken.swap(false, SeqCst) {
                std::thread::park();
            }
        }
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
        let (tx, rx) = channel(1);
        let mut fut = std::pin::pin!(RepollOnSelfWake::new(async move { rx.recv().await }));
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
        tx.send(7);
        assert_eq!(first.0.load(Relaxed), 0);
        assert_eq!(second.0.load(Relaxed), 1);
        match fut.as_mut().poll(&mut Context::from_waker(&second_waker)) {
            Poll::Ready(Some(7)) => {}
            other => panic!("expected the value, got {other:?}"),
        }
    }

    /// Wakes from another thread race with the poll loop; none may be lost (a lost wake hangs
    /// the receiving task, caught by the timeout).
    #[test]
    fn wakes_from_other_threads_are_never_lost() {
        const MESSAGES: u32 = 20_000;
        let (tx, rx) = channel(4);
        let (done_tx, done_rx) = mpsc::channel();
        let receiver = std::thread::spawn(move || {
            let sum = block_on(RepollOnSelfWake::new(async move {
                let mut sum = 0u64;
                while let Some(v) = rx.recv().await {
                    sum += u64::from(v);
                }
                sum
            }));
            done_tx.send(sum).unwrap();
        });
        let sender = std::thread::spawn(move || {
            for v in 0..MESSAGES {
                tx.blocking_send(v);
            }
        });
        let sum = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a wake was lost: the receiver never finished");
        sender.join().unwrap();
        receiver.join().unwrap();
        assert_eq!(sum, u64::from(MESSAGES) * u64::from(MESSAGES - 1) / 2);
    }
}
