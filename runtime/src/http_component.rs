//! `wasi:http/proxy` components (WASI 0.2): how they are linked, and how one request runs in a
//! fresh instance.
//!
//! A component is deployed, stored, replicated and placed like a core module; only the engine
//! room differs. It is linked against the `wasi:http/proxy` world plus the rest of WASI 0.2
//! (`wasi:cli`, `wasi:filesystem`, `wasi:sockets`), as `wasmtime serve -S cli` does: toolchains
//! link their standard library's startup against those even in a proxy. They grant nothing
//! here: no directory is preopened, no socket address is allowed, and outgoing HTTP is refused
//! (`HttpRequestDenied`) — there is no allow-list yet. An import outside WASI 0.2 is refused at
//! deploy, named in the error.
//!
//! What the host holds for a guest is bounded: every body a guest writes (its response's, or
//! any other it makes) buffers at most one [`BODY_CHUNK`] besides the one being handed over,
//! its resources are at most [`MAX_RESOURCES`], and the response is read as it is written and
//! refused past the output cap (headers included).
//!
//! The request reaches the guest as a `wasi:http` incoming request, from an [`HttpCall`] when
//! the caller came in through the HTTP route for components, or as `POST /` with the input as
//! its body for a plain invocation. The guest's response body is read while the guest writes it
//! (in the same task), capped at the function's output limit.

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt, Full};
use hyper::HeaderMap;
use tern_wire::{AnswerPart, HttpAnswer, HttpCall};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::HostIncomingRequest;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::Error;
use crate::guest_limits::GuestLimits;

/// The most bytes a guest hands over per write to a body; one such chunk waits in a body's
/// channel while the host reads the one before.
const BODY_CHUNK: usize = 16 << 10;

/// The most resources (streams, bodies, fields, pollables…) a guest holds at once: with the
/// body buffer, this bounds what a guest making bodies it never sends can hold of the host's
/// memory (about 2,048 × 2 × 16 KiB = 64 MiB).
pub(crate) const MAX_RESOURCES: usize = 2048;

/// The store data of one component instance.
pub(crate) struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub(crate) limits: GuestLimits,
    hooks: Hooks,
}

impl State {
    pub(crate) fn new(wasi: WasiCtx, limits: GuestLimits) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table,
            limits,
            hooks: Hooks,
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// How `wasi:http` behaves for Tern's guests.
struct Hooks;

impl WasiHttpHooks for Hooks {
    /// Outgoing HTTP is off: every request a guest sends is denied.
    fn send_request(
        &mut self,
        _request: hyper::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    hyper::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK
    }
}

/// The linker every component is linked with (see the module comment).
pub(crate) fn linker(engine: &wasmtime::Engine) -> Result<Linker<State>, Error> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
        .map_err(|e| Error::EngineSetup(format!("component linker: {e}")))?;
    Ok(linker)
}

/// `component` linked and checked to export `wasi:http/incoming-handler`.
pub(crate) fn proxy_pre(
    linker: &Linker<State>,
    component: &Component,
) -> Result<ProxyPre<State>, Error> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| Error::InvalidModule(format!("{e:#}")))?;
    ProxyPre::new(pre).map_err(|e| {
        Error::InvalidModule(format!(
            "not a wasi:http/proxy component: it exports no wasi:http/incoming-handler \
             ({e:#})"
        ))
    })
}

/// A request body as the guest reads it: the bytes, then the caller's trailers if it sent any.
pub(crate) type RequestBody = WithTrailers<
    Full<Bytes>,
    std::future::Ready<Option<Result<HeaderMap, std::convert::Infallible>>>,
>;

fn request_body(body: Bytes, trailers: Option<HeaderMap>) -> RequestBody {
    Full::new(body).with_trailers(std::future::ready(trailers.map(Ok)))
}

/// Where a component's answer goes as the guest writes it, for a caller that takes it as it
/// comes. Empty unless the caller made one ([`AnswerStream::new`]); the first run of the unit
/// that reaches its guest takes the sender (or the link forwarding the unit, which gives it
/// back if the peer ran nothing of it: [`AnswerStream::restore`]), so a copy or a second
/// attempt of the same unit answers whole. Unbounded: a run sends at most its output cap (its parts are counted like a
/// whole answer), so a slow reader costs the node no more than a buffered answer would, and
/// the guest does not wait for it.
#[derive(Clone, Default)]
pub struct AnswerStream(Option<Arc<Mutex<Option<AnswerSender>>>>);

/// The sending end of an [`AnswerStream`].
pub type AnswerSender = tokio::sync::mpsc::UnboundedSender<AnswerPart>;

