//! The beginnings of Natter's client SDK: a REST client for accounts, chats
//! and search, and a WebSocket connection that speaks the frames of
//! `natter-proto`. The load tool (`natter bench`) is its first user; the
//! terminal client will grow from it (sync engine, local store, E2EE).
//!
//! # Layout
//! - [`Client`]: REST calls, each bounded by the client's timeout.
//! - [`Socket`]: one WebSocket, optionally from a chosen local address (so
//!   many connections can spread over 127.0.0.x and pass the ephemeral-port
//!   limit), authenticated with the `auth` frame; split into a
//!   [`SocketWriter`] and a [`SocketReader`] for pipelined use.

pub mod e2ee;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use natter_proto::accounts::Session;
use natter_proto::chats::{Chat, ChatKind, CreateChat};
use natter_proto::ws::{ClientFrame, ServerFrame};
use natter_proto::{ChatId, UserId};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest WebSocket message this client accepts: well above the server's
/// largest frame (a sync page), far below tungstenite's 64 MiB default.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// WebSocket read and write buffer per connection for [`Socket::connect`]:
/// large, for throughput (tungstenite's default is 128 KiB).
pub const BUFFER_BYTES: usize = 64 * 1024;
/// A small buffer for [`Socket::connect_with`] when holding many idle
/// connections, as the server's default.
pub const SMALL_BUFFER_BYTES: usize = 4096;

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP request failed (connection, timeout, body).
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with an unexpected status.
    #[error("the server answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The body, for the error code and message.
        body: String,
    },
    /// The WebSocket failed.
    #[error("WebSocket failed: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// A socket-level operation failed (bind, connect).
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing arrived in the time allowed.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent something this client did not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The result of a client call.
pub type ClientResult<T> = Result<T, ClientError>;

/// A REST client for one server.
#[derive(Debug, Clone)]
pub struct Client {
    /// Connection pool with the timeout.
    http: reqwest::Client,
    /// `http://host:port`, no trailing slash.
    base: String,
}

impl Client {
    /// A client for the server at `base` (`http://127.0.0.1:8080`), each
    /// request allowed `timeout`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: &str, timeout: Duration) -> ClientResult<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// The server's base URL.
    #[must_use]
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Asks for a verification code by SMS; returns the number normalised
    /// to E.164.
    ///
    /// # Errors
    /// A refused number, a rate limit, or a transport failure.
    pub async fn request_code(&self, phone: &str) -> ClientResult<String> {
        let body = serde_json::json!({ "phone": phone });
        let sent: natter_proto::accounts::VerificationSent =
            self.post("/api/v1/users/verification", None, &body).await?;
        Ok(sent.phone)
    }

    /// Creates an account with a verified number.
    ///
    /// # Errors
    /// A wrong code, a taken number, or a transport failure.
    pub async fn register(&self, phone: &str, name: &str, code: &str) -> ClientResult<Session> {
        let body = serde_json::json!({ "phone": phone, "name": name, "verification_code": code });
        self.post("/api/v1/users/register", None, &body).await
    }

    /// Logs in to an existing account (a new device).
    ///
    /// # Errors
    /// A wrong code or a transport failure.
    pub async fn login(&self, phone: &str, code: &str) -> ClientResult<Session> {
        let body = serde_json::json!({ "phone": phone, "verification_code": code });
        self.post("/api/v1/users/login", None, &body).await
    }

    /// Opens (or finds) the direct chat with `other`.
    ///
    /// # Errors
    /// An unknown user or a transport failure.
    pub async fn direct_chat(&self, token: &str, other: UserId) -> ClientResult<ChatId> {
        let body = CreateChat {
            kind: ChatKind::Direct,
            participants: vec![other],
            name: None,
            encrypted: false,
        };
        let chat: Chat = self.post("/api/v1/chats", Some(token), &body).await?;
        Ok(chat.id)
    }

    /// Creates a group with `others` (the caller is its admin).
    ///
    /// # Errors
    /// Too many participants, unknown users, or a transport failure.
    pub async fn group_chat(
        &self,
        token: &str,
        name: &str,
        others: &[UserId],
    ) -> ClientResult<ChatId> {
        let body = CreateChat {
            kind: ChatKind::Group,
            participants: others.to_vec(),
            name: Some(name.to_owned()),
            encrypted: false,
        };
        let chat: Chat = self.post("/api/v1/chats", Some(token), &body).await?;
        Ok(chat.id)
    }

    /// Searches the caller's messages; returns the `total` the server counted.
    ///
    /// # Errors
    /// A malformed query or a transport failure.
    pub async fn search_messages(&self, token: &str, query: &str) -> ClientResult<u64> {
        #[derive(serde::Deserialize)]
        struct Total {
            total: u64,
        }
        let response = self
            .http
            .get(format!("{}/api/v1/search/messages", self.base))
            .query(&[("q", query)])
            .bearer_auth(token)
            .send()
            .await?;
        let total: Total = Self::read(response).await?;
        Ok(total.total)
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &impl serde::Serialize,
    ) -> ClientResult<T> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        Self::read(req.send().await?).await
    }

    async fn read<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> ClientResult<T> {
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            return Err(ClientError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

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
