//! `/api/v1/chats`, `/api/v1/messages` and history.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::chats::{
    AddParticipants, ChangeRole, Chat, ChatList, ChatPerson, ChatSummary, CreateChat, EditMessage,
    MarkRead, Message, MessagePage, Participant, ReadPosition, SendMessage, UpdateChat,
};
use natter_proto::{ChatId, ErrorBody, ErrorCode, MessageId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, path_id};
use super::users::user_id;
use crate::service::{ChatView, HistoryRequest, MessageView, Principal, render};
use crate::store::ChatOverview;

pub(crate) fn chat_dto(v: ChatView) -> Chat {
    let (added, invited) = v.adds.map(|a| (a.added, a.invited)).unzip();
    Chat {
        id: v.chat.id,
        kind: v.chat.kind,
        name: v.chat.name,
        encrypted: v.chat.encrypted,
        epoch: v.chat.epoch,
        created_by: v.chat.created_by,
        created_at: v.chat.created_at.to_datetime(),
        last_seq: v.chat.last_seq,
        my_role: v.role,
        participants: v
            .members
            .into_iter()
            .map(|m| Participant {
                user_id: m.user_id,
                role: m.role,
                joined_at: m.joined_at.to_datetime(),
            })
            .collect(),
        added,
        invited,
    }
}

pub(crate) fn message_dto(v: MessageView) -> Message {
    render::message(&v.entry, v.status)
}

fn chat_id(raw: &str) -> Result<ChatId, ApiError> {
    path_id(raw, ErrorCode::ChatNotFound, "chat")
}

fn message_id(raw: &str) -> Result<MessageId, ApiError> {
    path_id(raw, ErrorCode::MessageNotFound, "message")
}

/// Creates a chat. A direct chat is unique per pair: asking again returns it (200).
#[utoipa::path(
    post, path = "/api/v1/chats", tag = "chats",
    security(("bearer" = [])),
    request_body = CreateChat,
    responses(
        (status = 201, description = "Created.", body = Chat),
        (status = 200, description = "The direct chat with this user already exists.", body = Chat),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "A participant does not exist.", body = ErrorBody),
        (status = 409, description = "Too many participants, or too many pending invitations.", body = ErrorBody),
        (status = 422, description = "Bad participants or name.", body = ErrorBody),
        (status = 429, description = "Too many groups created, or people added, lately.", body = ErrorBody),
    )
)]
pub(crate) async fn create_chat(
    State(app): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<CreateChat>,
) -> Result<(StatusCode, Json<Chat>), ApiError> {
    let (view, created) = app.services.create_chat(&who, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(chat_dto(view))))
}

/// The caller's chats, most recent activity first.
#[utoipa::path(
    get, path = "/api/v1/chats", tag = "chats",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The chats.", body = ChatList),
        (status = 401, description = "No valid token.", body = ErrorBody),
    )
)]
pub(crate) async fn list_chats(
    State(app): State<AppState>,
    who: Principal,
) -> Result<Json<ChatList>, ApiError> {
    let chats = app.services.chats(&who).await?;
    Ok(Json(ChatList {
        chats: chats.into_iter().map(chat_summary).collect(),
    }))
}

pub(crate) fn chat_summary((o, last): (ChatOverview, Option<MessageView>)) -> ChatSummary {
    ChatSummary {
        id: o.chat.id,
        kind: o.chat.kind,
        name: o.chat.name,
        encrypted: o.chat.encrypted,
        my_role: o.role,
        unread_count: o.unread,
        last_message: last.map(message_dto),
        last_activity_at: o.chat.last_activity_at.to_datetime(),
        other_user: o.other.map(person_dto),
        participants: o.participants.into_iter().map(person_dto).collect(),
        participant_count: o.participant_count,
    }
}

fn person_dto(p: crate::store::ChatPerson) -> ChatPerson {
    ChatPerson {
        user_id: p.user_id,
        name: p.name,
        profile_pic_media_id: p.profile_pic,
    }
}

