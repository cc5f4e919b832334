//! Who may add whom to groups (`group_add_permission`), the invitations a
//! refused add becomes, and the rate limits on group creations and adds.

use std::time::Duration;

use natter_server::config::Rate;
use serde_json::{Value, json};

use crate::support::{Answer, TestApp, TestUser};

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect()
}

fn id(u: &TestUser) -> Vec<String> {
    vec![u.user_id.clone()]
}

fn members(chat: &Value) -> Vec<String> {
    chat["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap().to_owned())
        .collect()
}

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

async fn chat_count(app: &TestApp, user: &TestUser) -> usize {
    user.get(app, "/api/v1/chats").await.ok(200)["chats"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn the_setting_is_everyone_by_default_and_shown_and_changed_like_last_seen() {
    let app = TestApp::start().await;
    let carol = app.signup("+14155552001", "Carol").await;
    let me = carol.get(&app, "/api/v1/users/me").await.ok(200);
    assert_eq!(me["group_add_permission"], "everyone");
    for setting in ["contacts", "nobody", "everyone"] {
        carol.lets_add_to_groups(&app, setting).await;
        let me = carol.get(&app, "/api/v1/users/me").await.ok(200);
        assert_eq!(me["group_add_permission"], setting);
    }
    carol
        .patch(
            &app,
            "/api/v1/users/me",
            json!({"group_add_permission": "friends"}),
        )
        .await
        .expect(422, "validation_failed");
    carol
        .patch(
            &app,
            "/api/v1/users/me",
            json!({"group_add_permission": null}),
        )
        .await
        .expect(422, "validation_failed");
    // Other fields stay as they are.
    carol.lets_add_to_groups(&app, "nobody").await;
    let me = carol
        .patch(&app, "/api/v1/users/me", json!({"about": "hi"}))
        .await
        .ok(200);
    assert_eq!(me["group_add_permission"], "nobody");
    assert_eq!(me["last_seen_visibility"], "everyone");
}

#[tokio::test]
async fn a_stranger_cannot_put_carol_into_groups_when_she_allows_contacts_or_nobody() {
    // Room for the burst: this test is about the setting, not the rate limit.
    let app = TestApp::start_with(|c| c.rate_limits.chats_created_per_minute.burst = 100).await;
    let carol = app.signup("+14155552011", "Carol").await;
    let mallory = app.signup("+14155552012", "Mallory").await;
    let alice = app.signup("+14155552013", "Alice").await;
    carol.adds_contact(&app, &alice).await;
    // Mallory has Carol as a contact; that is not what counts.
    mallory.adds_contact(&app, &carol).await;

    for setting in ["contacts", "nobody"] {
        carol.lets_add_to_groups(&app, setting).await;
        let before = carol.invitations(&app).await.len();
        let burst = (0..5).map(|n| {
            let (app, mallory, carol) = (&app, &mallory, &carol);
            async move {
                mallory
                    .tries_group_with(app, &format!("spam {setting} {n}"), &[carol])
                    .await
            }
        });
        for answer in futures_util::future::join_all(burst).await {
            let chat = answer.ok(201);
            assert_eq!(ids(&chat["invited"]), id(&carol), "{chat}");
            assert_eq!(ids(&chat["added"]), Vec::<String>::new());
            assert_eq!(members(&chat), id(&mallory));
        }
        assert_eq!(chat_count(&app, &carol).await, 0, "no group landed");
        assert_eq!(carol.invitations(&app).await.len(), before + 5);
    }

    // With `contacts`, someone in her contacts adds her directly...
    carol.lets_add_to_groups(&app, "contacts").await;
    let chat = alice
        .tries_group_with(&app, "friends", &[&carol])
        .await
        .ok(201);
    assert_eq!(ids(&chat["added"]), id(&carol));
    assert_eq!(ids(&chat["invited"]), Vec::<String>::new());
    assert_eq!(chat_count(&app, &carol).await, 1);
    // ...with `nobody`, not even a contact does.
    carol.lets_add_to_groups(&app, "nobody").await;
    let chat = alice
        .tries_group_with(&app, "friends 2", &[&carol])
        .await
        .ok(201);
    assert_eq!(ids(&chat["invited"]), id(&carol));
    assert_eq!(chat_count(&app, &carol).await, 1);
    // `everyone` is the old behaviour.
    carol.lets_add_to_groups(&app, "everyone").await;
    let chat = mallory
        .tries_group_with(&app, "open", &[&carol])
        .await
        .ok(201);
    assert_eq!(ids(&chat["added"]), id(&carol));
    assert_eq!(chat_count(&app, &carol).await, 2);
}

#[tokio::test]
async fn a_burst_of_group_creations_is_cut_by_the_rate_limit() {
    // The default burst, refilled slowly enough that a slow machine cannot
    // refill one while the burst lasts.
    let app = TestApp::start_with(|c| c.rate_limits.chats_created_per_minute.per_secs = 3600).await;
    let carol = app.signup("+14155552021", "Carol").await;
    let mallory = app.signup("+14155552022", "Mallory").await;
    // Carol lets everyone add her: only the rate limit stands in the way.
    let burst = (0..40).map(|n| {
        let (app, mallory, carol) = (&app, &mallory, &carol);
        async move {
            mallory
                .tries_group_with(app, &format!("spam {n}"), &[carol])
                .await
        }
    });
    let answers = futures_util::future::join_all(burst).await;
    let created = answers.iter().filter(|a| a.status == 201).count();
    let default = app.config().rate_limits.chats_created_per_minute.burst as usize;
    assert_eq!(default, 10);
    assert_eq!(created, default, "the budget, and not one more");
    for refused in answers.iter().filter(|a| a.status != 201) {
        assert_rate_limited(refused);
    }
    assert_eq!(chat_count(&app, &carol).await, default);
    // Another user's budget is their own.
    let alice = app.signup("+14155552023", "Alice").await;
    alice
        .tries_group_with(&app, "mine", &[&carol])
        .await
        .ok(201);
}

#[tokio::test]
async fn groups_created_per_minute_are_limited_at_n() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.chats_created_per_minute = Rate {
            burst: 3,
            per_secs: 60,
        }
    })
    .await;
    let alice = app.signup("+14155552031", "Alice").await;
    let bob = app.signup("+14155552032", "Bob").await;
    for n in 0..3 {
        alice
            .tries_group_with(&app, &format!("g{n}"), &[&bob])
            .await
            .ok(201);
    }
    assert_rate_limited(&alice.tries_group_with(&app, "g3", &[&bob]).await);
    assert_eq!(chat_count(&app, &bob).await, 3);
    // Direct chats are not counted.
    alice.direct_chat_with(&app, &bob).await;
}

