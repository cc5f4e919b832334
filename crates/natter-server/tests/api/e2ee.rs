//! End-to-end encryption: the server as MLS delivery service. Identity and
//! device keys, the KeyPackage directory, commits in epoch order, Welcomes
//! in device inboxes, handovers, and the application-message epoch window.
//! Real MLS bytes come from OpenMLS where the framing matters.

use std::collections::HashSet;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    Identity, MlsDevice, TestApp, TestUser, b64, encrypted_chat, mls_app, mls_private,
    mls_private_bytes,
};

async fn put(app: &TestApp, user: &TestUser, path: &str, body: Value) -> crate::support::Answer {
    app.call(Method::PUT, path, Some(&user.token), Some(body))
        .await
}

async fn stock(app: &TestApp, user: &TestUser) -> Value {
    user.get(app, "/api/v1/devices/me/key-packages")
        .await
        .ok(200)
}

async fn claim(app: &TestApp, by: &TestUser, of: &TestUser) -> Value {
    by.post(
        app,
        "/api/v1/key-packages/claim",
        json!({"user_ids": [of.user_id]}),
    )
    .await
    .ok(200)
}

fn commit_body(chat: &str, epoch: u64) -> Value {
    json!({"commit": mls_private(chat, epoch, 3, &[9; 8])})
}

async fn chat_epoch(app: &TestApp, user: &TestUser, chat: &str) -> u64 {
    user.get(app, &format!("/api/v1/chats/{chat}"))
        .await
        .ok(200)["epoch"]
        .as_u64()
        .unwrap()
}

/// Moves an encrypted chat to `epoch` with hand-made commits.
async fn commit_up_to(app: &TestApp, user: &TestUser, chat: &str, epoch: u64) {
    for e in chat_epoch(app, user, chat).await..epoch {
        let accepted = user
            .post(
                app,
                &format!("/api/v1/chats/{chat}/commits"),
                commit_body(chat, e),
            )
            .await
            .ok(201);
        assert_eq!(accepted["epoch"], e + 1);
    }
}

#[tokio::test]
async fn key_packages_are_published_claimed_once_and_counted() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551001", "Alice").await;
    let bob = app.signup("+14155551002", "Bob").await;
    let a = MlsDevice::certified(&app, &alice, &Identity::new(), true).await;
    MlsDevice::certified(&app, &bob, &Identity::new(), true).await;

    let published = a.publishes(&app, 3, true).await;
    assert_eq!(published["available"], 3);
    assert_eq!(published["last_resort"], true);
    assert_eq!(published["low_water"], 10);

    let claimed = claim(&app, &bob, &alice).await;
    let user = &claimed["users"][0];
    assert_eq!(user["user_id"], alice.user_id.as_str());
    assert!(user["identity_key"].is_string());
    let device = &user["devices"][0];
    assert_eq!(device["device_id"], alice.device_id.as_str());
    assert_eq!(device["last_resort"], false);
    assert_eq!(device["signature_key"], b64(a.signer.public()));
    assert_eq!(stock(&app, &alice).await["available"], 2);

    // The caller's own device is never handed a package of itself.
    let mine = claim(&app, &alice, &alice).await;
    assert_eq!(mine["users"][0]["devices"], json!([]));

    // Others see certified devices only; the user sees all of theirs.
    let phone = app.login("+14155551001", "phone").await;
    put(
        &app,
        &phone,
        "/api/v1/devices/me/credential",
        json!({"signature_key": b64(&[1; 32]), "link_key": b64(&[2; 32])}),
    )
    .await
    .ok(204);
    let seen_by_bob = bob
        .get(&app, &format!("/api/v1/users/{}/devices", alice.user_id))
        .await
        .ok(200);
    assert_eq!(seen_by_bob["devices"].as_array().unwrap().len(), 1);
    let seen_by_alice = alice.get(&app, "/api/v1/users/me/devices").await.ok(200);
    assert_eq!(seen_by_alice["devices"].as_array().unwrap().len(), 2);
    assert_eq!(seen_by_alice["devices"][1]["certificate"], Value::Null);
}

