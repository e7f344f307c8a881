//! A verified connection to one peer, as the rest of the crate sees it: the requester side
//! (`request` over lanes, opening streams), the serve loop that spawns `serve.rs` per
//! incoming stream, and the hand-over of session streams to whoever claimed them. Only
//! `endpoint.rs` creates one, after `hello.rs` has checked the peer's name.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use quinn::{RecvStream, SendStream, VarInt};
use tern_wire::encode_frame;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::frame::frame_error;
use super::lanes::{Lane, LanePool, LentLane};
use super::serve::serve_stream;
use super::{KIND_DATA, KIND_RACTOR, KIND_STREAMED, PartSender, TransportConfig, codes};
use crate::{ClusterError, NodeName};

/// A ractor_cluster session stream accepted by [`Connection::serve`], the kind byte already read.
pub type SessionStream = (SendStream, RecvStream);

/// Where [`Connection::serve`] delivers session streams; shared by the clones of a connection.
#[derive(Debug, Default)]
pub(super) struct SessionSink(pub(super) std::sync::Mutex<Option<mpsc::Sender<SessionStream>>>);

/// A verified connection to one peer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: quinn::Connection,
    peer: NodeName,
    cfg: Arc<TransportConfig>,
    sessions: Arc<SessionSink>,
    lanes: Arc<LanePool>,
    /// Idle [`KIND_STREAMED`] lanes, for [`Connection::request_streamed`].
    streamed_lanes: Arc<LanePool>,
    /// The peer refused a [`KIND_STREAMED`] stream (an older version): it is not asked again.
    streamed_refused: Arc<std::sync::atomic::AtomicBool>,
}

impl Connection {
    /// Wraps a connection whose peer passed the hello as `peer`.
    pub(super) fn new(inner: quinn::Connection, peer: NodeName, cfg: Arc<TransportConfig>) -> Self {
        Self {
            inner,
            peer,
            cfg,
            sessions: Arc::default(),
            lanes: Arc::default(),
            streamed_lanes: Arc::default(),
            streamed_refused: Arc::default(),
        }
    }

    /// From now on, [`KIND_RACTOR`] streams that `serve` accepts on this connection are
    /// delivered to the returned receiver instead of being refused. At most one claim per
    /// connection ([`ClusterError::SessionStreamsClaimed`] otherwise). Claim before calling
    /// `serve`: a session stream that `serve` accepts before the claim is refused.
    /// Streams that arrive while `backlog` are already waiting are refused with
    /// [`codes::SESSION_EXISTS`].
    pub fn claim_session_streams(
        &self,
        backlog: usize,
    ) -> Result<mpsc::Receiver<SessionStream>, ClusterError> {
        let mut slot = self
            .sessions
            .0
            .lock()
            .map_err(|_| ClusterError::SessionStreamsClaimed)?;
        if slot.is_some() {
            return Err(ClusterError::SessionStreamsClaimed);
        }
        let (tx, rx) = mpsc::channel(backlog.max(1));
        *slot = Some(tx);
        Ok(rx)
    }

    /// Opens the [`KIND_RACTOR`] stream of a session (used by `session/`).
    pub(crate) async fn open_session_stream(&self) -> Result<SessionStream, ClusterError> {
        self.open_raw_stream(KIND_RACTOR).await
    }

    /// Closes the connection with an application `code` (e.g. [`codes::SESSION_LOST`]).
    pub(crate) fn close_with(&self, code: u32, reason: &[u8]) {
        self.inner.close(VarInt::from_u32(code), reason);
    }

    /// Whether the connection has already ended.
    pub fn is_closed(&self) -> bool {
        self.inner.close_reason().is_some()
    }

    /// The peer's node name, verified against its certificate.
    pub fn peer(&self) -> &NodeName {
        &self.peer
    }

