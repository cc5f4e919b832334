//! `/api/v1/users/{verification,register,login,logout}` and `/api/v1/devices`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::accounts::{
    Device, DeviceList, LoginCode, LoginRequest, RegisterRequest, Session, VerificationRequest,
    VerificationSent,
};
use natter_proto::{DeviceId, ErrorBody, ErrorCode};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ClientIp, path_id};
use super::users::me_dto;
use crate::service::{NewSession, Principal};

fn session_dto(s: NewSession) -> Session {
    Session {
        user_id: s.user.id,
        device_id: s.device_id,
        access_token: s.token.expose().to_owned(),
        token_type: "Bearer".to_owned(),
        user: me_dto(&s.user),
    }
}

/// Sends a 6-digit verification code by SMS.
#[utoipa::path(
    post, path = "/api/v1/users/verification", tag = "accounts",
    request_body = VerificationRequest,
    responses(
        (status = 202, description = "The code is on its way.", body = VerificationSent),
        (status = 400, description = "Invalid phone number or JSON.", body = ErrorBody),
        (status = 422, description = "Wrong body shape.", body = ErrorBody),
        (status = 403, description = "Sign-up mode `invite`: no codes are sent.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After`.", body = ErrorBody),
        (status = 502, description = "The SMS gateway failed.", body = ErrorBody),
    )
)]
pub(crate) async fn request_code(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<VerificationRequest>,
) -> Result<(StatusCode, Json<VerificationSent>), ApiError> {
    let sent = app.services.request_code(&body.phone, ip).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(VerificationSent {
            phone: sent.phone.as_str().to_owned(),
            expires_in: sent.expires_in.as_secs(),
        }),
    ))
}

/// Creates an account with a verified number; logs in its first device.
#[utoipa::path(
    post, path = "/api/v1/users/register", tag = "accounts",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account and device created.", body = Session),
        (status = 400, description = "Invalid phone number or JSON.", body = ErrorBody),
        (status = 401, description = "Wrong or expired code, or (invite mode) invite.", body = ErrorBody),
        (status = 409, description = "The number already has an account.", body = ErrorBody),
        (status = 422, description = "A field is missing or out of bounds.", body = ErrorBody),
        (status = 429, description = "Rate limited.", body = ErrorBody),
    )
)]
pub(crate) async fn register(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    let session = app.services.register(body, ip).await?;
    Ok((StatusCode::CREATED, Json(session_dto(session))))
}

/// Logs a new device in. An unknown number answers like a wrong code.
#[utoipa::path(
    post, path = "/api/v1/users/login", tag = "accounts",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Device created.", body = Session),
        (status = 400, description = "Invalid phone number or JSON.", body = ErrorBody),
        (status = 401, description = "Wrong or expired code, or unknown number.", body = ErrorBody),
        (status = 409, description = "Too many devices.", body = ErrorBody),
        (status = 429, description = "Rate limited.", body = ErrorBody),
    )
)]
pub(crate) async fn login(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<Session>, ApiError> {
    let session = app.services.login(body, ip).await?;
    Ok(Json(session_dto(session)))
}

/// Makes a one-time code to log a new device in to the caller's account
/// (`POST /api/v1/users/login` with it), instead of an SMS. The way to add a
/// device in sign-up mode `invite`; works in every mode.
#[utoipa::path(
    post, path = "/api/v1/devices/login-code", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "A code for the new device.", body = LoginCode),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 429, description = "Rate limited (the number's code budget).", body = ErrorBody),
    )
)]
pub(crate) async fn login_code(
    State(app): State<AppState>,
    who: Principal,
) -> Result<(StatusCode, Json<LoginCode>), ApiError> {
    let issued = app.services.create_login_code(&who).await?;
    Ok((
        StatusCode::CREATED,
        Json(LoginCode {
            phone: issued.phone.as_str().to_owned(),
            code: issued.code.expose().to_owned(),
            expires_in: issued.expires_in.as_secs(),
        }),
    ))
}

/// Revokes the calling device's token.
#[utoipa::path(
    post, path = "/api/v1/users/logout", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out."),
        (status = 401, description = "No valid token.", body = ErrorBody),
    )
)]
pub(crate) async fn logout(
    State(app): State<AppState>,
    who: Principal,
) -> Result<StatusCode, ApiError> {
    app.services.logout(&who).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists the caller's devices.
#[utoipa::path(
    get, path = "/api/v1/devices", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Oldest first.", body = DeviceList),
        (status = 401, description = "No valid token.", body = ErrorBody),
    )
)]
pub(crate) async fn list_devices(
    State(app): State<AppState>,
    who: Principal,
) -> Result<Json<DeviceList>, ApiError> {
    let devices = app.services.devices(&who).await?;
    Ok(Json(DeviceList {
        devices: devices.into_iter().map(|d| device_dto(d, &who)).collect(),
    }))
}

/// A device as its owner sees it (`current`: the one asking).
pub(crate) fn device_dto(d: crate::store::Device, who: &Principal) -> Device {
    Device {
        current: d.id == who.device(),
        device_id: d.id,
        name: d.name,
        created_at: d.created_at.to_datetime(),
        last_active_at: d.last_active_at.to_datetime(),
    }
}

/// Revokes one of the caller's devices.
#[utoipa::path(
    delete, path = "/api/v1/devices/{device_id}", tag = "accounts",
    security(("bearer" = [])),
    params(("device_id" = String, Path, description = "The device to revoke.")),
    responses(
        (status = 204, description = "Revoked."),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "Not one of the caller's devices.", body = ErrorBody),
    )
)]
pub(crate) async fn revoke_device(
    State(app): State<AppState>,
    who: Principal,
    Path(device_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let device: DeviceId = path_id(&device_id, ErrorCode::DeviceNotFound, "device")?;
    app.services.revoke_device(&who, device).await?;
    Ok(StatusCode::NO_CONTENT)
}
