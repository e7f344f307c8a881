//! `inspect` as a `wasi:http/proxy` component: it answers with a JSON description of the
//! request it received, so a host's tests can see exactly what reached the guest.
//!
//! The answer is `content-type: application/json` with one object, keys in this order:
//!
//! ```json
//! {"method":"POST","path":"/a/b","query":"x=1&y=2","headers":[["x-one","1"],["x-two","2"]],"body_bytes":5,"trailers":[["x-sum","9"]]}
//! ```
//!
//! * `method`: as the host gave it (`GET`, `POST`, … or the extension method's own spelling).
//! * `path`: the path without the query (`""` if the request has no path); `query`: what follows
//!   the first `?` (`""` if there is none).
//! * `headers`: every `[name, value]` pair in the order the host lists them, values decoded as
//!   UTF-8 lossily (an invalid sequence becomes U+FFFD).
//! * `body_bytes`: the length of the request body, read in full.
//! * `trailers`: the fields sent after the body, as `headers` (`[]` if none).
//!
//! Strings are escaped by hand: `"` and `\` with a backslash, control characters (U+0000 to
//! U+001F and U+007F) as `\u00xx` (lowercase hex); everything else is written as is.
//!
//! The status is 200, or the value of the first `x-status` request header when that is a
//! decimal number in 100..=599. A body over [`MAX_BODY`] bytes is answered with 413 and a body
//! the host cannot deliver with 400, both without a body. Every answer carries `x-inspected: yes`,
//! and every request writes one line to stderr: `inspect: METHOD PATH`. Each `x-trailer: NAME=VALUE`
//! request header becomes a trailer of the answer (`NAME: VALUE`, after the body, announced in a
//! `trailer` header); if one of them is not a valid field, the answer has no trailers.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

wasip2::http::proxy::export!(Inspect);

/// The largest body read, in bytes.
const MAX_BODY: usize = 1 << 20;

/// `blocking-write-and-flush` takes at most this many bytes per call (the WASI contract).
const WRITE_CHUNK: usize = 4096;

struct Inspect;

impl Guest for Inspect {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = method_name(&request.method());
        let path_and_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query.as_str(), ""));
        eprintln!("inspect: {method} {path}");
        // The headers are a child of the request: drop them before the request goes.
        let headers = {
            let fields = request.headers();
            fields.entries()
        };
        let status = requested_status(&headers).unwrap_or(200);
        let trailers = requested_trailers(&headers);
        match read_body(&request) {
            Ok((body_bytes, received)) => {
                let json = describe(&method, path, query, &headers, body_bytes, &received);
                respond(
                    response_out,
                    status,
                    &[("content-type", b"application/json")],
                    json.as_bytes(),
                    &trailers,
                );
            }
            Err(status) => respond(response_out, status, &[], b"", &[]),
        }
    }
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
    .to_string()
}

/// The status asked for by the first `x-status` header, if it is a decimal number in
/// 100..=599.
fn requested_status(headers: &[(String, Vec<u8>)]) -> Option<u16> {
    let (_, value) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("x-status"))?;
    if value.is_empty() || value.len() > 3 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = value
        .iter()
        .fold(0u16, |n, digit| n * 10 + u16::from(digit - b'0'));
    (100..=599).contains(&status).then_some(status)
}

/// Header or trailer fields: names and their values' bytes.
type FieldList = Vec<(String, Vec<u8>)>;

/// The trailers asked for by `x-trailer: NAME=VALUE` headers.
fn requested_trailers(headers: &[(String, Vec<u8>)]) -> FieldList {
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("x-trailer"))
        .filter_map(|(_, value)| {
            let eq = value.iter().position(|&b| b == b'=')?;
            let name = std::str::from_utf8(&value[..eq])
                .ok()?
                .trim()
                .to_ascii_lowercase();
            Some((name, value[eq + 1..].to_vec()))
        })
        .collect()
}

/// The length of the whole request body and the trailers after it, or the status to answer
/// with instead.
fn read_body(request: &IncomingRequest) -> Result<(usize, FieldList), u16> {
    let incoming = request.consume().map_err(|()| 500u16)?;
    let length = {
        // The stream is a child of the body: it goes before the body is finished.
        let stream = incoming.stream().map_err(|()| 500u16)?;
        let mut length = 0usize;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) if length + chunk.len() > MAX_BODY => return Err(413),
                Ok(chunk) => length += chunk.len(),
                Err(StreamError::Closed) => break length,
                Err(StreamError::LastOperationFailed(_)) => return Err(400),
            }
        }
    };
    let future = IncomingBody::finish(incoming);
    future.subscribe().block();
    let trailers = match future.get() {
        Some(Ok(Ok(Some(fields)))) => fields.entries(),
        Some(Ok(Ok(None))) => Vec::new(),
        _ => return Err(400),
    };
    Ok((length, trailers))
}

/// The JSON object described in the crate documentation.
fn describe(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, Vec<u8>)],
    body_bytes: usize,
    trailers: &[(String, Vec<u8>)],
) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"method\":");
    push_json_str(&mut out, method);
    out.push_str(",\"path\":");
    push_json_str(&mut out, path);
    out.push_str(",\"query\":");
    push_json_str(&mut out, query);
    out.push_str(",\"headers\":");
    push_fields(&mut out, headers);
    out.push_str(",\"body_bytes\":");
    out.push_str(&body_bytes.to_string());
    out.push_str(",\"trailers\":");
    push_fields(&mut out, trailers);
    out.push('}');
    out
}

/// `fields` as a JSON array of `[name, value]` pairs, values decoded as UTF-8 lossily.
fn push_fields(out: &mut String, fields: &[(String, Vec<u8>)]) {
    out.push('[');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        push_json_str(out, name);
        out.push(',');
        push_json_str(out, &String::from_utf8_lossy(value));
        out.push(']');
    }
    out.push(']');
}

/// `s` as a JSON string literal: `"` and `\` escaped with a backslash, control characters as
/// `\u00xx`.
fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{0}'..='\u{1f}' | '\u{7f}' => {
                let byte = c as u8;
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn respond(
    out: ResponseOutparam,
    status: u16,
    extra: &[(&str, &[u8])],
    body: &[u8],
    trailers: &[(String, Vec<u8>)],
) {
    let mut headers = vec![
        ("x-inspected".to_string(), b"yes".to_vec()),
        (
            "content-length".to_string(),
            body.len().to_string().into_bytes(),
        ),
    ];
    headers.extend(
        extra
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_vec())),
    );
    if !trailers.is_empty() {
        // Announced, as HTTP asks of a sender of trailers.
        let names: Vec<&str> = trailers.iter().map(|(name, _)| name.as_str()).collect();
        headers.push(("trailer".to_string(), names.join(", ").into_bytes()));
    }
    let headers = Fields::from_list(&headers).unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    // Only 100..=599 reaches here, all valid status codes: this cannot fail.
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
    let trailers = (!trailers.is_empty())
        .then(|| Fields::from_list(trailers).ok())
        .flatten();
    let _ = OutgoingBody::finish(outgoing, trailers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c\n\u{1}\u{7f}é");
        assert_eq!(out, r#""a\"b\\c\u000a\u0001\u007fé""#);
    }
}
