//! `/api/v1/media`: plain uploads (`multipart/form-data`, one
//! request), resumable uploads (tus 1.0: core, creation, termination,
//! expiration), downloads with `Range`, and thumbnails.
//!
//! These routes move large bodies, so they are exempt from the request
//! deadline and the JSON body limit; instead every transfer is cut off when
//! it moves no byte for `media.transfer_idle_timeout_secs`, and sizes are
//! bounded by the per-kind limits and the user's quota.

use std::ops::Range;

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use natter_proto::media::{Media, MediaKind, media_url, thumbnail_url};
use natter_proto::{ChatId, ErrorBody, ErrorCode, MediaId};
use time::OffsetDateTime;
use time::macros::format_description;

use super::AppState;
use super::error::ApiError;
use super::extract::path_id;
use crate::blobs::BlobKind;
use crate::service::{Principal, UploadInfo, sha256_hex};
use crate::store::MediaRecord;

/// The tus protocol version spoken here.
const TUS_VERSION: &str = "1.0.0";
/// The tus extensions supported.
const TUS_EXTENSIONS: &str = "creation,termination,expiration";
/// Where resumable uploads live.
const TUS_BASE: &str = "/api/v1/media/tus";

/// Longest value of a text part (`type`, `chat_id`) of a multipart upload.
const MAX_TEXT_PART_BYTES: usize = 256;
/// Room for multipart framing (boundaries, part headers, text parts) on top
/// of the largest file when a declared `Content-Length` is checked.
const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;
/// Longest `Upload-Metadata` header accepted.
const MAX_TUS_METADATA_BYTES: usize = 4096;

/// Served media never runs as a page of this origin: no scripts, no
/// plugins, no navigation, whatever a browser thinks the bytes are.
const MEDIA_CSP: &str = "default-src 'none'; sandbox; frame-ancestors 'none'";

static TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
static TUS_VERSION_H: HeaderName = HeaderName::from_static("tus-version");
static TUS_EXTENSION: HeaderName = HeaderName::from_static("tus-extension");
static TUS_MAX_SIZE: HeaderName = HeaderName::from_static("tus-max-size");
static UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
static UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
static UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
static UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
static UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");

/// The multipart form of `POST /api/v1/media/upload` (for the OpenAPI document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// The bytes.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// The chat it is for (optional; must be one of the caller's).
    chat_id: Option<ChatId>,
    /// `image`, `video`, `file` or `encrypted`.
    #[schema(value_type = String)]
    r#type: MediaKind,
}

pub(crate) fn media_dto(m: &MediaRecord) -> Media {
    let finished = m.finished.as_ref();
    Media {
        media_id: m.id,
        kind: m.kind,
        size: m.length,
        content_type: finished.map_or_else(
            || "application/octet-stream".to_owned(),
            |f| f.content_type.clone(),
        ),
        sha256: finished.map(|f| sha256_hex(&f.sha256)).unwrap_or_default(),
        url: media_url(m.id),
        thumbnail_url: finished
            .filter(|f| f.thumbnail)
            .map(|_| thumbnail_url(m.id)),
        width: finished.and_then(|f| f.dimensions).map(|d| d.0),
        height: finished.and_then(|f| f.dimensions).map(|d| d.1),
        filename: m.filename.clone(),
        chat_id: m.chat_id,
        created_at: finished
            .map_or(m.created_at, |f| f.completed_at)
            .to_datetime(),
    }
}

fn media_id(raw: &str) -> Result<MediaId, ApiError> {
    path_id(raw, ErrorCode::MediaNotFound, "media")
}

fn stalled() -> ApiError {
    ApiError::new(
        ErrorCode::RequestTimeout,
        "The upload stopped sending data.",
    )
}

fn bad_multipart(e: &MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(ErrorCode::PayloadTooLarge, e.body_text());
    }
    ApiError::new(
        ErrorCode::InvalidParameter,
        format!(
            "The multipart body is malformed or was cut off: {}.",
            e.body_text()
        ),
    )
}

