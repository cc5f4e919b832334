//! The typed REST API: one method per route of the server, natter-proto
//! types in and out, errors as [`ApiError`]. See `docs/api.md` for what each
//! route does; this module only speaks it.
//!
//! May depend on: [`crate::transport`], `natter-proto`.

use std::sync::Arc;

use natter_proto::accounts::{
    DeviceList, LoginCode, LoginRequest, RegisterRequest, Session as SessionBody,
    VerificationRequest, VerificationSent,
};
use natter_proto::chats::{
    AddParticipants, ChangeRole, Chat, ChatList, CreateChat, EditMessage, MarkRead, Message,
    MessagePage, ReadPosition, SendMessage, UpdateChat,
};
use natter_proto::e2ee::{
    ClaimKeyPackages, ClaimedKeyPackages, CommitAccepted, Inbox, KeyPackageStock,
    PublishKeyPackages, SendHandover, SetDeviceCredential, SetIdentity, SubmitCommit, UserDevices,
};
use natter_proto::invitations::InvitationList;
use natter_proto::media::{Media, MediaKind};
use natter_proto::push::{PushChannel, PushChannelRequest, VapidKey};
use natter_proto::search::{ChatSearchResults, ContactSearchResults, MessageSearchResults};
use natter_proto::users::{
    AccountExport, AddContact, Contact, ContactList, DeleteAccount, DiscoverContacts,
    DiscoveredContacts, Me, PublicProfile, UpdateMe,
};
use natter_proto::{
    ChatId, DeviceId, ErrorBody, ErrorCode, InvitationId, MediaId, MessageId, UserId,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::transport::{Body, FormPart, Method, Request, Response, Transport};
use crate::{ClientError, ClientResult};

/// An error answer of the server: its status and the stable code and
/// sentence of the `{"error":{…}}` envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server answered {status} {}: {message}", code.as_str())]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The stable code (`docs/errors.md`).
    pub code: ErrorCode,
    /// The server's sentence.
    pub message: String,
}

impl ApiError {
    /// Whether retrying the same request can never succeed: a 4xx other
    /// than a timeout (408) or a rate limit (429).
    #[must_use]
    pub const fn is_permanent(&self) -> bool {
        self.status >= 400 && self.status < 500 && self.status != 408 && self.status != 429
    }

    fn from_response(response: &Response) -> Self {
        match serde_json::from_slice::<ErrorBody>(&response.body) {
            Ok(body) => Self {
                status: response.status,
                code: body.error.code,
                message: body.error.message,
            },
            // A proxy's page, or a code this SDK does not know yet.
            Err(_) => Self {
                status: response.status,
                code: if response.status >= 500 {
                    ErrorCode::Unavailable
                } else {
                    ErrorCode::InvalidParameter
                },
                message: String::from_utf8_lossy(&response.body)
                    .chars()
                    .take(200)
                    .collect(),
            },
        }
    }
}

/// A message the server stored (`POST /api/v1/messages`).
#[derive(Debug, Clone)]
pub struct Posted {
    /// The stored message (server id and seq).
    pub message: Message,
    /// True when the `client_message_id` was already stored (200): this is
    /// the original.
    pub duplicate: bool,
}

/// `GET /api/v1/chats/{id}/messages` parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryQuery {
    /// 1-based page, newest first.
    pub page: Option<i64>,
    /// Entries per page.
    pub limit: Option<i64>,
    /// Only entries before this seq.
    pub before_seq: Option<i64>,
}

/// `GET /api/v1/search/messages` parameters (see docs/api.md for the syntax of `q`).
#[derive(Debug, Clone, Default)]
pub struct MessageSearch {
    /// The query.
    pub q: String,
    /// Only these chats.
    pub chat_ids: Vec<ChatId>,
    /// Only from this user.
    pub sender_id: Option<UserId>,
    /// `text`, `image`, `video` or `file`.
    pub message_type: Option<String>,
    /// `newest` or `relevance`.
    pub sort: Option<String>,
    /// From 1.
    pub page: Option<i64>,
    /// Hits per page.
    pub limit: Option<i64>,
}

