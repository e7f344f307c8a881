//! Shared by `tests/fuzz_decoders.rs`: which decoders there are, the invariants every decode
//! must keep, the documented rules of the text parsers (as independent oracles), and the seed
//! corpus on disk.

pub mod seeds;
pub mod strategies;

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_wire::codec::MAX_MESSAGE;
use tern_wire::peer::{PeerRequest, PeerResponse, RegistryEntry};
use tern_wire::{
    ClientRequest, ClientResponse, FrameDecoder, InvocationRecord, WireError, decode, encode,
    encode_frame,
};

/// The limit the fuzzers decode with unless a property picks its own.
pub const LIMIT: usize = 1 << 20;

/// Every message type that `tern_wire::decode` reads from the network or from disk, one
/// corpus directory each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Node to node, `tern-cluster` data-plane streams.
    PeerRequest,
    PeerResponse,
    /// Client API (QUIC) between `tern-client` and a node.
    ClientRequest,
    ClientResponse,
    /// The node's journal of async invocations (sled).
    InvocationRecord,
    /// The node's persisted function registry (sled).
    RegistryEntry,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::PeerRequest,
        Kind::PeerResponse,
        Kind::ClientRequest,
        Kind::ClientResponse,
        Kind::InvocationRecord,
        Kind::RegistryEntry,
    ];

    /// Its corpus directory under `fuzz-corpus/`.
    pub fn dir(self) -> &'static str {
        match self {
            Kind::PeerRequest => "peer_request",
            Kind::PeerResponse => "peer_response",
            Kind::ClientRequest => "client_request",
            Kind::ClientResponse => "client_response",
            Kind::InvocationRecord => "invocation_record",
            Kind::RegistryEntry => "registry_entry",
        }
    }

    pub fn from_dir(dir: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.dir() == dir)
    }

    /// Decodes `bytes` as this kind with [`decode_checked`]; on success returns the value's
    /// canonical re-encoding.
    pub fn decode_checked(self, bytes: &[u8], limit: usize) -> Result<Vec<u8>, WireError> {
        fn go<T>(bytes: &[u8], limit: usize) -> Result<Vec<u8>, WireError>
        where
            T: Serialize + DeserializeOwned + PartialEq + Debug,
        {
            decode_checked::<T>(bytes, limit).map(|v| encode(&v, MAX_MESSAGE).expect("re-encodes"))
        }
        match self {
            Kind::PeerRequest => go::<PeerRequest>(bytes, limit),
            Kind::PeerResponse => go::<PeerResponse>(bytes, limit),
            Kind::ClientRequest => go::<ClientRequest>(bytes, limit),
            Kind::ClientResponse => go::<ClientResponse>(bytes, limit),
            Kind::InvocationRecord => go::<InvocationRecord>(bytes, limit),
            Kind::RegistryEntry => go::<RegistryEntry>(bytes, limit),
        }
    }
}

/// Decodes `bytes` as a `T` and asserts (panicking, which proptest reports as a failure with
/// the input) what must hold for *any* input:
///
/// * an input over the limit (the caller's, capped at `MAX_MESSAGE`) is `TooLarge` naming
///   the input's size and that limit, and nothing else is;
/// * every other failure is `Malformed` or `TrailingBytes` (never `Encode` or `Invalid`);
/// * `TrailingBytes { len }` means the input minus its last `len` bytes is a whole message;
/// * a decoded value re-encodes to at most as many bytes as were read (nothing is conjured
///   up: a declared length is never exceeded) and that encoding decodes to the same value.
pub fn decode_checked<T>(bytes: &[u8], limit: usize) -> Result<T, WireError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let effective = limit.min(MAX_MESSAGE);
    let result = decode::<T>(bytes, limit);
    match &result {
        Ok(value) => {
            assert!(
                bytes.len() <= effective,
                "accepted {} bytes over the limit {effective}",
                bytes.len()
            );
            let canonical = encode(value, MAX_MESSAGE).expect("a decoded value re-encodes");
            assert!(
                canonical.len() <= bytes.len(),
                "{value:?} encodes to {} bytes but was decoded from only {}",
                canonical.len(),
                bytes.len()
            );
            let again: T = decode(&canonical, canonical.len()).expect("a re-encoded value decodes");
            assert_eq!(&again, value, "decode(encode(v)) != v");
        }
        Err(WireError::TooLarge { size, limit: l }) => {
            assert_eq!(*size, bytes.len(), "TooLarge must name the input size");
            assert_eq!(*l, effective, "TooLarge must name the limit in force");
            assert!(size > l, "TooLarge for {size} <= {l}");
        }
        Err(WireError::TrailingBytes { len }) => {
            assert!(bytes.len() <= effective);
            assert!(
                *len >= 1 && *len < bytes.len(),
                "trailing {len} of {}",
                bytes.len()
            );
            let head = &bytes[..bytes.len() - len];
            assert!(
                decode::<T>(head, limit).is_ok(),
                "the {} bytes before the {len} trailing ones do not decode",
                head.len()
            );
        }
        Err(WireError::Malformed(_)) => assert!(bytes.len() <= effective),
        Err(other) => panic!("decode returned an error it must not: {other:?}"),
    }
    result
}

