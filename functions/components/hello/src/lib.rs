//! `hello` as a `wasi:http/proxy` component: whatever the method, path or body, it answers 200
//! with `content-type: text/plain` and the body [`GREETING`]. It never reads the request body.
//!
//! The smallest useful component: a smoke test that a host can instantiate a component and
//! carry its answer back.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

/// The body of every answer.
const GREETING: &[u8] = b"hello from a component\n";

struct Hello;

impl Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let length = GREETING.len().to_string().into_bytes();
        let headers = Fields::from_list(&[
            ("content-type".to_string(), b"text/plain".to_vec()),
            ("content-length".to_string(), length),
        ])
        .unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(headers);
        // 200 is a valid status code: this cannot fail.
        let _ = response.set_status_code(200);
        let Ok(outgoing) = response.body() else {
            // A fresh response's body is always available; if not, the host answers 500.
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = outgoing.write() {
            // Under the 4096 bytes `blocking-write-and-flush` takes per call.
            if stream.blocking_write_and_flush(GREETING).is_err() {
                // The caller went away: nothing more to send.
                return;
            }
        }
        let _ = OutgoingBody::finish(outgoing, None);
    }
}
