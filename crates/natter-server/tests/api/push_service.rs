//! A local push service for the push tests: it plays both the push service
//! (RFC 8030) and the browser behind it. Every request's VAPID token is
//! verified (ES256 signature with the key in `k=`, `aud`, `exp`, `sub`) and
//! its aes128gcm body decrypted with the subscription's private key, with
//! code independent of the server's (RustCrypto ECDH, ring HKDF and AES-GCM).
//! Anything wrong is recorded as a failure and answered with 400.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::WAIT;

/// A subscription as a browser would make it: a P-256 key pair and an auth secret.
struct Subscriber {
    secret: p256::SecretKey,
    auth: [u8; 16],
    /// Whether it is a keyless UnifiedPush endpoint.
    keyless: bool,
}

/// One push as the device would see it.
#[derive(Debug, Clone)]
pub struct Push {
    /// The decrypted (or, keyless, raw) payload.
    pub payload: Value,
    /// The body as it travelled.
    pub raw: Vec<u8>,
    /// The VAPID public key the request was signed with (`k=`).
    pub vapid_key: Option<String>,
}

#[derive(Default)]
struct Inner {
    subscribers: HashMap<String, Subscriber>,
    /// Answers to give, per subscription, before falling back to 201.
    script: HashMap<String, VecDeque<(u16, Option<u64>)>>,
    /// Accepted pushes per subscription.
    pushes: HashMap<String, Vec<Push>>,
    /// Requests per subscription, whatever the answer.
    requests: HashMap<String, usize>,
    /// What failed verification.
    failures: Vec<String>,
}

/// The push service.
#[derive(Clone)]
pub struct PushService {
    base: String,
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
}

/// What a client registers for a subscription.
pub struct Subscription {
    pub id: String,
    pub endpoint: String,
    pub body: Value,
}

struct Len(usize);
impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len(len))
        .unwrap()
        .fill(&mut out)
        .unwrap();
    out
}

/// Checks `Authorization: vapid t=<jwt>, k=<key>`; returns the key.
fn verify_vapid(headers: &HeaderMap, audience: &str) -> Result<String, String> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization header")?;
    let rest = auth.strip_prefix("vapid t=").ok_or("not a vapid scheme")?;
    let (token, key) = rest.split_once(", k=").ok_or("no k=")?;
    let public = B64.decode(key).map_err(|_| "k is not base64url")?;
    let (input, sig) = token.rsplit_once('.').ok_or("not a JWT")?;
    let sig = B64.decode(sig).map_err(|_| "signature is not base64url")?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
        .verify(input.as_bytes(), &sig)
        .map_err(|_| "bad ES256 signature")?;
    let (header, claims) = input.split_once('.').ok_or("not a JWT")?;
    let header: Value = serde_json::from_slice(&B64.decode(header).map_err(|_| "header")?)
        .map_err(|_| "header json")?;
    if header["alg"] != "ES256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let claims: Value = serde_json::from_slice(&B64.decode(claims).map_err(|_| "claims")?)
        .map_err(|_| "claims json")?;
    if claims["aud"] != audience {
        return Err(format!("aud {} is not {audience}", claims["aud"]));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let exp = claims["exp"].as_i64().ok_or("no exp")?;
    if exp <= now || exp > now + 24 * 3600 {
        return Err(format!("exp {exp} not within 24 hours of {now}"));
    }
    let sub = claims["sub"].as_str().ok_or("no sub")?;
    if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
        return Err(format!("sub {sub}"));
    }
    Ok(key.to_owned())
}

/// Decrypts an aes128gcm body (RFC 8188) for a subscriber (RFC 8291).
fn decrypt(sub: &Subscriber, body: &[u8]) -> Result<Vec<u8>, String> {
    if body.len() < 86 + 17 {
        return Err("body too short".into());
    }
    let salt = &body[..16];
    let rs = u32::from_be_bytes(body[16..20].try_into().unwrap()) as usize;
    if body[20] != 65 {
        return Err("idlen is not 65".into());
    }
    let as_public = &body[21..86];
    let record = &body[86..];
    if record.len() > rs {
        return Err("more than one record".into());
    }
    let as_key = p256::PublicKey::from_sec1_bytes(as_public).map_err(|_| "bad keyid")?;
    let shared = p256::ecdh::diffie_hellman(sub.secret.to_nonzero_scalar(), as_key.as_affine());
    let ua_public = sub.secret.public_key().to_encoded_point(false);
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public.as_bytes());
    key_info.extend_from_slice(as_public);
    let ikm = hkdf(&sub.auth, shared.raw_secret_bytes(), &key_info, 32);
    let cek = hkdf(salt, &ikm, b"Content-Encoding: aes128gcm\0", 16);
    let nonce = hkdf(salt, &ikm, b"Content-Encoding: nonce\0", 12);
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).unwrap());
    let mut buf = record.to_vec();
    let plain = key
        .open_in_place(
            Nonce::try_assume_unique_for_key(&nonce).unwrap(),
            Aad::empty(),
            &mut buf,
        )
        .map_err(|_| "does not decrypt")?;
    // Strip padding: trailing zeros, then the last-record delimiter 2.
    let end = plain.iter().rposition(|b| *b != 0).ok_or("no delimiter")?;
    if plain[end] != 2 {
        return Err("not a last record".into());
    }
    Ok(plain[..end].to_vec())
}

