//! Push notifications: which devices get a push, registering channels, and
//! the delivery worker that drains the outbox (`docs/push.md`).
//!
//! After a message is committed and published on the bus, every other
//! participant's device that has a push channel and no live connection gets
//! an outbox entry; the store coalesces a burst into one entry per device.
//! The worker sends entries when they are due, with retries, and drops an
//! entry whose device came online meanwhile. Only new messages push:
//! receipts, typing, presence, edits, deletions and membership changes
//! reach the device when it next syncs.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use natter_proto::push::{
    APNS_TOKEN_MAX_CHARS, APNS_TOKEN_MIN_CHARS, FCM_TOKEN_MAX_CHARS, PushChannelRequest, PushKind,
    PushPayload, PushPreview,
};
use natter_proto::{ChatId, DeviceId, UserId};
use rand::Rng as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::{Principal, ServiceError, ServiceResult, Services};
use crate::clock::Timestamp;
use crate::push::endpoint::{self, REGISTRATION_LOOKUP_TIMEOUT, ResolveError};
use crate::push::{Delivery, PushGateway, PushTarget, ece};
use crate::store::{Appended, EntryKind, NewPush, PendingPush, PushChannelRecord, PushFinished};

/// With no push waiting, the worker still looks at the outbox this often
/// (a safety net; new entries wake it directly).
const IDLE_RECHECK: Duration = Duration::from_secs(60);
/// After a store error the worker waits this long before trying again.
const STORE_RETRY: Duration = Duration::from_secs(5);
/// Most messages planned together: one read and one write for them all,
/// so planning keeps up with a busy server.
const PLAN_BATCH: usize = 256;
/// How long shutdown lets pushes in flight finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A new message's push, waiting to be planned by the worker.
#[derive(Debug)]
pub(super) struct PushIntent {
    /// The chat.
    chat_id: ChatId,
    /// The sender (for the preview's name).
    sender: UserId,
    /// The message's seq.
    seq: i64,
    /// The other participants.
    recipients: Vec<UserId>,
    /// The excerpt, only when previews are on and the chat is plaintext.
    excerpt: Option<String>,
}

/// The services' push side.
#[derive(Debug)]
pub(super) struct PushState {
    /// The engine; `None` when `push.enabled` is off.
    gateway: Option<Arc<dyn PushGateway>>,
    /// New messages to plan; bounded (`limits.push_queue_depth`), so a flood
    /// drops pushes (counted) rather than memory.
    intents: mpsc::Sender<PushIntent>,
    /// The worker's end, taken once by [`Services::run_push_worker`].
    receiver: Mutex<Option<mpsc::Receiver<PushIntent>>>,
}

impl PushState {
    pub(super) fn new(gateway: Option<Arc<dyn PushGateway>>, depth: usize) -> Self {
        let (intents, receiver) = mpsc::channel(depth.max(1));
        Self {
            gateway,
            intents,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

/// Counts a dropped push.
fn dropped(reason: &'static str) {
    metrics::counter!("natter_push_dropped_total", "reason" => reason).increment(1);
}

/// Makes the push counters exist from the start (for `rate()` and alerts).
fn describe_metrics() {
    metrics::counter!("natter_push_queued_total").increment(0);
    metrics::counter!("natter_push_sent_total").increment(0);
    for reason in [
        "timeout",
        "connection",
        "dns",
        "throttled",
        "server_error",
        "auth",
        "gone",
        "rejected",
    ] {
        metrics::counter!("natter_push_failed_total", "reason" => reason).increment(0);
    }
    for reason in [
        "online",
        "max_attempts",
        "gone",
        "rejected",
        "refused",
        "queue_full",
    ] {
        metrics::counter!("natter_push_dropped_total", "reason" => reason).increment(0);
    }
}

/// Decodes base64url with or without padding (browsers' `toJSON()` omits it,
/// some libraries add it).
fn decode_b64(field: &str, value: &str) -> ServiceResult<Vec<u8>> {
    B64.decode(value.trim_end_matches('='))
        .map_err(|_| ServiceError::Validation(format!("`{field}` must be base64url.")))
}

/// An FCM registration token: printable ASCII, 1 to [`FCM_TOKEN_MAX_CHARS`].
fn check_fcm_token(token: &str) -> ServiceResult<()> {
    if token.is_empty()
        || token.len() > FCM_TOKEN_MAX_CHARS
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ServiceError::Validation(format!(
            "`token` must be an FCM registration token: printable ASCII, \
             at most {FCM_TOKEN_MAX_CHARS} characters."
        )));
    }
    Ok(())
}

/// An APNs device token: hex, [`APNS_TOKEN_MIN_CHARS`] to [`APNS_TOKEN_MAX_CHARS`].
fn check_apns_token(token: &str) -> ServiceResult<()> {
    if !crate::push::apns::is_device_token(token) {
        return Err(ServiceError::Validation(format!(
            "`token` must be an APNs device token: {APNS_TOKEN_MIN_CHARS} to \
             {APNS_TOKEN_MAX_CHARS} hex digits."
        )));
    }
    Ok(())
}

/// The first `max` characters, with an ellipsis if cut.
fn excerpt(text: &str, max: usize) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

impl Services {
    /// The VAPID public key for `applicationServerKey`.
    ///
    /// # Errors
    /// [`ServiceError::PushDisabled`].
    pub fn vapid_public_key(&self) -> ServiceResult<String> {
        self.inner
            .push
            .gateway
            .as_ref()
            .map(|g| g.public_key().to_owned())
            .ok_or(ServiceError::PushDisabled)
    }

