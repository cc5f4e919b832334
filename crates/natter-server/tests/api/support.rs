//! The test harness: `TestApp` starts a real server, `SmsInbox` (from
//! natter-testkit, shared with the SDK's tests and the load tool) plays the
//! operator's SMS gateway, `TestUser` is a signed-up account with a token
//! and its SDK session. The common flows (sign-up, login, chats, messages,
//! contacts, history) go through the SDK's typed calls; `call` and `raw`
//! stay for tests that send exactly the bytes they mean to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use natter_client::api::HistoryQuery;
use natter_proto::chats::{ChatKind, CreateChat, MessageType, SendMessage};
use natter_proto::users::AddContact;
use natter_proto::ws::ClientFrame;
use natter_proto::{ChatId, UserId};
use natter_server::{Config, RunningServer};
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long a test waits for anything on the network.
pub const WAIT: Duration = Duration::from_secs(10);

/// The one SMS gateway fake of the workspace (natter-testkit).
pub use natter_testkit::SmsInbox;

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

/// A running server with its own data directory and SMS inbox: one node,
/// or with `TESTKIT_NODES=N` a cluster of N nodes behind a round-robin
/// balancer (see [`nodes`]).
pub struct TestApp {
    pub sms: SmsInbox,
    pub base: String,
    pub http: reqwest::Client,
    /// The SDK's client for this server (same TLS trust as `http`).
    pub client: natter_client::Client,
    config: Config,
    /// The running nodes (empty while stopped); node 0 is the operator's.
    servers: Vec<RunningServer>,
    _dir: Arc<TempDir>,
    /// The S3 server media go to, with `TESTKIT_BLOBS=s3`.
    _s3: Option<natter_testkit::engines::S3Server>,
    /// The PostgreSQL database the store is, with `TESTKIT_STORE=postgres`.
    /// The test's PostgreSQL databases (none on the embedded store).
    _pg: Vec<natter_testkit::pg::TestDatabase<'static>>,
    /// On a cluster: the balancer in front of the nodes, and the NATS
    /// server of this test when the run has none (`TESTKIT_NATS_URL`).
    cluster: Option<ClusterParts>,
}

/// What a cluster under test adds to one node.
struct ClusterParts {
    balancer: natter_testkit::balancer::Balancer,
    _nats: Option<natter_testkit::engines::NatsServer>,
}

/// How many nodes the test server has: `TESTKIT_NODES` (1 by default).
/// More than one is a cluster on the shared engines: the store on
/// PostgreSQL, media on S3, the bus on NATS (the run's, `TESTKIT_NATS_URL`,
/// or one started for the test, with a subject prefix of the test's own),
/// and a balancer that sends each connection to the next node, so a test's
/// requests and sockets spread over every node.
pub fn nodes() -> usize {
    std::env::var("TESTKIT_NODES").ok().map_or(1, |n| {
        n.parse().expect("TESTKIT_NODES is a number of nodes")
    })
}

/// Points `config` at NATS for a cluster of [`nodes`].
async fn bus_on_nats(config: &mut Config) -> Option<natter_testkit::engines::NatsServer> {
    let (url, own) = match std::env::var("TESTKIT_NATS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let nats = natter_testkit::engines::NatsServer::start().await.unwrap();
            (nats.url(), Some(nats))
        }
    };
    config.bus = Some(url);
    config.nats.prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    own
}

/// A signed-up account and one of its devices (ids as strings, as the
/// JSON the tests compare them with).
#[derive(Debug, Clone)]
pub struct TestUser {
    pub phone: String,
    pub user_id: String,
    pub device_id: String,
    pub token: String,
    /// The device's SDK session: typed calls as this user.
    pub session: natter_client::Session,
}

/// With `TESTKIT_BLOBS=s3`, media go to a fresh bucket of an S3 server
/// (the run's, `TESTKIT_S3_URL`, or one started for this test), so the
/// same tests cover the S3 engine.
async fn media_on_s3(config: &mut Config) -> Option<natter_testkit::engines::S3Server> {
    if std::env::var("TESTKIT_BLOBS").as_deref() != Ok("s3") && nodes() == 1 {
        return None;
    }
    let s3 = natter_testkit::engines::S3Server::start().await.unwrap();
    let bucket = format!("natter-{}", uuid::Uuid::now_v7().simple());
    s3.create_bucket(&bucket).await.unwrap();
    config.blobs = Some(format!("s3://{bucket}"));
    config.s3.endpoint = Some(s3.url().to_owned());
    config.s3.allow_http = true;
    config.s3.access_key_id = Some("test".to_owned());
    config.s3.secret_access_key = Some(serde_json::from_str("\"test\"").unwrap());
    Some(s3)
}

