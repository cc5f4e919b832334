//! Search: messages (server side, plaintext chats only), chats and contacts.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::chats::{ChatSummary, Message};
use crate::users::Contact;

/// A message that matched, with where it matched.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageHit {
    /// The message, as in history.
    #[serde(flatten)]
    pub message: Message,
    /// The matching part of the text, HTML-escaped, matches in `<mark>…</mark>`.
    pub snippet: String,
}

/// `GET /api/v1/search/messages`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageSearchResults {
    /// Newest first, or best first with `sort=relevance`.
    pub messages: Vec<MessageHit>,
    /// Hits in all pages.
    pub total: i64,
    /// This page (from 1).
    pub page: i64,
    /// Hits per page.
    pub limit: i64,
}

/// `GET /api/v1/search/chats`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatSearchResults {
    /// The caller's chats whose name (or, for direct chats, the other person's name) matches.
    pub chats: Vec<ChatSummary>,
}

/// `GET /api/v1/search/contacts`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ContactSearchResults {
    /// The caller's contacts whose name matches, by name.
    pub contacts: Vec<Contact>,
}
