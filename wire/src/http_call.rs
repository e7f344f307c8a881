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

use serde::{Deserialize, Serialize};

use crate::{WireError, codec};

/// The first bytes of an encoded [`HttpCall`]: a NUL (no text input starts with one) and a
/// versioned tag.
pub const HTTP_CALL_MAGIC: &[u8] = b"\0tern-http-call/1\0";

/// The first bytes of an encoded [`HttpAnswer`], so a stored result says what it is.
pub const HTTP_ANSWER_MAGIC: &[u8] = b"\0tern-http-answer/1\0";

/// One HTTP request for a component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCall {
    pub method: String,
    /// The path the component sees (always starting with `/`) and the query, if any.
    pub path_and_query: String,
    /// In the order received; values are bytes (HTTP allows non-UTF-8 values).
    pub headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// A component's answer to an [`HttpCall`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl HttpCall {
    /// The input bytes of an invocation carrying this call.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let encoded = codec::encode(self, codec::MAX_MESSAGE)?;
        let mut out = Vec::with_capacity(HTTP_CALL_MAGIC.len() + encoded.len());
        out.extend_from_slice(HTTP_CALL_MAGIC);
        out.extend_from_slice(&encoded);
        Ok(out)
    }

    /// Whether `input` carries an HTTP call (rather than plain input).
    pub fn is_call(input: &[u8]) -> bool {
        input.starts_with(HTTP_CALL_MAGIC)
    }

    /// The call `input` carries: `None` for plain input, an error for a damaged call.
    pub fn decode(input: &[u8]) -> Option<Result<Self, WireError>> {
        let rest = input.strip_prefix(HTTP_CALL_MAGIC)?;
        Some(codec::decode(rest, codec::MAX_MESSAGE))
    }
}

impl HttpAnswer {
    /// The output bytes of an invocation answered with this.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let encoded = codec::encode(self, codec::MAX_MESSAGE)?;
        let mut out = Vec::with_capacity(HTTP_ANSWER_MAGIC.len() + encoded.len());
        out.extend_from_slice(HTTP_ANSWER_MAGIC);
        out.extend_from_slice(&encoded);
        Ok(out)
    }

    /// The answer `output` carries: `None` when it is not a component's answer (a command's
    /// stdout, a plain invocation's body), an error for a damaged one.
    pub fn decode(output: &[u8]) -> Option<Result<Self, WireError>> {
        let rest = output.strip_prefix(HTTP_ANSWER_MAGIC)?;
        Some(codec::decode(rest, codec::MAX_MESSAGE))
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
        }
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
