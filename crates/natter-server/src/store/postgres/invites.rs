//! [`Invites`] on PostgreSQL, in the accounts database. A registration
//! locks its invite's row and decides with [`InviteRecord::usable`], the
//! rule every engine calls, so concurrent registrations on several nodes
//! never spend one use twice.

use async_trait::async_trait;
use uuid::Uuid;

use super::accounts::{insert_device, insert_user, user_by_id};
use super::{Postgres, execute, rows};
use crate::clock::Timestamp;
use crate::store::admin::{
    InviteRecord, InviteRegistration, Invites, NewInvite, RegisteredByInvite,
};
use crate::store::{StoreError, StoreResult};

const INVITE_COLUMNS: &str = "id, max_uses, uses, expires_at, created_at, revoked_at";

fn invite_from_row(row: &tokio_postgres::Row) -> InviteRecord {
    InviteRecord {
        id: row.get("id"),
        max_uses: u32::try_from(row.get::<_, i32>("max_uses")).unwrap_or(0),
        uses: u32::try_from(row.get::<_, i32>("uses")).unwrap_or(u32::MAX),
        expires_at: row.get::<_, Option<i64>>("expires_at").map(Timestamp),
        created_at: Timestamp(row.get("created_at")),
        revoked_at: row.get::<_, Option<i64>>("revoked_at").map(Timestamp),
    }
}

#[async_trait]
impl Invites for Postgres {
    async fn create_invite(&self, invite: NewInvite) -> StoreResult<()> {
        let max_uses = i32::try_from(invite.max_uses)
            .map_err(|_| StoreError::internal("an invite's use count does not fit"))?;
        self.accounts()
            .write(|tx| {
                let i = invite.clone();
                Box::pin(async move {
                    execute(
                        tx,
                        "INSERT INTO invites (id, token_hash, max_uses, expires_at, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &i.id,
                            &i.token_hash.0.as_slice(),
                            &max_uses,
                            &i.expires_at.map(|t| t.0),
                            &i.created_at.0,
                        ],
                    )
                    .await
                    .map(drop)
                })
            })
            .await
    }

    async fn invites(&self) -> StoreResult<Vec<InviteRecord>> {
        let found = self
            .accounts()
            .read(
                &format!("SELECT {INVITE_COLUMNS} FROM invites ORDER BY created_at DESC, id DESC"),
                &[],
            )
            .await?;
        Ok(found.iter().map(invite_from_row).collect())
    }

    async fn revoke_invite(&self, id: Uuid, now: Timestamp) -> StoreResult<bool> {
        self.accounts()
            .execute_one(
                "UPDATE invites SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &now.0],
            )
            .await
            .map(|n| n == 1)
    }

    async fn register_by_invite(
        &self,
        registration: InviteRegistration,
    ) -> StoreResult<RegisteredByInvite> {
        self.accounts()
            .write(|tx| {
                let r = registration.clone();
                Box::pin(async move {
                    let invite = rows(
                        tx,
                        &format!(
                            "SELECT {INVITE_COLUMNS} FROM invites WHERE token_hash = $1 FOR UPDATE"
                        ),
                        &[&r.invite.0.as_slice()],
                    )
                    .await?;
                    let Some(invite) = invite.first().map(invite_from_row) else {
                        return Ok(RegisteredByInvite::InviteInvalid);
                    };
                    if !invite.usable(r.now) {
                        return Ok(RegisteredByInvite::InviteInvalid);
                    }
                    if !insert_user(tx, &r.user).await? {
                        return Ok(RegisteredByInvite::PhoneTaken);
                    }
                    execute(
                        tx,
                        "UPDATE invites SET uses = uses + 1 WHERE id = $1",
                        &[&invite.id],
                    )
                    .await?;
                    insert_device(tx, r.user.id, &r.device).await?;
                    user_by_id(tx, r.user.id)
                        .await?
                        .map(RegisteredByInvite::Created)
                        .ok_or_else(|| StoreError::internal("the new user vanished"))
                })
            })
            .await
    }
}
