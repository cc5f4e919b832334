//! [`ClientStore`] in the browser: IndexedDB, every record encrypted.
//!
//! The key: an AES-GCM 256 key made by WebCrypto with `extractable:
//! false`, kept in IndexedDB as a `CryptoKey` (the browser stores it; no
//! script, this one included, can read its bytes). Each record is `iv ‖
//! ciphertext` with its own random 96-bit IV, the record's name as the
//! additional data (a record cannot be moved under another name).
//!
//! The SDK's store calls are synchronous, IndexedDB's are not: the store
//! keeps everything in memory (loaded and decrypted once, at open), and
//! every change is also queued for IndexedDB. [`BrowserStore::flush`]
//! writes the queue in one IndexedDB transaction, so an SDK transaction
//! is never written in part. The transport flushes before each request
//! and frame (see `BrowserTransport::saving`), the bindings after each
//! call: nothing the server has seen from this device is unsaved.
//!
//! Records (`records` object store; name → `iv ‖ AES-GCM(value)`):
//! `session`; `state/<key>`; `pos/<chat>`; `outbox/<n>` (n orders the
//! outbox); `hist/<chat>/<seq>` (a [`HistoryEntry`] as JSON). An edited
//! entry is marked by `state/history/edited/<chat>/<seq>`; a deleted one
//! leaves a tombstone, `state/history/deleted/<chat>/<seq>` (the entry with
//! its text emptied), so the app shows a placeholder. The key is in the
//! `keys` object store under `records`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use js_sys::{Array, Uint8Array};
use natter_proto::chats::{Message, SendMessage};
use natter_proto::{ChatId, MessageId};
use wasm_bindgen::{JsCast as _, JsValue};

use super::js;
use crate::StoreError;
use crate::local::{
    ClientStore, HistoryEntry, SEARCH_LIMIT, SavedSession, StateTx, matches_terms, search_terms,
};
use crate::session::{OutboxEntry, SyncState};

/// The IndexedDB schema version (object stores `records` and `keys`).
const DB_VERSION: u32 = 1;
const RECORDS: &str = "records";
const KEYS: &str = "keys";
/// The name of the record key in `keys`.
const RECORD_KEY: &str = "records";
/// AES-GCM's IV length (bytes).
const IV_BYTES: usize = 12;

fn browser(e: impl std::fmt::Display) -> StoreError {
    StoreError::Browser(e.to_string())
}

fn jserr(context: &str) -> impl Fn(JsValue) -> StoreError + '_ {
    move |e| StoreError::Browser(format!("{context}: {}", js::describe(&e)))
}

/// The device's store in the browser. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct BrowserStore {
    inner: Rc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The database's name.
    name: String,
    db: web_sys::IdbDatabase,
    /// The non-extractable record key.
    key: web_sys::CryptoKey,
    subtle: web_sys::SubtleCrypto,
    crypto: web_sys::Crypto,
    /// Everything, decrypted.
    mem: RefCell<Mem>,
    /// Changes not yet in IndexedDB: record name → value (`None`: delete).
    queued: RefCell<BTreeMap<String, Option<Vec<u8>>>>,
    /// One flush at a time, in order.
    flushing: tokio::sync::Mutex<()>,
    /// Closes the database when another connection deletes it.
    _on_versionchange: wasm_bindgen::closure::Closure<dyn FnMut(JsValue)>,
}

#[derive(Debug, Default)]
struct Mem {
    session: Option<SavedSession>,
    state: BTreeMap<String, Vec<u8>>,
    positions: HashMap<ChatId, i64>,
    /// Outbox entries by their order number.
    outbox: BTreeMap<u64, SendMessage>,
    history: BTreeMap<(ChatId, i64), HistoryEntry>,
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn unjson<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("record {name}: {e}")))
}

fn hist_name(chat: ChatId, seq: i64) -> String {
    format!("hist/{chat}/{seq:020}")
}

