//! The relay scenario: P sender→receiver pairs, each in its own direct chat
//! with its own two sockets. First a closed loop (at most W messages in
//! flight per pair; a delivery frees a slot) for the maximum delivered
//! rate, then an open loop at a fixed rate (by default half the maximum)
//! with latency measured from each message's scheduled send time, so a
//! stalled server cannot hide its stall (no coordinated omission).
//!
//! `baseline` runs the same client against the bare relay, and `relay`
//! runs it first, so every report carries the physical limit of the same
//! machine in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use futures_util::SinkExt as _;
use hdrhistogram::Histogram;
use natter_client::{Client, SocketReader, SocketWriter};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::accounts::{BenchCalls as _, SmsInbox, sign_up};
use crate::load::{
    connect_all, content, histogram, instant_at, latency_json, latency_line, now_us, parse,
    progress, record, timed_progress,
};
use crate::report::{Report, thousands};
use crate::target::{Kind, Target};
use crate::{BenchError, BenchResult, Common, STEP_TIMEOUT};

/// How long the receivers may take, after the last send, to get the
/// messages still in flight before the phase counts them as lost.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Options of `relay` and `baseline`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Sender→receiver pairs (each its own direct chat and two sockets).
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Messages in flight per pair in the closed loop.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Message size in bytes (the text).
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Seconds of the closed loop (the maximum).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Most messages per phase, over all pairs (the run ends at whichever
    /// bound comes first).
    #[arg(long, default_value_t = 2_000_000)]
    pub messages: u64,
    /// Open-loop rate over all pairs, messages/s (default: half the
    /// closed-loop maximum of the same target).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of the open loop.
    #[arg(long, default_value_t = 10.0)]
    pub open_duration: f64,
    /// Skip the open loop.
    #[arg(long)]
    pub no_open: bool,
    /// Skip the baseline relay (`relay` only).
    #[arg(long)]
    pub no_baseline: bool,
    /// Receivers acknowledge (`ack`) after this many messages (0: never).
    #[arg(long, default_value_t = 64)]
    pub ack_every: u64,
}

/// One pair's sockets and chat.
struct Pair {
    /// The chat the sender writes to (the receiver's id on the bare relay).
    chat: String,
    sender_w: SocketWriter,
    sender_r: SocketReader,
    receiver_w: SocketWriter,
    receiver_r: SocketReader,
}

/// How a phase sends.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// As fast as `window` slots per pair allow, until `until_us` or `cap` per pair.
    Closed {
        window: usize,
        until_us: u64,
        cap: u64,
    },
    /// `per_pair` messages/s per pair from `from_us` to `until_us`.
    Open {
        per_pair: f64,
        from_us: u64,
        until_us: u64,
        cap: u64,
    },
}

/// What a phase measured.
#[derive(Debug)]
pub(crate) struct Phase {
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
    pub(crate) confirmed: u64,
    pub(crate) errors: u64,
    pub(crate) secs: f64,
    pub(crate) latency: Histogram<u64>,
}

impl Phase {
    pub(crate) fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.delivered as f64 / self.secs
        } else {
            0.0
        }
    }

    fn json(&self) -> Value {
        json!({
            "sent": self.sent,
            "delivered": self.delivered,
            "confirmed": self.confirmed,
            "errors": self.errors,
            "seconds": self.secs,
            "delivered_per_sec": self.rate(),
            "latency": latency_json(&self.latency),
        })
    }
}

/// Counters one pair shares between its tasks.
struct PairState {
    /// Free slots in the closed loop.
    window: Semaphore,
    /// Messages sent so far.
    sent: AtomicU64,
}

/// The send frame, written by hand: the text has no characters to escape.
fn send_frame(chat: &str, text: &str) -> WsMessage {
    WsMessage::text(format!(
        r#"{{"type":"send_message","chat_id":"{chat}","content":"{text}"}}"#
    ))
}

