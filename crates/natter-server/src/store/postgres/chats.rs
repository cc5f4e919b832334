//! [`ChatLog`] on PostgreSQL: chats, membership periods, logs and receipt
//! positions.
//!
//! Every write to a chat runs in one transaction that first locks the
//! chat's row (`FOR UPDATE`) and loads its [`ChatState`] (members, roles,
//! positions, head, epoch) under that lock. Appends to one chat from any
//! number of nodes are so serialized by the database; the row holds the
//! log's head, so a seq is never taken twice, and nothing is accepted from
//! a member after their removal. The decisions are the shared rules of
//! [`crate::store::rules`] and the arithmetic of [`ChatState`], the same
//! calls the embedded engine makes.
//!
//! Users are looked up in the accounts database (`accounts`), chats in the
//! chat's database (`db`); with one database both are the same.

use natter_proto::chats::{ChatEvent, ChatKind, Role};
use natter_proto::{ChatId, DeviceId, MediaId, MessageId, UserId};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{Database, Postgres, execute, rows};
use crate::clock::Timestamp;
use crate::store::chat_state::{ChatState, Draft};
use crate::store::columns::{
    EntryColumns, chat_kind_from_sql, chat_kind_to_sql, role_from_sql, role_to_sql,
};
use crate::store::rules::{self, MemberFacts};
use crate::store::{
    Appended, ChatAccess, ChatChange, ChatChanged, ChatCreated, ChatHead, ChatOverview, ChatPerson,
    ChatRecord, EntryKind, EventBody, HistoryQuery, LogEntry, LogEvent, Member, MessageChange,
    MessageChanged, NewChat, NewContent, NewMessage, Posted, ReceiptChange, ReceiptState,
    StoreError, StoreResult,
};

pub(super) type Tx<'t> = deadpool_postgres::Transaction<'t>;

const CHAT_COLUMNS: &str = "c.id, c.kind, c.name, c.encrypted, c.epoch, c.created_by, \
     c.created_at, c.last_seq, c.last_activity_at";

pub(super) const ENTRY_COLUMNS: &str = "l.chat_id, l.seq, l.id, l.kind, l.sender_id, l.sender_device_id, \
     l.msg_type, l.content, l.ciphertext, l.media_id, l.reply_to, l.client_message_id, \
     l.client_timestamp, l.event, l.target_id, l.created_at, l.edited_at, l.deleted_at";

/// The condition that an entry `l` lies inside one of `user`'s membership
/// periods (`user` is the parameter named).
fn visible_to(user: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM memberships m
                 WHERE m.chat_id = l.chat_id AND m.user_id = {user}
                   AND l.seq >= m.from_seq AND (m.to_seq IS NULL OR l.seq <= m.to_seq))"
    )
}

fn epoch_of(row: &tokio_postgres::Row) -> u64 {
    u64::try_from(row.get::<_, i64>("epoch")).unwrap_or(0)
}

fn chat_from_row(row: &tokio_postgres::Row) -> ChatRecord {
    ChatRecord {
        id: ChatId::from_uuid(row.get("id")),
        kind: chat_kind_from_sql(row.get("kind")),
        name: row.get("name"),
        encrypted: row.get("encrypted"),
        epoch: epoch_of(row),
        created_by: UserId::from_uuid(row.get("created_by")),
        created_at: Timestamp(row.get("created_at")),
        last_seq: row.get("last_seq"),
        last_activity_at: Timestamp(row.get("last_activity_at")),
    }
}

pub(super) fn entry_from_row(row: &tokio_postgres::Row) -> StoreResult<LogEntry> {
    let bad = |e: &dyn std::fmt::Display| StoreError::internal(format!("a stored entry: {e}"));
    let kind = EntryColumns::kind_of(
        row.get("kind"),
        row.get("msg_type"),
        row.get("event"),
        row.get::<_, Option<Uuid>>("target_id")
            .map(MessageId::from_uuid),
    )
    .map_err(|e| bad(&e))?;
    Ok(LogEntry {
        id: MessageId::from_uuid(row.get("id")),
        chat_id: ChatId::from_uuid(row.get("chat_id")),
        seq: row.get("seq"),
        sender_id: UserId::from_uuid(row.get("sender_id")),
        sender_device_id: row
            .get::<_, Option<Uuid>>("sender_device_id")
            .map(DeviceId::from_uuid),
        kind,
        content: row.get("content"),
        ciphertext: row.get("ciphertext"),
        media_id: row
            .get::<_, Option<String>>("media_id")
            .map(|m| m.parse::<MediaId>().map_err(|e| bad(&e)))
            .transpose()?,
        reply_to: row
            .get::<_, Option<Uuid>>("reply_to")
            .map(MessageId::from_uuid),
        client_message_id: row.get("client_message_id"),
        client_timestamp: row.get::<_, Option<i64>>("client_timestamp").map(Timestamp),
        created_at: Timestamp(row.get("created_at")),
        edited_at: row.get::<_, Option<i64>>("edited_at").map(Timestamp),
        deleted_at: row.get::<_, Option<i64>>("deleted_at").map(Timestamp),
    })
}

fn entries(found: &[tokio_postgres::Row]) -> StoreResult<Vec<LogEntry>> {
    found.iter().map(entry_from_row).collect()
}

