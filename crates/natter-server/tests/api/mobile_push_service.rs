//! Local stand-ins for Google's and Apple's push services, for the mobile
//! push tests, verifying each request as the real service documents it:
//!
//! - `POST /token`: Google's OAuth 2 token endpoint. The JWT-bearer grant's
//!   assertion must be RS256-signed with the test service account's key
//!   (checked with its public half) and claim `iss`, `scope`, `aud`, `iat`
//!   and an `exp` at most an hour later.
//! - `POST /v1/projects/{project}/messages:send`: FCM HTTP v1. The bearer
//!   token must be one `/token` issued; the body must be a data message
//!   whose values are all strings, with high Android priority.
//! - `POST [/sandbox]/3/device/{token}`: APNs. The request must come over
//!   HTTP/2; its provider token must be ES256-signed with the test `.p8`
//!   key's public key, with `kid` and `iss`; `apns-topic`, `apns-push-type`,
//!   `apns-priority` and `apns-expiration` must be set, and the body a
//!   generic alert with `mutable-content`.
//!
//! Anything wrong is recorded as a failure and answered with 400. Answers
//! can be scripted per device token to drive removal, retries and refresh.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, KeyPair as _, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::WAIT;

/// The test service account's RSA key: made for these tests only, and
/// worthless anywhere else (ring cannot generate RSA keys, so it is a file).
const TEST_RSA_KEY_PEM: &str = include_str!("data/TEST-ONLY-fcm-service-account-key.pem");
pub const PROJECT: &str = "natter-test-project";
pub const CLIENT_EMAIL: &str = "natter-push@natter-test-project.iam.gserviceaccount.com";
pub const KEY_ID: &str = "ABC123DEFG";
pub const TEAM_ID: &str = "DEF123GHIJ";
pub const TOPIC: &str = "org.example.natter";

/// One push as the device would get it.
#[derive(Debug, Clone)]
pub struct MobilePush {
    /// FCM: `message.data`; APNs: the whole body.
    pub payload: Value,
    /// The body as it travelled.
    pub raw: String,
    /// APNs: `sandbox` or `production`.
    pub environment: Option<&'static str>,
}

/// A scripted answer: status, `Retry-After`, body.
type Answer = (u16, Option<u64>, Value);

#[derive(Default)]
struct Inner {
    /// Access tokens `/token` issued.
    issued: HashSet<String>,
    /// Token exchanges so far.
    exchanges: usize,
    /// Distinct APNs provider tokens seen.
    provider_tokens: HashSet<String>,
    /// Answers per device token, before falling back to 200.
    script: HashMap<String, VecDeque<Answer>>,
    /// Accepted pushes per device token.
    pushes: HashMap<String, Vec<MobilePush>>,
    /// Requests per device token, whatever the answer.
    requests: HashMap<String, usize>,
    /// What failed verification.
    failures: Vec<String>,
}

