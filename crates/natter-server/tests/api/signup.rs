//! Verification codes, register and login.

use serde_json::json;

use crate::support::{TestApp, WAIT};

const SEED_PHONE: &str = "+1234567890";

#[tokio::test]
async fn the_seed_sign_up_and_login_bodies_work_verbatim() {
    let app = TestApp::start().await;

    // POST /api/v1/users/verification {"phone": "+1234567890"}
    let sent = app
        .post(
            "/api/v1/users/verification",
            json!({"phone": "+1234567890"}),
        )
        .await
        .ok(202);
    assert_eq!(sent, json!({"phone": "+1234567890", "expires_in": 300}));
    let code = app.sms.wait_for(SEED_PHONE, WAIT).await.unwrap();
    assert_eq!(code.len(), 6);

    // The seed's register body, with the code we received instead of 123456.
    let registered = app
        .post(
            "/api/v1/users/register",
            json!({"phone": "+1234567890", "name": "John Doe", "verification_code": code}),
        )
        .await
        .ok(201);
    let token = registered["access_token"].as_str().unwrap();
    assert!(
        token.starts_with("nat_") && token.len() >= 4 + 43,
        "{token}"
    );
    assert_eq!(registered["token_type"], "Bearer");
    assert_eq!(registered["user"]["name"], "John Doe");
    assert_eq!(registered["user"]["phone"], "+1234567890");
    assert_eq!(registered["user"]["user_id"], registered["user_id"]);
    assert!(registered["device_id"].is_string());
    // Timestamps: RFC 3339, UTC, always milliseconds.
    let created = registered["user"]["created_at"].as_str().unwrap();
    assert_eq!(created.len(), "2026-11-28T03:06:05.590Z".len(), "{created}");
    assert!(
        created.ends_with('Z') && created.as_bytes()[19] == b'.',
        "{created}"
    );

    // The seed's login body.
    let code = app.code_for(SEED_PHONE).await;
    let logged_in = app
        .post(
            "/api/v1/users/login",
            json!({"phone": "+1234567890", "verification_code": code}),
        )
        .await
        .ok(200);
    assert_eq!(logged_in["user_id"], registered["user_id"]);
    assert_ne!(
        logged_in["device_id"], registered["device_id"],
        "login makes a new device"
    );
    assert_ne!(logged_in["access_token"], registered["access_token"]);

    // Both tokens work, and both devices are listed.
    for t in [&registered["access_token"], &logged_in["access_token"]] {
        let me = app
            .call(reqwest::Method::GET, "/api/v1/users/me", t.as_str(), None)
            .await
            .ok(200);
        assert_eq!(me["user_id"], registered["user_id"]);
    }
    let devices = app
        .call(
            reqwest::Method::GET,
            "/api/v1/devices",
            logged_in["access_token"].as_str(),
            None,
        )
        .await
        .ok(200);
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn numbers_are_normalised_to_e164() {
    let app = TestApp::start().await;
    let sent = app
        .post(
            "/api/v1/users/verification",
            json!({"phone": "+1 (415) 555-0123"}),
        )
        .await
        .ok(202);
    assert_eq!(sent["phone"], "+14155550123");
    let code = app.sms.wait_for("+14155550123", WAIT).await.unwrap();
    // Register with the number written another way: it is the same number.
    app.post(
        "/api/v1/users/register",
        json!({"phone": "0014155550123", "name": "Ann", "verification_code": code}),
    )
    .await
    .ok(201);
}

#[tokio::test]
async fn invalid_numbers_are_a_400() {
    let app = TestApp::start().await;
    for bad in ["12345", "+", "not a number", "+999 1234567", "+1 234"] {
        app.post("/api/v1/users/verification", json!({ "phone": bad }))
            .await
            .expect(400, "invalid_phone");
    }
}

#[tokio::test]
async fn strict_validation_refuses_numbers_outside_the_numbering_plan() {
    let app = TestApp::start_with(|c| {
        c.phone_validation = natter_server::phone::PhoneValidation::Strict;
    })
    .await;
    app.post("/api/v1/users/verification", json!({"phone": SEED_PHONE}))
        .await
        .expect(400, "invalid_phone");
    app.post(
        "/api/v1/users/verification",
        json!({"phone": "+14155550123"}),
    )
    .await
    .ok(202);
}

#[tokio::test]
async fn five_wrong_codes_kill_the_code() {
    let app = TestApp::start().await;
    let phone = "+14155550100";
    let code = app.code_for(phone).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        app.post(
            "/api/v1/users/register",
            json!({"phone": phone, "name": "Eve", "verification_code": wrong}),
        )
        .await
        .expect(401, "invalid_verification_code");
    }
    // The right code no longer works.
    app.post(
        "/api/v1/users/register",
        json!({"phone": phone, "name": "Eve", "verification_code": code}),
    )
    .await
    .expect(401, "invalid_verification_code");
    // A new code does.
    let code = app.code_for(phone).await;
    app.post(
        "/api/v1/users/register",
        json!({"phone": phone, "name": "Eve", "verification_code": code}),
    )
    .await
    .ok(201);
}

#[tokio::test]
async fn four_wrong_codes_leave_the_right_one_working() {
    let app = TestApp::start().await;
    let phone = "+14155550101";
    let code = app.code_for(phone).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..4 {
        app.post(
            "/api/v1/users/register",
            json!({"phone": phone, "name": "Al", "verification_code": wrong}),
        )
        .await
        .expect(401, "invalid_verification_code");
    }
    app.post(
        "/api/v1/users/register",
        json!({"phone": phone, "name": "Al", "verification_code": code}),
    )
    .await
    .ok(201);
}

