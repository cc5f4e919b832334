//! Full-text search on SQLite FTS5, maintained in the chat log's transactions.
//!
//! Two indexes: `search_words` (unicode61, case and accents folded; BM25
//! ranking and snippets) for everything, and `search_trigrams` for messages
//! with CJK characters, which have no spaces to split words on. Only
//! messages of plaintext chats are indexed.

use natter_proto::chats::MessageType;
use natter_proto::{ChatId, UserId};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::chats::{entry_at, type_to_sql};
use crate::clock::Timestamp;
use crate::store::{SearchHit, SearchMode, SearchOutcome, SearchQuery};

type Result<T> = rusqlite::Result<T>;

/// Marks the start of a match in snippets (a private-use character, so it
/// cannot collide with text; the API turns it into markup).
pub const MATCH_START: char = '\u{E000}';
/// Marks the end of a match in snippets.
pub const MATCH_END: char = '\u{E001}';
/// Tokens of context around a match in a snippet.
const SNIPPET_TOKENS: i64 = 12;

/// Whether the text has characters of scripts written without spaces.
#[must_use]
pub fn has_cjk(text: &str) -> bool {
    text.chars().any(|c| {
        matches!(c,
            '\u{3040}'..='\u{30FF}'   // Hiragana, Katakana
            | '\u{3400}'..='\u{4DBF}' // CJK Extension A
            | '\u{4E00}'..='\u{9FFF}' // CJK Unified Ideographs
            | '\u{AC00}'..='\u{D7AF}' // Hangul syllables
            | '\u{F900}'..='\u{FAFF}' // CJK Compatibility Ideographs
            | '\u{20000}'..='\u{2FA1F}')
    })
}

/// Indexes a new message of a plaintext chat.
pub(super) fn index(
    c: &Connection,
    chat: ChatId,
    seq: i64,
    sender: UserId,
    message_type: MessageType,
    created_at: Timestamp,
    content: &str,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO search_docs (chat_id, seq, sender_id, msg_type, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        chat.as_uuid().as_bytes(),
        seq,
        sender.as_uuid().as_bytes(),
        type_to_sql(message_type),
        created_at.0
    ])?;
    let id = c.last_insert_rowid();
    add_text(c, id, content)
}

fn add_text(c: &Connection, id: i64, content: &str) -> Result<()> {
    c.prepare_cached("INSERT INTO search_words (rowid, content) VALUES (?1, ?2)")?
        .execute(params![id, content])?;
    if has_cjk(content) {
        c.prepare_cached("INSERT INTO search_trigrams (rowid, content) VALUES (?1, ?2)")?
            .execute(params![id, content])?;
    }
    Ok(())
}

fn remove_text(c: &Connection, id: i64) -> Result<()> {
    c.prepare_cached("DELETE FROM search_words WHERE rowid = ?1")?
        .execute([id])?;
    c.prepare_cached("DELETE FROM search_trigrams WHERE rowid = ?1")?
        .execute([id])?;
    Ok(())
}

fn doc_id(c: &Connection, chat: ChatId, seq: i64) -> Result<Option<i64>> {
    c.prepare_cached("SELECT id FROM search_docs WHERE chat_id = ?1 AND seq = ?2")?
        .query_row(params![chat.as_uuid().as_bytes(), seq], |r| r.get(0))
        .optional()
}

/// Re-indexes an edited message (a no-op if it was never indexed).
pub(super) fn reindex(c: &Connection, chat: ChatId, seq: i64, content: &str) -> Result<()> {
    if let Some(id) = doc_id(c, chat, seq)? {
        remove_text(c, id)?;
        add_text(c, id, content)?;
    }
    Ok(())
}

/// Removes a deleted message from the indexes.
pub(super) fn unindex(c: &Connection, chat: ChatId, seq: i64) -> Result<()> {
    if let Some(id) = doc_id(c, chat, seq)? {
        remove_text(c, id)?;
        c.prepare_cached("DELETE FROM search_docs WHERE id = ?1")?
            .execute([id])?;
    }
    Ok(())
}

/// The filters every search mode shares; `?2` is the user, `?3`..`?7` the filters.
const FILTERS: &str = "
    EXISTS (SELECT 1 FROM memberships m
            WHERE m.chat_id = d.chat_id AND m.user_id = ?2
              AND d.seq >= m.from_seq AND (m.to_seq IS NULL OR d.seq <= m.to_seq))
    AND (?3 IS NULL OR d.chat_id IN (SELECT unhex(value) FROM json_each(?3)))
    AND (?4 IS NULL OR d.sender_id = ?4)
    AND (?5 IS NULL OR d.msg_type = ?5)
    AND (?6 IS NULL OR d.created_at < ?6)
    AND (?7 IS NULL OR d.created_at > ?7)";

