//! Accounts for a run, created through the real API: the server posts each
//! verification code to an SMS webhook receiver run here (the server's
//! ordinary `sms_webhook_url`), so no benchmark-only path exists in the
//! server at all.

use futures_util::StreamExt as _;
use natter_client::Client;
use natter_proto::chats::{ChatKind, CreateChat};
use natter_proto::{ChatId, DeviceId, UserId};
pub(crate) use natter_testkit::SmsInbox;

use crate::BenchResult;
use crate::load::progress;

/// Sign-ups in flight at once.
const SIGNUP_CONCURRENCY: usize = 64;

/// The few typed SDK calls the scenarios make, by token.
pub(crate) trait BenchCalls {
    /// Opens (or finds) the direct chat with `other`.
    async fn direct_chat(&self, token: &str, other: UserId) -> BenchResult<ChatId>;
    /// Creates a group of the caller and `others`.
    async fn group_chat(&self, token: &str, name: &str, others: &[UserId]) -> BenchResult<ChatId>;
    /// Searches the caller's messages; the number of hits the server counted.
    async fn search_messages(&self, token: &str, query: &str) -> BenchResult<u64>;
}

impl BenchCalls for Client {
    async fn direct_chat(&self, token: &str, other: UserId) -> BenchResult<ChatId> {
        let body = CreateChat {
            kind: ChatKind::Direct,
            participants: vec![other],
            name: None,
            encrypted: false,
        };
        Ok(self.api().with_token(token).create_chat(&body).await?.id)
    }

    async fn group_chat(&self, token: &str, name: &str, others: &[UserId]) -> BenchResult<ChatId> {
        let body = CreateChat {
            kind: ChatKind::Group,
            participants: others.to_vec(),
            name: Some(name.to_owned()),
            encrypted: false,
        };
        Ok(self.api().with_token(token).create_chat(&body).await?.id)
    }

    async fn search_messages(&self, token: &str, query: &str) -> BenchResult<u64> {
        let search = natter_client::api::MessageSearch {
            q: query.to_owned(),
            ..Default::default()
        };
        let results = self
            .api()
            .with_token(token)
            .search_messages(&search)
            .await?;
        Ok(u64::try_from(results.total).unwrap_or(0))
    }
}

/// A signed-up user with one device.
#[derive(Debug, Clone)]
pub(crate) struct User {
    /// The account.
    pub(crate) id: UserId,
    /// Its device.
    pub(crate) device: DeviceId,
    /// The device's bearer token.
    pub(crate) token: String,
}

/// Signs up `count` users named `{prefix}{i}` with fresh numbers.
///
/// # Errors
/// The first failed sign-up.
pub(crate) async fn sign_up(
    client: &Client,
    inbox: &SmsInbox,
    prefix: &str,
    count: usize,
    quiet: bool,
) -> BenchResult<Vec<User>> {
    sign_up_spread(
        std::slice::from_ref(client),
        inbox,
        prefix,
        count,
        SIGNUP_CONCURRENCY,
        quiet,
    )
    .await
}

/// Signs up `count` users named `{prefix}{i}` with fresh numbers, user `i`
/// through `clients[i % clients.len()]` (one per node of a cluster, so
/// every node shares the work), `concurrency` at a time; in order.
///
/// # Errors
/// The first failed sign-up, or no client.
pub(crate) async fn sign_up_spread(
    clients: &[Client],
    inbox: &SmsInbox,
    prefix: &str,
    count: usize,
    concurrency: usize,
    quiet: bool,
) -> BenchResult<Vec<User>> {
    if clients.is_empty() {
        return Err(crate::BenchError::Other(
            "signing up needs a server to sign up on".to_owned(),
        ));
    }
    // A random block of numbers, so runs against one `--url` server do not collide.
    let base = (uuid::Uuid::now_v7().as_u128() & 0xffff_ffff) as u64 % 90_000_000;
    let bar = progress(count as u64, &format!("signing up {prefix} users"), quiet);
    let users: Vec<BenchResult<User>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let bar = bar.clone();
            let client = &clients[i % clients.len()];
            async move {
                let phone = format!("+4477{:08}", base + i as u64);
                let user = natter_testkit::TestUser::sign_up(
                    client,
                    inbox,
                    &phone,
                    &format!("{prefix}{i}"),
                )
                .await?;
                bar.inc(1);
                Ok(User {
                    id: user.user_id(),
                    device: user.device_id(),
                    token: user.token().to_owned(),
                })
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    users.into_iter().collect()
}
