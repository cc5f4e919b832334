//! One test kit for the server's integration tests, the SDK's tests, the
//! CLI tests and the load tool: [`SmsInbox`] is the operator's SMS gateway
//! (the server POSTs `{"phone","code"}` to its URL, the ordinary
//! `sms_webhook_url`), and [`TestUser::sign_up`] / [`TestUser::log_in`]
//! make accounts through the real API with the SDK's typed calls.
//!
//! # Layout
//! - [`SmsInbox`]: start it, give its [`SmsInbox::url`] to the server,
//!   read codes with [`SmsInbox::wait_for`] (or [`SmsInbox::latest`]),
//!   make it fail or slow down to test the server's handling.
//! - [`TestUser`]: a signed-up account and one device, as an SDK
//!   [`Session`].
//! - [`pg`]: a throwaway PostgreSQL cluster (the one the test command
//!   started, or the test's own) and a database per test cloned from a
//!   migrated template.
//!
//! - [`engines`]: throwaway `nats-server` and S3 servers for the scale-out
//!   tests.
//! - [`balancer`]: a round-robin TCP balancer in front of a cluster's
//!   nodes.
//!
//! Nothing here panics: the load tool ships it; tests unwrap.

pub mod balancer;
pub mod engines;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use natter_client::{Client, ClientError, Session};
use natter_proto::accounts::{LoginRequest, RegisterRequest};
use natter_proto::{DeviceId, UserId};
use tokio::sync::Notify;

pub mod pg;

/// How long a code may take to arrive by default.
pub const WAIT: Duration = Duration::from_secs(10);

/// What can go wrong in the kit.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// The receiver could not listen.
    #[error("the SMS receiver could not listen on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No code arrived for the number in time.
    #[error("no SMS code arrived for {0}: is the server's sms_webhook_url this receiver?")]
    NoCode(String),
    /// An API call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The test PostgreSQL could not be started or used.
    #[error("test PostgreSQL: {0}")]
    Postgres(String),
}

/// The shared state of an [`SmsInbox`].
#[derive(Debug, Default)]
struct InboxState {
    /// Every code received, by number, oldest first.
    codes: Mutex<HashMap<String, Vec<String>>>,
    /// Woken on every code.
    arrived: Notify,
    /// Answer 503 instead of accepting.
    failing: Mutex<bool>,
    /// Wait this long before answering.
    delay: Mutex<Duration>,
}

/// The body the server posts (exactly these two fields).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Sms {
    phone: String,
    code: String,
}

async fn receive(State(state): State<Arc<InboxState>>, body: axum::body::Bytes) -> StatusCode {
    let delay = *state.delay.lock().unwrap_or_else(PoisonError::into_inner);
    tokio::time::sleep(delay).await;
    if *state.failing.lock().unwrap_or_else(PoisonError::into_inner) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    // Anything but exactly `{"phone","code"}` is refused, so a test sees it.
    let Ok(Json(sms)) = Json::<Sms>::from_bytes(&body) else {
        return StatusCode::UNPROCESSABLE_ENTITY;
    };
    state
        .codes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(sms.phone)
        .or_default()
        .push(sms.code);
    state.arrived.notify_waiters();
    StatusCode::OK
}

/// A fake SMS gateway: records the codes the server POSTs to it.
#[derive(Debug, Clone)]
pub struct SmsInbox {
    /// Where the server should post codes.
    url: String,
    /// The codes, shared with the receiver task.
    state: Arc<InboxState>,
}

