//! The NATS bus: many nodes, each holding some of the sockets, behind the
//! same [`Bus`] trait as [`LocalBus`].
//!
//! # Layout
//! - Every node keeps its own connections in a [`LocalBus`] and delivers to
//!   them directly; everything is also published on core NATS, one subject
//!   per user (`<prefix>.u.<user>.<kind>`), and a node subscribes to the
//!   subjects of the users it holds a socket of. The client connects with
//!   `no_echo`, so a node never receives its own publications twice.
//! - Presence lives in a JetStream KV bucket, one key per user, holding each
//!   node's part (its devices of the user, whether all are away, when it was
//!   written). A node writes a user's key when that user's sockets on it
//!   change (first socket, last socket, away), not periodically: what keeps
//!   a part alive is its node's heartbeat, one core NATS message per node
//!   every third of the TTL (`<prefix>.node.<id>`), which every node hears.
//!   A part counts while its node was heard within the TTL (or, for a node
//!   not heard yet, while the part itself is younger than the TTL), so the
//!   users of a dead node go offline within the TTL and a third, and the
//!   background cost is one message per node, not one write per user. Each
//!   node rewrites its users' parts every [`PART_REWRITE`], so the bucket's
//!   `max_age` ([`PART_MAX_AGE`]) only removes the keys of nodes that died.
//!   The parts of one key are updated with compare-and-set on the key's
//!   revision.
//! - Nothing here is durable: a chat-log event lost on the way (NATS down,
//!   a node reconnecting) is still in the store. A connection delivers in seq
//!   order and fills gaps from the store, and when the node's NATS connection
//!   comes back every socket of the node is told to reconnect and `sync`, so
//!   nothing published while it was away stays missing.
//! - A node that cannot reach NATS keeps serving: publications are skipped
//!   (never waited on), presence answers from this node alone.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::kv;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use natter_proto::users::PresenceStatus;
use natter_proto::ws::close;
use natter_proto::{ChatId, DeviceId, UserId};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::{Bus, ConnId, Kick, LiveEvent, LocalBus, Registration};
use crate::clock::Timestamp;

/// Longest one publication or KV operation may take before the node gives
/// up on it (NATS is slow or gone; the store still has everything).
const NATS_OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Compare-and-set attempts on one presence key before giving up (many
/// nodes changing the same user at once).
const PRESENCE_CAS_ATTEMPTS: usize = 8;

/// Shards of the subscription table: connects of different users do not
/// wait for each other's subscription round trips.
const SUBSCRIPTION_SHARDS: usize = 64;

/// How often a node rewrites every part it holds, so a live user's key
/// never reaches the bucket's `max_age`.
const PART_REWRITE: Duration = Duration::from_secs(8 * 3600);

/// The presence bucket's `max_age`: a key no node rewrote for this long
/// belonged to nodes that died, and goes.
const PART_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Messages the NATS client queues for sending before a publisher waits
/// (async-nats's default); publishers never wait longer than `NATS_OP_TIMEOUT`.
const CLIENT_CAPACITY: usize = 2048;

/// How the bus reaches NATS.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// `nats://host:port` (or `tls://`), several separated by commas;
    /// `user:password@` in the URL authenticates.
    pub url: String,
    /// Prefix of every subject and of the presence bucket's name, so several
    /// deployments can share one NATS.
    pub prefix: String,
    /// How long a node's presence parts stay valid after its last
    /// heartbeat.
    pub presence_ttl: Duration,
    /// Replicas of the presence bucket (1 on a single NATS server, 3 on a
    /// cluster).
    pub presence_replicas: usize,
    /// How long the first connection may take.
    pub connect_timeout: Duration,
}

/// The bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsBusError {
    /// NATS could not be reached.
    #[error("cannot connect to NATS at `bus`: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// JetStream (for the presence bucket) is not enabled or refused it.
    #[error("cannot create the presence bucket (is JetStream enabled, `nats-server -js`?): {0}")]
    Presence(String),
}

