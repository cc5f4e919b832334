//! One device's MLS engine: its keys, its KeyPackages, its groups (one per
//! encrypted chat) and the rules it applies to everything that comes in.
//! Every operation takes and returns wire bytes (`MLSMessage`s); sending
//! them is the SDK's business.
//!
//! The rules that make "the server cannot add a reader" hold are here: a
//! claimed KeyPackage, every member of a group joined from a Welcome, and
//! every leaf a commit adds or changes must carry a signature key certified
//! by the identity key pinned for its user ([`TrustStore`]). A commit that
//! breaks the rule is staged, checked and dropped, never merged.

use std::collections::{HashMap, HashSet};

use natter_proto::e2ee::credential_identity;
use natter_proto::{ChatId, DeviceId, UserId};
use openmls::group::{
    MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
    StagedCommit, StagedWelcome,
};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Capabilities, Credential, CredentialWithKey, ExtensionType, GroupId,
    KeyPackage, LeafNode, LeafNodeIndex, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    ProcessedMessageContent, Proposal, ProtocolVersion, SenderRatchetConfiguration,
};
use openmls_traits::OpenMlsProvider as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::identity::{DeviceKeys, Identity};
use super::provider::EngineProvider;
use super::trust::TrustStore;
use super::{E2eeError, Suite};

/// Messages padded to a multiple of this many bytes (metadata: length).
const PADDING_BYTES: usize = 64;
/// How far out of order an application message may arrive within an epoch
/// (`out_of_order_tolerance`) and how many generations ahead a sender may
/// jump (`maximum_forward_distance`).
const RATCHET_OUT_OF_ORDER: u32 = 20;
const RATCHET_MAX_FORWARD: u32 = 1000;

/// One device of one user: a leaf of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceRef {
    /// The user.
    pub user: UserId,
    /// Their device.
    pub device: DeviceId,
}

/// A device the server says belongs in a chat, with the signature key its
/// certificate covers (checked by the SDK into the trust store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedDevice {
    /// Which device.
    pub device: DeviceRef,
    /// Its MLS signature key.
    pub signature_key: Vec<u8>,
}

/// The KeyPackages a device publishes (`POST /devices/me/key-packages`).
#[derive(Debug, Clone)]
pub struct PublishedKeyPackages {
    /// One-time packages, each an `MLSMessage`.
    pub one_time: Vec<Vec<u8>>,
    /// The last-resort package (kept by the server, reusable).
    pub last_resort: Vec<u8>,
}

/// A claimed KeyPackage that passed every check: it may be added.
#[derive(Debug, Clone)]
pub struct ValidatedKeyPackage {
    /// Whose.
    pub device: DeviceRef,
    /// The package.
    key_package: KeyPackage,
}

/// What a commit should achieve. Kept by the SDK while the commit is in
/// flight, so that after a 409 `stale_epoch` the same intent can be
/// rebuilt on top of the winning commit ([`Engine::rebase`]).
#[derive(Debug, Clone)]
pub enum CommitIntent {
    /// Add and remove devices (a reconciliation).
    Change {
        /// Devices to add, with their validated packages.
        add: Vec<ValidatedKeyPackage>,
        /// Devices whose leaves to remove.
        remove: Vec<DeviceRef>,
    },
    /// Rotate this device's leaf and path (post-compromise security).
    SelfUpdate,
}

/// A commit waiting for the server's verdict.
#[derive(Debug, Clone)]
pub struct PendingCommit {
    /// The commit (`MLSMessage`, a private message) for `POST /chats/{id}/commits`.
    pub commit: Vec<u8>,
    /// The Welcome for the added devices, if any.
    pub welcome: Option<Vec<u8>>,
    /// Whose inboxes the Welcome goes to.
    pub welcome_for: Vec<DeviceRef>,
    /// The epoch the commit is for (the group's current epoch).
    pub epoch: u64,
    /// What it does, to rebuild after a lost race.
    pub intent: CommitIntent,
}

/// The difference between a group's leaves and the devices that belong in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Devices to add (claim a KeyPackage for each).
    pub add: Vec<DeviceRef>,
    /// Leaves to remove (departed users, revoked devices, replaced keys).
    pub remove: Vec<DeviceRef>,
}