/// Runs one phase over all pairs and gives the sockets back.
async fn phase(
    pairs: Vec<Pair>,
    mode: Mode,
    size: usize,
    ack_every: u64,
) -> BenchResult<(Vec<Pair>, Phase)> {
    let started = now_us();
    let mut tasks = Vec::with_capacity(pairs.len());
    let count = pairs.len();
    for (index, pair) in pairs.into_iter().enumerate() {
        let Pair {
            chat,
            mut sender_w,
            mut sender_r,
            mut receiver_w,
            mut receiver_r,
        } = pair;
        let window = match mode {
            Mode::Closed { window, .. } => window,
            Mode::Open { .. } => 0,
        };
        let state = Arc::new(PairState {
            window: Semaphore::new(window),
            sent: AtomicU64::new(0),
        });
        let (done_tx, done_rx) = watch::channel(false);
        let last_delivery = Arc::new(AtomicU64::new(started));

        let sender = {
            let state = Arc::clone(&state);
            let chat = chat.clone();
            tokio::spawn(async move {
                let r = send_loop(&mut sender_w, &chat, &state, mode, index, count, size).await;
                let _ = done_tx.send(true);
                (sender_w, r)
            })
        };
        let confirmer = {
            let state = Arc::clone(&state);
            let mut done = done_rx.clone();
            tokio::spawn(async move {
                let mut confirmed = 0u64;
                let mut errors = 0u64;
                let r = drain(&mut sender_r, None, &state, &mut done, |frame| {
                    match frame.kind.as_ref() {
                        "message_sent" => confirmed += 1,
                        "error" => errors += 1,
                        _ => return None,
                    }
                    Some((confirmed + errors, None))
                })
                .await;
                (sender_r, confirmed, errors, r)
            })
        };
        let receiver = {
            let chat = chat.clone();
            let state = Arc::clone(&state);
            let mut done = done_rx;
            let last_delivery = Arc::clone(&last_delivery);
            tokio::spawn(async move {
                let mut latency = histogram()?;
                let mut delivered = 0u64;
                let mut last_seq = 0i64;
                let r = drain(
                    &mut receiver_r,
                    Some(&mut receiver_w),
                    &state,
                    &mut done,
                    |frame| {
                        if frame.kind != "new_message" {
                            return None;
                        }
                        let now = now_us();
                        if let Some(stamp) = frame.stamp() {
                            record(&mut latency, now.saturating_sub(stamp));
                        }
                        delivered += 1;
                        last_delivery.store(now, Ordering::Relaxed);
                        state.window.add_permits(1);
                        last_seq = frame.seq.unwrap_or(last_seq);
                        let ack =
                            (ack_every > 0 && delivered.is_multiple_of(ack_every)).then(|| {
                                format!(r#"{{"type":"ack","chat_id":"{chat}","seq":{last_seq}}}"#)
                            });
                        Some((delivered, ack))
                    },
                )
                .await;
                Ok::<_, BenchError>((receiver_w, receiver_r, delivered, latency, r))
            })
        };
        tasks.push((chat, sender, confirmer, receiver, last_delivery));
    }

    let mut result = Phase {
        sent: 0,
        delivered: 0,
        confirmed: 0,
        errors: 0,
        secs: 0.0,
        latency: histogram()?,
    };
    let mut last = started;
    let mut pairs = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for (chat, sender, confirmer, receiver, last_delivery) in tasks {
        let join =
            |e: tokio::task::JoinError| BenchError::Other(format!("a load task failed: {e}"));
        let (sender_w, sent) = sender.await.map_err(join)?;
        let (sender_r, confirmed, errors, cr) = confirmer.await.map_err(join)?;
        let (receiver_w, receiver_r, delivered, latency, rr) = receiver.await.map_err(join)??;
        for r in [cr, rr] {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        match sent {
            Ok(n) => result.sent += n,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        result.delivered += delivered;
        result.confirmed += confirmed;
        result.errors += errors;
        let _ = result.latency.add(&latency);
        last = last.max(last_delivery.load(Ordering::Relaxed));
        pairs.push((chat, sender_w, sender_r, receiver_w, receiver_r));
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let pairs = pairs
        .into_iter()
        .map(|(chat, sender_w, sender_r, receiver_w, receiver_r)| Pair {
            chat,
            sender_w,
            sender_r,
            receiver_w,
            receiver_r,
        })
        .collect();
    let from = match mode {
        Mode::Open { from_us, .. } => from_us,
        Mode::Closed { .. } => started,
    };
    result.secs = (last.saturating_sub(from)) as f64 / 1e6;
    Ok((pairs, result))
}

/// Reads frames until the sender is done and `counted` (what `on_frame`
/// returns for frames it counts) reaches the number sent, or until the
/// drain timeout.
async fn drain(
    reader: &mut SocketReader,
    mut acks: Option<&mut SocketWriter>,
    state: &PairState,
    done: &mut watch::Receiver<bool>,
    mut on_frame: impl FnMut(&crate::load::Incoming<'_>) -> Option<(u64, Option<String>)>,
) -> BenchResult<()> {
    let mut counted = 0u64;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        if *done.borrow() {
            if counted >= state.sent.load(Ordering::Acquire) {
                return Ok(());
            }
            let deadline =
                *drain_deadline.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_TIMEOUT);
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
        }
        let wait = drain_deadline
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(STEP_TIMEOUT * 10);
        tokio::select! {
            text = tokio::time::timeout(wait, reader.next_text()) => {
                match text {
                    Ok(Ok(text)) => {
                        let step = parse(&text).and_then(|frame| on_frame(&frame));
                        if let Some((c, ack)) = step {
                            counted = c;
                            if let (Some(ack), Some(writer)) = (ack, acks.as_deref_mut()) {
                                let ack = WsMessage::text(ack);
                                writer.send(ack).await.map_err(natter_client::ClientError::from)?;
                            }
                        }
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => {}
                }
            }
            changed = done.changed(), if !*done.borrow() => {
                if changed.is_err() {
                    // The sender is gone; treat as done.
                    drain_deadline.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_TIMEOUT);
                }
            }
        }
    }
}

/// Sends for one phase. Closed: take a free slot (or several), send, flush.
/// Open: send each message at its due time, catching up without skipping
/// when late (the lateness shows in the latency).
async fn send_loop(
    writer: &mut SocketWriter,
    chat: &str,
    state: &PairState,
    mode: Mode,
    index: usize,
    count: usize,
    size: usize,
) -> BenchResult<u64> {
    let mut sent = 0u64;
    match mode {
        Mode::Closed { until_us, cap, .. } => loop {
            if now_us() >= until_us || sent >= cap {
                break;
            }
            let permit =
                tokio::time::timeout_at(instant_at(until_us), state.window.acquire()).await;
            match permit {
                Ok(Ok(p)) => p.forget(),
                _ => break,
            }
            let mut batch = 1;
            while sent + batch < cap {
                match state.window.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        batch += 1;
                    }
                    Err(_) => break,
                }
            }
            for _ in 0..batch {
                writer
                    .feed(send_frame(chat, &content(now_us(), size)))
                    .await
                    .map_err(natter_client::ClientError::from)?;
                sent += 1;
                state.sent.store(sent, Ordering::Release);
            }
            writer
                .flush()
                .await
                .map_err(natter_client::ClientError::from)?;
        },
        Mode::Open {
            per_pair,
            from_us,
            until_us,
            cap,
        } => {
            let interval = 1e6 / per_pair.max(0.001);
            // Spread the pairs' schedules over one interval.
            let offset = interval * index as f64 / count.max(1) as f64;
            let mut i = 0u64;
            loop {
                let due = from_us + (offset + interval * i as f64) as u64;
                if due >= until_us || sent >= cap {
                    break;
                }
                if due > now_us() {
                    writer
                        .flush()
                        .await
                        .map_err(natter_client::ClientError::from)?;
                    tokio::time::sleep_until(instant_at(due)).await;
                }
                writer
                    .feed(send_frame(chat, &content(due, size)))
                    .await
                    .map_err(natter_client::ClientError::from)?;
                sent += 1;
                i += 1;
                state.sent.store(sent, Ordering::Release);
            }
            writer
                .flush()
                .await
                .map_err(natter_client::ClientError::from)?;
        }
    }
    Ok(sent)
}

/// One target's figures.
#[derive(Debug)]
struct TargetRun {
    kind: Kind,
    closed: Phase,
    open: Option<(f64, Phase)>,
}

/// Sets up pairs on `target`: accounts and chats through the API for
/// Natter; made-up ids for the bare relay.
async fn pairs_on(
    common: &Common,
    target: &Target,
    kind: Kind,
    inbox: Option<&SmsInbox>,
    args: &RelayArgs,
) -> BenchResult<Vec<Pair>> {
    let quiet = common.json;
    let (tokens, chats) = match (kind, inbox) {
        (Kind::Natter, Some(inbox)) => {
            let client = Client::new(&target.http, STEP_TIMEOUT)?;
            let users = sign_up(&client, inbox, "relay", 2 * args.pairs, quiet).await?;
            let mut chats = Vec::with_capacity(args.pairs);
            for p in 0..args.pairs {
                let chat = client
                    .direct_chat(&users[2 * p].token, users[2 * p + 1].id)
                    .await?;
                chats.push(chat.to_string());
            }
            (
                users.into_iter().map(|u| u.token).collect::<Vec<_>>(),
                chats,
            )
        }
        _ => {
            let tokens: Vec<String> = (0..2 * args.pairs)
                .map(|_| uuid::Uuid::now_v7().to_string())
                .collect();
            let chats = (0..args.pairs).map(|p| tokens[2 * p + 1].clone()).collect();
            (tokens, chats)
        }
    };
    let bar = progress(tokens.len() as u64, "connecting", quiet);
    let sockets = connect_all(
        target.addr,
        &tokens,
        64,
        common.source_addrs,
        natter_client::BUFFER_BYTES,
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    let mut sockets = sockets.into_iter();
    let mut pairs = Vec::with_capacity(args.pairs);
    for chat in chats {
        let (Some(s), Some(r)) = (sockets.next(), sockets.next()) else {
            return Err(BenchError::Other("fewer sockets than pairs".to_owned()));
        };
        let (sender_w, sender_r) = s.split();
        let (receiver_w, receiver_r) = r.split();
        pairs.push(Pair {
            chat,
            sender_w,
            sender_r,
            receiver_w,
            receiver_r,
        });
    }
    Ok(pairs)
}

async fn run_target(
    common: &Common,
    args: &RelayArgs,
    kind: Kind,
    inbox: Option<&SmsInbox>,
) -> BenchResult<TargetRun> {
    let sms_url = inbox.map(|i| i.url().to_owned()).unwrap_or_default();
    let target = Target::start(common, kind, &sms_url).await?;
    let outcome = drive(common, args, kind, inbox, &target).await;
    if outcome.is_err() {
        eprintln!("{} log:\n{}", kind.name(), target.log_tail());
    }
    target.stop().await;
    outcome
}

async fn drive(
    common: &Common,
    args: &RelayArgs,
    kind: Kind,
    inbox: Option<&SmsInbox>,
    target: &Target,
) -> BenchResult<TargetRun> {
    let quiet = common.json;
    let pairs = pairs_on(common, target, kind, inbox, args).await?;
    let per_pair_cap = args.messages.div_ceil(args.pairs.max(1) as u64);

    let bar = timed_progress(
        args.duration,
        &format!("{}: closed loop", kind.name()),
        quiet,
    );
    let ticker = tick(bar.clone());
    let until_us = now_us() + (args.duration * 1e6) as u64;
    let mode = Mode::Closed {
        window: args.window.max(1),
        until_us,
        cap: per_pair_cap,
    };
    let (pairs, closed) = phase(pairs, mode, args.size, args.ack_every).await?;
    ticker.abort();
    bar.finish_and_clear();

    let open = if args.no_open {
        None
    } else {
        let rate = args.rate.unwrap_or(closed.rate() / 2.0).max(1.0);
        let bar = timed_progress(
            args.open_duration,
            &format!("{}: open loop {}/s", kind.name(), thousands(rate)),
            quiet,
        );
        let ticker = tick(bar.clone());
        // Start a little later so every sender is scheduled from the same origin.
        let from_us = now_us() + 50_000;
        let mode = Mode::Open {
            per_pair: rate / args.pairs.max(1) as f64,
            from_us,
            until_us: from_us + (args.open_duration * 1e6) as u64,
            cap: per_pair_cap,
        };
        let (_pairs, phase) = phase(pairs, mode, args.size, args.ack_every).await?;
        ticker.abort();
        bar.finish_and_clear();
        Some((rate, phase))
    };
    Ok(TargetRun { kind, closed, open })
}

/// Advances a timed bar once a second.
fn tick(bar: indicatif::ProgressBar) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.tick().await;
        loop {
            every.tick().await;
            bar.inc(1);
        }
    })
}