/// One node's part of a user's presence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct NodePart {
    /// The user's devices with a socket on the node.
    devices: Vec<DeviceId>,
    /// Whether every such socket is away.
    away: bool,
    /// When the node wrote this part (ms since the epoch, node clock).
    at: i64,
}

/// A user's presence key: each node's part, by node id (hex).
type PresenceValue = BTreeMap<String, NodePart>;

/// What travels on a user's subject.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Routed {
    /// A chat-log event.
    Event {
        chat_id: ChatId,
        seq: i64,
        joined: Option<UserId>,
        left: Option<UserId>,
        frame: String,
        /// The sending connection, which gets its own answer instead.
        except: Option<(u64, u64)>,
    },
    /// Persisted state (receipts).
    State { frame: String },
    /// An ephemeral signal.
    Signal { frame: String },
    /// A frame for one device.
    Device { device: DeviceId, frame: String },
    /// Close one device's sockets.
    Kick { device: DeviceId, code: u16 },
}

/// The reason sent with a close code that came over NATS (reasons are
/// static strings; the code is what clients act on).
fn reason_for(code: u16) -> &'static str {
    match code {
        close::REVOKED => "device logged out",
        close::BEHIND => "fell behind; reconnect and sync",
        close::GOING_AWAY => "server shutting down",
        _ => "closed by the server",
    }
}

/// The kick a node's sockets get when its NATS connection comes back.
fn resync() -> Kick {
    Kick {
        code: close::BEHIND,
        reason: "the server reconnected to the cluster; reconnect and sync",
    }
}

/// State shared with the background tasks.
struct Shared {
    /// This node's connections.
    local: Arc<LocalBus>,
    /// The NATS connection.
    client: async_nats::Client,
    /// The presence bucket.
    presence: kv::Store,
    /// Subject prefix.
    prefix: String,
    /// Presence TTL.
    ttl: Duration,
    /// This node's id in presence keys.
    node_key: String,
    /// When each other node's heartbeat was last heard, by node id.
    heard: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// Per-user subscription tasks, sharded by user.
    subscriptions: Vec<tokio::sync::Mutex<HashMap<UserId, JoinHandle<()>>>>,
}

/// The bus of one node of a cluster, over NATS.
pub struct NatsBus {
    /// Shared with the subscription and refresh tasks.
    shared: Arc<Shared>,
    /// Sends this node's heartbeat, listens to the others' and rewrites
    /// its parts now and then; stopped on drop.
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("prefix", &self.shared.prefix)
            .field("node", &self.shared.node_key)
            .field("connections", &self.shared.local.connections())
            .finish_non_exhaustive()
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for shard in &self.shared.subscriptions {
            if let Ok(mut subs) = shard.try_lock() {
                for (_, task) in subs.drain() {
                    task.abort();
                }
            }
        }
    }
}

