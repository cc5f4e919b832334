//! Real-time: live connections, the update stream and sync, receipts from
//! acknowledgements, typing and presence.
//!
//! Persisted updates go out through the bus after their commit, each with
//! the receiving user's pts; the gateway delivers them per connection in pts
//! order and fills any gap from the store, so a device sees every update
//! once, in order, live or by sync.

use std::sync::Arc;

use natter_proto::users::PresenceStatus;
use natter_proto::ws::{ServerFrame, close};
use natter_proto::{ChatId, DeviceId, UserId};
use tokio::sync::{mpsc, watch};

use super::{Principal, ServiceError, ServiceResult, Services, render};
use crate::bus::{ConnId, Kick, Outbound};
use crate::clock::Timestamp;
use crate::ratelimit::Limit;
use crate::store::{Appended, EntryKind, ReceiptChange, UpdateBody};

/// A live connection's ends, from [`Services::connect`].
#[derive(Debug)]
pub struct LiveConnection {
    /// Its id on the bus.
    pub id: ConnId,
    /// Updates and signals to send.
    pub outbound: mpsc::Receiver<Outbound>,
    /// Set when the connection must close.
    pub kicked: watch::Receiver<Option<Kick>>,
    /// The user's pts when the connection was registered.
    pub pts: i64,
}

impl Services {
    /// Registers a live connection. The pts is read after registering, so
    /// every later update reaches the connection live or by gap filling.
    ///
    /// # Errors
    /// Store failure.
    pub async fn connect(&self, who: &Principal) -> ServiceResult<LiveConnection> {
        let queue = self.inner.config.limits.ws_queue_depth;
        let reg = self.inner.bus.register(who.user, who.device, queue);
        let pts = match self.inner.store.current_pts(who.user).await {
            Ok(pts) => pts,
            Err(e) => {
                self.inner.bus.unregister(who.user, reg.id);
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
            pts,
        })
    }

    /// Unregisters a connection; the user's last one records `last_seen`
    /// and tells their audience they went offline.
    pub async fn disconnect(&self, who: &Principal, conn: ConnId) {
        if self.inner.bus.unregister(who.user, conn) {
            let now = Timestamp::now();
            if let Err(e) = self.inner.store.set_last_seen(who.user, now).await {
                tracing::warn!(error = %e, "could not record last seen");
            }
            self.announce_presence(who.user, PresenceStatus::Offline, Some(now))
                .await;
        }
    }

    /// The user's updates after `since`, up to `limit`, rendered.
    ///
    /// # Errors
    /// Store failure.
    pub async fn updates_after(
        &self,
        who: &Principal,
        since: i64,
        limit: i64,
    ) -> ServiceResult<Vec<(i64, Arc<str>)>> {
        let updates = self
            .inner
            .store
            .updates_since(who.user, since, limit)
            .await?;
        Ok(updates.iter().map(|u| (u.pts, render::stored(u))).collect())
    }

    /// Sends an appended entry to every user it concerns, each with their pts.
    pub(super) fn publish(&self, appended: &Appended, except: Option<ConnId>) {
        let body = match &appended.entry.kind {
            EntryKind::Message(_) | EntryKind::System(_) => {
                UpdateBody::Entry(appended.entry.clone())
            }
            // Edits and deletions are published by `publish_changed`, with the
            // message as it is now.
            EntryKind::Edit(_) | EntryKind::Delete(_) => return,
        };
        self.fan_out(&body, &appended.fanout, except);
    }

    /// Sends an edit or deletion, carrying the message as it is now.
    pub(super) fn publish_changed(&self, appended: &Appended, message: &crate::store::LogEntry) {
        let body = match appended.entry.kind {
            EntryKind::Delete(_) => UpdateBody::Deleted(message.clone()),
            _ => UpdateBody::Edited(message.clone()),
        };
        self.fan_out(&body, &appended.fanout, None);
    }

    /// Sends a receipt that moved to the other participants.
    pub(super) fn publish_receipt(&self, change: &ReceiptChange) {
        let body = UpdateBody::Receipt {
            chat_id: change.chat_id,
            user_id: change.user_id,
            delivered_seq: change.delivered_seq,
            read_seq: change.read_seq,
        };
        self.fan_out(&body, &change.fanout, None);
    }

    fn fan_out(&self, body: &UpdateBody, fanout: &[(UserId, i64)], except: Option<ConnId>) {
        for (user, pts) in fanout {
            let frame = render::text(&render::update_frame(*pts, body));
            self.inner.bus.send_update(*user, *pts, frame, except);
        }
    }

