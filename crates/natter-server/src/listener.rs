//! Accepting connections: the HTTP listener with the protections a public
//! server needs and `axum::serve` lacks. Each connection is served by hyper
//! with a header-read timeout (slow-loris; it also closes idle keep-alive
//! connections), each client address may hold a bounded number of
//! connections, and shutdown is graceful: stop accepting, let open requests
//! finish within a deadline, then close.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
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
struct Slot {
    slots: Arc<ConnectionSlots>,
    ip: IpAddr,
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
    let handshake_timeout = Duration::from_secs(limits.header_read_timeout_secs);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs));
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
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
        let slot = ConnectionSlot(Arc::new(slot));
        let held = slot.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            req.extensions_mut().insert(held.clone());
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let io: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(tls) => {
                    match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
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
                    }
                }
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::trace!(error = %e, "connection ended with an error");
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
        let _second = slots.take(a, 2).unwrap();
        assert!(slots.take(a, 2).is_none());
        assert!(slots.take(b, 2).is_some());
        drop(first);
        assert!(slots.take(a, 2).is_some());
    }
}
