//! `/api/v1/users/me`, `/api/v1/users/{user_id}` and `/api/v1/users/contacts`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::media::media_url;
use natter_proto::users::{
    AccountExport, AddContact, Contact, ContactList, DeleteAccount, DiscoverContacts,
    DiscoveredContacts, DiscoveredUser, ExportedChat, Me, PublicProfile, UpdateMe,
};
use natter_proto::{ErrorBody, ErrorCode, UserId};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, path_id};
use crate::service::{Principal, ProfileView};
use crate::store::User;

pub(crate) fn me_dto(u: &User) -> Me {
    Me {
        user_id: u.id,
        phone: u.phone.as_str().to_owned(),
        name: u.name.clone(),
        about: u.about.clone(),
        last_seen_visibility: u.last_seen_visibility,
        group_add_permission: u.group_add_permission,
        profile_pic_url: u.profile_pic.map(media_url),
        created_at: u.created_at.to_datetime(),
    }
}

fn profile_dto(v: ProfileView) -> PublicProfile {
    PublicProfile {
        user_id: v.user.id,
        phone: v.show_phone.then(|| v.user.phone.as_str().to_owned()),
        last_seen: v
            .user
            .last_seen_at
            .filter(|_| v.show_last_seen)
            .map(|t| t.to_datetime()),
        profile_pic_url: v.user.profile_pic.map(media_url),
        name: v.user.name,
        about: v.user.about,
        status: v.status,
    }
}

pub(crate) fn contact_dto(v: ProfileView) -> Contact {
    let p = profile_dto(v);
    Contact {
        user_id: p.user_id,
        name: p.name,
        phone: p.phone,
        profile_pic_url: p.profile_pic_url,
        status: p.status,
        last_seen: p.last_seen,
    }
}

pub(crate) fn user_id(raw: &str) -> Result<UserId, ApiError> {
    path_id(raw, ErrorCode::UserNotFound, "user")
}

/// The caller's own profile.
#[utoipa::path(
    get, path = "/api/v1/users/me", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The profile.", body = Me),
        (status = 401, description = "No valid token.", body = ErrorBody),
    )
)]
pub(crate) async fn get_me(
    State(app): State<AppState>,
    who: Principal,
) -> Result<Json<Me>, ApiError> {
    Ok(Json(me_dto(&app.services.me(&who).await?)))
}

/// Changes the caller's profile; absent fields stay as they are.
#[utoipa::path(
    patch, path = "/api/v1/users/me", tag = "users",
    security(("bearer" = [])),
    request_body = UpdateMe,
    responses(
        (status = 200, description = "The updated profile.", body = Me),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 422, description = "A field is out of bounds.", body = ErrorBody),
    )
)]
pub(crate) async fn update_me(
    State(app): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<UpdateMe>,
) -> Result<Json<Me>, ApiError> {
    Ok(Json(me_dto(&app.services.update_me(&who, body).await?)))
}

/// Everything the server holds about the caller, as one JSON document:
/// profile, devices, contacts, the chats they are or were in with the
/// messages they sent there, and their uploads.
#[utoipa::path(
    get, path = "/api/v1/users/me/export", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The export.", body = AccountExport),
        (status = 401, description = "No valid token.", body = ErrorBody),
    )
)]
pub(crate) async fn export_me(
    State(app): State<AppState>,
    who: Principal,
) -> Result<Json<AccountExport>, ApiError> {
    let data = app.services.export(&who).await?;
    Ok(Json(AccountExport {
        exported_at: crate::clock::Timestamp::now().to_datetime(),
        profile: me_dto(&data.user),
        devices: data
            .devices
            .into_iter()
            .map(|d| super::accounts::device_dto(d, &who))
            .collect(),
        contacts: data.contacts.into_iter().map(contact_dto).collect(),
        chats: data
            .chats
            .into_iter()
            .map(|(access, messages)| ExportedChat {
                id: access.chat.id,
                kind: access.chat.kind,
                name: access.chat.name,
                encrypted: access.chat.encrypted,
                my_role: access.role,
                messages: messages
                    .into_iter()
                    .map(super::chats::message_dto)
                    .collect(),
            })
            .collect(),
        media: data.media.iter().map(super::media::media_dto).collect(),
        truncated: data.truncated,
    }))
}

