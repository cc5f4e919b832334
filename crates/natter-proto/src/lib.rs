//! Natter's wire types: the JSON bodies of the REST API, the error envelope and
//! its stable codes, and the id newtypes. Every other crate depends on this one.
//!
//! # Layout
//! - [`ids`]: `UserId`, `DeviceId`, … (UUIDv7 newtypes that cannot be swapped).
//! - [`error`]: the `{"error":{"code","message"}}` envelope and [`ErrorCode`].
//! - [`accounts`]: verification, register, login, devices.
//! - [`chats`]: chats, participants, messages and history.
//! - [`e2ee`]: identity and device keys, the KeyPackage directory, commits and device inboxes (MLS).
//! - [`invitations`]: invitations to groups (adds a user's privacy setting refused).
//! - [`media`]: uploads, their kinds and descriptions.
//! - [`push`]: push channels, the VAPID key and the push payload.
//! - [`search`]: message, chat and contact search results.
//! - [`users`]: profiles and contacts.
//! - [`ws`]: WebSocket frames and close codes.
//!
//! This crate does no I/O and knows nothing of HTTP beyond status numbers.

pub mod accounts;
pub mod chats;
pub mod e2ee;
pub mod error;
pub mod ids;
pub mod invitations;
pub mod media;
pub mod push;
pub mod search;
pub mod timefmt;
pub mod users;
pub mod ws;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use ids::{ChatId, DeviceId, InvitationId, MediaId, MessageId, UserId};
