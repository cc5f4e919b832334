//! Full-text search on SQLite FTS5, kept in step with the chat log by an
//! indexer that follows the log from a durable cursor.
//!
//! Two indexes: `search_words` (unicode61, case and accents folded; BM25
//! ranking and snippets) for everything, and `search_trigrams` for messages
//! with CJK characters, which have no spaces to split words on. Only
//! messages of plaintext chats are indexed.
//!
//! The indexer ([`follow_log`]) runs as a writer job: it reads the entries
//! after `search_cursor.pos` in `pos` order (the one writer assigns `pos`
//! in commit order, so no entry can appear behind the cursor later), brings
//! each entry's message to its *current* state in the index (indexed with
//! its current text, or absent when deleted, encrypted or empty), and moves
//! the cursor in the same transaction. Applying the current state makes
//! every step idempotent and means a message whose deletion came before its
//! indexing is never indexed at all.
//!
//! Queries arrive as an engine-neutral [`TextQuery`]; [`fts5_query`]
//! compiles it with every term quoted, so no user text is ever FTS5 syntax.

use std::fmt::Write as _;

use natter_proto::ChatId;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::chats::entry_at;
use crate::store::columns::message_type_to_sql;
use crate::store::snippets::{has_cjk, mark_substring};
use crate::store::{IndexProgress, SearchHit, SearchPage, SearchQuery, Snippet, Term, TextQuery};

type Result<T> = rusqlite::Result<T>;

/// Marks the start of a match in FTS5 snippets. The indexed text never holds
/// it (see [`index_text`]), so every one in a snippet is FTS5's.
const MATCH_START: char = '\u{E000}';
/// Marks the end of a match in FTS5 snippets.
const MATCH_END: char = '\u{E001}';
/// Tokens of context around a match in a snippet.
const SNIPPET_TOKENS: i64 = 12;

/// The text as the index keeps it: the snippet markers replaced by U+FFFD,
/// so a message cannot forge marks in anyone's snippets.
fn index_text(content: &str) -> String {
    content.replace([MATCH_START, MATCH_END], "\u{FFFD}")
}

