//! Chats and chat logs on SQLite. Every function runs inside the writer's
//! transaction (writes) or on a read connection (reads); the checks and the
//! seq allocation of one operation happen in one transaction.

use natter_proto::chats::{ChatEvent, ChatKind, MessageType, Role};
use natter_proto::{ChatId, DeviceId, MessageId, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::uuid_of;
use crate::clock::Timestamp;
use crate::store::{
    Appended, ChatAccess, ChatChange, ChatChanged, ChatCreated, ChatOverview, ChatRecord,
    EntryKind, HistoryQuery, LogEntry, Member, MessageChange, MessageChanged, NewChat, NewContent,
    NewMessage, Posted, Receipt, ReceiptChange, StoredUpdate, UpdateBody,
};

type Result<T> = rusqlite::Result<T>;

fn conversion<E: std::error::Error + Send + Sync + 'static>(e: E) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

fn opt_uuid(row: &Row<'_>, idx: &str) -> Result<Option<Uuid>> {
    let bytes: Option<Vec<u8>> = row.get(idx)?;
    bytes
        .map(|b| Uuid::from_slice(&b).map_err(conversion))
        .transpose()
}

fn kind_to_sql(kind: ChatKind) -> &'static str {
    match kind {
        ChatKind::Direct => "direct",
        ChatKind::Group => "group",
    }
}

fn role_to_sql(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

fn role_from_sql(s: &str) -> Role {
    if s == "admin" {
        Role::Admin
    } else {
        Role::Member
    }
}

pub(super) fn type_to_sql(t: MessageType) -> &'static str {
    match t {
        MessageType::Text => "text",
        MessageType::Image => "image",
        MessageType::Video => "video",
        MessageType::File => "file",
        MessageType::System => "system",
    }
}

fn type_from_sql(s: &str) -> MessageType {
    match s {
        "image" => MessageType::Image,
        "video" => MessageType::Video,
        "file" => MessageType::File,
        "system" => MessageType::System,
        _ => MessageType::Text,
    }
}

const CHAT_COLUMNS: &str =
    "c.id, c.kind, c.name, c.encrypted, c.created_by, c.created_at, c.last_seq, c.last_activity_at";

fn chat_from_row(row: &Row<'_>) -> Result<ChatRecord> {
    let kind: String = row.get("kind")?;
    Ok(ChatRecord {
        id: ChatId::from_uuid(uuid_of(row, "id")?),
        kind: if kind == "group" {
            ChatKind::Group
        } else {
            ChatKind::Direct
        },
        name: row.get("name")?,
        encrypted: row.get("encrypted")?,
        created_by: UserId::from_uuid(uuid_of(row, "created_by")?),
        created_at: Timestamp(row.get("created_at")?),
        last_seq: row.get("last_seq")?,
        last_activity_at: Timestamp(row.get("last_activity_at")?),
    })
}

const ENTRY_COLUMNS: &str = "l.chat_id, l.seq, l.id, l.kind, l.sender_id, l.sender_device_id, \
     l.msg_type, l.content, l.ciphertext, l.media_id, l.reply_to, l.client_message_id, \
     l.client_timestamp, l.event, l.target_id, l.created_at, l.edited_at, l.deleted_at";

fn entry_from_row(row: &Row<'_>) -> Result<LogEntry> {
    let kind: String = row.get("kind")?;
    let kind = match kind.as_str() {
        "system" => {
            let event: String = row.get("event")?;
            EntryKind::System(serde_json::from_str::<ChatEvent>(&event).map_err(conversion)?)
        }
        "edit" | "delete" => {
            let target = opt_uuid(row, "target_id")?
                .map(MessageId::from_uuid)
                .unwrap_or_default();
            if kind == "edit" {
                EntryKind::Edit(target)
            } else {
                EntryKind::Delete(target)
            }
        }
        _ => EntryKind::Message(type_from_sql(
            &row.get::<_, Option<String>>("msg_type")?
                .unwrap_or_default(),
        )),
    };
    Ok(LogEntry {
        id: MessageId::from_uuid(uuid_of(row, "id")?),
        chat_id: ChatId::from_uuid(uuid_of(row, "chat_id")?),
        seq: row.get("seq")?,
        sender_id: UserId::from_uuid(uuid_of(row, "sender_id")?),
        sender_device_id: opt_uuid(row, "sender_device_id")?.map(DeviceId::from_uuid),
        kind,
        content: row.get("content")?,
        ciphertext: row.get("ciphertext")?,
        media_id: row.get("media_id")?,
        reply_to: opt_uuid(row, "reply_to")?.map(MessageId::from_uuid),
        client_message_id: row.get("client_message_id")?,
        client_timestamp: row
            .get::<_, Option<i64>>("client_timestamp")?
            .map(Timestamp),
        created_at: Timestamp(row.get("created_at")?),
        edited_at: row.get::<_, Option<i64>>("edited_at")?.map(Timestamp),
        deleted_at: row.get::<_, Option<i64>>("deleted_at")?.map(Timestamp),
    })
}