/// Reads a short text part, bounded.
async fn text_part(
    field: &mut Field<'_>,
    idle: std::time::Duration,
    name: &str,
) -> Result<String, ApiError> {
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(idle, field.chunk())
        .await
        .map_err(|_| stalled())?
        .map_err(|e| bad_multipart(&e))?
    {
        if out.len() + chunk.len() > MAX_TEXT_PART_BYTES {
            return Err(ApiError::new(
                ErrorCode::ValidationFailed,
                format!("`{name}` is longer than {MAX_TEXT_PART_BYTES} bytes."),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    String::from_utf8(out).map_err(|_| {
        ApiError::new(
            ErrorCode::ValidationFailed,
            format!("`{name}` must be UTF-8 text."),
        )
    })
}

/// Uploads a file in one request (a `multipart/form-data` body with
/// `file`, `chat_id`, `type`), streamed to storage.
#[utoipa::path(
    post, path = "/api/v1/media/upload", tag = "media",
    security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored.", body = Media),
        (status = 400, description = "Malformed multipart body.", body = ErrorBody),
        (status = 404, description = "`chat_id` names no chat of the caller's.", body = ErrorBody),
        (status = 413, description = "Larger than the type's limit, or over the quota.", body = ErrorBody),
        (status = 415, description = "Not multipart, or the bytes are not of the declared type.", body = ErrorBody),
        (status = 422, description = "Missing or bad part, or an image the server refuses to decode.", body = ErrorBody),
        (status = 429, description = "Too many uploads.", body = ErrorBody),
    )
)]
pub(crate) async fn upload(
    State(app): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let services = &app.services;
    let max = services.upload_limit(None);
    if content_length(&headers).is_some_and(|len| len > max + MULTIPART_OVERHEAD_BYTES) {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("An upload may have at most {max} bytes."),
        ));
    }
    let mut multipart = multipart.map_err(|_| {
        ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "Send the upload as `multipart/form-data` with a `file` part.",
        )
    })?;
    let idle = services.transfer_idle_timeout();
    let mut info = UploadInfo::default();
    let mut staging = None;
    loop {
        let next = tokio::time::timeout(idle, multipart.next_field())
            .await
            .map_err(|_| stalled())?
            .map_err(|e| bad_multipart(&e))?;
        let Some(mut field) = next else { break };
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" if staging.is_none() => {
                info.filename = field.file_name().map(str::to_owned);
                let mut s = services
                    .start_upload(&who, services.upload_limit(info.kind.as_deref()))
                    .await?;
                while let Some(chunk) = tokio::time::timeout(idle, field.chunk())
                    .await
                    .map_err(|_| stalled())?
                    .map_err(|e| bad_multipart(&e))?
                {
                    s.write(&chunk).await?;
                }
                staging = Some(s);
            }
            "type" if info.kind.is_none() => {
                let kind = text_part(&mut field, idle, "type").await?;
                if let Some(s) = &mut staging {
                    s.limit_to(services.upload_limit(Some(kind.trim())));
                }
                info.kind = Some(kind);
            }
            "chat_id" if info.chat_id.is_none() => {
                info.chat_id = Some(text_part(&mut field, idle, "chat_id").await?);
            }
            "file" | "type" | "chat_id" => {
                return Err(ApiError::new(
                    ErrorCode::ValidationFailed,
                    format!("The part `{name}` appears more than once."),
                ));
            }
            other => {
                return Err(ApiError::new(
                    ErrorCode::ValidationFailed,
                    format!(
                        "Unknown part `{other}`: send `file`, `type` and optionally `chat_id`."
                    ),
                ));
            }
        }
    }
    let staging = staging.ok_or_else(|| {
        ApiError::new(ErrorCode::ValidationFailed, "The `file` part is required.")
    })?;
    let media = services.finish_upload(&who, staging, info).await?;
    let mut response = (StatusCode::CREATED, Json(media_dto(&media))).into_response();
    if let Ok(location) = HeaderValue::from_str(&media_url(media.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Downloads media: the uploader's, a profile picture, or attached to a
/// message the caller can see. `Range` (one range) answers 206.
#[utoipa::path(
    get, path = "/api/v1/media/{media_id}", tag = "media",
    security(("bearer" = [])),
    params(("media_id" = String, Path, description = "The media.")),
    responses(
        (status = 200, description = "The bytes.", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range.", content_type = "application/octet-stream"),
        (status = 304, description = "Not modified (`If-None-Match`)."),
        (status = 404, description = "No such media, or not one the caller may fetch.", body = ErrorBody),
        (status = 416, description = "The range lies outside the content.", body = ErrorBody),
    )
)]
pub(crate) async fn download(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let media = app.services.media_for(&who, media_id(&raw)?).await?;
    serve(&app, &media, BlobKind::Original, &headers).await
}

/// A thumbnail (JPEG) of a plaintext image the server could decode.
#[utoipa::path(
    get, path = "/api/v1/media/{media_id}/thumbnail", tag = "media",
    security(("bearer" = [])),
    params(("media_id" = String, Path, description = "The media.")),
    responses(
        (status = 200, description = "The thumbnail.", content_type = "image/jpeg"),
        (status = 404, description = "No such media, not one the caller may fetch, or no thumbnail (encrypted, not an image, or a format the server does not decode).", body = ErrorBody),
    )
)]
pub(crate) async fn thumbnail(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let media = app.services.media_for(&who, media_id(&raw)?).await?;
    if !media.finished.as_ref().is_some_and(|f| f.thumbnail) {
        return Err(ApiError::new(
            ErrorCode::MediaNotFound,
            "This media has no thumbnail.",
        ));
    }
    serve(&app, &media, BlobKind::Thumbnail, &headers).await
}

