//! What the operator does with `natter admin`: accounts, devices, invites,
//! counts and consistency checks. The same rules as the API (numbers are
//! parsed, names cleaned, secrets hashed); the caller is the operator, so
//! there is no [`Principal`](super::Principal).

use std::time::Duration;

use natter_proto::users::LastSeenVisibility;
use natter_proto::{DeviceId, UserId};
use uuid::Uuid;

use super::accounts::LoginCodeIssued;
use super::{ServiceError, ServiceResult, Services, clean_text};
use crate::blobs::BlobKind;
use crate::clock::Timestamp;
use crate::secret::PlainInvite;
use crate::store::admin::{Deactivated, InviteRecord, NewInvite, StoreStats, UserSummary};
use crate::store::{Device, User};

/// An account made by the operator, with a code to log its first device in.
#[derive(Debug)]
pub struct CreatedUser {
    /// The account.
    pub user: User,
    /// A one-time code for `POST /api/v1/users/login`.
    pub login: LoginCodeIssued,
}

/// A new invite: the token is shown once, the store keeps its hash.
#[derive(Debug)]
pub struct CreatedInvite {
    /// What to give the invitee.
    pub token: PlainInvite,
    /// What is stored.
    pub record: InviteRecord,
}

/// What `check` found about the blobs the database references.
#[derive(Debug, Default)]
pub struct BlobCheck {
    /// Blobs looked for.
    pub checked: u64,
    /// Blobs referenced by a finished upload but missing.
    pub missing: Vec<String>,
}

impl Services {
    /// Creates an account without a device and a login code for it.
    ///
    /// # Errors
    /// Invalid number or name, number taken, store failure.
    pub async fn admin_create_user(&self, phone: &str, name: &str) -> ServiceResult<CreatedUser> {
        let phone = self.parse_phone(phone)?;
        let name = clean_text("name", name, self.inner.config.limits.max_name_chars, false)?;
        let now = Timestamp::now();
        let user = User {
            id: UserId::new(),
            phone,
            name,
            about: String::new(),
            last_seen_visibility: LastSeenVisibility::Everyone,
            group_add_permission: natter_proto::users::GroupAddPermission::Everyone,
            last_seen_at: None,
            profile_pic: None,
            created_at: now,
        };
        if !self.inner.store.create_user(user.clone()).await? {
            return Err(ServiceError::PhoneTaken);
        }
        let login = self.issue_code(&user.phone).await?;
        tracing::info!(user = %user.id, "user created by the operator");
        Ok(CreatedUser { user, login })
    }

    /// A login code for an active account (a lost phone, invite mode).
    ///
    /// # Errors
    /// Unknown or deactivated account, store failure.
    pub async fn admin_login_code(&self, user: UserId) -> ServiceResult<LoginCodeIssued> {
        if self.inner.store.deactivated_at(user).await? != Some(None) {
            return Err(ServiceError::UserNotFound);
        }
        let user = self
            .inner
            .store
            .user(user)
            .await?
            .ok_or(ServiceError::UserNotFound)?;
        self.issue_code(&user.phone).await
    }

    /// Every account, oldest first.
    ///
    /// # Errors
    /// Store failure.
    pub async fn admin_users(&self) -> ServiceResult<Vec<UserSummary>> {
        Ok(self.inner.store.users_summary().await?)
    }

    /// Deactivates an account: every device is logged out (live connections
    /// closed), logins are refused, the number stays taken.
    ///
    /// # Errors
    /// Store failure.
    pub async fn admin_deactivate_user(&self, user: UserId) -> ServiceResult<Deactivated> {
        let outcome = self
            .inner
            .store
            .deactivate_user(user, Timestamp::now())
            .await?;
        if let Deactivated::Done(devices) = &outcome {
            for device in devices {
                self.close_device(user, *device).await;
            }
            tracing::info!(user = %user, devices = devices.len(), "user deactivated by the operator");
        }
        Ok(outcome)
    }

    /// Deletes an account as `DELETE /api/v1/users/me` does (devices,
    /// tokens, memberships, push channels and media go; messages in groups
    /// stay, from "Deleted account").
    ///
    /// # Errors
    /// [`ServiceError::UserNotFound`], [`ServiceError::ConfirmationMismatch`]
    /// when `confirm_phone` is not the account's number, store failure.
    pub async fn admin_delete_user(&self, user: UserId, confirm_phone: &str) -> ServiceResult<()> {
        let found = self
            .inner
            .store
            .user(user)
            .await?
            .ok_or(ServiceError::UserNotFound)?;
        self.confirm_deletion(&found.phone, confirm_phone, "--confirm-phone")?;
        if self.remove_account(user).await? {
            tracing::info!(user = %user, "user deleted by the operator");
            Ok(())
        } else {
            Err(ServiceError::UserNotFound)
        }
    }

