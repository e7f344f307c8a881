//! An HTTP request for a `wasi:http/proxy` component and the component's answer, as they travel
//! inside an invocation's input and output bytes.
//!
//! A component is invoked like any function (placed, forwarded over the mesh, journaled when
//! asynchronous, replayed after a restart) with opaque input bytes. When the caller came in
//! through the HTTP route for components, the input is an [`HttpCall`]: [`HTTP_CALL_MAGIC`]
//! and then the encoded request, so the node that runs the guest can tell it from a plain
//! input (which a component receives as the body of a `POST /`). The guest's answer then goes
//! back as an encoded [`HttpAnswer`] (led by [`HTTP_ANSWER_MAGIC`]) for the entry node to turn
//! into the HTTP response, or to keep as an asynchronous call's result.
//!
//! Trailers came after the first nodes and journals: both records are encoded as they were
//! (the magic, then the method, path, headers and body, or the status, headers and body) and,
//! only when there are trailers, the trailers after them. So a call or answer without
//! trailers is byte for byte what it always was (stored journals and results read back, and
//! nodes of the previous version read it), and a node of the previous version refuses one with
//! trailers as damaged (its decoder finds bytes after the record) instead of losing them.

use serde::{Deserialize, Serialize};

use crate::{WireError, codec};

/// The first bytes of an encoded [`HttpCall`]: a NUL (no text input starts with one) and a
/// versioned tag.
pub const HTTP_CALL_MAGIC: &[u8] = b"\0tern-http-call/1\0";

/// The first bytes of an encoded [`HttpAnswer`], so a stored result says what it is.
pub const HTTP_ANSWER_MAGIC: &[u8] = b"\0tern-http-answer/1\0";

/// Header fields: names and values in the order received; values are bytes (HTTP allows
/// non-UTF-8 values).
pub type HttpFields = Vec<(String, Vec<u8>)>;

/// One HTTP request for a component.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpCall {
    pub method: String,
    /// The path the component sees (always starting with `/`) and the query, if any.
    pub path_and_query: String,
    pub headers: HttpFields,
    pub body: Vec<u8>,
    /// The fields the caller sent after the body (chunked transfer), if any.
    pub trailers: HttpFields,
}

/// A component's answer to an [`HttpCall`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: HttpFields,
    pub body: Vec<u8>,
    /// The fields the component set after its body, if any.
    pub trailers: HttpFields,
}

/// One piece of a component's answer, in the order the component writes it, for a caller
/// that takes the answer as it comes (the `/fn/` route): the head, the body's bytes as the
/// guest hands them over, the trailers, then [`AnswerPart::End`] once the body is complete.
/// A stream that closes without `End` was cut short (the guest failed, or went past a limit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnswerPart {
    Head {
        status: u16,
        headers: HttpFields,
        /// Whether the call had to load the function first.
        cold_start: bool,
        /// The node that ran the call, when it is not the one answering the caller (set by
        /// the node that forwarded the call, as the parts pass through it).
        node: Option<String>,
    },
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Trailers(HttpFields),
    End,
}

/// How an [`HttpCall`] is encoded before its trailers (see the module comment).
#[derive(Serialize)]
struct CallHead<'a> {
    method: &'a str,
    path_and_query: &'a str,
    headers: &'a HttpFields,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
}

#[derive(Deserialize)]
struct OwnedCallHead {
    method: String,
    path_and_query: String,
    headers: HttpFields,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

/// How an [`HttpAnswer`] is encoded before its trailers.
#[derive(Serialize)]
struct AnswerHead<'a> {
    status: u16,
    headers: &'a HttpFields,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
}

#[derive(Deserialize)]
struct OwnedAnswerHead {
    status: u16,
    headers: HttpFields,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

/// `magic`, `head`, and the trailers if there are any.
fn encode_with_trailers<H: Serialize>(
    magic: &[u8],
    head: &H,
    trailers: &HttpFields,
) -> Result<Vec<u8>, WireError> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&codec::encode(head, codec::MAX_MESSAGE)?);
    if !trailers.is_empty() {
        out.extend_from_slice(&codec::encode(trailers, codec::MAX_MESSAGE)?);
    }
    if out.len() > codec::MAX_MESSAGE {
        return Err(WireError::TooLarge {
            size: out.len(),
            limit: codec::MAX_MESSAGE,
        });
    }
    Ok(out)
}

