//! The KeyPackage directory under load: T users, each with one device
//! certified by the user's identity key, publish P one-time KeyPackages
//! each (in batches of at most `e2ee.key_package_batch_max`, plus a last
//! resort); then C claimers claim them over REST, U users per claim (a
//! group creation claims for every member at once), one claim in flight
//! each, round-robin over the users so every one-time package is handed out
//! exactly once; then one more claim per user, which must get its last
//! resort. Reports the publish and claim rates and the claim latency, and
//! checks that no one-time package went to two claimers (a `violations`
//! entry, so the run exits 1).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;
use futures_util::StreamExt as _;
use natter_client::Client;
use natter_client::e2ee::{Engine, Identity, Suite};
use natter_proto::UserId;
use natter_proto::e2ee::{
    ClaimKeyPackages, ClaimedKeyPackages, PublishKeyPackages, SetDeviceCredential, SetIdentity,
};
use serde_json::{Value, json};

use crate::accounts::{SmsInbox, User, sign_up};
use crate::load::{histogram, latency_json, latency_line, progress, record};
use crate::report::{Report, thousands};
use crate::target::{Target, with_natter};
use crate::{BenchError, BenchResult, Common, STEP_TIMEOUT};

/// Options of `keys`.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    /// Users whose packages are claimed (one device each).
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// One-time KeyPackages each user publishes (at most
    /// `e2ee.key_packages_max_per_device`).
    #[arg(long, default_value_t = 400)]
    pub packages: usize,
    /// KeyPackages per publish request (at most `e2ee.key_package_batch_max`).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Users named in one claim.
    #[arg(long, default_value_t = 1)]
    pub per_claim: usize,
    /// Claimers, each with one claim in flight.
    #[arg(long, default_value_t = 16)]
    pub claimers: usize,
}

/// A user's device, its keys published, and its packages ready to publish.
struct Owner {
    user: User,
    batches: Vec<PublishKeyPackages>,
}

/// Makes the identity key, the certified device keys and the packages of
/// `user` (client CPU, before anything is timed), and registers the keys.
async fn prepare(client: &Client, user: User, args: &KeysArgs) -> BenchResult<Owner> {
    let (id, device, packages) = (user.id, user.device, args.packages);
    let batch = args.batch.max(1);
    let made = tokio::task::spawn_blocking(move || {
        let engine = Engine::new(id, device, Some(Identity::generate()?))?;
        let certificate = engine.self_certificate()?;
        let published = engine.key_packages(Suite::Classic, packages)?;
        let identity_key = engine.identity().map(|i| i.public_key().to_vec());
        Ok::<_, natter_client::e2ee::E2eeError>((
            engine.signature_key().to_vec(),
            engine.link_key().to_vec(),
            certificate,
            identity_key.unwrap_or_default(),
            published,
        ))
    })
    .await
    .map_err(|e| BenchError::Other(format!("the key thread failed: {e}")))?
    .map_err(|e| BenchError::Other(format!("MLS: {e}")))?;
    let (signature_key, link_key, certificate, identity_key, published) = made;
    let api = client.api().with_token(&user.token);
    api.set_identity(&SetIdentity {
        identity_key: B64.encode(&identity_key),
    })
    .await?;
    api.set_device_credential(
        device,
        &SetDeviceCredential {
            signature_key: B64.encode(&signature_key),
            link_key: B64.encode(&link_key),
            certificate: Some(B64.encode(&certificate)),
        },
    )
    .await?;
    let mut batches: Vec<PublishKeyPackages> = published
        .one_time
        .chunks(batch)
        .map(|chunk| PublishKeyPackages {
            key_packages: chunk.iter().map(|p| B64.encode(p)).collect(),
            last_resort: None,
        })
        .collect();
    match batches.first_mut() {
        Some(first) => first.last_resort = Some(B64.encode(&published.last_resort)),
        None => batches.push(PublishKeyPackages {
            key_packages: Vec::new(),
            last_resort: Some(B64.encode(&published.last_resort)),
        }),
    }
    Ok(Owner { user, batches })
}

/// Runs `keys`.
///
/// # Errors
/// Setup failures, refused publishes or claims.
pub(crate) async fn run(common: &Common, args: &KeysArgs) -> BenchResult<Report> {
    with_natter(common, async |inbox, target| {
        drive(common, args, inbox, target).await
    })
    .await
}

/// What the claimers saw.
#[derive(Default)]
struct Claimed {
    /// Every one-time package handed out (base64, as sent).
    one_time: Vec<String>,
    /// Last-resort packages handed out.
    last_resort: usize,
    /// Users asked for that had no package at all.
    missing: usize,
}

impl Claimed {
    fn take(&mut self, answer: &ClaimedKeyPackages) {
        for user in &answer.users {
            if user.devices.is_empty() {
                self.missing += 1;
            }
            for device in &user.devices {
                if device.last_resort {
                    self.last_resort += 1;
                } else {
                    self.one_time.push(device.key_package.clone());
                }
            }
        }
    }
}

