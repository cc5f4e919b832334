//! The end-to-end encrypted client of one device: its [`Session`], sync
//! engine ([`Connection`]), MLS engine ([`Engine`]), trust store
//! ([`PinnedKeys`]) and local [`ClientStore`], kept in step (docs/e2ee.md).
//!
//! Every chat a [`Messenger`] creates is encrypted. It processes each
//! encrypted chat's log in order, exactly once: its own position per chat
//! is saved with the MLS state in one transaction, so a crash between the
//! two cannot skip a commit. Decrypted messages go to the local history
//! (searchable with [`ClientStore::search_local`]); the server keeps only
//! ciphertext.
//!
//! Keeping groups in line: the device that causes a change (creates a
//! chat, adds or removes someone, links or revokes a device) commits it at
//! once; every other member marks the chat and brings the group in line
//! before its next send, so a departed member's leaves are gone before
//! anything new is encrypted.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::io::{AsyncRead, AsyncWrite};
use natter_proto::chats::{
    AddParticipants, ChatEvent, ChatKind, CreateChat, Message, MessageType, SendMessage,
};
use natter_proto::e2ee::{
    ClaimKeyPackages, PublishKeyPackages, SendHandover, SetDeviceCredential, SetIdentity,
    SubmitCommit,
};
use natter_proto::{ChatId, DeviceId, ErrorCode, MediaId, MessageId, UserId};

use crate::api::HistoryQuery;
use crate::e2ee::engine::{CertifiedDevice, CommitIntent, DeviceRef, GroupEvent, PendingCommit};
use crate::e2ee::handover;
use crate::e2ee::identity::Identity;
use crate::e2ee::payload::{Body, Payload};
use crate::e2ee::safety::SafetyNumber;
use crate::e2ee::trust::{PinnedKeys, TrustEvent};
use crate::e2ee::{E2eeError, Engine, Suite};
use crate::files;
use crate::local::{ClientStore, HistoryEntry, SharedStore};
use crate::session::{Connection, Event, Session};
use crate::{ClientError, ClientResult, StoreError};

/// One-time KeyPackages published at a time (and again when the server
/// says the stock ran low).
const KEY_PACKAGE_BATCH: usize = 20;
/// Attempts at one commit before giving up (each lost race rebases).
const COMMIT_ATTEMPTS: usize = 8;
/// History page size when catching a chat up over REST.
const CATCH_UP_PAGE: i64 = 100;
/// State keys in the store's `state` table.
const ENGINE_KEY: &str = "e2ee/engine";
const TRUST_KEY: &str = "e2ee/trust";
const POSITIONS_KEY: &str = "e2ee/positions";

/// What a [`Messenger`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum MessengerEvent {
    /// Connected (and synced from the saved positions).
    Connected,
    /// Disconnected; it reconnects by itself.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A message, decrypted (or a plaintext chat's).
    Message(Box<ChatMessage>),
    /// A system entry of a chat (membership, rename, devices).
    ChatChanged {
        /// The chat.
        chat_id: ChatId,
        /// What happened.
        event: ChatEvent,
    },
    /// This device joined a chat's group (from a Welcome).
    Joined {
        /// The chat.
        chat_id: ChatId,
    },
    /// This device was removed from a chat's group.
    Removed {
        /// The chat.
        chat_id: ChatId,
    },
    /// A contact's identity key is not the one pinned: the new one is
    /// pinned, and the contact is no longer verified. Tell the user.
    IdentityChanged {
        /// The contact.
        user_id: UserId,
    },
    /// A KeyPackage, Welcome or commit was refused because a device in it
    /// is not certified by its user's pinned identity key.
    Refused {
        /// The chat, if any.
        chat_id: Option<ChatId>,
        /// Why.
        reason: String,
    },
    /// An entry of an encrypted chat could not be decrypted.
    Undecryptable {
        /// The chat.
        chat_id: ChatId,
        /// Its seq.
        seq: i64,
        /// Why.
        reason: String,
    },
    /// This device received the identity key from another device of the
    /// user (linking finished), and `imported` messages of its history.
    Linked {
        /// History entries handed over (0: none was).
        imported: usize,
    },
    /// A message of ours was stored by the server.
    Sent {
        /// Its idempotency key.
        client_message_id: String,
        /// Its seq in the chat.
        seq: i64,
        /// The server's id for it (to answer, edit or delete it).
        message_id: MessageId,
    },
    /// A send was refused for good.
    SendFailed {
        /// Its idempotency key.
        client_message_id: String,
        /// Why.
        code: ErrorCode,
    },
    /// Receipts moved.
    Receipt {
        /// The chat.
        chat_id: ChatId,
        /// Delivered to everyone up to here.
        delivered_seq: i64,
        /// Read by everyone up to here.
        read_seq: i64,
    },
    /// Someone is typing.
    Typing {
        /// The chat.
        chat_id: ChatId,
        /// Who.
        user_id: UserId,
    },
    /// Someone's presence changed (the server tells the people who may
    /// see it, live; a client fetches it once when it shows someone).
    Presence {
        /// Who.
        user_id: UserId,
        /// Now.
        status: natter_proto::users::PresenceStatus,
        /// When last online, if they let this user see it.
        last_seen: Option<time::OffsetDateTime>,
    },
}

/// A message as the user sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// The chat.
    pub chat_id: ChatId,
    /// Its seq.
    pub seq: i64,
    /// The server's id.
    pub message_id: MessageId,
    /// Who sent it.
    pub sender: UserId,
    /// From which device.
    pub sender_device: Option<DeviceId>,
    /// What it says.
    pub body: Body,
    /// The message it answers.
    pub reply_to: Option<MessageId>,
    /// A plaintext chat's attachment (its `body` is then the file's name
    /// as a text): fetch it with [`Messenger::fetch_plain_file_to`].
    pub media_id: Option<MediaId>,
}

/// What [`Messenger::fetch_file`] gives back. Its `Debug` shows the sizes
/// of the name and the bytes only.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceivedFile {
    /// Its name, as the sender gave it.
    pub name: String,
    /// Its type.
    pub mime: String,
    /// The decrypted bytes.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for ReceivedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedFile")
            .field("name", &crate::Redacted(self.name.len()))
            .field("mime", &self.mime)
            .field("bytes", &crate::Redacted(self.bytes.len()))
            .finish()
    }
}