    /// Sets the push channel of one of the caller's devices; returns it and
    /// whether it is new.
    ///
    /// # Errors
    /// Push disabled (404), not the caller's device (404), an endpoint the
    /// server may not contact or a mobile service it does not send to
    /// (400), malformed keys or tokens (422).
    pub async fn set_push_channel(
        &self,
        who: &Principal,
        device: DeviceId,
        req: PushChannelRequest,
    ) -> ServiceResult<(PushChannelRecord, bool)> {
        let Some(gateway) = self.inner.push.gateway.as_ref() else {
            return Err(ServiceError::PushDisabled);
        };
        // Before the endpoint check: it resolves the endpoint's host.
        self.limit(
            crate::ratelimit::Limit::PushChannelsPerUser,
            &who.user.to_string(),
        )
        .await?;
        let target = match req {
            PushChannelRequest::Webpush { endpoint, keys } => {
                let p256dh = decode_b64("keys.p256dh", &keys.p256dh)?;
                let auth = decode_b64("keys.auth", &keys.auth)?;
                ece::check_keys(&p256dh, &auth).map_err(|e| {
                    ServiceError::Validation(match e {
                        ece::EceError::BadAuth => "`keys.auth` must be 16 bytes.".to_owned(),
                        _ => "`keys.p256dh` must be an uncompressed P-256 public key.".to_owned(),
                    })
                })?;
                PushTarget {
                    kind: PushKind::Webpush,
                    endpoint,
                    p256dh: Some(p256dh),
                    auth: Some(auth),
                    environment: None,
                }
            }
            PushChannelRequest::Unifiedpush { endpoint } => PushTarget {
                kind: PushKind::Unifiedpush,
                endpoint,
                p256dh: None,
                auth: None,
                environment: None,
            },
            PushChannelRequest::Fcm { token } => {
                check_fcm_token(&token)?;
                PushTarget {
                    kind: PushKind::Fcm,
                    endpoint: token,
                    p256dh: None,
                    auth: None,
                    environment: None,
                }
            }
            PushChannelRequest::Apns { token, environment } => {
                check_apns_token(&token)?;
                PushTarget {
                    kind: PushKind::Apns,
                    endpoint: token,
                    p256dh: None,
                    auth: None,
                    environment: Some(environment.unwrap_or_default()),
                }
            }
        };
        match target.kind {
            PushKind::Webpush | PushKind::Unifiedpush => {
                self.check_endpoint(&target.endpoint).await?;
            }
            // The operator's configured service, not a device-chosen URL.
            PushKind::Fcm | PushKind::Apns => {
                if !gateway.accepts(target.kind) {
                    return Err(ServiceError::InvalidPushEndpoint(format!(
                        "This server does not send {} pushes.",
                        if target.kind == PushKind::Fcm {
                            "FCM"
                        } else {
                            "APNs"
                        }
                    )));
                }
            }
        }
        let record = PushChannelRecord {
            device_id: device,
            target,
            created_at: Timestamp::now(),
        };
        match self
            .inner
            .store
            .put_push_channel(who.user, record.clone())
            .await?
        {
            Some(created) => {
                tracing::info!(user = %who.user, device = %device, "push channel set");
                Ok((record, created))
            }
            None => Err(ServiceError::DeviceNotFound),
        }
    }

