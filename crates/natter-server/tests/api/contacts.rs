//! Contact lists in the seed's shape, and contact discovery.

use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn contacts_come_in_the_seed_shape() {
    let app = TestApp::start().await;
    let wes = app.signup("+14155550500", "Wes").await;
    let jane = app.signup("+14155550501", "Jane Smith").await;

    let added = wes
        .post(
            &app,
            "/api/v1/users/contacts",
            json!({"phone": "+1 415 555 0501"}),
        )
        .await
        .ok(201);
    assert_eq!(added["user_id"], jane.user_id.as_str());
    // Adding again is not an error, and not a second entry.
    wes.post(
        &app,
        "/api/v1/users/contacts",
        json!({"user_id": jane.user_id}),
    )
    .await
    .ok(200);

    let list = wes.get(&app, "/api/v1/users/contacts").await.ok(200);
    let contacts = list["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 1);
    let jane_entry = contacts[0].as_object().unwrap();
    let mut keys: Vec<&str> = jane_entry.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "last_seen",
            "name",
            "phone",
            "profile_pic_url",
            "status",
            "user_id"
        ]
    );
    assert_eq!(jane_entry["user_id"], jane.user_id.as_str());
    assert_eq!(jane_entry["name"], "Jane Smith");
    assert_eq!(
        jane_entry["phone"], "+14155550501",
        "added by number, so the number is known"
    );
    assert_eq!(jane_entry["status"], "offline");
    assert!(jane_entry["last_seen"].is_string());
}

#[tokio::test]
async fn a_contact_added_by_id_shows_no_number_until_they_add_back() {
    let app = TestApp::start().await;
    let xia = app.signup("+14155550502", "Xia").await;
    let yan = app.signup("+14155550503", "Yan").await;
    xia.post(
        &app,
        "/api/v1/users/contacts",
        json!({"user_id": yan.user_id}),
    )
    .await
    .ok(201);
    let list = xia.get(&app, "/api/v1/users/contacts").await.ok(200);
    assert_eq!(list["contacts"][0]["phone"], serde_json::Value::Null);

    yan.adds_contact(&app, &xia).await;
    let list = xia.get(&app, "/api/v1/users/contacts").await.ok(200);
    assert_eq!(list["contacts"][0]["phone"], "+14155550503");
}

#[tokio::test]
async fn contact_last_seen_obeys_the_contacts_setting() {
    let app = TestApp::start().await;
    let zed = app.signup("+14155550504", "Zed").await;
    let amy = app.signup("+14155550505", "Amy").await;
    zed.patch(
        &app,
        "/api/v1/users/me",
        json!({"last_seen_visibility": "contacts"}),
    )
    .await
    .ok(200);
    amy.adds_contact(&app, &zed).await;
    let list = amy.get(&app, "/api/v1/users/contacts").await.ok(200);
    assert_eq!(
        list["contacts"][0]["last_seen"],
        serde_json::Value::Null,
        "Zed has not added Amy"
    );
    zed.adds_contact(&app, &amy).await;
    let list = amy.get(&app, "/api/v1/users/contacts").await.ok(200);
    assert!(list["contacts"][0]["last_seen"].is_string());
}

#[tokio::test]
async fn removing_contacts_and_the_errors_around_it() {
    let app = TestApp::start().await;
    let ben = app.signup("+14155550506", "Ben").await;
    let cat = app.signup("+14155550507", "Cat").await;
    ben.adds_contact(&app, &cat).await;
    ben.delete(&app, &format!("/api/v1/users/contacts/{}", cat.user_id))
        .await
        .ok(204);
    assert_eq!(
        ben.get(&app, "/api/v1/users/contacts").await.ok(200)["contacts"],
        json!([])
    );
    ben.delete(&app, &format!("/api/v1/users/contacts/{}", cat.user_id))
        .await
        .expect(404, "contact_not_found");

    // Adding: unknown number, unknown id, neither, both, oneself.
    ben.post(
        &app,
        "/api/v1/users/contacts",
        json!({"phone": "+14155550599"}),
    )
    .await
    .expect(404, "user_not_found");
    ben.post(
        &app,
        "/api/v1/users/contacts",
        json!({"user_id": "01900000-0000-7000-8000-000000000000"}),
    )
    .await
    .expect(404, "user_not_found");
    ben.post(&app, "/api/v1/users/contacts", json!({}))
        .await
        .expect(422, "validation_failed");
    ben.post(
        &app,
        "/api/v1/users/contacts",
        json!({"phone": cat.phone, "user_id": cat.user_id}),
    )
    .await
    .expect(422, "validation_failed");
    ben.post(
        &app,
        "/api/v1/users/contacts",
        json!({"user_id": ben.user_id}),
    )
    .await
    .expect(422, "validation_failed");
    ben.post(&app, "/api/v1/users/contacts", json!({"phone": "12"}))
        .await
        .expect(400, "invalid_phone");
}