/// Locks the chat's row and loads its state under the lock; `None` if
/// there is no such chat.
pub(super) async fn lock_chat(tx: &Tx<'_>, chat: ChatId) -> StoreResult<Option<ChatState>> {
    let head = rows(
        tx,
        "SELECT kind, encrypted, epoch, last_seq FROM chats WHERE id = $1 FOR UPDATE",
        &[chat.as_uuid()],
    )
    .await?;
    let Some(head) = head.first() else {
        return Ok(None);
    };
    let mut state = ChatState::new(chat_kind_from_sql(head.get("kind")), head.get("encrypted"));
    state.epoch = epoch_of(head);
    state.last_seq = head.get("last_seq");
    let members = rows(
        tx,
        "SELECT m.user_id, m.role, m.from_seq, m.joined_at,
                coalesce(r.delivered_seq, 0) AS delivered, coalesce(r.read_seq, 0) AS read
         FROM memberships m
         LEFT JOIN receipts r ON r.chat_id = m.chat_id AND r.user_id = m.user_id
         WHERE m.chat_id = $1 AND m.to_seq IS NULL",
        &[chat.as_uuid()],
    )
    .await?;
    for m in &members {
        state.join(
            MemberFacts {
                user_id: UserId::from_uuid(m.get("user_id")),
                role: role_from_sql(m.get("role")),
                from_seq: m.get("from_seq"),
                joined_at: Timestamp(m.get("joined_at")),
            },
            m.get("delivered"),
            m.get("read"),
        );
    }
    Ok(Some(state))
}

/// Stores an entry at the chat's next seq and moves the head; gives the
/// entry and who hears of it. `None` if an entry with the same idempotency
/// key exists (nothing is written then).
pub(super) async fn append(
    tx: &Tx<'_>,
    state: &mut ChatState,
    chat: ChatId,
    draft: Draft,
    removed: Option<UserId>,
) -> StoreResult<Option<Appended>> {
    let seq = state.last_seq + 1;
    let columns = EntryColumns::of(&draft.kind)
        .map_err(|e| StoreError::internal(format!("an event does not serialize: {e}")))?;
    let inserted = execute(
        tx,
        "INSERT INTO chat_log (chat_id, seq, id, kind, sender_id, sender_device_id, msg_type,
           content, ciphertext, media_id, reply_to, client_message_id, client_timestamp,
           event, target_id, created_at, words)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                 $17::text::tsvector)
         ON CONFLICT DO NOTHING",
        &[
            chat.as_uuid(),
            &seq,
            draft.id.as_uuid(),
            &columns.kind,
            draft.sender_id.as_uuid(),
            &draft.sender_device_id.map(|d| *d.as_uuid()),
            &columns.msg_type,
            &draft.content,
            &draft.ciphertext,
            &draft.media_id.map(|m| m.to_string()),
            &draft.reply_to.map(|m| *m.as_uuid()),
            &draft.client_message_id,
            &draft.client_timestamp.map(|t| t.0),
            &columns.event,
            &columns.target.map(|m| *m.as_uuid()),
            &draft.now.0,
            &searchable_words(state.encrypted, &draft.kind, draft.content.as_deref()),
        ],
    )
    .await?;
    if inserted == 0 {
        return Ok(None);
    }
    execute(
        tx,
        "UPDATE chats SET last_seq = $2, last_activity_at = $3 WHERE id = $1",
        &[chat.as_uuid(), &seq, &draft.now.0],
    )
    .await?;
    state.appended(draft.sender_id, seq);
    let entry = draft.into_entry(chat, seq);
    Ok(Some(Appended {
        entry,
        recipients: rules::recipients(&state.recipients(), removed),
        receipts: state.receipts(),
    }))
}