/// The services.
#[derive(Clone)]
pub struct MobileServices {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
    /// The service account's public key (PKCS#1 RSAPublicKey DER).
    rsa_public: Arc<Vec<u8>>,
    /// The `.p8` key's public key (uncompressed point).
    apns_public: Arc<Vec<u8>>,
    /// The `.p8` key, PKCS#8 PEM.
    apns_pem: Arc<String>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Verifies a compact JWT's signature; returns its header and claims.
fn verify_jwt(
    token: &str,
    alg: &'static dyn ring::signature::VerificationAlgorithm,
    public: &[u8],
) -> Result<(Value, Value), String> {
    let (input, sig) = token.rsplit_once('.').ok_or("not a JWT")?;
    let sig = B64.decode(sig).map_err(|_| "signature is not base64url")?;
    UnparsedPublicKey::new(alg, public)
        .verify(input.as_bytes(), &sig)
        .map_err(|_| "bad signature")?;
    let (header, claims) = input.split_once('.').ok_or("not a JWT")?;
    let decode = |part: &str| -> Result<Value, String> {
        serde_json::from_slice(&B64.decode(part).map_err(|_| "not base64url")?)
            .map_err(|_| "not JSON".to_owned())
    };
    Ok((decode(header)?, decode(claims)?))
}

async fn token(State(s): State<MobileServices>, headers: HeaderMap, body: Bytes) -> Response {
    let result = (|| -> Result<String, String> {
        if headers.get("content-type").and_then(|v| v.to_str().ok())
            != Some("application/x-www-form-urlencoded")
        {
            return Err("token request is not a form".into());
        }
        let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
        if form.get("grant_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return Err(format!("grant_type {:?}", form.get("grant_type")));
        }
        let assertion = form.get("assertion").ok_or("no assertion")?;
        let (header, claims) = verify_jwt(assertion, &RSA_PKCS1_2048_8192_SHA256, &s.rsa_public)?;
        if header["alg"] != "RS256" {
            return Err(format!("alg {}", header["alg"]));
        }
        if claims["iss"] != CLIENT_EMAIL {
            return Err(format!("iss {}", claims["iss"]));
        }
        if claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging" {
            return Err(format!("scope {}", claims["scope"]));
        }
        if claims["aud"] != format!("{}/token", s.base) {
            return Err(format!("aud {}", claims["aud"]));
        }
        let iat = claims["iat"].as_i64().ok_or("no iat")?;
        let exp = claims["exp"].as_i64().ok_or("no exp")?;
        let now = now();
        if (iat - now).abs() > 60 || exp <= now || exp - iat > 3600 {
            return Err(format!("iat {iat} exp {exp} at {now}"));
        }
        Ok(format!("at-{}", uuid::Uuid::now_v7().simple()))
    })();
    let mut inner = s.inner.lock().unwrap();
    inner.exchanges += 1;
    match result {
        Ok(access) => {
            inner.issued.insert(access.clone());
            Json(json!({"access_token": access, "expires_in": 3599, "token_type": "Bearer"}))
                .into_response()
        }
        Err(e) => {
            inner.failures.push(format!("token: {e}"));
            (StatusCode::BAD_REQUEST, "{\"error\":\"invalid_grant\"}").into_response()
        }
    }
}