#[tokio::test]
async fn concurrent_claims_get_distinct_packages_then_the_last_resort_until_replenished() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551011", "Alice").await;
    let a = MlsDevice::certified(&app, &alice, &Identity::new(), true).await;
    let mut claimers = Vec::new();
    for i in 0..6 {
        let u = app.signup(&format!("+1415555102{i}"), "Claimer").await;
        claimers.push(u);
    }
    a.publishes(&app, 6, true).await;
    let claims = claimers.iter().map(|u| claim(&app, u, &alice));
    let answers = futures_util::future::join_all(claims).await;
    let packages: HashSet<String> = answers
        .iter()
        .map(|c| {
            let d = &c["users"][0]["devices"][0];
            assert_eq!(d["last_resort"], false, "{c}");
            d["key_package"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        packages.len(),
        6,
        "each one-time package to exactly one claimer"
    );
    assert_eq!(stock(&app, &alice).await["available"], 0);

    // None left: the last-resort package, kept for the next claimer.
    let first = claim(&app, &claimers[0], &alice).await;
    let second = claim(&app, &claimers[1], &alice).await;
    let d1 = &first["users"][0]["devices"][0];
    let d2 = &second["users"][0]["devices"][0];
    assert_eq!(d1["last_resort"], true);
    assert_eq!(d1["key_package"], d2["key_package"]);
    assert!(!packages.contains(d1["key_package"].as_str().unwrap()));
    assert_eq!(stock(&app, &alice).await["last_resort"], true);

    // Replenished: one-time packages again.
    a.publishes(&app, 1, false).await;
    let again = claim(&app, &claimers[2], &alice).await;
    assert_eq!(again["users"][0]["devices"][0]["last_resort"], false);
}

#[tokio::test]
async fn a_claim_below_the_low_water_mark_asks_the_device_for_more() {
    let app = TestApp::start_with(|c| c.e2ee.key_package_low_water = 2).await;
    let alice = app.signup("+14155551031", "Alice").await;
    let bob = app.signup("+14155551032", "Bob").await;
    let a = MlsDevice::certified(&app, &alice, &Identity::new(), true).await;
    a.publishes(&app, 3, false).await;
    let mut ws = alice.connect(&app).await;
    // 3 -> 2: not below the mark.
    claim(&app, &bob, &alice).await;
    ws.nothing_of("key_packages_low", std::time::Duration::from_millis(300))
        .await;
    // 2 -> 1: below.
    claim(&app, &bob, &alice).await;
    let low = ws.next_of("key_packages_low").await;
    assert_eq!(low["available"], 1);
}

#[tokio::test]
async fn the_directory_refuses_bad_key_packages_with_typed_errors_and_stores_nothing() {
    // A KeyPackage's size depends on nothing that varies between devices.
    let probe = {
        let (user, device) = (natter_proto::UserId::new(), natter_proto::DeviceId::new());
        let u = TestUser {
            phone: String::new(),
            user_id: user.to_string(),
            device_id: device.to_string(),
            token: String::new(),
            // Never used: the probe only makes a KeyPackage.
            session: natter_client::Client::new(
                "http://127.0.0.1:9",
                std::time::Duration::from_secs(1),
            )
            .unwrap()
            .session(user, device, ""),
        };
        MlsDevice::new(&u).key_package_bytes().len() as u64
    };
    let app = TestApp::start_with(|c| {
        c.e2ee.key_package_batch_max = 2;
        c.e2ee.key_package_max_bytes = probe;
    })
    .await;
    let alice = app.signup("+14155551041", "Alice").await;
    let bob = app.signup("+14155551042", "Bob").await;
    let identity = Identity::new();
    let a = MlsDevice::certified(&app, &alice, &identity, true).await;
    let b = MlsDevice::certified(&app, &bob, &Identity::new(), true).await;
    let publish = |body: Value| alice.post(&app, "/api/v1/devices/me/key-packages", body);

    // A suite the server does not take (the KeyPackage's suite field).
    let mut bytes = a.key_package_bytes();
    bytes[6..8].copy_from_slice(&0x0003u16.to_be_bytes());
    publish(json!({"key_packages": [b64(&bytes)]}))
        .await
        .expect(422, "invalid_key_package");
    // Expired.
    let expired = {
        let bundle = KeyPackage::builder()
            .key_package_lifetime(Lifetime::new(0))
            .build(
                crate::support::MLS_SUITE,
                &a.provider,
                &a.signer,
                a.credential.clone(),
            )
            .unwrap();
        let message: MlsMessageOut = bundle.key_package().clone().into();
        message.tls_serialize_detached().unwrap()
    };
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    publish(json!({"key_packages": [b64(&expired)]}))
        .await
        .expect(422, "invalid_key_package");
    // Another device's credential.
    publish(json!({"key_packages": [b.key_package()]}))
        .await
        .expect(422, "invalid_key_package");
    // Not an MLS KeyPackage at all.
    publish(json!({"key_packages": [mls_app(&alice.user_id, 0)]}))
        .await
        .expect(422, "invalid_key_package");
    // A batch of N passes, N + 1 does not.
    publish(json!({"key_packages": [a.key_package(), a.key_package(), a.key_package()]}))
        .await
        .expect(422, "validation_failed");
    // A package of N bytes passes, N + 1 does not.
    let mut long = a.key_package_bytes();
    long.push(0);
    publish(json!({"key_packages": [a.key_package(), b64(&long)]}))
        .await
        .expect(413, "payload_too_large");
    assert_eq!(stock(&app, &alice).await["available"], 0, "nothing stored");
    publish(json!({"key_packages": [a.key_package(), a.key_package()]}))
        .await
        .ok(201);

    // A device without registered keys may publish nothing.
    let tablet = app.login("+14155551041", "tablet").await;
    let t = MlsDevice::new(&tablet);
    tablet
        .post(
            &app,
            "/api/v1/devices/me/key-packages",
            json!({"key_packages": [t.key_package()]}),
        )
        .await
        .expect(409, "device_keys_missing");
    put(
        &app,
        &tablet,
        "/api/v1/devices/me/credential",
        json!({"signature_key": b64(t.signer.public()), "link_key": b64(&[3; 32])}),
    )
    .await
    .ok(204);
    // With keys but no certificate it may publish (so it can be added the
    // moment it is certified), but no claim hands its packages out.
    tablet
        .post(
            &app,
            "/api/v1/devices/me/key-packages",
            json!({"key_packages": [t.key_package()]}),
        )
        .await
        .ok(201);
    let claimed = claim(&app, &bob, &alice).await;
    let devices = |claimed: &Value| -> Vec<String> {
        claimed["users"][0]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["device_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(!devices(&claimed).contains(&tablet.device_id), "{claimed}");
    // Certified by the first device (it holds the identity key): now it is claimed.
    put(
        &app,
        &alice,
        &format!("/api/v1/devices/{}/credential", tablet.device_id),
        json!({
            "signature_key": b64(t.signer.public()),
            "link_key": b64(&[3; 32]),
            "certificate": identity.certify(&tablet, t.signer.public()),
        }),
    )
    .await
    .ok(204);
    let claimed = claim(&app, &bob, &alice).await;
    assert!(devices(&claimed).contains(&tablet.device_id), "{claimed}");
}

#[tokio::test]
async fn device_keys_are_set_once_and_certificates_must_verify() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551051", "Alice").await;
    let bob = app.signup("+14155551052", "Bob").await;
    let identity = Identity::new();
    put(
        &app,
        &alice,
        "/api/v1/users/me/identity",
        json!({"identity_key": identity.public()}),
    )
    .await
    .ok(204);
    let keys = json!({"signature_key": b64(&[1; 32]), "link_key": b64(&[2; 32])});
    // Someone else's device is not found.
    put(
        &app,
        &alice,
        &format!("/api/v1/devices/{}/credential", bob.device_id),
        keys.clone(),
    )
    .await
    .expect(404, "device_not_found");
    // A certificate by another key does not verify.
    let forged = Identity::new().certify(&alice, &[1; 32]);
    let mut body = keys.clone();
    body["certificate"] = json!(forged);
    put(&app, &alice, "/api/v1/devices/me/credential", body)
        .await
        .expect(422, "invalid_certificate");
    put(&app, &alice, "/api/v1/devices/me/credential", keys.clone())
        .await
        .ok(204);
    // The same keys again are fine; other keys are not.
    put(&app, &alice, "/api/v1/devices/me/credential", keys.clone())
        .await
        .ok(204);
    put(
        &app,
        &alice,
        "/api/v1/devices/me/credential",
        json!({"signature_key": b64(&[9; 32]), "link_key": b64(&[2; 32])}),
    )
    .await
    .expect(409, "credential_exists");
    let mut body = keys.clone();
    body["certificate"] = json!(identity.certify(&alice, &[1; 32]));
    put(&app, &alice, "/api/v1/devices/me/credential", body)
        .await
        .ok(204);
    let me = alice.get(&app, "/api/v1/users/me/devices").await.ok(200);
    assert!(me["devices"][0]["certificate"].is_string());
    // A new identity key voids the certificates.
    put(
        &app,
        &alice,
        "/api/v1/users/me/identity",
        json!({"identity_key": Identity::new().public()}),
    )
    .await
    .ok(204);
    let me = alice.get(&app, "/api/v1/users/me/devices").await.ok(200);
    assert_eq!(me["devices"][0]["certificate"], Value::Null);
}

#[tokio::test]
async fn the_first_commit_for_an_epoch_wins_and_a_concurrent_one_is_stale() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551061", "Alice").await;
    let bob = app.signup("+14155551062", "Bob").await;
    let chat = encrypted_chat(&app, &alice, &[&bob]).await;
    assert_eq!(chat_epoch(&app, &alice, &chat).await, 0);
    let path = format!("/api/v1/chats/{chat}/commits");
    let (one, two) = tokio::join!(
        alice.post(&app, &path, commit_body(&chat, 0)),
        bob.post(&app, &path, commit_body(&chat, 0)),
    );
    let mut statuses = [one.status.as_u16(), two.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{one:?} {two:?}");
    let loser = if one.status == 409 { one } else { two };
    loser.expect(409, "stale_epoch");
    assert_eq!(chat_epoch(&app, &bob, &chat).await, 1);

    // A retry of an accepted commit returns it, whatever the epoch now.
    let mut body = commit_body(&chat, 1);
    body["client_message_id"] = json!("c-1");
    let first = alice.post(&app, &path, body.clone()).await.ok(201);
    assert_eq!(first["epoch"], 2);
    assert_eq!(first["message"]["type"], "commit");
    let retry = alice.post(&app, &path, body).await.ok(200);
    assert_eq!(retry["message"]["id"], first["message"]["id"]);
    // A commit for a past or a future epoch is stale.
    alice
        .post(&app, &path, commit_body(&chat, 1))
        .await
        .expect(409, "stale_epoch");
    alice
        .post(&app, &path, commit_body(&chat, 3))
        .await
        .expect(409, "stale_epoch");

    // Commits are never unread, never the chat list's last message.
    let list = bob.get(&app, "/api/v1/chats").await.ok(200);
    assert_eq!(list["chats"][0]["unread_count"], 0);
    assert_eq!(list["chats"][0]["last_message"], Value::Null);
    // ... but they are in the log, in order, for every member's devices.
    let page = bob
        .get(&app, &format!("/api/v1/chats/{chat}/messages"))
        .await
        .ok(200);
    let commits = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "commit")
        .count();
    assert_eq!(commits, 2);
}

#[tokio::test]
async fn application_messages_are_taken_for_the_current_epoch_and_the_three_before() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551071", "Alice").await;
    let bob = app.signup("+14155551072", "Bob").await;
    let chat = encrypted_chat(&app, &alice, &[&bob]).await;
    let other = encrypted_chat(&app, &alice, &[&bob]).await;
    commit_up_to(&app, &alice, &chat, 4).await;
    let send = |ciphertext: String| {
        alice.post(
            &app,
            "/api/v1/messages",
            json!({"chat_id": chat, "ciphertext": ciphertext}),
        )
    };
    send(mls_app(&chat, 4)).await.ok(201);
    let kept = send(mls_app(&chat, 1)).await.ok(201);
    send(mls_app(&chat, 0))
        .await
        .expect(422, "invalid_mls_message");
    send(mls_app(&chat, 5))
        .await
        .expect(422, "invalid_mls_message");
    // Another chat's group, a commit, garbage.
    send(mls_app(&other, 4))
        .await
        .expect(422, "invalid_mls_message");
    send(mls_private(&chat, 4, 3, &[1]))
        .await
        .expect(422, "invalid_mls_message");
    send(b64(b"not an MLS message"))
        .await
        .expect(422, "invalid_mls_message");
    // Edits are held to the same window.
    let id = kept["id"].as_str().unwrap();
    alice
        .patch(
            &app,
            &format!("/api/v1/messages/{id}"),
            json!({"ciphertext": mls_app(&chat, 0)}),
        )
        .await
        .expect(422, "invalid_mls_message");
    alice
        .patch(
            &app,
            &format!("/api/v1/messages/{id}"),
            json!({"ciphertext": mls_app(&chat, 3)}),
        )
        .await
        .ok(200);
    // And so are sends over the WebSocket.
    let mut ws = alice.connect(&app).await;
    ws.send(json!({"type": "send_message", "chat_id": chat, "ciphertext": mls_app(&chat, 9), "client_message_id": "ws-1"}))
        .await;
    let refused = ws.next_of("error").await;
    assert_eq!(refused["code"], "invalid_mls_message", "{refused}");
}

