//! Tokens, logout, device lists and revocation.

use reqwest::Method;
use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn requests_without_a_valid_token_are_401() {
    let app = TestApp::start().await;
    let forged = format!("nat_{}", "A".repeat(43));
    for token in [None, Some("garbage"), Some(forged.as_str())] {
        let answer = app.call(Method::GET, "/api/v1/users/me", token, None).await;
        answer.expect(401, "unauthorized");
        assert_eq!(answer.headers["www-authenticate"], "Bearer");
    }
    // A scheme other than Bearer is refused too.
    let user = app.signup("+14155550300", "Tess").await;
    let res = app
        .http
        .get(format!("{}/api/v1/users/me", app.base))
        .header("authorization", format!("Basic {}", user.token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn logout_revokes_only_the_current_device() {
    let app = TestApp::start().await;
    let phone = "+14155550301";
    let laptop = app.signup(phone, "Lou").await;
    let phone_device = app.login(phone, "Phone").await;

    laptop
        .post(&app, "/api/v1/users/logout", json!({}))
        .await
        .ok(204);
    laptop
        .get(&app, "/api/v1/users/me")
        .await
        .expect(401, "unauthorized");
    let devices = phone_device.get(&app, "/api/v1/devices").await.ok(200);
    let devices = devices["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["device_id"], phone_device.device_id.as_str());
    assert_eq!(devices[0]["name"], "Phone");
}

#[tokio::test]
async fn a_device_can_revoke_another_of_the_same_user_only() {
    let app = TestApp::start().await;
    let phone = "+14155550302";
    let a = app.signup(phone, "Mo").await;
    let b = app.login(phone, "Tablet").await;
    let stranger = app.signup("+14155550303", "Stranger").await;

    // Someone else's device is "not found", exactly like a missing one.
    stranger
        .delete(&app, &format!("/api/v1/devices/{}", b.device_id))
        .await
        .expect(404, "device_not_found");
    stranger
        .delete(&app, &format!("/api/v1/devices/{}", uuid_like()))
        .await
        .expect(404, "device_not_found");
    stranger
        .delete(&app, "/api/v1/devices/not-an-id")
        .await
        .expect(404, "device_not_found");
    b.get(&app, "/api/v1/users/me").await.ok(200);

    a.delete(&app, &format!("/api/v1/devices/{}", b.device_id))
        .await
        .ok(204);
    b.get(&app, "/api/v1/users/me")
        .await
        .expect(401, "unauthorized");
    a.get(&app, "/api/v1/users/me").await.ok(200);
    a.delete(&app, &format!("/api/v1/devices/{}", b.device_id))
        .await
        .expect(404, "device_not_found");
}

fn uuid_like() -> String {
    "01900000-0000-7000-8000-000000000000".to_owned()
}

#[tokio::test]
async fn devices_per_user_are_limited_at_n() {
    let app = TestApp::start_with(|c| c.limits.max_devices_per_user = 3).await;
    let phone = "+14155550304";
    let first = app.signup(phone, "Nia").await;
    app.login(phone, "two").await;
    app.login(phone, "three").await;
    let code = app.code_for(phone).await;
    app.post(
        "/api/v1/users/login",
        json!({"phone": phone, "verification_code": code}),
    )
    .await
    .expect(409, "device_limit_reached");
    // Refusals at the limit neither consume the code nor count as wrong tries.
    for _ in 0..5 {
        app.post(
            "/api/v1/users/login",
            json!({"phone": phone, "verification_code": code}),
        )
        .await
        .expect(409, "device_limit_reached");
    }
    // Freeing a slot lets the same code in.
    first
        .post(&app, "/api/v1/users/logout", json!({}))
        .await
        .ok(204);
    app.post(
        "/api/v1/users/login",
        json!({"phone": phone, "verification_code": code}),
    )
    .await
    .ok(200);
}

#[tokio::test]
async fn a_deactivated_account_loses_its_devices_and_sockets_and_cannot_log_in() {
    let app = TestApp::start().await;
    let ann = app.signup("+14155550390", "Ann").await;
    let mut socket = ann.connect(&app).await;
    let id: natter_proto::UserId = ann.user_id.parse().unwrap();

    let outcome = app.services().admin_deactivate_user(id).await.unwrap();
    assert!(
        matches!(outcome, natter_server::store::admin::Deactivated::Done(ref d) if d.len() == 1),
        "{outcome:?}"
    );
    assert!(
        socket.next_or_close().await.is_err(),
        "the live socket is closed"
    );
    app.call(Method::GET, "/api/v1/users/me", Some(&ann.token), None)
        .await
        .expect(401, "unauthorized");
    // A right code no longer logs in: answered like a wrong one.
    let code = app.code_for(&ann.phone).await;
    app.post(
        "/api/v1/users/login",
        json!({"phone": ann.phone, "verification_code": code}),
    )
    .await
    .expect(401, "invalid_verification_code");
    // And the number stays taken.
    let code = app.code_for(&ann.phone).await;
    app.post(
        "/api/v1/users/register",
        json!({"phone": ann.phone, "name": "Ann again", "verification_code": code}),
    )
    .await
    .expect(409, "phone_taken");
}