#[tokio::test]
async fn groups_created_per_day_are_limited_at_n() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.chats_created_per_day = Rate {
            burst: 2,
            per_secs: 86_400,
        }
    })
    .await;
    let alice = app.signup("+14155552041", "Alice").await;
    let bob = app.signup("+14155552042", "Bob").await;
    for n in 0..2 {
        alice
            .tries_group_with(&app, &format!("g{n}"), &[&bob])
            .await
            .ok(201);
    }
    let refused = alice.tries_group_with(&app, "g2", &[&bob]).await;
    assert_rate_limited(&refused);
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 3600, "one group comes back every 12 hours: {retry}");
}

#[tokio::test]
async fn people_added_per_minute_are_limited_at_n_counting_initial_participants() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.participants_added_per_minute = Rate {
            burst: 4,
            per_secs: 60,
        }
    })
    .await;
    let alice = app.signup("+14155552051", "Alice").await;
    let bob = app.signup("+14155552052", "Bob").await;
    let carol = app.signup("+14155552053", "Carol").await;
    let dave = app.signup("+14155552054", "Dave").await;
    let erin = app.signup("+14155552055", "Erin").await;
    carol.lets_add_to_groups(&app, "nobody").await;
    // Two initial participants cost two.
    let chat = alice
        .tries_group_with(&app, "g", &[&bob, &carol])
        .await
        .ok(201);
    let chat = chat["id"].as_str().unwrap().to_owned();
    // Two more make four: the budget, exactly.
    alice
        .tries_adding(&app, &chat, &[&dave, &erin])
        .await
        .ok(200);
    // The fifth is refused, and nothing of it happens.
    let frank = app.signup("+14155552056", "Frank").await;
    assert_rate_limited(&alice.tries_adding(&app, &chat, &[&frank]).await);
    assert_eq!(chat_count(&app, &frank).await, 0);
    // A request for more than the whole budget can never pass.
    let bigger = app.signup("+14155552057", "Gina").await;
    let everyone = [&bob, &carol, &dave, &erin, &frank];
    assert_rate_limited(&bigger.tries_group_with(&app, "big", &everyone).await);
}

