//! The one HTTP server of every service (the gateway's API and every admin listener, the
//! dashboard): the limits a client meets before any handler runs, while its answer is written,
//! and the end of serving on shutdown.
//!
//! `axum::serve` sets no header-read timeout, no write deadline, no connection cap and no
//! header-size bound; this is the same accept loop on hyper with those set:
//! - **Header-read timeout** (`header_read_timeout`): from a connection's opening, or from the
//!   first byte of each later request, to the end of the request head. A client trickling its
//!   headers (slowloris) is cut off at that point. hyper has one timer for both this and the idle
//!   wait between requests; a proxy in front keeps idle connections for a minute or more and must
//!   be the side that closes them (else it may send a request on a connection being closed, and
//!   answer 502), so hyper's timer is the idle timeout and the head's bound is [`ConnGuard`].
//! - **Idle timeout** (`idle_timeout`): a kept-alive connection with no request is closed.
//! - **Header size**: hyper refuses a head over twice `max_header_bytes` outright (a bare `431`);
//!   under that, the router's own check answers `431` with a problem.
//! - **Write stall** (`write_stall_timeout`): an answer whose bytes the client stops taking for
//!   that long closes the connection (a client that asked for a large page and never reads held
//!   the connection and its send buffers for ever). Each connection's kernel send buffer is
//!   fixed at `send_buffer_bytes`: with the kernel's autotuning, a loopback or LAN connection
//!   takes a couple of MB at once, so a large answer to a client that never reads left hyper's
//!   hands at once (no stall to see) and sat in kernel memory until the idle timeout.
//! - **Answer deadline** (`answer_timeout`): an answer (but a server-sent event stream, which
//!   has its own bound) must be sent whole within that long of its head, however slowly the
//!   client reads.
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
    /// No byte of an answer taken by the client for this long: the connection closes.
    pub write_stall_timeout: Duration,
    /// An answer (not an event stream) not sent whole this long after its head: likewise.
    pub answer_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Each connection's kernel send buffer (`SO_SNDBUF`; Linux doubles it): what an answer may
    /// leave with the kernel for a client that does not read, and the window a distant client
    /// downloads through (128 KiB at 100 ms round trip: 2.5 MB/s).
    pub send_buffer_bytes: usize,
    /// `Retry-After` of the answer to a connection past the cap.
    pub retry_after_seconds: u64,
    /// Who answers (`gateway`, `dashboard`, `worker admin`): named in the refusal past the cap.
    pub service: &'static str,
}

impl ServerLimits {
    /// The limits of an admin listener (probes and metrics): a few connections, short deadlines.
    pub fn admin(service: &'static str) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(75),
            write_stall_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(30),
            max_header_bytes: 8 * 1024,
            max_connections: 64,
            send_buffer_bytes: 128 * 1024,
            retry_after_seconds: 1,
            service,
        }
    }
}

/// The next connection on `listener`, or `None` once `stop` is cancelled. A failed accept (out
/// of file descriptors and the like) is logged and tried again shortly: the listener stays.
pub async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// A listener on `addr` whose accept queue holds `backlog` connections (the kernel caps it at
/// `net.core.somaxconn`): a burst of connections larger than the default queue of 1,024 would
/// otherwise wait for SYN retransmissions, seconds each.
pub async fn bind(addr: impl tokio::net::ToSocketAddrs, backlog: u32) -> io::Result<TcpListener> {
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
    let refusal = Arc::new(refusal(limits.service, limits.retry_after_seconds));
    while let Some((stream, peer)) = accept(&listener, &stop).await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            tokio::spawn(refuse(stream, refusal.clone()));
            continue;
        };
        metrics.open.inc();
        let open = metrics.open.clone();
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(limits.send_buffer_bytes);
        let phase = Arc::new(Phase::default());
        let io = ConnGuard::new(stream, &limits, phase.clone());
        let service = connection_service(router.clone(), peer, phase);
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

/// Where a connection is in its request/answer cycle, shared by the router's side (which knows
/// when a head is in and what the answer is) and the socket's guard (which enforces the
/// deadlines).
#[derive(Default)]
pub struct Phase {
    /// Waiting for a request head (no request in progress).
    idle: AtomicBool,
    /// The answer being sent is an event stream (bounded by its own handler, not here).
    streaming: AtomicBool,
    /// When the current answer's head was handed to hyper (ms since `epoch`); 0: none yet.
    answer_from_ms: std::sync::atomic::AtomicU64,
    epoch: std::sync::OnceLock<tokio::time::Instant>,
}

impl Phase {
    fn epoch(&self) -> tokio::time::Instant {
        *self.epoch.get_or_init(tokio::time::Instant::now)
    }

    fn begin_answer(&self, streaming: bool) {
        self.streaming.store(streaming, Ordering::Release);
        let ms = self.epoch().elapsed().as_millis().max(1) as u64;
        self.answer_from_ms.store(ms, Ordering::Release);
    }