/// A message's words as a `tsvector` literal (`'word':position …`), or
/// `None` when it is not searchable: encrypted chats, entries other than
/// messages (commits included), messages without text. The words are
/// letters and digits only, so they need no quoting beyond the quotes.
pub(super) fn searchable_words(
    encrypted: bool,
    kind: &EntryKind,
    content: Option<&str>,
) -> Option<String> {
    let searchable = !encrypted
        && matches!(kind, EntryKind::Message(t) if *t != natter_proto::chats::MessageType::Commit);
    let words = crate::search_query::index_words(content.filter(|_| searchable)?);
    (!words.is_empty()).then(|| {
        words
            .iter()
            .zip(1..)
            // tsvector positions stop at 16383; later words keep that one.
            .map(|((word, _), at): (&(String, _), usize)| {
                format!("'{}':{}", super::search::lexeme(word), at.min(16_383))
            })
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// [`append`] for entries that carry no idempotency key (they cannot conflict).
pub(super) async fn append_entry(
    tx: &Tx<'_>,
    state: &mut ChatState,
    chat: ChatId,
    draft: Draft,
    removed: Option<UserId>,
) -> StoreResult<Appended> {
    append(tx, state, chat, draft, removed)
        .await?
        .ok_or_else(|| StoreError::internal("a chat-log position was taken twice"))
}

/// Makes `user` a member from `seq` (their join entry, appended next).
async fn join(
    tx: &Tx<'_>,
    state: &mut ChatState,
    chat: ChatId,
    user: UserId,
    role: Role,
    seq: i64,
    now: Timestamp,
) -> StoreResult<()> {
    execute(
        tx,
        "INSERT INTO memberships (chat_id, user_id, from_seq, role, joined_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            chat.as_uuid(),
            user.as_uuid(),
            &seq,
            &role_to_sql(role),
            &now.0,
        ],
    )
    .await?;
    // Joining is reading up to the join: nothing before it counts as unread.
    let positions = rows(
        tx,
        "INSERT INTO receipts AS r (chat_id, user_id, delivered_seq, read_seq)
         VALUES ($1, $2, $3, $3)
         ON CONFLICT (chat_id, user_id) DO UPDATE SET
           delivered_seq = greatest(r.delivered_seq, excluded.delivered_seq),
           read_seq = greatest(r.read_seq, excluded.read_seq)
         RETURNING delivered_seq, read_seq",
        &[chat.as_uuid(), user.as_uuid(), &(seq - 1)],
    )
    .await?;
    let (delivered, read) = positions
        .first()
        .map_or((seq - 1, seq - 1), |r| (r.get(0), r.get(1)));
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

async fn set_role(
    tx: &Tx<'_>,
    state: &mut ChatState,
    chat: ChatId,
    user: UserId,
    role: Role,
) -> StoreResult<()> {
    execute(
        tx,
        "UPDATE memberships SET role = $3 WHERE chat_id = $1 AND user_id = $2 AND to_seq IS NULL",
        &[chat.as_uuid(), user.as_uuid(), &role_to_sql(role)],
    )
    .await?;
    state.set_role(user, role);
    Ok(())
}

/// Ends `user`'s membership (by `actor`: themself when leaving) and hands
/// the group to a successor if they were its only admin: the one removal
/// path (leaving, being removed, deleting one's account).
pub(super) async fn remove_member(
    tx: &Tx<'_>,
    state: &mut ChatState,
    chat: ChatId,
    actor: UserId,
    user: UserId,
    now: Timestamp,
) -> StoreResult<Vec<Appended>> {
    let event = if user == actor {
        ChatEvent::MemberLeft { user_id: user }
    } else {
        ChatEvent::MemberRemoved { user_id: user }
    };
    let successor = rules::successor(&state.member_facts(), user);
    // The removal entry is the last the removed user sees.
    let seq = state.last_seq + 1;
    execute(
        tx,
        "UPDATE memberships SET to_seq = $3
         WHERE chat_id = $1 AND user_id = $2 AND to_seq IS NULL",
        &[chat.as_uuid(), user.as_uuid(), &seq],
    )
    .await?;
    state.leave(user);
    let mut appended = vec![
        append_entry(
            tx,
            state,
            chat,
            Draft::system(actor, event, now),
            Some(user),
        )
        .await?,
    ];
    if let Some(next) = successor {
        set_role(tx, state, chat, next, Role::Admin).await?;
        let event = ChatEvent::RoleChanged {
            user_id: next,
            role: Role::Admin,
        };
        appended.push(append_entry(tx, state, chat, Draft::system(actor, event, now), None).await?);
    }
    Ok(appended)
}

/// Writes a member's positions (they only move forward).
async fn write_positions(
    tx: &Tx<'_>,
    chat: ChatId,
    user: UserId,
    delivered: i64,
    read: i64,
) -> StoreResult<()> {
    execute(
        tx,
        "UPDATE receipts SET delivered_seq = greatest(delivered_seq, $3),
           read_seq = greatest(read_seq, $4)
         WHERE chat_id = $1 AND user_id = $2",
        &[chat.as_uuid(), user.as_uuid(), &delivered, &read],
    )
    .await
    .map(drop)
}

/// A message (not a commit) by id.
async fn message_by_id(tx: &Tx<'_>, id: MessageId) -> StoreResult<Option<LogEntry>> {
    let found = rows(
        tx,
        &format!(
            "SELECT {ENTRY_COLUMNS} FROM chat_log l
             WHERE l.id = $1 AND l.kind = 'message' AND l.msg_type IS DISTINCT FROM 'commit'"
        ),
        &[id.as_uuid()],
    )
    .await?;
    found.first().map(entry_from_row).transpose()
}

/// A message of `chat` visible to `user` (inside one of their periods).
async fn visible_message(
    tx: &Tx<'_>,
    chat: ChatId,
    user: UserId,
    id: MessageId,
) -> StoreResult<Option<LogEntry>> {
    let found = rows(
        tx,
        &format!(
            "SELECT {ENTRY_COLUMNS} FROM chat_log l
             WHERE l.id = $1 AND l.chat_id = $2 AND l.kind = 'message'
               AND l.msg_type IS DISTINCT FROM 'commit' AND {}",
            visible_to("$3")
        ),
        &[id.as_uuid(), chat.as_uuid(), user.as_uuid()],
    )
    .await?;
    found.first().map(entry_from_row).transpose()
}

/// Which of `users` have no (undeleted) account, in the accounts database.
pub(super) async fn missing_users(
    accounts: &Database,
    users: &[UserId],
) -> StoreResult<Vec<UserId>> {
    let ids: Vec<Uuid> = users.iter().map(|u| *u.as_uuid()).collect();
    let found = accounts
        .read(
            "SELECT id FROM users WHERE id = ANY($1) AND deleted_at IS NULL",
            &[&ids],
        )
        .await?;
    let found: std::collections::HashSet<Uuid> = found.iter().map(|r| r.get(0)).collect();
    Ok(users
        .iter()
        .filter(|u| !found.contains(u.as_uuid()))
        .copied()
        .collect())
}

/// The 32-byte key that makes a direct chat unique per pair.
pub(super) fn direct_key(a: UserId, b: UserId) -> Vec<u8> {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    [
        lo.as_uuid().as_bytes().as_slice(),
        hi.as_uuid().as_bytes().as_slice(),
    ]
    .concat()
}

async fn chat_by(
    tx: &Tx<'_>,
    condition: &str,
    param: &(dyn ToSql + Sync),
) -> StoreResult<Option<ChatRecord>> {
    let found = rows(
        tx,
        &format!("SELECT {CHAT_COLUMNS} FROM chats c WHERE {condition}"),
        &[param],
    )
    .await?;
    Ok(found.first().map(chat_from_row))
}

/// [`ChatLog::create_chat`] with users looked up in `accounts`.
pub(super) async fn create_chat(
    accounts: &Database,
    db: &Database,
    new: NewChat,
) -> StoreResult<ChatCreated> {
    if let Some(unknown) = first_missing(accounts, &new.others).await? {
        return Ok(ChatCreated::UnknownUser(unknown));
    }
    db.write(|tx| {
        let new = new.clone();
        Box::pin(async move { create_chat_in(tx, new).await })
    })
    .await
}

/// The first of `users` (in their order) without an account.
pub(super) async fn first_missing(
    accounts: &Database,
    users: &[UserId],
) -> StoreResult<Option<UserId>> {
    let missing = missing_users(accounts, users).await?;
    Ok(users.iter().find(|u| missing.contains(u)).copied())
}

/// Creates a chat (or finds the pair's direct chat) in `tx`; the
/// participants are known to exist.
pub(super) async fn create_chat_in(tx: &Tx<'_>, new: NewChat) -> StoreResult<ChatCreated> {
    let key = match (new.kind, new.others.as_slice()) {
        (ChatKind::Direct, [other]) => Some(direct_key(new.creator, *other)),
        _ => None,
    };
    // A concurrent creation of the same pair on another node: the unique
    // key lets one insert through, the other finds it.
    let inserted = execute(
        tx,
        "INSERT INTO chats (id, kind, name, encrypted, direct_key, created_by, created_at,
                            last_activity_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (direct_key) DO NOTHING",
        &[
            new.id.as_uuid(),
            &chat_kind_to_sql(new.kind),
            &new.name,
            &new.encrypted,
            &key,
            new.creator.as_uuid(),
            &new.now.0,
        ],
    )
    .await?;
    if inserted == 0 {
        let existing = chat_by(tx, "c.direct_key = $1", &key).await?;
        return existing
            .map(ChatCreated::Existing)
            .ok_or_else(|| StoreError::internal("a direct chat vanished"));
    }
    let mut state = ChatState::new(new.kind, new.encrypted);
    let creator_role = if new.kind == ChatKind::Group {
        Role::Admin
    } else {
        Role::Member
    };
    // Members first, so the `created` entry reaches all of them; it has seq 1.
    join(
        tx,
        &mut state,
        new.id,
        new.creator,
        creator_role,
        1,
        new.now,
    )
    .await?;
    for user in &new.others {
        join(tx, &mut state, new.id, *user, Role::Member, 1, new.now).await?;
    }
    let created = append_entry(
        tx,
        &mut state,
        new.id,
        Draft::system(new.creator, ChatEvent::Created, new.now),
        None,
    )
    .await?;
    let chat = chat_by(tx, "c.id = $1", new.id.as_uuid())
        .await?
        .ok_or_else(|| StoreError::internal("the new chat vanished"))?;
    Ok(ChatCreated::Created(chat, Box::new(created)))
}

pub(super) async fn chat_access(
    db: &Database,
    chat: ChatId,
    user: UserId,
) -> StoreResult<Option<ChatAccess>> {
    let found = db
        .read(
            &format!(
                "SELECT {CHAT_COLUMNS},
                   (SELECT role FROM memberships m
                    WHERE m.chat_id = c.id AND m.user_id = $2 AND m.to_seq IS NULL) AS role
                 FROM chats c
                 WHERE c.id = $1
                   AND EXISTS (SELECT 1 FROM memberships m WHERE m.chat_id = c.id AND m.user_id = $2)"
            ),
            &[chat.as_uuid(), user.as_uuid()],
        )
        .await?;
    Ok(found.first().map(|row| ChatAccess {
        chat: chat_from_row(row),
        role: row.get::<_, Option<&str>>("role").map(role_from_sql),
    }))
}

pub(super) async fn members(db: &Database, chat: ChatId) -> StoreResult<Vec<Member>> {
    let found = db
        .read(
            "SELECT user_id, role, joined_at FROM memberships
             WHERE chat_id = $1 AND to_seq IS NULL ORDER BY from_seq, joined_at, user_id",
            &[chat.as_uuid()],
        )
        .await?;
    Ok(found
        .iter()
        .map(|r| Member {
            user_id: UserId::from_uuid(r.get("user_id")),
            role: role_from_sql(r.get("role")),
            joined_at: Timestamp(r.get("joined_at")),
        })
        .collect())
}

pub(super) async fn receipt_state(db: &Database, chat: ChatId) -> StoreResult<ReceiptState> {
    let found = db
        .read(
            "SELECT count(*), min(r.delivered_seq), min(r.read_seq) FROM memberships m
             JOIN receipts r ON r.chat_id = m.chat_id AND r.user_id = m.user_id
             WHERE m.chat_id = $1 AND m.to_seq IS NULL",
            &[chat.as_uuid()],
        )
        .await?;
    let Some(row) = found.first() else {
        return Ok(ReceiptState::default());
    };
    if row.get::<_, i64>(0) < 2 {
        return Ok(ReceiptState::default());
    }
    Ok(ReceiptState {
        delivered_seq: row.get::<_, Option<i64>>(1).unwrap_or(0),
        read_seq: row.get::<_, Option<i64>>(2).unwrap_or(0),
    })
}

/// People by id from the accounts database, in the order asked (unknown
/// ids left out).
async fn people(accounts: &Database, ids: &[UserId]) -> StoreResult<Vec<ChatPerson>> {
    let uuids: Vec<Uuid> = ids.iter().map(|u| *u.as_uuid()).collect();
    let found = accounts
        .read(
            "SELECT id, name, profile_pic FROM users WHERE id = ANY($1)",
            &[&uuids],
        )
        .await?;
    let mut by_id: std::collections::HashMap<Uuid, ChatPerson> = found
        .iter()
        .map(|r| {
            let id: Uuid = r.get("id");
            (
                id,
                ChatPerson {
                    user_id: UserId::from_uuid(id),
                    name: r.get("name"),
                    profile_pic: r
                        .get::<_, Option<Uuid>>("profile_pic")
                        .map(MediaId::from_uuid),
                },
            )
        })
        .collect();
    Ok(ids
        .iter()
        .filter_map(|id| by_id.remove(id.as_uuid()))
        .collect())
}

/// One database's part of [`ChatLog::chats_of`].
pub(super) async fn chats_of(
    accounts: &Database,
    db: &Database,
    user: UserId,
) -> StoreResult<Vec<ChatOverview>> {
    let limit = i64::try_from(crate::store::CHAT_LIST_PARTICIPANTS).unwrap_or(i64::MAX);
    let found = db
        .read(
            &format!(
                "SELECT {CHAT_COLUMNS}, m.role, coalesce(r.read_seq, 0) AS read_seq, c.direct_key,
                   (SELECT count(*) FROM chat_log u
                    WHERE u.chat_id = c.id AND u.seq > coalesce(r.read_seq, 0)
                      AND u.kind = 'message' AND u.msg_type IS DISTINCT FROM 'commit'
                      AND u.sender_id != $1 AND u.deleted_at IS NULL) AS unread,
                   (SELECT count(*) FROM memberships n
                    WHERE n.chat_id = c.id AND n.to_seq IS NULL) AS participant_count,
                   ARRAY(SELECT p.user_id FROM memberships p
                         WHERE p.chat_id = c.id AND p.to_seq IS NULL
                         ORDER BY p.from_seq, p.joined_at, p.user_id LIMIT $2) AS participants
                 FROM memberships m JOIN chats c ON c.id = m.chat_id
                 LEFT JOIN receipts r ON r.chat_id = m.chat_id AND r.user_id = m.user_id
                 WHERE m.user_id = $1 AND m.to_seq IS NULL
                 ORDER BY c.last_activity_at DESC, c.id"
            ),
            &[user.as_uuid(), &limit],
        )
        .await?;
    let mut out = Vec::with_capacity(found.len());
    for row in &found {
        let chat = chat_from_row(row);
        let last = db
            .read(
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM chat_log l
                     WHERE l.chat_id = $1 AND l.kind = 'message'
                       AND l.msg_type IS DISTINCT FROM 'commit'
                     ORDER BY l.seq DESC LIMIT 1"
                ),
                &[chat.id.as_uuid()],
            )
            .await?;
        let ids: Vec<UserId> = row
            .get::<_, Vec<Uuid>>("participants")
            .into_iter()
            .map(UserId::from_uuid)
            .collect();
        // The pair is in the direct key: the other person is known even
        // after they left.
        let other = match row.get::<_, Option<Vec<u8>>>("direct_key") {
            Some(key) => {
                let pair: Vec<UserId> = key
                    .chunks(16)
                    .filter_map(|b| Uuid::from_slice(b).ok())
                    .map(UserId::from_uuid)
                    .filter(|u| *u != user)
                    .collect();
                people(accounts, &pair).await?.into_iter().next()
            }
            None => None,
        };
        out.push(ChatOverview {
            role: role_from_sql(row.get("role")),
            unread: row.get("unread"),
            last_message: last.first().map(entry_from_row).transpose()?,
            other,
            participants: people(accounts, &ids).await?,
            participant_count: row.get("participant_count"),
            chat,
        });
    }
    Ok(out)
}

pub(super) async fn post(
    accounts: &Database,
    db: &Database,
    message: NewMessage,
) -> StoreResult<Posted> {
    // Uploads are records of the accounts database. A message may only
    // name a finished one; collection leaves fresh uploads alone for
    // `media.unreferenced_grace`, far longer than this append takes.
    if let Some(media) = message.media_id {
        let ready = accounts
            .read(
                "SELECT 1 FROM media WHERE id = $1 AND ready",
                &[media.as_uuid()],
            )
            .await?;
        if ready.is_empty() {
            return Ok(Posted::MediaGone);
        }
    }
    db.write(|tx| {
        let m = message.clone();
        Box::pin(async move {
            let Some(mut state) = lock_chat(tx, m.chat_id).await? else {
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
                && visible_message(tx, m.chat_id, m.sender_id, reply)
                    .await?
                    .is_none()
            {
                return Ok(Posted::BadReply);
            }
            let key = m.client_message_id.clone();
            let (chat_id, sender_id) = (m.chat_id, m.sender_id);
            let draft = Draft::message(m);
            let Some(mut appended) = append(tx, &mut state, chat_id, draft, None).await? else {
                // The key's first message exists: this is a retry.
                let first = rows(
                    tx,
                    &format!(
                        "SELECT {ENTRY_COLUMNS} FROM chat_log l
                         WHERE l.chat_id = $1 AND l.sender_id = $2 AND l.client_message_id = $3"
                    ),
                    &[chat_id.as_uuid(), sender_id.as_uuid(), &key],
                )
                .await?;
                return first
                    .first()
                    .map(entry_from_row)
                    .transpose()?
                    .map(Posted::Duplicate)
                    .ok_or_else(|| StoreError::internal("a chat-log position was taken twice"));
            };
            // The sender has read the chat up to their own message.
            let seq = appended.entry.seq;
            if let Some((delivered, read)) = state.advance(sender_id, seq, seq) {
                appended.receipts = state.receipts();
                write_positions(tx, chat_id, sender_id, delivered, read).await?;
            }
            Ok(Posted::Created(appended))
        })
    })
    .await
}

pub(super) async fn change_chat(
    accounts: &Database,
    db: &Database,
    chat: ChatId,
    actor: UserId,
    change: ChatChange,
    max_members: usize,
    now: Timestamp,
) -> StoreResult<ChatChanged> {
    let missing = match &change {
        ChatChange::Add(users) => missing_users(accounts, users).await?,
        _ => Vec::new(),
    };
    db.write(|tx| {
        let (change, missing) = (change.clone(), missing.clone());
        Box::pin(async move {
            change_chat_in(tx, chat, actor, change, &missing, max_members, now).await
        })
    })
    .await
}

/// A chat change in `tx`; `missing` are the users of an add that have no
/// account.
pub(super) async fn change_chat_in(
    tx: &Tx<'_>,
    chat: ChatId,
    actor: UserId,
    change: ChatChange,
    missing: &[UserId],
    max_members: usize,
    now: Timestamp,
) -> StoreResult<ChatChanged> {
    let Some(mut state) = lock_chat(tx, chat).await? else {
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
                if missing.contains(&user) {
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
                join(tx, &mut state, chat, user, Role::Member, seq, now).await?;
                let event = ChatEvent::MemberAdded { user_id: user };
                appended.push(
                    append_entry(tx, &mut state, chat, Draft::system(actor, event, now), None)
                        .await?,
                );
            }
        }
        ChatChange::Remove(user) => {
            if state.role(user).is_none() {
                return Ok(ChatChanged::UnknownUser(user));
            }
            appended.extend(remove_member(tx, &mut state, chat, actor, user, now).await?);
        }
        ChatChange::Rename(name) => {
            execute(
                tx,
                "UPDATE chats SET name = $2 WHERE id = $1",
                &[chat.as_uuid(), &name],
            )
            .await?;
            let event = ChatEvent::Renamed { name };
            appended.push(
                append_entry(tx, &mut state, chat, Draft::system(actor, event, now), None).await?,
            );
        }
        ChatChange::SetRole(user, role) => match state.role(user) {
            None => return Ok(ChatChanged::UnknownUser(user)),
            Some(current) if current == role => {}
            Some(_) => {
                if role == Role::Member && rules::is_last_admin(&state.member_facts(), user) {
                    return Ok(ChatChanged::LastAdmin);
                }
                set_role(tx, &mut state, chat, user, role).await?;
                let event = ChatEvent::RoleChanged {
                    user_id: user,
                    role,
                };
                appended.push(
                    append_entry(tx, &mut state, chat, Draft::system(actor, event, now), None)
                        .await?,
                );
            }
        },
    }
    Ok(ChatChanged::Done(appended))
}

pub(super) async fn history(
    db: &Database,
    chat: ChatId,
    user: UserId,
    q: HistoryQuery,
) -> StoreResult<(Vec<LogEntry>, bool)> {
    let ascending = q.after_seq.is_some() && q.before_seq.is_none();
    let found = db
        .read(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM chat_log l
                 WHERE l.chat_id = $1 AND l.kind IN ('message', 'system')
                   AND ($3::bigint IS NULL OR l.seq < $3) AND ($4::bigint IS NULL OR l.seq > $4)
                   AND {}
                 ORDER BY l.seq {} LIMIT $5 OFFSET $6",
                visible_to("$2"),
                if ascending { "ASC" } else { "DESC" }
            ),
            &[
                chat.as_uuid(),
                user.as_uuid(),
                &q.before_seq,
                &q.after_seq,
                &(q.limit + 1),
                &q.offset,
            ],
        )
        .await?;
    let mut list = entries(&found)?;
    let limit = usize::try_from(q.limit).unwrap_or(0);
    let has_more = list.len() > limit;
    list.truncate(limit);
    Ok((list, has_more))
}

pub(super) async fn change_message(
    db: &Database,
    change: MessageChange,
) -> StoreResult<MessageChanged> {
    db.write(|tx| {
        let ch = change.clone();
        Box::pin(async move {
            let Some(message) = message_by_id(tx, ch.message).await? else {
                return Ok(MessageChanged::NotFound);
            };
            // Locked before anything is decided, so the checks below hold.
            let Some(mut state) = lock_chat(tx, message.chat_id).await? else {
                return Ok(MessageChanged::NotFound);
            };
            let Some(message) = message_by_id(tx, ch.message).await? else {
                return Ok(MessageChanged::NotFound);
            };
            if visible_message(tx, message.chat_id, ch.actor, ch.message)
                .await?
                .is_none()
            {
                return Ok(MessageChanged::NotFound);
            }
            if message.sender_id != ch.actor {
                return Ok(MessageChanged::NotSender);
            }
            if state.role(ch.actor).is_none() {
                return Ok(MessageChanged::NotFound);
            }
            if message.deleted_at.is_some() {
                return Ok(MessageChanged::TooLate);
            }
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
            let id = ch.message.as_uuid();
            let appended = match ch.edit.clone() {
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
                    execute(
                        tx,
                        "UPDATE chat_log SET content = $2, ciphertext = $3, edited_at = $4,
                           words = $5::text::tsvector
                         WHERE id = $1",
                        &[
                            id,
                            &content,
                            &ciphertext,
                            &ch.now.0,
                            &searchable_words(state.encrypted, &message.kind, content.as_deref()),
                        ],
                    )
                    .await?;
                    append_entry(
                        tx,
                        &mut state,
                        message.chat_id,
                        draft(EntryKind::Edit(ch.message), content, ciphertext),
                        None,
                    )
                    .await?
                }
                None => {
                    // Content gone from the store; the entry stays as a tombstone.
                    execute(
                        tx,
                        "UPDATE chat_log SET content = NULL, ciphertext = NULL, media_id = NULL,
                           words = NULL, deleted_at = $2 WHERE id = $1",
                        &[id, &ch.now.0],
                    )
                    .await?;
                    // Edits carried copies of the content: clear them too.
                    execute(
                        tx,
                        "UPDATE chat_log SET content = NULL, ciphertext = NULL
                         WHERE chat_id = $1 AND kind = 'edit' AND target_id = $2",
                        &[message.chat_id.as_uuid(), id],
                    )
                    .await?;
                    append_entry(
                        tx,
                        &mut state,
                        message.chat_id,
                        draft(EntryKind::Delete(ch.message), None, None),
                        None,
                    )
                    .await?
                }
            };
            let now = message_by_id(tx, ch.message).await?.unwrap_or(message);
            Ok(MessageChanged::Done(Box::new(appended), Box::new(now)))
        })
    })
    .await
}