/// A log entry before it has its seq.
struct Draft {
    id: MessageId,
    sender_id: UserId,
    sender_device_id: Option<DeviceId>,
    kind: EntryKind,
    content: Option<String>,
    ciphertext: Option<Vec<u8>>,
    media_id: Option<String>,
    reply_to: Option<MessageId>,
    client_message_id: Option<String>,
    client_timestamp: Option<Timestamp>,
    now: Timestamp,
}

impl Draft {
    fn system(actor: UserId, event: ChatEvent, now: Timestamp) -> Self {
        Self {
            id: MessageId::new(),
            sender_id: actor,
            sender_device_id: None,
            kind: EntryKind::System(event),
            content: None,
            ciphertext: None,
            media_id: None,
            reply_to: None,
            client_message_id: None,
            client_timestamp: None,
            now,
        }
    }
}

fn current_members(c: &Connection, chat: ChatId) -> Result<Vec<UserId>> {
    let mut s = c.prepare_cached(
        "SELECT user_id FROM memberships WHERE chat_id = ?1 AND to_seq IS NULL ORDER BY user_id",
    )?;
    let rows = s.query_map([chat.as_uuid().as_bytes()], |r| uuid_of(r, "user_id"))?;
    rows.map(|r| r.map(UserId::from_uuid)).collect()
}

/// Allocates the next seq, stores the entry, and gives each current member
/// (and `also`, e.g. a user just removed) the next pts of their update stream.
fn append(c: &Connection, chat: ChatId, draft: Draft, also: Option<UserId>) -> Result<Appended> {
    let seq: i64 = c
        .prepare_cached(
            "UPDATE chats SET last_seq = last_seq + 1, last_activity_at = ?2 WHERE id = ?1
             RETURNING last_seq",
        )?
        .query_row(params![chat.as_uuid().as_bytes(), draft.now.0], |r| {
            r.get(0)
        })?;
    let (kind, msg_type, event, target) = match &draft.kind {
        EntryKind::Message(t) => ("message", Some(type_to_sql(*t)), None, None),
        EntryKind::System(e) => (
            "system",
            Some("system"),
            Some(serde_json::to_string(e).map_err(conversion)?),
            None,
        ),
        EntryKind::Edit(m) => ("edit", None, None, Some(*m.as_uuid().as_bytes())),
        EntryKind::Delete(m) => ("delete", None, None, Some(*m.as_uuid().as_bytes())),
    };
    c.prepare_cached(
        "INSERT INTO chat_log (chat_id, seq, id, kind, sender_id, sender_device_id, msg_type,
           content, ciphertext, media_id, reply_to, client_message_id, client_timestamp,
           event, target_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        chat.as_uuid().as_bytes(),
        seq,
        draft.id.as_uuid().as_bytes(),
        kind,
        draft.sender_id.as_uuid().as_bytes(),
        draft.sender_device_id.map(|d| *d.as_uuid().as_bytes()),
        msg_type,
        draft.content,
        draft.ciphertext,
        draft.media_id,
        draft.reply_to.map(|m| *m.as_uuid().as_bytes()),
        draft.client_message_id,
        draft.client_timestamp.map(|t| t.0),
        event,
        target,
        draft.now.0,
    ])?;
    let mut recipients = current_members(c, chat)?;
    if let Some(extra) = also
        && !recipients.contains(&extra)
    {
        recipients.push(extra);
    }
    let mut fanout = Vec::with_capacity(recipients.len());
    for user in recipients {
        let pts: i64 = c
            .prepare_cached("UPDATE users SET pts = pts + 1 WHERE id = ?1 RETURNING pts")?
            .query_row([user.as_uuid().as_bytes()], |r| r.get(0))?;
        c.prepare_cached(
            "INSERT INTO updates (user_id, pts, chat_id, seq, kind, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            user.as_uuid().as_bytes(),
            pts,
            chat.as_uuid().as_bytes(),
            seq,
            kind,
            draft.now.0
        ])?;
        fanout.push((user, pts));
    }
    let entry = LogEntry {
        id: draft.id,
        chat_id: chat,
        seq,
        sender_id: draft.sender_id,
        sender_device_id: draft.sender_device_id,
        kind: draft.kind,
        content: draft.content,
        ciphertext: draft.ciphertext,
        media_id: draft.media_id,
        reply_to: draft.reply_to,
        client_message_id: draft.client_message_id,
        client_timestamp: draft.client_timestamp,
        created_at: draft.now,
        edited_at: None,
        deleted_at: None,
    };
    Ok(Appended { entry, fanout })
}

fn user_exists(c: &Connection, user: UserId) -> Result<bool> {
    c.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
        .exists([user.as_uuid().as_bytes()])
}

