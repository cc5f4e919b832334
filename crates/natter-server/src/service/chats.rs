//! Chats, messages and history: who may see and do what in a chat.
//!
//! Every operation on a chat starts from [`Services::access`], the one gate:
//! a chat the caller never belonged to answers exactly like a missing one.
//! Writes re-check membership inside their transaction in the store, so a
//! removal racing a send never lets the send through.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use natter_proto::chats::{
    ChatKind, CreateChat, EditMessage, MessageStatus, MessageType, Role, SendMessage,
};
use natter_proto::{ChatId, MessageId, UserId};

use super::{Principal, ServiceError, ServiceResult, Services, clean_text};
use crate::bus::ConnId;
use crate::clock::Timestamp;
use crate::store::rules::{BodyRefusal, MlsRefusal};
use crate::store::{
    ChatAccess, ChatChange, ChatChanged, ChatCreated, ChatOverview, ChatRecord, HistoryQuery,
    LogEntry, Member, MessageChange, MessageChanged, NewChat, NewContent, NewMessage, Posted,
    ReceiptState,
};

/// A chat with its participants, as the caller sees it.
#[derive(Debug, Clone)]
pub struct ChatView {
    /// The chat.
    pub chat: ChatRecord,
    /// The caller's role, if they are a participant now.
    pub role: Option<Role>,
    /// Current participants.
    pub members: Vec<Member>,
    /// For an answer to an add: who was added and who invited.
    pub adds: Option<Adds>,
}

/// Who of the people of an add became members and who was invited instead
/// (their privacy setting refused the add).
#[derive(Debug, Clone, Default)]
pub struct Adds {
    /// New members.
    pub added: Vec<UserId>,
    /// Invited (not members until they accept).
    pub invited: Vec<UserId>,
}

/// A chat-log entry with the status its sender sees.
#[derive(Debug, Clone)]
pub struct MessageView {
    /// The entry.
    pub entry: LogEntry,
    /// Sent, delivered or read.
    pub status: MessageStatus,
}

/// A stored message, and whether it was a retry of one stored before.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub(super) view: MessageView,
    /// True for a retry of a message already stored.
    pub(super) duplicate: bool,
}

/// Which page of history.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryRequest {
    /// 1-based page (the seed's paging); ignored with cursors.
    pub page: Option<i64>,
    /// Entries per page (default 50).
    pub limit: Option<i64>,
    /// Entries before this seq, newest first.
    pub before_seq: Option<i64>,
    /// Entries after this seq, oldest first.
    pub after_seq: Option<i64>,
}

/// The error for a body that does not suit its chat.
fn body_refused(refusal: BodyRefusal) -> ServiceError {
    if let BodyRefusal::Mls(refusal) = refusal {
        return mls_refused(refusal);
    }
    ServiceError::Validation(
        match refusal {
            BodyRefusal::ContentRequired => "`content` is required.",
            BodyRefusal::CiphertextRequired => "`ciphertext` is required.",
            BodyRefusal::NotEncrypted => {
                "This chat is not encrypted: send `content`, not `ciphertext`."
            }
            BodyRefusal::Encrypted => "This chat is end-to-end encrypted: send only `ciphertext`.",
            BodyRefusal::Mls(_) => "The ciphertext is not an MLS message for this chat.",
        }
        .to_owned(),
    )
}

/// The error for an MLS message a chat does not take.
pub(super) fn mls_refused(refusal: MlsRefusal) -> ServiceError {
    match refusal {
        MlsRefusal::Epoch { epoch, current } => ServiceError::InvalidMlsMessage(format!(
            "The MLS message is for epoch {epoch}; this chat is at epoch {current} and takes \
             application messages for it and the {} before it.",
            natter_proto::e2ee::PAST_EPOCHS
        )),
        MlsRefusal::Malformed => ServiceError::InvalidMlsMessage(
            "The ciphertext is not a well-formed MLS message.".to_owned(),
        ),
        MlsRefusal::NotPrivate => ServiceError::InvalidMlsMessage(
            "Messages of an encrypted chat must be MLS private messages.".to_owned(),
        ),
        MlsRefusal::WrongGroup => ServiceError::InvalidMlsMessage(
            "The MLS message is for another group than this chat's (its id's 16 bytes).".to_owned(),
        ),
        MlsRefusal::WrongContentType => ServiceError::InvalidMlsMessage(
            "Application messages go to /messages, commits to /chats/{chat_id}/commits.".to_owned(),
        ),
    }
}