pub(super) async fn chat_of_message(
    db: &Database,
    message: MessageId,
) -> StoreResult<Option<ChatId>> {
    let found = db
        .read(
            "SELECT chat_id FROM chat_log WHERE id = $1",
            &[message.as_uuid()],
        )
        .await?;
    Ok(found.first().map(|r| ChatId::from_uuid(r.get(0))))
}

pub(super) async fn mark_read(
    db: &Database,
    chat: ChatId,
    user: UserId,
    seq: i64,
) -> StoreResult<(i64, Option<ReceiptChange>)> {
    db.write(|tx| {
        Box::pin(async move {
            let Some(mut state) = lock_chat(tx, chat).await? else {
                return Ok((0, None));
            };
            let before = state.receipts();
            let Some((delivered, read)) = state.advance(user, seq, seq) else {
                return Ok((state.positions(user).map_or(0, |(_, read)| read), None));
            };
            write_positions(tx, chat, user, delivered, read).await?;
            let after = state.receipts();
            let change = (after != before).then(|| ReceiptChange {
                chat_id: chat,
                receipts: after,
                recipients: state.recipients(),
            });
            Ok((read, change))
        })
    })
    .await
}

pub(super) async fn ack(
    db: &Database,
    user: UserId,
    mut positions: Vec<(ChatId, i64)>,
) -> StoreResult<Vec<ReceiptChange>> {
    // Chats are locked in one order, so two acks never wait on each other.
    positions.sort_by_key(|(chat, _)| *chat.as_uuid());
    db.write(|tx| {
        let positions = positions.clone();
        Box::pin(async move {
            let mut changes = Vec::new();
            for (chat, seq) in positions {
                let Some(mut state) = lock_chat(tx, chat).await? else {
                    continue;
                };
                let before = state.receipts();
                let Some((delivered, read)) = state.advance(user, seq, 0) else {
                    continue;
                };
                write_positions(tx, chat, user, delivered, read).await?;
                let after = state.receipts();
                if after != before {
                    changes.push(ReceiptChange {
                        chat_id: chat,
                        receipts: after,
                        recipients: state.recipients(),
                    });
                }
            }
            Ok(changes)
        })
    })
    .await
}