impl NatsBus {
    /// Connects to NATS and creates (or joins) the presence bucket.
    ///
    /// # Errors
    /// NATS unreachable within the connect timeout, or JetStream missing.
    pub async fn connect(options: NatsOptions) -> Result<Self, NatsBusError> {
        let local = Arc::new(LocalBus::default());
        let lost = Arc::new(AtomicBool::new(false));
        let events_local = Arc::clone(&local);
        let client = async_nats::ConnectOptions::new()
            .no_echo()
            .name("natter")
            .connection_timeout(options.connect_timeout)
            .client_capacity(CLIENT_CAPACITY)
            .max_reconnects(None)
            .event_callback(move |event| {
                let local = Arc::clone(&events_local);
                let lost = Arc::clone(&lost);
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            lost.store(true, Ordering::SeqCst);
                            metrics::counter!("natter_bus_disconnects_total").increment(1);
                            tracing::warn!(
                                "lost the NATS connection; serving this node's sockets only"
                            );
                        }
                        async_nats::Event::Connected if lost.swap(false, Ordering::SeqCst) => {
                            // What was published meanwhile never reached
                            // this node: every socket resyncs from the store.
                            tracing::info!(
                                connections = local.connections(),
                                "NATS is back; closing this node's sockets so they sync"
                            );
                            local.close_all_local(resync());
                        }
                        other => tracing::debug!(event = %other, "NATS"),
                    }
                }
            })
            .connect(options.url.as_str())
            .await?;
        let presence = presence_bucket(
            &client,
            &format!("{}_online", options.prefix),
            options.presence_replicas,
        )
        .await?;
        let heartbeats = client
            .subscribe(format!("{}.node.*", options.prefix))
            .await
            .map_err(|e| NatsBusError::Presence(e.to_string()))?;
        let node_key = format!("{:016x}", local.node());
        let shared = Arc::new(Shared {
            local,
            client,
            presence,
            prefix: options.prefix,
            ttl: options.presence_ttl,
            node_key,
            heard: std::sync::Mutex::default(),
            subscriptions: (0..SUBSCRIPTION_SHARDS)
                .map(|_| tokio::sync::Mutex::default())
                .collect(),
        });
        let tasks = vec![
            tokio::spawn(heartbeat(Arc::downgrade(&shared))),
            tokio::spawn(listen_to_heartbeats(Arc::downgrade(&shared), heartbeats)),
            tokio::spawn(rewrite_parts(Arc::downgrade(&shared))),
        ];
        Ok(Self { shared, tasks })
    }
}

/// Creates (or joins) the presence bucket. The bucket's stream is made
/// here, with the settings async-nats's `create_key_value` would use,
/// because that call first reads account fields NATS 2.9 (Debian 12's)
/// does not send; several nodes starting at once all succeed.
async fn presence_bucket(
    client: &async_nats::Client,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, NatsBusError> {
    use async_nats::jetstream::stream;
    let jetstream = async_nats::jetstream::new(client.clone());
    jetstream
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("natter: each node's part of each user's presence".to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: PART_MAX_AGE,
            // On disk, so a restarted NATS still has the bucket.
            storage: stream::StorageType::File,
            num_replicas: replicas.max(1),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..stream::Config::default()
        })
        .await
        .map_err(|e| NatsBusError::Presence(e.to_string()))?;
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(|e| NatsBusError::Presence(e.to_string()))
}

impl Shared {
    fn subject(&self, user: UserId, kind: &str) -> String {
        format!("{}.u.{user}.{kind}", self.prefix)
    }