impl Reconciliation {
    /// Nothing to do.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// What a commit changed, as every member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    /// Who committed.
    pub committer: DeviceRef,
    /// Devices added.
    pub added: Vec<DeviceRef>,
    /// Devices removed.
    pub removed: Vec<DeviceRef>,
    /// The group's epoch after the commit.
    pub epoch: u64,
}

/// The outcome of processing one incoming message. Its `Debug` shows an
/// application message's length, never its content (logs carry no content).
#[derive(Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// An application message (a [`super::payload::Payload`] inside).
    Application {
        /// Who sent it.
        sender: DeviceRef,
        /// The decrypted bytes.
        plaintext: Vec<u8>,
    },
    /// A commit by another member, checked and merged.
    Commit(CommitSummary),
    /// A commit removed this device: the group is gone from the engine.
    RemovedFromGroup {
        /// The device that removed us.
        by: DeviceRef,
    },
    /// Our own message or commit coming back from the log, or a handshake
    /// message for an epoch already past (our commit, merged on acceptance).
    AlreadyApplied,
    /// A standalone proposal: Natter clients send none, so it is ignored.
    Ignored,
}

impl std::fmt::Debug for GroupEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Application { sender, plaintext } => f
                .debug_struct("Application")
                .field("sender", sender)
                .field("bytes", &plaintext.len())
                .finish(),
            Self::Commit(summary) => f.debug_tuple("Commit").field(summary).finish(),
            Self::RemovedFromGroup { by } => {
                f.debug_struct("RemovedFromGroup").field("by", by).finish()
            }
            Self::AlreadyApplied => f.write_str("AlreadyApplied"),
            Self::Ignored => f.write_str("Ignored"),
        }
    }
}

/// The engine of one device.
pub struct Engine {
    /// This device's user.
    user: UserId,
    /// This device.
    device: DeviceId,
    /// Its MLS signature key and link key.
    keys: DeviceKeys,
    /// The user's identity key, on devices that hold it.
    identity: Option<Identity>,
    /// Crypto and the MLS state store.
    provider: EngineProvider,
    /// The groups this device is in, by chat.
    groups: HashMap<ChatId, MlsGroup>,
}

impl std::fmt::Debug for Engine {
    /// Names only: the state holds every secret of the device.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("user", &self.user)
            .field("device", &self.device)
            .field("holds_identity", &self.identity.is_some())
            .field("chats", &self.groups.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What a snapshot holds besides the MLS store.
#[derive(Serialize, Deserialize)]
struct SnapshotMeta {
    user: UserId,
    device: DeviceId,
    keys: DeviceKeys,
    identity: Option<Identity>,
    groups: Vec<ChatId>,
}

/// Leading bytes of a snapshot, with the format version.
const SNAPSHOT_MAGIC: &[u8; 6] = b"NMLS\x00\x01";

impl Engine {
    /// A new device with fresh keys. `identity` is the user's identity key
    /// on the user's first device (or after a handover), `None` on a device
    /// that waits to be linked.
    ///
    /// # Errors
    /// [`E2eeError::Crypto`] if key generation fails.
    pub fn new(
        user: UserId,
        device: DeviceId,
        identity: Option<Identity>,
    ) -> Result<Self, E2eeError> {
        let provider = EngineProvider::default();
        let keys = DeviceKeys::generate(provider.crypto())?;
        Ok(Self {
            user,
            device,
            keys,
            identity,
            provider,
            groups: HashMap::new(),
        })
    }

    /// This device.
    #[must_use]
    pub fn device_ref(&self) -> DeviceRef {
        DeviceRef {
            user: self.user,
            device: self.device,
        }
    }

    /// The device's MLS signature public key (`PUT /devices/me/credential`).
    #[must_use]
    pub fn signature_key(&self) -> &[u8] {
        self.keys.signer.public()
    }

    /// The device's HPKE link public key (`PUT /devices/me/credential`).
    #[must_use]
    pub fn link_key(&self) -> &[u8] {
        &self.keys.link_public
    }

    /// The user's identity key, if this device holds it.
    #[must_use]
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Installs the identity key received in a handover.
    pub fn set_identity(&mut self, identity: Identity) {
        self.identity = Some(identity);
    }

    /// The link private key (opening handovers).
    pub(crate) fn link_private(&self) -> &[u8] {
        &self.keys.link_private
    }

    /// The provider (crypto for handovers).
    pub(crate) fn provider(&self) -> &EngineProvider {
        &self.provider
    }

    /// Signs this device's own certificate (the first device of a user).
    ///
    /// # Errors
    /// [`E2eeError::NoIdentity`] if this device does not hold the identity key.
    pub fn self_certificate(&self) -> Result<Vec<u8>, E2eeError> {
        let identity = self.identity.as_ref().ok_or(E2eeError::NoIdentity)?;
        identity.certify(self.user, self.device, self.signature_key())
    }

    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(
                credential_identity(self.user, self.device).into_bytes(),
            )
            .into(),
            signature_key: self.keys.signer.public().into(),
        }
    }

