//! Invitations to groups: what an add becomes when the added user's
//! privacy setting (`group_add_permission`) refuses it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::ids::{ChatId, InvitationId, UserId};

/// An invitation to a group, as its invited user sees it. Until it is
/// accepted the user is not a participant: they see the group's name and
/// who invited them, nothing of its chat log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invitation {
    /// Its id.
    pub id: InvitationId,
    /// The group.
    pub chat_id: ChatId,
    /// The group's name now.
    pub chat_name: Option<String>,
    /// Who tried to add the user.
    pub inviter_id: UserId,
    /// The inviter's display name now.
    pub inviter_name: String,
    /// When it was made.
    #[serde(with = "crate::timefmt")]
    pub created_at: OffsetDateTime,
    /// When it goes away unless accepted.
    #[serde(with = "crate::timefmt")]
    pub expires_at: OffsetDateTime,
}

/// `GET /api/v1/invitations`: the caller's pending invitations, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvitationList {
    /// The invitations.
    pub invitations: Vec<Invitation>,
}