/// A multipart upload (`POST /api/v1/media/upload`).
#[derive(Clone)]
pub struct Upload {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// What they claim to be.
    pub kind: MediaKind,
    /// The file name sent with them.
    pub file_name: String,
    /// The chat they are for, if any.
    pub chat_id: Option<ChatId>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("bytes", &self.bytes.len())
            .field("kind", &self.kind)
            .field("chat_id", &self.chat_id)
            .finish_non_exhaustive()
    }
}

/// A downloaded blob.
#[derive(Debug, Clone)]
pub struct Download {
    /// 200, or 206 for a range.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: Option<String>,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// The REST API of one server, with or without a device's token.
#[derive(Clone)]
pub struct Api {
    /// The network.
    transport: Arc<dyn Transport>,
    /// `http://host:port`, no trailing slash.
    base: String,
    /// The device's bearer token.
    token: Option<String>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

fn json(body: &impl Serialize) -> ClientResult<Body> {
    serde_json::to_vec(body)
        .map(Body::Json)
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Where tus uploads live.
const TUS_PATH: &str = "/api/v1/media/tus";

fn tus_resumable() -> (String, String) {
    ("tus-resumable".to_owned(), "1.0.0".to_owned())
}

fn upload_offset(response: &Response) -> ClientResult<u64> {
    response
        .header("upload-offset")
        .and_then(|o| o.parse().ok())
        .ok_or_else(|| ClientError::Protocol("a tus answer without Upload-Offset".into()))
}

fn query(pairs: &[(&str, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

impl Api {
    /// The API at `base` (`http://127.0.0.1:8080`) over `transport`, unauthenticated.
    #[must_use]
    pub fn new(transport: Arc<dyn Transport>, base: &str) -> Self {
        Self {
            transport,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// The same API authenticated as a device.
    #[must_use]
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// The server's base URL.
    #[must_use]
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The transport underneath.
    #[must_use]
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// Sends a request and returns the raw response, whatever its status.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn raw(&self, method: Method, path: &str, body: Body) -> ClientResult<Response> {
        let request = Request {
            method,
            url: format!("{}{path}", self.base),
            bearer: self.token.clone(),
            headers: Vec::new(),
            body,
        };
        Ok(self.transport.http(request).await?)
    }

    async fn ok(&self, method: Method, path: &str, body: Body) -> ClientResult<Response> {
        self.ok_with(method, path, Vec::new(), body).await
    }

    async fn ok_with(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(String, String)>,
        body: Body,
    ) -> ClientResult<Response> {
        let request = Request {
            method,
            url: format!("{}{path}", self.base),
            bearer: self.token.clone(),
            headers,
            body,
        };
        let response = self.transport.http(request).await?;
        if (200..300).contains(&response.status) {
            Ok(response)
        } else {
            Err(ClientError::Api(ApiError::from_response(&response)))
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> ClientResult<T> {
        let response = self.ok(method, path, body).await?;
        serde_json::from_slice(&response.body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn call_empty(&self, method: Method, path: &str, body: Body) -> ClientResult<()> {
        self.ok(method, path, body).await.map(|_| ())
    }

    // Accounts and devices.

    /// `POST /api/v1/users/verification`: sends a code by SMS.
    ///
    /// # Errors
    /// A refused number, a rate limit, or a transport failure.
    pub async fn request_code(&self, body: &VerificationRequest) -> ClientResult<VerificationSent> {
        self.call(Method::Post, "/api/v1/users/verification", json(body)?)
            .await
    }

    /// `POST /api/v1/users/register`.
    ///
    /// # Errors
    /// A wrong code, a taken number, or a transport failure.
    pub async fn register(&self, body: &RegisterRequest) -> ClientResult<SessionBody> {
        self.call(Method::Post, "/api/v1/users/register", json(body)?)
            .await
    }

    /// `POST /api/v1/users/login`: a new device.
    ///
    /// # Errors
    /// A wrong code or a transport failure.
    pub async fn login(&self, body: &LoginRequest) -> ClientResult<SessionBody> {
        self.call(Method::Post, "/api/v1/users/login", json(body)?)
            .await
    }

    /// `POST /api/v1/devices/login-code`: a code to log in another device.
    ///
    /// # Errors
    /// A rate limit or a transport failure.
    pub async fn login_code(&self) -> ClientResult<LoginCode> {
        self.call(Method::Post, "/api/v1/devices/login-code", Body::Empty)
            .await
    }

    /// `POST /api/v1/users/logout`: revokes this device's token.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn logout(&self) -> ClientResult<()> {
        self.call_empty(Method::Post, "/api/v1/users/logout", Body::Empty)
            .await
    }

    /// `GET /api/v1/devices`.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn devices(&self) -> ClientResult<DeviceList> {
        self.call(Method::Get, "/api/v1/devices", Body::Empty).await
    }

    /// `DELETE /api/v1/devices/{id}`.
    ///
    /// # Errors
    /// An unknown device or a transport failure.
    pub async fn revoke_device(&self, device: DeviceId) -> ClientResult<()> {
        self.call_empty(
            Method::Delete,
            &format!("/api/v1/devices/{device}"),
            Body::Empty,
        )
        .await
    }

    /// `DELETE /api/v1/users/me`: deletes the account.
    ///
    /// # Errors
    /// A mismatched confirmation or a transport failure.
    pub async fn delete_me(&self, body: &DeleteAccount) -> ClientResult<()> {
        self.call_empty(Method::Delete, "/api/v1/users/me", json(body)?)
            .await
    }

    /// `GET /api/v1/users/me/export`.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn export_me(&self) -> ClientResult<AccountExport> {
        self.call(Method::Get, "/api/v1/users/me/export", Body::Empty)
            .await
    }

    // Profiles and contacts.

    /// `GET /api/v1/users/me`.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn me(&self) -> ClientResult<Me> {
        self.call(Method::Get, "/api/v1/users/me", Body::Empty)
            .await
    }

    /// `PATCH /api/v1/users/me`.
    ///
    /// # Errors
    /// A validation failure or a transport failure.
    pub async fn update_me(&self, body: &UpdateMe) -> ClientResult<Me> {
        self.call(Method::Patch, "/api/v1/users/me", json(body)?)
            .await
    }

    /// `GET /api/v1/users/{id}`.
    ///
    /// # Errors
    /// An unknown user or a transport failure.
    pub async fn user(&self, user: UserId) -> ClientResult<PublicProfile> {
        self.call(Method::Get, &format!("/api/v1/users/{user}"), Body::Empty)
            .await
    }

    /// `GET /api/v1/users/contacts`.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn contacts(&self) -> ClientResult<ContactList> {
        self.call(Method::Get, "/api/v1/users/contacts", Body::Empty)
            .await
    }

    /// `POST /api/v1/users/contacts` (201 new, 200 already there).
    ///
    /// # Errors
    /// An unknown user, the contact limit, or a transport failure.
    pub async fn add_contact(&self, body: &AddContact) -> ClientResult<Contact> {
        self.call(Method::Post, "/api/v1/users/contacts", json(body)?)
            .await
    }

    /// `DELETE /api/v1/users/contacts/{id}`.
    ///
    /// # Errors
    /// Not a contact, or a transport failure.
    pub async fn remove_contact(&self, user: UserId) -> ClientResult<()> {
        self.call_empty(
            Method::Delete,
            &format!("/api/v1/users/contacts/{user}"),
            Body::Empty,
        )
        .await
    }

    /// `POST /api/v1/users/contacts/discover`.
    ///
    /// # Errors
    /// A rate limit or a transport failure.
    pub async fn discover(&self, body: &DiscoverContacts) -> ClientResult<DiscoveredContacts> {
        self.call(Method::Post, "/api/v1/users/contacts/discover", json(body)?)
            .await
    }

    // Invitations to groups.

    /// `GET /api/v1/invitations`: the caller's pending invitations, newest first.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn invitations(&self) -> ClientResult<InvitationList> {
        self.call(Method::Get, "/api/v1/invitations", Body::Empty)
            .await
    }

    /// `POST /api/v1/invitations/{id}/accept`: joins the group.
    ///
    /// # Errors
    /// No such pending invitation, the group is gone or full, the inviter
    /// may no longer add people, or a transport failure.
    pub async fn accept_invitation(&self, invitation: InvitationId) -> ClientResult<Chat> {
        self.call(
            Method::Post,
            &format!("/api/v1/invitations/{invitation}/accept"),
            Body::Empty,
        )
        .await
    }

    /// `DELETE /api/v1/invitations/{id}`: declines (the inviter is not told).
    ///
    /// # Errors
    /// No such pending invitation, or a transport failure.
    pub async fn decline_invitation(&self, invitation: InvitationId) -> ClientResult<()> {
        self.call_empty(
            Method::Delete,
            &format!("/api/v1/invitations/{invitation}"),
            Body::Empty,
        )
        .await
    }

    // Chats and participants.

    /// `POST /api/v1/chats` (201, or 200 for an existing direct chat).
    ///
    /// # Errors
    /// Unknown users, a full group, or a transport failure.
    pub async fn create_chat(&self, body: &CreateChat) -> ClientResult<Chat> {
        self.call(Method::Post, "/api/v1/chats", json(body)?).await
    }

    /// `GET /api/v1/chats`.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn chats(&self) -> ClientResult<ChatList> {
        self.call(Method::Get, "/api/v1/chats", Body::Empty).await
    }

    /// `GET /api/v1/chats/{id}`.
    ///
    /// # Errors
    /// Not a member (`chat_not_found`) or a transport failure.
    pub async fn chat(&self, chat: ChatId) -> ClientResult<Chat> {
        self.call(Method::Get, &format!("/api/v1/chats/{chat}"), Body::Empty)
            .await
    }

    /// `PATCH /api/v1/chats/{id}` (admins).
    ///
    /// # Errors
    /// Not an admin, or a transport failure.
    pub async fn update_chat(&self, chat: ChatId, body: &UpdateChat) -> ClientResult<Chat> {
        self.call(Method::Patch, &format!("/api/v1/chats/{chat}"), json(body)?)
            .await
    }

    /// `POST /api/v1/chats/{id}/participants` (admins).
    ///
    /// # Errors
    /// Not an admin, a full group, or a transport failure.
    pub async fn add_participants(
        &self,
        chat: ChatId,
        body: &AddParticipants,
    ) -> ClientResult<Chat> {
        self.call(
            Method::Post,
            &format!("/api/v1/chats/{chat}/participants"),
            json(body)?,
        )
        .await
    }

    /// `DELETE /api/v1/chats/{id}/participants/{user}` (admins, or leaving).
    ///
    /// # Errors
    /// Not allowed, or a transport failure.
    pub async fn remove_participant(&self, chat: ChatId, user: UserId) -> ClientResult<()> {
        let path = format!("/api/v1/chats/{chat}/participants/{user}");
        self.call_empty(Method::Delete, &path, Body::Empty).await
    }

    /// `PATCH /api/v1/chats/{id}/participants/{user}` (admins).
    ///
    /// # Errors
    /// Not an admin, the last admin, or a transport failure.
    pub async fn change_role(
        &self,
        chat: ChatId,
        user: UserId,
        body: &ChangeRole,
    ) -> ClientResult<Chat> {
        let path = format!("/api/v1/chats/{chat}/participants/{user}");
        self.call(Method::Patch, &path, json(body)?).await
    }

    // Messages.

    /// `POST /api/v1/messages` (201, or 200 for a retry of a stored
    /// `client_message_id`).
    ///
    /// # Errors
    /// Not a member, a validation failure, or a transport failure.
    pub async fn send_message(&self, body: &SendMessage) -> ClientResult<Posted> {
        let response = self
            .ok(Method::Post, "/api/v1/messages", json(body)?)
            .await?;
        let message = serde_json::from_slice(&response.body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Posted {
            message,
            duplicate: response.status == 200,
        })
    }

    /// `GET /api/v1/chats/{id}/messages`, newest first.
    ///
    /// # Errors
    /// Not a member, or a transport failure.
    pub async fn history(&self, chat: ChatId, q: HistoryQuery) -> ClientResult<MessagePage> {
        let mut pairs = Vec::new();
        if let Some(p) = q.page {
            pairs.push(("page", p.to_string()));
        }
        if let Some(l) = q.limit {
            pairs.push(("limit", l.to_string()));
        }
        if let Some(b) = q.before_seq {
            pairs.push(("before_seq", b.to_string()));
        }
        let path = format!("/api/v1/chats/{chat}/messages{}", query(&pairs));
        self.call(Method::Get, &path, Body::Empty).await
    }

    /// `PATCH /api/v1/messages/{id}` (sender, within the edit window).
    ///
    /// # Errors
    /// Not the sender, the window closed, or a transport failure.
    pub async fn edit_message(
        &self,
        message: MessageId,
        body: &EditMessage,
    ) -> ClientResult<Message> {
        self.call(
            Method::Patch,
            &format!("/api/v1/messages/{message}"),
            json(body)?,
        )
        .await
    }

    /// `DELETE /api/v1/messages/{id}` (for everyone; sender only).
    ///
    /// # Errors
    /// Not the sender, or a transport failure.
    pub async fn delete_message(&self, message: MessageId) -> ClientResult<()> {
        self.call_empty(
            Method::Delete,
            &format!("/api/v1/messages/{message}"),
            Body::Empty,
        )
        .await
    }

    /// `POST /api/v1/chats/{id}/read`: read receipts over REST.
    ///
    /// # Errors
    /// Not a member, or a transport failure.
    pub async fn mark_read(&self, chat: ChatId, body: &MarkRead) -> ClientResult<ReadPosition> {
        self.call(
            Method::Post,
            &format!("/api/v1/chats/{chat}/read"),
            json(body)?,
        )
        .await
    }

    // Media.

    /// `POST /api/v1/media/upload` (multipart: `file`, `type`, `chat_id`).
    ///
    /// # Errors
    /// Too large, the wrong type, or a transport failure.
    pub async fn upload(&self, upload: Upload) -> ClientResult<Media> {
        let mut parts = vec![FormPart::File {
            name: "file".to_owned(),
            file_name: upload.file_name,
            bytes: upload.bytes,
        }];
        if let Some(chat) = upload.chat_id {
            parts.push(FormPart::Text {
                name: "chat_id".to_owned(),
                value: chat.to_string(),
            });
        }
        parts.push(FormPart::Text {
            name: "type".to_owned(),
            value: upload.kind.as_str().to_owned(),
        });
        self.call(Method::Post, "/api/v1/media/upload", Body::Form(parts))
            .await
    }

    /// `GET /api/v1/media/{id}` (whole).
    ///
    /// # Errors
    /// Not visible to the caller, or a transport failure.
    pub async fn download(&self, media: MediaId) -> ClientResult<Download> {
        self.download_path(&natter_proto::media::media_url(media))
            .await
    }

    /// `GET /api/v1/media/{id}` with `Range: bytes=start-end` (inclusive):
    /// 206 with those bytes.
    ///
    /// # Errors
    /// Not visible to the caller, a range outside the file (416), or a
    /// transport failure.
    pub async fn download_range(
        &self,
        media: MediaId,
        start: u64,
        end: u64,
    ) -> ClientResult<Download> {
        let response = self
            .ok_with(
                Method::Get,
                &natter_proto::media::media_url(media),
                vec![("range".to_owned(), format!("bytes={start}-{end}"))],
                Body::Empty,
            )
            .await?;
        Ok(Download {
            status: response.status,
            content_type: response.header("content-type").map(str::to_owned),
            bytes: response.body,
        })
    }

    // Resumable uploads (tus 1.0).

    /// `POST /api/v1/media/tus`: announces an upload of `length` bytes;
    /// its id is the media id once the last byte arrives.
    ///
    /// # Errors
    /// Too large, too many uploads in progress, or a transport failure.
    pub async fn tus_create(
        &self,
        length: u64,
        kind: MediaKind,
        chat: Option<ChatId>,
        file_name: &str,
    ) -> ClientResult<MediaId> {
        use base64::Engine as _;
        let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
        let mut metadata = vec![format!("type {}", b64(kind.as_str()))];
        if let Some(chat) = chat {
            metadata.push(format!("chat_id {}", b64(&chat.to_string())));
        }
        metadata.push(format!("filename {}", b64(file_name)));
        let response = self
            .ok_with(
                Method::Post,
                TUS_PATH,
                vec![
                    tus_resumable(),
                    ("upload-length".to_owned(), length.to_string()),
                    ("upload-metadata".to_owned(), metadata.join(",")),
                ],
                Body::Empty,
            )
            .await?;
        response
            .header("location")
            .and_then(|l| l.rsplit('/').next())
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| ClientError::Protocol("a tus creation without a Location".into()))
    }

    /// `PATCH /api/v1/media/tus/{id}`: `bytes` at `offset`; the new offset.
    ///
    /// # Errors
    /// A wrong offset (409), past the length (413), a refused file at the
    /// end (415, 422), or a transport failure.
    pub async fn tus_patch(&self, id: MediaId, offset: u64, bytes: Vec<u8>) -> ClientResult<u64> {
        let response = self
            .ok_with(
                Method::Patch,
                &format!("{TUS_PATH}/{id}"),
                vec![
                    tus_resumable(),
                    ("upload-offset".to_owned(), offset.to_string()),
                ],
                Body::Bytes {
                    content_type: "application/offset+octet-stream".to_owned(),
                    bytes,
                },
            )
            .await?;
        upload_offset(&response)
    }

    /// `HEAD /api/v1/media/tus/{id}`: how much of the upload the server has.
    ///
    /// # Errors
    /// An unknown or expired upload, or a transport failure.
    pub async fn tus_offset(&self, id: MediaId) -> ClientResult<u64> {
        let response = self
            .ok_with(
                Method::Head,
                &format!("{TUS_PATH}/{id}"),
                vec![tus_resumable()],
                Body::Empty,
            )
            .await?;
        upload_offset(&response)
    }

    /// `DELETE /api/v1/media/tus/{id}`: abandons the upload.
    ///
    /// # Errors
    /// An unknown upload or a transport failure.
    pub async fn tus_delete(&self, id: MediaId) -> ClientResult<()> {
        self.ok_with(
            Method::Delete,
            &format!("{TUS_PATH}/{id}"),
            vec![tus_resumable()],
            Body::Empty,
        )
        .await
        .map(|_| ())
    }

    /// `GET /api/v1/media/{id}/thumbnail`.
    ///
    /// # Errors
    /// No thumbnail, not visible, or a transport failure.
    pub async fn thumbnail(&self, media: MediaId) -> ClientResult<Download> {
        self.download_path(&natter_proto::media::thumbnail_url(media))
            .await
    }

    async fn download_path(&self, path: &str) -> ClientResult<Download> {
        let response = self.ok(Method::Get, path, Body::Empty).await?;
        Ok(Download {
            status: response.status,
            content_type: response.header("content-type").map(str::to_owned),
            bytes: response.body,
        })
    }

    // Search.

    /// `GET /api/v1/search/messages`.
    ///
    /// # Errors
    /// A malformed query or a transport failure.
    pub async fn search_messages(
        &self,
        search: &MessageSearch,
    ) -> ClientResult<MessageSearchResults> {
        let mut pairs = vec![("q", search.q.clone())];
        pairs.extend(search.chat_ids.iter().map(|c| ("chat_id", c.to_string())));
        if let Some(s) = search.sender_id {
            pairs.push(("sender_id", s.to_string()));
        }
        if let Some(t) = &search.message_type {
            pairs.push(("type", t.clone()));
        }
        if let Some(s) = &search.sort {
            pairs.push(("sort", s.clone()));
        }
        if let Some(p) = search.page {
            pairs.push(("page", p.to_string()));
        }
        if let Some(l) = search.limit {
            pairs.push(("limit", l.to_string()));
        }
        let path = format!("/api/v1/search/messages{}", query(&pairs));
        self.call(Method::Get, &path, Body::Empty).await
    }

    /// `GET /api/v1/search/chats?q=`.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn search_chats(&self, q: &str) -> ClientResult<ChatSearchResults> {
        let path = format!("/api/v1/search/chats{}", query(&[("q", q.to_owned())]));
        self.call(Method::Get, &path, Body::Empty).await
    }

    /// `GET /api/v1/search/contacts?q=`.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn search_contacts(&self, q: &str) -> ClientResult<ContactSearchResults> {
        let path = format!("/api/v1/search/contacts{}", query(&[("q", q.to_owned())]));
        self.call(Method::Get, &path, Body::Empty).await
    }

