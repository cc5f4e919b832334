//! What an MLS application message carries: a small, versioned JSON object.
//!
//! ```json
//! {"v":1,"kind":"text","text":"hi","reply_to":"0193…"}
//! {"v":1,"kind":"file","media_id":"…","key":{"key":"…","nonce_prefix":"…","sha256":"…","size":12},"name":"a.jpg","mime":"image/jpeg"}
//! {"v":1,"kind":"edit","target":"…","text":"fixed"}
//! {"v":1,"kind":"delete","target":"…"}
//! ```
//!
//! JSON because the SDK already speaks it, it is debuggable, and the MLS
//! padding hides most of its overhead; binary fields are base64. Unknown
//! fields are ignored (a newer client may add some); a newer `v` is refused
//! with [`PayloadError::UnsupportedVersion`] so the UI can say "update".

use natter_proto::{MediaId, MessageId};
use serde::{Deserialize, Serialize};

use super::media::MediaKey;
use crate::Redacted;

/// The payload format this build writes and reads.
pub const PAYLOAD_VERSION: u32 = 1;

/// One application message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Format version ([`PAYLOAD_VERSION`]).
    pub v: u32,
    /// What it is.
    #[serde(flatten)]
    pub body: Body,
    /// The message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
}

/// The kinds of application message. Its `Debug` shows no text and no file
/// name (only their sizes), so a log line of an event leaks no content.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// A text message.
    Text {
        /// Its text.
        text: String,
    },
    /// A shared file, uploaded encrypted.
    File {
        /// The uploaded ciphertext.
        media_id: MediaId,
        /// Its key, nonce prefix, hash and plaintext size.
        key: MediaKey,
        /// The file's name.
        name: String,
        /// Its type (`image/jpeg`).
        mime: String,
    },
    /// A new text for an earlier message of the same sender.
    Edit {
        /// The message edited.
        target: MessageId,
        /// Its new text.
        text: String,
    },
    /// Deletes an earlier message of the same sender.
    Delete {
        /// The message deleted.
        target: MessageId,
    },
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text { text } => f
                .debug_struct("Text")
                .field("text", &Redacted(text.len()))
                .finish(),
            Self::File {
                media_id,
                key,
                name,
                mime,
            } => f
                .debug_struct("File")
                .field("media_id", media_id)
                .field("key", key)
                .field("name", &Redacted(name.len()))
                .field("mime", mime)
                .finish(),
            Self::Edit { target, text } => f
                .debug_struct("Edit")
                .field("target", target)
                .field("text", &Redacted(text.len()))
                .finish(),
            Self::Delete { target } => f.debug_struct("Delete").field("target", target).finish(),
        }
    }
}

/// Why bytes are not a payload.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// A payload of a newer format.
    #[error("the message uses payload version {0}; this app reads version {PAYLOAD_VERSION}")]
    UnsupportedVersion(u32),
    /// Not a payload at all.
    #[error("the message is not a valid payload: {0}")]
    Malformed(String),
}

impl Payload {
    /// A payload of this build's version.
    #[must_use]
    pub fn new(body: Body) -> Self {
        Self {
            v: PAYLOAD_VERSION,
            body,
            reply_to: None,
        }
    }

    /// The same, answering `message`.
    #[must_use]
    pub fn replying_to(mut self, message: MessageId) -> Self {
        self.reply_to = Some(message);
        self
    }

    /// The bytes to hand to [`super::Engine::encrypt`].
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these types cannot fail: no maps with non-string keys.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads decrypted bytes.
    ///
    /// # Errors
    /// [`PayloadError::UnsupportedVersion`], [`PayloadError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let Version { v } =
            serde_json::from_slice(bytes).map_err(|e| PayloadError::Malformed(e.to_string()))?;
        if v != PAYLOAD_VERSION {
            return Err(PayloadError::UnsupportedVersion(v));
        }
        serde_json::from_slice(bytes).map_err(|e| PayloadError::Malformed(e.to_string()))
    }
}

/// Serde for fixed-size byte arrays as standard base64.
pub(crate) mod b64_array {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = STANDARD.decode(text).map_err(D::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| D::Error::custom(format!("expected {N} bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_text_and_no_file_name() {
        let key = MediaKey {
            key: [1; 32],
            nonce_prefix: [2; 19],
            sha256: [3; 32],
            size: 12,
        };
        for body in [
            Body::Text {
                text: "secretword".into(),
            },
            Body::File {
                media_id: MediaId::new(),
                key,
                name: "secretword.jpg".into(),
                mime: "image/jpeg".into(),
            },
            Body::Edit {
                target: MessageId::new(),
                text: "secretword".into(),
            },
        ] {
            let shown = format!("{:?}", Payload::new(body));
            assert!(!shown.contains("secretword"), "{shown}");
            assert!(shown.contains(" bytes>"), "{shown}");
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let key = MediaKey {
            key: [1; 32],
            nonce_prefix: [2; 19],
            sha256: [3; 32],
            size: 12,
        };
        for body in [
            Body::Text { text: "hi".into() },
            Body::File {
                media_id: MediaId::new(),
                key,
                name: "a.jpg".into(),
                mime: "image/jpeg".into(),
            },
            Body::Edit {
                target: MessageId::new(),
                text: "fixed".into(),
            },
            Body::Delete {
                target: MessageId::new(),
            },
        ] {
            let p = Payload::new(body).replying_to(MessageId::new());
            assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
        }
    }

    #[test]
    fn newer_versions_and_garbage_are_refused() {
        assert!(matches!(
            Payload::decode(br#"{"v":2,"kind":"text","text":"x"}"#),
            Err(PayloadError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Payload::decode(br#"{"v":1,"kind":"poll"}"#),
            Err(PayloadError::Malformed(_))
        ));
        assert!(matches!(
            Payload::decode(b"\xff"),
            Err(PayloadError::Malformed(_))
        ));
        // Unknown fields from a newer client are ignored.
        let p = Payload::decode(br#"{"v":1,"kind":"text","text":"x","future":1}"#).unwrap();
        assert_eq!(p.body, Body::Text { text: "x".into() });
    }
}