/// The encrypted client of one device.
pub struct Messenger {
    /// The device's session (REST).
    session: Session,
    /// The sync engine and outbox.
    connection: Connection,
    /// The local store.
    store: SharedStore,
    /// The MLS engine.
    engine: Engine,
    /// Pinned identity keys and checked certificates.
    trust: PinnedKeys,
    /// The last seq processed per encrypted chat (saved with the engine).
    positions: BTreeMap<ChatId, i64>,
    /// Chats whose group may be out of line with the server's membership.
    dirty: HashSet<ChatId>,
    /// Chats to bring in line as soon as the event at hand is processed:
    /// someone joined on this user's behalf (an accepted invitation of
    /// theirs), and no device of the group commits that add by itself.
    eager: HashSet<ChatId>,
    /// Whether each chat the device met is encrypted.
    encrypted: HashMap<ChatId, bool>,
    /// Events waiting to be handed out.
    pending: VecDeque<MessengerEvent>,
    /// Our sends in flight: what we encrypted, to keep in the history
    /// (a device cannot decrypt its own MLS messages).
    sending: HashMap<String, (ChatId, Payload)>,
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger")
            .field("user", &self.session.user_id())
            .field("device", &self.session.device_id())
            .field("chats", &self.positions.len())
            .finish_non_exhaustive()
    }
}

fn e2ee(e: E2eeError) -> ClientError {
    ClientError::Protocol(format!("end-to-end encryption: {e}"))
}

fn decode(field: &str, text: &str) -> ClientResult<Vec<u8>> {
    B64.decode(text)
        .map_err(|_| ClientError::Protocol(format!("`{field}` is not base64")))
}

impl Messenger {
    /// Opens the device's encrypted client on `store`: the saved engine if
    /// there is one; otherwise new keys: on the first device of an account
    /// a new identity key, certified and published with the device's keys
    /// and KeyPackages; on a further device the keys and KeyPackages
    /// without a certificate, waiting for [`Messenger::approve_device`] on
    /// an existing device.
    ///
    /// # Errors
    /// The server or the store failed.
    pub async fn start(session: Session, store: impl ClientStore + 'static) -> ClientResult<Self> {
        let store: SharedStore = std::sync::Arc::new(store);
        let saved = store.transaction(|tx| {
            Ok((
                tx.get(ENGINE_KEY)?,
                tx.get(TRUST_KEY)?,
                tx.get(POSITIONS_KEY)?,
            ))
        })?;
        let connection = session.connect(store.clone());
        let (engine, trust, positions, fresh) = match saved {
            (Some(engine), trust, positions) => {
                let engine = Engine::restore(&engine).map_err(e2ee)?;
                let trust = match trust {
                    Some(t) => PinnedKeys::from_bytes(&t).map_err(e2ee)?,
                    None => PinnedKeys::new(),
                };
                let positions = match positions {
                    Some(p) => serde_json::from_slice(&p)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    None => BTreeMap::new(),
                };
                (engine, trust, positions, false)
            }
            _ => {
                let me = session.api().user_devices(session.user_id()).await?;
                let identity = match me.identity_key {
                    None => Some(Identity::generate().map_err(e2ee)?),
                    Some(_) => None,
                };
                let engine =
                    Engine::new(session.user_id(), session.device_id(), identity).map_err(e2ee)?;
                (engine, PinnedKeys::new(), BTreeMap::new(), true)
            }
        };
        let mut messenger = Self {
            session,
            connection,
            store,
            engine,
            trust,
            positions,
            dirty: HashSet::new(),
            eager: HashSet::new(),
            encrypted: HashMap::new(),
            pending: VecDeque::new(),
            sending: HashMap::new(),
        };
        if fresh {
            messenger.publish_keys().await?;
        }
        Ok(messenger)
    }

    /// The device's session.
    #[must_use]
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The local store (history, search).
    #[must_use]
    pub fn store(&self) -> &dyn ClientStore {
        &*self.store
    }

    /// This device's MLS signature key: shown on a new device, so the user
    /// can compare it on the device that approves it.
    #[must_use]
    pub fn device_key(&self) -> &[u8] {
        self.engine.signature_key()
    }

    /// Whether this device holds the user's identity key (it can approve devices).
    #[must_use]
    pub fn holds_identity(&self) -> bool {
        self.engine.identity().is_some()
    }

    /// Saves the engine, trust store and positions in one transaction.
    fn save(&self) -> ClientResult<()> {
        let engine = self.engine.snapshot().map_err(e2ee)?;
        let trust = self.trust.to_bytes().map_err(e2ee)?;
        let positions =
            serde_json::to_vec(&self.positions).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.store.transaction(|tx| {
            tx.put(ENGINE_KEY, &engine)?;
            tx.put(TRUST_KEY, &trust)?;
            tx.put(POSITIONS_KEY, &positions)
        })?;
        Ok(())
    }

    /// Publishes the identity key (first device), the device's keys (with a
    /// self-signed certificate on the first device) and KeyPackages.
    async fn publish_keys(&mut self) -> ClientResult<()> {
        let api = self.session.api().clone();
        let me = self.session.user_id();
        let certificate = match self.engine.identity() {
            Some(identity) => {
                let key = identity.public_key().to_vec();
                api.set_identity(&SetIdentity {
                    identity_key: B64.encode(&key),
                })
                .await?;
                self.trust.observe_identity(me, &key);
                Some(self.engine.self_certificate().map_err(e2ee)?)
            }
            None => None,
        };
        api.set_device_credential(
            self.session.device_id(),
            &SetDeviceCredential {
                signature_key: B64.encode(self.engine.signature_key()),
                link_key: B64.encode(self.engine.link_key()),
                certificate: certificate.map(|c| B64.encode(c)),
            },
        )
        .await?;
        self.replenish(true).await
    }

    /// Publishes a batch of one-time KeyPackages (and a last-resort one).
    async fn replenish(&mut self, with_last_resort: bool) -> ClientResult<()> {
        let packages = self
            .engine
            .key_packages(Suite::Classic, KEY_PACKAGE_BATCH)
            .map_err(e2ee)?;
        // Their private keys are in the engine: saved before the server
        // can hand the packages out.
        self.save()?;
        self.session
            .api()
            .publish_key_packages(&PublishKeyPackages {
                key_packages: packages.one_time.iter().map(|p| B64.encode(p)).collect(),
                last_resort: with_last_resort.then(|| B64.encode(&packages.last_resort)),
            })
            .await?;
        Ok(())
    }

    // === Trust ===

