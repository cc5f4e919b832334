//! The Apple Push Notification service, token-based, over HTTP/2.
//!
//! The server signs an ES256 provider token (header `kid` = the key id,
//! claims `iss` = the team id and `iat`) with the `.p8` key and reuses it
//! for [`TOKEN_REUSE`]: APNs refuses a token older than an hour and one
//! refreshed more often than every 20 minutes. A push is
//! `POST /3/device/{token}` with a generic alert and `mutable-content`, so
//! a notification service extension can sync and show what it found, and
//! the content-free fields beside `aps`.

use std::time::Duration;

use natter_proto::push::{APNS_TOKEN_MAX_CHARS, APNS_TOKEN_MIN_CHARS, ApnsEnvironment};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use tokio::sync::Mutex;

use super::{Delivery, content_free_fields, read_bounded, retry_after_of};
use crate::config::ApnsConfig;

/// How long a provider token is reused: past APNs' 20-minute floor on
/// refreshes, well before its one-hour expiry.
pub const TOKEN_REUSE: Duration = Duration::from_secs(40 * 60);
/// APNs answers `TooManyProviderTokenUpdates` to refreshes closer together
/// than this, so an early refresh (after `ExpiredProviderToken`) is made at
/// most once in this long; a clock APNs disagrees with cannot make every
/// push sign a new token.
const MIN_EARLY_REFRESH: Duration = Duration::from_secs(20 * 60);
/// The alert shown when the app cannot fetch anything better.
const ALERT_TITLE: &str = "Natter";
/// The alert's body: never the message itself.
const ALERT_BODY: &str = "New message";

/// A provider token and when it was signed (its `iat`: APNs judges the
/// age by the wall clock, so it is measured by the wall clock too).
struct ProviderToken {
    value: String,
    issued_at: i64,
}

/// The token in use, and when one was last replaced early.
#[derive(Default)]
struct TokenState {
    current: Option<ProviderToken>,
    last_early_refresh: Option<i64>,
}