/// The `state` key marking a history entry as edited.
fn edited_key(chat: ChatId, seq: i64) -> String {
    format!("history/edited/{chat}/{seq:020}")
}

/// The `state` key of a deleted entry's tombstone (its text emptied).
fn deleted_key(chat: ChatId, seq: i64) -> String {
    format!("history/deleted/{chat}/{seq:020}")
}

impl BrowserStore {
    /// Opens (or creates) the store named `name` in this origin's
    /// IndexedDB, making its key on first use, and loads it.
    ///
    /// # Errors
    /// IndexedDB or WebCrypto are unavailable (a private window may refuse
    /// them), or a record does not decrypt.
    pub async fn open(name: &str) -> Result<Self, StoreError> {
        let window = js::window().map_err(browser)?;
        let factory = window
            .indexed_db()
            .map_err(jserr("IndexedDB"))?
            .ok_or_else(|| browser("IndexedDB is not available in this browser"))?;
        let crypto = window.crypto().map_err(jserr("WebCrypto"))?;
        let subtle = crypto.subtle();
        let open = factory
            .open_with_u32(name, DB_VERSION)
            .map_err(jserr("opening IndexedDB"))?;
        let upgrade = wasm_bindgen::closure::Closure::<dyn FnMut(JsValue)>::new({
            let open = open.clone();
            move |_| {
                let Ok(db) = open.result() else { return };
                let db: web_sys::IdbDatabase = db.unchecked_into();
                let names = db.object_store_names();
                for store in [RECORDS, KEYS] {
                    if !names.contains(store) {
                        let _ = db.create_object_store(store);
                    }
                }
            }
        });
        open.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
        let db = js::request(&open).await.map_err(browser)?;
        open.set_onupgradeneeded(None);
        drop(upgrade);
        let db: web_sys::IdbDatabase = db
            .dyn_into()
            .map_err(|_| browser("IndexedDB did not open a database"))?;

        // A new device signing in here deletes this database: let it (a
        // connection left open would block the deletion).
        let on_versionchange = wasm_bindgen::closure::Closure::<dyn FnMut(JsValue)>::new({
            let db = db.clone();
            move |_| db.close()
        });
        db.set_onversionchange(Some(on_versionchange.as_ref().unchecked_ref()));
        let key = Self::record_key(&db, &subtle).await?;
        let inner = Inner {
            _on_versionchange: on_versionchange,
            name: name.to_owned(),
            db,
            key,
            subtle,
            crypto,
            mem: RefCell::new(Mem::default()),
            queued: RefCell::new(BTreeMap::new()),
            flushing: tokio::sync::Mutex::new(()),
        };
        let store = Self {
            inner: Rc::new(inner),
        };
        store.load().await?;
        Ok(store)
    }

    /// Deletes the store named `name` (logout): its records and its key.
    ///
    /// # Errors
    /// IndexedDB refused.
    pub async fn destroy(name: &str) -> Result<(), StoreError> {
        let window = js::window().map_err(browser)?;
        let factory = window
            .indexed_db()
            .map_err(jserr("IndexedDB"))?
            .ok_or_else(|| browser("IndexedDB is not available in this browser"))?;
        let req = factory
            .delete_database(name)
            .map_err(jserr("deleting the store"))?;
        // Another tab holding the database open blocks the deletion: say
        // so rather than wait for it.
        let promise = js_sys::Promise::new(&mut |resolve, reject| {
            req.set_onsuccess(Some(&resolve));
            req.set_onerror(Some(&reject));
            req.set_onblocked(Some(&reject));
        });
        let outcome = js::promise(promise).await;
        req.set_onsuccess(None);
        req.set_onerror(None);
        req.set_onblocked(None);
        outcome
            .map(|_| ())
            .map_err(|_| browser("the store is open in another tab: close the other tabs first"))
    }

