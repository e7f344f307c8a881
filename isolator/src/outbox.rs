//! Writing frames to the other side of a cell's pipe, for both sides.
//!
//! Each side queues its messages for one writer task. When several are waiting (a busy node
//! or cell), the writer sends them in one `write`: one system call, and one wake-up of the
//! reader on the other side, for many frames.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Frames gathered into one write, at most; a frame that would take a batch past it waits for
/// the next write, and a frame of this size or more is written alone, uncopied.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Writes every message `queue` gives, framed by `frame_of` (`None`: nothing to send for it),
/// until the queue closes or a write fails. Messages already waiting when the writer wakes go
/// out together, in order.
pub async fn write_batched<T, W>(
    queue: &mut mpsc::Receiver<T>,
    writer: &mut W,
    mut frame_of: impl FnMut(T) -> Option<Vec<u8>>,
) where
    W: AsyncWrite + Unpin,
{
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    // A frame taken from the queue that did not fit in the previous batch: it goes first.
    let mut held: Option<Vec<u8>> = None;
    loop {
        let first = match held.take() {
            Some(frame) => frame,
            None => match queue.recv().await {
                Some(message) => match frame_of(message) {
                    Some(frame) => frame,
                    None => continue,
                },
                None => return,
            },
        };
        if first.len() >= BATCH_BYTES {
            if writer.write_all(&first).await.is_err() {
                return;
            }
            continue;
        }
        batch.clear();
        batch.extend_from_slice(&first);
        while let Ok(next) = queue.try_recv() {
            let Some(frame) = frame_of(next) else {
                continue;
            };
            if batch.len() + frame.len() > BATCH_BYTES {
                held = Some(frame);
                break;
            }
            batch.extend_from_slice(&frame);
        }
        if writer.write_all(&batch).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Records the size of every write it is given.
    #[derive(Default)]
    struct Writes {
        sizes: Vec<usize>,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.sizes.push(buf.len());
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frame(message: Vec<u8>) -> Option<Vec<u8>> {
        (!message.is_empty()).then_some(message)
    }

    #[tokio::test]
    async fn waiting_messages_go_out_in_one_write_in_order_and_skipped_ones_not_at_all() {
        let (tx, mut rx) = mpsc::channel(16);
        for m in [
            b"one".to_vec(),
            Vec::new(),
            b"two".to_vec(),
            b"three".to_vec(),
        ] {
            tx.send(m).await.unwrap();
        }
        drop(tx);
        let mut out = Writes::default();
        write_batched(&mut rx, &mut out, frame).await;
        assert_eq!(out.sizes, [11]);
        assert_eq!(out.bytes, b"onetwothree");
    }

    #[tokio::test]
    async fn a_batch_never_passes_the_size_and_a_large_frame_is_written_alone() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(vec![1u8; BATCH_BYTES + 1]).await.unwrap();
        tx.send(vec![2u8; BATCH_BYTES - 10]).await.unwrap();
        tx.send(vec![3u8; 20]).await.unwrap();
        tx.send(vec![4u8; 5]).await.unwrap();
        tx.send(vec![5u8; 3 * BATCH_BYTES]).await.unwrap();
        tx.send(vec![6u8; 7]).await.unwrap();
        drop(tx);
        let mut out = Writes::default();
        write_batched(&mut rx, &mut out, frame).await;
        assert_eq!(
            out.sizes,
            [BATCH_BYTES + 1, BATCH_BYTES - 10, 25, 3 * BATCH_BYTES, 7]
        );
        assert!(out.bytes.windows(2).all(|w| w[0] <= w[1]), "in order");
    }
}
