//! `drip` as a `wasi:http/proxy` component: an answer written over time, for a host's tests of
//! answers sent as they are written.
//!
//! It answers 200 `text/plain` (no `content-length`) and writes `drip 0\n`, `drip 1\n`, … one
//! chunk per write, pausing before each chunk after the first. The request's headers set:
//!
//! * `x-drip-chunks`: how many chunks (default 3, at most 1,000);
//! * `x-drip-ms`: the pause before each chunk after the first, in milliseconds (default 100, at
//!   most 60,000);
//! * `x-drip-trailer: NAME=VALUE`: a trailer sent after the last chunk, announced in the
//!   answer's `trailer` header.
//!
//! A value that is not a number in range is the default.

use wasip2::clocks::monotonic_clock;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Drip);

struct Drip;

impl Guest for Drip {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = {
            let fields = request.headers();
            fields.entries()
        };
        let chunks = number(&headers, "x-drip-chunks", 1_000).unwrap_or(3);
        let pause_ms = number(&headers, "x-drip-ms", 60_000).unwrap_or(100);
        let trailer = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("x-drip-trailer"))
            .and_then(|(_, value)| {
                let eq = value.iter().position(|&b| b == b'=')?;
                let name = std::str::from_utf8(&value[..eq])
                    .ok()?
                    .trim()
                    .to_ascii_lowercase();
                Some((name, value[eq + 1..].to_vec()))
            });
        let mut head = vec![("content-type".to_string(), b"text/plain".to_vec())];
        if let Some((name, _)) = &trailer {
            head.push(("trailer".to_string(), name.clone().into_bytes()));
        }
        let fields = Fields::from_list(&head).unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(fields);
        let Ok(outgoing) = response.body() else {
            // A fresh response's body is always available; if not, the host answers 500.
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = outgoing.write() {
            for i in 0..chunks {
                if i > 0 {
                    monotonic_clock::subscribe_duration(pause_ms * 1_000_000).block();
                }
                let chunk = format!("drip {i}\n");
                if stream.blocking_write_and_flush(chunk.as_bytes()).is_err() {
                    // The caller went away: nothing more to send.
                    return;
                }
            }
        }
        let trailers = trailer.and_then(|t| Fields::from_list(&[t]).ok());
        let _ = OutgoingBody::finish(outgoing, trailers);
    }
}

/// The decimal number in the first header called `name`, if it is at most `max`.
fn number(headers: &[(String, Vec<u8>)], name: &str, max: u64) -> Option<u64> {
    let (_, value) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
    let n: u64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    (n <= max).then_some(n)
}