    /// The endpoint's form, and where its host resolves now. A lookup that
    /// fails is not held against it (the send checks again); one that
    /// finds a non-public address is.
    async fn check_endpoint(&self, endpoint: &str) -> ServiceResult<()> {
        let config = &self.inner.config;
        let allow_private = config.push.allow_private_endpoints;
        let url = endpoint::check_url(
            endpoint,
            config.limits.max_push_endpoint_chars,
            allow_private,
        )
        .map_err(|e| ServiceError::InvalidPushEndpoint(format!("{e}.")))?;
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Ok(());
        };
        if allow_private || host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
            return Ok(());
        }
        let lookup = endpoint::resolve_checked(host, port, allow_private);
        match tokio::time::timeout(REGISTRATION_LOOKUP_TIMEOUT, lookup).await {
            Ok(Err(ResolveError::Refused(e))) => {
                Err(ServiceError::InvalidPushEndpoint(format!("{e}.")))
            }
            _ => Ok(()),
        }
    }

    /// Removes the push channel of one of the caller's devices.
    ///
    /// # Errors
    /// Not the caller's device (404), no channel (404).
    pub async fn delete_push_channel(
        &self,
        who: &Principal,
        device: DeviceId,
    ) -> ServiceResult<()> {
        if self
            .inner
            .store
            .delete_push_channel(who.user, device)
            .await?
        {
            return Ok(());
        }
        let own = self
            .inner
            .store
            .devices(who.user)
            .await?
            .iter()
            .any(|d| d.id == device);
        Err(if own {
            ServiceError::PushChannelNotFound
        } else {
            ServiceError::DeviceNotFound
        })
    }

    /// Hands a committed message to the push worker (never waits: a full
    /// queue drops the push and counts it).
    pub(super) fn plan_push(&self, appended: &Appended, encrypted: bool) {
        let push = &self.inner.push;
        // Commits are MLS bookkeeping, not messages anyone reads: never pushed.
        if push.gateway.is_none()
            || !matches!(appended.entry.kind, EntryKind::Message(_))
            || appended.entry.kind == EntryKind::Message(natter_proto::chats::MessageType::Commit)
        {
            return;
        }
        let sender = appended.entry.sender_id;
        // The sender's own devices get nothing for their own message.
        let recipients: Vec<UserId> = appended
            .recipients
            .iter()
            .filter(|user| **user != sender)
            .copied()
            .collect();
        if recipients.is_empty() {
            return;
        }
        let config = &self.inner.config.push;
        // Never a preview for an encrypted chat (it has no content here anyway).
        let excerpt = (config.previews && !encrypted)
            .then_some(appended.entry.content.as_deref())
            .flatten()
            .map(|text| excerpt(text, config.preview_chars));
        let intent = PushIntent {
            chat_id: appended.entry.chat_id,
            seq: appended.entry.seq,
            sender,
            recipients,
            excerpt,
        };
        if push.intents.try_send(intent).is_err() {
            dropped("queue_full");
            tracing::warn!("the push queue is full; a push was dropped");
        }
    }

    /// A device came online: its waiting push, if any, is no longer needed.
    pub(super) fn cancel_push(&self, device: DeviceId) {
        if self.inner.push.gateway.is_none() {
            return;
        }
        let store = Arc::clone(&self.inner.store);
        tokio::spawn(async move {
            match store.cancel_push(device).await {
                Ok(true) => dropped("online"),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "could not cancel a waiting push"),
            }
        });
    }

    /// Turns intents into outbox entries for the offline devices with a
    /// channel (one read and one write for the whole batch); returns when
    /// the earliest of them is due.
    async fn plan(&self, batch: Vec<PushIntent>) -> Option<Timestamp> {
        let store = &self.inner.store;
        let mut users: Vec<UserId> = batch
            .iter()
            .flat_map(|i| i.recipients.iter().copied())
            .collect();
        users.sort_unstable();
        users.dedup();
        let devices = match store.push_devices(users).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "could not plan pushes");
                return None;
            }
        };
        if devices.is_empty() {
            return None;
        }
        let mut names: HashMap<UserId, Option<String>> = HashMap::new();
        let now = Timestamp::now();
        let mut pushes = Vec::new();
        for intent in batch {
            let preview = match intent.excerpt {
                Some(text) => {
                    if let Entry::Vacant(slot) = names.entry(intent.sender) {
                        let name = store
                            .user(intent.sender)
                            .await
                            .ok()
                            .flatten()
                            .map(|u| u.name);
                        slot.insert(name);
                    }
                    names
                        .get(&intent.sender)
                        .cloned()
                        .flatten()
                        .map(|name| (name, text))
                }
                None => None,
            };
            for (user, device) in &devices {
                if !intent.recipients.contains(user) {
                    continue;
                }
                if self.inner.bus.device_online(*user, *device).await {
                    continue;
                }
                pushes.push(NewPush {
                    device_id: *device,
                    user_id: *user,
                    chat_id: intent.chat_id,
                    seq: intent.seq,
                    preview: preview.clone(),
                    now,
                });
            }
        }
        if pushes.is_empty() {
            return None;
        }
        let n = pushes.len() as u64;
        match store.queue_pushes(pushes).await {
            Ok(()) => {
                metrics::counter!("natter_push_queued_total").increment(n);
                let window = Duration::from_millis(self.inner.config.push.coalesce_ms);
                Some(now.plus(window))
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not queue pushes");
                None
            }
        }
    }

    /// Makes the push counters exist, at zero, so the first scrape of
    /// `/metrics` has them (for `rate()` and absence alerts). Called at
    /// start, after the metrics recorder is installed and before the worker
    /// runs; counters recorded before a recorder exists are lost.
    pub fn describe_push_metrics(&self) {
        if self.inner.push.gateway.is_some() {
            describe_metrics();
        }
    }

    /// The delivery worker: plans new messages' pushes and sends due ones,
    /// at most `push.concurrency` at a time, until `stopped`. Pushes still
    /// waiting at shutdown stay in the outbox for the next start.
    pub async fn run_push_worker(self, mut stopped: watch::Receiver<bool>) {
        let Some(gateway) = self.inner.push.gateway.clone() else {
            return;
        };
        let taken = self
            .inner
            .push
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut intents) = taken else {
            return;
        };
        let config = self.inner.config.push.clone();
        let window_ms = i64::try_from(config.coalesce_ms).unwrap_or(i64::MAX);
        // A send is bounded by the request timeout plus the endpoint's DNS
        // check; an FCM send by up to four requests (token exchange and
        // send, twice after a refused token), an APNs one by two. The lease
        // outlasts them, so only a crash leaves it to expire.
        let web = Duration::from_secs(config.request_timeout_secs)
            + endpoint::REGISTRATION_LOOKUP_TIMEOUT;
        let fcm = Duration::from_secs(config.fcm.timeout_secs.saturating_mul(4));
        let apns = Duration::from_secs(config.apns.timeout_secs.saturating_mul(2));
        let send_budget = web.max(fcm).max(apns);
        let lease = send_budget * 2;
        let mut inflight: JoinSet<()> = JoinSet::new();
        let mut next_due = self.next_due(window_ms).await;
        loop {
            let wait = next_due.map_or(IDLE_RECHECK, |due| {
                Duration::from_millis(
                    u64::try_from(due.millis_since(Timestamp::now())).unwrap_or(0),
                )
            });
            tokio::select! {
                _ = stopped.changed() => break,
                intent = intents.recv() => {
                    let Some(intent) = intent else { break };
                    let mut batch = vec![intent];
                    while batch.len() < PLAN_BATCH {
                        match intents.try_recv() {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    if let Some(due) = self.plan(batch).await {
                        next_due = Some(next_due.map_or(due, |d| d.min(due)));
                    }
                }
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {
                    next_due = self.next_due(window_ms).await;
                }
                () = tokio::time::sleep(wait) => {
                    let room = config.concurrency.saturating_sub(inflight.len());
                    if room > 0 {
                        let now = Timestamp::now();
                        match self.inner.store.claim_pushes(now, window_ms, now.plus(lease), room).await {
                            Ok(claimed) => {
                                for push in claimed {
                                    let this = self.clone();
                                    let gateway = Arc::clone(&gateway);
                                    inflight.spawn(async move {
                                        this.deliver(gateway.as_ref(), push, send_budget).await;
                                    });
                                }
                            }
                            Err(e) => {
                                // Not again at once: a failing store would make this a busy loop.
                                tracing::warn!(error = %e, "could not claim pushes");
                                next_due = Some(now.plus(STORE_RETRY));
                                continue;
                            }
                        }
                    }
                    next_due = if inflight.len() >= config.concurrency {
                        // Full: the next finished send looks again.
                        None
                    } else {
                        self.next_due(window_ms).await
                    };
                }
            }
        }
        // Messages committed before the stop still get their outbox entries.
        intents.close();
        let mut rest = Vec::new();
        while let Ok(intent) = intents.try_recv() {
            rest.push(intent);
        }
        if !rest.is_empty() {
            self.plan(rest).await;
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        inflight.abort_all();
    }

    async fn next_due(&self, window_ms: i64) -> Option<Timestamp> {
        match self.inner.store.next_push_due(window_ms).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the push outbox");
                Some(Timestamp::now().plus(STORE_RETRY))
            }
        }
    }

    /// Sends one claimed push and records the outcome. The store hears of it
    /// before the counters do, so a counter says the outcome is recorded.
    async fn deliver(&self, gateway: &dyn PushGateway, push: PendingPush, budget: Duration) {
        let config = &self.inner.config.push;
        let device = push.device_id;
        let finish = |outcome: PushFinished| async move {
            if let Err(e) = self.inner.store.finish_push(device, outcome).await {
                tracing::warn!(error = %e, "could not record a push outcome");
            }
        };
        if self.inner.bus.device_online(push.user_id, device).await {
            finish(PushFinished::Drop).await;
            return dropped("online");
        }
        let target = &push.channel.target;
        // Previews only where they were allowed when queued, and only to
        // channels that encrypt end to end: a keyless UnifiedPush body is
        // readable on the way, and FCM and APNs read what they carry.
        let preview = match (&push.preview, target.kind) {
            (Some((sender, text)), PushKind::Webpush) => Some(PushPreview {
                sender: sender.clone(),
                text: text.clone(),
            }),
            _ => None,
        };
        let payload = PushPayload {
            v: 1,
            kind: "sync".to_owned(),
            chat_id: push.chat_id,
            count: u64::try_from(push.count).unwrap_or(0),
            seq: push.chat_id.map(|_| push.since_seq),
            preview,
        };
        // Sent or given up on, the claimed part is done; what joined it
        // meanwhile stays as a new burst.
        let settled = PushFinished::Settled {
            version: push.version,
            count: push.count,
            last_seq: push.last_seq,
            now: Timestamp::now(),
        };
        let Ok(body) = serde_json::to_vec(&payload) else {
            finish(settled).await;
            return dropped("refused");
        };
        let delivery = tokio::time::timeout(budget, gateway.send(target, &body))
            .await
            .unwrap_or(Delivery::Retry {
                after: None,
                reason: "timeout",
            });
        match delivery {
            Delivery::Sent => {
                finish(settled).await;
                metrics::counter!("natter_push_sent_total").increment(1);
            }
            Delivery::Retry { after, reason } => {
                metrics::counter!("natter_push_failed_total", "reason" => reason).increment(1);
                let attempts = push.attempts.saturating_add(1);
                if attempts >= config.max_attempts {
                    finish(settled).await;
                    tracing::info!(device = %device, reason, "push dropped after the last attempt");
                    return dropped("max_attempts");
                }
                let wait = backoff(
                    attempts,
                    after,
                    config.backoff_base_ms,
                    config.backoff_max_secs,
                );
                finish(PushFinished::Retry {
                    at: Timestamp::now().plus(wait),
                })
                .await;
            }
            Delivery::Gone => {
                // Recorded first: the counters tell tests and operators it is done.
                finish(PushFinished::Gone {
                    endpoint: target.endpoint.clone(),
                })
                .await;
                tracing::info!(device = %device, "push channel gone (404/410, or a dead token); removed");
                metrics::counter!("natter_push_failed_total", "reason" => "gone").increment(1);
                dropped("gone");
            }
            Delivery::Rejected { status } => {
                finish(settled).await;
                metrics::counter!("natter_push_failed_total", "reason" => "rejected").increment(1);
                dropped("rejected");
                tracing::warn!(device = %device, status, "the push service refused a push");
            }
            Delivery::Refused(why) => {
                finish(settled).await;
                dropped("refused");
                tracing::warn!(device = %device, reason = %why, "push not sent: endpoint refused");
            }
        }
    }
}

