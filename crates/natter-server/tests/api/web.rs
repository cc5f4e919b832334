//! The browser client at `/` (embedded files, headers, gzip, ETags) and the
//! API's CORS policy (closed by default, open to the configured origins).

use reqwest::Method;

use crate::support::TestApp;

const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval';";

#[tokio::test]
async fn the_app_is_served_at_the_root_with_a_strict_policy() {
    let app = TestApp::start().await;
    let res = app.http.get(format!("{}/", app.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with(CSP), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("http"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.get("content-encoding").is_none(), "no gzip unless asked");
    assert!(h.get("access-control-allow-origin").is_none());
    let body = res.text().await.unwrap();
    assert!(body.contains("<script type=\"module\" src=\"/app.js\">"));
    // No inline script: the policy would refuse it.
    assert!(!body.contains("<script>"));

    let wasm = app
        .http
        .get(format!("{}/pkg/natter_web_bg.wasm", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(wasm.status(), 200);
    assert_eq!(wasm.headers()["content-type"], "application/wasm");
    assert_eq!(&wasm.bytes().await.unwrap()[..4], b"\0asm");
}

#[tokio::test]
async fn gzip_when_accepted_and_not_modified_by_etag() {
    let app = TestApp::start().await;
    let url = format!("{}/app.js", app.base);
    let plain = app.http.get(&url).send().await.unwrap();
    let etag = plain.headers()["etag"].clone();
    let plain = plain.bytes().await.unwrap();
    let gz = app
        .http
        .get(&url)
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(gz.headers()["vary"], "accept-encoding");
    let gz = gz.bytes().await.unwrap();
    assert!(gz.len() < plain.len());
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "a gzip stream");
    let again = app
        .http
        .get(&url)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn web_enabled_false_serves_the_api_alone() {
    let app = TestApp::start_with(|c| c.web.enabled = false).await;
    app.call(Method::GET, "/", None, None)
        .await
        .expect(404, "not_found");
    let res = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn cors_is_closed_by_default() {
    let app = TestApp::start().await;
    let res = app
        .http
        .request(Method::OPTIONS, format!("{}/api/v1/chats", app.base))
        .header("origin", "https://elsewhere.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let res = app
        .http
        .get(format!("{}/api/v1/users/me", app.base))
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cors_opens_to_the_configured_origins_only() {
    let app = TestApp::start_with(|c| {
        c.web.cors_origins = vec!["https://chat.example.org".to_owned()];
    })
    .await;
    let preflight = |origin: &'static str| {
        app.http
            .request(Method::OPTIONS, format!("{}/api/v1/chats", app.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight("https://chat.example.org").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://chat.example.org"
    );
    assert!(
        ok.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    assert_eq!(ok.headers()["access-control-max-age"], "600");
    let other = preflight("https://chat.example.org.evil.example")
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let res = app
        .http
        .get(format!("{}/api/v1/users/me", app.base))
        .header("origin", "https://chat.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://chat.example.org"
    );
}
