//! A raw WebSocket for tools that need control over the socket itself (the
//! load tool opens thousands, from chosen local addresses, pipelined). Apps
//! use [`crate::Connection`] instead. Native only.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use natter_proto::ws::{ClientFrame, ServerFrame};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{ClientError, ClientResult};

/// Largest WebSocket message this client accepts: well above the server's
/// largest frame (a sync page), far below tungstenite's 64 MiB default.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// WebSocket read and write buffer per connection for [`Socket::connect`]:
/// large, for throughput (tungstenite's default is 128 KiB).
pub const BUFFER_BYTES: usize = 64 * 1024;
/// A small buffer for [`Socket::connect_with`] when holding many idle
/// connections, as the server's default.
pub const SMALL_BUFFER_BYTES: usize = 4096;

/// An open WebSocket to `/api/v1/ws`.
#[derive(Debug)]
pub struct Socket {
    /// The connection.
    ws: WebSocketStream<TcpStream>,
}

/// The sending half of a [`Socket`].
pub type SocketWriter = SplitSink<WebSocketStream<TcpStream>, WsMessage>;

/// The receiving half of a [`Socket`].
#[derive(Debug)]
pub struct SocketReader {
    /// The stream of messages.
    inner: SplitStream<WebSocketStream<TcpStream>>,
}

impl Socket {
    /// Opens a WebSocket to `server` at `path` (no authentication yet), from
    /// `local` if given (port chosen by the kernel), within `timeout`, with
    /// read and write buffers of `buffer` bytes.
    ///
    /// # Errors
    /// Connect, upgrade or timeout failures.
    pub async fn open(
        server: SocketAddr,
        path: &str,
        local: Option<IpAddr>,
        timeout: Duration,
        buffer: usize,
    ) -> ClientResult<Self> {
        let connect = async {
            let socket = if server.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = local {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(server).await?;
            stream.set_nodelay(true)?;
            let url = format!("ws://{server}{path}");
            let mut config = WebSocketConfig::default();
            config.max_message_size = Some(MAX_MESSAGE_BYTES);
            config.max_frame_size = Some(MAX_MESSAGE_BYTES);
            config.read_buffer_size = buffer;
            config.write_buffer_size = buffer;
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
            Ok::<_, ClientError>(Self { ws })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout("connecting the WebSocket"))?
    }

    /// Opens `/api/v1/ws` and authenticates with `token`; returns the socket
    /// once the server answered `connected`.
    ///
    /// # Errors
    /// Connect, upgrade, authentication or timeout failures.
    pub async fn connect(
        server: SocketAddr,
        local: Option<IpAddr>,
        token: &str,
        timeout: Duration,
    ) -> ClientResult<Self> {
        Self::connect_with(server, local, token, timeout, BUFFER_BYTES).await
    }

    /// As [`Socket::connect`], with read and write buffers of `buffer` bytes.
    ///
    /// # Errors
    /// Connect, upgrade, authentication or timeout failures.
    pub async fn connect_with(
        server: SocketAddr,
        local: Option<IpAddr>,
        token: &str,
        timeout: Duration,
        buffer: usize,
    ) -> ClientResult<Self> {
        let mut socket = Self::open(server, "/api/v1/ws", local, timeout, buffer).await?;
        socket
            .send(&ClientFrame::Auth {
                token: token.to_owned(),
            })
            .await?;
        let first = tokio::time::timeout(timeout, socket.next_text())
            .await
            .map_err(|_| ClientError::Timeout("waiting for `connected`"))??;
        match serde_json::from_str::<ServerFrame>(&first) {
            Ok(ServerFrame::Connected { .. }) => Ok(socket),
            _ => Err(ClientError::Protocol(format!(
                "expected `connected`, got {first}"
            ))),
        }
    }

    /// Sends one client frame.
    ///
    /// # Errors
    /// The socket failed.
    pub async fn send(&mut self, frame: &ClientFrame) -> ClientResult<()> {
        let text =
            serde_json::to_string(frame).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.ws.send(WsMessage::text(text)).await?;
        Ok(())
    }

    /// The next text frame (pings are answered by tungstenite).
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the connection ends.
    pub async fn next_text(&mut self) -> ClientResult<String> {
        next_text(&mut self.ws).await
    }

    /// Splits into halves that can be used from different tasks.
    pub fn split(self) -> (SocketWriter, SocketReader) {
        let (sink, stream) = self.ws.split();
        (sink, SocketReader { inner: stream })
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

impl SocketReader {
    /// The next text frame.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the connection ends.
    pub async fn next_text(&mut self) -> ClientResult<String> {
        next_text(&mut self.inner).await
    }
}

/// Serialises a client frame for a [`SocketWriter`].
///
/// # Errors
/// Never in practice (the frames are plain data).
pub fn frame_message(frame: &ClientFrame) -> ClientResult<WsMessage> {
    serde_json::to_string(frame)
        .map(WsMessage::text)
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

async fn next_text<S>(stream: &mut S) -> ClientResult<String>
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(WsMessage::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(WsMessage::Close(_))) | None => return Err(ClientError::Closed),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}
