//! Frame budgets of one WebSocket connection: a token bucket per kind of
//! client frame, held by the connection's own task (no lock, no allocation:
//! the check on the `send_message` hot path is a comparison of instants),
//! and the per-user limit of the shared rate-limit table that each kind is
//! also charged against where one is needed (see docs/websocket.md).
//!
//! Depends on the configuration's rate-limit table, the names of the
//! shared limits and the frame types; the shared limiter is called by the
//! gateway through the service.

use std::time::Duration;

use natter_proto::ws::ClientFrame;
use tokio::time::Instant;

use crate::config::{Rate, RateLimits};
use crate::ratelimit::{Denied, Limit};

/// What a client frame is, for its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FrameKind {
    /// `send_message` (per user: `messages_per_user`, in the send itself).
    Send,
    /// `ack` (per user: one unit per store write of the acks at hand).
    Ack,
    /// `sync`.
    Sync,
    /// `read`.
    Read,
    /// `typing` (per device and chat: `typing_per_device`, in the service).
    Typing,
    /// `presence` (per device: `presence_per_device`, in the service).
    Presence,
    /// `join_chat`.
    JoinChat,
    /// `ping`.
    Ping,
    /// Not a valid client frame: bad JSON, an unknown type, a binary frame,
    /// or `auth` on an authenticated connection.
    Malformed,
}

/// The number of kinds (the length of [`ConnectionBudget`]'s table).
const KINDS: usize = 9;

impl FrameKind {
    /// The kind of a parsed frame.
    pub(super) fn of(frame: &ClientFrame) -> Self {
        match frame {
            ClientFrame::SendMessage { .. } => Self::Send,
            ClientFrame::Ack { .. } => Self::Ack,
            ClientFrame::Sync { .. } => Self::Sync,
            ClientFrame::Read { .. } => Self::Read,
            ClientFrame::Typing { .. } => Self::Typing,
            ClientFrame::Presence { .. } => Self::Presence,
            ClientFrame::JoinChat { .. } => Self::JoinChat,
            ClientFrame::Ping => Self::Ping,
            ClientFrame::Auth { .. } => Self::Malformed,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }

    /// The frame's name in messages.
    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::Send => "send_message",
            Self::Ack => "ack",
            Self::Sync => "sync",
            Self::Read => "read",
            Self::Typing => "typing",
            Self::Presence => "presence",
            Self::JoinChat => "join_chat",
            Self::Ping => "ping",
            Self::Malformed => "invalid",
        }
    }

    /// The per-user limit checked through the shared limiter for every
    /// frame of this kind, if any. `send_message` is limited per user by the
    /// send itself and `ack` per store write (see [`Limit::WsAckWritesPerUser`]),
    /// so neither pays a shared check per frame.
    pub(super) const fn per_user(self) -> Option<Limit> {
        match self {
            Self::Send | Self::Ack => None,
            Self::Sync => Some(Limit::WsSyncPerUser),
            Self::Read => Some(Limit::WsReadPerUser),
            Self::Typing => Some(Limit::WsTypingPerUser),
            Self::Presence => Some(Limit::WsPresencePerUser),
            Self::JoinChat => Some(Limit::WsJoinChatPerUser),
            Self::Ping => Some(Limit::WsPingPerUser),
            Self::Malformed => Some(Limit::WsMalformedPerUser),
        }
    }
}

/// A token bucket as GCRA: `burst` units at once, one back every
/// `per_secs / burst`. Exactly `burst` takes succeed from full.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// When the bucket would be full again if nothing more were taken
    /// (the "theoretical arrival time").
    full_at: Instant,
    /// The time one unit takes to come back.
    period: Duration,
    /// The time the whole burst takes to come back.
    window: Duration,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Self {
        let burst = rate.burst.max(1);
        let window = Duration::from_secs(rate.per_secs.max(1));
        Self {
            full_at: now,
            period: window / burst,
            window,
        }
    }

    /// Takes one unit, or says how long until one is back.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let next = self.full_at.max(now) + self.period;
        let limit = now + self.window;
        if next > limit {
            return Err(next - limit);
        }
        self.full_at = next;
        Ok(())
    }
}