/// The default page size, as in the seed's example.
const DEFAULT_PAGE_SIZE: i64 = 50;

/// The status of an entry given its chat's receipt positions: read once
/// every other member read it, delivered once every other member received
/// it. (The positions are the lowest over all members, and a sender's own
/// position is at least their message's, so the lowest is the others'.)
pub(super) fn status_of(entry: &LogEntry, receipts: &ReceiptState) -> MessageStatus {
    if receipts.read_seq >= entry.seq {
        MessageStatus::Read
    } else if receipts.delivered_seq >= entry.seq {
        MessageStatus::Delivered
    } else {
        MessageStatus::Sent
    }
}

impl Services {
    /// The gate: the chat if the caller is or was a participant.
    pub(super) async fn access(&self, who: &Principal, chat: ChatId) -> ServiceResult<ChatAccess> {
        self.inner
            .store
            .chat_access(chat, who.user)
            .await?
            .ok_or(ServiceError::ChatNotFound)
    }

    pub(super) async fn view(&self, access: ChatAccess) -> ServiceResult<ChatView> {
        let members = self.inner.store.members(access.chat.id).await?;
        Ok(ChatView {
            chat: access.chat,
            role: access.role,
            members,
            adds: None,
        })
    }

    /// Creates a chat; for a direct chat that exists, returns it (`false`).
    ///
    /// # Errors
    /// Bad participants or name (422), unknown users (404), too many (409).
    pub async fn create_chat(
        &self,
        who: &Principal,
        req: CreateChat,
    ) -> ServiceResult<(ChatView, bool)> {
        if !req.encrypted && self.inner.config.e2ee.require_encryption {
            return Err(ServiceError::EncryptionRequired);
        }
        let limits = &self.inner.config.limits;
        let mut others: Vec<UserId> = req
            .participants
            .into_iter()
            .filter(|u| *u != who.user)
            .collect();
        others.sort();
        others.dedup();
        let name = match req.kind {
            ChatKind::Direct => {
                if others.len() != 1 {
                    return Err(ServiceError::Validation(
                        "A direct chat has exactly one other participant.".to_owned(),
                    ));
                }
                if req.name.is_some() {
                    return Err(ServiceError::Validation(
                        "Direct chats have no name.".to_owned(),
                    ));
                }
                None
            }
            ChatKind::Group => {
                if others.len() + 1 > limits.max_group_members {
                    return Err(ServiceError::GroupFull(limits.max_group_members));
                }
                let name = req.name.ok_or_else(|| {
                    ServiceError::Validation("A group needs a `name`.".to_owned())
                })?;
                Some(clean_text(
                    "name",
                    &name,
                    limits.max_chat_name_chars,
                    false,
                )?)
            }
        };
        let new = NewChat {
            id: ChatId::new(),
            kind: req.kind,
            name,
            encrypted: req.encrypted,
            creator: who.user,
            others,
            now: Timestamp::now(),
        };
        if new.kind == ChatKind::Group {
            // Groups respect their participants' privacy settings.
            return Ok((self.create_group(who, new).await?, true));
        }
        let (chat, created) = match self.inner.store.create_chat(new).await? {
            ChatCreated::Created(chat, appended) => {
                self.publish(&appended, None).await;
                (chat, true)
            }
            ChatCreated::Existing(chat) => (chat, false),
            ChatCreated::UnknownUser(_) => return Err(ServiceError::UserNotFound),
        };
        let access = self.access(who, chat.id).await?;
        Ok((self.view(access).await?, created))
    }

    /// A chat the caller is or was in.
    ///
    /// # Errors
    /// [`ServiceError::ChatNotFound`].
    pub async fn chat(&self, who: &Principal, chat: ChatId) -> ServiceResult<ChatView> {
        let access = self.access(who, chat).await?;
        // Former participants keep the history of their periods, not a view
        // of the chat as it is now.
        if access.role.is_none() {
            return Err(ServiceError::ChatNotFound);
        }
        self.view(access).await
    }