/// A chat with its participants.
#[utoipa::path(
    get, path = "/api/v1/chats/{chat_id}", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "The chat.")),
    responses(
        (status = 200, description = "The chat.", body = Chat),
        (status = 401, description = "No valid token.", body = ErrorBody),
        (status = 404, description = "No such chat, or not one of the caller's.", body = ErrorBody),
    )
)]
pub(crate) async fn get_chat(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
) -> Result<Json<Chat>, ApiError> {
    Ok(Json(chat_dto(
        app.services.chat(&who, chat_id(&raw)?).await?,
    )))
}

/// Renames a group (admins).
#[utoipa::path(
    patch, path = "/api/v1/chats/{chat_id}", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "The chat.")),
    request_body = UpdateChat,
    responses(
        (status = 200, description = "Renamed.", body = Chat),
        (status = 403, description = "Not an admin.", body = ErrorBody),
        (status = 404, description = "No such chat.", body = ErrorBody),
        (status = 422, description = "Bad name, or a direct chat.", body = ErrorBody),
    )
)]
pub(crate) async fn update_chat(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<UpdateChat>,
) -> Result<Json<Chat>, ApiError> {
    Ok(Json(chat_dto(
        app.services
            .rename_chat(&who, chat_id(&raw)?, &body.name)
            .await?,
    )))
}

/// Adds participants to a group (admins). A user whose privacy setting
/// refuses the caller is invited instead; `added` and `invited` say who is which.
#[utoipa::path(
    post, path = "/api/v1/chats/{chat_id}/participants", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "The chat.")),
    request_body = AddParticipants,
    responses(
        (status = 200, description = "The chat with its participants.", body = Chat),
        (status = 403, description = "Not an admin.", body = ErrorBody),
        (status = 404, description = "No such chat or user.", body = ErrorBody),
        (status = 409, description = "The group is full, or too many pending invitations.", body = ErrorBody),
        (status = 429, description = "Too many people added lately.", body = ErrorBody),
    )
)]
pub(crate) async fn add_participants(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<AddParticipants>,
) -> Result<Json<Chat>, ApiError> {
    Ok(Json(chat_dto(
        app.services
            .add_participants(&who, chat_id(&raw)?, body.user_ids)
            .await?,
    )))
}

/// Removes a participant (admins), or leaves the group (anyone, for themself).
#[utoipa::path(
    delete, path = "/api/v1/chats/{chat_id}/participants/{user_id}", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "The chat."), ("user_id" = String, Path, description = "Who.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 403, description = "Not an admin.", body = ErrorBody),
        (status = 404, description = "No such chat or participant.", body = ErrorBody),
    )
)]
pub(crate) async fn remove_participant(
    State(app): State<AppState>,
    who: Principal,
    Path((raw_chat, raw_user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    app.services
        .remove_participant(&who, chat_id(&raw_chat)?, user_id(&raw_user)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Changes a participant's role (admins).
#[utoipa::path(
    patch, path = "/api/v1/chats/{chat_id}/participants/{user_id}", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "The chat."), ("user_id" = String, Path, description = "Who.")),
    request_body = ChangeRole,
    responses(
        (status = 200, description = "The chat with its participants.", body = Chat),
        (status = 403, description = "Not an admin.", body = ErrorBody),
        (status = 404, description = "No such chat or participant.", body = ErrorBody),
    )
)]
pub(crate) async fn change_role(
    State(app): State<AppState>,
    who: Principal,
    Path((raw_chat, raw_user)): Path<(String, String)>,
    ApiJson(body): ApiJson<ChangeRole>,
) -> Result<Json<Chat>, ApiError> {
    let view = app
        .services
        .set_role(&who, chat_id(&raw_chat)?, user_id(&raw_user)?, body.role)
        .await?;
    Ok(Json(chat_dto(view)))
}

/// Paging of `GET /api/v1/chats/{chat_id}/messages`.
#[derive(Debug, Default, Deserialize, Serialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// 1-based page, newest first (default 1).
    page: Option<i64>,
    /// Entries per page (default 50, at most `limits.max_page_size`).
    limit: Option<i64>,
    /// Only entries before this seq (newest first).
    before_seq: Option<i64>,
    /// Only entries after this seq (oldest first).
    after_seq: Option<i64>,
}

