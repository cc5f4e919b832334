//! Firebase Cloud Messaging over the HTTP v1 API.
//!
//! The server authenticates as a Google service account: it signs an RS256
//! JWT assertion with the account's key, exchanges it at the account's
//! `token_uri` for an OAuth 2 access token (RFC 7523 grant), caches the
//! token until shortly before it expires, and sends
//! `POST {endpoint}/v1/projects/{project_id}/messages:send` with it. A push
//! is a `data` message (every value a string) with the content-free fields
//! only: the app wakes, syncs and shows what it found.

use std::path::Path;
use std::time::{Duration, Instant};

use natter_proto::push::FCM_TOKEN_MAX_CHARS;
use ring::signature::RsaKeyPair;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::{Delivery, content_free_fields, read_bounded, retry_after_of};
use crate::config::FcmConfig;

/// The OAuth 2 scope for sending FCM messages.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The RFC 7523 grant type.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long an assertion is valid; Google allows at most one hour.
const ASSERTION_LIFETIME_SECS: i64 = 3600;
/// A cached access token is replaced this long before it expires, so a send
/// never goes out with a token that expires on the way.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Used when the token endpoint does not say how long its token lives.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// What Natter reads from a service account's JSON key file.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    token_uri: String,
}

/// An access token and when to stop using it.
struct AccessToken {
    value: String,
    refresh_at: Instant,
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Sends FCM pushes for one Firebase project.
pub struct Fcm {
    /// Its own client: the endpoints are the operator's, not devices', so
    /// the SSRF resolver of the Web Push client does not apply.
    client: reqwest::Client,
    /// `{endpoint}/v1/projects/{project_id}/messages:send`.
    send_url: String,
    /// The service account (the JWT's `iss`).
    client_email: String,
    /// The key's id (the JWT header's `kid`), if the file names it.
    key_id: Option<String>,
    /// Where assertions are exchanged (the JWT's `aud`).
    token_uri: String,
    /// The service account's signing key.
    key: RsaKeyPair,
    /// Most response bytes read.
    max_response_bytes: usize,
    /// The cached access token. An async lock, held while a new token is
    /// fetched, so concurrent sends wait for one exchange instead of each
    /// making their own.
    token: Mutex<Option<AccessToken>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the access token.
        f.debug_struct("Fcm")
            .field("send_url", &self.send_url)
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

/// Why FCM could not be set up; every message names the configuration key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`push.fcm.{key}`: {problem}")]
pub struct FcmSetupError {
    key: &'static str,
    problem: String,
}

fn setup(key: &'static str, problem: impl Into<String>) -> FcmSetupError {
    FcmSetupError {
        key,
        problem: problem.into(),
    }
}

/// How an attempt ended: a delivery outcome, or "the access token was
/// refused" (try once more with a fresh one).
enum Attempt {
    Done(Delivery),
    Unauthorized,
}

impl Fcm {
    /// Reads the service account file and builds the client.
    ///
    /// # Errors
    /// An [`FcmSetupError`] naming the key: the file unreadable, not a
    /// service account, or its key not an RSA PKCS#8 key.
    pub fn new(config: &FcmConfig, max_response_bytes: usize) -> Result<Self, FcmSetupError> {
        let path = config
            .service_account_file
            .as_deref()
            .ok_or_else(|| setup("service_account_file", "is not set"))?;
        let account = read_service_account(path)?;
        let pkcs8 = super::jwt::pkcs8_from_pem(account.private_key.as_bytes()).map_err(|e| {
            setup(
                "service_account_file",
                format!("{}: `private_key` is {e}", path.display()),
            )
        })?;
        let key = RsaKeyPair::from_pkcs8(&pkcs8).map_err(|e| {
            setup(
                "service_account_file",
                format!(
                    "{}: `private_key` is not a usable RSA key ({e})",
                    path.display()
                ),
            )
        })?;
        let timeout = Duration::from_secs(config.timeout_secs);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("natter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| setup("endpoint", format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                config.endpoint.trim_end_matches('/'),
                account.project_id
            ),
            client_email: account.client_email,
            key_id: account.private_key_id,
            token_uri: account.token_uri,
            key,
            max_response_bytes,
            token: Mutex::new(None),
        })
    }

