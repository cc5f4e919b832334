//! End-to-end encryption: the MLS delivery service's rules. The server
//! holds no key that decrypts anything; it checks what it can without one:
//! certificate signatures (Ed25519, with `ring`), the framing of MLS
//! messages ([`crate::mls_framing`]) and the public fields of KeyPackages,
//! then lets the store order commits and route Welcomes (docs/e2ee.md).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use natter_proto::chats::MessageType;
use natter_proto::e2ee::{InboxItem, SUITES, credential_identity, device_certificate_message};
use natter_proto::ws::ServerFrame;
use natter_proto::{ChatId, DeviceId, MessageId, UserId};

use super::chats::status_of;
use super::{Principal, ServiceError, ServiceResult, Services, render};
use crate::clock::Timestamp;
use crate::mls_framing::{self, ContentType};
use crate::ratelimit::Limit;
use crate::store::e2ee::{
    ClaimedUser, Committed, CredentialSet, DeviceCredential, HandedOver, InboxRecord, NewCommit,
    NewHandover, Published,
};
use crate::store::{Appended, NewMessage};

/// How far a KeyPackage's `not_before` may lie in the future (clock skew
/// between a client and the server).
const LIFETIME_SKEW_SECS: u64 = 3600;

/// Ed25519 public keys and signatures are this long.
const ED25519_KEY: usize = 32;
const ED25519_SIGNATURE: usize = 64;
/// An X25519 public key (the link key).
const X25519_KEY: usize = 32;

/// Standard base64 of a named field.
fn decode(field: &str, value: &str) -> ServiceResult<Vec<u8>> {
    BASE64
        .decode(value.as_bytes())
        .map_err(|_| ServiceError::Validation(format!("`{field}` must be standard base64.")))
}

fn decode_len(field: &str, value: &str, len: usize) -> ServiceResult<Vec<u8>> {
    let bytes = decode(field, value)?;
    if bytes.len() != len {
        return Err(ServiceError::Validation(format!(
            "`{field}` must hold {len} bytes."
        )));
    }
    Ok(bytes)
}

/// Whether `signature` is `identity`'s Ed25519 signature over the device
/// certificate message of `(user, device, signature_key)`.
fn certificate_verifies(
    identity: &[u8],
    user: UserId,
    device: DeviceId,
    signature_key: &[u8],
    signature: &[u8],
) -> bool {
    let message = device_certificate_message(user, device, signature_key);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, identity)
        .verify(&message, signature)
        .is_ok()
}

/// A user's identity key and device keys.
#[derive(Debug, Clone)]
pub struct UserDevicesView {
    /// The user.
    pub user_id: UserId,
    /// Identity key.
    pub identity_key: Option<Vec<u8>>,
    /// Devices.
    pub devices: Vec<DeviceCredential>,
}

/// An accepted commit.
#[derive(Debug, Clone)]
pub struct CommitView {
    /// The chat's epoch now.
    pub epoch: u64,
    /// The log entry.
    pub message: super::MessageView,
}

/// Renders an inbox item for the wire.
#[must_use]
pub fn inbox_item(r: &InboxRecord) -> InboxItem {
    InboxItem {
        id: r.id,
        kind: r.kind,
        chat_id: r.chat_id,
        seq: r.seq,
        from_user: r.from_user,
        from_device: r.from_device,
        payload: BASE64.encode(&r.payload),
        created_at: r.created_at.to_datetime(),
    }
}

impl Services {
    /// Publishes `devices_changed` entries.
    async fn publish_all(&self, appended: &[Appended]) {
        for a in appended {
            self.publish(a, None).await;
        }
    }

    /// Sets the caller's identity key (base64 Ed25519 public key).
    ///
    /// # Errors
    /// Malformed key (422).
    pub async fn set_identity(&self, who: &Principal, identity_key: &str) -> ServiceResult<()> {
        let key = decode_len("identity_key", identity_key, ED25519_KEY)?;
        let appended = self
            .inner
            .store
            .set_identity_key(who.user, key, Timestamp::now())
            .await?;
        self.publish_all(&appended).await;
        Ok(())
    }