    fn shard(&self, user: UserId) -> &tokio::sync::Mutex<HashMap<UserId, JoinHandle<()>>> {
        let index = (user.as_uuid().as_u128() % SUBSCRIPTION_SHARDS as u128) as usize;
        &self.subscriptions[index]
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Publishes on a user's subject; skipped when NATS is away (the node's
    /// sockets resync when it is back, the others' nodes resync theirs).
    async fn publish(&self, user: UserId, kind: &str, routed: &Routed) {
        if let Some(payload) = encode(routed) {
            self.publish_encoded(user, kind, payload).await;
        }
    }

    /// Publishes an encoded message (the same bytes for every recipient of
    /// a fan-out: encoded once).
    async fn publish_encoded(&self, user: UserId, kind: &str, payload: Bytes) {
        if !self.connected() {
            metrics::counter!("natter_bus_publish_skipped_total").increment(1);
            return;
        }
        let subject = self.subject(user, kind);
        match tokio::time::timeout(NATS_OP_TIMEOUT, self.client.publish(subject, payload)).await {
            Ok(Ok(())) => metrics::counter!("natter_bus_published_total").increment(1),
            Ok(Err(e)) => {
                metrics::counter!("natter_bus_publish_skipped_total").increment(1);
                tracing::warn!(error = %e, "could not publish on NATS");
            }
            Err(_) => {
                metrics::counter!("natter_bus_publish_skipped_total").increment(1);
                tracing::warn!("publishing on NATS timed out");
            }
        }
    }

    /// Delivers what came over NATS to this node's sockets of `user`.
    fn deliver(&self, user: UserId, routed: Routed) {
        let local = &self.local;
        match routed {
            Routed::Event {
                chat_id,
                seq,
                joined,
                left,
                frame,
                except,
            } => {
                let event = Arc::new(LiveEvent {
                    chat_id,
                    seq,
                    joined,
                    left,
                    frame: Arc::from(frame),
                });
                let except = except.map(|(node, local)| ConnId { node, local });
                local.send_kept(&[user], &super::Outbound::Event(event), except);
            }
            Routed::State { frame } => {
                local.send_kept(&[user], &super::Outbound::State(Arc::from(frame)), None);
            }
            Routed::Signal { frame } => local.send_signal_local(user, &Arc::from(frame)),
            Routed::Device { device, frame } => {
                local.send_to_device_local(user, device, &Arc::from(frame));
            }
            Routed::Kick { device, code } => local.close_device_local(
                user,
                device,
                Kick {
                    code,
                    reason: reason_for(code),
                },
            ),
        }
    }

    /// Subscribes this node to a user's subjects and waits until NATS has
    /// the subscription (so nothing published after this returns is missed).
    async fn subscribe(self: &Arc<Self>, user: UserId) -> Option<JoinHandle<()>> {
        if !self.connected() {
            return None;
        }
        let subject = self.subject(user, ">");
        let mut subscriber =
            match tokio::time::timeout(NATS_OP_TIMEOUT, self.client.subscribe(subject)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not subscribe on NATS");
                    return None;
                }
                Err(_) => {
                    tracing::warn!("subscribing on NATS timed out");
                    return None;
                }
            };
        if tokio::time::timeout(NATS_OP_TIMEOUT, self.client.flush())
            .await
            .map_or(true, |r| r.is_err())
        {
            tracing::warn!("NATS did not confirm a subscription in time");
        }
        let shared = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                match serde_json::from_slice::<Routed>(&message.payload) {
                    Ok(routed) => shared.deliver(user, routed),
                    Err(e) => tracing::warn!(error = %e, "an unreadable bus message"),
                }
            }
        }))
    }

    /// The other nodes' live parts of a user's presence, with the key's
    /// revision (None when there is no key); `Err` when NATS cannot answer.
    async fn others(&self, user: UserId) -> Result<(PresenceValue, Option<u64>), ()> {
        if !self.connected() {
            return Err(());
        }
        let entry = match tokio::time::timeout(
            NATS_OP_TIMEOUT,
            self.presence.entry(user.to_string()),
        )
        .await
        {
            Ok(Ok(entry)) => entry,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read presence from NATS");
                return Err(());
            }
            Err(_) => return Err(()),
        };
        let Some(entry) = entry else {
            return Ok((PresenceValue::new(), None));
        };
        let revision = Some(entry.revision);
        if entry.operation != kv::Operation::Put {
            return Ok((PresenceValue::new(), revision));
        }
        let mut value: PresenceValue = serde_json::from_slice(&entry.value).unwrap_or_default();
        value.retain(|node, part| *node != self.node_key && self.alive(node, part));
        Ok((value, revision))
    }

    /// Whether another node's part counts: its node was heard within the
    /// TTL, or (a node this one has not heard yet, just started) the part
    /// was written within the TTL.
    fn alive(&self, node: &str, part: &NodePart) -> bool {
        let heard = self
            .heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(node)
            .is_some_and(|at| at.elapsed() < self.ttl);
        heard || part.at > Timestamp::now().0 - ttl_ms(self.ttl)
    }

    /// Writes this node's part of a user's presence (from its sockets now),
    /// keeping the other nodes' live parts. Returns the other nodes' parts,
    /// or `Err` when NATS cannot answer.
    async fn write_presence(&self, user: UserId) -> Result<PresenceValue, ()> {
        for _ in 0..PRESENCE_CAS_ATTEMPTS {
            let (others, revision) = self.others(user).await?;
            let mut value = others.clone();
            if let Some((devices, away)) = self.local.user_here(user) {
                value.insert(
                    self.node_key.clone(),
                    NodePart {
                        devices,
                        away,
                        at: Timestamp::now().0,
                    },
                );
            }
            let key = user.to_string();
            let write = async {
                if value.is_empty() {
                    match revision {
                        None => Ok(0),
                        Some(r) => self
                            .presence
                            .delete_expect_revision(&key, Some(r))
                            .await
                            .map(|()| 0)
                            .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
                    }
                } else {
                    let bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
                    match revision {
                        None => self
                            .presence
                            .create(&key, bytes)
                            .await
                            .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
                        Some(r) => self
                            .presence
                            .update(&key, bytes, r)
                            .await
                            .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
                    }
                }
            };
            let written = tokio::time::timeout(NATS_OP_TIMEOUT, write)
                .await
                .unwrap_or(Err(false));
            match written {
                Ok(_) => return Ok(others),
                // Another node wrote first: read again.
                Err(true) => {}
                Err(false) => {
                    tracing::warn!("could not write presence to NATS");
                    return Err(());
                }
            }
        }
        tracing::warn!("presence kept changing under this node; gave up for now");
        Err(())
    }
}

