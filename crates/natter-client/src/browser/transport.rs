//! [`Transport`] in the browser: `fetch` for HTTP (bounded by an
//! `AbortController`), the browser's `WebSocket`, and `setTimeout`.
//!
//! Before anything leaves (a request, a frame) the transport waits for
//! its [`BrowserStore`] to be saved: the encryption engine's state is
//! written before the ciphertext it produced is sent, as natively, where
//! SQLite commits synchronously.

use std::time::Duration;

use js_sys::{Array, Uint8Array};
use tokio::sync::mpsc;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast as _, JsValue};

use super::js;
use super::store::BrowserStore;
use crate::transport::{
    Body, FormPart, Request, Response, Transport, TransportError, WebSocket, WsEvent,
};

/// Frames a socket may hold before the app reads them. The browser cannot
/// hold the sender back, so a socket whose reader falls this far behind is
/// closed; the sync engine reconnects and resumes from its positions.
const SOCKET_QUEUE: usize = 1024;

/// The browser's network and clock.
#[derive(Debug, Clone)]
pub struct BrowserTransport {
    /// Bound on each request and on opening a socket.
    timeout: Duration,
    /// Saved before anything is sent (see the module docs).
    store: Option<BrowserStore>,
}

impl BrowserTransport {
    /// A transport whose requests each get `timeout`.
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            store: None,
        }
    }

    /// The same transport, saving `store` before each request or frame.
    #[must_use]
    pub fn saving(mut self, store: BrowserStore) -> Self {
        self.store = Some(store);
        self
    }

    async fn save_first(&self) -> Result<(), TransportError> {
        if let Some(store) = &self.store {
            store
                .flush()
                .await
                .map_err(|e| TransportError(format!("not sent: {e}")))?;
        }
        Ok(())
    }
}

fn err(context: &str, e: &JsValue) -> TransportError {
    TransportError(format!("{context}: {}", js::describe(e)))
}

fn body_of(body: Body) -> Result<Option<JsValue>, TransportError> {
    Ok(match body {
        Body::Empty => None,
        Body::Json(bytes) | Body::Bytes { bytes, .. } => {
            Some(Uint8Array::from(bytes.as_slice()).into())
        }
        Body::Form(parts) => {
            let form = web_sys::FormData::new().map_err(|e| err("form", &e))?;
            for part in parts {
                match part {
                    FormPart::Text { name, value } => form
                        .append_with_str(&name, &value)
                        .map_err(|e| err("form", &e))?,
                    FormPart::File {
                        name,
                        file_name,
                        bytes,
                    } => {
                        let chunks = Array::of1(&Uint8Array::from(bytes.as_slice()));
                        let blob = web_sys::Blob::new_with_u8_array_sequence(&chunks)
                            .map_err(|e| err("form", &e))?;
                        form.append_with_blob_and_filename(&name, &blob, &file_name)
                            .map_err(|e| err("form", &e))?;
                    }
                }
            }
            Some(form.into())
        }
    })
}

#[async_trait::async_trait(?Send)]
impl Transport for BrowserTransport {
    async fn http(&self, request: Request) -> Result<Response, TransportError> {
        self.save_first().await?;
        let window = js::window().map_err(TransportError)?;
        let headers = web_sys::Headers::new().map_err(|e| err("headers", &e))?;
        if let Some(token) = &request.bearer {
            headers
                .set("authorization", &format!("Bearer {token}"))
                .map_err(|e| err("headers", &e))?;
        }
        match &request.body {
            Body::Json(_) => headers
                .set("content-type", "application/json")
                .map_err(|e| err("headers", &e))?,
            Body::Bytes { content_type, .. } => headers
                .set("content-type", content_type)
                .map_err(|e| err("headers", &e))?,
            Body::Empty | Body::Form(_) => {}
        }
        for (name, value) in &request.headers {
            headers.set(name, value).map_err(|e| err("headers", &e))?;
        }
        let init = web_sys::RequestInit::new();
        init.set_method(request.method.as_str());
        init.set_headers(&headers);
        if let Some(body) = body_of(request.body)? {
            init.set_body(&body);
        }
        let abort = web_sys::AbortController::new().map_err(|e| err("fetch", &e))?;
        init.set_signal(Some(&abort.signal()));
        let req = web_sys::Request::new_with_str_and_init(&request.url, &init)
            .map_err(|e| err("request", &e))?;
        let work = async {
            let resp = js::promise(window.fetch_with_request(&req))
                .await
                .map_err(|e| TransportError(format!("the server cannot be reached: {e}")))?;
            let resp: web_sys::Response = resp
                .dyn_into()
                .map_err(|_| TransportError("fetch did not answer a Response".into()))?;
            let mut names = Vec::new();
            if let Ok(Some(entries)) = js_sys::try_iter(resp.headers().as_ref()) {
                for entry in entries.flatten() {
                    let pair = Array::from(&entry);
                    if let (Some(n), Some(v)) = (pair.get(0).as_string(), pair.get(1).as_string()) {
                        names.push((n.to_ascii_lowercase(), v));
                    }
                }
            }
            let buffer = resp.array_buffer().map_err(|e| err("body", &e))?;
            let buffer = js::promise(buffer)
                .await
                .map_err(|e| TransportError(format!("reading the answer: {e}")))?;
            Ok(Response {
                status: resp.status(),
                headers: names,
                body: Uint8Array::new(&buffer).to_vec(),
            })
        };
        let limit = self.timeout;
        match crate::transport::timeout(self, limit, work).await {
            Some(outcome) => outcome,
            None => {
                abort.abort();
                Err(TransportError(format!(
                    "no answer in {} s",
                    self.timeout.as_secs()
                )))
            }
        }
    }

