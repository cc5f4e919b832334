//! The product rules of chats, as plain functions every storage engine
//! calls inside its transaction, so each rule exists once: who may change a
//! chat, how big a group may grow, who takes over from the last admin, how
//! long a message can be edited, who hears of an entry, and who may add
//! whom to a group.

use natter_proto::chats::{ChatKind, Role};
use natter_proto::users::GroupAddPermission;
use natter_proto::{ChatId, UserId};

use super::{ChatChange, ChatChanged, Recipients};
use crate::clock::Timestamp;

/// A current member, as the rules see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberFacts {
    /// The user.
    pub user_id: UserId,
    /// Their role.
    pub role: Role,
    /// The seq of their join entry.
    pub from_seq: i64,
    /// When they joined.
    pub joined_at: Timestamp,
}

/// Whether `actor` (a current member with `actor_role`) may make `change`
/// to a chat of `kind`: groups only, admins only, except that anyone may
/// leave. `None` when allowed, else the refusal.
#[must_use]
pub fn refuse_change(
    kind: ChatKind,
    actor: UserId,
    actor_role: Role,
    change: &ChatChange,
) -> Option<ChatChanged> {
    if kind == ChatKind::Direct {
        return Some(ChatChanged::NotAGroup);
    }
    let leaving = matches!(change, ChatChange::Remove(user) if *user == actor);
    (actor_role != Role::Admin && !leaving).then_some(ChatChanged::Forbidden)
}

/// Whether a group of `current` members has room for `adding` more.
#[must_use]
pub const fn has_room(current: usize, adding: usize, max_members: usize) -> bool {
    current.saturating_add(adding) <= max_members
}

/// Whether a user with `permission` may be added to a group directly by
/// someone they do (`adder_is_contact`) or do not have in their contacts;
/// when not, the add becomes an invitation.
#[must_use]
pub const fn may_add_to_group(permission: GroupAddPermission, adder_is_contact: bool) -> bool {
    match permission {
        GroupAddPermission::Everyone => true,
        GroupAddPermission::Contacts => adder_is_contact,
        GroupAddPermission::Nobody => false,
    }
}

/// Whether demoting `user` would leave the group without an admin.
#[must_use]
pub fn is_last_admin(members: &[MemberFacts], user: UserId) -> bool {
    let mut admins = members.iter().filter(|m| m.role == Role::Admin);
    matches!((admins.next(), admins.next()), (Some(only), None) if only.user_id == user)
}

/// When `leaving` is the group's only admin, the member who takes over: the
/// longest-standing of the others (earliest join, then earliest time, then
/// lowest id), so a group is never without an admin.
#[must_use]
pub fn successor(members: &[MemberFacts], leaving: UserId) -> Option<UserId> {
    if !is_last_admin(members, leaving) {
        return None;
    }
    members
        .iter()
        .filter(|m| m.user_id != leaving)
        .min_by_key(|m| (m.from_seq, m.joined_at.0, m.user_id))
        .map(|m| m.user_id)
}

/// Whether a message sent at `sent_at` may still be edited at `now`.
#[must_use]
pub const fn may_edit(sent_at: Timestamp, now: Timestamp, window_ms: i64) -> bool {
    now.0.saturating_sub(sent_at.0) <= window_ms
}

/// Why a message's body does not suit its chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRefusal {
    /// A plaintext chat needs `content` (or an attachment).
    ContentRequired,
    /// An encrypted chat needs `ciphertext` (it also carries any media key).
    CiphertextRequired,
    /// Ciphertext sent to a plaintext chat.
    NotEncrypted,
    /// Text sent to an encrypted chat.
    Encrypted,
    /// Ciphertext that is not an MLS application message for this chat now.
    Mls(MlsRefusal),
}

/// Why bytes are not an MLS message a chat takes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlsRefusal {
    /// Not a well-formed MLS public or private message.
    Malformed,
    /// An application message must be a private message.
    NotPrivate,
    /// For another group than this chat's (its id's 16 bytes).
    WrongGroup,
    /// Not of the content type the route takes (application messages go to
    /// `/messages`, commits to `/commits`).
    WrongContentType,
    /// For an epoch outside the window the chat takes now.
    Epoch {
        /// The message's epoch.
        epoch: u64,
        /// The chat's epoch.
        current: u64,
    },
}

