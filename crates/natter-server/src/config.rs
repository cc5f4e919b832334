//! Configuration: one [`Config`] loaded once at start from an optional TOML
//! file, then `NATTER_*` environment variables, then command-line overrides,
//! and validated before anything starts. Nothing else in the server reads the
//! environment.
//!
//! Nested keys use a double underscore in the environment:
//! `NATTER_LIMITS__MAX_BODY_BYTES=131072` sets `limits.max_body_bytes`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::phone::PhoneValidation;

/// Everything the server can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on (`NATTER_LISTEN`).
    pub listen: SocketAddr,
    /// Where the embedded store and its secrets live (`NATTER_DATA_DIR`).
    pub data_dir: PathBuf,
    /// When set, verification codes are POSTed here as
    /// `{"phone","code"}` instead of being printed (`NATTER_SMS_WEBHOOK_URL`).
    pub sms_webhook_url: Option<String>,
    /// Log filter, `tracing-subscriber` syntax (`NATTER_LOG`).
    pub log: String,
    /// Log format: `text` or `json` (`NATTER_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Take the client address from the last `X-Forwarded-For` entry; only
    /// behind a reverse proxy that sets it.
    pub trust_forwarded_for: bool,
    /// How strictly phone numbers are checked: `parse` (a known country code
    /// and a plausible length; the default, so the API's examples work) or
    /// `strict` (valid in the country's numbering plan).
    pub phone_validation: PhoneValidation,
    /// How people sign up: `sms`, `invite` or `open`.
    pub signup: SignupConfig,
    /// TLS termination by the server itself.
    pub tls: TlsConfig,
    /// Verification codes.
    pub verification: VerificationConfig,
    /// The SMS gateway webhook.
    pub sms: SmsConfig,
    /// The embedded store.
    pub store: StoreConfig,
    /// Scale-out: `nats://host:port` (several separated by commas; `tls://`
    /// for TLS) routes live traffic between nodes. Unset: one node, in-process.
    pub bus: Option<String>,
    /// The NATS bus, when `bus` is set.
    pub nats: NatsConfig,
    /// Scale-out: `s3://bucket` keeps media blobs in S3-compatible storage
    /// (see `[s3]`). Unset: files in the data directory.
    pub blobs: Option<String>,
    /// The S3-compatible blob store, when `blobs` is set.
    pub s3: S3Config,
    /// Every size and count bound.
    pub limits: Limits,
    /// The rate-limit table.
    pub rate_limits: RateLimits,
    /// Uploads, downloads, thumbnails and media garbage collection.
    pub media: MediaConfig,
    /// Push notifications (Web Push and UnifiedPush).
    pub push: PushConfig,
    /// End-to-end encryption: the MLS delivery service's bounds.
    pub e2ee: E2eeConfig,
    /// The browser client served at `/`, and cross-origin access to the API.
    pub web: WebConfig,
}

/// `[web]`: the browser client, embedded in the binary and served at `/`,
/// and which other origins may call the API from a browser (CORS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Serve the browser client at `/` (off: the API alone).
    pub enabled: bool,
    /// Origins (`https://chat.example.org`) allowed to call the API from a
    /// browser, for operators who host the app elsewhere. Empty (the
    /// default): CORS is closed, only pages of this server's own origin can.
    pub cors_origins: Vec<String>,
    /// How long a browser may cache a CORS preflight answer.
    pub cors_max_age_secs: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cors_origins: Vec::new(),
            cors_max_age_secs: 600,
        }
    }
}

impl WebConfig {
    /// Checks each origin: `http` or `https`, a host, an optional port,
    /// nothing else (no path, no `*`).
    ///
    /// # Errors
    /// A [`ConfigError::Invalid`] naming `web.cors_origins`.
    fn validate(&self) -> Result<(), ConfigError> {
        for origin in &self.cors_origins {
            let ok = reqwest::Url::parse(origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.has_host()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.username().is_empty()
                    && u.origin().ascii_serialization() == *origin
            });
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "web.cors_origins",
                    problem: format!(
                        "{origin:?} is not an origin: write scheme://host[:port], \
                         as a browser sends it (https://chat.example.org)"
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./natter-data"),
            sms_webhook_url: None,
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            trust_forwarded_for: false,
            phone_validation: PhoneValidation::Parse,
            signup: SignupConfig::default(),
            tls: TlsConfig::default(),
            verification: VerificationConfig::default(),
            sms: SmsConfig::default(),
            store: StoreConfig::default(),
            bus: None,
            nats: NatsConfig::default(),
            blobs: None,
            s3: S3Config::default(),
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            media: MediaConfig::default(),
            push: PushConfig::default(),
            e2ee: E2eeConfig::default(),
            web: WebConfig::default(),
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// TLS: with both files set, `natter serve` speaks HTTPS (and WSS) itself,
/// HTTP/2 and HTTP/1.1 by ALPN. Without, plain HTTP (behind a proxy).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first (`fullchain.pem`).
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// How accounts are created (`docs/operations.md#sign-up-modes`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignupConfig {
    /// `sms`, `invite` or `open`. Unset: `sms` when `sms_webhook_url` is
    /// set, `open` otherwise (what Natter did before the key existed).
    pub mode: Option<SignupMode>,
}

/// How accounts are created and numbers proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignupMode {
    /// Codes go by SMS through `sms_webhook_url`; anyone with the number
    /// can sign up.
    Sms,
    /// Registration needs an invite made by the operator (`natter admin
    /// invite create`); no SMS gateway. A new device logs in with a code
    /// made by one of the account's devices.
    Invite,
    /// DEVELOPMENT: codes are printed to stderr; anyone who reads it can
    /// sign up or log in as any number.
    Open,
}

impl SignupMode {
    /// The name used in the configuration.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Invite => "invite",
            Self::Open => "open",
        }
    }
}

/// Verification codes sent by SMS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerificationConfig {
    /// How long a code is valid.
    pub code_ttl_secs: u64,
    /// Wrong attempts after which a code is dead.
    pub max_attempts: u32,
}

impl Default for VerificationConfig {
    fn default() -> Self {
        Self {
            code_ttl_secs: 300,
            max_attempts: 5,
        }
    }
}

/// The SMS gateway webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    /// Time allowed for the gateway to accept a code.
    pub timeout_secs: u64,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self { timeout_secs: 10 }
    }
}

/// The embedded SQLite store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Read connections in the pool (writes have their own single connection).
    pub read_connections: usize,
    /// Most write operations committed together in one transaction (group commit).
    pub write_batch_max: usize,
    /// Write operations waiting for the writer before senders wait (back-pressure).
    pub write_queue: usize,
    /// Most chats the writer keeps in memory (members, log head, receipt
    /// positions); past it some are forgotten and reloaded when next used.
    pub chat_cache_max: usize,
    /// Longest a delivered position (from device acks, and a sender's own
    /// position after a send) waits in memory before it is written; a crash
    /// loses at most this much of them, which later acks restore.
    pub receipt_flush_ms: u64,
    /// Most chat log entries the search indexer follows in one writer job:
    /// bounds how long one pass holds the writer.
    pub search_index_batch: usize,
    /// How often the search indexer looks at the log when nothing woke it
    /// (it is woken after every append; this is the safety net).
    pub search_index_poll_ms: u64,
    /// A PostgreSQL database instead of the embedded store
    /// (`postgres://user:password@host:port/dbname`, docs/scale.md): the
    /// accounts database, and the chats' too unless `chat_urls` is set;
    /// every node of a cluster names the same one. Unset: the embedded
    /// store in the data directory. It may hold a password, so it never
    /// shows in a debug dump of the configuration.
    pub url: Option<SecretString>,
    /// The PostgreSQL databases the chats (logs, membership, receipts,
    /// invitations) are partitioned over by chat id, separated by commas;
    /// `url` may be one of them. Fixed at the store's first start: a node
    /// started with another list refuses to (docs/scale.md). Unset: the
    /// chats live in `url`.
    pub chat_urls: Option<SecretString>,
    /// Connections each node keeps to PostgreSQL.
    pub pool_size: usize,
    /// How long connecting to PostgreSQL (or waiting for a free connection)
    /// may take.
    pub connect_timeout_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            read_connections: 4,
            write_batch_max: 1000,
            write_queue: 4096,
            chat_cache_max: 100_000,
            receipt_flush_ms: 1000,
            search_index_batch: 500,
            search_index_poll_ms: 1000,
            url: None,
            chat_urls: None,
            pool_size: 16,
            connect_timeout_secs: 10,
        }
    }
}

impl StoreConfig {
    /// Whether every node of a cluster sees this store: PostgreSQL does;
    /// the embedded store belongs to one node (its data directory is
    /// locked), so a bus between nodes has nothing shared to stand on.
    #[must_use]
    pub fn is_shared(&self) -> bool {
        self.url.is_some()
    }

