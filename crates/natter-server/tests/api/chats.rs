//! Chats: creation, lists, participants, roles, and who may see what.

use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn the_seed_direct_chat_body_works_and_is_unique_per_pair() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550800", "Alice").await;
    let bob = app.signup("+14155550801", "Bob").await;
    // The seed lists both participants, the caller included.
    let created = alice
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "direct", "participants": [alice.user_id, bob.user_id]}),
        )
        .await
        .ok(201);
    assert_eq!(created["type"], "direct");
    assert_eq!(created["name"], serde_json::Value::Null);
    assert_eq!(created["encrypted"], false);
    assert_eq!(created["participants"].as_array().unwrap().len(), 2);
    // Again, from either side, without listing oneself: the same chat, 200.
    let again = alice
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "direct", "participants": [bob.user_id]}),
        )
        .await
        .ok(200);
    assert_eq!(again["id"], created["id"]);
    let from_bob = bob
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "direct", "participants": [alice.user_id]}),
        )
        .await
        .ok(200);
    assert_eq!(from_bob["id"], created["id"]);
}

#[tokio::test]
async fn direct_chats_need_exactly_one_other_existing_user() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550802", "Alice").await;
    let bob = app.signup("+14155550803", "Bob").await;
    let carol = app.signup("+14155550804", "Carol").await;
    for participants in [
        json!([]),
        json!([alice.user_id]),
        json!([bob.user_id, carol.user_id]),
    ] {
        alice
            .post(
                &app,
                "/api/v1/chats",
                json!({"type": "direct", "participants": participants}),
            )
            .await
            .expect(422, "validation_failed");
    }
    alice
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "direct", "participants": ["01900000-0000-7000-8000-000000000000"]}),
        )
        .await
        .expect(404, "user_not_found");
    alice
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "direct", "participants": ["user_456"]}),
        )
        .await
        .expect(422, "validation_failed");
}

