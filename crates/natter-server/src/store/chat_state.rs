//! One chat as an engine's write path sees it while appending: its kind,
//! log head, MLS epoch, current members with their roles and receipt
//! positions, and the chat's lowest positions. The embedded engine keeps
//! these in its writer's memory between transactions (`sqlite/cache.rs`);
//! the PostgreSQL engine loads one under the chat row's lock for each
//! transaction. Either way the receipt arithmetic and who hears of an
//! entry are computed here, once.

use std::collections::{BTreeMap, HashMap};

use natter_proto::chats::{ChatEvent, ChatKind, Role};
use natter_proto::{ChatId, DeviceId, MediaId, MessageId, UserId};

use super::rules::MemberFacts;
use super::{EntryKind, LogEntry, NewMessage, ReceiptState, Recipients};
use crate::clock::Timestamp;

/// A multiset of positions, for the lowest one in O(log n).
#[derive(Debug, Default)]
struct Positions(BTreeMap<i64, u32>);

impl Positions {
    fn add(&mut self, seq: i64) {
        *self.0.entry(seq).or_default() += 1;
    }

    fn remove(&mut self, seq: i64) {
        if let Some(n) = self.0.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&seq);
            }
        }
    }

    fn lowest(&self) -> i64 {
        self.0.keys().next().copied().unwrap_or(0)
    }
}

/// A current member.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemberState {
    /// Role, join position and time.
    pub(crate) facts: MemberFacts,
    /// Highest seq a device of theirs received.
    pub(crate) delivered: i64,
    /// Highest seq they read.
    pub(crate) read: i64,
}

/// One chat, as the writer knows it.
#[derive(Debug)]
pub(crate) struct ChatState {
    /// Direct or group.
    pub(crate) kind: ChatKind,
    /// Whether the chat takes only ciphertext (fixed at creation).
    pub(crate) encrypted: bool,
    /// The log's last seq.
    pub(crate) last_seq: i64,
    /// The MLS epoch (encrypted chats): the next commit must be for it,
    /// application messages for it or the `PAST_EPOCHS` before it.
    pub(crate) epoch: u64,
    /// The latest entry's sender and seq, and the latest of anyone else
    /// before them: enough to tell whether a member's send read entries
    /// of others (their read position must then be written at once, for
    /// unread counts).
    latest: [Option<(UserId, i64)>; 2],
    /// Current members.
    members: HashMap<UserId, MemberState>,
    /// The current members, shared by every entry appended until they change.
    recipients: Recipients,
    /// Every member's delivered position.
    delivered: Positions,
    /// Every member's read position.
    read: Positions,
}

impl ChatState {
    /// A chat with no members and an empty log.
    pub(crate) fn new(kind: ChatKind, encrypted: bool) -> Self {
        Self {
            kind,
            encrypted,
            last_seq: 0,
            epoch: 0,
            latest: [None, None],
            members: HashMap::new(),
            recipients: Recipients::from(Vec::new()),
            delivered: Positions::default(),
            read: Positions::default(),
        }
    }

    /// A current member's role.
    pub(crate) fn role(&self, user: UserId) -> Option<Role> {
        self.members.get(&user).map(|m| m.facts.role)
    }

    /// Records that `sender` appended the entry at `seq` (the log's head).
    pub(crate) fn appended(&mut self, sender: UserId, seq: i64) {
        self.last_seq = seq;
        match self.latest[0] {
            Some((last, _)) if last == sender => self.latest[0] = Some((sender, seq)),
            previous => self.latest = [Some((sender, seq)), previous],
        }
    }

    /// The seq of the latest entry someone other than `user` appended, as
    /// far as this memory knows (`None`: none since the chat was loaded).
    pub(crate) fn latest_not_by(&self, user: UserId) -> Option<i64> {
        self.latest
            .iter()
            .flatten()
            .find(|(sender, _)| *sender != user)
            .map(|(_, seq)| *seq)
    }

    /// A current member's delivered and read positions.
    pub(crate) fn positions(&self, user: UserId) -> Option<(i64, i64)> {
        self.members.get(&user).map(|m| (m.delivered, m.read))
    }

    /// How many members the chat has.
    pub(crate) fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The current members, for the rules.
    pub(crate) fn member_facts(&self) -> Vec<MemberFacts> {
        self.members.values().map(|m| m.facts).collect()
    }

    /// The current members, shared.
    pub(crate) fn recipients(&self) -> Recipients {
        std::sync::Arc::clone(&self.recipients)
    }

    /// The chat's receipt positions: the lowest of its members' (nothing is
    /// delivered or read in a chat of one).
    pub(crate) fn receipts(&self) -> ReceiptState {
        if self.members.len() < 2 {
            return ReceiptState::default();
        }
        ReceiptState {
            delivered_seq: self.delivered.lowest(),
            read_seq: self.read.lowest(),
        }
    }

    /// Adds a member whose positions are `delivered` and `read`.
    pub(crate) fn join(&mut self, facts: MemberFacts, delivered: i64, read: i64) {
        if let Some(old) = self.members.remove(&facts.user_id) {
            self.delivered.remove(old.delivered);
            self.read.remove(old.read);
        }
        self.delivered.add(delivered);
        self.read.add(read);
        self.members.insert(
            facts.user_id,
            MemberState {
                facts,
                delivered,
                read,
            },
        );
        self.rebuild_recipients();
    }

