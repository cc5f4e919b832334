//! Profiles and contacts.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::chats::{ChatKind, Message, Role};
use crate::ids::{ChatId, UserId};

/// Who may see when a user was last online.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LastSeenVisibility {
    /// Anyone who can see the profile.
    Everyone,
    /// Only users this user has in their contacts.
    Contacts,
    /// No one.
    Nobody,
}

/// Who may add a user to groups (creating a group with them, or adding
/// them to one). An add the setting refuses becomes an invitation the user
/// may accept or ignore. Direct chats are not group adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupAddPermission {
    /// Anyone (the default).
    #[default]
    Everyone,
    /// Only users this user has in their contacts; others invite.
    Contacts,
    /// No one: every add is an invitation.
    Nobody,
}

/// Whether a user is connected right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// At least one device is connected.
    Online,
    /// Connected but idle.
    Away,
    /// No device connected (or the user hides it).
    Offline,
}

/// The caller's own profile (`GET /api/v1/users/me`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// The account id.
    pub user_id: UserId,
    /// The account's number, E.164.
    pub phone: String,
    /// Display name.
    pub name: String,
    /// A short free text.
    pub about: String,
    /// Who may see `last_seen`.
    pub last_seen_visibility: LastSeenVisibility,
    /// Who may add the user to groups (others invite).
    pub group_add_permission: GroupAddPermission,
    /// Where to download the profile picture (any signed-in user may).
    pub profile_pic_url: Option<String>,
    /// When the account was created.
    #[serde(with = "crate::timefmt")]
    pub created_at: OffsetDateTime,
}

/// `PATCH /api/v1/users/me`: every field optional; absent fields stay as
/// they are. `null` is refused rather than read as "absent" (and `None`
/// is left out when serialized).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMe {
    /// New display name.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    /// New about text; `""` clears it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub about: Option<String>,
    /// New last-seen visibility.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_seen_visibility: Option<LastSeenVisibility>,
    /// Who may add the caller to groups.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub group_add_permission: Option<GroupAddPermission>,
    /// A finished `image` upload of the caller's to show as their profile
    /// picture; `""` removes the picture.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub profile_pic_media_id: Option<String>,
}

/// Reads a field that may be absent (then `default` gives `None`) but not `null`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(d)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(
            "null is not a value here; leave the field out to keep it as it is",
        )),
    }
}

/// `DELETE /api/v1/users/me`: deletes the caller's account, for good.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAccount {
    /// The account's phone number, typed again to confirm.
    pub phone: String,
}

/// `GET /api/v1/users/me/export`: what the server holds about the caller,
/// in the API's own shapes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountExport {
    /// When the export was made.
    #[serde(with = "crate::timefmt")]
    pub exported_at: OffsetDateTime,
    /// The profile, as `GET /api/v1/users/me`.
    pub profile: Me,
    /// The logged-in devices, as `GET /api/v1/devices`.
    pub devices: Vec<crate::accounts::Device>,
    /// The contact list, as `GET /api/v1/users/contacts`.
    pub contacts: Vec<Contact>,
    /// Every chat the caller is or was in, with the messages they sent there
    /// and can still see (not deleted), oldest first.
    pub chats: Vec<ExportedChat>,
    /// The caller's finished uploads, as the upload answer; `url` downloads
    /// each (the uploader may always fetch their own).
    pub media: Vec<crate::media::Media>,
    /// True when the caller has sent more messages than one export holds
    /// (the oldest are included).
    pub truncated: bool,
}

/// A chat in an [`AccountExport`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExportedChat {
    /// Its id.
    pub id: ChatId,
    /// `direct` or `group`.
    #[serde(rename = "type")]
    pub kind: ChatKind,
    /// Group name; `null` for direct chats.
    pub name: Option<String>,
    /// Whether content is end-to-end encrypted (messages then carry only ciphertext).
    pub encrypted: bool,
    /// The caller's role; `null` if they left.
    pub my_role: Option<Role>,
    /// The caller's messages, as in history, oldest first.
    pub messages: Vec<Message>,
}

/// Another user's profile as the caller may see it (`GET /api/v1/users/{user_id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublicProfile {
    /// The account id.
    pub user_id: UserId,
    /// Display name.
    pub name: String,
    /// A short free text.
    pub about: String,
    /// The number, only when the caller is entitled to it (see `docs/security.md`).
    pub phone: Option<String>,
    /// Where to download the profile picture (any signed-in user may).
    pub profile_pic_url: Option<String>,
    /// Online status.
    pub status: PresenceStatus,
    /// Last time online, when the user's privacy setting lets the caller see it.
    #[serde(with = "crate::timefmt::option")]
    pub last_seen: Option<OffsetDateTime>,
}

/// `POST /api/v1/users/contacts`: exactly one of `phone` or `user_id`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddContact {
    /// The contact's phone number.
    #[serde(default)]
    pub phone: Option<String>,
    /// The contact's user id.
    #[serde(default)]
    pub user_id: Option<UserId>,
}

/// One entry of the contact list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Contact {
    /// The contact's account id.
    pub user_id: UserId,
    /// Display name.
    pub name: String,
    /// The number, when the caller is entitled to it.
    pub phone: Option<String>,
    /// Where to download the contact's profile picture.
    pub profile_pic_url: Option<String>,
    /// Online status.
    pub status: PresenceStatus,
    /// Last time online, when the contact's privacy setting allows.
    #[serde(with = "crate::timefmt::option")]
    pub last_seen: Option<OffsetDateTime>,
}

/// `GET /api/v1/users/contacts`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ContactList {
    /// Ordered by name.
    pub contacts: Vec<Contact>,
}

/// `POST /api/v1/users/contacts/discover`: which of these numbers use Natter?
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoverContacts {
    /// Numbers in international format. Never stored.
    pub phones: Vec<String>,
}

/// A registered number found by discovery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiscoveredUser {
    /// The entry as sent, to match the answer to the address book.
    pub query: String,
    /// The number as normalised (E.164).
    pub phone: String,
    /// Its account.
    pub user_id: UserId,
}

/// Answer to discovery. Valid numbers without an account appear in neither list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiscoveredContacts {
    /// The entries whose numbers belong to a Natter account, one per entry sent.
    pub registered: Vec<DiscoveredUser>,
    /// Entries that are not valid international numbers, as sent.
    pub invalid: Vec<String>,
}