    /// Sets a device's keys and, optionally, its certificate.
    ///
    /// # Errors
    /// Not the caller's device (404), malformed keys (422), a certificate
    /// that does not verify or no identity key (422 `invalid_certificate`),
    /// other keys already set (409 `credential_exists`).
    pub async fn set_device_credential(
        &self,
        who: &Principal,
        device: DeviceId,
        signature_key: &str,
        link_key: &str,
        certificate: Option<&str>,
    ) -> ServiceResult<()> {
        let signature_key = decode_len("signature_key", signature_key, ED25519_KEY)?;
        let link_key = decode_len("link_key", link_key, X25519_KEY)?;
        let certificate = match certificate {
            Some(raw) => {
                let signature = decode_len("certificate", raw, ED25519_SIGNATURE)?;
                let identity = self
                    .inner
                    .store
                    .identity_key(who.user)
                    .await?
                    .ok_or(ServiceError::InvalidCertificate)?;
                if !certificate_verifies(&identity, who.user, device, &signature_key, &signature) {
                    return Err(ServiceError::InvalidCertificate);
                }
                Some(signature)
            }
            None => None,
        };
        let credential = DeviceCredential {
            device_id: device,
            signature_key,
            link_key,
            certificate,
        };
        match self
            .inner
            .store
            .set_device_credential(who.user, credential, Timestamp::now())
            .await?
        {
            CredentialSet::Stored(appended) => {
                self.publish_all(&appended).await;
                Ok(())
            }
            CredentialSet::NoDevice => Err(ServiceError::DeviceNotFound),
            CredentialSet::Exists => Err(ServiceError::CredentialExists),
        }
    }

    /// A user's identity key and device keys: all of the caller's own,
    /// only certified ones of others (who must be visible as for profiles).
    ///
    /// # Errors
    /// No such user (404).
    pub async fn user_devices(
        &self,
        who: &Principal,
        user: UserId,
    ) -> ServiceResult<UserDevicesView> {
        if user != who.user {
            // The same gate as a profile: a user one may not see is not found.
            self.profile(who, user).await?;
        }
        let identity_key = self.inner.store.identity_key(user).await?;
        let mut devices = self.inner.store.device_credentials(user).await?;
        if user != who.user {
            devices.retain(|d| d.certificate.is_some());
        }
        Ok(UserDevicesView {
            user_id: user,
            identity_key,
            devices,
        })
    }

    /// Checks one KeyPackage of the caller's device.
    fn check_key_package(
        &self,
        who: &Principal,
        signature_key: &[u8],
        field: &str,
        raw: &str,
        now_secs: u64,
    ) -> ServiceResult<Vec<u8>> {
        let max = self.inner.config.e2ee.key_package_max_bytes;
        let bytes = decode(field, raw)?;
        if bytes.len() as u64 > max {
            return Err(ServiceError::TooLarge(format!(
                "A KeyPackage is at most {max} bytes; `{field}` holds {}.",
                bytes.len()
            )));
        }
        let refuse = |why: String| ServiceError::InvalidKeyPackage(format!("`{field}`: {why}"));
        let info = mls_framing::parse_key_package(&bytes).map_err(|e| refuse(e.to_string()))?;
        if !SUITES.contains(&info.cipher_suite) {
            return Err(refuse(format!(
                "cipher suite {:#06x} is not one this server accepts ({:?}).",
                info.cipher_suite, SUITES
            )));
        }
        if info.not_after <= now_secs {
            return Err(refuse("it has expired.".to_owned()));
        }
        if info.not_before > now_secs.saturating_add(LIFETIME_SKEW_SECS) {
            return Err(refuse("it is not valid yet.".to_owned()));
        }
        let expected = credential_identity(who.user, who.device);
        if info.credential_type != 1 || info.identity.as_deref() != Some(expected.as_bytes()) {
            return Err(refuse(format!(
                "its credential must be the basic credential \"{expected}\" of this device."
            )));
        }
        if info.signature_key != signature_key {
            return Err(refuse(
                "its signature key is not this device's registered one.".to_owned(),
            ));
        }
        Ok(bytes)
    }

