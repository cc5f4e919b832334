//! Push channels: registering a device's Web Push or UnifiedPush endpoint,
//! or its FCM or APNs token; the server's VAPID key; and the payload a push
//! carries (`docs/push.md`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::ids::{ChatId, DeviceId};

/// `POST /api/v1/devices/{device_id}/push`: the device's push channel.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PushChannelRequest {
    /// A Web Push subscription (browsers, and UnifiedPush distributors that
    /// speak Web Push): payloads are encrypted to `keys` (RFC 8291).
    Webpush {
        /// The push service URL from `PushSubscription.endpoint`.
        endpoint: String,
        /// The subscription's keys, base64url as browsers give them.
        keys: WebPushKeys,
    },
    /// A UnifiedPush endpoint without keys: it receives only the
    /// content-free payload, unencrypted.
    Unifiedpush {
        /// The distributor's endpoint URL.
        endpoint: String,
    },
    /// An Android device's Firebase Cloud Messaging registration token: the
    /// server sends the content-free payload as FCM `data` (HTTP v1 API).
    Fcm {
        /// The registration token: printable ASCII, at most
        /// [`FCM_TOKEN_MAX_CHARS`] characters.
        token: String,
    },
    /// An Apple device's APNs device token: the server sends a generic
    /// alert ("New message") with `mutable-content` and the content-free
    /// fields beside `aps`.
    Apns {
        /// The device token in hex, [`APNS_TOKEN_MIN_CHARS`] to
        /// [`APNS_TOKEN_MAX_CHARS`] characters.
        token: String,
        /// Which APNs environment issued the token; `production` if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<ApnsEnvironment>,
    },
}

/// Longest FCM registration token accepted, in characters.
pub const FCM_TOKEN_MAX_CHARS: usize = 4096;
/// Shortest APNs device token accepted, in hex digits (32 bytes today).
pub const APNS_TOKEN_MIN_CHARS: usize = 64;
/// Longest APNs device token accepted, in hex digits (Apple may lengthen them).
pub const APNS_TOKEN_MAX_CHARS: usize = 200;

/// Which APNs environment a device token belongs to: development builds get
/// sandbox tokens, App Store and TestFlight builds production ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApnsEnvironment {
    /// `api.sandbox.push.apple.com`.
    Sandbox,
    /// `api.push.apple.com`.
    #[default]
    Production,
}

/// The keys of a Web Push subscription.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebPushKeys {
    /// The subscription's P-256 public key, uncompressed (65 bytes), base64url.
    pub p256dh: String,
    /// The subscription's authentication secret (16 bytes), base64url.
    pub auth: String,
}

/// Which protocol a push channel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PushKind {
    /// Web Push with encrypted payloads.
    Webpush,
    /// UnifiedPush without keys: content-free, unencrypted payloads.
    Unifiedpush,
    /// Firebase Cloud Messaging (HTTP v1): content-free `data`.
    Fcm,
    /// Apple Push Notification service: a generic alert, content-free fields.
    Apns,
}

/// A registered push channel (201 for a new one, 200 for a replacement).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PushChannel {
    /// The device it belongs to.
    pub device_id: DeviceId,
    /// Its protocol.
    pub kind: PushKind,
    /// Its endpoint (`webpush` and `unifiedpush`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Its device token (`fcm` and `apns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Its APNs environment (`apns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<ApnsEnvironment>,
    /// When it was registered.
    #[serde(with = "crate::timefmt")]
    pub created_at: OffsetDateTime,
}

/// `GET /api/v1/push/vapid`: the server's VAPID public key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VapidKey {
    /// The P-256 public key, uncompressed point, base64url without padding:
    /// what `pushManager.subscribe({applicationServerKey})` takes.
    pub public_key: String,
}

/// What a push carries (JSON; encrypted with aes128gcm for `webpush`).
/// A hint to sync, never the messages themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushPayload {
    /// Format version, 1.
    pub v: u32,
    /// Always `sync`: connect and `sync`.
    pub kind: String,
    /// The chat of the new messages; `null` when they are in several chats.
    pub chat_id: Option<ChatId>,
    /// How many new messages this push stands for.
    pub count: u64,
    /// The seq in `chat_id` just before these messages: that chat's events
    /// from here on are new. `null` when they are in several chats.
    pub seq: Option<i64>,
    /// Only when the operator enabled previews, for plaintext chats, and for
    /// Web Push channels with keys (never FCM, APNs or keyless UnifiedPush): the latest message's sender and an excerpt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PushPreview>,
}

/// The optional preview of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushPreview {
    /// The sender's display name.
    pub sender: String,
    /// The start of the message text.
    pub text: String,
}
