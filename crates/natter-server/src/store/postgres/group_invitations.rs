//! [`GroupInvitations`] on PostgreSQL: adds to groups that respect the
//! added users' settings, and the invitations those adds become.
//!
//! Invitations live beside their group, in its chat database. Each
//! operation is one transaction there holding the group's row lock (like
//! every change of the chat) and an advisory lock per invited user, taken
//! in order, so the per-group and per-user invitation limits hold across
//! nodes. A user's invitations in the other chat databases are counted
//! just before (so two invitations at the same instant in groups of two
//! databases could both take a user's last place). Who is added and who
//! is invited is decided by [`rules::may_add_to_group`], the call the
//! embedded engine makes, on the users' settings and contacts read from
//! the accounts database.

use async_trait::async_trait;
use natter_proto::chats::ChatKind;
use natter_proto::{ChatId, InvitationId, UserId};
use uuid::Uuid;

use super::chats::{Tx, change_chat_in, create_chat_in, lock_chat, missing_users};
use super::{Database, Postgres, execute, rows};
use crate::clock::Timestamp;
use crate::store::columns::permission_from_sql;
use crate::store::rules;
use crate::store::{
    AddOutcome, ChatChange, ChatChanged, ChatCreated, GroupAdded, GroupCreated, GroupInvitations,
    InvitationAccepted, InvitationRecord, InvitationRules, NewChat, StoreError, StoreResult,
};

const INVITATION_SELECT: &str = "SELECT i.id, i.chat_id, c.name AS chat_name, i.user_id,
       i.inviter_id, i.created_at, i.expires_at
     FROM group_invitations i JOIN chats c ON c.id = i.chat_id";

fn invitation_from_row(row: &tokio_postgres::Row) -> InvitationRecord {
    InvitationRecord {
        id: InvitationId::from_uuid(row.get("id")),
        chat_id: ChatId::from_uuid(row.get("chat_id")),
        chat_name: row.get("chat_name"),
        user_id: UserId::from_uuid(row.get("user_id")),
        inviter_id: UserId::from_uuid(row.get("inviter_id")),
        // Filled from the accounts database (`Postgres::name_inviters`).
        inviter_name: String::new(),
        created_at: Timestamp(row.get("created_at")),
        expires_at: Timestamp(row.get("expires_at")),
    }
}

async fn count(tx: &Tx<'_>, sql: &str, id: &Uuid, now: Timestamp) -> StoreResult<usize> {
    let n = rows(tx, sql, &[id, &now.0]).await?;
    Ok(n.first().map_or(0, |r| {
        usize::try_from(r.get::<_, i64>(0)).unwrap_or(usize::MAX)
    }))
}

/// Splits the people of an add into those `adder` may add and those to
/// invite: each user's setting, and whether they have `adder` as a contact.
async fn split(
    accounts: &Database,
    adder: UserId,
    users: &[UserId],
) -> StoreResult<(Vec<UserId>, Vec<UserId>)> {
    let (mut added, mut invited) = (Vec::new(), Vec::new());
    for user in users {
        let facts = accounts
            .read(
                "SELECT u.group_add_permission,
                    EXISTS (SELECT 1 FROM contacts c WHERE c.owner_id = u.id AND c.contact_id = $2)
             FROM users u WHERE u.id = $1",
                &[user.as_uuid(), adder.as_uuid()],
            )
            .await?;
        let may = facts
            .first()
            .is_some_and(|r| rules::may_add_to_group(permission_from_sql(r.get(0)), r.get(1)));
        if may {
            added.push(*user);
        } else {
            invited.push(*user);
        }
    }
    Ok((added, invited))
}

