//! Sign-up mode `invite`: registration with invites made by the operator,
//! no SMS, and new devices logged in with a code made on an existing device.

use std::time::Duration;

use natter_server::config::SignupMode;
use serde_json::json;

use crate::support::TestApp;

async fn invite_only() -> TestApp {
    TestApp::start_with(|c| {
        c.sms_webhook_url = None;
        c.signup.mode = Some(SignupMode::Invite);
    })
    .await
}

#[tokio::test]
async fn an_invite_registers_one_account_and_no_code_is_ever_sent() {
    let app = invite_only().await;

    // No codes in this mode, with a stable code saying what to do instead.
    app.post(
        "/api/v1/users/verification",
        json!({"phone": "+1234567890"}),
    )
    .await
    .expect(403, "sms_disabled");

    // Registration needs an invite…
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+1234567890", "name": "John Doe"}),
    )
    .await
    .expect(422, "validation_failed");
    // …a real one.
    for wrong in ["nonsense", "inv_AAAAAAAAAAAAAAAAAAAAAA", "123456"] {
        app.post(
            "/api/v1/users/register",
            json!({"phone": "+1234567890", "name": "John Doe", "invite": wrong}),
        )
        .await
        .expect(401, "invalid_invite");
    }

    let invite = app.invite(1, None).await;
    assert!(invite.starts_with("inv_"), "{invite}");
    let registered = app
        .post(
            "/api/v1/users/register",
            json!({"phone": "+1234567890", "name": "John Doe", "invite": invite}),
        )
        .await
        .ok(201);
    assert_eq!(registered["user"]["phone"], "+1234567890");
    let token = registered["access_token"].as_str().unwrap();
    app.call(reqwest::Method::GET, "/api/v1/users/me", Some(token), None)
        .await
        .ok(200);

    // Single use.
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+14155550123", "name": "Eve", "invite": invite}),
    )
    .await
    .expect(401, "invalid_invite");
    assert_eq!(app.sms.count("+1234567890"), 0, "no SMS in invite mode");
}

#[tokio::test]
async fn multi_use_expired_and_revoked_invites_and_a_taken_number_keeps_the_use() {
    let app = invite_only().await;
    let twice = app.invite(2, None).await;

    // A taken number does not use the invite up.
    let first = app
        .post(
            "/api/v1/users/register",
            json!({"phone": "+14155550101", "name": "A", "invite": twice}),
        )
        .await
        .ok(201);
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+14155550101", "name": "A again", "invite": twice}),
    )
    .await
    .expect(409, "phone_taken");
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+14155550102", "name": "B", "invite": twice}),
    )
    .await
    .ok(201);
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+14155550103", "name": "C", "invite": twice}),
    )
    .await
    .expect(401, "invalid_invite");
    assert!(first["user_id"].is_string());

    let expiring = app.invite(5, Some(Duration::from_millis(1))).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+14155550104", "name": "D", "invite": expiring}),
    )
    .await
    .expect(401, "invalid_invite");

    let services = app.services();
    let revoked = services
        .admin_create_invite(5, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(
        services
            .admin_revoke_invite(revoked.record.id)
            .await
            .unwrap()
    );
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+14155550105", "name": "E", "invite": revoked.token.expose()}),
    )
    .await
    .expect(401, "invalid_invite");

    // The list shows uses; only hashes are stored, never the invite.
    let listed = services.admin_invites().await.unwrap();
    let used = listed.iter().find(|i| i.max_uses == 2).unwrap();
    assert_eq!(used.uses, 2);
    let copies = app.stored_copies(&[twice.as_bytes()]).await;
    assert!(
        copies.is_empty(),
        "an invite was stored in plain: {copies:?}"
    );
}

#[tokio::test]
async fn in_invite_mode_a_second_device_logs_in_with_a_code_from_the_first() {
    let app = invite_only().await;
    let invite = app.invite(1, None).await;
    let first = app
        .post(
            "/api/v1/users/register",
            json!({"phone": "+1234567890", "name": "John Doe", "invite": invite, "device_name": "Phone"}),
        )
        .await
        .ok(201);
    let token = first["access_token"].as_str().unwrap();

    // Without a token, no code.
    app.post("/api/v1/devices/login-code", json!({}))
        .await
        .expect(401, "unauthorized");
    let issued = app
        .call(
            reqwest::Method::POST,
            "/api/v1/devices/login-code",
            Some(token),
            None,
        )
        .await
        .ok(201);
    assert_eq!(issued["phone"], "+1234567890");
    assert_eq!(issued["expires_in"], 300);
    let code = issued["code"].as_str().unwrap();

    // The seed's login body, verbatim but for the code.
    let laptop = app
        .post(
            "/api/v1/users/login",
            json!({"phone": "+1234567890", "verification_code": code, "device_name": "Laptop"}),
        )
        .await
        .ok(200);
    assert_eq!(laptop["user_id"], first["user_id"]);
    // Single use.
    app.post(
        "/api/v1/users/login",
        json!({"phone": "+1234567890", "verification_code": code}),
    )
    .await
    .expect(401, "invalid_verification_code");
}

#[tokio::test]
async fn in_sms_mode_register_needs_a_code_and_a_device_can_still_make_a_login_code() {
    let app = TestApp::start().await;
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+14155550110", "name": "No code"}),
    )
    .await
    .expect(422, "validation_failed");
    let alice = app.signup("+14155550111", "Alice").await;
    let issued = alice
        .post(&app, "/api/v1/devices/login-code", json!({}))
        .await
        .ok(201);
    app.post(
        "/api/v1/users/login",
        json!({"phone": "+14155550111", "verification_code": issued["code"]}),
    )
    .await
    .ok(200);
}
