//! bincode 2 (serde mode) with an explicit byte limit on every decode.
//!
//! All encoding goes through this module so that a later switch away from bincode
//! (flagged unmaintained, RUSTSEC-2025-0141) touches one file.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::WireError;

/// The largest message any Tern process decodes. Callers pass smaller limits where they can.
pub const MAX_MESSAGE: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE>()
}

/// How much a decode may let length prefixes claim, per byte of input. A string claims its
/// length in bytes; nothing a valid message holds claims more than a few times its encoded
/// size, so 64× leaves room while a 10-byte input can no longer make bincode allocate the
/// 60 MiB its length prefix claims before finding the input too short.
const CLAIM_PER_INPUT_BYTE: usize = 64;

/// Decodes with the smallest of a few allocation budgets that is at least
/// [`CLAIM_PER_INPUT_BYTE`] times the input. bincode checks every length claim against its
/// limit *before* allocating, but the limit is a type-level constant, hence the buckets.
fn decode_bounded<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    use bincode::config::standard;
    use bincode::serde::decode_from_slice;
    let budget = bytes.len().saturating_mul(CLAIM_PER_INPUT_BYTE);
    if budget <= 16 << 10 {
        decode_from_slice(bytes, standard().with_limit::<{ 16 << 10 }>())
    } else if budget <= 1 << 20 {
        decode_from_slice(bytes, standard().with_limit::<{ 1 << 20 }>())
    } else if budget <= 16 << 20 {
        decode_from_slice(bytes, standard().with_limit::<{ 16 << 20 }>())
    } else {
        decode_from_slice(bytes, config())
    }
}

/// Encodes `value`, refusing to produce more than `limit` bytes.
pub fn encode<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, WireError> {
    let bytes = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}

/// Decodes exactly one `T` from `bytes`. Inputs longer than `limit`, malformed inputs and
/// inputs with trailing bytes are typed errors; this never panics on any input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    let limit = limit.min(MAX_MESSAGE);
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let (value, read) = decode_bounded(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(WireError::TrailingBytes {
            len: bytes.len() - read,
        });
    }
    Ok(value)
}

/// Decodes the `T` that `bytes` starts with, and how many bytes it took: for a record that
/// may be followed by an optional part. Never panics; inputs longer than `limit` and a `T`
/// that does not fit in `bytes` are typed errors.
pub fn decode_leading<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
) -> Result<(T, usize), WireError> {
    let limit = limit.min(MAX_MESSAGE);
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    decode_bounded(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Decodes the `T` that `bytes` starts with and ignores the rest: for reading the leading
/// fields of a large record (a journaled invocation's owner) without decoding its payload.
/// Never panics; a `T` that does not fit in `bytes` is [`WireError::Malformed`].
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let bytes = &bytes[..bytes.len().min(MAX_MESSAGE)];
    decode_bounded(bytes)
        .map(|(value, _)| value)
        .map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::{InvocationRecord, InvocationStatus};

    #[test]
    fn the_owner_of_an_encoded_record_is_read_from_its_leading_fields_only() {
        let mut big = record();
        big.function = "acme.work".parse().unwrap();
        big.output = Some(vec![7; 1 << 20]);
        let bytes = encode(&big, MAX_MESSAGE).unwrap();
        assert_eq!(InvocationRecord::function_of(&bytes).unwrap(), big.function);
        // Only the leading fields need to be intact.
        let cut = &bytes[..bytes.len() / 2];
        assert_eq!(InvocationRecord::function_of(cut).unwrap(), big.function);
        assert!(decode::<InvocationRecord>(cut, MAX_MESSAGE).is_err());
        assert!(InvocationRecord::function_of(&[]).is_err());
        assert!(InvocationRecord::function_of(&[0xff; 40]).is_err());
    }

    fn record() -> InvocationRecord {
        InvocationRecord {
            id: "0001-0002".parse().unwrap(),
            function: "echo".parse().unwrap(),
            map: false,
            status: InvocationStatus::Succeeded,
            input: b"hello".to_vec(),
            output: Some(b"hello".to_vec()),
            error: None,
            accepted_at_ms: 1,
            finished_at_ms: Some(2),
            attempts: 1,
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&record(), 1024).unwrap();
        let back: InvocationRecord = decode(&bytes, 1024).unwrap();
        assert_eq!(back, record());
    }

    #[test]
    fn limits_are_enforced_both_ways() {
        let bytes = encode(&record(), 1024).unwrap();
        assert!(matches!(
            encode(&record(), 4),
            Err(WireError::TooLarge { limit: 4, .. })
        ));
        assert!(matches!(
            decode::<InvocationRecord>(&bytes, bytes.len() - 1),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_and_truncated_bytes_are_typed_errors() {
        let mut bytes = encode(&record(), 1024).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<InvocationRecord>(&bytes, 1024),
            Err(WireError::TrailingBytes { len: 1 })
        ));
        bytes.truncate(bytes.len() - 4);
        assert!(matches!(
            decode::<InvocationRecord>(&bytes, 1024),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn length_prefix_bomb_is_refused_without_allocating() {
        // A Vec<u8> whose varint length prefix claims ~2^60 bytes.
        let bomb = [0xFFu8, 0, 0, 0, 0, 0, 0, 0x10, 0];
        assert!(decode::<Vec<u8>>(&bomb, 1024).is_err());
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_or_a_value_never_a_panic() {
        let bytes = encode(&record(), 1024).unwrap();
        for cut in 0..bytes.len() {
            let _ = decode::<InvocationRecord>(&bytes[..cut], 1024);
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                let _ = decode::<InvocationRecord>(&flipped, 1024);
            }
        }
    }
}

#[cfg(test)]
mod random_input {
    use super::*;
    use crate::api::{FunctionInfo, InvocationRecord};

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_bytes_never_panic_and_never_allocate_past_the_limit() {
        let mut rng = Rng(0x7e57_0001);
        for _ in 0..50_000 {
            let len = (rng.next() % 96) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = decode::<InvocationRecord>(&bytes, 1 << 16);
            let _ = decode::<FunctionInfo>(&bytes, 1 << 16);
            let _ = decode::<Vec<String>>(&bytes, 1 << 16);
        }
    }
}
