//! Push notifications: devices register channels; offline devices get one
//! content-free push per burst, verified and decrypted by a local push
//! service; online devices get none; 410 removes a channel; the outbox
//! survives a restart; endpoints inside the network are refused.

use std::time::Duration;

use base64::Engine as _;
use natter_server::Config;
use reqwest::Method;
use serde_json::{Value, json};

use crate::push_service::{PushService, Subscription};
use crate::support::{TestApp, TestUser, WAIT, mls_private};

/// A development server talking to the local push service, with a short
/// coalescing window and quick retries.
fn dev(c: &mut Config, window_ms: u64) {
    c.push.allow_private_endpoints = true;
    c.push.coalesce_ms = window_ms;
    c.push.backoff_base_ms = 20;
}

fn push_path(user: &TestUser) -> String {
    format!("/api/v1/devices/{}/push", user.device_id)
}

/// Registers `sub` as the channel of `user`'s device.
async fn register(app: &TestApp, user: &TestUser, sub: &Subscription) {
    let channel = user
        .post(app, &push_path(user), sub.body.clone())
        .await
        .ok(201);
    assert_eq!(channel["device_id"], user.device_id.as_str());
    assert_eq!(channel["endpoint"], sub.endpoint.as_str());
}

/// Waits (at most `WAIT`) until a metric reaches `at_least`.
async fn wait_metric(app: &TestApp, prefix: &str, at_least: f64) {
    tokio::time::timeout(WAIT, async {
        while app.metric(prefix).await < at_least {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{prefix} did not reach {at_least}"));
}

#[tokio::test]
async fn an_offline_device_gets_one_push_for_a_burst_and_an_online_one_none() {
    let service = PushService::start().await;
    // The window is wide enough for five sends on a busy machine.
    let app = TestApp::start_with(|c| dev(c, 2500)).await;
    let alice = app.signup("+14155550800", "Alice").await;
    let alice_laptop = app.login("+14155550800", "Laptop").await;
    let bob = app.signup("+14155550801", "Bob").await;
    let bob_desk = app.login("+14155550801", "Desk").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let (phone, desk, laptop) = (
        service.subscribe(),
        service.subscribe(),
        service.subscribe(),
    );
    register(&app, &bob, &phone).await;
    register(&app, &bob_desk, &desk).await;
    register(&app, &alice_laptop, &laptop).await;
    // Bob's desk is online; his phone is not.
    let mut live = bob_desk.connect(&app).await;
    // The burst follows the chat's `created` entry (seq 1): sync from there.
    let since = 1;

    for n in 0..5 {
        alice.sends(&app, &chat, &format!("burst {n}")).await;
    }

    let pushes = service.wait_for(&phone, 1).await;
    // Exactly one push for the whole burst: its count covers all five.
    assert_eq!(
        pushes[0].payload,
        json!({"v": 1, "kind": "sync", "chat_id": chat, "count": 5, "seq": since})
    );
    let raw = String::from_utf8_lossy(&pushes[0].raw);
    assert!(!raw.contains("burst"), "the body on the wire is encrypted");
    // The online device got the messages live and no push; the sender's
    // own offline laptop got nothing for her own messages.
    for _ in 0..5 {
        live.next_of("new_message").await;
    }
    assert_eq!(service.requests(&desk), 0);
    assert_eq!(service.requests(&laptop), 0);
    wait_metric(&app, "natter_push_sent_total", 1.0).await;
    assert_eq!(app.metric("natter_push_sent_total").await, 1.0);
    assert_eq!(app.metric("natter_push_queued_total").await, 5.0);
    service.check();
}

#[tokio::test]
async fn a_device_that_comes_online_drops_its_waiting_push() {
    let service = PushService::start().await;
    // A window of an hour: the push waits until Bob connects.
    let app = TestApp::start_with(|c| dev(c, 3_600_000)).await;
    let alice = app.signup("+14155550805", "Alice").await;
    let bob = app.signup("+14155550806", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let sub = service.subscribe();
    register(&app, &bob, &sub).await;
    alice.sends(&app, &chat, "are you up?").await;
    wait_metric(&app, "natter_push_queued_total", 1.0).await;

    let live = bob.connect(&app).await;
    wait_metric(&app, r#"natter_push_dropped_total{reason="online"}"#, 1.0).await;
    // The outbox entry is gone; he reads what the push would have announced.
    assert_eq!(app.metric("natter_push_sent_total").await, 0.0);
    assert_eq!(service.requests(&sub), 0);
    assert_eq!(bob.texts(&app, &chat).await, ["are you up?"]);
    live.close().await;
}

#[tokio::test]
async fn a_gone_subscription_is_removed_and_failures_are_retried() {
    let service = PushService::start().await;
    let app = TestApp::start_with(|c| dev(c, 50)).await;
    let alice = app.signup("+14155550810", "Alice").await;
    let bob = app.signup("+14155550811", "Bob").await;
    let cleo = app.signup("+14155550812", "Cleo").await;
    let chat = alice.group_with(&app, "Trio", &[&bob, &cleo]).await;
    let (gone, flaky) = (service.subscribe(), service.subscribe());
    register(&app, &bob, &gone).await;
    register(&app, &cleo, &flaky).await;
    service.answer(&gone, &[(410, None)]);
    // Cleo's push service is busy twice (once with Retry-After), then accepts.
    service.answer(&flaky, &[(503, Some(0)), (429, None)]);

    alice.sends(&app, &chat, "anyone there?").await;

    let pushes = service.wait_for(&flaky, 1).await;
    assert_eq!(pushes[0].payload["count"], 1);
    assert_eq!(service.requests(&flaky), 3, "two failures, then the push");
    service.wait_requests(&gone, 1).await;
    wait_metric(&app, r#"natter_push_dropped_total{reason="gone"}"#, 1.0).await;
    assert_eq!(service.requests(&gone), 1);
    assert!(service.pushes(&gone).is_empty());
    // 410 removed Bob's channel.
    bob.delete(&app, &push_path(&bob))
        .await
        .expect(404, "push_channel_not_found");
    assert_eq!(
        app.metric(r#"natter_push_failed_total{reason="server_error"}"#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric(r#"natter_push_failed_total{reason="throttled"}"#)
            .await,
        1.0
    );
    service.check();
}

#[tokio::test]
async fn a_push_is_dropped_after_its_last_attempt() {
    let service = PushService::start().await;
    let app = TestApp::start_with(|c| {
        dev(c, 50);
        c.push.max_attempts = 2;
    })
    .await;
    let alice = app.signup("+14155550815", "Alice").await;
    let bob = app.signup("+14155550816", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let sub = service.subscribe();
    register(&app, &bob, &sub).await;
    service.answer(&sub, &[(500, None), (502, None)]);
    alice.sends(&app, &chat, "hello?").await;
    wait_metric(
        &app,
        r#"natter_push_dropped_total{reason="max_attempts"}"#,
        1.0,
    )
    .await;
    assert_eq!(service.requests(&sub), 2);
    assert!(service.pushes(&sub).is_empty());
    // The channel stays: the next message is pushed.
    alice.sends(&app, &chat, "hello again").await;
    assert_eq!(service.wait_for(&sub, 1).await[0].payload["count"], 1);
}

#[tokio::test]
async fn pending_pushes_are_delivered_after_a_restart() {
    let service = PushService::start().await;
    // A window of an hour: nothing goes out before the restart.
    let mut app = TestApp::start_with(|c| dev(c, 3_600_000)).await;
    let vapid = app
        .call(Method::GET, "/api/v1/push/vapid", None, None)
        .await
        .ok(200)["public_key"]
        .clone();
    let alice = app.signup("+14155550820", "Alice").await;
    let bob = app.signup("+14155550821", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let sub = service.subscribe();
    register(&app, &bob, &sub).await;
    for text in ["one", "two", "three"] {
        alice.sends(&app, &chat, text).await;
    }
    wait_metric(&app, "natter_push_queued_total", 3.0).await;
    assert_eq!(service.requests(&sub), 0);

    app.restart_with(|c| c.push.coalesce_ms = 50).await;

    let pushes = service.wait_for(&sub, 1).await;
    assert_eq!(pushes[0].payload["count"], 3);
    assert_eq!(pushes[0].payload["chat_id"], chat.as_str());
    // The same VAPID key before and after: the subscription still works.
    assert_eq!(pushes[0].vapid_key.as_deref(), vapid.as_str());
    assert_eq!(
        app.call(Method::GET, "/api/v1/push/vapid", None, None)
            .await
            .ok(200)["public_key"],
        vapid
    );
    service.check();
}

#[tokio::test]
async fn no_push_for_an_encrypted_chat_carries_its_text_even_with_previews() {
    let service = PushService::start().await;
    let app = TestApp::start_with(|c| {
        dev(c, 50);
        c.push.previews = true;
        c.push.preview_chars = 10;
    })
    .await;
    let alice = app.signup("+14155550830", "Alice").await;
    let bob = app.signup("+14155550831", "Bob").await;
    let bob_tablet = app.login("+14155550831", "Tablet").await;
    let (phone, tablet) = (service.subscribe(), service.unified());
    register(&app, &bob, &phone).await;
    register(&app, &bob_tablet, &tablet).await;

    // A plaintext chat with previews on: the sender and an excerpt, to the
    // encrypted channel only.
    let plain = alice.direct_chat_with(&app, &bob).await;
    alice.sends(&app, &plain, "see you at the lighthouse").await;
    let pushes = service.wait_for(&phone, 1).await;
    assert_eq!(
        pushes[0].payload["preview"],
        json!({"sender": "Alice", "text": "see you at…"})
    );
    let keyless = service.wait_for(&tablet, 1).await;
    assert_eq!(
        keyless[0].payload,
        json!({"v": 1, "kind": "sync", "chat_id": plain, "count": 1, "seq": keyless[0].payload["seq"]})
    );
    assert!(!String::from_utf8_lossy(&keyless[0].raw).contains("see you"));

    // An encrypted chat: nothing of the message, not even the sender.
    let secret = "the eagle lands at dawn";
    let ciphertext_bytes = secret.as_bytes().to_vec();
    let ciphertext = base64::engine::general_purpose::STANDARD.encode(secret);
    let encrypted = alice
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "group", "name": "Ops", "participants": [bob.user_id], "encrypted": true}),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .post(
            &app,
            "/api/v1/messages",
            json!({"chat_id": encrypted, "ciphertext": mls_private(&encrypted, 0, 1, &ciphertext_bytes)}),
        )
        .await
        .ok(201);
    let pushes = service.wait_for(&phone, 2).await;
    let keyless = service.wait_for(&tablet, 2).await;
    for push in [&pushes[1], &keyless[1]] {
        assert_eq!(push.payload["chat_id"], encrypted.as_str());
        assert_eq!(push.payload.get("preview"), None);
        let decrypted = push.payload.to_string();
        for leak in ["eagle", "dawn", ciphertext.as_str(), "Alice"] {
            assert!(!decrypted.contains(leak), "{leak} in {decrypted}");
            assert!(!String::from_utf8_lossy(&push.raw).contains(leak));
        }
    }
    service.check();
}

#[tokio::test]
async fn push_channels_are_for_own_devices_only() {
    let service = PushService::start().await;
    let app = TestApp::start_with(|c| dev(c, 50)).await;
    let alice = app.signup("+14155550840", "Alice").await;
    let alice_laptop = app.login("+14155550840", "Laptop").await;
    let bob = app.signup("+14155550841", "Bob").await;
    let sub = service.subscribe();
    for device in [
        bob.device_id.clone(),
        uuid::Uuid::now_v7().to_string(),
        "not-a-device".to_owned(),
    ] {
        alice
            .post(
                &app,
                &format!("/api/v1/devices/{device}/push"),
                sub.body.clone(),
            )
            .await
            .expect(404, "device_not_found");
    }
    alice
        .delete(&app, &push_path(&bob))
        .await
        .expect(404, "device_not_found");
    app.call(
        Method::POST,
        &push_path(&alice),
        None,
        Some(sub.body.clone()),
    )
    .await
    .expect(401, "unauthorized");
    alice
        .delete(&app, &push_path(&alice))
        .await
        .expect(404, "push_channel_not_found");
    // Her own other device: created, replaced, removed.
    let laptop = format!("/api/v1/devices/{}/push", alice_laptop.device_id);
    alice.post(&app, &laptop, sub.body.clone()).await.ok(201);
    alice
        .post(&app, &laptop, service.unified().body)
        .await
        .ok(200);
    alice.delete(&app, &laptop).await.ok(204);
    alice
        .delete(&app, &laptop)
        .await
        .expect(404, "push_channel_not_found");
    // Logging a device out removes its channel with it.
    register(&app, &bob, &sub).await;
    bob.post(&app, "/api/v1/users/logout", json!({}))
        .await
        .ok(204);
    let bob_again = app.login("+14155550841", "Again").await;
    bob_again
        .delete(&app, &push_path(&bob))
        .await
        .expect(404, "device_not_found");
}

#[tokio::test]
async fn endpoints_inside_the_network_are_refused_by_default() {
    let service = PushService::start().await;
    // Many registrations: past the default rate limit.
    let app = TestApp::start_with(|c| c.rate_limits.push_channels_per_user.burst = 1000).await;
    let alice = app.signup("+14155550850", "Alice").await;
    let keys = service.subscribe().body["keys"].clone();
    for endpoint in [
        "https://127.0.0.1/push",
        "https://127.1/push",
        "https://[::1]/push",
        "https://[::ffff:127.0.0.1]/push",
        "https://10.0.0.8/push",
        "https://192.168.1.20/push",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/push",
        "https://[fd00::1]/push",
        "https://[fe80::1]/push",
        "https://0.0.0.0/push",
        "https://localhost/push",
        "https://push.localhost/push",
        "https://intranet/push",
        "http://push.example.com/push",
        "https://user:secret@push.example.com/push",
        "ftp://push.example.com/push",
        "not a url",
    ] {
        alice
            .post(
                &app,
                &push_path(&alice),
                json!({"kind": "webpush", "endpoint": endpoint, "keys": keys}),
            )
            .await
            .expect(400, "invalid_push_endpoint");
        alice
            .post(
                &app,
                &push_path(&alice),
                json!({"kind": "unifiedpush", "endpoint": endpoint}),
            )
            .await
            .expect(400, "invalid_push_endpoint");
    }
    // A public address is fine (registration sends nothing).
    alice
        .post(
            &app,
            &push_path(&alice),
            json!({"kind": "webpush", "endpoint": "https://1.1.1.1/push/abc", "keys": keys}),
        )
        .await
        .ok(201);
}

#[tokio::test]
async fn push_registration_limits_at_n_and_n_plus_one() {
    let service = PushService::start().await;
    let app = TestApp::start_with(|c| c.limits.max_push_endpoint_chars = 60).await;
    let alice = app.signup("+14155550860", "Alice").await;
    let sub = service.subscribe();
    let keys = sub.body["keys"].clone();
    let path = push_path(&alice);
    let post = |body: Value| alice.post(&app, &path, body);
    let at_max = format!("https://1.1.1.1/{}", "a".repeat(60 - 16));
    assert_eq!(at_max.len(), 60);
    post(json!({"kind": "webpush", "endpoint": at_max, "keys": keys}))
        .await
        .ok(201);
    post(json!({"kind": "webpush", "endpoint": format!("{at_max}a"), "keys": keys}))
        .await
        .expect(400, "invalid_push_endpoint");
    let b64 = |n: usize| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![7u8; n]);
    // auth is 16 bytes: 15 and 17 are refused; padding is accepted.
    for (auth, status) in [
        (b64(15), 422),
        (b64(17), 422),
        (format!("{}==", b64(16)), 200),
    ] {
        let answer = post(json!({"kind": "webpush", "endpoint": at_max,
                                 "keys": {"p256dh": keys["p256dh"], "auth": auth}}))
        .await;
        assert_eq!(answer.status.as_u16(), status, "{answer:?}");
    }
    // p256dh is a 65-byte point on the curve.
    let p256dh = keys["p256dh"].as_str().unwrap();
    let mut off_curve = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p256dh)
        .unwrap();
    off_curve[64] ^= 1;
    for bad in [
        b64(64),
        b64(65),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&off_curve),
        "not base64!".to_owned(),
    ] {
        post(json!({"kind": "webpush", "endpoint": at_max,
                    "keys": {"p256dh": bad, "auth": keys["auth"]}}))
        .await
        .expect(422, "validation_failed");
    }
    for body in [
        json!({"kind": "apns", "endpoint": at_max}),
        json!({"kind": "webpush", "endpoint": at_max}),
        json!({"kind": "unifiedpush", "endpoint": at_max, "extra": 1}),
        json!({"endpoint": at_max}),
    ] {
        post(body).await.expect(422, "validation_failed");
    }
}

#[tokio::test]
async fn the_vapid_key_is_published_and_push_can_be_turned_off() {
    let app = TestApp::start().await;
    let key = app
        .call(Method::GET, "/api/v1/push/vapid", None, None)
        .await
        .ok(200)["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let point = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&key)
        .unwrap();
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );

    let off = TestApp::start_with(|c| c.push.enabled = false).await;
    off.call(Method::GET, "/api/v1/push/vapid", None, None)
        .await
        .expect(404, "push_disabled");
    let alice = off.signup("+14155550870", "Alice").await;
    let service = PushService::start().await;
    alice
        .post(&off, &push_path(&alice), service.subscribe().body)
        .await
        .expect(404, "push_disabled");
}

#[tokio::test]
async fn push_channel_registrations_are_rate_limited_at_n() {
    let service = PushService::start().await;
    let app = TestApp::start_with(|c| {
        dev(c, 50);
        c.rate_limits.push_channels_per_user = natter_server::config::Rate {
            burst: 3,
            per_secs: 3600,
        };
    })
    .await;
    let alice = app.signup("+14155550860", "Alice").await;
    let bob = app.signup("+14155550861", "Bob").await;
    let sub = service.subscribe();
    for _ in 0..3 {
        let answer = alice.post(&app, &push_path(&alice), sub.body.clone()).await;
        assert!(answer.status == 200 || answer.status == 201, "{answer:?}");
    }
    let refused = alice.post(&app, &push_path(&alice), sub.body.clone()).await;
    refused.expect(429, "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
    // Another user has a budget of their own.
    register(&app, &bob, &service.subscribe()).await;
}