    /// An account's devices.
    ///
    /// # Errors
    /// [`ServiceError::UserNotFound`], store failure.
    pub async fn admin_devices(&self, user: UserId) -> ServiceResult<Vec<Device>> {
        if self.inner.store.user(user).await?.is_none() {
            return Err(ServiceError::UserNotFound);
        }
        Ok(self.inner.store.devices(user).await?)
    }

    /// Logs a device out, whoever owns it.
    ///
    /// # Errors
    /// [`ServiceError::DeviceNotFound`], store failure.
    pub async fn admin_revoke_device(&self, device: DeviceId) -> ServiceResult<Device> {
        let found = self
            .inner
            .store
            .device_by_id(device)
            .await?
            .ok_or(ServiceError::DeviceNotFound)?;
        if !self
            .inner
            .store
            .delete_device(found.user_id, device)
            .await?
        {
            return Err(ServiceError::DeviceNotFound);
        }
        self.close_device(found.user_id, device).await;
        tracing::info!(user = %found.user_id, device = %device, "device revoked by the operator");
        Ok(found)
    }

    /// Makes an invite for `uses` accounts, valid for `expires_in` (or forever).
    ///
    /// # Errors
    /// `uses` of zero, store failure.
    pub async fn admin_create_invite(
        &self,
        uses: u32,
        expires_in: Option<Duration>,
    ) -> ServiceResult<CreatedInvite> {
        if uses == 0 {
            return Err(ServiceError::Validation(
                "an invite needs at least one use".to_owned(),
            ));
        }
        let token = PlainInvite::generate();
        let now = Timestamp::now();
        let invite = NewInvite {
            id: Uuid::now_v7(),
            token_hash: token.hash(),
            max_uses: uses,
            expires_at: expires_in.map(|d| now.plus(d)),
            created_at: now,
        };
        let record = InviteRecord {
            id: invite.id,
            max_uses: uses,
            uses: 0,
            expires_at: invite.expires_at,
            created_at: now,
            revoked_at: None,
        };
        self.inner.store.create_invite(invite).await?;
        tracing::info!(invite = %record.id, uses, "invite created by the operator");
        Ok(CreatedInvite { token, record })
    }

    /// Every invite, newest first.
    ///
    /// # Errors
    /// Store failure.
    pub async fn admin_invites(&self) -> ServiceResult<Vec<InviteRecord>> {
        Ok(self.inner.store.invites().await?)
    }

    /// Revokes an invite; `false` if there is no such unrevoked invite.
    ///
    /// # Errors
    /// Store failure.
    pub async fn admin_revoke_invite(&self, id: Uuid) -> ServiceResult<bool> {
        Ok(self.inner.store.revoke_invite(id, Timestamp::now()).await?)
    }

    /// Counts.
    ///
    /// # Errors
    /// Store failure.
    pub async fn admin_stats(&self) -> ServiceResult<StoreStats> {
        Ok(self.inner.store.stats().await?)
    }

    /// The store's own consistency check; empty when all is well.
    ///
    /// # Errors
    /// Store failure.
    pub async fn admin_integrity_problems(&self) -> ServiceResult<Vec<String>> {
        Ok(self.inner.store.integrity_problems().await?)
    }

    /// Looks for the blob of every finished upload (and its thumbnail).
    ///
    /// # Errors
    /// Store failure, or a blob store failing otherwise than by absence.
    pub async fn admin_check_blobs(&self) -> ServiceResult<BlobCheck> {
        let mut check = BlobCheck::default();
        for blob in self.inner.store.referenced_blobs().await? {
            let mut kinds = vec![(BlobKind::Original, "media")];
            if blob.thumbnail {
                kinds.push((BlobKind::Thumbnail, "thumbnails"));
            }
            for (kind, dir) in kinds {
                check.checked += 1;
                let found = self
                    .inner
                    .media
                    .blobs()
                    .exists(blob.id, kind)
                    .await
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                if !found {
                    check.missing.push(format!("{dir}/{}", blob.id));
                }
            }
        }
        Ok(check)
    }
}
