//! The WebSocket gateway at `/api/v1/ws`: authentication, client frames,
//! and delivery of the events of the user's chats to this connection, each
//! chat in seq order. Where each chat stands, and so what is a duplicate, a
//! gap to fill from the store or what `sync` must send, is decided by the
//! connection's [`DeliveryCursor`] (see `service/delivery.rs`).

use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt as _, SinkExt as _};
use std::collections::HashMap;

use natter_proto::ws::{ChatPosition, ClientFrame, ServerFrame, close};
use natter_proto::{ChatId, ErrorCode};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::AppState;
use super::error::ApiError;
use super::extract::bearer_token;
use super::ws_budget::{ConnectionBudget, FrameKind};
use crate::bus::{ConnId, Kick, LiveEvent, Outbound};
use crate::listener::ConnectionSlot;
use crate::ratelimit::{Denied, Limit};
use crate::service::{DeliveryCursor, Live, LiveConnection, Principal, ServiceError, render};

/// The connection is over (closed by either side or failed).
struct Closed;

/// Whether the connection goes on after a batch of frames.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Most client frames taken from the socket at once. A run of
/// `send_message` among them goes to the store together (one group commit
/// instead of one each); bounded so one busy client cannot starve delivery
/// to its own connection for long.
const READY_FRAMES_MAX: usize = 64;

