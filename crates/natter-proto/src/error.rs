//! The error envelope every failing request answers with:
//! `{"error":{"code":"snake_case_code","message":"A sentence."}}`.
//!
//! Codes are stable: clients branch on them, so a code is never renamed or
//! reused for another meaning. `docs/errors.md` lists them all.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and human-readable message of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code.
    pub code: ErrorCode,
    /// A sentence for people; may change between versions.
    pub message: String,
}

/// Every error code the API can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the body is not valid JSON, or is nested too deeply.
    InvalidJson,
    /// 400: a query string or path parameter is malformed or out of bounds.
    InvalidParameter,
    /// 400: the phone number is not a valid international (E.164) number.
    InvalidPhone,
    /// 400: the push endpoint is not an acceptable URL: not https, too long,
    /// or on a loopback, private or otherwise non-public address.
    InvalidPushEndpoint,
    /// 401: no valid access token was sent.
    Unauthorized,
    /// 401: the verification code is wrong, expired, used, or the number is unknown.
    InvalidVerificationCode,
    /// 401: the invite is unknown, revoked, expired or used up (sign-up mode `invite`).
    InvalidInvite,
    /// 403: this server sends no verification codes (sign-up mode `invite`):
    /// register with an invite; log a new device in with a code from
    /// `POST /api/v1/devices/login-code`.
    SmsDisabled,
    /// 404: no such route.
    NotFound,
    /// 404: no such user, or one the caller may not see.
    UserNotFound,
    /// 404: no such invitation among the caller's pending ones (unknown,
    /// declined, accepted, or expired).
    InvitationNotFound,
    /// 404: no such device among the caller's devices.
    DeviceNotFound,
    /// 404: no such contact in the caller's list.
    ContactNotFound,
    /// 404: no such chat, or one the caller is not in.
    ChatNotFound,
    /// 404: no such message, or one the caller may not see.
    MessageNotFound,
    /// 404: no such media, or one the caller may not fetch.
    MediaNotFound,
    /// 404: no such resumable upload in progress (unknown, finished, expired or terminated).
    UploadNotFound,
    /// 404: this server does not send push notifications (`push.enabled` is off).
    PushDisabled,
    /// 404: the device has no push channel.
    PushChannelNotFound,
    /// 403: the caller is in the chat but lacks the right (an admin's, the sender's).
    Forbidden,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 408: the request took longer than the server allows.
    RequestTimeout,
    /// 409: a user with this phone number already exists.
    PhoneTaken,
    /// 409: the user has as many devices as allowed; log one out first.
    DeviceLimitReached,
    /// 409: the contact list is full.
    ContactLimitReached,
    /// 409: the group has as many members as allowed.
    GroupFull,
    /// 409: the change would leave the group without an admin.
    LastAdmin,
    /// 409: too many pending invitations: the invited user has as many as
    /// allowed, or the group does.
    InvitationLimitReached,
    /// 409: the invitation can no longer be accepted: its inviter is no
    /// longer allowed to add people to the group (left, or no longer an
    /// admin). It is removed.
    InvitationNoLongerValid,
    /// 409: the message can no longer be edited (too old, or deleted).
    EditWindowClosed,
    /// 409: the MLS handshake message is not for the chat's current epoch
    /// (another commit won it): process the chat's log, rebase, retry.
    StaleEpoch,
    /// 409: the device has not registered its keys yet
    /// (`PUT /api/v1/devices/me/credential` first).
    DeviceKeysMissing,
    /// 409: the device's keys are set already (a device's keys never change).
    CredentialExists,
    /// 409: the device's inbox holds as many items as allowed.
    InboxFull,
    /// 403: this server requires end-to-end encryption for new chats.
    EncryptionRequired,
    /// 422: the MLS message is malformed, of the wrong wire format or
    /// content type, for another group, or an application message for an
    /// epoch too old or not yet reached.
    InvalidMlsMessage,
    /// 422: the KeyPackage is malformed, of an unsupported cipher suite,
    /// expired, or not this device's (credential or signature key).
    InvalidKeyPackage,
    /// 422: the certificate does not verify against the user's identity key.
    InvalidCertificate,
    /// 409: a resumable upload's `Upload-Offset` is not where the server is
    /// (or another request is writing it).
    UploadOffsetMismatch,
    /// 409: the user has as many resumable uploads in progress as allowed.
    TooManyUploads,
    /// 412: a tus request without `Tus-Resumable: 1.0.0`.
    TusVersionUnsupported,
    /// 431: the request's header fields are larger than the server allows.
    HeadersTooLarge,
    /// 413: the body (or upload) is larger than allowed.
    PayloadTooLarge,
    /// 413: the upload would take the user past their storage quota.
    StorageQuotaExceeded,
    /// 415: the body's `Content-Type` is not one the route accepts.
    UnsupportedMediaType,
    /// 415: the uploaded bytes are not of the declared type (an "image" that is not one).
    MediaTypeMismatch,
    /// 416: the `Range` asked for lies outside the content.
    RangeNotSatisfiable,
    /// 422: the JSON is well formed but a field is missing, unknown, of the wrong type or out of bounds.
    ValidationFailed,
    /// 422: an image the server will not decode (too many pixels, or corrupt).
    ImageRejected,
    /// 422: a destructive request's confirmation (the account's phone
    /// number, to delete it) does not match.
    ConfirmationMismatch,
    /// 429: too many requests; `Retry-After` says when to try again.
    RateLimited,
    /// 500: a bug or an internal failure; details are in the server log only.
    Internal,
    /// 502: the SMS gateway did not accept the code.
    SmsDeliveryFailed,
    /// 503: the server is starting, stopping, or its store is unavailable.
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status this code is sent with.
    #[must_use]
    pub const fn http_status(self) -> u16 {
        match self {
            Self::InvalidJson
            | Self::InvalidParameter
            | Self::InvalidPhone
            | Self::InvalidPushEndpoint => 400,
            Self::Unauthorized | Self::InvalidVerificationCode | Self::InvalidInvite => 401,
            Self::NotFound
            | Self::UserNotFound
            | Self::DeviceNotFound
            | Self::ContactNotFound
            | Self::ChatNotFound
            | Self::MessageNotFound
            | Self::InvitationNotFound
            | Self::MediaNotFound
            | Self::UploadNotFound => 404,
            Self::PushDisabled | Self::PushChannelNotFound => 404,
            Self::Forbidden | Self::SmsDisabled | Self::EncryptionRequired => 403,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::PhoneTaken
            | Self::DeviceLimitReached
            | Self::ContactLimitReached
            | Self::GroupFull
            | Self::InvitationLimitReached
            | Self::InvitationNoLongerValid
            | Self::LastAdmin
            | Self::EditWindowClosed
            | Self::UploadOffsetMismatch
            | Self::TooManyUploads
            | Self::StaleEpoch
            | Self::DeviceKeysMissing
            | Self::CredentialExists
            | Self::InboxFull => 409,
            Self::TusVersionUnsupported => 412,
            Self::HeadersTooLarge => 431,
            Self::PayloadTooLarge | Self::StorageQuotaExceeded => 413,
            Self::UnsupportedMediaType | Self::MediaTypeMismatch => 415,
            Self::RangeNotSatisfiable => 416,
            Self::ValidationFailed
            | Self::ImageRejected
            | Self::ConfirmationMismatch
            | Self::InvalidMlsMessage
            | Self::InvalidKeyPackage
            | Self::InvalidCertificate => 422,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::SmsDeliveryFailed => 502,
            Self::Unavailable => 503,
        }
    }

    /// The code as it appears on the wire.
    #[must_use]
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl ErrorBody {
    /// Builds an error body.
    #[must_use]
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_documented_shape() {
        let body = ErrorBody::new(
            ErrorCode::PhoneTaken,
            "A user with this phone number exists.",
        );
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "phone_taken", "message": "A user with this phone number exists."}})
        );
        assert_eq!(ErrorCode::PhoneTaken.as_str(), "phone_taken");
        assert_eq!(ErrorCode::PhoneTaken.http_status(), 409);
    }
}
