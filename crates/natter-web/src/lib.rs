//! The browser client's bindings: the SDK's [`Messenger`] (MLS, sync,
//! outbox) compiled to WebAssembly, its store in IndexedDB
//! ([`BrowserStore`]), behind one JavaScript class, `Natter`.
//!
//! # Layout
//! - `Natter`: sign up / log in / resume, then one method per thing the
//!   app does; every method returns a Promise and rejects with an `Error`
//!   whose `message` is a sentence for people and whose `code` is the
//!   server's error code, when there is one.
//! - The messenger's task: the [`Messenger`] is owned by one task that
//!   waits on the sync engine and on the app's commands at once (the sync
//!   engine's wait is cancel-safe; a command or an event, once started,
//!   runs to the end), and hands every event to the app's `onEvent`
//!   callback as a plain object (`{type: "message", ...}`).
//! - Files: a received file's key is kept (in the encrypted store) with
//!   its chat and seq, so its preview still decrypts after a reload; a
//!   sent file's bytes are kept likewise (a device cannot decrypt its own
//!   MLS messages, so it keeps what it sent).
//!
//! Natively the crate is empty.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{Either, LocalBoxFuture, select};
use js_sys::{Function, Uint8Array};
use natter_client::browser::{BrowserStore, BrowserTransport};
use natter_client::e2ee::payload::Body;
use natter_client::{
    Client, ClientError, ClientStore, HistoryEntry, Messenger, MessengerEvent, Session, quote_words,
};
use natter_proto::accounts::{LoginRequest, RegisterRequest};
use natter_proto::chats::ChatKind;
use natter_proto::users::DiscoverContacts;
use natter_proto::{ChatId, DeviceId, MessageId, UserId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use wasm_bindgen::prelude::*;

/// Each request's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The IndexedDB database of the signed-in device.
const STORE_NAME: &str = "natter";
/// Commands waiting for the messenger's task: the app awaits each one,
/// so a handful at most are ever queued; beyond this the app is told to
/// wait.
const COMMAND_QUEUE: usize = 64;
/// The largest file kept locally for its preview after a reload.
const KEEP_FILE_BYTES: usize = 16 * 1024 * 1024;

type JsResult<T> = Result<T, JsValue>;

/// An `Error` for the app: the sentence, and the server's code if any.
fn js_error(e: &ClientError) -> JsValue {
    let message = match e {
        ClientError::Api(api) => api.message.clone(),
        ClientError::Transport(t) => format!("The server cannot be reached ({t})."),
        ClientError::Revoked => "This device was logged out. Log in again.".to_owned(),
        other => other.to_string(),
    };
    let error = js_sys::Error::new(&message);
    if let Some(code) = e.code() {
        let _ = js_sys::Reflect::set(&error, &"code".into(), &code.as_str().into());
    }
    if matches!(e, ClientError::Transport(_)) {
        let _ = js_sys::Reflect::set(&error, &"code".into(), &"offline".into());
    }
    error.into()
}

fn plain_error(message: &str) -> JsValue {
    js_sys::Error::new(message).into()
}

fn to_js<T: Serialize>(value: &T) -> JsResult<JsValue> {
    let text = serde_json::to_string(value).map_err(|e| plain_error(&e.to_string()))?;
    js_sys::JSON::parse(&text)
}

fn parse_id<T: std::str::FromStr>(what: &str, text: &str) -> JsResult<T> {
    text.parse()
        .map_err(|_| plain_error(&format!("not a {what} id: {text}")))
}

/// A seq from JavaScript (a Number: exact up to 2^53).
fn seq_of(seq: f64) -> JsResult<i64> {
    if seq.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&seq) {
        #[allow(clippy::cast_possible_truncation)] // checked above
        Ok(seq as i64)
    } else {
        Err(plain_error(&format!("not a seq: {seq}")))
    }
}

fn store_error(e: natter_client::StoreError) -> JsValue {
    js_error(&ClientError::Store(e))
}

/// A history entry as the app sees it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    chat_id: ChatId,
    seq: i64,
    message_id: String,
    sender_id: UserId,
    sent_at: String,
    text: String,
    /// Set for a file message: its name and type.
    file: Option<FileInfo>,
    /// Its text was edited (by its sender).
    edited: bool,
    /// Deleted for everyone: `text` is empty, show a placeholder.
    deleted: bool,
    /// The message this one answers, quoted.
    reply_to: Option<Quote>,
}

/// The quote above a reply: who wrote the answered message and its first
/// words (the SDK's [`quote_words`]).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Quote {
    message_id: String,
    /// `null` when this device does not have the answered message.
    sender_id: Option<UserId>,
    /// Its first words (`📎 name` for a file); empty when deleted or not
    /// on this device.
    text: String,
    /// The answered message was deleted for everyone.
    deleted: bool,
}

/// What a chat's replies can quote: its history, deleted messages too.
struct Quotable {
    live: Vec<HistoryEntry>,
    deleted: Vec<HistoryEntry>,
}