    /// Sends a message from a live connection: the sender's connection gets
    /// `message_sent` (with its pts) instead of `new_message`.
    ///
    /// # Errors
    /// As [`Services::send`].
    pub async fn send_from_connection(
        &self,
        who: &Principal,
        conn: ConnId,
        req: natter_proto::chats::SendMessage,
    ) -> ServiceResult<(Option<i64>, ServerFrame)> {
        let client_message_id = req.client_message_id.clone();
        let sent = self.send_message(who, req, Some(conn)).await?;
        let message = render::message(&sent.view.entry, sent.view.status);
        Ok((
            sent.pts,
            ServerFrame::MessageSent {
                pts: sent.pts,
                client_message_id,
                message,
            },
        ))
    }

    /// Sends several messages from a live connection, in order: each is
    /// checked as by [`Services::send_from_connection`], then all are handed
    /// to the store together, so they share group commits instead of
    /// waiting for one commit each, and take their `seq` in the order given
    /// (the posts enter the writer's queue in that order). One answer per
    /// message, in order.
    pub async fn send_many_from_connection(
        &self,
        who: &Principal,
        conn: ConnId,
        reqs: Vec<natter_proto::chats::SendMessage>,
    ) -> Vec<ServiceResult<(Option<i64>, ServerFrame)>> {
        let mut keys = Vec::with_capacity(reqs.len());
        let mut prepared = Vec::with_capacity(reqs.len());
        for req in reqs {
            keys.push(req.client_message_id.clone());
            prepared.push(self.prepare_message(who, req).await);
        }
        // `join_all` polls the posts in order, so each enters the writer's
        // (fair, FIFO) queue in order.
        let posts = prepared.into_iter().map(|p| async move {
            match p {
                Ok(message) => self
                    .inner
                    .store
                    .post(message)
                    .await
                    .map_err(ServiceError::from),
                Err(e) => Err(e),
            }
        });
        let posted = futures_util::future::join_all(posts).await;
        // Receipts once per chat, after every commit (statuses as of now).
        let mut receipts: Vec<(ChatId, Vec<crate::store::Receipt>)> = Vec::new();
        let mut out = Vec::with_capacity(posted.len());
        for (posted, client_message_id) in posted.into_iter().zip(keys) {
            let answer = match posted.and_then(|p| self.posted(who, p, Some(conn))) {
                Ok((entry, pts)) => {
                    let cached = receipts.iter().position(|(c, _)| *c == entry.chat_id);
                    let index = match cached {
                        Some(i) => Ok(i),
                        None => match self.inner.store.receipts(entry.chat_id).await {
                            Ok(r) => {
                                receipts.push((entry.chat_id, r));
                                Ok(receipts.len() - 1)
                            }
                            Err(e) => Err(ServiceError::from(e)),
                        },
                    };
                    index.map(|i| {
                        let status = super::chats::status_of(&entry, &receipts[i].1);
                        let message = render::message(&entry, status);
                        (
                            pts,
                            ServerFrame::MessageSent {
                                pts,
                                client_message_id,
                                message,
                            },
                        )
                    })
                }
                Err(e) => Err(e),
            };
            out.push(answer);
        }
        out
    }

    /// Records that this device processed updates up to `pts`.
    ///
    /// # Errors
    /// Store failure.
    pub async fn ack(&self, who: &Principal, pts: i64) -> ServiceResult<()> {
        if pts < 0 {
            return Err(ServiceError::Validation(
                "`pts` must not be negative.".to_owned(),
            ));
        }
        let changes = self
            .inner
            .store
            .ack(who.user, who.device, pts, Timestamp::now())
            .await?;
        for change in &changes {
            self.publish_receipt(change);
        }
        Ok(())
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
                    .send_signal(member.user_id, Arc::clone(&frame));
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
        if let Some(now) = self.inner.bus.set_away(who.user, conn, away) {
            self.announce_presence(who.user, now, None).await;
        }
        Ok(())
    }

    /// The user's presence as `viewer` may see it.
    pub(super) fn presence_for(&self, user: UserId, visible: bool) -> PresenceStatus {
        if visible {
            self.inner.bus.presence(user)
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
        let audience = match self.inner.store.presence_audience(user).await {
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
            if self.inner.bus.presence(viewer) != PresenceStatus::Offline {
                self.inner.bus.send_signal(viewer, Arc::clone(&frame));
            }
        }
    }

    /// Closes a device's live connections (it was logged out or revoked).
    pub(super) fn close_device(&self, user: UserId, device: DeviceId) {
        self.inner.bus.close_device(
            user,
            device,
            Kick {
                code: close::REVOKED,
                reason: "device logged out",
            },
        );
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
