//! A layer-4 load balancer for clusters under test: each accepted TCP
//! connection goes to the next node in turn (round robin), and a node that
//! refuses the connection is skipped. HTTP and WebSocket pass through
//! untouched (TLS too), so a client that opens one connection per request
//! spreads its requests over every node, as clients behind a real load
//! balancer do. Each relayed connection leaves from the client's own
//! address (any address of 127.0.0.0/8 is local), so a node sees who is
//! calling, as behind a transparent or PROXY-protocol balancer, and its
//! per-address limits apply.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// How long the balancer waits for a node to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one side may still send once the other is done.
const LINGER: Duration = Duration::from_secs(2);

/// A round-robin TCP balancer on `127.0.0.1`; it stops when dropped.
#[derive(Debug)]
pub struct Balancer {
    addr: SocketAddr,
    nodes: Arc<RwLock<Vec<SocketAddr>>>,
    accept: JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free port in front of `nodes`.
    ///
    /// # Errors
    /// The listener could not bind.
    pub async fn start(nodes: Vec<SocketAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let nodes = Arc::new(RwLock::new(nodes));
        let next = Arc::new(AtomicUsize::new(0));
        let shared = Arc::clone(&nodes);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, from)) = listener.accept().await else {
                    continue;
                };
                let nodes = Arc::clone(&shared);
                let next = Arc::clone(&next);
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    if let Some(node) = connect(&nodes, &next, from).await {
                        relay(client, node).await;
                    }
                    // No node answered: dropping the client closes it.
                });
            }
        });
        Ok(Self {
            addr,
            nodes,
            accept,
        })
    }

    /// Where clients connect.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the nodes (after a restart on new ports, or a node joining);
    /// connections already relayed stay where they are.
    pub fn set_nodes(&self, nodes: Vec<SocketAddr>) {
        *self.nodes.write().unwrap_or_else(PoisonError::into_inner) = nodes;
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A connection from `from`'s address to the next node that accepts one,
/// trying each node once.
async fn connect(
    nodes: &RwLock<Vec<SocketAddr>>,
    next: &AtomicUsize,
    from: SocketAddr,
) -> Option<TcpStream> {
    let nodes = nodes.read().unwrap_or_else(PoisonError::into_inner).clone();
    for _ in 0..nodes.len() {
        let node = nodes[next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
        let socket = if from.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let Ok(socket) = socket else { continue };
        if socket.bind(SocketAddr::new(from.ip(), 0)).is_err() {
            continue;
        }
        if let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(node)).await {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
    }
    None
}

/// Copies both ways until both sides are done. A node that answers early
/// and closes (a 413 to a body still arriving) stops reading: the rest of
/// the client's bytes are then read and dropped for at most [`LINGER`], as
/// a lingering close does, so the answer already relayed is not lost to a
/// reset. Once the node is done, the client has [`LINGER`] to finish too.
async fn relay(client: TcpStream, node: TcpStream) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_node, mut to_node) = node.into_split();
    let up = async move {
        if tokio::io::copy(&mut from_client, &mut to_node)
            .await
            .is_err()
        {
            let mut sink = tokio::io::sink();
            let drain = tokio::io::copy(&mut from_client, &mut sink);
            let _ = tokio::time::timeout(LINGER, drain).await;
        }
        let _ = to_node.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut from_node, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    let (mut up, mut down) = (std::pin::pin!(up), std::pin::pin!(down));
    tokio::select! {
        () = &mut down => {
            let _ = tokio::time::timeout(LINGER, up).await;
        }
        () = &mut up => down.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    /// A node that answers each connection with its own name.
    async fn node(name: &'static [u8]) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(name).await;
            }
        });
        (addr, task)
    }

    async fn ask(balancer: &Balancer) -> Vec<u8> {
        let mut s = TcpStream::connect(balancer.addr()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }

    #[tokio::test]
    async fn a_node_sees_the_client_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = listener.local_addr().unwrap();
        let _task = tokio::spawn(async move {
            while let Ok((mut s, peer)) = listener.accept().await {
                let _ = s.write_all(peer.ip().to_string().as_bytes()).await;
            }
        });
        let balancer = Balancer::start(vec![node]).await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.7:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(balancer.addr()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out, "127.0.0.7");
    }

    #[tokio::test]
    async fn connections_go_round_robin_and_skip_a_dead_node() {
        let (a, _ta) = node(b"a").await;
        let (b, tb) = node(b"b").await;
        let balancer = Balancer::start(vec![a, b]).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(ask(&balancer).await);
        }
        assert_eq!(seen, [b"a", b"b", b"a", b"b"].map(|n| n.to_vec()));
        tb.abort();
        // The aborted task dropped its listener: b refuses, a answers.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..3 {
            assert_eq!(ask(&balancer).await, b"a");
        }
        balancer.set_nodes(vec![]);
        assert_eq!(ask(&balancer).await, b"", "no node: the connection closes");
    }
}
