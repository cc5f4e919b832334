//! Profiles and the privacy rules that decide what others see of them.

use natter_proto::UserId;
use natter_proto::users::{LastSeenVisibility, PresenceStatus, UpdateMe};

use super::{Principal, ServiceError, ServiceResult, Services, clean_text};
use crate::clock::Timestamp;
use crate::store::{ProfilePatch, Relation, User};

/// A user as a particular viewer may see them.
#[derive(Debug, Clone)]
pub struct ProfileView {
    /// The user.
    pub user: User,
    /// Whether the viewer may see the phone number.
    pub show_phone: bool,
    /// Whether the viewer may see `last_seen`.
    pub show_last_seen: bool,
    /// Live presence, as the viewer may see it (offline when hidden).
    pub status: PresenceStatus,
}

impl ProfileView {
    /// Applies the privacy rules (documented in `docs/security.md`):
    /// - the number: to the user themself, to users they have in their
    ///   contacts, and to users who added them by that number (who know it);
    /// - last seen: as the user's `last_seen_visibility` says, where
    ///   `contacts` means users they have in their contacts.
    #[must_use]
    pub fn new(user: User, viewer: UserId, relation: Relation) -> Self {
        let own = user.id == viewer;
        let show_phone = own || relation.target_has_viewer || relation.viewer_knows_phone;
        let show_last_seen = own
            || match user.last_seen_visibility {
                LastSeenVisibility::Everyone => true,
                LastSeenVisibility::Contacts => relation.target_has_viewer,
                LastSeenVisibility::Nobody => false,
            };
        Self {
            user,
            show_phone,
            show_last_seen,
            status: PresenceStatus::Offline,
        }
    }
}

impl Services {
    /// The caller's own account.
    ///
    /// # Errors
    /// Store failure; [`ServiceError::Unauthorized`] if the account is gone.
    pub async fn me(&self, who: &Principal) -> ServiceResult<User> {
        self.inner
            .store
            .user(who.user)
            .await?
            .ok_or(ServiceError::Unauthorized)
    }

    /// Changes the caller's profile.
    ///
    /// # Errors
    /// A field out of bounds (422).
    pub async fn update_me(&self, who: &Principal, change: UpdateMe) -> ServiceResult<User> {
        let limits = &self.inner.config.limits;
        let patch = ProfilePatch {
            name: change
                .name
                .map(|n| clean_text("name", &n, limits.max_name_chars, false))
                .transpose()?,
            about: change
                .about
                .map(|a| clean_text("about", &a, limits.max_about_chars, true))
                .transpose()?,
            last_seen_visibility: change.last_seen_visibility,
            group_add_permission: change.group_add_permission,
            profile_pic: match change.profile_pic_media_id.as_deref().map(str::trim) {
                None => None,
                Some("") => Some(None),
                Some(raw) => Some(Some(self.profile_picture(who, raw).await?)),
            },
        };
        self.inner
            .store
            .update_profile(who.user, patch, Timestamp::now())
            .await?
            .ok_or(ServiceError::Unauthorized)
    }

    /// Another user's profile as the caller may see it.
    ///
    /// # Errors
    /// [`ServiceError::UserNotFound`].
    pub async fn profile(&self, who: &Principal, id: UserId) -> ServiceResult<ProfileView> {
        let user = self
            .inner
            .store
            .user(id)
            .await?
            .ok_or(ServiceError::UserNotFound)?;
        let relation = self.inner.store.relation(who.user, id).await?;
        let mut view = ProfileView::new(user, who.user, relation);
        view.status = self.presence_for(view.user.id, view.show_last_seen).await;
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::{Phone, PhoneValidation};

    fn user(visibility: LastSeenVisibility) -> User {
        User {
            id: UserId::new(),
            phone: Phone::parse("+14155550123", PhoneValidation::Parse).unwrap(),
            name: "Jane".into(),
            about: String::new(),
            last_seen_visibility: visibility,
            group_add_permission: natter_proto::users::GroupAddPermission::Everyone,
            last_seen_at: Some(Timestamp(1)),
            profile_pic: None,
            created_at: Timestamp(1),
        }
    }

    #[test]
    fn strangers_see_neither_number_nor_hidden_last_seen() {
        let stranger = UserId::new();
        let v = ProfileView::new(
            user(LastSeenVisibility::Contacts),
            stranger,
            Relation::default(),
        );
        assert!(!v.show_phone && !v.show_last_seen);
        let v = ProfileView::new(
            user(LastSeenVisibility::Everyone),
            stranger,
            Relation::default(),
        );
        assert!(!v.show_phone && v.show_last_seen);
    }

    #[test]
    fn contacts_of_the_user_see_number_and_contacts_only_last_seen() {
        let friend = UserId::new();
        let rel = Relation {
            target_has_viewer: true,
            ..Relation::default()
        };
        let v = ProfileView::new(user(LastSeenVisibility::Contacts), friend, rel);
        assert!(v.show_phone && v.show_last_seen);
        let v = ProfileView::new(user(LastSeenVisibility::Nobody), friend, rel);
        assert!(v.show_phone && !v.show_last_seen);
    }

    #[test]
    fn adding_by_number_shows_the_number_but_not_private_last_seen() {
        let rel = Relation {
            viewer_has_target: true,
            viewer_knows_phone: true,
            ..Relation::default()
        };
        let v = ProfileView::new(user(LastSeenVisibility::Contacts), UserId::new(), rel);
        assert!(v.show_phone && !v.show_last_seen);
    }

    #[test]
    fn users_see_themselves_fully() {
        let u = user(LastSeenVisibility::Nobody);
        let id = u.id;
        let v = ProfileView::new(u, id, Relation::default());
        assert!(v.show_phone && v.show_last_seen);
    }
}
