//! `/api/v1/invitations`: invitations to groups, made when an add was
//! refused by the added user's `group_add_permission`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::chats::Chat;
use natter_proto::invitations::InvitationList;
use natter_proto::{ErrorBody, ErrorCode, InvitationId};

use super::AppState;
use super::chats::chat_dto;
use super::error::ApiError;
use super::extract::path_id;
use crate::service::{Principal, render};

fn invitation_id(raw: &str) -> Result<InvitationId, ApiError> {
    path_id(raw, ErrorCode::InvitationNotFound, "invitation")
}

/// The caller's pending invitations to groups, newest first.
#[utoipa::path(
    get, path = "/api/v1/invitations", tag = "chats",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The pending invitations.", body = InvitationList),
        (status = 401, description = "No valid token.", body = ErrorBody),
    )
)]
pub(crate) async fn list_invitations(
    State(app): State<AppState>,
    who: Principal,
) -> Result<Json<InvitationList>, ApiError> {
    let invitations = app.services.invitations(&who).await?;
    Ok(Json(InvitationList {
        invitations: invitations.iter().map(render::invitation).collect(),
    }))
}

/// Accepts an invitation: the caller joins the group, as if its inviter
/// added them now.
#[utoipa::path(
    post, path = "/api/v1/invitations/{invitation_id}/accept", tag = "chats",
    security(("bearer" = [])),
    params(("invitation_id" = String, Path, description = "The invitation.")),
    responses(
        (status = 200, description = "Joined: the chat with its participants.", body = Chat),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "No such pending invitation (or it expired), or the group is gone.", body = ErrorBody),
        (status = 409, description = "The group is full, or the inviter may no longer add people.", body = ErrorBody),
    )
)]
pub(crate) async fn accept_invitation(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
) -> Result<Json<Chat>, ApiError> {
    let view = app
        .services
        .accept_invitation(&who, invitation_id(&raw)?)
        .await?;
    Ok(Json(chat_dto(view)))
}

/// Declines an invitation: it goes away (its inviter is not told).
#[utoipa::path(
    delete, path = "/api/v1/invitations/{invitation_id}", tag = "chats",
    security(("bearer" = [])),
    params(("invitation_id" = String, Path, description = "The invitation.")),
    responses(
        (status = 204, description = "Declined."),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "No such pending invitation.", body = ErrorBody),
    )
)]
pub(crate) async fn decline_invitation(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.services
        .decline_invitation(&who, invitation_id(&raw)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