#[tokio::test]
async fn contact_lists_are_limited_at_n() {
    let app = TestApp::start_with(|c| c.limits.max_contacts_per_user = 2).await;
    let owner = app.signup("+14155550510", "Owner").await;
    let mut others = Vec::new();
    for i in 1..=3 {
        others.push(
            app.signup(&format!("+1415555051{i}"), &format!("Other {i}"))
                .await,
        );
    }
    owner
        .post(
            &app,
            "/api/v1/users/contacts",
            json!({"user_id": others[0].user_id}),
        )
        .await
        .ok(201);
    owner
        .post(
            &app,
            "/api/v1/users/contacts",
            json!({"user_id": others[1].user_id}),
        )
        .await
        .ok(201);
    owner
        .post(
            &app,
            "/api/v1/users/contacts",
            json!({"user_id": others[2].user_id}),
        )
        .await
        .expect(409, "contact_limit_reached");
    // Re-adding an existing contact at the limit is fine.
    owner
        .post(
            &app,
            "/api/v1/users/contacts",
            json!({"user_id": others[0].user_id}),
        )
        .await
        .ok(200);
}

#[tokio::test]
async fn discovery_tells_which_numbers_are_registered() {
    let app = TestApp::start().await;
    let dan = app.signup("+14155550520", "Dan").await;
    let eli = app.signup("+14155550521", "Eli").await;
    let found = dan
        .post(
            &app,
            "/api/v1/users/contacts/discover",
            json!({"phones": ["+1 415-555-0521", "+14155550522", "+14155550520", "nonsense", "+14155550521"]}),
        )
        .await
        .ok(200);
    assert_eq!(
        found["registered"],
        // One entry per number sent, with the entry as sent, so clients can
        // map answers back to their address book.
        json!([
            {"query": "+1 415-555-0521", "phone": "+14155550521", "user_id": eli.user_id},
            {"query": "+14155550521", "phone": "+14155550521", "user_id": eli.user_id},
        ])
    );
    assert_eq!(found["invalid"], json!(["nonsense"]));

    // The queried numbers are not stored: the unregistered one appears
    // nowhere in the store.
    let copies = app.stored_copies(&[b"+14155550522"]).await;
    assert!(copies.is_empty(), "a queried number was stored: {copies:?}");
}

#[tokio::test]
async fn discovery_lists_are_bounded_at_n_and_n_plus_one() {
    let app = TestApp::start_with(|c| c.limits.max_discover_phones = 3).await;
    let fay = app.signup("+14155550530", "Fay").await;
    let three: Vec<String> = (1..=3).map(|i| format!("+1415555054{i}")).collect();
    fay.post(
        &app,
        "/api/v1/users/contacts/discover",
        json!({ "phones": three }),
    )
    .await
    .ok(200);
    let four: Vec<String> = (1..=4).map(|i| format!("+1415555054{i}")).collect();
    fay.post(
        &app,
        "/api/v1/users/contacts/discover",
        json!({ "phones": four }),
    )
    .await
    .expect(422, "validation_failed");
}

#[tokio::test]
async fn adding_contacts_is_rate_limited_because_it_is_a_lookup() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.contact_add_per_user = natter_server::config::Rate {
            burst: 3,
            per_secs: 3600,
        };
    })
    .await;
    let prober = app.signup("+14155550550", "Prober").await;
    for i in 1..=3 {
        prober
            .post(
                &app,
                "/api/v1/users/contacts",
                json!({"phone": format!("+1415555056{i}")}),
            )
            .await
            .expect(404, "user_not_found");
    }
    let refused = prober
        .post(
            &app,
            "/api/v1/users/contacts",
            json!({"phone": "+14155550564"}),
        )
        .await;
    refused.expect(429, "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
}
