//! End-to-end encryption: identity and device keys, the KeyPackage
//! directory, commits and device inboxes (docs/e2ee.md).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use natter_proto::e2ee::{
    ClaimKeyPackages, ClaimedKeyPackage, ClaimedKeyPackages, CommitAccepted, DeviceKeys, Inbox,
    InboxItem, KeyPackageStock, PublishKeyPackages, SendHandover, SetDeviceCredential, SetIdentity,
    SubmitCommit, UserDevices, UserKeyPackages,
};
use natter_proto::{DeviceId, ErrorBody, ErrorCode};

use super::AppState;
use super::chats::message_dto;
use super::error::ApiError;
use super::extract::{ApiJson, E2eeJson, path_id};
use super::users::user_id;
use crate::service::{Principal, ServiceError, inbox_item};

/// A device in a path: its id, or `me` for the calling device.
fn device_id(raw: &str, who: &Principal) -> Result<DeviceId, ApiError> {
    if raw == "me" {
        Ok(who.device())
    } else {
        path_id(raw, ErrorCode::DeviceNotFound, "device")
    }
}

fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Sets (or replaces) the caller's identity key.
#[utoipa::path(
    put, path = "/api/v1/users/me/identity", tag = "e2ee",
    security(("bearer" = [])),
    request_body = SetIdentity,
    responses(
        (status = 204, description = "Set. A new key voids the certificates and KeyPackages of the user's devices; each encrypted chat gets `devices_changed`."),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 422, description = "Not a base64 32-byte key.", body = ErrorBody),
    )
)]
pub(crate) async fn set_identity(
    State(app): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<SetIdentity>,
) -> Result<StatusCode, ApiError> {
    app.services.set_identity(&who, &body.identity_key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets a device's keys (once) and, optionally, its certificate.
#[utoipa::path(
    put, path = "/api/v1/devices/{device_id}/credential", tag = "e2ee",
    security(("bearer" = [])),
    params(("device_id" = String, Path, description = "One of the caller's devices, or `me`.")),
    request_body = SetDeviceCredential,
    responses(
        (status = 204, description = "Stored. A new certificate appends `devices_changed` to the user's encrypted chats."),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "Not one of the caller's devices (`device_not_found`).", body = ErrorBody),
        (status = 409, description = "Other keys are set already (`credential_exists`).", body = ErrorBody),
        (status = 422, description = "Malformed keys, or a certificate that does not verify (`invalid_certificate`).", body = ErrorBody),
    )
)]
pub(crate) async fn set_device_credential(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<SetDeviceCredential>,
) -> Result<StatusCode, ApiError> {
    let device = device_id(&raw, &who)?;
    app.services
        .set_device_credential(
            &who,
            device,
            &body.signature_key,
            &body.link_key,
            body.certificate.as_deref(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's identity key and device keys.
#[utoipa::path(
    get, path = "/api/v1/users/{user_id}/devices", tag = "e2ee",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The user, or `me`.")),
    responses(
        (status = 200, description = "Others see certified devices only.", body = UserDevices),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "No such user.", body = ErrorBody),
    )
)]
pub(crate) async fn user_devices(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
) -> Result<Json<UserDevices>, ApiError> {
    let user = if raw == "me" {
        who.user()
    } else {
        user_id(&raw)?
    };
    let view = app.services.user_devices(&who, user).await?;
    Ok(Json(UserDevices {
        user_id: view.user_id,
        identity_key: view.identity_key.as_deref().map(b64),
        devices: view
            .devices
            .into_iter()
            .map(|d| DeviceKeys {
                device_id: d.device_id,
                signature_key: b64(&d.signature_key),
                link_key: b64(&d.link_key),
                certificate: d.certificate.as_deref().map(b64),
            })
            .collect(),
    }))
}

fn stock(app: &AppState, (available, last_resort): (u32, bool)) -> KeyPackageStock {
    KeyPackageStock {
        available,
        last_resort,
        low_water: app.services.key_package_low_water(),
    }
}

/// Publishes KeyPackages of the calling device.
#[utoipa::path(
    post, path = "/api/v1/devices/me/key-packages", tag = "e2ee",
    security(("bearer" = [])),
    request_body = PublishKeyPackages,
    responses(
        (status = 201, description = "Stored; the stock now.", body = KeyPackageStock),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 409, description = "The device has registered no keys (`device_keys_missing`).", body = ErrorBody),
        (status = 413, description = "A KeyPackage is larger than `e2ee.key_package_max_bytes`.", body = ErrorBody),
        (status = 422, description = "A KeyPackage refused (`invalid_key_package`: wire format, suite, lifetime, credential, signature key), or too many.", body = ErrorBody),
    )
)]
pub(crate) async fn publish_key_packages(
    State(app): State<AppState>,
    who: Principal,
    E2eeJson(body): E2eeJson<PublishKeyPackages>,
) -> Result<(StatusCode, Json<KeyPackageStock>), ApiError> {
    let now = app
        .services
        .publish_key_packages(&who, &body.key_packages, body.last_resort.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(stock(&app, now))))
}

/// The calling device's KeyPackage stock.
#[utoipa::path(
    get, path = "/api/v1/devices/me/key-packages", tag = "e2ee",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stock.", body = KeyPackageStock),
        (status = 401, description = "No valid token.", body = ErrorBody),
    )
)]
pub(crate) async fn key_package_stock(
    State(app): State<AppState>,
    who: Principal,
) -> Result<Json<KeyPackageStock>, ApiError> {
    let now = app.services.key_package_stock(&who).await?;
    Ok(Json(stock(&app, now)))
}

