//! The test harness: `TestApp` starts a real server, `SmsInbox` plays the
//! operator's SMS gateway, `TestUser` is a signed-up account with a token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use natter_server::{Config, RunningServer};
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::Notify;

/// How long a test waits for anything on the network.
pub const WAIT: Duration = Duration::from_secs(10);

/// A fake SMS gateway: records the codes the server POSTs to it.
#[derive(Clone)]
pub struct SmsInbox {
    url: String,
    state: Arc<InboxState>,
}

struct InboxState {
    codes: Mutex<HashMap<String, Vec<String>>>,
    arrived: Notify,
    failing: Mutex<bool>,
    delay: Mutex<Duration>,
}

async fn receive(State(state): State<Arc<InboxState>>, Json(body): Json<Value>) -> StatusCode {
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    if *state.failing.lock().unwrap() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let phone = body["phone"].as_str().unwrap().to_owned();
    let code = body["code"].as_str().unwrap().to_owned();
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "the webhook body is exactly phone and code"
    );
    state
        .codes
        .lock()
        .unwrap()
        .entry(phone)
        .or_default()
        .push(code);
    state.arrived.notify_waiters();
    StatusCode::OK
}

impl SmsInbox {
    pub async fn start() -> Self {
        let state = Arc::new(InboxState {
            codes: Mutex::default(),
            arrived: Notify::new(),
            failing: Mutex::new(false),
            delay: Mutex::new(Duration::ZERO),
        });
        let app = axum::Router::new()
            .route("/sms", axum::routing::post(receive))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{addr}/sms"),
            state,
        }
    }

    /// Makes the gateway answer 503 from now on.
    pub fn fail(&self) {
        *self.state.failing.lock().unwrap() = true;
    }

    /// Makes the gateway take `delay` before answering.
    pub fn slow_down(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// How many codes went to `phone`.
    pub fn count(&self, phone: &str) -> usize {
        self.state
            .codes
            .lock()
            .unwrap()
            .get(phone)
            .map_or(0, Vec::len)
    }

    /// The latest code sent to `phone`, waiting for it if needed.
    pub async fn latest(&self, phone: &str) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                let arrived = self.state.arrived.notified();
                if let Some(code) = self
                    .state
                    .codes
                    .lock()
                    .unwrap()
                    .get(phone)
                    .and_then(|c| c.last().cloned())
                {
                    return code;
                }
                arrived.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no SMS code for {phone} within {WAIT:?}"))
    }
}

/// An HTTP answer: status, headers and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error: {self:?}"))
    }

    /// Asserts the status and, for errors, the code.
    #[track_caller]
    pub fn expect(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.code(), code, "{self:?}");
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "errors carry a message: {self:?}"
        );
    }

    /// Asserts a success status and returns the body.
    #[track_caller]
    pub fn ok(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        self.body
    }
}

/// A running server with its own data directory and SMS inbox.
pub struct TestApp {
    pub sms: SmsInbox,
    pub base: String,
    pub http: reqwest::Client,
    config: Config,
    server: Option<RunningServer>,
    _dir: Arc<TempDir>,
}

/// A signed-up account and one of its devices.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub phone: String,
    pub user_id: String,
    pub device_id: String,
    pub token: String,
}

