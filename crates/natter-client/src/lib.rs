//! Natter's client SDK: the typed REST API, a sync engine that keeps a
//! device up to date over the WebSocket (reconnects, re-sync, an outbox),
//! and a local store with full-text search. The end-to-end encryption
//! engine plugs in above the [`Connection`]: it reads the typed events
//! (with their `ciphertext`), hands ready [`SendMessage`]s to
//! [`Connection::send`], and keeps its state in [`Store::transaction`].
//!
//! # Layout
//! - [`transport`]: HTTP, WebSocket and timers behind the [`Transport`]
//!   trait, so the SDK builds for `wasm32-unknown-unknown`;
//!   [`NativeTransport`] (reqwest + tokio-tungstenite) natively.
//! - [`api`]: [`Api`], one typed method per REST route, errors as [`ApiError`].
//! - [`session`]: [`Client`] (before login), [`Session`] (one device),
//!   [`Connection`] (the sync engine and outbox) and its [`Event`]s;
//!   [`SyncState`] is what the engine persists.
//! - [`local`]: [`ClientStore`], what a device keeps (sync state, the
//!   encryption engine's `state` in transactions, searchable history),
//!   whatever engine holds it.
//! - `store` (native): [`Store`], the [`ClientStore`] in SQLite: session
//!   file, positions, outbox, `state`, history with FTS5 search.
//! - `socket` (native): [`Socket`], a raw WebSocket for the load tool.
//! - [`e2ee`]: the MLS engine of one device (keys, groups, trust, safety
//!   numbers, encrypted media, handovers), network-free.
//! - `browser` (wasm32): `BrowserTransport` (fetch, WebSocket, timers)
//!   and `BrowserStore` (the [`ClientStore`] in IndexedDB, encrypted with
//!   a non-extractable WebCrypto key).
//! - [`messenger`]: [`Messenger`], the end-to-end encrypted client
//!   of one device: session, sync engine, MLS engine and store in step.
//!
//! Usage, natively:
//! ```no_run
//! # async fn demo() -> natter_client::ClientResult<()> {
//! use std::sync::Arc;
//! use natter_client::{Client, Event, Store};
//! let client = Client::new("http://127.0.0.1:8080", std::time::Duration::from_secs(10))?;
//! client.request_code("+14155550100").await?;
//! let session = client
//!     .login(&natter_proto::accounts::LoginRequest {
//!         phone: "+14155550100".into(),
//!         verification_code: "123456".into(),
//!         device_name: None,
//!     })
//!     .await?;
//! let store = Store::open(std::path::Path::new("natter-client"))?;
//! store.save_session(&session.saved())?;
//! let mut connection = session.connect(Arc::new(store.clone()));
//! loop {
//!     if let Event::Message { message, .. } = connection.next_event().await? {
//!         println!("{:?}", message.content);
//!     }
//! }
//! # }
//! ```

pub mod api;
#[cfg(target_arch = "wasm32")]
pub mod browser;
pub mod e2ee;
pub mod files;
pub mod local;
pub mod messenger;
pub mod session;
#[cfg(not(target_arch = "wasm32"))]
mod socket;
#[cfg(not(target_arch = "wasm32"))]
pub mod store;
pub mod transport;

pub use api::{Api, ApiError};
pub use local::{
    ClientStore, HistoryEntry, QUOTE_WORDS, SavedSession, SharedStore, StateTx, quote_words,
};
pub use messenger::{ChatMessage, Messenger, MessengerEvent, ReceivedFile};
pub use natter_proto::chats::SendMessage;
pub use session::{Client, Connection, ConnectionConfig, Event, MemoryState, Session, SyncState};
#[cfg(not(target_arch = "wasm32"))]
pub use socket::{
    BUFFER_BYTES, SMALL_BUFFER_BYTES, Socket, SocketReader, SocketWriter, frame_message,
};
#[cfg(not(target_arch = "wasm32"))]
pub use store::Store;
#[cfg(not(target_arch = "wasm32"))]
pub use transport::NativeTransport;
pub use transport::{Transport, TransportError};

/// What `Debug` shows of user content (a text, a file name, a file's
/// bytes): its size, so a logged event or error leaks nothing.
pub(crate) struct Redacted(pub(crate) usize);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

/// What went wrong in a local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The browser's storage (IndexedDB, WebCrypto) failed.
    #[cfg(target_arch = "wasm32")]
    #[error("the browser's storage failed: {0}")]
    Browser(String),
    /// SQLite failed.
    #[cfg(not(target_arch = "wasm32"))]
    #[error("the local database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file or directory could not be read or written.
    #[error("the local store's files: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data did not decode.
    #[error("corrupt local data: {0}")]
    Corrupt(String),
}

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request or socket did not complete (connection, TLS, timeout).
    #[error("transport failed: {0}")]
    Transport(#[from] TransportError),
    /// The server answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The WebSocket failed (raw [`Socket`]).
    #[cfg(not(target_arch = "wasm32"))]
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
    /// The device's token was refused or revoked: log in again.
    #[error("this device's token was refused or revoked")]
    Revoked,
    /// The server sent something this client did not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ClientError {
    /// The server's error code, if the server answered with one.
    #[must_use]
    pub fn code(&self) -> Option<natter_proto::ErrorCode> {
        match self {
            Self::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

/// The result of a client call.
pub type ClientResult<T> = Result<T, ClientError>;