    /// Distinguishes this connection from earlier or later ones to the same peer
    /// (see `Membership::connection_lost`).
    pub fn id(&self) -> u64 {
        self.inner.stable_id() as u64
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// QUIC's smoothed round-trip time estimate for this connection (quinn's `rtt()`; the
    /// handshake's estimate until traffic refines it).
    pub fn rtt(&self) -> Duration {
        self.inner.rtt()
    }

    /// Sends `payload` on a data-plane stream and waits for the one-frame answer.
    ///
    /// Streams are kept open between requests (see `lanes.rs`): a stream per request cost
    /// about four extra datagrams per exchange on loopback (stream credit and the ACKs they
    /// elicit), each one waking the peer process.
    pub async fn request(&self, payload: &[u8]) -> Result<Vec<u8>, ClusterError> {
        let frame =
            bytes::Bytes::from(encode_frame(payload, self.cfg.max_frame).map_err(frame_error)?);
        let exchange = async {
            let mut lent = self.lend(&self.lanes, KIND_DATA).await?;
            let lane = lent.lane.as_mut().ok_or(ClusterError::ClosedStream)?;
            let answer = match lane.exchange(&frame).await {
                Err(e) if lane.ended_unread(&e) => {
                    // Not executed there: send it once more, on a stream of its own.
                    drop(lent);
                    lent = self.lend_new(&self.lanes, KIND_DATA).await?;
                    let lane = lent.lane.as_mut().ok_or(ClusterError::ClosedStream)?;
                    lane.exchange(&frame).await
                }
                answer => answer,
            };
            self.give_back_if_clean(lent, answer.is_ok());
            answer
        };
        tokio::time::timeout(self.cfg.request_timeout, exchange)
            .await
            .map_err(|_| ClusterError::Timeout("request"))?
    }

    /// Returns a lane to its pool after an exchange that ended well and left nothing unread
    /// (else it is reset, as it drops).
    fn give_back_if_clean(&self, lent: LentLane<'_>, ok: bool) {
        let clean = lent
            .lane
            .as_ref()
            .is_some_and(|l| l.decoder.buffered() == 0);
        if ok && clean {
            // Both pools together stay within the idle cap and half the stream credit.
            let cap = self
                .cfg
                .max_idle_lanes
                .min(self.cfg.max_concurrent_streams as usize / 2);
            let other = if std::ptr::eq(lent.pool, &*self.lanes) {
                self.streamed_lanes.idle()
            } else {
                self.lanes.idle()
            };
            lent.give_back(cap.saturating_sub(other));
        }
    }

    /// Sends `payload` on a [`KIND_STREAMED`] lane, whose answer may come in parts: each part
    /// goes to `parts` as it arrives, and the last answer frame is returned. Such lanes are
    /// kept between requests as [`Connection::request`]'s are. A peer that does not know them
    /// (an older version) refuses the first one before reading it; that request and every
    /// later one on this connection are then sent on [`KIND_DATA`] lanes, and answered whole.
    /// Giving up (dropping the future) resets the lane, so the peer stops the work.
    pub async fn request_streamed(
        &self,
        payload: &[u8],
        parts: &PartSender,
    ) -> Result<Vec<u8>, ClusterError> {
        if self.streamed_refused.load(Ordering::Relaxed) {
            return self.request(payload).await;
        }
        let frame =
            bytes::Bytes::from(encode_frame(payload, self.cfg.max_frame).map_err(frame_error)?);
        let exchange = async {
            let mut lent = self.lend(&self.streamed_lanes, KIND_STREAMED).await?;
            let lane = lent.lane.as_mut().ok_or(ClusterError::ClosedStream)?;
            let answer = match lane.exchange_parts(&frame, parts).await {
                Err(e) if lane.kind_refused(&e) => {
                    self.streamed_refused.store(true, Ordering::Relaxed);
                    drop(lent);
                    return Err(e);
                }
                Err(e) if lane.ended_unread(&e) => {
                    drop(lent);
                    lent = self.lend_new(&self.streamed_lanes, KIND_STREAMED).await?;
                    let lane = lent.lane.as_mut().ok_or(ClusterError::ClosedStream)?;
                    lane.exchange_parts(&frame, parts).await
                }
                answer => answer,
            };
            self.give_back_if_clean(lent, answer.is_ok());
            answer
        };
        match tokio::time::timeout(self.cfg.request_timeout, exchange).await {
            Err(_) => Err(ClusterError::Timeout("request")),
            Ok(Err(ClusterError::StreamRefused(code)))
                if self.streamed_refused.load(Ordering::Relaxed)
                    && code == u64::from(codes::UNSUPPORTED_KIND) =>
            {
                self.request(payload).await
            }
            Ok(answer) => answer,
        }
    }

    /// A lane for one exchange: an idle one, else a new stream. While the peer's stream
    /// credit is used up, whichever comes first: a lane given back, or new credit; idle lanes
    /// of the other kind are finished then, so the credit they hold comes back to this one.
    async fn lend<'a>(&self, pool: &'a LanePool, kind: u8) -> Result<LentLane<'a>, ClusterError> {
        let other = if std::ptr::eq(pool, &*self.lanes) {
            &*self.streamed_lanes
        } else {
            &*self.lanes
        };
        loop {
            let returned = pool.returned.notified();
            tokio::pin!(returned);
            // Registered before looking, so a lane given back after the look wakes us.
            returned.as_mut().enable();
            if let Some(lane) = pool.take() {
                return Ok(LentLane {
                    lane: Some(lane),
                    pool,
                });
            }
            tokio::select! {
                biased;
                opened = self.inner.open_bi() => return Ok(self.new_lane(opened?, pool, kind)),
                () = &mut returned => {}
                () = std::future::ready(()), if other.idle() > 0 => other.release_idle(),
            }
        }
    }

    /// A lane on a new stream.
    async fn lend_new<'a>(
        &self,
        pool: &'a LanePool,
        kind: u8,
    ) -> Result<LentLane<'a>, ClusterError> {
        let opened = self.inner.open_bi().await?;
        Ok(self.new_lane(opened, pool, kind))
    }

    fn new_lane<'a>(
        &self,
        (send, recv): (SendStream, RecvStream),
        pool: &'a LanePool,
        kind: u8,
    ) -> LentLane<'a> {
        pool.opened.fetch_add(1, Ordering::Relaxed);
        LentLane {
            lane: Some(Lane::new(send, recv, self.cfg.max_frame, kind)),
            pool,
        }
    }

    /// Data-plane streams this side has opened for [`Connection::request`] and
    /// [`Connection::request_streamed`]; each carries many requests, one at a time, so this
    /// grows with concurrency, not with requests.
    pub fn lanes_opened(&self) -> u64 {
        self.lanes.opened.load(Ordering::Relaxed)
            + self.streamed_lanes.opened.load(Ordering::Relaxed)
    }

    /// UDP datagrams this side has sent on the connection (quinn's statistics).
    pub fn datagrams_sent(&self) -> u64 {
        self.inner.stats().udp_tx.datagrams
    }

    /// Opens a stream of the given kind and writes the kind byte. Only [`KIND_DATA`] is taken
    /// here: a [`KIND_STREAMED`] stream is opened by `request_streamed`, which reads its
    /// marked answers, and a [`KIND_RACTOR`] stream by the session layer.
    pub async fn open_stream(&self, kind: u8) -> Result<(SendStream, RecvStream), ClusterError> {
        if kind != KIND_DATA {
            return Err(ClusterError::UnsupportedStreamKind(kind));
        }
        self.open_raw_stream(kind).await
    }

    /// The next stream the peer opens, unread, bypassing `serve`: lets tests play a peer of
    /// another protocol version.
    #[doc(hidden)]
    pub async fn accept_raw_stream(&self) -> Result<(SendStream, RecvStream), ClusterError> {
        Ok(self.inner.accept_bi().await?)
    }

    /// Like `open_stream` without the kind check, so tests can send what a hostile or newer
    /// peer would.
    #[doc(hidden)]
    pub async fn open_raw_stream(
        &self,
        first_byte: u8,
    ) -> Result<(SendStream, RecvStream), ClusterError> {
        let opened = tokio::select! {
            biased;
            opened = self.inner.open_bi() => Some(opened),
            () = std::future::ready(()) => None,
        };
        let (mut send, recv) = match opened {
            Some(opened) => opened?,
            None => {
                // The peer's stream credit is used up, perhaps by idle lanes: give theirs back.
                self.lanes.release_idle();
                self.streamed_lanes.release_idle();
                self.inner.open_bi().await?
            }
        };
        send.write_all(&[first_byte]).await?;
        Ok((send, recv))
    }

    /// Serves data-plane requests from this peer with `handler` until the connection ends, and
    /// returns why it ended. Each stream runs in its own task; a bad stream is refused alone.
    /// [`KIND_RACTOR`] streams go to the receiver of [`Connection::claim_session_streams`], if
    /// any (else they are refused with [`codes::UNSUPPORTED_KIND`]).
    ///
    /// The handler is given a [`PartSender`] for a request on a [`KIND_STREAMED`] stream:
    /// what it sends there goes out, in order, before its answer.
    pub async fn serve<F, Fut>(&self, handler: F) -> ClusterError
    where
        F: Fn(Vec<u8>, Option<PartSender>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<u8>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        // A JoinSet so that stream tasks die with `serve` rather than outlive it.
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let (send, recv) = match self.inner.accept_bi().await {
                Ok(streams) => streams,
                Err(e) => return e.into(),
            };
            let (handler, cfg, peer) = (handler.clone(), self.cfg.clone(), self.peer.clone());
            let sessions = self.sessions.clone();
            // A streamed answer's handler ends by dropping the part sender that this task
            // waits on, and the link's serving side does the same with the run's answer
            // stream: the task wakes itself, which tokio would hand to another worker thread
            // (a futex wake and a context switch per request, measured). Polled again at once
            // instead.
            tasks.spawn(tern_sync::RepollOnSelfWake::new(async move {
                if let Err(e) = serve_stream(send, recv, &*handler, &cfg, &sessions).await {
                    tracing::debug!(%peer, error = %e, "refused a data-plane stream");
                }
            }));
        }
    }

    /// Resolves when the connection ends: idle timeout (dead or frozen peer), close, or reset.
    pub async fn closed(&self) -> ClusterError {
        self.inner.closed().await.into()
    }

    pub fn close(&self) {
        self.inner
            .close(VarInt::from_u32(codes::SHUTDOWN), b"shutdown");
    }
}