impl TestApp {
    /// A server with the default configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server with the configuration adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let sms = SmsInbox::start().await;
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().join("data"),
            sms_webhook_url: Some(sms.url.clone()),
            ..Config::default()
        };
        config.sms.timeout_secs = 5;
        adjust(&mut config);
        config.validate().unwrap();
        let server = tokio::time::timeout(WAIT, RunningServer::start(config.clone()))
            .await
            .expect("the server starts in time")
            .unwrap();
        let (base, http) = Self::client_for(&config, &server);
        Self {
            sms,
            base,
            http,
            config,
            server: Some(server),
            _dir: dir,
        }
    }

    /// The base URL and an HTTP client for `server`: over TLS (trusting its
    /// certificate only) when the configuration sets one.
    fn client_for(config: &Config, server: &RunningServer) -> (String, reqwest::Client) {
        let builder = reqwest::Client::builder().timeout(WAIT);
        match &config.tls.cert_file {
            None => (
                format!("http://{}", server.local_addr()),
                builder.build().unwrap(),
            ),
            Some(cert) => {
                let pem = std::fs::read(cert).unwrap();
                let client = builder
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                    .resolve("localhost", server.local_addr())
                    .build()
                    .unwrap();
                (
                    format!("https://localhost:{}", server.local_addr().port()),
                    client,
                )
            }
        }
    }

    /// Stops the server (gracefully) and starts it again on the same data,
    /// on a new port.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Starts the stopped server again on the same data, on a new port.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "the server is stopped");
        let mut config = self.config.clone();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = tokio::time::timeout(WAIT, RunningServer::start(config))
            .await
            .expect("the server restarts in time")
            .unwrap();
        (self.base, self.http) = Self::client_for(&self.config, &server);
        self.server = Some(server);
    }

    /// Runs the server's housekeeping now (garbage collection included).
    pub async fn housekeeping(&self) {
        let server = self.server.as_ref().expect("the server runs");
        tokio::time::timeout(WAIT, server.housekeeping())
            .await
            .expect("housekeeping in time");
    }

    /// Every file under the server's data directory, subdirectories included.
    pub fn data_files(&self) -> Vec<std::path::PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.data_dir(), &mut out);
        out
    }

    /// Like [`TestApp::restart`], with the configuration adjusted first.
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut Config)) {
        adjust(&mut self.config);
        self.restart().await;
    }

    /// The sum of a metric's samples whose line starts with `prefix`
    /// (name and, optionally, labels), from `/metrics`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The running server's services (the operator's side, in-process).
    pub fn services(&self) -> &natter_server::service::Services {
        self.server.as_ref().expect("the server runs").services()
    }

    /// An invite for `uses` accounts (what `natter admin invite create` makes).
    pub async fn invite(&self, uses: u32, expires_in: Option<Duration>) -> String {
        let server = self.server.as_ref().expect("the server runs");
        server
            .services()
            .admin_create_invite(uses, expires_in)
            .await
            .unwrap()
            .token
            .expose()
            .to_owned()
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.data_dir
    }

    /// Waits (bounded) until the search indexer has followed every
    /// committed chat log entry, so search answers exactly.
    pub async fn search_caught_up(&self) {
        let server = self.server.as_ref().expect("the server runs");
        tokio::time::timeout(WAIT, async {
            while server.search_index_lag().await.unwrap() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the search index catches up within WAIT");
    }

    /// The server's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops the server (gracefully); [`TestApp::start_again`] brings it back.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT * 3, server.shutdown())
                .await
                .expect("shutdown in time");
        }
    }

    /// Sends a request; `token` becomes `Authorization: Bearer`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::answer(req).await
    }

    /// Sends a raw body with a chosen content type.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        Self::answer(req).await
    }

    pub async fn answer(req: reqwest::RequestBuilder) -> Answer {
        let res = req.send().await.expect("the server answers");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, None, Some(body)).await
    }

    /// Asks for a code and returns it as the SMS gateway received it.
    pub async fn code_for(&self, phone: &str) -> String {
        let before = self.sms.count(phone);
        self.post("/api/v1/users/verification", json!({ "phone": phone }))
            .await
            .ok(202);
        assert_eq!(self.sms.count(phone), before + 1, "one SMS per request");
        self.sms.latest(phone).await
    }

    /// Registers `phone` with a fresh code.
    pub async fn signup(&self, phone: &str, name: &str) -> TestUser {
        let code = self.code_for(phone).await;
        let body = self
            .post(
                "/api/v1/users/register",
                json!({ "phone": phone, "name": name, "verification_code": code }),
            )
            .await
            .ok(201);
        Self::user_from(phone, &body)
    }

    /// Logs in another device of `phone`.
    pub async fn login(&self, phone: &str, device_name: &str) -> TestUser {
        let code = self.code_for(phone).await;
        let body = self
            .post(
                "/api/v1/users/login",
                json!({ "phone": phone, "verification_code": code, "device_name": device_name }),
            )
            .await
            .ok(200);
        Self::user_from(phone, &body)
    }

    fn user_from(phone: &str, body: &Value) -> TestUser {
        TestUser {
            phone: phone.to_owned(),
            user_id: body["user_id"].as_str().unwrap().to_owned(),
            device_id: body["device_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
        }
    }
}

