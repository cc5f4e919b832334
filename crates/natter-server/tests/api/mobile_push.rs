//! Mobile push: Android devices over FCM HTTP v1 and Apple devices over
//! APNs, through the same outbox and retries as Web Push, verified by the
//! local services in `mobile_push_service` (OAuth grant, bearer tokens,
//! ES256 provider tokens, HTTP/2, the documented bodies). Pushes carry no
//! content; dead tokens remove the channel; busy answers are retried;
//! expired credentials are refreshed.

use std::time::Duration;

use natter_server::Config;
use natter_server::server::RunningServer;
use serde_json::{Value, json};

use crate::mobile_push_service::{MobileServices, apns_token, fcm_token};
use crate::support::{TestApp, TestUser, WAIT};

/// A server sending to the local FCM and APNs, with a short window and
/// quick retries. The key files live in `dir`.
fn mobile(c: &mut Config, services: &MobileServices, dir: &std::path::Path) {
    services.configure(dir, c);
    c.push.coalesce_ms = 50;
    c.push.backoff_base_ms = 20;
}

fn push_path(user: &TestUser) -> String {
    format!("/api/v1/devices/{}/push", user.device_id)
}

async fn register(app: &TestApp, user: &TestUser, body: Value) -> Value {
    user.post(app, &push_path(user), body).await.ok(201)
}

