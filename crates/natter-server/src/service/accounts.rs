//! Sign-up and login by SMS code, access tokens, devices.

use std::net::IpAddr;
use std::time::Duration;

use natter_proto::accounts::{LoginRequest, RegisterRequest};
use natter_proto::users::LastSeenVisibility;
use natter_proto::{DeviceId, UserId};

use super::{Principal, ServiceError, ServiceResult, Services, clean_text};
use crate::clock::Timestamp;
use crate::config::SignupMode;
use crate::phone::Phone;
use crate::ratelimit::Limit;
use crate::secret::{CodeHash, PlainInvite, PlainToken, TokenHash, VerificationCode};
use crate::store::admin::{InviteRegistration, RegisteredByInvite};
use crate::store::{
    Device, LoggedIn, Login, NewDevice, NewVerificationCode, Registered, Registration, User,
};

/// A code was sent.
#[derive(Debug, Clone)]
pub struct CodeSent {
    /// The number it went to, normalised.
    pub phone: Phone,
    /// How long it is valid.
    pub expires_in: Duration,
}

/// A new device with its token (register or login).
#[derive(Debug)]
pub struct NewSession {
    /// The account.
    pub user: User,
    /// The new device.
    pub device_id: DeviceId,
    /// Its token; shown to the client once.
    pub token: PlainToken,
}

/// A login code handed out instead of sent.
#[derive(Debug)]
pub struct LoginCodeIssued {
    /// The account's number.
    pub phone: Phone,
    /// The code; shown once.
    pub code: VerificationCode,
    /// How long it is valid.
    pub expires_in: Duration,
}

/// What proves a registration: a verified code or an invite.
enum Proof {
    /// A verification code, checked, consumed with the registration.
    Code(CodeHash),
    /// The hash of an invite, checked and used with the registration.
    Invite(TokenHash),
}

/// Name for a device whose client gave none.
const DEFAULT_DEVICE_NAME: &str = "Unnamed device";

impl Services {
    /// Sends a verification code to `phone`.
    ///
    /// # Errors
    /// Invalid number (400), rate limits (429), gateway failure (502).
    pub async fn request_code(&self, phone: &str, client: IpAddr) -> ServiceResult<CodeSent> {
        if self.inner.config.signup_mode() == SignupMode::Invite {
            return Err(ServiceError::SmsDisabled);
        }
        let phone = self.parse_phone(phone)?;
        // Cheapest to refuse first: the client's address and network, then
        // the number, its block and its country (SMS pumping spreads over
        // addresses and numbers), then the server's whole budget.
        self.limit_ip(Limit::VerificationPerIp, client).await?;
        self.limit(
            Limit::VerificationPerNetwork,
            &crate::ratelimit::network_key(client),
        )
        .await?;
        self.limit(Limit::VerificationPerPhone, phone.as_str())
            .await?;
        self.limit(Limit::VerificationPerPrefix, phone.block())
            .await?;
        self.limit(Limit::VerificationPerCountry, &phone.country_key())
            .await?;
        self.inner
            .limiter
            .check_verification_budget()
            .await
            .map_err(ServiceError::RateLimited)?;

        let issued = self.issue_code(&phone).await?;
        self.inner.sms.send_code(&phone, &issued.code).await?;
        tracing::info!(phone = ?phone, "verification code sent");
        Ok(CodeSent {
            phone,
            expires_in: issued.expires_in,
        })
    }