    /// Whether the history entry at `seq` of `chat` was edited (it has
    /// the new text).
    #[must_use]
    pub fn is_edited(&self, chat: ChatId, seq: i64) -> bool {
        self.inner
            .mem
            .borrow()
            .state
            .contains_key(&edited_key(chat, seq))
    }

    /// The entries of `chat` deleted for everyone, oldest first: who sent
    /// them and when, their text empty (shown as a placeholder).
    ///
    /// # Errors
    /// A tombstone does not decode.
    pub fn deleted(&self, chat: ChatId) -> Result<Vec<HistoryEntry>, StoreError> {
        let prefix = format!("history/deleted/{chat}/");
        let mem = self.inner.mem.borrow();
        mem.state
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| unjson(k, v))
            .collect()
    }

    /// Closes the database (before [`BrowserStore::destroy`], which waits
    /// for every connection to close).
    pub fn close(&self) {
        self.inner.db.close();
    }

    /// The record key: loaded, or made (non-extractable) and kept.
    async fn record_key(
        db: &web_sys::IdbDatabase,
        subtle: &web_sys::SubtleCrypto,
    ) -> Result<web_sys::CryptoKey, StoreError> {
        let tx = db
            .transaction_with_str(KEYS)
            .map_err(jserr("reading the key"))?;
        let keys = tx.object_store(KEYS).map_err(jserr("reading the key"))?;
        let found = js::request(
            &keys
                .get(&JsValue::from_str(RECORD_KEY))
                .map_err(jserr("reading the key"))?,
        )
        .await
        .map_err(browser)?;
        if let Ok(key) = found.dyn_into::<web_sys::CryptoKey>() {
            return Ok(key);
        }
        let params = web_sys::AesKeyGenParams::new("AES-GCM", 256);
        let usages = Array::of2(&"encrypt".into(), &"decrypt".into());
        let made = subtle
            .generate_key_with_object(&params, false, &usages)
            .map_err(jserr("making the key"))?;
        let key: web_sys::CryptoKey = js::promise(made)
            .await
            .map_err(browser)?
            .dyn_into()
            .map_err(|_| browser("WebCrypto did not make a key"))?;
        let tx = db
            .transaction_with_str_and_mode(KEYS, web_sys::IdbTransactionMode::Readwrite)
            .map_err(jserr("keeping the key"))?;
        let keys = tx.object_store(KEYS).map_err(jserr("keeping the key"))?;
        keys.put_with_key(&key, &JsValue::from_str(RECORD_KEY))
            .map_err(jserr("keeping the key"))?;
        js::committed(&tx).await.map_err(browser)?;
        Ok(key)
    }

    fn params(iv: &[u8], name: &str) -> web_sys::AesGcmParams {
        let params = web_sys::AesGcmParams::new_with_u8_array("AES-GCM", &Uint8Array::from(iv));
        params.set_additional_data_u8_array(&Uint8Array::from(name.as_bytes()));
        params
    }

    async fn seal(&self, name: &str, plain: &[u8]) -> Result<Uint8Array, StoreError> {
        let mut iv = [0u8; IV_BYTES];
        self.inner
            .crypto
            .get_random_values_with_u8_array(&mut iv)
            .map_err(jserr("random"))?;
        let p = self
            .inner
            .subtle
            .encrypt_with_object_and_u8_array(&Self::params(&iv, name), &self.inner.key, plain)
            .map_err(jserr("encrypting"))?;
        let sealed = js::promise(p).await.map_err(browser)?;
        let sealed = Uint8Array::new(&sealed);
        let out =
            Uint8Array::new_with_length(u32::try_from(IV_BYTES).unwrap_or(0) + sealed.length());
        out.set(&Uint8Array::from(&iv[..]), 0);
        out.set(&sealed, u32::try_from(IV_BYTES).unwrap_or(0));
        Ok(out)
    }

    async fn open_record(&self, name: &str, sealed: &JsValue) -> Result<Vec<u8>, StoreError> {
        let bytes = sealed
            .dyn_ref::<Uint8Array>()
            .map(Uint8Array::to_vec)
            .ok_or_else(|| StoreError::Corrupt(format!("record {name} is not bytes")))?;
        if bytes.len() < IV_BYTES {
            return Err(StoreError::Corrupt(format!("record {name} is truncated")));
        }
        let (iv, ct) = bytes.split_at(IV_BYTES);
        let p = self
            .inner
            .subtle
            .decrypt_with_object_and_u8_array(&Self::params(iv, name), &self.inner.key, ct)
            .map_err(jserr("decrypting"))?;
        let plain = js::promise(p)
            .await
            .map_err(|_| StoreError::Corrupt(format!("record {name} does not decrypt")))?;
        Ok(Uint8Array::new(&plain).to_vec())
    }

    /// Reads and decrypts every record into memory.
    async fn load(&self) -> Result<(), StoreError> {
        let tx = self
            .inner
            .db
            .transaction_with_str(RECORDS)
            .map_err(jserr("loading"))?;
        let records = tx.object_store(RECORDS).map_err(jserr("loading"))?;
        let keys_req = records.get_all_keys().map_err(jserr("loading"))?;
        let values_req = records.get_all().map_err(jserr("loading"))?;
        let names = Array::from(&js::request(&keys_req).await.map_err(browser)?);
        let values = Array::from(&js::request(&values_req).await.map_err(browser)?);
        let mut mem = Mem::default();
        for (name, value) in names.iter().zip(values.iter()) {
            let Some(name) = name.as_string() else {
                continue;
            };
            let plain = self.open_record(&name, &value).await?;
            if name == "session" {
                mem.session = Some(unjson(&name, &plain)?);
            } else if let Some(k) = name.strip_prefix("state/") {
                mem.state.insert(k.to_owned(), plain);
            } else if let Some(chat) = name.strip_prefix("pos/") {
                let chat: ChatId = chat
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("record {name}")))?;
                mem.positions.insert(chat, unjson(&name, &plain)?);
            } else if let Some(n) = name.strip_prefix("outbox/") {
                let n: u64 = n
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("record {name}")))?;
                mem.outbox.insert(n, unjson(&name, &plain)?);
            } else if name.starts_with("hist/") {
                let entry: HistoryEntry = unjson(&name, &plain)?;
                mem.history.insert((entry.chat_id, entry.seq), entry);
            }
        }
        *self.inner.mem.borrow_mut() = mem;
        Ok(())
    }

    fn queue(&self, name: String, value: Option<Vec<u8>>) {
        self.inner.queued.borrow_mut().insert(name, value);
    }

    /// Whether changes wait to be written.
    #[must_use]
    pub fn has_unsaved(&self) -> bool {
        !self.inner.queued.borrow().is_empty()
    }

    /// Writes every queued change to IndexedDB, in one transaction. On
    /// failure the changes stay queued (the next flush tries again) and
    /// the error says why.
    ///
    /// # Errors
    /// Encryption or IndexedDB failed (storage full, the database closed).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _one = self.inner.flushing.lock().await;
        let batch = std::mem::take(&mut *self.inner.queued.borrow_mut());
        if batch.is_empty() {
            return Ok(());
        }
        let outcome = self.write(&batch).await;
        if outcome.is_err() {
            // Put back what no later change replaced.
            let mut queued = self.inner.queued.borrow_mut();
            for (name, value) in batch {
                queued.entry(name).or_insert(value);
            }
        }
        outcome
    }

    async fn write(&self, batch: &BTreeMap<String, Option<Vec<u8>>>) -> Result<(), StoreError> {
        let mut sealed = Vec::with_capacity(batch.len());
        for (name, value) in batch {
            let value = match value {
                Some(v) => Some(self.seal(name, v).await?),
                None => None,
            };
            sealed.push((name, value));
        }
        let tx = self
            .inner
            .db
            .transaction_with_str_and_mode(RECORDS, web_sys::IdbTransactionMode::Readwrite)
            .map_err(jserr("saving"))?;
        let records = tx.object_store(RECORDS).map_err(jserr("saving"))?;
        for (name, value) in sealed {
            let key = JsValue::from_str(name);
            match value {
                Some(v) => records.put_with_key(&v, &key).map(|_| ()),
                None => records.delete(&key).map(|_| ()),
            }
            .map_err(jserr("saving"))?;
        }
        js::committed(&tx).await.map_err(browser)
    }

    /// The store's name in IndexedDB.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Saves the login.
    ///
    /// # Errors
    /// It does not encode.
    pub fn save_session(&self, session: &SavedSession) -> Result<(), StoreError> {
        self.queue("session".into(), Some(json(session)?));
        self.inner.mem.borrow_mut().session = Some(session.clone());
        Ok(())
    }

    /// The saved login, if any.
    #[must_use]
    pub fn load_session(&self) -> Option<SavedSession> {
        self.inner.mem.borrow().session.clone()
    }
}