/// The head `bytes` start with, and the trailers after it (none if nothing follows; what
/// follows must be exactly one non-empty list of fields).
fn decode_with_trailers<H: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(H, HttpFields), WireError> {
    let (head, used) = codec::decode_leading::<H>(bytes, codec::MAX_MESSAGE)?;
    let rest = &bytes[used..];
    if rest.is_empty() {
        return Ok((head, HttpFields::new()));
    }
    let trailers: HttpFields = codec::decode(rest, codec::MAX_MESSAGE)?;
    if trailers.is_empty() {
        // An empty list is never written: these bytes were not made by `encode`.
        return Err(WireError::TrailingBytes { len: rest.len() });
    }
    Ok((head, trailers))
}

impl HttpCall {
    /// The input bytes of an invocation carrying this call.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let head = CallHead {
            method: &self.method,
            path_and_query: &self.path_and_query,
            headers: &self.headers,
            body: &self.body,
        };
        encode_with_trailers(HTTP_CALL_MAGIC, &head, &self.trailers)
    }

    /// Whether `input` carries an HTTP call (rather than plain input).
    pub fn is_call(input: &[u8]) -> bool {
        input.starts_with(HTTP_CALL_MAGIC)
    }

    /// The call `input` carries: `None` for plain input, an error for a damaged call.
    pub fn decode(input: &[u8]) -> Option<Result<Self, WireError>> {
        let rest = input.strip_prefix(HTTP_CALL_MAGIC)?;
        Some(
            decode_with_trailers::<OwnedCallHead>(rest).map(|(head, trailers)| Self {
                method: head.method,
                path_and_query: head.path_and_query,
                headers: head.headers,
                body: head.body,
                trailers,
            }),
        )
    }
}