/// The users to invite now (those without a pending invitation to the
/// chat), or `None` when a limit refuses. Takes an advisory lock per user,
/// in order, so two adds on two nodes count each user's invitations in
/// turn; `elsewhere` are the users' invitations in the other databases.
async fn plan(
    tx: &Tx<'_>,
    chat: ChatId,
    users: &[UserId],
    limits: InvitationRules,
    now: Timestamp,
    elsewhere: &std::collections::HashMap<UserId, usize>,
) -> StoreResult<Option<Vec<UserId>>> {
    let mut keys: Vec<i64> = users.iter().map(|u| user_lock(*u)).collect();
    keys.sort_unstable();
    keys.dedup();
    rows(
        tx,
        "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k",
        &[&keys],
    )
    .await?;
    let mut new = Vec::new();
    for user in users {
        let pending = rows(
            tx,
            "SELECT 1 FROM group_invitations
             WHERE chat_id = $1 AND user_id = $2 AND expires_at > $3",
            &[chat.as_uuid(), user.as_uuid(), &now.0],
        )
        .await?;
        if !pending.is_empty() {
            continue;
        }
        let held = count(
            tx,
            "SELECT count(*) FROM group_invitations WHERE user_id = $1 AND expires_at > $2",
            user.as_uuid(),
            now,
        )
        .await?
            + elsewhere.get(user).copied().unwrap_or(0);
        if !rules::has_room(held, 1, limits.max_per_user) {
            return Ok(None);
        }
        new.push(*user);
    }
    let waiting = count(
        tx,
        "SELECT count(*) FROM group_invitations WHERE chat_id = $1 AND expires_at > $2",
        chat.as_uuid(),
        now,
    )
    .await?;
    if !rules::has_room(waiting, new.len(), limits.max_per_chat) {
        return Ok(None);
    }
    Ok(Some(new))
}

/// The advisory lock of a user's invitations (an arbitrary mix of the id's
/// bits; two users sharing one only wait on each other).
fn user_lock(user: UserId) -> i64 {
    let bytes = user.as_uuid().as_bytes();
    let mut key = [0; 8];
    for (i, b) in bytes.iter().enumerate() {
        key[i % 8] ^= b;
    }
    i64::from_be_bytes(key) ^ 0x6e61_7474_6572_6900
}

/// Writes the planned invitations (replacing expired ones of the same
/// user and chat) and gives them as their users will see them.
async fn write(
    tx: &Tx<'_>,
    chat: ChatId,
    inviter: UserId,
    users: Vec<UserId>,
    limits: InvitationRules,
    now: Timestamp,
) -> StoreResult<Vec<InvitationRecord>> {
    let mut fresh = Vec::with_capacity(users.len());
    for user in users {
        let id = InvitationId::new();
        execute(
            tx,
            "INSERT INTO group_invitations (id, chat_id, user_id, inviter_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (chat_id, user_id) DO UPDATE SET id = excluded.id,
               inviter_id = excluded.inviter_id, created_at = excluded.created_at,
               expires_at = excluded.expires_at",
            &[
                id.as_uuid(),
                chat.as_uuid(),
                user.as_uuid(),
                inviter.as_uuid(),
                &now.0,
                &now.0.saturating_add(limits.ttl_ms),
            ],
        )
        .await?;
        let record = rows(
            tx,
            &format!("{INVITATION_SELECT} WHERE i.id = $1"),
            &[id.as_uuid()],
        )
        .await?;
        fresh.push(
            record
                .first()
                .map(invitation_from_row)
                .ok_or_else(|| StoreError::internal("a new invitation vanished"))?,
        );
    }
    Ok(fresh)
}

impl Postgres {
    /// The pending invitations each of `users` holds in the chat databases
    /// other than `db`.
    async fn held_elsewhere(
        &self,
        db: &Database,
        users: &[UserId],
        now: Timestamp,
    ) -> StoreResult<std::collections::HashMap<UserId, usize>> {
        let ids: Vec<Uuid> = users.iter().map(|u| *u.as_uuid()).collect();
        let mut held = std::collections::HashMap::new();
        for other in self.chat_dbs().iter().filter(|other| !other.is(db)) {
            let found = other
                .read(
                    "SELECT user_id, count(*) FROM group_invitations
                     WHERE user_id = ANY($1) AND expires_at > $2 GROUP BY user_id",
                    &[&ids, &now.0],
                )
                .await?;
            for row in &found {
                let n = usize::try_from(row.get::<_, i64>(1)).unwrap_or(usize::MAX);
                *held.entry(UserId::from_uuid(row.get(0))).or_insert(0) += n;
            }
        }
        Ok(held)
    }

    /// Fills in the inviters' names, from the accounts database.
    async fn name_inviters(&self, records: &mut [InvitationRecord]) -> StoreResult<()> {
        let ids: Vec<Uuid> = records.iter().map(|r| *r.inviter_id.as_uuid()).collect();
        let found = self
            .accounts()
            .read("SELECT id, name FROM users WHERE id = ANY($1)", &[&ids])
            .await?;
        let names: std::collections::HashMap<Uuid, String> =
            found.iter().map(|r| (r.get(0), r.get(1))).collect();
        for record in records {
            if let Some(name) = names.get(record.inviter_id.as_uuid()) {
                record.inviter_name.clone_from(name);
            }
        }
        Ok(())
    }

