//! `/api/v1/search/{messages,chats,contacts}`.

use axum::Json;
use axum::extract::State;
use axum::http::request::Parts;
use natter_proto::ErrorBody;
use natter_proto::chats::MessageType;
use natter_proto::search::{
    ChatSearchResults, ContactSearchResults, MessageHit, MessageSearchResults,
};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::IntoParams;

use super::AppState;
use super::chats::{chat_summary, message_dto};
use super::error::ApiError;
use super::users::contact_dto;
use crate::service::{MessageSearch, Principal, ServiceError};

/// Query parameters of a message search (`chat_id` may repeat). This type
/// only describes them in the OpenAPI document; `parse_message_search` reads them.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct MessageSearchParams {
    /// The query (alias `query`): plain words as typed; `"a phrase"`, `prefix*`,
    /// `a OR b`, `-word` or `NOT word` (see docs/api.md).
    q: String,
    /// Only this chat; repeat for several.
    chat_id: Option<Vec<String>>,
    /// Only from this user.
    sender_id: Option<String>,
    /// Only `text`, `image`, `video` or `file`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    message_type: Option<String>,
    /// Only sent before this RFC 3339 time.
    before: Option<String>,
    /// Only sent after this RFC 3339 time.
    after: Option<String>,
    /// `newest` (default) or `relevance` (BM25).
    sort: Option<String>,
    /// Page, from 1.
    page: Option<i64>,
    /// Hits per page (default 20).
    limit: Option<i64>,
}

fn bad(message: String) -> ApiError {
    ServiceError::InvalidParameter(message).into()
}

fn number(name: &str, value: &str) -> Result<i64, ApiError> {
    value
        .parse()
        .map_err(|_| bad(format!("`{name}` must be a whole number.")))
}

fn time_param(name: &str, value: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|_| {
        bad(format!(
            "`{name}` must be an RFC 3339 time, e.g. 2024-01-01T10:00:00Z."
        ))
    })
}

/// Reads the query string by hand: `chat_id` repeats, which the usual
/// extractor cannot express. Unknown and repeated single-valued keys are errors.
fn parse_message_search(parts: &Parts) -> Result<MessageSearch, ApiError> {
    let mut search = MessageSearch::default();
    let mut seen = std::collections::HashSet::new();
    let mut q = None;
    for (key, value) in form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()) {
        let key = if key == "query" { "q".into() } else { key };
        if key != "chat_id" && !seen.insert(key.to_string()) {
            return Err(bad(format!("`{key}` is given twice.")));
        }
        match &*key {
            "q" => q = Some(value.into_owned()),
            "chat_id" => search.chats.push(
                value
                    .parse()
                    .map_err(|_| bad("`chat_id` must be a chat id.".to_owned()))?,
            ),
            "sender_id" => {
                search.sender = Some(
                    value
                        .parse()
                        .map_err(|_| bad("`sender_id` must be a user id.".to_owned()))?,
                );
            }
            "type" => {
                let t: MessageType = serde_json::from_value(serde_json::Value::from(&*value))
                    .map_err(|_| bad("`type` must be text, image, video or file.".to_owned()))?;
                search.message_type = Some(t);
            }
            "before" => search.before = Some(time_param("before", &value)?),
            "after" => search.after = Some(time_param("after", &value)?),
            "sort" => {
                search.by_relevance = match &*value {
                    "relevance" => true,
                    "newest" => false,
                    _ => return Err(bad("`sort` is `newest` or `relevance`.".to_owned())),
                }
            }
            "page" => search.page = Some(number("page", &value)?),
            "limit" => search.limit = Some(number("limit", &value)?),
            other => return Err(bad(format!("Unknown parameter `{other}`."))),
        }
    }
    search.q = q.ok_or_else(|| bad("`q` is required.".to_owned()))?;
    Ok(search)
}

/// Searches the messages the caller may see (plaintext chats, within their
/// membership periods). Shape: `{messages, total, page, limit}`.
#[utoipa::path(
    get, path = "/api/v1/search/messages", tag = "search",
    security(("bearer" = [])),
    params(MessageSearchParams),
    responses(
        (status = 200, description = "A page of hits.", body = MessageSearchResults),
        (status = 400, description = "A malformed query or parameter.", body = ErrorBody),
        (status = 401, description = "No valid token.", body = ErrorBody),
    )
)]
pub(crate) async fn search_messages(
    State(app): State<AppState>,
    who: Principal,
    parts: Parts,
) -> Result<Json<MessageSearchResults>, ApiError> {
    let search = parse_message_search(&parts)?;
    let (hits, total, page, limit) = app.services.search_messages(&who, search).await?;
    Ok(Json(MessageSearchResults {
        messages: hits
            .into_iter()
            .map(|h| MessageHit {
                message: message_dto(h.message),
                snippet: h.snippet,
            })
            .collect(),
        total,
        page,
        limit,
    }))
}

/// `?q=` for chat and contact search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameQuery {
    /// Part of a name, case-insensitive.
    q: String,
}

/// The caller's chats by name (for direct chats, the other person's name).
#[utoipa::path(
    get, path = "/api/v1/search/chats", tag = "search",
    security(("bearer" = [])),
    params(NameQuery),
    responses(
        (status = 200, description = "Matching chats, most recent activity first.", body = ChatSearchResults),
        (status = 400, description = "A malformed query.", body = ErrorBody),
    )
)]
pub(crate) async fn search_chats(
    State(app): State<AppState>,
    who: Principal,
    super::extract::ApiQuery(q): super::extract::ApiQuery<NameQuery>,
) -> Result<Json<ChatSearchResults>, ApiError> {
    let chats = app.services.search_chats(&who, &q.q).await?;
    Ok(Json(ChatSearchResults {
        chats: chats.into_iter().map(chat_summary).collect(),
    }))
}

/// The caller's contacts by name.
#[utoipa::path(
    get, path = "/api/v1/search/contacts", tag = "search",
    security(("bearer" = [])),
    params(NameQuery),
    responses(
        (status = 200, description = "Matching contacts, by name.", body = ContactSearchResults),
        (status = 400, description = "A malformed query.", body = ErrorBody),
    )
)]
pub(crate) async fn search_contacts(
    State(app): State<AppState>,
    who: Principal,
    super::extract::ApiQuery(q): super::extract::ApiQuery<NameQuery>,
) -> Result<Json<ContactSearchResults>, ApiError> {
    let contacts = app.services.search_contacts(&who, &q.q).await?;
    Ok(Json(ContactSearchResults {
        contacts: contacts.into_iter().map(contact_dto).collect(),
    }))
}