#[tokio::test]
async fn handshakes_must_be_well_formed_commits_of_the_chats_own_group() {
    let app = TestApp::start_with(|c| c.e2ee.commit_max_bytes = 40).await;
    let alice = app.signup("+14155551081", "Alice").await;
    let bob = app.signup("+14155551082", "Bob").await;
    let chat = encrypted_chat(&app, &alice, &[&bob]).await;
    let other = encrypted_chat(&app, &alice, &[&bob]).await;
    let path = format!("/api/v1/chats/{chat}/commits");
    let post = |commit: String| alice.post(&app, &path, json!({"commit": commit}));
    post(mls_private(&other, 0, 3, &[1; 8]))
        .await
        .expect(422, "invalid_mls_message");
    post(mls_private(&chat, 0, 1, &[1; 8]))
        .await
        .expect(422, "invalid_mls_message");
    post(b64(&[0, 1, 0, 2, 16, 1, 2]))
        .await
        .expect(422, "invalid_mls_message");
    // A commit of N bytes passes, N + 1 does not.
    assert_eq!(mls_private_bytes(&chat, 0, 3, &[1; 8]).len(), 40);
    post(mls_private(&chat, 0, 3, &[1; 9]))
        .await
        .expect(413, "payload_too_large");
    post(mls_private(&chat, 0, 3, &[1; 8])).await.ok(201);
    // A plaintext chat takes no commits; a stranger's chat is not found.
    let plain = alice.direct_chat_with(&app, &bob).await;
    alice
        .post(
            &app,
            &format!("/api/v1/chats/{plain}/commits"),
            json!({"commit": mls_private(&plain, 0, 3, &[1; 8])}),
        )
        .await
        .expect(422, "validation_failed");
    let eve = app.signup("+14155551083", "Eve").await;
    eve.post(
        &app,
        &path,
        json!({"commit": mls_private(&chat, 1, 3, &[1; 8])}),
    )
    .await
    .expect(404, "chat_not_found");
    // Commits are not messages.
    alice
        .post(
            &app,
            "/api/v1/messages",
            json!({"chat_id": chat, "type": "commit", "ciphertext": mls_app(&chat, 1)}),
        )
        .await
        .expect(422, "validation_failed");
}