/// Sends APNs pushes for one app (topic).
pub struct Apns {
    /// An HTTP/2-only client (APNs speaks nothing else; for an `http://`
    /// endpoint this is h2c with prior knowledge).
    client: reqwest::Client,
    /// The production base URL.
    endpoint: String,
    /// The sandbox base URL.
    sandbox_endpoint: String,
    /// `apns-topic`: the bundle id.
    topic: String,
    /// The JWT header's `kid`.
    key_id: String,
    /// The JWT's `iss`.
    team_id: String,
    /// The `.p8` signing key.
    key: EcdsaKeyPair,
    /// How long APNs keeps an undelivered push (`apns-expiration`).
    ttl_secs: u64,
    /// Most response bytes read.
    max_response_bytes: usize,
    /// The provider token in use. An async lock, so concurrent sends share
    /// one refresh.
    token: Mutex<TokenState>,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the token.
        f.debug_struct("Apns")
            .field("endpoint", &self.endpoint)
            .field("topic", &self.topic)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Why APNs could not be set up; every message names the configuration key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`push.apns.{key}`: {problem}")]
pub struct ApnsSetupError {
    key: &'static str,
    problem: String,
}

fn setup(key: &'static str, problem: impl Into<String>) -> ApnsSetupError {
    ApnsSetupError {
        key,
        problem: problem.into(),
    }
}

/// How an attempt ended: an outcome, or "the provider token expired".
enum Attempt {
    Done(Delivery),
    Expired,
}

impl Apns {
    /// Reads the `.p8` key and builds the HTTP/2 client.
    ///
    /// # Errors
    /// An [`ApnsSetupError`] naming the key: unset, unreadable, or not a
    /// P-256 PKCS#8 key.
    pub fn new(
        config: &ApnsConfig,
        ttl_secs: u64,
        max_response_bytes: usize,
    ) -> Result<Self, ApnsSetupError> {
        let path = config
            .key_file
            .as_deref()
            .ok_or_else(|| setup("key_file", "is not set"))?;
        let pem = std::fs::read(path)
            .map_err(|e| setup("key_file", format!("cannot read {}: {e}", path.display())))?;
        let pkcs8 = super::jwt::pkcs8_from_pem(&pem)
            .map_err(|e| setup("key_file", format!("{} is {e}", path.display())))?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| {
            setup(
                "key_file",
                format!("{} is not a P-256 (ES256) key ({e})", path.display()),
            )
        })?;
        let text = |key: &'static str, value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| setup(key, "is not set"))
        };
        let timeout = Duration::from_secs(config.timeout_secs);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .http2_prior_knowledge()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("natter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| setup("endpoint", format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            endpoint: config.endpoint.trim_end_matches('/').to_owned(),
            sandbox_endpoint: config.sandbox_endpoint.trim_end_matches('/').to_owned(),
            topic: text("topic", &config.topic)?,
            key_id: text("key_id", &config.key_id)?,
            team_id: text("team_id", &config.team_id)?,
            key,
            ttl_secs,
            max_response_bytes,
            token: Mutex::new(TokenState::default()),
        })
    }

    /// Sends the content-free `payload` to a device token.
    pub async fn send(
        &self,
        device_token: &str,
        environment: Option<ApnsEnvironment>,
        payload: &[u8],
    ) -> Delivery {
        if !is_device_token(device_token) {
            return Delivery::Refused("not an APNs device token".to_owned());
        }
        let body = match notification(payload) {
            Ok(body) => body,
            Err(e) => return Delivery::Refused(e),
        };
        let base = match environment.unwrap_or_default() {
            ApnsEnvironment::Production => &self.endpoint,
            ApnsEnvironment::Sandbox => &self.sandbox_endpoint,
        };
        let url = format!("{base}/3/device/{device_token}");
        match self.attempt(&url, &body).await {
            Attempt::Done(delivery) => delivery,
            // Refreshed once; a second refusal waits for the outbox's retry.
            Attempt::Expired => match self.attempt(&url, &body).await {
                Attempt::Done(delivery) => delivery,
                Attempt::Expired => Delivery::Retry {
                    after: None,
                    reason: "auth",
                },
            },
        }
    }

    async fn attempt(&self, url: &str, body: &serde_json::Value) -> Attempt {
        let token = match self.provider_token().await {
            Ok(token) => token,
            Err(delivery) => return Attempt::Done(delivery),
        };
        let expiration =
            super::jwt::now_secs().saturating_add(i64::try_from(self.ttl_secs).unwrap_or(i64::MAX));
        let response = match self
            .client
            .post(url)
            .header("authorization", format!("bearer {token}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            // 10: deliver now (a new message), allowed for alerts.
            .header("apns-priority", "10")
            .header("apns-expiration", expiration.to_string())
            .json(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Attempt::Done(super::transport_failure(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after_of(&response);
        let answer = read_bounded(response, self.max_response_bytes).await;
        let reason = reason_of(&answer);
        if status == 403 && reason.as_deref() == Some("ExpiredProviderToken") {
            if self.expire(&token).await {
                return Attempt::Expired;
            }
            tracing::warn!(
                "APNs calls a fresh provider token expired; is this host's clock right?"
            );
            return Attempt::Done(Delivery::Retry {
                after: None,
                reason: "auth",
            });
        }
        Attempt::Done(classify(status, retry_after, reason.as_deref()))
    }

    /// The token in use, or a new one once it is [`TOKEN_REUSE`] old.
    async fn provider_token(&self) -> Result<String, Delivery> {
        let mut state = self.token.lock().await;
        let now = super::jwt::now_secs();
        let reuse = i64::try_from(TOKEN_REUSE.as_secs()).unwrap_or(i64::MAX);
        if let Some(token) = state.current.as_ref()
            && (token.issued_at..token.issued_at.saturating_add(reuse)).contains(&now)
        {
            return Ok(token.value.clone());
        }
        let header = serde_json::json!({"alg": "ES256", "kid": self.key_id});
        let claims = serde_json::json!({"iss": self.team_id, "iat": now});
        let value = super::jwt::sign_es256(&self.key, &header, &claims)
            .map_err(|_| Delivery::Refused("could not sign the APNs provider token".to_owned()))?;
        state.current = Some(ProviderToken {
            value: value.clone(),
            issued_at: now,
        });
        Ok(value)
    }

    /// APNs called `refused` expired: sign a new one at the next send
    /// (unless a concurrent send already did). False when an early refresh
    /// was already made in the last [`MIN_EARLY_REFRESH`].
    async fn expire(&self, refused: &str) -> bool {
        let mut state = self.token.lock().await;
        if state.current.as_ref().is_none_or(|t| t.value != refused) {
            // Already replaced by a concurrent send: use the new one.
            return true;
        }
        let now = super::jwt::now_secs();
        let floor = i64::try_from(MIN_EARLY_REFRESH.as_secs()).unwrap_or(i64::MAX);
        if state
            .last_early_refresh
            .is_some_and(|at| now.saturating_sub(at) < floor)
        {
            return false;
        }
        state.last_early_refresh = Some(now);
        state.current = None;
        true
    }
}

/// Whether `token` looks like an APNs device token: hex, of a plausible length.
#[must_use]
pub fn is_device_token(token: &str) -> bool {
    (APNS_TOKEN_MIN_CHARS..=APNS_TOKEN_MAX_CHARS).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The APNs body: a generic alert, and the content-free fields beside `aps`.
fn notification(payload: &[u8]) -> Result<serde_json::Value, String> {
    let mut body = content_free_fields(payload)?;
    body.insert(
        "aps".to_owned(),
        serde_json::json!({
            "alert": {"title": ALERT_TITLE, "body": ALERT_BODY},
            "mutable-content": 1,
        }),
    );
    Ok(serde_json::Value::Object(body))
}

/// The `reason` of an APNs error answer.
fn reason_of(answer: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(answer)
        .ok()?
        .get("reason")?
        .as_str()
        .map(str::to_owned)
}

/// What an APNs answer means (Apple's "Handling notification responses").
fn classify(status: u16, retry_after: Option<Duration>, reason: Option<&str>) -> Delivery {
    match (status, reason) {
        (200..=299, _) => Delivery::Sent,
        (410, _) => Delivery::Gone,
        (400, Some("BadDeviceToken" | "DeviceTokenNotForTopic")) => Delivery::Gone,
        (429, _) => Delivery::Retry {
            after: retry_after,
            reason: "throttled",
        },
        (500..=599, _) => Delivery::Retry {
            after: retry_after,
            reason: "server_error",
        },
        _ => Delivery::Rejected { status },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_outcomes() {
        assert_eq!(classify(200, None, None), Delivery::Sent);
        assert_eq!(classify(410, None, Some("Unregistered")), Delivery::Gone);
        assert_eq!(classify(400, None, Some("BadDeviceToken")), Delivery::Gone);
        assert_eq!(
            classify(400, None, Some("PayloadEmpty")),
            Delivery::Rejected { status: 400 }
        );
        assert_eq!(
            classify(403, None, Some("InvalidProviderToken")),
            Delivery::Rejected { status: 403 }
        );
        assert!(matches!(
            classify(429, Some(Duration::from_secs(3)), Some("TooManyRequests")),
            Delivery::Retry { after: Some(d), reason: "throttled" } if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(503, None, Some("ServiceUnavailable")),
            Delivery::Retry {
                reason: "server_error",
                ..
            }
        ));
    }

    #[test]
    fn device_tokens_are_hex_of_a_plausible_length() {
        assert!(is_device_token(&"a".repeat(64)));
        assert!(is_device_token(&"0F".repeat(100)));
        assert!(!is_device_token(&"a".repeat(63)));
        assert!(!is_device_token(&"a".repeat(201)));
        assert!(!is_device_token(&format!("{}g", "a".repeat(63))));
    }

    #[test]
    fn the_body_is_a_generic_alert_with_the_content_free_fields() {
        let payload = br#"{"v":1,"kind":"sync","chat_id":null,"count":3,"seq":null,"preview":{"sender":"A","text":"t"}}"#;
        let body = notification(payload).unwrap();
        assert_eq!(body["aps"]["alert"]["body"], ALERT_BODY);
        assert_eq!(body["aps"]["mutable-content"], 1);
        assert_eq!(body["count"], 3);
        assert!(body.get("preview").is_none());
        assert!(body.get("chat_id").is_none(), "nulls are left out");
    }
}