/// The budgets of one connection.
#[derive(Debug)]
pub(super) struct ConnectionBudget {
    /// One bucket per [`FrameKind`], by its index.
    frames: [Bucket; KINDS],
    /// `rate_limited` answers: when empty, the connection is closed.
    refusals: Bucket,
}

impl ConnectionBudget {
    /// Full budgets from the table.
    pub(super) fn new(table: &RateLimits) -> Self {
        let now = Instant::now();
        let rate = |kind: FrameKind| match kind {
            FrameKind::Send => table.ws_send_per_connection,
            FrameKind::Ack => table.ws_ack_per_connection,
            FrameKind::Sync => table.ws_sync_per_connection,
            FrameKind::Read => table.ws_read_per_connection,
            FrameKind::Typing => table.ws_typing_per_connection,
            FrameKind::Presence => table.ws_presence_per_connection,
            FrameKind::JoinChat => table.ws_join_chat_per_connection,
            FrameKind::Ping => table.ws_ping_per_connection,
            FrameKind::Malformed => table.ws_malformed_per_connection,
        };
        let kinds = [
            FrameKind::Send,
            FrameKind::Ack,
            FrameKind::Sync,
            FrameKind::Read,
            FrameKind::Typing,
            FrameKind::Presence,
            FrameKind::JoinChat,
            FrameKind::Ping,
            FrameKind::Malformed,
        ];
        Self {
            frames: kinds.map(|kind| Bucket::new(rate(kind), now)),
            refusals: Bucket::new(table.ws_refusals_per_connection, now),
        }
    }

    /// Takes one unit of `kind`'s budget on this connection.
    pub(super) fn take(&mut self, kind: FrameKind) -> Result<(), Denied> {
        let now = Instant::now();
        self.frames
            .get_mut(kind.index())
            // Every kind has a bucket; a missing one denies (fail closed).
            .map_or(Err(Duration::from_secs(60)), |bucket| bucket.take(now))
            .map_err(|wait| Denied {
                retry_after: whole_seconds(wait),
            })
    }

    /// Counts one `rate_limited` answer; false once the connection has
    /// been told more often than its budget allows and must be closed.
    pub(super) fn refused(&mut self) -> bool {
        self.refusals.take(Instant::now()).is_ok()
    }
}

/// A wait in whole seconds, never zero (as `Retry-After`).
fn whole_seconds(wait: Duration) -> Duration {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_refuses_until_a_unit_is_back() {
        let start = Instant::now();
        let mut bucket = Bucket::new(
            Rate {
                burst: 3,
                per_secs: 3,
            },
            start,
        );
        for _ in 0..3 {
            assert!(bucket.take(start).is_ok());
        }
        let wait = bucket.take(start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(bucket.take(start + Duration::from_millis(999)).is_err());
        assert!(bucket.take(start + Duration::from_secs(1)).is_ok());
        assert!(bucket.take(start + Duration::from_secs(1)).is_err());
        // Idle for long: full again, not more than full.
        let later = start + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(bucket.take(later).is_ok());
        }
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn kinds_have_their_own_budgets_and_refusals_are_counted() {
        let table = RateLimits {
            ws_sync_per_connection: Rate {
                burst: 2,
                per_secs: 3600,
            },
            ws_refusals_per_connection: Rate {
                burst: 1,
                per_secs: 3600,
            },
            ..RateLimits::default()
        };
        let mut budget = ConnectionBudget::new(&table);
        assert!(budget.take(FrameKind::Sync).is_ok());
        assert!(budget.take(FrameKind::Sync).is_ok());
        let denied = budget.take(FrameKind::Sync).unwrap_err();
        assert!(denied.retry_after >= Duration::from_secs(1), "{denied:?}");
        assert!(budget.take(FrameKind::Ping).is_ok());
        assert!(budget.refused());
        assert!(!budget.refused());
    }
}
