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

/// Every status each route can answer, as the document declares them: the
/// handlers' own, and the common ones (401 on authenticated routes,
/// 400/413/415/422 on JSON bodies, 408, 431, 503) written once in
/// `api/openapi.rs`.
#[test]
fn the_openapi_document_declares_every_status() {
    let doc = natter_server::api::openapi_document();
    let mut lines = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let statuses: Vec<&str> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let authenticated = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            if authenticated {
                assert!(statuses.contains(&"401"), "{method} {path} answers 401");
            }
            if op["requestBody"]["content"]
                .get("application/json")
                .is_some()
            {
                for status in ["400", "413", "415", "422"] {
                    assert!(
                        statuses.contains(&status),
                        "{method} {path} answers {status}"
                    );
                }
            }
            lines.push(format!(
                "{} {path}: {}",
                method.to_uppercase(),
                statuses.join(" ")
            ));
        }
    }
    lines.sort();
    insta::assert_snapshot!(lines.join("\n"));
    // Deleting a deleted message is 409 (schemathesis found it undocumented).
    assert!(
        doc["paths"]["/api/v1/messages/{message_id}"]["delete"]["responses"]
            .get("409")
            .is_some()
    );
    // The common answers are declared once and referred to.
    assert_eq!(
        doc["components"]["responses"]["Unauthorized"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
}

/// Request schemas carry the limits of the configuration they describe.
#[test]
fn the_openapi_document_states_the_limits() {
    let doc = natter_server::api::openapi_document();
    let limits = natter_server::config::Limits::default();
    let schema = |name: &str| doc["components"]["schemas"][name]["properties"].clone();
    assert_eq!(
        schema("UpdateMe")["name"]["maxLength"],
        limits.max_name_chars
    );
    assert_eq!(schema("UpdateMe")["name"]["minLength"], 1);
    assert_eq!(
        schema("AddParticipants")["user_ids"]["maxItems"],
        limits.max_group_members
    );
    assert_eq!(schema("AddParticipants")["user_ids"]["minItems"], 1);
    assert_eq!(
        schema("SetIdentity")["identity_key"]["pattern"],
        "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
    );
    let history = &doc["paths"]["/api/v1/chats/{chat_id}/messages"]["get"]["parameters"];
    let param = |name: &str| {
        history
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(param("chat_id")["schema"]["format"], "uuid");
    assert_eq!(param("limit")["schema"]["maximum"], limits.max_page_size);
    assert_eq!(param("page")["schema"]["minimum"], 1);
    // Rules across fields are in the operation's description.
    assert!(
        doc["paths"]["/api/v1/chats"]["post"]["description"]
            .as_str()
            .unwrap()
            .contains("exactly one other participant")
    );
    // In sign-up mode `open` (the default), registration needs the code.
    assert!(
        doc["components"]["schemas"]["RegisterRequest"]["required"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("verification_code"))
    );
}

/// A plain GET of the WebSocket route is refused in the error envelope
/// (it was axum's plain-text 400, undocumented; found by schemathesis).
#[tokio::test]
async fn a_websocket_route_without_an_upgrade_is_a_400_in_the_envelope() {
    let app = TestApp::start().await;
    app.call(Method::GET, "/api/v1/ws", None, None)
        .await
        .expect(400, "invalid_parameter");
}