fn add_text(c: &Connection, id: i64, content: &str) -> Result<()> {
    let text = index_text(content);
    c.prepare_cached("INSERT INTO search_words (rowid, content) VALUES (?1, ?2)")?
        .execute(params![id, text])?;
    if has_cjk(&text) {
        c.prepare_cached("INSERT INTO search_trigrams (rowid, content) VALUES (?1, ?2)")?
            .execute(params![id, text])?;
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

/// A message as the indexer needs it.
struct Indexable {
    chat_id: Vec<u8>,
    seq: i64,
    sender_id: Vec<u8>,
    msg_type: String,
    created_at: i64,
    /// The current text; `None` when deleted, encrypted or without text.
    text: Option<String>,
}

const INDEXABLE: &str = "SELECT l.chat_id, l.seq, l.sender_id, coalesce(l.msg_type, 'text'),
        l.created_at, CASE WHEN c.encrypted = 0 AND l.deleted_at IS NULL THEN l.content END
    FROM chat_log l JOIN chats c ON c.id = l.chat_id";

fn indexable(row: &rusqlite::Row<'_>) -> Result<Indexable> {
    Ok(Indexable {
        chat_id: row.get(0)?,
        seq: row.get(1)?,
        sender_id: row.get(2)?,
        msg_type: row.get(3)?,
        created_at: row.get(4)?,
        text: row.get(5)?,
    })
}

/// Makes the index hold `m` as it is now: with its current text, or not at all.
fn sync_message(c: &Connection, m: &Indexable) -> Result<()> {
    let doc: Option<i64> = c
        .prepare_cached("SELECT id FROM search_docs WHERE chat_id = ?1 AND seq = ?2")?
        .query_row(params![m.chat_id, m.seq], |r| r.get(0))
        .optional()?;
    match (doc, &m.text) {
        (Some(id), Some(text)) => {
            remove_text(c, id)?;
            add_text(c, id, text)?;
        }
        (Some(id), None) => {
            remove_text(c, id)?;
            c.prepare_cached("DELETE FROM search_docs WHERE id = ?1")?
                .execute([id])?;
        }
        (None, Some(text)) => {
            c.prepare_cached(
                "INSERT INTO search_docs (chat_id, seq, sender_id, msg_type, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                m.chat_id,
                m.seq,
                m.sender_id,
                m.msg_type,
                m.created_at
            ])?;
            add_text(c, c.last_insert_rowid(), text)?;
        }
        (None, None) => {}
    }
    Ok(())
}

/// A log entry as the indexer reads it.
struct Followed {
    pos: i64,
    chat_id: Vec<u8>,
    seq: i64,
    kind: String,
    /// The message an edit or deletion is about.
    target: Option<Vec<u8>>,
}

/// One pass of the indexer: follows at most `max` entries after the cursor
/// and moves the cursor past them. Runs inside a writer transaction, so the
/// index changes and the cursor commit (or vanish) together.
pub(super) fn follow_log(c: &Connection, max: usize) -> Result<IndexProgress> {
    let cursor: i64 = c
        .prepare_cached("SELECT pos FROM search_cursor WHERE id = 1")?
        .query_row([], |r| r.get(0))?;
    let entries: Vec<Followed> = c
        .prepare_cached(
            "SELECT pos, chat_id, seq, kind, target_id FROM chat_log
             WHERE pos > ?1 ORDER BY pos LIMIT ?2",
        )?
        .query_map(
            params![cursor, i64::try_from(max).unwrap_or(i64::MAX)],
            |r| {
                Ok(Followed {
                    pos: r.get(0)?,
                    chat_id: r.get(1)?,
                    seq: r.get(2)?,
                    kind: r.get(3)?,
                    target: r.get(4)?,
                })
            },
        )?
        .collect::<Result<_>>()?;
    let processed = entries.len() as u64;
    let mut last = cursor;
    for entry in entries {
        last = entry.pos;
        // An edit or a deletion changes its target; the target's current
        // state is what the index must show.
        let message = match (entry.kind.as_str(), entry.target) {
            ("message", _) => c
                .prepare_cached(&format!("{INDEXABLE} WHERE l.chat_id = ?1 AND l.seq = ?2"))?
                .query_row(params![entry.chat_id, entry.seq], indexable)
                .optional()?,
            ("edit" | "delete", Some(target)) => c
                .prepare_cached(&format!(
                    "{INDEXABLE} WHERE l.id = ?1 AND l.kind = 'message'"
                ))?
                .query_row([target], indexable)
                .optional()?,
            _ => None,
        };
        if let Some(message) = message {
            sync_message(c, &message)?;
        }
    }
    if last > cursor {
        c.prepare_cached("UPDATE search_cursor SET pos = ?1 WHERE id = 1")?
            .execute([last])?;
    }
    let head = log_head(c)?;
    Ok(IndexProgress {
        processed,
        remaining: u64::try_from(head - last).unwrap_or(0),
    })
}

fn log_head(c: &Connection) -> Result<i64> {
    c.prepare_cached("SELECT coalesce(max(pos), 0) FROM chat_log")?
        .query_row([], |r| r.get(0))
}

/// Entries committed but not yet followed by the indexer.
pub(super) fn lag(c: &Connection) -> Result<u64> {
    let cursor: i64 = c
        .prepare_cached("SELECT pos FROM search_cursor WHERE id = 1")?
        .query_row([], |r| r.get(0))?;
    Ok(u64::try_from(log_head(c)? - cursor).unwrap_or(0))
}

/// A term as an FTS5 string: always quoted (inside, only `"` is special and
/// is doubled), so the tokenizer splits it exactly as it split the messages
/// (`e-mail` becomes the phrase `e mail`); `*` after the quote for a prefix.
fn fts5_term(t: &Term) -> String {
    let mut out = String::with_capacity(t.text.len() + 3);
    out.push('"');
    out.push_str(&t.text.replace('"', "\"\""));
    out.push('"');
    if t.prefix {
        out.push('*');
    }
    out
}

/// The query as an FTS5 MATCH expression over `search_words`.
pub(super) fn fts5_query(q: &TextQuery) -> String {
    let mut out = String::new();
    for (i, group) in q.required.iter().enumerate() {
        if i > 0 {
            out.push_str(" AND ");
        }
        let terms: Vec<String> = group.iter().map(fts5_term).collect();
        let _ = write!(out, "({})", terms.join(" OR "));
    }
    if !q.excluded.is_empty() {
        let terms: Vec<String> = q.excluded.iter().map(fts5_term).collect();
        out = format!("({out}) NOT ({})", terms.join(" OR "));
    }
    out
}

/// The filters every search shares; `?2` is the user, `?3`..`?7` the filters.
/// A message deleted since it was indexed is left out at once, before the
/// indexer reaches its deletion: "deleted for everyone" never shows, not
/// even as a snippet of the indexed copy.
const FILTERS: &str = "
    NOT EXISTS (SELECT 1 FROM chat_log l
                WHERE l.chat_id = d.chat_id AND l.seq = d.seq AND l.deleted_at IS NOT NULL)
    AND EXISTS (SELECT 1 FROM memberships m
            WHERE m.chat_id = d.chat_id AND m.user_id = ?2
              AND d.seq >= m.from_seq AND (m.to_seq IS NULL OR d.seq <= m.to_seq))
    AND (?3 IS NULL OR d.chat_id IN (SELECT unhex(value) FROM json_each(?3)))
    AND (?4 IS NULL OR d.sender_id = ?4)
    AND (?5 IS NULL OR d.msg_type = ?5)
    AND (?6 IS NULL OR d.created_at < ?6)
    AND (?7 IS NULL OR d.created_at > ?7)";

/// How the query is matched.
enum Plan {
    /// One FTS5 expression over words: BM25 and snippets available.
    Words(String),
    /// Terms with CJK characters are substrings (trigram index from three
    /// characters, a scan below), the others words: a condition per term,
    /// each binding its text at `?10` and up.
    Mixed {
        condition: String,
        binds: Vec<Value>,
    },
}

fn plan(q: &TextQuery) -> Plan {
    if !q.terms().any(|t| has_cjk(&t.text)) {
        return Plan::Words(fts5_query(q));
    }
    let mut binds = Vec::new();
    let mut leaf = |t: &Term| {
        let n = 10 + binds.len();
        if !has_cjk(&t.text) {
            binds.push(Value::Text(fts5_term(t)));
            format!("d.id IN (SELECT rowid FROM search_words WHERE search_words MATCH ?{n})")
        } else if t.text.chars().count() >= 3 {
            // The literal text as one FTS5 string: a substring to trigrams.
            binds.push(Value::Text(format!("\"{}\"", t.text.replace('"', "\"\""))));
            format!("d.id IN (SELECT rowid FROM search_trigrams WHERE search_trigrams MATCH ?{n})")
        } else {
            // One or two characters have no trigram: scan the visible messages.
            let like = t
                .text
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            binds.push(Value::Text(like));
            format!(
                "EXISTS (SELECT 1 FROM search_words w WHERE w.rowid = d.id
                         AND w.content LIKE '%' || ?{n} || '%' ESCAPE '\\')"
            )
        }
    };
    let mut parts: Vec<String> = q
        .required
        .iter()
        .map(|group| {
            let any: Vec<String> = group.iter().map(&mut leaf).collect();
            format!("({})", any.join(" OR "))
        })
        .collect();
    for t in &q.excluded {
        parts.push(format!("NOT ({})", leaf(t)));
    }
    Plan::Mixed {
        condition: parts.join(" AND "),
        binds,
    }
}