    /// Creates an account with a verified number and logs in its first device.
    ///
    /// # Errors
    /// Invalid fields (400/422), wrong code (401), number taken (409), rate limits (429).
    pub async fn register(
        &self,
        req: RegisterRequest,
        client: IpAddr,
    ) -> ServiceResult<NewSession> {
        let limits = &self.inner.config.limits;
        let phone = self.parse_phone(&req.phone)?;
        let name = clean_text("name", &req.name, limits.max_name_chars, false)?;
        let device_name = self.device_name(req.device_name.as_deref())?;
        let proof = match self.inner.config.signup_mode() {
            SignupMode::Invite => {
                let invite = req.invite.as_deref().ok_or_else(|| {
                    ServiceError::Validation(
                        "`invite` is required: this server signs up by invite".to_owned(),
                    )
                })?;
                // Invite guesses count against the same per-address budget as codes.
                self.limit_ip(Limit::CodeAttemptsPerIp, client).await?;
                let invite = PlainInvite::from_client(invite).ok_or(ServiceError::InvalidInvite)?;
                Proof::Invite(invite.hash())
            }
            SignupMode::Sms | SignupMode::Open => {
                let code = req.verification_code.as_deref().ok_or_else(|| {
                    ServiceError::Validation("`verification_code` is required".to_owned())
                })?;
                Proof::Code(self.verify_code(&phone, code, client).await?)
            }
        };

        let now = Timestamp::now();
        let token = PlainToken::generate();
        let device = NewDevice {
            id: DeviceId::new(),
            name: device_name,
            token_hash: token.hash(),
            created_at: now,
        };
        let device_id = device.id;
        let user = User {
            id: natter_proto::UserId::new(),
            phone,
            name,
            about: String::new(),
            last_seen_visibility: LastSeenVisibility::Everyone,
            group_add_permission: natter_proto::users::GroupAddPermission::Everyone,
            last_seen_at: Some(now),
            profile_pic: None,
            created_at: now,
        };
        let created = match proof {
            Proof::Code(code) => match self
                .inner
                .store
                .register(Registration { code, user, device })
                .await?
            {
                Registered::Created(user) => user,
                Registered::PhoneTaken => return Err(ServiceError::PhoneTaken),
                Registered::CodeGone => return Err(ServiceError::InvalidCode),
            },
            Proof::Invite(invite) => match self
                .inner
                .store
                .register_by_invite(InviteRegistration {
                    invite,
                    now,
                    user,
                    device,
                })
                .await?
            {
                RegisteredByInvite::Created(user) => user,
                RegisteredByInvite::PhoneTaken => return Err(ServiceError::PhoneTaken),
                RegisteredByInvite::InviteInvalid => return Err(ServiceError::InvalidInvite),
            },
        };
        tracing::info!(user = %created.id, device = %device_id, "user registered");
        Ok(NewSession {
            user: created,
            device_id,
            token,
        })
    }

    /// Makes a one-time login code for the caller's own number, handed to
    /// the caller instead of sent by SMS: the caller types it on the new
    /// device, which logs in with the ordinary login body. The way to add
    /// a device in sign-up mode `invite`; works in every mode.
    ///
    /// # Errors
    /// Rate limits (429, the per-number verification budget), store failure.
    pub async fn create_login_code(&self, who: &Principal) -> ServiceResult<LoginCodeIssued> {
        let user = self
            .inner
            .store
            .user(who.user)
            .await?
            .ok_or(ServiceError::Unauthorized)?;
        self.limit(Limit::VerificationPerPhone, user.phone.as_str())
            .await?;
        let issued = self.issue_code(&user.phone).await?;
        tracing::info!(user = %who.user, by = %who.device, "login code issued to a device");
        Ok(issued)
    }

    /// Stores a fresh code for `phone` (replacing any earlier one) and
    /// returns it: for a device of the account or for the operator.
    pub(super) async fn issue_code(&self, phone: &Phone) -> ServiceResult<LoginCodeIssued> {
        let code = VerificationCode::generate();
        let now = Timestamp::now();
        let ttl = Duration::from_secs(self.inner.config.verification.code_ttl_secs);
        self.inner
            .store
            .put_verification_code(NewVerificationCode {
                phone: phone.clone(),
                hash: self.inner.code_key.hash(phone, &code),
                created_at: now,
                expires_at: now.plus(ttl),
                shown: (self.inner.config.signup_mode() == SignupMode::Open)
                    .then(|| code.expose().to_owned()),
            })
            .await?;
        Ok(LoginCodeIssued {
            phone: phone.clone(),
            code,
            expires_in: ttl,
        })
    }

    /// Logs a new device in to the number's account.
    ///
    /// An unknown number answers exactly like a wrong code, so the endpoint
    /// does not reveal who has an account.
    ///
    /// # Errors
    /// Invalid fields (400/422), wrong code or unknown number (401), device limit (409), rate limits (429).
    pub async fn login(&self, req: LoginRequest, client: IpAddr) -> ServiceResult<NewSession> {
        let phone = self.parse_phone(&req.phone)?;
        let device_name = self.device_name(req.device_name.as_deref())?;
        let code = self
            .verify_code(&phone, &req.verification_code, client)
            .await?;

        let token = PlainToken::generate();
        let device = NewDevice {
            id: DeviceId::new(),
            name: device_name,
            token_hash: token.hash(),
            created_at: Timestamp::now(),
        };
        let device_id = device.id;
        let max_devices = self.inner.config.limits.max_devices_per_user;
        match self
            .inner
            .store
            .login(Login {
                phone,
                code,
                device,
                max_devices,
            })
            .await?
        {
            LoggedIn::Created(user) => {
                tracing::info!(user = %user.id, device = %device_id, "device logged in");
                Ok(NewSession {
                    user,
                    device_id,
                    token,
                })
            }
            LoggedIn::UnknownPhone | LoggedIn::CodeGone => Err(ServiceError::InvalidCode),
            LoggedIn::DeviceLimit => Err(ServiceError::DeviceLimit(max_devices)),
        }
    }