    // === KeyPackages ===

    /// `n` one-time KeyPackages and one last-resort package for `suite`,
    /// each serialized as an `MLSMessage`. Their private keys stay in the
    /// engine's store until a Welcome uses them.
    ///
    /// # Errors
    /// [`E2eeError::Mls`] if OpenMLS refuses to build a package.
    pub fn key_packages(&self, suite: Suite, n: usize) -> Result<PublishedKeyPackages, E2eeError> {
        let mut one_time = Vec::with_capacity(n);
        for _ in 0..n {
            one_time.push(self.key_package(suite, false)?);
        }
        let last_resort = self.key_package(suite, true)?;
        Ok(PublishedKeyPackages {
            one_time,
            last_resort,
        })
    }

    fn key_package(&self, suite: Suite, last_resort: bool) -> Result<Vec<u8>, E2eeError> {
        let mut builder = KeyPackage::builder();
        if last_resort {
            // The extension must be listed in the leaf's capabilities, or
            // validation refuses the package.
            builder = builder.mark_as_last_resort().leaf_node_capabilities(
                Capabilities::builder()
                    .extensions(vec![ExtensionType::LastResort])
                    .build(),
            );
        }
        let bundle = builder
            .build(
                suite.ciphersuite(),
                &self.provider,
                &self.keys.signer,
                self.credential(),
            )
            .map_err(E2eeError::mls)?;
        let message = MlsMessageOut::from(bundle.key_package().clone());
        message.tls_serialize_detached().map_err(E2eeError::mls)
    }