fn encode(routed: &Routed) -> Option<Bytes> {
    match serde_json::to_vec(routed) {
        Ok(p) => Some(Bytes::from(p)),
        Err(e) => {
            tracing::error!(error = %e, "could not encode a bus message");
            None
        }
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// The cluster's presence from the other nodes' parts and this node's own.
fn combine(others: &PresenceValue, here: PresenceStatus) -> PresenceStatus {
    let mut status = here;
    for part in others.values() {
        status = match (status, part.away) {
            (PresenceStatus::Online, _) | (_, false) => PresenceStatus::Online,
            _ => PresenceStatus::Away,
        };
    }
    status
}

/// Publishes this node's heartbeat every third of the TTL: while it is
/// heard, its presence parts count.
async fn heartbeat(shared: std::sync::Weak<Shared>) {
    let (every, subject) = match shared.upgrade() {
        Some(s) => (
            (s.ttl / 3).max(Duration::from_millis(100)),
            format!("{}.node.{}", s.prefix, s.node_key),
        ),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !shared.connected() {
            continue;
        }
        // Best effort: a miss is made up on the next tick, well within the TTL.
        let _ = tokio::time::timeout(
            NATS_OP_TIMEOUT,
            shared.client.publish(subject.clone(), Bytes::new()),
        )
        .await;
    }
}

/// Notes when each other node's heartbeat arrives.
async fn listen_to_heartbeats(
    shared: std::sync::Weak<Shared>,
    mut heartbeats: async_nats::Subscriber,
) {
    while let Some(message) = heartbeats.next().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(node) = message.subject.as_str().rsplit('.').next() else {
            continue;
        };
        let mut heard = shared
            .heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        heard.insert(node.to_owned(), std::time::Instant::now());
        // Nodes not heard for a long time are gone for good.
        heard.retain(|_, at| at.elapsed() < PART_MAX_AGE);
    }
}

/// Rewrites this node's parts every [`PART_REWRITE`], so the key of a user
/// who stays connected never reaches the bucket's `max_age`.
async fn rewrite_parts(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(PART_REWRITE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once; every part was just written at connect.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(users) = shared.upgrade().map(|s| s.local.users_here()) else {
            return;
        };
        for user in users {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            // Best effort: a miss is retried on the next pass, well before
            // the key's max_age.
            let _ = shared.write_presence(user).await;
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn register(&self, user: UserId, device: DeviceId, queue: usize) -> Registration {
        let shared = &self.shared;
        let mut reg = {
            let mut subs = shared.shard(user).lock().await;
            let reg = shared.local.register_local(user, device, queue);
            let subscribed = subs.get(&user).is_some_and(|t| !t.is_finished());
            if !subscribed && let Some(task) = shared.subscribe(user).await {
                subs.insert(user, task);
            }
            reg
        };
        // First of the user's cluster-wide if no other node has them.
        let others_had = shared
            .write_presence(user)
            .await
            .map(|others| !others.is_empty());
        reg.first_of_user = reg.first_of_user && !others_had.unwrap_or(false);
        reg
    }

    async fn unregister(&self, user: UserId, conn: ConnId) -> bool {
        let shared = &self.shared;
        let last_here = {
            let mut subs = shared.shard(user).lock().await;
            let last_here = shared.local.unregister_local(user, conn);
            if last_here && let Some(task) = subs.remove(&user) {
                task.abort();
            }
            last_here
        };
        if !last_here {
            return false;
        }
        match shared.write_presence(user).await {
            Ok(others) => others.is_empty(),
            // NATS cannot say: this node's view is all there is.
            Err(()) => true,
        }
    }

    async fn send_event(
        &self,
        recipients: &[UserId],
        event: Arc<LiveEvent>,
        except: Option<ConnId>,
    ) {
        let shared = &self.shared;
        shared.local.send_kept(
            recipients,
            &super::Outbound::Event(Arc::clone(&event)),
            except,
        );
        let Some(payload) = encode(&Routed::Event {
            chat_id: event.chat_id,
            seq: event.seq,
            joined: event.joined,
            left: event.left,
            frame: event.frame.to_string(),
            except: except.map(|c| (c.node, c.local)),
        }) else {
            return;
        };
        for user in recipients {
            shared.publish_encoded(*user, "e", payload.clone()).await;
        }
    }

    async fn send_state(&self, recipients: &[UserId], frame: Arc<str>) {
        let shared = &self.shared;
        shared.local.send_kept(
            recipients,
            &super::Outbound::State(Arc::clone(&frame)),
            None,
        );
        let Some(payload) = encode(&Routed::State {
            frame: frame.to_string(),
        }) else {
            return;
        };
        for user in recipients {
            shared.publish_encoded(*user, "s", payload.clone()).await;
        }
    }

    async fn send_signal(&self, user: UserId, frame: Arc<str>) {
        self.shared.local.send_signal_local(user, &frame);
        let routed = Routed::Signal {
            frame: frame.to_string(),
        };
        self.shared.publish(user, "g", &routed).await;
    }

    async fn send_to_device(&self, user: UserId, device: DeviceId, frame: Arc<str>) {
        self.shared.local.send_to_device_local(user, device, &frame);
        let routed = Routed::Device {
            device,
            frame: frame.to_string(),
        };
        self.shared.publish(user, "d", &routed).await;
    }

    async fn close_device(&self, user: UserId, device: DeviceId, kick: Kick) {
        self.shared.local.close_device_local(user, device, kick);
        let routed = Routed::Kick {
            device,
            code: kick.code,
        };
        self.shared.publish(user, "k", &routed).await;
    }

    fn close_all(&self, kick: Kick) {
        self.shared.local.close_all_local(kick);
    }

    async fn set_away(&self, user: UserId, conn: ConnId, away: bool) -> Option<PresenceStatus> {
        let shared = &self.shared;
        let here_before = shared.local.presence_local(user);
        shared.local.set_away_local(user, conn, away)?;
        let here_after = shared.local.presence_local(user);
        let others = shared.write_presence(user).await.unwrap_or_default();
        let (before, after) = (combine(&others, here_before), combine(&others, here_after));
        (before != after).then_some(after)
    }

    async fn presence(&self, user: UserId) -> PresenceStatus {
        let here = self.shared.local.presence_local(user);
        if here == PresenceStatus::Online {
            return here;
        }
        match self.shared.others(user).await {
            Ok((others, _)) => combine(&others, here),
            Err(()) => here,
        }
    }

    fn connections(&self) -> usize {
        self.shared.local.connections()
    }

    async fn device_online(&self, user: UserId, device: DeviceId) -> bool {
        if self.shared.local.device_online_local(user, device) {
            return true;
        }
        match self.shared.others(user).await {
            Ok((others, _)) => others.values().any(|p| p.devices.contains(&device)),
            Err(()) => false,
        }
    }
}
