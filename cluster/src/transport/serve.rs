//! The serving side of one incoming stream, run by [`super::Connection::serve`] in a task of
//! its own: reads the kind byte, then answers [`KIND_DATA`] requests one at a time until the
//! requester finishes the stream (on a [`KIND_STREAMED`] stream, each answer in parts), or
//! hands a [`KIND_RACTOR`] stream to the session layer. A
//! bad stream (oversized, late, unknown kind, garbage) is refused alone; the connection and
//! its other streams carry on.

use std::future::Future;

use quinn::{RecvStream, SendStream};
use tern_wire::frame::HEADER_LEN;
use tern_wire::{FrameDecoder, encode_frame};
use tokio::sync::mpsc;

use super::connection::SessionSink;
use super::frame::{frame_error, read_frame_into, read_kind, refuse};
use super::{
    KIND_DATA, KIND_RACTOR, KIND_STREAMED, LAST, PART, PartSender, TransportConfig, codes,
};
use crate::ClusterError;

pub(super) async fn serve_stream<F, Fut>(
    mut send: SendStream,
    mut recv: RecvStream,
    handler: &F,
    cfg: &TransportConfig,
    sessions: &SessionSink,
) -> Result<(), ClusterError>
where
    F: Fn(Vec<u8>, Option<PartSender>) -> Fut,
    Fut: Future<Output = Vec<u8>>,
{
    let mut decoder = FrameDecoder::new(cfg.max_frame);
    // The kind byte and the first request arrive together, under one deadline.
    let first = tokio::time::timeout(cfg.request_timeout, async {
        match read_kind(&mut recv).await? {
            KIND_RACTOR => Ok(None),
            kind @ (KIND_DATA | KIND_STREAMED) => read_frame_into(&mut recv, &mut decoder)
                .await
                .map(|request| Some((kind, request))),
            other => Err(ClusterError::UnsupportedStreamKind(other)),
        }
    })
    .await
    .unwrap_or(Err(ClusterError::Timeout("request")));
    let (streamed, mut first) = match first {
        Ok(None) => return deliver_session_stream(send, recv, sessions),
        Ok(Some((kind, request))) => (kind == KIND_STREAMED, Some(Ok(Some(request)))),
        Err(e) => (false, Some(Err(e))),
    };
    loop {
        let request = match first.take() {
            Some(first) => first,
            None => next_request(&mut recv, &mut decoder, cfg).await,
        };
        let request = match request {
            Ok(Some(r)) => r,
            Ok(None) => {
                // The requester finished the stream between requests: a clean end.
                let _ = send.finish();
                return Ok(());
            }
            Err(e) => {
                let code = match &e {
                    ClusterError::FrameTooLarge { .. } => codes::FRAME_TOO_LARGE,
                    ClusterError::UnsupportedStreamKind(_) => codes::UNSUPPORTED_KIND,
                    ClusterError::Timeout(_) => codes::TIMEOUT,
                    _ => codes::PROTOCOL,
                };
                refuse(&mut send, &mut recv, code);
                return Err(e);
            }
        };
        if streamed {
            match answer_in_parts(&mut send, &mut recv, request, handler, cfg).await? {
                Some(last) => write_marked(&mut send, &mut recv, LAST, &last, cfg).await?,
                None => return Ok(()),
            }
            continue;
        }
        // A requester that gives up resets the lane (STOP_SENDING reaches us): the work is
        // dropped, a running guest with it, rather than finished for nobody.
        let stopped = send.stopped();
        let response = tokio::select! {
            biased;
            response = handler(request, None) => response,
            _ = stopped => return Ok(()),
        };
        match encode_frame(&response, cfg.max_frame) {
            Ok(frame) => send.write_all(&frame).await?,
            Err(e) => {
                refuse(&mut send, &mut recv, codes::FRAME_TOO_LARGE);
                return Err(frame_error(e));
            }
        }
    }
}

