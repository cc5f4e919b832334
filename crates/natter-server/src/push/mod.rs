//! Push: delivering content-free wake-ups to devices that are offline, over
//! Web Push (RFC 8030) with encrypted payloads (RFC 8291) and VAPID
//! (RFC 8292), to UnifiedPush endpoints without keys, to Android devices
//! through Firebase Cloud Messaging and to Apple devices through APNs.
//!
//! This is the engine: it encrypts, signs and sends one push and says how it
//! went ([`Delivery`]). Who gets a push, coalescing, the outbox, retries and
//! metrics are the service's (`service/push.rs`); the store keeps channels
//! and the outbox. Nothing here knows about chats or users.
//!
//! # Layout
//! - [`ece`]: RFC 8291 payload encryption (aes128gcm), from `ring` primitives.
//! - [`vapid`]: the server's key pair and the signed JWT.
//! - [`endpoint`]: which endpoints may be contacted (SSRF defence).
//! - [`jwt`]: RS256 and ES256 tokens for the mobile services.
//! - [`fcm`]: FCM HTTP v1 with a service account's OAuth 2 token.
//! - [`apns`]: APNs over HTTP/2 with an ES256 provider token.

pub mod apns;
pub mod ece;
pub mod endpoint;
pub mod fcm;
pub mod jwt;
pub mod vapid;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use natter_proto::push::{ApnsEnvironment, PushKind};
use reqwest::header::{HeaderMap, HeaderValue};

use self::endpoint::{CheckedResolver, ResolveError};
use self::vapid::VapidKey;
use crate::config::{Limits, PushConfig};

/// Where a push goes: a device's registered channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// The protocol.
    pub kind: PushKind,
    /// The push service URL; for `fcm` and `apns`, the device token.
    pub endpoint: String,
    /// The subscription's P-256 public key (Web Push only).
    pub p256dh: Option<Vec<u8>>,
    /// The subscription's auth secret (Web Push only).
    pub auth: Option<Vec<u8>>,
    /// The APNs environment of the token (`apns` only; production if `None`).
    pub environment: Option<ApnsEnvironment>,
}

/// How a send went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The push service accepted it.
    Sent,
    /// A transient failure (timeout, connection, 429, 5xx): try again,
    /// after `after` if the service said so (`Retry-After`).
    Retry {
        /// The service's `Retry-After`.
        after: Option<Duration>,
        /// What happened, for logs and metrics.
        reason: &'static str,
    },
    /// 404 or 410 (or the mobile services' "this token is dead"): the
    /// subscription is gone for good.
    Gone,
    /// The service refused this push for good (another 4xx, a redirect).
    Rejected {
        /// The HTTP status.
        status: u16,
    },
    /// The endpoint is not one the server may contact, or the channel is
    /// unusable (bad keys, oversized payload).
    Refused(String),
}

/// Sends pushes. [`PushEngine`] in production; tests may swap in their own.
#[async_trait]
pub trait PushGateway: Send + Sync + std::fmt::Debug + 'static {
    /// The VAPID public key, base64url uncompressed point.
    fn public_key(&self) -> &str;
    /// Whether channels of this kind can be sent to (FCM and APNs only
    /// when configured).
    fn accepts(&self, kind: PushKind) -> bool {
        let _ = kind;
        true
    }
    /// Sends `payload` to `target` (bounded in time and response size).
    async fn send(&self, target: &PushTarget, payload: &[u8]) -> Delivery;
}