/// `state` inside one transaction: reads see the transaction's own writes.
struct Txn<'a> {
    base: &'a BTreeMap<String, Vec<u8>>,
    changes: RefCell<BTreeMap<String, Option<Vec<u8>>>>,
}

impl StateTx for Txn<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(change) = self.changes.borrow().get(key) {
            return Ok(change.clone());
        }
        Ok(self.base.get(key).cloned())
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.changes
            .borrow_mut()
            .insert(key.to_owned(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.changes.borrow_mut().insert(key.to_owned(), None);
        Ok(())
    }

    fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let changes = self.changes.borrow();
        let mut keys: Vec<String> = self
            .base
            .keys()
            .filter(|k| k.starts_with(prefix) && !matches!(changes.get(*k), Some(None)))
            .cloned()
            .collect();
        for (k, v) in changes.iter() {
            if v.is_some() && k.starts_with(prefix) && !self.base.contains_key(k) {
                keys.push(k.clone());
            }
        }
        keys.sort();
        Ok(keys)
    }
}

impl ClientStore for BrowserStore {
    fn transaction_dyn(
        &self,
        work: &mut dyn FnMut(&dyn StateTx) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let changes = {
            let mem = self.inner.mem.borrow();
            let tx = Txn {
                base: &mem.state,
                changes: RefCell::new(BTreeMap::new()),
            };
            work(&tx)?;
            tx.changes.into_inner()
        };
        let mut mem = self.inner.mem.borrow_mut();
        for (key, value) in changes {
            match &value {
                Some(v) => mem.state.insert(key.clone(), v.clone()),
                None => mem.state.remove(&key),
            };
            self.queue(format!("state/{key}"), value);
        }
        Ok(())
    }