/// Answers a request on a [`KIND_STREAMED`] stream up to its last frame: each part the
/// handler sends goes out as it comes, marked [`PART`]; returns the handler's answer, which
/// goes last. `None` when the requester gave up (the work is dropped, as on a lane).
async fn answer_in_parts<F, Fut>(
    send: &mut SendStream,
    recv: &mut RecvStream,
    request: Vec<u8>,
    handler: &F,
    cfg: &TransportConfig,
) -> Result<Option<Vec<u8>>, ClusterError>
where
    F: Fn(Vec<u8>, Option<PartSender>) -> Fut,
    Fut: Future<Output = Vec<u8>>,
{
    let (parts, mut sent) = mpsc::unbounded_channel();
    let handled = handler(request, Some(parts));
    tokio::pin!(handled);
    let stopped = send.stopped();
    tokio::pin!(stopped);
    // Whether the handler still holds its sender.
    let mut open = true;
    let last = loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return Ok(None),
            part = sent.recv(), if open => match part {
                Some(part) => write_marked(send, recv, PART, &part, cfg).await?,
                None => open = false,
            },
            last = &mut handled => break last,
        }
    };
    // Parts sent before the handler returned go out before its answer.
    while let Ok(part) = sent.try_recv() {
        write_marked(send, recv, PART, &part, cfg).await?;
    }
    Ok(Some(last))
}

/// Writes `payload` as one frame, after the byte `mark`; one too large for a frame refuses
/// the stream.
async fn write_marked(
    send: &mut SendStream,
    recv: &mut RecvStream,
    mark: u8,
    payload: &[u8],
    cfg: &TransportConfig,
) -> Result<(), ClusterError> {
    let mut marked = Vec::with_capacity(payload.len() + 1);
    marked.push(mark);
    marked.extend_from_slice(payload);
    // The mark does not count against the frame limit: a payload as large as a lane's answer
    // fits.
    match encode_frame(&marked, cfg.max_frame + 1) {
        Ok(frame) => Ok(send.write_all(&frame).await?),
        Err(e) => {
            refuse(send, recv, codes::FRAME_TOO_LARGE);
            Err(frame_error(e))
        }
    }
}

/// Waits for the next request on a data stream: `Ok(None)` when the peer finished the stream
/// between requests. An idle stream may wait for ever (it costs a task and one unit of
/// stream credit, both bounded by `max_concurrent_streams`); once a request has started it
/// must arrive within `request_timeout`.
async fn next_request(
    recv: &mut RecvStream,
    decoder: &mut FrameDecoder,
    cfg: &TransportConfig,
) -> Result<Option<Vec<u8>>, ClusterError> {
    if decoder.buffered() == 0 {
        // An idle lane holds no buffer while it waits.
        decoder.release();
        match recv.read_chunk(HEADER_LEN, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes).map_err(frame_error)?,
            None => return Ok(None),
        }
    }
    tokio::time::timeout(cfg.request_timeout, read_frame_into(recv, decoder))
        .await
        .unwrap_or(Err(ClusterError::Timeout("request")))
        .map(Some)
}

/// Hands a [`KIND_RACTOR`] stream to the session layer, or refuses it when nobody claimed
/// session streams on this connection (as before sessions existed) or the claim is backed up.
fn deliver_session_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    sessions: &SessionSink,
) -> Result<(), ClusterError> {
    let sender = sessions.0.lock().ok().and_then(|slot| slot.clone());
    let Some(sender) = sender else {
        refuse(&mut send, &mut recv, codes::UNSUPPORTED_KIND);
        return Err(ClusterError::UnsupportedStreamKind(KIND_RACTOR));
    };
    match sender.try_send((send, recv)) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full((mut send, mut recv))) => {
            refuse(&mut send, &mut recv, codes::SESSION_EXISTS);
            Err(ClusterError::SessionExists)
        }
        Err(mpsc::error::TrySendError::Closed((mut send, mut recv))) => {
            refuse(&mut send, &mut recv, codes::UNSUPPORTED_KIND);
            Err(ClusterError::UnsupportedStreamKind(KIND_RACTOR))
        }
    }
}
