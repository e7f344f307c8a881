//! Length-prefixed framing: a big-endian `u32` length, then that many bytes.
//!
//! The decoder refuses a frame as soon as its header announces more than `max_len`, before
//! buffering the body, so a length-prefix bomb costs the reader at most the 4 header bytes.

use crate::WireError;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;
/// Buffer capacity a decoder keeps once it is empty. A decoder may live for many frames (a
/// kept-open stream), and one big frame must not pin its size in memory for ever.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// Prepends the length header to `payload`.
pub fn encode_frame(payload: &[u8], max_len: usize) -> Result<Vec<u8>, WireError> {
    if payload.len() > max_len || payload.len() > u32::MAX as usize {
        return Err(WireError::TooLarge {
            size: payload.len(),
            limit: max_len,
        });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Incremental decoder: feed it bytes as they arrive, take whole frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    max_len: usize,
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            buf: Vec::new(),
        }
    }

    /// Appends received bytes. Fails (and should end the stream) as soon as a header announces
    /// an oversized frame.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.buf.extend_from_slice(bytes);
        self.check_header()
    }

    fn check_header(&self) -> Result<(), WireError> {
        if let Some(len) = self.announced_len()
            && len > self.max_len
        {
            return Err(WireError::TooLarge {
                size: len,
                limit: self.max_len,
            });
        }
        Ok(())
    }

    fn announced_len(&self) -> Option<usize> {
        let header: [u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(u32::from_be_bytes(header) as usize)
    }

    /// The next complete frame's payload, if one has fully arrived.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        self.check_header()?;
        let Some(len) = self.announced_len() else {
            return Ok(None);
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        if self.buf.is_empty() && self.buf.capacity() > RETAINED_CAPACITY {
            self.buf = Vec::new();
        }
        Ok(Some(payload))
    }

    /// Frees the buffer if nothing is waiting in it, e.g. before a long idle wait.
    pub fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_survive_arbitrary_splits() {
        let mut wire = encode_frame(b"hello", 64).unwrap();
        wire.extend(encode_frame(b"", 64).unwrap());
        wire.extend(encode_frame(b"world!", 64).unwrap());
        for split in 0..wire.len() {
            let mut dec = FrameDecoder::new(64);
            let mut got = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                dec.push(chunk).unwrap();
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, vec![b"hello".to_vec(), vec![], b"world!".to_vec()]);
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn a_big_frame_does_not_pin_its_buffer() {
        let mut dec = FrameDecoder::new(4 << 20);
        dec.push(&encode_frame(&vec![1; 1 << 20], 4 << 20).unwrap())
            .unwrap();
        assert!(dec.buf.capacity() >= 1 << 20);
        assert_eq!(dec.next_frame().unwrap().unwrap().len(), 1 << 20);
        assert!(
            dec.buf.capacity() <= RETAINED_CAPACITY,
            "{}",
            dec.buf.capacity()
        );
        // Small frames keep their buffer (no reallocation per frame).
        dec.push(&encode_frame(&[2; 100], 4 << 20).unwrap())
            .unwrap();
        let kept = dec.buf.capacity();
        assert_eq!(dec.next_frame().unwrap().unwrap(), vec![2; 100]);
        assert_eq!(dec.buf.capacity(), kept);
        // An idle decoder can give all of it back, but never drops unread bytes.
        dec.release();
        assert_eq!(dec.buf.capacity(), 0);
        dec.push(&[0, 0]).unwrap();
        dec.release();
        assert_eq!(dec.buffered(), 2);
    }

    #[test]
    fn oversized_header_is_refused_before_the_body_arrives() {
        let mut dec = FrameDecoder::new(16);
        let err = dec.push(&(1u32 << 30).to_be_bytes()).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { size, limit: 16 } if size == 1 << 30));
        assert!(encode_frame(&[0; 17], 16).is_err());
    }
}
