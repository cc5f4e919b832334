//! What goes wrong, in sentences a person can act on. Every failure the
//! client shows passes through [`explain`], so no raw error dump reaches
//! the screen, and tokens never do (the SDK's errors carry none).

use natter_client::ClientError;
use natter_proto::ErrorCode;

/// A failure of `natter chat`, already explained.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChatError(pub String);

impl ChatError {
    /// A failure from a sentence.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// A failure of the SDK against `server`, explained.
    #[must_use]
    pub fn client(e: &ClientError, server: &str) -> Self {
        Self(explain(e, server))
    }
}

/// The sentence for an SDK failure against `server`.
#[must_use]
pub fn explain(e: &ClientError, server: &str) -> String {
    match e {
        ClientError::Transport(_) | ClientError::WebSocket(_) => format!(
            "cannot reach the Natter server at {server}. Is it running (`natter serve`), \
             and is the address right (`--server URL`)?"
        ),
        ClientError::Timeout(what) => {
            format!("the server at {server} did not answer in time ({what}); try again")
        }
        ClientError::Revoked => REVOKED.to_owned(),
        ClientError::Api(api) => match api.code {
            ErrorCode::Unauthorized => REVOKED.to_owned(),
            ErrorCode::InvalidVerificationCode => "the code is wrong, has expired or was used \
                 already (or the number has no account): ask for a new one"
                .to_owned(),
            ErrorCode::InvalidPhone => "that is not a valid phone number: write it in \
                 international format, e.g. +14155550123"
                .to_owned(),
            ErrorCode::RateLimited => {
                "too many attempts for now: wait a minute and try again".to_owned()
            }
            ErrorCode::SmsDisabled => "this server sends no codes (invite-only sign-up): \
                 log in with a code from one of your other devices (`/devices` there)"
                .to_owned(),
            ErrorCode::SmsDeliveryFailed => {
                "the server could not send the SMS; try again later".to_owned()
            }
            ErrorCode::UserNotFound => "no Natter account has that number".to_owned(),
            ErrorCode::ChatNotFound => "no such chat (or you are no longer in it)".to_owned(),
            ErrorCode::DeviceLimitReached => "your account has as many devices as the server \
                 allows: log one out first (`/devices` on another device)"
                .to_owned(),
            ErrorCode::Unavailable => {
                format!("the server at {server} is starting or stopping; try again shortly")
            }
            ErrorCode::Internal => {
                format!("the server at {server} failed (details are in its log)")
            }
            _ => format!("the server refused: {}", api.message),
        },
        ClientError::Store(e) => format!("the local data directory cannot be used: {e}"),
        ClientError::Io(e) => format!("a local file could not be used: {e}"),
        ClientError::Closed => "the connection to the server closed".to_owned(),
        ClientError::Protocol(text) => text.clone(),
    }
}

/// The sentence for a session the server no longer accepts.
pub const REVOKED: &str = "this device's session has ended (it was logged out or revoked): \
     log in again with `natter chat login`";

#[cfg(test)]
mod tests {
    use super::*;
    use natter_client::ApiError;

    #[test]
    fn an_expired_session_and_a_server_down_read_as_sentences() {
        let api = ClientError::Api(ApiError {
            status: 401,
            code: ErrorCode::Unauthorized,
            message: "x".into(),
        });
        assert!(explain(&api, "http://h").contains("natter chat login"));
        assert!(explain(&ClientError::Revoked, "http://h").contains("natter chat login"));
        let timeout = explain(&ClientError::Timeout("connect"), "http://h:1");
        assert!(timeout.contains("http://h:1"), "{timeout}");
    }
}