const HEAD_SQL: &str = "SELECT m.chat_id, m.from_seq, c.last_seq
     FROM memberships m JOIN chats c ON c.id = m.chat_id
     WHERE m.user_id = $1 AND m.to_seq IS NULL";

fn head_from_row(r: &tokio_postgres::Row) -> ChatHead {
    ChatHead {
        chat_id: ChatId::from_uuid(r.get("chat_id")),
        last_seq: r.get("last_seq"),
        from_seq: r.get("from_seq"),
    }
}

pub(super) async fn chat_heads(db: &Database, user: UserId) -> StoreResult<Vec<ChatHead>> {
    let found = db.read(HEAD_SQL, &[user.as_uuid()]).await?;
    Ok(found.iter().map(head_from_row).collect())
}

pub(super) async fn chat_head(
    db: &Database,
    chat: ChatId,
    user: UserId,
) -> StoreResult<Option<ChatHead>> {
    let found = db
        .read(
            &format!("{HEAD_SQL} AND m.chat_id = $2"),
            &[user.as_uuid(), chat.as_uuid()],
        )
        .await?;
    Ok(found.first().map(head_from_row))
}

pub(super) async fn messages_sent_by(
    db: &Database,
    user: UserId,
    limit: i64,
) -> StoreResult<Vec<LogEntry>> {
    let found = db
        .read(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM chat_log l
                 WHERE l.sender_id = $1 AND l.kind = 'message' AND l.deleted_at IS NULL AND {}
                 ORDER BY l.chat_id, l.seq LIMIT $2",
                visible_to("$1")
            ),
            &[user.as_uuid(), &limit],
        )
        .await?;
    entries(&found)
}