    /// Learns `user`'s identity key and certified devices from the server,
    /// checking every certificate against the pinned key; returns the
    /// devices that pass.
    async fn learn(&mut self, user: UserId) -> ClientResult<Vec<CertifiedDevice>> {
        let listed = self.session.api().user_devices(user).await?;
        self.take_in(user, listed)
    }

    /// [`Messenger::learn`] for many users, their device lists fetched at
    /// once (a group's members when joining or bringing it in line).
    async fn learn_all(&mut self, users: &[UserId]) -> ClientResult<Vec<CertifiedDevice>> {
        let api = self.session.api().clone();
        let lists = futures_util::future::join_all(users.iter().map(|u| {
            let api = api.clone();
            async move { (*u, api.user_devices(*u).await) }
        }))
        .await;
        let mut certified = Vec::new();
        for (user, listed) in lists {
            certified.extend(self.take_in(user, listed?)?);
        }
        Ok(certified)
    }

    /// Pins `user`'s identity key and checks their devices' certificates.
    fn take_in(
        &mut self,
        user: UserId,
        listed: natter_proto::e2ee::UserDevices,
    ) -> ClientResult<Vec<CertifiedDevice>> {
        let Some(identity) = listed.identity_key else {
            return Ok(Vec::new());
        };
        let identity = decode("identity_key", &identity)?;
        if let Some(TrustEvent::IdentityChanged { user_id }) =
            self.trust.observe_identity(user, &identity)
        {
            self.pending
                .push_back(MessengerEvent::IdentityChanged { user_id });
        }
        let mut certified = Vec::new();
        let mut seen = HashSet::new();
        for d in listed.devices {
            let Some(certificate) = d.certificate else {
                continue;
            };
            let key = decode("signature_key", &d.signature_key)?;
            let certificate = decode("certificate", &certificate)?;
            match self
                .trust
                .add_certificate(user, d.device_id, &key, &certificate)
            {
                Ok(()) => {
                    seen.insert(d.device_id);
                    certified.push(CertifiedDevice {
                        device: DeviceRef {
                            user,
                            device: d.device_id,
                        },
                        signature_key: key,
                    });
                }
                Err(e) => self.pending.push_back(MessengerEvent::Refused {
                    chat_id: None,
                    reason: format!("device {} of {user}: {e}", d.device_id),
                }),
            }
        }
        Ok(certified)
    }

    /// The safety number between this user and `other` (from the pinned keys).
    ///
    /// # Errors
    /// No identity key is known for one of the two.
    pub async fn safety_number(&mut self, other: UserId) -> ClientResult<SafetyNumber> {
        let me = self.session.user_id();
        self.learn(other).await?;
        self.learn(me).await?;
        let (Some(mine), Some(theirs)) =
            (self.trust.identity_key(me), self.trust.identity_key(other))
        else {
            return Err(ClientError::Protocol(
                "no identity key is known for this contact yet".into(),
            ));
        };
        Ok(SafetyNumber::new(me, mine, other, theirs))
    }

    /// Marks `other` verified (after comparing safety numbers) or not.
    ///
    /// # Errors
    /// No identity key is pinned for them; the store failed.
    pub fn set_verified(&mut self, other: UserId, verified: bool) -> ClientResult<()> {
        self.trust.set_verified(other, verified).map_err(e2ee)?;
        self.save()
    }

    /// Whether `other` is marked verified.
    #[must_use]
    pub fn is_verified(&self, other: UserId) -> bool {
        self.trust.is_verified(other)
    }

    // === Chats and groups ===

    /// Creates an encrypted chat with `participants` and its MLS group, and
    /// adds every certified device of every participant (and this user's
    /// other devices).
    ///
    /// # Errors
    /// The server refused the chat or the commit; the store failed.
    pub async fn create_chat(
        &mut self,
        kind: ChatKind,
        participants: &[UserId],
        name: Option<&str>,
    ) -> ClientResult<ChatId> {
        let chat = self
            .session
            .api()
            .create_chat(&CreateChat {
                kind,
                participants: participants.to_vec(),
                name: name.map(str::to_owned),
                encrypted: true,
            })
            .await?;
        self.encrypted.insert(chat.id, true);
        // A direct chat already there (one per pair) has its group.
        if !self.engine.chats().any(|c| c == chat.id) && chat.epoch == 0 {
            self.engine
                .create_group(chat.id, Suite::Classic)
                .map_err(e2ee)?;
            self.positions.insert(chat.id, chat.last_seq);
            self.save()?;
        }
        self.reconcile(chat.id).await?;
        Ok(chat.id)
    }

    /// Adds users to a group chat and their devices to its MLS group.
    ///
    /// # Errors
    /// The server refused; the store failed.
    pub async fn add_participants(&mut self, chat: ChatId, users: &[UserId]) -> ClientResult<()> {
        self.session
            .api()
            .add_participants(
                chat,
                &AddParticipants {
                    user_ids: users.to_vec(),
                },
            )
            .await?;
        self.reconcile(chat).await
    }

    /// Removes a user from a group chat and their devices from its group,
    /// before anything else is sent.
    ///
    /// # Errors
    /// The server refused; the store failed.
    pub async fn remove_participant(&mut self, chat: ChatId, user: UserId) -> ClientResult<()> {
        self.session.api().remove_participant(chat, user).await?;
        self.reconcile(chat).await
    }

    /// Logs out one of this user's other devices and removes it from every
    /// encrypted chat's group.
    ///
    /// # Errors
    /// The server refused; the store failed.
    pub async fn revoke_device(&mut self, device: DeviceId) -> ClientResult<()> {
        self.session.api().revoke_device(device).await?;
        self.trust.forget_device(self.session.user_id(), device);
        let chats: Vec<ChatId> = self.engine.chats().collect();
        for chat in chats {
            self.reconcile(chat).await?;
        }
        Ok(())
    }