#[tokio::test]
async fn a_real_openmls_add_delivers_the_welcome_to_the_inbox_and_over_the_websocket() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551091", "Alice").await;
    let bob = app.signup("+14155551092", "Bob").await;
    let carol = app.signup("+14155551093", "Carol").await;
    let a = MlsDevice::certified(&app, &alice, &Identity::new(), true).await;
    let b = MlsDevice::certified(&app, &bob, &Identity::new(), true).await;
    b.publishes(&app, 2, true).await;
    let chat = encrypted_chat(&app, &alice, &[&bob]).await;
    let group_id = uuid::Uuid::parse_str(&chat).unwrap();

    // Alice claims Bob's package and adds his device to the group.
    let claimed = claim(&app, &alice, &bob).await;
    let kp_b64 = claimed["users"][0]["devices"][0]["key_package"]
        .as_str()
        .unwrap();
    let kp_bytes = crate::support::unb64(kp_b64);
    let MlsMessageBodyIn::KeyPackage(kp_in) = MlsMessageIn::tls_deserialize_exact(&kp_bytes)
        .unwrap()
        .extract()
    else {
        panic!("a KeyPackage")
    };
    let kp = kp_in
        .validate(a.provider.crypto(), ProtocolVersion::Mls10)
        .unwrap();
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(crate::support::MLS_SUITE)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(3)
        .build();
    let mut group = MlsGroup::new_with_group_id(
        &a.provider,
        &a.signer,
        &config,
        GroupId::from_slice(group_id.as_bytes()),
        a.credential.clone(),
    )
    .unwrap();
    let (commit, welcome, _) = group.add_members(&a.provider, &a.signer, &[kp]).unwrap();
    let commit = commit.tls_serialize_detached().unwrap();
    let welcome = welcome.tls_serialize_detached().unwrap();

    let mut bob_ws = bob.connect(&app).await;
    let path = format!("/api/v1/chats/{chat}/commits");
    // A Welcome for the device of someone not in the chat is refused.
    alice
        .post(
            &app,
            &path,
            json!({"commit": b64(&commit), "welcome": b64(&welcome), "welcome_devices": [carol.device_id]}),
        )
        .await
        .expect(422, "validation_failed");
    let accepted = alice
        .post(
            &app,
            &path,
            json!({"commit": b64(&commit), "welcome": b64(&welcome), "welcome_devices": [bob.device_id]}),
        )
        .await
        .ok(201);
    assert_eq!(accepted["epoch"], 1);
    let seq = accepted["message"]["seq"].as_i64().unwrap();

    // The commit reaches the members' devices as a log entry; the Welcome
    // reaches Bob's device as an inbox item.
    let commit_entry = bob_ws.next_of("new_message").await;
    assert_eq!(commit_entry["message"]["type"], "commit");
    let live = bob_ws.next_of("inbox").await;
    assert_eq!(live["item"]["kind"], "welcome");
    assert_eq!(live["item"]["chat_id"], chat.as_str());
    assert_eq!(live["item"]["seq"], seq);
    assert_eq!(live["item"]["payload"], b64(&welcome));
    let inbox = bob.get(&app, "/api/v1/devices/me/inbox").await.ok(200);
    assert_eq!(inbox["items"].as_array().unwrap().len(), 1);
    assert_eq!(inbox["items"][0]["from_device"], alice.device_id.as_str());

    // Bob joins from the Welcome; Alice's message decrypts on his side.
    let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(&welcome)
        .unwrap()
        .extract()
    else {
        panic!("a Welcome")
    };
    let mut bob_group =
        StagedWelcome::new_from_welcome(&b.provider, &MlsGroupJoinConfig::default(), w, None)
            .unwrap()
            .into_group(&b.provider)
            .unwrap();
    group.merge_pending_commit(&a.provider).unwrap();
    let hello = group
        .create_message(&a.provider, &a.signer, b"hello bob")
        .unwrap()
        .tls_serialize_detached()
        .unwrap();
    alice
        .post(
            &app,
            "/api/v1/messages",
            json!({"chat_id": chat, "ciphertext": b64(&hello)}),
        )
        .await
        .ok(201);
    let page = bob
        .get(&app, &format!("/api/v1/chats/{chat}/messages"))
        .await
        .ok(200);
    let stored = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "text")
        .unwrap()["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let message = MlsMessageIn::tls_deserialize_exact(crate::support::unb64(&stored)).unwrap();
    let processed = bob_group
        .process_message(&b.provider, message.try_into_protocol_message().unwrap())
        .unwrap();
    let ProcessedMessageContent::ApplicationMessage(plain) = processed.into_content() else {
        panic!("an application message")
    };
    assert_eq!(plain.into_bytes(), b"hello bob");

    // Acknowledged, it is gone; a second ack finds nothing.
    let id = inbox["items"][0]["id"].as_i64().unwrap();
    bob.delete(&app, &format!("/api/v1/devices/me/inbox/{id}"))
        .await
        .ok(204);
    bob.delete(&app, &format!("/api/v1/devices/me/inbox/{id}"))
        .await
        .expect(404, "not_found");
    let inbox = bob.get(&app, "/api/v1/devices/me/inbox").await.ok(200);
    assert_eq!(inbox["items"], json!([]));
}