/// Deletes the caller's account for good. The body repeats the account's
/// phone number. Messages the user sent stay in their chats, from a
/// deleted account (see docs/api.md).
#[utoipa::path(
    delete, path = "/api/v1/users/me", tag = "users",
    security(("bearer" = [])),
    request_body = DeleteAccount,
    responses(
        (status = 204, description = "The account is deleted; every token of it stops working."),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 422, description = "No `phone`, or not the account's number (`confirmation_mismatch`).", body = ErrorBody),
    )
)]
pub(crate) async fn delete_me(
    State(app): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<DeleteAccount>,
) -> Result<StatusCode, ApiError> {
    app.services.delete_account(&who, &body.phone).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Another user's public profile; the number only when the caller is entitled to it.
#[utoipa::path(
    get, path = "/api/v1/users/{user_id}", tag = "users",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The user.")),
    responses(
        (status = 200, description = "The profile as the caller may see it.", body = PublicProfile),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "No such user.", body = ErrorBody),
    )
)]
pub(crate) async fn get_user(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
) -> Result<Json<PublicProfile>, ApiError> {
    let id = user_id(&raw)?;
    Ok(Json(profile_dto(app.services.profile(&who, id).await?)))
}

/// The caller's contacts, by name.
#[utoipa::path(
    get, path = "/api/v1/users/contacts", tag = "contacts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The contact list.", body = ContactList),
        (status = 401, description = "No valid token.", body = ErrorBody),
    )
)]
pub(crate) async fn list_contacts(
    State(app): State<AppState>,
    who: Principal,
) -> Result<Json<ContactList>, ApiError> {
    let contacts = app.services.contacts(&who).await?;
    Ok(Json(ContactList {
        contacts: contacts.into_iter().map(contact_dto).collect(),
    }))
}

/// Adds a contact by `phone` or `user_id` (201 when new, 200 when already there).
#[utoipa::path(
    post, path = "/api/v1/users/contacts", tag = "contacts",
    security(("bearer" = [])),
    request_body = AddContact,
    responses(
        (status = 201, description = "Added.", body = Contact),
        (status = 200, description = "Already a contact.", body = Contact),
        (status = 400, description = "Invalid phone number.", body = ErrorBody),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "No such user.", body = ErrorBody),
        (status = 409, description = "The list is full.", body = ErrorBody),
        (status = 422, description = "Neither or both of phone and user_id.", body = ErrorBody),
        (status = 429, description = "Rate limited.", body = ErrorBody),
    )
)]
pub(crate) async fn add_contact(
    State(app): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<AddContact>,
) -> Result<(StatusCode, Json<Contact>), ApiError> {
    let (view, created) = app.services.add_contact(&who, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(contact_dto(view))))
}

/// Removes a contact.
#[utoipa::path(
    delete, path = "/api/v1/users/contacts/{user_id}", tag = "contacts",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The contact to remove.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "Not in the list.", body = ErrorBody),
    )
)]
pub(crate) async fn remove_contact(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(&raw, ErrorCode::ContactNotFound, "contact")?;
    app.services.remove_contact(&who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tells which numbers belong to accounts. The numbers are never stored.
#[utoipa::path(
    post, path = "/api/v1/users/contacts/discover", tag = "contacts",
    security(("bearer" = [])),
    request_body = DiscoverContacts,
    responses(
        (status = 200, description = "The registered numbers.", body = DiscoveredContacts),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 422, description = "Too many numbers.", body = ErrorBody),
        (status = 429, description = "Rate limited.", body = ErrorBody),
    )
)]
pub(crate) async fn discover(
    State(app): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<DiscoverContacts>,
) -> Result<Json<DiscoveredContacts>, ApiError> {
    let found = app.services.discover(&who, body.phones).await?;
    Ok(Json(DiscoveredContacts {
        registered: found
            .registered
            .into_iter()
            .map(|d| DiscoveredUser {
                query: d.query,
                phone: d.phone.as_str().to_owned(),
                user_id: d.user_id,
            })
            .collect(),
        invalid: found.invalid,
    }))
}
