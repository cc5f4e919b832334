//! The WebSocket gateway at `/api/v1/ws`: authentication, client frames,
//! and delivery of the user's updates to this connection in pts order.
//!
//! Delivery invariant: this connection has sent every update in
//! `(live_from, next_pts)` exactly once. A live update below `next_pts` is a
//! duplicate and dropped; one above it means some arrived out of order, and
//! the gap is filled from the store first. `sync` resends `(since,
//! live_from]` only, so across the switch there is no gap and no duplicate.

use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt as _, SinkExt as _};
use natter_proto::ErrorCode;
use natter_proto::ws::{ClientFrame, ServerFrame, close};
use tokio::time::Instant;

use super::AppState;
use super::error::ApiError;
use super::extract::bearer_token;
use crate::bus::Outbound;
use crate::listener::ConnectionSlot;
use crate::service::{LiveConnection, Principal, render};

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
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; see docs/websocket.md for the frames."),
        (status = 401, description = "The Authorization header carries no valid token.", body = natter_proto::ErrorBody),
    )
)]
pub(crate) async fn upgrade(
    State(app): State<AppState>,
    slot: Option<Extension<ConnectionSlot>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
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
    let id = live.id;
    let mut gateway = Gateway {
        app: app.clone(),
        who,
        socket,
        next_pts: live.pts + 1,
        live_from: live.pts,
    };
    let connected = ServerFrame::Connected {
        user_id: who.user(),
        device_id: who.device(),
        pts: live.pts,
    };
    if gateway.send(&connected).await.is_ok() {
        let _ = gateway.serve(live).await;
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
                Err(_) => "invalid token",
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
    /// The next pts this connection will deliver.
    next_pts: i64,
    /// Everything in `(live_from, next_pts)` has been delivered here.
    live_from: i64,
}

impl Gateway {
    async fn serve(&mut self, live: LiveConnection) -> Result<(), Closed> {
        let LiveConnection {
            id,
            mut outbound,
            mut kicked,
            ..
        } = live;
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
                                Outbound::Update { pts, frame } => {
                                    Box::pin(self.deliver(pts, &frame)).await?;
                                }
                                Outbound::Signal(frame) => self.feed_text(&frame).await?,
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
    /// the store together, everything else one by one.
    async fn incoming(
        &mut self,
        conn: crate::bus::ConnId,
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
                    return Ok(Flow::Stop);
                }
                Some(Err(e)) => {
                    self.send_many(conn, &mut sends).await?;
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
            match frame {
                Ok(ClientFrame::SendMessage {
                    chat_id,
                    content,
                    ciphertext,
                    message_type,
                    client_message_id,
                    reply_to,
                    timestamp,
                }) => sends.push(natter_proto::chats::SendMessage {
                    chat_id,
                    content,
                    ciphertext,
                    message_type,
                    timestamp,
                    client_message_id,
                    reply_to,
                    media_id: None,
                }),
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
        Ok(Flow::Continue)
    }

    /// Sends the collected messages (in order) and answers each.
    async fn send_many(
        &mut self,
        conn: crate::bus::ConnId,
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
                // The confirmation takes its place in pts order; if a gap fill
                // already sent that update as `new_message`, it still goes out.
                Ok((Some(pts), frame)) if pts >= self.next_pts => {
                    self.deliver_frame(pts, &frame).await?;
                }
                Ok((_, frame)) => self.send(&frame).await?,
                Err(e) => {
                    let e = ApiError::from(e);
                    self.error(e.code(), e.message()).await?;
                }
            }
        }
        self.flush().await
    }

    /// Handles one client frame other than `send_message`. Errors go back
    /// as `error` frames; only a failed socket ends the connection.
    async fn handle(&mut self, conn: crate::bus::ConnId, frame: ClientFrame) -> Result<(), Closed> {
        let services = self.app.services.clone();
        let who = self.who;
        let outcome = match frame {
            ClientFrame::Auth { .. } => Ok(Some(ServerFrame::Error {
                code: ErrorCode::ValidationFailed,
                message: "Already authenticated.".to_owned(),
            })),
            ClientFrame::Ping => Ok(Some(ServerFrame::Pong)),
            ClientFrame::SendMessage { .. } => {
                let mut sends = Vec::new();
                if let ClientFrame::SendMessage {
                    chat_id,
                    content,
                    ciphertext,
                    message_type,
                    client_message_id,
                    reply_to,
                    timestamp,
                } = frame
                {
                    sends.push(natter_proto::chats::SendMessage {
                        chat_id,
                        content,
                        ciphertext,
                        message_type,
                        timestamp,
                        client_message_id,
                        reply_to,
                        media_id: None,
                    });
                }
                return self.send_many(conn, &mut sends).await;
            }
            ClientFrame::Sync { since } => return self.sync(since).await,
            ClientFrame::Ack { pts } => services.ack(&who, pts).await.map(|()| None),
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

    /// Sends the updates in `(since, live_from]` (those this connection has
    /// not delivered), then `sync_done`.
    async fn sync(&mut self, since: i64) -> Result<(), Closed> {
        if since < 0 {
            return self
                .error(ErrorCode::ValidationFailed, "`since` must not be negative.")
                .await;
        }
        let limits = &self.app.services.config().limits;
        let max_behind = i64::try_from(limits.max_sync_updates).unwrap_or(i64::MAX);
        let page = i64::try_from(limits.sync_page_size).unwrap_or(100);
        let delivered = self.next_pts - 1;
        if self.live_from - since > max_behind {
            return self.send(&ServerFrame::TooLong { pts: delivered }).await;
        }
        let mut cursor = since;
        while cursor < self.live_from {
            let updates = match self
                .app
                .services
                .updates_after(&self.who, cursor, page)
                .await
            {
                Ok(u) => u,
                Err(e) => {
                    let e = ApiError::from(e);
                    return self.error(e.code(), e.message()).await;
                }
            };
            let before = cursor;
            for (pts, frame) in updates {
                if pts > self.live_from {
                    break;
                }
                self.feed_text(&frame).await?;
                cursor = pts;
            }
            self.flush().await?;
            if cursor == before {
                break;
            }
        }
        self.live_from = self.live_from.min(since.max(0));
        self.send(&ServerFrame::SyncDone { pts: delivered }).await
    }

    /// Delivers an update in pts order (see the module docs). Buffered:
    /// the caller flushes.
    async fn deliver(&mut self, pts: i64, frame: &str) -> Result<(), Closed> {
        if pts < self.next_pts {
            return Ok(());
        }
        if pts > self.next_pts {
            self.fill_gap(pts).await?;
        }
        self.feed_text(frame).await?;
        self.next_pts = pts + 1;
        Ok(())
    }

    async fn deliver_frame(&mut self, pts: i64, frame: &ServerFrame) -> Result<(), Closed> {
        let text = render::text(frame);
        self.deliver(pts, &text).await
    }

    /// Sends the stored updates in `[next_pts, before)`.
    async fn fill_gap(&mut self, before: i64) -> Result<(), Closed> {
        let page = i64::try_from(self.app.services.config().limits.sync_page_size).unwrap_or(100);
        while self.next_pts < before {
            let updates = self
                .app
                .services
                .updates_after(
                    &self.who,
                    self.next_pts - 1,
                    page.min(before - self.next_pts),
                )
                .await
                .map_err(|_| Closed)?;
            let start = self.next_pts;
            for (pts, frame) in updates {
                if pts >= before {
                    break;
                }
                self.feed_text(&frame).await?;
                self.next_pts = pts + 1;
            }
            // The store cannot fill the gap (nothing there): rather than
            // deliver with a hole, close; the device reconnects and syncs.
            if self.next_pts == start {
                let _ = close_with(&mut self.socket, close::BEHIND, "reconnect and sync").await;
                return Err(Closed);
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

    async fn error(&mut self, code: ErrorCode, message: &str) -> Result<(), Closed> {
        self.send(&ServerFrame::Error {
            code,
            message: message.to_owned(),
        })
        .await
    }
}