    /// Checks a claimed KeyPackage for `device`: it parses, its signatures
    /// and lifetime are valid (OpenMLS), it is for `suite`, its credential
    /// names `device`, and its signature key is certified by the identity
    /// key pinned for the user.
    ///
    /// # Errors
    /// [`E2eeError::BadKeyPackage`], [`E2eeError::WrongSuite`],
    /// [`E2eeError::CredentialMismatch`] or [`E2eeError::Uncertified`].
    pub fn validate_key_package(
        &self,
        trust: &impl TrustStore,
        device: DeviceRef,
        suite: Suite,
        bytes: &[u8],
    ) -> Result<ValidatedKeyPackage, E2eeError> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| E2eeError::BadKeyPackage(e.to_string()))?;
        let MlsMessageBodyIn::KeyPackage(package) = message.extract() else {
            return Err(E2eeError::BadKeyPackage("not a KeyPackage".into()));
        };
        let key_package = package
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(|e| E2eeError::BadKeyPackage(e.to_string()))?;
        if key_package.ciphersuite() != suite.ciphersuite() {
            return Err(E2eeError::WrongSuite);
        }
        let leaf = key_package.leaf_node();
        let named = parse_identity(leaf.credential())?;
        if named != device {
            return Err(E2eeError::CredentialMismatch);
        }
        check_leaf(trust, leaf)?;
        Ok(ValidatedKeyPackage {
            device,
            key_package,
        })
    }

    // === Groups ===

    fn create_config(suite: Suite) -> MlsGroupCreateConfig {
        MlsGroupCreateConfig::builder()
            .ciphersuite(suite.ciphersuite())
            .use_ratchet_tree_extension(true)
            .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(natter_proto::e2ee::PAST_EPOCHS as usize)
            .padding_size(PADDING_BYTES)
            .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                RATCHET_OUT_OF_ORDER,
                RATCHET_MAX_FORWARD,
            ))
            .build()
    }

    fn join_config() -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(natter_proto::e2ee::PAST_EPOCHS as usize)
            .padding_size(PADDING_BYTES)
            .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                RATCHET_OUT_OF_ORDER,
                RATCHET_MAX_FORWARD,
            ))
            .build()
    }

    /// Creates the group of `chat` with this device as its only member.
    ///
    /// # Errors
    /// [`E2eeError::GroupExists`], or [`E2eeError::Mls`].
    pub fn create_group(&mut self, chat: ChatId, suite: Suite) -> Result<(), E2eeError> {
        if self.groups.contains_key(&chat) {
            return Err(E2eeError::GroupExists);
        }
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.keys.signer,
            &Self::create_config(suite),
            GroupId::from_slice(chat.as_uuid().as_bytes()),
            self.credential(),
        )
        .map_err(E2eeError::mls)?;
        self.groups.insert(chat, group);
        Ok(())
    }

    /// The chats this device has a group for.
    pub fn chats(&self) -> impl Iterator<Item = ChatId> + '_ {
        self.groups.keys().copied()
    }

    fn group(&self, chat: ChatId) -> Result<&MlsGroup, E2eeError> {
        self.groups.get(&chat).ok_or(E2eeError::NoGroup)
    }

    /// The group's current epoch.
    ///
    /// # Errors
    /// [`E2eeError::NoGroup`].
    pub fn epoch(&self, chat: ChatId) -> Result<u64, E2eeError> {
        Ok(self.group(chat)?.epoch().as_u64())
    }

    /// The group's epoch authenticator (equal on every member in an epoch).
    ///
    /// # Errors
    /// [`E2eeError::NoGroup`].
    pub fn epoch_authenticator(&self, chat: ChatId) -> Result<Vec<u8>, E2eeError> {
        Ok(self.group(chat)?.epoch_authenticator().as_slice().to_vec())
    }

    /// The group's leaves, with their signature keys.
    ///
    /// # Errors
    /// [`E2eeError::NoGroup`], [`E2eeError::BadCredential`].
    pub fn members(&self, chat: ChatId) -> Result<Vec<CertifiedDevice>, E2eeError> {
        self.group(chat)?
            .members()
            .map(|m| {
                Ok(CertifiedDevice {
                    device: parse_identity(&m.credential)?,
                    signature_key: m.signature_key,
                })
            })
            .collect()
    }

    /// Compares the group's leaves with the devices that belong in it
    /// (docs/e2ee.md, "Keeping the group in line"). This device is never
    /// in the answer. A leaf whose key differs from the wanted one is both
    /// removed and added.
    ///
    /// # Errors
    /// [`E2eeError::NoGroup`], [`E2eeError::BadCredential`].
    pub fn reconcile(
        &self,
        chat: ChatId,
        wanted: &[CertifiedDevice],
    ) -> Result<Reconciliation, E2eeError> {
        let me = self.device_ref();
        let have = self.members(chat)?;
        let wanted_keys: HashMap<DeviceRef, &[u8]> = wanted
            .iter()
            .map(|w| (w.device, w.signature_key.as_slice()))
            .collect();
        let mut out = Reconciliation::default();
        let mut present = HashSet::new();
        for leaf in &have {
            if leaf.device == me {
                continue;
            }
            match wanted_keys.get(&leaf.device) {
                Some(key) if *key == leaf.signature_key.as_slice() => {
                    present.insert(leaf.device);
                }
                _ => out.remove.push(leaf.device),
            }
        }
        for w in wanted {
            if w.device != me && !present.contains(&w.device) && !out.add.contains(&w.device) {
                out.add.push(w.device);
            }
        }
        out.add.sort();
        out.remove.sort();
        out.remove.dedup();
        Ok(out)
    }

    /// Builds a commit for `intent` in the current epoch. It stays pending
    /// until [`Engine::commit_accepted`] (the server answered 201) or
    /// [`Engine::commit_rejected`] (409 `stale_epoch`). Adds carry no path
    /// (`add_members_without_update`); removals and self-updates do.
    ///
    /// # Errors
    /// [`E2eeError::NothingToCommit`] for an empty change,
    /// [`E2eeError::NotAMember`] for a removal of a device with no leaf,
    /// [`E2eeError::Mls`] (for instance a commit already pending).
    pub fn commit(
        &mut self,
        chat: ChatId,
        intent: CommitIntent,
    ) -> Result<PendingCommit, E2eeError> {
        let group = self.groups.get_mut(&chat).ok_or(E2eeError::NoGroup)?;
        let epoch = group.epoch().as_u64();
        let builder = match &intent {
            CommitIntent::Change { add, remove } => {
                if add.is_empty() && remove.is_empty() {
                    return Err(E2eeError::NothingToCommit);
                }
                let leaves = leaves_of(group, remove)?;
                group
                    .commit_builder()
                    .propose_adds(add.iter().map(|p| p.key_package.clone()))
                    .propose_removals(leaves)
                    .force_self_update(false)
            }
            CommitIntent::SelfUpdate => group.commit_builder().force_self_update(true),
        };
        let bundle = builder
            .load_psks(self.provider.storage())
            .map_err(E2eeError::mls)?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.keys.signer,
                |_| true,
            )
            .map_err(E2eeError::mls)?
            .stage_commit(&self.provider)
            .map_err(E2eeError::mls)?;
        let (commit, welcome, _group_info) = bundle.into_messages();
        let welcome_for = match &intent {
            CommitIntent::Change { add, .. } => add.iter().map(|p| p.device).collect(),
            CommitIntent::SelfUpdate => Vec::new(),
        };
        Ok(PendingCommit {
            commit: commit.tls_serialize_detached().map_err(E2eeError::mls)?,
            welcome: welcome
                .map(|w| w.tls_serialize_detached())
                .transpose()
                .map_err(E2eeError::mls)?,
            welcome_for,
            epoch,
            intent,
        })
    }

    /// The server accepted our pending commit: merge it.
    ///
    /// # Errors
    /// [`E2eeError::NoPendingCommit`], [`E2eeError::Mls`].
    pub fn commit_accepted(&mut self, chat: ChatId) -> Result<u64, E2eeError> {
        let group = self.groups.get_mut(&chat).ok_or(E2eeError::NoGroup)?;
        if group.pending_commit().is_none() {
            return Err(E2eeError::NoPendingCommit);
        }
        group
            .merge_pending_commit(&self.provider)
            .map_err(E2eeError::mls)?;
        Ok(group.epoch().as_u64())
    }

    /// The server refused our pending commit (409 `stale_epoch`): drop it.
    /// Then process the winning commit and [`Engine::rebase`] the intent.
    ///
    /// # Errors
    /// [`E2eeError::Mls`].
    pub fn commit_rejected(&mut self, chat: ChatId) -> Result<(), E2eeError> {
        let group = self.groups.get_mut(&chat).ok_or(E2eeError::NoGroup)?;
        group
            .clear_pending_commit(self.provider.storage())
            .map_err(E2eeError::mls)
    }

    /// Rebuilds `intent` on the group's current epoch (after the winning
    /// commit was processed): adds of devices that now have a leaf and
    /// removals of leaves already gone are dropped. `None` when nothing is
    /// left to do.
    ///
    /// # Errors
    /// As [`Engine::commit`].
    pub fn rebase(
        &mut self,
        chat: ChatId,
        intent: CommitIntent,
    ) -> Result<Option<PendingCommit>, E2eeError> {
        let intent = match intent {
            CommitIntent::SelfUpdate => CommitIntent::SelfUpdate,
            CommitIntent::Change { add, remove } => {
                let present: HashSet<DeviceRef> =
                    self.members(chat)?.into_iter().map(|m| m.device).collect();
                let add: Vec<_> = add
                    .into_iter()
                    .filter(|p| !present.contains(&p.device))
                    .collect();
                let remove: Vec<_> = remove.into_iter().filter(|d| present.contains(d)).collect();
                if add.is_empty() && remove.is_empty() {
                    return Ok(None);
                }
                CommitIntent::Change { add, remove }
            }
        };
        self.commit(chat, intent).map(Some)
    }

    /// Joins a group from a Welcome. Every member's signature key must be
    /// certified; otherwise the engine's state is rolled back (the
    /// KeyPackage's keys are kept, so the Welcome can be retried once the
    /// trust store knows more) and the join is refused.
    ///
    /// # Errors
    /// [`E2eeError::BadWelcome`], [`E2eeError::Uncertified`],
    /// [`E2eeError::GroupExists`].
    pub fn join(&mut self, trust: &impl TrustStore, welcome: &[u8]) -> Result<ChatId, E2eeError> {
        let message = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|e| E2eeError::BadWelcome(e.to_string()))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(E2eeError::BadWelcome("not a Welcome".into()));
        };
        let before = self.provider.export()?;
        match self.join_checked(trust, welcome) {
            Ok((chat, group)) => {
                self.groups.insert(chat, group);
                Ok(chat)
            }
            Err(e) => {
                self.provider.import(before)?;
                Err(e)
            }
        }
    }

    fn join_checked(
        &self,
        trust: &impl TrustStore,
        welcome: openmls::prelude::Welcome,
    ) -> Result<(ChatId, MlsGroup), E2eeError> {
        let staged =
            StagedWelcome::new_from_welcome(&self.provider, &Self::join_config(), welcome, None)
                .map_err(|e| E2eeError::BadWelcome(e.to_string()))?;
        let chat = chat_of(staged.group_context().group_id())?;
        if self.groups.contains_key(&chat) {
            return Err(E2eeError::GroupExists);
        }
        for member in staged.members() {
            let device = parse_identity(&member.credential)?;
            if !trust.is_certified(device.user, device.device, &member.signature_key) {
                return Err(E2eeError::Uncertified {
                    user: device.user,
                    device: device.device,
                });
            }
        }
        let group = staged
            .into_group(&self.provider)
            .map_err(|e| E2eeError::BadWelcome(e.to_string()))?;
        Ok((chat, group))
    }

    /// Encrypts an application message for the chat's current epoch.
    ///
    /// # Errors
    /// [`E2eeError::NoGroup`], [`E2eeError::Mls`].
    pub fn encrypt(&mut self, chat: ChatId, plaintext: &[u8]) -> Result<Vec<u8>, E2eeError> {
        let group = self.groups.get_mut(&chat).ok_or(E2eeError::NoGroup)?;
        let message = group
            .create_message(&self.provider, &self.keys.signer, plaintext)
            .map_err(E2eeError::mls)?;
        message.tls_serialize_detached().map_err(E2eeError::mls)
    }

    /// Processes one message of the chat's log, in log order.
    ///
    /// # Errors
    /// [`E2eeError::Uncertified`] or [`E2eeError::Forbidden`] for a commit
    /// that adds or changes a leaf to an uncertified key or carries a
    /// proposal Natter does not allow (the commit is dropped, the group
    /// stays in its epoch), [`E2eeError::Mls`] for anything OpenMLS refuses
    /// (wrong epoch, bad signature, undecryptable).
    pub fn process(
        &mut self,
        trust: &impl TrustStore,
        chat: ChatId,
        wire: &[u8],
    ) -> Result<GroupEvent, E2eeError> {
        let message = MlsMessageIn::tls_deserialize_exact(wire).map_err(E2eeError::mls)?;
        let message = message
            .try_into_protocol_message()
            .map_err(E2eeError::mls)?;
        let group = self.groups.get_mut(&chat).ok_or(E2eeError::NoGroup)?;
        if message.is_handshake_message() && message.epoch() < group.epoch() {
            return Ok(GroupEvent::AlreadyApplied);
        }
        let processed = group
            .process_message(&self.provider, message)
            .map_err(E2eeError::mls)?;
        let sender = parse_identity(processed.credential())?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => Ok(GroupEvent::Application {
                sender,
                plaintext: m.into_bytes(),
            }),
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let (added, removed) = check_commit(trust, group, sender, &staged)?;
                let self_removed = staged.self_removed();
                group
                    .merge_staged_commit(&self.provider, *staged)
                    .map_err(E2eeError::mls)?;
                if self_removed {
                    if let Some(mut group) = self.groups.remove(&chat) {
                        group
                            .delete(self.provider.storage())
                            .map_err(E2eeError::mls)?;
                    }
                    return Ok(GroupEvent::RemovedFromGroup { by: sender });
                }
                Ok(GroupEvent::Commit(CommitSummary {
                    committer: sender,
                    added,
                    removed,
                    epoch: group.epoch().as_u64(),
                }))
            }
            ProcessedMessageContent::OwnPrivateMessage
            | ProcessedMessageContent::OwnPendingCommit => Ok(GroupEvent::AlreadyApplied),
            ProcessedMessageContent::ProposalMessage(_)
            | ProcessedMessageContent::ExternalJoinProposalMessage(_) => Ok(GroupEvent::Ignored),
        }
    }

    /// Forgets a group (the chat was left or deleted).
    ///
    /// # Errors
    /// [`E2eeError::Mls`] if the store fails.
    pub fn forget_group(&mut self, chat: ChatId) -> Result<(), E2eeError> {
        if let Some(mut group) = self.groups.remove(&chat) {
            group
                .delete(self.provider.storage())
                .map_err(E2eeError::mls)?;
        }
        Ok(())
    }

    // === State ===

    /// The engine's whole state (keys, identity key if held, every group's
    /// secrets) as opaque bytes for the SDK's local store, which must keep
    /// them encrypted at rest. Take one after every operation that changed
    /// state (a processed message moves a ratchet).
    ///
    /// # Errors
    /// [`E2eeError::Snapshot`].
    pub fn snapshot(&self) -> Result<Vec<u8>, E2eeError> {
        let mut groups: Vec<ChatId> = self.groups.keys().copied().collect();
        groups.sort();
        let meta = serde_json::to_vec(&SnapshotMetaRef {
            user: self.user,
            device: self.device,
            keys: &self.keys,
            identity: self.identity.as_ref(),
            groups,
        })
        .map_err(|e| E2eeError::Snapshot(e.to_string()))?;
        let values = self.provider.export()?;
        let mut entries: Vec<_> = values.iter().collect();
        entries.sort();
        let mut out = Vec::with_capacity(
            64 + meta.len()
                + entries
                    .iter()
                    .map(|(k, v)| 8 + k.len() + v.len())
                    .sum::<usize>(),
        );
        out.extend_from_slice(SNAPSHOT_MAGIC);
        put_bytes(&mut out, &meta)?;
        put_len(&mut out, entries.len())?;
        for (k, v) in entries {
            put_bytes(&mut out, k)?;
            put_bytes(&mut out, v)?;
        }
        Ok(out)
    }

    /// Rebuilds an engine from [`Engine::snapshot`]'s bytes.
    ///
    /// # Errors
    /// [`E2eeError::Snapshot`] if the bytes are not a snapshot of this format.
    pub fn restore(bytes: &[u8]) -> Result<Self, E2eeError> {
        let mut r = bytes
            .strip_prefix(SNAPSHOT_MAGIC.as_slice())
            .ok_or_else(|| {
                E2eeError::Snapshot("not an engine snapshot (or another version)".into())
            })?;
        let meta: SnapshotMeta = serde_json::from_slice(take_bytes(&mut r)?)
            .map_err(|e| E2eeError::Snapshot(e.to_string()))?;
        let count = take_len(&mut r)?;
        let mut values = HashMap::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            let k = take_bytes(&mut r)?.to_vec();
            let v = take_bytes(&mut r)?.to_vec();
            values.insert(k, v);
        }
        if !r.is_empty() {
            return Err(E2eeError::Snapshot("trailing bytes".into()));
        }
        let provider = EngineProvider::default();
        provider.import(values)?;
        let mut groups = HashMap::new();
        for chat in meta.groups {
            let group = MlsGroup::load(
                provider.storage(),
                &GroupId::from_slice(chat.as_uuid().as_bytes()),
            )
            .map_err(|e| E2eeError::Snapshot(e.to_string()))?
            .ok_or_else(|| E2eeError::Snapshot(format!("group of chat {chat} missing")))?;
            groups.insert(chat, group);
        }
        Ok(Self {
            user: meta.user,
            device: meta.device,
            keys: meta.keys,
            identity: meta.identity,
            provider,
            groups,
        })
    }
}