    fn put_history(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        let bytes = json(entry)?;
        self.queue(hist_name(entry.chat_id, entry.seq), Some(bytes));
        self.inner
            .mem
            .borrow_mut()
            .history
            .insert((entry.chat_id, entry.seq), entry.clone());
        Ok(())
    }

    fn update_history(&self, message: MessageId, text: Option<&str>) -> Result<(), StoreError> {
        let mut mem = self.inner.mem.borrow_mut();
        let Some(slot) = mem
            .history
            .iter()
            .find(|(_, e)| e.message_id == message)
            .map(|(k, _)| *k)
        else {
            return Ok(());
        };
        match text {
            Some(text) => {
                if let Some(entry) = mem.history.get_mut(&slot) {
                    entry.text = text.to_owned();
                    let bytes = json(entry)?;
                    self.queue(hist_name(slot.0, slot.1), Some(bytes));
                }
                let mark = edited_key(slot.0, slot.1);
                mem.state.insert(mark.clone(), Vec::new());
                self.queue(format!("state/{mark}"), Some(Vec::new()));
            }
            None => {
                if let Some(mut entry) = mem.history.remove(&slot) {
                    // The tombstone: who and when, not what.
                    entry.text.clear();
                    let tomb = deleted_key(slot.0, slot.1);
                    let bytes = json(&entry)?;
                    mem.state.insert(tomb.clone(), bytes.clone());
                    self.queue(format!("state/{tomb}"), Some(bytes));
                }
                self.queue(hist_name(slot.0, slot.1), None);
            }
        }
        Ok(())
    }