/// Why the push engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum PushSetupError {
    /// The VAPID key could not be made or read.
    #[error(transparent)]
    Vapid(#[from] vapid::VapidError),
    /// The HTTP client could not be built.
    #[error("cannot build the push HTTP client: {0}")]
    Client(String),
    /// FCM is enabled but its service account is unusable.
    #[error(transparent)]
    Fcm(#[from] fcm::FcmSetupError),
    /// APNs is enabled but its key or settings are unusable.
    #[error(transparent)]
    Apns(#[from] apns::ApnsSetupError),
}

/// Web Push and UnifiedPush over one HTTP client whose resolver refuses
/// non-public addresses, with no redirects and no proxies; FCM and APNs,
/// when configured, each over its own client to the operator's endpoints.
#[derive(Debug)]
pub struct PushEngine {
    /// The shared client (connection pooling to the few big push services).
    client: reqwest::Client,
    /// The VAPID key pair.
    key: VapidKey,
    /// `push.vapid_subject`.
    subject: String,
    /// `TTL` header value.
    ttl_secs: u64,
    /// Most response bytes read.
    max_response_bytes: usize,
    /// `push.allow_private_endpoints`.
    allow_private: bool,
    /// `limits.max_push_endpoint_chars`.
    max_endpoint_chars: usize,
    /// FCM, when `push.fcm.enabled`.
    fcm: Option<fcm::Fcm>,
    /// APNs, when `push.apns.enabled`.
    apns: Option<apns::Apns>,
}

impl PushEngine {
    /// Builds the gateway with the stored VAPID key (`pkcs8`), and the FCM
    /// and APNs senders that are enabled (reading their key files).
    ///
    /// # Errors
    /// A [`PushSetupError`]; for FCM and APNs it names the key at fault.
    pub fn new(config: &PushConfig, limits: &Limits, pkcs8: &[u8]) -> Result<Self, PushSetupError> {
        let key = VapidKey::from_pkcs8(pkcs8)?;
        let fcm = if config.fcm.enabled {
            Some(fcm::Fcm::new(&config.fcm, config.max_response_bytes)?)
        } else {
            None
        };
        let apns = if config.apns.enabled {
            Some(apns::Apns::new(
                &config.apns,
                config.ttl_secs,
                config.max_response_bytes,
            )?)
        } else {
            None
        };
        let timeout = Duration::from_secs(config.request_timeout_secs);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect could lead anywhere, including inside the network.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect on our behalf, past the address checks.
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver {
                allow_private: config.allow_private_endpoints,
            }))
            .https_only(!config.allow_private_endpoints)
            .user_agent(concat!("natter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PushSetupError::Client(e.to_string()))?;
        Ok(Self {
            client,
            key,
            subject: config.vapid_subject.clone(),
            ttl_secs: config.ttl_secs,
            max_response_bytes: config.max_response_bytes,
            allow_private: config.allow_private_endpoints,
            max_endpoint_chars: limits.max_push_endpoint_chars,
            fcm,
            apns,
        })
    }

    /// The body and headers for a target.
    fn prepare(
        &self,
        target: &PushTarget,
        url: &reqwest::Url,
        payload: &[u8],
    ) -> Result<(HeaderMap, Vec<u8>), String> {
        let mut headers = HeaderMap::new();
        headers.insert("ttl", HeaderValue::from(self.ttl_secs));
        // A new message: wake the device (RFC 8030 §5.3).
        headers.insert("urgency", HeaderValue::from_static("high"));
        let body = match (target.kind, &target.p256dh, &target.auth) {
            (PushKind::Webpush, Some(p256dh), Some(auth)) => {
                let body = ece::encrypt(p256dh, auth, payload).map_err(|e| e.to_string())?;
                let now = crate::clock::Timestamp::now().0 / 1000;
                let authorization = self
                    .key
                    .authorization(&url.origin().ascii_serialization(), &self.subject, now)
                    .map_err(|e| e.to_string())?;
                headers.insert(
                    "authorization",
                    HeaderValue::from_str(&authorization).map_err(|e| e.to_string())?,
                );
                headers.insert("content-encoding", HeaderValue::from_static("aes128gcm"));
                headers.insert(
                    "content-type",
                    HeaderValue::from_static("application/octet-stream"),
                );
                body
            }
            (PushKind::Webpush, _, _) => return Err("a webpush channel without keys".to_owned()),
            (PushKind::Unifiedpush, _, _) => {
                headers.insert("content-type", HeaderValue::from_static("application/json"));
                payload.to_vec()
            }
            (PushKind::Fcm | PushKind::Apns, _, _) => {
                return Err("not a Web Push channel".to_owned());
            }
        };
        Ok((headers, body))
    }
}

#[async_trait]
impl PushGateway for PushEngine {
    fn public_key(&self) -> &str {
        self.key.public_key()
    }

    fn accepts(&self, kind: PushKind) -> bool {
        match kind {
            PushKind::Webpush | PushKind::Unifiedpush => true,
            PushKind::Fcm => self.fcm.is_some(),
            PushKind::Apns => self.apns.is_some(),
        }
    }

    async fn send(&self, target: &PushTarget, payload: &[u8]) -> Delivery {
        match (target.kind, &self.fcm, &self.apns) {
            (PushKind::Fcm, Some(fcm), _) => return fcm.send(&target.endpoint, payload).await,
            (PushKind::Apns, _, Some(apns)) => {
                return apns
                    .send(&target.endpoint, target.environment, payload)
                    .await;
            }
            (PushKind::Fcm | PushKind::Apns, _, _) => {
                return Delivery::Refused(
                    "this server does not send to FCM or APNs channels now".to_owned(),
                );
            }
            (PushKind::Webpush | PushKind::Unifiedpush, _, _) => {}
        }
        let url = match endpoint::check_url(
            &target.endpoint,
            self.max_endpoint_chars,
            self.allow_private,
        ) {
            Ok(url) => url,
            Err(e) => return Delivery::Refused(e.to_string()),
        };
        // Check here too, to tell a refused address (drop) from a resolver
        // hiccup (retry); the client's resolver checks again at connect.
        if let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.parse::<std::net::IpAddr>().is_err() {
                match endpoint::resolve_checked(host, port, self.allow_private).await {
                    Ok(_) => {}
                    Err(ResolveError::Refused(e)) => return Delivery::Refused(e.to_string()),
                    Err(ResolveError::Lookup(_)) => {
                        return Delivery::Retry {
                            after: None,
                            reason: "dns",
                        };
                    }
                }
            }
        }
        let (headers, body) = match self.prepare(target, &url, payload) {
            Ok(prepared) => prepared,
            Err(e) => return Delivery::Refused(e),
        };
        let response = match self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Delivery::Retry {
                    after: None,
                    reason: "timeout",
                };
            }
            Err(_) => {
                return Delivery::Retry {
                    after: None,
                    reason: "connection",
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = retry_after_of(&response);
        drain(response, self.max_response_bytes).await;
        classify(status, retry_after)
    }
}

/// The fields of a payload that may travel in the clear to FCM and APNs:
/// the format version, the kind, the chat, the count and the seq (nulls
/// left out). An allow-list, so a field added to [`natter_proto::push::PushPayload`]
/// later (or a preview) does not reach them unless added here.
///
/// # Errors
/// When the payload is not a JSON object.
pub(crate) fn content_free_fields(
    payload: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    const ALLOWED: [&str; 5] = ["v", "kind", "chat_id", "count", "seq"];
    let serde_json::Value::Object(fields) =
        serde_json::from_slice(payload).map_err(|_| "the push payload is not JSON".to_owned())?
    else {
        return Err("the push payload is not a JSON object".to_owned());
    };
    Ok(fields
        .into_iter()
        .filter(|(k, v)| ALLOWED.contains(&k.as_str()) && !v.is_null())
        .collect())
}

/// A failed request: a timeout or a connection failure, both retried.
pub(crate) fn transport_failure(e: &reqwest::Error) -> Delivery {
    Delivery::Retry {
        after: None,
        reason: if e.is_timeout() {
            "timeout"
        } else {
            "connection"
        },
    }
}

/// The answer's `Retry-After`.
pub(crate) fn retry_after_of(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// Reads at most `max` bytes of the answer (the mobile services explain
/// their refusals in the body).
pub(crate) async fn read_bounded(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= max {
            break;
        }
    }
    out
}

/// What a push service's status means.
fn classify(status: u16, retry_after: Option<Duration>) -> Delivery {
    match status {
        200..=299 => Delivery::Sent,
        404 | 410 => Delivery::Gone,
        408 | 429 => Delivery::Retry {
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

/// Reads (and discards) at most `max` bytes of the answer, so the
/// connection can be reused without letting a service stream at us.
async fn drain(mut response: reqwest::Response, max: usize) {
    let mut read = 0usize;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read >= max {
            break;
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let secs = (at - time::OffsetDateTime::now_utc()).whole_seconds();
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(classify(201, None), Delivery::Sent);
        assert_eq!(classify(410, None), Delivery::Gone);
        assert_eq!(classify(404, None), Delivery::Gone);
        assert_eq!(classify(413, None), Delivery::Rejected { status: 413 });
        assert_eq!(classify(301, None), Delivery::Rejected { status: 301 });
        assert!(matches!(
            classify(429, Some(Duration::from_secs(7))),
            Delivery::Retry { after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            classify(503, None),
            Delivery::Retry { after: None, .. }
        ));
    }

    #[tokio::test]
    async fn a_send_checks_the_endpoint_again_and_refuses_private_ones() {
        let pkcs8 = VapidKey::generate_pkcs8().unwrap();
        let push = PushEngine::new(&PushConfig::default(), &Limits::default(), &pkcs8).unwrap();
        for endpoint in [
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "http://push.example.com/x",
        ] {
            let target = PushTarget {
                kind: PushKind::Unifiedpush,
                endpoint: endpoint.to_owned(),
                p256dh: None,
                auth: None,
                environment: None,
            };
            assert!(
                matches!(push.send(&target, b"{}").await, Delivery::Refused(_)),
                "{endpoint}"
            );
        }
        // A Web Push channel without keys cannot be encrypted to: refused, not sent.
        let keyless = PushTarget {
            kind: PushKind::Webpush,
            endpoint: "https://1.1.1.1/x".to_owned(),
            p256dh: None,
            auth: None,
            environment: None,
        };
        assert!(matches!(
            push.send(&keyless, b"{}").await,
            Delivery::Refused(_)
        ));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