impl AnswerStream {
    /// A stream and its receiving end.
    pub fn new() -> (Self, tokio::sync::mpsc::UnboundedReceiver<AnswerPart>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self(Some(Arc::new(Mutex::new(Some(tx))))), rx)
    }

    /// Puts `sender` back for a later run of the unit, if no other run took the slot's
    /// sender meanwhile (a forward that failed before any part of the answer went on).
    pub fn restore(&self, sender: AnswerSender) {
        if let Some(slot) = &self.0 {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(sender);
            }
        }
    }

    /// Whether the sender is still there: the caller takes the answer as it is written, and
    /// no run has taken the sender yet.
    pub fn is_open(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| s.lock().unwrap_or_else(|p| p.into_inner()).is_some())
    }

    /// The sender, for the one run that answers through it.
    pub fn take(&self) -> Option<AnswerSender> {
        self.0
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl std::fmt::Debug for AnswerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AnswerStream")
            .field(&self.is_open())
            .finish()
    }
}

/// What a component is asked to do: the HTTP request, and whether the caller wants the whole
/// answer (an [`HttpCall`]) or only its body (plain input).
pub(crate) struct Request {
    pub(crate) http: hyper::Request<RequestBody>,
    pub(crate) plain: bool,
}

impl Request {
    /// The request `input` carries.
    pub(crate) fn from_input(input: &Bytes) -> Result<Self, Error> {
        let Some(call) = HttpCall::decode(input) else {
            let http = hyper::Request::post("/")
                .header(hyper::header::HOST, "localhost")
                .header(hyper::header::CONTENT_LENGTH, input.len())
                .body(request_body(input.clone(), None))
                .map_err(|e| Error::BadHttpCall(e.to_string()))?;
            return Ok(Self { http, plain: true });
        };
        let call = call.map_err(|e| Error::BadHttpCall(e.to_string()))?;
        let mut builder = hyper::Request::builder()
            .method(call.method.as_str())
            .uri(call.path_and_query.as_str());
        let mut has_host = false;
        for (name, value) in &call.headers {
            has_host |= name.eq_ignore_ascii_case("host");
            builder = builder.header(name.as_str(), value.as_slice());
        }
        if !has_host {
            // `wasi:http` needs an authority; a caller that sent none gets a neutral one.
            builder = builder.header(hyper::header::HOST, "localhost");
        }
        let trailers = if call.trailers.is_empty() {
            None
        } else {
            let mut map = HeaderMap::with_capacity(call.trailers.len());
            for (name, value) in &call.trailers {
                let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| Error::BadHttpCall(format!("trailer {name:?}: {e}")))?;
                let value = hyper::header::HeaderValue::from_bytes(value)
                    .map_err(|e| Error::BadHttpCall(format!("trailer {name}: {e}")))?;
                map.append(name, value);
            }
            Some(map)
        };
        let http = builder
            .body(request_body(Bytes::from(call.body), trailers))
            .map_err(|e| Error::BadHttpCall(e.to_string()))?;
        Ok(Self { http, plain: false })
    }
}

/// Gives `request` to the guest as its incoming request, and the way its response comes back.
#[allow(clippy::type_complexity)]
pub(crate) fn hand_over(
    state: &mut State,
    request: hyper::Request<RequestBody>,
) -> Result<
    (
        wasmtime::component::Resource<HostIncomingRequest>,
        wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
        tokio::sync::oneshot::Receiver<
            Result<
                hyper::Response<HyperOutgoingBody>,
                wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
            >,
        >,
    ),
    Error,
> {
    let mut http = state.http();
    let request = request.map(|body| {
        body.map_err(
            |never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} },
        )
    });
    let incoming = http
        .new_incoming_request(
            wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http,
            request,
        )
        .map_err(|e| Error::BadHttpCall(format!("{e:#}")))?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let out = http
        .new_response_outparam(sender)
        .map_err(|e| Error::TaskFailed {
            task: "guest",
            detail: format!("{e:#}"),
        })?;
    Ok((incoming, out, receiver))
}

/// An answer still unfinished after this long since its head is sent as it is written (when
/// its caller takes it that way): a slow answer's head and first bytes do not wait for its end.
pub(crate) const STREAM_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// An answer whose body grows past this many bytes before it ends is sent as it is written.
pub(crate) const STREAM_AFTER_BYTES: usize = 64 << 10;

/// What each part of a streamed answer counts against the output cap besides the bytes it
/// carries: what the node holds for it while the caller reads, so that an answer written a
/// byte at a time cannot hold many times its cap in parts.
pub const PART_OVERHEAD: usize = 64;

