//! Where one live connection is in each of its user's chats: the rule that
//! makes live delivery and `sync` give every event once, in per-chat order,
//! with no gap and no duplicate across the switch.
//!
//! Per chat the connection keeps `live_from` and `next`: it has delivered
//! every event of the chat in `(live_from, next)` exactly once. At connect,
//! both start at the chat's head, read *after* the connection registered on
//! the bus, so every later event reaches it live. A live event below `next`
//! is a duplicate; one above it means events were published out of order
//! (different request tasks), and the gap is filled from the store first.
//! `sync` from a position sends `(position, live_from]` only, which are
//! exactly the events this connection has not delivered. A chat the user
//! joins while connected is followed from its join entry.

use std::collections::HashMap;

use natter_proto::ChatId;
use natter_proto::ws::ChatPosition;

use crate::store::ChatHead;

/// What to do with a live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Already delivered: drop it.
    Duplicate,
    /// The next one: deliver it.
    Next,
    /// Events after `after` and before this one come first (from the store).
    Gap {
        /// The last seq delivered.
        after: i64,
    },
    /// A chat this connection does not follow (the user joined it since,
    /// or left it): ask the store where the user's membership starts.
    Unfollowed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// Everything in `(live_from, next)` was delivered here.
    live_from: i64,
    /// The next seq to deliver.
    next: i64,
}

/// One connection's position in each chat it follows.
#[derive(Debug, Default)]
pub struct DeliveryCursor {
    chats: HashMap<ChatId, Span>,
}

impl DeliveryCursor {
    /// Follows each chat from its head (read after registering on the bus).
    #[must_use]
    pub fn new(heads: &[ChatHead]) -> Self {
        let chats = heads
            .iter()
            .map(|h| {
                (
                    h.chat_id,
                    Span {
                        live_from: h.last_seq,
                        next: h.last_seq + 1,
                    },
                )
            })
            .collect();
        Self { chats }
    }

    /// Where a live event of `chat` at `seq` stands.
    #[must_use]
    pub fn classify(&self, chat: ChatId, seq: i64) -> Live {
        match self.chats.get(&chat) {
            None => Live::Unfollowed,
            Some(span) if seq < span.next => Live::Duplicate,
            Some(span) if seq == span.next => Live::Next,
            Some(span) => Live::Gap {
                after: span.next - 1,
            },
        }
    }

    /// Starts following a chat the user joined at `from_seq` (its join
    /// entry is the first event they see). Nothing changes for a chat
    /// already followed.
    pub fn follow_from(&mut self, chat: ChatId, from_seq: i64) {
        self.chats.entry(chat).or_insert(Span {
            live_from: from_seq - 1,
            next: from_seq,
        });
    }

    /// Starts following a chat from its head `last_seq` (as at connect).
    pub fn follow_at_head(&mut self, chat: ChatId, last_seq: i64) {
        self.chats.entry(chat).or_insert(Span {
            live_from: last_seq,
            next: last_seq + 1,
        });
    }

    /// Records that every event of `chat` up to `seq` was delivered.
    pub fn delivered(&mut self, chat: ChatId, seq: i64) {
        if let Some(span) = self.chats.get_mut(&chat) {
            span.next = span.next.max(seq + 1);
        }
    }

    /// Stops following a chat (the user left it; its last event was sent).
    pub fn unfollow(&mut self, chat: ChatId) {
        self.chats.remove(&chat);
    }

    /// The last seq a sync of `chat` must send (`live_from`): later events
    /// came or come live. `None` if the chat is not followed.
    #[must_use]
    pub fn sync_until(&self, chat: ChatId) -> Option<i64> {
        self.chats.get(&chat).map(|s| s.live_from)
    }

    /// Records that a sync sent `(since, live_from]` of `chat`.
    pub fn synced(&mut self, chat: ChatId, since: i64) {
        if let Some(span) = self.chats.get_mut(&chat) {
            span.live_from = span.live_from.min(since.max(0));
        }
    }

    /// The last seq delivered in each followed chat.
    #[must_use]
    pub fn positions(&self) -> Vec<ChatPosition> {
        let mut out: Vec<ChatPosition> = self
            .chats
            .iter()
            .map(|(chat, span)| ChatPosition {
                chat_id: *chat,
                seq: span.next - 1,
            })
            .collect();
        out.sort_by_key(|p| p.chat_id);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(chat: ChatId, last_seq: i64) -> ChatHead {
        ChatHead {
            chat_id: chat,
            last_seq,
            from_seq: 1,
        }
    }

    #[test]
    fn live_events_are_delivered_in_order_and_duplicates_dropped() {
        let chat = ChatId::new();
        let mut cursor = DeliveryCursor::new(&[head(chat, 10)]);
        assert_eq!(cursor.classify(chat, 10), Live::Duplicate, "at connect");
        assert_eq!(cursor.classify(chat, 11), Live::Next);
        cursor.delivered(chat, 11);
        assert_eq!(cursor.classify(chat, 11), Live::Duplicate);
        assert_eq!(cursor.classify(chat, 14), Live::Gap { after: 11 });
        cursor.delivered(chat, 14);
        assert_eq!(
            cursor.classify(chat, 12),
            Live::Duplicate,
            "filled by the gap"
        );
        cursor.delivered(chat, 12);
        assert_eq!(cursor.classify(chat, 15), Live::Next, "never moves back");
    }

    #[test]
    fn sync_sends_exactly_what_live_delivery_did_not() {
        let chat = ChatId::new();
        let mut cursor = DeliveryCursor::new(&[head(chat, 10)]);
        cursor.delivered(chat, 11);
        cursor.delivered(chat, 12);
        // The device had 4: sync sends 5..=10; 11 and 12 came live.
        assert_eq!(cursor.sync_until(chat), Some(10));
        cursor.synced(chat, 4);
        // A second sync from 4 sends nothing new; from 2 it sends 3..=4.
        assert_eq!(cursor.sync_until(chat), Some(4));
        cursor.synced(chat, 2);
        assert_eq!(cursor.sync_until(chat), Some(2));
        assert_eq!(
            cursor.positions(),
            vec![ChatPosition {
                chat_id: chat,
                seq: 12
            }]
        );
    }

    #[test]
    fn a_chat_joined_while_connected_is_followed_from_the_join() {
        let (old, new) = (ChatId::new(), ChatId::new());
        let mut cursor = DeliveryCursor::new(&[head(old, 3)]);
        assert_eq!(cursor.classify(new, 8), Live::Unfollowed);
        cursor.follow_from(new, 7);
        assert_eq!(cursor.classify(new, 8), Live::Gap { after: 6 });
        assert_eq!(cursor.classify(new, 7), Live::Next);
        cursor.follow_from(new, 1);
        assert_eq!(cursor.classify(new, 7), Live::Next, "following already");
        cursor.unfollow(new);
        assert_eq!(cursor.classify(new, 9), Live::Unfollowed);
        assert_eq!(cursor.sync_until(new), None);
    }
}
