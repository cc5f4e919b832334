//! `/users/me` and public profiles, with their privacy rules.

use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn a_user_edits_their_profile() {
    let app = TestApp::start().await;
    let user = app.signup("+14155550400", "Olga").await;
    let me = user
        .patch(
            &app,
            "/api/v1/users/me",
            json!({"name": "  Olga K. ", "about": "Hiking 🏔", "last_seen_visibility": "contacts"}),
        )
        .await
        .ok(200);
    assert_eq!(me["name"], "Olga K.");
    assert_eq!(me["about"], "Hiking 🏔");
    assert_eq!(me["last_seen_visibility"], "contacts");
    // Absent fields stay; an empty about clears it.
    let me = user
        .patch(&app, "/api/v1/users/me", json!({"about": ""}))
        .await
        .ok(200);
    assert_eq!(me["name"], "Olga K.");
    assert_eq!(me["about"], "");
    assert_eq!(user.get(&app, "/api/v1/users/me").await.ok(200), me);
}

#[tokio::test]
async fn profile_fields_are_bounded_at_n_and_n_plus_one() {
    let app = TestApp::start_with(|c| {
        c.limits.max_name_chars = 5;
        c.limits.max_about_chars = 7;
    })
    .await;
    let user = app.signup("+14155550401", "Pat").await;
    user.patch(&app, "/api/v1/users/me", json!({"name": "ééééé"}))
        .await
        .ok(200);
    user.patch(&app, "/api/v1/users/me", json!({"name": "éééééé"}))
        .await
        .expect(422, "validation_failed");
    user.patch(&app, "/api/v1/users/me", json!({"about": "1234567"}))
        .await
        .ok(200);
    user.patch(&app, "/api/v1/users/me", json!({"about": "12345678"}))
        .await
        .expect(422, "validation_failed");
    user.patch(&app, "/api/v1/users/me", json!({"name": "   "}))
        .await
        .expect(422, "validation_failed");
    user.patch(&app, "/api/v1/users/me", json!({"name": "a\u{7}b"}))
        .await
        .expect(422, "validation_failed");
    user.patch(
        &app,
        "/api/v1/users/me",
        json!({"last_seen_visibility": "friends"}),
    )
    .await
    .expect(422, "validation_failed");
    // Registration applies the same bound.
    let code = app.code_for("+14155550402").await;
    app.post(
        "/api/v1/users/register",
        json!({"phone": "+14155550402", "name": "abcdef", "verification_code": code}),
    )
    .await
    .expect(422, "validation_failed");
}

#[tokio::test]
async fn strangers_see_no_phone_number_contacts_do() {
    let app = TestApp::start().await;
    let quinn = app.signup("+14155550403", "Quinn").await;
    let rae = app.signup("+14155550404", "Rae").await;
    let path = format!("/api/v1/users/{}", quinn.user_id);

    let seen = rae.get(&app, &path).await.ok(200);
    assert_eq!(seen["name"], "Quinn");
    assert_eq!(seen["phone"], serde_json::Value::Null);
    assert_eq!(seen["status"], "offline");

    // Once Quinn has Rae as a contact, Rae may see Quinn's number.
    quinn
        .post(
            &app,
            "/api/v1/users/contacts",
            json!({"user_id": rae.user_id}),
        )
        .await
        .ok(201);
    assert_eq!(rae.get(&app, &path).await.ok(200)["phone"], "+14155550403");
    // Users see their own number.
    assert_eq!(
        quinn.get(&app, &path).await.ok(200)["phone"],
        "+14155550403"
    );
}

#[tokio::test]
async fn unknown_users_are_404() {
    let app = TestApp::start().await;
    let user = app.signup("+14155550405", "Sam").await;
    user.get(&app, "/api/v1/users/01900000-0000-7000-8000-000000000000")
        .await
        .expect(404, "user_not_found");
    user.get(&app, "/api/v1/users/user_123")
        .await
        .expect(404, "user_not_found");
}

#[tokio::test]
async fn last_seen_follows_the_privacy_setting() {
    let app = TestApp::start().await;
    let tom = app.signup("+14155550406", "Tom").await;
    let friend = app.signup("+14155550407", "Una").await;
    let stranger = app.signup("+14155550408", "Vic").await;
    tom.adds_contact(&app, &friend).await;
    let path = format!("/api/v1/users/{}", tom.user_id);
    let sees = |answer: serde_json::Value| answer["last_seen"].is_string();

    // everyone (the default)
    assert!(sees(friend.get(&app, &path).await.ok(200)));
    assert!(sees(stranger.get(&app, &path).await.ok(200)));

    tom.patch(
        &app,
        "/api/v1/users/me",
        json!({"last_seen_visibility": "contacts"}),
    )
    .await
    .ok(200);
    assert!(sees(friend.get(&app, &path).await.ok(200)));
    assert!(!sees(stranger.get(&app, &path).await.ok(200)));

    tom.patch(
        &app,
        "/api/v1/users/me",
        json!({"last_seen_visibility": "nobody"}),
    )
    .await
    .ok(200);
    assert!(!sees(friend.get(&app, &path).await.ok(200)));
    assert!(!sees(stranger.get(&app, &path).await.ok(200)));
    assert!(
        sees(tom.get(&app, &path).await.ok(200)),
        "users see their own"
    );
}

#[tokio::test]
async fn null_and_invisible_names_are_refused() {
    let app = TestApp::start().await;
    let user = app.signup("+14155550409", "Wen").await;
    for body in [
        json!({"name": null}),
        json!({"about": null}),
        json!({"last_seen_visibility": null}),
        json!({"name": "\u{200b}"}),
        json!({"name": "adm\u{202e}nimda"}),
    ] {
        user.patch(&app, "/api/v1/users/me", body)
            .await
            .expect(422, "validation_failed");
    }
    assert_eq!(
        user.get(&app, "/api/v1/users/me").await.ok(200)["name"],
        "Wen"
    );
}