/// [`SnapshotMeta`] by reference, for writing.
#[derive(Serialize)]
struct SnapshotMetaRef<'a> {
    user: UserId,
    device: DeviceId,
    keys: &'a DeviceKeys,
    identity: Option<&'a Identity>,
    groups: Vec<ChatId>,
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), E2eeError> {
    let len = u32::try_from(len).map_err(|_| E2eeError::Snapshot("entry too large".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), E2eeError> {
    put_len(out, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

fn take_len(r: &mut &[u8]) -> Result<usize, E2eeError> {
    let (head, rest) = r
        .split_first_chunk::<4>()
        .ok_or_else(|| E2eeError::Snapshot("truncated".into()))?;
    *r = rest;
    Ok(u32::from_be_bytes(*head) as usize)
}

fn take_bytes<'a>(r: &mut &'a [u8]) -> Result<&'a [u8], E2eeError> {
    let len = take_len(r)?;
    if r.len() < len {
        return Err(E2eeError::Snapshot("truncated".into()));
    }
    let (head, rest) = r.split_at(len);
    *r = rest;
    Ok(head)
}

/// The `(user, device)` a basic credential names.
fn parse_identity(credential: &Credential) -> Result<DeviceRef, E2eeError> {
    let basic =
        BasicCredential::try_from(credential.clone()).map_err(|_| E2eeError::BadCredential)?;
    let text = std::str::from_utf8(basic.identity()).map_err(|_| E2eeError::BadCredential)?;
    let (user, device) = text.split_once('/').ok_or(E2eeError::BadCredential)?;
    let user: UserId = user.parse().map_err(|_| E2eeError::BadCredential)?;
    let device: DeviceId = device.parse().map_err(|_| E2eeError::BadCredential)?;
    // Only the canonical form: one identity, one spelling.
    if credential_identity(user, device) != text {
        return Err(E2eeError::BadCredential);
    }
    Ok(DeviceRef { user, device })
}

/// The chat a group id names.
fn chat_of(group_id: &GroupId) -> Result<ChatId, E2eeError> {
    let bytes: [u8; 16] = group_id
        .as_slice()
        .try_into()
        .map_err(|_| E2eeError::BadWelcome("group id is not a chat id".into()))?;
    Ok(ChatId::from_uuid(Uuid::from_bytes(bytes)))
}

/// Refuses a leaf whose signature key is not certified for the device it names.
fn check_leaf(trust: &impl TrustStore, leaf: &LeafNode) -> Result<DeviceRef, E2eeError> {
    let device = parse_identity(leaf.credential())?;
    if !trust.is_certified(device.user, device.device, leaf.signature_key().as_slice()) {
        return Err(E2eeError::Uncertified {
            user: device.user,
            device: device.device,
        });
    }
    Ok(device)
}

/// The leaf indexes of `devices` (every one must have a leaf).
fn leaves_of(group: &MlsGroup, devices: &[DeviceRef]) -> Result<Vec<LeafNodeIndex>, E2eeError> {
    let mut out = Vec::with_capacity(devices.len());
    for wanted in devices {
        let mut found = false;
        for m in group.members() {
            if parse_identity(&m.credential).is_ok_and(|d| d == *wanted) {
                out.push(m.index);
                found = true;
            }
        }
        if !found {
            return Err(E2eeError::NotAMember {
                user: wanted.user,
                device: wanted.device,
            });
        }
    }
    Ok(out)
}

/// The membership rules for a staged commit of another member: every new or
/// changed leaf certified, a changed leaf keeps its device, only adds,
/// removes (and the external-init of an external join). Returns
/// the added and removed devices.
fn check_commit(
    trust: &impl TrustStore,
    group: &MlsGroup,
    committer: DeviceRef,
    staged: &StagedCommit,
) -> Result<(Vec<DeviceRef>, Vec<DeviceRef>), E2eeError> {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    if let Some(leaf) = staged.update_path_leaf_node()
        && check_leaf(trust, leaf)? != committer
    {
        return Err(E2eeError::Forbidden(
            "a committer's path names another device",
        ));
    }
    for queued in staged.queued_proposals() {
        match queued.proposal() {
            Proposal::Add(add) => added.push(check_leaf(trust, add.key_package().leaf_node())?),
            Proposal::Remove(remove) => {
                let member = group
                    .member_at(remove.removed())
                    .ok_or(E2eeError::Forbidden("removal of an empty leaf"))?;
                removed.push(parse_identity(&member.credential)?);
            }
            Proposal::ExternalInit(_) => {}
            _ => return Err(E2eeError::Forbidden("a proposal type Natter does not use")),
        }
    }
    Ok((added, removed))
}
