//! The task that owns the device's [`Messenger`]: it runs what the UI asks
//! ([`Command`]) to completion, one at a time, and between commands waits
//! for the sync engine; everything it learns goes back as [`Update`]s.
//!
//! Waiting uses [`Messenger::receive`], the cancel-safe half of the
//! Messenger's event loop, so a command arriving mid-wait loses no event;
//! processing ([`Messenger::process`]) is never interrupted.
//!
//! Offline: a message that cannot reach the server waits in this device's
//! own queue (in the store, so it survives a restart) and is sent, in
//! order, when the connection is back.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use base64::Engine as _;
use natter_client::api::{HistoryQuery, MessageSearch};
use natter_client::e2ee::payload::Body;
use natter_client::{ClientError, Event, Messenger, MessengerEvent};
use natter_proto::chats::{ChatEvent, ChatKind, MessageStatus, UpdateChat};
use natter_proto::users::{DiscoverContacts, GroupAddPermission, PresenceStatus, UpdateMe};
use natter_proto::{ChatId, DeviceId, ErrorCode, InvitationId, MediaId, MessageId, UserId};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::error::{ChatError, explain};
use crate::oneshot::{find_user, open_file};

/// Messages per history page (scrollback loads one more at a time).
pub const PAGE: usize = 50;
/// Updates waiting for the UI before the driver waits for it.
pub const UPDATE_QUEUE: usize = 1024;
/// Commands waiting for the driver (typing a line is one).
pub const COMMAND_QUEUE: usize = 256;
/// Thumbnails made per page of history (the newest images).
pub const THUMBS_PER_PAGE: usize = 8;
/// State key of the offline queue in the store.
const QUEUE_KEY: &str = "chat/offline-queue";

/// What the UI asks.
#[derive(Debug, Clone)]
pub enum Command {
    /// Reload the chat list.
    Refresh,
    /// Load the latest page of a chat (and its other user's presence).
    Open(ChatId),
    /// Load the page before `before_seq`.
    Older {
        /// The chat.
        chat: ChatId,
        /// The oldest seq shown.
        before_seq: i64,
    },
    /// Send a text; `local_id` names its line until the server has it.
    Send {
        /// The chat.
        chat: ChatId,
        /// The text.
        text: String,
        /// The line's id.
        local_id: String,
        /// The message it answers.
        reply_to: Option<MessageId>,
    },
    /// Edit one of my messages.
    Edit {
        /// The chat.
        chat: ChatId,
        /// The message.
        target: MessageId,
        /// Its new text.
        text: String,
    },
    /// Delete one of my messages for everyone.
    Delete {
        /// The chat.
        chat: ChatId,
        /// The message.
        target: MessageId,
    },
    /// Send a file.
    SendFile {
        /// The chat.
        chat: ChatId,
        /// The file.
        path: PathBuf,
    },
    /// Save a received file to `path` (a directory: under its own name).
    SaveFile {
        /// What the message carried.
        body: Box<Body>,
        /// Where.
        path: PathBuf,
    },
    /// Save a plaintext chat's file to `path` (a directory: under its name).
    SavePlain {
        /// The upload.
        media: MediaId,
        /// Its name.
        name: String,
        /// Where.
        path: PathBuf,
    },
    /// Mark read up to `seq`.
    Read {
        /// The chat.
        chat: ChatId,
        /// The newest seq seen.
        seq: i64,
    },
    /// I am typing.
    Typing(ChatId),
    /// A direct chat with the user of a phone number.
    NewDirect {
        /// The number.
        phone: String,
        /// Without end-to-end encryption.
        plain: bool,
    },
    /// A group with the users of these numbers.
    NewGroup {
        /// Its name.
        name: String,
        /// The numbers.
        phones: Vec<String>,
    },
    /// Add a user to a group.
    Add {
        /// The group.
        chat: ChatId,
        /// Their number.
        phone: String,
    },
    /// Remove a user from a group.
    Remove {
        /// The group.
        chat: ChatId,
        /// Their number.
        phone: String,
    },
    /// Leave a group.
    Leave(ChatId),
    /// Rename a group.
    Rename {
        /// The group.
        chat: ChatId,
        /// The new name.
        name: String,
    },
    /// The safety number with a user.
    Safety(UserId),
    /// Mark a user verified or not.
    Verify {
        /// Who.
        user: UserId,
        /// Verified or not.
        verified: bool,
    },
    /// Search: local history (encrypted chats) and the server (plaintext).
    Search(String),
    /// List this account's devices.
    Devices,
    /// Approve a further device of this account (with the history).
    Approve(DeviceId),
    /// A one-time code to log a new device in without an SMS.
    LoginCode,
    /// Load the pending invitations to groups.
    Invitations,
    /// Accept an invitation: join the group.
    Accept(InvitationId),
    /// Decline an invitation.
    Decline(InvitationId),
    /// Who may add me to groups (others must invite me).
    GroupAdds(GroupAddPermission),
    /// Load the contact list.
    Contacts,
    /// Add the user of a phone number to my contacts.
    AddContact(String),
    /// Remove a contact.
    RemoveContact(UserId),
    /// The encrypted direct chat with a user (made if needed), opened.
    DirectWith(UserId),
    /// Which of these numbers are on Natter.
    Discover(Vec<String>),
}

/// A pending invitation to a group.
#[derive(Debug, Clone, PartialEq)]
pub struct InvitationRow {
    /// The invitation.
    pub id: InvitationId,
    /// The group's name.
    pub group: String,
    /// Who invited me.
    pub inviter: String,
}

/// One of my contacts.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactRow {
    /// Their account.
    pub user: UserId,
    /// Their name.
    pub name: String,
    /// Their number, if I may see it.
    pub phone: Option<String>,
    /// Online now.
    pub online: bool,
    /// Last seen, if they let me know.
    pub last_seen: Option<OffsetDateTime>,
}

/// One chat in the list.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRow {
    /// The chat.
    pub id: ChatId,
    /// Direct or group.
    pub kind: ChatKind,
    /// The group's name, or the other user's.
    pub title: String,
    /// End-to-end encrypted.
    pub encrypted: bool,
    /// Unread messages.
    pub unread: i64,
    /// The last message, as a line of text.
    pub last: String,
    /// The other user of a direct chat.
    pub other: Option<UserId>,
    /// Everyone's names.
    pub people: Vec<(UserId, String)>,
}

