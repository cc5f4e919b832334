//! Invitations to groups on SQLite: adds that respect the added users'
//! `group_add_permission`, in the writer's transaction. Who is added and
//! who is invited is decided in the same transaction as the add, and the
//! add itself is [`chats::change_chat`] / [`chats::create_chat`], so every
//! rule of a chat change (admins only, group size, the join entry) holds.
//! An invited user is no participant: they have no membership period, so
//! they see nothing of the chat log and hear of none of its entries.

use natter_proto::chats::ChatKind;
use natter_proto::users::GroupAddPermission;
use natter_proto::{ChatId, InvitationId, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::cache::ChatCache;
use super::{chats, uuid_of};
use crate::clock::Timestamp;
use crate::store::columns::permission_from_sql;
use crate::store::rules;
use crate::store::{
    AddOutcome, ChatChange, ChatChanged, ChatCreated, GroupAdded, GroupCreated, InvitationAccepted,
    InvitationRecord, InvitationRules, NewChat,
};

type Result<T> = rusqlite::Result<T>;

/// Whether `adder` may add `user` to a group directly: `user`'s setting,
/// and whether `user` has `adder` in their contacts.
fn may_add(c: &Connection, adder: UserId, user: UserId) -> Result<bool> {
    let permission: Option<String> = c
        .prepare_cached("SELECT group_add_permission FROM users WHERE id = ?1")?
        .query_row([user.as_uuid().as_bytes()], |r| r.get(0))
        .optional()?;
    let permission = permission
        .as_deref()
        .map_or(GroupAddPermission::Nobody, permission_from_sql);
    let contact = c
        .prepare_cached("SELECT 1 FROM contacts WHERE owner_id = ?1 AND contact_id = ?2")?
        .exists(params![
            user.as_uuid().as_bytes(),
            adder.as_uuid().as_bytes()
        ])?;
    Ok(rules::may_add_to_group(permission, contact))
}

const INVITATION_SELECT: &str = "SELECT i.id, i.chat_id, c.name AS chat_name, i.user_id,
       i.inviter_id, u.name AS inviter_name, i.created_at, i.expires_at
     FROM group_invitations i JOIN chats c ON c.id = i.chat_id
     JOIN users u ON u.id = i.inviter_id";

fn invitation_from_row(row: &Row<'_>) -> Result<InvitationRecord> {
    Ok(InvitationRecord {
        id: InvitationId::from_uuid(uuid_of(row, "id")?),
        chat_id: ChatId::from_uuid(uuid_of(row, "chat_id")?),
        chat_name: row.get("chat_name")?,
        user_id: UserId::from_uuid(uuid_of(row, "user_id")?),
        inviter_id: UserId::from_uuid(uuid_of(row, "inviter_id")?),
        inviter_name: row.get("inviter_name")?,
        created_at: Timestamp(row.get("created_at")?),
        expires_at: Timestamp(row.get("expires_at")?),
    })
}

fn count(c: &Connection, sql: &str, id: &[u8], now: Timestamp) -> Result<usize> {
    let n: i64 = c
        .prepare_cached(sql)?
        .query_row(params![id, now.0], |r| r.get(0))?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// The invitations an add needs: users with one pending already, and users
/// to invite now. Reads only, so a refusal leaves nothing written.
struct Plan {
    /// Users to invite now.
    new: Vec<UserId>,
}

/// Checks the invitation limits for inviting `users` (not members, whose
/// setting refused the add) to `chat`; `None` when a limit refuses.
fn plan(
    c: &Connection,
    chat: ChatId,
    users: &[UserId],
    rules: InvitationRules,
    now: Timestamp,
) -> Result<Option<Plan>> {
    let mut new = Vec::new();
    for user in users {
        let pending = c
            .prepare_cached(
                "SELECT 1 FROM group_invitations
                 WHERE chat_id = ?1 AND user_id = ?2 AND expires_at > ?3",
            )?
            .exists(params![
                chat.as_uuid().as_bytes(),
                user.as_uuid().as_bytes(),
                now.0
            ])?;
        if pending {
            continue;
        }
        let held = count(
            c,
            "SELECT count(*) FROM group_invitations WHERE user_id = ?1 AND expires_at > ?2",
            user.as_uuid().as_bytes(),
            now,
        )?;
        if !rules::has_room(held, 1, rules.max_per_user) {
            return Ok(None);
        }
        new.push(*user);
    }
    let waiting = count(
        c,
        "SELECT count(*) FROM group_invitations WHERE chat_id = ?1 AND expires_at > ?2",
        chat.as_uuid().as_bytes(),
        now,
    )?;
    if !rules::has_room(waiting, new.len(), rules.max_per_chat) {
        return Ok(None);
    }
    Ok(Some(Plan { new }))
}

/// Writes the planned invitations (replacing expired ones of the same
/// user and chat) and gives them as their users will see them.
fn write(
    c: &Connection,
    chat: ChatId,
    inviter: UserId,
    plan: Plan,
    rules: InvitationRules,
    now: Timestamp,
) -> Result<Vec<InvitationRecord>> {
    let mut fresh = Vec::with_capacity(plan.new.len());
    for user in plan.new {
        let id = InvitationId::new();
        c.prepare_cached(
            "INSERT INTO group_invitations (id, chat_id, user_id, inviter_id, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (chat_id, user_id) DO UPDATE SET id = excluded.id,
               inviter_id = excluded.inviter_id, created_at = excluded.created_at,
               expires_at = excluded.expires_at",
        )?
        .execute(params![
            id.as_uuid().as_bytes(),
            chat.as_uuid().as_bytes(),
            user.as_uuid().as_bytes(),
            inviter.as_uuid().as_bytes(),
            now.0,
            now.0.saturating_add(rules.ttl_ms),
        ])?;
        let record = c
            .prepare_cached(&format!("{INVITATION_SELECT} WHERE i.id = ?1"))?
            .query_row([id.as_uuid().as_bytes()], invitation_from_row)?;
        fresh.push(record);
    }
    Ok(fresh)
}

/// Splits the people of an add into those `adder` may add and those to invite.
fn split(c: &Connection, adder: UserId, users: &[UserId]) -> Result<(Vec<UserId>, Vec<UserId>)> {
    let (mut added, mut invited) = (Vec::new(), Vec::new());
    for user in users {
        if may_add(c, adder, *user)? {
            added.push(*user);
        } else {
            invited.push(*user);
        }
    }
    Ok((added, invited))
}

pub(super) fn create_group(
    c: &Connection,
    cache: &mut ChatCache,
    mut new: NewChat,
    rules: InvitationRules,
) -> Result<GroupCreated> {
    for user in &new.others {
        if !chats::user_exists(c, *user)? {
            return Ok(GroupCreated::UnknownUser(*user));
        }
    }
    let (added, invited) = split(c, new.creator, &new.others)?;
    let Some(plan) = plan(c, new.id, &invited, rules, new.now)? else {
        return Ok(GroupCreated::InvitationLimit);
    };
    new.others.clone_from(&added);
    let (creator, now) = (new.creator, new.now);
    match chats::create_chat(c, cache, new)? {
        ChatCreated::Created(chat, appended) => {
            let fresh = write(c, chat.id, creator, plan, rules, now)?;
            let outcome = AddOutcome {
                added,
                invited,
                fresh,
            };
            Ok(GroupCreated::Created(chat, appended, outcome))
        }
        ChatCreated::UnknownUser(user) => Ok(GroupCreated::UnknownUser(user)),
        // Groups have no pair key; nothing to find.
        ChatCreated::Existing(_) => Err(rusqlite::Error::QueryReturnedNoRows),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the arguments of a chat change, plus the rules"
)]
pub(super) fn add_to_group(
    c: &Connection,
    cache: &mut ChatCache,
    chat: ChatId,
    actor: UserId,
    users: Vec<UserId>,
    max_members: usize,
    rules: InvitationRules,
    now: Timestamp,
) -> Result<GroupAdded> {
    let mut unique = Vec::with_capacity(users.len());
    for user in users {
        if !unique.contains(&user) {
            unique.push(user);
        }
    }
    let newcomers = {
        let Some(state) = cache.get(c, chat)? else {
            return Ok(GroupAdded::Refused(ChatChanged::NotMember));
        };
        let Some(actor_role) = state.role(actor) else {
            return Ok(GroupAdded::Refused(ChatChanged::NotMember));
        };
        let change = ChatChange::Add(unique.clone());
        if let Some(refusal) = rules::refuse_change(state.kind, actor, actor_role, &change) {
            return Ok(GroupAdded::Refused(refusal));
        }
        let mut newcomers = Vec::new();
        for user in &unique {
            if !chats::user_exists(c, *user)? {
                return Ok(GroupAdded::Refused(ChatChanged::UnknownUser(*user)));
            }
            if state.role(*user).is_none() {
                newcomers.push(*user);
            }
        }
        newcomers
    };
    let (added, invited) = split(c, actor, &newcomers)?;
    let Some(plan) = plan(c, chat, &invited, rules, now)? else {
        return Ok(GroupAdded::InvitationLimit);
    };
    let appended = if added.is_empty() {
        Vec::new()
    } else {
        match chats::change_chat(
            c,
            cache,
            chat,
            actor,
            ChatChange::Add(added.clone()),
            max_members,
            now,
        )? {
            ChatChanged::Done(appended) => appended,
            refusal => return Ok(GroupAdded::Refused(refusal)),
        }
    };
    let fresh = write(c, chat, actor, plan, rules, now)?;
    Ok(GroupAdded::Done(
        appended,
        AddOutcome {
            added,
            invited,
            fresh,
        },
    ))
}

pub(super) fn invitations(
    c: &Connection,
    user: UserId,
    now: Timestamp,
) -> Result<Vec<InvitationRecord>> {
    c.prepare_cached(&format!(
        "{INVITATION_SELECT} WHERE i.user_id = ?1 AND i.expires_at > ?2
         ORDER BY i.created_at DESC, i.id DESC"
    ))?
    .query_map(
        params![user.as_uuid().as_bytes(), now.0],
        invitation_from_row,
    )?
    .collect()
}

fn delete(c: &Connection, id: InvitationId) -> Result<()> {
    c.prepare_cached("DELETE FROM group_invitations WHERE id = ?1")?
        .execute([id.as_uuid().as_bytes()])
        .map(drop)
}

pub(super) fn accept(
    c: &Connection,
    cache: &mut ChatCache,
    id: InvitationId,
    user: UserId,
    max_members: usize,
    now: Timestamp,
) -> Result<InvitationAccepted> {
    let found: Option<(Vec<u8>, Vec<u8>)> = c
        .prepare_cached(
            "SELECT chat_id, inviter_id FROM group_invitations
             WHERE id = ?1 AND user_id = ?2 AND expires_at > ?3",
        )?
        .query_row(
            params![id.as_uuid().as_bytes(), user.as_uuid().as_bytes(), now.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((chat, inviter)) = found else {
        return Ok(InvitationAccepted::NotFound);
    };
    let (Ok(chat), Ok(inviter)) = (
        uuid::Uuid::from_slice(&chat),
        uuid::Uuid::from_slice(&inviter),
    ) else {
        delete(c, id)?;
        return Ok(InvitationAccepted::NotFound);
    };
    let (chat, inviter) = (ChatId::from_uuid(chat), UserId::from_uuid(inviter));
    // The add, as the inviter would make it now: the rules of a chat change
    // are checked again (the inviter still an admin, room in the group).
    let outcome = match cache.get(c, chat)?.map(|state| state.kind) {
        None | Some(ChatKind::Direct) => InvitationAccepted::ChatGone,
        Some(ChatKind::Group) => match chats::change_chat(
            c,
            cache,
            chat,
            inviter,
            ChatChange::Add(vec![user]),
            max_members,
            now,
        )? {
            ChatChanged::Done(appended) => InvitationAccepted::Joined(chat, appended),
            ChatChanged::GroupFull => return Ok(InvitationAccepted::GroupFull),
            ChatChanged::UnknownUser(_) => InvitationAccepted::NotFound,
            ChatChanged::NotMember
            | ChatChanged::Forbidden
            | ChatChanged::LastAdmin
            | ChatChanged::NotAGroup => InvitationAccepted::NoLongerValid,
        },
    };
    delete(c, id)?;
    Ok(outcome)
}

pub(super) fn decline(
    c: &Connection,
    id: InvitationId,
    user: UserId,
    now: Timestamp,
) -> Result<bool> {
    let n = c
        .prepare_cached(
            "DELETE FROM group_invitations WHERE id = ?1 AND user_id = ?2 AND expires_at > ?3",
        )?
        .execute(params![
            id.as_uuid().as_bytes(),
            user.as_uuid().as_bytes(),
            now.0
        ])?;
    Ok(n > 0)
}

pub(super) fn delete_expired(c: &Connection, now: Timestamp) -> Result<u64> {
    let n = c
        .prepare_cached("DELETE FROM group_invitations WHERE expires_at <= ?1")?
        .execute([now.0])?;
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}