#[tokio::test]
async fn an_invited_user_sees_nothing_until_accepting_then_joins_as_if_added_then() {
    let app = TestApp::start().await;
    let mallory = app.signup("+14155552061", "Mallory").await;
    let carol = app.signup("+14155552062", "Carol").await;
    let bob = app.signup("+14155552063", "Bob").await;
    carol.lets_add_to_groups(&app, "nobody").await;
    let chat = mallory.group_with(&app, "Book club", &[&bob]).await;
    mallory.sends(&app, &chat, "before the invitation").await;
    let mut c = carol.connect(&app).await;

    let answer = mallory.tries_adding(&app, &chat, &[&carol]).await.ok(200);
    assert_eq!(ids(&answer["invited"]), id(&carol));
    assert_eq!(ids(&answer["added"]), Vec::<String>::new());
    assert!(!members(&answer).contains(&carol.user_id));

    // Carol hears of the invitation, not of the chat.
    let frame = c.next_of("invitation").await;
    let invitation = &frame["invitation"];
    assert_eq!(invitation["chat_id"], chat.as_str());
    assert_eq!(invitation["chat_name"], "Book club");
    assert_eq!(invitation["inviter_id"], mallory.user_id.as_str());
    assert_eq!(invitation["inviter_name"], "Mallory");
    let listed = carol.invitations(&app).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(&listed[0], invitation, "the frame and the list agree");
    let invitation_id = invitation["id"].as_str().unwrap().to_owned();

    // Until she accepts: no chat, no history, no messages.
    mallory.sends(&app, &chat, "while invited").await;
    carol
        .get(&app, &format!("/api/v1/chats/{chat}"))
        .await
        .expect(404, "chat_not_found");
    carol
        .get(&app, &format!("/api/v1/chats/{chat}/messages"))
        .await
        .expect(404, "chat_not_found");
    carol
        .post(
            &app,
            "/api/v1/messages",
            json!({"chat_id": chat, "content": "let me in", "type": "text"}),
        )
        .await
        .expect(404, "chat_not_found");
    assert_eq!(chat_count(&app, &carol).await, 0);
    c.nothing_of("new_message", Duration::from_millis(300))
        .await;

    // Accepting makes her a member, with the usual entry by the inviter.
    let mut m = mallory.connect(&app).await;
    let joined = carol
        .post(
            &app,
            &format!("/api/v1/invitations/{invitation_id}/accept"),
            json!({}),
        )
        .await
        .ok(200);
    assert!(members(&joined).contains(&carol.user_id));
    assert_eq!(joined["my_role"], "member");
    assert!(
        joined.get("invited").is_none(),
        "only add answers say who was invited"
    );
    let added = m.next_of("chat_updated").await;
    assert_eq!(added["message"]["event"]["kind"], "member_added", "{added}");
    assert_eq!(added["message"]["event"]["user_id"], carol.user_id.as_str());
    assert_eq!(added["message"]["sender_id"], mallory.user_id.as_str());
    // She sees the chat from her join on: nothing sent before.
    assert_eq!(carol.texts(&app, &chat).await, Vec::<String>::new());
    mallory.sends(&app, &chat, "welcome").await;
    assert_eq!(carol.texts(&app, &chat).await, ["welcome"]);
    assert!(carol.invitations(&app).await.is_empty(), "it was used");
    carol
        .post(
            &app,
            &format!("/api/v1/invitations/{invitation_id}/accept"),
            json!({}),
        )
        .await
        .expect(404, "invitation_not_found");
}

#[tokio::test]
async fn declining_makes_the_invitation_vanish_and_tells_the_inviter_nothing() {
    let app = TestApp::start().await;
    let mallory = app.signup("+14155552071", "Mallory").await;
    let carol = app.signup("+14155552072", "Carol").await;
    carol.lets_add_to_groups(&app, "contacts").await;
    let chat = mallory
        .tries_group_with(&app, "spam", &[&carol])
        .await
        .ok(201);
    let chat_id = chat["id"].as_str().unwrap().to_owned();
    let mut m = mallory.connect(&app).await;
    let invitation = carol.invitations(&app).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/invitations/{invitation}");
    // Only its user may decline it; to anyone else it does not exist.
    mallory
        .delete(&app, &path)
        .await
        .expect(404, "invitation_not_found");
    mallory
        .post(&app, &format!("{path}/accept"), json!({}))
        .await
        .expect(404, "invitation_not_found");
    carol.delete(&app, &path).await.ok(204);
    assert!(carol.invitations(&app).await.is_empty());
    carol
        .delete(&app, &path)
        .await
        .expect(404, "invitation_not_found");
    carol
        .post(&app, &format!("{path}/accept"), json!({}))
        .await
        .expect(404, "invitation_not_found");
    m.nothing_of("chat_updated", Duration::from_millis(300))
        .await;
    let after = mallory
        .get(&app, &format!("/api/v1/chats/{chat_id}"))
        .await
        .ok(200);
    assert_eq!(
        after["last_seq"], chat["last_seq"],
        "nothing entered the log"
    );
    // Malformed ids are just not found.
    carol
        .delete(&app, "/api/v1/invitations/not-an-id")
        .await
        .expect(404, "invitation_not_found");
    // Declined, she may be invited again.
    let again = mallory
        .tries_adding(&app, &chat_id, &[&carol])
        .await
        .ok(200);
    assert_eq!(ids(&again["invited"]), id(&carol));
    assert_eq!(carol.invitations(&app).await.len(), 1);
}