/// Whether `bytes` are an MLS application message the encrypted chat
/// `chat` at `epoch` takes: a private message of its group, content type
/// application, for `epoch` or one of the [`PAST_EPOCHS`] before it. `None`
/// when they are. Checked by the writer, which knows the epoch.
///
/// [`PAST_EPOCHS`]: natter_proto::e2ee::PAST_EPOCHS
#[must_use]
pub fn refuse_application(chat: ChatId, epoch: u64, bytes: &[u8]) -> Option<MlsRefusal> {
    use crate::mls_framing::{ContentType, WireFormat, parse_message};
    let Ok(framing) = parse_message(bytes) else {
        return Some(MlsRefusal::Malformed);
    };
    if framing.wire_format != WireFormat::PrivateMessage {
        return Some(MlsRefusal::NotPrivate);
    }
    if framing.group_id != chat.as_uuid().as_bytes() {
        return Some(MlsRefusal::WrongGroup);
    }
    if framing.content_type != ContentType::Application {
        return Some(MlsRefusal::WrongContentType);
    }
    let oldest = epoch.saturating_sub(natter_proto::e2ee::PAST_EPOCHS);
    if framing.epoch < oldest || framing.epoch > epoch {
        return Some(MlsRefusal::Epoch {
            epoch: framing.epoch,
            current: epoch,
        });
    }
    None
}

/// Whether a message's body suits its chat: plaintext chats take text
/// (optional when media is attached, as its caption), encrypted chats take
/// only ciphertext (always, since it carries the media key). `None` when it
/// does.
#[must_use]
pub const fn refuse_body(
    encrypted: bool,
    has_content: bool,
    has_ciphertext: bool,
    has_media: bool,
) -> Option<BodyRefusal> {
    match (encrypted, has_content, has_ciphertext) {
        (false, true, false) | (true, false, true) => None,
        (false, false, false) if has_media => None,
        (false, false, false) => Some(BodyRefusal::ContentRequired),
        (false, _, true) => Some(BodyRefusal::NotEncrypted),
        (true, false, false) => Some(BodyRefusal::CiphertextRequired),
        (true, true, _) => Some(BodyRefusal::Encrypted),
    }
}

/// Whether a body, new or edited, suits its chat as the writer sees it at
/// the append: [`refuse_body`], then, for an encrypted chat, that the
/// ciphertext is an application message of the chat's epochs now
/// ([`refuse_application`]). `None` when it does.
#[must_use]
pub fn refuse_message(
    chat: ChatId,
    encrypted: bool,
    epoch: u64,
    content: Option<&str>,
    ciphertext: Option<&[u8]>,
    has_media: bool,
) -> Option<BodyRefusal> {
    if let Some(refusal) = refuse_body(
        encrypted,
        content.is_some(),
        ciphertext.is_some(),
        has_media,
    ) {
        return Some(refusal);
    }
    match ciphertext {
        Some(bytes) if encrypted => refuse_application(chat, epoch, bytes).map(BodyRefusal::Mls),
        _ => None,
    }
}

