//! How values the engines store as text are spelled, and orders both
//! engines must return the same, so the embedded and the PostgreSQL engine
//! read each other's meaning (and a test can compare their answers).

use natter_proto::MessageId;
use natter_proto::chats::{ChatEvent, ChatKind, MessageType, Role};
use natter_proto::e2ee::InboxKind;
use natter_proto::push::{ApnsEnvironment, PushKind};
use natter_proto::users::{GroupAddPermission, LastSeenVisibility};

use super::{ContactEntry, EntryKind};

/// The stored spelling of a last-seen setting.
#[must_use]
pub const fn visibility_to_sql(v: LastSeenVisibility) -> &'static str {
    match v {
        LastSeenVisibility::Everyone => "everyone",
        LastSeenVisibility::Contacts => "contacts",
        LastSeenVisibility::Nobody => "nobody",
    }
}

/// A stored last-seen setting (the schema's CHECK allows only the three).
#[must_use]
pub fn visibility_from_sql(s: &str) -> LastSeenVisibility {
    match s {
        "contacts" => LastSeenVisibility::Contacts,
        "nobody" => LastSeenVisibility::Nobody,
        _ => LastSeenVisibility::Everyone,
    }
}

/// The stored spelling of who may add a user to groups.
#[must_use]
pub const fn permission_to_sql(p: GroupAddPermission) -> &'static str {
    match p {
        GroupAddPermission::Everyone => "everyone",
        GroupAddPermission::Contacts => "contacts",
        GroupAddPermission::Nobody => "nobody",
    }
}

/// A stored group-add setting (the schema's CHECK allows only the three).
#[must_use]
pub fn permission_from_sql(s: &str) -> GroupAddPermission {
    match s {
        "contacts" => GroupAddPermission::Contacts,
        "nobody" => GroupAddPermission::Nobody,
        _ => GroupAddPermission::Everyone,
    }
}

/// The stored spelling of a push protocol.
#[must_use]
pub const fn push_kind_to_sql(kind: PushKind) -> &'static str {
    match kind {
        PushKind::Webpush => "webpush",
        PushKind::Unifiedpush => "unifiedpush",
        PushKind::Fcm => "fcm",
        PushKind::Apns => "apns",
    }
}

/// A stored push protocol (the schema's CHECK allows only the four).
#[must_use]
pub fn push_kind_from_sql(s: &str) -> PushKind {
    match s {
        "unifiedpush" => PushKind::Unifiedpush,
        "fcm" => PushKind::Fcm,
        "apns" => PushKind::Apns,
        _ => PushKind::Webpush,
    }
}

/// The stored spelling of an APNs environment.
#[must_use]
pub fn apns_environment_to_sql(environment: Option<ApnsEnvironment>) -> Option<&'static str> {
    environment.map(|e| match e {
        ApnsEnvironment::Sandbox => "sandbox",
        ApnsEnvironment::Production => "production",
    })
}

/// A stored APNs environment.
#[must_use]
pub fn apns_environment_from_sql(s: Option<&str>) -> Option<ApnsEnvironment> {
    match s {
        Some("sandbox") => Some(ApnsEnvironment::Sandbox),
        Some(_) => Some(ApnsEnvironment::Production),
        None => None,
    }
}

/// The stored spelling of a chat's kind.
#[must_use]
pub const fn chat_kind_to_sql(kind: ChatKind) -> &'static str {
    match kind {
        ChatKind::Direct => "direct",
        ChatKind::Group => "group",
    }
}

/// A stored chat kind.
#[must_use]
pub fn chat_kind_from_sql(s: &str) -> ChatKind {
    if s == "group" {
        ChatKind::Group
    } else {
        ChatKind::Direct
    }
}

