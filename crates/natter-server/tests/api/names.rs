//! Names shown to other users: invisible and filler characters are refused,
//! names in every script (and emoji sequences) are kept.

use serde_json::json;

use crate::support::TestApp;

/// Display and group names that would hide characters or show nothing.
const HIDING: [&str; 6] = [
    "Team\u{206A}",
    "Team\u{E0041}\u{E0042}",
    "\u{3164}\u{3164}",
    "Bob\u{206F}",
    "Bob\u{E0062}",
    "\u{3164}",
];

/// Names people really have.
const REAL: [&str; 8] = [
    "don't",
    "e-mail",
    "👩\u{200D}👩\u{200D}👧",
    "🏳\u{FE0F}\u{200D}🌈 team",
    "张伟",
    "محمد",
    "می\u{200C}خواهم",
    "שָׁלוֹם",
];

#[tokio::test]
async fn display_names_that_hide_characters_are_refused_and_real_ones_kept() {
    let app = TestApp::start_with(|c| c.rate_limits.verification_per_phone.burst = 100).await;
    let alice = app.signup("+14155550810", "Alice").await;
    for name in HIDING {
        alice
            .patch(&app, "/api/v1/users/me", json!({"name": name}))
            .await
            .expect(422, "validation_failed");
        // Registration takes the same rule.
        let code = app.code_for("+14155550811").await;
        app.post(
            "/api/v1/users/register",
            json!({"phone": "+14155550811", "name": name, "verification_code": code}),
        )
        .await
        .expect(422, "validation_failed");
    }
    for name in REAL {
        let me = alice
            .patch(&app, "/api/v1/users/me", json!({"name": name}))
            .await
            .ok(200);
        assert_eq!(me["name"], name);
    }
}

#[tokio::test]
async fn group_names_that_hide_characters_are_refused_and_real_ones_kept() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550812", "Alice").await;
    let bob = app.signup("+14155550813", "Bob").await;
    for name in HIDING {
        alice
            .post(
                &app,
                "/api/v1/chats",
                json!({"type": "group", "name": name, "participants": [bob.user_id]}),
            )
            .await
            .expect(422, "validation_failed");
    }
    let group = alice.group_with(&app, "Team", &[&bob]).await;
    for name in HIDING {
        alice
            .patch(
                &app,
                &format!("/api/v1/chats/{group}"),
                json!({"name": name}),
            )
            .await
            .expect(422, "validation_failed");
    }
    for name in REAL {
        let chat = alice
            .patch(
                &app,
                &format!("/api/v1/chats/{group}"),
                json!({"name": name}),
            )
            .await
            .ok(200);
        assert_eq!(chat["name"], name);
    }
}