/// Records a verified push or a failure, and gives the scripted answer.
fn conclude(
    s: &MobileServices,
    device: Option<String>,
    result: Result<MobilePush, String>,
) -> Response {
    let mut inner = s.inner.lock().unwrap();
    let response = match (device, result) {
        (Some(device), Ok(push)) => {
            *inner.requests.entry(device.clone()).or_default() += 1;
            match inner.script.get_mut(&device).and_then(VecDeque::pop_front) {
                Some((status, retry_after, body)) => {
                    let mut res =
                        (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
                    if let Some(secs) = retry_after {
                        res.headers_mut()
                            .insert("retry-after", secs.to_string().parse().unwrap());
                    }
                    res
                }
                None => {
                    inner.pushes.entry(device).or_default().push(push);
                    Json(json!({"name": "projects/p/messages/1"})).into_response()
                }
            }
        }
        (device, Err(e)) => {
            inner.failures.push(format!("{device:?}: {e}"));
            StatusCode::BAD_REQUEST.into_response()
        }
        (None, Ok(_)) => StatusCode::BAD_REQUEST.into_response(),
    };
    drop(inner);
    s.arrived.notify_waiters();
    response
}

async fn fcm_send(
    State(s): State<MobileServices>,
    UrlPath(project): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let device = body["message"]["token"].as_str().map(str::to_owned);
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let result = (|| -> Result<MobilePush, String> {
        if project != PROJECT {
            return Err(format!("project {project}"));
        }
        let bearer = bearer.ok_or("no bearer token")?;
        if !s.inner.lock().unwrap().issued.contains(&bearer) {
            return Err("a bearer token /token did not issue".into());
        }
        let message = body["message"].as_object().ok_or("no message")?;
        let keys: HashSet<&str> = message.keys().map(String::as_str).collect();
        if keys != HashSet::from(["token", "data", "android"]) {
            return Err(format!("message fields {keys:?}"));
        }
        if body["message"]["android"]["priority"] != "high" {
            return Err("android.priority is not high".into());
        }
        let data = body["message"]["data"].as_object().ok_or("no data")?;
        if let Some((k, _)) = data.iter().find(|(_, v)| !v.is_string()) {
            return Err(format!("data.{k} is not a string"));
        }
        Ok(MobilePush {
            payload: body["message"]["data"].clone(),
            raw: body.to_string(),
            environment: None,
        })
    })();
    // A refused access token is answered 401 whatever the script says.
    if let Some(device) = &device {
        let mut inner = s.inner.lock().unwrap();
        if let Some(front) = inner.script.get(device).and_then(VecDeque::front)
            && front.0 == 401
        {
            inner.script.get_mut(device).unwrap().pop_front();
            *inner.requests.entry(device.clone()).or_default() += 1;
            inner.issued.clear();
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    conclude(&s, device, result)
}

async fn apns_send(
    s: MobileServices,
    environment: &'static str,
    device: String,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = (|| -> Result<MobilePush, String> {
        if version != Version::HTTP_2 {
            return Err(format!("{version:?}, not HTTP/2"));
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let jwt = header("authorization")
            .and_then(|v| v.strip_prefix("bearer "))
            .ok_or("no bearer provider token")?;
        let (jwt_header, claims) = verify_jwt(jwt, &ECDSA_P256_SHA256_FIXED, &s.apns_public)?;
        if jwt_header["alg"] != "ES256" || jwt_header["kid"] != KEY_ID {
            return Err(format!("JWT header {jwt_header}"));
        }
        let iat = claims["iat"].as_i64().ok_or("no iat")?;
        if claims["iss"] != TEAM_ID || (iat - now()).abs() > 3600 {
            return Err(format!("JWT claims {claims}"));
        }
        if header("apns-topic") != Some(TOPIC) {
            return Err(format!("apns-topic {:?}", header("apns-topic")));
        }
        if header("apns-push-type") != Some("alert") {
            return Err("apns-push-type is not alert".into());
        }
        if header("apns-priority") != Some("10") {
            return Err("apns-priority is not 10".into());
        }
        let expiration: i64 = header("apns-expiration")
            .and_then(|v| v.parse().ok())
            .ok_or("no apns-expiration")?;
        if expiration <= now() {
            return Err("apns-expiration is in the past".into());
        }
        let payload: Value = serde_json::from_slice(&body).map_err(|_| "body is not JSON")?;
        let aps = &payload["aps"];
        if aps["alert"]["title"] != "Natter"
            || aps["alert"]["body"] != "New message"
            || aps["mutable-content"] != 1
        {
            return Err(format!("aps {aps}"));
        }
        s.inner
            .lock()
            .unwrap()
            .provider_tokens
            .insert(jwt.to_owned());
        Ok(MobilePush {
            payload,
            raw: String::from_utf8_lossy(&body).into_owned(),
            environment: Some(environment),
        })
    })();
    conclude(&s, Some(device), result)
}

impl MobileServices {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rsa = RsaKeyPair::from_pkcs8(&pem_der(TEST_RSA_KEY_PEM)).unwrap();
        let apns_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let services = Self {
            base: format!("http://{addr}"),
            inner: Arc::default(),
            arrived: Arc::new(Notify::new()),
            rsa_public: Arc::new(rsa.public_key().as_ref().to_vec()),
            apns_public: Arc::new(apns_key.public_key_raw().to_vec()),
            apns_pem: Arc::new(apns_key.serialize_pem()),
        };
        let production = |State(s): State<Self>,
                          UrlPath(device): UrlPath<String>,
                          version: Version,
                          headers: HeaderMap,
                          body: Bytes| {
            apns_send(s, "production", device, version, headers, body)
        };
        let sandbox =
            |State(s): State<Self>,
             UrlPath(device): UrlPath<String>,
             version: Version,
             headers: HeaderMap,
             body: Bytes| { apns_send(s, "sandbox", device, version, headers, body) };
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .route(
                "/v1/projects/{project}/messages:send",
                axum::routing::post(fcm_send),
            )
            .route("/3/device/{device}", axum::routing::post(production))
            .route("/sandbox/3/device/{device}", axum::routing::post(sandbox))
            .with_state(services.clone());
        // axum::serve speaks HTTP/1.1 and, with prior knowledge, h2c.
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        services
    }

    /// Writes the service account file and the `.p8` key into `dir` and
    /// points `config` at them and at these services.
    pub fn configure(&self, dir: &Path, config: &mut natter_server::Config) {
        let (account, p8) = self.write_keys(dir);
        config.push.fcm.enabled = true;
        config.push.fcm.service_account_file = Some(account);
        config.push.fcm.endpoint = self.base.clone();
        config.push.apns.enabled = true;
        config.push.apns.key_file = Some(p8);
        config.push.apns.key_id = Some(KEY_ID.to_owned());
        config.push.apns.team_id = Some(TEAM_ID.to_owned());
        config.push.apns.topic = Some(TOPIC.to_owned());
        config.push.apns.endpoint = self.base.clone();
        config.push.apns.sandbox_endpoint = format!("{}/sandbox", self.base);
    }

    /// The service account JSON file (as the Firebase console gives it) and
    /// the `.p8` file, in `dir`.
    pub fn write_keys(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let account = dir.join("service-account.json");
        std::fs::write(
            &account,
            json!({
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "0123456789abcdef",
                "private_key": &TEST_RSA_KEY_PEM[TEST_RSA_KEY_PEM.find("-----BEGIN").unwrap()..],
                "client_email": CLIENT_EMAIL,
                "client_id": "1",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": format!("{}/token", self.base),
            })
            .to_string(),
        )
        .unwrap();
        let p8 = dir.join(format!("AuthKey_{KEY_ID}.p8"));
        std::fs::write(&p8, self.apns_pem.as_bytes()).unwrap();
        (account, p8)
    }

    /// The next answers for a device token (then 200 again).
    pub fn answer(&self, device: &str, answers: &[(u16, Option<u64>, Value)]) {
        self.inner
            .lock()
            .unwrap()
            .script
            .entry(device.to_owned())
            .or_default()
            .extend(answers.iter().cloned());
    }

    /// Accepted pushes for a device token so far.
    pub fn pushes(&self, device: &str) -> Vec<MobilePush> {
        self.check();
        let inner = self.inner.lock().unwrap();
        inner.pushes.get(device).cloned().unwrap_or_default()
    }

    /// Requests for a device token so far, whatever the answer.
    pub fn requests(&self, device: &str) -> usize {
        *self
            .inner
            .lock()
            .unwrap()
            .requests
            .get(device)
            .unwrap_or(&0)
    }

    /// OAuth token exchanges so far.
    pub fn exchanges(&self) -> usize {
        self.inner.lock().unwrap().exchanges
    }

    /// Distinct APNs provider tokens seen so far.
    pub fn provider_tokens(&self) -> usize {
        self.inner.lock().unwrap().provider_tokens.len()
    }

    /// Panics if any request failed verification.
    pub fn check(&self) {
        let failures = self.inner.lock().unwrap().failures.clone();
        assert!(
            failures.is_empty(),
            "mobile push requests failed checks: {failures:?}"
        );
    }

    /// Waits (at most `WAIT`) until a device token has `n` accepted pushes.
    pub async fn wait_for(&self, device: &str, n: usize) -> Vec<MobilePush> {
        self.wait_until(|| self.pushes(device).len() >= n).await;
        self.pushes(device)
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
        .unwrap_or_else(|_| panic!("the mobile push services waited {WAIT:?} in vain"));
    }
}

/// The DER inside a PEM block.
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An APNs device token: 64 hex digits, different each call.
pub fn apns_token() -> String {
    hex(&rand::random::<[u8; 32]>())
}

/// An FCM registration token, shaped as the Firebase SDK makes them.
pub fn fcm_token() -> String {
    let id = B64.encode(rand::random::<[u8; 16]>());
    let rest = B64.encode(rand::random::<[u8; 32]>());
    format!("{}:APA91b{rest}{}", &id[..22], "_x-".repeat(30))
}