pub(super) async fn events_after(
    db: &Database,
    chat: ChatId,
    user: UserId,
    after: i64,
    limit: i64,
) -> StoreResult<Vec<LogEvent>> {
    let found = db
        .read(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM chat_log l
                 WHERE l.chat_id = $1 AND l.seq > $3 AND {}
                 ORDER BY l.seq LIMIT $4",
                visible_to("$2")
            ),
            &[chat.as_uuid(), user.as_uuid(), &after, &limit],
        )
        .await?;
    let mut out = Vec::with_capacity(found.len());
    for row in &found {
        let entry = entry_from_row(row)?;
        let seq = entry.seq;
        let body = match entry.kind {
            EntryKind::Edit(target) | EntryKind::Delete(target) => {
                let current = db
                    .read(
                        &format!(
                            "SELECT {ENTRY_COLUMNS} FROM chat_log l
                             WHERE l.id = $1 AND l.kind = 'message'
                               AND l.msg_type IS DISTINCT FROM 'commit'"
                        ),
                        &[target.as_uuid()],
                    )
                    .await?;
                let Some(message) = current.first().map(entry_from_row).transpose()? else {
                    continue;
                };
                if matches!(entry.kind, EntryKind::Edit(_)) {
                    EventBody::Edited(message)
                } else {
                    EventBody::Deleted(message)
                }
            }
            _ => EventBody::Entry(entry),
        };
        out.push(LogEvent { seq, body });
    }
    Ok(out)
}