/// The guest's response, its body read to the end (at most `cap` bytes, headers and trailers
/// included). Counts every frame read, and the end, in `progress` (see `answer_while_running`).
///
/// With `stream`, an answer that is still unfinished [`STREAM_AFTER`] after its head, or whose
/// body grows past [`STREAM_AFTER_BYTES`], goes there from then on, part by part (what was read
/// so far first; a status under 200 is refused before anything is sent), and the answer
/// returned has no body or trailers. One that ends sooner is returned whole, as without
/// `stream`, so a small, quick answer keeps its length and any error stays an error response.
/// A caller that stopped reading is sent nothing more; the guest runs on within its limits.
pub(crate) async fn collect_answer(
    progress: &std::sync::atomic::AtomicU64,
    response: tokio::sync::oneshot::Receiver<
        Result<
            hyper::Response<HyperOutgoingBody>,
            wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
        >,
    >,
    cap: usize,
    stream: Option<AnswerSender>,
    cold_start: bool,
) -> Result<HttpAnswer, Error> {
    let response = match response.await {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => {
            return Err(Error::NoAnswer(format!(
                "the component answered with an error: {code:?}"
            )));
        }
        Err(_) => {
            return Err(Error::NoAnswer(
                "the component ended without setting its response".into(),
            ));
        }
    };
    use std::sync::atomic::Ordering::Relaxed;
    progress.fetch_add(1, Relaxed);
    let (parts, mut body) = response.into_parts();
    let headers: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let header_bytes = fields_size(&headers);
    if header_bytes > cap {
        return Err(Error::OutputTooLarge { limit: cap });
    }
    let room = cap - header_bytes;
    let status = parts.status.as_u16();
    // Sized from the declared length when it fits (one allocation), grown otherwise.
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n <= room)
        .unwrap_or(0);
    let mut out = Answer {
        stream,
        streaming: false,
        status,
        headers,
        cold_start,
        collected: Vec::with_capacity(declared.min(STREAM_AFTER_BYTES)),
        trailers: Vec::new(),
        sent: header_bytes,
        cap,
    };
    // Bytes of body and trailers so far: they share the room.
    let (mut body_bytes, mut trailer_bytes) = (0usize, 0usize);
    // Only an answer that may stream waits on the clock.
    let mut timer = out
        .stream
        .is_some()
        .then(|| Box::pin(tokio::time::sleep(STREAM_AFTER)));
    loop {
        let frame = match &mut timer {
            Some(t) if out.stream.is_some() && !out.streaming => tokio::select! {
                biased;
                frame = body.frame() => frame,
                () = t => {
                    out.start_streaming()?;
                    continue;
                }
            },
            _ => body.frame().await,
        };
        let Some(frame) = frame else { break };
        progress.fetch_add(1, Relaxed);
        let frame = frame
            .map_err(|e| Error::NoAnswer(format!("the component's response body failed: {e:?}")))?;
        match frame.into_data() {
            Ok(data) => {
                body_bytes += data.len();
                if body_bytes + trailer_bytes > room {
                    return Err(Error::OutputTooLarge { limit: cap });
                }
                if data.is_empty() {
                    continue;
                }
                if out.streaming {
                    out.send(AnswerPart::Data(data.to_vec()))?;
                } else {
                    out.collected.extend_from_slice(&data);
                    if out.stream.is_some() && out.collected.len() > STREAM_AFTER_BYTES {
                        out.start_streaming()?;
                    }
                }
            }
            Err(frame) => {
                if let Some(fields) = frame.trailers_ref() {
                    for (name, value) in fields {
                        trailer_bytes += name.as_str().len() + value.len();
                        if body_bytes + trailer_bytes > room {
                            return Err(Error::OutputTooLarge { limit: cap });
                        }
                        out.trailers
                            .push((name.as_str().to_owned(), value.as_bytes().to_vec()));
                    }
                    if out.streaming {
                        let trailers = std::mem::take(&mut out.trailers);
                        out.send(AnswerPart::Trailers(trailers))?;
                    }
                }
            }
        }
    }
    progress.fetch_add(1, Relaxed);
    if out.streaming {
        out.send(AnswerPart::End)?;
    }
    Ok(HttpAnswer {
        status,
        headers: out.headers,
        body: out.collected,
        trailers: out.trailers,
    })
}

/// An answer being read: collected, or sent on as it comes once it streams.
struct Answer {
    stream: Option<AnswerSender>,
    /// The head has gone out: every part goes on from here.
    streaming: bool,
    status: u16,
    headers: tern_wire::HttpFields,
    cold_start: bool,
    collected: Vec<u8>,
    trailers: tern_wire::HttpFields,
    /// What the parts sent so far count against `cap` ([`part_size`]), and the headers from
    /// the start (the head will carry them).
    sent: usize,
    cap: usize,
}