#[tokio::test]
async fn handovers_stay_within_one_account_and_inboxes_are_bounded() {
    let app = TestApp::start_with(|c| {
        c.e2ee.inbox_max_items = 2;
        c.e2ee.handover_max_bytes = 16;
    })
    .await;
    let alice = app.signup("+14155551101", "Alice").await;
    let bob = app.signup("+14155551102", "Bob").await;
    let tablet = app.login("+14155551101", "tablet").await;
    let to = |device: &str| format!("/api/v1/devices/{device}/handover");
    // Not to someone else's device, not to oneself.
    alice
        .post(&app, &to(&bob.device_id), json!({"payload": b64(&[1; 16])}))
        .await
        .expect(404, "device_not_found");
    alice
        .post(&app, &to("me"), json!({"payload": b64(&[1; 16])}))
        .await
        .expect(404, "device_not_found");
    // N bytes pass, N + 1 do not.
    alice
        .post(
            &app,
            &to(&tablet.device_id),
            json!({"payload": b64(&[1; 17])}),
        )
        .await
        .expect(413, "payload_too_large");
    let mut ws = tablet.connect(&app).await;
    let item = alice
        .post(
            &app,
            &to(&tablet.device_id),
            json!({"payload": b64(&[1; 16])}),
        )
        .await
        .ok(201);
    assert_eq!(item["kind"], "handover");
    assert_eq!(item["from_device"], alice.device_id.as_str());
    let live = ws.next_of("inbox").await;
    assert_eq!(live["item"]["id"], item["id"]);
    // An inbox of N items takes no N + 1st.
    alice
        .post(
            &app,
            &to(&tablet.device_id),
            json!({"payload": b64(&[2; 16])}),
        )
        .await
        .ok(201);
    alice
        .post(
            &app,
            &to(&tablet.device_id),
            json!({"payload": b64(&[3; 16])}),
        )
        .await
        .expect(409, "inbox_full");
    let inbox = tablet.get(&app, "/api/v1/devices/me/inbox").await.ok(200);
    assert_eq!(inbox["items"].as_array().unwrap().len(), 2);
    // Alice's own inbox is empty; she cannot ack the tablet's items.
    let id = item["id"].as_i64().unwrap();
    alice
        .delete(&app, &format!("/api/v1/devices/me/inbox/{id}"))
        .await
        .expect(404, "not_found");
}