    /// The chat databases of `chat_urls`, in order (empty: the accounts
    /// database holds the chats).
    #[must_use]
    pub fn chat_urls(&self) -> Vec<String> {
        self.chat_urls
            .as_ref()
            .map(|list| {
                list.expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The NATS bus (`docs/scale.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Prefix of every subject and of the presence bucket, so several
    /// deployments can share one NATS.
    pub prefix: String,
    /// How long a node's part of a user's presence stays valid after the
    /// node's last heartbeat (sent every third of it): the users of a node
    /// that died go offline within this long and a third.
    pub presence_ttl_secs: u64,
    /// Replicas of the presence bucket: 1 on one NATS server, 3 on a cluster.
    pub presence_replicas: u64,
    /// How long the first connection to NATS may take at start.
    pub connect_timeout_secs: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            prefix: "natter".to_owned(),
            presence_ttl_secs: 30,
            presence_replicas: 1,
            connect_timeout_secs: 5,
        }
    }
}

/// A secret read from the configuration; `Debug` does not show it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// The value, for the one place that uses it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The S3-compatible blob store (`blobs = "s3://bucket"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The endpoint, `https://…` (unset: AWS's endpoint for `region`).
    pub endpoint: Option<String>,
    /// The region (`us-east-1` for most S3-compatible servers).
    pub region: String,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<SecretString>,
    /// Allow a plain `http://` endpoint (a server on the same host or a
    /// private network only).
    pub allow_http: bool,
    /// Address buckets as `bucket.endpoint` (AWS) instead of `endpoint/bucket`
    /// (most self-hosted servers).
    pub virtual_hosted_style: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            virtual_hosted_style: false,
        }
    }
}

/// Push notifications to devices without a live connection (`docs/push.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Whether devices may register push channels and pushes are sent.
    pub enabled: bool,
    /// The VAPID `sub` claim: a `mailto:` or `https:` contact for the push
    /// services' operators. Set it to a real address.
    pub vapid_subject: String,
    /// A burst of updates for one device within this window becomes one push.
    pub coalesce_ms: u64,
    /// Send attempts before a push is dropped.
    pub max_attempts: u32,
    /// The first retry waits this long; each later one twice as long.
    pub backoff_base_ms: u64,
    /// The longest wait between attempts, `Retry-After` included.
    pub backoff_max_secs: u64,
    /// Time allowed for one request to a push service, connect to last byte.
    pub request_timeout_secs: u64,
    /// Most bytes of a push service's answer that are read.
    pub max_response_bytes: usize,
    /// How long a push service keeps an undelivered push (the `TTL` header).
    pub ttl_secs: u64,
    /// Pushes sent at once.
    pub concurrency: usize,
    /// Include the sender's name and an excerpt for plaintext chats (never
    /// for encrypted chats, never for UnifiedPush channels without keys).
    pub previews: bool,
    /// Longest excerpt in a preview, in characters.
    pub preview_chars: usize,
    /// DEVELOPMENT ONLY: allow endpoints on loopback and private addresses
    /// and over plain `http://`. Off, push requests go only to public HTTPS
    /// endpoints (SSRF defence).
    pub allow_private_endpoints: bool,
    /// Firebase Cloud Messaging (Android devices).
    pub fcm: FcmConfig,
    /// Apple Push Notification service (iOS and macOS devices).
    pub apns: ApnsConfig,
}

/// `[push.fcm]`: Firebase Cloud Messaging over the HTTP v1 API, with the
/// OAuth 2 token of a Google service account (`docs/operations.md#mobile-push`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmConfig {
    /// Whether devices may register `fcm` channels and FCM pushes are sent.
    pub enabled: bool,
    /// The service account's JSON key file, as the Firebase console gives
    /// it (`project_id`, `client_email`, `private_key`, `token_uri`).
    pub service_account_file: Option<PathBuf>,
    /// The FCM API's base URL.
    pub endpoint: String,
    /// Time allowed for one request (token exchange or send), connect to last byte.
    pub timeout_secs: u64,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            service_account_file: None,
            endpoint: "https://fcm.googleapis.com".to_owned(),
            timeout_secs: 10,
        }
    }
}

/// `[push.apns]`: the Apple Push Notification service over HTTP/2, with
/// token-based (ES256 JWT) authentication (`docs/operations.md#mobile-push`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsConfig {
    /// Whether devices may register `apns` channels and APNs pushes are sent.
    pub enabled: bool,
    /// The `.p8` signing key (PKCS#8 PEM) from the Apple developer account.
    pub key_file: Option<PathBuf>,
    /// The key's 10-character Key ID (the JWT's `kid`).
    pub key_id: Option<String>,
    /// The 10-character Team ID (the JWT's `iss`).
    pub team_id: Option<String>,
    /// The app's bundle id (`apns-topic`).
    pub topic: Option<String>,
    /// The production APNs base URL.
    pub endpoint: String,
    /// The development (sandbox) APNs base URL, for tokens registered with
    /// `"environment": "sandbox"`.
    pub sandbox_endpoint: String,
    /// Time allowed for one request, connect to last byte.
    pub timeout_secs: u64,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            key_file: None,
            key_id: None,
            team_id: None,
            topic: None,
            endpoint: "https://api.push.apple.com".to_owned(),
            sandbox_endpoint: "https://api.sandbox.push.apple.com".to_owned(),
            timeout_secs: 10,
        }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            vapid_subject: "mailto:postmaster@localhost".to_owned(),
            coalesce_ms: 3000,
            max_attempts: 8,
            backoff_base_ms: 2000,
            backoff_max_secs: 3600,
            request_timeout_secs: 10,
            max_response_bytes: 16 * 1024,
            ttl_secs: 24 * 3600,
            concurrency: 8,
            previews: false,
            preview_chars: 80,
            allow_private_endpoints: false,
            fcm: FcmConfig::default(),
            apns: ApnsConfig::default(),
        }
    }
}