/// Streams a blob with the headers that keep a browser from treating it as
/// a page of this origin.
async fn serve(
    app: &AppState,
    media: &MediaRecord,
    kind: BlobKind,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let Some(finished) = &media.finished else {
        return Err(ApiError::new(ErrorCode::MediaNotFound, "No such media."));
    };
    let (etag, content_type, size) = match kind {
        BlobKind::Original => (
            format!("\"{}\"", sha256_hex(&finished.sha256)),
            finished.content_type.as_str(),
            Some(media.length),
        ),
        // A thumbnail's length is not recorded; it is small and sent whole.
        BlobKind::Thumbnail => (
            format!("\"{}-thumbnail\"", sha256_hex(&finished.sha256)),
            "image/jpeg",
            None,
        ),
    };
    let mut out = HeaderMap::new();
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    out.insert(header::ETAG, value(&etag));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(MEDIA_CSP),
    );
    // An id's bytes never change; only the caller's cache may keep them.
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // Weak comparison (RFC 9110 §13.1.2): `W/"x"` matches `"x"`.
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
        })
    {
        return Ok((StatusCode::NOT_MODIFIED, out).into_response());
    }
    out.insert(
        header::CONTENT_TYPE,
        value(served_type(media.kind, content_type)),
    );
    // Inline only what the server decoded and checked at upload.
    let inline = kind == BlobKind::Thumbnail
        || (media.kind == MediaKind::Image && crate::thumbnail::format_of(content_type).is_some());
    out.insert(
        header::CONTENT_DISPOSITION,
        value(&disposition(inline, media.filename.as_deref())),
    );
    let mut range = None;
    if let Some(size) = size {
        out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let if_range_ok = headers
            .get(header::IF_RANGE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.trim() == etag);
        if let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok())
            && if_range_ok
        {
            match parse_range(spec, size) {
                RangeSpec::Whole => {}
                RangeSpec::Part(r) => range = Some(r),
                RangeSpec::Unsatisfiable => {
                    let mut response = ApiError::new(
                        ErrorCode::RangeNotSatisfiable,
                        format!("The range lies outside the {size} bytes of this media."),
                    )
                    .into_response();
                    response
                        .headers_mut()
                        .insert(header::CONTENT_RANGE, value(&format!("bytes */{size}")));
                    return Ok(response);
                }
            }
        }
        let length = range.as_ref().map_or(size, |r| r.end - r.start);
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if let Some(r) = &range {
            out.insert(
                header::CONTENT_RANGE,
                value(&format!("bytes {}-{}/{size}", r.start, r.end - 1)),
            );
        }
    }
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    // An empty blob needs no read (and a zero-length range read is an error
    // to object stores).
    let body = if size == Some(0) {
        Body::empty()
    } else {
        let stream = app.services.media_bytes(media, kind, range).await?;
        Body::from_stream(stream.map(|r| r.map_err(std::io::Error::other)))
    };
    metrics::counter!("natter_media_downloads_total", "blob" => match kind {
        BlobKind::Original => "original",
        BlobKind::Thumbnail => "thumbnail",
    })
    .increment(1);
    Ok((status, out, body).into_response())
}