#[tokio::test]
async fn device_changes_are_ordered_entries_of_the_users_encrypted_chats() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551111", "Alice").await;
    let bob = app.signup("+14155551112", "Bob").await;
    let sealed = encrypted_chat(&app, &alice, &[&bob]).await;
    let plain = alice.group_with(&app, "Plain", &[&bob]).await;
    let identity = Identity::new();
    MlsDevice::certified(&app, &alice, &identity, true).await;
    let tablet = app.login("+14155551111", "tablet").await;
    MlsDevice::certified(&app, &tablet, &identity, false).await;
    put(
        &app,
        &alice,
        "/api/v1/users/me/identity",
        json!({"identity_key": Identity::new().public()}),
    )
    .await
    .ok(204);
    alice
        .delete(&app, &format!("/api/v1/devices/{}", tablet.device_id))
        .await
        .ok(204);
    let events = |chat: String| {
        let bob = bob.clone();
        let app = &app;
        async move {
            let page = bob
                .get(app, &format!("/api/v1/chats/{chat}/messages"))
                .await
                .ok(200);
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["event"]["kind"] == "devices_changed")
                .map(|m| m["event"]["user_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    // The first identity key, two certifications and a new identity key;
    // the revoked tablet was no longer certified (the new key voided its
    // certificate), so its revocation changes no one's view.
    let changes = events(sealed).await;
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert!(changes.iter().all(|u| *u == alice.user_id));
    assert_eq!(events(plain).await.len(), 0);
}

#[tokio::test]
async fn a_server_that_requires_encryption_refuses_plaintext_chats() {
    let app = TestApp::start_with(|c| c.e2ee.require_encryption = true).await;
    let alice = app.signup("+14155551121", "Alice").await;
    let bob = app.signup("+14155551122", "Bob").await;
    alice
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "direct", "participants": [bob.user_id]}),
        )
        .await
        .expect(403, "encryption_required");
    encrypted_chat(&app, &alice, &[&bob]).await;
}

