//! The HTTP server around a router: the limits a client meets before any handler runs, and the
//! end of serving on shutdown.
//!
//! `axum::serve` sets no header-read timeout, no connection cap and no header-size bound; this
//! is the same accept loop on hyper with those set:
//! - **Header-read timeout** (`header_read_timeout`): from a connection's opening, or from the
//!   first byte of each later request, to the end of the request head. A client trickling its
//!   headers (slowloris) is cut off at that point. hyper has one timer for both this and the idle
//!   wait between requests; a proxy in front keeps idle connections for a minute or more and must
//!   be the side that closes them (else it may send a request on a connection being closed, and
//!   answer 502), so hyper's timer is the idle timeout and the head's bound is [`HeadGuard`].
//! - **Idle timeout** (`idle_timeout`): a kept-alive connection with no request is closed.
//! - **Header size**: hyper refuses a head over twice `max_header_bytes` outright (a bare `431`);
//!   under that, the router's own check answers `431` with a problem.
//! - **Connection cap** (`max_connections`): past it a connection gets a `503` problem with
//!   `Retry-After` and is closed, without a task or buffers of its own.
//!
//! HTTP/1.1 only: ingress controllers and load balancers speak it to their backends, and hyper's
//! protocol detection for HTTP/2 without TLS has no timer (a peer sending half a preface would
//! be held for ever).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The limits of one listener.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// `Retry-After` of the answer to a connection past the cap.
    pub retry_after_seconds: u64,
}

/// A listener on `addr` whose accept queue holds `backlog` connections (the kernel caps it at
/// `net.core.somaxconn`): a burst of connections larger than the default queue of 1,024 would
/// otherwise wait for SYN retransmissions, seconds each.
pub async fn bind(addr: &str, backlog: u32) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a) {
            Ok(()) => return socket.listen(backlog),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Open connections and refusals, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    pub open: prometheus_client::metrics::gauge::Gauge,
    pub refused: prometheus_client::metrics::counter::Counter,
}

/// Serves `router` on `listener` until `stop`, then lets open requests finish (kept-alive
/// connections are closed once their current request is answered) for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
    grace: Duration,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        // hyper's floor for its buffer bound is 8 KiB.
        .max_header_size((limits.max_header_bytes * 2).max(8192))
        .max_buf_size((limits.max_header_bytes * 2).max(8192));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusal = Arc::new(refusal(limits.retry_after_seconds));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: the listener stays; try again shortly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            tokio::spawn(refuse(stream, refusal.clone()));
            continue;
        };
        metrics.open.inc();
        let open = metrics.open.clone();
        let _ = stream.set_nodelay(true);
        let awaiting_head = Arc::new(AtomicBool::new(true));
        let io = HeadGuard::new(stream, limits.header_read_timeout, awaiting_head.clone());
        let service = connection_service(router.clone(), peer, awaiting_head);
        let conn = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            let _ = conn.await;
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => tracing::warn!("connections still open at the end of the grace period"),
    }
}

/// The router for one connection: the peer's address goes into each request (as axum's
/// `ConnectInfo`), and the head guard learns when a request's head is in and when its answer
/// has been sent.
fn connection_service(
    router: Router,
    peer: SocketAddr,
    awaiting_head: Arc<AtomicBool>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<AnswerBody>,
    Error = Infallible,
    Future: Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        awaiting_head.store(false, Ordering::Release);
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        let awaiting_head = awaiting_head.clone();
        // Boxed: the connection's task then holds a pointer while it waits for a request, not
        // room for the largest handler's state (a few KB per idle connection).
        Box::pin(async move {
            let response = router.oneshot(request.map(Body::new)).await?;
            Ok(response.map(|inner| AnswerBody {
                inner,
                awaiting_head,
            }))
        })
    })
}

/// A response body that tells the head guard, once it has been sent (or dropped), that the
/// connection waits for its next request head.
pub struct AnswerBody {
    inner: Body,
    awaiting_head: Arc<AtomicBool>,
}

impl http_body::Body for AnswerBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AnswerBody {
    fn drop(&mut self) {
        self.awaiting_head.store(true, Ordering::Release);
    }
}

/// The answer to a connection past the cap, written once.
fn refusal(retry_after_seconds: u64) -> Vec<u8> {
    let body = serde_json::json!({
        "type": "/problems/too-many-connections",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "the gateway holds as many connections as it is configured for (max_connections); try again shortly",
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: {retry_after_seconds}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn refuse(mut stream: TcpStream, answer: Arc<Vec<u8>>) {
    // Bounded: a peer that does not read must not hold this task.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
}

/// Bounds the time from the first byte of a request head (or the connection's opening) to the
/// end of the head: past it, reads fail and hyper closes the connection. Between a head's end
/// and the end of its answer (`awaiting_head` false) the guard is off: bodies and handlers have
/// the request timeout.
pub struct HeadGuard<T> {
    io: T,
    limit: Duration,
    awaiting_head: Arc<AtomicBool>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> HeadGuard<T> {
    pub fn new(io: T, limit: Duration, awaiting_head: Arc<AtomicBool>) -> Self {
        Self {
            io,
            limit,
            awaiting_head,
            // The first request's head is timed from the connection's opening.
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if !self.awaiting_head.load(Ordering::Acquire) {
            self.deadline = None;
            return read;
        }
        if self.deadline.is_none() && buf.filled().len() > before {
            let limit = self.limit;
            self.deadline = Some(Box::pin(tokio::time::sleep(limit)));
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received within header_read_timeout",
            )));
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
