//! Accounts, sessions and the sync engine.
//!
//! [`Client`] is a server before login ([`Client::request_code`],
//! [`Client::register`], [`Client::login`]); a [`Session`] is one device
//! logged in (its token, user and device id, the typed [`Api`]);
//! [`Session::connect`] gives the [`Connection`], which keeps the device in
//! sync while it is polled with [`Connection::next_event`]:
//!
//! - it opens the WebSocket, authenticates with the `auth` frame, and sends
//!   `sync` with the last `seq` processed in each chat ([`SyncState`]);
//! - every chat-log event is yielded once: an event at or below the recorded
//!   position is a duplicate (a replay after a reconnect) and is dropped; an
//!   event yielded is recorded at once, so after a reconnect the sync resumes
//!   right after it, with no gap, and acknowledged (`ack`, coalesced per
//!   chat, within [`ACK_BATCH`] events or [`ACK_DELAY`]);
//! - until a socket's `sync_done`, a live event may overtake the events its
//!   sync replays (the server delivers live from authentication on): one
//!   that is ahead of its turn is held and handed out, in seq order, once
//!   the events before it came (or at `sync_done`);
//! - when the socket ends (closed, failed, or silent past the heartbeat) it
//!   reconnects with bounded, jittered exponential backoff, every step with
//!   a timeout, and re-syncs;
//! - the **outbox**: [`Connection::send`] persists a [`SendMessage`] with a
//!   `client_message_id` before sending it over REST; entries are sent in
//!   order, again after every reconnect and heartbeat, until a 2xx
//!   acknowledges them (the server makes retries idempotent), and dropped
//!   with [`Event::SendFailed`] on a 4xx that can never succeed.
//!
//! The encryption layer above sees the typed events (with their
//! `ciphertext`) and hands ready `SendMessage`s (with `ciphertext`) to
//! `send`; it keeps its own state in the store's `state` table.
//!
//! May depend on: [`crate::api`], [`crate::transport`], `natter-proto`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use natter_proto::accounts::{
    LoginRequest, RegisterRequest, VerificationRequest, VerificationSent,
};
use natter_proto::chats::{Message, MessageType, SendMessage};
use natter_proto::e2ee::InboxItem;
use natter_proto::users::PresenceStatus;
use natter_proto::ws::{ChatPosition, ClientFrame, ServerFrame, close};
use natter_proto::{ChatId, DeviceId, ErrorCode, MessageId, UserId};

use crate::api::{Api, ApiError};
use crate::transport::{MaybeSend, Transport, WebSocket, WsEvent, timeout};
use crate::{ClientError, ClientResult, StoreError};

/// Acks are coalesced (the highest seq per chat) and sent after this many
/// events, or when the socket has been quiet for [`ACK_DELAY`]: one ack per
/// event would spend the server's per-connection ack budget in a big sync.
const ACK_BATCH: usize = 64;
/// How long events may wait for their ack when no more arrive.
const ACK_DELAY: Duration = Duration::from_millis(200);

/// The first wait before a refused sync is sent again: the server's
/// default budget of `sync` frames per user refills one every 2 seconds.
const RESYNC_WAIT: Duration = Duration::from_secs(2);

/// The longest wait before a refused sync is sent again.
const RESYNC_WAIT_MAX: Duration = Duration::from_secs(30);

/// A message waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    /// The request, with its `client_message_id`.
    pub message: SendMessage,
}

/// What the sync engine must keep across restarts: chat positions, the
/// outbox, and the messages it saw. [`crate::Store`] keeps them in SQLite;
/// [`MemoryState`] in memory (tests, and wasm32 until a browser store exists).
pub trait SyncState: MaybeSend + std::fmt::Debug {
    /// The last seq processed per chat.
    ///
    /// # Errors
    /// The store failed.
    fn positions(&self) -> Result<Vec<(ChatId, i64)>, StoreError>;
    /// Records that everything in `chat` up to `seq` was processed (never moves back).
    ///
    /// # Errors
    /// The store failed.
    fn record(&self, chat: ChatId, seq: i64) -> Result<(), StoreError>;
    /// Appends to the outbox (a second push of the same `client_message_id` is ignored).
    ///
    /// # Errors
    /// The store failed.
    fn push_outbox(&self, message: &SendMessage) -> Result<(), StoreError>;
    /// The outbox, oldest first.
    ///
    /// # Errors
    /// The store failed.
    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Removes an acknowledged (or hopeless) entry.
    ///
    /// # Errors
    /// The store failed.
    fn remove_outbox(&self, client_message_id: &str) -> Result<(), StoreError>;
    /// Keeps a message in the local history, with its readable text
    /// (`None`: nothing readable, as for ciphertext the engine has not decrypted).
    ///
    /// # Errors
    /// The store failed.
    fn save_message(&self, message: &Message, text: Option<&str>) -> Result<(), StoreError>;
    /// An edit (`Some`) or a deletion (`None`) of a message in the history.
    ///
    /// # Errors
    /// The store failed.
    fn edit_message(&self, message: MessageId, text: Option<&str>) -> Result<(), StoreError>;
}