#[tokio::test]
async fn claims_are_rate_limited_per_user() {
    let app = TestApp::start_with(|c| c.e2ee.claims_per_minute = 2).await;
    let alice = app.signup("+14155551131", "Alice").await;
    let bob = app.signup("+14155551132", "Bob").await;
    claim(&app, &bob, &alice).await;
    claim(&app, &bob, &alice).await;
    bob.post(
        &app,
        "/api/v1/key-packages/claim",
        json!({"user_ids": [alice.user_id]}),
    )
    .await
    .expect(429, "rate_limited");
}

#[tokio::test]
async fn a_device_keeps_at_most_its_stock_and_a_welcome_is_bounded() {
    let app = TestApp::start_with(|c| {
        c.e2ee.key_packages_max_per_device = 2;
        c.e2ee.welcome_max_bytes = 8;
    })
    .await;
    let alice = app.signup("+14155551141", "Alice").await;
    let bob = app.signup("+14155551142", "Bob").await;
    let a = MlsDevice::certified(&app, &alice, &Identity::new(), true).await;
    a.publishes(&app, 2, false).await;
    alice
        .post(
            &app,
            "/api/v1/devices/me/key-packages",
            json!({"key_packages": [a.key_package()]}),
        )
        .await
        .expect(422, "validation_failed");
    assert_eq!(stock(&app, &alice).await["available"], 2);

    // A Welcome (version, wire format 3, suite, then the encrypted rest)
    // of N bytes passes, N + 1 does not.
    let chat = encrypted_chat(&app, &alice, &[&bob]).await;
    let path = format!("/api/v1/chats/{chat}/commits");
    let with_welcome = |epoch: u64, welcome: &[u8]| {
        json!({
            "commit": mls_private(&chat, epoch, 3, &[1; 8]),
            "welcome": b64(welcome),
            "welcome_devices": [bob.device_id],
        })
    };
    alice
        .post(&app, &path, with_welcome(0, &[0, 1, 0, 3, 0, 1, 9, 9, 9]))
        .await
        .expect(413, "payload_too_large");
    alice
        .post(&app, &path, with_welcome(0, &[0, 1, 0, 2, 0, 1, 9, 9]))
        .await
        .expect(422, "invalid_mls_message");
    alice
        .post(&app, &path, with_welcome(0, &[0, 1, 0, 3, 0, 1, 9, 9]))
        .await
        .ok(201);
    let inbox = bob.get(&app, "/api/v1/devices/me/inbox").await.ok(200);
    assert_eq!(inbox["items"][0]["payload"], b64(&[0, 1, 0, 3, 0, 1, 9, 9]));
}

#[tokio::test]
async fn deleting_an_account_removes_its_keys() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551151", "Alice").await;
    let bob = app.signup("+14155551152", "Bob").await;
    let a = MlsDevice::certified(&app, &alice, &Identity::new(), true).await;
    a.publishes(&app, 2, true).await;
    app.call(
        Method::DELETE,
        "/api/v1/users/me",
        Some(&alice.token),
        Some(json!({"phone": alice.phone})),
    )
    .await
    .ok(204);
    bob.get(&app, &format!("/api/v1/users/{}/devices", alice.user_id))
        .await
        .expect(404, "user_not_found");
    let claimed = bob
        .post(
            &app,
            "/api/v1/key-packages/claim",
            json!({"user_ids": [alice.user_id]}),
        )
        .await;
    claimed.expect(404, "user_not_found");
}
