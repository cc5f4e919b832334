//! Sign-up, login and devices.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::ids::{DeviceId, UserId};
use crate::users::Me;

/// `POST /api/v1/users/verification`: ask for an SMS code.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerificationRequest {
    /// The phone number in international format, e.g. `+14155550123`.
    pub phone: String,
}

/// Answer to a verification request (202 Accepted).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerificationSent {
    /// The number normalised to E.164: the one to use for register and login.
    pub phone: String,
    /// How long the code stays valid, in seconds.
    pub expires_in: u64,
}

/// `POST /api/v1/users/register`: create an account with a verified number.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The phone number the code was sent to.
    pub phone: String,
    /// Display name.
    pub name: String,
    /// The 6-digit code from the SMS. Required in sign-up modes `sms` and
    /// `open`; not used in mode `invite`.
    #[serde(default)]
    pub verification_code: Option<String>,
    /// The invite (`inv_…`) the operator gave. Required in sign-up mode
    /// `invite`; not used in the other modes.
    #[serde(default)]
    pub invite: Option<String>,
    /// A name for this device, shown in the device list.
    #[serde(default)]
    pub device_name: Option<String>,
}

/// `POST /api/v1/devices/login-code`: a one-time code for logging in a new
/// device of the caller's account with `POST /api/v1/users/login`, without
/// an SMS (the way to add a device in sign-up mode `invite`).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginCode {
    /// The caller's number, for the login body.
    pub phone: String,
    /// Six digits, single use; replaces any code sent earlier to the number.
    pub code: String,
    /// How long the code stays valid, in seconds.
    pub expires_in: u64,
}

impl std::fmt::Debug for LoginCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginCode")
            .field("code", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/users/login`: add a device to an existing account.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The phone number the code was sent to.
    pub phone: String,
    /// The 6-digit code from the SMS.
    pub verification_code: String,
    /// A name for this device, shown in the device list.
    #[serde(default)]
    pub device_name: Option<String>,
}

/// Answer to register (201) and login (200): a new device and its token.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// The account.
    pub user_id: UserId,
    /// The device this session created.
    pub device_id: DeviceId,
    /// Send as `Authorization: Bearer <token>`. Shown once; the server keeps only a hash.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// The account's own profile.
    pub user: Me,
}

/// One of the caller's devices.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Device {
    /// Its id, for `DELETE /api/v1/devices/{device_id}`.
    pub device_id: DeviceId,
    /// The name given at login.
    pub name: String,
    /// When it logged in.
    #[serde(with = "crate::timefmt")]
    pub created_at: OffsetDateTime,
    /// Its last authenticated request (to the minute).
    #[serde(with = "crate::timefmt")]
    pub last_active_at: OffsetDateTime,
    /// Whether this is the device making the request.
    pub current: bool,
}

/// `GET /api/v1/devices`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceList {
    /// Oldest first.
    pub devices: Vec<Device>,
}

// Bodies that carry secrets print them redacted.
impl std::fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("name", &self.name)
            .field("verification_code", &"<redacted>")
            .field("invite", &"<redacted>")
            .field("device_name", &self.device_name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("verification_code", &"<redacted>")
            .field("device_name", &self.device_name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("access_token", &"<redacted>")
            .finish_non_exhaustive()
    }
}
