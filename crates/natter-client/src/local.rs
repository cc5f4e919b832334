//! What a device keeps locally, whatever holds it: [`ClientStore`] is the
//! seam the [`crate::Messenger`] runs over. Natively it is the SQLite
//! [`crate::Store`]; in the browser, `BrowserStore` (IndexedDB, records
//! encrypted with a non-extractable WebCrypto key).
//!
//! A store keeps, besides the sync engine's [`SyncState`]:
//! - `state`: opaque key → bytes for the encryption engine, changed only in
//!   transactions ([`ClientStore::transaction_dyn`], or the typed
//!   `transaction` on `dyn ClientStore`);
//! - the decrypted history, searched locally ([`ClientStore::search_local`]),
//!   because the server cannot search encrypted chats.
//!
//! May depend on: `natter-proto`, [`crate::session`], the payload types of
//! [`crate::e2ee::payload`]. No I/O here.

use std::sync::Arc;

use natter_proto::{ChatId, DeviceId, MessageId, UserId};

use crate::StoreError;
use crate::session::SyncState;

/// Most hits [`ClientStore::search_local`] returns.
pub const SEARCH_LIMIT: usize = 100;

/// A message of the local history (decrypted, or plaintext). Its `Debug`
/// shows the text's size only.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// The chat.
    pub chat_id: ChatId,
    /// Its seq in the chat log.
    pub seq: i64,
    /// The server's id.
    pub message_id: MessageId,
    /// Who sent it.
    pub sender_id: UserId,
    /// The server's timestamp (RFC 3339).
    pub sent_at: String,
    /// The text (a file's name for a file message).
    pub text: String,
    /// The message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// A file message's body (media id and key): what fetching and
    /// decrypting the file again needs, after a restart too. It is as
    /// private as the text, and kept where the text is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<crate::e2ee::payload::Body>,
}

impl std::fmt::Debug for HistoryEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryEntry")
            .field("chat_id", &self.chat_id)
            .field("seq", &self.seq)
            .field("message_id", &self.message_id)
            .field("sender_id", &self.sender_id)
            .field("sent_at", &self.sent_at)
            .field("text", &crate::Redacted(self.text.len()))
            .field("reply_to", &self.reply_to)
            .field("file", &self.file)
            .finish()
    }
}

/// The saved login of this device (natively `session.json`, mode 0600).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedSession {
    /// The server.
    pub base: String,
    /// The account.
    pub user_id: UserId,
    /// This device.
    pub device_id: DeviceId,
    /// The bearer token.
    pub token: String,
}

impl std::fmt::Debug for SavedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedSession")
            .field("base", &self.base)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The `state` table inside one transaction.
pub trait StateTx {
    /// The value of `key`, if set.
    ///
    /// # Errors
    /// The store failed.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// The store failed.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key` (nothing if absent).
    ///
    /// # Errors
    /// The store failed.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Every key starting with `prefix`, sorted.
    ///
    /// # Errors
    /// The store failed.
    fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
}

