//! A component's answer sent to an HTTP caller as the guest writes it.
//!
//! A sync call at the `/fn/` route gives its invocation an [`AnswerStream`]; the run that
//! reaches the guest (in-process or in the tenant's cell, on this node or on the peer it was
//! placed on, whose parts the link passes on as they cross the mesh) sends the answer's head,
//! its body chunks, its trailers and its end there instead of collecting them, and the
//! connection sends each chunk as it comes. A call that fails before its head answers whole:
//! the caller then gets the answer, or the error, as before.
//!
//! The status and headers go out before the run has ended, so a failure after them (a trap,
//! the deadline, the output cap) cannot become an error response any more: the body is cut
//! short instead — hyper closes the connection without the last chunk, which every HTTP/1.1
//! client reports as an incomplete body (hence HTTP/1.1 callers only: an HTTP/1.0 body without
//! a length ends with the connection, so a cut would look whole). The body ends well only if
//! the run sent its end and then finished well.
//!
//! Once its head is out, the run goes on in a task of its own, so it finishes (and gives back
//! its admission permit and slot) however slowly the caller reads; what it wrote waits here,
//! at most its output cap. A caller that goes away aborts the task, cancelling the run.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::body::Frame;
use tern_actors::{Error, Outcome};
use tern_wire::AnswerPart;
use tokio::sync::mpsc::UnboundedReceiver;

/// The run of a component's call: the invocation's future.
pub(crate) type Run = Pin<Box<dyn Future<Output = Result<Outcome, Error>> + Send>>;

/// A streamed call's run in its task, aborted if the body is dropped first.
struct RunTask(tokio::task::JoinHandle<Result<Outcome, Error>>);

impl Drop for RunTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Told the run's result once it is known, and whether the run had sent its whole answer by
/// then (the invocation's trace records it).
pub(crate) type OnEnd = Box<dyn FnOnce(&Result<Outcome, Error>, bool) + Send>;

/// Why a streamed body ended early.
#[derive(Debug, thiserror::Error)]
#[error("the component's answer was cut short: {0}")]
pub(crate) struct CutShort(String);

/// The body of a streamed answer (see the module comment).
pub(crate) struct Streamed {
    parts: UnboundedReceiver<AnswerPart>,
    /// The run, until it has ended.
    run: Option<RunTask>,
    /// Turns the component's trailers into what this caller is sent (empty: none).
    trailers_for_caller: fn(&tern_wire::HttpFields) -> HeaderMap,
    /// What the run ended with, once it has.
    ran: Option<Result<Outcome, Error>>,
    /// Called with the run's result once it is known (the invocation's trace).
    on_end: Option<OnEnd>,
    parts_closed: bool,
    end_seen: bool,
    trailers: Option<HeaderMap>,
    finished: bool,
}

impl Streamed {
    /// The body of a call whose head came; `ran` is the run's result if it has ended already,
    /// else the run goes on in a task of its own.
    pub(crate) fn new(
        parts: UnboundedReceiver<AnswerPart>,
        run: Result<Run, Result<Outcome, Error>>,
        trailers_for_caller: fn(&tern_wire::HttpFields) -> HeaderMap,
        on_end: OnEnd,
    ) -> Self {
        let (run, ran) = match run {
            Ok(run) => (Some(RunTask(tokio::spawn(run))), None),
            Err(ran) => (None, Some(ran)),
        };
        let mut body = Self {
            parts,
            run,
            trailers_for_caller,
            ran: None,
            on_end: Some(on_end),
            parts_closed: false,
            end_seen: false,
            trailers: None,
            finished: false,
        };
        if let Some(result) = ran {
            body.ended(result);
        }
        body
    }

    fn ended(&mut self, result: Result<Outcome, Error>) {
        self.run = None;
        self.ran = Some(result);
    }

    /// Tells `on_end` how the run ended, once.
    fn report(&mut self, result: &Result<Outcome, Error>) {
        if let Some(on_end) = self.on_end.take() {
            on_end(result, self.end_seen);
        }
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) {
        let Some(task) = &mut self.run else { return };
        if let Poll::Ready(joined) = Pin::new(&mut task.0).poll(cx) {
            let result = joined.unwrap_or_else(|e| {
                Err(Error::Runtime(tern_runtime::Error::TaskFailed {
                    task: "streamed run",
                    detail: e.to_string(),
                }))
            });
            self.ended(result);
        }
    }

    fn cut(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, CutShort>>> {
        self.finished = true;
        Poll::Ready(Some(Err(CutShort(why))))
    }
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = CutShort;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, CutShort>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        this.poll_run(cx);
        while !this.parts_closed {
            match this.parts.poll_recv(cx) {
                Poll::Ready(Some(AnswerPart::Data(data))) => {
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))));
                }
                Poll::Ready(Some(AnswerPart::Trailers(fields))) => {
                    let map = (this.trailers_for_caller)(&fields);
                    this.trailers = (!map.is_empty()).then_some(map);
                }
                Poll::Ready(Some(AnswerPart::End)) => this.end_seen = true,
                Poll::Ready(Some(AnswerPart::Head { .. })) => {
                    return this.cut("the run sent a second head".into());
                }
                Poll::Ready(None) => this.parts_closed = true,
                // Every part a run sends is in the channel before its result is (a cell's
                // parts come before its answer on the same pipe): a finished run has no more.
                Poll::Pending if this.ran.is_some() || this.run.is_none() => {
                    this.parts_closed = true
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let Some(result) = this.ran.take() else {
            return Poll::Pending;
        };
        this.report(&result);
        match result {
            Err(e) => this.cut(e.to_string()),
            Ok(_) if !this.end_seen => this.cut("the run ended before its answer did".into()),
            Ok(_) => {
                this.finished = true;
                Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

impl Drop for Streamed {
    /// A caller that went away before the end: the run's result, if it has one, is still
    /// recorded (the run itself is aborted with its task).
    fn drop(&mut self) {
        if let Some(result) = self.ran.take() {
            self.report(&result);
        }
    }
}

/// A streamed body riding on a response as an extension, until the connection takes it
/// (extensions must be `Clone` and `Sync`).
#[derive(Clone)]
pub(crate) struct StreamedBody(Arc<Mutex<Option<Streamed>>>);

impl StreamedBody {
    pub(crate) fn new(body: Streamed) -> Self {
        Self(Arc::new(Mutex::new(Some(body))))
    }

    pub(crate) fn take(&self) -> Option<Streamed> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