/// Every size and count bound (DESIGN.md §4 rule 3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted in a body.
    pub max_json_depth: usize,
    /// Longest display name, in characters.
    pub max_name_chars: usize,
    /// Longest about text, in characters.
    pub max_about_chars: usize,
    /// Longest device name, in characters.
    pub max_device_name_chars: usize,
    /// Devices (logged-in sessions) per user.
    pub max_devices_per_user: usize,
    /// Entries in a contact list.
    pub max_contacts_per_user: usize,
    /// Numbers in one discovery request.
    pub max_discover_phones: usize,
    /// Time allowed for one request, start to end.
    pub request_timeout_secs: u64,
    /// Time allowed for a client to send a request's headers; also closes
    /// idle keep-alive connections, and a new connection (HTTP/1 or HTTP/2)
    /// that has not started a request within it.
    pub header_read_timeout_secs: u64,
    /// Open connections one client address may hold.
    pub max_connections_per_ip: usize,
    /// A connection with no request or WebSocket in flight for this long is
    /// closed (HTTP/1 keep-alive and HTTP/2 alike). A new connection must
    /// start its first request within `header_read_timeout_secs`.
    pub idle_timeout_secs: u64,
    /// A write to a client that makes no progress for this long (the client
    /// stopped reading a download or a WebSocket) closes the connection.
    pub write_timeout_secs: u64,
    /// How often an HTTP/2 connection with requests in flight is pinged.
    pub http2_keep_alive_interval_secs: u64,
    /// An HTTP/2 ping unanswered this long closes the connection.
    pub http2_keep_alive_timeout_secs: u64,
    /// Largest total size of a request's header fields (names and values),
    /// in bytes; larger is refused with 431.
    pub max_header_bytes: usize,
    /// Participants of a group, creator included.
    pub max_group_members: usize,
    /// Longest group name, in characters.
    pub max_chat_name_chars: usize,
    /// Longest message text, in characters.
    pub max_message_chars: usize,
    /// Largest ciphertext of an encrypted message, in bytes (before base64).
    pub max_ciphertext_bytes: usize,
    /// Longest `client_message_id`, in characters.
    pub max_client_message_id_chars: usize,
    /// Largest page of history (`limit`); the default page is 50.
    pub max_page_size: usize,
    /// How long after sending a message may be edited.
    pub edit_window_secs: u64,
    /// Events a device may be behind in one chat and still `sync` it;
    /// further behind, it is told `too_long` for that chat and reloads its
    /// recent history over REST.
    pub max_sync_updates: usize,
    /// Chat positions one `sync` frame may list.
    pub max_sync_chats: usize,
    /// Events read from the store per sync page.
    pub sync_page_size: usize,
    /// Frames queued for one WebSocket connection before it counts as behind
    /// and is closed (it resumes with `sync`).
    pub ws_queue_depth: usize,
    /// Largest group whose members are told live when a member comes online
    /// or goes offline: in a bigger group a connect would cost a frame per
    /// member (10,000 members connecting, 10^8 frames). Direct chats and
    /// contacts always are.
    pub presence_group_max_members: usize,
    /// Largest WebSocket message (and frame) a client may send, in bytes.
    pub ws_max_message_bytes: usize,
    /// WebSocket read buffer per connection, in bytes. Small, because every
    /// idle connection holds one and client frames are small; a larger
    /// frame is read in several chunks.
    pub ws_read_buffer_bytes: usize,
    /// WebSocket write buffer per connection, in bytes.
    pub ws_write_buffer_bytes: usize,
    /// Time allowed to authenticate a new WebSocket.
    pub ws_auth_timeout_secs: u64,
    /// How often the server pings an idle WebSocket.
    pub ws_ping_interval_secs: u64,
    /// A WebSocket silent this long (not even a pong) is closed.
    pub ws_idle_timeout_secs: u64,
    /// Longest search query, in characters.
    pub max_search_query_chars: usize,
    /// Most words and phrases in one search query (each is one index lookup).
    pub max_search_terms: usize,
    /// Largest page of search results (`limit`); the default page is 20.
    pub max_search_page_size: usize,
    /// Deepest offset into search results (`(page - 1) * limit`).
    pub max_search_offset: usize,
    /// Longest push endpoint URL, in characters.
    pub max_push_endpoint_chars: usize,
    /// Push entries waiting to be planned before new ones are dropped.
    pub push_queue_depth: usize,
    /// How long an invitation to a group waits to be accepted.
    pub invitation_ttl_secs: u64,
    /// Pending invitations one user may hold; more are refused
    /// (`invitation_limit_reached`).
    pub max_pending_invitations_per_user: usize,
    /// Pending invitations to one group.
    pub max_pending_invitations_per_chat: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_json_depth: 16,
            max_name_chars: 64,
            max_about_chars: 140,
            max_device_name_chars: 64,
            max_devices_per_user: 10,
            max_contacts_per_user: 10_000,
            max_discover_phones: 500,
            request_timeout_secs: 30,
            header_read_timeout_secs: 10,
            max_connections_per_ip: 1000,
            idle_timeout_secs: 60,
            write_timeout_secs: 60,
            http2_keep_alive_interval_secs: 30,
            http2_keep_alive_timeout_secs: 20,
            // Browsers send 1-2 KiB; big cookies are the usual outlier.
            max_header_bytes: 16 * 1024,
            max_group_members: 1024,
            max_chat_name_chars: 128,
            max_message_chars: 4096,
            max_ciphertext_bytes: 32 * 1024,
            max_client_message_id_chars: 64,
            max_page_size: 100,
            edit_window_secs: 24 * 3600,
            max_sync_updates: 10_000,
            max_sync_chats: 1_000,
            sync_page_size: 200,
            ws_queue_depth: 1024,
            presence_group_max_members: 256,
            ws_max_message_bytes: 64 * 1024,
            ws_read_buffer_bytes: 1024,
            ws_write_buffer_bytes: 4096,
            ws_auth_timeout_secs: 5,
            ws_ping_interval_secs: 30,
            ws_idle_timeout_secs: 75,
            max_search_query_chars: 256,
            max_search_terms: 16,
            max_search_page_size: 50,
            max_search_offset: 10_000,
            max_push_endpoint_chars: 1024,
            push_queue_depth: 4096,
            invitation_ttl_secs: 7 * 24 * 3600,
            max_pending_invitations_per_user: 50,
            max_pending_invitations_per_chat: 200,
        }
    }
}

/// One rate limit: `burst` requests at once, refilled evenly over `per_secs`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests allowed at once.
    pub burst: u32,
    /// Seconds in which the full burst is refilled.
    pub per_secs: u64,
}

impl Rate {
    const fn new(burst: u32, per_secs: u64) -> Self {
        Self { burst, per_secs }
    }
}

/// The rate-limit table (DESIGN.md §4 rule 4).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Verification codes sent to one number.
    pub verification_per_phone: Rate,
    /// Verification codes requested from one client address (an IPv4
    /// address, or the /64 of an IPv6 address).
    pub verification_per_ip: Rate,
    /// Verification codes requested from one client network (IPv4 /24,
    /// IPv6 /48): many addresses of one network count together.
    pub verification_per_network: Rate,
    /// Verification codes sent to one block of numbers (the number without
    /// its last four digits): SMS pumping walks through a premium range.
    pub verification_per_prefix: Rate,
    /// Verification codes sent to one country calling code.
    pub verification_per_country: Rate,
    /// Verification codes sent by the whole server (SMS costs money).
    pub verification_global: Rate,
    /// Register and login attempts from one client address.
    pub code_attempts_per_ip: Rate,
    /// Contact discovery requests by one user.
    pub discover_per_user: Rate,
    /// Contacts added by one user (adding by number is a lookup too).
    pub contact_add_per_user: Rate,
    /// Typing signals from one device in one chat.
    pub typing_per_device: Rate,
    /// Presence changes (online/away) from one device.
    pub presence_per_device: Rate,
    /// Messages sent by one user (REST and WebSocket together).
    pub messages_per_user: Rate,
    /// Uploads started by one user (plain and resumable together).
    pub uploads_per_user: Rate,
    /// Push channels registered (set or replaced) by one user's devices.
    pub push_channels_per_user: Rate,
    /// Groups created by one user: the short-term budget.
    pub chats_created_per_minute: Rate,
    /// Groups created by one user: the daily budget.
    pub chats_created_per_day: Rate,
    /// People one user adds to groups (each initial participant of a new
    /// group and each user of an add counts, invitations included): the
    /// short-term budget.
    pub participants_added_per_minute: Rate,
    /// People one user adds to groups: the daily budget.
    pub participants_added_per_day: Rate,
    /// `sync` frames on one WebSocket connection (each reads many events).
    pub ws_sync_per_connection: Rate,
    /// `sync` frames from all of one user's connections.
    pub ws_sync_per_user: Rate,
    /// `send_message` frames on one WebSocket connection (per user:
    /// `messages_per_user`).
    pub ws_send_per_connection: Rate,
    /// `ack` frames on one WebSocket connection.
    pub ws_ack_per_connection: Rate,
    /// Store writes of the `ack` frames of all of one user's connections
    /// (the acks a connection has at hand are one write).
    pub ws_ack_writes_per_user: Rate,
    /// `read` frames on one WebSocket connection.
    pub ws_read_per_connection: Rate,
    /// `read` frames from all of one user's connections.
    pub ws_read_per_user: Rate,
    /// `typing` frames on one WebSocket connection, every chat together
    /// (per chat: `typing_per_device`).
    pub ws_typing_per_connection: Rate,
    /// `typing` frames from all of one user's connections.
    pub ws_typing_per_user: Rate,
    /// `presence` frames on one WebSocket connection (changes that go
    /// out: `presence_per_device`).
    pub ws_presence_per_connection: Rate,
    /// `presence` frames from all of one user's connections.
    pub ws_presence_per_user: Rate,
    /// `join_chat` frames on one WebSocket connection.
    pub ws_join_chat_per_connection: Rate,
    /// `join_chat` frames from all of one user's connections.
    pub ws_join_chat_per_user: Rate,
    /// `ping` frames on one WebSocket connection.
    pub ws_ping_per_connection: Rate,
    /// `ping` frames from all of one user's connections.
    pub ws_ping_per_user: Rate,
    /// Frames that are not a valid client frame (bad JSON, an unknown
    /// type, binary, a second `auth`) on one WebSocket connection.
    pub ws_malformed_per_connection: Rate,
    /// Frames that are not a valid client frame, from all of one user's
    /// connections.
    pub ws_malformed_per_user: Rate,
    /// `rate_limited` answers one WebSocket connection may receive: one
    /// more within the window closes it with 1008 (policy violation).
    pub ws_refusals_per_connection: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            verification_per_phone: Rate::new(5, 3600),
            verification_per_ip: Rate::new(20, 3600),
            verification_per_network: Rate::new(60, 3600),
            verification_per_prefix: Rate::new(10, 3600),
            verification_per_country: Rate::new(200, 600),
            verification_global: Rate::new(600, 60),
            code_attempts_per_ip: Rate::new(30, 600),
            discover_per_user: Rate::new(10, 3600),
            contact_add_per_user: Rate::new(100, 3600),
            typing_per_device: Rate::new(3, 3),
            presence_per_device: Rate::new(6, 60),
            messages_per_user: Rate::new(600, 60),
            uploads_per_user: Rate::new(120, 3600),
            push_channels_per_user: Rate::new(30, 3600),
            chats_created_per_minute: Rate::new(10, 60),
            chats_created_per_day: Rate::new(100, 24 * 3600),
            participants_added_per_minute: Rate::new(200, 60),
            participants_added_per_day: Rate::new(2000, 24 * 3600),
            ws_sync_per_connection: Rate::new(10, 60),
            ws_sync_per_user: Rate::new(30, 60),
            ws_send_per_connection: Rate::new(1200, 60),
            ws_ack_per_connection: Rate::new(6000, 60),
            ws_ack_writes_per_user: Rate::new(6000, 60),
            ws_read_per_connection: Rate::new(600, 60),
            ws_read_per_user: Rate::new(1200, 60),
            ws_typing_per_connection: Rate::new(60, 60),
            ws_typing_per_user: Rate::new(120, 60),
            ws_presence_per_connection: Rate::new(12, 60),
            ws_presence_per_user: Rate::new(30, 60),
            ws_join_chat_per_connection: Rate::new(60, 60),
            ws_join_chat_per_user: Rate::new(120, 60),
            ws_ping_per_connection: Rate::new(60, 60),
            ws_ping_per_user: Rate::new(240, 60),
            ws_malformed_per_connection: Rate::new(10, 60),
            ws_malformed_per_user: Rate::new(30, 60),
            ws_refusals_per_connection: Rate::new(20, 60),
        }
    }
}

