//! Lanes: [`KIND_DATA`](super::KIND_DATA) streams kept open between requests, so [`super::Connection::request`]
//! (and [`KIND_STREAMED`] ones for [`super::Connection::request_streamed`]) does not pay for
//! opening and finishing a stream per exchange (about four extra datagrams
//! each on loopback, every one waking the peer). Holds the lane itself, the per-connection pool
//! of idle lanes and the loan that resets a lane whose exchange did not finish cleanly.

use std::sync::atomic::AtomicU64;

use quinn::{RecvStream, SendStream, VarInt};
use tern_wire::FrameDecoder;

use super::frame::{read_frame_into, refuse};
use super::{KIND_STREAMED, LAST, PART, PartSender, codes};
use crate::ClusterError;

/// A [`KIND_DATA`](super::KIND_DATA) (or [`KIND_STREAMED`]) stream that carries one request/response exchange
/// at a time, and is kept for the next one. The decoder keeps what arrived past a frame in the same read, so a peer
/// that answers twice at once is noticed (and its lane dropped); a peer that sends a second
/// answer later could still desynchronise the lane, but such a peer can lie in its answers
/// anyway.
#[derive(Debug)]
pub(super) struct Lane {
    send: SendStream,
    recv: RecvStream,
    pub(super) decoder: FrameDecoder,
    /// Exchanges started on this lane; the kind byte goes out with the first request.
    uses: u64,
    kind: u8,
    /// Whether the current exchange passed a part on: its answer has begun reaching the
    /// caller, so it is never sent again.
    passed_parts: bool,
}

impl Lane {
    /// A lane of `kind` ([`KIND_DATA`](super::KIND_DATA) or [`KIND_STREAMED`]).
    pub(super) fn new(send: SendStream, recv: RecvStream, max_frame: usize, kind: u8) -> Self {
        // On a streamed lane each answer frame carries a mark byte besides the payload.
        let limit = if kind == KIND_STREAMED {
            max_frame + 1
        } else {
            max_frame
        };
        Self {
            send,
            recv,
            decoder: FrameDecoder::new(limit),
            uses: 0,
            kind,
            passed_parts: false,
        }
    }

    /// Sends one encoded request frame and reads its answer.
    pub(super) async fn exchange(&mut self, frame: &bytes::Bytes) -> Result<Vec<u8>, ClusterError> {
        self.send_request(frame).await?;
        self.read_answer().await
    }

    /// On a [`KIND_STREAMED`] lane: sends one encoded request frame, passes each part of its
    /// answer to `parts` as it arrives, and returns the last frame (marks taken off).
    pub(super) async fn exchange_parts(
        &mut self,
        frame: &bytes::Bytes,
        parts: &PartSender,
    ) -> Result<Vec<u8>, ClusterError> {
        self.passed_parts = false;
        self.send_request(frame).await?;
        loop {
            let mut answer = self.read_answer().await?;
            let mark = (!answer.is_empty()).then(|| answer.remove(0));
            match mark {
                Some(PART) => {
                    self.passed_parts = true;
                    // A requester that stopped listening still reads to the last frame.
                    let _ = parts.send(answer);
                }
                Some(LAST) => return Ok(answer),
                other => {
                    let _ = self.recv.stop(VarInt::from_u32(codes::PROTOCOL));
                    return Err(ClusterError::UnmarkedAnswer(other));
                }
            }
        }
    }

    async fn send_request(&mut self, frame: &bytes::Bytes) -> Result<(), ClusterError> {
        self.uses += 1;
        if self.uses > 1 {
            self.send.write_all(frame).await?;
        } else {
            // Kind byte and frame in one write, so a small request leaves in one packet.
            let mut chunks = [bytes::Bytes::copy_from_slice(&[self.kind]), frame.clone()];
            self.send.write_all_chunks(&mut chunks).await?;
        }
        Ok(())
    }

    async fn read_answer(&mut self) -> Result<Vec<u8>, ClusterError> {
        let answer = read_frame_into(&mut self.recv, &mut self.decoder).await;
        if let Err(ClusterError::FrameTooLarge { .. }) = &answer {
            let _ = self.recv.stop(VarInt::from_u32(codes::FRAME_TOO_LARGE));
        }
        answer
    }

    /// A peer of the previous version refused this lane's kind before reading anything: a
    /// [`KIND_STREAMED`] lane's first exchange failed that way.
    pub(super) fn kind_refused(&self, e: &ClusterError) -> bool {
        self.kind == KIND_STREAMED
            && self.uses == 1
            && matches!(e, ClusterError::StreamRefused(code) if *code == u64::from(codes::UNSUPPORTED_KIND))
    }

    /// After a failed exchange on a lane used before: the peer ended or refused the stream
    /// with code 0 before a byte of the answer came. That is how a node of the previous mesh
    /// version (one exchange per stream) treats a second request; it never read it. This
    /// version ends a lane in use only if its serving task dies (a panic), and never refuses
    /// with code 0; a streamed exchange that passed a part on is not "unread" whatever ended
    /// it (sending it again would run it twice).
    pub(super) fn ended_unread(&self, e: &ClusterError) -> bool {
        // `uses` already counts the failed exchange.
        self.uses > 1
            && !self.passed_parts
            && self.decoder.buffered() == 0
            && matches!(e, ClusterError::Truncated | ClusterError::StreamRefused(0))
    }
}

/// Idle lanes of one connection, most recently used last.
#[derive(Debug, Default)]
pub(super) struct LanePool {
    idle: std::sync::Mutex<Vec<Lane>>,
    pub(super) opened: AtomicU64,
    /// Signalled when a lane is given back, for requests waiting for stream credit.
    pub(super) returned: tokio::sync::Notify,
}

impl LanePool {
    pub(super) fn take(&self) -> Option<Lane> {
        tern_sync::poison::lock(&self.idle).pop()
    }

    /// How many lanes are idle now.
    pub(super) fn idle(&self) -> usize {
        tern_sync::poison::lock(&self.idle).len()
    }

    /// Finishes every idle lane, so the peer gives their stream credit back.
    pub(super) fn release_idle(&self) {
        for mut lane in tern_sync::poison::lock(&self.idle).drain(..) {
            let _ = lane.send.finish();
        }
    }
}

/// A lane in use. Unless given back after a clean exchange, it is reset on drop (an error,
/// a timeout, or a cancelled caller), so a half-done exchange is never reused.
pub(super) struct LentLane<'a> {
    pub(super) lane: Option<Lane>,
    pub(super) pool: &'a LanePool,
}

impl LentLane<'_> {
    /// Returns the lane to the pool, or finishes it when `cap` lanes are already idle.
    pub(super) fn give_back(mut self, cap: usize) {
        let Some(mut lane) = self.lane.take() else {
            return;
        };
        let mut idle = tern_sync::poison::lock(&self.pool.idle);
        if idle.len() < cap {
            lane.decoder.release();
            idle.push(lane);
            drop(idle);
            self.pool.returned.notify_one();
        } else {
            let _ = lane.send.finish();
        }
    }
}

impl Drop for LentLane<'_> {
    fn drop(&mut self) {
        if let Some(mut lane) = self.lane.take() {
            refuse(&mut lane.send, &mut lane.recv, codes::CANCELLED);
        }
    }
}
