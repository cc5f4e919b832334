//! The browser client, served at `/` from files embedded in the binary
//! (web/dist, built by scripts/web-build and committed, so serving needs no
//! Node or wasm tooling), and the API's CORS policy.
//!
//! Every page answer carries a strict Content-Security-Policy: scripts,
//! styles, connections and workers from this origin only; WebAssembly may
//! be compiled (`'wasm-unsafe-eval'`), nothing else is loosened (no inline
//! script or style, no `eval`, no third-party origin). Decrypted images
//! are shown from `blob:` URLs the page makes itself.
//!
//! CORS is closed by default: no `Access-Control-*` header is ever sent, so
//! only pages of this origin can read answers. `web.cors_origins` opens the
//! API to the listed origins (the bearer token travels in a header, never
//! a cookie, so no credentials mode is needed).
//!
//! May depend on: the config. Nothing here reaches the services.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest as _, Sha256};

use crate::config::WebConfig;

/// The policy of every page answer (see the module docs).
pub(crate) const PAGE_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' blob:; connect-src 'self'; worker-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// Its path under `/`.
    path: &'static str,
    /// Its `Content-Type`.
    mime: &'static str,
    /// The bytes.
    body: &'static [u8],
    /// The same, gzip-compressed (served when the browser accepts gzip).
    gzip: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $mime:literal) => {
        Asset {
            path: concat!("/", $path),
            mime: $mime,
            body: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../web/dist/",
                $path
            )),
            gzip: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../web/dist/",
                $path,
                ".gz"
            )),
        }
    };
}

/// Everything web/dist holds.
static ASSETS: [Asset; 6] = [
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("sw.js", "text/javascript; charset=utf-8"),
    asset!("pkg/natter_web.js", "text/javascript; charset=utf-8"),
    asset!("pkg/natter_web_bg.wasm", "application/wasm"),
];

/// Each asset's ETag (a hash of its bytes), computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// The routes of the browser client (`/` is `index.html`).
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for (i, asset) in ASSETS.iter().enumerate() {
        let handler = move |headers: HeaderMap| async move { serve(i, &headers) };
        if asset.path == "/index.html" {
            router = router.route("/", get(handler));
        }
        router = router.route(asset.path, get(handler));
    }
    router
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

fn serve(index: usize, headers: &HeaderMap) -> Response {
    let (Some(asset), Some(etag)) = (ASSETS.get(index), etags().get(index)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut out = HeaderMap::new();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    out.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    // Names do not change with the contents: revalidate (cheap, by ETag).
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        out.insert(header::ETAG, v);
    }
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    if accepts_gzip(headers) {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        return (out, asset.gzip).into_response();
    }
    (out, asset.body).into_response()
}

/// The CORS layer's view of the config.
#[derive(Debug, Clone)]
pub(crate) struct Cors {
    /// Allowed origins, exactly as browsers send them.
    origins: Arc<Vec<HeaderValue>>,
    /// `Access-Control-Max-Age`.
    max_age: HeaderValue,
}

impl Cors {
    /// `None` when CORS is closed (no origin listed).
    pub(crate) fn from_config(web: &WebConfig) -> Option<Self> {
        let origins: Vec<HeaderValue> = web
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        (!origins.is_empty()).then(|| Self {
            origins: Arc::new(origins),
            max_age: HeaderValue::from(web.cors_max_age_secs),
        })
    }
}

/// Answers preflights from allowed origins and marks their answers readable.
/// Requests from any other origin pass untouched: without the headers, the
/// browser keeps the answer from the page.
pub(crate) async fn cors(cors: Cors, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| cors.origins.contains(o))
        .cloned();
    let Some(origin) = origin else {
        return next.run(req).await;
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, HEAD"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "authorization, content-type, if-none-match, range, \
                 tus-resumable, upload-length, upload-offset, upload-metadata",
            ),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, cors.max_age.clone());
        r
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "etag, content-range, location, retry-after, upload-offset, upload-length",
        ),
    );
    h.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("")),
        );
        h
    }

    #[test]
    fn gzip_is_served_only_when_accepted() {
        assert!(accepts_gzip(&with("gzip, deflate, br")));
        assert!(accepts_gzip(&with("br;q=1.0, gzip;q=0.5")));
        assert!(accepts_gzip(&with("*")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("br")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_policy_loosens_nothing_but_wasm() {
        assert!(PAGE_CSP.contains("script-src 'self' 'wasm-unsafe-eval';"));
        assert!(!PAGE_CSP.contains("unsafe-inline"));
        assert!(!PAGE_CSP.contains("'unsafe-eval'"));
        assert!(!PAGE_CSP.contains("http"));
    }
}