/// Where a streamed answer made elsewhere (in a cell, on a peer) goes, and how much of it is
/// still taken: its parts count against a budget by [`part_size`], and a sender that sends
/// more, or parts out of order (anything before the head, a second head, anything after the
/// end), has broken the protocol.
pub struct StreamTo {
    parts: AnswerSender,
    budget: usize,
    head_seen: bool,
    end_seen: bool,
}

impl StreamTo {
    /// Parts go to `parts`, at most `budget` of them by [`part_size`].
    pub fn new(parts: AnswerSender, budget: usize) -> Self {
        Self {
            parts,
            budget,
            head_seen: false,
            end_seen: false,
        }
    }

    /// The caller's end, for a later run when nothing has been taken.
    pub fn into_sender(self) -> AnswerSender {
        self.parts
    }

    /// Takes `part` for the caller, or says how it breaks the protocol.
    pub fn take(&mut self, part: tern_wire::AnswerPart) -> Result<(), &'static str> {
        let is_head = matches!(part, tern_wire::AnswerPart::Head { .. });
        if self.end_seen || is_head == self.head_seen {
            return Err("out of order");
        }
        let size = part_size(&part);
        if size > self.budget {
            return Err("more than its output cap");
        }
        self.budget -= size;
        self.head_seen = true;
        self.end_seen = matches!(part, tern_wire::AnswerPart::End);
        // A caller that stopped reading: the rest is dropped, the run goes on.
        let _ = self.parts.send(part);
        Ok(())
    }
}

/// What `part` counts against the output cap when it is streamed: what it carries and
/// [`PART_OVERHEAD`]. The node checks a cell's parts by the same measure.
pub fn part_size(part: &AnswerPart) -> usize {
    PART_OVERHEAD
        + match part {
            AnswerPart::Head { headers, .. } => fields_size(headers),
            AnswerPart::Data(data) => data.len(),
            AnswerPart::Trailers(trailers) => fields_size(trailers),
            AnswerPart::End => 0,
        }
}

/// What header or trailer fields count against the output cap: their names and values.
fn fields_size(fields: &tern_wire::HttpFields) -> usize {
    fields.iter().map(|(n, v)| n.len() + v.len()).sum()
}

impl Answer {
    /// Sends the head and what was read so far, and streams from then on.
    fn start_streaming(&mut self) -> Result<(), Error> {
        if self.status < 200 {
            return Err(status_cannot_end(self.status));
        }
        self.streaming = true;
        // The head's headers are in `sent` already: it adds its overhead.
        self.sent += PART_OVERHEAD;
        let head = AnswerPart::Head {
            status: self.status,
            headers: self.headers.clone(),
            cold_start: self.cold_start,
            node: None,
        };
        self.deliver(head);
        if !self.collected.is_empty() {
            let so_far = std::mem::take(&mut self.collected);
            self.send(AnswerPart::Data(so_far))?;
        }
        Ok(())
    }

    /// Sends `part` on, unless that takes the parts past the cap.
    fn send(&mut self, part: AnswerPart) -> Result<(), Error> {
        self.sent += part_size(&part);
        if self.sent > self.cap {
            return Err(Error::OutputTooLarge { limit: self.cap });
        }
        self.deliver(part);
        Ok(())
    }

    fn deliver(&mut self, part: AnswerPart) {
        if let Some(tx) = &self.stream
            && tx.send(part).is_err()
        {
            // The caller stopped reading.
            self.stream = None;
        }
    }
}

fn status_cannot_end(status: u16) -> Error {
    Error::NoAnswer(format!(
        "the component answered with status {status}, which cannot end a request"
    ))
}

/// What the invocation returns for `answer`: the encoded answer for an [`HttpCall`]; for plain
/// input the body, unless the status says the guest refused or failed.
pub(crate) fn output(answer: HttpAnswer, plain: bool) -> Result<Bytes, Error> {
    if answer.status < 200 {
        return Err(status_cannot_end(answer.status));
    }
    if !plain {
        return answer
            .encode()
            .map(Bytes::from)
            .map_err(|e| Error::TaskFailed {
                task: "guest",
                detail: format!("cannot encode the component's answer: {e}"),
            });
    }
    if answer.status >= 400 {
        let shown = &answer.body[..answer.body.len().min(200)];
        return Err(Error::GuestStatus {
            status: answer.status,
            body: String::from_utf8_lossy(shown).into_owned(),
        });
    }
    Ok(Bytes::from(answer.body))
}