/// Who hears of an entry: the members when it is appended, and a user it
/// removed (who sees their own removal and nothing after it).
#[must_use]
pub fn recipients(members: &Recipients, removed: Option<UserId>) -> Recipients {
    match removed {
        Some(user) if !members.contains(&user) => members.iter().copied().chain([user]).collect(),
        _ => std::sync::Arc::clone(members),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: UserId, role: Role, from_seq: i64) -> MemberFacts {
        MemberFacts {
            user_id: user,
            role,
            from_seq,
            joined_at: Timestamp(from_seq),
        }
    }

    #[test]
    fn only_admins_change_groups_but_anyone_may_leave() {
        let (a, b) = (UserId::new(), UserId::new());
        let rename = ChatChange::Rename("x".into());
        assert!(refuse_change(ChatKind::Group, a, Role::Admin, &rename).is_none());
        assert!(matches!(
            refuse_change(ChatKind::Group, a, Role::Member, &rename),
            Some(ChatChanged::Forbidden)
        ));
        assert!(refuse_change(ChatKind::Group, a, Role::Member, &ChatChange::Remove(a)).is_none());
        assert!(matches!(
            refuse_change(ChatKind::Group, a, Role::Member, &ChatChange::Remove(b)),
            Some(ChatChanged::Forbidden)
        ));
        assert!(matches!(
            refuse_change(ChatKind::Direct, a, Role::Admin, &rename),
            Some(ChatChanged::NotAGroup)
        ));
    }

    #[test]
    fn group_size_is_checked_at_n_and_n_plus_one() {
        assert!(has_room(3, 2, 5));
        assert!(!has_room(3, 3, 5));
        assert!(!has_room(usize::MAX, 1, 5));
    }

    #[test]
    fn the_group_add_setting_decides_between_an_add_and_an_invitation() {
        use GroupAddPermission::{Contacts, Everyone, Nobody};
        assert!(may_add_to_group(Everyone, false));
        assert!(may_add_to_group(Contacts, true));
        assert!(!may_add_to_group(Contacts, false));
        assert!(!may_add_to_group(Nobody, true));
    }

    #[test]
    fn the_longest_standing_member_succeeds_the_last_admin() {
        let (admin, early, late) = (UserId::new(), UserId::new(), UserId::new());
        let members = [
            member(admin, Role::Admin, 1),
            member(late, Role::Member, 7),
            member(early, Role::Member, 3),
        ];
        assert!(is_last_admin(&members, admin));
        assert_eq!(successor(&members, admin), Some(early));
        assert_eq!(successor(&members, early), None, "not an admin");
        let two_admins = [member(admin, Role::Admin, 1), member(early, Role::Admin, 3)];
        assert!(!is_last_admin(&two_admins, admin));
        assert_eq!(successor(&two_admins, admin), None);
        assert_eq!(successor(&[member(admin, Role::Admin, 1)], admin), None);
    }

    #[test]
    fn the_edit_window_includes_its_last_millisecond() {
        assert!(may_edit(Timestamp(1_000), Timestamp(2_000), 1_000));
        assert!(!may_edit(Timestamp(1_000), Timestamp(2_001), 1_000));
    }

    #[test]
    fn a_body_must_suit_its_chat() {
        assert_eq!(refuse_body(false, true, false, false), None);
        assert_eq!(
            refuse_body(false, false, false, true),
            None,
            "a caption is optional"
        );
        assert_eq!(refuse_body(true, false, true, true), None);
        assert_eq!(
            refuse_body(false, false, false, false),
            Some(BodyRefusal::ContentRequired)
        );
        assert_eq!(
            refuse_body(false, false, true, false),
            Some(BodyRefusal::NotEncrypted)
        );
        assert_eq!(
            refuse_body(true, false, false, true),
            Some(BodyRefusal::CiphertextRequired)
        );
        assert_eq!(
            refuse_body(true, true, false, false),
            Some(BodyRefusal::Encrypted)
        );
    }

    #[test]
    fn a_message_is_checked_for_its_chat_then_for_the_epoch() {
        let chat = ChatId::new();
        assert_eq!(
            refuse_message(chat, false, 0, Some("hi"), None, false),
            None
        );
        assert_eq!(
            refuse_message(chat, true, 3, Some("hi"), None, false),
            Some(BodyRefusal::Encrypted)
        );
        assert_eq!(
            refuse_message(chat, true, 3, None, Some(b"not mls"), false),
            Some(BodyRefusal::Mls(MlsRefusal::Malformed))
        );
        assert_eq!(
            refuse_message(chat, false, 0, None, None, true),
            None,
            "a caption is optional"
        );
    }

    #[test]
    fn a_removed_user_hears_of_their_removal_only() {
        let (a, b, gone) = (UserId::new(), UserId::new(), UserId::new());
        let members: Recipients = vec![a, b].into();
        assert_eq!(&*recipients(&members, None), &[a, b]);
        assert_eq!(&*recipients(&members, Some(gone)), &[a, b, gone]);
        assert_eq!(&*recipients(&members, Some(a)), &[a, b]);
    }
}