/// The `Content-Type` a blob is served with: what was found in it for
/// images and videos (checked at upload), and for files only types no
/// browser runs (anything else, HTML and SVG included, goes out as
/// `application/octet-stream`, on top of the sandboxing headers).
fn served_type(kind: MediaKind, found: &str) -> &str {
    let inert = found.starts_with("image/") && found != "image/svg+xml"
        || found.starts_with("video/")
        || found.starts_with("audio/")
        || matches!(
            found,
            "application/pdf" | "application/zip" | "application/gzip" | "application/epub+zip"
        );
    match kind {
        MediaKind::Image | MediaKind::Video => found,
        MediaKind::File if inert => found,
        MediaKind::File | MediaKind::Encrypted => "application/octet-stream",
    }
}

/// `Content-Disposition`: `inline` only for images shown as images; the
/// client's file name is sent percent-encoded (RFC 8187), never raw.
fn disposition(inline: bool, filename: Option<&str>) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    match filename {
        None => kind.to_owned(),
        Some(name) => {
            let mut encoded = String::with_capacity(name.len());
            for b in name.bytes() {
                if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                    encoded.push(char::from(b));
                } else {
                    encoded.push_str(&format!("%{b:02X}"));
                }
            }
            format!("{kind}; filename*=UTF-8''{encoded}")
        }
    }
}

/// What a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeSpec {
    /// Not a single byte range we serve partially: send everything (RFC
    /// 9110 lets a server ignore `Range`, e.g. several ranges).
    Whole,
    /// One satisfiable range, end exclusive.
    Part(Range<u64>),
    /// A byte range outside the content.
    Unsatisfiable,
}

pub(crate) fn parse_range(spec: &str, size: u64) -> RangeSpec {
    // The unit is case-insensitive (RFC 9110 §14.1).
    let spec = spec.trim();
    let Some(set) = spec
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &spec[6..])
    else {
        return RangeSpec::Whole;
    };
    if set.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeSpec::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    // Digits only; a position too large for u64 is past any end.
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => RangeSpec::Unsatisfiable,
            Some(n) if size > 0 => RangeSpec::Part(size.saturating_sub(n)..size),
            Some(_) => RangeSpec::Unsatisfiable,
            None => RangeSpec::Whole,
        },
        // bytes=A-: from A to the end.
        (false, true) => match number(first) {
            Some(a) if a < size => RangeSpec::Part(a..size),
            Some(_) => RangeSpec::Unsatisfiable,
            None => RangeSpec::Whole,
        },
        // bytes=A-B, B inclusive and clamped to the end.
        (false, false) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a < size {
                    RangeSpec::Part(a..b.saturating_add(1).min(size))
                } else {
                    RangeSpec::Unsatisfiable
                }
            }
            _ => RangeSpec::Whole,
        },
        (true, true) => RangeSpec::Whole,
    }
}

// ---- tus 1.0 ---------------------------------------------------------------