fn chat_by_id(c: &Connection, chat: ChatId) -> Result<Option<ChatRecord>> {
    c.prepare_cached(&format!(
        "SELECT {CHAT_COLUMNS} FROM chats c WHERE c.id = ?1"
    ))?
    .query_row([chat.as_uuid().as_bytes()], chat_from_row)
    .optional()
}

fn current_role(c: &Connection, chat: ChatId, user: UserId) -> Result<Option<Role>> {
    let role: Option<String> = c
        .prepare_cached(
            "SELECT role FROM memberships WHERE chat_id = ?1 AND user_id = ?2 AND to_seq IS NULL",
        )?
        .query_row(
            params![chat.as_uuid().as_bytes(), user.as_uuid().as_bytes()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(role.as_deref().map(role_from_sql))
}

fn join(
    c: &Connection,
    chat: ChatId,
    user: UserId,
    role: Role,
    seq: i64,
    now: Timestamp,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO memberships (chat_id, user_id, from_seq, role, joined_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        chat.as_uuid().as_bytes(),
        user.as_uuid().as_bytes(),
        seq,
        role_to_sql(role),
        now.0
    ])?;
    c.prepare_cached(
        "INSERT INTO receipts (chat_id, user_id, delivered_seq, read_seq) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (chat_id, user_id) DO UPDATE SET
           delivered_seq = max(delivered_seq, excluded.delivered_seq),
           read_seq = max(read_seq, excluded.read_seq)",
    )?
    // Joining is reading up to the join: nothing before it counts as unread.
    .execute(params![
        chat.as_uuid().as_bytes(),
        user.as_uuid().as_bytes(),
        seq - 1
    ])?;
    Ok(())
}

/// The 32-byte key that makes a direct chat unique per pair.
fn direct_key(a: UserId, b: UserId) -> Vec<u8> {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    [
        lo.as_uuid().as_bytes().as_slice(),
        hi.as_uuid().as_bytes().as_slice(),
    ]
    .concat()
}

pub(super) fn create_chat(c: &Connection, new: NewChat) -> Result<ChatCreated> {
    for user in &new.others {
        if !user_exists(c, *user)? {
            return Ok(ChatCreated::UnknownUser(*user));
        }
    }
    let key = match (new.kind, new.others.as_slice()) {
        (ChatKind::Direct, [other]) => Some(direct_key(new.creator, *other)),
        _ => None,
    };
    if let Some(key) = &key {
        let existing = c
            .prepare_cached(&format!(
                "SELECT {CHAT_COLUMNS} FROM chats c WHERE c.direct_key = ?1"
            ))?
            .query_row([key], chat_from_row)
            .optional()?;
        if let Some(chat) = existing {
            return Ok(ChatCreated::Existing(chat));
        }
    }
    c.prepare_cached(
        "INSERT INTO chats (id, kind, name, encrypted, direct_key, created_by, created_at,
                            last_seq, last_activity_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?7)",
    )?
    .execute(params![
        new.id.as_uuid().as_bytes(),
        kind_to_sql(new.kind),
        new.name,
        new.encrypted,
        key,
        new.creator.as_uuid().as_bytes(),
        new.now.0
    ])?;
    // Members first, so the `created` entry reaches all of them; it has seq 1.
    let creator_role = if new.kind == ChatKind::Group {
        Role::Admin
    } else {
        Role::Member
    };
    join(c, new.id, new.creator, creator_role, 1, new.now)?;
    for user in &new.others {
        join(c, new.id, *user, Role::Member, 1, new.now)?;
    }
    let created = append(
        c,
        new.id,
        Draft::system(new.creator, ChatEvent::Created, new.now),
        None,
    )?;
    let chat = chat_by_id(c, new.id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok(ChatCreated::Created(chat, Box::new(created)))
}

pub(super) fn chat_access(
    c: &Connection,
    chat: ChatId,
    user: UserId,
) -> Result<Option<ChatAccess>> {
    let ever = c
        .prepare_cached("SELECT 1 FROM memberships WHERE chat_id = ?1 AND user_id = ?2")?
        .exists(params![
            chat.as_uuid().as_bytes(),
            user.as_uuid().as_bytes()
        ])?;
    if !ever {
        return Ok(None);
    }
    let Some(record) = chat_by_id(c, chat)? else {
        return Ok(None);
    };
    Ok(Some(ChatAccess {
        chat: record,
        role: current_role(c, chat, user)?,
    }))
}

pub(super) fn members(c: &Connection, chat: ChatId) -> Result<Vec<Member>> {
    let mut s = c.prepare_cached(
        "SELECT user_id, role, joined_at FROM memberships
         WHERE chat_id = ?1 AND to_seq IS NULL ORDER BY from_seq, joined_at, user_id",
    )?;
    let rows = s.query_map([chat.as_uuid().as_bytes()], |r| {
        Ok(Member {
            user_id: UserId::from_uuid(uuid_of(r, "user_id")?),
            role: role_from_sql(&r.get::<_, String>("role")?),
            joined_at: Timestamp(r.get("joined_at")?),
        })
    })?;
    rows.collect()
}

pub(super) fn receipts(c: &Connection, chat: ChatId) -> Result<Vec<Receipt>> {
    let mut s = c.prepare_cached(
        "SELECT r.user_id, r.delivered_seq, r.read_seq FROM receipts r
         JOIN memberships m ON m.chat_id = r.chat_id AND m.user_id = r.user_id AND m.to_seq IS NULL
         WHERE r.chat_id = ?1",
    )?;
    let rows = s.query_map([chat.as_uuid().as_bytes()], |r| {
        Ok(Receipt {
            user_id: UserId::from_uuid(uuid_of(r, "user_id")?),
            delivered_seq: r.get("delivered_seq")?,
            read_seq: r.get("read_seq")?,
        })
    })?;
    rows.collect()
}

pub(super) fn chats_of(c: &Connection, user: UserId) -> Result<Vec<ChatOverview>> {
    let mut s = c.prepare_cached(&format!(
        "SELECT {CHAT_COLUMNS}, m.role, coalesce(r.read_seq, 0) AS read_seq
         FROM memberships m JOIN chats c ON c.id = m.chat_id
         LEFT JOIN receipts r ON r.chat_id = m.chat_id AND r.user_id = m.user_id
         WHERE m.user_id = ?1 AND m.to_seq IS NULL
         ORDER BY c.last_activity_at DESC, c.id"
    ))?;
    let rows = s.query_map([user.as_uuid().as_bytes()], |r| {
        Ok((
            chat_from_row(r)?,
            role_from_sql(&r.get::<_, String>("role")?),
            r.get::<_, i64>("read_seq")?,
        ))
    })?;
    let rows: Vec<(ChatRecord, Role, i64)> = rows.collect::<Result<_>>()?;
    let mut unread_stmt = c.prepare_cached(
        "SELECT count(*) FROM chat_log
         WHERE chat_id = ?1 AND seq > ?2 AND kind = 'message' AND sender_id != ?3
           AND deleted_at IS NULL",
    )?;
    let mut last_stmt = c.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM chat_log l
         WHERE l.chat_id = ?1 AND l.kind = 'message' ORDER BY l.seq DESC LIMIT 1"
    ))?;
    let mut out = Vec::with_capacity(rows.len());
    for (chat, role, read_seq) in rows {
        let id = chat.id.as_uuid().as_bytes().to_vec();
        let unread: i64 = unread_stmt
            .query_row(params![id, read_seq, user.as_uuid().as_bytes()], |r| {
                r.get(0)
            })?;
        let last_message = last_stmt.query_row([&id], entry_from_row).optional()?;
        out.push(ChatOverview {
            chat,
            role,
            unread,
            last_message,
        });
    }
    Ok(out)
}