pub(super) fn search(c: &Connection, q: &SearchQuery) -> Result<SearchPage> {
    let chats = (!q.chats.is_empty()).then(|| {
        let hex: Vec<String> = q
            .chats
            .iter()
            .map(|c| c.as_uuid().simple().to_string())
            .collect();
        serde_json::Value::from(hex).to_string()
    });
    let plan = plan(&q.text);
    // ?1 the FTS5 expression (word plans), ?2..?7 the filters, ?8 limit,
    // ?9 offset, ?10.. the terms of a mixed plan.
    let mut binds: Vec<Value> = vec![
        match &plan {
            Plan::Words(expr) => Value::Text(expr.clone()),
            Plan::Mixed { .. } => Value::Null,
        },
        Value::Blob(q.user.as_uuid().as_bytes().to_vec()),
        chats.map_or(Value::Null, Value::Text),
        q.sender.map_or(Value::Null, |u| {
            Value::Blob(u.as_uuid().as_bytes().to_vec())
        }),
        q.message_type.map_or(Value::Null, |t| {
            Value::Text(message_type_to_sql(t).to_owned())
        }),
        q.before.map_or(Value::Null, |t| Value::Integer(t.0)),
        q.after.map_or(Value::Null, |t| Value::Integer(t.0)),
    ];
    let newest = "d.created_at DESC, d.id DESC";
    let (count_sql, page_sql) = match &plan {
        Plan::Words(_) => {
            let source = "search_words w JOIN search_docs d ON d.id = w.rowid";
            let order = if q.by_relevance {
                format!("bm25(search_words), {newest}")
            } else {
                newest.to_owned()
            };
            (
                format!("SELECT count(*) FROM {source} WHERE search_words MATCH ?1 AND {FILTERS}"),
                format!(
                    "SELECT d.id, d.chat_id, d.seq,
                       snippet(search_words, 0, '{MATCH_START}', '{MATCH_END}', '…', {SNIPPET_TOKENS})
                     FROM {source} WHERE search_words MATCH ?1 AND {FILTERS}
                     ORDER BY {order} LIMIT ?8 OFFSET ?9"
                ),
            )
        }
        // Substring matches have no rank: newest first.
        Plan::Mixed { condition, .. } => (
            // The terms are numbered from ?10, so the count names ?8 and ?9
            // too (never NULL: always true) to take the same binds.
            format!(
                "SELECT count(*) FROM search_docs d
                 WHERE {condition} AND {FILTERS} AND ?8 IS NOT NULL AND ?9 IS NOT NULL"
            ),
            format!(
                "SELECT d.id, d.chat_id, d.seq, NULL FROM search_docs d
                 WHERE {condition} AND {FILTERS} ORDER BY {newest} LIMIT ?8 OFFSET ?9"
            ),
        ),
    };
    let total: i64 = match &plan {
        Plan::Words(_) => c
            .prepare(&count_sql)?
            .query_row(params_from_iter(&binds), |r| r.get(0))?,
        Plan::Mixed { binds: terms, .. } => {
            let mut all = binds.clone();
            all.push(Value::Integer(q.limit));
            all.push(Value::Integer(q.offset));
            all.extend(terms.iter().cloned());
            c.prepare(&count_sql)?
                .query_row(params_from_iter(&all), |r| r.get(0))?
        }
    };
    binds.push(Value::Integer(q.limit));
    binds.push(Value::Integer(q.offset));
    if let Plan::Mixed { binds: terms, .. } = &plan {
        binds.extend(terms.iter().cloned());
    }
    let mut stmt = c.prepare(&page_sql)?;
    let rows = stmt.query_map(params_from_iter(&binds), |r| {
        Ok((
            r.get::<_, i64>(0)?,
            ChatId::from_uuid(super::uuid_of(r, "chat_id")?),
            r.get::<_, i64>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    let rows: Vec<_> = rows.collect::<Result<_>>()?;
    let needles: Vec<&str> = q
        .text
        .required
        .iter()
        .flatten()
        .map(|t| t.text.as_str())
        .collect();
    let mut hits = Vec::with_capacity(rows.len());
    for (id, chat, seq, snippet) in rows {
        let Some(entry) = entry_at(c, chat, seq)? else {
            continue;
        };
        let snippet = match snippet {
            Some(marked) => unmark(&marked),
            None => {
                let content: String = c
                    .prepare_cached("SELECT content FROM search_words WHERE rowid = ?1")?
                    .query_row([id], |r| r.get(0))?;
                mark_substring(&content, &needles)
            }
        };
        hits.push(SearchHit { entry, snippet });
    }
    Ok(SearchPage { hits, total })
}

/// Turns an FTS5 snippet with in-band markers into text and mark offsets.
/// The markers are trustworthy because the indexed text cannot hold them.
fn unmark(marked: &str) -> Snippet {
    let mut text = String::with_capacity(marked.len());
    let mut marks = Vec::new();
    let mut open: Option<usize> = None;
    for c in marked.chars() {
        match c {
            MATCH_START => {
                if open.is_none() {
                    open = Some(text.len());
                }
            }
            MATCH_END => {
                if let Some(start) = open.take()
                    && start < text.len()
                {
                    marks.push(start..text.len());
                }
            }
            c => text.push(c),
        }
    }
    if let Some(start) = open
        && start < text.len()
    {
        marks.push(start..text.len());
    }
    Snippet { text, marks }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search_query::{QueryLimits, parse};

    #[test]
    fn markers_in_indexed_text_cannot_survive() {
        let forged = format!("a{MATCH_START}b{MATCH_END}c");
        let stored = index_text(&forged);
        assert!(!stored.contains(MATCH_START) && !stored.contains(MATCH_END));
        let s = unmark(&format!("x {MATCH_START}hit{MATCH_END} y"));
        assert_eq!(s.text, "x hit y");
        assert_eq!(s.marks, vec![2..5]);
    }

    #[test]
    fn every_term_is_quoted() {
        let limits = QueryLimits {
            max_chars: 256,
            max_terms: 16,
        };
        let q = parse("don't e-mail OR mail* -spam \"a \"", limits).unwrap();
        assert_eq!(
            fts5_query(&q),
            "((\"don't\") AND (\"e-mail\" OR \"mail\"*) AND (\"a\")) NOT (\"spam\")"
        );
    }

    /// The tables as migration 0004 makes them, in memory.
    fn fts_tables() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE VIRTUAL TABLE search_words USING fts5(
                 content, tokenize = 'unicode61 remove_diacritics 2');
             CREATE VIRTUAL TABLE search_trigrams USING fts5(
                 content, tokenize = 'trigram remove_diacritics 1', content = '',
                 contentless_delete = 1);
             INSERT INTO search_words (rowid, content) VALUES
                 (1, 'Hello, how are you?'), (2, 'don''t send e-mail to bob@example.com'),
                 (3, 'AND OR NOT \"quoted\" * stars');",
        )
        .unwrap();
        c
    }

    fn matches(c: &Connection, q: &str) -> rusqlite::Result<Vec<i64>> {
        let limits = QueryLimits {
            max_chars: 256,
            max_terms: 64,
        };
        let q = parse(q, limits).unwrap();
        let mut stmt =
            c.prepare("SELECT rowid FROM search_words WHERE search_words MATCH ?1 ORDER BY rowid")?;
        stmt.query_map([fts5_query(&q)], |r| r.get(0))?.collect()
    }

    #[test]
    fn plain_text_finds_what_it_says() {
        let c = fts_tables();
        for (q, want) in [
            ("hello, how", vec![1]),
            ("how are you?", vec![1]),
            ("don't", vec![2]),
            ("e-mail", vec![2]),
            ("bob@example.com", vec![2]),
            ("\"e mail\"", vec![2]),
            ("\"hello", vec![1]),
            ("AND,", vec![3]),
            ("\"OR\" \"NOT\"", vec![3]),
            ("\"quoted\"", vec![3]),
            ("hel*", vec![1]),
            ("hello OR bob", vec![1, 2]),
            ("e-mail -bob", vec![]),
        ] {
            assert_eq!(matches(&c, q).unwrap(), want, "{q}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn accepted_queries_compile_to_fts5_sqlite_accepts(input in "\\PC{0,60}") {
                let c = fts_tables();
                let limits = QueryLimits { max_chars: 256, max_terms: 64 };
                if let Ok(q) = parse(&input, limits) {
                    let expr = fts5_query(&q);
                    let run = c
                        .prepare("SELECT count(*) FROM search_words WHERE search_words MATCH ?1")
                        .and_then(|mut s| s.query_row([&expr], |r| r.get::<_, i64>(0)));
                    prop_assert!(run.is_ok(), "{:?} compiled to {:?}: {:?}", input, expr, run);
                }
            }

            #[test]
            fn operator_soup_compiles_too(
                input in "( |\"|\\*|-|OR|AND|NOT|a|é|,|'|\\(|\\)|:|\\^|\\+|NEAR){0,30}"
            ) {
                let c = fts_tables();
                let limits = QueryLimits { max_chars: 256, max_terms: 64 };
                if let Ok(q) = parse(&input, limits) {
                    let expr = fts5_query(&q);
                    let run = c
                        .prepare("SELECT count(*) FROM search_words WHERE search_words MATCH ?1")
                        .and_then(|mut s| s.query_row([&expr], |r| r.get::<_, i64>(0)));
                    prop_assert!(run.is_ok(), "{:?} compiled to {:?}: {:?}", input, expr, run);
                }
            }
        }
    }
}
