//! The HTTP API: axum routers, extractors and error mapping. Handlers parse,
//! authenticate, call one service function and map the result to a wire
//! type from `natter-proto`; they hold no rules of their own.
//!
//! Routes are registered here, in one place, with their OpenAPI
//! descriptions (utoipa), so `/api/v1/openapi.json` always matches the code.

mod accounts;
mod chats;
mod e2ee;
mod error;
mod extract;
mod invitations;
pub(crate) mod media;
mod openapi;
mod ops;
mod push;
mod search;
mod users;
mod web;
mod ws;
mod ws_budget;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use natter_proto::ErrorCode;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use self::error::ApiError;
use crate::service::Services;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The domain services.
    pub services: Services,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The OpenAPI document, serialised once.
    pub openapi: Arc<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Natter",
        description = "The Natter messaging server's HTTP API. Errors are always \
                       `{\"error\":{\"code\",\"message\"}}`; see docs/errors.md for the codes."
    ),
    modifiers(&BearerAuth),
    components(schemas(natter_proto::ErrorBody, natter_proto::ErrorCode))
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the handlers refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every documented route, and the OpenAPI document that describes them:
/// the API proper, and the media transfer routes (large bodies, no request
/// deadline), which get different limits.
fn routes() -> (
    Router<AppState>,
    Router<AppState>,
    Router<AppState>,
    utoipa::openapi::OpenApi,
) {
    let (api, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(accounts::request_code))
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::login))
        .routes(routes!(accounts::logout))
        .routes(routes!(accounts::list_devices))
        .routes(routes!(accounts::revoke_device))
        .routes(routes!(accounts::login_code))
        .routes(routes!(push::set_push_channel, push::delete_push_channel))
        .routes(routes!(push::vapid_key))
        .routes(routes!(users::get_me, users::update_me, users::delete_me))
        .routes(routes!(users::export_me))
        .routes(routes!(users::get_user))
        .routes(routes!(users::list_contacts, users::add_contact))
        .routes(routes!(users::remove_contact))
        .routes(routes!(users::discover))
        .routes(routes!(chats::create_chat, chats::list_chats))
        .routes(routes!(chats::get_chat, chats::update_chat))
        .routes(routes!(chats::add_participants))
        .routes(routes!(chats::remove_participant, chats::change_role))
        .routes(routes!(chats::history))
        .routes(routes!(chats::mark_read))
        .routes(routes!(chats::send_message))
        .routes(routes!(chats::edit_message, chats::delete_message))
        .routes(routes!(e2ee::set_identity))
        .routes(routes!(e2ee::set_device_credential))
        .routes(routes!(e2ee::user_devices))
        .routes(routes!(e2ee::key_package_stock))
        .routes(routes!(e2ee::claim_key_packages))
        .routes(routes!(e2ee::inbox))
        .routes(routes!(e2ee::ack_inbox))
        .routes(routes!(invitations::list_invitations))
        .routes(routes!(invitations::accept_invitation))
        .routes(routes!(invitations::decline_invitation))
        .routes(routes!(ws::upgrade))
        .routes(routes!(search::search_messages))
        .routes(routes!(search::search_chats))
        .routes(routes!(search::search_contacts))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .split_for_parts();
    // The routes that carry MLS handshakes, KeyPackage batches and
    // handovers: bounded by `e2ee.*`, not by `limits.max_body_bytes`.
    let (mls, mls_doc) = OpenApiRouter::new()
        .routes(routes!(e2ee::publish_key_packages))
        .routes(routes!(e2ee::submit_commit))
        .routes(routes!(e2ee::hand_over))
        .split_for_parts();
    let (transfers, transfers_doc) = OpenApiRouter::new()
        .routes(routes!(media::upload))
        .routes(routes!(media::download))
        .routes(routes!(media::thumbnail))
        .split_for_parts();
    let (tus, tus_doc) = OpenApiRouter::new()
        .routes(routes!(media::tus_options, media::tus_create))
        .routes(routes!(
            media::tus_head,
            media::tus_patch,
            media::tus_delete
        ))
        .split_for_parts();
    doc.merge(mls_doc);
    doc.merge(transfers_doc);
    doc.merge(tus_doc);
    let transfers = transfers.merge(tus.layer(middleware::from_fn(media::tus_headers)));
    (api, mls, transfers, doc)
}

