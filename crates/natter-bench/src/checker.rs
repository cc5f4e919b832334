//! The delivery checker, in the spirit of Jepsen: a [`History`] of what a
//! soak run did (every send attempt, every acknowledgement, every delivery
//! per device, every `sync_done`) and what the server's chat logs hold at
//! the end, and [`check`], which finds every way that history breaks the
//! delivery guarantee of docs/architecture.md. The rules are listed on
//! [`Violation`]. Nothing here does I/O: the soak driver records, the
//! checker judges, and unit tests feed it hand-made histories.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use natter_proto::{ChatId, MessageId};

/// A device of the run, by index into [`History::devices`].
pub type DeviceIx = usize;

/// How a message was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `POST /api/v1/messages` (the SDK's outbox, or a direct retry).
    Rest,
    /// A `send_message` frame on a WebSocket.
    WebSocket,
}

/// A device as the checker knows it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// For reports: `u3/d1`.
    pub name: String,
    /// The chats its user is a member of for the whole run.
    pub chats: Vec<ChatId>,
}

/// One entry of a chat's log as the server holds it at the end.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Its seq.
    pub seq: i64,
    /// The message id.
    pub id: MessageId,
    /// The sender's idempotency key, if any.
    pub client_message_id: Option<String>,
}

/// An acknowledgement: the server said this key is stored at this seq.
#[derive(Debug, Clone)]
struct Ack {
    device: DeviceIx,
    chat: ChatId,
    seq: i64,
    id: MessageId,
}

/// A delivery to a device, as the SDK reported it.
#[derive(Debug, Clone)]
struct Delivery {
    chat: ChatId,
    seq: i64,
    id: MessageId,
    /// The device's connection number (0 before the first `connected`).
    connection: u32,
}

/// Everything a run did, in the order it happened per device.
#[derive(Debug, Default)]
pub struct History {
    /// The devices, by [`DeviceIx`].
    pub devices: Vec<DeviceInfo>,
    /// Keys attempted: key → (chat, how, attempts).
    attempts: HashMap<String, (ChatId, u32)>,
    /// Attempts by transport.
    attempts_via: [u64; 2],
    /// Acknowledgements, by key, in arrival order.
    acks: HashMap<String, Vec<Ack>>,
    /// Deliveries per device, in arrival order.
    deliveries: Vec<Vec<Delivery>>,
    /// Violations seen while recording (a `sync_done` past a gap).
    early: Vec<Violation>,
    /// Ranges a `too_long` excused per (device, chat): up to this seq.
    excused: HashMap<(DeviceIx, ChatId), i64>,
    /// The server's logs at the end.
    logs: HashMap<ChatId, Vec<LogEntry>>,
    /// Server kills.
    pub kills: u64,
    /// Socket drops made on purpose.
    pub drops: u64,
    /// Sends refused for good (4xx).
    pub refused: u64,
}

impl History {
    /// A history for these devices.
    #[must_use]
    pub fn new(devices: Vec<DeviceInfo>) -> Self {
        let deliveries = vec![Vec::new(); devices.len()];
        Self {
            devices,
            deliveries,
            ..Self::default()
        }
    }

    /// A send (or retry) of `key` to `chat`.
    pub fn attempt(&mut self, key: &str, chat: ChatId, via: Via) {
        self.attempts.entry(key.to_owned()).or_insert((chat, 0)).1 += 1;
        self.attempts_via[usize::from(via == Via::WebSocket)] += 1;
    }

    /// The server acknowledged `key` (a 2xx or `message_sent`).
    pub fn ack(&mut self, device: DeviceIx, key: &str, chat: ChatId, seq: i64, id: MessageId) {
        self.acks.entry(key.to_owned()).or_default().push(Ack {
            device,
            chat,
            seq,
            id,
        });
    }

    /// The SDK gave `device` the chat-log event `chat`/`seq`.
    pub fn delivered(
        &mut self,
        device: DeviceIx,
        connection: u32,
        chat: ChatId,
        seq: i64,
        id: MessageId,
    ) {
        if let Some(d) = self.deliveries.get_mut(device) {
            d.push(Delivery {
                chat,
                seq,
                id,
                connection,
            });
        }
    }