impl TestUser {
    pub async fn get(&self, app: &TestApp, path: &str) -> Answer {
        app.call(Method::GET, path, Some(&self.token), None).await
    }

    pub async fn post(&self, app: &TestApp, path: &str, body: Value) -> Answer {
        app.call(Method::POST, path, Some(&self.token), Some(body))
            .await
    }

    pub async fn patch(&self, app: &TestApp, path: &str, body: Value) -> Answer {
        app.call(Method::PATCH, path, Some(&self.token), Some(body))
            .await
    }

    pub async fn delete(&self, app: &TestApp, path: &str) -> Answer {
        app.call(Method::DELETE, path, Some(&self.token), None)
            .await
    }

    /// Adds `other` as a contact by phone number.
    pub async fn adds_contact(&self, app: &TestApp, other: &TestUser) {
        let status = self
            .post(
                app,
                "/api/v1/users/contacts",
                json!({ "phone": other.phone }),
            )
            .await
            .status
            .as_u16();
        assert!(
            status == 201 || status == 200,
            "adding a contact answered {status}"
        );
    }
}

impl TestUser {
    /// Creates (or finds) the direct chat with `other`; returns its id.
    pub async fn direct_chat_with(&self, app: &TestApp, other: &TestUser) -> String {
        let answer = self
            .post(
                app,
                "/api/v1/chats",
                json!({"type": "direct", "participants": [other.user_id]}),
            )
            .await;
        assert!(answer.status == 201 || answer.status == 200, "{answer:?}");
        answer.body["id"].as_str().unwrap().to_owned()
    }

    /// Creates a group with `others`; returns its id.
    pub async fn group_with(&self, app: &TestApp, name: &str, others: &[&TestUser]) -> String {
        let ids: Vec<&str> = others.iter().map(|u| u.user_id.as_str()).collect();
        let body = self
            .post(
                app,
                "/api/v1/chats",
                json!({"type": "group", "name": name, "participants": ids}),
            )
            .await
            .ok(201);
        body["id"].as_str().unwrap().to_owned()
    }

    /// Sends a text message; returns the stored message.
    pub async fn sends(&self, app: &TestApp, chat: &str, text: &str) -> Value {
        self.post(
            app,
            "/api/v1/messages",
            json!({"chat_id": chat, "content": text, "type": "text"}),
        )
        .await
        .ok(201)
    }

    /// The texts of a chat's history as this user sees it, oldest first.
    pub async fn texts(&self, app: &TestApp, chat: &str) -> Vec<String> {
        let page = self
            .get(app, &format!("/api/v1/chats/{chat}/messages?limit=100"))
            .await
            .ok(200);
        let mut texts: Vec<String> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "text")
            .map(|m| m["content"].as_str().unwrap_or("<deleted>").to_owned())
            .collect();
        texts.reverse();
        texts
    }
}

/// A WebSocket client connection of one device.
pub struct Socket {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// The `connected` frame.
    pub connected: Value,
}

impl TestApp {
    pub fn ws_url(&self) -> String {
        format!("{}/api/v1/ws", self.base.replace("http://", "ws://"))
    }
}

impl TestUser {
    /// Opens a WebSocket and authenticates with the first frame.
    pub async fn connect(&self, app: &TestApp) -> Socket {
        use futures_util::SinkExt as _;
        let (mut ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(app.ws_url()))
                .await
                .expect("connect in time")
                .expect("the WebSocket opens");
        let auth = json!({"type": "auth", "token": self.token}).to_string();
        ws.send(tokio_tungstenite::tungstenite::Message::text(auth))
            .await
            .unwrap();
        let mut socket = Socket {
            ws,
            connected: Value::Null,
        };
        let connected = socket.next().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        assert_eq!(connected["user_id"], self.user_id.as_str());
        socket.connected = connected;
        socket
    }
}

impl Socket {
    /// Wraps an open stream (for tests that authenticate themselves).
    pub fn from_stream(
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Self {
        Self {
            ws,
            connected: Value::Null,
        }
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, frame: Value) {
        use futures_util::SinkExt as _;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(
                frame.to_string(),
            ))
            .await
            .unwrap();
    }

    /// Sends raw text.
    pub async fn send_raw(&mut self, text: String) {
        use futures_util::SinkExt as _;
        let _ = self
            .ws
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await;
    }

