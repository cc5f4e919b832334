//! Start-up and shutdown: open the store, wire the services, bind, serve,
//! and on shutdown drain connections and let the store finish its commits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::blobs::Blobs;
use crate::config::{Config, LogFormat, SignupMode};
use crate::push::vapid::VapidKey;
use crate::push::{PushEngine, PushGateway};
use crate::ratelimit::LocalRateLimiter;
use crate::service::Services;
use crate::sms::{LogSms, NoSms, SmsGateway, WebhookSms};
use crate::store::Store;
use crate::store::postgres::{PgOptions, PgRateLimiter, Postgres};
use crate::store::sqlite::SqliteStore;

/// Where media blobs live inside the data directory (local engine).
pub const BLOB_DIR: &str = "blobs";

/// How often expired codes and idle rate-limit keys are swept.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
/// How long shutdown waits for WebSockets to close (they record last-seen
/// times on the way out, so the store must still be open).
const SOCKETS_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for open requests before closing them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long shutdown waits for the push worker (it gives sends in flight a
/// few seconds; unfinished ones are retried after the next start).
const PUSH_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for the search indexer's pass in flight (one
/// writer job); what it leaves is caught up after the next start.
const INDEXER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Under this name the store keeps the VAPID key pair (PKCS#8), created at
/// first start so push subscriptions keep working across restarts.
const VAPID_SECRET: &str = "vapid_key_pkcs8";

/// The push engine with the server's VAPID key, or `None` when push is off.
async fn push_gateway(
    config: &Config,
    store: &dyn Store,
) -> Result<Option<Arc<dyn PushGateway>>, StartError> {
    if !config.push.enabled {
        return Ok(None);
    }
    // Generated up front (it can fail); stored only if there is no key yet.
    let fresh = VapidKey::generate_pkcs8().map_err(crate::push::PushSetupError::from)?;
    let pkcs8 = store
        .server_secret(VAPID_SECRET, Box::new(move || fresh))
        .await?;
    let gateway = PushEngine::new(&config.push, &config.limits, &pkcs8)?;
    if config.push.allow_private_endpoints {
        tracing::warn!(
            "DEVELOPMENT MODE: push.allow_private_endpoints is on, so devices may make this \
             server send requests to loopback and private addresses. Never run like this in production."
        );
    }
    Ok(Some(Arc::new(gateway)))
}

/// Says, whatever the log filter, that this server signs anyone up and
/// prints their codes: written straight to stderr like the codes themselves
/// (see [`LogSms`]), so `NATTER_LOG=error` cannot hide the danger.
fn announce_open_mode(format: LogFormat) {
    use std::io::Write as _;
    let message = "DEVELOPMENT MODE: signup.mode is \"open\" (no sms_webhook_url is set): \
                   verification codes are PRINTED TO STDERR instead of being sent, so anyone \
                   who can read this output can sign up or log in to any number. Never run \
                   like this in production: set signup.mode = \"sms\" with sms_webhook_url.";
    let line = match format {
        LogFormat::Json => serde_json::json!({
            "timestamp": crate::sms::now_rfc3339(),
            "level": "WARN",
            "target": "natter::signup",
            "fields": {"message": message, "signup_mode": "open"},
        })
        .to_string(),
        LogFormat::Text => format!(
            "{} WARN natter::signup: {message} signup_mode=open",
            crate::sms::now_rfc3339()
        ),
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened or migrated.
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The SMS gateway configuration is unusable.
    #[error("cannot set up the SMS gateway: {0}")]
    Sms(#[from] crate::sms::SmsError),
    /// The blob store could not be opened.
    #[error("cannot open the blob store: {0}")]
    Blobs(#[from] crate::blobs::BlobError),
    /// The bus between nodes (`bus`) could not start.
    #[error("cannot start the bus: {0}")]
    Bus(#[from] crate::bus::NatsBusError),
    /// The TLS certificate or key is unusable; names the key.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The push engine could not start (VAPID key, HTTP client).
    #[error("cannot set up push notifications: {0}")]
    Push(#[from] crate::push::PushSetupError),
}

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    /// Where it listens (the real port when configured with port 0).
    local_addr: SocketAddr,
    /// The TLS certificate in use, reloadable; `None` without TLS.
    certificates: Option<Arc<crate::tls::Certificates>>,
    /// Tells the serving task and housekeeping to stop.
    stop: watch::Sender<bool>,
    /// The serving task; ends after the drain.
    serving: JoinHandle<()>,
    /// Tells the push worker to stop: after the drain, so messages sent by
    /// the last requests still get their outbox entries.
    push_stop: watch::Sender<bool>,
    /// The push delivery worker; ends before the store closes.
    push_worker: JoinHandle<()>,
    /// Tells the search indexer to stop: after the drain, so the last
    /// requests' messages are indexed before the store closes.
    indexer_stop: watch::Sender<bool>,
    /// The search indexer; ends before the store closes.
    indexer: JoinHandle<()>,
    /// The store, closed last so every acknowledged write is committed.
    store: Arc<dyn Store>,
    /// To close live WebSocket connections at shutdown (hyper does not
    /// track upgraded connections).
    services: Services,
}

impl RunningServer {
    /// Opens everything and starts serving.
    ///
    /// # Errors
    /// A [`StartError`] saying what could not be opened.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        // The metrics recorder first: anything recorded before it exists
        // (the push counters' zeros, say) is lost.
        let _ = crate::api::metrics_handle();
        let config = Arc::new(config);
        // Load libphonenumber's metadata now rather than in the first request.
        let _ = tokio::task::spawn_blocking(|| {
            crate::phone::Phone::parse("+14155550123", crate::phone::PhoneValidation::Strict)
        })
        .await;
        // Certificate and key before anything else: a bad file names its key.
        let (tls, certificates) = crate::tls::acceptor(&config.tls)?.unzip();
        // Bind first: a taken port should not leave a new data directory behind.
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;

        let store_config = config.store.clone();
        let data_dir = config.data_dir.clone();
        // PostgreSQL (shared by the nodes of a cluster) or the embedded store.
        let postgres = PgOptions::for_config(&config.store, config.store.pool_size);
        let (store, shared_limits): (Arc<dyn Store>, Option<Postgres>) = match &postgres {
            Some(options) => {
                let pg = Postgres::connect(options)
                    .await
                    .map_err(|e| crate::store::StoreError::unavailable(e.to_string()))?;
                tracing::info!(
                    chat_databases = options.chat_urls.len().max(1),
                    "store: PostgreSQL (migrated)"
                );
                (Arc::new(pg.clone()), Some(pg))
            }
            None => (
                Arc::new(
                    tokio::task::spawn_blocking(move || {
                        SqliteStore::open(&data_dir, &store_config)
                    })
                    .await
                    .map_err(|e| crate::store::StoreError::internal(e.to_string()))??,
                ),
                None,
            ),
        };
        let sms: Arc<dyn SmsGateway> = match &config.sms_webhook_url {
            Some(url) => {
                let gateway = WebhookSms::new(url, Duration::from_secs(config.sms.timeout_secs))?;
                tracing::info!(
                    signup_mode = "sms",
                    gateway = %gateway.host(),
                    "sign-up by SMS code through the configured gateway"
                );
                Arc::new(gateway)
            }
            None if config.signup_mode() == SignupMode::Invite => {
                tracing::info!(
                    signup_mode = "invite",
                    "sign-up by invite only (natter admin invite create); no codes are sent, so \
                     phone numbers are not verified: each is what its invitee says it is"
                );
                Arc::new(NoSms)
            }
            None => {
                announce_open_mode(config.log_format);
                Arc::new(LogSms::new(config.log_format == LogFormat::Json))
            }
        };
        // Shared by every node on PostgreSQL (failing closed); in-process
        // on the embedded store.
        let limiter: Arc<dyn crate::ratelimit::RateLimiter> = match shared_limits {
            Some(pg) => Arc::new(PgRateLimiter::for_config(&pg, &config)),
            None => Arc::new(LocalRateLimiter::for_config(&config)),
        };
        let bus: Arc<dyn crate::bus::Bus> = match &config.bus {
            Some(url) => {
                let bus = crate::bus::NatsBus::connect(crate::bus::NatsOptions {
                    url: url.clone(),
                    prefix: config.nats.prefix.clone(),
                    presence_ttl: Duration::from_secs(config.nats.presence_ttl_secs),
                    presence_replicas: usize::try_from(config.nats.presence_replicas)
                        .unwrap_or(usize::MAX),
                    connect_timeout: Duration::from_secs(config.nats.connect_timeout_secs),
                })
                .await?;
                tracing::info!(prefix = %config.nats.prefix, "routing between nodes over NATS");
                Arc::new(bus)
            }
            None => Arc::new(crate::bus::LocalBus::default()),
        };
        let blobs = Blobs::for_config(&config, &config.data_dir.join(BLOB_DIR))?;
        blobs.check().await?;
        let push = push_gateway(&config, store.as_ref()).await?;
        let services = Services::new(
            Arc::clone(&store),
            bus,
            sms,
            limiter,
            blobs,
            Arc::clone(&config),
            push,
        )
        .await?;

        let (stop, stopped) = watch::channel(false);
        tokio::spawn(housekeeping(services.clone(), stopped.clone()));
        let (push_stop, push_stopped) = watch::channel(false);
        services.describe_push_metrics();
        let push_worker = tokio::spawn(services.clone().run_push_worker(push_stopped));
        let (indexer_stop, indexer_stopped) = watch::channel(false);
        let indexer = tokio::spawn(services.clone().run_search_indexer(indexer_stopped));
        let limits = config.limits.clone();
        let app = crate::api::app(services.clone());
        let serving = tokio::spawn(async move {
            crate::listener::serve(listener, app, &limits, tls, stopped, DRAIN_TIMEOUT).await;
        });
        tracing::info!(
            listen = %local_addr,
            data_dir = %config.data_dir.display(),
            tls = config.tls.cert_file.is_some(),
            "natter is serving"
        );
        Ok(Self {
            local_addr,
            certificates,
            stop,
            serving,
            push_stop,
            push_worker,
            indexer_stop,
            indexer,
            store,
            services,
        })
    }

    /// The address the server listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reads `tls.cert_file` and `tls.key_file` again and serves the new
    /// pair from the next connection on (open connections keep theirs).
    /// On error the pair in use stays, and the error says which file is
    /// wrong. Without TLS there is nothing to do.
    ///
    /// # Errors
    /// The files do not hold a valid certificate and matching key.
    pub fn reload_tls(&self) -> Result<bool, crate::tls::TlsError> {
        match &self.certificates {
            Some(c) => c.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// The services, for what the operator does in-process (tests, and
    /// `natter admin`-style calls on a running server).
    #[must_use]
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Runs one round of housekeeping now (it also runs every minute):
    /// expired codes, old updates, expired and unreferenced uploads.
    pub async fn housekeeping(&self) {
        self.services.sweep().await;
    }

    /// Chat log entries committed but not yet in the search index; 0 once
    /// the indexer has caught up (search is then exact).
    ///
    /// # Errors
    /// The store's failure.
    pub async fn search_index_lag(&self) -> Result<u64, crate::store::StoreError> {
        self.services.search_index_lag().await
    }

    /// Stops accepting, drains open requests (bounded), and closes the store.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        let _ = self.stop.send(true);
        self.services.close_connections(SOCKETS_CLOSE_TIMEOUT).await;
        let mut serving = self.serving;
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut serving)
            .await
            .is_err()
        {
            tracing::warn!("open requests did not finish in time; closing them");
            serving.abort();
        }
        // The worker plans what the last requests queued, lets sends in
        // flight finish (bounded) and records them.
        let _ = self.push_stop.send(true);
        let mut push_worker = self.push_worker;
        if tokio::time::timeout(PUSH_STOP_TIMEOUT, &mut push_worker)
            .await
            .is_err()
        {
            push_worker.abort();
        }
        let _ = self.indexer_stop.send(true);
        let mut indexer = self.indexer;
        if tokio::time::timeout(INDEXER_STOP_TIMEOUT, &mut indexer)
            .await
            .is_err()
        {
            indexer.abort();
        }
        self.store.close().await;
        tracing::info!("stopped");
    }
}

/// Periodic sweeps until shutdown.
async fn housekeeping(services: Services, mut stopped: watch::Receiver<bool>) {
    let metrics = crate::api::metrics_handle();
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                services.sweep().await;
                metrics.run_upkeep();
            }
            _ = stopped.changed() => break,
        }
    }
}