/// [`SyncState`] in memory.
#[derive(Debug, Default)]
pub struct MemoryState {
    /// Everything, behind one lock (operations are tiny).
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    positions: HashMap<ChatId, i64>,
    outbox: Vec<SendMessage>,
}

impl SyncState for MemoryState {
    fn positions(&self) -> Result<Vec<(ChatId, i64)>, StoreError> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(inner.positions.iter().map(|(c, s)| (*c, *s)).collect())
    }

    fn record(&self, chat: ChatId, seq: i64) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let pos = inner.positions.entry(chat).or_default();
        *pos = (*pos).max(seq);
        Ok(())
    }

    fn push_outbox(&self, message: &SendMessage) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !inner
            .outbox
            .iter()
            .any(|m| m.client_message_id == message.client_message_id)
        {
            inner.outbox.push(message.clone());
        }
        Ok(())
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(inner
            .outbox
            .iter()
            .map(|m| OutboxEntry { message: m.clone() })
            .collect())
    }

    fn remove_outbox(&self, client_message_id: &str) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .outbox
            .retain(|m| m.client_message_id.as_deref() != Some(client_message_id));
        Ok(())
    }

    fn save_message(&self, _: &Message, _: Option<&str>) -> Result<(), StoreError> {
        Ok(())
    }

    fn edit_message(&self, _: MessageId, _: Option<&str>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A server, before logging in.
#[derive(Debug, Clone)]
pub struct Client {
    /// The unauthenticated API.
    api: Api,
}

impl Client {
    /// A client for `base` (`http://127.0.0.1:8080`) over the native
    /// transport, each request allowed `timeout`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(base: &str, timeout: Duration) -> ClientResult<Self> {
        let transport = crate::transport::NativeTransport::new(timeout)?;
        Ok(Self::with_transport(Arc::new(transport), base))
    }

    /// A client for `base` over any transport.
    #[must_use]
    pub fn with_transport(transport: Arc<dyn Transport>, base: &str) -> Self {
        Self {
            api: Api::new(transport, base),
        }
    }

    /// The unauthenticated API.
    #[must_use]
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// The server's base URL.
    #[must_use]
    pub fn base(&self) -> &str {
        self.api.base()
    }

    /// Asks for a verification code by SMS.
    ///
    /// # Errors
    /// A refused number, a rate limit, or a transport failure.
    pub async fn request_code(&self, phone: &str) -> ClientResult<VerificationSent> {
        self.api
            .request_code(&VerificationRequest {
                phone: phone.to_owned(),
            })
            .await
    }

    /// Creates an account with a verified number (or an invite, in the body).
    ///
    /// # Errors
    /// A wrong code, a taken number, or a transport failure.
    pub async fn register(&self, body: &RegisterRequest) -> ClientResult<Session> {
        let s = self.api.register(body).await?;
        Ok(self.session(s.user_id, s.device_id, &s.access_token))
    }

    /// Logs a new device in to an existing account.
    ///
    /// # Errors
    /// A wrong code or a transport failure.
    pub async fn login(&self, body: &LoginRequest) -> ClientResult<Session> {
        let s = self.api.login(body).await?;
        Ok(self.session(s.user_id, s.device_id, &s.access_token))
    }

    /// A session from a saved login (no request is made).
    #[must_use]
    pub fn session(&self, user_id: UserId, device_id: DeviceId, token: &str) -> Session {
        Session {
            api: self.api.with_token(token),
            user_id,
            device_id,
            token: token.to_owned(),
        }
    }
}

/// One logged-in device.
#[derive(Clone)]
pub struct Session {
    /// The API with this device's token.
    api: Api,
    /// The account.
    user_id: UserId,
    /// This device.
    device_id: DeviceId,
    /// The bearer token (also the WebSocket's `auth`).
    token: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("base", &self.api.base())
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The typed REST API as this device.
    #[must_use]
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// The account.
    #[must_use]
    pub const fn user_id(&self) -> UserId {
        self.user_id
    }

    /// This device.
    #[must_use]
    pub const fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The bearer token.
    #[must_use]
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The server's base URL.
    #[must_use]
    pub fn base(&self) -> &str {
        self.api.base()
    }