    /// Certifies a new device of this user (it logged in and published its
    /// keys), hands it the identity key, and adds it to every encrypted
    /// chat. `expected_signature_key`, if given, must match the key the new
    /// device shows (compare it there: the server cannot fake that).
    ///
    /// With `with_history`, this device's decrypted history of its
    /// encrypted chats goes along: exported, encrypted like a file with a
    /// fresh key, uploaded, and its id and key sealed in the handover. A new
    /// device otherwise starts with no history (MLS gives it none: it reads
    /// from the epoch it was added in).
    ///
    /// # Errors
    /// This device does not hold the identity key, the device is unknown or
    /// shows another key, or the server refused.
    pub async fn approve_device(
        &mut self,
        device: DeviceId,
        expected_signature_key: Option<&[u8]>,
        with_history: bool,
    ) -> ClientResult<()> {
        let me = self.session.user_id();
        let api = self.session.api().clone();
        let listed = api.user_devices(me).await?;
        let keys = listed
            .devices
            .into_iter()
            .find(|d| d.device_id == device)
            .ok_or_else(|| ClientError::Protocol(format!("device {device} has no keys yet")))?;
        let signature_key = decode("signature_key", &keys.signature_key)?;
        if expected_signature_key.is_some_and(|k| k != signature_key.as_slice()) {
            return Err(ClientError::Protocol(
                "the device's key is not the one it shows: not approved".into(),
            ));
        }
        let link_key = decode("link_key", &keys.link_key)?;
        let history = if with_history {
            Some(self.export_history().await?)
        } else {
            None
        };
        let identity = self
            .engine
            .identity()
            .ok_or_else(|| e2ee(E2eeError::NoIdentity))?;
        let certificate = identity.certify(me, device, &signature_key).map_err(e2ee)?;
        let sealed = handover::seal(me, device, &link_key, identity, history).map_err(e2ee)?;
        api.set_device_credential(
            device,
            &SetDeviceCredential {
                signature_key: keys.signature_key.clone(),
                link_key: keys.link_key.clone(),
                certificate: Some(B64.encode(&certificate)),
            },
        )
        .await?;
        api.send_handover(
            device,
            &SendHandover {
                payload: B64.encode(sealed),
            },
        )
        .await?;
        let chats: Vec<ChatId> = self.engine.chats().collect();
        for chat in chats {
            self.reconcile(chat).await?;
        }
        Ok(())
    }

    /// Uploads this device's history of its encrypted chats, encrypted
    /// with a fresh key, for a handover.
    async fn export_history(&self) -> ClientResult<handover::HistoryRef> {
        let mut entries = Vec::new();
        for chat in self.positions.keys() {
            entries.extend(self.store.history(*chat)?);
        }
        let plain =
            serde_json::to_vec(&entries).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (media_id, key) = files::upload_encrypted(
            self.session.api(),
            plain.len() as u64,
            plain.as_slice(),
            None,
            &mut |_, _| {},
        )
        .await?;
        Ok(handover::HistoryRef { media_id, key })
    }

    /// Takes in a history handed over by another device of the user.
    async fn import_history(&self, history: &handover::HistoryRef) -> ClientResult<usize> {
        let mut plain = Vec::new();
        files::download_decrypted(
            self.session.api(),
            history.media_id,
            &history.key,
            &mut plain,
            &mut |_, _| {},
        )
        .await?;
        let entries: Vec<HistoryEntry> =
            serde_json::from_slice(&plain).map_err(|e| ClientError::Protocol(e.to_string()))?;
        for entry in &entries {
            self.store.put_history(entry)?;
        }
        Ok(entries.len())
    }

    /// Brings the chat's group in line with the server's membership: adds
    /// every certified device of every participant that has no leaf (with a
    /// claimed KeyPackage), removes every leaf that should not be there, in
    /// one commit, rebased and retried when another commit wins the epoch.
    ///
    /// # Errors
    /// The server refused the commit for good; the store failed.
    pub async fn reconcile(&mut self, chat: ChatId) -> ClientResult<()> {
        if !self.engine.chats().any(|c| c == chat) {
            return Ok(());
        }
        self.catch_up(chat).await?;
        let info = self.session.api().chat(chat).await?;
        let users: Vec<UserId> = info.participants.iter().map(|p| p.user_id).collect();
        let wanted = self.learn_all(&users).await?;
        let change = self.engine.reconcile(chat, &wanted).map_err(e2ee)?;
        if change.is_empty() {
            self.dirty.remove(&chat);
            return Ok(());
        }
        let mut add = Vec::new();
        if !change.add.is_empty() {
            let users: Vec<UserId> = change
                .add
                .iter()
                .map(|d| d.user)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let claimed = self
                .session
                .api()
                .claim_key_packages(&ClaimKeyPackages { user_ids: users })
                .await?;
            let wanted_devices: HashSet<DeviceRef> = change.add.iter().copied().collect();
            for user in claimed.users {
                for d in user.devices {
                    let device = DeviceRef {
                        user: user.user_id,
                        device: d.device_id,
                    };
                    if !wanted_devices.contains(&device) {
                        continue;
                    }
                    let bytes = decode("key_package", &d.key_package)?;
                    match self.engine.validate_key_package(
                        &self.trust,
                        device,
                        Suite::Classic,
                        &bytes,
                    ) {
                        Ok(valid) => add.push(valid),
                        Err(e) => self.pending.push_back(MessengerEvent::Refused {
                            chat_id: Some(chat),
                            reason: format!(
                                "KeyPackage of device {} of {}: {e}",
                                d.device_id, user.user_id
                            ),
                        }),
                    }
                }
            }
        }
        if add.is_empty() && change.remove.is_empty() {
            self.dirty.remove(&chat);
            return Ok(());
        }
        let intent = CommitIntent::Change {
            add,
            remove: change.remove,
        };
        self.commit(chat, intent).await?;
        self.dirty.remove(&chat);
        Ok(())
    }

    /// Rotates this device's keys in the chat's group (post-compromise security).
    ///
    /// # Errors
    /// The server refused the commit for good; the store failed.
    pub async fn self_update(&mut self, chat: ChatId) -> ClientResult<()> {
        self.catch_up(chat).await?;
        self.commit(chat, CommitIntent::SelfUpdate).await
    }