impl Quotable {
    fn of(store: &BrowserStore, chat: ChatId) -> Self {
        Self {
            live: ClientStore::history(store, chat).unwrap_or_default(),
            deleted: store.deleted(chat).unwrap_or_default(),
        }
    }

    fn quote(&self, store: &BrowserStore, id: MessageId) -> Quote {
        let message_id = id.to_string();
        if let Some(e) = self.live.iter().find(|e| e.message_id == id) {
            let text = match file_info(store, e) {
                Some(f) => format!("📎 {}", f.name),
                None => e.text.clone(),
            };
            return Quote {
                message_id,
                sender_id: Some(e.sender_id),
                text: quote_words(&text),
                deleted: false,
            };
        }
        let deleted = self.deleted.iter().find(|e| e.message_id == id);
        Quote {
            message_id,
            sender_id: deleted.map(|e| e.sender_id),
            text: String::new(),
            deleted: deleted.is_some(),
        }
    }
}

#[derive(Serialize, serde::Deserialize, Clone)]
struct FileInfo {
    name: String,
    mime: String,
}

/// What the app's `onEvent` receives.
#[derive(Serialize)]
// Variants and fields in camelCase, as JavaScript spells them.
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
enum WebEvent {
    Connected,
    Disconnected {
        reason: String,
    },
    Message {
        entry: Entry,
    },
    ChatChanged {
        chat_id: ChatId,
    },
    Joined {
        chat_id: ChatId,
    },
    Removed {
        chat_id: ChatId,
    },
    IdentityChanged {
        user_id: UserId,
    },
    Refused {
        reason: String,
    },
    Undecryptable {
        chat_id: ChatId,
        seq: i64,
    },
    Linked {
        imported: usize,
    },
    Sent {
        client_message_id: String,
        seq: i64,
    },
    SendFailed {
        client_message_id: String,
        code: String,
    },
    Receipt {
        chat_id: ChatId,
        delivered_seq: i64,
        read_seq: i64,
    },
    Typing {
        chat_id: ChatId,
        user_id: UserId,
    },
    /// Someone's presence, live from the server: `status` is `online`,
    /// `away` or `offline`; `lastSeen` RFC 3339, when they let this user
    /// see it.
    Presence {
        user_id: UserId,
        status: natter_proto::users::PresenceStatus,
        last_seen: Option<String>,
    },
    StorageFailed {
        reason: String,
    },
    LoggedOut,
}

/// State keys the bindings keep in the store (next to the SDK's).
fn file_key(chat: ChatId, seq: i64) -> String {
    format!("web/file/{chat}/{seq:020}")
}
fn sent_bytes_key(chat: ChatId, seq: i64) -> String {
    format!("web/sent/{chat}/{seq:020}")
}
fn pending_key(client_message_id: &str) -> String {
    format!("web/pending/{client_message_id}")
}

/// A command for the messenger's task.
type Job = Box<
    dyn for<'a> FnOnce(
        &'a mut Messenger,
        &'a BrowserStore,
    ) -> LocalBoxFuture<'a, JsResult<JsValue>>,
>;

/// The signed-in browser client.
#[wasm_bindgen]
#[allow(missing_debug_implementations)] // holds a JS function and a command queue
pub struct Natter {
    session: Session,
    store: BrowserStore,
    commands: mpsc::Sender<(Job, oneshot::Sender<JsResult<JsValue>>)>,
    listener: Rc<RefCell<Option<Function>>>,
    device_key: String,
}

fn client(base: &str, store: Option<&BrowserStore>) -> Client {
    let mut transport = BrowserTransport::new(REQUEST_TIMEOUT);
    if let Some(store) = store {
        transport = transport.saving(store.clone());
    }
    // The SDK shares its transport as an `Arc` on every target; in the
    // browser there is one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    let transport = std::sync::Arc::new(transport);
    Client::with_transport(transport, base)
}

#[wasm_bindgen]
impl Natter {
    /// Asks the server to send a verification code to `phone`.
    #[wasm_bindgen(js_name = requestCode)]
    pub async fn request_code(base: String, phone: String) -> JsResult<()> {
        client(&base, None)
            .request_code(&phone)
            .await
            .map(|_| ())
            .map_err(|e| js_error(&e))
    }

    /// Creates an account (first device) and starts it.
    #[wasm_bindgen(js_name = signUp)]
    pub async fn sign_up(
        base: String,
        phone: String,
        code: String,
        name: String,
    ) -> JsResult<Natter> {
        let store = fresh_store().await?;
        let session = client(&base, Some(&store))
            .register(&RegisterRequest {
                phone,
                name,
                verification_code: Some(code),
                invite: None,
                device_name: Some("Browser".to_owned()),
            })
            .await;
        Self::start_or_close(session, store).await
    }

