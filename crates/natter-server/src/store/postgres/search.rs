//! [`SearchIndex`] on PostgreSQL: the words of each plaintext message are
//! kept with it in the chat log (`chat_log.words`, a `tsvector` written by
//! every append and edit and cleared by a deletion, under a GIN index), so
//! nothing follows the log and the index never lags. The words are split by
//! [`index_words`], the way the embedded engine's FTS5 index splits the
//! messages, so both engines answer a query with the same messages.
//!
//! A query arrives as the engine-neutral [`TextQuery`]: each word or
//! phrase becomes a `tsquery` of those same words (a phrase with `<->`, a
//! prefix with `:*`), built from the words alone, so no user text is ever
//! query syntax; a term in a script written without spaces (CJK) is a
//! substring of the text instead (`ILIKE`, served by a `pg_trgm` index).
//! Newest first, or by `ts_rank_cd` when relevance is asked for (the
//! embedded engine ranks by BM25: the same hits, another order).
//!
//! With several chat databases, each answers the first `offset + limit`
//! hits in the same order and its count; the page is cut from their merge.

use async_trait::async_trait;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::Postgres;
use super::chats::{ENTRY_COLUMNS, entry_from_row};
use crate::search_query::index_words;
use crate::store::columns::message_type_to_sql;
use crate::store::snippets::{has_cjk, mark_substring, mark_words};
use crate::store::{
    IndexProgress, SearchHit, SearchIndex, SearchPage, SearchQuery, StoreResult, Term, TextQuery,
};

/// The longest word a `tsvector` or `tsquery` holds, in bytes (PostgreSQL
/// refuses longer ones).
const MAX_LEXEME_BYTES: usize = 2047;

/// A word as PostgreSQL can keep it: its first [`MAX_LEXEME_BYTES`] at
/// most (on a character boundary). A text may hold a longer run of
/// letters (a pasted key, a long link); it stays searchable by its
/// beginning, as a prefix, and no query of a sane length is that long.
pub(super) fn lexeme(word: &str) -> &str {
    if word.len() <= MAX_LEXEME_BYTES {
        return word;
    }
    let mut end = MAX_LEXEME_BYTES;
    while !word.is_char_boundary(end) {
        end -= 1;
    }
    &word[..end]
}

/// A term as a `tsquery` literal of its words: `'a' <-> 'b':*`. The words
/// hold letters and digits only, so quoting them is all the escaping
/// needed. Every term has a letter or digit, so at least one word.
fn tsquery_term(t: &Term) -> String {
    let words: Vec<String> = index_words(&t.text).into_iter().map(|(w, _)| w).collect();
    let last = words.len().saturating_sub(1);
    words
        .iter()
        .map(|w| lexeme(w))
        .enumerate()
        .map(|(i, w)| {
            if t.prefix && i == last {
                format!("'{w}':*")
            } else {
                format!("'{w}'")
            }
        })
        .collect::<Vec<_>>()
        .join(" <-> ")
}

