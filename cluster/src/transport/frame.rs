//! Reading off a QUIC stream: the kind byte, then length-prefixed frames (tern-wire's
//! framing) with the limit enforced as soon as a header arrives; and refusing a stream.
//! Shared by the hello, the lanes and the serving side, which is why it sits below all three.

use quinn::{RecvStream, SendStream, VarInt};
use tern_wire::frame::HEADER_LEN;
use tern_wire::{FrameDecoder, WireError};

use crate::ClusterError;

/// Largest chunk read from a stream at once; bounds how far past a frame limit we read.
const READ_CHUNK: usize = 64 * 1024;

/// tern-wire's framing errors as this crate's, keeping "too large" distinct so the stream is
/// refused with [`super::codes::FRAME_TOO_LARGE`].
pub(super) fn frame_error(e: WireError) -> ClusterError {
    match e {
        WireError::TooLarge { size, limit } => ClusterError::FrameTooLarge { size, limit },
        other => ClusterError::Wire(other),
    }
}

/// Reads the kind byte that starts every stream.
pub(super) async fn read_kind(recv: &mut RecvStream) -> Result<u8, ClusterError> {
    let mut kind = [0u8; 1];
    recv.read_exact(&mut kind).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => ClusterError::Truncated,
        quinn::ReadExactError::ReadError(e) => e.into(),
    })?;
    Ok(kind[0])
}

/// Reads one frame of at most `limit` bytes. An oversized header is refused as soon as it
/// arrives, before any of the body is read.
pub(super) async fn read_frame(
    recv: &mut RecvStream,
    limit: usize,
) -> Result<Vec<u8>, ClusterError> {
    read_frame_into(recv, &mut FrameDecoder::new(limit)).await
}

/// Reads the next frame through `decoder`, which keeps any bytes past it.
pub(super) async fn read_frame_into(
    recv: &mut RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Vec<u8>, ClusterError> {
    loop {
        if let Some(frame) = decoder.next_frame().map_err(frame_error)? {
            return Ok(frame);
        }
        // Read the header on its own so an oversized frame is refused after 4 bytes, not
        // after a whole chunk: a slow peer cannot hold memory by trickling.
        let want = match decoder.buffered() {
            b if b < HEADER_LEN => HEADER_LEN - b,
            _ => READ_CHUNK,
        };
        match recv.read_chunk(want, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes).map_err(frame_error)?,
            None => return Err(ClusterError::Truncated),
        }
    }
}

/// Refuses a stream in both directions with `code`; the connection is untouched.
pub(crate) fn refuse(send: &mut SendStream, recv: &mut RecvStream, code: u32) {
    // Errors here only mean the stream is already closed, which is what we want anyway.
    let _ = recv.stop(VarInt::from_u32(code));
    let _ = send.reset(VarInt::from_u32(code));
}