    /// The caller's chats, most recent activity first.
    ///
    /// # Errors
    /// Store failure.
    pub async fn chats(
        &self,
        who: &Principal,
    ) -> ServiceResult<Vec<(ChatOverview, Option<MessageView>)>> {
        let overviews = self.inner.store.chats_of(who.user).await?;
        let mut out = Vec::with_capacity(overviews.len());
        for overview in overviews {
            let last = match &overview.last_message {
                Some(entry) => {
                    let receipts = self.inner.store.receipt_state(overview.chat.id).await?;
                    Some(MessageView {
                        status: status_of(entry, &receipts),
                        entry: entry.clone(),
                    })
                }
                None => None,
            };
            out.push((overview, last));
        }
        Ok(out)
    }

    /// Sends a message. A retry with the same `client_message_id` returns the
    /// first message (`false`).
    ///
    /// # Errors
    /// Not a participant (404), bad content (422).
    pub async fn send(
        &self,
        who: &Principal,
        req: SendMessage,
    ) -> ServiceResult<(MessageView, bool)> {
        let sent = self.send_message(who, req, None).await?;
        Ok((sent.view, !sent.duplicate))
    }

    /// Sends a message and publishes it to every participant's devices but
    /// the `except` connection.
    pub(super) async fn send_message(
        &self,
        who: &Principal,
        req: SendMessage,
        except: Option<ConnId>,
    ) -> ServiceResult<Sent> {
        let message = self.prepare_message(who, req).await?;
        let posted = self.inner.store.post(message).await?;
        self.posted(posted, except).await
    }

