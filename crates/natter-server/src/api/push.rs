//! `/api/v1/devices/{device_id}/push` (Web Push, UnifiedPush, FCM and APNs
//! channels) and `/api/v1/push/vapid`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::push::{PushChannel, PushChannelRequest, PushKind, VapidKey};
use natter_proto::{DeviceId, ErrorBody, ErrorCode};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, path_id};
use crate::service::Principal;

/// Sets the push channel of one of the caller's devices (replacing any earlier one).
#[utoipa::path(
    post, path = "/api/v1/devices/{device_id}/push", tag = "push",
    security(("bearer" = [])),
    params(("device_id" = String, Path, description = "One of the caller's devices.")),
    request_body = PushChannelRequest,
    responses(
        (status = 201, description = "Channel registered.", body = PushChannel),
        (status = 200, description = "Channel replaced.", body = PushChannel),
        (status = 400, description = "The endpoint may not be used, or this server does not send to FCM or APNs (`invalid_push_endpoint`).", body = ErrorBody),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "Not one of the caller's devices, or push is off.", body = ErrorBody),
        (status = 422, description = "Malformed keys, token or body.", body = ErrorBody),
    )
)]
pub(crate) async fn set_push_channel(
    State(app): State<AppState>,
    who: Principal,
    Path(device_id): Path<String>,
    ApiJson(body): ApiJson<PushChannelRequest>,
) -> Result<(StatusCode, Json<PushChannel>), ApiError> {
    let device: DeviceId = path_id(&device_id, ErrorCode::DeviceNotFound, "device")?;
    let (record, created) = app.services.set_push_channel(&who, device, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let target = record.target;
    let (endpoint, token) = match target.kind {
        PushKind::Webpush | PushKind::Unifiedpush => (Some(target.endpoint), None),
        PushKind::Fcm | PushKind::Apns => (None, Some(target.endpoint)),
    };
    Ok((
        status,
        Json(PushChannel {
            device_id: record.device_id,
            kind: target.kind,
            endpoint,
            token,
            environment: target.environment,
            created_at: record.created_at.to_datetime(),
        }),
    ))
}

/// Removes the push channel of one of the caller's devices.
#[utoipa::path(
    delete, path = "/api/v1/devices/{device_id}/push", tag = "push",
    security(("bearer" = [])),
    params(("device_id" = String, Path, description = "One of the caller's devices.")),
    responses(
        (status = 204, description = "Removed; pending pushes for it are dropped."),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "Not one of the caller's devices, or it has no channel.", body = ErrorBody),
    )
)]
pub(crate) async fn delete_push_channel(
    State(app): State<AppState>,
    who: Principal,
    Path(device_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let device: DeviceId = path_id(&device_id, ErrorCode::DeviceNotFound, "device")?;
    app.services.delete_push_channel(&who, device).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The server's VAPID public key, for `pushManager.subscribe({applicationServerKey})`.
#[utoipa::path(
    get, path = "/api/v1/push/vapid", tag = "push",
    responses(
        (status = 200, description = "Base64url uncompressed P-256 point.", body = VapidKey),
        (status = 404, description = "Push is off on this server (`push_disabled`).", body = ErrorBody),
    )
)]
pub(crate) async fn vapid_key(State(app): State<AppState>) -> Result<Json<VapidKey>, ApiError> {
    Ok(Json(VapidKey {
        public_key: app.services.vapid_public_key()?,
    }))
}