async fn receive(
    State(service): State<PushService>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = service.inner.lock().unwrap();
    *inner.requests.entry(id.clone()).or_default() += 1;
    let scripted = inner.script.get_mut(&id).and_then(VecDeque::pop_front);
    let result = (|| -> Result<Push, String> {
        let sub = inner.subscribers.get(&id).ok_or("unknown subscription")?;
        if headers.get("ttl").is_none() {
            return Err("no TTL header".into());
        }
        if sub.keyless {
            let payload = serde_json::from_slice(&body).map_err(|_| "not JSON")?;
            return Ok(Push {
                payload,
                raw: body.to_vec(),
                vapid_key: None,
            });
        }
        if headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
            != Some("aes128gcm")
        {
            return Err("not aes128gcm".into());
        }
        let key = verify_vapid(&headers, &service.base)?;
        let plain = decrypt(sub, &body)?;
        Ok(Push {
            payload: serde_json::from_slice(&plain).map_err(|_| "payload is not JSON")?,
            raw: body.to_vec(),
            vapid_key: Some(key),
        })
    })();
    let response = match result {
        Err(e) => {
            inner.failures.push(format!("{id}: {e}"));
            StatusCode::BAD_REQUEST.into_response()
        }
        Ok(push) => match scripted {
            Some((status, retry_after)) => {
                let mut res = StatusCode::from_u16(status).unwrap().into_response();
                if let Some(secs) = retry_after {
                    res.headers_mut()
                        .insert("retry-after", secs.to_string().parse().unwrap());
                }
                res
            }
            None => {
                inner.pushes.entry(id).or_default().push(push);
                StatusCode::CREATED.into_response()
            }
        },
    };
    drop(inner);
    service.arrived.notify_waiters();
    response
}

impl PushService {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = Self {
            base: format!("http://{addr}"),
            inner: Arc::default(),
            arrived: Arc::new(Notify::new()),
        };
        let app = axum::Router::new()
            .route("/push/{id}", axum::routing::post(receive))
            .with_state(service.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        service
    }

    fn new_id(&self) -> String {
        format!("s{}", uuid::Uuid::now_v7().simple())
    }

    /// A Web Push subscription, as `pushManager.subscribe()` would give it.
    pub fn subscribe(&self) -> Subscription {
        let secret = loop {
            let bytes: [u8; 32] = rand::random();
            if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
                break k;
            }
        };
        let auth: [u8; 16] = rand::random();
        let id = self.new_id();
        let endpoint = format!("{}/push/{id}", self.base);
        let body = json!({
            "kind": "webpush",
            "endpoint": endpoint,
            "keys": {
                "p256dh": B64.encode(secret.public_key().to_encoded_point(false).as_bytes()),
                "auth": B64.encode(auth),
            }
        });
        self.inner.lock().unwrap().subscribers.insert(
            id.clone(),
            Subscriber {
                secret,
                auth,
                keyless: false,
            },
        );
        Subscription { id, endpoint, body }
    }

    /// A UnifiedPush endpoint without keys.
    pub fn unified(&self) -> Subscription {
        let id = self.new_id();
        let endpoint = format!("{}/push/{id}", self.base);
        let secret = p256::SecretKey::from_slice(&[1; 32]).unwrap();
        self.inner.lock().unwrap().subscribers.insert(
            id.clone(),
            Subscriber {
                secret,
                auth: [0; 16],
                keyless: true,
            },
        );
        let body = json!({"kind": "unifiedpush", "endpoint": endpoint});
        Subscription { id, endpoint, body }
    }

    /// The next answers for `sub` (then 201 again): status and `Retry-After`.
    pub fn answer(&self, sub: &Subscription, answers: &[(u16, Option<u64>)]) {
        self.inner
            .lock()
            .unwrap()
            .script
            .entry(sub.id.clone())
            .or_default()
            .extend(answers.iter().copied());
    }

    /// Accepted pushes for `sub` so far.
    pub fn pushes(&self, sub: &Subscription) -> Vec<Push> {
        self.check();
        let inner = self.inner.lock().unwrap();
        inner.pushes.get(&sub.id).cloned().unwrap_or_default()
    }

    /// Requests for `sub` so far, whatever the answer.
    pub fn requests(&self, sub: &Subscription) -> usize {
        *self
            .inner
            .lock()
            .unwrap()
            .requests
            .get(&sub.id)
            .unwrap_or(&0)
    }

    /// Panics if any request failed verification.
    pub fn check(&self) {
        let failures = self.inner.lock().unwrap().failures.clone();
        assert!(
            failures.is_empty(),
            "push requests failed checks: {failures:?}"
        );
    }

    /// Waits (at most `WAIT`) until `sub` has `n` accepted pushes; returns them.
    pub async fn wait_for(&self, sub: &Subscription, n: usize) -> Vec<Push> {
        self.wait_until(|| self.pushes(sub).len() >= n).await;
        self.pushes(sub)
    }

    /// Waits (at most `WAIT`) until `sub` has had `n` requests.
    pub async fn wait_requests(&self, sub: &Subscription, n: usize) {
        self.wait_until(|| self.requests(sub) >= n).await;
    }

    async fn wait_until(&self, done: impl Fn() -> bool) {
        tokio::time::timeout(WAIT, async {
            loop {
                let arrived = self.arrived.notified();
                if done() {
                    return;
                }
                arrived.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the push service waited {WAIT:?} in vain"));
    }
}
