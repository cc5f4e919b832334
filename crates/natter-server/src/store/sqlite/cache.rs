//! The writer's memory of the chats: each chat's kind, log head, current
//! members with their roles and receipt positions, and the chat's lowest
//! positions. The store stays the authoritative copy; a chat is loaded from
//! it the first time a write job needs it (and again after the writer
//! forgot it), so appending a message reads nothing: the membership check
//! and the seq come from here, and the log row is the one durable write.
//!
//! Only the writer thread touches this, inside its transaction, so it never
//! disagrees with what that transaction has written. A job that fails makes
//! the writer [`ChatCache::forget`] everything.
//!
//! Delivered positions (from device acks) and the sender's own position
//! after a send change often and matter little if lost: they are kept here
//! and written out at most `flush_every` apart. Read positions, which drive
//! unread counts, are written at once by their jobs. After each commit the
//! writer publishes the receipt positions of the chats it touched
//! ([`PublishedReceipts`]), and readers take a chat's positions from there
//! before the store, so they never see the store's older copy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use natter_proto::chats::{ChatKind, Role};
use natter_proto::{ChatId, UserId};
use rusqlite::{Connection, OptionalExtension};

use super::uuid_of;
use crate::clock::Timestamp;
use crate::store::rules::MemberFacts;
use crate::store::{ReceiptState, Recipients};

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
pub(super) struct MemberState {
    /// Role, join position and time.
    pub(super) facts: MemberFacts,
    /// Highest seq a device of theirs received.
    pub(super) delivered: i64,
    /// Highest seq they read.
    pub(super) read: i64,
}