    /// Submits a commit for `intent`; on 409 `stale_epoch` processes the
    /// winner, rebases and tries again.
    async fn commit(&mut self, chat: ChatId, intent: CommitIntent) -> ClientResult<()> {
        let mut pending: Option<PendingCommit> =
            Some(self.engine.commit(chat, intent).map_err(e2ee)?);
        for _ in 0..COMMIT_ATTEMPTS {
            let Some(commit) = pending.take() else {
                return Ok(());
            };
            self.save()?;
            let body = SubmitCommit {
                commit: B64.encode(&commit.commit),
                welcome: commit.welcome.as_ref().map(|w| B64.encode(w)),
                welcome_devices: commit.welcome_for.iter().map(|d| d.device).collect(),
                client_message_id: Some(uuid::Uuid::now_v7().to_string()),
            };
            match self.session.api().submit_commit(chat, &body).await {
                Ok(_) => {
                    self.engine.commit_accepted(chat).map_err(e2ee)?;
                    self.save()?;
                    // Messages that reached the log just before our commit
                    // are still to be read (with the epoch they were sent
                    // in); our own commit in the log is skipped as ours.
                    self.catch_up(chat).await?;
                    return Ok(());
                }
                Err(ClientError::Api(e)) if e.code == ErrorCode::StaleEpoch => {
                    self.engine.commit_rejected(chat).map_err(e2ee)?;
                    self.catch_up(chat).await?;
                    pending = self.engine.rebase(chat, commit.intent).map_err(e2ee)?;
                }
                Err(e) => {
                    self.engine.commit_rejected(chat).map_err(e2ee)?;
                    self.save()?;
                    return Err(e);
                }
            }
        }
        Err(ClientError::Protocol(format!(
            "chat {chat}: {COMMIT_ATTEMPTS} commits in a row lost the race for the epoch"
        )))
    }

    fn advance(&mut self, chat: ChatId, seq: i64) {
        let pos = self.positions.entry(chat).or_default();
        *pos = (*pos).max(seq);
    }

