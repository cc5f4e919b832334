//! Deleting one's account (and what stays of it), exporting one's data.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::support::{TestApp, TestUser};

async fn delete_account(
    app: &TestApp,
    user: &TestUser,
    body: Option<Value>,
) -> crate::support::Answer {
    app.call(Method::DELETE, "/api/v1/users/me", Some(&user.token), body)
        .await
}

#[tokio::test]
async fn deleting_an_account_needs_its_number_typed_again() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550811", "Alice").await;
    let bob = app.signup("+14155550812", "Bob").await;
    delete_account(&app, &alice, Some(json!({"phone": bob.phone})))
        .await
        .expect(422, "confirmation_mismatch");
    delete_account(&app, &alice, Some(json!({"phone": "not a number"})))
        .await
        .expect(422, "confirmation_mismatch");
    delete_account(&app, &alice, Some(json!({})))
        .await
        .expect(422, "validation_failed");
    alice.get(&app, "/api/v1/users/me").await.ok(200);
    // Any spelling of the number that parses to it confirms.
    delete_account(&app, &alice, Some(json!({"phone": "+1 (415) 555-0811"})))
        .await
        .ok(204);
    alice
        .get(&app, "/api/v1/users/me")
        .await
        .expect(401, "unauthorized");
}

#[tokio::test]
async fn a_deleted_account_leaves_its_chats_and_no_trace_of_its_number() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550801", "Alice").await;
    let laptop = app.login(&alice.phone, "Laptop").await;
    let bob = app.signup("+14155550802", "Bob").await;
    let carol = app.signup("+14155550803", "Carol").await;
    alice.adds_contact(&app, &bob).await;
    bob.adds_contact(&app, &alice).await;
    let direct = alice.direct_chat_with(&app, &bob).await;
    let group = alice.group_with(&app, "Team", &[&bob, &carol]).await;
    let hello = alice.sends(&app, &direct, "hello bob").await;
    alice.sends(&app, &group, "hello team").await;
    // An upload whose bytes hold the number: its blob must go too.
    let secret = format!("call me on {}", alice.phone);
    let media = alice
        .uploaded(&app, secret.clone().into_bytes(), "file")
        .await;
    alice
        .post(
            &app,
            "/api/v1/messages",
            json!({"chat_id": group, "type": "file", "media_id": media}),
        )
        .await
        .ok(201);
    // A verification code waiting for the number.
    app.code_for(&alice.phone).await;
    let mut laptop_socket = laptop.connect(&app).await;
    let mut bob_socket = bob.connect(&app).await;

    delete_account(&app, &alice, Some(json!({"phone": alice.phone})))
        .await
        .ok(204);

    // Every device is logged out, and its live connection closes.
    for device in [&alice, &laptop] {
        device
            .get(&app, "/api/v1/users/me")
            .await
            .expect(401, "unauthorized");
    }
    while laptop_socket.next_or_close().await.is_ok() {}

    // The members hear that she left each chat.
    let mut left = HashSet::new();
    while left.len() < 2 {
        let frame = bob_socket.next().await;
        if frame["type"] == "chat_updated" && frame["message"]["event"]["kind"] == "member_left" {
            assert_eq!(frame["message"]["event"]["user_id"], alice.user_id.as_str());
            left.insert(frame["chat_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(left, HashSet::from([direct.clone(), group.clone()]));

    // Her messages stay, from her id; the profile behind the id is gone.
    let page = bob
        .get(&app, &format!("/api/v1/chats/{direct}/messages"))
        .await
        .ok(200);
    let kept = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == hello["id"])
        .expect("her message stays");
    assert_eq!(kept["sender_id"], alice.user_id.as_str());
    assert_eq!(kept["content"], "hello bob");
    assert_eq!(page["messages"][0]["event"]["kind"], "member_left");
    bob.get(&app, &format!("/api/v1/users/{}", alice.user_id))
        .await
        .expect(404, "user_not_found");
    let contacts = bob.get(&app, "/api/v1/users/contacts").await.ok(200);
    assert_eq!(contacts["contacts"], json!([]));
    let download = bob
        .download(&app, &format!("/api/v1/media/{media}"), &[])
        .await;
    assert_eq!(download.status.as_u16(), 404, "her upload is gone");

    // The group goes on without her: a new admin, and the writer knows
    // she is gone (a send works, she cannot be added back).
    let chat = bob
        .get(&app, &format!("/api/v1/chats/{group}"))
        .await
        .ok(200);
    let participants = chat["participants"].as_array().unwrap();
    assert_eq!(participants.len(), 2);
    assert!(
        participants
            .iter()
            .all(|p| p["user_id"] != alice.user_id.as_str())
    );
    let admin = participants
        .iter()
        .find(|p| p["role"] == "admin")
        .expect("someone took over");
    let admin = if admin["user_id"] == bob.user_id.as_str() {
        &bob
    } else {
        &carol
    };
    bob.sends(&app, &group, "she left").await;
    admin
        .post(
            &app,
            &format!("/api/v1/chats/{group}/participants"),
            json!({"user_ids": [alice.user_id]}),
        )
        .await
        .expect(404, "user_not_found");
    carol
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "direct", "participants": [alice.user_id]}),
        )
        .await
        .expect(404, "user_not_found");

    // Nothing in the store holds her number, her tokens (nor their hashes)
    // or her upload: not the database (on the embedded store not its
    // write-ahead log either, truncated by the deletion's checkpoint), not
    // the blobs.
    let mut needles: Vec<Vec<u8>> = vec![
        alice.phone.as_bytes().to_vec(),
        alice.phone.as_bytes()[2..].to_vec(),
        secret.into_bytes(),
    ];
    for token in [&alice.token, &laptop.token] {
        needles.push(token.as_bytes().to_vec());
        needles.push(Sha256::digest(token.as_bytes()).to_vec());
    }
    let needles: Vec<&[u8]> = needles.iter().map(Vec::as_slice).collect();
    let copies = app.stored_copies(&needles).await;
    assert!(copies.is_empty(), "{copies:?}");
    // The number is free for a new account.
    let again = app.signup(&alice.phone, "Alice again").await;
    assert_ne!(again.user_id, alice.user_id);
}