    /// Publishes KeyPackages of the caller's device.
    ///
    /// # Errors
    /// Not certified (409), too many (422), a package refused (422/413).
    pub async fn publish_key_packages(
        &self,
        who: &Principal,
        key_packages: &[String],
        last_resort: Option<&str>,
    ) -> ServiceResult<(u32, bool)> {
        let e2ee = &self.inner.config.e2ee;
        if key_packages.len() as u64 > e2ee.key_package_batch_max {
            return Err(ServiceError::Validation(format!(
                "`key_packages` holds at most {} KeyPackages.",
                e2ee.key_package_batch_max
            )));
        }
        let credential = self
            .inner
            .store
            .device_credentials(who.user)
            .await?
            .into_iter()
            .find(|d| d.device_id == who.device)
            .ok_or(ServiceError::DeviceKeysMissing)?;
        let now_secs = u64::try_from(Timestamp::now().0 / 1000).unwrap_or(0);
        let mut packages = Vec::with_capacity(key_packages.len());
        for (i, raw) in key_packages.iter().enumerate() {
            let field = format!("key_packages[{i}]");
            packages.push(self.check_key_package(
                who,
                &credential.signature_key,
                &field,
                raw,
                now_secs,
            )?);
        }
        let last_resort = match last_resort {
            Some(raw) => Some(self.check_key_package(
                who,
                &credential.signature_key,
                "last_resort",
                raw,
                now_secs,
            )?),
            None => None,
        };
        match self
            .inner
            .store
            .publish_key_packages(
                who.device,
                packages,
                last_resort,
                e2ee.key_packages_max_per_device,
                Timestamp::now(),
            )
            .await?
        {
            Published::Stock(available, last_resort) => Ok((available, last_resort)),
            Published::NoKeys => Err(ServiceError::DeviceKeysMissing),
            Published::TooMany => Err(ServiceError::Validation(format!(
                "A device keeps at most {} one-time KeyPackages; publish fewer.",
                e2ee.key_packages_max_per_device
            ))),
        }
    }

    /// The caller's device's KeyPackage stock.
    ///
    /// # Errors
    /// Store failure.
    pub async fn key_package_stock(&self, who: &Principal) -> ServiceResult<(u32, bool)> {
        Ok(self.inner.store.key_package_stock(who.device).await?)
    }

    /// The low-water mark of KeyPackage stock.
    #[must_use]
    pub fn key_package_low_water(&self) -> u32 {
        u32::try_from(self.inner.config.e2ee.key_package_low_water).unwrap_or(u32::MAX)
    }

    /// Claims one KeyPackage per certified device of each user; devices
    /// whose stock fell below the low-water mark are told.
    ///
    /// # Errors
    /// Too many users (422), rate limited (429), a user one may not see (404).
    pub async fn claim_key_packages(
        &self,
        who: &Principal,
        mut users: Vec<UserId>,
    ) -> ServiceResult<Vec<ClaimedUser>> {
        let max = self.inner.config.limits.max_group_members;
        if users.is_empty() || users.len() > max {
            return Err(ServiceError::Validation(format!(
                "`user_ids` must name 1 to {max} users."
            )));
        }
        self.limit(Limit::KeyPackageClaimsPerUser, &who.user.to_string())
            .await?;
        let mut seen = std::collections::HashSet::new();
        users.retain(|u| seen.insert(*u));
        for user in &users {
            if *user != who.user {
                self.profile(who, *user).await?;
            }
        }
        let claimed = self
            .inner
            .store
            .claim_key_packages(users, who.device)
            .await?;
        let low_water = self.key_package_low_water();
        for user in &claimed {
            for device in &user.devices {
                if device.left < low_water {
                    let frame = render::text(&ServerFrame::KeyPackagesLow {
                        available: device.left,
                    });
                    self.inner
                        .bus
                        .send_to_device(user.user_id, device.device_id, frame)
                        .await;
                }
            }
        }
        Ok(claimed)
    }