/// Uploads, downloads, thumbnails and media garbage collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Largest `image` upload, in bytes.
    pub max_image_bytes: u64,
    /// Largest `video` upload, in bytes.
    pub max_video_bytes: u64,
    /// Largest `file` upload, in bytes.
    pub max_file_bytes: u64,
    /// Largest `encrypted` upload, in bytes.
    pub max_encrypted_bytes: u64,
    /// Bytes one user may keep stored (finished uploads plus the declared
    /// length of resumable uploads in progress).
    pub quota_bytes_per_user: u64,
    /// Resumable uploads one user may have in progress at once.
    pub max_pending_uploads_per_user: u64,
    /// How long a resumable upload may stay unfinished before it expires.
    pub upload_expiry_secs: u64,
    /// How long a finished upload may stay unreferenced (by a message or a
    /// profile picture) before it is deleted.
    pub unreferenced_ttl_secs: u64,
    /// A transfer (upload or download request) that moves no byte for this
    /// long is cut off.
    pub transfer_idle_timeout_secs: u64,
    /// Images with more pixels than this are refused, never decoded
    /// (decompression bombs).
    pub max_image_pixels: u64,
    /// Longest side of a thumbnail, in pixels.
    pub thumbnail_max_side: u32,
    /// Time allowed to decode an image and make its thumbnail.
    pub thumbnail_timeout_secs: u64,
    /// Thumbnails made at once (each holds a decoded image in memory).
    pub thumbnail_workers: u64,
    /// Longest file name kept from an upload, in characters.
    pub max_filename_chars: u64,
}

/// 1 MiB.
const MIB: u64 = 1024 * 1024;

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            // WhatsApp's and Telegram's limits.
            max_image_bytes: 16 * MIB,
            max_video_bytes: 2048 * MIB,
            max_file_bytes: 2048 * MIB,
            max_encrypted_bytes: 2048 * MIB,
            quota_bytes_per_user: 20 * 1024 * MIB,
            max_pending_uploads_per_user: 16,
            upload_expiry_secs: 24 * 3600,
            unreferenced_ttl_secs: 24 * 3600,
            transfer_idle_timeout_secs: 60,
            // 50 megapixels: a large phone camera photo; decoded as RGBA it
            // takes 200 MB, which bounds a thumbnail worker's memory.
            max_image_pixels: 50_000_000,
            thumbnail_max_side: 320,
            thumbnail_timeout_secs: 10,
            thumbnail_workers: 2,
            max_filename_chars: 255,
        }
    }
}

impl MediaConfig {
    /// The largest upload of any kind: the bound for a body whose kind is
    /// not known yet.
    #[must_use]
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_image_bytes
            .max(self.max_video_bytes)
            .max(self.max_file_bytes)
            .max(self.max_encrypted_bytes)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 14] = [
            ("media.max_image_bytes", self.max_image_bytes),
            ("media.max_video_bytes", self.max_video_bytes),
            ("media.max_file_bytes", self.max_file_bytes),
            ("media.max_encrypted_bytes", self.max_encrypted_bytes),
            ("media.quota_bytes_per_user", self.quota_bytes_per_user),
            (
                "media.max_pending_uploads_per_user",
                self.max_pending_uploads_per_user,
            ),
            ("media.upload_expiry_secs", self.upload_expiry_secs),
            ("media.unreferenced_ttl_secs", self.unreferenced_ttl_secs),
            (
                "media.transfer_idle_timeout_secs",
                self.transfer_idle_timeout_secs,
            ),
            ("media.max_image_pixels", self.max_image_pixels),
            (
                "media.thumbnail_max_side",
                u64::from(self.thumbnail_max_side),
            ),
            ("media.thumbnail_timeout_secs", self.thumbnail_timeout_secs),
            ("media.thumbnail_workers", self.thumbnail_workers),
            ("media.max_filename_chars", self.max_filename_chars),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    problem: "must be greater than zero".to_owned(),
                });
            }
        }
        Ok(())
    }
}

impl PushConfig {
    /// An enabled FCM or APNs provider has every key it needs, and its
    /// endpoints are URLs. (The key files are read, and checked, at start.)
    fn validate_mobile(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        fn url(key: &'static str, value: &str) -> Result<(), ConfigError> {
            match reqwest::Url::parse(value) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
                _ => Err(invalid(key, "must be an https:// URL")),
            }
        }
        fn required(key: &'static str, value: Option<&str>, why: &str) -> Result<(), ConfigError> {
            match value {
                Some(v) if !v.trim().is_empty() => Ok(()),
                _ => Err(invalid(key, format!("must be set when {why} is on"))),
            }
        }
        if self.fcm.enabled {
            if self.fcm.service_account_file.is_none() {
                return Err(invalid(
                    "push.fcm.service_account_file",
                    "must be set when push.fcm.enabled is on (the service account's JSON key file)",
                ));
            }
            url("push.fcm.endpoint", &self.fcm.endpoint)?;
        }
        if self.apns.enabled {
            let apns = &self.apns;
            if apns.key_file.is_none() {
                return Err(invalid(
                    "push.apns.key_file",
                    "must be set when push.apns.enabled is on (the .p8 signing key)",
                ));
            }
            let why = "push.apns.enabled";
            required("push.apns.key_id", apns.key_id.as_deref(), why)?;
            required("push.apns.team_id", apns.team_id.as_deref(), why)?;
            required("push.apns.topic", apns.topic.as_deref(), why)?;
            url("push.apns.endpoint", &apns.endpoint)?;
            url("push.apns.sandbox_endpoint", &apns.sandbox_endpoint)?;
        }
        Ok(())
    }
}

/// End-to-end encryption: the bounds of the MLS delivery service (key
/// directory, commits, device inboxes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct E2eeConfig {
    /// When true, creating a plaintext chat is refused (403 `encryption_required`).
    pub require_encryption: bool,
    /// KeyPackages one publish may carry.
    pub key_package_batch_max: u64,
    /// One-time KeyPackages a device may keep on file.
    pub key_packages_max_per_device: u64,
    /// Largest KeyPackage, in bytes (the post-quantum suite's are about 2.7 KB).
    pub key_package_max_bytes: u64,
    /// Below this many one-time packages, the device is asked to publish more.
    pub key_package_low_water: u64,
    /// Largest commit, in bytes (a post-quantum commit at 1,000 members is over 1 MB).
    pub commit_max_bytes: u64,
    /// Largest Welcome, in bytes.
    pub welcome_max_bytes: u64,
    /// Largest sealed handover payload, in bytes.
    pub handover_max_bytes: u64,
    /// Items a device inbox may hold before further ones are refused.
    pub inbox_max_items: u64,
    /// KeyPackage claims per user per minute.
    pub claims_per_minute: u64,
}

impl Default for E2eeConfig {
    fn default() -> Self {
        Self {
            require_encryption: false,
            key_package_batch_max: 100,
            key_packages_max_per_device: 500,
            key_package_max_bytes: 16384,
            key_package_low_water: 10,
            commit_max_bytes: 4 * MIB,
            welcome_max_bytes: 4 * MIB,
            handover_max_bytes: 64 * 1024,
            inbox_max_items: 1000,
            claims_per_minute: 120,
        }
    }
}