#[tokio::test]
async fn a_code_works_once() {
    let app = TestApp::start().await;
    let phone = "+14155550102";
    let code = app.code_for(phone).await;
    app.post(
        "/api/v1/users/register",
        json!({"phone": phone, "name": "Bo", "verification_code": code}),
    )
    .await
    .ok(201);
    app.post(
        "/api/v1/users/login",
        json!({"phone": phone, "verification_code": code}),
    )
    .await
    .expect(401, "invalid_verification_code");
}

#[tokio::test]
async fn an_expired_code_fails() {
    let app = TestApp::start_with(|c| c.verification.code_ttl_secs = 1).await;
    let phone = "+14155550103";
    let code = app.code_for(phone).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    app.post(
        "/api/v1/users/register",
        json!({"phone": phone, "name": "Cy", "verification_code": code}),
    )
    .await
    .expect(401, "invalid_verification_code");
}

#[tokio::test]
async fn a_new_code_replaces_the_old_one() {
    let app = TestApp::start().await;
    let phone = "+14155550104";
    let first = app.code_for(phone).await;
    let second = app.code_for(phone).await;
    if first != second {
        app.post(
            "/api/v1/users/register",
            json!({"phone": phone, "name": "Di", "verification_code": first}),
        )
        .await
        .expect(401, "invalid_verification_code");
    }
    app.post(
        "/api/v1/users/register",
        json!({"phone": phone, "name": "Di", "verification_code": second}),
    )
    .await
    .ok(201);
}

#[tokio::test]
async fn registering_a_taken_number_is_a_409_after_the_code_is_checked() {
    let app = TestApp::start().await;
    let phone = "+14155550105";
    app.signup(phone, "First").await;
    // Without a valid code the answer does not reveal that the number is taken.
    app.post(
        "/api/v1/users/register",
        json!({"phone": phone, "name": "Second", "verification_code": "123456"}),
    )
    .await
    .expect(401, "invalid_verification_code");
    let code = app.code_for(phone).await;
    app.post(
        "/api/v1/users/register",
        json!({"phone": phone, "name": "Second", "verification_code": code}),
    )
    .await
    .expect(409, "phone_taken");
    // The code was not consumed by the refused registration, and right tries
    // do not count as wrong ones: after five more refusals it still logs in.
    for _ in 0..5 {
        app.post(
            "/api/v1/users/register",
            json!({"phone": phone, "name": "Second", "verification_code": code}),
        )
        .await
        .expect(409, "phone_taken");
    }
    app.post(
        "/api/v1/users/login",
        json!({"phone": phone, "verification_code": code}),
    )
    .await
    .ok(200);
}

#[tokio::test]
async fn login_on_an_unknown_number_answers_exactly_like_a_wrong_code() {
    let app = TestApp::start().await;
    let known = "+14155550106";
    let unknown = "+14155550107";
    app.signup(known, "Known").await;

    let code = app.code_for(known).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let wrong_code = app
        .post(
            "/api/v1/users/login",
            json!({"phone": known, "verification_code": wrong}),
        )
        .await;
    let no_code = app
        .post(
            "/api/v1/users/login",
            json!({"phone": unknown, "verification_code": "123456"}),
        )
        .await;
    // Even with a valid code for it, an unregistered number cannot log in.
    let code = app.code_for(unknown).await;
    let valid_code = app
        .post(
            "/api/v1/users/login",
            json!({"phone": unknown, "verification_code": code}),
        )
        .await;

    for answer in [&no_code, &valid_code] {
        assert_eq!(answer.status, wrong_code.status);
        assert_eq!(answer.body, wrong_code.body);
    }
    wrong_code.expect(401, "invalid_verification_code");
    // And that code still registers the number.
    app.post(
        "/api/v1/users/register",
        json!({"phone": unknown, "name": "New", "verification_code": code}),
    )
    .await
    .ok(201);
}

#[tokio::test]
async fn a_failing_sms_gateway_is_a_502() {
    let app = TestApp::start().await;
    app.sms.fail();
    app.post(
        "/api/v1/users/verification",
        json!({"phone": "+14155550108"}),
    )
    .await
    .expect(502, "sms_delivery_failed");
}

#[tokio::test]
async fn device_names_are_kept_and_bounded() {
    let app = TestApp::start_with(|c| c.limits.max_device_name_chars = 8).await;
    let phone = "+14155550109";
    let code = app.code_for(phone).await;
    let too_long = app
        .post(
            "/api/v1/users/register",
            json!({"phone": phone, "name": "Fi", "verification_code": code, "device_name": "123456789"}),
        )
        .await;
    too_long.expect(422, "validation_failed");
    let body = app
        .post(
            "/api/v1/users/register",
            json!({"phone": phone, "name": "Fi", "verification_code": code, "device_name": "12345678"}),
        )
        .await
        .ok(201);
    let devices = app
        .call(
            reqwest::Method::GET,
            "/api/v1/devices",
            body["access_token"].as_str(),
            None,
        )
        .await
        .ok(200);
    assert_eq!(devices["devices"][0]["name"], "12345678");
    assert_eq!(devices["devices"][0]["current"], true);
}

#[tokio::test]
async fn a_trunk_zero_after_the_country_code_reaches_the_same_account() {
    let app = TestApp::start().await;
    app.signup("+447700900123", "Uma").await;
    let sent = app
        .post(
            "/api/v1/users/verification",
            json!({"phone": "+44 (0)7700 900123"}),
        )
        .await
        .ok(202);
    assert_eq!(sent["phone"], "+447700900123");
    let code = app.sms.wait_for("+447700900123", WAIT).await.unwrap();
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+44 (0)7700 900123", "name": "Uma 2", "verification_code": code}),
    )
    .await
    .expect(409, "phone_taken");
}