impl SmsInbox {
    /// Starts a receiver on an ephemeral port of 127.0.0.1.
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn start() -> Result<Self, TestkitError> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a receiver on `listen`; it runs until the runtime ends.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn start_on(listen: SocketAddr) -> Result<Self, TestkitError> {
        let state = Arc::new(InboxState::default());
        let app = axum::Router::new()
            .route("/sms", axum::routing::post(receive))
            .with_state(Arc::clone(&state));
        let bind = |source| TestkitError::Bind {
            addr: listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url: format!("http://{addr}/sms"),
            state,
        })
    }

    /// The webhook URL for the server's `sms_webhook_url`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Makes the gateway answer 503 from now on.
    pub fn fail(&self) {
        *self
            .state
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Makes the gateway take `delay` before answering.
    pub fn slow_down(&self, delay: Duration) {
        *self
            .state
            .delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// How many codes went to `phone`.
    #[must_use]
    pub fn count(&self, phone: &str) -> usize {
        self.state
            .codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(phone)
            .map_or(0, Vec::len)
    }

    /// The latest code sent to `phone`, if any.
    #[must_use]
    pub fn latest(&self, phone: &str) -> Option<String> {
        self.state
            .codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(phone)
            .and_then(|c| c.last().cloned())
    }

    /// The latest code sent to `phone`, waiting up to `wait` for one.
    ///
    /// # Errors
    /// [`TestkitError::NoCode`] when none arrived in time.
    pub async fn wait_for(&self, phone: &str, wait: Duration) -> Result<String, TestkitError> {
        tokio::time::timeout(wait, async {
            loop {
                let arrived = self.state.arrived.notified();
                if let Some(code) = self.latest(phone) {
                    return code;
                }
                arrived.await;
            }
        })
        .await
        .map_err(|_| TestkitError::NoCode(phone.to_owned()))
    }

    /// Asks the server for a code for `phone` and returns it as this gateway
    /// received it, with the number as the server normalised it.
    ///
    /// # Errors
    /// The request failed, or no code arrived within [`WAIT`].
    pub async fn code_for(
        &self,
        client: &Client,
        phone: &str,
    ) -> Result<(String, String), TestkitError> {
        let before = self.count(phone);
        let phone = client.request_code(phone).await?.phone;
        tokio::time::timeout(WAIT, async {
            loop {
                let arrived = self.state.arrived.notified();
                if self.count(&phone) > before {
                    return;
                }
                arrived.await;
            }
        })
        .await
        .map_err(|_| TestkitError::NoCode(phone.clone()))?;
        let code = self
            .latest(&phone)
            .ok_or_else(|| TestkitError::NoCode(phone.clone()))?;
        Ok((phone, code))
    }
}

/// A signed-up account and one of its devices.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// The number, in E.164.
    pub phone: String,
    /// The device's SDK session (token, ids, typed API).
    pub session: Session,
}

impl TestUser {
    /// Registers `phone` as `name` with a code from `sms`.
    ///
    /// # Errors
    /// The code or the registration failed.
    pub async fn sign_up(
        client: &Client,
        sms: &SmsInbox,
        phone: &str,
        name: &str,
    ) -> Result<Self, TestkitError> {
        let (phone, code) = sms.code_for(client, phone).await?;
        let session = client
            .register(&RegisterRequest {
                phone: phone.clone(),
                name: name.to_owned(),
                verification_code: Some(code),
                invite: None,
                device_name: None,
            })
            .await?;
        Ok(Self { phone, session })
    }

    /// Logs in another device of `phone`, named `device_name`.
    ///
    /// # Errors
    /// The code or the login failed.
    pub async fn log_in(
        client: &Client,
        sms: &SmsInbox,
        phone: &str,
        device_name: Option<&str>,
    ) -> Result<Self, TestkitError> {
        let (phone, code) = sms.code_for(client, phone).await?;
        let session = client
            .login(&LoginRequest {
                phone: phone.clone(),
                verification_code: code,
                device_name: device_name.map(str::to_owned),
            })
            .await?;
        Ok(Self { phone, session })
    }

    /// The account.
    #[must_use]
    pub fn user_id(&self) -> UserId {
        self.session.user_id()
    }

    /// The device.
    #[must_use]
    pub fn device_id(&self) -> DeviceId {
        self.session.device_id()
    }

    /// The bearer token.
    #[must_use]
    pub fn token(&self) -> &str {
        self.session.token()
    }
}