/// Adds `Tus-Resumable` to every tus response, errors included, and
/// `Tus-Version` to a refused version (412).
pub(crate) async fn tus_headers(req: Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
    if response.status() == StatusCode::PRECONDITION_FAILED {
        response
            .headers_mut()
            .insert(TUS_VERSION_H.clone(), HeaderValue::from_static(TUS_VERSION));
    }
    response
}

fn require_tus(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.get(&TUS_RESUMABLE).and_then(|v| v.to_str().ok()) == Some(TUS_VERSION) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::TusVersionUnsupported,
        format!("Send `Tus-Resumable: {TUS_VERSION}`; it is the only version spoken here."),
    ))
}

pub(crate) fn header_number(
    headers: &HeaderMap,
    name: &HeaderName,
) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!("`{name}` must be a non-negative integer."),
                )
            }),
    }
}

/// Reads tus `Upload-Metadata`: comma-separated `key base64value` pairs.
/// Keys used: `type` (image, video, file, encrypted), `chat_id`, and
/// `filename` (or `name`). Others (a client's `filetype`, …) are ignored.
pub(crate) fn tus_metadata(headers: &HeaderMap) -> Result<UploadInfo, ApiError> {
    use base64::Engine as _;
    let mut info = UploadInfo::default();
    let Some(raw) = headers.get(&UPLOAD_METADATA) else {
        return Ok(info);
    };
    let bad = |why: &str| {
        ApiError::new(
            ErrorCode::InvalidParameter,
            format!("`Upload-Metadata` {why}."),
        )
    };
    if raw.len() > MAX_TUS_METADATA_BYTES {
        return Err(bad(&format!(
            "is longer than {MAX_TUS_METADATA_BYTES} bytes"
        )));
    }
    let raw = raw.to_str().map_err(|_| bad("must be ASCII"))?;
    let mut seen = std::collections::HashSet::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        if !seen.insert(key) {
            return Err(bad(&format!("names `{key}` twice")));
        }
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| bad(&format!("has a value for `{key}` that is not base64")))?;
        let value = String::from_utf8(value)
            .map_err(|_| bad(&format!("has a value for `{key}` that is not UTF-8")))?;
        match key {
            "type" => info.kind = Some(value),
            "chat_id" => info.chat_id = Some(value),
            "filename" | "name" => info.filename = Some(value),
            _ => {}
        }
    }
    Ok(info)
}

fn http_date(t: OffsetDateTime) -> String {
    t.format(format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    ))
    .unwrap_or_default()
}

fn upload_headers(m: &MediaRecord) -> HeaderMap {
    let mut out = HeaderMap::new();
    out.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(m.received));
    out.insert(UPLOAD_LENGTH.clone(), HeaderValue::from(m.length));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(expires) = m.expires_at
        && let Ok(v) = HeaderValue::from_str(&http_date(expires.to_datetime()))
    {
        out.insert(UPLOAD_EXPIRES.clone(), v);
    }
    out
}

/// tus discovery: the version, extensions and largest upload.
#[utoipa::path(
    options, path = "/api/v1/media/tus", tag = "media",
    responses((status = 204, description = "`Tus-Version`, `Tus-Extension`, `Tus-Max-Size`."))
)]
pub(crate) async fn tus_options(State(app): State<AppState>) -> Response {
    let mut out = HeaderMap::new();
    out.insert(TUS_VERSION_H.clone(), HeaderValue::from_static(TUS_VERSION));
    out.insert(
        TUS_EXTENSION.clone(),
        HeaderValue::from_static(TUS_EXTENSIONS),
    );
    out.insert(
        TUS_MAX_SIZE.clone(),
        HeaderValue::from(app.services.upload_limit(None)),
    );
    (StatusCode::NO_CONTENT, out).into_response()
}

