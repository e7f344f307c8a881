//! W3C Trace Context (`traceparent`): how a trace crosses a process boundary. It arrives in the
//! `traceparent` header of an HTTP request, travels in client-API requests and in every MEU a
//! node forwards to a peer, so the spans of one invocation join one trace on every node.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::WireError;

/// A span in another process that a new span continues: the `traceparent` of W3C Trace
/// Context, version `00` (`00-<trace id>-<parent id>-<flags>`, lower-case hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The span that is the parent of the receiver's first span.
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

impl TraceParent {
    /// Whether the caller recorded its span and asks the receiver to record too.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Whether both ids are valid (an all-zero id means "none" and is refused).
    pub fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.parent_id != [0; 8]
    }

    /// Decodes a `traceparent` header value. Versions above `00` are read as `00` (their
    /// first four fields keep that layout, by the specification); version `ff` and anything
    /// malformed is an error, and the receiver starts a trace of its own.
    pub fn parse(value: &str) -> Result<Self, WireError> {
        let bad = |reason: &str| WireError::Invalid {
            what: "traceparent",
            reason: reason.to_owned(),
        };
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let b = value.as_bytes();
        if b.len() < 55 {
            return Err(bad("shorter than 55 characters"));
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(bad("fields must be separated by '-'"));
        }
        let [version] = hex::<1>(&b[0..2]).ok_or_else(|| bad("version is not hex"))?;
        if version == 0xff {
            return Err(bad("version ff is invalid"));
        }
        if version == 0 && b.len() != 55 {
            return Err(bad("version 00 has exactly 55 characters"));
        }
        if version > 0 && b.len() > 55 && b[55] != b'-' {
            return Err(bad("fields must be separated by '-'"));
        }
        let parent = Self {
            trace_id: hex(&b[3..35]).ok_or_else(|| bad("trace id is not 32 lower-case hex"))?,
            parent_id: hex(&b[36..52]).ok_or_else(|| bad("parent id is not 16 lower-case hex"))?,
            flags: hex::<1>(&b[53..55]).ok_or_else(|| bad("flags are not hex"))?[0],
        };
        if !parent.is_valid() {
            return Err(bad("an all-zero id is invalid"));
        }
        Ok(parent)
    }
}

/// `N` bytes from `2N` lower-case hex digits (the specification forbids upper case).
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

impl FromStr for TraceParent {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, WireError> {
        Self::parse(s)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_parses_and_prints_back_the_same() {
        let p = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.trace_id[15], 0x36);
        assert_eq!(
            p.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(p.sampled());
        assert_eq!(p.to_string(), EXAMPLE);
        let unsampled = TraceParent::parse(&EXAMPLE.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields_and_ff_or_junk_is_refused() {
        let future = format!("cc{}-what-comes-next", &EXAMPLE[2..]);
        assert_eq!(
            TraceParent::parse(&future).unwrap(),
            TraceParent::parse(EXAMPLE).unwrap()
        );
        for bad in [
            format!("ff{}", &EXAMPLE[2..]),
            format!("{EXAMPLE}-extra"),
            EXAMPLE.to_uppercase(),
            EXAMPLE.replace('-', "_"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".to_owned(),
            EXAMPLE[..54].to_owned(),
            String::new(),
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01".to_owned(),
            "é".repeat(30),
        ] {
            assert!(TraceParent::parse(&bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        // The header is attacker-controlled: any string is an answer, never a panic.
        #[test]
        fn any_header_value_parses_or_is_refused_without_panicking(s in "\\PC{0,80}") {
            let _ = TraceParent::parse(&s);
        }

        #[test]
        fn every_valid_parent_prints_and_parses_back(
            trace_id in proptest::prelude::any::<[u8; 16]>(),
            parent_id in proptest::prelude::any::<[u8; 8]>(),
            flags in proptest::prelude::any::<u8>(),
        ) {
            let p = TraceParent { trace_id, parent_id, flags };
            match TraceParent::parse(&p.to_string()) {
                Ok(back) => proptest::prop_assert_eq!(back, p),
                Err(_) => proptest::prop_assert!(!p.is_valid()),
            }
        }
    }
}
