//! The gRPC listener's connections, bounded: at most `max_connections` at once (past it a new
//! connection is closed at once: a client sees UNAVAILABLE and retries), and each must send the
//! HTTP/2 preface within `handshake_timeout` of its opening (a peer that connects and sends
//! nothing, or half a preface, is dropped instead of held for ever). After the preface, HTTP/2
//! keepalive pings find peers that stop answering (`lease_seconds`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// The client connection preface of HTTP/2 (RFC 9113, 3.4).
const PREFACE_BYTES: u64 = 24;

/// Connections open and refused, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    pub open: AtomicU64,
    pub refused: AtomicU64,
    pub handshake_timeouts: AtomicU64,
}

/// Accepts on `listener` until `stop`, yielding guarded connections for tonic.
pub fn incoming(
    listener: TcpListener,
    max_connections: usize,
    handshake_timeout: Duration,
    counts: Arc<ConnectionCounts>,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<Guarded>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        while let Some((stream, _)) = service_kit::http_server::accept(&listener, &stop).await {
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Dropped: closed at once.
                counts.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let _ = stream.set_nodelay(true);
            counts.open.fetch_add(1, Ordering::Relaxed);
            let conn = Guarded {
                stream,
                _slot: slot,
                counts: counts.clone(),
                received: 0,
                handshake: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A connection holding one of the listener's places until it closes.
pub struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    counts: Arc<ConnectionCounts>,
    received: u64,
    /// Until the preface is in.
    handshake: Option<Pin<Box<Sleep>>>,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.counts.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.received += (buf.filled().len() - before) as u64;
        if self.received >= PREFACE_BYTES {
            self.handshake = None;
            return read;
        }
        if let Some(deadline) = self.handshake.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            self.counts
                .handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within handshake_timeout",
            )));
        }
        read
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