/// The history the caller may see: from joining until leaving, newest first.
#[utoipa::path(
    get, path = "/api/v1/chats/{chat_id}/messages", tag = "messages",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "The chat."), HistoryParams),
    responses(
        (status = 200, description = "A page of history.", body = MessagePage),
        (status = 400, description = "Bad paging.", body = ErrorBody),
        (status = 404, description = "No such chat.", body = ErrorBody),
    )
)]
pub(crate) async fn history(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<HistoryParams>,
) -> Result<Json<MessagePage>, ApiError> {
    let req = HistoryRequest {
        page: q.page,
        limit: q.limit,
        before_seq: q.before_seq,
        after_seq: q.after_seq,
    };
    let (messages, has_more) = app.services.history(&who, chat_id(&raw)?, req).await?;
    Ok(Json(MessagePage {
        messages: messages.into_iter().map(message_dto).collect(),
        has_more,
    }))
}

/// Sends a message. A retry with the same `client_message_id` returns the first (200).
#[utoipa::path(
    post, path = "/api/v1/messages", tag = "messages",
    security(("bearer" = [])),
    request_body = SendMessage,
    responses(
        (status = 201, description = "Stored (durably).", body = Message),
        (status = 200, description = "A retry: the message first sent with this client_message_id.", body = Message),
        (status = 404, description = "No such chat, or not a participant.", body = ErrorBody),
        (status = 422, description = "Bad content for this chat.", body = ErrorBody),
    )
)]
pub(crate) async fn send_message(
    State(app): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<SendMessage>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    let (view, created) = app.services.send(&who, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(message_dto(view))))
}

/// Edits one of the caller's messages, within the edit window.
#[utoipa::path(
    patch, path = "/api/v1/messages/{message_id}", tag = "messages",
    security(("bearer" = [])),
    params(("message_id" = String, Path, description = "The message.")),
    request_body = EditMessage,
    responses(
        (status = 200, description = "The edited message.", body = Message),
        (status = 403, description = "Not the sender.", body = ErrorBody),
        (status = 404, description = "No such message.", body = ErrorBody),
        (status = 409, description = "Too old to edit, or deleted.", body = ErrorBody),
    )
)]
pub(crate) async fn edit_message(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<EditMessage>,
) -> Result<Json<Message>, ApiError> {
    Ok(Json(message_dto(
        app.services
            .edit_message(&who, message_id(&raw)?, body)
            .await?,
    )))
}

/// Deletes one of the caller's messages for everyone; a tombstone stays.
#[utoipa::path(
    delete, path = "/api/v1/messages/{message_id}", tag = "messages",
    security(("bearer" = [])),
    params(("message_id" = String, Path, description = "The message.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 403, description = "Not the sender.", body = ErrorBody),
        (status = 404, description = "No such message.", body = ErrorBody),
        (status = 409, description = "Already deleted, or past the edit window (`edit_window_closed`).", body = ErrorBody),
    )
)]
pub(crate) async fn delete_message(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.services.delete_message(&who, message_id(&raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Marks everything up to `seq` as read (only ever moves forward).
#[utoipa::path(
    post, path = "/api/v1/chats/{chat_id}/read", tag = "messages",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "The chat.")),
    request_body = MarkRead,
    responses(
        (status = 200, description = "The read position now.", body = ReadPosition),
        (status = 404, description = "No such chat.", body = ErrorBody),
    )
)]
pub(crate) async fn mark_read(
    State(app): State<AppState>,
    who: Principal,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<MarkRead>,
) -> Result<Json<ReadPosition>, ApiError> {
    let chat = chat_id(&raw)?;
    let read_seq = app.services.mark_read(&who, chat, body.seq).await?;
    Ok(Json(ReadPosition {
        chat_id: chat,
        read_seq,
    }))
}