/// The OpenAPI document of a server with the default configuration,
/// without building one (for docs and tests).
#[must_use]
pub fn openapi_document() -> serde_json::Value {
    openapi::document(&routes().3, &crate::config::Config::default())
}

/// The process-wide Prometheus recorder (metrics are global in a process).
#[must_use]
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            }
            // Failure counters exist from the start, so "absent" alerts and
            // rate() over them work before the first failure.
            for name in ["natter_panics_total", "natter_internal_errors_total"] {
                metrics::counter!(name).increment(0);
            }
            metrics::counter!("natter_connections_refused_total", "reason" => "per_ip")
                .increment(0);
            handle
        })
        .clone()
}

/// The whole application: routes, limits and middleware, ready to serve.
pub fn app(services: Services) -> Router {
    let (api, mls, transfers, openapi) = routes();
    let openapi = openapi::document(&openapi, services.config());
    let openapi =
        Arc::new(serde_json::to_string_pretty(&openapi).unwrap_or_else(|_| "{}".to_owned()));
    let limits = services.config().limits.clone();
    let mls_body_bytes = services.config().e2ee.max_body_bytes();
    let max_header_bytes = limits.max_header_bytes;
    let timeout = services.config().request_timeout();
    let web_enabled = services.config().web.enabled;
    let cors = web::Cors::from_config(&services.config().web);
    let state = AppState {
        services,
        metrics: metrics_handle(),
        openapi,
    };
    // Transfers bound their bodies themselves (per-kind limits, quota) and
    // their time by idleness, not by a deadline a slow phone network would hit.
    let transfers = transfers.layer(DefaultBodyLimit::disable());
    let mls = mls.layer(DefaultBodyLimit::max(mls_body_bytes));
    // The browser client at `/` (web/dist, embedded).
    let transfers = if web_enabled {
        transfers.merge(web::router())
    } else {
        transfers
    };
    let app = api
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .merge(mls)
        .layer(middleware::from_fn(move |req, next| {
            deadline(timeout, req, next)
        }))
        .merge(transfers)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(record_metrics))
        .layer(middleware::from_fn(move |req, next| {
            header_limit(max_header_bytes, req, next)
        }))
        // The span names the path only: query strings carry search terms
        // (phone numbers) and, from some clients, tokens, and are never logged.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            tracing::debug_span!(
                "request",
                method = %req.method(),
                path = %req.uri().path(),
                version = ?req.version(),
            )
        }))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                metrics::counter!("natter_panics_total").increment(1);
                ApiError::internal(&"a request handler panicked").into_response()
            },
        ));
    // CORS outermost, so preflights are answered before anything else.
    let app = match cors {
        Some(cors) => app.layer(middleware::from_fn(move |req, next| {
            web::cors(cors.clone(), req, next)
        })),
        None => app,
    };
    app.with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "No such route.")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "This route does not accept this method.",
    )
}

/// Bounds every request in time (`limits.request_timeout_secs`).
async fn deadline(limit: std::time::Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::RequestTimeout,
            format!("The request took longer than {} seconds.", limit.as_secs()),
        )
        .into_response(),
    }
}

/// Refuses a request whose header fields together (names and values) are
/// larger than `limits.max_header_bytes`, with 431 and the error body.
/// (hyper refuses far larger heads itself, before any of this runs.)
async fn header_limit(max: usize, req: Request, next: Next) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if size > max {
        return ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!("The request's header fields are larger than {max} bytes."),
        )
        .into_response();
    }
    next.run(req).await
}

/// Counts requests and their latency by route and status.
async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("natter_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("natter_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}