/// The stored spelling of a member's role.
#[must_use]
pub const fn role_to_sql(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

/// A stored role.
#[must_use]
pub fn role_from_sql(s: &str) -> Role {
    if s == "admin" {
        Role::Admin
    } else {
        Role::Member
    }
}

/// The stored spelling of a message type.
#[must_use]
pub const fn message_type_to_sql(t: MessageType) -> &'static str {
    match t {
        MessageType::Text => "text",
        MessageType::Image => "image",
        MessageType::Video => "video",
        MessageType::File => "file",
        MessageType::System => "system",
        MessageType::Commit => "commit",
    }
}

/// A stored message type.
#[must_use]
pub fn message_type_from_sql(s: &str) -> MessageType {
    match s {
        "image" => MessageType::Image,
        "video" => MessageType::Video,
        "file" => MessageType::File,
        "system" => MessageType::System,
        "commit" => MessageType::Commit,
        _ => MessageType::Text,
    }
}

/// How a chat-log entry's kind is stored: the `kind`, `msg_type`, `event`
/// (a system entry's event as JSON) and `target_id` columns.
#[derive(Debug)]
pub struct EntryColumns {
    /// `message`, `system`, `edit` or `delete`.
    pub kind: &'static str,
    /// The message type (`system` for system entries).
    pub msg_type: Option<&'static str>,
    /// A system entry's event.
    pub event: Option<String>,
    /// The message an edit or deletion is of.
    pub target: Option<MessageId>,
}

impl EntryColumns {
    /// The columns of an entry kind.
    ///
    /// # Errors
    /// An event that does not serialize (never, for the events there are).
    pub fn of(kind: &EntryKind) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            EntryKind::Message(t) => Self {
                kind: "message",
                msg_type: Some(message_type_to_sql(*t)),
                event: None,
                target: None,
            },
            EntryKind::System(e) => Self {
                kind: "system",
                msg_type: Some("system"),
                event: Some(serde_json::to_string(e)?),
                target: None,
            },
            EntryKind::Edit(m) => Self {
                kind: "edit",
                msg_type: None,
                event: None,
                target: Some(*m),
            },
            EntryKind::Delete(m) => Self {
                kind: "delete",
                msg_type: None,
                event: None,
                target: Some(*m),
            },
        })
    }

    /// The entry kind these columns store.
    ///
    /// # Errors
    /// A system entry whose event does not parse.
    pub fn kind_of(
        kind: &str,
        msg_type: Option<&str>,
        event: Option<&str>,
        target: Option<MessageId>,
    ) -> Result<EntryKind, serde_json::Error> {
        Ok(match kind {
            "system" => {
                EntryKind::System(serde_json::from_str::<ChatEvent>(event.unwrap_or("null"))?)
            }
            "edit" => EntryKind::Edit(target.unwrap_or_default()),
            "delete" => EntryKind::Delete(target.unwrap_or_default()),
            _ => EntryKind::Message(message_type_from_sql(msg_type.unwrap_or_default())),
        })
    }
}

/// The stored spelling of an inbox item's kind.
#[must_use]
pub const fn inbox_kind_to_sql(kind: InboxKind) -> &'static str {
    match kind {
        InboxKind::Welcome => "welcome",
        InboxKind::Handover => "handover",
    }
}

/// A stored inbox item's kind.
#[must_use]
pub fn inbox_kind_from_sql(s: &str) -> InboxKind {
    if s == "welcome" {
        InboxKind::Welcome
    } else {
        InboxKind::Handover
    }
}

/// A contact list in its one order: by name with ASCII letters compared
/// without case (what SQLite's NOCASE did), then by id, so every engine
/// lists the same contacts the same way whatever its collation.
pub fn sort_contacts(list: &mut [ContactEntry]) {
    list.sort_by(|a, b| {
        a.user
            .name
            .bytes()
            .map(|c| c.to_ascii_lowercase())
            .cmp(b.user.name.bytes().map(|c| c.to_ascii_lowercase()))
            .then_with(|| a.user.id.as_uuid().cmp(b.user.id.as_uuid()))
    });
}