    /// Sends the content-free `payload` to the registration `token`.
    pub async fn send(&self, token: &str, payload: &[u8]) -> Delivery {
        if token.is_empty() || token.len() > FCM_TOKEN_MAX_CHARS {
            return Delivery::Refused("not an FCM registration token".to_owned());
        }
        let body = match message(token, payload) {
            Ok(body) => body,
            Err(e) => return Delivery::Refused(e),
        };
        match self.attempt(&body).await {
            Attempt::Done(delivery) => delivery,
            // The token was revoked or expired early: once more with a new one.
            Attempt::Unauthorized => match self.attempt(&body).await {
                Attempt::Done(delivery) => delivery,
                Attempt::Unauthorized => Delivery::Retry {
                    after: None,
                    reason: "auth",
                },
            },
        }
    }

    async fn attempt(&self, body: &serde_json::Value) -> Attempt {
        let access = match self.access_token().await {
            Ok(access) => access,
            Err(delivery) => return Attempt::Done(delivery),
        };
        let response = match self
            .client
            .post(&self.send_url)
            .bearer_auth(&access)
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
        if status == 401 {
            self.forget(&access).await;
            return Attempt::Unauthorized;
        }
        Attempt::Done(classify(status, retry_after, &answer))
    }

    /// The cached access token, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<String, Delivery> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        let fresh = self.exchange().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Drops the cached token if it is still the one that was refused.
    async fn forget(&self, refused: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == refused) {
            *cached = None;
        }
    }

    /// The JWT-bearer grant: a signed assertion for an access token.
    async fn exchange(&self) -> Result<AccessToken, Delivery> {
        let auth_failure = Delivery::Retry {
            after: None,
            reason: "auth",
        };
        let now = super::jwt::now_secs();
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = serde_json::Value::from(kid.as_str());
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let assertion = super::jwt::sign_rs256(&self.key, &header, &claims)
            .map_err(|_| Delivery::Refused("could not sign the OAuth assertion".to_owned()))?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", GRANT_TYPE)
            .append_pair("assertion", &assertion)
            .finish();
        let requested = Instant::now();
        let response = self
            .client
            .post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| super::transport_failure(&e))?;
        let status = response.status().as_u16();
        let retry_after = retry_after_of(&response);
        let answer = read_bounded(response, self.max_response_bytes).await;
        if !(200..300).contains(&status) {
            tracing::warn!(
                status,
                "the FCM OAuth token endpoint refused the service account"
            );
            return Err(match status {
                429 | 500..=599 => Delivery::Retry {
                    after: retry_after,
                    reason: "auth",
                },
                _ => auth_failure,
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&answer).map_err(|_| {
            tracing::warn!("the FCM OAuth token endpoint gave no access token");
            Delivery::Retry {
                after: None,
                reason: "auth",
            }
        })?;
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        // Half the lifetime for short-lived tokens, else all but the margin.
        let usable = if lifetime > REFRESH_MARGIN * 2 {
            lifetime - REFRESH_MARGIN
        } else {
            lifetime / 2
        };
        Ok(AccessToken {
            value: answer.access_token,
            refresh_at: requested + usable,
        })
    }
}

fn read_service_account(path: &Path) -> Result<ServiceAccount, FcmSetupError> {
    let key = "service_account_file";
    let text = std::fs::read(path)
        .map_err(|e| setup(key, format!("cannot read {}: {e}", path.display())))?;
    let account: ServiceAccount = serde_json::from_slice(&text).map_err(|e| {
        setup(
            key,
            format!(
                "{} is not a service account JSON key file ({e})",
                path.display()
            ),
        )
    })?;
    if account.project_id.is_empty() || account.client_email.is_empty() {
        return Err(setup(
            key,
            format!(
                "{}: `project_id` and `client_email` must be set",
                path.display()
            ),
        ));
    }
    match reqwest::Url::parse(&account.token_uri) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(account),
        _ => Err(setup(
            key,
            format!("{}: `token_uri` is not a URL", path.display()),
        )),
    }
}