#[tokio::test]
async fn groups_have_an_admin_a_name_and_a_size_limit_at_n() {
    let app = TestApp::start_with(|c| c.limits.max_group_members = 3).await;
    let ann = app.signup("+14155550805", "Ann").await;
    let ben = app.signup("+14155550806", "Ben").await;
    let cy = app.signup("+14155550807", "Cy").await;
    let dee = app.signup("+14155550808", "Dee").await;
    ann.post(
        &app,
        "/api/v1/chats",
        json!({"type": "group", "participants": [ben.user_id]}),
    )
    .await
    .expect(422, "validation_failed");
    ann.post(
        &app,
        "/api/v1/chats",
        json!({"type": "group", "name": "Four", "participants": [ben.user_id, cy.user_id, dee.user_id]}),
    )
    .await
    .expect(409, "group_full");
    let group = ann.group_with(&app, "Three", &[&ben, &cy]).await;
    let chat = ben
        .get(&app, &format!("/api/v1/chats/{group}"))
        .await
        .ok(200);
    assert_eq!(chat["name"], "Three");
    assert_eq!(chat["my_role"], "member");
    let roles: Vec<(String, String)> = chat["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["user_id"].as_str().unwrap().to_owned(),
                p["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(roles.contains(&(ann.user_id.clone(), "admin".into())));
    assert!(roles.contains(&(ben.user_id.clone(), "member".into())));
    // Full: adding a fourth is refused.
    ann.post(
        &app,
        &format!("/api/v1/chats/{group}/participants"),
        json!({"user_ids": [dee.user_id]}),
    )
    .await
    .expect(409, "group_full");
}

#[tokio::test]
async fn outsiders_cannot_see_read_post_or_list_a_chat() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550810", "Alice").await;
    let bob = app.signup("+14155550811", "Bob").await;
    let eve = app.signup("+14155550812", "Eve").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    alice.sends(&app, &chat, "secret").await;

    eve.get(&app, &format!("/api/v1/chats/{chat}"))
        .await
        .expect(404, "chat_not_found");
    eve.get(&app, &format!("/api/v1/chats/{chat}/messages"))
        .await
        .expect(404, "chat_not_found");
    eve.post(
        &app,
        "/api/v1/messages",
        json!({"chat_id": chat, "content": "hi", "type": "text"}),
    )
    .await
    .expect(404, "chat_not_found");
    eve.post(
        &app,
        &format!("/api/v1/chats/{chat}/read"),
        json!({"seq": 1}),
    )
    .await
    .expect(404, "chat_not_found");
    assert_eq!(
        eve.get(&app, "/api/v1/chats").await.ok(200)["chats"],
        json!([])
    );
    // Exactly like a chat that does not exist.
    let missing = eve
        .get(&app, "/api/v1/chats/01900000-0000-7000-8000-000000000000")
        .await;
    let forbidden = eve.get(&app, &format!("/api/v1/chats/{chat}")).await;
    assert_eq!(missing.body, forbidden.body);
}

#[tokio::test]
async fn admins_rename_add_remove_and_promote_members_do_not() {
    let app = TestApp::start().await;
    let ann = app.signup("+14155550813", "Ann").await;
    let ben = app.signup("+14155550814", "Ben").await;
    let cy = app.signup("+14155550815", "Cy").await;
    let group = ann.group_with(&app, "Team", &[&ben]).await;
    let path = format!("/api/v1/chats/{group}");

    ben.patch(&app, &path, json!({"name": "Mine"}))
        .await
        .expect(403, "forbidden");
    ben.post(
        &app,
        &format!("{path}/participants"),
        json!({"user_ids": [cy.user_id]}),
    )
    .await
    .expect(403, "forbidden");
    let renamed = ann
        .patch(&app, &path, json!({"name": "Team 2"}))
        .await
        .ok(200);
    assert_eq!(renamed["name"], "Team 2");
    ann.post(
        &app,
        &format!("{path}/participants"),
        json!({"user_ids": [cy.user_id]}),
    )
    .await
    .ok(200);
    cy.get(&app, &path).await.ok(200);

    // Promote Ben; now he may rename.
    let promoted = ann
        .patch(
            &app,
            &format!("{path}/participants/{}", ben.user_id),
            json!({"role": "admin"}),
        )
        .await
        .ok(200);
    assert!(
        promoted["participants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["user_id"] == ben.user_id.as_str() && p["role"] == "admin")
    );
    ben.patch(&app, &path, json!({"name": "Team 3"}))
        .await
        .ok(200);

    // Removal by an admin; Cy can no longer post.
    ben.delete(&app, &format!("{path}/participants/{}", cy.user_id))
        .await
        .ok(204);
    cy.post(
        &app,
        "/api/v1/messages",
        json!({"chat_id": group, "content": "hi", "type": "text"}),
    )
    .await
    .expect(404, "chat_not_found");

    // The log shows every change to those who were there.
    let page = ann.get(&app, &format!("{path}/messages")).await.ok(200);
    let kinds: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|m| m["event"]["kind"].as_str().unwrap_or("message").to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "created",
            "renamed",
            "member_added",
            "role_changed",
            "renamed",
            "member_removed"
        ]
    );
}

#[tokio::test]
async fn a_member_may_leave_and_direct_chats_are_fixed() {
    let app = TestApp::start().await;
    let ann = app.signup("+14155550816", "Ann").await;
    let ben = app.signup("+14155550817", "Ben").await;
    let group = ann.group_with(&app, "G", &[&ben]).await;
    ben.delete(
        &app,
        &format!("/api/v1/chats/{group}/participants/{}", ben.user_id),
    )
    .await
    .ok(204);
    assert_eq!(
        ben.get(&app, "/api/v1/chats").await.ok(200)["chats"],
        json!([])
    );
    let chat = ann
        .get(&app, &format!("/api/v1/chats/{group}"))
        .await
        .ok(200);
    assert_eq!(chat["participants"].as_array().unwrap().len(), 1);

    let direct = ann.direct_chat_with(&app, &ben).await;
    ann.patch(
        &app,
        &format!("/api/v1/chats/{direct}"),
        json!({"name": "x"}),
    )
    .await
    .expect(422, "validation_failed");
    ann.delete(
        &app,
        &format!("/api/v1/chats/{direct}/participants/{}", ben.user_id),
    )
    .await
    .expect(422, "validation_failed");
}

