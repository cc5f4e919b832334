//! Pieces every scenario uses: timestamps carried inside messages, a light
//! parse of incoming frames, latency histograms, connecting many sockets
//! over several source addresses, and progress bars.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use natter_client::Socket;
use serde_json::{Value, json};

use crate::{BenchError, BenchResult, STEP_TIMEOUT};

/// Highest latency the histograms track; anything slower is clamped (and
/// would be a failed run anyway).
const MAX_LATENCY_US: u64 = 120_000_000;

/// The run's time origin, shared by senders and receivers in this process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since the run's time origin.
pub(crate) fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The instant `us` microseconds after the time origin.
pub(crate) fn instant_at(us: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(epoch() + Duration::from_micros(us))
}

/// A message text of exactly `size` bytes (at least the header) carrying
/// the time it was due (`stamp_us`), so the receiver measures latency from
/// the scheduled send time without any shared state.
pub(crate) fn content(stamp_us: u64, size: usize) -> String {
    let mut text = format!("t{stamp_us} ");
    while text.len() < size {
        text.push('x');
    }
    text
}

/// The schedule stamp in a text made by [`content`].
pub(crate) fn stamp_of(text: &str) -> Option<u64> {
    text.strip_prefix('t')?.split(' ').next()?.parse().ok()
}

/// The parts of a server frame the load generator looks at.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Incoming<'a> {
    /// The frame type.
    #[serde(rename = "type", borrow)]
    pub(crate) kind: Cow<'a, str>,
    /// The chat-log position, if the frame carries an event.
    #[serde(default)]
    pub(crate) seq: Option<i64>,
    /// The message, if the frame has one.
    #[serde(default, borrow)]
    pub(crate) message: Option<IncomingMessage<'a>>,
}

/// The part of a message the load generator looks at.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct IncomingMessage<'a> {
    /// The text.
    #[serde(default, borrow)]
    pub(crate) content: Option<Cow<'a, str>>,
}

impl Incoming<'_> {
    /// The schedule stamp of the message this frame carries.
    pub(crate) fn stamp(&self) -> Option<u64> {
        self.message.as_ref()?.content.as_deref().and_then(stamp_of)
    }
}

/// Parses a frame; `None` for something that is not a JSON frame.
pub(crate) fn parse(text: &str) -> Option<Incoming<'_>> {
    serde_json::from_str(text).ok()
}

/// An empty latency histogram (microseconds, 3 significant figures).
pub(crate) fn histogram() -> BenchResult<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| BenchError::Other(format!("histogram: {e}")))
}

/// Records one latency, clamped to the histogram's range.
pub(crate) fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, MAX_LATENCY_US));
}

/// The usual percentiles, in milliseconds.
pub(crate) fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| (us as f64) / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// `p50 / p90 / p99 / p999 / max` in milliseconds, for the table.
pub(crate) fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".to_owned();
    }
    let ms = |q: f64| (h.value_at_quantile(q) as f64) / 1000.0;
    format!(
        "p50 {:.2} / p90 {:.2} / p99 {:.2} / p999 {:.2} / max {:.2} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        (h.max() as f64) / 1000.0
    )
}

/// The `i`th client socket's local address: 127.0.0.2 .. 127.0.0.(1+n).
pub(crate) fn source_ip(i: usize, n: u8) -> IpAddr {
    let n = usize::from(n.max(1));
    let last = 2 + (i % n) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Connects and authenticates one socket per token, `concurrency` at a
/// time, in order. `server` must be a loopback address for the source
/// addresses to work.
///
/// # Errors
/// The first connection that fails.
pub(crate) async fn connect_all(
    server: SocketAddr,
    tokens: &[String],
    concurrency: usize,
    source_addrs: u8,
    buffer: usize,
    bar: &ProgressBar,
) -> BenchResult<Vec<Socket>> {
    let targets: Vec<(SocketAddr, &str)> = tokens.iter().map(|t| (server, t.as_str())).collect();
    connect_each(
        &targets,
        0,
        concurrency,
        source_addrs,
        buffer,
        bar,
        |_, s| s,
    )
    .await
}

/// Connects and authenticates one socket per `(server, token)`,
/// `concurrency` at a time, in order; the `i`th from source address
/// [`source_ip`]`(first + i)`, so processes sharing the work given
/// consecutive `first`s spread over the addresses evenly. The servers must
/// be loopback addresses for the source addresses to work. Each socket is
/// handed to `keep` (with its index) as soon as it is open, so a long run
/// of connects can start reading the first sockets at once (a socket
/// nobody reads answers no ping, and the server closes it).
///
/// # Errors
/// The first connection that fails.
pub(crate) async fn connect_each<T>(
    targets: &[(SocketAddr, &str)],
    first: usize,
    concurrency: usize,
    source_addrs: u8,
    buffer: usize,
    bar: &ProgressBar,
    keep: impl Fn(usize, Socket) -> T + Copy,
) -> BenchResult<Vec<T>> {
    let sockets: Vec<BenchResult<T>> = futures_util::stream::iter(targets.iter().enumerate())
        .map(|(i, &(server, token))| {
            let bar = bar.clone();
            async move {
                let local = server.ip().is_loopback() && server.is_ipv4();
                let from = local.then(|| source_ip(first + i, source_addrs));
                let s = Socket::connect_with(server, from, token, STEP_TIMEOUT, buffer).await?;
                bar.inc(1);
                Ok(keep(i, s))
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    sockets.into_iter().collect()
}

/// A progress bar on stderr, hidden when `quiet` (JSON output) or when
/// stderr is not a terminal.
pub(crate) fn progress(len: u64, message: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_owned());
    bar
}

/// A progress bar that counts seconds of a timed phase.
pub(crate) fn timed_progress(secs: f64, message: &str, quiet: bool) -> ProgressBar {
    progress(secs.ceil() as u64, message, quiet)
}

/// A small deterministic generator (splitmix64): the soak's choices, the
/// idle prober's pairs. Not for anything secret.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`0` when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