/// A device's local store: sync state, the encryption engine's state, and
/// the searchable history.
pub trait ClientStore: SyncState {
    /// Runs `work` in one transaction over `state`: all of its puts and
    /// deletes commit together, or none do if it fails. (Callers use the
    /// typed `transaction` on `dyn ClientStore`.)
    ///
    /// # Errors
    /// `work`'s error, or the store's.
    fn transaction_dyn(
        &self,
        work: &mut dyn FnMut(&dyn StateTx) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Adds (or, for the same chat and seq, replaces) a message of the history.
    ///
    /// # Errors
    /// The store failed.
    fn put_history(&self, entry: &HistoryEntry) -> Result<(), StoreError>;
    /// Replaces the text of a message already in the history (an edit), or
    /// removes it (`None`: deleted for everyone).
    ///
    /// # Errors
    /// The store failed.
    fn update_history(&self, message: MessageId, text: Option<&str>) -> Result<(), StoreError>;
    /// A chat's local history, oldest first.
    ///
    /// # Errors
    /// The store failed.
    fn history(&self, chat: ChatId) -> Result<Vec<HistoryEntry>, StoreError>;
    /// The messages containing every word of `text` (as typed by a person:
    /// punctuation and query syntax are taken literally), best first, at
    /// most [`SEARCH_LIMIT`].
    ///
    /// # Errors
    /// The store failed.
    fn search_local(&self, text: &str) -> Result<Vec<HistoryEntry>, StoreError>;
}

impl dyn ClientStore + '_ {
    /// Runs `work` in one transaction over `state` and returns its value
    /// (see [`ClientStore::transaction_dyn`]).
    ///
    /// # Errors
    /// `work`'s error, or the store's.
    pub fn transaction<T>(
        &self,
        work: impl FnOnce(&dyn StateTx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut work = Some(work);
        let mut value = None;
        self.transaction_dyn(&mut |tx| {
            let work = work
                .take()
                .ok_or_else(|| StoreError::Corrupt("a transaction ran its work twice".into()))?;
            value = Some(work(tx)?);
            Ok(())
        })?;
        value.ok_or_else(|| StoreError::Corrupt("a transaction did not run its work".into()))
    }
}

/// A shared store.
pub type SharedStore = Arc<dyn ClientStore>;

/// The words of a search as typed by a person, folded for matching: split
/// on whitespace, each kept only if it has a letter or digit, lower-cased,
/// with the punctuation at its ends dropped (`"you?"` finds "you").
#[must_use]
pub fn search_terms(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether `text` contains every term (from [`search_terms`]) as the
/// start of one of its words, case-insensitively: how the browser store
/// searches, close to what FTS5's prefix-free token match finds natively
/// but also matching word prefixes, which a person typing expects.
#[must_use]
pub fn matches_terms(text: &str, terms: &[String]) -> bool {
    if terms.is_empty() {
        return false;
    }
    let folded = text.to_lowercase();
    let words: Vec<&str> = folded
        .split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
        .filter(|w| !w.is_empty())
        .collect();
    terms.iter().all(|term| {
        words.iter().any(|w| w.starts_with(term.as_str()))
            || (term.contains(|c: char| !c.is_alphanumeric()) && folded.contains(term.as_str()))
    })
}

/// Words of the answered message a reply's quote shows.
pub const QUOTE_WORDS: usize = 6;

/// The first words of a message, for the quote above a reply to it: at
/// most [`QUOTE_WORDS`], on one line, with `…` when some were left out.
/// Every client quotes this way.
#[must_use]
pub fn quote_words(text: &str) -> String {
    let mut words = text.split_whitespace();
    let mut short = words
        .by_ref()
        .take(QUOTE_WORDS)
        .collect::<Vec<_>>()
        .join(" ");
    if words.next().is_some() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quote_keeps_the_first_words_on_one_line() {
        let six = "one two\nthree  four\r\nfive six";
        assert_eq!(quote_words(six), "one two three four five six");
        assert_eq!(
            quote_words(&format!("{six} seven")),
            "one two three four five six…"
        );
        assert_eq!(quote_words("  "), "");
    }

    #[test]
    fn search_terms_fold_what_a_person_types() {
        assert_eq!(search_terms("How are you?"), vec!["how", "are", "you"]);
        assert_eq!(search_terms("  ?? - "), Vec::<String>::new());
        assert_eq!(search_terms("e-mail"), vec!["e-mail"]);
    }

    #[test]
    fn every_term_must_start_a_word() {
        let t = |q: &str| search_terms(q);
        assert!(matches_terms("Send me the e-mail, please", &t("e-mail")));
        assert!(matches_terms("Lunch at noon?", &t("lun NOON")));
        assert!(!matches_terms("Lunch at noon?", &t("lunch dinner")));
        assert!(!matches_terms("brunch", &t("lunch")));
        assert!(!matches_terms("anything", &[]));
        assert!(matches_terms("don't stop", &t("don't")));
    }
}
