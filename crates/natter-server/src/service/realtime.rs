//! Real-time: live connections, chat-log events and sync, receipts from
//! acknowledgements, typing and presence.
//!
//! A committed chat-log entry is rendered once and handed to the bus with
//! the chat's members as recipients; each connection delivers it in its
//! chat's seq order ([`DeliveryCursor`]) and fills any gap from the store,
//! so a device sees every event once, in order, live or by sync.

use std::sync::Arc;

use natter_proto::users::PresenceStatus;
use natter_proto::ws::{ServerFrame, close};
use natter_proto::{ChatId, DeviceId, UserId};
use tokio::sync::{mpsc, watch};

use super::{Principal, ServiceError, ServiceResult, Services, render};
use crate::bus::{ConnId, Kick, LiveEvent, Outbound};
use crate::clock::Timestamp;
use crate::ratelimit::Limit;
use crate::store::{Appended, ChatHead, EntryKind, EventBody, LogEntry, ReceiptChange};

use super::delivery::DeliveryCursor;

/// A live connection's ends, from [`Services::connect`].
#[derive(Debug)]
pub struct LiveConnection {
    /// Its id on the bus.
    pub id: ConnId,
    /// Events, state and signals to send.
    pub outbound: mpsc::Receiver<Outbound>,
    /// Set when the connection must close.
    pub kicked: watch::Receiver<Option<Kick>>,
    /// Where the connection starts in each of the user's chats.
    pub cursor: DeliveryCursor,
}

/// Who an entry adds to or removes from its chat.
fn membership_change(entry: &LogEntry) -> (Option<UserId>, Option<UserId>) {
    use natter_proto::chats::ChatEvent;
    match &entry.kind {
        EntryKind::System(ChatEvent::MemberAdded { user_id }) => (Some(*user_id), None),
        EntryKind::System(
            ChatEvent::MemberRemoved { user_id } | ChatEvent::MemberLeft { user_id },
        ) => (None, Some(*user_id)),
        _ => (None, None),
    }
}

impl Services {
    /// Registers a live connection. The chats' heads are read after
    /// registering, so every later event reaches the connection live or by
    /// gap filling.
    ///
    /// # Errors
    /// Store failure.
    pub async fn connect(&self, who: &Principal) -> ServiceResult<LiveConnection> {
        let queue = self.inner.config.limits.ws_queue_depth;
        let reg = self.inner.bus.register(who.user, who.device, queue).await;
        let heads = match self.inner.store.chat_heads(who.user).await {
            Ok(heads) => heads,
            Err(e) => {
                self.inner.bus.unregister(who.user, reg.id).await;
                return Err(e.into());
            }
        };
        if reg.first_of_user {
            self.announce_presence(who.user, PresenceStatus::Online, None)
                .await;
        }
        // It syncs now; a push waiting for it would only be noise.
        self.cancel_push(who.device);
        Ok(LiveConnection {
            id: reg.id,
            outbound: reg.outbound,
            kicked: reg.kicked,
            cursor: DeliveryCursor::new(&heads),
        })
    }

    /// Unregisters a connection; the user's last one records `last_seen`
    /// and tells their audience they went offline.
    pub async fn disconnect(&self, who: &Principal, conn: ConnId) {
        if self.inner.bus.unregister(who.user, conn).await {
            let now = Timestamp::now();
            if let Err(e) = self.inner.store.set_last_seen(who.user, now).await {
                tracing::warn!(error = %e, "could not record last seen");
            }
            self.announce_presence(who.user, PresenceStatus::Offline, Some(now))
                .await;
            // A connection that came meanwhile may have announced `online`
            // before this `offline` went out (it waited on the store): say
            // where the user is now, after it, so the last word is right.
            let now_status = self.inner.bus.presence(who.user).await;
            if now_status != PresenceStatus::Offline {
                self.announce_presence(who.user, now_status, None).await;
            }
        }
    }

    /// The events of a chat after `after` that the caller may see, at most
    /// `limit`, rendered.
    ///
    /// # Errors
    /// Store failure.
    pub async fn events_after(
        &self,
        who: &Principal,
        chat: ChatId,
        after: i64,
        limit: i64,
    ) -> ServiceResult<Vec<(i64, Arc<str>)>> {
        let events = self
            .inner
            .store
            .events_after(chat, who.user, after, limit)
            .await?;
        Ok(events.iter().map(|e| (e.seq, render::stored(e))).collect())
    }

    /// The caller's current chats and their heads.
    ///
    /// # Errors
    /// Store failure.
    pub async fn chat_heads(&self, who: &Principal) -> ServiceResult<Vec<ChatHead>> {
        Ok(self.inner.store.chat_heads(who.user).await?)
    }