    /// `sync_done` on `device`: the server says the device now has `chat`
    /// up to `seq`. Everything up to there must have been delivered.
    pub fn sync_done(&mut self, device: DeviceIx, chat: ChatId, seq: i64) {
        let have: BTreeSet<i64> = self
            .deliveries
            .get(device)
            .into_iter()
            .flatten()
            .filter(|d| d.chat == chat)
            .map(|d| d.seq)
            .collect();
        let excused = self.excused.get(&(device, chat)).copied().unwrap_or(0);
        if let Some(missing) = (excused + 1..=seq).find(|s| !have.contains(s)) {
            self.early.push(Violation::Gap {
                device: self.name(device),
                chat,
                seq: missing,
                when: format!("before sync_done at seq {seq}"),
            });
        }
    }

    /// `too_long` on `device`: it skipped `chat` up to `seq` (a reload).
    pub fn too_long(&mut self, device: DeviceIx, chat: ChatId, seq: i64) {
        let e = self.excused.entry((device, chat)).or_default();
        *e = (*e).max(seq);
    }

    /// The server's log of `chat` at the end, in any order.
    pub fn final_log(&mut self, chat: ChatId, entries: Vec<LogEntry>) {
        self.logs.insert(chat, entries);
    }

    /// Distinct keys attempted.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.attempts.len() as u64
    }

    /// Attempts (first sends and retries) over REST and over WebSocket.
    #[must_use]
    pub fn attempts(&self) -> (u64, u64) {
        (self.attempts_via[0], self.attempts_via[1])
    }

    /// Retries: attempts beyond the first per key.
    #[must_use]
    pub fn retries(&self) -> u64 {
        self.attempts
            .values()
            .map(|(_, n)| u64::from(n.saturating_sub(1)))
            .sum()
    }

    /// Distinct keys acknowledged.
    #[must_use]
    pub fn acked(&self) -> u64 {
        self.acks.len() as u64
    }

    /// Deliveries over all devices.
    #[must_use]
    pub fn delivered_total(&self) -> u64 {
        self.deliveries.iter().map(|d| d.len() as u64).sum()
    }

    fn name(&self, device: DeviceIx) -> String {
        self.devices
            .get(device)
            .map_or_else(|| format!("device {device}"), |d| d.name.clone())
    }
}

/// A way the history breaks the guarantee. Each names the device, chat and
/// seq it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged message is not in the chat's log, or a device of a
    /// member never got it (after the final sync).
    Lost {
        /// The device that lacks it (`server` for the log itself).
        device: String,
        /// The chat.
        chat: ChatId,
        /// The acknowledged seq.
        seq: i64,
        /// The key.
        key: String,
    },
    /// A device got the same chat-log entry twice.
    Duplicate {
        /// The device.
        device: String,
        /// The chat.
        chat: ChatId,
        /// The seq (or the seq of the second copy).
        seq: i64,
        /// The connections it came on (first, second).
        connections: (u32, u32),
    },
    /// A device got a seq at or below one it had already got in the chat.
    OutOfOrder {
        /// The device.
        device: String,
        /// The chat.
        chat: ChatId,
        /// The seq before.
        after: i64,
        /// The seq that came next.
        seq: i64,
    },
    /// A seq of a member's chat never reached the device.
    Gap {
        /// The device.
        device: String,
        /// The chat.
        chat: ChatId,
        /// The missing seq.
        seq: i64,
        /// At `sync_done` or at the end.
        when: String,
    },
    /// One key became more than one message (in the log or in the acks).
    SecondMessage {
        /// The key.
        key: String,
        /// The chat.
        chat: ChatId,
        /// Every seq it got.
        seqs: Vec<i64>,
    },
    /// Two devices (or an ack and the log) disagree on what is at a seq.
    Disagreement {
        /// Who saw the odd one.
        device: String,
        /// The chat.
        chat: ChatId,
        /// The seq.
        seq: i64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lost {
                device,
                chat,
                seq,
                key,
            } => write!(
                f,
                "lost: {device} lacks acknowledged {key} (chat {chat}, seq {seq})"
            ),
            Self::Duplicate {
                device,
                chat,
                seq,
                connections: (a, b),
            } => write!(
                f,
                "duplicate: {device} got chat {chat} seq {seq} twice (connections {a} and {b})"
            ),
            Self::OutOfOrder {
                device,
                chat,
                after,
                seq,
            } => write!(
                f,
                "out of order: {device} got chat {chat} seq {seq} after seq {after}"
            ),
            Self::Gap {
                device,
                chat,
                seq,
                when,
            } => write!(f, "gap: {device} never got chat {chat} seq {seq} ({when})"),
            Self::SecondMessage { key, chat, seqs } => write!(
                f,
                "second message: key {key} in chat {chat} became seqs {seqs:?}"
            ),
            Self::Disagreement { device, chat, seq } => write!(
                f,
                "disagreement: {device} saw a different message at chat {chat} seq {seq}"
            ),
        }
    }
}