/// Escapes `LIKE` wildcards, for a substring taken literally.
fn like_literal(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// The query as one SQL condition on `l`, its parameters numbered from
/// `first` (pushed onto `binds` as text).
fn condition(q: &TextQuery, first: usize, binds: &mut Vec<String>) -> String {
    let mut leaf = |t: &Term| {
        let n = first + binds.len();
        if has_cjk(&t.text) {
            binds.push(like_literal(&t.text));
            format!("l.content ILIKE '%' || ${n} || '%' ESCAPE '\\'")
        } else {
            binds.push(tsquery_term(t));
            format!("l.words @@ ${n}::text::tsquery")
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
    parts.join(" AND ")
}

/// The filters every search shares, on parameters `$1`..`$6`: the user's
/// membership periods, the chats, the sender, the type, the time bounds.
const FILTERS: &str = "l.words IS NOT NULL AND l.deleted_at IS NULL
    AND EXISTS (SELECT 1 FROM memberships m
                WHERE m.chat_id = l.chat_id AND m.user_id = $1
                  AND l.seq >= m.from_seq AND (m.to_seq IS NULL OR l.seq <= m.to_seq))
    AND ($2::uuid[] IS NULL OR l.chat_id = ANY($2))
    AND ($3::uuid IS NULL OR l.sender_id = $3)
    AND ($4::text IS NULL OR l.msg_type = $4)
    AND ($5::bigint IS NULL OR l.created_at < $5)
    AND ($6::bigint IS NULL OR l.created_at > $6)";

#[async_trait]
impl SearchIndex for Postgres {
    async fn search_messages(&self, query: SearchQuery) -> StoreResult<SearchPage> {
        let chats: Option<Vec<Uuid>> =
            (!query.chats.is_empty()).then(|| query.chats.iter().map(|c| *c.as_uuid()).collect());
        let sender = query.sender.map(|u| *u.as_uuid());
        let message_type = query.message_type.map(message_type_to_sql);
        let before = query.before.map(|t| t.0);
        let after = query.after.map(|t| t.0);
        // $7 and $8 are the page's limit and offset; the terms follow.
        let mut terms = Vec::new();
        let matched = condition(&query.text, 9, &mut terms);
        let substring = query.text.terms().any(|t| has_cjk(&t.text));
        let rank = if query.by_relevance && !substring {
            let ranked: Vec<String> = query
                .text
                .required
                .iter()
                .flatten()
                .filter(|t| !has_cjk(&t.text))
                .map(tsquery_term)
                .collect();
            // The rank is over the required words; it orders, never filters.
            let literal = ranked.join(" | ").replace('\'', "''");
            format!("ts_rank_cd(l.words, '{literal}'::tsquery)")
        } else {
            "0::real".to_owned()
        };
        // Each database's first `offset + limit` hits, in the merge's order.
        let fetch = query.limit.saturating_add(query.offset);
        let no_offset = 0_i64;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            query.user.as_uuid(),
            &chats,
            &sender,
            &message_type,
            &before,
            &after,
            &fetch,
            &no_offset,
        ];
        params.extend(terms.iter().map(|t| t as &(dyn ToSql + Sync)));
        let (mut total, mut found) = (0, Vec::new());
        for db in self.chat_dbs() {
            // The count takes the same parameters: $7 and $8 are named so.
            total += db
                .read(
                    &format!(
                        "SELECT count(*) FROM chat_log l WHERE {FILTERS} AND {matched}
                           AND $7::bigint IS NOT NULL AND $8::bigint IS NOT NULL"
                    ),
                    &params,
                )
                .await?
                .first()
                .map_or(0, |r| r.get::<_, i64>(0));
            let rows = db
                .read(
                    &format!(
                        "SELECT {ENTRY_COLUMNS}, {rank} AS rank FROM chat_log l
                         WHERE {FILTERS} AND {matched}
                         ORDER BY rank DESC, l.created_at DESC, l.chat_id DESC, l.seq DESC
                         LIMIT $7 OFFSET $8"
                    ),
                    &params,
                )
                .await?;
            for row in &rows {
                found.push((row.get::<_, f32>("rank"), entry_from_row(row)?));
            }
        }
        found.sort_by(|(rank_a, a), (rank_b, b)| {
            rank_b
                .total_cmp(rank_a)
                .then_with(|| b.created_at.cmp(&a.created_at))
                .then_with(|| b.chat_id.as_uuid().cmp(a.chat_id.as_uuid()))
                .then_with(|| b.seq.cmp(&a.seq))
        });
        let page = found
            .into_iter()
            .skip(usize::try_from(query.offset).unwrap_or(usize::MAX))
            .take(usize::try_from(query.limit).unwrap_or(0))
            .map(|(_, entry)| entry);
        let needles: Vec<&str> = query
            .text
            .required
            .iter()
            .flatten()
            .map(|t| t.text.as_str())
            .collect();
        let (mut words, mut prefixes) = (Vec::new(), Vec::new());
        for t in query.text.required.iter().flatten() {
            let mut split: Vec<String> = index_words(&t.text).into_iter().map(|(w, _)| w).collect();
            if t.prefix
                && let Some(last) = split.pop()
            {
                prefixes.push(last);
            }
            words.extend(split);
        }
        let mut hits = Vec::new();
        for entry in page {
            let content = entry.content.clone().unwrap_or_default();
            let snippet = if substring {
                mark_substring(&content, &needles)
            } else {
                mark_words(&content, &words, &prefixes)
            };
            hits.push(SearchHit { entry, snippet });
        }
        Ok(SearchPage { hits, total })
    }

    async fn index_search(&self, _max_entries: usize) -> StoreResult<IndexProgress> {
        // The words are written with each message: nothing to follow.
        Ok(IndexProgress {
            processed: 0,
            remaining: 0,
        })
    }

    async fn search_index_lag(&self) -> StoreResult<u64> {
        Ok(0)
    }

    fn log_appended(&self) -> &tokio::sync::Notify {
        // Never woken: the indexer, finding nothing to follow, sleeps.
        &self.log_appended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search_query::{QueryLimits, parse};

    #[test]
    fn terms_become_words_never_syntax() {
        let limits = QueryLimits {
            max_chars: 256,
            max_terms: 16,
        };
        let q = parse("don't e-mail* 'x' \"green tea\"", limits).unwrap();
        let mut binds = Vec::new();
        let sql = condition(&q, 9, &mut binds);
        assert_eq!(
            binds,
            [
                "'don' <-> 't'",
                "'e' <-> 'mail':*",
                "'x'",
                "'green' <-> 'tea'"
            ]
        );
        assert!(sql.contains("$9") && sql.contains("$12"), "{sql}");
    }

    #[test]
    fn a_word_is_cut_to_what_postgresql_keeps_at_a_character_boundary() {
        let fits = "k".repeat(MAX_LEXEME_BYTES);
        assert_eq!(lexeme(&fits), fits, "N bytes: kept whole");
        let over = format!("{fits}k");
        assert_eq!(lexeme(&over), fits, "N + 1 bytes: cut to N");
        // 'é' is two bytes: 1024 of them are 2048, cut to 1023 (2046 bytes).
        let wide = "é".repeat(1024);
        assert_eq!(lexeme(&wide), "é".repeat(1023));
    }
}