async fn wait_metric(app: &TestApp, prefix: &str, at_least: f64) {
    tokio::time::timeout(WAIT, async {
        while app.metric(prefix).await < at_least {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{prefix} did not reach {at_least}"));
}

/// Neither the text nor the sender's name, anywhere in what travelled.
fn assert_content_free(raw: &str, text: &str, sender: &str) {
    assert!(!raw.contains(text), "the message text leaked: {raw}");
    assert!(!raw.contains(sender), "the sender's name leaked: {raw}");
    assert!(!raw.contains("preview"), "a preview leaked: {raw}");
}

#[tokio::test]
async fn an_android_device_gets_a_content_free_fcm_data_message() {
    let services = MobileServices::start().await;
    let keys = tempfile::tempdir().unwrap();
    // Previews on: FCM still gets none (it reads what it carries).
    let app = TestApp::start_with(|c| {
        mobile(c, &services, keys.path());
        c.push.previews = true;
    })
    .await;
    let alice = app.signup("+14155550900", "Alice Lovelace").await;
    let bob = app.signup("+14155550901", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let token = fcm_token();
    let channel = register(&app, &bob, json!({"kind": "fcm", "token": token})).await;
    assert_eq!(channel["kind"], "fcm");
    assert_eq!(channel["token"], token.as_str());
    assert!(channel.get("endpoint").is_none(), "{channel}");

    alice.sends(&app, &chat, "the launch code is 0000").await;
    let push = services.wait_for(&token, 1).await.remove(0);
    // Every value a string, as FCM data wants; `seq` is where to sync from.
    let seq = push.payload["seq"].as_str().unwrap();
    assert!(seq.parse::<i64>().is_ok(), "{seq}");
    assert_eq!(
        push.payload,
        json!({"v": "1", "kind": "sync", "chat_id": chat, "count": "1", "seq": seq})
    );
    assert_content_free(&push.raw, "launch code", "Lovelace");

    // The access token is cached: each node exchanges the service
    // account's grant once, so one more push than there are nodes needs
    // fewer exchanges than pushes (on one node: one for both).
    let nodes = crate::support::nodes();
    for n in 2..=nodes + 1 {
        alice.sends(&app, &chat, "again").await;
        services.wait_for(&token, n).await;
    }
    let exchanges = services.exchanges();
    assert!((1..=nodes).contains(&exchanges), "{exchanges} exchanges");
    services.check();
}

#[tokio::test]
async fn fcm_dead_tokens_remove_the_channel_and_busy_answers_are_retried() {
    let services = MobileServices::start().await;
    let keys = tempfile::tempdir().unwrap();
    let app = TestApp::start_with(|c| mobile(c, &services, keys.path())).await;
    let alice = app.signup("+14155550905", "Alice").await;
    let bob = app.signup("+14155550906", "Bob").await;
    let cleo = app.signup("+14155550907", "Cleo").await;
    let dan = app.signup("+14155550908", "Dan").await;
    let eve = app.signup("+14155550909", "Eve").await;
    let chat = alice
        .group_with(&app, "Android", &[&bob, &cleo, &dan, &eve])
        .await;
    let (unregistered, invalid, busy, revoked) =
        (fcm_token(), fcm_token(), fcm_token(), fcm_token());
    for (user, token) in [
        (&bob, &unregistered),
        (&cleo, &invalid),
        (&dan, &busy),
        (&eve, &revoked),
    ] {
        register(&app, user, json!({"kind": "fcm", "token": token})).await;
    }
    services.answer(
        &unregistered,
        &[(
            404,
            None,
            json!({"error": {"code": 404, "status": "NOT_FOUND",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                         "errorCode": "UNREGISTERED"}]}}),
        )],
    );
    services.answer(
        &invalid,
        &[(
            400,
            None,
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "The registration token is not a valid FCM registration token",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                         "errorCode": "INVALID_ARGUMENT"},
                        {"@type": "type.googleapis.com/google.rpc.BadRequest",
                         "fieldViolations": [{"field": "message.token"}]}]}}),
        )],
    );
    // Throttled (with Retry-After), then unavailable, then accepted.
    services.answer(
        &busy,
        &[
            (
                429,
                Some(0),
                json!({"error": {"status": "RESOURCE_EXHAUSTED"}}),
            ),
            (503, None, json!({"error": {"status": "UNAVAILABLE"}})),
        ],
    );
    // The access token is refused once: a new one is fetched and the push goes.
    services.answer(&revoked, &[(401, None, json!({}))]);

    alice.sends(&app, &chat, "anyone on Android?").await;

    assert_eq!(services.wait_for(&busy, 1).await[0].payload["count"], "1");
    assert_eq!(services.requests(&busy), 3, "two failures, then the push");
    services.wait_for(&revoked, 1).await;
    assert_eq!(services.requests(&revoked), 2);
    assert!(
        services.exchanges() >= 2,
        "a new access token after the 401"
    );
    wait_metric(&app, r#"natter_push_dropped_total{reason="gone"}"#, 2.0).await;
    for (user, token) in [(&bob, &unregistered), (&cleo, &invalid)] {
        assert_eq!(services.requests(token), 1);
        assert!(services.pushes(token).is_empty());
        user.delete(&app, &push_path(user))
            .await
            .expect(404, "push_channel_not_found");
    }
    dan.delete(&app, &push_path(&dan)).await.ok(204);
    for reason in ["throttled", "server_error"] {
        assert_eq!(
            app.metric(&format!(r#"natter_push_failed_total{{reason="{reason}"}}"#))
                .await,
            1.0,
            "{reason}"
        );
    }
    services.check();
}

#[tokio::test]
async fn an_apple_device_gets_a_generic_alert_over_http2() {
    let services = MobileServices::start().await;
    let keys = tempfile::tempdir().unwrap();
    let app = TestApp::start_with(|c| {
        mobile(c, &services, keys.path());
        c.push.previews = true;
    })
    .await;
    let alice = app.signup("+14155550910", "Alice Lovelace").await;
    let bob = app.signup("+14155550911", "Bob").await;
    let bob_ipad = app.login("+14155550911", "iPad").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let (phone, ipad) = (apns_token(), apns_token());
    let channel = register(&app, &bob, json!({"kind": "apns", "token": phone})).await;
    assert_eq!(channel["kind"], "apns");
    assert_eq!(channel["token"], phone.as_str());
    assert_eq!(channel["environment"], "production");
    let channel = register(
        &app,
        &bob_ipad,
        json!({"kind": "apns", "token": ipad, "environment": "sandbox"}),
    )
    .await;
    assert_eq!(channel["environment"], "sandbox");

    alice.sends(&app, &chat, "meet at the old mill").await;
    let on_phone = services.wait_for(&phone, 1).await.remove(0);
    let on_ipad = services.wait_for(&ipad, 1).await.remove(0);
    assert_eq!(on_phone.environment, Some("production"));
    assert_eq!(on_ipad.environment, Some("sandbox"));
    for push in [&on_phone, &on_ipad] {
        let seq = push.payload["seq"].as_i64().unwrap();
        assert_eq!(
            push.payload,
            json!({
                "aps": {"alert": {"title": "Natter", "body": "New message"}, "mutable-content": 1},
                "v": 1, "kind": "sync", "chat_id": chat, "count": 1, "seq": seq,
            })
        );
        assert_content_free(&push.raw, "old mill", "Lovelace");
    }
    // One provider token for both pushes: it is reused, not re-signed.
    assert_eq!(services.provider_tokens(), 1);
    services.check();
}

#[tokio::test]
async fn apns_answers_remove_channels_drive_retries_and_refresh_the_token() {
    let services = MobileServices::start().await;
    let keys = tempfile::tempdir().unwrap();
    let app = TestApp::start_with(|c| mobile(c, &services, keys.path())).await;
    let alice = app.signup("+14155550915", "Alice").await;
    let bob = app.signup("+14155550916", "Bob").await;
    let cleo = app.signup("+14155550917", "Cleo").await;
    let dan = app.signup("+14155550918", "Dan").await;
    let eve = app.signup("+14155550919", "Eve").await;
    let chat = alice
        .group_with(&app, "Apple", &[&bob, &cleo, &dan, &eve])
        .await;
    let (unregistered, bad, busy, expired) =
        (apns_token(), apns_token(), apns_token(), apns_token());
    for (user, token) in [
        (&bob, &unregistered),
        (&cleo, &bad),
        (&dan, &busy),
        (&eve, &expired),
    ] {
        register(&app, user, json!({"kind": "apns", "token": token})).await;
    }
    services.answer(
        &unregistered,
        &[(
            410,
            None,
            json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64}),
        )],
    );
    services.answer(&bad, &[(400, None, json!({"reason": "BadDeviceToken"}))]);
    services.answer(
        &busy,
        &[
            (429, Some(0), json!({"reason": "TooManyRequests"})),
            (503, None, json!({"reason": "ServiceUnavailable"})),
        ],
    );
    // Expired twice: one early refresh, then (not to refresh again within
    // 20 minutes) the outbox's retry with the new token.
    let expired_answer = (403, None, json!({"reason": "ExpiredProviderToken"}));
    services.answer(&expired, &[expired_answer.clone(), expired_answer]);

    alice.sends(&app, &chat, "ping").await;

    assert_eq!(services.wait_for(&busy, 1).await[0].payload["count"], 1);
    assert_eq!(services.requests(&busy), 3, "two failures, then the push");
    services.wait_for(&expired, 1).await;
    assert_eq!(
        services.requests(&expired),
        3,
        "refused, refreshed, refused, retried"
    );
    assert_eq!(
        services.provider_tokens(),
        2,
        "one new provider token after 403"
    );
    assert_eq!(
        app.metric(r#"natter_push_failed_total{reason="auth"}"#)
            .await,
        1.0
    );
    wait_metric(&app, r#"natter_push_dropped_total{reason="gone"}"#, 2.0).await;
    for (user, token) in [(&bob, &unregistered), (&cleo, &bad)] {
        assert_eq!(services.requests(token), 1);
        user.delete(&app, &push_path(user))
            .await
            .expect(404, "push_channel_not_found");
    }
    eve.delete(&app, &push_path(&eve)).await.ok(204);
    services.check();
}

#[tokio::test]
async fn mobile_tokens_are_validated_at_n_and_n_plus_one() {
    let services = MobileServices::start().await;
    let keys = tempfile::tempdir().unwrap();
    let app = TestApp::start_with(|c| {
        mobile(c, &services, keys.path());
        c.rate_limits.push_channels_per_user.burst = 1000;
    })
    .await;
    let alice = app.signup("+14155550920", "Alice").await;
    let path = push_path(&alice);
    let post = |body: Value| alice.post(&app, &path, body);
    let hex = |n: usize| "a1".repeat(n).chars().take(n).collect::<String>();
    for (token, status) in [
        (hex(63), 422),
        (hex(64), 201),
        (hex(200), 200),
        (hex(201), 422),
        (format!("{}g", hex(63)), 422),
        (format!("{} ", hex(64)), 422),
    ] {
        let answer = post(json!({"kind": "apns", "token": token})).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "apns {}: {answer:?}",
            token.len()
        );
        if status == 422 {
            answer.expect(422, "validation_failed");
        }
    }
    for environment in [json!("staging"), json!(1)] {
        post(json!({"kind": "apns", "token": hex(64), "environment": environment}))
            .await
            .expect(422, "validation_failed");
    }
    let printable = |n: usize| "A1b2:_-".repeat(n).chars().take(n).collect::<String>();
    for (token, status) in [
        (printable(4096), 200),
        (printable(4097), 422),
        (String::new(), 422),
        (format!("{} x", printable(10)), 422),
        (format!("{}\u{e9}", printable(10)), 422),
        (format!("{}\n", printable(10)), 422),
    ] {
        let answer = post(json!({"kind": "fcm", "token": token})).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "fcm {}: {answer:?}",
            token.len()
        );
    }
    for body in [
        json!({"kind": "fcm"}),
        json!({"kind": "fcm", "token": "abc", "endpoint": "https://1.1.1.1/x"}),
        json!({"kind": "apns", "token": hex(64), "keys": {}}),
    ] {
        post(body).await.expect(422, "validation_failed");
    }
    services.check();
}