    /// The chat database holding a pending invitation of `user`.
    async fn invitation_home(
        &self,
        id: InvitationId,
        user: UserId,
        now: Timestamp,
    ) -> StoreResult<Option<&Database>> {
        for db in self.chat_dbs() {
            let found = db
                .read(
                    "SELECT 1 FROM group_invitations
                     WHERE id = $1 AND user_id = $2 AND expires_at > $3",
                    &[id.as_uuid(), user.as_uuid(), &now.0],
                )
                .await?;
            if !found.is_empty() {
                return Ok(Some(db));
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl GroupInvitations for Postgres {
    async fn create_group(
        &self,
        chat: NewChat,
        limits: InvitationRules,
    ) -> StoreResult<GroupCreated> {
        let missing = missing_users(self.accounts(), &chat.others).await?;
        if let Some(unknown) = chat.others.iter().find(|u| missing.contains(u)) {
            return Ok(GroupCreated::UnknownUser(*unknown));
        }
        let (added, invited) = split(self.accounts(), chat.creator, &chat.others).await?;
        let (db, chat) = self.home_of(chat);
        let elsewhere = self.held_elsewhere(db, &invited, chat.now).await?;
        let mut created = db
            .write(|tx| {
                let mut new = chat.clone();
                let (added, invited, elsewhere) =
                    (added.clone(), invited.clone(), elsewhere.clone());
                Box::pin(async move {
                    let Some(plan) =
                        plan(tx, new.id, &invited, limits, new.now, &elsewhere).await?
                    else {
                        return Ok(GroupCreated::InvitationLimit);
                    };
                    new.others.clone_from(&added);
                    let (creator, now) = (new.creator, new.now);
                    match create_chat_in(tx, new).await? {
                        ChatCreated::Created(chat, appended) => {
                            let fresh = write(tx, chat.id, creator, plan, limits, now).await?;
                            let outcome = AddOutcome {
                                added,
                                invited,
                                fresh,
                            };
                            Ok(GroupCreated::Created(chat, appended, outcome))
                        }
                        ChatCreated::UnknownUser(user) => Ok(GroupCreated::UnknownUser(user)),
                        // Groups have no pair key; nothing to find.
                        ChatCreated::Existing(_) => {
                            Err(StoreError::internal("a group was found by a pair key"))
                        }
                    }
                })
            })
            .await?;
        if let GroupCreated::Created(_, _, outcome) = &mut created {
            self.name_inviters(&mut outcome.fresh).await?;
        }
        Ok(created)
    }

    async fn add_to_group(
        &self,
        chat: ChatId,
        actor: UserId,
        users: Vec<UserId>,
        max_members: usize,
        limits: InvitationRules,
        now: Timestamp,
    ) -> StoreResult<GroupAdded> {
        let mut unique = Vec::with_capacity(users.len());
        for user in users {
            if !unique.contains(&user) {
                unique.push(user);
            }
        }
        let missing = missing_users(self.accounts(), &unique).await?;
        let known: Vec<UserId> = unique
            .iter()
            .filter(|u| !missing.contains(u))
            .copied()
            .collect();
        let (may_add, to_invite) = split(self.accounts(), actor, &known).await?;
        let db = self.chat_db(chat);
        let elsewhere = self.held_elsewhere(db, &to_invite, now).await?;
        let mut done = db
            .write(|tx| {
                let (unique, missing) = (unique.clone(), missing.clone());
                let (may_add, elsewhere) = (may_add.clone(), elsewhere.clone());
                Box::pin(async move {
                    let Some(state) = lock_chat(tx, chat).await? else {
                        return Ok(GroupAdded::Refused(ChatChanged::NotMember));
                    };
                    let Some(actor_role) = state.role(actor) else {
                        return Ok(GroupAdded::Refused(ChatChanged::NotMember));
                    };
                    let change = ChatChange::Add(unique.clone());
                    if let Some(refusal) =
                        rules::refuse_change(state.kind, actor, actor_role, &change)
                    {
                        return Ok(GroupAdded::Refused(refusal));
                    }
                    let mut newcomers = Vec::new();
                    for user in &unique {
                        if missing.contains(user) {
                            return Ok(GroupAdded::Refused(ChatChanged::UnknownUser(*user)));
                        }
                        if state.role(*user).is_none() {
                            newcomers.push(*user);
                        }
                    }
                    let (added, invited): (Vec<UserId>, Vec<UserId>) =
                        newcomers.iter().partition(|u| may_add.contains(u));
                    let Some(plan) = plan(tx, chat, &invited, limits, now, &elsewhere).await?
                    else {
                        return Ok(GroupAdded::InvitationLimit);
                    };
                    let appended = if added.is_empty() {
                        Vec::new()
                    } else {
                        let change = ChatChange::Add(added.clone());
                        match change_chat_in(tx, chat, actor, change, &[], max_members, now).await?
                        {
                            ChatChanged::Done(appended) => appended,
                            refusal => return Ok(GroupAdded::Refused(refusal)),
                        }
                    };
                    let fresh = write(tx, chat, actor, plan, limits, now).await?;
                    Ok(GroupAdded::Done(
                        appended,
                        AddOutcome {
                            added,
                            invited,
                            fresh,
                        },
                    ))
                })
            })
            .await?;
        if let GroupAdded::Done(_, outcome) = &mut done {
            self.name_inviters(&mut outcome.fresh).await?;
        }
        Ok(done)
    }

    async fn invitations(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> StoreResult<Vec<InvitationRecord>> {
        let mut found = Vec::new();
        for db in self.chat_dbs() {
            let here = db
                .read(
                    &format!("{INVITATION_SELECT} WHERE i.user_id = $1 AND i.expires_at > $2"),
                    &[user.as_uuid(), &now.0],
                )
                .await?;
            found.extend(here.iter().map(invitation_from_row));
        }
        found.sort_by(|a, b| (b.created_at, b.id.as_uuid()).cmp(&(a.created_at, a.id.as_uuid())));
        self.name_inviters(&mut found).await?;
        Ok(found)
    }

    async fn accept_invitation(
        &self,
        id: InvitationId,
        user: UserId,
        max_members: usize,
        now: Timestamp,
    ) -> StoreResult<InvitationAccepted> {
        let Some(db) = self.invitation_home(id, user, now).await? else {
            return Ok(InvitationAccepted::NotFound);
        };
        db.write(|tx| {
            Box::pin(async move {
                let found = rows(
                    tx,
                    "SELECT chat_id, inviter_id FROM group_invitations
                     WHERE id = $1 AND user_id = $2 AND expires_at > $3 FOR UPDATE",
                    &[id.as_uuid(), user.as_uuid(), &now.0],
                )
                .await?;
                let Some(row) = found.first() else {
                    return Ok(InvitationAccepted::NotFound);
                };
                let chat = ChatId::from_uuid(row.get(0));
                let inviter = UserId::from_uuid(row.get(1));
                // The add, as the inviter would make it now: the rules of a
                // chat change are checked again.
                let kind = lock_chat(tx, chat).await?.map(|state| state.kind);
                let outcome = match kind {
                    None | Some(ChatKind::Direct) => InvitationAccepted::ChatGone,
                    Some(ChatKind::Group) => {
                        let change = ChatChange::Add(vec![user]);
                        match change_chat_in(tx, chat, inviter, change, &[], max_members, now)
                            .await?
                        {
                            ChatChanged::Done(appended) => {
                                InvitationAccepted::Joined(chat, appended)
                            }
                            ChatChanged::GroupFull => return Ok(InvitationAccepted::GroupFull),
                            ChatChanged::UnknownUser(_) => InvitationAccepted::NotFound,
                            ChatChanged::NotMember
                            | ChatChanged::Forbidden
                            | ChatChanged::LastAdmin
                            | ChatChanged::NotAGroup => InvitationAccepted::NoLongerValid,
                        }
                    }
                };
                execute(
                    tx,
                    "DELETE FROM group_invitations WHERE id = $1",
                    &[id.as_uuid()],
                )
                .await?;
                Ok(outcome)
            })
        })
        .await
    }

    async fn decline_invitation(
        &self,
        id: InvitationId,
        user: UserId,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let Some(db) = self.invitation_home(id, user, now).await? else {
            return Ok(false);
        };
        db.execute_one(
            "DELETE FROM group_invitations WHERE id = $1 AND user_id = $2 AND expires_at > $3",
            &[id.as_uuid(), user.as_uuid(), &now.0],
        )
        .await
        .map(|n| n > 0)
    }

    async fn delete_expired_invitations(&self, now: Timestamp) -> StoreResult<u64> {
        let mut deleted = 0;
        for db in self.chat_dbs() {
            deleted += db
                .execute_one(
                    "DELETE FROM group_invitations WHERE expires_at <= $1",
                    &[&now.0],
                )
                .await?;
        }
        Ok(deleted)
    }
}