/// Opens the WebSocket. An `Authorization: Bearer` header authenticates the
/// upgrade (a bad one is a 401 before upgrading); without it the first frame
/// must be `{"type":"auth","token":…}` within `limits.ws_auth_timeout_secs`.
#[utoipa::path(
    get, path = "/api/v1/ws", tag = "realtime",
    params(
        ("Connection" = String, Header, description = "`Upgrade`."),
        ("Upgrade" = String, Header, description = "`websocket`."),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`."),
        ("Sec-WebSocket-Key" = String, Header, description = "16 random bytes in base64 (RFC 6455)."),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; see docs/websocket.md for the frames."),
        (status = 400, description = "Not a WebSocket upgrade request (`invalid_parameter`).", body = natter_proto::ErrorBody),
        (status = 401, description = "The Authorization header carries no valid token.", body = natter_proto::ErrorBody),
    )
)]
pub(crate) async fn upgrade(
    State(app): State<AppState>,
    slot: Option<Extension<ConnectionSlot>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // axum's own refusal is plain text; ours is the error envelope.
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(
                ErrorCode::InvalidParameter,
                format!(
                    "This route opens a WebSocket: send an HTTP/1.1 upgrade request ({}).",
                    rejection.body_text()
                ),
            )
            .into_response();
        }
    };
    let principal = match bearer_token(&headers) {
        Some(token) => match app.services.authenticate(token).await {
            Ok(p) => Some(p),
            Err(e) => return ApiError::from(e).into_response(),
        },
        None => None,
    };
    let limits = &app.services.config().limits;
    ws.read_buffer_size(limits.ws_read_buffer_bytes)
        .write_buffer_size(limits.ws_write_buffer_bytes)
        .max_message_size(limits.ws_max_message_bytes)
        .max_frame_size(limits.ws_max_message_bytes)
        .on_upgrade(move |socket| async move {
            // The socket counts against its address's connection limit until it closes.
            let _slot = slot;
            run(app, socket, principal).await;
        })
}

async fn run(app: AppState, mut socket: WebSocket, principal: Option<Principal>) {
    let who = match principal {
        Some(p) => p,
        None => match Box::pin(authenticate(&app, &mut socket)).await {
            Some(p) => p,
            None => return,
        },
    };
    let live = match Box::pin(app.services.connect(&who)).await {
        Ok(live) => live,
        Err(e) => {
            let e = ApiError::from(e);
            let _ = close_with(&mut socket, 1011, e.message()).await;
            return;
        }
    };
    let LiveConnection {
        id,
        outbound,
        kicked,
        cursor,
    } = live;
    let mut gateway = Gateway {
        budget: ConnectionBudget::new(&app.services.config().rate_limits),
        app: app.clone(),
        who,
        socket,
        cursor,
        acks: Vec::new(),
    };
    let connected = ServerFrame::Connected {
        user_id: who.user(),
        device_id: who.device(),
    };
    if gateway.send(&connected).await.is_ok() {
        let _ = gateway.serve(id, outbound, kicked).await;
    }
    Box::pin(app.services.disconnect(&who, id)).await;
}

/// Waits for the `auth` frame; closes with `close::UNAUTHORIZED` otherwise.
async fn authenticate(app: &AppState, socket: &mut WebSocket) -> Option<Principal> {
    let wait = Duration::from_secs(app.services.config().limits.ws_auth_timeout_secs);
    let first = tokio::time::timeout(wait, socket.recv()).await;
    let reason = match first {
        Err(_) => "authenticate within the time limit",
        Ok(Some(Ok(WsMessage::Text(text)))) => match serde_json::from_str::<ClientFrame>(&text) {
            Ok(ClientFrame::Auth { token }) => match app.services.authenticate(&token).await {
                Ok(p) => return Some(p),
                Err(ServiceError::Unauthorized) => "invalid token",
                // Not the token's fault: a client that took this for a
                // refusal would log the device out over a store restart.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check a WebSocket token");
                    let reason = "the server cannot check tokens now; reconnect later";
                    let _ = close_with(socket, close::TRY_AGAIN_LATER, reason).await;
                    return None;
                }
            },
            _ => "the first frame must be auth",
        },
        Ok(_) => "the first frame must be auth",
    };
    let _ = close_with(socket, close::UNAUTHORIZED, reason).await;
    None
}

async fn close_with(socket: &mut WebSocket, code: u16, reason: &str) -> Result<(), Closed> {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    socket
        .send(WsMessage::Close(Some(frame)))
        .await
        .map_err(|_| Closed)
}

/// One authenticated connection.
struct Gateway {
    app: AppState,
    who: Principal,
    socket: WebSocket,
    /// Where this connection is in each chat.
    cursor: DeliveryCursor,
    /// `ack` frames of the frames at hand, sent to the store together.
    acks: Vec<(ChatId, i64)>,
    /// What this connection may still send, per kind of frame, and how
    /// many refusals it may still receive before it is closed.
    budget: ConnectionBudget,
}

impl Gateway {
    async fn serve(
        &mut self,
        id: ConnId,
        mut outbound: mpsc::Receiver<Outbound>,
        mut kicked: watch::Receiver<Option<Kick>>,
    ) -> Result<(), Closed> {
        let limits = self.app.services.config().limits.clone();
        let mut ping = tokio::time::interval(Duration::from_secs(limits.ws_ping_interval_secs));
        ping.tick().await;
        let idle = Duration::from_secs(limits.ws_idle_timeout_secs);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                incoming = self.socket.recv() => {
                    last_heard = Instant::now();
                    // Frames the client has already sent are taken together,
                    // so a run of `send_message` shares group commits.
                    let mut ready = vec![incoming];
                    while ready.len() < READY_FRAMES_MAX
                        && matches!(ready.last(), Some(Some(Ok(WsMessage::Text(_)))))
                    {
                        match self.socket.recv().now_or_never() {
                            Some(next) => ready.push(next),
                            None => break,
                        }
                    }
                    // Boxed (here and below): the rarely reached states would
                    // otherwise size every idle connection's task.
                    if Box::pin(self.incoming(id, ready)).await? == Flow::Stop {
                        return Ok(());
                    }
                }
                out = outbound.recv() => match out {
                    Some(first) => {
                        // Frames already queued go out with one flush (one
                        // write to the socket instead of one each), bounded.
                        let mut next = Some(first);
                        let mut taken = 0;
                        while let Some(out) = next {
                            match out {
                                Outbound::Event(event) => {
                                    Box::pin(self.deliver(&event)).await?;
                                }
                                Outbound::State(frame) | Outbound::Signal(frame) => {
                                    self.feed_text(&frame).await?;
                                }
                            }
                            taken += 1;
                            next = if taken < READY_FRAMES_MAX {
                                outbound.try_recv().ok()
                            } else {
                                None
                            };
                        }
                        self.flush().await?;
                    }
                    None => return Ok(()),
                },
                changed = kicked.changed() => {
                    let kick = *kicked.borrow_and_update();
                    if let (Ok(()), Some(kick)) = (changed, kick) {
                        let _ = close_with(&mut self.socket, kick.code, kick.reason).await;
                    }
                    return Ok(());
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > idle {
                        let _ = close_with(&mut self.socket, close::TIMEOUT, "no frame within the idle timeout").await;
                        return Ok(());
                    }
                    self.socket.send(WsMessage::Ping(Default::default())).await.map_err(|_| Closed)?;
                }
            }
        }
    }

    /// Handles what the socket gave, in order: runs of `send_message` go to
    /// the store together, everything else one by one; the acks among them
    /// go to the store once, at the end.
    async fn incoming(
        &mut self,
        conn: ConnId,
        ready: Vec<Option<Result<WsMessage, axum::Error>>>,
    ) -> Result<Flow, Closed> {
        let mut sends = Vec::new();
        for incoming in ready {
            let frame = match incoming {
                Some(Ok(WsMessage::Text(text))) => match serde_json::from_str::<ClientFrame>(&text)
                {
                    Ok(frame) => Ok(frame),
                    Err(e) => {
                        let code = if e.is_data() {
                            ErrorCode::ValidationFailed
                        } else {
                            ErrorCode::InvalidJson
                        };
                        Err((code, format!("Invalid frame: {e}.")))
                    }
                },
                Some(Ok(WsMessage::Binary(_))) => Err((
                    ErrorCode::ValidationFailed,
                    "Send JSON text frames.".to_owned(),
                )),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(WsMessage::Close(_))) | None => {
                    self.send_many(conn, &mut sends).await?;
                    self.send_acks().await?;
                    return Ok(Flow::Stop);
                }
                Some(Err(e)) => {
                    self.send_many(conn, &mut sends).await?;
                    self.send_acks().await?;
                    let e = e.into_inner();
                    let too_big = matches!(
                        e.downcast_ref::<tungstenite::Error>(),
                        Some(tungstenite::Error::Capacity(_))
                    );
                    if too_big {
                        let _ = close_with(&mut self.socket, 1009, "frame too large").await;
                    }
                    tracing::debug!(error = %e, "WebSocket read failed");
                    return Err(Closed);
                }
            };
            let kind = frame.as_ref().map_or(FrameKind::Malformed, FrameKind::of);
            if let Err(denied) = self.admit(kind).await {
                self.send_many(conn, &mut sends).await?;
                self.refuse(kind.name(), denied).await?;
                continue;
            }
            match frame {
                Ok(ClientFrame::SendMessage {
                    chat_id,
                    content,
                    ciphertext,
                    message_type,
                    client_message_id,
                    reply_to,
                    timestamp,
                    media_id,
                }) => sends.push(natter_proto::chats::SendMessage {
                    chat_id,
                    content,
                    ciphertext,
                    message_type,
                    timestamp,
                    client_message_id,
                    reply_to,
                    media_id,
                }),
                Ok(ClientFrame::Ack { chat_id, seq }) => self.acks.push((chat_id, seq)),
                Ok(frame) => {
                    self.send_many(conn, &mut sends).await?;
                    self.handle(conn, frame).await?;
                }
                Err((code, message)) => {
                    self.send_many(conn, &mut sends).await?;
                    self.error(code, &message).await?;
                }
            }
        }
        self.send_many(conn, &mut sends).await?;
        self.send_acks().await?;
        Ok(Flow::Continue)
    }

    /// Sends the acks gathered, the highest per chat, in one store call.
    async fn send_acks(&mut self) -> Result<(), Closed> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let mut acks = std::mem::take(&mut self.acks);
        let services = self.app.services.clone();
        // One unit per store write; the acks are dropped (a later ack
        // covers them: positions only grow).
        if let Err(denied) = services
            .frame_budget(&self.who, Limit::WsAckWritesPerUser)
            .await
        {
            return self.refuse("ack", denied).await;
        }
        acks.sort_unstable_by_key(|&(chat, seq)| (chat, std::cmp::Reverse(seq)));
        acks.dedup_by_key(|(chat, _)| *chat);
        if let Err(e) = services.ack(&self.who, acks).await {
            let e = ApiError::from(e);
            self.error(e.code(), e.message()).await?;
        }
        Ok(())
    }

    /// Sends the collected messages (in order) and answers each.
    async fn send_many(
        &mut self,
        conn: ConnId,
        sends: &mut Vec<natter_proto::chats::SendMessage>,
    ) -> Result<(), Closed> {
        if sends.is_empty() {
            return Ok(());
        }
        let services = self.app.services.clone();
        let answers = services
            .send_many_from_connection(&self.who, conn, std::mem::take(sends))
            .await;
        for answer in answers {
            match answer {
                // The confirmation takes the message's place in its chat's
                // order (what precedes it is filled in first); if a gap fill
                // already sent it as `new_message`, it still goes out.
                Ok(frame) => {
                    if let ServerFrame::MessageSent {
                        duplicate: false,
                        message,
                        ..
                    } = &frame
                    {
                        let (chat, seq) = (message.chat_id, message.seq);
                        if self.make_room(chat, seq).await? {
                            self.cursor.delivered(chat, seq);
                        }
                    }
                    let text = render::text(&frame);
                    self.feed_text(&text).await?;
                }
                Err(e) => {
                    let e = ApiError::from(e);
                    self.error(e.code(), e.message()).await?;
                }
            }
        }
        self.flush().await
    }

    /// Handles one client frame other than `send_message` and `ack`.
    /// Errors go back as `error` frames; only a failed socket ends the
    /// connection.
    async fn handle(&mut self, conn: ConnId, frame: ClientFrame) -> Result<(), Closed> {
        let services = self.app.services.clone();
        let who = self.who;
        let outcome = match frame {
            ClientFrame::Auth { .. } => Ok(Some(ServerFrame::Error {
                code: ErrorCode::ValidationFailed,
                message: "Already authenticated.".to_owned(),
            })),
            ClientFrame::Ping => Ok(Some(ServerFrame::Pong)),
            ClientFrame::SendMessage { .. } | ClientFrame::Ack { .. } => Ok(None),
            ClientFrame::Sync { chats } => return Box::pin(self.sync(chats)).await,
            ClientFrame::Read { chat_id, seq } => {
                services.mark_read(&who, chat_id, seq).await.map(|_| None)
            }
            ClientFrame::Typing { chat_id } => services.typing(&who, chat_id).await.map(|()| None),
            ClientFrame::Presence { status } => services
                .set_presence(&who, conn, status)
                .await
                .map(|()| None),
            ClientFrame::JoinChat { chat_id } => {
                services.chat(&who, chat_id).await.and_then(|view| {
                    if view.role.is_some() {
                        Ok(Some(ServerFrame::Joined { chat_id }))
                    } else {
                        Err(crate::service::ServiceError::ChatNotFound)
                    }
                })
            }
        };
        match outcome {
            Ok(Some(frame)) => self.send(&frame).await,
            Ok(None) => Ok(()),
            Err(e) => {
                let e = ApiError::from(e);
                self.error(e.code(), e.message()).await
            }
        }
    }

    /// Sends, chat by chat, the events this connection has not delivered
    /// after the device's positions (a current chat not listed: from the
    /// user's join), each chat's receipt positions, then `sync_done`.
    async fn sync(&mut self, positions: Vec<ChatPosition>) -> Result<(), Closed> {
        let limits = self.app.services.config().limits.clone();
        if positions.len() > limits.max_sync_chats {
            let message = format!(
                "`chats` lists {} chats; the most allowed is {}.",
                positions.len(),
                limits.max_sync_chats
            );
            return self.error(ErrorCode::ValidationFailed, &message).await;
        }
        if positions.iter().any(|p| p.seq < 0) {
            return self
                .error(ErrorCode::ValidationFailed, "`seq` must not be negative.")
                .await;
        }
        let services = self.app.services.clone();
        let heads = match services.chat_heads(&self.who).await {
            Ok(heads) => heads,
            Err(e) => {
                let e = ApiError::from(e);
                return self.error(e.code(), e.message()).await;
            }
        };
        let mut listed: HashMap<ChatId, i64> =
            positions.iter().map(|p| (p.chat_id, p.seq)).collect();
        for head in &heads {
            let since = listed
                .remove(&head.chat_id)
                .unwrap_or(head.from_seq - 1)
                .max(head.from_seq - 1);
            // A chat joined since connecting, with no event delivered yet:
            // from its head on, events come live.
            self.cursor.follow_at_head(head.chat_id, head.last_seq);
            let until = self
                .cursor
                .sync_until(head.chat_id)
                .unwrap_or(head.last_seq);
            if self.sync_chat(head.chat_id, since, until).await? {
                self.cursor.synced(head.chat_id, since);
            }
            match services.receipt_frame(head.chat_id).await {
                Ok(frame) => self.feed_text(&frame).await?,
                Err(e) => tracing::debug!(error = %e, "could not read receipt positions"),
            }
        }
        // Chats the device knows but the user is no longer in: the rest of
        // their membership (the store shows nothing past it).
        let mut left: Vec<(ChatId, i64)> = listed.into_iter().collect();
        left.sort_unstable();
        for (chat, since) in left {
            self.sync_chat(chat, since, i64::MAX).await?;
        }
        let done = ServerFrame::SyncDone {
            chats: self.cursor.positions(),
        };
        self.send(&done).await
    }

    /// Sends the events of one chat in `(since, until]`, or `too_long` if
    /// there are more than `limits.max_sync_updates`; true if it sent them all.
    async fn sync_chat(&mut self, chat: ChatId, since: i64, until: i64) -> Result<bool, Closed> {
        let limits = self.app.services.config().limits.clone();
        let max = i64::try_from(limits.max_sync_updates).unwrap_or(i64::MAX);
        let page = i64::try_from(limits.sync_page_size).unwrap_or(100);
        if until.saturating_sub(since) > max && until != i64::MAX {
            let too_long = ServerFrame::TooLong {
                chat_id: chat,
                seq: until,
            };
            return self.send(&too_long).await.map(|()| false);
        }
        let services = self.app.services.clone();
        let mut cursor = since;
        let mut sent = 0i64;
        while cursor < until {
            let events = match services.events_after(&self.who, chat, cursor, page).await {
                Ok(events) => events,
                Err(e) => {
                    let e = ApiError::from(e);
                    return self.error(e.code(), e.message()).await.map(|()| false);
                }
            };
            let before = cursor;
            for (seq, frame) in events {
                if seq > until {
                    break;
                }
                sent += 1;
                if sent > max {
                    let too_long = ServerFrame::TooLong {
                        chat_id: chat,
                        seq: cursor,
                    };
                    return self.send(&too_long).await.map(|()| false);
                }
                self.feed_text(&frame).await?;
                cursor = seq;
            }
            self.flush().await?;
            if cursor == before {
                break;
            }
        }
        Ok(true)
    }

    /// Delivers a live event in its chat's order (see the module docs).
    /// Buffered: the caller flushes.
    async fn deliver(&mut self, event: &LiveEvent) -> Result<(), Closed> {
        if !self.make_room(event.chat_id, event.seq).await? {
            // Delivered already (by a gap fill): if it removed the user, a
            // later entry may have added them back, so keep following.
            return Ok(());
        }
        self.feed_text(&event.frame).await?;
        self.cursor.delivered(event.chat_id, event.seq);
        if event.left == Some(self.who.user()) {
            self.cursor.unfollow(event.chat_id);
        }
        Ok(())
    }

    /// Makes `seq` the next event of `chat` to deliver: fills the gap
    /// before it from the store, and starts following a chat joined since
    /// connecting. False if it was already delivered (or is not the user's
    /// to see).
    async fn make_room(&mut self, chat: ChatId, seq: i64) -> Result<bool, Closed> {
        loop {
            match self.cursor.classify(chat, seq) {
                Live::Duplicate => return Ok(false),
                Live::Next => return Ok(true),
                Live::Gap { after } => {
                    self.fill_gap(chat, after, seq).await?;
                    return Ok(true);
                }
                Live::Unfollowed => {
                    match self.app.services.chat_head(&self.who, chat).await {
                        Ok(Some(head)) => self.cursor.follow_from(chat, head.from_seq),
                        // Not a member now: an event from before they left,
                        // already delivered with their removal.
                        Ok(None) => return Ok(false),
                        Err(_) => return Err(Closed),
                    }
                }
            }
        }
    }

    /// Sends the stored events of `chat` in `(after, before)` that the user
    /// may see.
    async fn fill_gap(&mut self, chat: ChatId, after: i64, before: i64) -> Result<(), Closed> {
        let page = i64::try_from(self.app.services.config().limits.sync_page_size).unwrap_or(100);
        let services = self.app.services.clone();
        let mut cursor = after;
        while cursor + 1 < before {
            let limit = page.min(before - cursor - 1);
            let events = services
                .events_after(&self.who, chat, cursor, limit)
                .await
                .map_err(|_| Closed)?;
            let start = cursor;
            for (seq, frame) in events {
                if seq >= before {
                    break;
                }
                self.feed_text(&frame).await?;
                self.cursor.delivered(chat, seq);
                cursor = seq;
            }
            // Nothing more the user may see before `before`.
            if cursor == start {
                break;
            }
        }
        Ok(())
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), Closed> {
        let text = render::text(frame);
        self.send_text(&text).await
    }

    /// Queues a frame without flushing; [`Gateway::flush`] sends what is queued.
    async fn feed_text(&mut self, text: &str) -> Result<(), Closed> {
        self.socket
            .feed(WsMessage::Text(Utf8Bytes::from(text)))
            .await
            .map_err(|_| Closed)
    }

    async fn flush(&mut self) -> Result<(), Closed> {
        self.socket.flush().await.map_err(|_| Closed)
    }

    async fn send_text(&mut self, text: &str) -> Result<(), Closed> {
        self.socket
            .send(WsMessage::Text(Utf8Bytes::from(text)))
            .await
            .map_err(|_| Closed)
    }

    /// Takes one unit of the frame's budgets: this connection's, then,
    /// for the kinds that have one, the user's in the shared limiter.
    async fn admit(&mut self, kind: FrameKind) -> Result<(), Denied> {
        self.budget.take(kind)?;
        match kind.per_user() {
            Some(limit) => self.app.services.frame_budget(&self.who, limit).await,
            None => Ok(()),
        }
    }

    /// Answers a frame over its budget with `rate_limited`.
    async fn refuse(&mut self, frame: &str, denied: Denied) -> Result<(), Closed> {
        let message = format!(
            "Too many `{frame}` frames; try again in {} seconds.",
            denied.retry_after.as_secs()
        );
        self.error(ErrorCode::RateLimited, &message).await
    }

    /// Sends an `error` frame. A `rate_limited` one over the connection's
    /// refusal budget closes the connection with 1008 instead: it was told.
    async fn error(&mut self, code: ErrorCode, message: &str) -> Result<(), Closed> {
        if code == ErrorCode::RateLimited && !self.budget.refused() {
            let _ = close_with(
                &mut self.socket,
                close::POLICY_VIOLATION,
                "too many frames over the rate limits",
            )
            .await;
            return Err(Closed);
        }
        self.send(&ServerFrame::Error {
            code,
            message: message.to_owned(),
        })
        .await
    }
}
