//! Accepting connections and serving each within the `[api]` limits.
//!
//! `axum::serve` keeps a connection as long as the client likes: no header, idle or
//! response deadline, and no cap on how many. Here hyper serves each connection
//! (HTTP/1.1) and a watchdog beside it knows the connection's phase:
//!
//! | phase | from | limit |
//! |---|---|---|
//! | head | the connection's opening, or the first byte of a later request | `header_timeout` |
//! | handler | the head parsed (the body is read by the handler) | `request_timeout`, answered 408 |
//! | response | the handler's answer | `request_timeout` for the client to read it |
//! | idle | the answer written, keep-alive | `idle_timeout` |
//!
//! hyper's own `header_read_timeout` is not used: its clock restarts when a kept-alive
//! connection goes idle, so it cannot tell a slowloris from a client that is merely
//! between requests, and it never bounds a client that stops reading an answer.
//!
//! With TLS, the handshake counts as part of the first head: handshake and head
//! together must arrive within `header_timeout`.
//!
//! A semaphore caps the connections served at once; one accepted beyond it is closed
//! at once (and counted), so idle clients cannot take the descriptors that the audit
//! log and playbook reloads need.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{header, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower_service::Service as _;
use tracing::{debug, error, warn};

use super::auth::Throttle;
use super::tls::Reloading;
use crate::config::ApiConfig;
use crate::metrics::{HttpTimeout, Metrics};

/// The time limits, copied out of the settings for every connection.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header: Duration,
    request: Duration,
    idle: Duration,
}

/// hyper's read and write buffers per connection: a webhook body streams through, so
/// 64 KiB is plenty, and the cap times this bounds the server's buffer memory.
const MAX_BUF: usize = 64 * 1024;

/// The shortest gap between two log lines about refused connections.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` and serves `app` on each until `shutdown`
/// resolves; then stops accepting, closes the connections that are between requests,
/// lets the others finish their request, and returns when all are closed.
pub(super) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    settings: &ApiConfig,
    metrics: Arc<Metrics>,
    tls: Option<Arc<Reloading>>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = Limits {
        header: settings.header_timeout,
        request: settings.request_timeout,
        idle: settings.idle_timeout,
    };
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let refusals = Throttle::default();
    let acceptor = tls.as_ref().map(Reloading::acceptor);
    let reloader = tls.map(|t| tokio::spawn(t.watch()));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            // The client gave up between its SYN and our accept: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Typically EMFILE: accepting again at once would spin.
                error!(error = %e, "cannot accept a connection; retrying in 1s");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            metrics.http().connection_refused();
            if let Some(unlogged) = refusals.ready(LOG_EVERY) {
                warn!(
                    max_connections = settings.max_connections,
                    refused_since_last_line = unlogged,
                    peer = %peer,
                    "connection cap reached: new connections are closed at once"
                );
            }
            continue;
        };
        connections.spawn(connection(
            stream,
            peer,
            acceptor.clone(),
            app.clone(),
            limits,
            metrics.clone(),
            stop_rx.clone(),
            permit,
        ));
    }
    drop(listener);
    if let Some(r) = reloader {
        r.abort();
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Errors of one incoming connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection, holding its permit: the TLS handshake if any, then HTTP.
#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    metrics.http().connection_opened();
    let _open = Open(metrics.clone());
    let opened = Instant::now();
    let Some(acceptor) = tls else {
        return serve_one(stream, peer, opened, app, limits, metrics, stop).await;
    };
    let handshake = tokio::select! {
        h = tokio::time::timeout(limits.header, acceptor.accept(stream)) => h,
        _ = stop.wait_for(|s| *s) => return,
    };
    match handshake {
        Ok(Ok(stream)) => serve_one(stream, peer, opened, app, limits, metrics, stop).await,
        // Scanners and plain-HTTP clients: not worth more than a debug line.
        Ok(Err(e)) => debug!(peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            metrics.http().timed_out(HttpTimeout::Header);
            debug!(peer = %peer, "TLS handshake timed out");
        }
    }
}