    /// The next text frame, as JSON; panics on close or after `WAIT`.
    pub async fn next(&mut self) -> Value {
        match self.next_or_close().await {
            Ok(v) => v,
            Err(close) => panic!("the socket closed: {close:?}"),
        }
    }

    /// The next text frame, or the close code if the server closed.
    pub async fn next_or_close(&mut self) -> Result<Value, Option<u16>> {
        use futures_util::StreamExt as _;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within WAIT");
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// The next frame of type `kind`, skipping presence and typing signals.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == kind {
                return frame;
            }
            let skippable =
                ["presence", "typing", "receipt"].contains(&frame["type"].as_str().unwrap_or(""));
            assert!(skippable, "expected {kind}, got {frame}");
        }
    }

    /// Asserts that no frame of type `kind` arrives within `quiet`.
    pub async fn nothing_of(&mut self, kind: &str, quiet: Duration) {
        use futures_util::StreamExt as _;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(msg) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Some(Ok(Message::Text(t))) = msg {
                let frame: Value = serde_json::from_str(&t).unwrap();
                assert_ne!(frame["type"], kind, "unexpected {frame}");
            } else {
                return;
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A download: status, headers and the raw bytes.
#[derive(Debug)]
pub struct Download {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub bytes: Vec<u8>,
}

impl Download {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

impl TestUser {
    /// Uploads `bytes` as the seed does: multipart with `file`, `chat_id`, `type`.
    pub async fn uploads(
        &self,
        app: &TestApp,
        bytes: Vec<u8>,
        kind: &str,
        chat: Option<&str>,
    ) -> Answer {
        let mut form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("upload.bin"),
        );
        if let Some(chat) = chat {
            form = form.text("chat_id", chat.to_owned());
        }
        form = form.text("type", kind.to_owned());
        let req = app
            .http
            .post(format!("{}/api/v1/media/upload", app.base))
            .bearer_auth(&self.token)
            .multipart(form);
        TestApp::answer(req).await
    }

    /// Uploads and expects 201; returns the media id.
    pub async fn uploaded(&self, app: &TestApp, bytes: Vec<u8>, kind: &str) -> String {
        let body = self.uploads(app, bytes, kind, None).await.ok(201);
        body["media_id"].as_str().unwrap().to_owned()
    }

    /// GETs a path with extra headers and keeps the raw bytes.
    pub async fn download(&self, app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Download {
        let mut req = app
            .http
            .get(format!("{}{path}", app.base))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("the server answers");
        Download {
            status: res.status(),
            headers: res.headers().clone(),
            bytes: res.bytes().await.unwrap().to_vec(),
        }
    }
}

impl TestUser {
    /// Sets who may add this user to groups (`everyone`, `contacts`, `nobody`).
    pub async fn lets_add_to_groups(&self, app: &TestApp, who: &str) {
        let me = self
            .patch(
                app,
                "/api/v1/users/me",
                json!({ "group_add_permission": who }),
            )
            .await
            .ok(200);
        assert_eq!(me["group_add_permission"], who);
    }

    /// Asks to create a group with `others`; the answer as it comes.
    pub async fn tries_group_with(
        &self,
        app: &TestApp,
        name: &str,
        others: &[&TestUser],
    ) -> Answer {
        let ids: Vec<&str> = others.iter().map(|u| u.user_id.as_str()).collect();
        self.post(
            app,
            "/api/v1/chats",
            json!({"type": "group", "name": name, "participants": ids}),
        )
        .await
    }

    /// Asks to add `others` to a group; the answer as it comes.
    pub async fn tries_adding(&self, app: &TestApp, chat: &str, others: &[&TestUser]) -> Answer {
        let ids: Vec<&str> = others.iter().map(|u| u.user_id.as_str()).collect();
        self.post(
            app,
            &format!("/api/v1/chats/{chat}/participants"),
            json!({ "user_ids": ids }),
        )
        .await
    }

    /// This user's pending invitations to groups, newest first.
    pub async fn invitations(&self, app: &TestApp) -> Vec<Value> {
        self.get(app, "/api/v1/invitations").await.ok(200)["invitations"]
            .as_array()
            .unwrap()
            .clone()
    }
}