/// Runs `relay` (baseline first, unless `--no-baseline`) or `baseline`.
///
/// # Errors
/// Setup failures and lost connections.
pub(crate) async fn run(
    common: &Common,
    args: &RelayArgs,
    baseline_only: bool,
) -> BenchResult<Report> {
    if args.pairs == 0 {
        return Err(BenchError::Other("--pairs must be at least 1".to_owned()));
    }
    let mut runs = Vec::new();
    if baseline_only || !args.no_baseline {
        runs.push(run_target(common, args, Kind::Baseline, None).await?);
    }
    if !baseline_only {
        let inbox = SmsInbox::start_on(common.sms_listen).await?;
        runs.push(run_target(common, args, Kind::Natter, Some(&inbox)).await?);
    }
    let mut report = Report::new(if baseline_only { "baseline" } else { "relay" });
    report.set(
        "params",
        json!({
            "pairs": args.pairs, "window": args.window, "size": args.size,
            "duration": args.duration, "open_duration": args.open_duration,
            "messages": args.messages, "ack_every": args.ack_every,
            "server_cpus": common.server_cpus, "client_cpus": common.client_cpus,
        }),
    );
    report.line(
        "pairs / window / size",
        &format!("{} / {} / {} B", args.pairs, args.window, args.size),
    );
    for run in &runs {
        let name = run.kind.name();
        let mut j = json!({ "closed": run.closed.json() });
        report.line(
            &format!("{name}: max delivered/s"),
            &format!(
                "{} ({} of {} sent, {} confirmed, {} errors, {:.1} s)",
                thousands(run.closed.rate()),
                run.closed.delivered,
                run.closed.sent,
                run.closed.confirmed,
                run.closed.errors,
                run.closed.secs
            ),
        );
        report.line(
            &format!("{name}: closed-loop latency"),
            &latency_line(&run.closed.latency),
        );
        if let Some((rate, open)) = &run.open {
            j["open"] = open.json();
            j["open"]["target_rate"] = json!(rate);
            report.line(
                &format!("{name}: open loop at {}/s", thousands(*rate)),
                &format!(
                    "{} delivered/s ({} of {} sent)",
                    thousands(open.rate()),
                    open.delivered,
                    open.sent
                ),
            );
            report.line(
                &format!("{name}: latency from schedule"),
                &latency_line(&open.latency),
            );
        }
        report.set(name, j);
    }
    if let [base, natter] = runs.as_slice()
        && base.closed.rate() > 0.0
    {
        let ratio = natter.closed.rate() / base.closed.rate();
        report.set("natter_vs_baseline", json!(ratio));
        report.line("natter / baseline", &format!("{:.0}%", ratio * 100.0));
    }
    Ok(report)
}