/// Runs `bytes` through a [`FrameDecoder`] in one push; the payloads if the stream is whole
/// frames and nothing else.
pub fn split_frames(bytes: &[u8], max_len: usize) -> Result<Vec<Vec<u8>>, String> {
    let mut dec = FrameDecoder::new(max_len);
    dec.push(bytes).map_err(|e| e.to_string())?;
    let mut frames = Vec::new();
    while let Some(f) = dec.next_frame().map_err(|e| e.to_string())? {
        frames.push(f);
    }
    if dec.buffered() != 0 {
        return Err(format!(
            "{} bytes left after the last whole frame",
            dec.buffered()
        ));
    }
    Ok(frames)
}

/// The frames of `payloads`, back to back.
pub fn frame_all(payloads: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    payloads
        .iter()
        .flat_map(|p| encode_frame(p, max_len).expect("payload within the frame limit"))
        .collect()
}

// The documented rules of the text parsers, written out independently of wire/src.

/// `FunctionName` (and node names): 1–64 of `[a-z0-9_-]`, starting with a letter or digit.
pub fn is_valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// `InvocationId`: 1–64 of `[0-9a-z-]`.
pub fn is_valid_invocation_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// `ModuleHash`: "expected 64 lowercase hex digits".
pub fn is_lowercase_hex_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Idempotency key: 1–128 printable ASCII characters, `0x21..=0x7e`.
pub fn is_valid_idempotency_key(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// `NodeClass` names.
pub const NODE_CLASS_NAMES: [&str; 3] = ["standard", "edge-small", "cpu-burst"];

// The corpus on disk.

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus")
}

/// Directory of the frame-stream seeds: each file is frames back to back, named after the
/// [`Kind`] of its payloads (or `raw`).
pub const FRAME_DIR: &str = "frame_stream";
/// Directory of the `ApiError::from_json` seeds (HTTP error bodies).
pub const API_ERROR_DIR: &str = "api_error_json";
/// Text-parser seed directories, each holding `seeds.txt` with one valid value per line.
pub const TEXT_DIRS: [&str; 5] = [
    "function_name",
    "invocation_id",
    "module_hash",
    "idempotency_key",
    "node_class",
];
pub const TEXT_FILE: &str = "seeds.txt";

/// Every file under the corpus directory (one level of subdirectories), as
/// (`dir/file` relative path, contents), sorted; `README.md` is not a seed.
pub fn read_corpus() -> Vec<(String, Vec<u8>)> {
    let root = corpus_dir();
    let mut out = Vec::new();
    let dirs = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("no seed corpus at {}: {e}", root.display()));
    for dir in dirs {
        let dir = dir.expect("corpus dir entry");
        if !dir.file_type().expect("file type").is_dir() {
            assert_eq!(
                dir.file_name(),
                "README.md",
                "stray file in {}",
                root.display()
            );
            continue;
        }
        for file in std::fs::read_dir(dir.path()).expect("corpus subdir") {
            let file = file.expect("corpus file");
            let rel = format!(
                "{}/{}",
                dir.file_name().to_string_lossy(),
                file.file_name().to_string_lossy()
            );
            out.push((rel, std::fs::read(file.path()).expect("read seed")));
        }
    }
    out.sort();
    out
}

/// The binary message seeds on disk, by kind.
pub fn binary_seeds_on_disk() -> Vec<(Kind, Vec<u8>)> {
    read_corpus()
        .into_iter()
        .filter_map(|(rel, bytes)| {
            let (dir, _) = rel.split_once('/')?;
            Kind::from_dir(dir).map(|k| (k, bytes))
        })
        .collect()
}
