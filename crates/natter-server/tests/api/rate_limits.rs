//! The rate-limit table answers 429 with `Retry-After`.

use natter_server::config::Rate;
use serde_json::json;

use crate::support::{Answer, TestApp};

#[track_caller]
fn assert_rate_limited(answer: &Answer) {
    answer.expect(429, "rate_limited");
    let retry: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After is at least a second");
}

#[tokio::test]
async fn codes_per_number_are_limited() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.verification_per_phone = Rate {
            burst: 3,
            per_secs: 3600,
        }
    })
    .await;
    let phone = "+14155550200";
    for _ in 0..3 {
        app.post("/api/v1/users/verification", json!({ "phone": phone }))
            .await
            .ok(202);
    }
    let refused = app
        .post("/api/v1/users/verification", json!({ "phone": phone }))
        .await;
    assert_rate_limited(&refused);
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry > 60 && retry <= 1200,
        "one code comes back every 20 minutes: {retry}"
    );
    assert_eq!(app.sms.count(phone), 3, "no SMS for the refused request");
    // Another number is not affected.
    app.post(
        "/api/v1/users/verification",
        json!({"phone": "+14155550201"}),
    )
    .await
    .ok(202);
}

#[tokio::test]
async fn codes_per_client_address_are_limited() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.verification_per_ip = Rate {
            burst: 4,
            per_secs: 3600,
        }
    })
    .await;
    for i in 0..4 {
        app.post(
            "/api/v1/users/verification",
            json!({ "phone": format!("+1415555021{i}") }),
        )
        .await
        .ok(202);
    }
    assert_rate_limited(
        &app.post(
            "/api/v1/users/verification",
            json!({"phone": "+14155550219"}),
        )
        .await,
    );
}

#[tokio::test]
async fn the_global_budget_is_limited() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.verification_global = Rate {
            burst: 2,
            per_secs: 3600,
        }
    })
    .await;
    app.post(
        "/api/v1/users/verification",
        json!({"phone": "+14155550220"}),
    )
    .await
    .ok(202);
    app.post(
        "/api/v1/users/verification",
        json!({"phone": "+14155550221"}),
    )
    .await
    .ok(202);
    assert_rate_limited(
        &app.post(
            "/api/v1/users/verification",
            json!({"phone": "+14155550222"}),
        )
        .await,
    );
}

#[tokio::test]
async fn code_attempts_per_client_address_are_limited() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.code_attempts_per_ip = Rate {
            burst: 3,
            per_secs: 3600,
        }
    })
    .await;
    for i in 0..3 {
        app.post(
            "/api/v1/users/login",
            json!({"phone": format!("+1415555023{i}"), "verification_code": "123456"}),
        )
        .await
        .expect(401, "invalid_verification_code");
    }
    assert_rate_limited(
        &app.post(
            "/api/v1/users/login",
            json!({"phone": "+14155550239", "verification_code": "123456"}),
        )
        .await,
    );
}

#[tokio::test]
async fn discovery_per_user_is_limited() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.discover_per_user = Rate {
            burst: 2,
            per_secs: 3600,
        }
    })
    .await;
    let alice = app.signup("+14155550240", "Alice").await;
    let bob = app.signup("+14155550241", "Bob").await;
    for _ in 0..2 {
        alice
            .post(
                &app,
                "/api/v1/users/contacts/discover",
                json!({"phones": []}),
            )
            .await
            .ok(200);
    }
    assert_rate_limited(
        &alice
            .post(
                &app,
                "/api/v1/users/contacts/discover",
                json!({"phones": []}),
            )
            .await,
    );
    // Per user: Bob still may.
    bob.post(
        &app,
        "/api/v1/users/contacts/discover",
        json!({"phones": []}),
    )
    .await
    .ok(200);
}
