//! Extractors: JSON bodies with our errors and limits, the authenticated
//! [`Principal`], the client address.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use natter_proto::ErrorCode;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::service::Principal;

/// A JSON body: `Content-Type: application/json`, within the body size and
/// nesting limits, parsed into `T`. Malformed JSON is a 400, a well-formed
/// body of the wrong shape a 422.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let max = state.services.config().limits.max_body_bytes;
        read_json(req, state, max).await.map(ApiJson)
    }
}

/// [`ApiJson`] for the end-to-end encryption routes that carry MLS
/// handshakes, KeyPackage batches and handovers, bounded by
/// [`crate::config::E2eeConfig::max_body_bytes`] instead of
/// `limits.max_body_bytes`.
#[derive(Debug)]
pub(crate) struct E2eeJson<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for E2eeJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let max = state.services.config().e2ee.max_body_bytes();
        read_json(req, state, max).await.map(E2eeJson)
    }
}

async fn read_json<T: DeserializeOwned>(
    req: Request,
    state: &AppState,
    max_body_bytes: usize,
) -> Result<T, ApiError> {
    {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "Send the body as JSON with `Content-Type: application/json`.",
            ));
        }
        let limits = &state.services.config().limits;
        // Refuse a declared oversize body before reading it (and before hyper
        // answers `Expect: 100-continue`).
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max_body_bytes as u64) {
            return Err(too_large(max_body_bytes));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                too_large(max_body_bytes)
            } else {
                ApiError::new(ErrorCode::InvalidJson, "The body could not be read.")
            }
        })?;
        let depth = json_depth(&bytes);
        if depth > limits.max_json_depth {
            return Err(ApiError::new(
                ErrorCode::InvalidJson,
                format!(
                    "The JSON is nested {depth} levels deep; the most allowed is {}.",
                    limits.max_json_depth
                ),
            ));
        }
        // serde would read a struct from an array too; our bodies are objects.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::new(
                ErrorCode::ValidationFailed,
                "The body must be a JSON object.",
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::new(
                    ErrorCode::ValidationFailed,
                    format!("Invalid body: {}.", describe_shape_error(&e)),
                ),
                Category::Io | Category::Syntax | Category::Eof => ApiError::new(
                    ErrorCode::InvalidJson,
                    format!("The body is not valid JSON: {e}."),
                ),
            }
        })
    }
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("The body is larger than {max} bytes."),
    )
}

/// serde's message, without Rust type names ("expected struct UpdateMe").
fn describe_shape_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find("expected struct ") {
        Some(i) => {
            let rest = &text[i + "expected struct ".len()..];
            let tail = rest.find(" at line").map_or("", |j| &rest[j..]);
            format!("{}expected a JSON object{tail}", &text[..i])
        }
        None => text,
    }
}

/// The deepest nesting of arrays and objects in a JSON text, found with one
/// pass over the bytes (strings skipped), before any allocation by serde.
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = || {
            ApiError::new(
                ErrorCode::Unauthorized,
                "Send a valid access token as `Authorization: Bearer <token>`.",
            )
        };
        let token = bearer_token(&parts.headers).ok_or_else(unauthorized)?;
        state
            .services
            .authenticate(token)
            .await
            .map_err(|e| match e {
                crate::service::ServiceError::Unauthorized => unauthorized(),
                other => other.into(),
            })
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// An id from the path. One that does not parse names nothing, so it answers
/// `not_found` (with the resource's code) like an id that names nothing.
pub(crate) fn path_id<T: std::str::FromStr>(
    raw: &str,
    code: ErrorCode,
    what: &str,
) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::new(code, format!("No such {what}.")))
}

/// Query parameters parsed into `T`; anything malformed or unknown is a 400
/// `invalid_parameter` in our envelope.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        parse_query(query).map(ApiQuery).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidParameter,
                format!("Invalid query string: {e}."),
            )
        })
    }
}

fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, String> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{query}")
            .parse::<axum::http::Uri>()
            .map_err(|e| e.to_string())?,
    )
    .map(|axum::extract::Query(t)| t)
    .map_err(|e| e.body_text())
}

/// The client's address: the socket peer, or with `trust_forwarded_for`
/// the last `X-Forwarded-For` entry (the one our proxy added).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIp(pub(crate) IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.services.config().trust_forwarded_for {
            let forwarded = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|s| s.trim().parse::<IpAddr>().ok())
                .next_back();
            if let Some(ip) = forwarded {
                return Ok(Self(ip));
            }
        }
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| Self(addr.ip()))
            .ok_or_else(|| ApiError::internal(&"the connection has no peer address"))
    }
}

#[cfg(test)]
mod tests {
    use super::json_depth;

    #[test]
    fn depth_counts_nesting_and_ignores_strings() {
        assert_eq!(json_depth(br#"{"a":1}"#), 1);
        assert_eq!(json_depth(br#"{"a":[{"b":[]}]}"#), 4);
        assert_eq!(json_depth(br#"{"a":"[[[{{{\"]]"}"#), 1);
        assert_eq!(json_depth(b"42"), 0);
        assert_eq!(json_depth(&b"[".repeat(100)), 100);
    }

    mod properties {
        use super::json_depth;
        use proptest::prelude::*;
        use serde_json::Value;

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<String>().prop_map(Value::from),
                // Strings full of brackets, quotes and escapes.
                proptest::collection::vec(
                    proptest::sample::select(vec!['[', '{', '"', '\\', ']', '}', 'x']),
                    0..12
                )
                .prop_map(|c| Value::from(c.into_iter().collect::<String>())),
            ];
            leaf.prop_recursive(24, 200, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::btree_map(any::<String>(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn depth_of(v: &Value) -> usize {
            match v {
                Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
                Value::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
                _ => 0,
            }
        }

        proptest! {
            #[test]
            fn depth_is_the_nesting_serde_would_see(v in value(), pretty in any::<bool>()) {
                let text = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
                prop_assert_eq!(json_depth(&text), depth_of(&v));
            }

            #[test]
            fn depth_never_panics_and_bounds_nothing_it_should_not(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                let depth = json_depth(&bytes);
                let opens = bytes.iter().filter(|b| matches!(b, b'[' | b'{')).count();
                prop_assert!(depth <= opens);
            }
        }
    }
}