#[tokio::test]
async fn the_chat_list_is_ordered_by_activity_with_previews_and_unread_counts() {
    let app = TestApp::start().await;
    let me = app.signup("+14155550818", "Me").await;
    let a = app.signup("+14155550819", "A").await;
    let b = app.signup("+14155550820", "B").await;
    let with_a = me.direct_chat_with(&app, &a).await;
    let with_b = me.direct_chat_with(&app, &b).await;
    a.sends(&app, &with_a, "one").await;
    a.sends(&app, &with_a, "two").await;
    b.sends(&app, &with_b, "three").await;
    a.sends(&app, &with_a, "four").await;

    let list = me.get(&app, "/api/v1/chats").await.ok(200);
    let chats = list["chats"].as_array().unwrap();
    assert_eq!(chats[0]["id"], with_a.as_str());
    assert_eq!(chats[0]["unread_count"], 3);
    assert_eq!(chats[0]["last_message"]["content"], "four");
    assert_eq!(chats[0]["my_role"], "member");
    assert_eq!(chats[1]["id"], with_b.as_str());
    assert_eq!(chats[1]["unread_count"], 1);

    let last_seq = chats[0]["last_message"]["seq"].as_i64().unwrap();
    me.post(
        &app,
        &format!("/api/v1/chats/{with_a}/read"),
        json!({"seq": last_seq}),
    )
    .await
    .ok(200);
    let list = me.get(&app, "/api/v1/chats").await.ok(200);
    assert_eq!(list["chats"][0]["unread_count"], 0);
}

#[tokio::test]
async fn former_members_no_longer_see_the_chat_as_it_is_now() {
    let app = TestApp::start().await;
    let ann = app.signup("+14155550830", "Ann").await;
    let ben = app.signup("+14155550831", "Ben").await;
    let group = ann.group_with(&app, "Before", &[&ben]).await;
    ben.delete(
        &app,
        &format!("/api/v1/chats/{group}/participants/{}", ben.user_id),
    )
    .await
    .ok(204);
    ann.patch(
        &app,
        &format!("/api/v1/chats/{group}"),
        json!({"name": "After"}),
    )
    .await
    .ok(200);
    ben.get(&app, &format!("/api/v1/chats/{group}"))
        .await
        .expect(404, "chat_not_found");
    // Their own period of history stays readable.
    let page = ben
        .get(&app, &format!("/api/v1/chats/{group}/messages"))
        .await
        .ok(200);
    assert!(
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["event"]["name"] != "After")
    );
}

#[tokio::test]
async fn a_group_always_keeps_an_admin() {
    let app = TestApp::start().await;
    let ann = app.signup("+14155550832", "Ann").await;
    let ben = app.signup("+14155550833", "Ben").await;
    let cy = app.signup("+14155550834", "Cy").await;
    let group = ann.group_with(&app, "G", &[&ben, &cy]).await;
    let path = format!("/api/v1/chats/{group}");
    // The only admin cannot step down...
    ann.patch(
        &app,
        &format!("{path}/participants/{}", ann.user_id),
        json!({"role": "member"}),
    )
    .await
    .expect(409, "last_admin");
    // ...and when they leave, the longest-standing member takes over.
    ann.delete(&app, &format!("{path}/participants/{}", ann.user_id))
        .await
        .ok(204);
    let chat = ben.get(&app, &path).await.ok(200);
    assert_eq!(chat["my_role"], "admin");
    ben.patch(&app, &path, json!({"name": "Still run"}))
        .await
        .ok(200);
    let page = cy.get(&app, &format!("{path}/messages")).await.ok(200);
    assert!(
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["event"]["kind"] == "role_changed"
                && m["event"]["user_id"] == ben.user_id.as_str())
    );
}