/// A message visible to `user` in `chat` (inside one of their membership periods).
fn visible_message(
    c: &Connection,
    chat: ChatId,
    user: UserId,
    id: MessageId,
) -> Result<Option<LogEntry>> {
    c.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM chat_log l
         WHERE l.id = ?1 AND l.chat_id = ?2 AND l.kind = 'message'
           AND EXISTS (SELECT 1 FROM memberships m
                       WHERE m.chat_id = l.chat_id AND m.user_id = ?3
                         AND l.seq >= m.from_seq AND (m.to_seq IS NULL OR l.seq <= m.to_seq))"
    ))?
    .query_row(
        params![
            id.as_uuid().as_bytes(),
            chat.as_uuid().as_bytes(),
            user.as_uuid().as_bytes()
        ],
        entry_from_row,
    )
    .optional()
}

pub(super) fn post(c: &Connection, m: NewMessage) -> Result<Posted> {
    if current_role(c, m.chat_id, m.sender_id)?.is_none() {
        return Ok(Posted::NotMember);
    }
    if let Some(key) = &m.client_message_id {
        let existing = c
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM chat_log l
                 WHERE l.chat_id = ?1 AND l.sender_id = ?2 AND l.client_message_id = ?3"
            ))?
            .query_row(
                params![
                    m.chat_id.as_uuid().as_bytes(),
                    m.sender_id.as_uuid().as_bytes(),
                    key
                ],
                entry_from_row,
            )
            .optional()?;
        if let Some(entry) = existing {
            return Ok(Posted::Duplicate(entry));
        }
    }
    if let Some(reply) = m.reply_to
        && visible_message(c, m.chat_id, m.sender_id, reply)?.is_none()
    {
        return Ok(Posted::BadReply);
    }
    // Checked here, in the append's transaction, so garbage collection (also
    // a writer job) can never delete an upload a message is about to use.
    if let Some(media) = &m.media_id
        && !super::media::is_ready(c, media)?
    {
        return Ok(Posted::MediaGone);
    }
    let draft = Draft {
        id: m.id,
        sender_id: m.sender_id,
        sender_device_id: Some(m.sender_device_id),
        kind: EntryKind::Message(m.message_type),
        content: m.content,
        ciphertext: m.ciphertext,
        media_id: m.media_id,
        reply_to: m.reply_to,
        client_message_id: m.client_message_id,
        client_timestamp: m.client_timestamp,
        now: m.now,
    };
    let appended = append(c, m.chat_id, draft, None)?;
    // The sender has read their own message.
    c.prepare_cached(
        "UPDATE receipts SET read_seq = max(read_seq, ?3), delivered_seq = max(delivered_seq, ?3)
         WHERE chat_id = ?1 AND user_id = ?2",
    )?
    .execute(params![
        m.chat_id.as_uuid().as_bytes(),
        m.sender_id.as_uuid().as_bytes(),
        appended.entry.seq
    ])?;
    Ok(Posted::Created(appended))
}