    /// What to save to resume later (natively `Store::save_session`).
    #[must_use]
    pub fn saved(&self) -> crate::local::SavedSession {
        crate::local::SavedSession {
            base: self.base().to_owned(),
            user_id: self.user_id,
            device_id: self.device_id,
            token: self.token.clone(),
        }
    }

    /// The sync engine for this device, keeping its state in `state`. It
    /// connects on the first [`Connection::next_event`].
    #[must_use]
    pub fn connect(&self, state: Arc<dyn SyncState>) -> Connection {
        self.connect_with(state, ConnectionConfig::default())
    }

    /// As [`Session::connect`], with chosen timings.
    #[must_use]
    pub fn connect_with(&self, state: Arc<dyn SyncState>, config: ConnectionConfig) -> Connection {
        let seed = uuid::Uuid::now_v7().as_u128() as u64 | 1;
        Connection {
            session: self.clone(),
            state,
            config,
            socket: None,
            positions: None,
            pending: VecDeque::new(),
            unacked: HashMap::new(),
            unacked_events: 0,
            attempt: 0,
            pinged: false,
            rng: seed,
            held: HashMap::new(),
            synced: false,
            resync: false,
            resyncs: 0,
        }
    }
}

/// Timings of a [`Connection`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionConfig {
    /// Bound on opening the socket and on the `connected` answer.
    pub connect_timeout: Duration,
    /// Silence after which a `ping` is sent; a second silence ends the socket.
    pub heartbeat: Duration,
    /// The first reconnect wait.
    pub backoff_min: Duration,
    /// The longest reconnect wait.
    pub backoff_max: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            // A server on the other side of the world, on a slow link.
            connect_timeout: Duration::from_secs(10),
            // Below the server's heartbeat timeout and common NAT idle timeouts.
            heartbeat: Duration::from_secs(25),
            backoff_min: Duration::from_millis(200),
            // A minute at most between attempts: a phone back online reconnects soon.
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// What the sync engine reports, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// The socket is open and authenticated; the sync has been requested.
    Connected {
        /// The account.
        user_id: UserId,
        /// This device.
        device_id: DeviceId,
    },
    /// The socket ended or could not be opened; the next attempt is after `retry_in`.
    Disconnected {
        /// Why, in a sentence.
        reason: String,
        /// The wait before the next attempt.
        retry_in: Duration,
    },
    /// A new message (plaintext `content`, or `ciphertext` for the encryption layer).
    Message {
        /// The chat.
        chat_id: ChatId,
        /// Its seq.
        seq: i64,
        /// The message.
        message: Message,
    },
    /// A message was edited.
    MessageUpdated {
        /// The chat.
        chat_id: ChatId,
        /// The seq of the edit.
        seq: i64,
        /// The message as it is now.
        message: Message,
    },
    /// A message was deleted for everyone.
    MessageDeleted {
        /// The chat.
        chat_id: ChatId,
        /// The seq of the deletion.
        seq: i64,
        /// The tombstone.
        message: Message,
    },
    /// Membership, name, devices or epoch of a chat changed (a system entry).
    ChatUpdated {
        /// The chat.
        chat_id: ChatId,
        /// The entry's seq.
        seq: i64,
        /// The system entry.
        message: Message,
    },
    /// The chat's receipt positions moved.
    Receipt {
        /// The chat.
        chat_id: ChatId,
        /// Delivered to everyone up to here.
        delivered_seq: i64,
        /// Read by everyone up to here.
        read_seq: i64,
    },
    /// Someone is typing.
    Typing {
        /// The chat.
        chat_id: ChatId,
        /// Who.
        user_id: UserId,
    },
    /// Someone's presence changed.
    Presence {
        /// Who.
        user_id: UserId,
        /// Now.
        status: PresenceStatus,
        /// When last online, if they let this user see it.
        last_seen: Option<time::OffsetDateTime>,
    },
    /// A payload for this device (an MLS Welcome, a handover).
    Inbox(InboxItem),
    /// An invitation to a group (the user's setting turned an add into one).
    Invitation(natter_proto::invitations::Invitation),
    /// Publish more KeyPackages.
    KeyPackagesLow {
        /// How many are left.
        available: u32,
    },
    /// The sync caught up: live events follow.
    SyncDone {
        /// Each chat and its position now.
        chats: Vec<ChatPosition>,
    },
    /// Too far behind in a chat: reload its history over REST; the position
    /// moved to `seq`.
    TooLong {
        /// The chat.
        chat_id: ChatId,
        /// Its current seq.
        seq: i64,
    },
    /// An outbox entry was stored by the server.
    Sent {
        /// Its key.
        client_message_id: String,
        /// The stored message.
        message: Message,
    },
    /// An outbox entry was refused for good and dropped.
    SendFailed {
        /// Its key.
        client_message_id: String,
        /// Why.
        error: ApiError,
    },
    /// The server could not process a frame (the connection stays open).
    ServerError {
        /// Stable code.
        code: ErrorCode,
        /// A sentence.
        message: String,
    },
}