    // Push.

    /// `GET /api/v1/push/vapid`.
    ///
    /// # Errors
    /// Push disabled, or a transport failure.
    pub async fn vapid_key(&self) -> ClientResult<VapidKey> {
        self.call(Method::Get, "/api/v1/push/vapid", Body::Empty)
            .await
    }

    /// `POST /api/v1/devices/{id}/push` (201 new, 200 replaced).
    ///
    /// # Errors
    /// An unacceptable endpoint, or a transport failure.
    pub async fn set_push_channel(
        &self,
        device: DeviceId,
        body: &PushChannelRequest,
    ) -> ClientResult<PushChannel> {
        self.call(
            Method::Post,
            &format!("/api/v1/devices/{device}/push"),
            json(body)?,
        )
        .await
    }

    /// `DELETE /api/v1/devices/{id}/push`.
    ///
    /// # Errors
    /// No channel, or a transport failure.
    pub async fn delete_push_channel(&self, device: DeviceId) -> ClientResult<()> {
        self.call_empty(
            Method::Delete,
            &format!("/api/v1/devices/{device}/push"),
            Body::Empty,
        )
        .await
    }

    // End-to-end encryption: the MLS delivery service (docs/e2ee.md).

    /// `PUT /api/v1/users/me/identity`.
    ///
    /// # Errors
    /// A malformed key, or a transport failure.
    pub async fn set_identity(&self, body: &SetIdentity) -> ClientResult<()> {
        self.call_empty(Method::Put, "/api/v1/users/me/identity", json(body)?)
            .await
    }

