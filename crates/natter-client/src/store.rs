//! The device's local store (native only): one SQLite file in a private
//! directory (0700), the session token in its own file (0600), and tables
//! for what the sync engine and the encryption engine must not lose:
//!
//! - `positions`: the last `seq` processed per chat (the `sync` request);
//! - `outbox`: sends not yet acknowledged, in order;
//! - `state`: opaque key → bytes for the encryption engine, with
//!   transactions ([`Store::transaction`]);
//! - `history` + `history_fts`: decrypted (or plaintext) messages, searched
//!   locally with FTS5 ([`Store::search_local`]), because the server cannot
//!   search encrypted chats.
//!
//! Migrations are embedded and applied in order (`PRAGMA user_version`).
//!
//! May depend on: `natter-proto`, rusqlite. Nothing here does network I/O.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use natter_proto::chats::SendMessage;
use natter_proto::{ChatId, MessageId};
use rusqlite::{OptionalExtension as _, params};

use crate::StoreError;
use crate::local::{ClientStore, StateTx};
pub use crate::local::{HistoryEntry, SavedSession};
use crate::session::{OutboxEntry, SyncState};

/// The schema, one step per entry; never edit a step that shipped.
const MIGRATIONS: &[&str] = &[
    // 1: positions, outbox, opaque state, history with full-text search.
    "CREATE TABLE positions (
        chat_id TEXT PRIMARY KEY,
        seq     INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE outbox (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id           TEXT NOT NULL,
        client_message_id TEXT NOT NULL UNIQUE,
        body              TEXT NOT NULL
    ) STRICT;
    CREATE TABLE state (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) STRICT;
    CREATE TABLE history (
        id         INTEGER PRIMARY KEY,
        chat_id    TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        sender_id  TEXT NOT NULL,
        sent_at    TEXT NOT NULL,
        text       TEXT NOT NULL,
        UNIQUE (chat_id, seq)
    ) STRICT;
    CREATE VIRTUAL TABLE history_fts USING fts5(
        text, content='history', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER history_ai AFTER INSERT ON history BEGIN
        INSERT INTO history_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER history_ad AFTER DELETE ON history BEGIN
        INSERT INTO history_fts(history_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER history_au AFTER UPDATE ON history BEGIN
        INSERT INTO history_fts(history_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO history_fts(rowid, text) VALUES (new.id, new.text);
    END;",
    // 2: what a message answers, and a file message's body (media id and
    // key, JSON) so the file can be fetched again after a restart.
    "ALTER TABLE history ADD COLUMN reply_to TEXT;
    ALTER TABLE history ADD COLUMN file TEXT;",
];

/// The local store of one device. Cheap to clone (one connection behind a lock).
#[derive(Debug, Clone)]
pub struct Store {
    /// The connection; SQLite calls are short, so a plain mutex.
    db: Arc<Mutex<rusqlite::Connection>>,
    /// The private directory.
    dir: PathBuf,
}

/// One transaction over the `state` table (see [`Store::transaction`]).
#[derive(Debug)]
pub struct StateTxn<'a> {
    /// The open transaction.
    tx: &'a rusqlite::Transaction<'a>,
}

impl StateTxn<'_> {
    /// The value under `key`.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tx
            .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO state (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Removes `key` (nothing if absent).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.tx.execute("DELETE FROM state WHERE key = ?1", [key])?;
        Ok(())
    }

    /// Every key starting with `prefix`, sorted.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .tx
            .prepare("SELECT key FROM state WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key")?;
        let keys = stmt
            .query_map([prefix], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(keys)
    }
}

/// Turns what a person typed into a safe FTS5 query: every
/// whitespace-separated word becomes a quoted string (inner quotes doubled),
/// all of them required. FTS5 operators (`AND`, `-`, `*`, `NEAR`, `:`) lose
/// their meaning; `don't` and `e-mail` become phrases of their tokens.
/// `None` when nothing searchable is left.
#[must_use]
pub fn fts_query(text: &str) -> Option<String> {
    let terms: Vec<String> = text
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

fn lock(db: &Mutex<rusqlite::Connection>) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
    // A panic while holding the lock leaves SQLite consistent (transactions roll back).
    db.lock().unwrap_or_else(PoisonError::into_inner)
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad id {s:?}")))
}

impl Store {
    /// Opens (or creates) the store in `dir`, which is made private (0700).
    ///
    /// # Errors
    /// The directory or database cannot be created, or a migration failed.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let path = dir.join("natter.db");
        if !path.exists() {
            // Create it private before SQLite opens it.
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)?;
        }
        let mut db = rusqlite::Connection::open(&path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        Self::migrate(&mut db)?;
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
            dir: dir.to_owned(),
        })
    }

    fn migrate(db: &mut rusqlite::Connection) -> Result<(), StoreError> {
        let version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, step) in MIGRATIONS.iter().enumerate() {
            let target = i64::try_from(i).map_or(i64::MAX, |i| i + 1);
            if target <= version {
                continue;
            }
            let tx = db.transaction()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", target)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The store's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Saves the login (`session.json`, mode 0600, replaced atomically).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save_session(&self, session: &SavedSession) -> Result<(), StoreError> {
        let json = serde_json::to_vec(session).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tmp = self.dir.join("session.json.tmp");
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join("session.json"))?;
        Ok(())
    }

    /// The saved login, if any.
    ///
    /// # Errors
    /// The file exists but cannot be read or decoded.
    pub fn load_session(&self) -> Result<Option<SavedSession>, StoreError> {
        match fs::read(self.dir.join("session.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets the login (logout).
    ///
    /// # Errors
    /// The file cannot be removed.
    pub fn clear_session(&self) -> Result<(), StoreError> {
        match fs::remove_file(self.dir.join("session.json")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Runs `work` in one transaction over the `state` table: all of its
    /// puts and deletes commit together, or none do if it fails.
    ///
    /// # Errors
    /// `work`'s error, or SQLite's.
    pub fn transaction<T>(
        &self,
        work: impl FnOnce(&StateTxn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut db = lock(&self.db);
        let tx = db.transaction()?;
        let value = work(&StateTxn { tx: &tx })?;
        tx.commit()?;
        Ok(value)
    }

    /// Adds (or, for an edit, replaces) a message of the local history.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn put_history(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        let file = match &entry.file {
            Some(body) => {
                Some(serde_json::to_string(body).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            }
            None => None,
        };
        lock(&self.db).execute(
            "INSERT INTO history (chat_id, seq, message_id, sender_id, sent_at, text, reply_to, file)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (chat_id, seq) DO UPDATE SET text = excluded.text,
                 reply_to = excluded.reply_to, file = excluded.file",
            params![
                entry.chat_id.to_string(),
                entry.seq,
                entry.message_id.to_string(),
                entry.sender_id.to_string(),
                entry.sent_at,
                entry.text,
                entry.reply_to.map(|r| r.to_string()),
                file
            ],
        )?;
        Ok(())
    }

    /// Replaces the text of a message already in the history (an edit), or
    /// removes it (`None`: deleted for everyone).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn update_history(&self, message: MessageId, text: Option<&str>) -> Result<(), StoreError> {
        let db = lock(&self.db);
        match text {
            Some(text) => db.execute(
                "UPDATE history SET text = ?2 WHERE message_id = ?1",
                params![message.to_string(), text],
            )?,
            None => db.execute(
                "DELETE FROM history WHERE message_id = ?1",
                [message.to_string()],
            )?,
        };
        Ok(())
    }

    /// A chat's local history, oldest first.
    ///
    /// # Errors
    /// SQLite failed, or a row did not decode.
    pub fn history(&self, chat: ChatId) -> Result<Vec<HistoryEntry>, StoreError> {
        self.query_history(
            "SELECT chat_id, seq, message_id, sender_id, sent_at, text, reply_to, file FROM history
             WHERE chat_id = ?1 ORDER BY seq",
            &chat.to_string(),
        )
    }

    /// Searches the local history for messages containing every word of
    /// `text` (as typed by a person: punctuation and FTS syntax are taken
    /// literally), best matches first, at most 100.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn search_local(&self, text: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let Some(query) = fts_query(text) else {
            return Ok(Vec::new());
        };
        self.query_history(
            "SELECT h.chat_id, h.seq, h.message_id, h.sender_id, h.sent_at, h.text, h.reply_to, h.file
             FROM history_fts JOIN history h ON h.id = history_fts.rowid
             WHERE history_fts MATCH ?1 ORDER BY rank, h.id DESC LIMIT 100",
            &query,
        )
    }

    fn query_history(&self, sql: &str, arg: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let db = lock(&self.db);
        let mut stmt = db.prepare(sql)?;
        let rows = stmt
            .query_map([arg], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(
                |(chat, seq, message, sender, sent_at, text, reply_to, file)| {
                    Ok(HistoryEntry {
                        chat_id: parse(&chat)?,
                        seq,
                        message_id: parse(&message)?,
                        sender_id: parse(&sender)?,
                        sent_at,
                        text,
                        reply_to: reply_to.as_deref().map(parse).transpose()?,
                        file: file
                            .as_deref()
                            .map(serde_json::from_str)
                            .transpose()
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    })
                },
            )
            .collect()
    }
}

impl SyncState for Store {
    fn positions(&self) -> Result<Vec<(ChatId, i64)>, StoreError> {
        let db = lock(&self.db);
        let mut stmt = db.prepare("SELECT chat_id, seq FROM positions ORDER BY chat_id")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(|(c, s)| Ok((parse(&c)?, s))).collect()
    }

    fn record(&self, chat: ChatId, seq: i64) -> Result<(), StoreError> {
        lock(&self.db).execute(
            "INSERT INTO positions (chat_id, seq) VALUES (?1, ?2)
             ON CONFLICT (chat_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            params![chat.to_string(), seq],
        )?;
        Ok(())
    }

    fn push_outbox(&self, message: &SendMessage) -> Result<(), StoreError> {
        let body =
            serde_json::to_string(message).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let id = message.client_message_id.clone().unwrap_or_default();
        lock(&self.db).execute(
            "INSERT INTO outbox (chat_id, client_message_id, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (client_message_id) DO NOTHING",
            params![message.chat_id.to_string(), id, body],
        )?;
        Ok(())
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let db = lock(&self.db);
        let mut stmt = db.prepare("SELECT body FROM outbox ORDER BY id")?;
        let bodies = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        bodies
            .iter()
            .map(|b| {
                serde_json::from_str(b)
                    .map(|message| OutboxEntry { message })
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    fn remove_outbox(&self, client_message_id: &str) -> Result<(), StoreError> {
        lock(&self.db).execute(
            "DELETE FROM outbox WHERE client_message_id = ?1",
            [client_message_id],
        )?;
        Ok(())
    }

    fn save_message(
        &self,
        message: &natter_proto::chats::Message,
        text: Option<&str>,
    ) -> Result<(), StoreError> {
        let Some(text) = text else { return Ok(()) };
        let sent_at = message
            .timestamp
            .format(&time_format())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.put_history(&HistoryEntry {
            chat_id: message.chat_id,
            seq: message.seq,
            message_id: message.id,
            sender_id: message.sender_id,
            sent_at,
            text: text.to_owned(),
            reply_to: message.reply_to,
            file: None,
        })
    }

    fn edit_message(&self, message: MessageId, text: Option<&str>) -> Result<(), StoreError> {
        self.update_history(message, text)
    }
}

impl StateTx for StateTxn<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        StateTxn::get(self, key)
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        StateTxn::put(self, key, value)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        StateTxn::delete(self, key)
    }

    fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        StateTxn::keys(self, prefix)
    }
}

impl ClientStore for Store {
    fn transaction_dyn(
        &self,
        work: &mut dyn FnMut(&dyn StateTx) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        Store::transaction(self, |tx| work(tx))
    }

    fn put_history(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        Store::put_history(self, entry)
    }

    fn update_history(&self, message: MessageId, text: Option<&str>) -> Result<(), StoreError> {
        Store::update_history(self, message, text)
    }

    fn history(&self, chat: ChatId) -> Result<Vec<HistoryEntry>, StoreError> {
        Store::history(self, chat)
    }

    fn search_local(&self, text: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        Store::search_local(self, text)
    }
}

fn time_format() -> time::format_description::well_known::Rfc3339 {
    time::format_description::well_known::Rfc3339
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use natter_proto::{DeviceId, UserId};

    #[test]
    fn user_text_becomes_quoted_terms() {
        assert_eq!(fts_query("don't").as_deref(), Some("\"don't\""));
        assert_eq!(fts_query("e-mail").as_deref(), Some("\"e-mail\""));
        assert_eq!(
            fts_query("how are you?").as_deref(),
            Some("\"how\" \"are\" \"you?\"")
        );
        assert_eq!(fts_query("say \"hi").as_deref(), Some("\"say\" \"\"\"hi\""));
        assert_eq!(fts_query("  ?? - "), None);
    }

    #[test]
    fn state_transactions_commit_or_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        store.transaction(|tx| tx.put("a", b"1")).unwrap();
        let failed: Result<(), StoreError> = store.transaction(|tx| {
            tx.put("b", b"2")?;
            tx.delete("a")?;
            Err(StoreError::Corrupt("abort".to_owned()))
        });
        assert!(failed.is_err());
        let (a, b) = store
            .transaction(|tx| Ok((tx.get("a")?, tx.get("b")?)))
            .unwrap();
        assert_eq!(a.as_deref(), Some(&b"1"[..]));
        assert_eq!(b, None);
        assert_eq!(
            store.transaction(|tx| tx.keys("")).unwrap(),
            vec!["a".to_owned()]
        );
    }

    #[test]
    fn the_store_behind_the_trait_commits_or_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store: crate::local::SharedStore =
            std::sync::Arc::new(Store::open(&dir.path().join("s")).unwrap());
        let n = store
            .transaction(|tx| {
                tx.put("e2ee/a", b"1")?;
                Ok(tx.keys("e2ee/")?.len())
            })
            .unwrap();
        assert_eq!(n, 1);
        let failed: Result<(), StoreError> = store.transaction(|tx| {
            tx.delete("e2ee/a")?;
            Err(StoreError::Corrupt("abort".to_owned()))
        });
        assert!(failed.is_err());
        assert_eq!(
            store.transaction(|tx| tx.get("e2ee/a")).unwrap().as_deref(),
            Some(&b"1"[..])
        );
        let chat = ChatId::new();
        let entry = HistoryEntry {
            chat_id: chat,
            seq: 1,
            message_id: MessageId::new(),
            sender_id: UserId::new(),
            sent_at: "2026-12-02T04:00:00Z".to_owned(),
            text: "Lunch at noon?".to_owned(),
            reply_to: Some(MessageId::new()),
            file: None,
        };
        store.put_history(&entry).unwrap();
        assert_eq!(store.history(chat).unwrap(), vec![entry.clone()]);
        // A file's body comes back as it went in, after a reopen too.
        let file = HistoryEntry {
            seq: 2,
            message_id: MessageId::new(),
            text: "a.bin".to_owned(),
            reply_to: None,
            file: Some(crate::e2ee::payload::Body::File {
                media_id: natter_proto::MediaId::new(),
                key: crate::e2ee::media::MediaKey {
                    key: [7; 32],
                    nonce_prefix: [8; crate::e2ee::media::NONCE_PREFIX_BYTES],
                    sha256: [9; 32],
                    size: 3,
                },
                name: "a.bin".to_owned(),
                mime: "application/octet-stream".to_owned(),
            }),
            ..entry.clone()
        };
        store.put_history(&file).unwrap();
        let reopened = Store::open(&dir.path().join("s")).unwrap();
        assert_eq!(
            reopened.history(chat).unwrap(),
            vec![entry.clone(), file.clone()]
        );
        store.update_history(file.message_id, None).unwrap();
        assert_eq!(store.search_local("noon").unwrap(), vec![entry.clone()]);
        store.update_history(entry.message_id, None).unwrap();
        assert!(store.history(chat).unwrap().is_empty());
    }

    #[test]
    fn the_directory_and_the_token_file_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = Store::open(&path).unwrap();
        let saved = SavedSession {
            base: "http://x".to_owned(),
            user_id: UserId::new(),
            device_id: DeviceId::new(),
            token: "nt_secret".to_owned(),
        };
        store.save_session(&saved).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&path.join("session.json")), 0o600);
        assert_eq!(mode(&path.join("natter.db")), 0o600);
        assert_eq!(
            Store::open(&path).unwrap().load_session().unwrap(),
            Some(saved)
        );
        assert!(!format!("{:?}", store.load_session().unwrap()).contains("nt_secret"));
    }
}
