//! The guest's stdout: an in-memory buffer with a hard cap that *remembers* being exceeded.
//!
//! wasmtime-wasi's `MemoryOutputPipe` refuses a write past its capacity with an errno the
//! guest may ignore — a guest that then exits 0 would hand back silently truncated output.
//! Here an over-cap write traps the guest and sets a flag, so the invocation always ends in
//! a typed `output_too_large` error.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

#[derive(Default)]
struct State {
    buf: BytesMut,
    overflowed: bool,
}

#[derive(Clone)]
pub(crate) struct CappedPipe {
    cap: usize,
    state: Arc<Mutex<State>>,
}

impl CappedPipe {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            state: Arc::default(),
        }
    }

    fn append(&self, bytes: &[u8]) -> Result<(), ()> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.overflowed || s.buf.len().saturating_add(bytes.len()) > self.cap {
            s.overflowed = true;
            return Err(());
        }
        s.buf.extend_from_slice(bytes);
        Ok(())
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .overflowed
    }

    /// Everything written, without copying.
    pub(crate) fn take(&self) -> Bytes {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut s.buf).freeze()
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes).map_err(|()| {
            StreamError::Trap(wasmtime::format_err!(
                "guest output exceeds the {}-byte cap",
                self.cap
            ))
        })
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always grant a large permit so that an over-cap write is attempted and caught by
        // `write` (and flagged), rather than refused up front with an ignorable errno.
        Ok(1 << 20)
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(
            self.append(buf)
                .map(|()| buf.len())
                .map_err(|()| io::Error::other("guest output exceeds the cap")),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