/// tus creation: `Upload-Length` and `Upload-Metadata` (`type`, `chat_id`,
/// `filename`, base64) make an upload; `Location` is where to `PATCH` it.
/// Its id is the media id once it completes.
#[utoipa::path(
    post, path = "/api/v1/media/tus", tag = "media",
    security(("bearer" = [])),
    params(
        ("Tus-Resumable" = String, Header, description = "`1.0.0`."),
        ("Upload-Length" = u64, Header, description = "Total bytes."),
        ("Upload-Metadata" = Option<String>, Header, description = "`type <b64>,chat_id <b64>,filename <b64>`."),
    ),
    responses(
        (status = 201, description = "Created; `Location`, `Upload-Expires`."),
        (status = 400, description = "Missing or bad `Upload-Length` or metadata.", body = ErrorBody),
        (status = 409, description = "Too many uploads in progress.", body = ErrorBody),
        (status = 412, description = "Missing `Tus-Resumable: 1.0.0`.", body = ErrorBody),
        (status = 413, description = "Larger than the type's limit, or over the quota.", body = ErrorBody),
        (status = 422, description = "Bad `type`, `chat_id` or `filename`.", body = ErrorBody),
    )
)]
pub(crate) async fn tus_create(
    State(app): State<AppState>,
    who: Principal,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_tus(&headers)?;
    if headers.contains_key(&UPLOAD_DEFER_LENGTH) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "Deferred lengths are not supported: send `Upload-Length`.",
        ));
    }
    let length = header_number(&headers, &UPLOAD_LENGTH)?.ok_or_else(|| {
        ApiError::new(ErrorCode::InvalidParameter, "`Upload-Length` is required.")
    })?;
    let info = tus_metadata(&headers)?;
    let media = app.services.create_resumable(&who, length, info).await?;
    let mut out = upload_headers(&media);
    if let Ok(location) = HeaderValue::from_str(&format!("{TUS_BASE}/{}", media.id)) {
        out.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, out).into_response())
}

/// tus status: where the upload is (`Upload-Offset`), for resuming.
#[utoipa::path(
    head, path = "/api/v1/media/tus/{upload_id}", tag = "media",
    security(("bearer" = [])),
    params(
        ("upload_id" = String, Path, description = "The upload."),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`."),
    ),
    responses(
        (status = 200, description = "`Upload-Offset`, `Upload-Length`, `Upload-Expires`."),
        (status = 404, description = "No such upload of the caller's (or expired)."),
        (status = 412, description = "Missing `Tus-Resumable: 1.0.0`."),
    )
)]
pub(crate) async fn tus_head(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_tus(&headers)?;
    let id = upload_id(&raw)?;
    let media = app.services.resumable(&who, id).await?;
    Ok((StatusCode::OK, upload_headers(&media)).into_response())
}

fn upload_id(raw: &str) -> Result<MediaId, ApiError> {
    path_id(raw, ErrorCode::UploadNotFound, "upload")
}

/// tus append: the body (`application/offset+octet-stream`) is written at
/// `Upload-Offset`. The last byte completes the upload, which is then
/// checked like a plain upload (and refused the same way).
#[utoipa::path(
    patch, path = "/api/v1/media/tus/{upload_id}", tag = "media",
    security(("bearer" = [])),
    params(
        ("upload_id" = String, Path, description = "The upload."),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`."),
        ("Upload-Offset" = u64, Header, description = "Where this body goes; must be the current offset."),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "Written; `Upload-Offset` is the new offset."),
        (status = 404, description = "No such upload in progress.", body = ErrorBody),
        (status = 409, description = "Wrong offset, or another request is writing it.", body = ErrorBody),
        (status = 412, description = "Missing `Tus-Resumable: 1.0.0`.", body = ErrorBody),
        (status = 413, description = "The body goes past `Upload-Length`.", body = ErrorBody),
        (status = 415, description = "Wrong `Content-Type`, or (on completion) bytes not of the declared type.", body = ErrorBody),
        (status = 422, description = "On completion: an image the server refuses to decode.", body = ErrorBody),
    )
)]
pub(crate) async fn tus_patch(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    require_tus(&headers)?;
    let id = upload_id(&raw)?;
    let is_tus_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/offset+octet-stream")
        });
    if !is_tus_body {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "Send the bytes with `Content-Type: application/offset+octet-stream`.",
        ));
    }
    let offset = header_number(&headers, &UPLOAD_OFFSET)?.ok_or_else(|| {
        ApiError::new(ErrorCode::InvalidParameter, "`Upload-Offset` is required.")
    })?;
    if let Some(len) = content_length(&headers) {
        let current = app.services.resumable(&who, id).await?;
        // A wrong offset is the first thing to tell (409), whatever the body.
        if current.finished.is_some() || offset != current.received {
            return Err(ApiError::new(
                ErrorCode::UploadOffsetMismatch,
                format!("The upload is at offset {}.", current.received),
            ));
        }
        if offset.saturating_add(len) > current.length {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "The body goes past the declared length of {} bytes.",
                    current.length
                ),
            ));
        }
    }
    let body = request
        .into_body()
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let media = app
        .services
        .append_resumable(&who, id, offset, body)
        .await?;
    let mut out = upload_headers(&media);
    out.remove(&UPLOAD_LENGTH);
    out.remove(header::CACHE_CONTROL);
    Ok((StatusCode::NO_CONTENT, out).into_response())
}