#[tokio::test]
async fn invitations_expire() {
    let app = TestApp::start_with(|c| c.limits.invitation_ttl_secs = 1).await;
    let mallory = app.signup("+14155552081", "Mallory").await;
    let carol = app.signup("+14155552082", "Carol").await;
    carol.lets_add_to_groups(&app, "nobody").await;
    let chat = mallory
        .tries_group_with(&app, "short", &[&carol])
        .await
        .ok(201);
    let chat = chat["id"].as_str().unwrap().to_owned();
    let listed = carol.invitations(&app).await;
    let invitation = listed[0]["id"].as_str().unwrap().to_owned();
    let created = time::OffsetDateTime::parse(
        listed[0]["created_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let expires = time::OffsetDateTime::parse(
        listed[0]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!((expires - created).whole_seconds(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(carol.invitations(&app).await.is_empty());
    carol
        .post(
            &app,
            &format!("/api/v1/invitations/{invitation}/accept"),
            json!({}),
        )
        .await
        .expect(404, "invitation_not_found");
    app.housekeeping().await;
    // An expired invitation does not stand in the way of a new one.
    mallory.tries_adding(&app, &chat, &[&carol]).await.ok(200);
    assert_eq!(carol.invitations(&app).await.len(), 1);
}

#[tokio::test]
async fn pending_invitations_per_user_are_limited_at_n() {
    let app = TestApp::start_with(|c| c.limits.max_pending_invitations_per_user = 2).await;
    let mallory = app.signup("+14155552091", "Mallory").await;
    let carol = app.signup("+14155552092", "Carol").await;
    let bob = app.signup("+14155552093", "Bob").await;
    carol.lets_add_to_groups(&app, "nobody").await;
    for n in 0..2 {
        mallory
            .tries_group_with(&app, &format!("g{n}"), &[&carol])
            .await
            .ok(201);
    }
    let refused = mallory.tries_group_with(&app, "g2", &[&carol, &bob]).await;
    refused.expect(409, "invitation_limit_reached");
    assert_eq!(
        chat_count(&app, &mallory).await,
        2,
        "the refused group was not made"
    );
    assert_eq!(
        chat_count(&app, &bob).await,
        0,
        "nor was anyone added by it"
    );
    assert_eq!(carol.invitations(&app).await.len(), 2);
    // An invitation pending already is no new one: asking again is fine.
    let first = carol.invitations(&app).await[1]["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = mallory.tries_adding(&app, &first, &[&carol]).await.ok(200);
    assert_eq!(ids(&again["invited"]), id(&carol));
    assert_eq!(
        carol.invitations(&app).await.len(),
        2,
        "one per chat and user"
    );
}

#[tokio::test]
async fn pending_invitations_per_group_are_limited_at_n() {
    let app = TestApp::start_with(|c| c.limits.max_pending_invitations_per_chat = 2).await;
    let mallory = app.signup("+14155552101", "Mallory").await;
    let a = app.signup("+14155552102", "A").await;
    let b = app.signup("+14155552103", "B").await;
    let c = app.signup("+14155552104", "C").await;
    for u in [&a, &b, &c] {
        u.lets_add_to_groups(&app, "nobody").await;
    }
    let chat = mallory.tries_group_with(&app, "g", &[&a, &b]).await.ok(201);
    assert_eq!(ids(&chat["invited"]).len(), 2);
    let chat = chat["id"].as_str().unwrap().to_owned();
    mallory
        .tries_adding(&app, &chat, &[&c])
        .await
        .expect(409, "invitation_limit_reached");
    assert!(c.invitations(&app).await.is_empty());
    // Once one is declined there is room again.
    let invitation = a.invitations(&app).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.delete(&app, &format!("/api/v1/invitations/{invitation}"))
        .await
        .ok(204);
    mallory.tries_adding(&app, &chat, &[&c]).await.ok(200);
}

#[tokio::test]
async fn accepting_checks_the_rules_again() {
    let app = TestApp::start_with(|c| c.limits.max_group_members = 3).await;
    let admin = app.signup("+14155552111", "Admin").await;
    let bob = app.signup("+14155552112", "Bob").await;
    let carol = app.signup("+14155552113", "Carol").await;
    let dave = app.signup("+14155552114", "Dave").await;
    carol.lets_add_to_groups(&app, "nobody").await;
    dave.lets_add_to_groups(&app, "nobody").await;
    let chat = admin.group_with(&app, "g", &[&bob]).await;
    admin
        .tries_adding(&app, &chat, &[&carol, &dave])
        .await
        .ok(200);
    let invitation_of = |u: &TestUser| {
        let (app, u) = (&app, u.clone());
        async move {
            u.invitations(app).await[0]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let carols = invitation_of(&carol).await;
    let daves = invitation_of(&dave).await;
    // Carol takes the last place; Dave finds the group full, and may try later.
    carol
        .post(
            &app,
            &format!("/api/v1/invitations/{carols}/accept"),
            json!({}),
        )
        .await
        .ok(200);
    dave.post(
        &app,
        &format!("/api/v1/invitations/{daves}/accept"),
        json!({}),
    )
    .await
    .expect(409, "group_full");
    assert_eq!(dave.invitations(&app).await.len(), 1, "it stays");
    // Once his inviter is no longer an admin, the invitation is worthless.
    bob.delete(
        &app,
        &format!("/api/v1/chats/{chat}/participants/{}", bob.user_id),
    )
    .await
    .ok(204);
    admin
        .patch(
            &app,
            &format!("/api/v1/chats/{chat}/participants/{}", carol.user_id),
            json!({"role": "admin"}),
        )
        .await
        .ok(200);
    admin
        .delete(
            &app,
            &format!("/api/v1/chats/{chat}/participants/{}", admin.user_id),
        )
        .await
        .ok(204);
    dave.post(
        &app,
        &format!("/api/v1/invitations/{daves}/accept"),
        json!({}),
    )
    .await
    .expect(409, "invitation_no_longer_valid");
    assert!(dave.invitations(&app).await.is_empty(), "it was removed");
    assert_eq!(chat_count(&app, &dave).await, 0);
}

#[tokio::test]
async fn only_admins_invite_and_direct_chats_are_not_group_adds() {
    let app = TestApp::start().await;
    let admin = app.signup("+14155552121", "Admin").await;
    let member = app.signup("+14155552122", "Member").await;
    let carol = app.signup("+14155552123", "Carol").await;
    carol.lets_add_to_groups(&app, "nobody").await;
    let chat = admin.group_with(&app, "g", &[&member]).await;
    member
        .tries_adding(&app, &chat, &[&carol])
        .await
        .expect(403, "forbidden");
    assert!(carol.invitations(&app).await.is_empty());
    // A direct chat with her is made as before.
    let direct = admin
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "direct", "participants": [carol.user_id]}),
        )
        .await
        .ok(201);
    assert!(members(&direct).contains(&carol.user_id));
    assert!(direct.get("invited").is_none());
    // Adding someone already in the group is neither an add nor an invitation.
    let again = admin.tries_adding(&app, &chat, &[&member]).await.ok(200);
    assert_eq!(ids(&again["added"]), Vec::<String>::new());
    assert_eq!(ids(&again["invited"]), Vec::<String>::new());
}

#[tokio::test]
async fn plaintext_names_in_invitations_are_never_bad_input() {
    let app = TestApp::start().await;
    let odd = "Robert'); DROP TABLE group_invitations;-- \"%_\\ <b>x</b> 😀";
    let mallory = app.signup("+14155552131", odd).await;
    let carol = app.signup("+14155552132", "Carol").await;
    carol.lets_add_to_groups(&app, "nobody").await;
    let name = "50% off_* 'quoted' \"double\" \\back\\ <script>alert(1)</script> ünïcødé";
    let chat = mallory
        .tries_group_with(&app, name, &[&carol])
        .await
        .ok(201);
    assert_eq!(chat["name"], name);
    let listed = carol.invitations(&app).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["chat_name"], name);
    assert_eq!(listed[0]["inviter_name"], odd);
    let invitation = listed[0]["id"].as_str().unwrap().to_owned();
    let joined = carol
        .post(
            &app,
            &format!("/api/v1/invitations/{invitation}/accept"),
            json!({}),
        )
        .await
        .ok(200);
    assert_eq!(joined["name"], name);
    let chat = chat["id"].as_str().unwrap().to_owned();
    mallory.sends(&app, &chat, odd).await;
    assert_eq!(carol.texts(&app, &chat).await, [odd]);
}
