//! Accepting connections: the HTTP listener with the protections a public
//! server needs and `axum::serve` lacks. Each connection is served by hyper
//! with a header-read timeout (slow-loris; it also closes idle keep-alive
//! connections), each client address may hold a bounded number of
//! connections, and shutdown is graceful: stop accepting, let open requests
//! finish within a deadline, then close.
//!
//! Every connection also has a watchdog ([`close_when_idle`]): one that has
//! not started a request within `limits.header_read_timeout_secs` (nothing
//! sent, half an HTTP/2 preface, a preface and SETTINGS but no stream) or that
//! has had nothing in flight for `limits.idle_timeout_secs` is closed. hyper
//! has neither timer for protocol detection or HTTP/2. Writes that make no
//! progress for `limits.write_timeout_secs` fail ([`WriteTimeout`]), so a
//! client that stops reading a download cannot hold its connection.

use std::collections::HashMap;
use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::config::Limits;

/// Pause after a failed `accept` (typically out of file descriptors), so the
/// loop does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Counts open connections per client address.
#[derive(Debug, Default)]
struct ConnectionSlots {
    /// Open connections by address; entries at zero are removed.
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One taken slot; gives it back when dropped (the connection ended). A
/// WebSocket keeps its connection's slot through the upgrade: requests carry
/// it as an extension ([`ConnectionSlot`]) and the gateway holds a clone.
///
/// The slot also tells the connection's watchdog whether anything is in
/// flight: the connection task holds one reference, every request in
/// progress (until its response body is sent) and every WebSocket another.
struct Slot {
    slots: Arc<ConnectionSlots>,
    ip: IpAddr,
    /// When the connection was accepted.
    opened: Instant,
    /// Whether a request has started on this connection.
    served: AtomicBool,
    /// When the last request or WebSocket ended, in milliseconds after `opened`.
    last_done_ms: AtomicU64,
}

impl Slot {
    /// Since when nothing has been in flight (if nothing is now).
    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_done_ms.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_done_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

impl ConnectionSlots {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: Arc::clone(self),
            ip,
            opened: Instant::now(),
            served: AtomicBool::new(false),
            last_done_ms: AtomicU64::new(0),
        })
    }
}

/// The connection's slot, attached to every request it carries.
#[derive(Clone)]
pub(crate) struct ConnectionSlot(#[allow(dead_code)] Arc<Slot>);

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionSlot")
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        // A request, response or WebSocket ended: the idle time starts now.
        self.0.touch();
    }
}