    async fn connect(&self, url: &str) -> Result<Box<dyn WebSocket>, TransportError> {
        self.save_first().await?;
        let mut socket = BrowserSocket::open(url)?;
        // The socket's frames are saved-before-sent too.
        socket.store = self.store.clone();
        match crate::transport::timeout(self, self.timeout, socket.incoming.recv()).await {
            Some(Some(Incoming::Open)) => Ok(Box::new(socket)),
            Some(_) => Err(TransportError("the WebSocket did not open".into())),
            None => Err(TransportError(format!(
                "the WebSocket did not open in {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn sleep(&self, duration: Duration) {
        js::sleep_ms(i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)).await;
    }
}

/// What the socket's callbacks pass on.
#[derive(Debug)]
enum Incoming {
    Open,
    Text(String),
    Closed(Option<u16>),
}

/// A browser WebSocket; its callbacks feed a bounded queue.
#[derive(Debug)]
struct BrowserSocket {
    ws: web_sys::WebSocket,
    incoming: mpsc::Receiver<Incoming>,
    /// Saved before each frame goes out.
    store: Option<BrowserStore>,
    /// Kept alive as long as the socket (the browser calls them).
    _callbacks: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl BrowserSocket {
    fn open(url: &str) -> Result<Self, TransportError> {
        let ws = web_sys::WebSocket::new(url).map_err(|e| err("WebSocket", &e))?;
        let (tx, incoming) = mpsc::channel(SOCKET_QUEUE);
        let on_open = {
            let tx = tx.clone();
            Closure::<dyn FnMut(JsValue)>::new(move |_| {
                let _ = tx.try_send(Incoming::Open);
            })
        };
        let on_message = {
            let tx = tx.clone();
            let ws = ws.clone();
            Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
                let Some(text) = event
                    .dyn_ref::<web_sys::MessageEvent>()
                    .and_then(|m| m.data().as_string())
                else {
                    return;
                };
                if tx.try_send(Incoming::Text(text)).is_err() {
                    // The reader fell behind: close (see SOCKET_QUEUE).
                    let _ = ws.close();
                }
            })
        };
        let on_close = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let code = event.dyn_ref::<web_sys::CloseEvent>().map(|c| c.code());
            // The close must get through even to a full queue: a reader
            // that sees `None` treats it as closed too.
            let _ = tx.try_send(Incoming::Closed(code));
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Self {
            ws,
            incoming,
            store: None,
            _callbacks: vec![on_open, on_message, on_close],
        })
    }
}

impl Drop for BrowserSocket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}

#[async_trait::async_trait(?Send)]
impl WebSocket for BrowserSocket {
    async fn send(&mut self, text: String) -> Result<(), TransportError> {
        if let Some(store) = &self.store {
            store
                .flush()
                .await
                .map_err(|e| TransportError(format!("not sent: {e}")))?;
        }
        self.ws
            .send_with_str(&text)
            .map_err(|e| err("WebSocket send", &e))
    }

    async fn recv(&mut self) -> Result<WsEvent, TransportError> {
        loop {
            return Ok(match self.incoming.recv().await {
                Some(Incoming::Text(t)) => WsEvent::Text(t),
                Some(Incoming::Open) => continue,
                Some(Incoming::Closed(code)) => WsEvent::Closed(code),
                None => WsEvent::Closed(None),
            });
        }
    }

    async fn close(&mut self) {
        let _ = self.ws.close();
    }
}