/// Whether `needle` occurs in `haystack`.
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// With `TESTKIT_STORE=postgres`, the store is a fresh database of the
/// run's PostgreSQL (`TEST_NATTER_PG_URL`, from `scripts/pg-cluster
/// start`), so the same tests cover the PostgreSQL engine. On a cluster
/// (`TESTKIT_NODES` > 1) the chats are partitioned over that database and
/// a second one. The run's cluster, not one per test process: a cluster
/// kept for the process's life would outlive it.
async fn store_on_postgres(config: &mut Config) -> Vec<natter_testkit::pg::TestDatabase<'static>> {
    static CLUSTER: std::sync::OnceLock<natter_testkit::pg::PgCluster> = std::sync::OnceLock::new();
    if std::env::var("TESTKIT_STORE").as_deref() != Ok("postgres") && nodes() == 1 {
        return Vec::new();
    }
    assert!(
        std::env::var_os("TEST_NATTER_PG_URL").is_some(),
        "TESTKIT_STORE=postgres needs the run's PostgreSQL: \
         TEST_NATTER_PG_URL=$(scripts/pg-cluster start DIR)"
    );
    let cluster =
        CLUSTER.get_or_init(|| natter_testkit::pg::PgCluster::from_env_or_start().unwrap());
    let secret = |text: String| serde_json::from_value(serde_json::Value::String(text)).unwrap();
    let accounts = cluster.empty_database().await.unwrap();
    config.store.url = Some(secret(accounts.url()));
    config.store.pool_size = 4;
    let mut databases = vec![accounts];
    if nodes() > 1 {
        let chats = cluster.empty_database().await.unwrap();
        config.store.chat_urls = Some(secret(format!("{}, {}", databases[0].url(), chats.url())));
        databases.push(chats);
    }
    databases
}

