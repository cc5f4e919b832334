//! Chats and chat logs on SQLite. Writes run inside the writer's
//! transaction with its memory of the chats ([`ChatCache`]): the membership
//! check and the seq allocation of an append come from memory and happen in
//! the same transaction as the append, so nothing is ever accepted from a
//! member after their removal. Reads run on a read connection.
//!
//! A message costs one durable write, its log row: who hears of it comes
//! from the chat's member list, not from rows per recipient (devices follow
//! each chat by its seq), and search indexing follows the log separately.

use natter_proto::chats::{ChatEvent, ChatKind, Role};
use natter_proto::{ChatId, DeviceId, MediaId, MessageId, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::cache::{ChatCache, ChatState};
use super::uuid_of;
use crate::clock::Timestamp;
use crate::store::columns::{
    EntryColumns, chat_kind_from_sql, chat_kind_to_sql, role_from_sql, role_to_sql,
};
use crate::store::rules::{self, MemberFacts};
use crate::store::{
    Appended, ChatAccess, ChatChange, ChatChanged, ChatCreated, ChatHead, ChatOverview, ChatPerson,
    ChatRecord, EntryKind, EventBody, HistoryQuery, LogEntry, LogEvent, Member, MessageChange,
    MessageChanged, NewChat, NewContent, NewMessage, Posted, ReceiptChange, ReceiptState,
};

type Result<T> = rusqlite::Result<T>;

pub(super) fn conversion<E: std::error::Error + Send + Sync + 'static>(e: E) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

fn opt_uuid(row: &Row<'_>, idx: &str) -> Result<Option<Uuid>> {
    let bytes: Option<Vec<u8>> = row.get(idx)?;
    bytes
        .map(|b| Uuid::from_slice(&b).map_err(conversion))
        .transpose()
}

/// A chat's columns; its head and last activity come from its log.
const CHAT_COLUMNS: &str = "c.id, c.kind, c.name, c.encrypted, c.epoch, c.created_by, c.created_at,
     coalesce((SELECT max(h.seq) FROM chat_log h WHERE h.chat_id = c.id), 0) AS last_seq,
     coalesce((SELECT h.created_at FROM chat_log h WHERE h.chat_id = c.id
               ORDER BY h.seq DESC LIMIT 1), c.created_at) AS last_activity_at";

fn chat_from_row(row: &Row<'_>) -> Result<ChatRecord> {
    Ok(ChatRecord {
        id: ChatId::from_uuid(uuid_of(row, "id")?),
        kind: chat_kind_from_sql(&row.get::<_, String>("kind")?),
        name: row.get("name")?,
        encrypted: row.get("encrypted")?,
        epoch: row.get("epoch")?,
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
    let kind = EntryColumns::kind_of(
        &row.get::<_, String>("kind")?,
        row.get::<_, Option<String>>("msg_type")?.as_deref(),
        row.get::<_, Option<String>>("event")?.as_deref(),
        opt_uuid(row, "target_id")?.map(MessageId::from_uuid),
    )
    .map_err(conversion)?;
    Ok(LogEntry {
        id: MessageId::from_uuid(uuid_of(row, "id")?),
        chat_id: ChatId::from_uuid(uuid_of(row, "chat_id")?),
        seq: row.get("seq")?,
        sender_id: UserId::from_uuid(uuid_of(row, "sender_id")?),
        sender_device_id: opt_uuid(row, "sender_device_id")?.map(DeviceId::from_uuid),
        kind,
        content: row.get("content")?,
        ciphertext: row.get("ciphertext")?,
        // Stored as text (the upload's id as clients write it).
        media_id: row
            .get::<_, Option<String>>("media_id")?
            .map(|m| m.parse::<MediaId>().map_err(conversion))
            .transpose()?,
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

pub(super) use crate::store::chat_state::Draft;

/// Stores an entry at the chat's next seq; gives the entry and who hears of
/// it (the members, and `removed` if the entry removed them). `None` if an
/// entry with the same idempotency key exists (nothing is written then).
pub(super) fn append(
    c: &Connection,
    state: &mut ChatState,
    chat: ChatId,
    draft: Draft,
    removed: Option<UserId>,
) -> Result<Option<Appended>> {
    let seq = state.last_seq + 1;
    let columns = EntryColumns::of(&draft.kind).map_err(conversion)?;
    // Only the idempotency key can conflict; a conflict on (chat_id, seq)
    // would mean the memory is wrong, and fails the job (see `post`).
    let inserted = c
        .prepare_cached(
            "INSERT INTO chat_log (chat_id, seq, id, kind, sender_id, sender_device_id, msg_type,
               content, ciphertext, media_id, reply_to, client_message_id, client_timestamp,
               event, target_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            chat.as_uuid().as_bytes(),
            seq,
            draft.id.as_uuid().as_bytes(),
            columns.kind,
            draft.sender_id.as_uuid().as_bytes(),
            draft.sender_device_id.map(|d| *d.as_uuid().as_bytes()),
            columns.msg_type,
            draft.content,
            draft.ciphertext,
            draft.media_id.map(|m| m.to_string()),
            draft.reply_to.map(|m| *m.as_uuid().as_bytes()),
            draft.client_message_id,
            draft.client_timestamp.map(|t| t.0),
            columns.event,
            columns.target.map(|m| *m.as_uuid().as_bytes()),
            draft.now.0,
        ])?;
    if inserted == 0 {
        return Ok(None);
    }
    state.appended(draft.sender_id, seq);
    let entry = draft.into_entry(chat, seq);
    Ok(Some(Appended {
        entry,
        recipients: rules::recipients(&state.recipients(), removed),
        receipts: state.receipts(),
    }))
}

/// [`append`] for entries that carry no idempotency key (they cannot conflict).
pub(super) fn append_entry(
    c: &Connection,
    state: &mut ChatState,
    chat: ChatId,
    draft: Draft,
    removed: Option<UserId>,
) -> Result<Appended> {
    append(c, state, chat, draft, removed)?.ok_or_else(|| {
        conversion(std::io::Error::other(
            "a chat-log position was taken twice: the writer's memory of the chat is stale",
        ))
    })
}

/// Whether an account exists (a deleted account's tombstone does not count).
pub(super) fn user_exists(c: &Connection, user: UserId) -> Result<bool> {
    c.prepare_cached("SELECT 1 FROM users WHERE id = ?1 AND deleted_at IS NULL")?
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

/// Makes `user` a member from `seq` (their join entry, appended next).
fn join(
    c: &Connection,
    state: &mut ChatState,
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
    // Joining is reading up to the join: nothing before it counts as unread.
    let (delivered, read): (i64, i64) = c
        .prepare_cached(
            "INSERT INTO receipts (chat_id, user_id, delivered_seq, read_seq) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (chat_id, user_id) DO UPDATE SET
               delivered_seq = max(delivered_seq, excluded.delivered_seq),
               read_seq = max(read_seq, excluded.read_seq)
             RETURNING delivered_seq, read_seq",
        )?
        .query_row(
            params![
                chat.as_uuid().as_bytes(),
                user.as_uuid().as_bytes(),
                seq - 1
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
    state.join(
        MemberFacts {
            user_id: user,
            role,
            from_seq: seq,
            joined_at: now,
        },
        delivered,
        read,
    );
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

pub(super) fn create_chat(
    c: &Connection,
    cache: &mut ChatCache,
    new: NewChat,
) -> Result<ChatCreated> {
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
        "INSERT INTO chats (id, kind, name, encrypted, direct_key, created_by, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        new.id.as_uuid().as_bytes(),
        chat_kind_to_sql(new.kind),
        new.name,
        new.encrypted,
        key,
        new.creator.as_uuid().as_bytes(),
        new.now.0
    ])?;
    let state = cache.insert(new.id, ChatState::new(new.kind, new.encrypted));
    // Members first, so the `created` entry reaches all of them; it has seq 1.
    let creator_role = if new.kind == ChatKind::Group {
        Role::Admin
    } else {
        Role::Member
    };
    join(c, state, new.id, new.creator, creator_role, 1, new.now)?;
    for user in &new.others {
        join(c, state, new.id, *user, Role::Member, 1, new.now)?;
    }
    let created = append_entry(
        c,
        state,
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

/// The chat's receipt positions as stored: the lowest of its current
/// members' (nothing in a chat of one). The writer may hold positions a
/// moment newer (see `cache`).
pub(super) fn receipt_state(c: &Connection, chat: ChatId) -> Result<ReceiptState> {
    let (members, delivered, read): (i64, Option<i64>, Option<i64>) = c
        .prepare_cached(
            "SELECT count(*), min(r.delivered_seq), min(r.read_seq) FROM memberships m
             JOIN receipts r ON r.chat_id = m.chat_id AND r.user_id = m.user_id
             WHERE m.chat_id = ?1 AND m.to_seq IS NULL",
        )?
        .query_row([chat.as_uuid().as_bytes()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if members < 2 {
        return Ok(ReceiptState::default());
    }
    Ok(ReceiptState {
        delivered_seq: delivered.unwrap_or(0),
        read_seq: read.unwrap_or(0),
    })
}

pub(super) fn chats_of(c: &Connection, user: UserId) -> Result<Vec<ChatOverview>> {
    let mut s = c.prepare_cached(&format!(
        "SELECT {CHAT_COLUMNS}, m.role, coalesce(r.read_seq, 0) AS read_seq
         FROM memberships m JOIN chats c ON c.id = m.chat_id
         LEFT JOIN receipts r ON r.chat_id = m.chat_id AND r.user_id = m.user_id
         WHERE m.user_id = ?1 AND m.to_seq IS NULL
         ORDER BY last_activity_at DESC, c.id"
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
         WHERE chat_id = ?1 AND seq > ?2 AND kind = 'message' AND msg_type IS NOT 'commit'
           AND sender_id != ?3
           AND deleted_at IS NULL",
    )?;
    let mut last_stmt = c.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM chat_log l
         WHERE l.chat_id = ?1 AND l.kind = 'message' AND l.msg_type IS NOT 'commit'
         ORDER BY l.seq DESC LIMIT 1"
    ))?;
    let mut people_stmt = c.prepare_cached(
        "SELECT u.id, u.name, u.profile_pic FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE m.chat_id = ?1 AND m.to_seq IS NULL
         ORDER BY m.from_seq, m.joined_at, m.user_id LIMIT ?2",
    )?;
    let mut count_stmt =
        c.prepare_cached("SELECT count(*) FROM memberships WHERE chat_id = ?1 AND to_seq IS NULL")?;
    // The pair is in the direct key (the two ids, sorted): the other
    // person is known even after they left.
    let mut other_stmt = c.prepare_cached(
        "SELECT u.id, u.name, u.profile_pic FROM chats c JOIN users u
           ON u.id IN (substr(c.direct_key, 1, 16), substr(c.direct_key, 17, 16))
         WHERE c.id = ?1 AND c.direct_key IS NOT NULL AND u.id != ?2",
    )?;
    let limit = i64::try_from(crate::store::CHAT_LIST_PARTICIPANTS).unwrap_or(i64::MAX);
    let mut out = Vec::with_capacity(rows.len());
    for (chat, role, read_seq) in rows {
        let id = chat.id.as_uuid().as_bytes().to_vec();
        let unread: i64 = unread_stmt
            .query_row(params![id, read_seq, user.as_uuid().as_bytes()], |r| {
                r.get(0)
            })?;
        let last_message = last_stmt.query_row([&id], entry_from_row).optional()?;
        let participants = people_stmt
            .query_map(params![id, limit], person_from_row)?
            .collect::<Result<Vec<_>>>()?;
        let participant_count: i64 = count_stmt.query_row([&id], |r| r.get(0))?;
        let other = other_stmt
            .query_row(params![id, user.as_uuid().as_bytes()], person_from_row)
            .optional()?;
        out.push(ChatOverview {
            chat,
            role,
            unread,
            last_message,
            other,
            participants,
            participant_count,
        });
    }
    Ok(out)
}

/// A chat list's person, from a row of `u.id, u.name, u.profile_pic`.
fn person_from_row(r: &Row<'_>) -> Result<ChatPerson> {
    Ok(ChatPerson {
        user_id: UserId::from_uuid(uuid_of(r, "id")?),
        name: r.get("name")?,
        profile_pic: opt_uuid(r, "profile_pic")?.map(MediaId::from_uuid),
    })
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
         WHERE l.id = ?1 AND l.chat_id = ?2 AND l.kind = 'message' AND l.msg_type IS NOT 'commit'
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

/// The message first sent with this idempotency key.
pub(super) fn by_idempotency_key(
    c: &Connection,
    chat: ChatId,
    sender: UserId,
    key: &str,
) -> Result<Option<LogEntry>> {
    c.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM chat_log l
         WHERE l.chat_id = ?1 AND l.sender_id = ?2 AND l.client_message_id = ?3"
    ))?
    .query_row(
        params![chat.as_uuid().as_bytes(), sender.as_uuid().as_bytes(), key],
        entry_from_row,
    )
    .optional()
}

pub(super) fn post(c: &Connection, cache: &mut ChatCache, m: NewMessage) -> Result<Posted> {
    let Some(state) = cache.get(c, m.chat_id)? else {
        return Ok(Posted::NotMember);
    };
    if state.role(m.sender_id).is_none() {
        return Ok(Posted::NotMember);
    }
    // The epoch is known here, in the append's transaction: an
    // application message is checked against the chat's epoch now.
    if let Some(refusal) = rules::refuse_message(
        m.chat_id,
        state.encrypted,
        state.epoch,
        m.content.as_deref(),
        m.ciphertext.as_deref(),
        m.media_id.is_some(),
    ) {
        return Ok(Posted::WrongBody(refusal));
    }
    if let Some(reply) = m.reply_to
        && visible_message(c, m.chat_id, m.sender_id, reply)?.is_none()
    {
        return Ok(Posted::BadReply);
    }
    // Checked here, in the append's transaction, so garbage collection (also
    // a writer job) can never delete an upload a message is about to use.
    if let Some(media) = m.media_id
        && !super::media::is_ready(c, media)?
    {
        return Ok(Posted::MediaGone);
    }
    let key = m.client_message_id.clone();
    let (chat_id, sender_id) = (m.chat_id, m.sender_id);
    let draft = Draft::message(m);
    let Some(mut appended) = append(c, state, chat_id, draft, None)? else {
        // The key's first message exists: this is a retry.
        let first = match &key {
            Some(key) => by_idempotency_key(c, chat_id, sender_id, key)?,
            None => None,
        };
        return first.map(Posted::Duplicate).ok_or_else(|| {
            conversion(std::io::Error::other(
                "a chat-log position was taken twice: the writer's memory of the chat is stale",
            ))
        });
    };
    // The sender has read the chat up to their own message. If that read
    // others' entries (or memory cannot tell), unread counts change: write
    // it now; otherwise it only moves their own position, written with the
    // next flush.
    let seq = appended.entry.seq;
    let read_before = state.positions(sender_id).map_or(0, |(_, read)| read);
    let read_others = state
        .latest_not_by(sender_id)
        .is_none_or(|other| other > read_before);
    if let Some((delivered, read)) = state.advance(sender_id, seq, seq) {
        appended.receipts = state.receipts();
        if read_others {
            write_positions(c, chat_id, sender_id, delivered, read)?;
        } else {
            cache.unflushed(chat_id, sender_id);
        }
    }
    Ok(Posted::Created(appended))
}

pub(super) fn change_chat(
    c: &Connection,
    cache: &mut ChatCache,
    chat: ChatId,
    actor: UserId,
    change: ChatChange,
    max_members: usize,
    now: Timestamp,
) -> Result<ChatChanged> {
    let Some(state) = cache.get(c, chat)? else {
        return Ok(ChatChanged::NotMember);
    };
    let Some(actor_role) = state.role(actor) else {
        return Ok(ChatChanged::NotMember);
    };
    if let Some(refusal) = rules::refuse_change(state.kind, actor, actor_role, &change) {
        return Ok(refusal);
    }
    let mut appended = Vec::new();
    match change {
        ChatChange::Add(users) => {
            let mut new_users = Vec::new();
            for user in users {
                if !user_exists(c, user)? {
                    return Ok(ChatChanged::UnknownUser(user));
                }
                if state.role(user).is_none() && !new_users.contains(&user) {
                    new_users.push(user);
                }
            }
            if !rules::has_room(state.member_count(), new_users.len(), max_members) {
                return Ok(ChatChanged::GroupFull);
            }
            for user in new_users {
                // The join entry is the first the new member sees.
                let seq = state.last_seq + 1;
                join(c, state, chat, user, Role::Member, seq, now)?;
                appended.push(append_entry(
                    c,
                    state,
                    chat,
                    Draft::system(actor, ChatEvent::MemberAdded { user_id: user }, now),
                    None,
                )?);
            }
        }
        ChatChange::Remove(user) => {
            if state.role(user).is_none() {
                return Ok(ChatChanged::UnknownUser(user));
            }
            appended.extend(remove_member(c, state, chat, actor, user, now)?);
        }
        ChatChange::Rename(name) => {
            c.prepare_cached("UPDATE chats SET name = ?2 WHERE id = ?1")?
                .execute(params![chat.as_uuid().as_bytes(), name])?;
            appended.push(append_entry(
                c,
                state,
                chat,
                Draft::system(actor, ChatEvent::Renamed { name }, now),
                None,
            )?);
        }
        ChatChange::SetRole(user, role) => match state.role(user) {
            None => return Ok(ChatChanged::UnknownUser(user)),
            Some(current) if current == role => {}
            Some(_) => {
                if role == Role::Member && rules::is_last_admin(&state.member_facts(), user) {
                    return Ok(ChatChanged::LastAdmin);
                }
                set_role(c, state, chat, user, role)?;
                let event = ChatEvent::RoleChanged {
                    user_id: user,
                    role,
                };
                appended.push(append_entry(
                    c,
                    state,
                    chat,
                    Draft::system(actor, event, now),
                    None,
                )?);
            }
        },
    }
    Ok(ChatChanged::Done(appended))
}

/// Ends `user`'s membership (by `actor`: themself when leaving): closes
/// their period at the removal entry, drops them from the writer's memory,
/// and hands the group to a successor if they were its only admin. The one
/// removal path: leaving, being removed, and deleting one's account.
fn remove_member(
    c: &Connection,
    state: &mut ChatState,
    chat: ChatId,
    actor: UserId,
    user: UserId,
    now: Timestamp,
) -> Result<Vec<Appended>> {
    let mut appended = Vec::new();
    let event = if user == actor {
        ChatEvent::MemberLeft { user_id: user }
    } else {
        ChatEvent::MemberRemoved { user_id: user }
    };
    let successor = rules::successor(&state.member_facts(), user);
    // The removal entry is the last the removed user sees.
    let seq = state.last_seq + 1;
    c.prepare_cached(
        "UPDATE memberships SET to_seq = ?3
         WHERE chat_id = ?1 AND user_id = ?2 AND to_seq IS NULL",
    )?
    .execute(params![
        chat.as_uuid().as_bytes(),
        user.as_uuid().as_bytes(),
        seq
    ])?;
    state.leave(user);
    appended.push(append_entry(
        c,
        state,
        chat,
        Draft::system(actor, event, now),
        Some(user),
    )?);
    if let Some(next) = successor {
        set_role(c, state, chat, next, Role::Admin)?;
        let event = ChatEvent::RoleChanged {
            user_id: next,
            role: Role::Admin,
        };
        appended.push(append_entry(
            c,
            state,
            chat,
            Draft::system(actor, event, now),
            None,
        )?);
    }
    Ok(appended)
}

/// Makes `user` leave every chat they are in, direct chats included (the
/// account is being deleted): in each, through [`remove_member`], so the
/// members see `member_left` and the writer's memory follows.
pub(super) fn leave_every_chat(
    c: &Connection,
    cache: &mut ChatCache,
    user: UserId,
    now: Timestamp,
) -> Result<Vec<Appended>> {
    let chats: Vec<ChatId> = c
        .prepare_cached("SELECT chat_id FROM memberships WHERE user_id = ?1 AND to_seq IS NULL")?
        .query_map([user.as_uuid().as_bytes()], |r| {
            uuid_of(r, "chat_id").map(ChatId::from_uuid)
        })?
        .collect::<Result<_>>()?;
    let mut appended = Vec::new();
    for chat in chats {
        let Some(state) = cache.get(c, chat)? else {
            continue;
        };
        if state.role(user).is_some() {
            appended.extend(remove_member(c, state, chat, user, user, now)?);
        }
    }
    Ok(appended)
}

fn set_role(
    c: &Connection,
    state: &mut ChatState,
    chat: ChatId,
    user: UserId,
    role: Role,
) -> Result<()> {
    c.prepare_cached(
        "UPDATE memberships SET role = ?3 WHERE chat_id = ?1 AND user_id = ?2 AND to_seq IS NULL",
    )?
    .execute(params![
        chat.as_uuid().as_bytes(),
        user.as_uuid().as_bytes(),
        role_to_sql(role)
    ])?;
    state.set_role(user, role);
    Ok(())
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
        "SELECT {ENTRY_COLUMNS} FROM chat_log l
         WHERE l.id = ?1 AND l.kind = 'message' AND l.msg_type IS NOT 'commit'"
    ))?
    .query_row([id.as_uuid().as_bytes()], entry_from_row)
    .optional()
}

pub(super) fn change_message(
    c: &Connection,
    cache: &mut ChatCache,
    ch: MessageChange,
) -> Result<MessageChanged> {
    let Some(message) = message_by_id(c, ch.message)? else {
        return Ok(MessageChanged::NotFound);
    };
    if visible_message(c, message.chat_id, ch.actor, ch.message)?.is_none() {
        return Ok(MessageChanged::NotFound);
    }
    if message.sender_id != ch.actor {
        return Ok(MessageChanged::NotSender);
    }
    let Some(state) = cache.get(c, message.chat_id)? else {
        return Ok(MessageChanged::NotFound);
    };
    if state.role(ch.actor).is_none() {
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
            if !rules::may_edit(message.created_at, ch.now, window_ms) {
                return Ok(MessageChanged::TooLate);
            }
            if let Some(refusal) = rules::refuse_message(
                message.chat_id,
                state.encrypted,
                state.epoch,
                content.as_deref(),
                ciphertext.as_deref(),
                false,
            ) {
                return Ok(MessageChanged::WrongBody(refusal));
            }
            c.prepare_cached(
                "UPDATE chat_log SET content = ?2, ciphertext = ?3, edited_at = ?4 WHERE id = ?1",
            )?
            .execute(params![id, content, ciphertext, ch.now.0])?;
            append_entry(
                c,
                state,
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
            append_entry(
                c,
                state,
                message.chat_id,
                draft(EntryKind::Delete(ch.message), None, None),
                None,
            )?
        }
    };
    let now = message_by_id(c, ch.message)?.unwrap_or(message);
    Ok(MessageChanged::Done(Box::new(appended), Box::new(now)))
}

/// Writes a member's positions (they only move forward).
pub(super) fn write_positions(
    c: &Connection,
    chat: ChatId,
    user: UserId,
    delivered: i64,
    read: i64,
) -> Result<()> {
    c.prepare_cached(
        "UPDATE receipts SET delivered_seq = max(delivered_seq, ?3), read_seq = max(read_seq, ?4)
         WHERE chat_id = ?1 AND user_id = ?2",
    )?
    .execute(params![
        chat.as_uuid().as_bytes(),
        user.as_uuid().as_bytes(),
        delivered,
        read
    ])?;
    Ok(())
}

pub(super) fn mark_read(
    c: &Connection,
    cache: &mut ChatCache,
    chat: ChatId,
    user: UserId,
    seq: i64,
    _now: Timestamp,
) -> Result<(i64, Option<ReceiptChange>)> {
    let Some(state) = cache.get(c, chat)? else {
        return Ok((0, None));
    };
    let before = state.receipts();
    let Some((delivered, read)) = state.advance(user, seq, seq) else {
        return Ok((state.positions(user).map_or(0, |(_, read)| read), None));
    };
    // Read positions drive unread counts: written at once.
    write_positions(c, chat, user, delivered, read)?;
    let after = state.receipts();
    let change = (after != before).then(|| ReceiptChange {
        chat_id: chat,
        receipts: after,
        recipients: state.recipients(),
    });
    Ok((read, change))
}

pub(super) fn ack(
    c: &Connection,
    cache: &mut ChatCache,
    user: UserId,
    positions: Vec<(ChatId, i64)>,
    _now: Timestamp,
) -> Result<Vec<ReceiptChange>> {
    let mut changes = Vec::new();
    for (chat, seq) in positions {
        let Some(state) = cache.get(c, chat)? else {
            continue;
        };
        let before = state.receipts();
        if state.advance(user, seq, 0).is_none() {
            continue;
        }
        let after = state.receipts();
        let change = (after != before).then(|| ReceiptChange {
            chat_id: chat,
            receipts: after,
            recipients: state.recipients(),
        });
        // Delivered positions wait for the next flush.
        cache.unflushed(chat, user);
        changes.extend(change);
    }
    Ok(changes)
}

/// A user's place in a chat, from a row of `SELECT {HEAD_COLUMNS} FROM memberships m`.
fn head_from_row(r: &Row<'_>) -> Result<ChatHead> {
    Ok(ChatHead {
        chat_id: ChatId::from_uuid(uuid_of(r, "chat_id")?),
        last_seq: r.get("last_seq")?,
        from_seq: r.get("from_seq")?,
    })
}

/// The columns [`head_from_row`] reads.
const HEAD_COLUMNS: &str = "m.chat_id, m.from_seq,
     coalesce((SELECT max(h.seq) FROM chat_log h WHERE h.chat_id = m.chat_id), 0) AS last_seq";

pub(super) fn chat_heads(c: &Connection, user: UserId) -> Result<Vec<ChatHead>> {
    let mut s = c.prepare_cached(&format!(
        "SELECT {HEAD_COLUMNS} FROM memberships m WHERE m.user_id = ?1 AND m.to_seq IS NULL"
    ))?;
    let rows = s.query_map([user.as_uuid().as_bytes()], head_from_row)?;
    rows.collect()
}

pub(super) fn chat_head(c: &Connection, chat: ChatId, user: UserId) -> Result<Option<ChatHead>> {
    c.prepare_cached(&format!(
        "SELECT {HEAD_COLUMNS} FROM memberships m
         WHERE m.chat_id = ?1 AND m.user_id = ?2 AND m.to_seq IS NULL"
    ))?
    .query_row(
        params![chat.as_uuid().as_bytes(), user.as_uuid().as_bytes()],
        head_from_row,
    )
    .optional()
}

pub(super) fn messages_sent_by(c: &Connection, user: UserId, limit: i64) -> Result<Vec<LogEntry>> {
    // No index leads by sender: an export reads the whole log once, on a
    // reader, which holds no writer back.
    let mut s = c.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM chat_log l
         WHERE l.sender_id = ?1 AND l.kind = 'message' AND l.deleted_at IS NULL
           AND EXISTS (SELECT 1 FROM memberships m
                       WHERE m.chat_id = l.chat_id AND m.user_id = ?1
                         AND l.seq >= m.from_seq AND (m.to_seq IS NULL OR l.seq <= m.to_seq))
         ORDER BY l.chat_id, l.seq LIMIT ?2"
    ))?;
    let rows = s.query_map(params![user.as_uuid().as_bytes(), limit], entry_from_row)?;
    rows.collect()
}

pub(super) fn events_after(
    c: &Connection,
    chat: ChatId,
    user: UserId,
    after: i64,
    limit: i64,
) -> Result<Vec<LogEvent>> {
    let mut s = c.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM chat_log l
         WHERE l.chat_id = ?1 AND l.seq > ?3
           AND EXISTS (SELECT 1 FROM memberships m
                       WHERE m.chat_id = l.chat_id AND m.user_id = ?2
                         AND l.seq >= m.from_seq AND (m.to_seq IS NULL OR l.seq <= m.to_seq))
         ORDER BY l.seq LIMIT ?4"
    ))?;
    let rows = s.query_map(
        params![
            chat.as_uuid().as_bytes(),
            user.as_uuid().as_bytes(),
            after,
            limit
        ],
        entry_from_row,
    )?;
    let mut out = Vec::new();
    for entry in rows {
        let entry = entry?;
        let seq = entry.seq;
        let body = match entry.kind {
            EntryKind::Edit(target) => match message_by_id(c, target)? {
                Some(m) => EventBody::Edited(m),
                None => continue,
            },
            EntryKind::Delete(target) => match message_by_id(c, target)? {
                Some(m) => EventBody::Deleted(m),
                None => continue,
            },
            _ => EventBody::Entry(entry),
        };
        out.push(LogEvent { seq, body });
    }
    Ok(out)
}

pub(super) fn presence_audience(
    c: &Connection,
    user: UserId,
    max_group_members: i64,
) -> Result<Vec<UserId>> {
    let visibility: Option<String> = c
        .prepare_cached("SELECT last_seen_visibility FROM users WHERE id = ?1")?
        .query_row([user.as_uuid().as_bytes()], |r| r.get(0))
        .optional()?;
    let sql = match visibility.as_deref() {
        Some("everyone") => {
            "SELECT DISTINCT other FROM (
               SELECT m2.user_id AS other FROM memberships m1
               JOIN chats c ON c.id = m1.chat_id
               JOIN memberships m2 ON m2.chat_id = m1.chat_id AND m2.to_seq IS NULL
               WHERE m1.user_id = ?1 AND m1.to_seq IS NULL
                 AND (c.kind = 'direct'
                      OR (SELECT count(*) FROM memberships m3
                          WHERE m3.chat_id = m1.chat_id AND m3.to_seq IS NULL) <= ?2)
               UNION SELECT owner_id AS other FROM contacts WHERE contact_id = ?1)
             WHERE other != ?1"
        }
        // Only the user's own contacts may see them.
        Some("contacts") => "SELECT contact_id AS other FROM contacts WHERE owner_id = ?1",
        _ => return Ok(Vec::new()),
    };
    let mut s = c.prepare_cached(sql)?;
    let id = user.as_uuid().as_bytes();
    let other = |r: &Row<'_>| uuid_of(r, "other").map(UserId::from_uuid);
    if sql.contains("?2") {
        s.query_map(params![id, max_group_members], other)?
            .collect()
    } else {
        s.query_map([id], other)?.collect()
    }
}