    /// Counts an attempt and checks the code in constant time; returns the
    /// stored hash for the store to consume atomically with what it guards.
    async fn verify_code(
        &self,
        phone: &Phone,
        candidate: &str,
        client: IpAddr,
    ) -> ServiceResult<CodeHash> {
        self.limit_ip(Limit::CodeAttemptsPerIp, client).await?;
        let cfg = &self.inner.config.verification;
        // The attempt counts even for a malformed code.
        let stored = self
            .inner
            .store
            .attempt_verification_code(phone, Timestamp::now(), cfg.max_attempts)
            .await?
            .ok_or(ServiceError::InvalidCode)?;
        let candidate =
            VerificationCode::from_client(candidate).ok_or(ServiceError::InvalidCode)?;
        let hash = self.inner.code_key.hash(phone, &candidate);
        if stored.matches(&hash) {
            Ok(stored)
        } else {
            Err(ServiceError::InvalidCode)
        }
    }

    fn device_name(&self, name: Option<&str>) -> ServiceResult<String> {
        match name {
            None => Ok(DEFAULT_DEVICE_NAME.to_owned()),
            Some(n) => clean_text(
                "device_name",
                n,
                self.inner.config.limits.max_device_name_chars,
                false,
            ),
        }
    }

    /// Revokes the caller's own device (its token stops working at once).
    ///
    /// # Errors
    /// Store failure.
    pub async fn logout(&self, who: &Principal) -> ServiceResult<()> {
        let certified = self.is_certified(who.user, who.device).await;
        self.inner.store.delete_device(who.user, who.device).await?;
        self.close_device(who.user, who.device).await;
        self.certified_device_left(who.user, certified).await;
        tracing::info!(user = %who.user, device = %who.device, "device logged out");
        Ok(())
    }

    /// Deletes the caller's account. `confirm_phone` must be the account's
    /// number (in any form that parses to it): a deliberate act, not a
    /// stray request with a token. The user leaves every chat (members see
    /// `member_left`; a group's only admin hands over as when leaving), and
    /// every device's live connections close; see
    /// [`crate::store::Accounts::delete_account`] for what the store removes.
    ///
    /// # Errors
    /// [`ServiceError::ConfirmationMismatch`] when the number is not the
    /// account's; store failure.
    pub async fn delete_account(&self, who: &Principal, confirm_phone: &str) -> ServiceResult<()> {
        let user = self
            .inner
            .store
            .user(who.user)
            .await?
            .ok_or(ServiceError::Unauthorized)?;
        self.confirm_deletion(&user.phone, confirm_phone, "`phone`")?;
        if self.remove_account(who.user).await? {
            Ok(())
        } else {
            Err(ServiceError::Unauthorized)
        }
    }

    /// A deletion is confirmed by the account's number, in any form that
    /// parses to it; `field` names where it came from in the refusal.
    pub(super) fn confirm_deletion(
        &self,
        phone: &Phone,
        confirm_phone: &str,
        field: &str,
    ) -> ServiceResult<()> {
        if Phone::parse(confirm_phone, self.inner.config.phone_validation)
            .is_ok_and(|p| &p == phone)
        {
            Ok(())
        } else {
            Err(ServiceError::ConfirmationMismatch(format!(
                "{field} must be this account's phone number, to confirm the deletion."
            )))
        }
    }

    /// Deletes an account (the user's request, or the operator's): false if
    /// there is no such account.
    pub(super) async fn remove_account(&self, user: UserId) -> ServiceResult<bool> {
        let Some(deleted) = self
            .inner
            .store
            .delete_account(user, Timestamp::now())
            .await?
        else {
            return Ok(false);
        };
        for appended in &deleted.left {
            self.publish(appended, None).await;
        }
        for device in &deleted.devices {
            self.close_device(user, *device).await;
        }
        self.delete_media_files(&deleted.media, &deleted.uploads)
            .await;
        tracing::info!(
            user = %user,
            chats_left = deleted.left.len(),
            devices = deleted.devices.len(),
            media = deleted.media.len() + deleted.uploads.len(),
            "account deleted"
        );
        Ok(true)
    }

    /// The caller's devices, oldest first.
    ///
    /// # Errors
    /// Store failure.
    pub async fn devices(&self, who: &Principal) -> ServiceResult<Vec<Device>> {
        Ok(self.inner.store.devices(who.user).await?)
    }

    /// Revokes one of the caller's devices.
    ///
    /// # Errors
    /// [`ServiceError::DeviceNotFound`] if it is not one of theirs.
    pub async fn revoke_device(&self, who: &Principal, device: DeviceId) -> ServiceResult<()> {
        let certified = self.is_certified(who.user, device).await;
        if self.inner.store.delete_device(who.user, device).await? {
            self.close_device(who.user, device).await;
            self.certified_device_left(who.user, certified).await;
            tracing::info!(user = %who.user, device = %device, by = %who.device, "device revoked");
            Ok(())
        } else {
            Err(ServiceError::DeviceNotFound)
        }
    }
}
