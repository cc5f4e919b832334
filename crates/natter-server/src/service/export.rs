//! The export of a user's own data (`GET /api/v1/users/me/export`).

use std::collections::BTreeMap;

use natter_proto::ChatId;

use super::chats::status_of;
use super::{ContactView, MessageView, Principal, ServiceResult, Services};
use crate::store::{ChatAccess, Device, MediaRecord, User};

/// Messages one export holds at most: an export is built in memory, and
/// this bounds it (about 100 MB of JSON at the longest messages).
const EXPORT_MAX_MESSAGES: i64 = 20_000;

/// What the server holds about a user, gathered for them.
#[derive(Debug, Clone)]
pub struct AccountData {
    /// The account.
    pub user: User,
    /// Its devices, oldest first.
    pub devices: Vec<Device>,
    /// Its contact list.
    pub contacts: Vec<ContactView>,
    /// Every chat the user is or was in, with the messages they sent there
    /// and can see, oldest first.
    pub chats: Vec<(ChatAccess, Vec<MessageView>)>,
    /// Their finished uploads.
    pub media: Vec<MediaRecord>,
    /// More messages exist than one export holds.
    pub truncated: bool,
}

impl Services {
    /// Gathers the caller's data for export.
    ///
    /// # Errors
    /// Store failure; `Unauthorized` if the account is gone.
    pub async fn export(&self, who: &Principal) -> ServiceResult<AccountData> {
        let store = &self.inner.store;
        let user = self.me(who).await?;
        let devices = store.devices(who.user).await?;
        let contacts = self.contacts(who).await?;
        let mut messages = store
            .messages_sent_by(who.user, EXPORT_MAX_MESSAGES + 1)
            .await?;
        let truncated = messages.len() > usize::try_from(EXPORT_MAX_MESSAGES).unwrap_or(0);
        messages.truncate(usize::try_from(EXPORT_MAX_MESSAGES).unwrap_or(0));
        let mut by_chat: BTreeMap<ChatId, Vec<crate::store::LogEntry>> = BTreeMap::new();
        for overview in store.chats_of(who.user).await? {
            by_chat.entry(overview.chat.id).or_default();
        }
        for entry in messages {
            by_chat.entry(entry.chat_id).or_default().push(entry);
        }
        let mut chats = Vec::with_capacity(by_chat.len());
        for (chat, entries) in by_chat {
            let Some(access) = store.chat_access(chat, who.user).await? else {
                continue;
            };
            let receipts = store.receipt_state(chat).await?;
            let views = entries
                .into_iter()
                .map(|entry| MessageView {
                    status: status_of(&entry, &receipts),
                    entry,
                })
                .collect();
            chats.push((access, views));
        }
        let media = store.media_of(who.user).await?;
        Ok(AccountData {
            user,
            devices,
            contacts,
            chats,
            media,
            truncated,
        })
    }
}