    fn history(&self, chat: ChatId) -> Result<Vec<HistoryEntry>, StoreError> {
        let mem = self.inner.mem.borrow();
        Ok(mem
            .history
            .range((chat, i64::MIN)..=(chat, i64::MAX))
            .map(|(_, e)| e.clone())
            .collect())
    }

    fn search_local(&self, text: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let terms = search_terms(text);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let mem = self.inner.mem.borrow();
        let mut hits: Vec<&HistoryEntry> = mem
            .history
            .values()
            .filter(|e| matches_terms(&e.text, &terms))
            .collect();
        // Newest first (RFC 3339 in UTC sorts as text).
        hits.sort_by(|a, b| b.sent_at.cmp(&a.sent_at).then(b.seq.cmp(&a.seq)));
        Ok(hits.into_iter().take(SEARCH_LIMIT).cloned().collect())
    }
}

impl SyncState for BrowserStore {
    fn positions(&self) -> Result<Vec<(ChatId, i64)>, StoreError> {
        let mem = self.inner.mem.borrow();
        Ok(mem.positions.iter().map(|(c, s)| (*c, *s)).collect())
    }

    fn record(&self, chat: ChatId, seq: i64) -> Result<(), StoreError> {
        let mut mem = self.inner.mem.borrow_mut();
        let pos = mem.positions.entry(chat).or_insert(seq);
        *pos = (*pos).max(seq);
        let value = *pos;
        self.queue(format!("pos/{chat}"), Some(json(&value)?));
        Ok(())
    }

    fn push_outbox(&self, message: &SendMessage) -> Result<(), StoreError> {
        let mut mem = self.inner.mem.borrow_mut();
        let id = message.client_message_id.as_deref();
        if mem
            .outbox
            .values()
            .any(|m| m.client_message_id.as_deref() == id)
        {
            return Ok(());
        }
        let n = mem.outbox.keys().next_back().map_or(0, |n| n + 1);
        self.queue(format!("outbox/{n:020}"), Some(json(message)?));
        mem.outbox.insert(n, message.clone());
        Ok(())
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mem = self.inner.mem.borrow();
        Ok(mem
            .outbox
            .values()
            .map(|m| OutboxEntry { message: m.clone() })
            .collect())
    }

    fn remove_outbox(&self, client_message_id: &str) -> Result<(), StoreError> {
        let mut mem = self.inner.mem.borrow_mut();
        let found: Vec<u64> = mem
            .outbox
            .iter()
            .filter(|(_, m)| m.client_message_id.as_deref() == Some(client_message_id))
            .map(|(n, _)| *n)
            .collect();
        for n in found {
            mem.outbox.remove(&n);
            self.queue(format!("outbox/{n:020}"), None);
        }
        Ok(())
    }

    fn save_message(&self, message: &Message, text: Option<&str>) -> Result<(), StoreError> {
        let Some(text) = text else { return Ok(()) };
        self.put_history(&HistoryEntry {
            chat_id: message.chat_id,
            seq: message.seq,
            message_id: message.id,
            sender_id: message.sender_id,
            sent_at: natter_proto::timefmt::format(message.timestamp).unwrap_or_default(),
            text: text.to_owned(),
            reply_to: message.reply_to,
            file: None,
        })
    }

    fn edit_message(&self, message: MessageId, text: Option<&str>) -> Result<(), StoreError> {
        self.update_history(message, text)
    }
}