impl Postgres {
    /// Where a new chat goes, with the id it gets there: a direct chat to
    /// its pair's database, with an id that lands there too
    /// (`partitions`); any other to its id's database.
    pub(super) fn home_of(&self, mut new: NewChat) -> (&Database, NewChat) {
        if let (ChatKind::Direct, [other]) = (new.kind, new.others.as_slice()) {
            let key = direct_key(new.creator, *other);
            let (db, id) = self.direct_chat_home(*new.id.as_uuid(), &key);
            new.id = ChatId::from_uuid(id);
            return (db, new);
        }
        (self.chat_db(new.id), new)
    }

    /// The chat a message belongs to, and that chat's database.
    pub(super) async fn find_message(
        &self,
        message: MessageId,
    ) -> StoreResult<Option<(ChatId, &Database)>> {
        for db in self.chat_dbs() {
            if let Some(chat) = chat_of_message(db, message).await? {
                return Ok(Some((chat, db)));
            }
        }
        Ok(None)
    }
}

#[async_trait::async_trait]
impl crate::store::ChatLog for Postgres {
    async fn create_chat(&self, chat: NewChat) -> StoreResult<ChatCreated> {
        let (db, chat) = self.home_of(chat);
        create_chat(self.accounts(), db, chat).await
    }

    async fn chat_access(&self, chat: ChatId, user: UserId) -> StoreResult<Option<ChatAccess>> {
        chat_access(self.chat_db(chat), chat, user).await
    }

