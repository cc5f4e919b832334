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

/// Asks for a code for `phone` from the client address `from` (any
/// 127.0.0.0/8 address is this machine's loopback).
async fn code_from(app: &TestApp, from: &str, phone: &str) -> Answer {
    let http = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    TestApp::answer(
        http.post(format!("{}/api/v1/users/verification", app.base))
            .json(&json!({ "phone": phone })),
    )
    .await
}

/// Asks for a code for `phone` as if from `client` behind a trusted proxy.
async fn code_forwarded_for(app: &TestApp, client: &str, phone: &str) -> Answer {
    TestApp::answer(
        app.http
            .post(format!("{}/api/v1/users/verification", app.base))
            .header("x-forwarded-for", client)
            .json(&json!({ "phone": phone })),
    )
    .await
}

const LOTS: Rate = Rate {
    burst: 10_000,
    per_secs: 60,
};

#[tokio::test]
async fn sms_pumping_through_one_number_block_from_many_addresses_is_stopped() {
    let app = TestApp::start().await;
    let mut sent = 0;
    for i in 0..60u32 {
        let from = format!("127.0.0.{}", 10 + i % 6);
        let phone = format!("+1415999{i:04}");
        let answer = code_from(&app, &from, &phone).await;
        if answer.status == 202 {
            sent += 1;
        } else {
            assert_rate_limited(&answer);
        }
    }
    let delivered: usize = (0..60u32)
        .map(|i| app.sms.count(&format!("+1415999{i:04}")))
        .sum();
    assert_eq!(sent, 10, "the default block budget is 10 an hour");
    assert_eq!(delivered, 10);
}

#[tokio::test]
async fn codes_per_client_network_are_limited_at_n() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.verification_per_network = Rate {
            burst: 3,
            per_secs: 3600,
        };
        c.rate_limits.verification_per_prefix = LOTS;
    })
    .await;
    // Three addresses of one /24, numbers in different blocks.
    for (i, from) in ["127.0.0.10", "127.0.0.11", "127.0.0.12"]
        .iter()
        .enumerate()
    {
        code_from(&app, from, &format!("+1415555{i}100"))
            .await
            .ok(202);
    }
    assert_rate_limited(&code_from(&app, "127.0.0.13", "+14155553100").await);
    // Another /24 has its own budget.
    code_from(&app, "127.0.1.10", "+14155554100").await.ok(202);
}

#[tokio::test]
async fn codes_per_number_block_are_limited_at_n() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.verification_per_prefix = Rate {
            burst: 3,
            per_secs: 3600,
        };
    })
    .await;
    for i in 0..3 {
        app.post(
            "/api/v1/users/verification",
            json!({ "phone": format!("+1415999000{i}") }),
        )
        .await
        .ok(202);
    }
    assert_rate_limited(
        &app.post(
            "/api/v1/users/verification",
            json!({"phone": "+14159999999"}),
        )
        .await,
    );
    // The next block is not affected.
    app.post(
        "/api/v1/users/verification",
        json!({"phone": "+14159980000"}),
    )
    .await
    .ok(202);
}

#[tokio::test]
async fn codes_per_country_are_limited_at_n() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.verification_per_country = Rate {
            burst: 3,
            per_secs: 600,
        };
    })
    .await;
    for block in ["415555", "212555", "617555"] {
        app.post(
            "/api/v1/users/verification",
            json!({ "phone": format!("+1{block}0100") }),
        )
        .await
        .ok(202);
    }
    assert_rate_limited(
        &app.post(
            "/api/v1/users/verification",
            json!({"phone": "+13125550100"}),
        )
        .await,
    );
    app.post(
        "/api/v1/users/verification",
        json!({"phone": "+442079460958"}),
    )
    .await
    .ok(202);
}

#[tokio::test]
async fn an_ipv6_client_is_one_address_per_64_and_one_network_per_48() {
    let app = TestApp::start_with(|c| {
        c.trust_forwarded_for = true;
        c.rate_limits.verification_per_ip = Rate {
            burst: 2,
            per_secs: 3600,
        };
        c.rate_limits.verification_per_network = Rate {
            burst: 3,
            per_secs: 3600,
        };
        c.rate_limits.verification_per_prefix = LOTS;
    })
    .await;
    code_forwarded_for(&app, "2001:db8:1:2::1", "+14155556001")
        .await
        .ok(202);
    code_forwarded_for(&app, "2001:db8:1:2:ffff::2", "+14155557001")
        .await
        .ok(202);
    // A third address of the same /64 is the same client.
    assert_rate_limited(&code_forwarded_for(&app, "2001:db8:1:2::3", "+14155558001").await);
    // Another /64 of the same /48: its own address budget, the network's last code.
    code_forwarded_for(&app, "2001:db8:1:3::1", "+14155559001")
        .await
        .ok(202);
    assert_rate_limited(&code_forwarded_for(&app, "2001:db8:1:4::1", "+14155550001").await);
    // Another /48 is another network.
    code_forwarded_for(&app, "2001:db8:2::1", "+14155551001")
        .await
        .ok(202);
}