/// Judges `history`; an empty list means it kept every rule.
#[must_use]
pub fn check(history: &History) -> Vec<Violation> {
    let mut out = history.early.clone();
    // What the log holds at each seq, and where each key went.
    let mut at: HashMap<(ChatId, i64), MessageId> = HashMap::new();
    let mut heads: HashMap<ChatId, i64> = HashMap::new();
    let mut keys: BTreeMap<(&str, ChatId), BTreeSet<i64>> = BTreeMap::new();
    for (chat, entries) in &history.logs {
        for e in entries {
            at.insert((*chat, e.seq), e.id);
            let head = heads.entry(*chat).or_default();
            *head = (*head).max(e.seq);
            if let Some(key) = &e.client_message_id {
                keys.entry((key.as_str(), *chat)).or_default().insert(e.seq);
            }
        }
    }
    // Idempotency: one key, one message, in the log and in every ack.
    for (key, acks) in &history.acks {
        for a in acks {
            keys.entry((key.as_str(), a.chat))
                .or_default()
                .insert(a.seq);
        }
    }
    for ((key, chat), seqs) in &keys {
        if seqs.len() > 1 {
            out.push(Violation::SecondMessage {
                key: (*key).to_owned(),
                chat: *chat,
                seqs: seqs.iter().copied().collect(),
            });
        }
    }
    // Acknowledged means stored: in the log at its seq, as that message.
    let mut acked: Vec<(&str, &Ack)> = history
        .acks
        .iter()
        .filter_map(|(k, a)| a.first().map(|a| (k.as_str(), a)))
        .collect();
    acked.sort_by_key(|(k, a)| (a.chat, a.seq, *k));
    for (key, ack) in &acked {
        match at.get(&(ack.chat, ack.seq)) {
            None => out.push(Violation::Lost {
                device: "server".to_owned(),
                chat: ack.chat,
                seq: ack.seq,
                key: (*key).to_owned(),
            }),
            Some(id) if *id != ack.id => out.push(Violation::Disagreement {
                device: format!("{} (its ack)", history.name(ack.device)),
                chat: ack.chat,
                seq: ack.seq,
            }),
            Some(_) => {}
        }
    }
    for (ix, device) in history.devices.iter().enumerate() {
        let deliveries = history.deliveries.get(ix).map_or(&[][..], Vec::as_slice);
        let mut last: HashMap<ChatId, (i64, u32)> = HashMap::new();
        let mut seen: HashMap<(ChatId, i64), u32> = HashMap::new();
        for d in deliveries {
            if let Some(first) = seen.insert((d.chat, d.seq), d.connection) {
                out.push(Violation::Duplicate {
                    device: device.name.clone(),
                    chat: d.chat,
                    seq: d.seq,
                    connections: (first, d.connection),
                });
            } else if let Some((after, _)) = last.get(&d.chat).filter(|(s, _)| *s >= d.seq) {
                out.push(Violation::OutOfOrder {
                    device: device.name.clone(),
                    chat: d.chat,
                    after: *after,
                    seq: d.seq,
                });
            }
            last.insert(d.chat, (d.seq, d.connection));
            if at.get(&(d.chat, d.seq)).is_some_and(|id| *id != d.id) {
                out.push(Violation::Disagreement {
                    device: device.name.clone(),
                    chat: d.chat,
                    seq: d.seq,
                });
            }
        }
        // After the final sync the device has its chats' logs entire.
        for chat in &device.chats {
            let excused = history.excused.get(&(ix, *chat)).copied().unwrap_or(0);
            let head = heads.get(chat).copied().unwrap_or(0);
            let acked_here: HashMap<i64, &str> = acked
                .iter()
                .filter(|(_, a)| a.chat == *chat)
                .map(|(k, a)| (a.seq, *k))
                .collect();
            for seq in excused + 1..=head {
                if seen.contains_key(&(*chat, seq)) {
                    continue;
                }
                out.push(match acked_here.get(&seq) {
                    Some(key) => Violation::Lost {
                        device: device.name.clone(),
                        chat: *chat,
                        seq,
                        key: (*key).to_owned(),
                    },
                    None => Violation::Gap {
                        device: device.name.clone(),
                        chat: *chat,
                        seq,
                        when: "after the final sync".to_owned(),
                    },
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(n: u128) -> MessageId {
        MessageId::from_uuid(uuid::Uuid::from_u128(n))
    }

    fn chat() -> ChatId {
        ChatId::from_uuid(uuid::Uuid::from_u128(7))
    }

    /// Two devices in one chat; the log holds seqs 1..=3 (keys k2, k3).
    fn two_devices() -> History {
        let c = chat();
        let mut h = History::new(vec![
            DeviceInfo {
                name: "u0/d0".to_owned(),
                chats: vec![c],
            },
            DeviceInfo {
                name: "u1/d0".to_owned(),
                chats: vec![c],
            },
        ]);
        h.final_log(
            c,
            (1..=3)
                .map(|seq| LogEntry {
                    seq,
                    id: id(seq as u128),
                    client_message_id: (seq > 1).then(|| format!("k{seq}")),
                })
                .collect(),
        );
        h
    }

    fn deliver_all(h: &mut History, device: DeviceIx) {
        for seq in 1..=3 {
            h.delivered(device, 1, chat(), seq, id(seq as u128));
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let mut h = two_devices();
        h.attempt("k2", chat(), Via::Rest);
        h.attempt("k2", chat(), Via::Rest);
        h.ack(0, "k2", chat(), 2, id(2));
        h.ack(0, "k2", chat(), 2, id(2));
        deliver_all(&mut h, 0);
        deliver_all(&mut h, 1);
        h.sync_done(1, chat(), 3);
        assert_eq!(check(&h), vec![]);
        assert_eq!((h.sent(), h.retries(), h.acked()), (1, 1, 1));
    }

    #[test]
    fn a_missing_acknowledged_message_is_lost_on_that_device() {
        let mut h = two_devices();
        h.ack(0, "k3", chat(), 3, id(3));
        deliver_all(&mut h, 0);
        h.delivered(1, 1, chat(), 1, id(1));
        h.delivered(1, 1, chat(), 2, id(2));
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(matches!(&v[0], Violation::Lost { device, seq: 3, .. } if device == "u1/d0"));
    }

    #[test]
    fn a_second_copy_across_reconnects_is_a_duplicate() {
        let mut h = two_devices();
        deliver_all(&mut h, 0);
        deliver_all(&mut h, 1);
        h.delivered(1, 2, chat(), 2, id(2));
        let v = check(&h);
        assert_eq!(
            v,
            vec![Violation::Duplicate {
                device: "u1/d0".to_owned(),
                chat: chat(),
                seq: 2,
                connections: (1, 2)
            }]
        );
    }

    #[test]
    fn order_gaps_and_second_messages_are_named() {
        let mut h = two_devices();
        deliver_all(&mut h, 0);
        h.delivered(1, 1, chat(), 2, id(2));
        h.sync_done(1, chat(), 2);
        h.delivered(1, 1, chat(), 1, id(1));
        h.delivered(1, 1, chat(), 3, id(3));
        // A retry of k2 acknowledged at another seq.
        h.ack(1, "k2", chat(), 2, id(2));
        h.ack(1, "k2", chat(), 3, id(3));
        let v = check(&h);
        assert!(v.contains(&Violation::Gap {
            device: "u1/d0".to_owned(),
            chat: chat(),
            seq: 1,
            when: "before sync_done at seq 2".to_owned()
        }));
        assert!(v.contains(&Violation::OutOfOrder {
            device: "u1/d0".to_owned(),
            chat: chat(),
            after: 2,
            seq: 1
        }));
        assert!(v.contains(&Violation::SecondMessage {
            key: "k2".to_owned(),
            chat: chat(),
            seqs: vec![2, 3]
        }));
    }

    #[test]
    fn an_acknowledged_message_missing_from_the_log_is_lost_by_the_server() {
        let mut h = two_devices();
        deliver_all(&mut h, 0);
        deliver_all(&mut h, 1);
        h.ack(0, "k9", chat(), 9, id(9));
        let v = check(&h);
        assert!(matches!(&v[..], [Violation::Lost { device, seq: 9, .. }] if device == "server"));
    }
}