pub(super) fn search(c: &Connection, q: &SearchQuery) -> Result<SearchOutcome> {
    let (source, matcher, snippet, rank) = match q.mode {
        SearchMode::Words => (
            "search_words w JOIN search_docs d ON d.id = w.rowid",
            "search_words MATCH ?1",
            format!(
                "snippet(search_words, 0, '{MATCH_START}', '{MATCH_END}', '…', {SNIPPET_TOKENS})"
            ),
            "bm25(search_words)",
        ),
        SearchMode::Trigrams => (
            "search_trigrams t JOIN search_docs d ON d.id = t.rowid",
            "search_trigrams MATCH ?1",
            "NULL".to_owned(),
            "bm25(search_trigrams)",
        ),
        SearchMode::Scan => (
            "search_words w JOIN search_docs d ON d.id = w.rowid",
            "w.content LIKE '%' || ?1 || '%' ESCAPE '\\'",
            "NULL".to_owned(),
            "0",
        ),
    };
    let text = match q.mode {
        SearchMode::Words => q.text.clone(),
        // A phrase of the literal text: quotes doubled, nothing else special.
        SearchMode::Trigrams => format!("\"{}\"", q.text.replace('"', "\"\"")),
        SearchMode::Scan => q
            .text
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_"),
    };
    let order = if q.by_relevance && q.mode != SearchMode::Scan {
        format!("{rank}, d.created_at DESC, d.id DESC")
    } else {
        "d.created_at DESC, d.id DESC".to_owned()
    };
    let chats = (!q.chats.is_empty()).then(|| {
        let hex: Vec<String> = q
            .chats
            .iter()
            .map(|c| c.as_uuid().simple().to_string())
            .collect();
        serde_json::Value::from(hex).to_string()
    });
    // ?1..?7 for both statements; the page adds ?8 (limit) and ?9 (offset).
    let mut binds: Vec<Value> = vec![
        Value::Text(text),
        Value::Blob(q.user.as_uuid().as_bytes().to_vec()),
        chats.map_or(Value::Null, Value::Text),
        q.sender.map_or(Value::Null, |u| {
            Value::Blob(u.as_uuid().as_bytes().to_vec())
        }),
        q.message_type
            .map_or(Value::Null, |t| Value::Text(type_to_sql(t).to_owned())),
        q.before.map_or(Value::Null, |t| Value::Integer(t.0)),
        q.after.map_or(Value::Null, |t| Value::Integer(t.0)),
    ];
    let total = c.prepare(&format!(
        "SELECT count(*) FROM {source} WHERE {matcher} AND {FILTERS}"
    ));
    let total: i64 =
        match total.and_then(|mut s| s.query_row(params_from_iter(&binds), |r| r.get(0))) {
            Ok(n) => n,
            Err(e) if is_query_error(&e) => return Ok(SearchOutcome::BadQuery(query_error(&e))),
            Err(e) => return Err(e),
        };
    binds.push(Value::Integer(q.limit));
    binds.push(Value::Integer(q.offset));
    let sql = format!(
        "SELECT d.id, d.chat_id, d.seq, {snippet} AS snippet FROM {source}
         WHERE {matcher} AND {FILTERS} ORDER BY {order} LIMIT ?8 OFFSET ?9"
    );
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(&binds), |r| {
        Ok((
            r.get::<_, i64>("id")?,
            ChatId::from_uuid(super::uuid_of(r, "chat_id")?),
            r.get::<_, i64>("seq")?,
            r.get::<_, Option<String>>("snippet")?,
        ))
    })?;
    let rows: Vec<_> = rows.collect::<Result<_>>()?;
    let mut hits = Vec::with_capacity(rows.len());
    for (id, chat, seq, snippet) in rows {
        let Some(entry) = entry_at(c, chat, seq)? else {
            continue;
        };
        let snippet = match snippet {
            Some(s) => s,
            None => {
                let content: String = c
                    .prepare_cached("SELECT content FROM search_words WHERE rowid = ?1")?
                    .query_row([id], |r| r.get(0))?;
                mark_substring(&content, &q.text)
            }
        };
        hits.push(SearchHit { entry, snippet });
    }
    Ok(SearchOutcome::Found(hits, total))
}

fn is_query_error(e: &rusqlite::Error) -> bool {
    let text = e.to_string();
    text.contains("fts5") || text.contains("syntax error") || text.contains("no such column")
}

fn query_error(e: &rusqlite::Error) -> String {
    let text = e.to_string();
    text.trim_start_matches("fts5: ").to_owned()
}

/// Marks the first case-insensitive occurrence of `needle` (substring search
/// has no FTS snippet), keeping a bounded window of context around it.
fn mark_substring(content: &str, needle: &str) -> String {
    const CONTEXT: usize = 40;
    let lower = content.to_lowercase();
    let needle_lower = needle.to_lowercase();
    let chars: Vec<char> = content.chars().collect();
    let Some(byte_at) = lower.find(&needle_lower) else {
        return chars.iter().take(CONTEXT * 2).collect();
    };
    // Lowercasing can change lengths; map through characters to stay safe.
    let start = lower[..byte_at].chars().count().min(chars.len());
    let end = (start + needle_lower.chars().count()).min(chars.len());
    let from = start.saturating_sub(CONTEXT);
    let to = (end + CONTEXT).min(chars.len());
    let mut out = String::new();
    if from > 0 {
        out.push('…');
    }
    out.extend(&chars[from..start]);
    out.push(MATCH_START);
    out.extend(&chars[start..end]);
    out.push(MATCH_END);
    out.extend(&chars[end..to]);
    if to < chars.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_is_recognised() {
        assert!(has_cjk("你好世界"));
        assert!(has_cjk("こんにちは"));
        assert!(has_cjk("안녕하세요"));
        assert!(!has_cjk("café"));
    }

    #[test]
    fn substrings_are_marked_with_context() {
        let marked = mark_substring("我们明天去北京吧", "北京");
        assert_eq!(marked, "我们明天去\u{E000}北京\u{E001}吧");
    }
}