/// The HTTP v1 message: the payload's fields as `data` strings.
fn message(token: &str, payload: &[u8]) -> Result<serde_json::Value, String> {
    let data: serde_json::Map<String, serde_json::Value> = content_free_fields(payload)?
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, serde_json::Value::String(text))
        })
        .collect();
    Ok(serde_json::json!({
        "message": {
            "token": token,
            "data": data,
            // High priority: a new message should wake the device now.
            "android": {"priority": "high"},
        }
    }))
}

/// What an FCM answer means. 404 and a 400 that is about the token say the
/// registration is gone; 429 and 5xx are worth another try.
fn classify(status: u16, retry_after: Option<Duration>, answer: &[u8]) -> Delivery {
    match status {
        200..=299 => Delivery::Sent,
        404 => Delivery::Gone,
        400 | 403 if token_is_dead(answer) => Delivery::Gone,
        429 => Delivery::Retry {
            after: retry_after,
            reason: "throttled",
        },
        500..=599 => Delivery::Retry {
            after: retry_after,
            reason: "server_error",
        },
        _ => Delivery::Rejected { status },
    }
}

/// Whether an FCM error names the registration token: `UNREGISTERED`, or
/// `INVALID_ARGUMENT` with a field violation on `message.token`.
fn token_is_dead(answer: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(answer) else {
        return false;
    };
    let error = &body["error"];
    let details = error["details"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let code_is =
        |code: &str| error["status"] == code || details.iter().any(|d| d["errorCode"] == code);
    if code_is("UNREGISTERED") {
        return true;
    }
    let on_token = details.iter().any(|d| {
        d["fieldViolations"]
            .as_array()
            .is_some_and(|v| v.iter().any(|f| f["field"] == "message.token"))
    }) || error["message"]
        .as_str()
        .is_some_and(|m| m.to_ascii_lowercase().contains("registration token"));
    code_is("INVALID_ARGUMENT") && on_token
}

#[cfg(test)]
mod tests {
    use super::super::parse_retry_after as retry;
    use super::*;

    #[test]
    fn answers_map_to_outcomes() {
        assert_eq!(classify(200, None, b"{}"), Delivery::Sent);
        assert_eq!(classify(404, None, b""), Delivery::Gone);
        let unregistered = br#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(classify(400, None, unregistered), Delivery::Gone);
        let bad_token = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"The registration token is not a valid FCM registration token","details":[{"errorCode":"INVALID_ARGUMENT"},{"fieldViolations":[{"field":"message.token"}]}]}}"#;
        assert_eq!(classify(400, None, bad_token), Delivery::Gone);
        let bad_payload = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"Invalid JSON payload","details":[{"fieldViolations":[{"field":"message.data"}]}]}}"#;
        assert_eq!(
            classify(400, None, bad_payload),
            Delivery::Rejected { status: 400 }
        );
        assert!(matches!(
            classify(429, retry("9"), b""),
            Delivery::Retry { after: Some(d), reason: "throttled" } if d == Duration::from_secs(9)
        ));
        assert!(matches!(
            classify(503, None, b""),
            Delivery::Retry {
                reason: "server_error",
                ..
            }
        ));
    }

    #[test]
    fn a_message_carries_only_the_content_free_fields_as_strings() {
        let payload = br#"{"v":1,"kind":"sync","chat_id":"c","count":2,"seq":7,"preview":{"sender":"Alice","text":"hi"}}"#;
        let m = message("tok", payload).unwrap();
        assert_eq!(m["message"]["token"], "tok");
        assert_eq!(
            m["message"]["data"],
            serde_json::json!({"v":"1","kind":"sync","chat_id":"c","count":"2","seq":"7"})
        );
        assert_eq!(m["message"]["android"]["priority"], "high");
    }
}
