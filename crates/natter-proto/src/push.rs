//! Push channels: registering a device's Web Push or UnifiedPush endpoint,
//! the server's VAPID key, and the payload a push carries (`docs/push.md`).

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
}

/// A registered push channel (201 for a new one, 200 for a replacement).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PushChannel {
    /// The device it belongs to.
    pub device_id: DeviceId,
    /// Its protocol.
    pub kind: PushKind,
    /// Its endpoint.
    pub endpoint: String,
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
    /// channels with keys: the latest message's sender and an excerpt.
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
