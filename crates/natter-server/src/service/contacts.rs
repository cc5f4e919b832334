//! Contact lists and contact discovery.

use natter_proto::UserId;
use natter_proto::users::AddContact;

use super::{Principal, ProfileView, ServiceError, ServiceResult, Services};
use crate::clock::Timestamp;
use crate::phone::Phone;
use crate::ratelimit::Limit;
use crate::store::ContactAdded;

/// A contact as the list owner may see them.
pub type ContactView = ProfileView;

/// A registered number found by discovery.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The entry as sent.
    pub query: String,
    /// The number, normalised.
    pub phone: Phone,
    /// Its account.
    pub user_id: UserId,
}

/// What discovery found.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Entries whose numbers have accounts, in the order sent.
    pub registered: Vec<Discovered>,
    /// Entries that are not valid numbers, as sent.
    pub invalid: Vec<String>,
}

impl Services {
    /// Adds a user to the caller's contacts, by number or by id. Returns the
    /// contact and whether it is a new entry.
    ///
    /// # Errors
    /// Neither or both of `phone`/`user_id` (422), invalid number (400),
    /// unknown user (404), full list (409), rate limit (429).
    pub async fn add_contact(
        &self,
        who: &Principal,
        req: AddContact,
    ) -> ServiceResult<(ContactView, bool)> {
        // Each add is a lookup too (a number either has an account or not),
        // so it is rate limited like discovery.
        self.limit(Limit::ContactAddPerUser, &who.user.to_string())
            .await?;
        let (user, by_phone) = match (req.phone, req.user_id) {
            (Some(phone), None) => {
                let phone = self.parse_phone(&phone)?;
                let user = self.inner.store.user_by_phone(&phone).await?;
                (user, true)
            }
            (None, Some(id)) => (self.inner.store.user(id).await?, false),
            _ => {
                return Err(ServiceError::Validation(
                    "Send exactly one of `phone` and `user_id`.".to_owned(),
                ));
            }
        };
        let user = user.ok_or(ServiceError::UserNotFound)?;
        if user.id == who.user {
            return Err(ServiceError::Validation(
                "You cannot add yourself as a contact.".to_owned(),
            ));
        }
        let max = self.inner.config.limits.max_contacts_per_user;
        let added = self
            .inner
            .store
            .add_contact(who.user, user.id, by_phone, max, Timestamp::now())
            .await?;
        let created = match added {
            ContactAdded::Added => true,
            ContactAdded::AlreadyThere => false,
            ContactAdded::LimitReached => return Err(ServiceError::ContactLimit(max)),
        };
        let relation = self.inner.store.relation(who.user, user.id).await?;
        Ok((ProfileView::new(user, who.user, relation), created))
    }

    /// Removes a contact.
    ///
    /// # Errors
    /// [`ServiceError::ContactNotFound`] if it is not in the list.
    pub async fn remove_contact(&self, who: &Principal, contact: UserId) -> ServiceResult<()> {
        if self.inner.store.remove_contact(who.user, contact).await? {
            Ok(())
        } else {
            Err(ServiceError::ContactNotFound)
        }
    }

    /// The caller's contacts, by name, as the caller may see them.
    ///
    /// # Errors
    /// Store failure.
    pub async fn contacts(&self, who: &Principal) -> ServiceResult<Vec<ContactView>> {
        let entries = self.inner.store.contacts(who.user).await?;
        // Presence may be a question to the cluster: ask for all at once.
        let views = entries.into_iter().map(|e| async move {
            let mut view = ProfileView::new(e.user, who.user, e.relation);
            view.status = self.presence_for(view.user.id, view.show_last_seen).await;
            view
        });
        Ok(futures_util::future::join_all(views).await)
    }

    /// Tells which numbers have accounts. The numbers are not stored or logged.
    ///
    /// # Errors
    /// Too many numbers (422), rate limit (429).
    pub async fn discover(&self, who: &Principal, phones: Vec<String>) -> ServiceResult<Discovery> {
        let max = self.inner.config.limits.max_discover_phones;
        if phones.len() > max {
            return Err(ServiceError::Validation(format!(
                "`phones` has {} entries; the most allowed is {max}.",
                phones.len()
            )));
        }
        self.limit(Limit::DiscoverPerUser, &who.user.to_string())
            .await?;
        let mut discovery = Discovery::default();
        let mut queries = Vec::with_capacity(phones.len());
        for input in phones {
            match self.parse_phone(&input) {
                Ok(phone) => queries.push((input, phone)),
                Err(_) => discovery.invalid.push(input),
            }
        }
        let mut numbers: Vec<Phone> = queries.iter().map(|(_, p)| p.clone()).collect();
        numbers.sort();
        numbers.dedup();
        let accounts: std::collections::HashMap<Phone, UserId> = self
            .inner
            .store
            .users_by_phones(&numbers)
            .await?
            .into_iter()
            .collect();
        discovery.registered = queries
            .into_iter()
            .filter_map(|(query, phone)| {
                let user_id = *accounts.get(&phone)?;
                (user_id != who.user).then_some(Discovered {
                    query,
                    phone,
                    user_id,
                })
            })
            .collect();
        Ok(discovery)
    }
}
