//! `echo` as a `wasi:http/proxy` component: whatever the method, it answers 200 with the
//! request's body and its `content-length`. A body over [`MAX_BODY`] bytes is answered with 413
//! and no body; a body the host cannot deliver with 400.
//!
//! It is the component twin of the preview-1 `echo` command one level up, so that Tern and
//! `wasmtime serve` can be measured doing the same work (`scripts/bench-vs-wasmtime-serve.sh`).

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

wasip2::http::proxy::export!(Echo);

/// The largest body echoed back, in bytes.
const MAX_BODY: usize = 1 << 20;

/// `blocking-write-and-flush` takes at most this many bytes per call (the WASI contract).
const WRITE_CHUNK: usize = 4096;

struct Echo;

impl Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        match read_body(&request) {
            Ok(body) => respond(response_out, 200, &body),
            Err(status) => respond(response_out, status, b""),
        }
    }
}

/// The whole request body, or the status to answer with instead.
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, u16> {
    let incoming = request.consume().map_err(|()| 500u16)?;
    let stream = incoming.stream().map_err(|()| 500u16)?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) if body.len() + chunk.len() > MAX_BODY => return Err(413),
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(body),
            Err(StreamError::LastOperationFailed(_)) => return Err(400),
        }
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let length = body.len().to_string().into_bytes();
    let headers = Fields::from_list(&[("content-length".to_string(), length)])
        .unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    // 200, 400, 413 and 500 are all valid status codes: this cannot fail.
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        // A fresh response's body is always available; if not, the host answers 500.
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        for chunk in body.chunks(WRITE_CHUNK) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                // The caller went away: nothing more to send.
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}