impl TestApp {
    /// A server with the default configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server with the configuration adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let sms = SmsInbox::start().await.unwrap();
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().join("data"),
            sms_webhook_url: Some(sms.url().to_owned()),
            ..Config::default()
        };
        config.sms.timeout_secs = 5;
        let s3 = media_on_s3(&mut config).await;
        let pg = store_on_postgres(&mut config).await;
        let nats = if nodes() > 1 {
            bus_on_nats(&mut config).await
        } else {
            None
        };
        adjust(&mut config);
        config.validate().unwrap();
        let servers = Self::start_nodes(&config).await;
        let cluster = if nodes() > 1 {
            let addrs = servers.iter().map(RunningServer::local_addr).collect();
            Some(ClusterParts {
                balancer: natter_testkit::balancer::Balancer::start(addrs)
                    .await
                    .unwrap(),
                _nats: nats,
            })
        } else {
            None
        };
        let entry = Self::entry(&servers, cluster.as_ref());
        let (base, http, client) = Self::clients_for(&config, entry, cluster.is_some());
        Self {
            sms,
            base,
            http,
            client,
            config,
            servers,
            _dir: dir,
            _s3: s3,
            _pg: pg,
            cluster,
        }
    }

    /// Node `i`'s configuration: the test's, with a data directory of its
    /// own (`data`, then `data-1`, `data-2`, …) on a new port.
    fn node_config(config: &Config, i: usize) -> Config {
        let mut node = config.clone();
        node.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        if i > 0 {
            node.data_dir = config.data_dir.with_file_name(format!("data-{i}"));
        }
        node
    }

    /// Starts every node (one after the other: their migrations and start
    /// checks are tested for that elsewhere).
    async fn start_nodes(config: &Config) -> Vec<RunningServer> {
        let mut servers = Vec::new();
        for i in 0..nodes() {
            let server =
                tokio::time::timeout(WAIT, RunningServer::start(Self::node_config(config, i)))
                    .await
                    .expect("the server starts in time")
                    .unwrap();
            servers.push(server);
        }
        servers
    }

    /// Where clients connect: the one node, or the cluster's balancer.
    fn entry(servers: &[RunningServer], cluster: Option<&ClusterParts>) -> SocketAddr {
        match cluster {
            Some(c) => c.balancer.addr(),
            None => servers.first().expect("the server runs").local_addr(),
        }
    }

    /// Node `i` (panics when stopped).
    fn node(&self, i: usize) -> &RunningServer {
        self.servers.get(i).expect("the server runs")
    }

    /// Node `i`'s own address, past the balancer: for what a node does
    /// alone (its listener's limits).
    pub fn node_addr(&self, i: usize) -> SocketAddr {
        self.node(i).local_addr()
    }

    /// The base URL, an HTTP client and the SDK for `entry`: over TLS
    /// (trusting the server's certificate only) when the configuration
    /// sets one. On a cluster the client keeps no idle connection, so each
    /// request opens one and the balancer sends it to the next node.
    fn clients_for(
        config: &Config,
        entry: SocketAddr,
        cluster: bool,
    ) -> (String, reqwest::Client, natter_client::Client) {
        let mut builder = reqwest::Client::builder().timeout(WAIT);
        if cluster {
            builder = builder.pool_max_idle_per_host(0);
        }
        let (base, http) = match &config.tls.cert_file {
            None => (format!("http://{entry}"), builder.build().unwrap()),
            Some(cert) => {
                let pem = std::fs::read(cert).unwrap();
                let client = builder
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                    .resolve("localhost", entry)
                    .build()
                    .unwrap();
                (format!("https://localhost:{}", entry.port()), client)
            }
        };
        let client = Self::sdk_for(&base, &http);
        (base, http, client)
    }

    /// The SDK over the test's HTTP client.
    fn sdk_for(base: &str, http: &reqwest::Client) -> natter_client::Client {
        let transport = natter_client::NativeTransport::with_client(http.clone(), WAIT).unwrap();
        natter_client::Client::with_transport(Arc::new(transport), base)
    }

    /// How many media blobs (originals) the blob store holds: files in the
    /// data directory, or objects in the S3 bucket.
    pub async fn media_blobs(&self) -> usize {
        self.blobs_under("media").await
    }

    /// How many blobs the blob store holds under `prefix` (`media`,
    /// `uploads`): files under the data directory's `blobs/<prefix>`,
    /// subdirectories included, or objects in the S3 bucket.
    pub async fn blobs_under(&self, prefix: &str) -> usize {
        fn files(dir: &std::path::Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |d| {
                d.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            files(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
        }
        let (Some(bucket), Some(endpoint)) = (self.config.s3_bucket(), &self.config.s3.endpoint)
        else {
            return files(&self.data_dir().join("blobs").join(prefix));
        };
        // The test server takes unsigned listings (ListObjectsV2).
        let listing = self
            .http
            .get(format!("{endpoint}/{bucket}?list-type=2&prefix={prefix}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        listing.matches("<Key>").count()
    }

    /// Stops the server (gracefully) and starts it again on the same data,
    /// on a new port.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Starts the stopped server again on the same data, on a new port.
    pub async fn start_again(&mut self) {
        assert!(self.servers.is_empty(), "the server is stopped");
        self.servers = Self::start_nodes(&self.config).await;
        if let Some(c) = &self.cluster {
            c.balancer
                .set_nodes(self.servers.iter().map(RunningServer::local_addr).collect());
        }
        let entry = Self::entry(&self.servers, self.cluster.as_ref());
        (self.base, self.http, self.client) =
            Self::clients_for(&self.config, entry, self.cluster.is_some());
    }

    /// Runs the server's housekeeping now (garbage collection included),
    /// on every node in turn as each would on its own timer.
    pub async fn housekeeping(&self) {
        assert!(!self.servers.is_empty(), "the server runs");
        for server in &self.servers {
            tokio::time::timeout(WAIT, server.housekeeping())
                .await
                .expect("housekeeping in time");
        }
    }

    /// Every file under the data directories of the nodes, subdirectories
    /// included.
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
        for i in 0..nodes() {
            let dir = Self::node_config(&self.config, i).data_dir;
            if dir.exists() {
                walk(&dir, &mut out);
            }
        }
        out
    }

    /// Where the store still holds any of `needles`, whatever the engine:
    /// each file of the data directory (the embedded database, its
    /// write-ahead log, blobs) and, on PostgreSQL, each row of each table
    /// of the test's database (its text form, where binary columns read as
    /// hex, so a needle is looked for as text and as hex). Empty when none.
    pub async fn stored_copies(&self, needles: &[&[u8]]) -> Vec<String> {
        let mut found = Vec::new();
        for path in self.data_files() {
            let bytes = std::fs::read(&path).unwrap();
            for needle in needles.iter().filter(|n| holds(&bytes, n)) {
                found.push(format!(
                    "{} holds {:?}",
                    path.display(),
                    String::from_utf8_lossy(needle)
                ));
            }
        }
        if self._pg.is_empty() {
            assert!(
                self.data_dir().join("natter.db").exists(),
                "the embedded store keeps its database in the data directory"
            );
            return found;
        }
        for db in &self._pg {
            found.extend(Self::rows_holding(db, needles).await);
        }
        found
    }

    /// Each row of each table of `db` that holds one of `needles`.
    async fn rows_holding(
        db: &natter_testkit::pg::TestDatabase<'static>,
        needles: &[&[u8]],
    ) -> Vec<String> {
        let mut found = Vec::new();
        let client = db
            .connect()
            .await
            .expect("the test database answers in time");
        let tables = client
            .query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
                &[],
            )
            .await
            .unwrap();
        assert!(!tables.is_empty(), "the test database has its schema");
        for table in tables {
            let table: String = table.get(0);
            let rows = client
                .query(&format!("SELECT t::text FROM \"{table}\" t"), &[])
                .await
                .unwrap();
            for row in rows {
                let text: String = row.get(0);
                for needle in needles {
                    let hex: String = needle.iter().map(|b| format!("{b:02x}")).collect();
                    if holds(text.as_bytes(), needle) || text.contains(&hex) {
                        found.push(format!(
                            "table {table} of {} holds {:?}",
                            db.name(),
                            String::from_utf8_lossy(needle)
                        ));
                    }
                }
            }
        }
        found
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

    /// The running server's services (the operator's side, in-process;
    /// node 0's on a cluster).
    pub fn services(&self) -> &natter_server::service::Services {
        self.node(0).services()
    }

    /// An invite for `uses` accounts (what `natter admin invite create` makes).
    pub async fn invite(&self, uses: u32, expires_in: Option<Duration>) -> String {
        self.services()
            .admin_create_invite(uses, expires_in)
            .await
            .unwrap()
            .token
            .expose()
            .to_owned()
    }

    /// The server's data directory (node 0's on a cluster).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.data_dir
    }

    /// Waits (bounded) until the search indexer has followed every
    /// committed chat log entry, so search answers exactly.
    pub async fn search_caught_up(&self) {
        assert!(!self.servers.is_empty(), "the server runs");
        tokio::time::timeout(WAIT, async {
            for server in &self.servers {
                while server.search_index_lag().await.unwrap() > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
        .await
        .expect("the search index catches up within WAIT");
    }

    /// The server's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops the server (every node, gracefully); [`TestApp::start_again`]
    /// brings it back.
    pub async fn stop(&mut self) {
        for server in std::mem::take(&mut self.servers) {
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
        let (_, code) = self.sms.code_for(&self.client, phone).await.unwrap();
        assert_eq!(self.sms.count(phone), before + 1, "one SMS per request");
        code
    }

    /// Registers `phone` with a fresh code.
    pub async fn signup(&self, phone: &str, name: &str) -> TestUser {
        let before = self.sms.count(phone);
        let user = natter_testkit::TestUser::sign_up(&self.client, &self.sms, phone, name)
            .await
            .unwrap();
        assert_eq!(self.sms.count(phone), before + 1, "one SMS per request");
        TestUser::from(user)
    }

    /// Logs in another device of `phone`.
    pub async fn login(&self, phone: &str, device_name: &str) -> TestUser {
        let before = self.sms.count(phone);
        let user =
            natter_testkit::TestUser::log_in(&self.client, &self.sms, phone, Some(device_name))
                .await
                .unwrap();
        assert_eq!(self.sms.count(phone), before + 1, "one SMS per request");
        TestUser::from(user)
    }
}

impl From<natter_testkit::TestUser> for TestUser {
    fn from(user: natter_testkit::TestUser) -> Self {
        Self {
            phone: user.phone.clone(),
            user_id: user.user_id().to_string(),
            device_id: user.device_id().to_string(),
            token: user.token().to_owned(),
            session: user.session,
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

    /// The typed API as this user's device.
    pub fn api(&self) -> &natter_client::Api {
        self.session.api()
    }

    /// The user's id, typed.
    pub fn id(&self) -> UserId {
        self.session.user_id()
    }

    /// Adds `other` as a contact by phone number.
    pub async fn adds_contact(&self, _app: &TestApp, other: &TestUser) {
        let body = AddContact {
            phone: Some(other.phone.clone()),
            user_id: None,
        };
        self.api().add_contact(&body).await.unwrap();
    }
}

impl TestUser {
    /// Creates (or finds) the direct chat with `other`; returns its id.
    pub async fn direct_chat_with(&self, _app: &TestApp, other: &TestUser) -> String {
        let body = CreateChat {
            kind: ChatKind::Direct,
            participants: vec![other.id()],
            name: None,
            encrypted: false,
        };
        self.api().create_chat(&body).await.unwrap().id.to_string()
    }

    /// Creates a group with `others`; returns its id.
    pub async fn group_with(&self, _app: &TestApp, name: &str, others: &[&TestUser]) -> String {
        let body = CreateChat {
            kind: ChatKind::Group,
            participants: others.iter().map(|u| u.id()).collect(),
            name: Some(name.to_owned()),
            encrypted: false,
        };
        self.api().create_chat(&body).await.unwrap().id.to_string()
    }

    /// Sends a text message; returns the stored message (as JSON, for the
    /// tests that compare it field by field).
    pub async fn sends(&self, _app: &TestApp, chat: &str, text: &str) -> Value {
        let body = SendMessage {
            chat_id: chat.parse::<ChatId>().unwrap(),
            content: Some(text.to_owned()),
            ciphertext: None,
            message_type: MessageType::Text,
            timestamp: None,
            client_message_id: None,
            reply_to: None,
            media_id: None,
        };
        let posted = self.api().send_message(&body).await.unwrap();
        assert!(!posted.duplicate, "a new message answers 201");
        serde_json::to_value(posted.message).unwrap()
    }

    /// The texts of a chat's history as this user sees it, oldest first.
    pub async fn texts(&self, _app: &TestApp, chat: &str) -> Vec<String> {
        let query = HistoryQuery {
            limit: Some(100),
            ..HistoryQuery::default()
        };
        let page = self
            .api()
            .history(chat.parse::<ChatId>().unwrap(), query)
            .await
            .unwrap();
        let mut texts: Vec<String> = page
            .messages
            .into_iter()
            .filter(|m| m.message_type == MessageType::Text)
            .map(|m| m.content.unwrap_or_else(|| "<deleted>".to_owned()))
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
        let auth = serde_json::to_string(&ClientFrame::Auth {
            token: self.token.clone(),
        })
        .unwrap();
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

    /// The last frame of type `kind` before the socket stays silent for
    /// `quiet` (at most WAIT in all).
    pub async fn last_of(&mut self, kind: &str, quiet: Duration) -> Option<Value> {
        use futures_util::StreamExt as _;
        use tokio_tungstenite::tungstenite::Message;
        let end = tokio::time::Instant::now() + WAIT;
        let mut last = None;
        while tokio::time::Instant::now() < end {
            match tokio::time::timeout(quiet, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let frame: Value = serde_json::from_str(&t).unwrap();
                    if frame["type"] == kind {
                        last = Some(frame);
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => break,
            }
        }
        last
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

// --- End-to-end encryption (MLS) helpers -----------------------------------

/// Standard base64.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The bytes of an MLS private message (RFC 9420 §6.3) of `chat`'s group:
/// version, wire format 2, group id (the chat id's 16 bytes), `epoch`,
/// `content_type` (1 application, 2 proposal, 3 commit), empty
/// authenticated data and `body` as the ciphertext. Its framing is all the
/// server reads, so this is enough where the cryptography does not matter.
pub fn mls_private_bytes(chat: &str, epoch: u64, content_type: u8, body: &[u8]) -> Vec<u8> {
    let group = uuid::Uuid::parse_str(chat).unwrap();
    let mut m = vec![0, 1, 0, 2, 16];
    m.extend_from_slice(group.as_bytes());
    m.extend_from_slice(&epoch.to_be_bytes());
    m.push(content_type);
    m.push(0);
    assert!(body.len() < 64, "one-byte vector lengths only");
    m.push(u8::try_from(body.len()).unwrap());
    m.extend_from_slice(body);
    m
}

/// Base64 of [`mls_private_bytes`].
pub fn mls_private(chat: &str, epoch: u64, content_type: u8, body: &[u8]) -> String {
    b64(&mls_private_bytes(chat, epoch, content_type, body))
}

/// An MLS application message for `chat` at `epoch` (base64), 36 bytes.
pub fn mls_app(chat: &str, epoch: u64) -> String {
    mls_private(chat, epoch, 1, &[1, 2, 3, 4])
}

/// An encrypted chat: a direct one with `other`, or a group of `others`.
pub async fn encrypted_chat(app: &TestApp, creator: &TestUser, others: &[&TestUser]) -> String {
    let ids: Vec<&str> = others.iter().map(|u| u.user_id.as_str()).collect();
    let body = creator
        .post(
            app,
            "/api/v1/chats",
            json!({"type": "group", "name": "Sealed", "participants": ids, "encrypted": true}),
        )
        .await
        .ok(201);
    body["id"].as_str().unwrap().to_owned()
}

/// One device's MLS keys: an OpenMLS provider and signer whose basic
/// credential is `"{user_id}/{device_id}"`, registered and certified with
/// the user's identity key.
pub struct MlsDevice {
    pub user: TestUser,
    pub provider: openmls_rust_crypto::OpenMlsRustCrypto,
    pub signer: openmls_basic_credential::SignatureKeyPair,
    pub credential: openmls::prelude::CredentialWithKey,
}

/// A user's identity key pair (Ed25519, `ring`).
pub struct Identity(pub ring::signature::Ed25519KeyPair);

impl Identity {
    pub fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Self(ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    pub fn public(&self) -> String {
        use ring::signature::KeyPair as _;
        b64(self.0.public_key().as_ref())
    }

    /// The certificate of `device`'s signature key.
    pub fn certify(&self, device: &TestUser, signature_key: &[u8]) -> String {
        let user = natter_proto::UserId::from_uuid(uuid::Uuid::parse_str(&device.user_id).unwrap());
        let dev =
            natter_proto::DeviceId::from_uuid(uuid::Uuid::parse_str(&device.device_id).unwrap());
        let message = natter_proto::e2ee::device_certificate_message(user, dev, signature_key);
        b64(self.0.sign(&message).as_ref())
    }
}

/// The cipher suite of the tests.
pub const MLS_SUITE: openmls::prelude::Ciphersuite =
    openmls::prelude::Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

impl MlsDevice {
    /// Makes the device's MLS keys (not registered yet).
    pub fn new(user: &TestUser) -> Self {
        use openmls::prelude::*;
        let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
        let signer =
            openmls_basic_credential::SignatureKeyPair::new(MLS_SUITE.signature_algorithm())
                .unwrap();
        signer.store(provider.storage()).unwrap();
        let identity = format!("{}/{}", user.user_id, user.device_id);
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.into_bytes()).into(),
            signature_key: signer.public().into(),
        };
        Self {
            user: user.clone(),
            provider,
            signer,
            credential,
        }
    }

    /// Makes the keys, registers them and certifies them with `identity`
    /// (setting the identity key first when `first`).
    pub async fn certified(
        app: &TestApp,
        user: &TestUser,
        identity: &Identity,
        first: bool,
    ) -> Self {
        if first {
            app.call(
                Method::PUT,
                "/api/v1/users/me/identity",
                Some(&user.token),
                Some(json!({"identity_key": identity.public()})),
            )
            .await
            .ok(204);
        }
        let device = Self::new(user);
        let key = device.signer.public().to_vec();
        app.call(
            Method::PUT,
            "/api/v1/devices/me/credential",
            Some(&user.token),
            Some(json!({
                "signature_key": b64(&key),
                "link_key": b64(&[7u8; 32]),
                "certificate": identity.certify(user, &key),
            })),
        )
        .await
        .ok(204);
        device
    }

    /// A fresh KeyPackage of this device, as the `MLSMessage` bytes.
    pub fn key_package_bytes(&self) -> Vec<u8> {
        use openmls::prelude::tls_codec::Serialize as _;
        use openmls::prelude::*;
        let bundle = KeyPackage::builder()
            .build(
                MLS_SUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .unwrap();
        let message: MlsMessageOut = bundle.key_package().clone().into();
        message.tls_serialize_detached().unwrap()
    }

    /// Base64 of [`MlsDevice::key_package_bytes`].
    pub fn key_package(&self) -> String {
        b64(&self.key_package_bytes())
    }

    /// Publishes `n` one-time KeyPackages (and a last-resort one if asked).
    pub async fn publishes(&self, app: &TestApp, n: usize, last_resort: bool) -> Value {
        let packages: Vec<String> = (0..n).map(|_| self.key_package()).collect();
        let mut body = json!({"key_packages": packages});
        if last_resort {
            body["last_resort"] = json!(self.key_package());
        }
        self.user
            .post(app, "/api/v1/devices/me/key-packages", body)
            .await
            .ok(201)
    }
}

/// Decodes standard base64.
pub fn unb64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
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