    /// Removes a member.
    pub(crate) fn leave(&mut self, user: UserId) {
        if let Some(old) = self.members.remove(&user) {
            self.delivered.remove(old.delivered);
            self.read.remove(old.read);
            self.rebuild_recipients();
        }
    }

    /// Changes a member's role.
    pub(crate) fn set_role(&mut self, user: UserId, role: Role) {
        if let Some(m) = self.members.get_mut(&user) {
            m.facts.role = role;
        }
    }

    /// Moves a member's positions forward (never back, never past the log's
    /// head; reading implies receiving). Returns the member's positions if
    /// they moved.
    pub(crate) fn advance(
        &mut self,
        user: UserId,
        delivered: i64,
        read: i64,
    ) -> Option<(i64, i64)> {
        let head = self.last_seq;
        let m = self.members.get_mut(&user)?;
        let read_now = m.read.max(read.min(head));
        let delivered_now = m.delivered.max(delivered.min(head)).max(read_now);
        if (delivered_now, read_now) == (m.delivered, m.read) {
            return None;
        }
        self.delivered.remove(m.delivered);
        self.delivered.add(delivered_now);
        self.read.remove(m.read);
        self.read.add(read_now);
        m.delivered = delivered_now;
        m.read = read_now;
        Some((delivered_now, read_now))
    }

    fn rebuild_recipients(&mut self) {
        let mut users: Vec<UserId> = self.members.keys().copied().collect();
        users.sort_unstable();
        self.recipients = users.into();
    }
}

/// A log entry before it has its seq.
pub(crate) struct Draft {
    pub(crate) id: MessageId,
    pub(crate) sender_id: UserId,
    pub(crate) sender_device_id: Option<DeviceId>,
    pub(crate) kind: EntryKind,
    pub(crate) content: Option<String>,
    pub(crate) ciphertext: Option<Vec<u8>>,
    pub(crate) media_id: Option<MediaId>,
    pub(crate) reply_to: Option<MessageId>,
    pub(crate) client_message_id: Option<String>,
    pub(crate) client_timestamp: Option<Timestamp>,
    pub(crate) now: Timestamp,
}

impl Draft {
    /// A message to post, as a draft of its entry.
    pub(crate) fn message(m: NewMessage) -> Self {
        Self {
            id: m.id,
            sender_id: m.sender_id,
            sender_device_id: Some(m.sender_device_id),
            kind: EntryKind::Message(m.message_type),
            content: m.content,
            ciphertext: m.ciphertext,
            media_id: m.media_id,
            reply_to: m.reply_to,
            client_message_id: m.client_message_id,
            client_timestamp: m.client_timestamp,
            now: m.now,
        }
    }

    /// The entry this draft is once stored at `seq` of `chat`.
    pub(crate) fn into_entry(self, chat: ChatId, seq: i64) -> LogEntry {
        LogEntry {
            id: self.id,
            chat_id: chat,
            seq,
            sender_id: self.sender_id,
            sender_device_id: self.sender_device_id,
            kind: self.kind,
            content: self.content,
            ciphertext: self.ciphertext,
            media_id: self.media_id,
            reply_to: self.reply_to,
            client_message_id: self.client_message_id,
            client_timestamp: self.client_timestamp,
            created_at: self.now,
            edited_at: None,
            deleted_at: None,
        }
    }

    pub(crate) fn system(actor: UserId, event: ChatEvent, now: Timestamp) -> Self {
        Self {
            id: MessageId::new(),
            sender_id: actor,
            sender_device_id: None,
            kind: EntryKind::System(event),
            content: None,
            ciphertext: None,
            media_id: None,
            reply_to: None,
            client_message_id: None,
            client_timestamp: None,
            now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(user: UserId, from_seq: i64) -> MemberFacts {
        MemberFacts {
            user_id: user,
            role: Role::Member,
            from_seq,
            joined_at: Timestamp(0),
        }
    }

    #[test]
    fn receipt_positions_are_the_lowest_members_and_only_move_forward() {
        let (a, b, c) = (UserId::new(), UserId::new(), UserId::new());
        let mut chat = ChatState::new(ChatKind::Group, false);
        chat.last_seq = 10;
        chat.join(facts(a, 1), 0, 0);
        assert_eq!(chat.receipts(), ReceiptState::default(), "a chat of one");
        chat.join(facts(b, 1), 0, 0);
        chat.join(facts(c, 1), 0, 0);
        assert_eq!(
            chat.advance(a, 0, 8),
            Some((8, 8)),
            "reading implies receiving"
        );
        assert_eq!(chat.advance(b, 5, 0), Some((5, 0)));
        assert_eq!(chat.receipts().delivered_seq, 0, "c has nothing yet");
        chat.advance(c, 7, 6);
        assert_eq!(
            chat.receipts(),
            ReceiptState {
                delivered_seq: 5,
                read_seq: 0
            }
        );
        assert_eq!(chat.advance(b, 4, 0), None, "never back");
        assert_eq!(
            chat.advance(b, 99, 99),
            Some((10, 10)),
            "never past the head"
        );
        chat.leave(c);
        assert_eq!(
            chat.receipts(),
            ReceiptState {
                delivered_seq: 8,
                read_seq: 8
            },
            "a member who left no longer holds the chat back"
        );
        assert_eq!(&*chat.recipients(), {
            let mut v = vec![a, b];
            v.sort_unstable();
            v
        });
    }
}