fn member_count(c: &Connection, chat: ChatId) -> Result<usize> {
    let n: i64 = c
        .prepare_cached("SELECT count(*) FROM memberships WHERE chat_id = ?1 AND to_seq IS NULL")?
        .query_row([chat.as_uuid().as_bytes()], |r| r.get(0))?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

pub(super) fn change_chat(
    c: &Connection,
    chat: ChatId,
    actor: UserId,
    change: ChatChange,
    max_members: usize,
    now: Timestamp,
) -> Result<ChatChanged> {
    let Some(record) = chat_by_id(c, chat)? else {
        return Ok(ChatChanged::NotMember);
    };
    let Some(actor_role) = current_role(c, chat, actor)? else {
        return Ok(ChatChanged::NotMember);
    };
    if record.kind == ChatKind::Direct {
        return Ok(ChatChanged::NotAGroup);
    }
    let leaving = matches!(change, ChatChange::Remove(user) if user == actor);
    if actor_role != Role::Admin && !leaving {
        return Ok(ChatChanged::Forbidden);
    }
    let mut appended = Vec::new();
    match change {
        ChatChange::Add(users) => {
            let mut new_users = Vec::new();
            for user in users {
                if !user_exists(c, user)? {
                    return Ok(ChatChanged::UnknownUser(user));
                }
                if current_role(c, chat, user)?.is_none() && !new_users.contains(&user) {
                    new_users.push(user);
                }
            }
            if member_count(c, chat)? + new_users.len() > max_members {
                return Ok(ChatChanged::GroupFull);
            }
            for user in new_users {
                // The join entry is the first the new member sees.
                let seq = record_next_seq(c, chat)?;
                join(c, chat, user, Role::Member, seq, now)?;
                appended.push(append(
                    c,
                    chat,
                    Draft::system(actor, ChatEvent::MemberAdded { user_id: user }, now),
                    None,
                )?);
            }
        }
        ChatChange::Remove(user) => {
            if current_role(c, chat, user)?.is_none() {
                return Ok(ChatChanged::UnknownUser(user));
            }
            let event = if leaving {
                ChatEvent::MemberLeft { user_id: user }
            } else {
                ChatEvent::MemberRemoved { user_id: user }
            };
            let seq = record_next_seq(c, chat)?;
            let needs_successor = admins(c, chat)? == vec![user];
            // The removal entry is the last the removed user sees.
            c.prepare_cached(
                "UPDATE memberships SET to_seq = ?3
                 WHERE chat_id = ?1 AND user_id = ?2 AND to_seq IS NULL",
            )?
            .execute(params![
                chat.as_uuid().as_bytes(),
                user.as_uuid().as_bytes(),
                seq
            ])?;
            appended.push(append(
                c,
                chat,
                Draft::system(actor, event, now),
                Some(user),
            )?);
            // The only admin left: the longest-standing member takes over, so
            // the group is never without one.
            if needs_successor && let Some(next) = members(c, chat)?.first().map(|m| m.user_id) {
                set_role(c, chat, next, Role::Admin)?;
                let event = ChatEvent::RoleChanged {
                    user_id: next,
                    role: Role::Admin,
                };
                appended.push(append(c, chat, Draft::system(actor, event, now), None)?);
            }
        }
        ChatChange::Rename(name) => {
            c.prepare_cached("UPDATE chats SET name = ?2 WHERE id = ?1")?
                .execute(params![chat.as_uuid().as_bytes(), name])?;
            appended.push(append(
                c,
                chat,
                Draft::system(actor, ChatEvent::Renamed { name }, now),
                None,
            )?);
        }
        ChatChange::SetRole(user, role) => match current_role(c, chat, user)? {
            None => return Ok(ChatChanged::UnknownUser(user)),
            Some(current) if current == role => {}
            Some(_) => {
                if role == Role::Member && admins(c, chat)? == vec![user] {
                    return Ok(ChatChanged::LastAdmin);
                }
                set_role(c, chat, user, role)?;
                let event = ChatEvent::RoleChanged {
                    user_id: user,
                    role,
                };
                appended.push(append(c, chat, Draft::system(actor, event, now), None)?);
            }
        },
    }
    Ok(ChatChanged::Done(appended))
}

/// The current admins of a chat.
fn admins(c: &Connection, chat: ChatId) -> Result<Vec<UserId>> {
    Ok(members(c, chat)?
        .into_iter()
        .filter(|m| m.role == Role::Admin)
        .map(|m| m.user_id)
        .collect())
}

fn set_role(c: &Connection, chat: ChatId, user: UserId, role: Role) -> Result<()> {
    c.prepare_cached(
        "UPDATE memberships SET role = ?3 WHERE chat_id = ?1 AND user_id = ?2 AND to_seq IS NULL",
    )?
    .execute(params![
        chat.as_uuid().as_bytes(),
        user.as_uuid().as_bytes(),
        role_to_sql(role)
    ])?;
    Ok(())
}

/// The seq the next appended entry will get.
fn record_next_seq(c: &Connection, chat: ChatId) -> Result<i64> {
    c.prepare_cached("SELECT last_seq + 1 FROM chats WHERE id = ?1")?
        .query_row([chat.as_uuid().as_bytes()], |r| r.get(0))
}

pub(super) fn history(
    c: &Connection,
    chat: ChatId,
    user: UserId,
    q: HistoryQuery,
) -> Result<(Vec<LogEntry>, bool)> {
    let ascending = q.after_seq.is_some() && q.before_seq.is_none();
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM chat_log l
         WHERE l.chat_id = ?1 AND l.kind IN ('message', 'system')
           AND (?3 IS NULL OR l.seq < ?3) AND (?4 IS NULL OR l.seq > ?4)
           AND EXISTS (SELECT 1 FROM memberships m
                       WHERE m.chat_id = l.chat_id AND m.user_id = ?2
                         AND l.seq >= m.from_seq AND (m.to_seq IS NULL OR l.seq <= m.to_seq))
         ORDER BY l.seq {} LIMIT ?5 OFFSET ?6",
        if ascending { "ASC" } else { "DESC" }
    );
    let mut s = c.prepare_cached(&sql)?;
    let rows = s.query_map(
        params![
            chat.as_uuid().as_bytes(),
            user.as_uuid().as_bytes(),
            q.before_seq,
            q.after_seq,
            q.limit + 1,
            q.offset
        ],
        entry_from_row,
    )?;
    let mut entries: Vec<LogEntry> = rows.collect::<Result<_>>()?;
    let has_more = entries.len() > usize::try_from(q.limit).unwrap_or(0);
    entries.truncate(usize::try_from(q.limit).unwrap_or(0));
    Ok((entries, has_more))
}