    /// One chat's head, if the caller is in it now.
    ///
    /// # Errors
    /// Store failure.
    pub async fn chat_head(
        &self,
        who: &Principal,
        chat: ChatId,
    ) -> ServiceResult<Option<ChatHead>> {
        Ok(self.inner.store.chat_head(chat, who.user).await?)
    }

    /// A chat's receipt positions as a frame.
    ///
    /// # Errors
    /// Store failure.
    pub async fn receipt_frame(&self, chat: ChatId) -> ServiceResult<Arc<str>> {
        let receipts = self.inner.store.receipt_state(chat).await?;
        Ok(render::text(&render::receipt_frame(chat, receipts)))
    }

    /// Sends an appended entry to every member's devices (but `except`).
    pub(super) async fn publish(&self, appended: &Appended, except: Option<ConnId>) {
        let body = match &appended.entry.kind {
            EntryKind::Message(_) | EntryKind::System(_) => {
                EventBody::Entry(appended.entry.clone())
            }
            // Edits and deletions are published by `publish_changed`, with the
            // message as it is now.
            EntryKind::Edit(_) | EntryKind::Delete(_) => return,
        };
        self.fan_out(appended, &body, except).await;
    }

    /// Sends an edit or deletion, carrying the message as it is now.
    pub(super) async fn publish_changed(&self, appended: &Appended, message: &LogEntry) {
        let body = match appended.entry.kind {
            EntryKind::Delete(_) => EventBody::Deleted(message.clone()),
            _ => EventBody::Edited(message.clone()),
        };
        self.fan_out(appended, &body, None).await;
    }

    /// Sends a chat's new receipt positions to its members.
    pub(super) async fn publish_receipt(&self, change: &ReceiptChange) {
        let frame = render::text(&render::receipt_frame(change.chat_id, change.receipts));
        self.inner.bus.send_state(&change.recipients, frame).await;
    }

    /// Renders the event once and queues it for every recipient.
    async fn fan_out(&self, appended: &Appended, body: &EventBody, except: Option<ConnId>) {
        let (joined, left) = membership_change(&appended.entry);
        let event = Arc::new(LiveEvent {
            chat_id: appended.entry.chat_id,
            seq: appended.entry.seq,
            joined,
            left,
            frame: render::text(&render::event_frame(appended.entry.seq, body)),
        });
        self.inner
            .bus
            .send_event(&appended.recipients, event, except)
            .await;
    }

    /// Sends a message from a live connection: the sender's connection gets
    /// `message_sent` instead of `new_message`.
    ///
    /// # Errors
    /// As [`Services::send`].
    pub async fn send_from_connection(
        &self,
        who: &Principal,
        conn: ConnId,
        req: natter_proto::chats::SendMessage,
    ) -> ServiceResult<ServerFrame> {
        let client_message_id = req.client_message_id.clone();
        let sent = self.send_message(who, req, Some(conn)).await?;
        Ok(ServerFrame::MessageSent {
            duplicate: sent.duplicate,
            client_message_id,
            message: render::message(&sent.view.entry, sent.view.status),
        })
    }

    /// Sends several messages from a live connection, in order: each is
    /// checked as by [`Services::send_from_connection`], then the valid ones
    /// are handed to the store together
    /// ([`crate::store::ChatLog::post_in_order`]), so they take their `seq`
    /// in the order given and, where the engine can, share commits. One answer per message, in order.
    pub async fn send_many_from_connection(
        &self,
        who: &Principal,
        conn: ConnId,
        reqs: Vec<natter_proto::chats::SendMessage>,
    ) -> Vec<ServiceResult<ServerFrame>> {
        let mut keys = Vec::with_capacity(reqs.len());
        let mut prepared = Vec::with_capacity(reqs.len());
        let mut valid = Vec::with_capacity(reqs.len());
        for req in reqs {
            keys.push(req.client_message_id.clone());
            match self.prepare_message(who, req).await {
                Ok(message) => {
                    valid.push(message);
                    prepared.push(None);
                }
                Err(e) => prepared.push(Some(e)),
            }
        }
        let mut stored = self.inner.store.post_in_order(valid).await.into_iter();
        let posted = prepared.into_iter().map(|refused| match refused {
            Some(e) => Err(e),
            None => stored
                .next()
                .unwrap_or_else(|| {
                    Err(crate::store::StoreError::internal(
                        "post_in_order answered fewer messages than it was given",
                    ))
                })
                .map_err(ServiceError::from),
        });
        let mut out = Vec::with_capacity(keys.len());
        for (posted, client_message_id) in posted.into_iter().zip(keys) {
            let answer = match posted {
                Ok(p) => self
                    .posted(p, Some(conn))
                    .await
                    .map(|sent| ServerFrame::MessageSent {
                        duplicate: sent.duplicate,
                        client_message_id,
                        message: render::message(&sent.view.entry, sent.view.status),
                    }),
                Err(e) => Err(e),
            };
            out.push(answer);
        }
        out
    }

