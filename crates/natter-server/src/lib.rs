//! The Natter server as a library: configuration, the HTTP API, the domain
//! services and the engines behind them. The `natter` binary and the
//! integration tests start it through [`RunningServer`].
//!
//! # Layout
//! Requests flow one way (DESIGN.md §1):
//! - [`api`]: axum routes, extractors, error mapping. Parses, authenticates,
//!   calls one service function, maps to `natter-proto` types.
//! - [`service`]: the rules (accounts, profiles, contacts). No HTTP types.
//! - [`store`], [`bus`], [`blobs`], [`sms`], [`ratelimit`], [`push`]: engines
//!   behind traits (`blobs` behind `object_store`). Nothing above `store`
//!   writes SQL.
//! - [`thumbnail`]: decoding plaintext images, with limits, into thumbnails.
//! - [`search_query`]: the message search language, parsed into an
//!   engine-neutral query that each store engine compiles.
//! - [`config`]: the one `Config` with its `Limits` and rate-limit table.
//! - [`offline`]: the services on a stopped server's data directory
//!   (`natter admin`); [`backup`]: online backup and restore.
//! - [`server`]: start-up and graceful shutdown; `listener` accepts
//!   connections (header timeout, per-address cap, graceful drain).
//! - [`phone`], [`secret`], [`clock`]: small domain types (E.164 numbers,
//!   tokens and codes that never print, server time).

pub mod api;
pub mod backup;
pub mod blobs;
pub mod bus;
pub mod clock;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
mod listener;
pub mod mls_framing;
pub mod offline;
pub mod perms;
pub mod phone;
pub mod push;
pub mod ratelimit;
pub mod search_query;
pub mod secret;
pub mod server;
pub mod service;
pub mod sms;
pub mod store;
pub mod thumbnail;
pub mod tls;

pub use config::Config;
pub use server::{RunningServer, StartError};