/// The entry at a position of a chat log.
pub(super) fn entry_at(c: &Connection, chat: ChatId, seq: i64) -> Result<Option<LogEntry>> {
    c.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM chat_log l WHERE l.chat_id = ?1 AND l.seq = ?2"
    ))?
    .query_row(params![chat.as_uuid().as_bytes(), seq], entry_from_row)
    .optional()
}

fn message_by_id(c: &Connection, id: MessageId) -> Result<Option<LogEntry>> {
    c.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM chat_log l WHERE l.id = ?1 AND l.kind = 'message'"
    ))?
    .query_row([id.as_uuid().as_bytes()], entry_from_row)
    .optional()
}

pub(super) fn change_message(c: &Connection, ch: MessageChange) -> Result<MessageChanged> {
    let Some(message) = message_by_id(c, ch.message)? else {
        return Ok(MessageChanged::NotFound);
    };
    if visible_message(c, message.chat_id, ch.actor, ch.message)?.is_none() {
        return Ok(MessageChanged::NotFound);
    }
    if message.sender_id != ch.actor {
        return Ok(MessageChanged::NotSender);
    }
    if current_role(c, message.chat_id, ch.actor)?.is_none() {
        return Ok(MessageChanged::NotFound);
    }
    if message.deleted_at.is_some() {
        return Ok(MessageChanged::TooLate);
    }
    let id = ch.message.as_uuid().as_bytes().to_vec();
    let draft = |kind, content, ciphertext| Draft {
        id: MessageId::new(),
        sender_id: ch.actor,
        sender_device_id: Some(ch.device),
        kind,
        content,
        ciphertext,
        media_id: None,
        reply_to: None,
        client_message_id: None,
        client_timestamp: None,
        now: ch.now,
    };
    let appended = match ch.edit {
        Some(NewContent {
            content,
            ciphertext,
            window_ms,
        }) => {
            if ch.now.millis_since(message.created_at) > window_ms {
                return Ok(MessageChanged::TooLate);
            }
            c.prepare_cached(
                "UPDATE chat_log SET content = ?2, ciphertext = ?3, edited_at = ?4 WHERE id = ?1",
            )?
            .execute(params![id, content, ciphertext, ch.now.0])?;
            append(
                c,
                message.chat_id,
                draft(EntryKind::Edit(ch.message), content, ciphertext),
                None,
            )?
        }
        None => {
            // Content gone from the store; the entry stays as a tombstone.
            c.prepare_cached(
                "UPDATE chat_log SET content = NULL, ciphertext = NULL, media_id = NULL,
                   deleted_at = ?2 WHERE id = ?1",
            )?
            .execute(params![id, ch.now.0])?;
            // Edits carried copies of the content: clear them too.
            c.prepare_cached(
                "UPDATE chat_log SET content = NULL, ciphertext = NULL
                 WHERE chat_id = ?1 AND kind = 'edit' AND target_id = ?2",
            )?
            .execute(params![message.chat_id.as_uuid().as_bytes(), id])?;
            append(
                c,
                message.chat_id,
                draft(EntryKind::Delete(ch.message), None, None),
                None,
            )?
        }
    };
    let now = message_by_id(c, ch.message)?.unwrap_or(message);
    Ok(MessageChanged::Done(Box::new(appended), Box::new(now)))
}