    /// Accepts a commit for the chat's current epoch and routes its Welcome.
    ///
    /// # Errors
    /// Unknown chat (404), malformed or misdirected MLS bytes (422
    /// `invalid_mls_message`), a stale epoch (409 `stale_epoch`), a Welcome
    /// device that is not a participant's (422), a full inbox (409).
    pub async fn submit_commit(
        &self,
        who: &Principal,
        chat: ChatId,
        req: natter_proto::e2ee::SubmitCommit,
    ) -> ServiceResult<(CommitView, bool)> {
        let e2ee = &self.inner.config.e2ee;
        let commit = decode("commit", &req.commit)?;
        if commit.is_empty() || commit.len() as u64 > e2ee.commit_max_bytes {
            return Err(ServiceError::TooLarge(format!(
                "`commit` holds 1 to {} bytes.",
                e2ee.commit_max_bytes
            )));
        }
        let framing = mls_framing::parse_message(&commit)
            .map_err(|e| ServiceError::InvalidMlsMessage(e.to_string()))?;
        if framing.group_id != chat.as_uuid().as_bytes() {
            return Err(super::chats::mls_refused(
                crate::store::rules::MlsRefusal::WrongGroup,
            ));
        }
        if framing.content_type != ContentType::Commit {
            return Err(ServiceError::InvalidMlsMessage(
                "A handshake message for this route must have content type commit.".to_owned(),
            ));
        }
        let welcome = match &req.welcome {
            Some(raw) => {
                let bytes = decode("welcome", raw)?;
                if bytes.len() as u64 > e2ee.welcome_max_bytes {
                    return Err(ServiceError::TooLarge(format!(
                        "`welcome` holds at most {} bytes.",
                        e2ee.welcome_max_bytes
                    )));
                }
                mls_framing::check_welcome(&bytes)
                    .map_err(|e| ServiceError::InvalidMlsMessage(format!("`welcome`: {e}")))?;
                Some(bytes)
            }
            None => None,
        };
        let mut devices = req.welcome_devices;
        let mut seen = std::collections::HashSet::new();
        devices.retain(|d| seen.insert(*d));
        if welcome.is_some() == devices.is_empty() {
            return Err(ServiceError::Validation(
                "`welcome` and `welcome_devices` come together: a Welcome names its devices."
                    .to_owned(),
            ));
        }
        let max = self.inner.config.limits.max_group_members;
        if devices.len() > max.saturating_mul(self.inner.config.limits.max_devices_per_user) {
            return Err(ServiceError::Validation(
                "`welcome_devices` names more devices than a group can hold.".to_owned(),
            ));
        }
        if let Some(key) = &req.client_message_id {
            let len = key.chars().count();
            let max = self.inner.config.limits.max_client_message_id_chars;
            if len == 0 || len > max {
                return Err(ServiceError::Validation(format!(
                    "`client_message_id` must have 1 to {max} characters."
                )));
            }
        }
        let now = Timestamp::now();
        let new = NewCommit {
            message: NewMessage {
                id: MessageId::new(),
                chat_id: chat,
                sender_id: who.user,
                sender_device_id: who.device,
                message_type: MessageType::Commit,
                content: None,
                ciphertext: Some(commit),
                media_id: None,
                reply_to: None,
                client_message_id: req.client_message_id,
                client_timestamp: None,
                now,
            },
            epoch: framing.epoch,
            welcome,
            welcome_devices: devices,
            inbox_max: e2ee.inbox_max_items,
        };
        match self.inner.store.commit(new).await? {
            Committed::Created(appended, epoch, welcomes) => {
                // Published like any entry (members follow the log);
                // never pushed, never counted unread, never indexed.
                self.publish(&appended, None).await;
                for (owner, item) in &welcomes {
                    let frame = render::text(&ServerFrame::Inbox {
                        item: inbox_item(item),
                    });
                    self.inner
                        .bus
                        .send_to_device(*owner, item.device_id, frame)
                        .await;
                }
                let view = super::MessageView {
                    status: status_of(&appended.entry, &appended.receipts),
                    entry: appended.entry,
                };
                Ok((
                    CommitView {
                        epoch,
                        message: view,
                    },
                    true,
                ))
            }
            Committed::Duplicate(entry, epoch) => {
                let receipts = self.inner.store.receipt_state(chat).await?;
                let view = super::MessageView {
                    status: status_of(&entry, &receipts),
                    entry: *entry,
                };
                Ok((
                    CommitView {
                        epoch,
                        message: view,
                    },
                    false,
                ))
            }
            Committed::NotMember => Err(ServiceError::ChatNotFound),
            Committed::NotEncrypted => Err(ServiceError::Validation(
                "This chat is not end-to-end encrypted: it takes no commits.".to_owned(),
            )),
            Committed::StaleEpoch(epoch) => Err(ServiceError::StaleEpoch(epoch)),
            Committed::NotParticipantDevice(device) => Err(ServiceError::Validation(format!(
                "`welcome_devices`: {device} is not a device of a participant of this chat."
            ))),
            Committed::InboxFull(_) => Err(ServiceError::InboxFull(e2ee.inbox_max_items)),
        }
    }

