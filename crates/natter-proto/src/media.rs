//! Media: what an upload declares itself to be, and what the server answers
//! once the bytes are stored.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::{ChatId, MediaId};

/// What an upload declares itself to be. The server checks the declaration
/// against the bytes, except for `encrypted`, which it never looks into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// A picture (JPEG, PNG, WebP, GIF, HEIF, AVIF, …); thumbnailed when the
    /// server can decode it.
    Image,
    /// A video container (MP4, WebM, Matroska, QuickTime, …).
    Video,
    /// Any other file (documents, archives, audio, …).
    File,
    /// Bytes the client encrypted (end-to-end encrypted chats): opaque, never
    /// sniffed, never thumbnailed.
    Encrypted,
}

impl MediaKind {
    /// The name used on the wire and in the tus `type` metadata.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::File => "file",
            Self::Encrypted => "encrypted",
        }
    }

    /// Parses the wire name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "image" => Some(Self::Image),
            "video" => Some(Self::Video),
            "file" => Some(Self::File),
            "encrypted" => Some(Self::Encrypted),
            _ => None,
        }
    }
}

/// A stored upload (`POST /api/v1/media/upload` answers 201 with this).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Media {
    /// Its id: use it as `media_id` in a message.
    pub media_id: MediaId,
    /// What it was declared as (and checked to be).
    #[serde(rename = "type")]
    pub kind: MediaKind,
    /// Size in bytes.
    pub size: u64,
    /// The type the server found in the bytes (`application/octet-stream`
    /// for `encrypted` and for files it does not recognise).
    pub content_type: String,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
    /// Where to download it (same origin, needs the bearer token).
    pub url: String,
    /// Where to download its thumbnail, for images the server could decode.
    pub thumbnail_url: Option<String>,
    /// Pixel width, for decoded images.
    pub width: Option<u32>,
    /// Pixel height, for decoded images.
    pub height: Option<u32>,
    /// The file name the client gave, if any (informational only; the server
    /// never stores a blob under a client-chosen name).
    pub filename: Option<String>,
    /// The chat named at upload, if any.
    pub chat_id: Option<ChatId>,
    /// When the upload completed.
    #[serde(with = "crate::timefmt")]
    pub created_at: OffsetDateTime,
}

/// The download path of a media id.
#[must_use]
pub fn media_url(id: MediaId) -> String {
    format!("/api/v1/media/{id}")
}

/// The thumbnail path of a media id.
#[must_use]
pub fn thumbnail_url(id: MediaId) -> String {
    format!("/api/v1/media/{id}/thumbnail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_wire_names() {
        for kind in [
            MediaKind::Image,
            MediaKind::Video,
            MediaKind::File,
            MediaKind::Encrypted,
        ] {
            assert_eq!(MediaKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(MediaKind::parse("audio"), None);
    }
}
