//! Malformed input of every kind gets a typed 4xx, never a 500; and each
//! body limit holds at N and fails at N+1.

use reqwest::Method;
use serde_json::json;

use crate::support::TestApp;

const VERIFY: &str = "/api/v1/users/verification";

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::start().await;
    for body in [
        "{",
        "{\"phone\": }",
        "not json",
        "",
        "{\"phone\": \"+1\"} trailing",
    ] {
        app.raw(Method::POST, VERIFY, "application/json", body)
            .await
            .expect(400, "invalid_json");
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = TestApp::start().await;
    app.raw(
        Method::POST,
        VERIFY,
        "text/plain",
        r#"{"phone":"+14155550600"}"#,
    )
    .await
    .expect(415, "unsupported_media_type");
    app.raw(
        Method::POST,
        VERIFY,
        "application/x-www-form-urlencoded",
        "phone=%2B14155550600",
    )
    .await
    .expect(415, "unsupported_media_type");
    // With a charset parameter it is still JSON.
    let ok = app
        .raw(
            Method::POST,
            VERIFY,
            "application/json; charset=utf-8",
            r#"{"phone":"+14155550600"}"#,
        )
        .await;
    assert_eq!(ok.status, 202);
}

#[tokio::test]
async fn wrong_shapes_are_422() {
    let app = TestApp::start().await;
    let cases = [
        json!({}),
        json!({"phone": 14155550601_u64}),
        json!({"phone": null}),
        json!({"phone": "+14155550601", "extra": true}),
        json!(["+14155550601"]),
    ];
    for body in cases {
        app.post(VERIFY, body)
            .await
            .expect(422, "validation_failed");
    }
    // Unknown fields on security-relevant bodies are refused.
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+14155550601", "name": "X", "verification_code": "123456", "user_id": "x"}),
    )
    .await
    .expect(422, "validation_failed");
    app.post(
        "/api/v1/users/login",
        json!({"phone": "+14155550601", "verification_code": "123456", "admin": true}),
    )
    .await
    .expect(422, "validation_failed");
}

#[tokio::test]
async fn bodies_are_limited_at_n_bytes() {
    let limit = 512;
    let app = TestApp::start_with(|c| c.limits.max_body_bytes = limit).await;
    let body_of = |len: usize| {
        let head = r#"{"phone":"+14155550602"}"#;
        format!("{head}{}", " ".repeat(len - head.len()))
    };
    let at_limit = app
        .raw(Method::POST, VERIFY, "application/json", body_of(limit))
        .await;
    assert_eq!(at_limit.status, 202, "{at_limit:?}");
    app.raw(Method::POST, VERIFY, "application/json", body_of(limit + 1))
        .await
        .expect(413, "payload_too_large");
    // A huge string is stopped by the same limit, before parsing.
    app.post(VERIFY, json!({"phone": "1".repeat(1_000_000)}))
        .await
        .expect(413, "payload_too_large");
}

#[tokio::test]
async fn nesting_is_limited_at_n_levels() {
    let app = TestApp::start_with(|c| c.limits.max_json_depth = 4).await;
    // Depth 4 passes the depth check and fails on shape.
    app.raw(
        Method::POST,
        VERIFY,
        "application/json",
        r#"{"phone":[[["x"]]]}"#,
    )
    .await
    .expect(422, "validation_failed");
    app.raw(
        Method::POST,
        VERIFY,
        "application/json",
        r#"{"phone":[[[["x"]]]]}"#,
    )
    .await
    .expect(400, "invalid_json");
    // Far deeper than serde's own recursion limit: still a clean 400.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    app.raw(Method::POST, VERIFY, "application/json", deep)
        .await
        .expect(400, "invalid_json");
}

#[tokio::test]
async fn long_strings_inside_the_body_limit_are_422() {
    let app = TestApp::start().await;
    let user = app.signup("+14155550603", "Gus").await;
    user.patch(&app, "/api/v1/users/me", json!({"about": "x".repeat(5000)}))
        .await
        .expect(422, "validation_failed");
    app.post(VERIFY, json!({"phone": format!("+1{}", "5".repeat(100))}))
        .await
        .expect(400, "invalid_phone");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_json() {
    let app = TestApp::start().await;
    app.call(Method::GET, "/api/v1/nothing-here", None, None)
        .await
        .expect(404, "not_found");
    app.call(Method::DELETE, VERIFY, None, None)
        .await
        .expect(405, "method_not_allowed");
    app.call(Method::GET, "/api/v1/users/register", None, None)
        .await
        .expect(405, "method_not_allowed");
}

#[tokio::test]
async fn a_request_over_its_time_limit_is_408() {
    let app = TestApp::start_with(|c| c.limits.request_timeout_secs = 1).await;
    app.sms.slow_down(std::time::Duration::from_secs(3));
    app.post(VERIFY, json!({"phone": "+14155550604"}))
        .await
        .expect(408, "request_timeout");
}

#[tokio::test]
async fn a_declared_oversize_body_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /api/v1/users/verification HTTP/1.1\r\nHost: t\r\n\
              Content-Type: application/json\r\nContent-Length: 99999999999\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(crate::support::WAIT, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test]
async fn shape_errors_do_not_show_rust_type_names() {
    let app = TestApp::start().await;
    let answer = app
        .raw(Method::POST, VERIFY, "application/json", "null")
        .await;
    answer.expect(422, "validation_failed");
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(!message.contains("struct"), "{message}");
    assert!(message.contains("JSON object"), "{message}");
}
