//! The bus: routes chat-log events, receipt state and signals to the live
//! WebSocket connections of users. In-process here ([`LocalBus`]); NATS in
//! the scale-out mode, behind the same trait.
//!
//! An event is typed and rendered once ([`LiveEvent`]), then shared by the
//! queue of every recipient's connection: fanning a message out to a large
//! group costs one pointer per connection, not one rendering.
//!
//! Every connection has one bounded queue. A connection whose queue is full
//! has fallen behind: it is told to close (`close::BEHIND`) and catches up
//! with `sync` when it reconnects, so one slow consumer never holds anyone
//! else up (DESIGN.md §4 rule 6).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use natter_proto::users::PresenceStatus;
use natter_proto::ws::close;
use natter_proto::{ChatId, DeviceId, UserId};
use tokio::sync::{mpsc, watch};

mod nats;
pub use nats::{NatsBus, NatsBusError, NatsOptions};

/// Identifies one connection: the node that holds its socket and a number
/// unique on that node, so ids stay unique across a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// The node (random per process start).
    pub node: u64,
    /// The connection on that node.
    pub local: u64,
}

/// A persisted chat-log event on its way to live connections.
#[derive(Debug)]
pub struct LiveEvent {
    /// The chat.
    pub chat_id: ChatId,
    /// The event's position in the chat log.
    pub seq: i64,
    /// A user this event made a member (they start following the chat).
    pub joined: Option<UserId>,
    /// A user this event removed (it is the last of the chat they see).
    pub left: Option<UserId>,
    /// The frame, rendered once for every recipient.
    pub frame: Arc<str>,
}

/// Something for a connection to send.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A chat-log event; the connection delivers it in seq order.
    Event(Arc<LiveEvent>),
    /// Persisted state (a chat's receipt positions); later state supersedes
    /// earlier, so order does not matter, but it is never dropped.
    State(Arc<str>),
    /// An ephemeral frame (typing, presence): sent if there is room, never stored.
    Signal(Arc<str>),
}

/// Why a connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kick {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason.
    pub reason: &'static str,
}

/// A registered connection's ends.
#[derive(Debug)]
pub struct Registration {
    /// Its id.
    pub id: ConnId,
    /// Its queue.
    pub outbound: mpsc::Receiver<Outbound>,
    /// Set when the connection must close.
    pub kicked: watch::Receiver<Option<Kick>>,
    /// Whether this is the user's first live connection (they just came online).
    pub first_of_user: bool,
}

/// Routes to live connections.
///
/// The methods that may cross nodes are async (the NATS bus asks the
/// cluster); [`LocalBus`] answers them at once.
#[async_trait]
pub trait Bus: Send + Sync + fmt::Debug + 'static {
    /// Registers a connection with a queue of `queue` entries. Once this
    /// returns, every event sent to the user reaches the queue.
    async fn register(&self, user: UserId, device: DeviceId, queue: usize) -> Registration;
    /// Removes a connection; true if it was the user's last (on every node).
    async fn unregister(&self, user: UserId, conn: ConnId) -> bool;
    /// Queues a chat-log event for every connection of `recipients` but `except`.
    async fn send_event(
        &self,
        recipients: &[UserId],
        event: Arc<LiveEvent>,
        except: Option<ConnId>,
    );
    /// Queues persisted state for every connection of `recipients`.
    async fn send_state(&self, recipients: &[UserId], frame: Arc<str>);
    /// Queues an ephemeral frame for every connection of `user`, if there is room.
    async fn send_signal(&self, user: UserId, frame: Arc<str>);
    /// Queues a frame for every connection of one device (an inbox item,
    /// a low KeyPackage stock); never dropped, like state: a connection
    /// without room is told to close and catches up over REST.
    async fn send_to_device(&self, user: UserId, device: DeviceId, frame: Arc<str>);
    /// Closes every connection of one device (logout, revocation), on every node.
    async fn close_device(&self, user: UserId, device: DeviceId, kick: Kick);
    /// Closes every connection of this node (shutdown).
    fn close_all(&self, kick: Kick);
    /// Marks a connection away (or back); returns the user's presence if it changed.
    async fn set_away(&self, user: UserId, conn: ConnId, away: bool) -> Option<PresenceStatus>;
    /// The user's presence: online if any connection is active, away if all are away.
    async fn presence(&self, user: UserId) -> PresenceStatus;
    /// Open connections on this node, for metrics and shutdown.
    fn connections(&self) -> usize;
    /// Whether the device has a live connection (then it gets no push).
    async fn device_online(&self, user: UserId, device: DeviceId) -> bool;
}

struct Conn {
    id: ConnId,
    device: DeviceId,
    queue: mpsc::Sender<Outbound>,
    kick: watch::Sender<Option<Kick>>,
    away: bool,
}

/// The in-process bus of a single node.
pub struct LocalBus {
    /// Live connections by user.
    users: Mutex<HashMap<UserId, Vec<Conn>>>,
    /// This node's part of connection ids.
    node: u64,
    /// The next connection id.
    next_id: AtomicU64,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::with_node(rand::random())
    }
}