    /// Processes, over REST, every entry of the chat's log after this
    /// device's position that it has not processed (after a Welcome, after
    /// a lost race, after a crash between the sync engine and the MLS state).
    async fn catch_up(&mut self, chat: ChatId) -> ClientResult<()> {
        let Some(&from) = self.positions.get(&chat) else {
            return Ok(());
        };
        let mut entries = Vec::new();
        let mut before = None;
        'pages: loop {
            let page = self
                .session
                .api()
                .history(
                    chat,
                    HistoryQuery {
                        page: None,
                        limit: Some(CATCH_UP_PAGE),
                        before_seq: before,
                    },
                )
                .await?;
            let oldest = page.messages.last().map(|m| m.seq);
            for m in page.messages {
                if m.seq <= from {
                    break 'pages;
                }
                entries.push(m);
            }
            match oldest {
                Some(seq) if page.has_more && seq > from + 1 => before = Some(seq),
                _ => break,
            }
        }
        entries.sort_by_key(|m| m.seq);
        for m in entries {
            self.on_entry(m).await?;
        }
        Ok(())
    }

    // === Messages ===

    /// Sends a text message, encrypted for the chat's group.
    ///
    /// # Errors
    /// Not a member of the chat's group; the store failed.
    pub async fn send_text(&mut self, chat: ChatId, text: &str) -> ClientResult<String> {
        self.send_reply(chat, text, None).await
    }

    /// Sends a text message answering `reply_to` (one of the chat's
    /// messages; `None`: answering none), encrypted for the chat's group.
    /// The answered message's id travels inside the encrypted payload: the
    /// server does not learn what answers what.
    ///
    /// # Errors
    /// Not a member of the chat's group; the store failed.
    pub async fn send_reply(
        &mut self,
        chat: ChatId,
        text: &str,
        reply_to: Option<MessageId>,
    ) -> ClientResult<String> {
        let mut payload = Payload::new(Body::Text {
            text: text.to_owned(),
        });
        payload.reply_to = reply_to;
        self.send_payload(chat, payload, MessageType::Text, None)
            .await
    }

    /// Encrypts a file with a fresh key, uploads it as an `encrypted` blob
    /// and sends its key and hash inside the MLS message.
    ///
    /// # Errors
    /// The upload was refused; not a member; the store failed.
    pub async fn send_file(
        &mut self,
        chat: ChatId,
        name: &str,
        mime: &str,
        bytes: &[u8],
    ) -> ClientResult<String> {
        self.send_file_from(chat, name, mime, bytes.len() as u64, bytes, &mut |_, _| {})
            .await
    }

    /// [`Messenger::send_file`] for a file of `size` bytes read from
    /// `reader` as it is encrypted and uploaded, in a few megabytes of
    /// memory whatever its size (`files`); `progress` hears the bytes the
    /// server holds and the total.
    ///
    /// # Errors
    /// The reader gave more or fewer than `size` bytes, the upload was
    /// refused or failed, not a member, the store failed.
    pub async fn send_file_from(
        &mut self,
        chat: ChatId,
        name: &str,
        mime: &str,
        size: u64,
        reader: impl AsyncRead + Unpin,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> ClientResult<String> {
        let (media_id, key) =
            files::upload_encrypted(self.session.api(), size, reader, Some(chat), progress).await?;
        let payload = Payload::new(Body::File {
            media_id,
            key,
            name: name.to_owned(),
            mime: mime.to_owned(),
        });
        self.send_payload(chat, payload, MessageType::File, Some(media_id))
            .await
    }

    /// Downloads and decrypts a file received in `body`, into memory.
    ///
    /// # Errors
    /// Not a file, the download failed, or it does not decrypt (tampered,
    /// truncated).
    pub async fn fetch_file(&self, body: &Body) -> ClientResult<ReceivedFile> {
        let Body::File { name, mime, .. } = body else {
            return Err(ClientError::Protocol("not a file message".into()));
        };
        let mut bytes = Vec::new();
        self.fetch_file_to(body, &mut bytes, &mut |_, _| {}).await?;
        Ok(ReceivedFile {
            name: name.clone(),
            mime: mime.clone(),
            bytes,
        })
    }

    /// Downloads and decrypts a file received in `body` into `writer`, in
    /// ranges, each chunk written once it authenticates; `progress` hears
    /// the bytes written and the total. Returns the size. On an error, what
    /// was written must be discarded.
    ///
    /// # Errors
    /// Not a file, the download failed, it does not decrypt, or the writer
    /// failed.
    pub async fn fetch_file_to(
        &self,
        body: &Body,
        writer: impl AsyncWrite + Unpin,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> ClientResult<u64> {
        let Body::File { media_id, key, .. } = body else {
            return Err(ClientError::Protocol("not a file message".into()));
        };
        files::download_decrypted(self.session.api(), *media_id, key, writer, progress).await
    }

    async fn send_payload(
        &mut self,
        chat: ChatId,
        payload: Payload,
        message_type: MessageType,
        media_id: Option<MediaId>,
    ) -> ClientResult<String> {
        // Read the log up to its head first: a commit this device has not
        // processed yet would leave the message in an epoch that devices
        // added since cannot read.
        let head = self.session.api().chat(chat).await?;
        if self
            .positions
            .get(&chat)
            .is_some_and(|p| *p < head.last_seq)
        {
            self.catch_up(chat).await?;
        }
        if self.dirty.contains(&chat) {
            self.reconcile(chat).await?;
        }
        let wire = self.engine.encrypt(chat, &payload.encode()).map_err(e2ee)?;
        // The ratchet moved: saved before the ciphertext leaves.
        self.save()?;
        let id = uuid::Uuid::now_v7().to_string();
        self.sending.insert(id.clone(), (chat, payload));
        self.connection
            .send(SendMessage {
                chat_id: chat,
                content: None,
                ciphertext: Some(B64.encode(wire)),
                message_type,
                timestamp: None,
                client_message_id: Some(id.clone()),
                reply_to: None,
                media_id: media_id.map(|m| m.to_string()),
            })
            .await?;
        Ok(id)
    }

    /// Marks the chat read up to `seq`.
    pub async fn read(&mut self, chat: ChatId, seq: i64) {
        self.connection.read(chat, seq).await;
    }

    /// Sends "typing" to the chat (ephemeral; dropped while offline).
    pub async fn typing(&mut self, chat: ChatId) {
        self.connection.typing(chat).await;
    }

    /// Whether the socket is open now.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.connection.is_connected()
    }

    /// Sends a text to a plaintext chat (one not end-to-end encrypted),
    /// through the outbox.
    ///
    /// # Errors
    /// The local store failed.
    pub async fn send_plain_text(&mut self, chat: ChatId, text: &str) -> ClientResult<String> {
        self.send_plain_reply(chat, text, None).await
    }

    /// Sends a text to a plaintext chat answering `reply_to` (the server's
    /// `reply_to`), through the outbox.
    ///
    /// # Errors
    /// The local store failed.
    pub async fn send_plain_reply(
        &mut self,
        chat: ChatId,
        text: &str,
        reply_to: Option<MessageId>,
    ) -> ClientResult<String> {
        self.connection
            .send(crate::session::plain_message(
                chat,
                text,
                MessageType::Text,
                reply_to,
                None,
            ))
            .await
    }

    /// Sends a file to a plaintext chat (one not end-to-end encrypted): the
    /// `size` bytes of `reader` are uploaded as they are (tus, in pieces),
    /// declared an image or video by `mime` and otherwise a file, then sent
    /// as a message whose text is the file's name. Returns the message's
    /// `client_message_id` and the upload's id (the file can be fetched
    /// with it at once, and its thumbnail once the server has made it).
    ///
    /// # Errors
    /// The upload was refused (too large, not what `mime` says) or failed,
    /// or the store failed.
    pub async fn send_plain_file_from(
        &mut self,
        chat: ChatId,
        name: &str,
        mime: &str,
        size: u64,
        reader: impl AsyncRead + Unpin,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> ClientResult<(String, MediaId)> {
        let (kind, message_type) = if mime.starts_with("image/") {
            (natter_proto::media::MediaKind::Image, MessageType::Image)
        } else if mime.starts_with("video/") {
            (natter_proto::media::MediaKind::Video, MessageType::Video)
        } else {
            (natter_proto::media::MediaKind::File, MessageType::File)
        };
        let media_id = files::upload_plain(
            self.session.api(),
            size,
            reader,
            kind,
            Some(chat),
            name,
            progress,
        )
        .await?;
        let cmid = self
            .connection
            .send(crate::session::plain_message(
                chat,
                name,
                message_type,
                None,
                Some(media_id),
            ))
            .await?;
        Ok((cmid, media_id))
    }

    /// Downloads a plaintext chat's attachment into `writer`, in ranges;
    /// returns its size. On an error, what was written must be discarded.
    ///
    /// # Errors
    /// Not visible, the download failed, or the writer failed.
    pub async fn fetch_plain_file_to(
        &self,
        media: MediaId,
        writer: impl AsyncWrite + Unpin,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> ClientResult<u64> {
        files::download_plain(self.session.api(), media, writer, progress).await
    }

    /// Whether the chat is end-to-end encrypted (asked of the server once).
    ///
    /// # Errors
    /// The server could not be reached.
    pub async fn chat_is_encrypted(&mut self, chat: ChatId) -> ClientResult<bool> {
        self.is_encrypted(chat).await
    }

    /// Sends a new text for an earlier message of this user, encrypted.
    ///
    /// # Errors
    /// Not a member of the chat's group; the store failed.
    pub async fn send_edit(
        &mut self,
        chat: ChatId,
        target: MessageId,
        text: &str,
    ) -> ClientResult<String> {
        let payload = Payload::new(Body::Edit {
            target,
            text: text.to_owned(),
        });
        self.send_payload(chat, payload, MessageType::Text, None)
            .await
    }

    /// Deletes an earlier message of this user for everyone, encrypted.
    ///
    /// # Errors
    /// Not a member of the chat's group; the store failed.
    pub async fn send_delete(&mut self, chat: ChatId, target: MessageId) -> ClientResult<String> {
        let payload = Payload::new(Body::Delete { target });
        self.send_payload(chat, payload, MessageType::Text, None)
            .await
    }

    /// Leaves a group chat and drops its MLS group.
    ///
    /// # Errors
    /// The server refused; the store failed.
    pub async fn leave(&mut self, chat: ChatId) -> ClientResult<()> {
        self.session
            .api()
            .remove_participant(chat, self.session.user_id())
            .await?;
        if self.engine.chats().any(|c| c == chat) {
            self.forget(chat)?;
        }
        Ok(())
    }

    /// The next event of the sync engine, not yet processed: the
    /// cancel-safe half of [`Messenger::next_event`], for a caller that
    /// waits for it in a `select!` alongside other work. Hand it to
    /// [`Messenger::process`], then drain [`Messenger::take_event`].
    ///
    /// # Errors
    /// The device was revoked, or the local store failed.
    pub async fn receive(&mut self) -> ClientResult<Event> {
        self.connection.next_event().await
    }

    /// Processes an event from [`Messenger::receive`] (decrypts, joins,
    /// catches up); what it yields waits in [`Messenger::take_event`].
    /// Not cancel-safe: run it to completion.
    ///
    /// # Errors
    /// The server or the local store failed.
    pub async fn process(&mut self, event: Event) -> ClientResult<()> {
        self.on_event(event).await?;
        self.settle().await
    }

    /// Commits the adds waiting in `eager` (see there).
    async fn settle(&mut self) -> ClientResult<()> {
        while let Some(chat) = self.eager.iter().next().copied() {
            self.eager.remove(&chat);
            if self.dirty.contains(&chat) {
                self.reconcile(chat).await?;
            }
        }
        Ok(())
    }

    /// The next processed event waiting, if any.
    pub fn take_event(&mut self) -> Option<MessengerEvent> {
        self.pending.pop_front()
    }

    /// The next event: connects, syncs, decrypts.
    ///
    /// # Errors
    /// The device was revoked, or the local store failed.
    pub async fn next_event(&mut self) -> ClientResult<MessengerEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let event = self.connection.next_event().await?;
            self.on_event(event).await?;
            self.settle().await?;
        }
    }

    async fn on_event(&mut self, event: Event) -> ClientResult<()> {
        match event {
            Event::Connected { .. } => {
                self.pending.push_back(MessengerEvent::Connected);
                for item in self.session.api().inbox().await?.items {
                    self.on_inbox(item).await?;
                }
                // `key_packages_low` is live only: check the stock on each connect.
                let stock = self.session.api().key_package_stock().await?;
                if stock.available < stock.low_water {
                    self.replenish(!stock.last_resort).await?;
                }
            }
            Event::Disconnected { reason, .. } => {
                self.pending
                    .push_back(MessengerEvent::Disconnected { reason });
            }
            Event::Message { message, .. }
            | Event::ChatUpdated { message, .. }
            | Event::MessageDeleted { message, .. } => self.on_entry(message).await?,
            Event::Inbox(item) => self.on_inbox(item).await?,
            Event::KeyPackagesLow { .. } => self.replenish(false).await?,
            Event::SyncDone { chats } => {
                // Entries the sync engine passed while this device could not
                // yet process them (before a Welcome, or before a crash).
                let behind: Vec<ChatId> = chats
                    .iter()
                    .filter(|c| self.positions.get(&c.chat_id).is_some_and(|p| *p < c.seq))
                    .map(|c| c.chat_id)
                    .collect();
                for chat in behind {
                    self.catch_up(chat).await?;
                }
            }
            Event::TooLong { chat_id, .. } => self.catch_up(chat_id).await?,
            Event::Sent {
                client_message_id,
                message,
            } => {
                if let Some((chat, payload)) = self.sending.remove(&client_message_id) {
                    self.keep(chat, &message, &payload)?;
                }
                self.pending.push_back(MessengerEvent::Sent {
                    client_message_id,
                    seq: message.seq,
                    message_id: message.id,
                });
            }
            Event::SendFailed {
                client_message_id,
                error,
            } => {
                self.sending.remove(&client_message_id);
                self.pending.push_back(MessengerEvent::SendFailed {
                    client_message_id,
                    code: error.code,
                });
            }
            Event::Receipt {
                chat_id,
                delivered_seq,
                read_seq,
            } => self.pending.push_back(MessengerEvent::Receipt {
                chat_id,
                delivered_seq,
                read_seq,
            }),
            Event::Typing { chat_id, user_id } => self
                .pending
                .push_back(MessengerEvent::Typing { chat_id, user_id }),
            Event::Presence {
                user_id,
                status,
                last_seen,
            } => self.pending.push_back(MessengerEvent::Presence {
                user_id,
                status,
                last_seen,
            }),
            _ => {}
        }
        Ok(())
    }

    /// Keeps a message in the local history (searchable); a file with its
    /// body, so it can be fetched again after a restart.
    fn keep(&self, chat: ChatId, message: &Message, payload: &Payload) -> ClientResult<()> {
        let entry = |text: &str, file: Option<Body>| HistoryEntry {
            chat_id: chat,
            seq: message.seq,
            message_id: message.id,
            sender_id: message.sender_id,
            sent_at: natter_proto::timefmt::format(message.timestamp).unwrap_or_default(),
            text: text.to_owned(),
            reply_to: payload.reply_to,
            file,
        };
        match &payload.body {
            Body::Text { text } => self.store.put_history(&entry(text, None))?,
            file @ Body::File { name, .. } => {
                self.store.put_history(&entry(name, Some(file.clone())))?;
            }
            // Only a message's sender may change it, and only in its chat.
            Body::Edit { target, .. } | Body::Delete { target }
                if !self.sent_by(chat, *target, message.sender_id)? => {}
            Body::Edit { target, text } => self.store.update_history(*target, Some(text))?,
            Body::Delete { target } => self.store.update_history(*target, None)?,
        }
        Ok(())
    }

    /// Whether `target` is a message of `chat`'s local history sent by `sender`.
    fn sent_by(&self, chat: ChatId, target: MessageId, sender: UserId) -> ClientResult<bool> {
        Ok(self
            .store
            .history(chat)?
            .iter()
            .any(|e| e.message_id == target && e.sender_id == sender))
    }

    async fn is_encrypted(&mut self, chat: ChatId) -> ClientResult<bool> {
        if let Some(e) = self.encrypted.get(&chat) {
            return Ok(*e);
        }
        let encrypted = match self.session.api().chat(chat).await {
            Ok(c) => c.encrypted,
            // A chat we left: whatever it was, nothing more to read.
            Err(ClientError::Api(e)) if e.code == ErrorCode::ChatNotFound => true,
            Err(e) => return Err(e),
        };
        self.encrypted.insert(chat, encrypted);
        Ok(encrypted)
    }

    /// One entry of a chat's log, in order.
    async fn on_entry(&mut self, message: Message) -> ClientResult<()> {
        let chat = message.chat_id;
        if !self.is_encrypted(chat).await? {
            if let Some(event) = message.event.clone() {
                self.pending.push_back(MessengerEvent::ChatChanged {
                    chat_id: chat,
                    event,
                });
            } else if let Some(text) = message.content.clone() {
                self.pending
                    .push_back(MessengerEvent::Message(Box::new(ChatMessage {
                        chat_id: chat,
                        seq: message.seq,
                        message_id: message.id,
                        sender: message.sender_id,
                        sender_device: message.sender_device_id,
                        body: Body::Text { text },
                        reply_to: message.reply_to,
                        media_id: message.media_id.as_deref().and_then(|m| m.parse().ok()),
                    })));
            }
            return Ok(());
        }
        // Not in the group (yet): the Welcome says where to start.
        let Some(&position) = self.positions.get(&chat) else {
            if let Some(event) = message.event {
                self.pending.push_back(MessengerEvent::ChatChanged {
                    chat_id: chat,
                    event,
                });
            }
            return Ok(());
        };
        if message.seq <= position {
            return Ok(());
        }
        if let Some(event) = message.event.clone() {
            if matches!(
                event,
                ChatEvent::MemberAdded { .. }
                    | ChatEvent::MemberRemoved { .. }
                    | ChatEvent::MemberLeft { .. }
                    | ChatEvent::DevicesChanged { .. }
            ) {
                self.dirty.insert(chat);
            }
            // The commit that adds someone's devices comes after this entry:
            // their certificates must be known by then.
            // An invitation of this user's, accepted: the server made the
            // add in the inviter's name, and the inviter's devices commit it
            // (the invited user's devices cannot, not being in the group).
            if let ChatEvent::MemberAdded { .. } = &event
                && message.sender_id == self.session.user_id()
                && message.sender_device_id != Some(self.session.device_id())
            {
                self.eager.insert(chat);
            }
            if let ChatEvent::MemberAdded { user_id } | ChatEvent::DevicesChanged { user_id } =
                &event
            {
                match self.learn(*user_id).await {
                    Ok(_) => {}
                    Err(ClientError::Api(e)) if e.code == ErrorCode::UserNotFound => {}
                    Err(e) => return Err(e),
                }
            }
            if let ChatEvent::MemberRemoved { user_id } | ChatEvent::MemberLeft { user_id } = &event
                && *user_id == self.session.user_id()
            {
                self.forget(chat)?;
            }
            self.advance(chat, message.seq);
            self.save()?;
            self.pending.push_back(MessengerEvent::ChatChanged {
                chat_id: chat,
                event,
            });
            return Ok(());
        }
        if message.sender_device_id == Some(self.session.device_id()) {
            // Our own message or commit: a device cannot decrypt what it
            // sent (its history has it from the send; its commits were
            // merged when the server took them).
            self.advance(chat, message.seq);
            return self.save();
        }
        let Some(ciphertext) = message.ciphertext.as_deref() else {
            // A deleted message: nothing left to decrypt.
            self.advance(chat, message.seq);
            self.save()?;
            return Ok(());
        };
        let wire = decode("ciphertext", ciphertext)?;
        let outcome = self.engine.process(&self.trust, chat, &wire);
        self.advance(chat, message.seq);
        match outcome {
            Ok(GroupEvent::Application { sender, plaintext }) => {
                match Payload::decode(&plaintext) {
                    Ok(payload) => {
                        self.keep(chat, &message, &payload)?;
                        self.pending
                            .push_back(MessengerEvent::Message(Box::new(ChatMessage {
                                chat_id: chat,
                                seq: message.seq,
                                message_id: message.id,
                                sender: sender.user,
                                sender_device: Some(sender.device),
                                reply_to: payload.reply_to,
                                body: payload.body,
                                media_id: None,
                            })));
                    }
                    Err(e) => self.pending.push_back(MessengerEvent::Undecryptable {
                        chat_id: chat,
                        seq: message.seq,
                        reason: e.to_string(),
                    }),
                }
            }
            Ok(GroupEvent::Commit(_) | GroupEvent::AlreadyApplied | GroupEvent::Ignored) => {}
            Ok(GroupEvent::RemovedFromGroup { .. }) => {
                self.forget(chat)?;
                self.pending
                    .push_back(MessengerEvent::Removed { chat_id: chat });
            }
            Err(e @ (E2eeError::Uncertified { .. } | E2eeError::Forbidden(_))) => {
                self.pending.push_back(MessengerEvent::Refused {
                    chat_id: Some(chat),
                    reason: e.to_string(),
                });
            }
            Err(e) => self.pending.push_back(MessengerEvent::Undecryptable {
                chat_id: chat,
                seq: message.seq,
                reason: e.to_string(),
            }),
        }
        self.save()
    }

    fn forget(&mut self, chat: ChatId) -> ClientResult<()> {
        self.engine.forget_group(chat).map_err(e2ee)?;
        self.positions.remove(&chat);
        self.dirty.remove(&chat);
        self.save()
    }

    /// A payload from this device's inbox: a Welcome (join the chat's
    /// group, then process its log from the commit on) or a handover.
    async fn on_inbox(&mut self, item: natter_proto::e2ee::InboxItem) -> ClientResult<()> {
        use natter_proto::e2ee::InboxKind;
        let payload = decode("payload", &item.payload)?;
        match item.kind {
            InboxKind::Welcome => {
                let (Some(chat), Some(seq)) = (item.chat_id, item.seq) else {
                    return Err(ClientError::Protocol("a Welcome without its chat".into()));
                };
                if self.positions.contains_key(&chat) {
                    // Joined already (the item came again before its ack).
                    self.session.api().ack_inbox(item.id).await?;
                    return Ok(());
                }
                // Every member must be certified: learn the participants first.
                if let Ok(info) = self.session.api().chat(chat).await {
                    let users: Vec<UserId> = info.participants.iter().map(|p| p.user_id).collect();
                    self.learn_all(&users).await?;
                }
                match self.engine.join(&self.trust, &payload) {
                    Ok(joined) => {
                        self.encrypted.insert(joined, true);
                        self.positions.insert(joined, seq);
                        self.save()?;
                        self.session.api().ack_inbox(item.id).await?;
                        self.pending
                            .push_back(MessengerEvent::Joined { chat_id: joined });
                        self.catch_up(joined).await?;
                    }
                    Err(e) => {
                        self.pending.push_back(MessengerEvent::Refused {
                            chat_id: Some(chat),
                            reason: format!("Welcome: {e}"),
                        });
                        // A Welcome into a group with an uncertified member
                        // is refused for good.
                        self.session.api().ack_inbox(item.id).await?;
                    }
                }
            }
            InboxKind::Handover => {
                match handover::open(&self.engine, &payload) {
                    Ok(opened) => {
                        self.trust
                            .observe_identity(self.session.user_id(), opened.identity.public_key());
                        let history = opened.history.clone();
                        self.engine.set_identity(opened.identity);
                        self.save()?;
                        let imported = match &history {
                            Some(h) => self.import_history(h).await?,
                            None => 0,
                        };
                        self.pending.push_back(MessengerEvent::Linked { imported });
                    }
                    Err(e) => self.pending.push_back(MessengerEvent::Refused {
                        chat_id: None,
                        reason: format!("handover: {e}"),
                    }),
                }
                self.session.api().ack_inbox(item.id).await?;
            }
        }
        Ok(())
    }
}