impl E2eeConfig {
    /// The largest JSON body of the end-to-end encryption routes that carry
    /// MLS bytes: a commit and its Welcome, a full KeyPackage batch or a
    /// handover, in base64 (4 bytes per 3), plus room for the rest of the
    /// body (64 KiB: device ids, keys, names).
    #[must_use]
    pub fn max_body_bytes(&self) -> usize {
        let base64 = |n: u64| n.saturating_add(2) / 3 * 4;
        let batch = self
            .key_package_batch_max
            .saturating_add(1)
            .saturating_mul(self.key_package_max_bytes);
        let largest = base64(self.commit_max_bytes.saturating_add(self.welcome_max_bytes))
            .max(base64(batch))
            .max(base64(self.handover_max_bytes));
        usize::try_from(largest.saturating_add(64 * 1024)).unwrap_or(usize::MAX)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 8] = [
            ("e2ee.key_package_batch_max", self.key_package_batch_max),
            (
                "e2ee.key_packages_max_per_device",
                self.key_packages_max_per_device,
            ),
            ("e2ee.key_package_max_bytes", self.key_package_max_bytes),
            ("e2ee.commit_max_bytes", self.commit_max_bytes),
            ("e2ee.welcome_max_bytes", self.welcome_max_bytes),
            ("e2ee.handover_max_bytes", self.handover_max_bytes),
            ("e2ee.inbox_max_items", self.inbox_max_items),
            ("e2ee.claims_per_minute", self.claims_per_minute),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    problem: "must be greater than zero".to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or a value could not be parsed.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value parsed but is not acceptable.
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid {
        /// The dotted key, as in the TOML file.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// The bucket of `blobs = "s3://bucket"`.
fn s3_bucket(blobs: &str) -> Option<&str> {
    let bucket = blobs.strip_prefix("s3://")?.trim_end_matches('/');
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    ok.then_some(bucket)
}

impl Config {
    /// The bucket of `blobs`, when media go to S3.
    #[must_use]
    pub fn s3_bucket(&self) -> Option<&str> {
        self.blobs.as_deref().and_then(s3_bucket)
    }

    /// The scale-out keys: all of a cluster or none of it, never half.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        let is_postgres = |url: &str| {
            reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "postgres" | "postgresql"))
        };
        // The URLs may hold a password: never repeated.
        if let Some(url) = &self.store.url
            && !is_postgres(url.expose())
        {
            return Err(invalid(
                "store.url",
                "must be postgres://user:password@host:port/dbname",
            ));
        }
        if self.store.chat_urls.is_some() {
            let chats = self.store.chat_urls();
            if self.store.url.is_none() {
                return Err(invalid(
                    "store.chat_urls",
                    "needs store.url, the accounts database",
                ));
            }
            if chats.is_empty() || !chats.iter().all(|u| is_postgres(u)) {
                return Err(invalid(
                    "store.chat_urls",
                    "must be postgres://user:password@host:port/dbname URLs separated by commas",
                ));
            }
            if chats
                .iter()
                .enumerate()
                .any(|(i, u)| chats[..i].contains(u))
            {
                return Err(invalid(
                    "store.chat_urls",
                    "names one database twice: each chat database is listed once",
                ));
            }
        }
        if let Some(bus) = &self.bus {
            for url in bus.split(',').map(str::trim) {
                match reqwest::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "nats" | "tls") && u.has_host() => {}
                    _ => {
                        return Err(invalid(
                            "bus",
                            "must be nats://host:port (or tls://host:port), several separated by commas",
                        ));
                    }
                }
            }
            if !self.store.is_shared() {
                return Err(invalid(
                    "store",
                    "must be a shared store when `bus` is set: with the embedded store every \
                     node would keep its own accounts and chats. Unset `bus` to run one node",
                ));
            }
            if self.blobs.is_none() {
                return Err(invalid(
                    "blobs",
                    "must be set (s3://bucket) when `bus` is set: media kept in one node's data \
                     directory cannot be read through the others",
                ));
            }
        }
        if self.nats.prefix.is_empty()
            || !self
                .nats
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "nats.prefix",
                "must be letters, digits, `_` or `-` (it names subjects and a bucket)",
            ));
        }
        let s3 = &self.s3;
        match &self.blobs {
            Some(blobs) => {
                if s3_bucket(blobs).is_none() {
                    return Err(invalid(
                        "blobs",
                        "must be s3://bucket (3 to 63 lowercase letters, digits, `-` or `.`)",
                    ));
                }
                if s3.access_key_id.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid(
                        "s3.access_key_id",
                        "must be set when blobs = \"s3://…\"",
                    ));
                }
                if s3
                    .secret_access_key
                    .as_ref()
                    .is_none_or(|k| k.expose().is_empty())
                {
                    return Err(invalid(
                        "s3.secret_access_key",
                        "must be set when blobs = \"s3://…\"",
                    ));
                }
                if s3.region.is_empty() {
                    return Err(invalid("s3.region", "must not be empty"));
                }
                if let Some(endpoint) = &s3.endpoint {
                    match reqwest::Url::parse(endpoint) {
                        Ok(u) if u.scheme() == "https" && u.has_host() => {}
                        Ok(u) if u.scheme() == "http" && u.has_host() => {
                            if !s3.allow_http {
                                return Err(invalid(
                                    "s3.endpoint",
                                    "is plain http://: set s3.allow_http = true if that is meant                                      (a private network only)",
                                ));
                            }
                        }
                        _ => {
                            return Err(invalid(
                                "s3.endpoint",
                                "must be an https:// (or, with s3.allow_http, http://) URL",
                            ));
                        }
                    }
                }
            }
            None => {
                let set = [
                    ("s3.endpoint", s3.endpoint.is_some()),
                    ("s3.access_key_id", s3.access_key_id.is_some()),
                    ("s3.secret_access_key", s3.secret_access_key.is_some()),
                ];
                if let Some((key, _)) = set.into_iter().find(|(_, set)| *set) {
                    return Err(invalid(
                        key,
                        "is only used with blobs = \"s3://bucket\", which is not set",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Loads the file (if given), then `NATTER_*` variables from `env`, and validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key at fault.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Start from the defaults so a partial override (one field of a nested
        // table) merges into them instead of replacing the table.
        let mut figment = Figment::from(Serialized::defaults(Self::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Parse(format!(
                    "the configuration file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only our own variables, from a list the caller gives, so tests can pass
        // an environment of their own.
        let vars = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("NATTER_"))
            .collect();
        figment = figment.merge(EnvVars { vars });
        let config: Self = figment
            .extract()
            .map_err(|e| ConfigError::Parse(describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that parse but make no sense.
    ///
    /// # Errors
    /// A [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        if let Some(url) = &self.sms_webhook_url {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                _ => {
                    return Err(invalid(
                        "sms_webhook_url",
                        "must be an http:// or https:// URL",
                    ));
                }
            }
        }
        match (self.signup_mode(), self.sms_webhook_url.is_some()) {
            (SignupMode::Sms, false) => {
                return Err(invalid(
                    "sms_webhook_url",
                    "must be set when signup.mode is \"sms\" (the gateway codes are POSTed to)",
                ));
            }
            (mode @ (SignupMode::Invite | SignupMode::Open), true) => {
                return Err(invalid(
                    "sms_webhook_url",
                    format!(
                        "is only used with signup.mode = \"sms\", but signup.mode is \"{}\"; \
                         remove it or set signup.mode = \"sms\"",
                        mode.as_str()
                    ),
                ));
            }
            _ => {}
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "tls.key_file",
                    "must be set when tls.cert_file is (TLS needs both)",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls.cert_file",
                    "must be set when tls.key_file is (TLS needs both)",
                ));
            }
            _ => {}
        }
        self.validate_cluster()?;
        // `log` is checked by the binary, which owns the log subscriber.
        let positive: [(&'static str, u64); 65] = [
            ("store.pool_size", self.store.pool_size as u64),
            (
                "store.connect_timeout_secs",
                self.store.connect_timeout_secs,
            ),
            ("nats.presence_ttl_secs", self.nats.presence_ttl_secs),
            ("nats.presence_replicas", self.nats.presence_replicas),
            ("nats.connect_timeout_secs", self.nats.connect_timeout_secs),
            (
                "verification.code_ttl_secs",
                self.verification.code_ttl_secs,
            ),
            (
                "verification.max_attempts",
                u64::from(self.verification.max_attempts),
            ),
            ("sms.timeout_secs", self.sms.timeout_secs),
            ("store.read_connections", self.store.read_connections as u64),
            ("store.write_batch_max", self.store.write_batch_max as u64),
            ("store.write_queue", self.store.write_queue as u64),
            ("store.chat_cache_max", self.store.chat_cache_max as u64),
            ("store.receipt_flush_ms", self.store.receipt_flush_ms),
            (
                "store.search_index_batch",
                self.store.search_index_batch as u64,
            ),
            (
                "store.search_index_poll_ms",
                self.store.search_index_poll_ms,
            ),
            ("limits.max_body_bytes", self.limits.max_body_bytes as u64),
            ("limits.max_json_depth", self.limits.max_json_depth as u64),
            ("limits.max_name_chars", self.limits.max_name_chars as u64),
            ("limits.max_about_chars", self.limits.max_about_chars as u64),
            (
                "limits.max_device_name_chars",
                self.limits.max_device_name_chars as u64,
            ),
            (
                "limits.max_devices_per_user",
                self.limits.max_devices_per_user as u64,
            ),
            (
                "limits.max_contacts_per_user",
                self.limits.max_contacts_per_user as u64,
            ),
            (
                "limits.max_discover_phones",
                self.limits.max_discover_phones as u64,
            ),
            (
                "limits.request_timeout_secs",
                self.limits.request_timeout_secs,
            ),
            (
                "limits.header_read_timeout_secs",
                self.limits.header_read_timeout_secs,
            ),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip as u64,
            ),
            (
                "limits.max_group_members",
                self.limits.max_group_members as u64,
            ),
            (
                "limits.max_chat_name_chars",
                self.limits.max_chat_name_chars as u64,
            ),
            (
                "limits.max_message_chars",
                self.limits.max_message_chars as u64,
            ),
            (
                "limits.max_ciphertext_bytes",
                self.limits.max_ciphertext_bytes as u64,
            ),
            (
                "limits.max_client_message_id_chars",
                self.limits.max_client_message_id_chars as u64,
            ),
            ("limits.max_page_size", self.limits.max_page_size as u64),
            ("limits.edit_window_secs", self.limits.edit_window_secs),
            (
                "limits.max_sync_updates",
                self.limits.max_sync_updates as u64,
            ),
            ("limits.max_sync_chats", self.limits.max_sync_chats as u64),
            ("limits.sync_page_size", self.limits.sync_page_size as u64),
            ("limits.ws_queue_depth", self.limits.ws_queue_depth as u64),
            (
                "limits.presence_group_max_members",
                self.limits.presence_group_max_members as u64,
            ),
            (
                "limits.ws_max_message_bytes",
                self.limits.ws_max_message_bytes as u64,
            ),
            (
                "limits.ws_read_buffer_bytes",
                self.limits.ws_read_buffer_bytes as u64,
            ),
            (
                "limits.ws_write_buffer_bytes",
                self.limits.ws_write_buffer_bytes as u64,
            ),
            (
                "limits.ws_auth_timeout_secs",
                self.limits.ws_auth_timeout_secs,
            ),
            (
                "limits.ws_ping_interval_secs",
                self.limits.ws_ping_interval_secs,
            ),
            (
                "limits.ws_idle_timeout_secs",
                self.limits.ws_idle_timeout_secs,
            ),
            (
                "limits.max_search_query_chars",
                self.limits.max_search_query_chars as u64,
            ),
            (
                "limits.max_search_terms",
                self.limits.max_search_terms as u64,
            ),
            (
                "limits.max_search_page_size",
                self.limits.max_search_page_size as u64,
            ),
            (
                "limits.max_search_offset",
                self.limits.max_search_offset as u64,
            ),
            (
                "limits.max_push_endpoint_chars",
                self.limits.max_push_endpoint_chars as u64,
            ),
            (
                "limits.push_queue_depth",
                self.limits.push_queue_depth as u64,
            ),
            (
                "limits.invitation_ttl_secs",
                self.limits.invitation_ttl_secs,
            ),
            (
                "limits.max_pending_invitations_per_user",
                self.limits.max_pending_invitations_per_user as u64,
            ),
            (
                "limits.max_pending_invitations_per_chat",
                self.limits.max_pending_invitations_per_chat as u64,
            ),
            ("push.coalesce_ms", self.push.coalesce_ms),
            ("push.max_attempts", u64::from(self.push.max_attempts)),
            ("push.backoff_base_ms", self.push.backoff_base_ms),
            ("push.backoff_max_secs", self.push.backoff_max_secs),
            ("push.request_timeout_secs", self.push.request_timeout_secs),
            (
                "push.max_response_bytes",
                self.push.max_response_bytes as u64,
            ),
            ("push.ttl_secs", self.push.ttl_secs),
            ("push.concurrency", self.push.concurrency as u64),
            ("push.preview_chars", self.push.preview_chars as u64),
            ("push.fcm.timeout_secs", self.push.fcm.timeout_secs),
            ("push.apns.timeout_secs", self.push.apns.timeout_secs),
            ("web.cors_max_age_secs", self.web.cors_max_age_secs),
        ];
        // The listener's connection bounds (kept apart so the list above
        // does not change length with every new key).
        let connection_bounds = [
            ("limits.idle_timeout_secs", self.limits.idle_timeout_secs),
            ("limits.write_timeout_secs", self.limits.write_timeout_secs),
            (
                "limits.http2_keep_alive_interval_secs",
                self.limits.http2_keep_alive_interval_secs,
            ),
            (
                "limits.http2_keep_alive_timeout_secs",
                self.limits.http2_keep_alive_timeout_secs,
            ),
            (
                "limits.max_header_bytes",
                self.limits.max_header_bytes as u64,
            ),
        ];
        for (key, value) in positive.into_iter().chain(connection_bounds) {
            if value == 0 {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        let subject = &self.push.vapid_subject;
        let subject_ok = subject
            .strip_prefix("mailto:")
            .is_some_and(|a| a.contains('@'))
            || reqwest::Url::parse(subject).is_ok_and(|u| u.scheme() == "https" && u.has_host());
        if !subject_ok {
            return Err(invalid(
                "push.vapid_subject",
                "must be a mailto: address or an https:// URL",
            ));
        }
        if self.push.preview_chars > MAX_PREVIEW_CHARS {
            return Err(invalid(
                "push.preview_chars",
                format!("must be at most {MAX_PREVIEW_CHARS} (a push carries at most 4 KiB)"),
            ));
        }
        if self.push.backoff_base_ms > self.push.backoff_max_secs.saturating_mul(1000) {
            return Err(invalid(
                "push.backoff_base_ms",
                "must not be longer than push.backoff_max_secs",
            ));
        }
        self.push.validate_mobile()?;
        let rates = [
            (
                "rate_limits.verification_per_phone",
                self.rate_limits.verification_per_phone,
            ),
            (
                "rate_limits.verification_per_ip",
                self.rate_limits.verification_per_ip,
            ),
            (
                "rate_limits.verification_per_network",
                self.rate_limits.verification_per_network,
            ),
            (
                "rate_limits.verification_per_prefix",
                self.rate_limits.verification_per_prefix,
            ),
            (
                "rate_limits.verification_per_country",
                self.rate_limits.verification_per_country,
            ),
            (
                "rate_limits.push_channels_per_user",
                self.rate_limits.push_channels_per_user,
            ),
            (
                "rate_limits.chats_created_per_minute",
                self.rate_limits.chats_created_per_minute,
            ),
            (
                "rate_limits.chats_created_per_day",
                self.rate_limits.chats_created_per_day,
            ),
            (
                "rate_limits.participants_added_per_minute",
                self.rate_limits.participants_added_per_minute,
            ),
            (
                "rate_limits.participants_added_per_day",
                self.rate_limits.participants_added_per_day,
            ),
            (
                "rate_limits.verification_global",
                self.rate_limits.verification_global,
            ),
            (
                "rate_limits.code_attempts_per_ip",
                self.rate_limits.code_attempts_per_ip,
            ),
            (
                "rate_limits.discover_per_user",
                self.rate_limits.discover_per_user,
            ),
            (
                "rate_limits.contact_add_per_user",
                self.rate_limits.contact_add_per_user,
            ),
            (
                "rate_limits.typing_per_device",
                self.rate_limits.typing_per_device,
            ),
            (
                "rate_limits.presence_per_device",
                self.rate_limits.presence_per_device,
            ),
            (
                "rate_limits.messages_per_user",
                self.rate_limits.messages_per_user,
            ),
            (
                "rate_limits.uploads_per_user",
                self.rate_limits.uploads_per_user,
            ),
            (
                "rate_limits.ws_sync_per_connection",
                self.rate_limits.ws_sync_per_connection,
            ),
            (
                "rate_limits.ws_sync_per_user",
                self.rate_limits.ws_sync_per_user,
            ),
            (
                "rate_limits.ws_send_per_connection",
                self.rate_limits.ws_send_per_connection,
            ),
            (
                "rate_limits.ws_ack_per_connection",
                self.rate_limits.ws_ack_per_connection,
            ),
            (
                "rate_limits.ws_ack_writes_per_user",
                self.rate_limits.ws_ack_writes_per_user,
            ),
            (
                "rate_limits.ws_read_per_connection",
                self.rate_limits.ws_read_per_connection,
            ),
            (
                "rate_limits.ws_read_per_user",
                self.rate_limits.ws_read_per_user,
            ),
            (
                "rate_limits.ws_typing_per_connection",
                self.rate_limits.ws_typing_per_connection,
            ),
            (
                "rate_limits.ws_typing_per_user",
                self.rate_limits.ws_typing_per_user,
            ),
            (
                "rate_limits.ws_presence_per_connection",
                self.rate_limits.ws_presence_per_connection,
            ),
            (
                "rate_limits.ws_presence_per_user",
                self.rate_limits.ws_presence_per_user,
            ),
            (
                "rate_limits.ws_join_chat_per_connection",
                self.rate_limits.ws_join_chat_per_connection,
            ),
            (
                "rate_limits.ws_join_chat_per_user",
                self.rate_limits.ws_join_chat_per_user,
            ),
            (
                "rate_limits.ws_ping_per_connection",
                self.rate_limits.ws_ping_per_connection,
            ),
            (
                "rate_limits.ws_ping_per_user",
                self.rate_limits.ws_ping_per_user,
            ),
            (
                "rate_limits.ws_malformed_per_connection",
                self.rate_limits.ws_malformed_per_connection,
            ),
            (
                "rate_limits.ws_malformed_per_user",
                self.rate_limits.ws_malformed_per_user,
            ),
            (
                "rate_limits.ws_refusals_per_connection",
                self.rate_limits.ws_refusals_per_connection,
            ),
        ];
        self.media.validate()?;
        self.e2ee.validate()?;
        self.web.validate()?;
        for (key, rate) in rates {
            if rate.burst == 0 || rate.per_secs == 0 {
                return Err(invalid(key, "needs burst and per_secs greater than zero"));
            }
        }
        Ok(())
    }

    /// The sign-up mode in force: `signup.mode`, or, unset, `sms` with a
    /// gateway and `open` without.
    #[must_use]
    pub fn signup_mode(&self) -> SignupMode {
        self.signup
            .mode
            .unwrap_or(if self.sms_webhook_url.is_some() {
                SignupMode::Sms
            } else {
                SignupMode::Open
            })
    }

    /// The request timeout as a duration.
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.request_timeout_secs)
    }
}

/// The longest preview excerpt: four bytes a character stays well inside
/// the 4096 bytes push services accept.
const MAX_PREVIEW_CHARS: usize = 500;

/// Renders a figment error with the key and where the value came from.
fn describe(error: &figment::Error) -> String {
    let mut out = Vec::new();
    for e in error.clone() {
        let key = if e.path.is_empty() {
            String::from("(top level)")
        } else {
            e.path.join(".")
        };
        let source = e
            .metadata
            .as_ref()
            .map(|m| match &m.source {
                Some(src) => format!(" (from {} {src})", m.name),
                // Name the variable to fix, not just "the environment".
                None if m.name == ENV_SOURCE && !e.path.is_empty() => format!(
                    " (from environment variable NATTER_{})",
                    e.path.join("__").to_uppercase()
                ),
                None => format!(" (from {})", m.name),
            })
            .unwrap_or_default();
        out.push(format!("`{key}`: {}{source}", e.kind));
    }
    out.join("; ")
}

/// How figment names values that came from `NATTER_*` variables.
const ENV_SOURCE: &str = "environment variable";

/// `NATTER_*` variables as a figment provider, fed from an explicit list
/// rather than the process environment, so callers (and tests) decide what it
/// sees. `__` separates nested keys.
struct EnvVars {
    vars: Vec<(String, String)>,
}

impl figment::Provider for EnvVars {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(ENV_SOURCE)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (key, value) in &self.vars {
            let Some(rest) = key.strip_prefix("NATTER_") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            if path.iter().any(String::is_empty) {
                return Err(figment::Error::from(format!(
                    "malformed variable name {key}"
                )));
            }
            let parsed: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            insert_path(&mut dict, &path, parsed);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = figment::value::Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = figment::value::Value::from(inner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn error_of(vars: &[(&str, &str)]) -> String {
        Config::load(None, env(vars)).unwrap_err().to_string()
    }

    #[test]
    fn a_half_configured_cluster_is_refused_naming_the_key() {
        let s3 = [
            ("NATTER_BLOBS", "s3://natter-media"),
            ("NATTER_S3__ACCESS_KEY_ID", "id"),
            ("NATTER_S3__SECRET_ACCESS_KEY", "secret"),
        ];
        // A bus with the embedded store: every node would have its own data.
        let e = error_of(&[("NATTER_BUS", "nats://127.0.0.1:4222")]);
        assert!(e.contains("`store`") && e.contains("shared store"), "{e}");
        let e = error_of(&[("NATTER_BUS", "http://127.0.0.1:4222")]);
        assert!(e.contains("`bus`"), "{e}");
        // S3 without credentials, or with half of them.
        let e = error_of(&[("NATTER_BLOBS", "s3://natter-media")]);
        assert!(e.contains("`s3.access_key_id`"), "{e}");
        let e = error_of(&s3[..2]);
        assert!(e.contains("`s3.secret_access_key`"), "{e}");
        let e = error_of(&[("NATTER_BLOBS", "s3://Bad_Bucket")]);
        assert!(e.contains("`blobs`"), "{e}");
        let e = error_of(&[("NATTER_BLOBS", "/var/media")]);
        assert!(e.contains("`blobs`"), "{e}");
        // S3 keys without `blobs` are a mistake, not ignored.
        let e = error_of(&[("NATTER_S3__ENDPOINT", "https://s3.example.com")]);
        assert!(e.contains("`s3.endpoint`") && e.contains("blobs"), "{e}");
        // A plain http endpoint only when asked for.
        let mut vars = s3.to_vec();
        vars.push(("NATTER_S3__ENDPOINT", "http://127.0.0.1:9000"));
        let e = error_of(&vars);
        assert!(
            e.contains("`s3.endpoint`") && e.contains("allow_http"),
            "{e}"
        );
        vars.push(("NATTER_S3__ALLOW_HTTP", "true"));
        let c = Config::load(None, env(&vars)).unwrap();
        assert_eq!(c.s3_bucket(), Some("natter-media"));
        // The secret never shows in a debug dump of the configuration.
        assert!(!format!("{c:?}").contains("secret\""), "{c:?}");
        // A PostgreSQL store: a URL of that scheme, its password kept out
        // of debug dumps; the sizes positive.
        let e = error_of(&[("NATTER_STORE__URL", "mysql://db/natter")]);
        assert!(e.contains("`store.url`") && !e.contains("mysql"), "{e}");
        let e = error_of(&[
            ("NATTER_STORE__URL", "postgres://natter@db/natter"),
            ("NATTER_STORE__POOL_SIZE", "0"),
        ]);
        assert!(e.contains("`store.pool_size`"), "{e}");
        let c = Config::load(
            None,
            env(&[(
                "NATTER_STORE__URL",
                "postgres://natter:hunter2@db:5432/natter",
            )]),
        )
        .unwrap();
        assert!(c.store.is_shared());
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
        assert!(
            c.store.chat_urls().is_empty(),
            "the chats live in store.url"
        );
        // Chat databases: PostgreSQL URLs, each once, beside store.url.
        let accounts = ("NATTER_STORE__URL", "postgres://natter@db/accounts");
        let e = error_of(&[("NATTER_STORE__CHAT_URLS", "postgres://natter@db/chats")]);
        assert!(
            e.contains("`store.chat_urls`") && e.contains("store.url"),
            "{e}"
        );
        let e = error_of(&[
            accounts,
            ("NATTER_STORE__CHAT_URLS", "postgres://a:pw@db/c, mysql://b"),
        ]);
        assert!(e.contains("`store.chat_urls`") && !e.contains("pw"), "{e}");
        let e = error_of(&[accounts, ("NATTER_STORE__CHAT_URLS", " , ")]);
        assert!(e.contains("`store.chat_urls`"), "{e}");
        let e = error_of(&[
            accounts,
            (
                "NATTER_STORE__CHAT_URLS",
                "postgres://db/c1, postgres://db/c1",
            ),
        ]);
        assert!(
            e.contains("`store.chat_urls`") && e.contains("twice"),
            "{e}"
        );
        let c = Config::load(
            None,
            env(&[
                accounts,
                (
                    "NATTER_STORE__CHAT_URLS",
                    "postgres://natter@db/accounts, postgres://natter:hunter3@db2/chats",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.store.chat_urls(),
            [
                "postgres://natter@db/accounts",
                "postgres://natter:hunter3@db2/chats"
            ]
        );
        assert!(!format!("{c:?}").contains("hunter3"), "{c:?}");
        let e = error_of(&[("NATTER_NATS__PREFIX", "a.b")]);
        assert!(e.contains("`nats.prefix`"), "{e}");
        let e = error_of(&[("NATTER_NATS__PRESENCE_TTL_SECS", "0")]);
        assert!(e.contains("`nats.presence_ttl_secs`"), "{e}");
        // The embedded default is untouched.
        let c = Config::load(None, env(&[])).unwrap();
        assert!(c.bus.is_none() && c.blobs.is_none() && c.s3_bucket().is_none());
    }

    #[test]
    fn no_configuration_gives_the_documented_defaults() {
        let c = Config::load(None, env(&[("HOME", "/root"), ("PATH", "/bin")])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./natter-data"));
        assert!(c.sms_webhook_url.is_none());
        assert_eq!(c.verification.code_ttl_secs, 300);
        assert_eq!(c.verification.max_attempts, 5);
    }

    #[test]
    fn the_fixed_environment_names_work() {
        let c = Config::load(
            None,
            env(&[
                ("NATTER_LISTEN", "0.0.0.0:9000"),
                ("NATTER_DATA_DIR", "/var/lib/natter"),
                ("NATTER_SMS_WEBHOOK_URL", "https://sms.example.com/hook"),
                ("NATTER_LIMITS__MAX_BODY_BYTES", "131072"),
                ("NATTER_RATE_LIMITS__VERIFICATION_PER_PHONE__BURST", "9"),
                ("NATTER_TRUST_FORWARDED_FOR", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/natter"));
        assert_eq!(
            c.sms_webhook_url.as_deref(),
            Some("https://sms.example.com/hook")
        );
        assert_eq!(c.limits.max_body_bytes, 131_072);
        assert_eq!(c.rate_limits.verification_per_phone.burst, 9);
        assert_eq!(
            c.rate_limits.verification_per_phone.per_secs, 3600,
            "siblings keep defaults"
        );
        assert!(c.trust_forwarded_for);
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(error_of(&[("NATTER_LISTEN", "nonsense")]).contains("`listen`"));
        assert!(
            error_of(&[("NATTER_LIMITS__MAX_BODY_BYTES", "lots")])
                .contains("`limits.max_body_bytes`")
        );
        assert!(
            error_of(&[("NATTER_LIMITS__MAX_BODY_BYTES", "0")]).contains("`limits.max_body_bytes`")
        );
        assert!(error_of(&[("NATTER_SMS_WEBHOOK_URL", "ftp://x")]).contains("`sms_webhook_url`"));
        assert!(error_of(&[("NATTER_LISTN", "127.0.0.1:1")]).contains("listn"));
        assert!(
            error_of(&[("NATTER_PUSH__VAPID_SUBJECT", "admin")]).contains("`push.vapid_subject`")
        );
        assert!(error_of(&[("NATTER_PUSH__COALESCE_MS", "0")]).contains("`push.coalesce_ms`"));
        assert!(
            error_of(&[("NATTER_PUSH__PREVIEW_CHARS", "501")]).contains("`push.preview_chars`")
        );
        assert!(
            error_of(&[("NATTER_RATE_LIMITS__DISCOVER_PER_USER__BURST", "0")])
                .contains("`rate_limits.discover_per_user`")
        );
        for (var, key) in [
            (
                "NATTER_LIMITS__IDLE_TIMEOUT_SECS",
                "`limits.idle_timeout_secs`",
            ),
            (
                "NATTER_LIMITS__WRITE_TIMEOUT_SECS",
                "`limits.write_timeout_secs`",
            ),
            (
                "NATTER_LIMITS__HTTP2_KEEP_ALIVE_INTERVAL_SECS",
                "`limits.http2_keep_alive_interval_secs`",
            ),
            (
                "NATTER_LIMITS__HTTP2_KEEP_ALIVE_TIMEOUT_SECS",
                "`limits.http2_keep_alive_timeout_secs`",
            ),
            (
                "NATTER_LIMITS__MAX_HEADER_BYTES",
                "`limits.max_header_bytes`",
            ),
            (
                "NATTER_RATE_LIMITS__VERIFICATION_PER_NETWORK__BURST",
                "`rate_limits.verification_per_network`",
            ),
            (
                "NATTER_RATE_LIMITS__VERIFICATION_PER_PREFIX__PER_SECS",
                "`rate_limits.verification_per_prefix`",
            ),
            (
                "NATTER_RATE_LIMITS__VERIFICATION_PER_COUNTRY__BURST",
                "`rate_limits.verification_per_country`",
            ),
            (
                "NATTER_RATE_LIMITS__PUSH_CHANNELS_PER_USER__BURST",
                "`rate_limits.push_channels_per_user`",
            ),
        ] {
            assert!(error_of(&[(var, "0")]).contains(key), "{var}");
        }
    }

    #[test]
    fn cors_origins_must_be_origins() {
        let ok = |origins: &[&str]| {
            let mut c = Config::default();
            c.web.cors_origins = origins.iter().map(|o| (*o).to_owned()).collect();
            c.web.validate()
        };
        assert!(ok(&[]).is_ok());
        assert!(ok(&["https://chat.example.org", "http://127.0.0.1:5173"]).is_ok());
        for bad in [
            "*",
            "chat.example.org",
            "https://chat.example.org/",
            "https://chat.example.org/app",
            "ftp://chat.example.org",
            "https://user@chat.example.org",
            "https://CHAT.example.org",
        ] {
            let e = ok(&[bad]).unwrap_err().to_string();
            assert!(e.contains("web.cors_origins"), "{bad}: {e}");
        }
        assert!(
            error_of(&[("NATTER_WEB__CORS_MAX_AGE_SECS", "0")]).contains("`web.cors_max_age_secs`")
        );
    }

    #[test]
    fn the_signup_mode_follows_the_gateway_unless_set_and_a_half_configured_one_is_refused() {
        let open = Config::load(None, env(&[])).unwrap();
        assert_eq!(open.signup_mode(), SignupMode::Open);
        let sms = Config::load(
            None,
            env(&[("NATTER_SMS_WEBHOOK_URL", "https://sms.example/h")]),
        );
        assert_eq!(sms.unwrap().signup_mode(), SignupMode::Sms);
        let invite = Config::load(None, env(&[("NATTER_SIGNUP__MODE", "invite")])).unwrap();
        assert_eq!(invite.signup_mode(), SignupMode::Invite);

        let e = error_of(&[("NATTER_SIGNUP__MODE", "sms")]);
        assert!(
            e.contains("`sms_webhook_url`") && e.contains("\"sms\""),
            "{e}"
        );
        let e = error_of(&[
            ("NATTER_SIGNUP__MODE", "invite"),
            ("NATTER_SMS_WEBHOOK_URL", "https://sms.example/h"),
        ]);
        assert!(e.contains("`sms_webhook_url`"), "{e}");
        let e = error_of(&[("NATTER_TLS__CERT_FILE", "/etc/natter/cert.pem")]);
        assert!(e.contains("`tls.key_file`"), "{e}");
        let e = error_of(&[("NATTER_TLS__KEY_FILE", "/etc/natter/key.pem")]);
        assert!(e.contains("`tls.cert_file`"), "{e}");
        let e = error_of(&[("NATTER_SIGNUP__MODE", "closed")]);
        assert!(e.contains("`signup.mode`"), "{e}");
    }

    #[test]
    fn half_configured_mobile_push_names_the_missing_key() {
        let e = error_of(&[("NATTER_PUSH__FCM__ENABLED", "true")]);
        assert!(e.contains("`push.fcm.service_account_file`"), "{e}");
        let e = error_of(&[
            ("NATTER_PUSH__FCM__ENABLED", "true"),
            (
                "NATTER_PUSH__FCM__SERVICE_ACCOUNT_FILE",
                "/etc/natter/fcm.json",
            ),
            ("NATTER_PUSH__FCM__ENDPOINT", "fcm.googleapis.com"),
        ]);
        assert!(e.contains("`push.fcm.endpoint`"), "{e}");
        let e = error_of(&[("NATTER_PUSH__FCM__TIMEOUT_SECS", "0")]);
        assert!(e.contains("`push.fcm.timeout_secs`"), "{e}");

        let mut vars = vec![("NATTER_PUSH__APNS__ENABLED", "true")];
        for (var, key) in [
            ("NATTER_PUSH__APNS__KEY_FILE", "`push.apns.key_file`"),
            ("NATTER_PUSH__APNS__KEY_ID", "`push.apns.key_id`"),
            ("NATTER_PUSH__APNS__TEAM_ID", "`push.apns.team_id`"),
            ("NATTER_PUSH__APNS__TOPIC", "`push.apns.topic`"),
        ] {
            let e = error_of(&vars);
            assert!(e.contains(key), "{e}");
            vars.push((var, "x"));
        }
        Config::load(None, env(&vars)).unwrap();
        vars.push(("NATTER_PUSH__APNS__SANDBOX_ENDPOINT", "nowhere"));
        let e = error_of(&vars);
        assert!(e.contains("`push.apns.sandbox_endpoint`"), "{e}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\ndata_dir = \"/srv/natter\"\n[limits]\nmax_name_chars = 30\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), env(&[("NATTER_LISTEN", "127.0.0.1:7001")])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/srv/natter"));
        assert_eq!(c.limits.max_name_chars, 30);

        std::fs::write(&path, "[limits]\nmax_name_chars = \"many\"\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(e.contains("`limits.max_name_chars`"), "{e}");
        let e = Config::load(Some(&dir.path().join("missing.toml")), env(&[])).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn the_example_file_lists_every_key_with_its_default() {
        fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        leaves(&format!("{prefix}{k}."), v, out);
                    }
                }
                other => out.push((prefix.trim_end_matches('.').to_owned(), other.clone())),
            }
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/natter.example.toml");
        let file: serde_json::Value = Figment::from(Toml::file_exact(&path)).extract().unwrap();
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let (mut in_file, mut in_code) = (Vec::new(), Vec::new());
        leaves("", &file, &mut in_file);
        leaves("", &defaults, &mut in_code);
        // Optional keys (unset by default) are commented out in the file.
        in_code.retain(|(_, v)| !v.is_null());
        in_file.sort_by(|a, b| a.0.cmp(&b.0));
        in_code.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(in_file, in_code);
        // And the file loads as a configuration.
        Config::load(Some(&path), env(&[])).unwrap();
    }
}
