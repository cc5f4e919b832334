//! The server's black-box tests: a real server on an ephemeral port and a
//! temporary data directory, a real SMS webhook receiver, real HTTP.
//!
//! Where new tests go:
//! - `support`: the harness (`TestApp`, `SmsInbox`, `TestUser`). Helpers only.
//! - `signup`: verification codes, register, login, the seed's bodies.
//! - `invites`: sign-up mode `invite`, invites, login codes made by a device.
//! - `rate_limits`: the rate-limit table.
//! - `devices`: tokens, logout, device lists and revocation.
//! - `embedded`: the embedded store's own mechanics (the data directory's lock, the search indexer's catching up); not run on a cluster.
//! - `e2ee`: end-to-end encryption: keys, KeyPackages, commits, Welcomes, inboxes, handovers.
//! - `accounts`: deleting one's account, exporting one's data.
//! - `profiles`: `/users/me`, public profiles and their privacy rules.
//! - `contacts`: contact lists and discovery.
//! - `blobs_s3`: the S3 blob engine (multipart writes, ranged reads) on a throwaway S3 server.
//! - `chats`: chats, participants, roles, chat lists.
//! - `cluster_bus`: the NATS bus between nodes (routing, presence TTL, NATS restarts).
//! - `group_privacy`: who may add whom to groups, invitations, the limits on group creations and adds.
//! - `messages`: sending, history, idempotency, encryption, edits, receipts.
//! - `names`: which characters display and group names may hold.
//! - `errors`: malformed input of every kind, and the limits at N and N+1.
//! - `connections`: the listener (header timeout, connections per address).
//! - `realtime`: the WebSocket: live delivery, sync, receipts, typing, presence.
//! - `frame_budgets`: WebSocket frame budgets per connection and per user, the 1008 close.
//! - `restart`: what survives a restart.
//! - `search`: message, chat and contact search.
//! - `media`: uploads (plain and tus), downloads, thumbnails, media in messages and profiles, garbage collection.
//! - `push`: push channels, delivery to offline devices, SSRF refusals.
//! - `push_service`: the local push service the push tests talk to (a helper).
//! - `mobile_push`: FCM and APNs channels, delivery, dead tokens, retries, credentials.
//! - `mobile_push_service`: the local OAuth, FCM and APNs services those tests talk to (a helper).
//! - `ops`: health, readiness, metrics, the OpenAPI document.
//! - `tls`: HTTPS (HTTP/2 and HTTP/1.1 by ALPN) and WebSocket over TLS.
//! - `web`: the browser client at `/` and the API's CORS policy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

mod accounts;
mod blobs_s3;
mod chats;
mod cluster_bus;
mod connections;
mod contacts;
mod devices;
mod e2ee;
mod embedded;
mod errors;
mod frame_budgets;
mod group_privacy;
mod invites;
mod media;
mod messages;
mod mobile_push;
mod mobile_push_service;
mod names;
mod ops;
mod profiles;
mod push;
mod push_service;
mod rate_limits;
mod realtime;
mod restart;
mod search;
mod signup;
mod support;
mod tls;
mod web;