impl fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBus")
            .field("connections", &self.connections())
            .finish()
    }
}

impl LocalBus {
    /// A bus whose connection ids carry `node`.
    pub(crate) fn with_node(node: u64) -> Self {
        Self {
            users: Mutex::default(),
            node,
            next_id: AtomicU64::new(0),
        }
    }

    /// This node's part of connection ids.
    pub(crate) fn node(&self) -> u64 {
        self.node
    }

    fn with_users<T>(&self, f: impl FnOnce(&mut HashMap<UserId, Vec<Conn>>) -> T) -> T {
        f(&mut self.users.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Queues `item` for every connection of `recipients` but `except`;
    /// a connection whose queue is full is told to close (it resumes with sync).
    fn send_kept(&self, recipients: &[UserId], item: &Outbound, except: Option<ConnId>) {
        self.with_users(|users| {
            for user in recipients {
                let Some(conns) = users.get(user) else {
                    continue;
                };
                for conn in conns.iter().filter(|c| Some(c.id) != except) {
                    if conn.queue.try_send(item.clone()).is_err() {
                        // Full (or closing): the connection resumes with sync.
                        metrics::counter!("natter_ws_kicked_total", "reason" => "behind")
                            .increment(1);
                        let _ = conn.kick.send(Some(behind()));
                    }
                }
            }
        });
    }

    /// Registers a connection on this node; `first_of_user` says whether it
    /// is the user's first here.
    pub(crate) fn register_local(
        &self,
        user: UserId,
        device: DeviceId,
        queue: usize,
    ) -> Registration {
        let id = ConnId {
            node: self.node,
            local: self.next_id.fetch_add(1, Ordering::Relaxed),
        };
        let (tx, outbound) = mpsc::channel(queue.max(1));
        let (kick, kicked) = watch::channel(None);
        let first_of_user = self.with_users(|users| {
            let conns = users.entry(user).or_default();
            conns.push(Conn {
                id,
                device,
                queue: tx,
                kick,
                away: false,
            });
            conns.len() == 1
        });
        metrics::gauge!("natter_ws_connections").increment(1.0);
        Registration {
            id,
            outbound,
            kicked,
            first_of_user,
        }
    }

    /// Removes a connection of this node; true if it was the user's last here.
    pub(crate) fn unregister_local(&self, user: UserId, conn: ConnId) -> bool {
        let (removed, last) = self.with_users(|users| {
            let Some(conns) = users.get_mut(&user) else {
                return (false, false);
            };
            let before = conns.len();
            conns.retain(|c| c.id != conn);
            let removed = conns.len() < before;
            let last = conns.is_empty();
            if last {
                users.remove(&user);
            }
            (removed, removed && last)
        });
        if removed {
            metrics::gauge!("natter_ws_connections").decrement(1.0);
        }
        last
    }

    pub(crate) fn send_to_device_local(&self, user: UserId, device: DeviceId, frame: &Arc<str>) {
        self.with_users(|users| {
            let Some(conns) = users.get(&user) else {
                return;
            };
            for conn in conns.iter().filter(|c| c.device == device) {
                if conn
                    .queue
                    .try_send(Outbound::State(Arc::clone(frame)))
                    .is_err()
                {
                    metrics::counter!("natter_ws_kicked_total", "reason" => "behind").increment(1);
                    let _ = conn.kick.send(Some(behind()));
                }
            }
        });
    }

    pub(crate) fn send_signal_local(&self, user: UserId, frame: &Arc<str>) {
        self.with_users(|users| {
            let Some(conns) = users.get(&user) else {
                return;
            };
            for conn in conns {
                // Ephemeral: dropped when there is no room.
                let _ = conn.queue.try_send(Outbound::Signal(Arc::clone(frame)));
            }
        });
    }

    pub(crate) fn close_device_local(&self, user: UserId, device: DeviceId, kick: Kick) {
        self.with_users(|users| {
            for conn in users
                .get(&user)
                .into_iter()
                .flatten()
                .filter(|c| c.device == device)
            {
                let _ = conn.kick.send(Some(kick));
            }
        });
    }

    pub(crate) fn close_all_local(&self, kick: Kick) {
        self.with_users(|users| {
            for conn in users.values().flatten() {
                let _ = conn.kick.send(Some(kick));
            }
        });
    }

    /// Marks a connection of this node away (or back); the user's presence
    /// on this node, if it changed.
    pub(crate) fn set_away_local(
        &self,
        user: UserId,
        conn: ConnId,
        away: bool,
    ) -> Option<PresenceStatus> {
        self.with_users(|users| {
            let conns = users.get_mut(&user)?;
            let before = presence_of(conns);
            if let Some(c) = conns.iter_mut().find(|c| c.id == conn) {
                c.away = away;
            }
            let after = presence_of(conns);
            (after != before).then_some(after)
        })
    }

    /// The user's presence on this node.
    pub(crate) fn presence_local(&self, user: UserId) -> PresenceStatus {
        self.with_users(|users| {
            users
                .get(&user)
                .map_or(PresenceStatus::Offline, |c| presence_of(c))
        })
    }

    /// What this node knows of a user: their devices here and whether all
    /// their connections here are away; `None` without connections.
    pub(crate) fn user_here(&self, user: UserId) -> Option<(Vec<DeviceId>, bool)> {
        self.with_users(|users| {
            let conns = users.get(&user)?;
            let mut devices: Vec<DeviceId> = conns.iter().map(|c| c.device).collect();
            devices.sort_unstable();
            devices.dedup();
            Some((devices, conns.iter().all(|c| c.away)))
        })
    }

    /// The users with a connection on this node.
    pub(crate) fn users_here(&self) -> Vec<UserId> {
        self.with_users(|users| users.keys().copied().collect())
    }

    pub(crate) fn device_online_local(&self, user: UserId, device: DeviceId) -> bool {
        self.with_users(|users| {
            users
                .get(&user)
                .is_some_and(|conns| conns.iter().any(|c| c.device == device))
        })
    }
}

fn behind() -> Kick {
    Kick {
        code: close::BEHIND,
        reason: "fell behind; reconnect and sync",
    }
}

fn presence_of(conns: &[Conn]) -> PresenceStatus {
    if conns.is_empty() {
        PresenceStatus::Offline
    } else if conns.iter().all(|c| c.away) {
        PresenceStatus::Away
    } else {
        PresenceStatus::Online
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn register(&self, user: UserId, device: DeviceId, queue: usize) -> Registration {
        self.register_local(user, device, queue)
    }

    async fn unregister(&self, user: UserId, conn: ConnId) -> bool {
        self.unregister_local(user, conn)
    }

    async fn send_event(
        &self,
        recipients: &[UserId],
        event: Arc<LiveEvent>,
        except: Option<ConnId>,
    ) {
        self.send_kept(recipients, &Outbound::Event(event), except);
    }

    async fn send_state(&self, recipients: &[UserId], frame: Arc<str>) {
        self.send_kept(recipients, &Outbound::State(frame), None);
    }

    async fn send_to_device(&self, user: UserId, device: DeviceId, frame: Arc<str>) {
        self.send_to_device_local(user, device, &frame);
    }

    async fn send_signal(&self, user: UserId, frame: Arc<str>) {
        self.send_signal_local(user, &frame);
    }

    async fn close_device(&self, user: UserId, device: DeviceId, kick: Kick) {
        self.close_device_local(user, device, kick);
    }

    fn close_all(&self, kick: Kick) {
        self.close_all_local(kick);
    }

    async fn set_away(&self, user: UserId, conn: ConnId, away: bool) -> Option<PresenceStatus> {
        self.set_away_local(user, conn, away)
    }

    async fn presence(&self, user: UserId) -> PresenceStatus {
        self.presence_local(user)
    }

    fn connections(&self) -> usize {
        self.with_users(|users| users.values().map(Vec::len).sum())
    }

    async fn device_online(&self, user: UserId, device: DeviceId) -> bool {
        self.device_online_local(user, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_kicks_the_connection_and_spares_the_others() {
        let bus = LocalBus::default();
        let (alice, bob) = (UserId::new(), UserId::new());
        let mut slow = bus.register(alice, DeviceId::new(), 2).await;
        let mut fast = bus.register(bob, DeviceId::new(), 8).await;
        let chat = ChatId::new();
        for seq in 1..=3 {
            let event = Arc::new(LiveEvent {
                chat_id: chat,
                seq,
                joined: None,
                left: None,
                frame: Arc::from("x"),
            });
            bus.send_event(&[alice, bob], event, None).await;
        }
        assert_eq!(*slow.kicked.borrow_and_update(), Some(behind()));
        assert!(fast.kicked.borrow_and_update().is_none());
        for seq in 1..=3 {
            match fast.outbound.recv().await {
                Some(Outbound::Event(e)) => assert_eq!(e.seq, seq),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn presence_is_online_while_any_connection_is_active() {
        let bus = LocalBus::default();
        let user = UserId::new();
        assert_eq!(bus.presence(user).await, PresenceStatus::Offline);
        let phone = DeviceId::new();
        assert!(!bus.device_online(user, phone).await);
        let a = bus.register(user, phone, 1).await;
        assert!(bus.device_online(user, phone).await);
        assert!(a.first_of_user);
        let b = bus.register(user, DeviceId::new(), 1).await;
        assert!(!b.first_of_user);
        assert_eq!(
            bus.set_away(user, a.id, true).await,
            None,
            "b is still active"
        );
        assert_eq!(
            bus.set_away(user, b.id, true).await,
            Some(PresenceStatus::Away)
        );
        assert!(!bus.unregister(user, a.id).await);
        assert!(bus.unregister(user, b.id).await);
        assert_eq!(bus.presence(user).await, PresenceStatus::Offline);
    }
}