/// What a line shows.
#[derive(Debug, Clone, PartialEq)]
pub enum LineBody {
    /// A text.
    Text(String),
    /// A file: what it is, and what saving it needs (none after a restart).
    File {
        /// Its name.
        name: String,
        /// Its size in bytes.
        size: u64,
        /// The message body (key and media id).
        body: Option<Box<Body>>,
    },
    /// A plaintext chat's file: its name (the message's text) and upload.
    PlainFile {
        /// Its name.
        name: String,
        /// The upload.
        media: MediaId,
    },
    /// A chat change.
    System(String),
}

impl LineBody {
    /// Whether it is a file (one `/save N` counts).
    #[must_use]
    pub fn is_file(&self) -> bool {
        matches!(self, Self::File { .. } | Self::PlainFile { .. })
    }
}

/// Where one of my messages is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Waiting for the server while offline.
    Queued,
    /// On its way.
    Sending,
    /// Not mine, or known only by its seq.
    None,
}

/// A message as the conversation shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The chat.
    pub chat: ChatId,
    /// Its seq, once the server has it.
    pub seq: Option<i64>,
    /// The server's id.
    pub message_id: Option<MessageId>,
    /// Its local id while sending.
    pub local_id: Option<String>,
    /// Who.
    pub sender: UserId,
    /// When.
    pub at: OffsetDateTime,
    /// What.
    pub body: LineBody,
    /// Edited.
    pub edited: bool,
    /// Deleted for everyone.
    pub deleted: bool,
    /// Before the server has it.
    pub mark: Mark,
    /// The message it answers.
    pub reply_to: Option<MessageId>,
}

/// A search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The chat.
    pub chat: ChatId,
    /// Its seq.
    pub seq: i64,
    /// Who.
    pub sender: UserId,
    /// The text (or a snippet).
    pub text: String,
    /// From the local history (encrypted) or the server.
    pub local: bool,
}

/// One of the account's devices.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    /// The device.
    pub id: DeviceId,
    /// Its name.
    pub name: String,
    /// This one.
    pub current: bool,
    /// Certified by the account's identity key.
    pub approved: bool,
    /// Its key's fingerprint, if it published keys.
    pub fingerprint: Option<String>,
}

/// What the driver reports.
#[derive(Debug, Clone)]
pub enum Update {
    /// Who I am.
    Me {
        /// The account.
        user: UserId,
        /// My name.
        name: String,
        /// My number.
        phone: String,
    },
    /// The chat list.
    Chats(Vec<ChatRow>),
    /// A page of a chat, oldest first.
    History {
        /// The chat.
        chat: ChatId,
        /// The lines.
        lines: Vec<Line>,
        /// Whether older ones exist.
        has_more: bool,
        /// An older page (prepend) or the latest (replace).
        older: bool,
    },
    /// A new line (received, or mine being sent).
    Line(Box<Line>),
    /// My line `local_id` is stored as `seq`.
    Sent {
        /// The line.
        local_id: String,
        /// Its seq.
        seq: i64,
        /// The server's id.
        message_id: MessageId,
    },
    /// My line `local_id`, queued offline, is on its way now.
    Sending {
        /// The line.
        local_id: String,
    },
    /// My line `local_id` waits for the connection.
    Queued {
        /// The line.
        local_id: String,
    },
    /// My line was refused for good.
    Failed {
        /// The line.
        local_id: String,
        /// Why.
        reason: String,
    },
    /// An edit or deletion of a message.
    Changed {
        /// The chat.
        chat: ChatId,
        /// The message.
        target: MessageId,
        /// The new text; `None`: deleted.
        text: Option<String>,
    },
    /// Receipts moved.
    Receipt {
        /// The chat.
        chat: ChatId,
        /// Delivered to everyone up to here.
        delivered: i64,
        /// Read by everyone up to here.
        read: i64,
    },
    /// Someone is typing.
    Typing {
        /// The chat.
        chat: ChatId,
        /// Who.
        user: UserId,
    },
    /// Someone's presence.
    Presence {
        /// Who.
        user: UserId,
        /// Online now.
        online: bool,
        /// When last seen, if they let me know.
        last_seen: Option<OffsetDateTime>,
    },
    /// Connected or not.
    Connection(bool),
    /// A safety number to compare.
    Safety {
        /// With whom.
        user: UserId,
        /// Grouped digits.
        digits: String,
        /// Marked verified.
        verified: bool,
    },
    /// A contact's identity key changed.
    IdentityChanged(UserId),
    /// Search results.
    Search(Vec<Hit>),
    /// The account's devices.
    Devices(Vec<DeviceRow>),
    /// The pending invitations to groups.
    Invitations(Vec<InvitationRow>),
    /// My contacts.
    Contacts(Vec<ContactRow>),
    /// Lines to show on a screen of their own (discovery's answer).
    Info {
        /// The screen's title.
        title: String,
        /// Its lines.
        lines: Vec<String>,
    },
    /// A long step: its label, or `None` when done.
    Progress(Option<String>),
    /// My file `local_id` is stored: its line's body with what saving it
    /// needs (an encrypted chat's key, a plaintext chat's upload).
    FileKept {
        /// The line.
        local_id: String,
        /// The line's new body.
        body: LineBody,
    },
    /// An image's thumbnail.
    Thumbnail {
        /// The image's message.
        message: MessageId,
        /// The picture.
        thumb: crate::thumb::Thumb,
    },
    /// A transfer moved: `done` of `total` bytes.
    Transfer {
        /// What it is.
        label: String,
        /// Bytes so far.
        done: u64,
        /// All of them.
        total: u64,
    },
    /// Open this chat (one just made).
    OpenChat(ChatId),
    /// Something to tell.
    Notice(String),
    /// Something failed.
    Error(String),
    /// The session ended; the client stops.
    Fatal(String),
}

/// A received file to save.
enum Received {
    /// An encrypted chat's: the message body (media id and key).
    Encrypted(Box<Body>),
    /// A plaintext chat's upload.
    Plain {
        /// The upload.
        media: MediaId,
        /// Its name.
        name: String,
    },
}

/// My file on its way, until the server has its message.
enum Sending {
    /// To an encrypted chat: its key is in the local history once stored.
    Encrypted(ChatId),
    /// To a plaintext chat: the upload is known already.
    Plain {
        /// Its name.
        name: String,
        /// The upload.
        media: MediaId,
    },
}