impl HttpAnswer {
    /// The output bytes of an invocation answered with this.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let head = AnswerHead {
            status: self.status,
            headers: &self.headers,
            body: &self.body,
        };
        encode_with_trailers(HTTP_ANSWER_MAGIC, &head, &self.trailers)
    }

    /// The answer `output` carries: `None` when it is not a component's answer (a command's
    /// stdout, a plain invocation's body), an error for a damaged one.
    pub fn decode(output: &[u8]) -> Option<Result<Self, WireError>> {
        let rest = output.strip_prefix(HTTP_ANSWER_MAGIC)?;
        Some(
            decode_with_trailers::<OwnedAnswerHead>(rest).map(|(head, trailers)| Self {
                status: head.status,
                headers: head.headers,
                body: head.body,
                trailers,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn call() -> HttpCall {
        HttpCall {
            method: "PATCH".into(),
            path_and_query: "/a/b?x=1".into(),
            headers: vec![
                ("x-one".into(), b"1".to_vec()),
                ("x-bin".into(), vec![0xff]),
            ],
            body: b"{\"n\": 4}".to_vec(),
            trailers: Vec::new(),
        }
    }

    /// The records as they were encoded before trailers existed.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct CallBeforeTrailers {
        method: String,
        path_and_query: String,
        headers: Vec<(String, Vec<u8>)>,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct AnswerBeforeTrailers {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    }

    fn before(call: &HttpCall) -> CallBeforeTrailers {
        CallBeforeTrailers {
            method: call.method.clone(),
            path_and_query: call.path_and_query.clone(),
            headers: call.headers.clone(),
            body: call.body.clone(),
        }
    }

    #[test]
    fn without_trailers_a_call_and_an_answer_are_the_bytes_they_were_before_trailers() {
        let old_call = [
            HTTP_CALL_MAGIC,
            &codec::encode(&before(&call()), codec::MAX_MESSAGE).unwrap(),
        ]
        .concat();
        assert_eq!(call().encode().unwrap(), old_call);
        assert_eq!(HttpCall::decode(&old_call).unwrap().unwrap(), call());
        let answer = HttpAnswer {
            status: 201,
            headers: vec![("x-a".into(), b"1".to_vec())],
            body: b"made".to_vec(),
            trailers: Vec::new(),
        };
        let old_answer = AnswerBeforeTrailers {
            status: 201,
            headers: answer.headers.clone(),
            body: answer.body.clone(),
        };
        let old_bytes = [
            HTTP_ANSWER_MAGIC,
            &codec::encode(&old_answer, codec::MAX_MESSAGE).unwrap(),
        ]
        .concat();
        assert_eq!(answer.encode().unwrap(), old_bytes);
        assert_eq!(HttpAnswer::decode(&old_bytes).unwrap().unwrap(), answer);
    }

    #[test]
    fn trailers_round_trip_and_a_decoder_from_before_them_refuses_the_record() {
        let mut with = call();
        with.trailers = vec![
            ("x-checksum".into(), b"abc".to_vec()),
            ("x-bin".into(), vec![0xfe]),
        ];
        let bytes = with.encode().unwrap();
        assert_eq!(HttpCall::decode(&bytes).unwrap().unwrap(), with);
        // A node of the previous version finds bytes after the record: a typed error, not a
        // call whose trailers it silently lost.
        let rest = bytes.strip_prefix(HTTP_CALL_MAGIC).unwrap();
        assert!(matches!(
            codec::decode::<CallBeforeTrailers>(rest, codec::MAX_MESSAGE),
            Err(WireError::TrailingBytes { .. })
        ));
        // Anything after the trailers, or trailers cut short, is damage.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(HttpCall::decode(&longer).unwrap().is_err());
        assert!(
            HttpCall::decode(&bytes[..bytes.len() - 1])
                .unwrap()
                .is_err()
        );

        let answer = HttpAnswer {
            status: 200,
            headers: Vec::new(),
            body: b"streamed".to_vec(),
            trailers: vec![("grpc-status".into(), b"0".to_vec())],
        };
        let bytes = answer.encode().unwrap();
        assert_eq!(HttpAnswer::decode(&bytes).unwrap().unwrap(), answer);
        let rest = bytes.strip_prefix(HTTP_ANSWER_MAGIC).unwrap();
        assert!(codec::decode::<AnswerBeforeTrailers>(rest, codec::MAX_MESSAGE).is_err());
    }

    #[test]
    fn a_call_round_trips_and_is_told_apart_from_plain_input() {
        let bytes = call().encode().unwrap();
        assert!(HttpCall::is_call(&bytes));
        assert_eq!(HttpCall::decode(&bytes).unwrap().unwrap(), call());
        assert!(!HttpCall::is_call(b"{\"n\": 4}"));
        assert!(HttpCall::decode(b"{\"n\": 4}").is_none());
        assert!(HttpCall::decode(b"").is_none());
    }

    #[test]
    fn a_damaged_call_is_a_typed_error() {
        let mut bytes = call().encode().unwrap();
        bytes.truncate(HTTP_CALL_MAGIC.len() + 3);
        assert!(HttpCall::decode(&bytes).unwrap().is_err());
        let mut trailing = call().encode().unwrap();
        trailing.push(0);
        assert!(HttpCall::decode(&trailing).unwrap().is_err());
    }

    #[test]
    fn byte_payloads_encode_exactly_as_a_sequence_of_bytes_did() {
        // Stored journals and peers of the same protocol version read these bytes: the
        // slice encoding must equal the old element-by-element one.
        #[derive(serde::Serialize)]
        struct Before {
            body: Vec<u8>,
        }
        #[derive(serde::Serialize)]
        struct Now {
            #[serde(with = "serde_bytes")]
            body: Vec<u8>,
        }
        let body: Vec<u8> = (0..=255).chain(0..40).collect();
        assert_eq!(
            codec::encode(&Before { body: body.clone() }, 1 << 20).unwrap(),
            codec::encode(&Now { body }, 1 << 20).unwrap()
        );
    }

    #[test]
    fn an_answer_round_trips() {
        let answer = HttpAnswer {
            status: 418,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: b"short and stout".to_vec(),
            trailers: Vec::new(),
        };
        let bytes = answer.encode().unwrap();
        assert_eq!(HttpAnswer::decode(&bytes).unwrap().unwrap(), answer);
        assert!(
            HttpAnswer::decode(&bytes[..bytes.len() - 2])
                .unwrap()
                .is_err()
        );
        assert!(HttpAnswer::decode(b"short and stout").is_none());
    }
}