/// The sync engine of one device (see the module docs).
#[derive(Debug)]
pub struct Connection {
    /// Who, and the REST API for the outbox.
    session: Session,
    /// Positions and outbox, persisted.
    state: Arc<dyn SyncState>,
    /// Timings.
    config: ConnectionConfig,
    /// The open socket, if any.
    socket: Option<Box<dyn WebSocket>>,
    /// Positions, read from `state` once, then kept in step with it.
    positions: Option<HashMap<ChatId, i64>>,
    /// Events decided but not yet handed out (outbox results, `Connected`).
    pending: VecDeque<Event>,
    /// The highest processed seq per chat not yet acknowledged to the
    /// server (kept across reconnects; sent on the next socket).
    unacked: HashMap<ChatId, i64>,
    /// Events since the last acks went out.
    unacked_events: usize,
    /// Consecutive failed connects (0: connected, or never tried).
    attempt: u32,
    /// A ping is out and unanswered.
    pinged: bool,
    /// Jitter source (xorshift; not for secrets).
    rng: u64,
    /// Chat-log events that came ahead of their turn before this socket's
    /// `sync_done`, by chat and seq. The server delivers live events from
    /// the moment it authenticates a socket, so one can overtake the
    /// events the sync is about to send; held here, it is handed out once
    /// the events before it came (or at `sync_done`), never dropped as a
    /// duplicate. Emptied on every new socket (its sync sends them again).
    held: HashMap<ChatId, BTreeMap<i64, ServerFrame>>,
    /// This socket's `sync_done` came: events arrive in per-chat order.
    synced: bool,
    /// A `rate_limited` answer came before `sync_done`: the sync may have
    /// been refused, so it is sent again after a wait.
    resync: bool,
    /// This socket's syncs sent again (the wait doubles each time).
    resyncs: u32,
}

/// A plaintext chat's message (`content`, no ciphertext), optionally
/// answering `reply_to` or carrying the upload `media_id` (for a file, its
/// name is the text).
#[must_use]
pub fn plain_message(
    chat: ChatId,
    text: &str,
    message_type: MessageType,
    reply_to: Option<natter_proto::MessageId>,
    media_id: Option<natter_proto::MediaId>,
) -> SendMessage {
    SendMessage {
        chat_id: chat,
        content: Some(text.to_owned()),
        ciphertext: None,
        message_type,
        timestamp: None,
        client_message_id: None,
        reply_to,
        media_id: media_id.map(|m| m.to_string()),
    }
}