/// Where a thumbnail's bytes come from (they are drawn the same way).
enum ThumbSource {
    /// An encrypted chat's file (the message body: media id and key): the
    /// image itself, fetched and decrypted.
    Encrypted(Body),
    /// A plaintext chat's upload: the thumbnail the server made.
    Plain(MediaId),
}

/// A message waiting for the connection.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Waiting {
    chat: ChatId,
    text: String,
    local_id: String,
    #[serde(default)]
    reply_to: Option<MessageId>,
}

/// Whether a failure may pass by itself (the server is unreachable or busy).
fn is_offline(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(_)
        | ClientError::Timeout(_)
        | ClientError::WebSocket(_)
        | ClientError::Closed => true,
        ClientError::Api(a) => a.status >= 500 || a.status == 408 || a.status == 429,
        _ => false,
    }
}

/// The driver's state beside the Messenger.
struct Driver {
    base: String,
    updates: mpsc::Sender<Update>,
    me: UserId,
    /// Sends in flight: client_message_id -> local id.
    in_flight: HashMap<String, String>,
    /// My files in flight: client_message_id -> what saving them needs.
    files_in_flight: HashMap<String, Sending>,
    /// Messages waiting for the connection, oldest first.
    queue: VecDeque<Waiting>,
    /// The other user of each direct chat (presence goes to its header).
    chats: HashMap<ChatId, ChatRow>,
    /// Images get thumbnails (the terminal has 24-bit colour).
    thumbs: bool,
}

/// Runs the driver until the UI closes the command channel or the session
/// ends.
pub async fn run(
    mut m: Messenger,
    base: String,
    thumbs: bool,
    mut commands: mpsc::Receiver<Command>,
    updates: mpsc::Sender<Update>,
) {
    let me = m.session().user_id();
    let queue = load_queue(&m);
    let mut d = Driver {
        base,
        updates,
        me,
        in_flight: HashMap::new(),
        files_in_flight: HashMap::new(),
        queue,
        chats: HashMap::new(),
        thumbs,
    };
    d.start(&mut m).await;
    loop {
        while let Some(event) = m.take_event() {
            if !d.on_event(&mut m, event).await {
                return;
            }
        }
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                None => return,
                Some(c) => d.on_command(&mut m, c).await,
            },
            event = m.receive() => match event {
                Ok(event) => {
                    if let Event::Invitation(_) = &event {
                        d.invitations(&m).await;
                    }
                    if let Err(e) = m.process(event).await
                        && !d.failed(&e).await
                    {
                        return;
                    }
                }
                Err(e) => {
                    if !d.failed(&e).await {
                        return;
                    }
                }
            },
        }
    }
}