    /// Logs a new device in to an existing account and starts it (it waits
    /// for approval on a device that holds the identity key).
    #[wasm_bindgen(js_name = logIn)]
    pub async fn log_in(base: String, phone: String, code: String) -> JsResult<Natter> {
        let store = fresh_store().await?;
        let session = client(&base, Some(&store))
            .login(&LoginRequest {
                phone,
                verification_code: code,
                device_name: Some("Browser".to_owned()),
            })
            .await;
        Self::start_or_close(session, store).await
    }

    /// The device saved in this browser, started; `null` if there is none.
    pub async fn resume() -> JsResult<Option<Natter>> {
        let store = BrowserStore::open(STORE_NAME).await.map_err(store_error)?;
        let Some(saved) = store.load_session() else {
            // Sign-up or log-in makes a fresh one (and deletes this).
            store.close();
            return Ok(None);
        };
        let session =
            client(&saved.base, Some(&store)).session(saved.user_id, saved.device_id, &saved.token);
        Self::start(session, store).await.map(Some)
    }

    /// Starts a new device, or closes its store (so the next attempt can
    /// delete it) when signing in failed.
    async fn start_or_close(
        session: natter_client::ClientResult<Session>,
        store: BrowserStore,
    ) -> JsResult<Natter> {
        let outcome = match session {
            Ok(session) => Self::start(session, store.clone()).await,
            Err(e) => Err(js_error(&e)),
        };
        if outcome.is_err() {
            store.close();
        }
        outcome
    }

    async fn start(session: Session, store: BrowserStore) -> JsResult<Natter> {
        store.save_session(&session.saved()).map_err(store_error)?;
        let messenger = Messenger::start(session.clone(), store.clone())
            .await
            .map_err(|e| js_error(&e))?;
        store.flush().await.map_err(store_error)?;
        let device_key = hex(messenger.device_key());
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let listener = Rc::new(RefCell::new(None));
        wasm_bindgen_futures::spawn_local(run(messenger, store.clone(), rx, Rc::clone(&listener)));
        Ok(Natter {
            session,
            store,
            commands,
            listener,
            device_key,
        })
    }