    /// `PUT /api/v1/devices/{id}/credential` (`id` is this device or another of the user's).
    ///
    /// # Errors
    /// A bad certificate, a different credential already set, or a transport failure.
    pub async fn set_device_credential(
        &self,
        device: DeviceId,
        body: &SetDeviceCredential,
    ) -> ClientResult<()> {
        let path = format!("/api/v1/devices/{device}/credential");
        self.call_empty(Method::Put, &path, json(body)?).await
    }

    /// `GET /api/v1/users/{id}/devices`: identity key and device keys.
    ///
    /// # Errors
    /// An unknown user, or a transport failure.
    pub async fn user_devices(&self, user: UserId) -> ClientResult<UserDevices> {
        self.call(
            Method::Get,
            &format!("/api/v1/users/{user}/devices"),
            Body::Empty,
        )
        .await
    }

    /// `POST /api/v1/devices/me/key-packages`.
    ///
    /// # Errors
    /// Not certified, malformed packages, or a transport failure.
    pub async fn publish_key_packages(
        &self,
        body: &PublishKeyPackages,
    ) -> ClientResult<KeyPackageStock> {
        self.call(Method::Post, "/api/v1/devices/me/key-packages", json(body)?)
            .await
    }

    /// `GET /api/v1/devices/me/key-packages`.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn key_package_stock(&self) -> ClientResult<KeyPackageStock> {
        self.call(Method::Get, "/api/v1/devices/me/key-packages", Body::Empty)
            .await
    }

