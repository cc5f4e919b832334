//! The rate-limit table (DESIGN.md §4 rule 4): every limit by name, checked
//! through one trait. The in-process engine uses `governor`; a shared engine
//! for clusters implements the same trait and must fail closed: a limiter
//! that cannot decide denies.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use crate::config::{Rate, RateLimits};

/// A named limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Codes sent to one number.
    VerificationPerPhone,
    /// Codes requested from one client address ([`address_key`]).
    VerificationPerIp,
    /// Codes requested from one client network ([`network_key`]).
    VerificationPerNetwork,
    /// Codes sent to one block of numbers (`Phone::block`).
    VerificationPerPrefix,
    /// Codes sent to one country calling code.
    VerificationPerCountry,
    /// Register/login attempts from one client address.
    CodeAttemptsPerIp,
    /// Discovery requests by one user.
    DiscoverPerUser,
    /// Contacts added by one user (each add is also a lookup).
    ContactAddPerUser,
    /// Typing signals from one device in one chat.
    TypingPerDevice,
    /// Presence changes (online/away) from one device.
    PresencePerDevice,
    /// Messages sent by one user.
    MessagesPerUser,
    /// Uploads started by one user.
    UploadsPerUser,
    /// Push channels registered by one user's devices.
    PushChannelsPerUser,
    /// Groups created by one user, per minute.
    ChatsCreatedPerMinute,
    /// Groups created by one user, per day.
    ChatsCreatedPerDay,
    /// People added to groups by one user, per minute.
    ParticipantsAddedPerMinute,
    /// People added to groups by one user, per day.
    ParticipantsAddedPerDay,
    /// `sync` frames from one user's connections.
    WsSyncPerUser,
    /// Store writes of one user's `ack` frames.
    WsAckWritesPerUser,
    /// `read` frames from one user's connections.
    WsReadPerUser,
    /// `typing` frames from one user's connections.
    WsTypingPerUser,
    /// `presence` frames from one user's connections.
    WsPresencePerUser,
    /// `join_chat` frames from one user's connections.
    WsJoinChatPerUser,
    /// `ping` frames from one user's connections.
    WsPingPerUser,
    /// Invalid frames from one user's connections.
    WsMalformedPerUser,
    /// KeyPackage claims by one user (`e2ee.claims_per_minute`).
    KeyPackageClaimsPerUser,
}

/// The key of a client address for per-address limits: an IPv4 address (an
/// IPv4-mapped IPv6 address counts as its IPv4 address), or the /64 an IPv6
/// address is in: one subscriber is given at least a /64, so its 2^64
/// addresses must not be 2^64 budgets.
#[must_use]
pub fn address_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{}/64", mask_v6(v6, 64)),
    }
}

/// The key of a client network for per-network limits: the IPv4 /24 or the
/// IPv6 /48 (a site) an address is in.
#[must_use]
pub fn network_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{}/24", Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => format!("{}/48", mask_v6(v6, 48)),
    }
}

fn mask_v6(ip: Ipv6Addr, bits: u32) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & mask)
}

/// A refused request and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// Wait at least this long.
    pub retry_after: Duration,
}

/// Checks requests against the table.
#[async_trait]
pub trait RateLimiter: Send + Sync + fmt::Debug + 'static {
    /// Takes one unit from `limit` for `key`, or says how long to wait.
    /// An engine that cannot decide must deny.
    async fn check(&self, limit: Limit, key: &str) -> Result<(), Denied>;

    /// Takes `n` units at once from `limit` for `key` (all or none), or says
    /// how long to wait. More than the limit's burst is always denied.
    async fn check_n(&self, limit: Limit, key: &str, n: u32) -> Result<(), Denied>;

    /// Takes one unit from the server-wide verification budget.
    async fn check_verification_budget(&self) -> Result<(), Denied>;

    /// Forgets idle keys so memory stays bounded; called periodically.
    fn sweep(&self) {}
}

/// In-process limits for a single node.
pub struct LocalRateLimiter {
    /// One keyed limiter per named limit.
    keyed: HashMap<Limit, DefaultKeyedRateLimiter<String>>,
    /// The server-wide verification budget.
    global: DefaultDirectRateLimiter,
    /// Time source shared with governor, to turn refusals into waits.
    clock: DefaultClock,
}

impl fmt::Debug for LocalRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalRateLimiter").finish_non_exhaustive()
    }
}

/// How often one unit of `rate` comes back: every `per_secs / burst`, at
/// least a millisecond. Every engine refills at this pace.
#[must_use]
pub fn refill_interval(rate: Rate) -> Duration {
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    (Duration::from_secs(rate.per_secs) / burst.get()).max(Duration::from_millis(1))
}

/// The refusal for a wait: whole seconds for `Retry-After`, never zero.
#[must_use]
pub fn denied_for(wait: Duration) -> Denied {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Denied {
        retry_after: Duration::from_secs(secs.max(1)),
    }
}

/// The refusal of a request that can never pass (more than the burst at
/// once, or a limit the engine does not know): come back in a minute.
pub const NEVER: Denied = Denied {
    retry_after: Duration::from_secs(60),
};

/// Every keyed limit of a configuration with its rate: the table, and the
/// limits configured in their own sections (`e2ee.claims_per_minute`).
#[must_use]
pub fn configured_rates(config: &crate::config::Config) -> Vec<(Limit, Rate)> {
    let mut rates = table_rates(&config.rate_limits).to_vec();
    rates.push((
        Limit::KeyPackageClaimsPerUser,
        Rate {
            burst: u32::try_from(config.e2ee.claims_per_minute).unwrap_or(u32::MAX),
            per_secs: 60,
        },
    ));
    rates
}

