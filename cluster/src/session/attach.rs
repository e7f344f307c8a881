//! The session work on one connection, started by [`super::Sessions::attach`]: the opening
//! side (lower node name) opens the session stream and hands it to ractor_cluster with its
//! read half name-checked; the accepting side checks each offered stream's first frame, hands
//! the first good one over and refuses the rest. Rejections are counted and refused with the
//! codes of `transport::codes`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::NodeServerMessage;

use super::Shared;
use super::events::label;
use super::name_check::{Role, read_claim};
use super::stream::{CheckedRead, QuicSessionStream, ReadState};
use crate::transport::{SessionStream, codes, refuse};
use crate::{ClusterError, Connection, NodeName};

/// What the task serving one connection's session needs.
pub(super) struct AttachCtx {
    pub(super) me: NodeName,
    pub(super) conn: Connection,
    pub(super) server: ActorRef<NodeServerMessage>,
    pub(super) shared: Arc<Shared>,
    pub(super) claim_timeout: Duration,
}

impl AttachCtx {
    /// The opening side: one stream, its read half name-checked, handed to ractor_cluster.
    pub(super) async fn open(&self) {
        let peer = self.conn.peer().clone();
        let (send, recv) = match self.conn.open_session_stream().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "could not open a session stream");
                self.conn
                    .close_with(codes::SESSION_LOST, b"no session stream");
                return;
            }
        };
        let check = {
            let (peer, shared, timeout) = (peer.clone(), self.shared.clone(), self.claim_timeout);
            Box::pin(async move {
                let mut recv = recv;
                match tokio::time::timeout(timeout, read_claim(&mut recv, &peer, Role::Opener))
                    .await
                    .unwrap_or(Err(ClusterError::Timeout("session handshake")))
                {
                    Ok(prefix) => Ok((prefix, recv)),
                    Err(e) => {
                        if counts_as_rejection(&e) {
                            shared.rejected.fetch_add(1, Ordering::Relaxed);
                            let _ = recv.stop(quinn::VarInt::from_u32(rejection_code(&e)));
                        }
                        tracing::warn!(%peer, error = %e, "session peer failed the name check");
                        Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            e.to_string(),
                        ))
                    }
                }
            })
        };
        let stream = QuicSessionStream {
            send,
            read: CheckedRead {
                state: ReadState::Checking(check),
            },
            peer_label: label(&peer, self.conn.id()),
            local_label: self.me.to_string(),
        };
        if let Err(e) =
            ractor_cluster::client_connect_external(&self.server, Box::new(stream)).await
        {
            tracing::warn!(%peer, error = %e, "NodeServer refused the session stream");
            self.conn
                .close_with(codes::SESSION_LOST, b"node server gone");
        }
    }

    /// The accepting side: check each offered stream's first frame; hand the first good one
    /// to ractor_cluster and refuse every later one.
    pub(super) async fn accept(&self, mut incoming: tokio::sync::mpsc::Receiver<SessionStream>) {
        let peer = self.conn.peer().clone();
        let mut carrying = false;
        while let Some((mut send, mut recv)) = incoming.recv().await {
            if carrying {
                refuse(&mut send, &mut recv, codes::SESSION_EXISTS);
                tracing::warn!(%peer, "refused a second session stream on one connection");
                continue;
            }
            let claim = tokio::time::timeout(
                self.claim_timeout,
                read_claim(&mut recv, &peer, Role::Acceptor),
            )
            .await
            .unwrap_or(Err(ClusterError::Timeout("session handshake")));
            let prefix = match claim {
                Ok(prefix) => prefix,
                Err(e) => {
                    if counts_as_rejection(&e) {
                        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    refuse(&mut send, &mut recv, rejection_code(&e));
                    tracing::warn!(%peer, error = %e, "refused a session stream");
                    continue;
                }
            };
            carrying = true;
            let stream = QuicSessionStream {
                send,
                read: CheckedRead {
                    state: ReadState::Passing {
                        prefix,
                        pos: 0,
                        recv,
                    },
                },
                peer_label: label(&peer, self.conn.id()),
                local_label: self.me.to_string(),
            };
            let opened = self
                .server
                .cast(NodeServerMessage::ConnectionOpenedExternal {
                    stream: Box::new(stream),
                    is_server: true,
                });
            if opened.is_err() {
                tracing::warn!(%peer, "NodeServer gone; closing the connection");
                self.conn
                    .close_with(codes::SESSION_LOST, b"node server gone");
                return;
            }
        }
    }
}

/// Refuses every session stream offered on `conn` with `code` until it closes.
pub(super) async fn refuse_all(
    mut incoming: tokio::sync::mpsc::Receiver<SessionStream>,
    conn: &Connection,
    code: u32,
) {
    while let Some((mut send, mut recv)) = incoming.recv().await {
        refuse(&mut send, &mut recv, code);
        tracing::warn!(peer = %conn.peer(), "refused a session stream from the wrong side");
    }
}

fn counts_as_rejection(e: &ClusterError) -> bool {
    matches!(
        e,
        ClusterError::SessionIdentity { .. }
            | ClusterError::SessionProtocol { .. }
            | ClusterError::FrameTooLarge { .. }
            | ClusterError::Timeout(_)
    )
}

fn rejection_code(e: &ClusterError) -> u32 {
    match e {
        ClusterError::SessionIdentity { .. } | ClusterError::SessionProtocol { .. } => {
            codes::SESSION_IDENTITY
        }
        ClusterError::FrameTooLarge { .. } => codes::FRAME_TOO_LARGE,
        ClusterError::Timeout(_) => codes::TIMEOUT,
        _ => codes::PROTOCOL,
    }
}
