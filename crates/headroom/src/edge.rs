//! The HTTP edge: accepts connections and serves them with hyper (HTTP/1.1, and HTTP/2
//! with prior knowledge), under a cap on connections at once, a header-read timeout and an
//! idle timeout (`[server]` in the config).
//!
//! `axum::serve` has none of these: a client that opened a connection and sent half a
//! request head, or nothing, kept it (and a file descriptor) forever, and ~20,000 of them
//! left `/healthz` unanswered for everyone.
//!
//! - A new connection must send a whole request head within `header_read_timeout`.
//! - On an HTTP/1.1 keep-alive connection, the wait for the next request may last
//!   `idle_timeout`; once its first byte arrives, the head must be whole within
//!   `header_read_timeout`. hyper's own header-read timer counts from the start of the wait,
//!   which would make the two one value; [`HeadTimer`] only tells the connection's watchdog
//!   when a wait begins, and the watchdog times both phases.
//! - An HTTP/2 connection with nothing read or written for `idle_timeout` is shut down
//!   gracefully (GOAWAY; open streams finish).
//! - At most `max_connections` are served at once. While all are taken the listener stops
//!   accepting, so new clients wait in the kernel's backlog (not refused, not dropped) and are
//!   served as soon as one closes.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::cfg::ServerLimits;

/// What serves each connection's requests (`crate::http::Service`).
pub trait RequestService:
    hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<crate::http::ResponseBody>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> RequestService for S where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::http::ResponseBody>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves `service` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// connection finish the requests in progress, and returns once all are closed.
pub async fn serve<S>(
    service: S,
    listener: TcpListener,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: RequestService,
{
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut full_since: Option<Instant> = None;
    loop {
        // A slot first: with none free, connections wait in the backlog, not in Headroom.
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if full_since.is_none() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached: new connections wait until one closes \
                         ([server] max_connections)"
                    );
                    full_since = Some(now());
                }
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => permit.expect("never closed"),
                    _ = &mut shutdown => break,
                }
            }
        };
        if let Some(since) = full_since.take() {
            tracing::info!(
                full_for_ms = since.elapsed().as_millis() as u64,
                "a connection slot is free again"
            );
        }
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // As nginx's `tcp_nodelay on`: an answer goes out when written, not held back by
        // Nagle's algorithm waiting for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(
            tcp,
            service.clone(),
            Arc::clone(&limits),
            stopping.clone(),
            permit,
        ));
    }
    drop(listener);
    // Every connection finishes what it is doing and closes; each holds a slot until then,
    // for at most the grace.
    let _ = stop.send(());
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            connections = limits.max_connections - slots.available_permits(),
            "connections still busy at the end of the shutdown grace are cut"
        );
    }
    Ok(())
}