/// A response body that holds its connection's slot until it is sent, so
/// the watchdog does not take a connection with a download in flight for an
/// idle one.
struct GuardedBody {
    inner: axum::body::Body,
    _slot: Option<ConnectionSlot>,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, with a bound on how long a write may wait: a client that stops
/// reading (a download it never drains, a WebSocket it ignores) makes every
/// write pend, and after `limit` the write fails and hyper closes the
/// connection. Reads are bounded elsewhere (header, idle and transfer timers).
struct WriteTimeout<T> {
    inner: T,
    limit: Duration,
    /// Set while a write is pending; cleared when one makes progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteTimeout<T> {
    fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After a write that pends: arms the timer, or fails once it has run out.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<R>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!("natter_connections_closed_total", "reason" => "write_timeout")
                    .increment(1);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client read nothing within limits.write_timeout_secs",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

/// Returns when the connection should be closed: no request started within
/// `first` of accepting it, or nothing in flight for `idle`. `slot` is the
/// connection task's own reference; any other means something is in flight.
async fn close_when_idle(slot: &Arc<Slot>, first: Duration, idle: Duration) -> &'static str {
    loop {
        let now = Instant::now();
        let busy = Arc::strong_count(slot) > 1;
        let served = slot.served.load(Ordering::Relaxed);
        let limit = if served { idle } else { first };
        let deadline = slot.idle_since() + limit;
        if !busy && now >= deadline {
            return if served { "idle" } else { "no_request" };
        }
        // Busy: look again after `idle` (a request in flight is bounded by
        // its own timers); idle: at the deadline.
        let next = if busy { now + idle } else { deadline };
        tokio::time::sleep_until(next.into()).await;
    }
}

/// The largest request head hyper buffers, whatever `limits.max_header_bytes`
/// says: room for the JSON 431 check above it (the API answers heads between
/// the limit and this with its own error body; hyper answers beyond this
/// with an empty 431).
fn head_buffer_bytes(limits: &Limits) -> usize {
    limits.max_header_bytes.saturating_mul(8).max(64 * 1024)
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection's byte stream: plain TCP or TLS over it (`tls.rs`).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Serves `app` on `listener` until `stop` turns true, then drains open
/// connections for at most `drain`. With `tls`, each connection first
/// completes a TLS handshake, within the header-read timeout.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    let head_buffer = head_buffer_bytes(limits);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs))
        .max_buf_size(head_buffer);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(head_buffer).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(limits.http2_keep_alive_interval_secs))
        .keep_alive_timeout(Duration::from_secs(limits.http2_keep_alive_timeout_secs));
    let first_request = Duration::from_secs(limits.header_read_timeout_secs);
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let write_timeout = Duration::from_secs(limits.write_timeout_secs);
    let max_per_ip = limits.max_connections_per_ip;
    let slots = Arc::new(ConnectionSlots::default());
    let graceful = GracefulShutdown::new();

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some(slot) = slots.take(peer.ip(), max_per_ip) else {
            metrics::counter!("natter_connections_refused_total", "reason" => "per_ip")
                .increment(1);
            tracing::debug!(peer = %peer.ip(), "too many connections from one address");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = app.clone();
        let slot = Arc::new(slot);
        let held: Weak<Slot> = Arc::downgrade(&slot);
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            // The task holds the slot as long as the connection is served.
            let in_flight = held.upgrade().map(ConnectionSlot);
            if let Some(slot) = &in_flight {
                slot.0.served.store(true, Ordering::Relaxed);
                req.extensions_mut().insert(slot.clone());
            }
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let response = router.clone().oneshot(req.map(axum::body::Body::new));
            async move {
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(response.map(|inner| GuardedBody {
                    inner,
                    _slot: in_flight,
                }))
            }
        });
        let io = WriteTimeout::new(stream, write_timeout);
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            // With TLS, the handshake comes first, within the first-request
            // bound (the watchdog below counts from the accept as well).
            let io: Box<dyn Io> = match tls {
                None => Box::new(io),
                Some(tls) => match tokio::time::timeout(first_request, tls.accept(io)).await {
                    Ok(Ok(stream)) => Box::new(stream),
                    Ok(Err(e)) => {
                        metrics::counter!("natter_tls_handshakes_failed_total", "reason" => "error")
                            .increment(1);
                        tracing::debug!(error = %e, peer = %peer.ip(), "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics::counter!("natter_tls_handshakes_failed_total", "reason" => "timeout")
                            .increment(1);
                        return;
                    }
                },
            };
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            let connection = watcher.watch(connection);
            tokio::select! {
                ended = connection => if let Err(e) = ended {
                    tracing::trace!(error = %e, "connection ended with an error");
                },
                reason = close_when_idle(&slot, first_request, idle) => {
                    // Nothing is in flight, so closing loses nothing.
                    metrics::counter!("natter_connections_closed_total", "reason" => reason)
                        .increment(1);
                    tracing::trace!(reason, "closing an idle connection");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish in time; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_address_and_given_back() {
        let slots = Arc::new(ConnectionSlots::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = slots.take(a, 2).unwrap();
        assert_eq!(first.idle_since(), first.opened);
        let _second = slots.take(a, 2).unwrap();
        assert!(slots.take(a, 2).is_none());
        assert!(slots.take(b, 2).is_some());
        drop(first);
        assert!(slots.take(a, 2).is_some());
    }
}