#[tokio::test]
async fn replying_reads_the_chat_at_once() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155554090", "Alice").await;
    let bob = app.signup("+14155554091", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    for n in 0..3 {
        alice.sends(&app, &chat, &format!("m{n}")).await;
    }
    let unread = |user: crate::support::TestUser| {
        let app = &app;
        async move { user.get(app, "/api/v1/chats").await.ok(200)["chats"][0]["unread_count"].clone() }
    };
    assert_eq!(unread(bob.clone()).await, 3);
    // Bob answers: what came before his answer is read, at once (not when
    // the writer next flushes positions).
    bob.sends(&app, &chat, "hi").await;
    assert_eq!(unread(bob.clone()).await, 0);
    // Alice has read up to her own messages, but not Bob's answer.
    assert_eq!(unread(alice.clone()).await, 1);
    alice.sends(&app, &chat, "and again").await;
    assert_eq!(unread(alice.clone()).await, 0);
}

#[tokio::test]
async fn the_chat_list_says_who_is_in_each_chat() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550851", "Alice").await;
    let bob = app.signup("+14155550852", "Bob").await;
    let pic = bob.uploaded(&app, crate::media::png(4, 4), "image").await;
    bob.patch(
        &app,
        "/api/v1/users/me",
        json!({"profile_pic_media_id": pic}),
    )
    .await
    .ok(200);
    let direct = alice.direct_chat_with(&app, &bob).await;
    // A group bigger than the list shows: 1 + 11 members.
    let mut members = Vec::new();
    for i in 0..11 {
        // Numbers in different blocks, so sign-up rate limits stay out of it.
        let phone = format!("+1415{}0001", 200 + i);
        members.push(app.signup(&phone, &format!("Member {i:02}")).await);
    }
    let refs: Vec<&crate::support::TestUser> = members.iter().collect();
    let group = alice.group_with(&app, "Big", &refs).await;

    let list = alice.get(&app, "/api/v1/chats").await.ok(200);
    let chats = list["chats"].as_array().unwrap();
    let row = |id: &str| chats.iter().find(|c| c["id"] == id).unwrap().clone();
    let d = row(&direct);
    assert_eq!(
        d["other_user"],
        json!({"user_id": bob.user_id, "name": "Bob", "profile_pic_media_id": pic})
    );
    assert_eq!(d["participant_count"], 2);
    let names: Vec<&str> = d["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(
        names.contains(&"Alice") && names.contains(&"Bob"),
        "{names:?}"
    );
    // The seed's fields are still there.
    for key in [
        "type",
        "name",
        "encrypted",
        "my_role",
        "unread_count",
        "last_activity_at",
    ] {
        assert!(d.get(key).is_some(), "{key} in {d}");
    }

    let g = row(&group);
    assert_eq!(g["other_user"], serde_json::Value::Null);
    assert_eq!(g["participant_count"], 12);
    let shown = g["participants"].as_array().unwrap();
    assert_eq!(shown.len(), 10, "bounded");
    assert_eq!(
        shown[0]["name"], "Alice",
        "by join order: the creator first"
    );

    // Bob's side of the direct chat names Alice; once Alice deletes her
    // account it still names who it was with.
    let theirs = bob.get(&app, "/api/v1/chats").await.ok(200);
    assert_eq!(theirs["chats"][0]["other_user"]["name"], "Alice");
    app.call(
        reqwest::Method::DELETE,
        "/api/v1/users/me",
        Some(&alice.token),
        Some(json!({"phone": alice.phone})),
    )
    .await
    .ok(204);
    let theirs = bob.get(&app, "/api/v1/chats").await.ok(200);
    let row = &theirs["chats"][0];
    assert_eq!(row["other_user"]["user_id"], alice.user_id.as_str());
    assert_eq!(row["other_user"]["name"], "Deleted account");
    assert_eq!(row["participant_count"], 1);
}