/// The wait before attempt `attempts + 1`: the push service's `Retry-After`
/// if it gave one, else `base * 2^(attempts-1)` with jitter (half to all of
/// it, so devices that failed together do not retry together); both capped.
fn backoff(attempts: u32, retry_after: Option<Duration>, base_ms: u64, max_secs: u64) -> Duration {
    let cap = Duration::from_secs(max_secs);
    if let Some(after) = retry_after {
        return after.min(cap);
    }
    let exp = base_ms.saturating_mul(1u64 << attempts.saturating_sub(1).min(32));
    let full = Duration::from_millis(exp).min(cap);
    let half = full / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_respects_the_cap_and_retry_after() {
        for attempts in 1..=5u32 {
            let full = Duration::from_millis(1000 * (1 << (attempts - 1)));
            let d = backoff(attempts, None, 1000, 3600);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?}");
        }
        assert!(backoff(40, None, 1000, 60) <= Duration::from_secs(60));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(30)), 1000, 3600),
            Duration::from_secs(30)
        );
        assert_eq!(
            backoff(1, Some(Duration::from_secs(99_999)), 1000, 3600),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn excerpts_are_cut_at_characters() {
        assert_eq!(excerpt("héllo", 5), "héllo");
        assert_eq!(excerpt("héllo!", 5), "héllo…");
    }
}
