//! Health, readiness, metrics and the OpenAPI document.

use reqwest::Method;

use crate::support::TestApp;

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::start().await;
    let res = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ready");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::start().await;
    app.call(Method::GET, "/api/v1/users/me", None, None)
        .await
        .expect(401, "unauthorized");
    let res = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("natter_http_requests_total")
                && l.contains(r#"route="/api/v1/users/me""#)
                && l.contains(r#"status="401""#)),
        "{text}"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let app = TestApp::start().await;
    let doc = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .ok(200);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    routes.sort();
    insta::assert_snapshot!(routes.join("\n"));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert_eq!(
        doc,
        serde_json::to_value(natter_server::api::openapi_document()).unwrap()
    );
}
