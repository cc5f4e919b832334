//! Search over what a user may see: messages of plaintext chats inside their
//! membership periods (never encrypted chats), their chats by name, their
//! contacts by name.

use std::collections::HashMap;

use natter_proto::chats::{ChatKind, MessageType};
use natter_proto::{ChatId, UserId};
use time::OffsetDateTime;

use super::chats::status_of;
use super::{ContactView, MessageView, Principal, ServiceError, ServiceResult, Services};
use crate::clock::Timestamp;
use crate::search_query::{QueryLimits, parse};
use crate::store::{ChatOverview, SearchPage, SearchQuery, Snippet};

/// A message search as asked.
#[derive(Debug, Clone, Default)]
pub struct MessageSearch {
    /// The query as typed: words, `"phrases"`, `prefix*`, `OR`, `-word`
    /// (see [`crate::search_query`]).
    pub q: String,
    /// Only these chats.
    pub chats: Vec<ChatId>,
    /// Only from this sender.
    pub sender: Option<UserId>,
    /// Only of this type.
    pub message_type: Option<MessageType>,
    /// Only before this time.
    pub before: Option<OffsetDateTime>,
    /// Only after this time.
    pub after: Option<OffsetDateTime>,
    /// Best first instead of newest first.
    pub by_relevance: bool,
    /// Page, from 1.
    pub page: Option<i64>,
    /// Hits per page.
    pub limit: Option<i64>,
}

/// A hit: the message and its HTML-safe snippet.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The message.
    pub message: MessageView,
    /// HTML-escaped text with `<mark>` around the matches.
    pub snippet: String,
}

/// The default page of search results.
const DEFAULT_SEARCH_PAGE: i64 = 20;