/// Claims one KeyPackage per certified device of each user.
#[utoipa::path(
    post, path = "/api/v1/key-packages/claim", tag = "e2ee",
    security(("bearer" = [])),
    request_body = ClaimKeyPackages,
    responses(
        (status = 200, description = "One entry per user, in order.", body = ClaimedKeyPackages),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "No such user.", body = ErrorBody),
        (status = 422, description = "No users, or too many.", body = ErrorBody),
        (status = 429, description = "Too many claims (`e2ee.claims_per_minute`).", body = ErrorBody),
    )
)]
pub(crate) async fn claim_key_packages(
    State(app): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<ClaimKeyPackages>,
) -> Result<Json<ClaimedKeyPackages>, ApiError> {
    let claimed = app.services.claim_key_packages(&who, body.user_ids).await?;
    Ok(Json(ClaimedKeyPackages {
        users: claimed
            .into_iter()
            .map(|u| UserKeyPackages {
                user_id: u.user_id,
                identity_key: u.identity_key.as_deref().map(b64),
                devices: u
                    .devices
                    .into_iter()
                    .map(|d| ClaimedKeyPackage {
                        device_id: d.device_id,
                        signature_key: b64(&d.signature_key),
                        certificate: b64(&d.certificate),
                        key_package: b64(&d.key_package),
                        last_resort: d.last_resort,
                    })
                    .collect(),
            })
            .collect(),
    }))
}

/// Submits a commit for the chat's current epoch (and its Welcome).
#[utoipa::path(
    post, path = "/api/v1/chats/{chat_id}/commits", tag = "e2ee",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "An encrypted chat the caller is in.")),
    request_body = SubmitCommit,
    responses(
        (status = 201, description = "Accepted: in the chat log, the epoch moved on, the Welcome is in the devices' inboxes.", body = CommitAccepted),
        (status = 200, description = "A retry with the same `client_message_id`: the first commit.", body = CommitAccepted),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "No such chat (or not a participant).", body = ErrorBody),
        (status = 409, description = "Another commit won this epoch (`stale_epoch`), or an inbox is full (`inbox_full`).", body = ErrorBody),
        (status = 413, description = "Larger than `e2ee.commit_max_bytes` or `e2ee.welcome_max_bytes`.", body = ErrorBody),
        (status = 422, description = "Not an MLS commit of this chat's group (`invalid_mls_message`), or a Welcome device that is not a participant's.", body = ErrorBody),
    )
)]
pub(crate) async fn submit_commit(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    E2eeJson(body): E2eeJson<SubmitCommit>,
) -> Result<(StatusCode, Json<CommitAccepted>), ApiError> {
    let chat = path_id(&raw, ErrorCode::ChatNotFound, "chat")?;
    let (view, created) = app.services.submit_commit(&who, chat, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(CommitAccepted {
            epoch: view.epoch,
            message: message_dto(view.message),
        }),
    ))
}

/// The calling device's inbox, oldest first.
#[utoipa::path(
    get, path = "/api/v1/devices/me/inbox", tag = "e2ee",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every item not yet acknowledged.", body = Inbox),
        (status = 401, description = "No valid token.", body = ErrorBody),
    )
)]
pub(crate) async fn inbox(
    State(app): State<AppState>,
    who: Principal,
) -> Result<Json<Inbox>, ApiError> {
    let items = app.services.inbox(&who).await?;
    Ok(Json(Inbox {
        items: items.iter().map(inbox_item).collect(),
    }))
}

/// Acknowledges (deletes) an inbox item.
#[utoipa::path(
    delete, path = "/api/v1/devices/me/inbox/{id}", tag = "e2ee",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The item.")),
    responses(
        (status = 204, description = "Gone."),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "No such item in this device's inbox.", body = ErrorBody),
    )
)]
pub(crate) async fn ack_inbox(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: i64 = raw
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::NotFound, "No such inbox item."))?;
    app.services
        .ack_inbox(&who, id)
        .await
        .map_err(|e| match e {
            ServiceError::MessageNotFound => {
                ApiError::new(ErrorCode::NotFound, "No such inbox item.")
            }
            other => ApiError::from(other),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a sealed handover to another device of the caller's account.
#[utoipa::path(
    post, path = "/api/v1/devices/{device_id}/handover", tag = "e2ee",
    security(("bearer" = [])),
    params(("device_id" = String, Path, description = "Another device of the caller's.")),
    request_body = SendHandover,
    responses(
        (status = 201, description = "In the device's inbox.", body = InboxItem),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "Not another device of the caller's (`device_not_found`).", body = ErrorBody),
        (status = 409, description = "The inbox is full (`inbox_full`).", body = ErrorBody),
        (status = 413, description = "Larger than `e2ee.handover_max_bytes`.", body = ErrorBody),
    )
)]
pub(crate) async fn hand_over(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    E2eeJson(body): E2eeJson<SendHandover>,
) -> Result<(StatusCode, Json<InboxItem>), ApiError> {
    let device = device_id(&raw, &who)?;
    let item = app.services.hand_over(&who, device, &body.payload).await?;
    Ok((StatusCode::CREATED, Json(inbox_item(&item))))
}