#[tokio::test]
async fn mobile_channels_are_refused_where_their_service_is_off() {
    // Push on, FCM and APNs off (the defaults).
    let app = TestApp::start().await;
    let alice = app.signup("+14155550925", "Alice").await;
    for body in [
        json!({"kind": "fcm", "token": fcm_token()}),
        json!({"kind": "apns", "token": apns_token()}),
    ] {
        alice
            .post(&app, &push_path(&alice), body)
            .await
            .expect(400, "invalid_push_endpoint");
    }
}

#[tokio::test]
async fn a_node_with_unusable_mobile_keys_refuses_to_start_and_names_the_key() {
    let services = MobileServices::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (account, p8) = services.write_keys(dir.path());
    let attempts = std::cell::Cell::new(0);
    let base = || {
        attempts.set(attempts.get() + 1);
        let mut c = Config {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().join(format!("data-{}", attempts.get())),
            ..Config::default()
        };
        c.signup.mode = Some(natter_server::config::SignupMode::Open);
        c
    };
    let missing = dir.path().join("missing.json");
    let not_json = dir.path().join("not-json.json");
    std::fs::write(&not_json, "{").unwrap();
    let ec_as_account = dir.path().join("ec-account.json");
    let mut account_json: Value =
        serde_json::from_str(&std::fs::read_to_string(&account).unwrap()).unwrap();
    account_json["private_key"] = Value::from(std::fs::read_to_string(&p8).unwrap());
    std::fs::write(&ec_as_account, account_json.to_string()).unwrap();
    for (file, says) in [
        (&missing, "cannot read"),
        (&not_json, "not a service account"),
        (&ec_as_account, "RSA"),
    ] {
        let mut c = base();
        c.push.fcm.enabled = true;
        c.push.fcm.service_account_file = Some(file.clone());
        let e = RunningServer::start(c).await.unwrap_err().to_string();
        assert!(
            e.contains("`push.fcm.service_account_file`") && e.contains(says),
            "{e}"
        );
    }
    let rsa_as_p8 = dir.path().join("rsa.p8");
    std::fs::write(&rsa_as_p8, account_json_key(&account)).unwrap();
    let garbage = dir.path().join("garbage.p8");
    std::fs::write(&garbage, "not a key").unwrap();
    for (file, says) in [
        (dir.path().join("missing.p8"), "cannot read"),
        (garbage, "PKCS#8"),
        (rsa_as_p8, "P-256"),
    ] {
        let mut c = base();
        services.configure(dir.path(), &mut c);
        c.push.fcm.enabled = false;
        c.push.apns.key_file = Some(file);
        let e = RunningServer::start(c).await.unwrap_err().to_string();
        assert!(
            e.contains("`push.apns.key_file`") && e.contains(says),
            "{e}"
        );
    }
    // Configured properly, it starts.
    let mut c = base();
    services.configure(dir.path(), &mut c);
    RunningServer::start(c).await.unwrap().shutdown().await;
}

/// The RSA private key inside a service account file.
fn account_json_key(account: &std::path::Path) -> String {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(account).unwrap()).unwrap();
    v["private_key"].as_str().unwrap().to_owned()
}
