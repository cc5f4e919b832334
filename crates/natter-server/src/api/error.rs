//! [`ApiError`]: every failure as `{"error":{"code","message"}}` with its
//! status. Internal causes are logged here, once, and never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use natter_proto::{ErrorBody, ErrorCode};

use crate::service::ServiceError;

/// The `Retry-After` of a 503 (the store or another engine cannot serve
/// now): a hint of seconds, the clients back off from there.
pub(crate) const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// The stable code; decides the status.
    code: ErrorCode,
    /// A sentence for people.
    message: String,
    /// For 429: seconds to wait (a 503 always says
    /// [`UNAVAILABLE_RETRY_AFTER_SECS`]).
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The code, for tests and metrics.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The sentence for people.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A 500 whose cause is logged and not shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        metrics::counter!("natter_internal_errors_total").increment(1);
        Self::new(
            ErrorCode::Internal,
            "The server failed to complete the request.",
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let code = match &e {
            ServiceError::InvalidPhone(_) => ErrorCode::InvalidPhone,
            ServiceError::InvalidCode => ErrorCode::InvalidVerificationCode,
            ServiceError::Unauthorized => ErrorCode::Unauthorized,
            ServiceError::InvalidInvite => ErrorCode::InvalidInvite,
            ServiceError::SmsDisabled => ErrorCode::SmsDisabled,
            ServiceError::PhoneTaken => ErrorCode::PhoneTaken,
            ServiceError::DeviceLimit(_) => ErrorCode::DeviceLimitReached,
            ServiceError::ContactLimit(_) => ErrorCode::ContactLimitReached,
            ServiceError::UserNotFound => ErrorCode::UserNotFound,
            ServiceError::DeviceNotFound => ErrorCode::DeviceNotFound,
            ServiceError::ContactNotFound => ErrorCode::ContactNotFound,
            ServiceError::Validation(_) => ErrorCode::ValidationFailed,
            ServiceError::ConfirmationMismatch(_) => ErrorCode::ConfirmationMismatch,
            ServiceError::InvalidParameter(_) => ErrorCode::InvalidParameter,
            ServiceError::ChatNotFound => ErrorCode::ChatNotFound,
            ServiceError::MessageNotFound => ErrorCode::MessageNotFound,
            ServiceError::Forbidden(_) => ErrorCode::Forbidden,
            ServiceError::GroupFull(_) => ErrorCode::GroupFull,
            ServiceError::InvitationNotFound => ErrorCode::InvitationNotFound,
            ServiceError::InvitationLimit(..) => ErrorCode::InvitationLimitReached,
            ServiceError::InvitationNoLongerValid => ErrorCode::InvitationNoLongerValid,
            ServiceError::EditWindowClosed => ErrorCode::EditWindowClosed,
            ServiceError::LastAdmin => ErrorCode::LastAdmin,
            ServiceError::PushDisabled => ErrorCode::PushDisabled,
            ServiceError::InvalidPushEndpoint(_) => ErrorCode::InvalidPushEndpoint,
            ServiceError::PushChannelNotFound => ErrorCode::PushChannelNotFound,
            ServiceError::RateLimited(denied) => {
                let mut err = Self::new(ErrorCode::RateLimited, e.to_string());
                err.retry_after = Some(denied.retry_after.as_secs().max(1));
                return err;
            }
            ServiceError::Sms(cause) => {
                tracing::warn!(error = %cause, "SMS delivery failed");
                ErrorCode::SmsDeliveryFailed
            }
            ServiceError::Store(cause) => {
                tracing::error!(error = %cause, "store failure");
                metrics::counter!("natter_internal_errors_total").increment(1);
                ErrorCode::Unavailable
            }
            ServiceError::Internal(cause) => return Self::internal(cause),
            ServiceError::MediaNotFound => ErrorCode::MediaNotFound,
            ServiceError::UploadNotFound => ErrorCode::UploadNotFound,
            ServiceError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            ServiceError::QuotaExceeded(_) => ErrorCode::StorageQuotaExceeded,
            ServiceError::TooManyUploads(_) => ErrorCode::TooManyUploads,
            ServiceError::MediaTypeMismatch(_) => ErrorCode::MediaTypeMismatch,
            ServiceError::ImageRejected(_) => ErrorCode::ImageRejected,
            ServiceError::OffsetMismatch(_) => ErrorCode::UploadOffsetMismatch,
            ServiceError::StaleEpoch(_) => ErrorCode::StaleEpoch,
            ServiceError::DeviceKeysMissing => ErrorCode::DeviceKeysMissing,
            ServiceError::CredentialExists => ErrorCode::CredentialExists,
            ServiceError::InboxFull(_) => ErrorCode::InboxFull,
            ServiceError::EncryptionRequired => ErrorCode::EncryptionRequired,
            ServiceError::InvalidMlsMessage(_) => ErrorCode::InvalidMlsMessage,
            ServiceError::InvalidKeyPackage(_) => ErrorCode::InvalidKeyPackage,
            ServiceError::InvalidCertificate => ErrorCode::InvalidCertificate,
        };
        Self::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(ErrorBody::new(self.code, self.message))).into_response();
        let headers = response.headers_mut();
        let retry_after = self.retry_after.or_else(|| {
            (status == StatusCode::SERVICE_UNAVAILABLE).then_some(UNAVAILABLE_RETRY_AFTER_SECS)
        });
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED && self.code == ErrorCode::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_503_says_when_to_retry() {
        let response = ApiError::new(ErrorCode::Unavailable, "down").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()[header::RETRY_AFTER],
            UNAVAILABLE_RETRY_AFTER_SECS.to_string().as_str()
        );
        let response = ApiError::new(ErrorCode::ChatNotFound, "no").into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