async fn drive(
    common: &Common,
    args: &KeysArgs,
    inbox: &SmsInbox,
    target: &Target,
) -> BenchResult<Report> {
    let quiet = common.json;
    let (users, claimers, per_claim) = (
        args.users.max(1),
        args.claimers.max(1),
        args.per_claim.clamp(1, args.users.max(1)),
    );
    let client = Client::new(&target.http, STEP_TIMEOUT)?;
    let owners_signed = sign_up(&client, inbox, "keys", users, quiet).await?;
    let claimer_users = sign_up(&client, inbox, "claimer", claimers, quiet).await?;

    let bar = progress(users as u64, "making keys", quiet);
    let owners: Vec<BenchResult<Owner>> = futures_util::stream::iter(owners_signed)
        .map(|u| {
            let (client, bar) = (&client, bar.clone());
            async move {
                let owner = prepare(client, u, args).await;
                bar.inc(1);
                owner
            }
        })
        .buffered(2)
        .collect()
        .await;
    bar.finish_and_clear();
    let owners = owners.into_iter().collect::<BenchResult<Vec<_>>>()?;

    // Publish: every owner's batches, the owners in parallel.
    let published: usize = owners
        .iter()
        .flat_map(|o| &o.batches)
        .map(|b| b.key_packages.len())
        .sum();
    let started = Instant::now();
    let results: Vec<BenchResult<()>> = futures_util::stream::iter(&owners)
        .map(|owner| {
            let api = client.api().with_token(&owner.user.token);
            async move {
                for batch in &owner.batches {
                    api.publish_key_packages(batch).await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(claimers)
        .collect()
        .await;
    let publish_secs = started.elapsed().as_secs_f64();
    results.into_iter().collect::<BenchResult<Vec<_>>>()?;

    // Claim every one-time package exactly once: claim i names users
    // i*U .. i*U+U-1 (mod T), so each user is named P times in all.
    let targets: Arc<Vec<UserId>> = Arc::new(owners.iter().map(|o| o.user.id).collect());
    let claims = users * args.packages / per_claim;
    let next = Arc::new(AtomicUsize::new(0));
    let bar = progress(claims as u64, "claiming", quiet);
    let started = Instant::now();
    let tasks = claimer_users.iter().map(|claimer| {
        let api = client.api().with_token(&claimer.token);
        let (targets, next, bar) = (Arc::clone(&targets), Arc::clone(&next), bar.clone());
        async move {
            let mut latency = histogram()?;
            let mut seen = Claimed::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= claims {
                    break;
                }
                let user_ids = (0..per_claim)
                    .map(|j| targets[(i * per_claim + j) % targets.len()])
                    .collect();
                let sent = Instant::now();
                let answer = api
                    .claim_key_packages(&ClaimKeyPackages { user_ids })
                    .await?;
                record(
                    &mut latency,
                    u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX),
                );
                seen.take(&answer);
                bar.inc(1);
            }
            Ok::<_, BenchError>((latency, seen))
        }
    });
    let outcomes = futures_util::future::join_all(tasks).await;
    let claim_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut latency = histogram()?;
    let mut seen = Claimed::default();
    for outcome in outcomes {
        let (h, s) = outcome?;
        latency
            .add(&h)
            .map_err(|e| BenchError::Other(format!("histogram: {e}")))?;
        seen.one_time.extend(s.one_time);
        seen.last_resort += s.last_resort;
        seen.missing += s.missing;
    }

    // The directory is now empty: one more claim per user gets its last resort.
    let mut after = Claimed::default();
    let api = client.api().with_token(&claimer_users[0].token);
    for chunk in targets.chunks(per_claim) {
        let answer = api
            .claim_key_packages(&ClaimKeyPackages {
                user_ids: chunk.to_vec(),
            })
            .await?;
        after.take(&answer);
    }

    let handed = seen.one_time.len();
    let distinct = seen.one_time.iter().collect::<HashSet<_>>().len();
    let mut violations = Vec::new();
    if distinct != handed {
        violations.push(json!(format!(
            "{} one-time KeyPackages were handed out more than once",
            handed - distinct
        )));
    }
    if handed + seen.last_resort != claims * per_claim || seen.missing > 0 {
        violations.push(json!(format!(
            "{} claims for {} users got {handed} one-time and {} last-resort packages, {} none",
            claims,
            claims * per_claim,
            seen.last_resort,
            seen.missing
        )));
    }
    if after.last_resort != users || !after.one_time.is_empty() {
        violations.push(json!(format!(
            "after exhaustion {} of {users} users gave a last resort, {} a one-time package",
            after.last_resort,
            after.one_time.len()
        )));
    }

    let mut report = Report::new("keys");
    report.line(
        "users × one-time KeyPackages",
        &format!("{users} × {}", args.packages),
    );
    let publish_rate = published as f64 / publish_secs.max(f64::EPSILON);
    report.line(
        "publish",
        &format!(
            "{} KeyPackages/s (batches of {}, {claimers} owners at once)",
            thousands(publish_rate),
            args.batch
        ),
    );
    let claim_rate = claims as f64 / claim_secs.max(f64::EPSILON);
    report.line(
        &format!("claim ({per_claim} user(s) per claim, {claimers} claimers)"),
        &format!(
            "{} claims/s, {} KeyPackages/s",
            thousands(claim_rate),
            thousands(claim_rate * per_claim as f64)
        ),
    );
    report.line("claim latency", &latency_line(&latency));
    report.line(
        "exactly once",
        &format!("{handed} one-time packages handed out, {distinct} distinct"),
    );
    report.line(
        "after exhaustion",
        &format!(
            "{} of {users} users gave their last resort",
            after.last_resort
        ),
    );
    report.set(
        "keys",
        json!({
            "users": users,
            "packages_per_user": args.packages,
            "batch": args.batch,
            "per_claim": per_claim,
            "claimers": claimers,
            "publish_per_s": publish_rate,
            "claims_per_s": claim_rate,
            "claim_latency": latency_json(&latency),
            "one_time_handed_out": handed,
            "one_time_distinct": distinct,
            "last_resort_after_exhaustion": after.last_resort,
        }),
    );
    report.set("violations", Value::Array(violations));
    Ok(report)
}