    /// Records that this device received each chat up to its seq.
    ///
    /// # Errors
    /// A negative seq (422), store failure.
    pub async fn ack(&self, who: &Principal, positions: Vec<(ChatId, i64)>) -> ServiceResult<()> {
        if positions.iter().any(|(_, seq)| *seq < 0) {
            return Err(ServiceError::Validation(
                "`seq` must not be negative.".to_owned(),
            ));
        }
        let changes = self
            .inner
            .store
            .ack(who.user, positions, Timestamp::now())
            .await?;
        for change in &changes {
            self.publish_receipt(change).await;
        }
        Ok(())
    }

    /// Takes one unit of a per-user WebSocket frame budget (`limit` is one
    /// of the `Ws…PerUser` limits), shared by all of the user's connections.
    ///
    /// # Errors
    /// Over budget: how long to wait. An engine that cannot decide denies.
    pub async fn frame_budget(
        &self,
        who: &Principal,
        limit: Limit,
    ) -> Result<(), crate::ratelimit::Denied> {
        self.inner.limiter.check(limit, &who.user.to_string()).await
    }

    /// Tells the chat's other online participants that the caller is typing.
    ///
    /// # Errors
    /// Unknown chat (404), too often (429).
    pub async fn typing(&self, who: &Principal, chat: ChatId) -> ServiceResult<()> {
        self.limit(Limit::TypingPerDevice, &format!("{}:{chat}", who.device))
            .await?;
        let access = self.access(who, chat).await?;
        if access.role.is_none() {
            return Err(ServiceError::ChatNotFound);
        }
        let frame = render::text(&ServerFrame::Typing {
            chat_id: chat,
            user_id: who.user,
        });
        for member in self.inner.store.members(chat).await? {
            if member.user_id != who.user {
                self.inner
                    .bus
                    .send_signal(member.user_id, Arc::clone(&frame))
                    .await;
            }
        }
        Ok(())
    }

    /// Marks this connection away or back online.
    pub async fn set_presence(
        &self,
        who: &Principal,
        conn: ConnId,
        status: PresenceStatus,
    ) -> ServiceResult<()> {
        self.limit(Limit::PresencePerDevice, &who.device.to_string())
            .await?;
        let away = match status {
            PresenceStatus::Away => true,
            PresenceStatus::Online => false,
            PresenceStatus::Offline => {
                return Err(ServiceError::Validation(
                    "`status` is `online` or `away`.".to_owned(),
                ));
            }
        };
        if let Some(now) = self.inner.bus.set_away(who.user, conn, away).await {
            self.announce_presence(who.user, now, None).await;
        }
        Ok(())
    }

    /// The user's presence as `viewer` may see it.
    pub(super) async fn presence_for(&self, user: UserId, visible: bool) -> PresenceStatus {
        if visible {
            self.inner.bus.presence(user).await
        } else {
            PresenceStatus::Offline
        }
    }

    /// Tells the online users allowed to see it that `user`'s presence changed.
    async fn announce_presence(
        &self,
        user: UserId,
        status: PresenceStatus,
        last_seen: Option<Timestamp>,
    ) {
        let max = self.inner.config.limits.presence_group_max_members;
        let audience = match self.inner.store.presence_audience(user, max).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "could not load the presence audience");
                return;
            }
        };
        let frame = render::text(&ServerFrame::Presence {
            user_id: user,
            status,
            last_seen: last_seen.map(Timestamp::to_datetime),
        });
        for viewer in audience {
            if self.inner.bus.presence(viewer).await != PresenceStatus::Offline {
                self.inner.bus.send_signal(viewer, Arc::clone(&frame)).await;
            }
        }
    }

    /// Closes a device's live connections (it was logged out or revoked).
    pub(super) async fn close_device(&self, user: UserId, device: DeviceId) {
        self.inner
            .bus
            .close_device(
                user,
                device,
                Kick {
                    code: close::REVOKED,
                    reason: "device logged out",
                },
            )
            .await;
    }

    /// Closes every live connection (shutdown) and waits, at most `wait`,
    /// for them to record their users' last-seen times.
    pub async fn close_connections(&self, wait: std::time::Duration) {
        self.inner.bus.close_all(Kick {
            code: close::GOING_AWAY,
            reason: "server shutting down",
        });
        let deadline = tokio::time::Instant::now() + wait;
        while self.inner.bus.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