    async fn call(&self, job: Job) -> JsResult<JsValue> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .try_send((job, reply))
            .map_err(|_| plain_error("Busy: try again in a moment."))?;
        answer
            .await
            .map_err(|_| plain_error("The client stopped. Reload the page."))?
    }

    /// Sets the function that receives every event (`{type, ...}`).
    #[wasm_bindgen(js_name = onEvent)]
    pub fn on_event(&self, listener: Function) {
        *self.listener.borrow_mut() = Some(listener);
    }

    /// This account's user id.
    #[wasm_bindgen(getter, js_name = userId)]
    pub fn user_id(&self) -> String {
        self.session.user_id().to_string()
    }

    /// This device's id.
    #[wasm_bindgen(getter, js_name = deviceId)]
    pub fn device_id(&self) -> String {
        self.session.device_id().to_string()
    }

    /// This device's signature key (hex): compare it on the approving device.
    #[wasm_bindgen(getter, js_name = deviceKey)]
    pub fn device_key(&self) -> String {
        self.device_key.clone()
    }

    /// The server's base URL.
    #[wasm_bindgen(getter)]
    pub fn base(&self) -> String {
        self.session.base().to_owned()
    }

    /// Whether this device holds the identity key (can approve devices).
    #[wasm_bindgen(js_name = holdsIdentity)]
    pub async fn holds_identity(&self) -> JsResult<bool> {
        let v = self
            .call(Box::new(|m, _| {
                Box::pin(async move { Ok(JsValue::from_bool(m.holds_identity())) })
            }))
            .await?;
        Ok(v.is_truthy())
    }

    /// The chats this user is in (the server's list).
    pub async fn chats(&self) -> JsResult<JsValue> {
        let list = self.session.api().chats().await.map_err(|e| js_error(&e))?;
        to_js(&list)
    }

    /// Someone's public profile (name, presence, last seen).
    pub async fn user(&self, user_id: String) -> JsResult<JsValue> {
        let user = parse_id::<UserId>("user", &user_id)?;
        let profile = self
            .session
            .api()
            .user(user)
            .await
            .map_err(|e| js_error(&e))?;
        to_js(&profile)
    }

    /// The user id registered with `phone`, or `null`.
    #[wasm_bindgen(js_name = findUser)]
    pub async fn find_user(&self, phone: String) -> JsResult<Option<String>> {
        let found = self
            .session
            .api()
            .discover(&DiscoverContacts {
                phones: vec![phone],
            })
            .await
            .map_err(|e| js_error(&e))?;
        Ok(found.registered.first().map(|u| u.user_id.to_string()))
    }

    /// A chat's local (decrypted) history, oldest first, with a
    /// placeholder (`deleted`, no text) for each message deleted for
    /// everyone.
    pub fn history(&self, chat_id: String) -> JsResult<JsValue> {
        let chat = parse_id::<ChatId>("chat", &chat_id)?;
        let quotable = Quotable {
            live: ClientStore::history(&self.store, chat).map_err(store_error)?,
            deleted: self.store.deleted(chat).map_err(store_error)?,
        };
        let mut entries: Vec<Entry> = quotable
            .live
            .iter()
            .map(|e| entry_of(&self.store, e.clone(), &quotable))
            .collect();
        entries.extend(quotable.deleted.iter().map(|e| Entry {
            deleted: true,
            file: None,
            reply_to: None,
            ..entry_of(&self.store, e.clone(), &quotable)
        }));
        entries.sort_by_key(|e| e.seq);
        to_js(&entries)
    }

    /// The quote a reply to the chat's message `message_id` shows:
    /// `{messageId, senderId, text, deleted}` (as `replyTo` in entries).
    pub fn quote(&self, chat_id: String, message_id: String) -> JsResult<JsValue> {
        let chat = parse_id::<ChatId>("chat", &chat_id)?;
        let target = parse_id::<MessageId>("message", &message_id)?;
        to_js(&Quotable::of(&self.store, chat).quote(&self.store, target))
    }

    /// The local history's messages with every word of `query`, newest first.
    pub fn search(&self, query: String) -> JsResult<JsValue> {
        let hits = self.store.search_local(&query).map_err(store_error)?;
        let mut quotable = std::collections::HashMap::new();
        let hits: Vec<Entry> = hits
            .into_iter()
            .map(|e| {
                let q = quotable
                    .entry(e.chat_id)
                    .or_insert_with(|| Quotable::of(&self.store, e.chat_id));
                entry_of(&self.store, e, q)
            })
            .collect();
        to_js(&hits)
    }

    /// Sends a text; resolves with its client message id once encrypted
    /// and queued (the `sent` event follows).
    #[wasm_bindgen(js_name = sendText)]
    pub async fn send_text(&self, chat_id: String, text: String) -> JsResult<String> {
        let chat = parse_id::<ChatId>("chat", &chat_id)?;
        let id = self
            .call(Box::new(move |m, _| {
                Box::pin(async move {
                    m.send_text(chat, &text)
                        .await
                        .map(|id| JsValue::from_str(&id))
                        .map_err(|e| js_error(&e))
                })
            }))
            .await?;
        Ok(id.as_string().unwrap_or_default())
    }

    /// Sends a text answering the chat's message `message_id` (encrypted,
    /// what it answers too); resolves like [`Natter::send_text`].
    #[wasm_bindgen(js_name = sendReply)]
    pub async fn send_reply(
        &self,
        chat_id: String,
        message_id: String,
        text: String,
    ) -> JsResult<String> {
        let chat = parse_id::<ChatId>("chat", &chat_id)?;
        let target = parse_id::<MessageId>("message", &message_id)?;
        let entries = ClientStore::history(&self.store, chat).map_err(store_error)?;
        if !entries.iter().any(|e| e.message_id == target) {
            return Err(plain_error("That message is not in this chat (any more)."));
        }
        if text.trim().is_empty() {
            return Err(plain_error("A reply cannot be empty."));
        }
        let id = self
            .call(Box::new(move |m, _| {
                Box::pin(async move {
                    m.send_reply(chat, &text, Some(target))
                        .await
                        .map(|id| JsValue::from_str(&id))
                        .map_err(|e| js_error(&e))
                })
            }))
            .await?;
        Ok(id.as_string().unwrap_or_default())
    }

    /// Sends a new text for this user's message at `seq` (encrypted; the
    /// history has it once the server acknowledges it).
    #[wasm_bindgen(js_name = sendEdit)]
    pub async fn send_edit(&self, chat_id: String, seq: f64, text: String) -> JsResult<String> {
        let chat = parse_id::<ChatId>("chat", &chat_id)?;
        let seq = seq_of(seq)?;
        let target = self.own_message(chat, seq)?;
        let entries = ClientStore::history(&self.store, chat).map_err(store_error)?;
        if entries
            .iter()
            .find(|e| e.seq == seq)
            .is_some_and(|e| file_info(&self.store, e).is_some())
        {
            return Err(plain_error("A file cannot be edited: delete it instead."));
        }
        if text.trim().is_empty() {
            return Err(plain_error(
                "An edit cannot be empty: delete the message instead.",
            ));
        }
        let id = self
            .call(Box::new(move |m, _| {
                Box::pin(async move {
                    m.send_edit(chat, target, &text)
                        .await
                        .map(|id| JsValue::from_str(&id))
                        .map_err(|e| js_error(&e))
                })
            }))
            .await?;
        Ok(id.as_string().unwrap_or_default())
    }

    /// Deletes this user's message at `seq` for everyone (encrypted).
    #[wasm_bindgen(js_name = sendDelete)]
    pub async fn send_delete(&self, chat_id: String, seq: f64) -> JsResult<String> {
        let chat = parse_id::<ChatId>("chat", &chat_id)?;
        let target = self.own_message(chat, seq_of(seq)?)?;
        let id = self
            .call(Box::new(move |m, _| {
                Box::pin(async move {
                    m.send_delete(chat, target)
                        .await
                        .map(|id| JsValue::from_str(&id))
                        .map_err(|e| js_error(&e))
                })
            }))
            .await?;
        Ok(id.as_string().unwrap_or_default())
    }

    /// The id of this user's message at `seq` of `chat`, from the history.
    fn own_message(&self, chat: ChatId, seq: i64) -> JsResult<natter_proto::MessageId> {
        let entries = ClientStore::history(&self.store, chat).map_err(store_error)?;
        let entry = entries
            .into_iter()
            .find(|e| e.seq == seq)
            .ok_or_else(|| plain_error("That message is not in this chat (any more)."))?;
        if entry.sender_id != self.session.user_id() {
            return Err(plain_error("Only your own messages can be changed."));
        }
        Ok(entry.message_id)
    }

    /// Encrypts and sends a file.
    #[wasm_bindgen(js_name = sendFile)]
    pub async fn send_file(
        &self,
        chat_id: String,
        name: String,
        mime: String,
        bytes: Vec<u8>,
    ) -> JsResult<String> {
        let chat = parse_id::<ChatId>("chat", &chat_id)?;
        let id = self
            .call(Box::new(move |m, store| {
                Box::pin(async move {
                    let id = m
                        .send_file(chat, &name, &mime, &bytes)
                        .await
                        .map_err(|e| js_error(&e))?;
                    if bytes.len() <= KEEP_FILE_BYTES {
                        // Kept under its seq once the server acknowledges it.
                        let info = serde_json::to_vec(&(chat, FileInfo { name, mime }))
                            .map_err(|e| plain_error(&e.to_string()))?;
                        let dyn_store: &dyn ClientStore = store;
                        dyn_store
                            .transaction(|tx| {
                                tx.put(&format!("{}/info", pending_key(&id)), &info)?;
                                tx.put(&format!("{}/bytes", pending_key(&id)), &bytes)
                            })
                            .map_err(store_error)?;
                    }
                    Ok(JsValue::from_str(&id))
                })
            }))
            .await?;
        Ok(id.as_string().unwrap_or_default())
    }

    /// A file message's decrypted bytes: `{name, mime, bytes}`.
    #[wasm_bindgen(js_name = fileBytes)]
    pub async fn file_bytes(&self, chat_id: String, seq: f64) -> JsResult<JsValue> {
        let chat = parse_id::<ChatId>("chat", &chat_id)?;
        let seq = seq_of(seq)?;
        let dyn_store: &dyn ClientStore = &self.store;
        let (body, sent, info) = dyn_store
            .transaction(|tx| {
                Ok((
                    tx.get(&file_key(chat, seq))?,
                    tx.get(&sent_bytes_key(chat, seq))?,
                    tx.get(&format!("{}/info", sent_bytes_key(chat, seq)))?,
                ))
            })
            .map_err(store_error)?;
        let (name, mime, bytes) = if let (Some(bytes), Some(info)) = (sent, info) {
            let info: FileInfo =
                serde_json::from_slice(&info).map_err(|e| plain_error(&e.to_string()))?;
            (info.name, info.mime, bytes)
        } else if let Some(body) = body {
            let body: Body =
                serde_json::from_slice(&body).map_err(|e| plain_error(&e.to_string()))?;
            let file = self
                .call(Box::new(move |m, _| {
                    Box::pin(async move {
                        let f = m.fetch_file(&body).await.map_err(|e| js_error(&e))?;
                        let out = js_sys::Array::of3(
                            &f.name.into(),
                            &f.mime.into(),
                            &Uint8Array::from(f.bytes.as_slice()).into(),
                        );
                        Ok(out.into())
                    })
                }))
                .await?;
            let arr = js_sys::Array::from(&file);
            (
                arr.get(0).as_string().unwrap_or_default(),
                arr.get(1).as_string().unwrap_or_default(),
                Uint8Array::new(&arr.get(2)).to_vec(),
            )
        } else {
            return Err(plain_error("This file is not available on this device."));
        };
        let out = js_sys::Object::new();
        js_sys::Reflect::set(&out, &"name".into(), &name.into())?;
        js_sys::Reflect::set(&out, &"mime".into(), &mime.into())?;
        js_sys::Reflect::set(
            &out,
            &"bytes".into(),
            &Uint8Array::from(bytes.as_slice()).into(),
        )?;
        Ok(out.into())
    }

    /// Tells the chat this user is typing.
    pub async fn typing(&self, chat_id: String) -> JsResult<()> {
        let chat = parse_id::<ChatId>("chat", &chat_id)?;
        self.call(Box::new(move |m, _| {
            Box::pin(async move {
                m.typing(chat).await;
                Ok(JsValue::UNDEFINED)
            })
        }))
        .await
        .map(|_| ())
    }

    /// Marks the chat read up to `seq`.
    pub async fn read(&self, chat_id: String, seq: f64) -> JsResult<()> {
        let chat = parse_id::<ChatId>("chat", &chat_id)?;
        let seq = seq_of(seq)?;
        self.call(Box::new(move |m, _| {
            Box::pin(async move {
                m.read(chat, seq).await;
                Ok(JsValue::UNDEFINED)
            })
        }))
        .await
        .map(|_| ())
    }

    /// Creates an encrypted chat: direct with one user, or a named group.
    #[wasm_bindgen(js_name = createChat)]
    pub async fn create_chat(
        &self,
        user_ids: Vec<String>,
        name: Option<String>,
    ) -> JsResult<String> {
        let users = user_ids
            .iter()
            .map(|u| parse_id::<UserId>("user", u))
            .collect::<JsResult<Vec<_>>>()?;
        let kind = if name.is_some() {
            ChatKind::Group
        } else {
            ChatKind::Direct
        };
        let id = self
            .call(Box::new(move |m, _| {
                Box::pin(async move {
                    m.create_chat(kind, &users, name.as_deref())
                        .await
                        .map(|c| JsValue::from_str(&c.to_string()))
                        .map_err(|e| js_error(&e))
                })
            }))
            .await?;
        Ok(id.as_string().unwrap_or_default())
    }

    /// Adds users to a group (and their devices to its encryption group).
    #[wasm_bindgen(js_name = addMembers)]
    pub async fn add_members(&self, chat_id: String, user_ids: Vec<String>) -> JsResult<()> {
        let chat = parse_id::<ChatId>("chat", &chat_id)?;
        let users = user_ids
            .iter()
            .map(|u| parse_id::<UserId>("user", u))
            .collect::<JsResult<Vec<_>>>()?;
        self.call(Box::new(move |m, _| {
            Box::pin(async move {
                m.add_participants(chat, &users)
                    .await
                    .map(|()| JsValue::UNDEFINED)
                    .map_err(|e| js_error(&e))
            })
        }))
        .await
        .map(|_| ())
    }

    /// The safety number with `user_id` (groups of five digits) and whether
    /// they are marked verified: `{number, verified}`.
    #[wasm_bindgen(js_name = safetyNumber)]
    pub async fn safety_number(&self, user_id: String) -> JsResult<JsValue> {
        let user = parse_id::<UserId>("user", &user_id)?;
        self.call(Box::new(move |m, _| {
            Box::pin(async move {
                let number = m.safety_number(user).await.map_err(|e| js_error(&e))?;
                let out = js_sys::Object::new();
                js_sys::Reflect::set(&out, &"number".into(), &number.grouped().into())?;
                js_sys::Reflect::set(&out, &"verified".into(), &m.is_verified(user).into())?;
                Ok(out.into())
            })
        }))
        .await
    }

    /// Marks `user_id` verified (after comparing safety numbers) or not.
    #[wasm_bindgen(js_name = setVerified)]
    pub async fn set_verified(&self, user_id: String, verified: bool) -> JsResult<()> {
        let user = parse_id::<UserId>("user", &user_id)?;
        self.call(Box::new(move |m, _| {
            Box::pin(async move {
                m.set_verified(user, verified)
                    .map(|()| JsValue::UNDEFINED)
                    .map_err(|e| js_error(&e))
            })
        }))
        .await
        .map(|_| ())
    }

    /// This user's devices: `[{deviceId, key, approved, thisDevice}]`.
    pub async fn devices(&self) -> JsResult<JsValue> {
        let listed = self
            .session
            .api()
            .user_devices(self.session.user_id())
            .await
            .map_err(|e| js_error(&e))?;
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Device {
            device_id: DeviceId,
            key: String,
            approved: bool,
            this_device: bool,
        }
        let me = self.session.device_id();
        let devices: Vec<Device> = listed
            .devices
            .into_iter()
            .map(|d| Device {
                this_device: d.device_id == me,
                device_id: d.device_id,
                key: base64_to_hex(&d.signature_key),
                approved: d.certificate.is_some(),
            })
            .collect();
        to_js(&devices)
    }

    /// Approves a new device of this user (its key must be `key`, as it
    /// shows it), handing over the history if `with_history`.
    #[wasm_bindgen(js_name = approveDevice)]
    pub async fn approve_device(
        &self,
        device_id: String,
        key: String,
        with_history: bool,
    ) -> JsResult<()> {
        let device = parse_id::<DeviceId>("device", &device_id)?;
        let key = unhex(&key).ok_or_else(|| plain_error("The device key is not hex."))?;
        self.call(Box::new(move |m, _| {
            Box::pin(async move {
                m.approve_device(device, Some(&key), with_history)
                    .await
                    .map(|()| JsValue::UNDEFINED)
                    .map_err(|e| js_error(&e))
            })
        }))
        .await
        .map(|_| ())
    }

    /// The server's VAPID public key (base64url), for `pushManager.subscribe`.
    #[wasm_bindgen(js_name = vapidKey)]
    pub async fn vapid_key(&self) -> JsResult<JsValue> {
        let key = self
            .session
            .api()
            .vapid_key()
            .await
            .map_err(|e| js_error(&e))?;
        to_js(&key)
    }

    /// Registers this device's Web Push subscription (`subscription` is
    /// `PushSubscription.toJSON()`).
    #[wasm_bindgen(js_name = setPush)]
    pub async fn set_push(&self, endpoint: String, p256dh: String, auth: String) -> JsResult<()> {
        let request: natter_proto::push::PushChannelRequest = serde_json::from_value(
            serde_json::json!({"kind": "webpush", "endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}),
        )
        .map_err(|e| plain_error(&format!("not a push subscription: {e}")))?;
        self.session
            .api()
            .set_push_channel(self.session.device_id(), &request)
            .await
            .map(|_| ())
            .map_err(|e| js_error(&e))
    }

    /// Logs this device out and forgets everything it kept in this browser.
    #[wasm_bindgen(js_name = logOut)]
    pub async fn log_out(&self) -> JsResult<()> {
        let _ = self.session.api().logout().await;
        self.store.close();
        BrowserStore::destroy(STORE_NAME).await.map_err(store_error)
    }
}

/// A new store for a new device: whatever an earlier one left is deleted.
async fn fresh_store() -> JsResult<BrowserStore> {
    BrowserStore::destroy(STORE_NAME)
        .await
        .map_err(store_error)?;
    BrowserStore::open(STORE_NAME).await.map_err(store_error)
}

/// A file message's name and type, if `e` is one.
fn file_info(store: &BrowserStore, e: &HistoryEntry) -> Option<FileInfo> {
    let dyn_store: &dyn ClientStore = store;
    dyn_store
        .transaction(|tx| {
            Ok((
                tx.get(&file_key(e.chat_id, e.seq))?,
                tx.get(&format!("{}/info", sent_bytes_key(e.chat_id, e.seq)))?,
            ))
        })
        .ok()
        .and_then(|(body, sent)| {
            if let Some(sent) = sent {
                return serde_json::from_slice::<FileInfo>(&sent).ok();
            }
            match serde_json::from_slice::<Body>(&body?).ok()? {
                Body::File { name, mime, .. } => Some(FileInfo { name, mime }),
                _ => None,
            }
        })
}

/// The app's view of a history entry; its quote from `quotable` (the
/// entry's chat).
fn entry_of(store: &BrowserStore, e: HistoryEntry, quotable: &Quotable) -> Entry {
    Entry {
        file: file_info(store, &e),
        reply_to: e.reply_to.map(|id| quotable.quote(store, id)),
        edited: store.is_edited(e.chat_id, e.seq),
        deleted: false,
        chat_id: e.chat_id,
        seq: e.seq,
        message_id: e.message_id.to_string(),
        sender_id: e.sender_id,
        sent_at: e.sent_at,
        text: e.text,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn base64_to_hex(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(|b| hex(&b))
        .unwrap_or_default()
}

/// Keeps what a message's preview needs after a reload, then hands it on.
fn remember(store: &BrowserStore, event: &MessengerEvent) -> Result<(), natter_client::StoreError> {
    let dyn_store: &dyn ClientStore = store;
    match event {
        MessengerEvent::Message(m) if matches!(m.body, Body::File { .. }) => {
            let body = serde_json::to_vec(&m.body)
                .map_err(|e| natter_client::StoreError::Corrupt(e.to_string()))?;
            dyn_store.transaction(|tx| tx.put(&file_key(m.chat_id, m.seq), &body))
        }
        MessengerEvent::Sent {
            client_message_id,
            seq,
            ..
        } => {
            let pending = pending_key(client_message_id);
            dyn_store.transaction(|tx| {
                let info = tx.get(&format!("{pending}/info"))?;
                let bytes = tx.get(&format!("{pending}/bytes"))?;
                if let (Some(info), Some(bytes)) = (info, bytes) {
                    let (chat, info): (ChatId, FileInfo) = serde_json::from_slice(&info)
                        .map_err(|e| natter_client::StoreError::Corrupt(e.to_string()))?;
                    let info = serde_json::to_vec(&info)
                        .map_err(|e| natter_client::StoreError::Corrupt(e.to_string()))?;
                    tx.put(&format!("{}/info", sent_bytes_key(chat, *seq)), &info)?;
                    tx.put(&sent_bytes_key(chat, *seq), &bytes)?;
                    tx.delete(&format!("{pending}/info"))?;
                    tx.delete(&format!("{pending}/bytes"))?;
                }
                Ok(())
            })
        }
        _ => Ok(()),
    }
}

fn web_event(store: &BrowserStore, event: MessengerEvent) -> Option<WebEvent> {
    Some(match event {
        MessengerEvent::Connected => WebEvent::Connected,
        MessengerEvent::Disconnected { reason } => WebEvent::Disconnected { reason },
        MessengerEvent::Message(m) => {
            let text = match &m.body {
                Body::Text { text } => text.clone(),
                Body::File { name, .. } => name.clone(),
                // Edits and deletions show in the history; the app reloads it.
                Body::Edit { .. } | Body::Delete { .. } => {
                    return Some(WebEvent::ChatChanged { chat_id: m.chat_id });
                }
            };
            let entry = HistoryEntry {
                chat_id: m.chat_id,
                seq: m.seq,
                message_id: m.message_id,
                sender_id: m.sender,
                sent_at: String::new(),
                text,
                reply_to: m.reply_to,
                file: None,
            };
            let mut entry = entry_of(store, entry, &Quotable::of(store, m.chat_id));
            // The stored entry has the server's time.
            if let Ok(stored) = ClientStore::history(store, m.chat_id)
                && let Some(s) = stored.iter().find(|s| s.seq == m.seq)
            {
                entry.sent_at = s.sent_at.clone();
            }
            WebEvent::Message { entry }
        }
        MessengerEvent::ChatChanged { chat_id, .. } => WebEvent::ChatChanged { chat_id },
        MessengerEvent::Joined { chat_id } => WebEvent::Joined { chat_id },
        MessengerEvent::Removed { chat_id } => WebEvent::Removed { chat_id },
        MessengerEvent::IdentityChanged { user_id } => WebEvent::IdentityChanged { user_id },
        MessengerEvent::Refused { reason, .. } => WebEvent::Refused { reason },
        MessengerEvent::Undecryptable { chat_id, seq, .. } => {
            WebEvent::Undecryptable { chat_id, seq }
        }
        MessengerEvent::Linked { imported } => WebEvent::Linked { imported },
        MessengerEvent::Sent {
            client_message_id,
            seq,
            ..
        } => WebEvent::Sent {
            client_message_id,
            seq,
        },
        MessengerEvent::SendFailed {
            client_message_id,
            code,
        } => WebEvent::SendFailed {
            client_message_id,
            code: code.as_str().to_owned(),
        },
        MessengerEvent::Receipt {
            chat_id,
            delivered_seq,
            read_seq,
        } => WebEvent::Receipt {
            chat_id,
            delivered_seq,
            read_seq,
        },
        MessengerEvent::Typing { chat_id, user_id } => WebEvent::Typing { chat_id, user_id },
        MessengerEvent::Presence {
            user_id,
            status,
            last_seen,
        } => WebEvent::Presence {
            user_id,
            status,
            last_seen: last_seen.and_then(|t| natter_proto::timefmt::format(t).ok()),
        },
    })
}

fn emit(listener: &Rc<RefCell<Option<Function>>>, event: &WebEvent) {
    let Ok(value) = to_js(event) else { return };
    let listener = listener.borrow().clone();
    if let Some(f) = listener {
        let _ = f.call1(&JsValue::NULL, &value);
    }
}

enum Step {
    Command(Option<(Job, oneshot::Sender<JsResult<JsValue>>)>),
    Event(Box<natter_client::ClientResult<natter_client::Event>>),
}

/// The messenger's task (see the crate docs).
async fn run(
    mut messenger: Messenger,
    store: BrowserStore,
    mut commands: mpsc::Receiver<(Job, oneshot::Sender<JsResult<JsValue>>)>,
    listener: Rc<RefCell<Option<Function>>>,
) {
    loop {
        while let Some(event) = messenger.take_event() {
            if let Err(e) = remember(&store, &event) {
                emit(
                    &listener,
                    &WebEvent::StorageFailed {
                        reason: e.to_string(),
                    },
                );
            }
            if let Some(event) = web_event(&store, event) {
                emit(&listener, &event);
            }
        }
        if let Err(e) = store.flush().await {
            emit(
                &listener,
                &WebEvent::StorageFailed {
                    reason: e.to_string(),
                },
            );
        }
        let step = {
            let wait = std::pin::pin!(messenger.receive());
            let command = std::pin::pin!(commands.recv());
            match select(command, wait).await {
                Either::Left((c, _)) => Step::Command(c),
                Either::Right((e, _)) => Step::Event(Box::new(e)),
            }
        };
        match step {
            Step::Command(None) => return,
            Step::Command(Some((job, reply))) => {
                let answer = job(&mut messenger, &store).await;
                let answer = match (answer, store.flush().await) {
                    (Ok(_), Err(e)) => Err(store_error(e)),
                    (answer, _) => answer,
                };
                let _ = reply.send(answer);
            }
            Step::Event(event) => match *event {
                Ok(event) => {
                    if let Err(e) = messenger.process(event).await {
                        emit(
                            &listener,
                            &WebEvent::Disconnected {
                                reason: e.to_string(),
                            },
                        );
                    }
                }
                Err(ClientError::Revoked) => {
                    emit(&listener, &WebEvent::LoggedOut);
                    return;
                }
                Err(e) => {
                    emit(
                        &listener,
                        &WebEvent::StorageFailed {
                            reason: e.to_string(),
                        },
                    );
                    // A store that keeps failing must not spin the page.
                    natter_client::transport::Transport::sleep(
                        &BrowserTransport::new(REQUEST_TIMEOUT),
                        Duration::from_secs(5),
                    )
                    .await;
                }
            },
        }
    }
}