/// The keyed limits of the table with their rates.
#[must_use]
pub const fn table_rates(table: &RateLimits) -> [(Limit, Rate); 25] {
    [
        (Limit::VerificationPerPhone, table.verification_per_phone),
        (Limit::VerificationPerIp, table.verification_per_ip),
        (
            Limit::VerificationPerNetwork,
            table.verification_per_network,
        ),
        (Limit::VerificationPerPrefix, table.verification_per_prefix),
        (
            Limit::VerificationPerCountry,
            table.verification_per_country,
        ),
        (Limit::CodeAttemptsPerIp, table.code_attempts_per_ip),
        (Limit::DiscoverPerUser, table.discover_per_user),
        (Limit::ContactAddPerUser, table.contact_add_per_user),
        (Limit::TypingPerDevice, table.typing_per_device),
        (Limit::PresencePerDevice, table.presence_per_device),
        (Limit::MessagesPerUser, table.messages_per_user),
        (Limit::UploadsPerUser, table.uploads_per_user),
        (Limit::PushChannelsPerUser, table.push_channels_per_user),
        (Limit::ChatsCreatedPerMinute, table.chats_created_per_minute),
        (Limit::ChatsCreatedPerDay, table.chats_created_per_day),
        (
            Limit::ParticipantsAddedPerMinute,
            table.participants_added_per_minute,
        ),
        (
            Limit::ParticipantsAddedPerDay,
            table.participants_added_per_day,
        ),
        (Limit::WsSyncPerUser, table.ws_sync_per_user),
        (Limit::WsAckWritesPerUser, table.ws_ack_writes_per_user),
        (Limit::WsReadPerUser, table.ws_read_per_user),
        (Limit::WsTypingPerUser, table.ws_typing_per_user),
        (Limit::WsPresencePerUser, table.ws_presence_per_user),
        (Limit::WsJoinChatPerUser, table.ws_join_chat_per_user),
        (Limit::WsPingPerUser, table.ws_ping_per_user),
        (Limit::WsMalformedPerUser, table.ws_malformed_per_user),
    ]
}

fn quota(rate: Rate) -> Quota {
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(refill_interval(rate))
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

impl LocalRateLimiter {
    /// Builds the limiters from the table.
    #[must_use]
    pub fn new(table: &RateLimits) -> Self {
        let keyed = table_rates(table)
            .into_iter()
            .map(|(limit, rate)| (limit, DefaultKeyedRateLimiter::keyed(quota(rate))))
            .collect();
        Self {
            keyed,
            global: DefaultDirectRateLimiter::direct(quota(table.verification_global)),
            clock: DefaultClock::default(),
        }
    }

    /// Builds the limiters of a configuration: the table, and the limits
    /// configured in their own sections (`e2ee.claims_per_minute`).
    #[must_use]
    pub fn for_config(config: &crate::config::Config) -> Self {
        let mut limiter = Self::new(&config.rate_limits);
        for (limit, rate) in configured_rates(config) {
            limiter
                .keyed
                .entry(limit)
                .or_insert_with(|| DefaultKeyedRateLimiter::keyed(quota(rate)));
        }
        limiter
    }

    fn denied(
        &self,
        not_until: &governor::NotUntil<<DefaultClock as governor::clock::Clock>::Instant>,
    ) -> Denied {
        denied_for(not_until.wait_time_from(self.clock.now()))
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn check(&self, limit: Limit, key: &str) -> Result<(), Denied> {
        // Every limit is built in `new`; a missing one denies (fail closed).
        let Some(limiter) = self.keyed.get(&limit) else {
            return Err(NEVER);
        };
        limiter
            .check_key(&key.to_owned())
            .map_err(|n| self.denied(&n))
    }

    async fn check_n(&self, limit: Limit, key: &str, n: u32) -> Result<(), Denied> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        let Some(limiter) = self.keyed.get(&limit) else {
            return Err(NEVER);
        };
        match limiter.check_key_n(&key.to_owned(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.denied(&not_until)),
            // More than the burst can never pass: a request must be split.
            Err(_) => Err(NEVER),
        }
    }

    async fn check_verification_budget(&self) -> Result<(), Denied> {
        self.global.check().map_err(|n| self.denied(&n))
    }

    fn sweep(&self) {
        for limiter in self.keyed.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_networks_have_the_documented_keys() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(address_key(ip("192.0.2.77")), "192.0.2.77");
        assert_eq!(address_key(ip("::ffff:192.0.2.77")), "192.0.2.77");
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(network_key(ip("192.0.2.77")), "192.0.2.0/24");
        assert_eq!(network_key(ip("::ffff:192.0.2.1")), "192.0.2.0/24");
        assert_eq!(network_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1::/48");
    }

    #[tokio::test]
    async fn a_burst_is_allowed_then_refused_with_a_wait() {
        let table = RateLimits {
            verification_per_phone: Rate {
                burst: 3,
                per_secs: 3600,
            },
            ..RateLimits::default()
        };
        let limiter = LocalRateLimiter::new(&table);
        for _ in 0..3 {
            limiter
                .check(Limit::VerificationPerPhone, "+14155550123")
                .await
                .unwrap();
        }
        let denied = limiter
            .check(Limit::VerificationPerPhone, "+14155550123")
            .await
            .unwrap_err();
        // One unit returns every 20 minutes.
        assert!(denied.retry_after > Duration::from_secs(1000), "{denied:?}");
        assert!(
            denied.retry_after <= Duration::from_secs(1200),
            "{denied:?}"
        );
        // Other keys are untouched.
        limiter
            .check(Limit::VerificationPerPhone, "+14155550124")
            .await
            .unwrap();
    }
}