async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return; // that client's problem, not the listener's
    }
    // Most likely out of file descriptors: wait for some to close rather than spin.
    tracing::error!(error = %e, "cannot accept a connection; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn serve_connection<S: RequestService>(
    tcp: TcpStream,
    service: S,
    limits: Arc<ServerLimits>,
    mut stopping: watch::Receiver<()>,
    _slot: OwnedSemaphorePermit,
) {
    let accepted = now();
    let activity = Arc::new(Activity::default());
    // The first head is awaited from the moment of the accept.
    activity
        .waiting_since
        .store(stamp(accepted), Ordering::Relaxed);
    let io = TokioIo::new(Watched {
        inner: tcp,
        activity: Arc::clone(&activity),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(HeadTimer {
            activity: Arc::clone(&activity),
        })
        .header_read_timeout(limits.header_read_timeout);
    let service = HeadRead {
        inner: service,
        activity: Arc::clone(&activity),
    };
    let mut conn = pin!(builder.serve_connection_with_upgrades(io, service));
    // Every wait of the connection is timed here, from what `Activity` records: one timer per
    // connection, which sleeps until the watchdog must look again (see `Activity::due`),
    // rather than a timer per request head.
    let mut watchdog = pin!(tokio::time::sleep(limits.header_read_timeout));
    let mut stop = pin!(async move {
        let _ = stopping.changed().await;
    });
    // The stop signal and the watchdog are polled only when their own waker fired: a
    // `select!` would poll both each time the connection's task wakes (a few times per
    // request).
    let side = Arc::new(SideWake {
        fired: AtomicBool::new(true),
        task: futures_util::task::AtomicWaker::new(),
    });
    let side_waker = Waker::from(Arc::clone(&side));
    let (mut watching, mut closing) = (true, false);
    let ended = std::future::poll_fn(|cx| {
        side.task.register(cx.waker());
        // The connection first: a head that arrived in time is read (and its wait over)
        // before the watchdog looks, however late this task runs.
        if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(ended));
        }
        if !side.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut side_cx = Context::from_waker(&side_waker);
        let was_closing = closing;
        if !closing && stop.as_mut().poll(&mut side_cx).is_ready() {
            conn.as_mut().graceful_shutdown();
            closing = true;
        }
        while watching && watchdog.as_mut().poll(&mut side_cx).is_ready() {
            let now = now();
            match activity.due(accepted, &limits, now) {
                (Some(deadline), _) if now >= deadline => {
                    if activity.protocol() == Protocol::Http1 {
                        // A request head not whole in time (or no next request within the
                        // idle timeout): closed, as hyper's own header-read timeout would.
                        return Poll::Ready(None);
                    }
                    if !closing {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    watching = false;
                }
                // Polled again by the loop, which arms it.
                (_, look) => watchdog.as_mut().reset(look.into()),
            }
        }
        if closing && !was_closing {
            // Shutting down is the connection's to do now.
            return conn.as_mut().poll(cx).map(Some);
        }
        Poll::Pending
    })
    .await;
    match ended {
        None => tracing::debug!("no whole request head in time: connection closed"),
        Some(Err(e)) => tracing::debug!(error = %e, "connection closed with an error"),
        Some(Ok(())) => {}
    }
}

/// Wakes a connection's task for its stop signal or its watchdog, and says so.
struct SideWake {
    fired: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Now, on tokio's clock (which tests can pause), as the `std` instant hyper's timer takes.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A process-wide origin for the nanosecond stamps kept in atomics.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(now)
}

/// `now` as nanoseconds after `origin()`, plus one: 0 stands for "never".
fn stamp(now: Instant) -> u64 {
    now.saturating_duration_since(origin()).as_nanos() as u64 + 1
}

fn unstamp(stamp: u64) -> Instant {
    origin() + Duration::from_nanos(stamp.saturating_sub(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Unknown,
    Http1,
    Http2,
}

/// What a connection's I/O has done, shared by its socket, its header timer and its watchdog.
#[derive(Default)]
struct Activity {
    /// Stamp of the last byte read or written; kept for HTTP/2 and undecided connections only
    /// (an HTTP/1 one stamps only the first bytes of each head, in `first_read`).
    last_io: AtomicU64,
    /// Stamp of the first byte read since the connection began waiting for a request head
    /// (0: none yet).
    first_read: AtomicU64,
    /// `HTTP1` or `HTTP2` once the first bytes tell; below, how much of the HTTP/2 preface
    /// they matched so far.
    protocol: AtomicU8,
    /// HTTP/1: stamp of when the connection began waiting for the current request head
    /// (0: not waiting; a request is being served).
    waiting_since: AtomicU64,
    /// HTTP/1: whether the current wait is for a later request than the first.
    later_head: AtomicBool,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HTTP1: u8 = 100;
const HTTP2: u8 = 200;

impl Activity {
    fn protocol(&self) -> Protocol {
        match self.protocol.load(Ordering::Relaxed) {
            HTTP1 => Protocol::Http1,
            HTTP2 => Protocol::Http2,
            _ => Protocol::Unknown,
        }
    }

    /// When the connection's current wait must end (`None`: no wait, an HTTP/1 request is
    /// being served), and when the watchdog looks next: by then no deadline can have passed
    /// unseen. A wait that begins, or a first byte that arrives, after `now` ends
    /// `header_read_timeout` (or the idle timeout, if shorter) after it at the earliest.
    fn due(
        &self,
        accepted: Instant,
        limits: &ServerLimits,
        now: Instant,
    ) -> (Option<Instant>, Instant) {
        let soonest = now + limits.header_read_timeout.min(limits.idle_timeout);
        let deadline = match self.protocol() {
            Protocol::Unknown => accepted + limits.header_read_timeout,
            Protocol::Http2 => self.last_io() + limits.idle_timeout,
            Protocol::Http1 => match self.waiting_since.load(Ordering::Relaxed) {
                0 => return (None, soonest),
                _ if !self.later_head.load(Ordering::Relaxed) => {
                    accepted + limits.header_read_timeout
                }
                since => match self.first_read.load(Ordering::Relaxed) {
                    // No byte yet: the idle timeout, unless a first byte comes first.
                    0 => {
                        let idle = unstamp(since) + limits.idle_timeout;
                        return (Some(idle), idle.min(soonest));
                    }
                    first => unstamp(first) + limits.header_read_timeout,
                },
            },
        };
        (Some(deadline), deadline)
    }

    fn last_io(&self) -> Instant {
        unstamp(self.last_io.load(Ordering::Relaxed))
    }

    fn read(&self, bytes: &[u8]) {
        // `last_io` times only HTTP/2 and undecided connections, and an HTTP/1 one needs
        // the clock only for the first bytes of each head: most reads need no clock.
        let state = self.protocol.load(Ordering::Relaxed);
        let first = self.first_read.load(Ordering::Relaxed) == 0;
        if state != HTTP1 || first {
            let now = stamp(now());
            self.last_io.store(now, Ordering::Relaxed);
            if first {
                self.first_read.store(now, Ordering::Relaxed);
            }
        }
        if state < HTTP1 {
            // Below HTTP1, the state is how much of the HTTP/2 preface has been seen.
            let seen = state as usize;
            let rest = &H2_PREFACE[seen..];
            let n = bytes.len().min(rest.len());
            let next = if bytes[..n] != rest[..n] {
                HTTP1
            } else if seen + n == H2_PREFACE.len() {
                HTTP2
            } else {
                (seen + n) as u8
            };
            self.protocol.store(next, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        if self.protocol.load(Ordering::Relaxed) != HTTP1 {
            self.last_io.store(stamp(now()), Ordering::Relaxed);
        }
    }
}

/// A socket that records its activity.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper's HTTP/1 header-read timer for one connection: hyper asks it for a sleep each time
/// the connection begins waiting for a request head. It records when the wait began (and
/// forgets the first byte of the last head) for the watchdog in `serve_connection`, which
/// times the wait; the sleep it gives hyper never ends by itself. The first wait is timed
/// from the accept.
struct HeadTimer {
    activity: Arc<Activity>,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, _: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // Not used for HTTP/1 server connections.
        Box::pin(Never)
    }

    fn sleep_until(&self, _: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let activity = &self.activity;
        if activity.waiting_since.load(Ordering::Relaxed) == 0 {
            // A request was served: this is a later head. Bytes read from here on belong
            // to it.
            activity.later_head.store(true, Ordering::Relaxed);
            activity.first_read.store(0, Ordering::Relaxed);
            activity
                .waiting_since
                .store(stamp(now()), Ordering::Relaxed);
        }
        // Zero-sized: boxing it allocates nothing.
        Box::pin(Never)
    }
}

/// A sleep that never ends (see [`HeadTimer`]).
struct Never;

impl Future for Never {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl hyper::rt::Sleep for Never {}

/// The connection's service, telling its `Activity` that a request head was read (the wait
/// for it is over).
#[derive(Clone)]
struct HeadRead<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: RequestService> hyper::service::Service<http::Request<hyper::body::Incoming>>
    for HeadRead<S>
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> S::Future {
        self.activity.waiting_since.store(0, Ordering::Relaxed);
        self.inner.call(request)
    }
}

pin_project_lite::pin_project! {
    /// A request body that must arrive whole by a deadline: a client that announces a body
    /// and sends it slowly, or never, does not hold its connection (and a slot under the
    /// connection cap, and any room it was given) for longer than that.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        #[pin]
        deadline: tokio::time::Sleep,
    }
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, within: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: tokio::time::sleep(within),
        }
    }
}

/// The error a [`DeadlineBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTooSlow;

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware for Headroom's own routes: the request's body must arrive within
/// `[server] body_read_timeout`.
pub async fn body_deadline(
    axum::extract::State(within): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let request = request.map(|body| axum::body::Body::new(DeadlineBody::new(body, within)));
    next.run(request).await
}