    /// `POST /api/v1/key-packages/claim`: one per certified device of each user.
    ///
    /// # Errors
    /// Unknown users, or a transport failure.
    pub async fn claim_key_packages(
        &self,
        body: &ClaimKeyPackages,
    ) -> ClientResult<ClaimedKeyPackages> {
        self.call(Method::Post, "/api/v1/key-packages/claim", json(body)?)
            .await
    }

    /// `POST /api/v1/chats/{id}/commits` (201). A commit for a past epoch
    /// fails with status 409 and [`ErrorCode::StaleEpoch`]: rebase and retry.
    ///
    /// # Errors
    /// A stale epoch, a malformed message, or a transport failure.
    pub async fn submit_commit(
        &self,
        chat: ChatId,
        body: &SubmitCommit,
    ) -> ClientResult<CommitAccepted> {
        self.call(
            Method::Post,
            &format!("/api/v1/chats/{chat}/commits"),
            json(body)?,
        )
        .await
    }

    /// `GET /api/v1/devices/me/inbox`: oldest first.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn inbox(&self) -> ClientResult<Inbox> {
        self.call(Method::Get, "/api/v1/devices/me/inbox", Body::Empty)
            .await
    }

    /// `DELETE /api/v1/devices/me/inbox/{id}`: acknowledges an item.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn ack_inbox(&self, item: i64) -> ClientResult<()> {
        self.call_empty(
            Method::Delete,
            &format!("/api/v1/devices/me/inbox/{item}"),
            Body::Empty,
        )
        .await
    }

    /// `POST /api/v1/devices/{id}/handover`: a sealed payload for another device of the user.
    ///
    /// # Errors
    /// Not the user's device, a full inbox, or a transport failure.
    pub async fn send_handover(&self, device: DeviceId, body: &SendHandover) -> ClientResult<()> {
        let path = format!("/api/v1/devices/{device}/handover");
        self.call_empty(Method::Post, &path, json(body)?).await
    }
}
