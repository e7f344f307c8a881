//! `matmul-json` as a `wasi:http/proxy` component: the paper's workload, answering over HTTP
//! what the preview-1 command (`functions/src/bin/matmul-json.rs`) answers on stdout.
//!
//! The request body (whatever the method) is the command's stdin: a JSON task object such as
//! `{"task_id":"t1","n":64,"seed":7,"op":"matmul","scale":1.0}` or an array of them (map mode);
//! see the command for the fields. The answer is `content-type: application/json` and:
//!
//! * 200 with exactly the bytes the command writes to stdout for the same input and the same
//!   `TERN_NODE` / `TERN_REQUEST_ID` environment (empty strings if unset) — but for
//!   `timestamp_ms`, the time of the call;
//! * 400 with `{"error":"..."}` (one line, as the command writes it before exiting 2) for a bad
//!   input: malformed JSON, a bad field, `n` out of range, an unknown `op`;
//! * 413 with `{"error":"..."}` for a body over [`MAX_BODY`] bytes (the node's default request
//!   limit), 400 with `{"error":"..."}` for a body the host cannot deliver.
//!
//! The workload is the command's own code (`functions/matmul-core`).

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

wasip2::http::proxy::export!(MatmulJson);

/// The largest body accepted, in bytes: the node's default `max_body_bytes`, so that what the
/// node lets through for the command is accepted here too.
const MAX_BODY: usize = 6 << 20;

/// `blocking-write-and-flush` takes at most this many bytes per call (the WASI contract).
const WRITE_CHUNK: usize = 4096;

struct MatmulJson;

impl Guest for MatmulJson {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let (status, body) = match read_body(&request) {
            Ok(input) => {
                let meta = matmul_core::Meta {
                    node: std::env::var("TERN_NODE").unwrap_or_default(),
                    request_id: std::env::var("TERN_REQUEST_ID").unwrap_or_default(),
                };
                match matmul_core::process(&input, &meta) {
                    Ok(body) => (200, body),
                    Err(message) => (400, matmul_core::error_body(&message)),
                }
            }
            Err((status, message)) => (status, matmul_core::error_body(&message)),
        };
        respond(response_out, status, body.as_bytes());
    }
}

/// The whole request body, or the status and message to answer with instead.
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, (u16, String)> {
    let unavailable = || (500, "the request body is unavailable".to_string());
    let incoming = request.consume().map_err(|()| unavailable())?;
    let stream = incoming.stream().map_err(|()| unavailable())?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) if body.len() + chunk.len() > MAX_BODY => {
                return Err((413, format!("request body over {MAX_BODY} bytes")));
            }
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(body),
            Err(StreamError::LastOperationFailed(e)) => {
                return Err((
                    400,
                    format!("reading the request body: {}", e.to_debug_string()),
                ));
            }
        }
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"application/json".to_vec()),
        (
            "content-length".to_string(),
            body.len().to_string().into_bytes(),
        ),
    ])
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