    /// The caller's device's inbox, oldest first.
    ///
    /// # Errors
    /// Store failure.
    pub async fn inbox(&self, who: &Principal) -> ServiceResult<Vec<InboxRecord>> {
        Ok(self
            .inner
            .store
            .inbox(who.device, self.inner.config.e2ee.inbox_max_items)
            .await?)
    }

    /// Acknowledges an inbox item of the caller's device.
    ///
    /// # Errors
    /// No such item (404).
    pub async fn ack_inbox(&self, who: &Principal, id: i64) -> ServiceResult<()> {
        if self.inner.store.ack_inbox(who.device, id).await? {
            Ok(())
        } else {
            Err(ServiceError::MessageNotFound)
        }
    }

    /// Sends a sealed handover to another device of the caller's account.
    ///
    /// # Errors
    /// Not another device of the caller's (404), too large (413), inbox full (409).
    pub async fn hand_over(
        &self,
        who: &Principal,
        device: DeviceId,
        payload: &str,
    ) -> ServiceResult<InboxRecord> {
        let max = self.inner.config.e2ee.handover_max_bytes;
        let bytes = decode("payload", payload)?;
        if bytes.is_empty() || bytes.len() as u64 > max {
            return Err(ServiceError::TooLarge(format!(
                "`payload` holds 1 to {max} bytes."
            )));
        }
        let handover = NewHandover {
            from_user: who.user,
            from_device: who.device,
            to_device: device,
            payload: bytes,
            max_items: self.inner.config.e2ee.inbox_max_items,
            now: Timestamp::now(),
        };
        match self.inner.store.hand_over(handover).await? {
            HandedOver::Stored(item) => {
                let frame = render::text(&ServerFrame::Inbox {
                    item: inbox_item(&item),
                });
                self.inner.bus.send_to_device(who.user, device, frame).await;
                Ok(item)
            }
            HandedOver::NoDevice => Err(ServiceError::DeviceNotFound),
            HandedOver::InboxFull => Err(ServiceError::InboxFull(
                self.inner.config.e2ee.inbox_max_items,
            )),
        }
    }

    /// After a device left (logout, revocation): if it was certified, its
    /// user's encrypted chats hear of it.
    pub(super) async fn certified_device_left(&self, user: UserId, was_certified: bool) {
        if !was_certified {
            return;
        }
        match self
            .inner
            .store
            .devices_changed(user, Timestamp::now())
            .await
        {
            Ok(appended) => self.publish_all(&appended).await,
            Err(e) => tracing::warn!(error = %e, "could not record a device change"),
        }
    }

    /// Whether a device is certified (before it leaves).
    pub(super) async fn is_certified(&self, user: UserId, device: DeviceId) -> bool {
        self.inner
            .store
            .device_credentials(user)
            .await
            .map(|all| {
                all.iter()
                    .any(|d| d.device_id == device && d.certificate.is_some())
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_verifies_only_for_its_user_device_and_key() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        use ring::signature::KeyPair as _;
        let identity = pair.public_key().as_ref().to_vec();
        let (user, device) = (UserId::new(), DeviceId::new());
        let key = [3u8; 32];
        let sig = pair.sign(&device_certificate_message(user, device, &key));
        assert!(certificate_verifies(
            &identity,
            user,
            device,
            &key,
            sig.as_ref()
        ));
        assert!(!certificate_verifies(
            &identity,
            user,
            DeviceId::new(),
            &key,
            sig.as_ref()
        ));
        assert!(!certificate_verifies(
            &identity,
            user,
            device,
            &[4u8; 32],
            sig.as_ref()
        ));
        assert!(!certificate_verifies(
            &[0u8; 32],
            user,
            device,
            &key,
            sig.as_ref()
        ));
    }
}