fn millis(t: OffsetDateTime) -> Timestamp {
    Timestamp(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
}

/// HTML-escapes `text` onto `out`. The private-use characters the embedded
/// index marks matches with (U+E000, U+E001) become U+FFFD whichever
/// engine made the snippet, so snippets read alike on every engine and
/// never carry a marker a client might take for a match.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\u{E000}' | '\u{E001}' => out.push('\u{FFFD}'),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Escapes the snippet's text and wraps its marked ranges in `<mark>`. The
/// marks are offsets from the store, not characters in the text, so no
/// message can forge one; ranges out of order or off character boundaries
/// (never made by the store) are left unmarked rather than trusted.
fn html_snippet(snippet: &Snippet) -> String {
    let text = snippet.text.as_str();
    let mut out = String::with_capacity(text.len() + 16 * snippet.marks.len());
    let mut at = 0;
    for mark in &snippet.marks {
        let (Some(before), Some(marked)) = (text.get(at..mark.start), text.get(mark.clone()))
        else {
            continue;
        };
        escape_into(&mut out, before);
        out.push_str("<mark>");
        escape_into(&mut out, marked);
        out.push_str("</mark>");
        at = mark.end;
    }
    escape_into(&mut out, text.get(at..).unwrap_or_default());
    out
}

/// Case-insensitive "contains", for names.
fn name_matches(name: &str, q: &str) -> bool {
    name.to_lowercase().contains(&q.to_lowercase())
}

impl Services {
    fn search_text(&self, q: &str) -> ServiceResult<String> {
        let q = q.trim();
        let max = self.inner.config.limits.max_search_query_chars;
        if q.is_empty() {
            return Err(ServiceError::InvalidParameter(
                "`q` must not be empty.".to_owned(),
            ));
        }
        if q.chars().count() > max || q.chars().any(char::is_control) {
            return Err(ServiceError::InvalidParameter(format!(
                "`q` must be at most {max} characters, without control characters."
            )));
        }
        Ok(q.to_owned())
    }

    /// Searches the messages the caller may see. Returns the page and the total.
    ///
    /// # Errors
    /// A malformed query or paging (400).
    pub async fn search_messages(
        &self,
        who: &Principal,
        req: MessageSearch,
    ) -> ServiceResult<(Vec<Hit>, i64, i64, i64)> {
        let limits = &self.inner.config.limits;
        let text = parse(
            &req.q,
            QueryLimits {
                max_chars: limits.max_search_query_chars,
                max_terms: limits.max_search_terms,
            },
        )
        .map_err(|e| ServiceError::InvalidParameter(e.to_string()))?;
        let max = i64::try_from(limits.max_search_page_size).unwrap_or(i64::MAX);
        let limit = req.limit.unwrap_or(DEFAULT_SEARCH_PAGE.min(max));
        if !(1..=max).contains(&limit) {
            return Err(ServiceError::InvalidParameter(format!(
                "`limit` must be between 1 and {max}."
            )));
        }
        let page = req.page.unwrap_or(1);
        let offset = page.checked_sub(1).and_then(|p| p.checked_mul(limit));
        let max_offset = i64::try_from(limits.max_search_offset).unwrap_or(i64::MAX);
        let Some(offset) = offset.filter(|o| (0..=max_offset).contains(o)) else {
            return Err(ServiceError::InvalidParameter(format!(
                "`page` starts at 1 and reaches at most {max_offset} hits deep."
            )));
        };
        if req.message_type == Some(MessageType::System) {
            return Err(ServiceError::InvalidParameter(
                "`type` must be text, image, video or file.".to_owned(),
            ));
        }
        let query = SearchQuery {
            user: who.user,
            text,
            chats: req.chats,
            sender: req.sender,
            message_type: req.message_type,
            before: req.before.map(millis),
            after: req.after.map(millis),
            by_relevance: req.by_relevance,
            offset,
            limit,
        };
        let SearchPage { hits: found, total } = self.inner.store.search_messages(query).await?;
        let mut receipts = HashMap::new();
        let mut hits = Vec::with_capacity(found.len());
        for hit in found {
            let chat = hit.entry.chat_id;
            if let std::collections::hash_map::Entry::Vacant(slot) = receipts.entry(chat) {
                slot.insert(self.inner.store.receipt_state(chat).await?);
            }
            let status = status_of(
                &hit.entry,
                &receipts.get(&chat).copied().unwrap_or_default(),
            );
            hits.push(Hit {
                message: MessageView {
                    entry: hit.entry,
                    status,
                },
                snippet: html_snippet(&hit.snippet),
            });
        }
        Ok((hits, total, page, limit))
    }

    /// The caller's chats whose name, or for a direct chat the other
    /// participant's name, contains `q`.
    ///
    /// # Errors
    /// A malformed query (400).
    pub async fn search_chats(
        &self,
        who: &Principal,
        q: &str,
    ) -> ServiceResult<Vec<(ChatOverview, Option<MessageView>)>> {
        let q = self.search_text(q)?;
        let mut out = Vec::new();
        for (overview, last) in self.chats(who).await? {
            let name = match (overview.chat.kind, &overview.chat.name) {
                (ChatKind::Group, Some(name)) => name.clone(),
                _ => {
                    let members = self.inner.store.members(overview.chat.id).await?;
                    let other = members
                        .iter()
                        .find(|m| m.user_id != who.user)
                        .map(|m| m.user_id);
                    match other {
                        Some(id) => self
                            .inner
                            .store
                            .user(id)
                            .await?
                            .map(|u| u.name)
                            .unwrap_or_default(),
                        None => String::new(),
                    }
                }
            };
            if name_matches(&name, &q) {
                out.push((overview, last));
            }
        }
        Ok(out)
    }

    /// The caller's contacts whose name contains `q`.
    ///
    /// # Errors
    /// A malformed query (400).
    pub async fn search_contacts(
        &self,
        who: &Principal,
        q: &str,
    ) -> ServiceResult<Vec<ContactView>> {
        let q = self.search_text(q)?;
        Ok(self
            .contacts(who)
            .await?
            .into_iter()
            .filter(|c| name_matches(&c.user.name, &q))
            .collect())
    }
}

#[cfg(test)]
// A snippet with one marked range is what these tests are about.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_html_safe() {
        let snippet = Snippet {
            text: "a <b> & x \"q\"".to_owned(),
            marks: vec![8..9],
        };
        assert_eq!(
            html_snippet(&snippet),
            "a &lt;b&gt; &amp; <mark>x</mark> &quot;q&quot;"
        );
    }

    #[test]
    fn only_offsets_make_marks() {
        // Marker characters and markup in the text stay text.
        let snippet = Snippet {
            text: "\u{E000}<mark>x</mark>\u{E001} y".to_owned(),
            marks: vec![],
        };
        let html = html_snippet(&snippet);
        assert!(!html.contains("<mark>"), "{html}");
        assert_eq!(
            html, "\u{FFFD}&lt;mark&gt;x&lt;/mark&gt;\u{FFFD} y",
            "the index's marker characters never show"
        );
        // Offsets off a character boundary or backwards are ignored.
        let snippet = Snippet {
            text: "é y".to_owned(),
            marks: vec![1..2, 3..4, 0..1],
        };
        assert_eq!(html_snippet(&snippet), "é <mark>y</mark>");
    }
}
