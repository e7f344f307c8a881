//! The adapter between a name-checked QUIC session stream and ractor_cluster's external
//! transport ([`ClusterBidiStream`]): the read half first waits for the name check (opening
//! side) and then replays the bytes the check read before reading the stream itself, so
//! ractor_cluster sees the stream whole and only once it passed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use quinn::{RecvStream, SendStream};
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream};
use tokio::io::{AsyncRead, ReadBuf};

pub(super) type ClaimFuture =
    Pin<Box<dyn Future<Output = io::Result<(Vec<u8>, RecvStream)>> + Send>>;

/// The read half given to ractor_cluster: first (on the opening side) the name check, then the
/// bytes it read, then the QUIC stream itself.
pub(super) struct CheckedRead {
    pub(super) state: ReadState,
}

pub(super) enum ReadState {
    Checking(ClaimFuture),
    Passing {
        prefix: Vec<u8>,
        pos: usize,
        recv: RecvStream,
    },
    Failed,
}

impl AsyncRead for CheckedRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                ReadState::Checking(check) => match check.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok((prefix, recv))) => {
                        this.state = ReadState::Passing {
                            prefix,
                            pos: 0,
                            recv,
                        };
                    }
                    Poll::Ready(Err(e)) => {
                        this.state = ReadState::Failed;
                        return Poll::Ready(Err(e));
                    }
                },
                ReadState::Passing { prefix, pos, recv } => {
                    if *pos < prefix.len() {
                        let n = buf.remaining().min(prefix.len() - *pos);
                        buf.put_slice(&prefix[*pos..*pos + n]);
                        *pos += n;
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(recv).poll_read(cx, buf);
                }
                ReadState::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "session stream failed the name check",
                    )));
                }
            }
        }
    }
}

/// A name-checked QUIC session stream, as ractor_cluster's external transport.
pub(super) struct QuicSessionStream {
    pub(super) send: SendStream,
    pub(super) read: CheckedRead,
    pub(super) peer_label: String,
    pub(super) local_label: String,
}

impl ClusterBidiStream for QuicSessionStream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        (Box::new(self.read), Box::new(self.send))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer_label.clone())
    }

    fn local_label(&self) -> Option<String> {
        Some(self.local_label.clone())
    }
}