    /// When the answer being sent must be done by, if it has a deadline.
    fn answer_deadline(&self, limit: Duration) -> Option<tokio::time::Instant> {
        if self.streaming.load(Ordering::Acquire) {
            return None;
        }
        match self.answer_from_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.epoch() + Duration::from_millis(ms) + limit),
        }
    }

    /// A request's head is in: no answer yet.
    fn begin_request(&self) {
        self.idle.store(false, Ordering::Release);
        self.answer_from_ms.store(0, Ordering::Release);
        self.streaming.store(false, Ordering::Release);
    }

    /// The answer's body has been handed over. hyper may still be writing what it took of it
    /// (a 1.5 MB body is one frame), so the answer's deadline stays until the next request.
    fn end_answer(&self) {
        self.idle.store(true, Ordering::Release);
    }
}

/// The router for one connection: the peer's address goes into each request (as axum's
/// `ConnectInfo`), and the guard learns when a request's head is in, when its answer starts (and
/// whether it is an event stream) and when it has been sent.
fn connection_service(
    router: Router,
    peer: SocketAddr,
    phase: Arc<Phase>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<AnswerBody>,
    Error = Infallible,
    Future: Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        phase.begin_request();
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        let phase = phase.clone();
        // Boxed: the connection's task then holds a pointer while it waits for a request, not
        // room for the largest handler's state (a few KB per idle connection).
        Box::pin(async move {
            let response = router.oneshot(request.map(Body::new)).await?;
            let streaming = response
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            phase.begin_answer(streaming);
            Ok(response.map(|inner| AnswerBody { inner, phase }))
        })
    })
}

/// A response body that tells the guard, once it has been sent (or dropped), that the
/// connection waits for its next request head.
pub struct AnswerBody {
    inner: Body,
    phase: Arc<Phase>,
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
        self.phase.end_answer();
    }
}

/// The answer to a connection past the cap, written once.
fn refusal(service: &str, retry_after_seconds: u64) -> Vec<u8> {
    let body = serde_json::json!({
        "type": "/problems/too-many-connections",
        "title": "Service Unavailable",
        "status": 503,
        "detail": format!("the {service} holds as many connections as it is configured for (max_connections); try again shortly"),
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

/// The socket of one connection, with its deadlines: the time from the first byte of a request
/// head (or the connection's opening) to the end of the head; while an answer is written, the
/// time without progress (`write_stall_timeout`) and the time since the answer's head
/// (`answer_timeout`, not for event streams). Past one, reads or writes fail and hyper closes
/// the connection. Bodies and handlers have the request timeout.
pub struct ConnGuard<T> {
    io: T,
    head_limit: Duration,
    stall_limit: Duration,
    answer_limit: Duration,
    phase: Arc<Phase>,
    head_deadline: Option<Pin<Box<Sleep>>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> ConnGuard<T> {
    pub fn new(io: T, limits: &ServerLimits, phase: Arc<Phase>) -> Self {
        phase.idle.store(true, Ordering::Release);
        Self {
            io,
            head_limit: limits.header_read_timeout,
            stall_limit: limits.write_stall_timeout,
            answer_limit: limits.answer_timeout,
            phase,
            // The first request's head is timed from the connection's opening.
            head_deadline: Some(Box::pin(tokio::time::sleep(limits.header_read_timeout))),
            write_deadline: None,
        }
    }

    /// The earlier of "no progress since now" and the answer's own deadline.
    fn arm_write_deadline(&mut self) {
        let stall = tokio::time::Instant::now() + self.stall_limit;
        let at = match self.phase.answer_deadline(self.answer_limit) {
            Some(answer) => stall.min(answer),
            None => stall,
        };
        match &mut self.write_deadline {
            Some(d) => d.as_mut().reset(at),
            None => self.write_deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if !self.phase.idle.load(Ordering::Acquire) {
            self.head_deadline = None;
            return read;
        }
        if self.head_deadline.is_none() && buf.filled().len() > before {
            let limit = self.head_limit;
            self.head_deadline = Some(Box::pin(tokio::time::sleep(limit)));
        }
        if let Some(deadline) = self.head_deadline.as_mut()
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

impl<T: AsyncWrite + Unpin> ConnGuard<T> {
    /// One write attempt under the write deadlines: progress re-arms the stall timer; a write
    /// that waits past a deadline fails.
    fn guarded<R>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
        progressed: impl Fn(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        if let Some(at) = self.phase.answer_deadline(self.answer_limit)
            && tokio::time::Instant::now() >= at
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "answer not sent within answer_timeout",
            )));
        }
        match write(Pin::new(&mut self.io), cx) {
            Poll::Ready(Ok(r)) => {
                if progressed(&r) {
                    self.write_deadline = None;
                }
                Poll::Ready(Ok(r))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.write_deadline.is_none() {
                    self.arm_write_deadline();
                }
                if let Some(d) = self.write_deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took no part of the answer within write_stall_timeout (or answer_timeout)",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.guarded(cx, |io, cx| io.poll_write(cx, buf), |n| *n > 0)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guarded(cx, |io, cx| io.poll_flush(cx), |_| true)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guarded(cx, |io, cx| io.poll_write_vectored(cx, bufs), |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
