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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use natter_proto::chats::{ChatKind, Role};
use natter_proto::{ChatId, UserId};
use rusqlite::{Connection, OptionalExtension};

use super::uuid_of;
use crate::clock::Timestamp;
use crate::store::ReceiptState;
pub(super) use crate::store::chat_state::ChatState;
use crate::store::rules::MemberFacts;

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
            let Some((delivered, read)) = self.chats.get(&chat).and_then(|s| s.positions(user))
            else {
                continue;
            };
            super::chats::write_positions(c, chat, user, delivered, read)?;
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