impl Connection {
    /// The session.
    #[must_use]
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Whether a socket is open.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.socket.is_some()
    }

    fn transport(&self) -> Arc<dyn Transport> {
        Arc::clone(self.session.api.transport())
    }

    fn backoff(&mut self) -> Duration {
        let exp = self.attempt.saturating_sub(1).min(16);
        let base = self
            .config
            .backoff_min
            .saturating_mul(1 << exp)
            .min(self.config.backoff_max);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        // Between half and all of the step, so clients that lost the same
        // server do not all come back at once.
        let half = base / 2;
        let jitter = u32::try_from(self.rng % 1000).unwrap_or(0);
        half + half.mul_f64(f64::from(jitter) / 1000.0)
    }

    fn ws_url(&self) -> String {
        let base = self.session.base();
        let base = base
            .strip_prefix("https://")
            .map(|rest| format!("wss://{rest}"))
            .or_else(|| {
                base.strip_prefix("http://")
                    .map(|rest| format!("ws://{rest}"))
            })
            .unwrap_or_else(|| base.to_owned());
        format!("{base}/api/v1/ws")
    }

    fn load_positions(&mut self) -> ClientResult<()> {
        if self.positions.is_none() {
            self.positions = Some(self.state.positions()?.into_iter().collect());
        }
        Ok(())
    }

    fn position(&mut self, chat: ChatId) -> ClientResult<i64> {
        self.load_positions()?;
        Ok(self
            .positions
            .as_ref()
            .and_then(|p| p.get(&chat).copied())
            .unwrap_or(0))
    }

    fn record(&mut self, chat: ChatId, seq: i64) -> ClientResult<()> {
        self.state.record(chat, seq)?;
        if let Some(p) = self.positions.as_mut() {
            let pos = p.entry(chat).or_default();
            *pos = (*pos).max(seq);
        }
        Ok(())
    }

    async fn send_frame(&mut self, frame: &ClientFrame) {
        let text = match serde_json::to_string(frame) {
            Ok(text) => text,
            Err(_) => return,
        };
        if let Some(socket) = self.socket.as_mut()
            && socket.send(text).await.is_err()
        {
            // The next receive sees the failure and reconnects.
            self.socket = None;
        }
    }

    async fn open(&mut self) -> ClientResult<()> {
        self.held.clear();
        self.synced = false;
        self.resync = false;
        self.resyncs = 0;
        let transport = self.transport();
        let limit = self.config.connect_timeout;
        let url = self.ws_url();
        let mut socket = timeout(&*transport, limit, transport.connect(&url))
            .await
            .ok_or(ClientError::Timeout("connecting the WebSocket"))??;
        let auth = serde_json::to_string(&ClientFrame::Auth {
            token: self.session.token.clone(),
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        socket.send(auth).await?;
        let first = timeout(&*transport, limit, socket.recv())
            .await
            .ok_or(ClientError::Timeout("waiting for `connected`"))??;
        match first {
            WsEvent::Text(text) => match serde_json::from_str::<ServerFrame>(&text) {
                Ok(ServerFrame::Connected { .. }) => {}
                _ => {
                    return Err(ClientError::Protocol(format!(
                        "expected `connected`, got {text}"
                    )));
                }
            },
            WsEvent::Closed(Some(close::UNAUTHORIZED | close::REVOKED)) => {
                return Err(ClientError::Revoked);
            }
            WsEvent::Closed(_) => return Err(ClientError::Closed),
        }
        socket.send(self.sync_frame()?).await?;
        self.socket = Some(socket);
        Ok(())
    }

    /// The `sync` frame: every known chat's position.
    fn sync_frame(&mut self) -> ClientResult<String> {
        self.load_positions()?;
        let chats = self
            .positions
            .iter()
            .flatten()
            .map(|(chat_id, seq)| ChatPosition {
                chat_id: *chat_id,
                seq: *seq,
            })
            .collect();
        serde_json::to_string(&ClientFrame::Sync { chats })
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends the sync again, after [`RESYNC_WAIT`] (doubling with each
    /// try on this socket, at most [`RESYNC_WAIT_MAX`]): the server refused
    /// it (`rate_limited`, `sync` frames are budgeted per user).
    async fn sync_again(&mut self) -> ClientResult<()> {
        self.resync = false;
        let wait = RESYNC_WAIT
            .saturating_mul(1 << self.resyncs.min(8))
            .min(RESYNC_WAIT_MAX);
        self.resyncs = self.resyncs.saturating_add(1);
        self.transport().sleep(wait).await;
        let frame = self.sync_frame()?;
        if let Some(socket) = self.socket.as_mut()
            && socket.send(frame).await.is_err()
        {
            self.socket = None;
        }
        Ok(())
    }

    /// Persists `message` in the outbox (giving it a `client_message_id` if
    /// it has none) and sends the outbox, oldest first. The result arrives
    /// as [`Event::Sent`] or [`Event::SendFailed`]; if the server cannot be
    /// reached the entry stays and is sent after the next reconnect.
    ///
    /// # Errors
    /// The local store failed (nothing was queued).
    pub async fn send(&mut self, mut message: SendMessage) -> ClientResult<String> {
        let id = message
            .client_message_id
            .get_or_insert_with(|| uuid::Uuid::now_v7().to_string())
            .clone();
        self.state.push_outbox(&message)?;
        self.flush_outbox().await?;
        Ok(id)
    }

    /// Sends a plain text message (plaintext chats) through the outbox.
    ///
    /// # Errors
    /// The local store failed.
    pub async fn send_text(&mut self, chat: ChatId, text: &str) -> ClientResult<String> {
        self.send(plain_message(chat, text, MessageType::Text, None, None))
            .await
    }

    /// Marks the chat read up to `seq` (over the socket when it is open).
    pub async fn read(&mut self, chat: ChatId, seq: i64) {
        self.send_frame(&ClientFrame::Read { chat_id: chat, seq })
            .await;
    }

    /// Tells the chat this user is typing (ephemeral; dropped when offline).
    pub async fn typing(&mut self, chat: ChatId) {
        self.send_frame(&ClientFrame::Typing { chat_id: chat })
            .await;
    }

    /// Sends every outbox entry in order until one fails for a reason that
    /// may pass (the rest wait for the next attempt).
    async fn flush_outbox(&mut self) -> ClientResult<()> {
        for entry in self.state.outbox()? {
            let id = entry.message.client_message_id.clone().unwrap_or_default();
            match self.session.api.send_message(&entry.message).await {
                Ok(posted) => {
                    self.state.remove_outbox(&id)?;
                    self.pending.push_back(Event::Sent {
                        client_message_id: id,
                        message: posted.message,
                    });
                }
                Err(ClientError::Api(error)) if error.is_permanent() => {
                    self.state.remove_outbox(&id)?;
                    self.pending.push_back(Event::SendFailed {
                        client_message_id: id,
                        error,
                    });
                }
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Closes the socket; a later [`Connection::next_event`] reconnects.
    pub async fn disconnect(&mut self) {
        if let Some(mut socket) = self.socket.take() {
            socket.close().await;
        }
    }

    /// The next event. Connects (and reconnects, with backoff) as needed;
    /// connection trouble is reported as [`Event::Disconnected`], not as an
    /// error.
    ///
    /// Cancel-safe for events: a call dropped at any await (in a
    /// `select!` or under a timeout) loses no chat-log event, because an
    /// event is recorded as processed only right before it is returned.
    /// At worst an ack is sent again, or an outbox entry is retried.
    ///
    /// # Errors
    /// The device was revoked or its token refused ([`ClientError::Revoked`]),
    /// or the local store failed.
    pub async fn next_event(&mut self) -> ClientResult<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if self.socket.is_none() {
                if self.attempt > 0 {
                    let wait = self.backoff();
                    self.transport().sleep(wait).await;
                }
                match self.open().await {
                    Ok(()) => {
                        self.attempt = 0;
                        self.pinged = false;
                        self.pending.push_back(Event::Connected {
                            user_id: self.session.user_id,
                            device_id: self.session.device_id,
                        });
                        self.flush_outbox().await?;
                        continue;
                    }
                    Err(ClientError::Revoked) => return Err(ClientError::Revoked),
                    Err(e @ ClientError::Store(_)) => return Err(e),
                    Err(e) => {
                        self.attempt = self.attempt.saturating_add(1);
                        let retry_in = self.backoff();
                        return Ok(Event::Disconnected {
                            reason: e.to_string(),
                            retry_in,
                        });
                    }
                }
            }
            if self.resync {
                self.sync_again().await?;
                continue;
            }
            if self.unacked_events >= ACK_BATCH {
                self.flush_acks().await;
            }
            let transport = self.transport();
            let heartbeat = self.config.heartbeat;
            let Some(socket) = self.socket.as_mut() else {
                continue;
            };
            let wait = if self.unacked.is_empty() {
                heartbeat
            } else {
                ACK_DELAY.min(heartbeat)
            };
            let received = timeout(&*transport, wait, socket.recv()).await;
            let reason = match received {
                None if !self.unacked.is_empty() => {
                    self.flush_acks().await;
                    continue;
                }
                None if self.pinged => "no answer to a ping".to_owned(),
                None => {
                    self.pinged = true;
                    self.send_frame(&ClientFrame::Ping).await;
                    self.flush_outbox().await?;
                    continue;
                }
                Some(Ok(WsEvent::Text(text))) => {
                    self.pinged = false;
                    let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
                        // A frame type newer than this SDK: skip it.
                        continue;
                    };
                    if let Some(event) = self.process(frame)? {
                        return Ok(event);
                    }
                    continue;
                }
                Some(Ok(WsEvent::Closed(Some(close::UNAUTHORIZED | close::REVOKED)))) => {
                    self.socket = None;
                    return Err(ClientError::Revoked);
                }
                Some(Ok(WsEvent::Closed(code))) => {
                    format!("the server closed the connection ({code:?})")
                }
                Some(Err(e)) => e.to_string(),
            };
            self.disconnect().await;
            self.attempt = 1;
            let retry_in = self.backoff();
            return Ok(Event::Disconnected { reason, retry_in });
        }
    }

    /// Records a chat-log event and queues its ack; `false` for a duplicate.
    fn accept(&mut self, chat: ChatId, seq: i64) -> ClientResult<bool> {
        if seq <= self.position(chat)? {
            return Ok(false);
        }
        self.record(chat, seq)?;
        self.unacked.insert(chat, seq);
        self.unacked_events += 1;
        // No await between recording the event and handing it out: a
        // caller that drops `next_event` (a `select!`, a timeout) would
        // otherwise lose an event already recorded as processed. A full
        // batch is acked at the start of the next call instead.
        Ok(true)
    }

    /// Sends the coalesced acks (kept while there is no socket).
    async fn flush_acks(&mut self) {
        if self.socket.is_none() {
            return;
        }
        let acks: Vec<(ChatId, i64)> = self.unacked.drain().collect();
        self.unacked_events = 0;
        for (chat_id, seq) in acks {
            self.send_frame(&ClientFrame::Ack { chat_id, seq }).await;
        }
    }

    fn process(&mut self, frame: ServerFrame) -> ClientResult<Option<Event>> {
        if let Some((chat, seq)) = chat_log_position(&frame) {
            let pos = self.position(chat)?;
            let held = self.held.get(&chat).is_some_and(|h| h.contains_key(&seq));
            if seq <= pos || held {
                return Ok(None);
            }
            if !self.synced && seq > pos + 1 {
                self.held.entry(chat).or_default().insert(seq, frame);
                return Ok(None);
            }
            let event = self.apply(frame)?;
            self.release(chat, false)?;
            return Ok(event);
        }
        Ok(match frame {
            ServerFrame::SyncDone { chats } => {
                self.synced = true;
                let chats_held: Vec<ChatId> = self.held.keys().copied().collect();
                for chat in chats_held {
                    self.release(chat, true)?;
                }
                for c in &chats {
                    self.record(c.chat_id, c.seq)?;
                }
                // Acked at the start of the next call (see `accept`).
                self.unacked_events = self.unacked_events.max(ACK_BATCH);
                // After the events released above.
                self.pending.push_back(Event::SyncDone { chats });
                None
            }
            other => self.apply(other)?,
        })
    }

    /// Hands out the held events of `chat` that are now next in line (all
    /// of them, in seq order, with `all`), through `pending`.
    fn release(&mut self, chat: ChatId, all: bool) -> ClientResult<()> {
        loop {
            let pos = self.position(chat)?;
            let Some(held) = self.held.get_mut(&chat) else {
                return Ok(());
            };
            let Some(entry) = held.first_entry() else {
                self.held.remove(&chat);
                return Ok(());
            };
            if !all && *entry.key() != pos + 1 {
                return Ok(());
            }
            let frame = entry.remove();
            if let Some(event) = self.apply(frame)? {
                self.pending.push_back(event);
            }
        }
    }

    /// Applies one frame: records chat-log events (dropping duplicates),
    /// keeps messages in the store, and gives the event to hand out.
    fn apply(&mut self, frame: ServerFrame) -> ClientResult<Option<Event>> {
        Ok(match frame {
            ServerFrame::NewMessage {
                chat_id,
                seq,
                message,
            } => {
                if !self.accept(chat_id, seq)? {
                    return Ok(None);
                }
                let text = match message.message_type {
                    MessageType::Text => message.content.as_deref(),
                    _ => None,
                };
                self.state.save_message(&message, text)?;
                Some(Event::Message {
                    chat_id,
                    seq,
                    message,
                })
            }
            ServerFrame::MessageUpdated {
                chat_id,
                seq,
                message,
            } => {
                if !self.accept(chat_id, seq)? {
                    return Ok(None);
                }
                if let Some(text) = message.content.as_deref() {
                    self.state.edit_message(message.id, Some(text))?;
                }
                Some(Event::MessageUpdated {
                    chat_id,
                    seq,
                    message,
                })
            }
            ServerFrame::MessageDeleted {
                chat_id,
                seq,
                message,
            } => {
                if !self.accept(chat_id, seq)? {
                    return Ok(None);
                }
                self.state.edit_message(message.id, None)?;
                Some(Event::MessageDeleted {
                    chat_id,
                    seq,
                    message,
                })
            }
            ServerFrame::ChatUpdated {
                chat_id,
                seq,
                message,
            } => {
                if !self.accept(chat_id, seq)? {
                    return Ok(None);
                }
                Some(Event::ChatUpdated {
                    chat_id,
                    seq,
                    message,
                })
            }
            ServerFrame::Receipt {
                chat_id,
                delivered_seq,
                read_seq,
            } => Some(Event::Receipt {
                chat_id,
                delivered_seq,
                read_seq,
            }),
            ServerFrame::Typing { chat_id, user_id } => Some(Event::Typing { chat_id, user_id }),
            ServerFrame::Presence {
                user_id,
                status,
                last_seen,
            } => Some(Event::Presence {
                user_id,
                status,
                last_seen,
            }),
            ServerFrame::SyncDone { chats } => {
                for c in &chats {
                    self.record(c.chat_id, c.seq)?;
                }
                Some(Event::SyncDone { chats })
            }
            ServerFrame::TooLong { chat_id, seq } => {
                self.record(chat_id, seq)?;
                Some(Event::TooLong { chat_id, seq })
            }
            ServerFrame::Inbox { item } => Some(Event::Inbox(item)),
            ServerFrame::Invitation { invitation } => Some(Event::Invitation(invitation)),
            ServerFrame::KeyPackagesLow { available } => Some(Event::KeyPackagesLow { available }),
            ServerFrame::Error { code, message } => {
                // Before `sync_done`, a refusal may be the sync's: without
                // it this socket would never catch up.
                if code == ErrorCode::RateLimited && !self.synced {
                    self.resync = true;
                }
                Some(Event::ServerError { code, message })
            }
            ServerFrame::Connected { .. }
            | ServerFrame::Joined { .. }
            | ServerFrame::Pong
            | ServerFrame::MessageSent { .. } => None,
        })
    }
}

/// The chat and seq of a chat-log event (`None` for other frames).
fn chat_log_position(frame: &ServerFrame) -> Option<(ChatId, i64)> {
    match frame {
        ServerFrame::NewMessage { chat_id, seq, .. }
        | ServerFrame::MessageUpdated { chat_id, seq, .. }
        | ServerFrame::MessageDeleted { chat_id, seq, .. }
        | ServerFrame::ChatUpdated { chat_id, seq, .. } => Some((*chat_id, *seq)),
        _ => None,
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::transport::{Request, Response, TransportError};

    /// A socket that plays a script of server frames, then stays silent.
    #[derive(Debug)]
    struct Scripted(VecDeque<String>);

    #[async_trait::async_trait]
    impl WebSocket for Scripted {
        async fn send(&mut self, _: String) -> Result<(), TransportError> {
            Ok(())
        }
        async fn recv(&mut self) -> Result<WsEvent, TransportError> {
            match self.0.pop_front() {
                Some(text) => Ok(WsEvent::Text(text)),
                None => std::future::pending().await,
            }
        }
        async fn close(&mut self) {}
    }

    /// A transport whose one WebSocket plays `script`; no HTTP.
    #[derive(Debug)]
    struct OneSocket(Mutex<Option<VecDeque<String>>>);

    #[async_trait::async_trait]
    impl Transport for OneSocket {
        async fn http(&self, _: Request) -> Result<Response, TransportError> {
            Err(TransportError("no HTTP here".to_owned()))
        }
        async fn connect(&self, _: &str) -> Result<Box<dyn WebSocket>, TransportError> {
            let script = self.0.lock().unwrap().take();
            script
                .map(|s| Box::new(Scripted(s)) as Box<dyn WebSocket>)
                .ok_or_else(|| TransportError("one socket only".to_owned()))
        }
        async fn sleep(&self, duration: Duration) {
            tokio::time::sleep(duration).await;
        }
    }

    fn new_message(chat: ChatId, seq: i64) -> String {
        serde_json::json!({
            "type": "new_message", "chat_id": chat, "seq": seq,
            "message": {
                "id": MessageId::new(), "chat_id": chat, "seq": seq,
                "sender_id": UserId::new(), "sender_device_id": null,
                "type": "text", "content": format!("m{seq}"), "ciphertext": null,
                "media_id": null, "reply_to": null, "client_message_id": null,
                "timestamp": "2026-12-01T00:00:00.000Z", "client_timestamp": null,
                "edited_at": null, "deleted": false, "event": null, "status": "sent"
            }
        })
        .to_string()
    }

    /// Found by the soak checker (`natter bench soak`): the server delivers
    /// live events from the moment it authenticates a socket, so a live
    /// event can overtake the events the `sync` replays. The SDK took it,
    /// moved its position past the replay, and dropped the replayed events
    /// as duplicates: a gap for good.
    #[tokio::test]
    async fn a_live_event_that_overtakes_the_sync_replay_is_held_not_a_gap() {
        let (user, device, chat) = (UserId::new(), DeviceId::new(), ChatId::new());
        let connected =
            serde_json::json!({"type": "connected", "user_id": user, "device_id": device});
        let sync_done =
            serde_json::json!({"type": "sync_done", "chats": [{"chat_id": chat, "seq": 5}]});
        // The device had seq 2; 5 came live before the sync sent 3 and 4.
        let script = VecDeque::from([
            connected.to_string(),
            new_message(chat, 5),
            new_message(chat, 3),
            new_message(chat, 4),
            sync_done.to_string(),
        ]);
        let transport = Arc::new(OneSocket(Mutex::new(Some(script))));
        let client = Client::with_transport(transport, "http://natter.invalid");
        let session = client.session(user, device, "token");
        let state = Arc::new(MemoryState::default());
        state.record(chat, 2).unwrap();
        let mut conn = session.connect(state);
        let mut seqs = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), conn.next_event())
                .await
                .unwrap()
                .unwrap();
            match event {
                Event::Message { seq, .. } => seqs.push(seq),
                Event::SyncDone { .. } => break,
                _ => {}
            }
        }
        assert_eq!(seqs, vec![3, 4, 5], "in order, none dropped");
    }
}