/// Serves HTTP on one connection until it ends, a limit runs out, or the server stops.
async fn serve_one<S>(
    stream: S,
    peer: SocketAddr,
    opened: Instant,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The first head's clock started when the connection opened, handshake included.
    let activity = Arc::new(Activity::new(opened));
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        let metrics = metrics.clone();
        hyper::service::service_fn(move |request| {
            handle(
                request,
                app.clone(),
                peer,
                activity.clone(),
                limits.request,
                metrics.clone(),
            )
        })
    };
    let conn = http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(MAX_BUF)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = activity.changed.notified() => {}
            _ = sleep_until(deadline) => {
                // The phase may have moved on while this slept: recheck.
                if let Some((at, limit)) = activity.deadline(&limits) {
                    if at <= Instant::now() {
                        metrics.http().timed_out(limit);
                        debug!(peer = %peer, limit = limit.as_str(), "connection closed: time limit");
                        return;
                    }
                }
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                if activity.between_requests() {
                    return;
                }
                // Finishes the request in flight (within its limits), then closes.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<(Instant, HttpTimeout)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs one request through the router within the request limit, and tracks the phase.
async fn handle(
    request: Request<Incoming>,
    mut app: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
    limit: Duration,
    metrics: Arc<Metrics>,
) -> Result<Response<Body>, Infallible> {
    activity.set(Phase::Handler);
    let mut request = request.map(Body::new);
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = match tokio::time::timeout(limit, app.call(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => {
            metrics.http().timed_out(HttpTimeout::Request);
            debug!(peer = %peer, "request timed out: 408");
            (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                "request timed out\n",
            )
                .into_response()
        }
    };
    activity.set(Phase::Response(Instant::now()));
    let guard = IdleWhenDropped(activity);
    Ok(response.map(|inner| {
        Body::new(Tracked {
            inner,
            _guard: guard,
        })
    }))
}

/// Where a connection is in its request cycle, and since when.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's head.
    Head(Instant),
    /// The router is handling a request (bounded by the handler's own timeout).
    Handler,
    /// The answer is being written.
    Response(Instant),
    /// Between requests, nothing received yet.
    Idle(Instant),
}

/// A connection's phase, shared by the socket, the service and the watchdog.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    /// Wakes the watchdog when the phase changes (one waiter: a permit is kept).
    changed: Notify,
}

impl Activity {
    fn new(opened: Instant) -> Self {
        Activity {
            phase: Mutex::new(Phase::Head(opened)),
            changed: Notify::new(),
        }
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
        self.changed.notify_one();
    }

    /// Bytes arrived: on an idle connection, a request's head has begun.
    fn received(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// When the current phase runs out, and which limit that is.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, HttpTimeout)> {
        // A limit too far to reach (beyond what `check` allows) is no limit.
        let after = |t: Instant, d, limit| Some((t.checked_add(d)?, limit));
        match *self.phase.lock().unwrap_or_else(PoisonError::into_inner) {
            Phase::Head(t) => after(t, limits.header, HttpTimeout::Header),
            Phase::Handler => None,
            Phase::Response(t) => after(t, limits.request, HttpTimeout::Response),
            Phase::Idle(t) => after(t, limits.idle, HttpTimeout::Idle),
        }
    }

    /// No request has started or is being answered: closing loses nothing.
    fn between_requests(&self) -> bool {
        matches!(
            *self.phase.lock().unwrap_or_else(PoisonError::into_inner),
            Phase::Head(_) | Phase::Idle(_)
        )
    }
}

/// Marks the connection idle when the answer's body is done with (written or dropped).
struct IdleWhenDropped(Arc<Activity>);

impl Drop for IdleWhenDropped {
    fn drop(&mut self) {
        self.0.set(Phase::Idle(Instant::now()));
    }
}

/// Counts the connection as closed when its task ends, however it ends.
struct Open(Arc<Metrics>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.http().connection_closed();
    }
}

/// A response body that holds an [`IdleWhenDropped`].
struct Tracked {
    inner: Body,
    _guard: IdleWhenDropped,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, telling the connection's [`Activity`] when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