fn load_queue(m: &Messenger) -> VecDeque<Waiting> {
    m.store()
        .transaction(|tx| tx.get(QUEUE_KEY))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl Driver {
    async fn tell(&self, update: Update) {
        let _ = self.updates.send(update).await;
    }

    async fn error(&self, e: &ClientError) {
        self.tell(Update::Error(explain(e, &self.base))).await;
    }

    /// Reports a failure; `false` when the session is over.
    async fn failed(&self, e: &ClientError) -> bool {
        match e {
            ClientError::Revoked => {
                self.tell(Update::Fatal(explain(e, &self.base))).await;
                false
            }
            ClientError::Api(a) if a.code == ErrorCode::Unauthorized => {
                self.tell(Update::Fatal(explain(e, &self.base))).await;
                false
            }
            ClientError::Store(_) => {
                self.tell(Update::Fatal(explain(e, &self.base))).await;
                false
            }
            _ => {
                self.error(e).await;
                true
            }
        }
    }

    fn save_queue(&self, m: &Messenger) -> Result<(), ChatError> {
        let bytes = serde_json::to_vec(&self.queue).map_err(|e| ChatError::new(e.to_string()))?;
        m.store()
            .transaction(|tx| tx.put(QUEUE_KEY, &bytes))
            .map_err(|e| ChatError::new(format!("cannot keep the offline queue: {e}")))
    }

    async fn start(&mut self, m: &mut Messenger) {
        match m.session().api().me().await {
            Ok(me) => {
                self.tell(Update::Me {
                    user: me.user_id,
                    name: me.name,
                    phone: me.phone,
                })
                .await;
            }
            Err(e) => self.error(&e).await,
        }
        for w in &self.queue {
            self.tell(Update::Line(Box::new(Line {
                chat: w.chat,
                seq: None,
                message_id: None,
                local_id: Some(w.local_id.clone()),
                sender: self.me,
                at: OffsetDateTime::now_utc(),
                body: LineBody::Text(w.text.clone()),
                edited: false,
                deleted: false,
                mark: Mark::Queued,
                reply_to: w.reply_to,
            })))
            .await;
        }
        self.refresh(m).await;
    }

    async fn refresh(&mut self, m: &mut Messenger) {
        let list = match m.session().api().chats().await {
            Ok(l) => l,
            Err(e) => {
                self.error(&e).await;
                return;
            }
        };
        let mut rows = Vec::new();
        for c in list.chats {
            let people: Vec<(UserId, String)> = c
                .participants
                .iter()
                .map(|p| (p.user_id, p.name.clone()))
                .collect();
            let other = c.other_user.as_ref().map(|o| o.user_id);
            let title = match (&c.name, &c.other_user) {
                (Some(n), _) if !n.is_empty() => n.clone(),
                (_, Some(o)) => o.name.clone(),
                _ => "(no name)".to_owned(),
            };
            let last = if c.encrypted {
                m.store()
                    .history(c.id)
                    .ok()
                    .and_then(|h| {
                        h.last().map(|e| match e.file {
                            Some(_) => format!("📎 {}", e.text),
                            None => e.text.clone(),
                        })
                    })
                    .unwrap_or_default()
            } else {
                c.last_message
                    .as_ref()
                    .and_then(|l| l.content.clone())
                    .unwrap_or_default()
            };
            rows.push(ChatRow {
                id: c.id,
                kind: c.kind,
                title,
                encrypted: c.encrypted,
                unread: c.unread_count,
                last,
                other,
                people,
            });
        }
        self.chats = rows.iter().map(|r| (r.id, r.clone())).collect();
        self.tell(Update::Chats(rows)).await;
    }

    /// Handles one Messenger event; `false` when the session is over.
    async fn on_event(&mut self, m: &mut Messenger, event: MessengerEvent) -> bool {
        match event {
            MessengerEvent::Connected => {
                self.tell(Update::Connection(true)).await;
                self.flush(m).await;
                self.refresh(m).await;
                self.invitations(m).await;
            }
            MessengerEvent::Disconnected { .. } => self.tell(Update::Connection(false)).await,
            MessengerEvent::Message(msg) => {
                let at = OffsetDateTime::now_utc();
                match msg.body {
                    Body::Edit { target, text } => {
                        self.tell(Update::Changed {
                            chat: msg.chat_id,
                            target,
                            text: Some(text),
                        })
                        .await;
                    }
                    Body::Delete { target } => {
                        self.tell(Update::Changed {
                            chat: msg.chat_id,
                            target,
                            text: None,
                        })
                        .await;
                    }
                    body => {
                        let body = match (body, msg.media_id) {
                            (Body::Text { text }, Some(media)) => {
                                LineBody::PlainFile { name: text, media }
                            }
                            (body, _) => match body {
                                Body::Text { text } => LineBody::Text(text),
                                b @ Body::File { .. } => file_line(b),
                                _ => return true,
                            },
                        };
                        if !self.chats.contains_key(&msg.chat_id) {
                            self.refresh(m).await;
                        }
                        let image = thumb_source(&body);
                        self.tell(Update::Line(Box::new(Line {
                            chat: msg.chat_id,
                            seq: Some(msg.seq),
                            message_id: Some(msg.message_id),
                            local_id: None,
                            sender: msg.sender,
                            at,
                            body,
                            edited: false,
                            deleted: false,
                            mark: Mark::None,
                            reply_to: msg.reply_to,
                        })))
                        .await;
                        if let Some(source) = image {
                            self.thumbnail(m, msg.message_id, &source).await;
                        }
                    }
                }
            }
            MessengerEvent::ChatChanged { chat_id, event } => {
                if event == ChatEvent::Created {
                    return true;
                }
                let text = self.describe(&event);
                self.tell(Update::Line(Box::new(Line {
                    chat: chat_id,
                    seq: None,
                    message_id: None,
                    local_id: None,
                    sender: self.me,
                    at: OffsetDateTime::now_utc(),
                    body: LineBody::System(text),
                    edited: false,
                    deleted: false,
                    mark: Mark::None,
                    reply_to: None,
                })))
                .await;
                self.refresh(m).await;
            }
            MessengerEvent::Joined { .. } | MessengerEvent::Removed { .. } => {
                self.refresh(m).await;
            }
            MessengerEvent::IdentityChanged { user_id } => {
                self.tell(Update::IdentityChanged(user_id)).await;
            }
            MessengerEvent::Refused { reason, .. } => {
                self.tell(Update::Error(format!("refused for safety: {reason}")))
                    .await;
            }
            MessengerEvent::Undecryptable { reason, .. } => {
                self.tell(Update::Error(format!(
                    "a message could not be decrypted: {reason}"
                )))
                .await;
            }
            MessengerEvent::Linked { imported } => {
                self.tell(Update::Notice(format!(
                    "this device is approved: it reads your encrypted chats now \
                     ({imported} messages of history came along)"
                )))
                .await;
                self.refresh(m).await;
            }
            MessengerEvent::Sent {
                client_message_id,
                seq,
                message_id,
            } => {
                if let Some(local_id) = self.in_flight.remove(&client_message_id) {
                    self.tell(Update::Sent {
                        local_id: local_id.clone(),
                        seq,
                        message_id,
                    })
                    .await;
                    // My own file: what saving it needs is known now.
                    let kept = match self.files_in_flight.remove(&client_message_id) {
                        Some(Sending::Encrypted(chat)) => m
                            .store()
                            .history(chat)
                            .ok()
                            .and_then(|h| h.into_iter().find(|e| e.seq == seq).and_then(|e| e.file))
                            .map(file_line),
                        Some(Sending::Plain { name, media }) => {
                            Some(LineBody::PlainFile { name, media })
                        }
                        None => None,
                    };
                    if let Some(body) = kept {
                        let image = thumb_source(&body);
                        self.tell(Update::FileKept { local_id, body }).await;
                        if let Some(source) = image {
                            self.thumbnail(m, message_id, &source).await;
                        }
                    }
                }
            }
            MessengerEvent::SendFailed {
                client_message_id,
                code,
            } => {
                if let Some(local_id) = self.in_flight.remove(&client_message_id) {
                    self.tell(Update::Failed {
                        local_id,
                        reason: format!("the server refused it ({})", code.as_str()),
                    })
                    .await;
                }
            }
            MessengerEvent::Receipt {
                chat_id,
                delivered_seq,
                read_seq,
            } => {
                self.tell(Update::Receipt {
                    chat: chat_id,
                    delivered: delivered_seq,
                    read: read_seq,
                })
                .await;
            }
            MessengerEvent::Typing { chat_id, user_id } => {
                if user_id != self.me {
                    self.tell(Update::Typing {
                        chat: chat_id,
                        user: user_id,
                    })
                    .await;
                }
            }
            // Live: the header of a direct chat follows it.
            MessengerEvent::Presence {
                user_id,
                status,
                last_seen,
            } => {
                self.tell(Update::Presence {
                    user: user_id,
                    online: status == PresenceStatus::Online,
                    last_seen,
                })
                .await;
            }
        }
        true
    }

    fn name(&self, user: UserId) -> String {
        if user == self.me {
            return "you".to_owned();
        }
        self.chats
            .values()
            .flat_map(|c| c.people.iter())
            .find(|(u, _)| *u == user)
            .map_or_else(|| "someone".to_owned(), |(_, n)| n.clone())
    }

    fn describe(&self, event: &ChatEvent) -> String {
        match event {
            ChatEvent::Created => "the chat was created".to_owned(),
            ChatEvent::MemberAdded { user_id } => format!("{} joined", self.name(*user_id)),
            ChatEvent::MemberRemoved { user_id } => {
                format!("{} was removed", self.name(*user_id))
            }
            ChatEvent::MemberLeft { user_id } => format!("{} left", self.name(*user_id)),
            ChatEvent::Renamed { name } => format!("renamed to {name}"),
            ChatEvent::RoleChanged { user_id, role } => {
                format!("{} is now {role:?}", self.name(*user_id)).to_lowercase()
            }
            ChatEvent::DevicesChanged { user_id } if *user_id == self.me => {
                "your devices changed".to_owned()
            }
            ChatEvent::DevicesChanged { user_id } => {
                format!("{}'s devices changed", self.name(*user_id))
            }
        }
    }

    /// Sends what waited for the connection, in order, until one fails.
    async fn flush(&mut self, m: &mut Messenger) {
        while let Some(w) = self.queue.front().cloned() {
            match self.send_now(m, w.chat, &w.text, w.reply_to).await {
                Ok(cmid) => {
                    self.in_flight.insert(cmid, w.local_id.clone());
                    self.queue.pop_front();
                    self.tell(Update::Sending {
                        local_id: w.local_id.clone(),
                    })
                    .await;
                }
                Err(e) if is_offline(&e) => break,
                Err(e) => {
                    self.queue.pop_front();
                    self.tell(Update::Failed {
                        local_id: w.local_id,
                        reason: explain(&e, &self.base),
                    })
                    .await;
                }
            }
        }
        if let Err(e) = self.save_queue(m) {
            self.tell(Update::Error(e.0)).await;
        }
    }

    async fn send_now(
        &mut self,
        m: &mut Messenger,
        chat: ChatId,
        text: &str,
        reply_to: Option<MessageId>,
    ) -> Result<String, ClientError> {
        if m.chat_is_encrypted(chat).await? {
            m.send_reply(chat, text, reply_to).await
        } else {
            m.send_plain_reply(chat, text, reply_to).await
        }
    }

    async fn on_command(&mut self, m: &mut Messenger, command: Command) {
        if let Err(e) = self.command(m, command).await {
            self.tell(Update::Progress(None)).await;
            self.tell(Update::Error(e.0)).await;
        }
    }

    #[allow(clippy::too_many_lines)]
    async fn command(&mut self, m: &mut Messenger, command: Command) -> Result<(), ChatError> {
        let base = self.base.clone();
        let explain = |e: ClientError| ChatError::client(&e, &base);
        match command {
            Command::Refresh => self.refresh(m).await,
            Command::Open(chat) => {
                self.page(m, chat, None).await?;
                if let Some(other) = self.chats.get(&chat).and_then(|c| c.other)
                    && let Ok(p) = m.session().api().user(other).await
                {
                    self.tell(Update::Presence {
                        user: other,
                        online: p.status == PresenceStatus::Online,
                        last_seen: p.last_seen,
                    })
                    .await;
                }
            }
            Command::Older { chat, before_seq } => self.page(m, chat, Some(before_seq)).await?,
            Command::Send {
                chat,
                text,
                local_id,
                reply_to,
            } => {
                self.tell(Update::Line(Box::new(Line {
                    chat,
                    seq: None,
                    message_id: None,
                    local_id: Some(local_id.clone()),
                    sender: self.me,
                    at: OffsetDateTime::now_utc(),
                    body: LineBody::Text(text.clone()),
                    edited: false,
                    deleted: false,
                    mark: Mark::Sending,
                    reply_to,
                })))
                .await;
                let waiting = Waiting {
                    chat,
                    text,
                    local_id,
                    reply_to,
                };
                if !self.queue.is_empty() {
                    return self.enqueue(m, waiting).await;
                }
                match self
                    .send_now(m, chat, &waiting.text, waiting.reply_to)
                    .await
                {
                    Ok(cmid) => {
                        self.in_flight.insert(cmid, waiting.local_id);
                    }
                    Err(e) if is_offline(&e) => self.enqueue(m, waiting).await?,
                    Err(e) => {
                        self.tell(Update::Failed {
                            local_id: waiting.local_id,
                            reason: explain(e).0,
                        })
                        .await;
                    }
                }
            }
            Command::Edit { chat, target, text } => {
                if m.chat_is_encrypted(chat).await.map_err(explain)? {
                    m.send_edit(chat, target, &text).await.map_err(explain)?;
                } else {
                    m.session()
                        .api()
                        .edit_message(
                            target,
                            &natter_proto::chats::EditMessage {
                                content: Some(text.clone()),
                                ciphertext: None,
                            },
                        )
                        .await
                        .map_err(explain)?;
                }
                self.tell(Update::Changed {
                    chat,
                    target,
                    text: Some(text),
                })
                .await;
            }
            Command::Delete { chat, target } => {
                if m.chat_is_encrypted(chat).await.map_err(explain)? {
                    m.send_delete(chat, target).await.map_err(explain)?;
                } else {
                    m.session()
                        .api()
                        .delete_message(target)
                        .await
                        .map_err(explain)?;
                }
                self.tell(Update::Changed {
                    chat,
                    target,
                    text: None,
                })
                .await;
            }
            Command::SendFile { chat, path } => {
                let encrypted = m.chat_is_encrypted(chat).await.map_err(explain)?;
                let f = open_file(&path)?;
                let (name, size) = (f.name.clone(), f.size);
                let label = format!(
                    "{} {name} ({})",
                    if encrypted {
                        "encrypting and uploading"
                    } else {
                        "uploading"
                    },
                    human_size(size)
                );
                self.tell(Update::Progress(Some(label.clone()))).await;
                let local_id = uuid::Uuid::now_v7().to_string();
                let updates = self.updates.clone();
                let mut progress = |done, total| {
                    // Lossy: a full queue skips a step of the bar.
                    let _ = updates.try_send(Update::Transfer {
                        label: label.clone(),
                        done,
                        total,
                    });
                };
                let (cmid, sending) = if encrypted {
                    let cmid = m
                        .send_file_from(chat, &name, &f.mime, size, f.file, &mut progress)
                        .await
                        .map_err(explain)?;
                    (cmid, Sending::Encrypted(chat))
                } else {
                    let (cmid, media) = m
                        .send_plain_file_from(chat, &name, &f.mime, size, f.file, &mut progress)
                        .await
                        .map_err(explain)?;
                    let name = name.clone();
                    (cmid, Sending::Plain { name, media })
                };
                self.files_in_flight.insert(cmid.clone(), sending);
                self.in_flight.insert(cmid, local_id.clone());
                self.tell(Update::Progress(None)).await;
                self.tell(Update::Line(Box::new(Line {
                    chat,
                    seq: None,
                    message_id: None,
                    local_id: Some(local_id),
                    sender: self.me,
                    at: OffsetDateTime::now_utc(),
                    body: LineBody::File {
                        name,
                        size,
                        body: None,
                    },
                    edited: false,
                    deleted: false,
                    mark: Mark::Sending,
                    reply_to: None,
                })))
                .await;
            }
            Command::SaveFile { body, path } => {
                self.save(m, Received::Encrypted(body), path).await?;
            }
            Command::SavePlain { media, name, path } => {
                self.save(m, Received::Plain { media, name }, path).await?;
            }
            Command::Read { chat, seq } => m.read(chat, seq).await,
            Command::Typing(chat) => m.typing(chat).await,
            Command::NewDirect { phone, plain } => {
                let chat = crate::oneshot::resolve_chat(m, &phone, plain, &base).await?;
                self.refresh(m).await;
                self.tell(Update::OpenChat(chat)).await;
            }
            Command::NewGroup { name, phones } => {
                let mut users = Vec::new();
                for p in &phones {
                    users.push(find_user(m, p, &base).await?);
                }
                let chat = m
                    .create_chat(ChatKind::Group, &users, Some(&name))
                    .await
                    .map_err(explain)?;
                self.refresh(m).await;
                self.tell(Update::OpenChat(chat)).await;
            }
            Command::Add { chat, phone } => {
                let user = find_user(m, &phone, &base).await?;
                if m.chat_is_encrypted(chat).await.map_err(explain)? {
                    m.add_participants(chat, &[user]).await.map_err(explain)?;
                } else {
                    m.session()
                        .api()
                        .add_participants(
                            chat,
                            &natter_proto::chats::AddParticipants {
                                user_ids: vec![user],
                            },
                        )
                        .await
                        .map_err(explain)?;
                }
                self.tell(Update::Notice(format!("added {phone}"))).await;
                self.refresh(m).await;
            }
            Command::Remove { chat, phone } => {
                let user = find_user(m, &phone, &base).await?;
                if m.chat_is_encrypted(chat).await.map_err(explain)? {
                    m.remove_participant(chat, user).await.map_err(explain)?;
                } else {
                    m.session()
                        .api()
                        .remove_participant(chat, user)
                        .await
                        .map_err(explain)?;
                }
                self.tell(Update::Notice(format!("removed {phone}"))).await;
                self.refresh(m).await;
            }
            Command::Leave(chat) => {
                m.leave(chat).await.map_err(explain)?;
                self.tell(Update::Notice("you left the chat".to_owned()))
                    .await;
                self.refresh(m).await;
            }
            Command::Rename { chat, name } => {
                m.session()
                    .api()
                    .update_chat(chat, &UpdateChat { name })
                    .await
                    .map_err(explain)?;
                self.refresh(m).await;
            }
            Command::Safety(user) => {
                let number = m.safety_number(user).await.map_err(explain)?;
                self.tell(Update::Safety {
                    user,
                    digits: number.grouped(),
                    verified: m.is_verified(user),
                })
                .await;
            }
            Command::Verify { user, verified } => {
                m.set_verified(user, verified).map_err(explain)?;
                let number = m.safety_number(user).await.map_err(explain)?;
                self.tell(Update::Safety {
                    user,
                    digits: number.grouped(),
                    verified: m.is_verified(user),
                })
                .await;
            }
            Command::Search(text) => self.search(m, &text).await?,
            Command::Devices => self.devices(m).await?,
            Command::Approve(device) => {
                self.tell(Update::Progress(Some(
                    "approving the device and handing over the history".to_owned(),
                )))
                .await;
                m.approve_device(device, None, true)
                    .await
                    .map_err(explain)?;
                self.tell(Update::Progress(None)).await;
                self.tell(Update::Notice("the device is approved".to_owned()))
                    .await;
                self.devices(m).await?;
            }
            Command::LoginCode => {
                let code = m.session().api().login_code().await.map_err(explain)?;
                self.tell(Update::Notice(format!(
                    "to log a new device in without an SMS: number {}, code {} (valid {} min)",
                    code.phone,
                    code.code,
                    code.expires_in.div_ceil(60)
                )))
                .await;
            }
            Command::Invitations => self.invitations(m).await,
            Command::Accept(invitation) => {
                let chat = m
                    .session()
                    .api()
                    .accept_invitation(invitation)
                    .await
                    .map_err(explain)?;
                let name = chat.name.clone().unwrap_or_default();
                self.invitations(m).await;
                self.refresh(m).await;
                self.tell(Update::OpenChat(chat.id)).await;
                self.tell(Update::Notice(if chat.encrypted {
                    format!(
                        "you joined {name}; its messages can be read once a member's device \
                         adds yours to the encryption (the inviter's, when it is online)"
                    )
                } else {
                    format!("you joined {name}")
                }))
                .await;
            }
            Command::Decline(invitation) => {
                m.session()
                    .api()
                    .decline_invitation(invitation)
                    .await
                    .map_err(explain)?;
                self.tell(Update::Notice("invitation declined".to_owned()))
                    .await;
                self.invitations(m).await;
            }
            Command::GroupAdds(permission) => {
                m.session()
                    .api()
                    .update_me(&UpdateMe {
                        group_add_permission: Some(permission),
                        ..UpdateMe::default()
                    })
                    .await
                    .map_err(explain)?;
                self.tell(Update::Notice(
                    match permission {
                        GroupAddPermission::Everyone => "anyone may add you to groups",
                        GroupAddPermission::Contacts => {
                            "your contacts may add you to groups; others invite you"
                        }
                        GroupAddPermission::Nobody => {
                            "no one adds you to groups: everyone invites you"
                        }
                    }
                    .to_owned(),
                ))
                .await;
            }
            Command::Contacts => self.contacts(m).await?,
            Command::AddContact(phone) => {
                let added = m
                    .session()
                    .api()
                    .add_contact(&natter_proto::users::AddContact {
                        phone: Some(phone),
                        user_id: None,
                    })
                    .await
                    .map_err(explain)?;
                self.tell(Update::Notice(format!(
                    "{} is in your contacts",
                    added.name
                )))
                .await;
                self.contacts(m).await?;
            }
            Command::RemoveContact(user) => {
                m.session()
                    .api()
                    .remove_contact(user)
                    .await
                    .map_err(explain)?;
                self.tell(Update::Notice("removed from your contacts".to_owned()))
                    .await;
                self.contacts(m).await?;
            }
            Command::DirectWith(user) => {
                let chat = m
                    .create_chat(ChatKind::Direct, &[user], None)
                    .await
                    .map_err(explain)?;
                self.refresh(m).await;
                self.tell(Update::OpenChat(chat)).await;
            }
            Command::Discover(phones) => {
                let found = m
                    .session()
                    .api()
                    .discover(&DiscoverContacts {
                        phones: phones.clone(),
                    })
                    .await
                    .map_err(explain)?;
                let mut lines = Vec::new();
                for p in &phones {
                    if let Some(r) = found.registered.iter().find(|r| r.query == *p) {
                        lines.push(format!("✓ {} is on Natter", r.phone));
                    } else if found.invalid.contains(p) {
                        lines.push(format!("✗ {p} is not a phone number (+ and digits)"));
                    } else {
                        lines.push(format!("· {p} is not on Natter"));
                    }
                }
                self.tell(Update::Info {
                    title: " Discovery ".to_owned(),
                    lines,
                })
                .await;
            }
        }
        Ok(())
    }

    /// Saves a received file to `path` (a directory: under its own name,
    /// never replacing a file), with a bar.
    async fn save(&self, m: &Messenger, file: Received, path: PathBuf) -> Result<(), ChatError> {
        let (name, label) = match &file {
            Received::Encrypted(body) => match body.as_ref() {
                Body::File { name, key, .. } => (
                    name.clone(),
                    format!(
                        "downloading and decrypting {name} ({})",
                        human_size(key.size)
                    ),
                ),
                _ => return Err(ChatError::new("that message is not a file")),
            },
            Received::Plain { name, .. } => (name.clone(), format!("downloading {name}")),
        };
        self.tell(Update::Progress(Some(label.clone()))).await;
        let target = if path.is_dir() {
            free_name(&path, &safe_name(&name))
        } else {
            path
        };
        let updates = self.updates.clone();
        let mut progress = |done, total| {
            let _ = updates.try_send(Update::Transfer {
                label: label.clone(),
                done,
                total,
            });
        };
        let saved = save_new(&target, async |out| {
            match &file {
                Received::Encrypted(body) => m.fetch_file_to(body, out, &mut progress).await,
                Received::Plain { media, .. } => {
                    m.fetch_plain_file_to(*media, out, &mut progress).await
                }
            }
            .map_err(|e| ChatError::client(&e, &self.base))
        })
        .await;
        self.tell(Update::Progress(None)).await;
        let size = saved?;
        self.tell(Update::Notice(format!(
            "saved {name} ({}) to {}",
            human_size(size),
            target.display()
        )))
        .await;
        Ok(())
    }

    /// Fetches and scales an image for its thumbnail, when the terminal
    /// shows them: an encrypted chat's image decrypted, when it is small
    /// enough ([`crate::thumb::MAX_SOURCE_BYTES`]), a plaintext chat's as
    /// the server's thumbnail (which only images have). One that does not
    /// decode gets none: it shows as a name, like any file.
    async fn thumbnail(&self, m: &Messenger, message: MessageId, source: &ThumbSource) {
        if !self.thumbs {
            return;
        }
        let bytes = match source {
            ThumbSource::Encrypted(body) => {
                let Body::File { key, mime, .. } = body else {
                    return;
                };
                if !crate::thumb::wanted(mime, key.size) {
                    return;
                }
                let mut bytes = Vec::new();
                if m.fetch_file_to(body, &mut bytes, &mut |_, _| {})
                    .await
                    .is_err()
                {
                    return;
                }
                bytes
            }
            ThumbSource::Plain(media) => match m.session().api().thumbnail(*media).await {
                Ok(download) => download.bytes,
                Err(_) => return,
            },
        };
        if let Ok(thumb) = crate::thumb::make(&bytes) {
            self.tell(Update::Thumbnail { message, thumb }).await;
        }
    }

    /// Tells the pending invitations (a failure to load them only shows).
    async fn invitations(&self, m: &Messenger) {
        match m.session().api().invitations().await {
            Ok(list) => {
                let rows = list
                    .invitations
                    .into_iter()
                    .map(|i| InvitationRow {
                        id: i.id,
                        group: i.chat_name.unwrap_or_else(|| "(no name)".to_owned()),
                        inviter: i.inviter_name,
                    })
                    .collect();
                self.tell(Update::Invitations(rows)).await;
            }
            Err(e) => self.error(&e).await,
        }
    }

    async fn contacts(&self, m: &Messenger) -> Result<(), ChatError> {
        let list = m
            .session()
            .api()
            .contacts()
            .await
            .map_err(|e| ChatError::client(&e, &self.base))?;
        let rows = list
            .contacts
            .into_iter()
            .map(|c| ContactRow {
                user: c.user_id,
                name: c.name,
                phone: c.phone,
                online: c.status == PresenceStatus::Online,
                last_seen: c.last_seen,
            })
            .collect();
        self.tell(Update::Contacts(rows)).await;
        Ok(())
    }

    async fn enqueue(&mut self, m: &mut Messenger, waiting: Waiting) -> Result<(), ChatError> {
        let local_id = waiting.local_id.clone();
        self.queue.push_back(waiting);
        self.save_queue(m)?;
        self.tell(Update::Queued { local_id }).await;
        Ok(())
    }

    /// A page of history: the latest, or the one before `before`.
    async fn page(
        &mut self,
        m: &mut Messenger,
        chat: ChatId,
        before: Option<i64>,
    ) -> Result<(), ChatError> {
        let base = self.base.clone();
        let encrypted = m
            .chat_is_encrypted(chat)
            .await
            .map_err(|e| ChatError::client(&e, &base))?;
        let (lines, has_more) = if encrypted {
            let all = m
                .store()
                .history(chat)
                .map_err(|e| ChatError::new(format!("the local history cannot be read: {e}")))?;
            let upto: Vec<_> = all
                .into_iter()
                .filter(|h| before.is_none_or(|b| h.seq < b))
                .collect();
            let has_more = upto.len() > PAGE;
            let lines = upto[upto.len().saturating_sub(PAGE)..]
                .iter()
                .map(|h| Line {
                    chat,
                    seq: Some(h.seq),
                    message_id: Some(h.message_id),
                    local_id: None,
                    sender: h.sender_id,
                    at: OffsetDateTime::parse(
                        &h.sent_at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .unwrap_or_else(|_| OffsetDateTime::now_utc()),
                    body: match &h.file {
                        Some(file) => file_line(file.clone()),
                        None => LineBody::Text(h.text.clone()),
                    },
                    edited: false,
                    deleted: false,
                    mark: Mark::None,
                    reply_to: h.reply_to,
                })
                .collect();
            (lines, has_more)
        } else {
            let page = m
                .session()
                .api()
                .history(
                    chat,
                    HistoryQuery {
                        page: None,
                        limit: Some(PAGE as i64),
                        before_seq: before,
                    },
                )
                .await
                .map_err(|e| ChatError::client(&e, &base))?;
            let mut lines: Vec<Line> = page
                .messages
                .iter()
                .map(|msg| Line {
                    chat,
                    seq: Some(msg.seq),
                    message_id: Some(msg.id),
                    local_id: None,
                    sender: msg.sender_id,
                    at: msg.timestamp,
                    body: match (&msg.event, msg.media_id.as_deref().map(str::parse)) {
                        (Some(ev), _) => LineBody::System(self.describe(ev)),
                        (None, Some(Ok(media))) => LineBody::PlainFile {
                            name: msg.content.clone().unwrap_or_default(),
                            media,
                        },
                        (None, _) => LineBody::Text(msg.content.clone().unwrap_or_default()),
                    },
                    edited: msg.edited_at.is_some(),
                    deleted: msg.deleted,
                    mark: Mark::None,
                    reply_to: msg.reply_to,
                })
                .collect();
            lines.reverse();
            // The server says what my messages reached.
            if let Some(last) = page.messages.iter().find(|m| m.sender_id == self.me) {
                let (delivered, read) = match last.status {
                    MessageStatus::Read => (last.seq, last.seq),
                    MessageStatus::Delivered => (last.seq, 0),
                    MessageStatus::Sent => (0, 0),
                };
                if before.is_none() && delivered > 0 {
                    self.tell(Update::Receipt {
                        chat,
                        delivered,
                        read,
                    })
                    .await;
                }
            }
            (lines, page.has_more)
        };
        let images: Vec<(MessageId, ThumbSource)> = lines
            .iter()
            .rev()
            .filter(|l| !l.deleted)
            .filter_map(|l| Some((l.message_id?, thumb_source(&l.body)?)))
            .take(THUMBS_PER_PAGE)
            .collect();
        self.tell(Update::History {
            chat,
            lines,
            has_more,
            older: before.is_some(),
        })
        .await;
        for (message, source) in images {
            self.thumbnail(m, message, &source).await;
        }
        Ok(())
    }

    async fn search(&mut self, m: &mut Messenger, text: &str) -> Result<(), ChatError> {
        let local = m
            .store()
            .search_local(text)
            .map_err(|e| ChatError::new(format!("the local search failed: {e}")))?;
        let mut hits: Vec<Hit> = local
            .into_iter()
            .map(|h| Hit {
                chat: h.chat_id,
                seq: h.seq,
                sender: h.sender_id,
                text: h.text,
                local: true,
            })
            .collect();
        let plain: Vec<ChatId> = self
            .chats
            .values()
            .filter(|c| !c.encrypted)
            .map(|c| c.id)
            .collect();
        if !plain.is_empty() {
            match m
                .session()
                .api()
                .search_messages(&MessageSearch {
                    q: text.to_owned(),
                    chat_ids: plain,
                    limit: Some(50),
                    ..MessageSearch::default()
                })
                .await
            {
                Ok(found) => hits.extend(found.messages.into_iter().map(|h| Hit {
                    chat: h.message.chat_id,
                    seq: h.message.seq,
                    sender: h.message.sender_id,
                    text: h.message.content.unwrap_or(h.snippet),
                    local: false,
                })),
                Err(e) => self.error(&e).await,
            }
        }
        self.tell(Update::Search(hits)).await;
        Ok(())
    }

    async fn devices(&mut self, m: &mut Messenger) -> Result<(), ChatError> {
        let base = self.base.clone();
        let api = m.session().api().clone();
        let list = api
            .devices()
            .await
            .map_err(|e| ChatError::client(&e, &base))?;
        let keys = api
            .user_devices(self.me)
            .await
            .map_err(|e| ChatError::client(&e, &base))?;
        let rows = list
            .devices
            .into_iter()
            .map(|d| {
                let k = keys.devices.iter().find(|k| k.device_id == d.device_id);
                DeviceRow {
                    id: d.device_id,
                    name: d.name,
                    current: d.current,
                    approved: k.is_some_and(|k| k.certificate.is_some()),
                    fingerprint: k.and_then(|k| {
                        base64::engine::general_purpose::STANDARD
                            .decode(&k.signature_key)
                            .ok()
                            .map(|b| crate::profile::fingerprint(&b))
                    }),
                }
            })
            .collect();
        self.tell(Update::Devices(rows)).await;
        Ok(())
    }
}

/// Where a line's thumbnail would come from, if it is a file.
fn thumb_source(body: &LineBody) -> Option<ThumbSource> {
    match body {
        LineBody::File { body: Some(b), .. } => Some(ThumbSource::Encrypted(b.as_ref().clone())),
        LineBody::PlainFile { media, .. } => Some(ThumbSource::Plain(*media)),
        _ => None,
    }
}

/// A file message's line.
fn file_line(body: Body) -> LineBody {
    match &body {
        Body::File { name, key, .. } => LineBody::File {
            name: name.clone(),
            size: key.size,
            body: Some(Box::new(body.clone())),
        },
        _ => LineBody::System(String::new()),
    }
}

/// A received name as a file name: no directories, no hidden files.
#[must_use]
pub fn safe_name(name: &str) -> String {
    let base: String = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let base = base.trim_start_matches('.').trim();
    if base.is_empty() {
        "file".to_owned()
    } else {
        base.to_owned()
    }
}

/// `dir/name`, or `dir/stem (2).ext` and so on when taken.
fn free_name(dir: &std::path::Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    (2..10_000)
        .map(|i| dir.join(format!("{stem} ({i}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Writes a new file through `fill` (never replacing one); a file that
/// `fill` fails to complete (a download that did not decrypt) is removed.
async fn save_new(
    path: &std::path::Path,
    fill: impl AsyncFnOnce(&mut futures_util::io::AllowStdIo<std::fs::File>) -> Result<u64, ChatError>,
) -> Result<u64, ChatError> {
    let cannot =
        |e: std::io::Error| ChatError::new(format!("cannot save to {}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(cannot)?;
    let mut file = futures_util::io::AllowStdIo::new(file);
    let filled = match fill(&mut file).await {
        Ok(size) => file.get_ref().sync_all().map(|()| size).map_err(cannot),
        Err(e) => Err(e),
    };
    if filled.is_err() {
        let _ = std::fs::remove_file(path);
    }
    filled
}

/// `1.5 MiB`.
#[must_use]
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_names_cannot_escape_the_directory() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("a\\b\u{7}c.txt"), "bc.txt");
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }
}