#[tokio::test]
async fn an_export_holds_the_profile_devices_contacts_own_messages_and_uploads() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550821", "Alice").await;
    let bob = app.signup("+14155550822", "Bob").await;
    alice.adds_contact(&app, &bob).await;
    let direct = alice.direct_chat_with(&app, &bob).await;
    let group = bob.group_with(&app, "Team", &[&alice]).await;
    alice.sends(&app, &direct, "first").await;
    bob.sends(&app, &direct, "from bob").await;
    let gone = alice.sends(&app, &direct, "regretted").await;
    alice
        .delete(
            &app,
            &format!("/api/v1/messages/{}", gone["id"].as_str().unwrap()),
        )
        .await
        .ok(204);
    alice.sends(&app, &direct, "second").await;
    alice.sends(&app, &group, "in the group").await;
    alice
        .delete(
            &app,
            &format!("/api/v1/chats/{group}/participants/{}", alice.user_id),
        )
        .await
        .ok(204);
    let media = alice.uploaded(&app, b"some notes".to_vec(), "file").await;

    let export = alice.get(&app, "/api/v1/users/me/export").await.ok(200);
    assert_eq!(export["profile"]["phone"], alice.phone.as_str());
    assert_eq!(export["profile"]["name"], "Alice");
    assert_eq!(export["devices"].as_array().unwrap().len(), 1);
    assert_eq!(export["devices"][0]["current"], true);
    assert_eq!(export["contacts"][0]["user_id"], bob.user_id.as_str());
    assert_eq!(export["truncated"], false);

    let chats = export["chats"].as_array().unwrap();
    assert_eq!(chats.len(), 2, "{export}");
    let chat = |id: &str| chats.iter().find(|c| c["id"] == id).unwrap().clone();
    let texts = |c: &Value| -> Vec<String> {
        c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["sender_id"], alice.user_id.as_str(), "only her own");
                m["content"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let direct = chat(&direct);
    assert_eq!(direct["type"], "direct");
    assert_eq!(direct["my_role"], "member");
    assert_eq!(texts(&direct), ["first", "second"]);
    let group = chat(&group);
    assert_eq!(group["name"], "Team");
    assert_eq!(group["my_role"], Value::Null, "she left it");
    assert_eq!(texts(&group), ["in the group"]);

    let uploads = export["media"].as_array().unwrap();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0]["media_id"], media.as_str());
    let url = uploads[0]["url"].as_str().unwrap();
    let download = alice.download(&app, url, &[]).await;
    assert_eq!(download.status.as_u16(), 200);
    assert_eq!(download.bytes, b"some notes");

    // Someone else's token exports someone else.
    let theirs = bob.get(&app, "/api/v1/users/me/export").await.ok(200);
    assert_eq!(theirs["profile"]["user_id"], bob.user_id.as_str());
    app.call(Method::GET, "/api/v1/users/me/export", None, None)
        .await
        .expect(401, "unauthorized");
}