    async fn members(&self, chat: ChatId) -> StoreResult<Vec<Member>> {
        members(self.chat_db(chat), chat).await
    }

    async fn receipt_state(&self, chat: ChatId) -> StoreResult<ReceiptState> {
        receipt_state(self.chat_db(chat), chat).await
    }

    async fn chats_of(&self, user: UserId) -> StoreResult<Vec<ChatOverview>> {
        let mut out = Vec::new();
        for db in self.chat_dbs() {
            out.extend(chats_of(self.accounts(), db, user).await?);
        }
        // Each database's part is in this order already.
        out.sort_by(|a, b| {
            b.chat
                .last_activity_at
                .cmp(&a.chat.last_activity_at)
                .then_with(|| a.chat.id.as_uuid().cmp(b.chat.id.as_uuid()))
        });
        Ok(out)
    }

    async fn post(&self, message: NewMessage) -> StoreResult<Posted> {
        let db = self.chat_db(message.chat_id);
        post(self.accounts(), db, message).await
    }

    async fn change_chat(
        &self,
        chat: ChatId,
        actor: UserId,
        change: ChatChange,
        max_members: usize,
        now: Timestamp,
    ) -> StoreResult<ChatChanged> {
        let db = self.chat_db(chat);
        change_chat(self.accounts(), db, chat, actor, change, max_members, now).await
    }

    async fn history(
        &self,
        chat: ChatId,
        user: UserId,
        query: HistoryQuery,
    ) -> StoreResult<(Vec<LogEntry>, bool)> {
        history(self.chat_db(chat), chat, user, query).await
    }

    async fn change_message(&self, change: MessageChange) -> StoreResult<MessageChanged> {
        let db = match self.find_message(change.message).await? {
            Some((_, db)) => db,
            // Not in any chat: the answer is the same from every database.
            None => self.accounts(),
        };
        change_message(db, change).await
    }

    async fn chat_of_message(&self, message: MessageId) -> StoreResult<Option<ChatId>> {
        Ok(self.find_message(message).await?.map(|(chat, _)| chat))
    }

    async fn mark_read(
        &self,
        chat: ChatId,
        user: UserId,
        seq: i64,
        _now: Timestamp,
    ) -> StoreResult<(i64, Option<ReceiptChange>)> {
        mark_read(self.chat_db(chat), chat, user, seq).await
    }

    async fn ack(
        &self,
        user: UserId,
        positions: Vec<(ChatId, i64)>,
        _now: Timestamp,
    ) -> StoreResult<Vec<ReceiptChange>> {
        let mut changes = Vec::new();
        for db in self.chat_dbs() {
            let here: Vec<(ChatId, i64)> = positions
                .iter()
                .filter(|(chat, _)| self.chat_db(*chat).is(db))
                .copied()
                .collect();
            if !here.is_empty() {
                changes.extend(ack(db, user, here).await?);
            }
        }
        changes.sort_by_key(|c| *c.chat_id.as_uuid());
        Ok(changes)
    }

    async fn chat_heads(&self, user: UserId) -> StoreResult<Vec<ChatHead>> {
        let mut out = Vec::new();
        for db in self.chat_dbs() {
            out.extend(chat_heads(db, user).await?);
        }
        Ok(out)
    }

    async fn chat_head(&self, chat: ChatId, user: UserId) -> StoreResult<Option<ChatHead>> {
        chat_head(self.chat_db(chat), chat, user).await
    }

    async fn messages_sent_by(&self, user: UserId, limit: i64) -> StoreResult<Vec<LogEntry>> {
        let mut out = Vec::new();
        for db in self.chat_dbs() {
            out.extend(messages_sent_by(db, user, limit).await?);
        }
        out.sort_by(|a, b| (a.chat_id.as_uuid(), a.seq).cmp(&(b.chat_id.as_uuid(), b.seq)));
        out.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(out)
    }

    async fn events_after(
        &self,
        chat: ChatId,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<LogEvent>> {
        events_after(self.chat_db(chat), chat, user, after, limit).await
    }
}