/// One chat, as the writer knows it.
#[derive(Debug)]
pub(super) struct ChatState {
    /// Direct or group.
    pub(super) kind: ChatKind,
    /// Whether the chat takes only ciphertext (fixed at creation).
    pub(super) encrypted: bool,
    /// The log's last seq.
    pub(super) last_seq: i64,
    /// The MLS epoch (encrypted chats): the next commit must be for it,
    /// application messages for it or the `PAST_EPOCHS` before it.
    pub(super) epoch: u64,
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
    pub(super) fn new(kind: ChatKind, encrypted: bool) -> Self {
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
    pub(super) fn role(&self, user: UserId) -> Option<Role> {
        self.members.get(&user).map(|m| m.facts.role)
    }

    /// Records that `sender` appended the entry at `seq` (the log's head).
    pub(super) fn appended(&mut self, sender: UserId, seq: i64) {
        self.last_seq = seq;
        match self.latest[0] {
            Some((last, _)) if last == sender => self.latest[0] = Some((sender, seq)),
            previous => self.latest = [Some((sender, seq)), previous],
        }
    }

    /// The seq of the latest entry someone other than `user` appended, as
    /// far as this memory knows (`None`: none since the chat was loaded).
    pub(super) fn latest_not_by(&self, user: UserId) -> Option<i64> {
        self.latest
            .iter()
            .flatten()
            .find(|(sender, _)| *sender != user)
            .map(|(_, seq)| *seq)
    }

    /// A current member's delivered and read positions.
    pub(super) fn positions(&self, user: UserId) -> Option<(i64, i64)> {
        self.members.get(&user).map(|m| (m.delivered, m.read))
    }

    /// How many members the chat has.
    pub(super) fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The current members, for the rules.
    pub(super) fn member_facts(&self) -> Vec<MemberFacts> {
        self.members.values().map(|m| m.facts).collect()
    }

    /// The current members, shared.
    pub(super) fn recipients(&self) -> Recipients {
        std::sync::Arc::clone(&self.recipients)
    }

    /// The chat's receipt positions: the lowest of its members' (nothing is
    /// delivered or read in a chat of one).
    pub(super) fn receipts(&self) -> ReceiptState {
        if self.members.len() < 2 {
            return ReceiptState::default();
        }
        ReceiptState {
            delivered_seq: self.delivered.lowest(),
            read_seq: self.read.lowest(),
        }
    }

    /// Adds a member whose positions are `delivered` and `read`.
    pub(super) fn join(&mut self, facts: MemberFacts, delivered: i64, read: i64) {
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
    pub(super) fn leave(&mut self, user: UserId) {
        if let Some(old) = self.members.remove(&user) {
            self.delivered.remove(old.delivered);
            self.read.remove(old.read);
            self.rebuild_recipients();
        }
    }

    /// Changes a member's role.
    pub(super) fn set_role(&mut self, user: UserId, role: Role) {
        if let Some(m) = self.members.get_mut(&user) {
            m.facts.role = role;
        }
    }

    /// Moves a member's positions forward (never back, never past the log's
    /// head; reading implies receiving). Returns the member's positions if
    /// they moved.
    pub(super) fn advance(
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

/// The receipt positions the writer last committed, by chat: newer than the
/// store's copy while delivered positions wait to be flushed.
pub(crate) type PublishedReceipts = Arc<Mutex<HashMap<ChatId, ReceiptState>>>;

/// The writer's chats, bounded.
#[derive(Debug)]
pub(crate) struct ChatCache {
    /// Chats by id.
    chats: HashMap<ChatId, ChatState>,
    /// Most chats kept (`store.chat_cache_max`); past it, some are forgotten
    /// (and reloaded when next written to).
    max: usize,
    /// How long changed delivered positions may wait in memory.
    flush_every: Duration,
    /// Members whose positions changed in memory only.
    unflushed: HashSet<(ChatId, UserId)>,
    /// Chats the jobs of the current batch used.
    touched: HashSet<ChatId>,
    /// What readers see of the chats' receipt positions.
    published: PublishedReceipts,
}

impl ChatCache {
    /// An empty cache of at most `max` chats, flushing positions every `flush_every`.
    pub(crate) fn new(max: usize, flush_every: Duration) -> Self {
        Self {
            chats: HashMap::new(),
            max: max.max(1),
            flush_every,
            unflushed: HashSet::new(),
            touched: HashSet::new(),
            published: PublishedReceipts::default(),
        }
    }

    /// The positions readers see, shared with the store's read side.
    pub(crate) fn published(&self) -> PublishedReceipts {
        Arc::clone(&self.published)
    }

    /// After a commit: makes the touched chats' positions visible to readers.
    pub(super) fn publish(&mut self) {
        if self.touched.is_empty() {
            return;
        }
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for chat in self.touched.drain() {
            if let Some(state) = self.chats.get(&chat) {
                published.insert(chat, state.receipts());
            }
        }
    }

    /// The chat, loaded from the store on first use; `None` if it does not exist.
    pub(super) fn get(
        &mut self,
        c: &Connection,
        chat: ChatId,
    ) -> rusqlite::Result<Option<&mut ChatState>> {
        self.touched.insert(chat);
        match self.chats.entry(chat) {
            std::collections::hash_map::Entry::Occupied(slot) => Ok(Some(slot.into_mut())),
            std::collections::hash_map::Entry::Vacant(slot) => {
                Ok(load(c, chat)?.map(|state| slot.insert(state)))
            }
        }
    }

    /// Records a chat just created in this transaction.
    pub(super) fn insert(&mut self, chat: ChatId, state: ChatState) -> &mut ChatState {
        self.touched.insert(chat);
        self.chats.entry(chat).insert_entry(state).into_mut()
    }

    /// Notes that a member's positions changed in memory only.
    pub(super) fn unflushed(&mut self, chat: ChatId, user: UserId) {
        self.unflushed.insert((chat, user));
    }

    /// Whether positions wait to be written.
    pub(super) fn has_unflushed(&self) -> bool {
        !self.unflushed.is_empty()
    }

    /// How long changed positions may wait.
    pub(super) fn flush_every(&self) -> Duration {
        self.flush_every
    }

    /// Writes the positions that changed in memory.
    pub(super) fn flush(&mut self, c: &Connection) -> rusqlite::Result<()> {
        for (chat, user) in self.unflushed.drain() {
            let Some(m) = self.chats.get(&chat).and_then(|s| s.members.get(&user)) else {
                continue;
            };
            super::chats::write_positions(c, chat, user, m.delivered, m.read)?;
        }
        Ok(())
    }

    /// Forgets every chat (after a failed job; they reload from the store).
    /// Positions not yet written are lost: at most `flush_every` of
    /// delivered positions, which later acks restore.
    pub(super) fn forget(&mut self) {
        self.chats.clear();
        self.unflushed.clear();
        self.touched.clear();
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Past `max` chats, forgets about half of them, once nothing waits to
    /// be written (the next flush makes that so).
    pub(super) fn evict_if_full(&mut self) {
        if self.chats.len() <= self.max || self.has_unflushed() {
            return;
        }
        let keep = self.max / 2;
        let mut kept = 0;
        self.chats.retain(|_, _| {
            kept += 1;
            kept <= keep
        });
        // What was forgotten is flushed: the store's copy is current again.
        let chats = &self.chats;
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|chat, _| chats.contains_key(chat));
        metrics::counter!("natter_store_chat_cache_evictions_total").increment(1);
    }
}

/// Reads a chat's state from the store.
fn load(c: &Connection, chat: ChatId) -> rusqlite::Result<Option<ChatState>> {
    let id = chat.as_uuid().as_bytes();
    let row: Option<(String, bool, u64)> = c
        .prepare_cached("SELECT kind, encrypted, epoch FROM chats WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((kind, encrypted, epoch)) = row else {
        return Ok(None);
    };
    let kind = if kind == "group" {
        ChatKind::Group
    } else {
        ChatKind::Direct
    };
    let mut state = ChatState::new(kind, encrypted);
    state.epoch = epoch;
    state.last_seq = c
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM chat_log WHERE chat_id = ?1")?
        .query_row([id], |r| r.get(0))?;
    let mut members = c.prepare_cached(
        "SELECT m.user_id, m.role, m.from_seq, m.joined_at,
                coalesce(r.delivered_seq, 0) AS delivered, coalesce(r.read_seq, 0) AS read
         FROM memberships m
         LEFT JOIN receipts r ON r.chat_id = m.chat_id AND r.user_id = m.user_id
         WHERE m.chat_id = ?1 AND m.to_seq IS NULL",
    )?;
    let rows = members.query_map([id], |r| {
        let role: String = r.get("role")?;
        Ok((
            MemberFacts {
                user_id: UserId::from_uuid(uuid_of(r, "user_id")?),
                role: if role == "admin" {
                    Role::Admin
                } else {
                    Role::Member
                },
                from_seq: r.get("from_seq")?,
                joined_at: Timestamp(r.get("joined_at")?),
            },
            r.get::<_, i64>("delivered")?,
            r.get::<_, i64>("read")?,
        ))
    })?;
    for row in rows {
        let (facts, delivered, read) = row?;
        state.join(facts, delivered, read);
    }
    Ok(Some(state))
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
