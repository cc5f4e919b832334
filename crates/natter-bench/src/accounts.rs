//! Accounts for a run, created through the real API: the server posts each
//! verification code to an SMS webhook receiver run here (the server's
//! ordinary `sms_webhook_url`), so no benchmark-only path exists in the
//! server at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use futures_util::StreamExt as _;
use natter_client::Client;
use natter_proto::UserId;

use crate::load::progress;
use crate::{BenchError, BenchResult};

/// Sign-ups in flight at once.
const SIGNUP_CONCURRENCY: usize = 64;

/// Codes received by the webhook, by phone number.
#[derive(Debug, Clone, Default)]
pub(crate) struct SmsInbox {
    /// The latest code per number.
    codes: Arc<Mutex<HashMap<String, String>>>,
    /// Where the server should post codes.
    pub(crate) url: String,
}

#[derive(serde::Deserialize)]
struct Sms {
    phone: String,
    code: String,
}

async fn receive(
    State(codes): State<Arc<Mutex<HashMap<String, String>>>>,
    Json(sms): Json<Sms>,
) -> StatusCode {
    codes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(sms.phone, sms.code);
    StatusCode::NO_CONTENT
}

impl SmsInbox {
    /// Starts the receiver on `listen`; it runs until the runtime ends.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub(crate) async fn start(listen: SocketAddr) -> BenchResult<Self> {
        let codes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let app = axum::Router::new()
            .route("/sms", axum::routing::post(receive))
            .with_state(Arc::clone(&codes));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(BenchError::io(format!(
                "binding the SMS receiver to {listen}"
            )))?;
        let addr = listener
            .local_addr()
            .map_err(BenchError::io("reading the SMS receiver's address"))?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            codes,
            url: format!("http://{addr}/sms"),
        })
    }

    /// The code sent to `phone` (the server posts it before answering the
    /// verification request, so it is already here).
    fn take(&self, phone: &str) -> BenchResult<String> {
        self.codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(phone)
            .ok_or_else(|| {
                BenchError::Other(format!(
                    "no SMS code arrived for {phone}: is the server's sms_webhook_url this receiver?"
                ))
            })
    }
}

/// A signed-up user with one device.
#[derive(Debug, Clone)]
pub(crate) struct User {
    /// The account.
    pub(crate) id: UserId,
    /// The device's bearer token.
    pub(crate) token: String,
}

/// Signs up `count` users named `{prefix}{i}` with fresh numbers.
///
/// # Errors
/// The first failed sign-up.
pub(crate) async fn sign_up(
    client: &Client,
    inbox: &SmsInbox,
    prefix: &str,
    count: usize,
    quiet: bool,
) -> BenchResult<Vec<User>> {
    // A random block of numbers, so runs against one `--url` server do not collide.
    let base = (uuid::Uuid::now_v7().as_u128() & 0xffff_ffff) as u64 % 90_000_000;
    let bar = progress(count as u64, &format!("signing up {prefix} users"), quiet);
    let users: Vec<BenchResult<User>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let bar = bar.clone();
            async move {
                let phone = format!("+4477{:08}", base + i as u64);
                let phone = client.request_code(&phone).await?;
                let code = inbox.take(&phone)?;
                let session = client
                    .register(&phone, &format!("{prefix}{i}"), &code)
                    .await?;
                bar.inc(1);
                Ok(User {
                    id: session.user_id,
                    token: session.access_token,
                })
            }
        })
        .buffered(SIGNUP_CONCURRENCY)
        .collect()
        .await;
    bar.finish_and_clear();
    users.into_iter().collect()
}