    /// Checks a message to send (membership, rate limit, type, body) and
    /// makes the row to post.
    pub(super) async fn prepare_message(
        &self,
        who: &Principal,
        req: SendMessage,
    ) -> ServiceResult<NewMessage> {
        self.limit(
            crate::ratelimit::Limit::MessagesPerUser,
            &who.user.to_string(),
        )
        .await?;
        let limits = &self.inner.config.limits;
        if matches!(req.message_type, MessageType::System | MessageType::Commit) {
            return Err(ServiceError::Validation(
                "`type` must be text, image, video or file (commits go to \
                 POST /api/v1/chats/{chat_id}/commits)."
                    .to_owned(),
            ));
        }
        // Membership, and whether the body suits the chat (plaintext or
        // encrypted), are checked by the store in the append itself, so a
        // plain send reads nothing first. An attachment's check needs the
        // chat, so only a send with media looks it up here.
        let media_id = match (req.message_type, req.media_id.as_deref()) {
            (MessageType::Text, None) => None,
            (MessageType::Text, Some(_)) => {
                return Err(ServiceError::Validation(
                    "A `text` message carries no `media_id`; use type image, video or file."
                        .to_owned(),
                ));
            }
            (t, None) => {
                return Err(ServiceError::Validation(format!(
                    "A message of type `{}` needs a `media_id`.",
                    serde_json::to_value(t)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )));
            }
            (t, Some(raw)) => {
                let access = self.access(who, req.chat_id).await?;
                if access.role.is_none() {
                    return Err(ServiceError::ChatNotFound);
                }
                Some(self.attachable(who, raw, t, access.chat.encrypted).await?)
            }
        };
        let (content, ciphertext) = self.message_body(req.content, req.ciphertext)?;
        if let Some(key) = &req.client_message_id {
            let len = key.chars().count();
            if len == 0 || len > limits.max_client_message_id_chars {
                return Err(ServiceError::Validation(format!(
                    "`client_message_id` must have 1 to {} characters.",
                    limits.max_client_message_id_chars
                )));
            }
        }
        let message = NewMessage {
            id: MessageId::new(),
            chat_id: req.chat_id,
            sender_id: who.user,
            sender_device_id: who.device,
            message_type: req.message_type,
            content,
            ciphertext,
            media_id,
            reply_to: req.reply_to,
            client_message_id: req.client_message_id,
            client_timestamp: req.timestamp.map(|t| {
                Timestamp(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
            }),
            now: Timestamp::now(),
        };
        Ok(message)
    }

    /// Publishes a posted message to every participant's devices but the
    /// `except` connection and gives it with its status. A retry of a stored
    /// message is not published again (it was the first time).
    pub(super) async fn posted(
        &self,
        posted: Posted,
        except: Option<ConnId>,
    ) -> ServiceResult<Sent> {
        match posted {
            Posted::Created(appended) => {
                self.publish(&appended, except).await;
                // A message carries ciphertext exactly when its chat is
                // end-to-end encrypted (`message_body` allows nothing else).
                let encrypted = appended.entry.ciphertext.is_some();
                self.plan_push(&appended, encrypted);
                Ok(Sent {
                    view: MessageView {
                        status: status_of(&appended.entry, &appended.receipts),
                        entry: appended.entry,
                    },
                    duplicate: false,
                })
            }
            Posted::Duplicate(entry) => {
                let receipts = self.inner.store.receipt_state(entry.chat_id).await?;
                Ok(Sent {
                    view: MessageView {
                        status: status_of(&entry, &receipts),
                        entry,
                    },
                    duplicate: true,
                })
            }
            Posted::NotMember => Err(ServiceError::ChatNotFound),
            Posted::BadReply => Err(ServiceError::Validation(
                "`reply_to` is not a message of this chat that you can see.".to_owned(),
            )),
            Posted::MediaGone => Err(ServiceError::Validation(
                "`media_id` does not name an upload you may use.".to_owned(),
            )),
            Posted::WrongBody(refusal) => Err(body_refused(refusal)),
        }
    }

    /// Checks and decodes the body of a message, as far as that does not
    /// depend on the chat: text within its limit, or base64 ciphertext
    /// within its; never both. Whether the body suits the chat is
    /// [`body_refusal`]'s, checked by the store in the append.
    fn message_body(
        &self,
        content: Option<String>,
        ciphertext: Option<String>,
    ) -> ServiceResult<(Option<String>, Option<Vec<u8>>)> {
        let limits = &self.inner.config.limits;
        match (content, ciphertext) {
            (Some(_), Some(_)) => Err(ServiceError::Validation(
                "Send `content` (plaintext chats) or `ciphertext` (encrypted chats), not both."
                    .to_owned(),
            )),
            (Some(text), None) => {
                let len = text.chars().count();
                if text.trim().is_empty() {
                    return Err(ServiceError::Validation(
                        "`content` must not be empty.".to_owned(),
                    ));
                }
                if len > limits.max_message_chars {
                    return Err(ServiceError::Validation(format!(
                        "`content` is {len} characters long; the most allowed is {}.",
                        limits.max_message_chars
                    )));
                }
                Ok((Some(text), None))
            }
            (None, Some(encoded)) => {
                let bytes = BASE64.decode(encoded.as_bytes()).map_err(|_| {
                    ServiceError::Validation("`ciphertext` must be standard base64.".to_owned())
                })?;
                if bytes.is_empty() || bytes.len() > limits.max_ciphertext_bytes {
                    return Err(ServiceError::Validation(format!(
                        "`ciphertext` must hold 1 to {} bytes.",
                        limits.max_ciphertext_bytes
                    )));
                }
                Ok((None, Some(bytes)))
            }
            (None, None) => Ok((None, None)),
        }
    }

    /// A page of the history the caller may see (from joining until leaving).
    ///
    /// # Errors
    /// Unknown chat (404), bad paging (400).
    pub async fn history(
        &self,
        who: &Principal,
        chat: ChatId,
        req: HistoryRequest,
    ) -> ServiceResult<(Vec<MessageView>, bool)> {
        self.access(who, chat).await?;
        let max = i64::try_from(self.inner.config.limits.max_page_size).unwrap_or(i64::MAX);
        let limit = req.limit.unwrap_or(DEFAULT_PAGE_SIZE.min(max));
        if !(1..=max).contains(&limit) {
            return Err(ServiceError::InvalidParameter(format!(
                "`limit` must be between 1 and {max}."
            )));
        }
        let page = req.page.unwrap_or(1);
        if page < 1 {
            return Err(ServiceError::InvalidParameter(
                "`page` starts at 1.".to_owned(),
            ));
        }
        if req.before_seq.is_some_and(|s| s < 1) || req.after_seq.is_some_and(|s| s < 0) {
            return Err(ServiceError::InvalidParameter(
                "`before_seq` and `after_seq` are positions in the chat log.".to_owned(),
            ));
        }
        let offset = (page - 1)
            .checked_mul(limit)
            .ok_or_else(|| ServiceError::InvalidParameter("`page` is too large.".to_owned()))?;
        let query = HistoryQuery {
            before_seq: req.before_seq,
            after_seq: req.after_seq,
            offset,
            limit,
        };
        let (entries, has_more) = self.inner.store.history(chat, who.user, query).await?;
        let receipts = self.inner.store.receipt_state(chat).await?;
        let views = entries
            .into_iter()
            .map(|entry| MessageView {
                status: status_of(&entry, &receipts),
                entry,
            })
            .collect();
        Ok((views, has_more))
    }

    /// Edits one of the caller's messages, within the edit window.
    ///
    /// # Errors
    /// Unknown message (404), not the sender (403), too late (409), bad content (422).
    pub async fn edit_message(
        &self,
        who: &Principal,
        id: MessageId,
        req: EditMessage,
    ) -> ServiceResult<MessageView> {
        let chat = self.message_chat(who, id).await?;
        let (content, ciphertext) = self.message_body(req.content, req.ciphertext)?;
        if let Some(refusal) = crate::store::rules::refuse_body(
            chat.chat.encrypted,
            content.is_some(),
            ciphertext.is_some(),
            false,
        ) {
            return Err(body_refused(refusal));
        }
        let window = i64::try_from(
            self.inner
                .config
                .limits
                .edit_window_secs
                .saturating_mul(1000),
        )
        .unwrap_or(i64::MAX);
        let change = MessageChange {
            message: id,
            actor: who.user,
            device: who.device,
            edit: Some(NewContent {
                content,
                ciphertext,
                window_ms: window,
            }),
            now: Timestamp::now(),
        };
        let changed = self.inner.store.change_message(change).await?;
        self.message_changed(changed).await
    }

    /// Deletes one of the caller's messages for everyone.
    ///
    /// # Errors
    /// Unknown message (404), not the sender (403).
    pub async fn delete_message(
        &self,
        who: &Principal,
        id: MessageId,
    ) -> ServiceResult<MessageView> {
        self.message_chat(who, id).await?;
        let change = MessageChange {
            message: id,
            actor: who.user,
            device: who.device,
            edit: None,
            now: Timestamp::now(),
        };
        let changed = self.inner.store.change_message(change).await?;
        self.message_changed(changed).await
    }

    /// The chat of a message the caller may see, as a participant now.
    async fn message_chat(&self, who: &Principal, id: MessageId) -> ServiceResult<ChatAccess> {
        let chat = self
            .inner
            .store
            .chat_of_message(id)
            .await?
            .ok_or(ServiceError::MessageNotFound)?;
        match self.inner.store.chat_access(chat, who.user).await? {
            Some(access) if access.role.is_some() => Ok(access),
            _ => Err(ServiceError::MessageNotFound),
        }
    }

    async fn message_changed(&self, changed: MessageChanged) -> ServiceResult<MessageView> {
        match changed {
            MessageChanged::Done(appended, entry) => {
                let entry = *entry;
                self.publish_changed(&appended, &entry).await;
                Ok(MessageView {
                    status: status_of(&entry, &appended.receipts),
                    entry,
                })
            }
            MessageChanged::NotFound => Err(ServiceError::MessageNotFound),
            MessageChanged::NotSender => Err(ServiceError::Forbidden(
                "Only the sender may change a message.".to_owned(),
            )),
            MessageChanged::TooLate => Err(ServiceError::EditWindowClosed),
            MessageChanged::WrongBody(refusal) => Err(body_refused(refusal)),
        }
    }

    /// Renames a group (admins).
    ///
    /// # Errors
    /// Unknown chat (404), not an admin (403), direct chat or bad name (422).
    pub async fn rename_chat(
        &self,
        who: &Principal,
        chat: ChatId,
        name: &str,
    ) -> ServiceResult<ChatView> {
        let name = clean_text(
            "name",
            name,
            self.inner.config.limits.max_chat_name_chars,
            false,
        )?;
        self.change_chat(who, chat, ChatChange::Rename(name)).await
    }

    /// Adds users to a group (admins); a user whose privacy setting
    /// refuses the caller is invited instead.
    ///
    /// # Errors
    /// Unknown chat or user (404), not an admin (403), full (409), too many
    /// invitations (409), rate limited (429).
    pub async fn add_participants(
        &self,
        who: &Principal,
        chat: ChatId,
        users: Vec<UserId>,
    ) -> ServiceResult<ChatView> {
        let max = self.inner.config.limits.max_group_members;
        if users.is_empty() || users.len() > max {
            return Err(ServiceError::Validation(format!(
                "`user_ids` must hold 1 to {max} users."
            )));
        }
        self.add_to_group(who, chat, users).await
    }

    /// Removes a participant (admins), or leaves (anyone, for themself).
    ///
    /// # Errors
    /// Unknown chat or participant (404), not an admin (403).
    pub async fn remove_participant(
        &self,
        who: &Principal,
        chat: ChatId,
        user: UserId,
    ) -> ServiceResult<()> {
        self.change_chat(who, chat, ChatChange::Remove(user))
            .await
            .map(drop)
    }

    /// Changes a participant's role (admins).
    ///
    /// # Errors
    /// Unknown chat or participant (404), not an admin (403).
    pub async fn set_role(
        &self,
        who: &Principal,
        chat: ChatId,
        user: UserId,
        role: Role,
    ) -> ServiceResult<ChatView> {
        self.change_chat(who, chat, ChatChange::SetRole(user, role))
            .await
    }

    async fn change_chat(
        &self,
        who: &Principal,
        chat: ChatId,
        change: ChatChange,
    ) -> ServiceResult<ChatView> {
        let access = self.access(who, chat).await?;
        if access.role.is_none() {
            return Err(ServiceError::ChatNotFound);
        }
        let max = self.inner.config.limits.max_group_members;
        match self
            .inner
            .store
            .change_chat(chat, who.user, change, max, Timestamp::now())
            .await?
        {
            ChatChanged::Done(appended) => {
                for a in &appended {
                    self.publish(a, None).await;
                }
            }
            ChatChanged::NotMember => return Err(ServiceError::ChatNotFound),
            ChatChanged::Forbidden => {
                return Err(ServiceError::Forbidden(
                    "Only the group's admins may do this.".to_owned(),
                ));
            }
            ChatChanged::UnknownUser(_) => return Err(ServiceError::UserNotFound),
            ChatChanged::GroupFull => return Err(ServiceError::GroupFull(max)),
            ChatChanged::LastAdmin => return Err(ServiceError::LastAdmin),
            ChatChanged::NotAGroup => {
                return Err(ServiceError::Validation(
                    "Direct chats have fixed participants and no name.".to_owned(),
                ));
            }
        }
        let access = self.access(who, chat).await?;
        self.view(access).await
    }

    /// Marks everything up to `seq` as read by the caller.
    ///
    /// # Errors
    /// Unknown chat (404), bad seq (400).
    pub async fn mark_read(&self, who: &Principal, chat: ChatId, seq: i64) -> ServiceResult<i64> {
        let access = self.access(who, chat).await?;
        if access.role.is_none() {
            return Err(ServiceError::ChatNotFound);
        }
        if seq < 0 {
            return Err(ServiceError::Validation(
                "`seq` must not be negative.".to_owned(),
            ));
        }
        let (read_seq, change) = self
            .inner
            .store
            .mark_read(chat, who.user, seq, Timestamp::now())
            .await?;
        if let Some(change) = &change {
            self.publish_receipt(change).await;
        }
        Ok(read_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EntryKind;

    fn entry(sender: UserId, seq: i64) -> LogEntry {
        LogEntry {
            id: MessageId::new(),
            chat_id: ChatId::new(),
            seq,
            sender_id: sender,
            sender_device_id: None,
            kind: EntryKind::Message(MessageType::Text),
            content: Some("hi".into()),
            ciphertext: None,
            media_id: None,
            reply_to: None,
            client_message_id: None,
            client_timestamp: None,
            created_at: Timestamp(0),
            edited_at: None,
            deleted_at: None,
        }
    }

    #[test]
    fn status_follows_the_chats_lowest_positions() {
        let e = entry(UserId::new(), 5);
        let at = |delivered_seq, read_seq| ReceiptState {
            delivered_seq,
            read_seq,
        };
        assert_eq!(status_of(&e, &at(4, 4)), MessageStatus::Sent);
        assert_eq!(status_of(&e, &at(5, 4)), MessageStatus::Delivered);
        assert_eq!(status_of(&e, &at(9, 5)), MessageStatus::Read);
        assert_eq!(
            status_of(&e, &ReceiptState::default()),
            MessageStatus::Sent,
            "a chat of one"
        );
    }
}
