//! Adds to groups and the invitations they become: who may add whom is the
//! added user's `group_add_permission` (everyone, contacts, nobody); an add
//! it refuses becomes an invitation the user may accept or ignore. Group
//! creations and adds also cost from the adder's rate-limit budgets
//! (`rate_limits.chats_created_*`, `rate_limits.participants_added_*`).

use natter_proto::{ChatId, InvitationId, UserId};

use super::chats::{Adds, ChatView};
use super::render;
use super::{Principal, ServiceError, ServiceResult, Services};
use crate::clock::Timestamp;
use crate::ratelimit::Limit;
use crate::store::{
    AddOutcome, ChatChanged, GroupAdded, GroupCreated, InvitationAccepted, InvitationRecord,
    InvitationRules, NewChat,
};

impl Services {
    fn invitation_rules(&self) -> InvitationRules {
        let limits = &self.inner.config.limits;
        InvitationRules {
            ttl_ms: i64::try_from(limits.invitation_ttl_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            max_per_user: limits.max_pending_invitations_per_user,
            max_per_chat: limits.max_pending_invitations_per_chat,
        }
    }

    fn invitation_limit(&self) -> ServiceError {
        let limits = &self.inner.config.limits;
        ServiceError::InvitationLimit(
            limits.max_pending_invitations_per_user,
            limits.max_pending_invitations_per_chat,
        )
    }

    /// Takes `people` from the caller's budgets of people added to groups.
    async fn limit_adds(&self, who: &Principal, people: usize) -> ServiceResult<()> {
        let key = who.user.to_string();
        let n = u32::try_from(people).unwrap_or(u32::MAX);
        for limit in [
            Limit::ParticipantsAddedPerMinute,
            Limit::ParticipantsAddedPerDay,
        ] {
            self.inner
                .limiter
                .check_n(limit, &key, n)
                .await
                .map_err(ServiceError::RateLimited)?;
        }
        Ok(())
    }

    /// Tells each invited user's devices of their new invitation.
    async fn announce(&self, fresh: &[InvitationRecord]) {
        for invitation in fresh {
            let frame = render::text(&render::invitation_frame(invitation));
            self.inner
                .bus
                .send_state(&[invitation.user_id], frame)
                .await;
        }
    }

    async fn view_with(
        &self,
        who: &Principal,
        chat: ChatId,
        outcome: AddOutcome,
    ) -> ServiceResult<ChatView> {
        self.announce(&outcome.fresh).await;
        let access = self.access(who, chat).await?;
        let mut view = self.view(access).await?;
        view.adds = Some(Adds {
            added: outcome.added,
            invited: outcome.invited,
        });
        Ok(view)
    }

    /// Creates a group (checked by `create_chat`): its initial participants
    /// are added where their setting allows the creator to, invited otherwise.
    pub(super) async fn create_group(
        &self,
        who: &Principal,
        new: NewChat,
    ) -> ServiceResult<ChatView> {
        let key = who.user.to_string();
        self.limit(Limit::ChatsCreatedPerMinute, &key).await?;
        self.limit(Limit::ChatsCreatedPerDay, &key).await?;
        self.limit_adds(who, new.others.len()).await?;
        match self
            .inner
            .store
            .create_group(new, self.invitation_rules())
            .await?
        {
            GroupCreated::Created(chat, appended, outcome) => {
                self.publish(&appended, None).await;
                self.view_with(who, chat.id, outcome).await
            }
            GroupCreated::UnknownUser(_) => Err(ServiceError::UserNotFound),
            GroupCreated::InvitationLimit => Err(self.invitation_limit()),
        }
    }

    /// Adds users to a group (checked by `add_participants`).
    pub(super) async fn add_to_group(
        &self,
        who: &Principal,
        chat: ChatId,
        users: Vec<UserId>,
    ) -> ServiceResult<ChatView> {
        let access = self.access(who, chat).await?;
        if access.role.is_none() {
            return Err(ServiceError::ChatNotFound);
        }
        self.limit_adds(who, users.len()).await?;
        let max = self.inner.config.limits.max_group_members;
        let added = self
            .inner
            .store
            .add_to_group(
                chat,
                who.user,
                users,
                max,
                self.invitation_rules(),
                Timestamp::now(),
            )
            .await?;
        match added {
            GroupAdded::Done(appended, outcome) => {
                for a in &appended {
                    self.publish(a, None).await;
                }
                self.view_with(who, chat, outcome).await
            }
            GroupAdded::Refused(refusal) => Err(refused(refusal, max)),
            GroupAdded::InvitationLimit => Err(self.invitation_limit()),
        }
    }

    /// The caller's pending invitations, newest first.
    ///
    /// # Errors
    /// Store failure.
    pub async fn invitations(&self, who: &Principal) -> ServiceResult<Vec<InvitationRecord>> {
        Ok(self
            .inner
            .store
            .invitations(who.user, Timestamp::now())
            .await?)
    }

    /// Accepts one of the caller's invitations: they join the group as if
    /// its inviter added them now (the usual `member_added` entry).
    ///
    /// # Errors
    /// Unknown or expired (404 `invitation_not_found`), the group gone (404
    /// `chat_not_found`), the inviter no longer allowed to add (409
    /// `invitation_no_longer_valid`), the group full (409 `group_full`).
    pub async fn accept_invitation(
        &self,
        who: &Principal,
        id: InvitationId,
    ) -> ServiceResult<ChatView> {
        let max = self.inner.config.limits.max_group_members;
        match self
            .inner
            .store
            .accept_invitation(id, who.user, max, Timestamp::now())
            .await?
        {
            InvitationAccepted::Joined(chat, appended) => {
                for a in &appended {
                    self.publish(a, None).await;
                }
                let access = self.access(who, chat).await?;
                self.view(access).await
            }
            InvitationAccepted::NotFound => Err(ServiceError::InvitationNotFound),
            InvitationAccepted::ChatGone => Err(ServiceError::ChatNotFound),
            InvitationAccepted::NoLongerValid => Err(ServiceError::InvitationNoLongerValid),
            InvitationAccepted::GroupFull => Err(ServiceError::GroupFull(max)),
        }
    }

    /// Declines one of the caller's invitations: it goes away; its inviter
    /// is not told.
    ///
    /// # Errors
    /// [`ServiceError::InvitationNotFound`].
    pub async fn decline_invitation(&self, who: &Principal, id: InvitationId) -> ServiceResult<()> {
        if self
            .inner
            .store
            .decline_invitation(id, who.user, Timestamp::now())
            .await?
        {
            Ok(())
        } else {
            Err(ServiceError::InvitationNotFound)
        }
    }
}

/// The error for an add the chat's rules refuse.
fn refused(refusal: ChatChanged, max: usize) -> ServiceError {
    match refusal {
        ChatChanged::NotMember => ServiceError::ChatNotFound,
        ChatChanged::Forbidden => {
            ServiceError::Forbidden("Only the group's admins may do this.".to_owned())
        }
        ChatChanged::UnknownUser(_) => ServiceError::UserNotFound,
        ChatChanged::GroupFull => ServiceError::GroupFull(max),
        ChatChanged::LastAdmin => ServiceError::LastAdmin,
        ChatChanged::NotAGroup => {
            ServiceError::Validation("Direct chats have fixed participants and no name.".to_owned())
        }
        ChatChanged::Done(_) => ServiceError::Internal("an add was done and refused".to_owned()),
    }
}