/// Writes a receipt update into the streams of the chat's other participants.
fn fan_out_receipt(
    c: &Connection,
    chat: ChatId,
    user: UserId,
    delivered_seq: i64,
    read_seq: i64,
    now: Timestamp,
) -> Result<ReceiptChange> {
    let mut fanout = Vec::new();
    for other in current_members(c, chat)? {
        if other == user {
            continue;
        }
        let pts: i64 = c
            .prepare_cached("UPDATE users SET pts = pts + 1 WHERE id = ?1 RETURNING pts")?
            .query_row([other.as_uuid().as_bytes()], |r| r.get(0))?;
        c.prepare_cached(
            "INSERT INTO updates (user_id, pts, chat_id, seq, kind, created_at, actor_id,
                                  delivered_seq, read_seq)
             VALUES (?1, ?2, ?3, NULL, 'receipt', ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            other.as_uuid().as_bytes(),
            pts,
            chat.as_uuid().as_bytes(),
            now.0,
            user.as_uuid().as_bytes(),
            delivered_seq,
            read_seq
        ])?;
        fanout.push((other, pts));
    }
    Ok(ReceiptChange {
        chat_id: chat,
        user_id: user,
        delivered_seq,
        read_seq,
        fanout,
    })
}

/// Moves a receipt forward (never back, never past the log's head); tells the
/// others only if it moved.
fn advance_receipt(
    c: &Connection,
    chat: ChatId,
    user: UserId,
    delivered: i64,
    read: i64,
    now: Timestamp,
) -> Result<ReceiptChange> {
    let before: (i64, i64) = c
        .prepare_cached(
            "SELECT delivered_seq, read_seq FROM receipts WHERE chat_id = ?1 AND user_id = ?2",
        )?
        .query_row(
            params![chat.as_uuid().as_bytes(), user.as_uuid().as_bytes()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
    let after: (i64, i64) = c
        .prepare_cached(
            "UPDATE receipts SET
               delivered_seq = max(delivered_seq, min(?3, (SELECT last_seq FROM chats WHERE id = ?1))),
               read_seq = max(read_seq, min(?4, (SELECT last_seq FROM chats WHERE id = ?1)))
             WHERE chat_id = ?1 AND user_id = ?2
             RETURNING delivered_seq, read_seq",
        )?
        .query_row(
            params![chat.as_uuid().as_bytes(), user.as_uuid().as_bytes(), delivered.max(read), read],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
    if after == before {
        return Ok(ReceiptChange {
            chat_id: chat,
            user_id: user,
            delivered_seq: after.0,
            read_seq: after.1,
            fanout: Vec::new(),
        });
    }
    fan_out_receipt(c, chat, user, after.0, after.1, now)
}

pub(super) fn mark_read(
    c: &Connection,
    chat: ChatId,
    user: UserId,
    seq: i64,
    now: Timestamp,
) -> Result<ReceiptChange> {
    advance_receipt(c, chat, user, seq, seq, now)
}

pub(super) fn ack(
    c: &Connection,
    user: UserId,
    device: DeviceId,
    pts: i64,
    now: Timestamp,
) -> Result<Vec<ReceiptChange>> {
    let acked: Option<i64> = c
        .prepare_cached("SELECT acked_pts FROM devices WHERE id = ?1 AND user_id = ?2")?
        .query_row(
            params![device.as_uuid().as_bytes(), user.as_uuid().as_bytes()],
            |r| r.get(0),
        )
        .optional()?;
    let Some(acked) = acked else {
        return Ok(Vec::new());
    };
    let current: i64 = c
        .prepare_cached("SELECT pts FROM users WHERE id = ?1")?
        .query_row([user.as_uuid().as_bytes()], |r| r.get(0))?;
    let pts = pts.min(current);
    if pts <= acked {
        return Ok(Vec::new());
    }
    c.prepare_cached("UPDATE devices SET acked_pts = ?2 WHERE id = ?1")?
        .execute(params![device.as_uuid().as_bytes(), pts])?;
    // The newest entry of each chat among the acknowledged updates.
    let mut s = c.prepare_cached(
        "SELECT u.chat_id, max(u.seq) AS seq FROM updates u
         JOIN memberships m ON m.chat_id = u.chat_id AND m.user_id = u.user_id AND m.to_seq IS NULL
         WHERE u.user_id = ?1 AND u.pts > ?2 AND u.pts <= ?3 AND u.seq IS NOT NULL
         GROUP BY u.chat_id",
    )?;
    let rows = s.query_map(params![user.as_uuid().as_bytes(), acked, pts], |r| {
        Ok((
            ChatId::from_uuid(uuid_of(r, "chat_id")?),
            r.get::<_, i64>("seq")?,
        ))
    })?;
    let delivered: Vec<(ChatId, i64)> = rows.collect::<Result<_>>()?;
    let mut changes = Vec::new();
    for (chat, seq) in delivered {
        let change = advance_receipt(c, chat, user, seq, 0, now)?;
        if !change.fanout.is_empty() {
            changes.push(change);
        }
    }
    Ok(changes)
}

pub(super) fn current_pts(c: &Connection, user: UserId) -> Result<i64> {
    c.prepare_cached("SELECT pts FROM users WHERE id = ?1")?
        .query_row([user.as_uuid().as_bytes()], |r| r.get(0))
        .optional()
        .map(Option::unwrap_or_default)
}

pub(super) fn updates_since(
    c: &Connection,
    user: UserId,
    since: i64,
    limit: i64,
) -> Result<Vec<StoredUpdate>> {
    let mut s = c.prepare_cached(&format!(
        "SELECT u.pts, u.kind AS update_kind, u.chat_id AS update_chat, u.actor_id,
                u.delivered_seq AS r_delivered, u.read_seq AS r_read, {ENTRY_COLUMNS}
         FROM updates u LEFT JOIN chat_log l ON l.chat_id = u.chat_id AND l.seq = u.seq
         WHERE u.user_id = ?1 AND u.pts > ?2
         ORDER BY u.pts LIMIT ?3"
    ))?;
    let rows = s.query_map(params![user.as_uuid().as_bytes(), since, limit], |r| {
        let pts: i64 = r.get("pts")?;
        let kind: String = r.get("update_kind")?;
        if kind == "receipt" {
            return Ok((
                pts,
                None,
                Some(UpdateBody::Receipt {
                    chat_id: ChatId::from_uuid(uuid_of(r, "update_chat")?),
                    user_id: opt_uuid(r, "actor_id")?
                        .map(UserId::from_uuid)
                        .unwrap_or_default(),
                    delivered_seq: r.get::<_, Option<i64>>("r_delivered")?.unwrap_or_default(),
                    read_seq: r.get::<_, Option<i64>>("r_read")?.unwrap_or_default(),
                }),
            ));
        }
        Ok((pts, Some(entry_from_row(r)?), None))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (pts, entry, receipt) = row?;
        let body = match (entry, receipt) {
            (_, Some(receipt)) => receipt,
            (Some(entry), None) => match entry.kind {
                EntryKind::Edit(target) => match message_by_id(c, target)? {
                    Some(m) => UpdateBody::Edited(m),
                    None => continue,
                },
                EntryKind::Delete(target) => match message_by_id(c, target)? {
                    Some(m) => UpdateBody::Deleted(m),
                    None => continue,
                },
                _ => UpdateBody::Entry(entry),
            },
            (None, None) => continue,
        };
        out.push(StoredUpdate { pts, body });
    }
    Ok(out)
}

pub(super) fn presence_audience(c: &Connection, user: UserId) -> Result<Vec<UserId>> {
    let visibility: Option<String> = c
        .prepare_cached("SELECT last_seen_visibility FROM users WHERE id = ?1")?
        .query_row([user.as_uuid().as_bytes()], |r| r.get(0))
        .optional()?;
    let sql = match visibility.as_deref() {
        Some("everyone") => {
            "SELECT DISTINCT other FROM (
               SELECT m2.user_id AS other FROM memberships m1
               JOIN memberships m2 ON m2.chat_id = m1.chat_id AND m2.to_seq IS NULL
               WHERE m1.user_id = ?1 AND m1.to_seq IS NULL
               UNION SELECT owner_id AS other FROM contacts WHERE contact_id = ?1)
             WHERE other != ?1"
        }
        // Only the user's own contacts may see them.
        Some("contacts") => "SELECT contact_id AS other FROM contacts WHERE owner_id = ?1",
        _ => return Ok(Vec::new()),
    };
    let mut s = c.prepare_cached(sql)?;
    let rows = s.query_map([user.as_uuid().as_bytes()], |r| uuid_of(r, "other"))?;
    rows.map(|r| r.map(UserId::from_uuid)).collect()
}