/// tus termination: deletes an upload in progress and its bytes.
#[utoipa::path(
    delete, path = "/api/v1/media/tus/{upload_id}", tag = "media",
    security(("bearer" = [])),
    params(
        ("upload_id" = String, Path, description = "The upload."),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`."),
    ),
    responses(
        (status = 204, description = "Terminated."),
        (status = 404, description = "No such upload in progress.", body = ErrorBody),
        (status = 412, description = "Missing `Tus-Resumable: 1.0.0`.", body = ErrorBody),
    )
)]
pub(crate) async fn tus_delete(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_tus(&headers)?;
    let id = upload_id(&raw)?;
    app.services.terminate_resumable(&who, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Part(0..10));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::Part(90..100));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::Part(90..100));
        assert_eq!(parse_range("bytes=-500", 100), RangeSpec::Part(0..100));
        assert_eq!(parse_range("bytes=50-500", 100), RangeSpec::Part(50..100));
        assert_eq!(parse_range("bytes=99-99", 100), RangeSpec::Part(99..100));
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), RangeSpec::Unsatisfiable);
        // Ignored (answered whole): several ranges, other units, nonsense.
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Whole);
        assert_eq!(parse_range("bytes=9-1", 100), RangeSpec::Whole);
        assert_eq!(parse_range("bytes=x-1", 100), RangeSpec::Whole);
        // Case-insensitive unit; positions past u64 are past any end.
        assert_eq!(parse_range("Bytes=0-9", 100), RangeSpec::Part(0..10));
        assert_eq!(
            parse_range("bytes=0-99999999999999999999", 100),
            RangeSpec::Part(0..100)
        );
        assert_eq!(
            parse_range("bytes=99999999999999999999-", 100),
            RangeSpec::Unsatisfiable
        );
        assert_eq!(parse_range("bytes=+1-2", 100), RangeSpec::Whole);
    }

    #[test]
    fn only_inert_types_are_served_as_found() {
        assert_eq!(
            served_type(MediaKind::File, "text/html"),
            "application/octet-stream"
        );
        assert_eq!(
            served_type(MediaKind::File, "image/svg+xml"),
            "application/octet-stream"
        );
        assert_eq!(
            served_type(MediaKind::File, "application/pdf"),
            "application/pdf"
        );
        assert_eq!(served_type(MediaKind::File, "image/png"), "image/png");
        assert_eq!(served_type(MediaKind::Image, "image/gif"), "image/gif");
        assert_eq!(
            served_type(MediaKind::Encrypted, "image/png"),
            "application/octet-stream"
        );
    }

    #[test]
    fn file_names_are_percent_encoded() {
        assert_eq!(disposition(true, None), "inline");
        assert_eq!(
            disposition(false, Some("a b\"\r\n.pdf")),
            "attachment; filename*=UTF-8''a%20b%22%0D%0A.pdf"
        );
        assert_eq!(
            disposition(false, Some("é.txt")),
            "attachment; filename*=UTF-8''%C3%A9.txt"
        );
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        let t = OffsetDateTime::from_unix_timestamp(784_111_777).unwrap();
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    mod properties {
        use super::*;
        use base64::Engine as _;
        use proptest::prelude::*;

        /// Range headers as clients (and attackers) write them: mostly the
        /// real grammar with odd numbers, sometimes anything at all.
        fn range_header() -> impl Strategy<Value = String> {
            let number = prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                (0u64..2000).prop_map(|n| n.to_string()),
                Just(String::new()),
                Just("99999999999999999999999".to_owned()),
                Just("-1".to_owned()),
                Just(" 7 ".to_owned()),
            ];
            let unit = prop_oneof![
                Just("bytes="),
                Just("BYTES="),
                Just("bytes ="),
                Just("items="),
                Just(""),
            ];
            prop_oneof![
                4 => (unit, number.clone(), number, any::<bool>()).prop_map(|(u, a, b, two)| {
                    if two { format!("{u}{a}-{b},0-1") } else { format!("{u}{a}-{b}") }
                }),
                1 => any::<String>(),
            ]
        }

        proptest! {
            #[test]
            fn a_parsed_range_lies_within_the_content(spec in range_header(), size in prop_oneof![0u64..3000, any::<u64>()]) {
                if let RangeSpec::Part(r) = parse_range(&spec, size) {
                    prop_assert!(r.start < r.end, "{spec:?} -> {r:?}");
                    prop_assert!(r.end <= size, "{spec:?} -> {r:?} of {size}");
                }
            }

            #[test]
            fn a_well_formed_range_is_served_exactly(a in 0u64..5000, len in 0u64..5000, size in 1u64..5000) {
                let b = a + len;
                let got = parse_range(&format!("bytes={a}-{b}"), size);
                if a < size {
                    prop_assert_eq!(got, RangeSpec::Part(a..(b + 1).min(size)));
                } else {
                    prop_assert_eq!(got, RangeSpec::Unsatisfiable);
                }
            }

            #[test]
            fn tus_metadata_never_panics(raw in proptest::collection::vec(32u8..127, 0..600)) {
                let mut headers = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_bytes(&raw) {
                    headers.insert(UPLOAD_METADATA.clone(), v);
                }
                let _ = tus_metadata(&headers);
            }

            #[test]
            fn tus_metadata_reads_back_what_a_client_wrote(
                kind in any::<String>(),
                chat in any::<String>(),
                name in any::<String>(),
                extra in any::<String>(),
            ) {
                let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
                let raw = format!(
                    "type {},chat_id {},filename {},filetype {}",
                    b64(&kind), b64(&chat), b64(&name), b64(&extra)
                );
                prop_assume!(raw.len() <= MAX_TUS_METADATA_BYTES);
                let mut headers = HeaderMap::new();
                headers.insert(UPLOAD_METADATA.clone(), HeaderValue::from_str(&raw).unwrap());
                let info = tus_metadata(&headers).unwrap();
                prop_assert_eq!(info.kind, Some(kind));
                prop_assert_eq!(info.chat_id, Some(chat));
                prop_assert_eq!(info.filename, Some(name));
            }

            #[test]
            fn tus_numbers_are_digits_or_refused(raw in prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                proptest::collection::vec(32u8..127, 0..30)
                    .prop_map(|v| String::from_utf8(v).unwrap_or_default()),
            ]) {
                let mut headers = HeaderMap::new();
                headers.insert(UPLOAD_OFFSET.clone(), HeaderValue::from_str(&raw).unwrap());
                match header_number(&headers, &UPLOAD_OFFSET) {
                    Ok(Some(n)) => {
                        let shown = n.to_string();
                        prop_assert_eq!(shown.trim_start_matches('0'), raw.trim_start_matches('0'));
                    }
                    Ok(None) => prop_assert!(false, "a present header read as absent"),
                    Err(_) => prop_assert!(raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) || raw.parse::<u64>().is_err()),
                }
            }
        }
    }
}
