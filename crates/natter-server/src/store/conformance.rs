//! The same scenarios run against every engine: the embedded SQLite store
//! and PostgreSQL (the test command's cluster, or the test's own). Each
//! scenario checks what it expects and returns a transcript of what the
//! engine answered; the engines must answer alike, so the test compares
//! their transcripts too. Limits are tested at N and N+1, and on
//! PostgreSQL the races many nodes make are run for real.

use std::time::Duration;

use natter_proto::push::{ApnsEnvironment, PushKind};
use natter_proto::users::{GroupAddPermission, LastSeenVisibility};
use natter_proto::{ChatId, DeviceId, UserId};
use natter_testkit::pg::{PgCluster, TestDatabase};

use super::Store as _;
use super::admin::{InviteRegistration, Invites, NewInvite, RegisteredByInvite};
use super::postgres::{PgOptions, Postgres, migrations_fingerprint};
use super::sqlite::SqliteStore;
use natter_proto::MessageId;
use natter_proto::chats::{ChatKind, MessageType, Role};

use super::e2ee::{
    Committed, CredentialSet, DeviceCredential, DeviceInbox, HandedOver, KeyDirectory, NewCommit,
    NewHandover, Published,
};
use natter_proto::media::MediaKind;

use super::{
    Accounts, ContactAdded, LoggedIn, Login, NewDevice, NewPush, NewVerificationCode, PendingPush,
    ProfilePatch, PushChannelRecord, PushFinished, PushOutbox, Registered, Registration, User,
};
use super::{
    ChatChange, ChatChanged, ChatCreated, ChatLog, EntryKind, EventBody, HistoryQuery, LogEntry,
    MessageChange, MessageChanged, NewChat, NewContent, NewMessage, Posted, ReceiptState,
};
use natter_proto::InvitationId;

use super::admin::{Administration, Deactivated};
use super::{AccountsAcrossChats, FinishedMedia, MediaCreated, MediaSegment, MediaStore, NewMedia};
use super::{GroupAdded, GroupCreated, GroupInvitations, InvitationAccepted, InvitationRules};
use super::{SearchIndex, SearchQuery};
use crate::clock::Timestamp;
use crate::config::StoreConfig;
use crate::phone::Phone;
use crate::push::PushTarget;
use crate::secret::{CodeHash, PlainToken};

/// What an engine answered, step by step, in a form both engines share.
type Transcript = Vec<String>;

/// A fixed clock, so both engines see the same times.
const T0: Timestamp = Timestamp(1_700_000_000_000);

fn phone(n: u32) -> Phone {
    Phone::from_stored(format!("+1415555{n:04}"))
}

fn code(n: u8) -> CodeHash {
    CodeHash([n; 32])
}

fn new_code(phone: &Phone, hash: CodeHash, expires_at: Timestamp) -> NewVerificationCode {
    NewVerificationCode {
        phone: phone.clone(),
        hash,
        created_at: T0,
        expires_at,
        shown: None,
    }
}

fn new_device(name: &str, at: Timestamp) -> NewDevice {
    NewDevice {
        id: DeviceId::new(),
        name: name.into(),
        token_hash: PlainToken::generate().hash(),
        created_at: at,
    }
}

/// Registers user `n` named `name` with a fresh code.
async fn register(store: &dyn Accounts, n: u32, name: &str) -> User {
    let phone = phone(n);
    store
        .put_verification_code(new_code(&phone, code(1), T0.plus(Duration::from_secs(60))))
        .await
        .unwrap();
    let user = User {
        id: UserId::new(),
        phone,
        name: name.into(),
        about: String::new(),
        last_seen_visibility: LastSeenVisibility::Everyone,
        group_add_permission: GroupAddPermission::Everyone,
        last_seen_at: None,
        profile_pic: None,
        created_at: T0,
    };
    match store
        .register(Registration {
            code: code(1),
            user,
            device: new_device("first", T0),
        })
        .await
        .unwrap()
    {
        Registered::Created(user) => user,
        other => panic!("registration refused: {other:?}"),
    }
}

/// Verification codes: attempts counted up to the limit (N allowed, N+1
/// refused), expiry, replacement, and a code consumed once.
async fn verification_codes(store: &dyn Accounts) -> Transcript {
    let mut t = Transcript::new();
    let p = phone(1);
    let expires = T0.plus(Duration::from_secs(60));
    store
        .put_verification_code(new_code(&p, code(7), expires))
        .await
        .unwrap();
    for attempt in 1..=4 {
        let hash = store.attempt_verification_code(&p, T0, 3).await.unwrap();
        assert_eq!(hash.is_some(), attempt <= 3, "attempt {attempt} of 3");
        t.push(format!("attempt {attempt}: {}", hash.is_some()));
    }
    // A new code starts the count again; an expired one answers nothing.
    store
        .put_verification_code(new_code(&p, code(8), expires))
        .await
        .unwrap();
    let hash = store.attempt_verification_code(&p, T0, 3).await.unwrap();
    assert_eq!(hash.map(|h| h.0), Some(code(8).0));
    assert!(
        store
            .attempt_verification_code(&p, expires, 3)
            .await
            .unwrap()
            .is_none()
    );
    let other = phone(2);
    store
        .put_verification_code(new_code(&other, code(9), T0.plus(Duration::from_secs(1))))
        .await
        .unwrap();
    let deleted = store
        .delete_expired_verification_codes(T0.plus(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(deleted, 1, "only the number-2 code had expired");
    t.push(format!("expired deleted: {deleted}"));
    assert!(
        store
            .attempt_verification_code(&p, T0, 3)
            .await
            .unwrap()
            .is_some()
    );
    t
}

/// Sign-up and login: a taken number, a consumed code, the device limit at
/// N and N+1 (the refused try does not count against the code), devices
/// and tokens.
async fn registration_and_login(store: &dyn Accounts) -> Transcript {
    let mut t = Transcript::new();
    let alice = register(store, 1, "Alice").await;
    assert_eq!(alice.last_seen_at, Some(T0), "signing up is activity");
    t.push(format!("alice: {} {:?}", alice.name, alice.last_seen_at));
    // The number is taken: the code stays and the try is given back.
    let p = phone(1);
    store
        .put_verification_code(new_code(&p, code(2), T0.plus(Duration::from_secs(60))))
        .await
        .unwrap();
    store.attempt_verification_code(&p, T0, 1).await.unwrap();
    let again = store
        .register(Registration {
            code: code(2),
            user: User {
                id: UserId::new(),
                ..alice.clone()
            },
            device: new_device("second", T0),
        })
        .await
        .unwrap();
    assert!(matches!(again, Registered::PhoneTaken), "{again:?}");
    t.push(format!("taken: {again:?}"));
    assert!(
        store
            .attempt_verification_code(&p, T0, 1)
            .await
            .unwrap()
            .is_some(),
        "the refused registration's try was given back"
    );
    // Logins up to the limit of 3 devices: two more, then the fourth is refused.
    let login = |name: &str, at: Timestamp| Login {
        phone: p.clone(),
        code: code(2),
        device: new_device(name, at),
        max_devices: 3,
    };
    for (i, at) in [
        (2, T0.plus(Duration::from_secs(1))),
        (3, T0.plus(Duration::from_secs(2))),
    ] {
        store
            .put_verification_code(new_code(&p, code(2), T0.plus(Duration::from_secs(60))))
            .await
            .unwrap();
        let outcome = store.login(login(&format!("d{i}"), at)).await.unwrap();
        assert!(
            matches!(outcome, LoggedIn::Created(_)),
            "device {i}: {outcome:?}"
        );
        // The same code a second time: consumed (checked while there is
        // room; a full account answers DeviceLimit first).
        if i == 2 {
            let replay = store.login(login("replay", at)).await.unwrap();
            assert!(matches!(replay, LoggedIn::CodeGone), "{replay:?}");
        }
        t.push(format!("device {i}: created"));
    }
    store
        .put_verification_code(new_code(&p, code(2), T0.plus(Duration::from_secs(60))))
        .await
        .unwrap();
    store.attempt_verification_code(&p, T0, 1).await.unwrap();
    let full = store.login(login("d4", T0)).await.unwrap();
    assert!(matches!(full, LoggedIn::DeviceLimit), "{full:?}");
    assert!(
        store
            .attempt_verification_code(&p, T0, 1)
            .await
            .unwrap()
            .is_some(),
        "the refused login's try was given back"
    );
    let unknown = store
        .login(Login {
            phone: phone(99),
            ..login("x", T0)
        })
        .await
        .unwrap();
    assert!(matches!(unknown, LoggedIn::UnknownPhone), "{unknown:?}");
    t.push(format!("fourth: {full:?}; unknown: {unknown:?}"));

    let devices = store.devices(alice.id).await.unwrap();
    let names: Vec<_> = devices.iter().map(|d| d.name.clone()).collect();
    assert_eq!(names, ["first", "d2", "d3"], "oldest first");
    t.push(format!("devices: {names:?}"));
    // A device is found by its token, deleted only by its owner.
    let bob = register(store, 2, "Bob").await;
    let second = devices[1].id;
    assert!(!store.delete_device(bob.id, second).await.unwrap());
    assert!(store.delete_device(alice.id, second).await.unwrap());
    assert!(!store.delete_device(alice.id, second).await.unwrap());
    assert_eq!(store.devices(alice.id).await.unwrap().len(), 2);
    // Activity only moves last-seen forward.
    let first = devices[0].id;
    let later = T0.plus(Duration::from_secs(600));
    store.touch_device(alice.id, first, later).await.unwrap();
    store.touch_device(alice.id, first, T0).await.unwrap();
    store.set_last_seen(alice.id, T0).await.unwrap();
    let seen = store.user(alice.id).await.unwrap().unwrap().last_seen_at;
    assert_eq!(seen, Some(later));
    let touched = store
        .devices(alice.id)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.id == first)
        .unwrap();
    assert_eq!(
        touched.last_active_at, T0,
        "the device's own time is its last request's"
    );
    t.push(format!("last seen {seen:?}"));
    assert!(
        store
            .device_by_token(&PlainToken::generate().hash())
            .await
            .unwrap()
            .is_none()
    );
    t
}

/// Looking people up, profiles and contacts: the contact limit at N and
/// N+1, re-adding by number, relations both ways, the one order of a
/// contact list, and which numbers have accounts (in the order asked).
async fn people_and_contacts(store: &dyn Accounts) -> Transcript {
    let mut t = Transcript::new();
    let owner = register(store, 1, "Owner").await;
    let names = ["bob", "Álvaro", "Carol", "alice", "BOBBY", "中文", "zed"];
    let mut others = Vec::new();
    for (n, name) in (2..).zip(names) {
        others.push(register(store, n, name).await);
    }
    // Up to 6 contacts: the sixth fits, the seventh does not.
    for (i, other) in others.iter().enumerate() {
        let added = store
            .add_contact(owner.id, other.id, i % 2 == 0, 6, T0)
            .await
            .unwrap();
        let expected = if i < 6 {
            ContactAdded::Added
        } else {
            ContactAdded::LimitReached
        };
        assert_eq!(format!("{added:?}"), format!("{expected:?}"), "contact {i}");
    }
    // Adding again keeps the entry, and adding by number upgrades it.
    let again = store
        .add_contact(owner.id, others[1].id, true, 6, T0)
        .await
        .unwrap();
    assert!(matches!(again, ContactAdded::AlreadyThere), "{again:?}");
    let relation = store.relation(owner.id, others[1].id).await.unwrap();
    assert!(relation.viewer_has_target && relation.viewer_knows_phone);
    assert!(!relation.target_has_viewer);
    store
        .add_contact(others[1].id, owner.id, false, 6, T0)
        .await
        .unwrap();
    let back = store.relation(others[1].id, owner.id).await.unwrap();
    assert!(back.viewer_has_target && !back.viewer_knows_phone && back.target_has_viewer);
    let list = store.contacts(owner.id).await.unwrap();
    let order: Vec<String> = list
        .iter()
        .map(|c| {
            format!(
                "{} phone:{} mutual:{}",
                c.user.name, c.relation.viewer_knows_phone, c.relation.target_has_viewer
            )
        })
        .collect();
    let listed: Vec<&str> = list.iter().map(|c| c.user.name.as_str()).collect();
    // ASCII letters without case, then bytes: accented and CJK names after.
    assert_eq!(listed, ["alice", "bob", "BOBBY", "Carol", "Álvaro", "中文"]);
    t.extend(order);
    assert!(store.remove_contact(owner.id, others[0].id).await.unwrap());
    assert!(!store.remove_contact(owner.id, others[0].id).await.unwrap());
    let none = store.relation(owner.id, others[0].id).await.unwrap();
    assert_eq!(none, super::Relation::default());

    // Which numbers have accounts, in the order asked, unknown ones left out.
    let asked = [phone(5), phone(77), phone(2), phone(5)];
    let found = store.users_by_phones(&asked).await.unwrap();
    let found: Vec<_> = found.iter().map(|(p, _)| p.as_str().to_owned()).collect();
    assert_eq!(found, ["+14155550005", "+14155550002", "+14155550005"]);
    t.push(format!("found: {found:?}"));
    let by_phone = store.user_by_phone(&phone(3)).await.unwrap().unwrap();
    assert_eq!(by_phone.id, others[1].id);
    assert!(store.user_by_phone(&phone(77)).await.unwrap().is_none());

    // Profile changes: only the fields given; a picture that is no
    // finished image of the user's is cleared, not set.
    let changed = store
        .update_profile(
            owner.id,
            ProfilePatch {
                about: Some("don't panic, e-mail me".into()),
                last_seen_visibility: Some(LastSeenVisibility::Contacts),
                group_add_permission: Some(GroupAddPermission::Nobody),
                profile_pic: Some(Some(natter_proto::MediaId::new())),
                ..ProfilePatch::default()
            },
            T0,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.name, "Owner");
    assert_eq!(changed.about, "don't panic, e-mail me");
    assert_eq!(changed.last_seen_visibility, LastSeenVisibility::Contacts);
    assert_eq!(changed.group_add_permission, GroupAddPermission::Nobody);
    assert_eq!(changed.profile_pic, None);
    t.push(format!(
        "profile: {} / {} / {:?} / {:?}",
        changed.name, changed.about, changed.last_seen_visibility, changed.group_add_permission
    ));
    assert!(
        store
            .update_profile(UserId::new(), ProfilePatch::default(), T0)
            .await
            .unwrap()
            .is_none()
    );
    t
}

fn channel(device: DeviceId, endpoint: &str, kind: PushKind) -> PushChannelRecord {
    PushChannelRecord {
        device_id: device,
        target: PushTarget {
            kind,
            endpoint: endpoint.into(),
            p256dh: (kind == PushKind::Webpush).then(|| vec![4; 65]),
            auth: (kind == PushKind::Webpush).then(|| vec![5; 16]),
            environment: (kind == PushKind::Apns).then_some(ApnsEnvironment::Sandbox),
        },
        created_at: T0,
    }
}

fn new_push(user: &User, device: DeviceId, chat: ChatId, seq: i64, at: Timestamp) -> NewPush {
    NewPush {
        device_id: device,
        user_id: user.id,
        chat_id: chat,
        seq,
        preview: Some(("Bob".into(), format!("message {seq}"))),
        now: at,
    }
}

fn describe_push(p: &PendingPush) -> String {
    format!(
        "count {} since {} last {} chat {} preview {:?} attempts {} kind {:?} env {:?}",
        p.count,
        p.since_seq,
        p.last_seq,
        p.chat_id.is_some(),
        p.preview,
        p.attempts,
        p.channel.target.kind,
        p.channel.target.environment
    )
}

/// Push channels and the outbox: registering (new, replaced, not one's
/// own device), coalescing a burst (count, chat kept only if the same,
/// latest preview), the due time, leases (claimed once, claimable again
/// after the lease), a send that raced new messages, retries, an endpoint
/// that is gone unless replaced, and cancelling.
async fn push_outbox<S: Accounts + PushOutbox>(store: &S) -> Transcript {
    let mut t = Transcript::new();
    let alice = register(store, 1, "Alice").await;
    let bob = register(store, 2, "Bob").await;
    let a = store.devices(alice.id).await.unwrap()[0].id;
    let b = store.devices(bob.id).await.unwrap()[0].id;
    assert_eq!(
        store
            .put_push_channel(
                alice.id,
                channel(a, "https://push.example/a", PushKind::Webpush)
            )
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(
        store
            .put_push_channel(
                alice.id,
                channel(a, "https://push.example/a2", PushKind::Webpush)
            )
            .await
            .unwrap(),
        Some(false),
        "a second registration replaces the first"
    );
    assert_eq!(
        store
            .put_push_channel(
                alice.id,
                channel(b, "https://push.example/x", PushKind::Webpush)
            )
            .await
            .unwrap(),
        None,
        "not her device"
    );
    store
        .put_push_channel(bob.id, channel(b, "apns-token", PushKind::Apns))
        .await
        .unwrap();
    let devices = store
        .push_devices(vec![bob.id, alice.id, UserId::new()])
        .await
        .unwrap();
    assert_eq!(devices, [(bob.id, b), (alice.id, a)]);

    // A burst for Alice: two messages in one chat, then one in another.
    let (chat, other) = (ChatId::new(), ChatId::new());
    let window = 3_000;
    store
        .queue_pushes(vec![
            new_push(&alice, a, chat, 5, T0),
            new_push(&alice, a, chat, 6, T0.plus(Duration::from_secs(1))),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.next_push_due(window).await.unwrap(),
        Some(Timestamp(T0.0 + window))
    );
    let none = store
        .claim_pushes(Timestamp(T0.0 + window - 1), window, T0, 10)
        .await
        .unwrap();
    assert!(none.is_empty(), "not due yet");
    store
        .queue_pushes(vec![new_push(
            &bob,
            b,
            other,
            9,
            T0.plus(Duration::from_secs(2)),
        )])
        .await
        .unwrap();
    let lease = Timestamp(T0.0 + 60_000);
    let now = Timestamp(T0.0 + 10_000);
    let claimed = store.claim_pushes(now, window, lease, 10).await.unwrap();
    let described: Vec<String> = claimed.iter().map(describe_push).collect();
    assert_eq!(claimed.len(), 2, "{described:?}");
    assert_eq!(claimed[0].device_id, a, "the earliest due first");
    assert_eq!(
        (claimed[0].count, claimed[0].since_seq, claimed[0].last_seq),
        (2, 4, 6)
    );
    assert_eq!(
        claimed[0].channel.target.endpoint,
        "https://push.example/a2"
    );
    t.extend(described);
    assert!(
        store
            .claim_pushes(now, window, lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased pushes are not claimed twice"
    );
    // While Alice's was being sent, a message in another chat came.
    store
        .queue_pushes(vec![new_push(&alice, a, other, 3, now)])
        .await
        .unwrap();
    let first = &claimed[0];
    store
        .finish_push(
            a,
            PushFinished::Settled {
                version: first.version,
                count: first.count,
                last_seq: first.last_seq,
                now,
            },
        )
        .await
        .unwrap();
    // Bob's send failed: retried later, one attempt counted.
    store
        .finish_push(
            b,
            PushFinished::Retry {
                at: Timestamp(now.0 + 5_000),
            },
        )
        .await
        .unwrap();
    let later = Timestamp(now.0 + 5_000);
    let again = store.claim_pushes(later, window, lease, 10).await.unwrap();
    let described: Vec<String> = again.iter().map(describe_push).collect();
    assert_eq!(again.len(), 2, "{described:?}");
    let alices = again.iter().find(|p| p.device_id == a).unwrap();
    assert_eq!(
        alices.count, 1,
        "the new burst is the one message that raced the send"
    );
    assert_eq!(alices.chat_id, None, "two chats: the device syncs all");
    let bobs = again.iter().find(|p| p.device_id == b).unwrap();
    assert_eq!(bobs.attempts, 1);
    t.extend(described);
    // After the lease a crashed send is claimable again.
    assert_eq!(
        store
            .claim_pushes(lease, window, Timestamp(lease.0 + 60_000), 10)
            .await
            .unwrap()
            .len(),
        2
    );

    // Gone: only the endpoint that failed is removed.
    store
        .finish_push(
            a,
            PushFinished::Gone {
                endpoint: "https://push.example/old".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(store.push_devices(vec![alice.id]).await.unwrap().len(), 1);
    store
        .finish_push(
            a,
            PushFinished::Gone {
                endpoint: "https://push.example/a2".into(),
            },
        )
        .await
        .unwrap();
    assert!(store.push_devices(vec![alice.id]).await.unwrap().is_empty());
    // A device without a channel gets nothing queued.
    store
        .queue_pushes(vec![new_push(&alice, a, chat, 7, later)])
        .await
        .unwrap();
    assert!(!store.cancel_push(a).await.unwrap());
    assert!(store.cancel_push(b).await.unwrap());
    assert!(!store.cancel_push(b).await.unwrap());
    assert_eq!(store.next_push_due(window).await.unwrap(), None);
    store
        .queue_pushes(vec![new_push(&bob, b, chat, 1, later)])
        .await
        .unwrap();
    assert!(store.delete_push_channel(bob.id, b).await.unwrap());
    assert!(!store.delete_push_channel(bob.id, b).await.unwrap());
    assert_eq!(
        store.next_push_due(window).await.unwrap(),
        None,
        "its waiting push went with it"
    );
    t
}

fn invite(
    token: &PlainToken,
    max_uses: u32,
    expires_at: Option<Timestamp>,
    at: Timestamp,
) -> NewInvite {
    NewInvite {
        id: uuid::Uuid::now_v7(),
        token_hash: token.hash(),
        max_uses,
        expires_at,
        created_at: at,
    }
}

fn invited_user(n: u32, name: &str) -> User {
    User {
        id: UserId::new(),
        phone: phone(n),
        name: name.into(),
        about: String::new(),
        last_seen_visibility: LastSeenVisibility::Everyone,
        group_add_permission: GroupAddPermission::Everyone,
        last_seen_at: None,
        profile_pic: None,
        created_at: T0,
    }
}

fn by_invite(token: &PlainToken, user: User, now: Timestamp) -> InviteRegistration {
    InviteRegistration {
        invite: token.hash(),
        now,
        user,
        device: new_device("first", T0),
    }
}

/// Invites: uses up to the limit (N created, N+1 refused), a taken number
/// spends no use, expiry and revocation, the operator's list newest first.
async fn invites<S: Accounts + Invites>(store: &S) -> Transcript {
    let mut t = Transcript::new();
    let two_uses = PlainToken::generate();
    let expiring = PlainToken::generate();
    store
        .create_invite(invite(&two_uses, 2, None, T0))
        .await
        .unwrap();
    let expires = T0.plus(Duration::from_secs(60));
    store
        .create_invite(invite(
            &expiring,
            5,
            Some(expires),
            T0.plus(Duration::from_secs(1)),
        ))
        .await
        .unwrap();
    for n in 1..=3 {
        let outcome = store
            .register_by_invite(by_invite(&two_uses, invited_user(n, "x"), T0))
            .await
            .unwrap();
        let expected = if n <= 2 { "Created" } else { "InviteInvalid" };
        assert!(
            format!("{outcome:?}").starts_with(expected),
            "use {n}: {outcome:?}"
        );
        t.push(format!("use {n}: {expected}"));
    }
    let taken = store
        .register_by_invite(by_invite(&expiring, invited_user(1, "again"), T0))
        .await
        .unwrap();
    assert!(matches!(taken, RegisteredByInvite::PhoneTaken), "{taken:?}");
    let late = store
        .register_by_invite(by_invite(&expiring, invited_user(9, "late"), expires))
        .await
        .unwrap();
    assert!(
        matches!(late, RegisteredByInvite::InviteInvalid),
        "{late:?}"
    );
    let unknown = store
        .register_by_invite(by_invite(&PlainToken::generate(), invited_user(9, "x"), T0))
        .await
        .unwrap();
    assert!(
        matches!(unknown, RegisteredByInvite::InviteInvalid),
        "{unknown:?}"
    );
    let list = store.invites().await.unwrap();
    let summary: Vec<String> = list
        .iter()
        .map(|i| {
            format!(
                "uses {}/{} expires {:?} revoked {}",
                i.uses,
                i.max_uses,
                i.expires_at.is_some(),
                i.revoked_at.is_some()
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "uses 0/5 expires true revoked false",
            "uses 2/2 expires false revoked false"
        ],
        "newest first; a taken number spent no use"
    );
    t.extend(summary);
    assert!(store.revoke_invite(list[0].id, T0).await.unwrap());
    assert!(!store.revoke_invite(list[0].id, T0).await.unwrap());
    let revoked = store
        .register_by_invite(by_invite(&expiring, invited_user(9, "x"), T0))
        .await
        .unwrap();
    assert!(
        matches!(revoked, RegisteredByInvite::InviteInvalid),
        "{revoked:?}"
    );
    let created = store.user_by_phone(&phone(2)).await.unwrap().unwrap();
    assert_eq!(store.devices(created.id).await.unwrap().len(), 1);
    t
}

fn text(chat: ChatId, sender: &User, device: DeviceId, body: &str, at: Timestamp) -> NewMessage {
    NewMessage {
        id: MessageId::new(),
        chat_id: chat,
        sender_id: sender.id,
        sender_device_id: device,
        message_type: MessageType::Text,
        content: Some(body.to_owned()),
        ciphertext: None,
        media_id: None,
        reply_to: None,
        client_message_id: None,
        client_timestamp: None,
        now: at,
    }
}

fn new_chat(kind: ChatKind, creator: &User, others: &[&User], at: Timestamp) -> NewChat {
    NewChat {
        id: ChatId::new(),
        kind,
        name: (kind == ChatKind::Group).then(|| "Climbing".to_owned()),
        encrypted: false,
        creator: creator.id,
        others: others.iter().map(|u| u.id).collect(),
        now: at,
    }
}

fn names(users: &[&User], ids: &[UserId]) -> Vec<String> {
    ids.iter()
        .map(|id| {
            users
                .iter()
                .find(|u| u.id == *id)
                .map_or_else(|| "?".to_owned(), |u| u.name.clone())
        })
        .collect()
}

fn describe_entry(users: &[&User], e: &LogEntry) -> String {
    let kind = match &e.kind {
        EntryKind::System(event) => format!("{event:?}")
            .split([' ', '{'])
            .next()
            .unwrap_or_default()
            .to_owned(),
        EntryKind::Message(t) => format!("{t:?}"),
        EntryKind::Edit(_) => "edit".into(),
        EntryKind::Delete(_) => "delete".into(),
    };
    format!(
        "{} {} {kind} {:?} edited:{} deleted:{}",
        e.seq,
        names(users, &[e.sender_id])[0],
        e.content,
        e.edited_at.is_some(),
        e.deleted_at.is_some()
    )
}

/// Chats and their logs: direct chats (one per pair), groups, posting
/// (idempotent retries, replies only to visible messages, bodies that suit
/// the chat), history paging, receipts, the chat list, membership changes
/// (group size at N and N+1, the last admin, succession), edits and
/// deletions, sync positions and events.
async fn chat_log<S: Accounts + ChatLog>(store: &S) -> Transcript {
    let mut t = Transcript::new();
    let ann = register(store, 1, "Ann").await;
    let bob = register(store, 2, "Bob").await;
    let cid = register(store, 3, "Cid").await;
    let dee = register(store, 4, "Dee").await;
    let all = [&ann, &bob, &cid, &dee];
    let da = store.devices(ann.id).await.unwrap()[0].id;
    let db = store.devices(bob.id).await.unwrap()[0].id;
    let at = |s: u64| T0.plus(Duration::from_secs(s));

    // One direct chat per pair, whoever asks.
    let ChatCreated::Created(direct, created) = store
        .create_chat(new_chat(ChatKind::Direct, &ann, &[&bob], at(1)))
        .await
        .unwrap()
    else {
        panic!("the direct chat was not created");
    };
    assert_eq!(created.entry.seq, 1);
    assert_eq!(names(&all, &created.recipients).len(), 2);
    let again = store
        .create_chat(new_chat(ChatKind::Direct, &bob, &[&ann], at(2)))
        .await
        .unwrap();
    assert!(
        matches!(&again, ChatCreated::Existing(c) if c.id == direct.id),
        "{again:?}"
    );
    let ghost = UserId::new();
    let unknown = store
        .create_chat(NewChat {
            others: vec![bob.id, ghost],
            ..new_chat(ChatKind::Group, &ann, &[], at(2))
        })
        .await
        .unwrap();
    assert!(
        matches!(unknown, ChatCreated::UnknownUser(u) if u == ghost),
        "{unknown:?}"
    );

    // Posting: a retry with the same key is the first message again.
    let keyed = NewMessage {
        client_message_id: Some("k1".into()),
        ..text(direct.id, &ann, da, "how are you?", at(3))
    };
    let Posted::Created(first) = store.post(keyed.clone()).await.unwrap() else {
        panic!("not posted");
    };
    assert_eq!(first.entry.seq, 2);
    let retry = store
        .post(NewMessage {
            id: MessageId::new(),
            ..keyed
        })
        .await
        .unwrap();
    assert!(
        matches!(&retry, Posted::Duplicate(e) if e.id == first.entry.id),
        "{retry:?}"
    );
    let reply = store
        .post(NewMessage {
            reply_to: Some(first.entry.id),
            ..text(direct.id, &bob, db, "don't ask", at(4))
        })
        .await
        .unwrap();
    let Posted::Created(reply) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        reply.receipts.read_seq, 2,
        "Bob read up to his reply; Ann up to hers"
    );
    let stranger = store
        .post(text(direct.id, &cid, da, "hi", at(4)))
        .await
        .unwrap();
    assert!(matches!(stranger, Posted::NotMember), "{stranger:?}");
    let bad_reply = store
        .post(NewMessage {
            reply_to: Some(MessageId::new()),
            ..text(direct.id, &ann, da, "x", at(4))
        })
        .await
        .unwrap();
    assert!(matches!(bad_reply, Posted::BadReply), "{bad_reply:?}");
    let no_body = store
        .post(NewMessage {
            content: None,
            ..text(direct.id, &ann, da, "", at(4))
        })
        .await
        .unwrap();
    assert!(matches!(no_body, Posted::WrongBody(_)), "{no_body:?}");

    // A group of 4 at most: Ann makes it with Bob, adds Cid (3) and Dee (4).
    let ChatCreated::Created(group, _) = store
        .create_chat(new_chat(ChatKind::Group, &ann, &[&bob], at(5)))
        .await
        .unwrap()
    else {
        panic!("the group was not created");
    };
    let changed = |actor: &User, change: ChatChange, max: usize| {
        store.change_chat(group.id, actor.id, change, max, at(6))
    };
    let full = changed(&ann, ChatChange::Add(vec![cid.id, dee.id]), 3)
        .await
        .unwrap();
    assert!(matches!(full, ChatChanged::GroupFull), "{full:?}");
    let added = changed(&ann, ChatChange::Add(vec![cid.id, dee.id]), 4)
        .await
        .unwrap();
    let ChatChanged::Done(added) = added else {
        panic!("{added:?}")
    };
    assert_eq!(added.len(), 2);
    let forbidden = changed(&bob, ChatChange::Rename("x".into()), 4)
        .await
        .unwrap();
    assert!(matches!(forbidden, ChatChanged::Forbidden), "{forbidden:?}");
    let last_admin = changed(&ann, ChatChange::SetRole(ann.id, Role::Member), 4)
        .await
        .unwrap();
    assert!(
        matches!(last_admin, ChatChanged::LastAdmin),
        "{last_admin:?}"
    );
    changed(&ann, ChatChange::Rename("Bouldering".into()), 4)
        .await
        .unwrap();
    store
        .post(text(group.id, &bob, db, "e-mail me the beta", at(7)))
        .await
        .unwrap();
    // Ann leaves: Bob, the longest-standing, becomes admin.
    let ChatChanged::Done(left) = changed(&ann, ChatChange::Remove(ann.id), 4).await.unwrap()
    else {
        panic!("Ann could not leave");
    };
    let left: Vec<String> = left
        .iter()
        .map(|a| describe_entry(&all, &a.entry))
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    t.extend(left);
    let members: Vec<String> = store
        .members(group.id)
        .await
        .unwrap()
        .iter()
        .map(|m| format!("{} {:?}", names(&all, &[m.user_id])[0], m.role))
        .collect();
    assert_eq!(members, ["Bob Admin", "Cid Member", "Dee Member"]);
    t.extend(members);
    let access = store.chat_access(group.id, ann.id).await.unwrap().unwrap();
    assert_eq!(
        (access.role, access.chat.name.as_deref()),
        (None, Some("Bouldering"))
    );
    assert!(
        store
            .chat_access(group.id, UserId::new())
            .await
            .unwrap()
            .is_none()
    );

    // Ann sees the group's history up to her leaving, not after.
    store
        .post(text(group.id, &bob, db, "after Ann", at(8)))
        .await
        .unwrap();
    let (mine, more) = store
        .history(
            group.id,
            ann.id,
            HistoryQuery {
                before_seq: None,
                after_seq: None,
                offset: 0,
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert!(!more);
    let mine: Vec<String> = mine.iter().map(|e| describe_entry(&all, e)).collect();
    assert!(!mine.iter().any(|e| e.contains("after Ann")), "{mine:?}");
    t.extend(mine);
    let (page, more) = store
        .history(
            group.id,
            bob.id,
            HistoryQuery {
                before_seq: None,
                after_seq: Some(1),
                offset: 0,
                limit: 3,
            },
        )
        .await
        .unwrap();
    assert!(more);
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);
    let (older, _) = store
        .history(
            group.id,
            bob.id,
            HistoryQuery {
                before_seq: Some(4),
                after_seq: None,
                offset: 1,
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(older.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 1]);

    // Receipts: Ann reads the direct chat; Bob's device receives.
    let (read, change) = store.mark_read(direct.id, ann.id, 99, at(9)).await.unwrap();
    assert_eq!(read, 3, "never past the head");
    assert_eq!(change.map(|c| c.receipts.read_seq), Some(3));
    let (again, none) = store.mark_read(direct.id, ann.id, 1, at(9)).await.unwrap();
    assert_eq!((again, none.is_none()), (3, true), "never back");
    let acked = store
        .ack(bob.id, vec![(direct.id, 3), (ChatId::new(), 5)], at(9))
        .await
        .unwrap();
    t.push(format!(
        "acked: {:?}",
        acked.iter().map(|c| c.receipts).collect::<Vec<_>>()
    ));
    assert_eq!(
        store.receipt_state(direct.id).await.unwrap(),
        ReceiptState {
            delivered_seq: 3,
            read_seq: 3
        }
    );

    // Edits and deletions: the sender only, within the window.
    let edit = |actor: &User, message: MessageId, body: &str, window_ms: i64, now: Timestamp| {
        store.change_message(MessageChange {
            message,
            actor: actor.id,
            device: da,
            edit: Some(NewContent {
                content: Some(body.into()),
                ciphertext: None,
                window_ms,
            }),
            now,
        })
    };
    let not_sender = edit(&bob, first.entry.id, "x", 60_000, at(10))
        .await
        .unwrap();
    assert!(
        matches!(not_sender, MessageChanged::NotSender),
        "{not_sender:?}"
    );
    let late = edit(&ann, first.entry.id, "x", 1_000, at(10))
        .await
        .unwrap();
    assert!(matches!(late, MessageChanged::TooLate), "{late:?}");
    let MessageChanged::Done(edited, now) =
        edit(&ann, first.entry.id, "how are you, Bob?", 60_000, at(10))
            .await
            .unwrap()
    else {
        panic!("not edited");
    };
    assert_eq!(now.content.as_deref(), Some("how are you, Bob?"));
    assert_eq!(edited.entry.seq, 4);
    let deleted = store
        .change_message(MessageChange {
            message: reply.entry.id,
            actor: bob.id,
            device: db,
            edit: None,
            now: at(11),
        })
        .await
        .unwrap();
    let MessageChanged::Done(_, tombstone) = deleted else {
        panic!("{deleted:?}")
    };
    assert!(tombstone.content.is_none() && tombstone.deleted_at.is_some());
    let twice = store
        .change_message(MessageChange {
            message: reply.entry.id,
            actor: bob.id,
            device: db,
            edit: None,
            now: at(12),
        })
        .await
        .unwrap();
    assert!(matches!(twice, MessageChanged::TooLate), "{twice:?}");
    assert_eq!(
        store.chat_of_message(first.entry.id).await.unwrap(),
        Some(direct.id)
    );
    assert_eq!(store.chat_of_message(MessageId::new()).await.unwrap(), None);

    // What a device syncs: events with edits and deletions as the message now is.
    let events: Vec<String> = store
        .events_after(direct.id, bob.id, 1, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| match &e.body {
            EventBody::Entry(x) => format!("{} entry {}", e.seq, describe_entry(&all, x)),
            EventBody::Edited(x) => format!("{} edited {}", e.seq, describe_entry(&all, x)),
            EventBody::Deleted(x) => format!("{} deleted {}", e.seq, describe_entry(&all, x)),
        })
        .collect();
    assert_eq!(events.len(), 4, "{events:?}");
    t.extend(events);
    let mut heads: Vec<(i64, i64)> = store
        .chat_heads(bob.id)
        .await
        .unwrap()
        .iter()
        .map(|h| (h.from_seq, h.last_seq))
        .collect();
    heads.sort_unstable();
    assert_eq!(heads, [(1, 5), (1, 8)]);
    assert_eq!(
        store.chat_head(group.id, ann.id).await.unwrap(),
        None,
        "she left"
    );
    let sent: Vec<String> = store
        .messages_sent_by(bob.id, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| describe_entry(&all, e))
        .collect();
    assert_eq!(sent.len(), 2, "the deleted reply is gone: {sent:?}");

    // The chat list: most recent activity first, unread, last message, people.
    let list: Vec<String> = store
        .chats_of(cid.id)
        .await
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{:?} {:?} unread {} last {:?} people {:?} of {} other {:?}",
                o.chat.name,
                o.role,
                o.unread,
                o.last_message.as_ref().and_then(|m| m.content.clone()),
                o.participants
                    .iter()
                    .map(|p| p.name.clone())
                    .collect::<Vec<_>>(),
                o.participant_count,
                o.other.as_ref().map(|p| p.name.clone())
            )
        })
        .collect();
    assert_eq!(list.len(), 1, "{list:?}");
    t.extend(list);
    let ann_list = store.chats_of(ann.id).await.unwrap();
    assert_eq!(ann_list.len(), 1, "Ann left the group");
    assert_eq!(
        ann_list[0].other.as_ref().map(|p| p.name.as_str()),
        Some("Bob")
    );
    assert_eq!(ann_list[0].unread, 0);
    let bob_list = store.chats_of(bob.id).await.unwrap();
    assert_eq!(
        bob_list[0].chat.id, direct.id,
        "its deletion is the latest activity"
    );
    t
}

fn credential(device: DeviceId, key: u8, certificate: Option<u8>) -> DeviceCredential {
    DeviceCredential {
        device_id: device,
        signature_key: vec![key; 32],
        link_key: vec![key.wrapping_add(1); 32],
        certificate: certificate.map(|c| vec![c; 64]),
    }
}

fn commit_of(
    chat: ChatId,
    sender: &User,
    device: DeviceId,
    epoch: u64,
    key: &str,
    welcome: &[DeviceId],
    inbox_max: u64,
) -> NewCommit {
    NewCommit {
        message: NewMessage {
            message_type: MessageType::Commit,
            content: None,
            ciphertext: Some(vec![epoch as u8; 40]),
            client_message_id: Some(key.to_owned()),
            ..text(chat, sender, device, "", T0)
        },
        epoch,
        welcome: (!welcome.is_empty()).then(|| vec![7; 100]),
        welcome_devices: welcome.to_vec(),
        inbox_max,
    }
}

/// A new encrypted group of `creator` and `other`.
async fn encrypted_group(store: &dyn ChatLog, creator: &User, other: &User) -> super::ChatRecord {
    let created = store
        .create_chat(NewChat {
            encrypted: true,
            ..new_chat(ChatKind::Group, creator, &[other], T0)
        })
        .await
        .unwrap();
    let ChatCreated::Created(chat, _) = created else {
        panic!("no chat: {created:?}");
    };
    chat
}

fn describe_commit(c: &Committed) -> String {
    match c {
        Committed::Created(a, epoch, welcomes) => {
            format!(
                "created seq {} epoch {epoch} welcomes {}",
                a.entry.seq,
                welcomes.len()
            )
        }
        Committed::Duplicate(e, epoch) => format!("duplicate seq {} epoch {epoch}", e.seq),
        // Ids differ from run to run; the variant is what both engines share.
        Committed::NotParticipantDevice(_) => "NotParticipantDevice".into(),
        Committed::InboxFull(_) => "InboxFull".into(),
        other => format!("{other:?}"),
    }
}

/// The MLS delivery service's records: identity keys, device credentials
/// (set once, certified later), KeyPackages (the stock limit at N and N+1,
/// one-time ones handed out once, the last resort kept), commits (the
/// epoch moves once, retries, Welcomes only for participants' devices, the
/// inbox limit), handovers, and a new identity key voiding the old
/// certificates and packages.
async fn key_directory<S: Accounts + ChatLog + KeyDirectory + DeviceInbox>(
    store: &S,
) -> Transcript {
    let mut t = Transcript::new();
    let ann = register(store, 1, "Ann").await;
    let bob = register(store, 2, "Bob").await;
    let cid = register(store, 3, "Cid").await;
    let a1 = store.devices(ann.id).await.unwrap()[0].id;
    let b1 = store.devices(bob.id).await.unwrap()[0].id;
    let c1 = store.devices(cid.id).await.unwrap()[0].id;
    let p = phone(2);
    store
        .put_verification_code(new_code(&p, code(3), T0.plus(Duration::from_secs(60))))
        .await
        .unwrap();
    let login = store
        .login(Login {
            phone: p,
            code: code(3),
            device: new_device("second", T0.plus(Duration::from_secs(1))),
            max_devices: 5,
        })
        .await
        .unwrap();
    assert!(matches!(login, LoggedIn::Created(_)), "{login:?}");
    let b2 = store.devices(bob.id).await.unwrap()[1].id;

    for (user, key) in [(&ann, 1), (&bob, 2), (&cid, 3)] {
        assert!(
            store
                .set_identity_key(user.id, vec![key; 32], T0)
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(store.identity_key(bob.id).await.unwrap(), Some(vec![2; 32]));
    let not_hers = store
        .set_device_credential(ann.id, credential(b1, 9, None), T0)
        .await
        .unwrap();
    assert!(matches!(not_hers, CredentialSet::NoDevice), "{not_hers:?}");
    for (user, device, key) in [
        (&ann, a1, 10),
        (&bob, b1, 20),
        (&bob, b2, 21),
        (&cid, c1, 30),
    ] {
        let set = store
            .set_device_credential(user.id, credential(device, key, Some(key)), T0)
            .await
            .unwrap();
        assert!(matches!(set, CredentialSet::Stored(_)), "{set:?}");
    }
    let other_keys = store
        .set_device_credential(bob.id, credential(b1, 99, None), T0)
        .await
        .unwrap();
    assert!(
        matches!(other_keys, CredentialSet::Exists),
        "{other_keys:?}"
    );
    let same = store
        .set_device_credential(bob.id, credential(b1, 20, Some(20)), T0)
        .await
        .unwrap();
    assert!(
        matches!(&same, CredentialSet::Stored(v) if v.is_empty()),
        "{same:?}"
    );
    let creds: Vec<u8> = store
        .device_credentials(bob.id)
        .await
        .unwrap()
        .iter()
        .map(|c| c.signature_key[0])
        .collect();
    assert_eq!(creds, [20, 21], "oldest device first");

    // KeyPackages: three fit a stock of three, a fourth does not.
    let none = store
        .publish_key_packages(DeviceId::new(), vec![vec![1]], None, 3, T0)
        .await
        .unwrap();
    assert_eq!(none, Published::NoKeys);
    let stocked = store
        .publish_key_packages(b1, vec![vec![1], vec![2], vec![3]], Some(vec![9]), 3, T0)
        .await
        .unwrap();
    assert_eq!(stocked, Published::Stock(3, true));
    let too_many = store
        .publish_key_packages(b1, vec![vec![4]], None, 3, T0)
        .await
        .unwrap();
    assert_eq!(too_many, Published::TooMany);
    store
        .publish_key_packages(b2, vec![vec![5]], None, 3, T0)
        .await
        .unwrap();
    let mut handed = Vec::new();
    for _ in 0..4 {
        let claimed = store.claim_key_packages(vec![bob.id], a1).await.unwrap();
        assert_eq!(claimed[0].identity_key, Some(vec![2; 32]));
        for d in &claimed[0].devices {
            handed.push(format!(
                "{}:{:?}:{}:{}",
                d.signature_key[0], d.key_package, d.last_resort, d.left
            ));
        }
    }
    t.push(format!("claims: {handed:?}"));
    assert_eq!(
        handed,
        [
            "20:[1]:false:2",
            "21:[5]:false:0",
            "20:[2]:false:1",
            "20:[3]:false:0",
            "20:[9]:true:0"
        ],
        "oldest first; the last resort once the one-time ones are gone; b2 had one"
    );
    assert_eq!(store.key_package_stock(b1).await.unwrap(), (0, true));
    let except = store.claim_key_packages(vec![bob.id], b1).await.unwrap();
    assert!(except[0].devices.iter().all(|d| d.device_id != b1));

    // An encrypted chat; commits move its epoch once each.
    let chat = encrypted_group(store, &ann, &bob).await;
    let outcomes = [
        store
            .commit(commit_of(chat.id, &ann, a1, 0, "c1", &[b1, b2], 1))
            .await
            .unwrap(),
        store
            .commit(commit_of(chat.id, &bob, b1, 0, "c2", &[], 1))
            .await
            .unwrap(),
        store
            .commit(commit_of(chat.id, &ann, a1, 0, "c1", &[b1, b2], 1))
            .await
            .unwrap(),
        store
            .commit(commit_of(chat.id, &ann, a1, 1, "c3", &[c1], 1))
            .await
            .unwrap(),
        store
            .commit(commit_of(chat.id, &ann, a1, 1, "c4", &[b1], 1))
            .await
            .unwrap(),
        store
            .commit(commit_of(chat.id, &cid, c1, 1, "c5", &[], 1))
            .await
            .unwrap(),
        store
            .commit(commit_of(chat.id, &ann, a1, 1, "c6", &[b1], 2))
            .await
            .unwrap(),
    ];
    let described: Vec<String> = outcomes.iter().map(describe_commit).collect();
    assert!(
        described[0].starts_with("created seq 2 epoch 1 welcomes 2"),
        "{described:?}"
    );
    assert_eq!(described[1], "StaleEpoch(1)");
    assert!(
        described[2].starts_with("duplicate seq 2 epoch 1"),
        "{described:?}"
    );
    assert!(
        described[3].starts_with("NotParticipantDevice"),
        "{described:?}"
    );
    assert!(described[4].starts_with("InboxFull"), "{described:?}");
    assert_eq!(described[5], "NotMember");
    assert!(
        described[6].starts_with("created seq 3 epoch 2 welcomes 1"),
        "{described:?}"
    );
    t.extend(described);
    let inbox = store.inbox(b1, 10).await.unwrap();
    assert_eq!(
        inbox.iter().map(|i| i.seq).collect::<Vec<_>>(),
        [Some(2), Some(3)]
    );
    assert!(store.ack_inbox(b1, inbox[0].id).await.unwrap());
    assert!(!store.ack_inbox(b1, inbox[0].id).await.unwrap());
    assert!(
        !store.ack_inbox(b2, inbox[1].id).await.unwrap(),
        "not its item"
    );

    // Handovers go to another device of one's own.
    let handover = |to: DeviceId, max_items: u64| NewHandover {
        from_user: bob.id,
        from_device: b1,
        to_device: to,
        payload: vec![3; 10],
        max_items,
        now: T0,
    };
    assert!(matches!(
        store.hand_over(handover(b1, 5)).await.unwrap(),
        HandedOver::NoDevice
    ));
    assert!(matches!(
        store.hand_over(handover(a1, 5)).await.unwrap(),
        HandedOver::NoDevice
    ));
    assert!(
        matches!(
            store.hand_over(handover(b2, 1)).await.unwrap(),
            HandedOver::InboxFull
        ),
        "b2 holds a Welcome"
    );
    assert!(matches!(
        store.hand_over(handover(b2, 2)).await.unwrap(),
        HandedOver::Stored(_)
    ));
    let kinds: Vec<String> = store
        .inbox(b2, 10)
        .await
        .unwrap()
        .iter()
        .map(|i| format!("{:?}", i.kind))
        .collect();
    assert_eq!(kinds, ["Welcome", "Handover"]);
    t.extend(kinds);

    // A new identity key: certificates and packages void, chats told.
    let changed = store
        .set_identity_key(bob.id, vec![42; 32], T0)
        .await
        .unwrap();
    assert_eq!(changed.len(), 1, "one encrypted chat");
    assert!(
        store
            .device_credentials(bob.id)
            .await
            .unwrap()
            .iter()
            .all(|c| c.certificate.is_none())
    );
    assert_eq!(store.key_package_stock(b1).await.unwrap(), (0, false));
    let told = store.devices_changed(ann.id, T0).await.unwrap();
    t.push(format!(
        "devices_changed at {:?}",
        told.iter().map(|a| a.entry.seq).collect::<Vec<_>>()
    ));
    assert_eq!(told.len(), 1);
    t
}

fn upload(owner: &User, kind: MediaKind, length: u64, finished: bool, at: Timestamp) -> NewMedia {
    NewMedia {
        id: natter_proto::MediaId::new(),
        owner: owner.id,
        kind,
        chat_id: None,
        filename: Some("beta.png".into()),
        length,
        created_at: at,
        expires_at: (!finished).then(|| at.plus(Duration::from_secs(3600))),
        finished: finished.then(|| FinishedMedia {
            content_type: "image/png".into(),
            sha256: [7; 32],
            dimensions: Some((640, 480)),
            thumbnail: true,
            completed_at: at,
        }),
    }
}

/// Uploads: the quota and the pending limit at N and N+1, progress and
/// finishing, who may fetch (owner, profile picture, a message one can
/// see), and collection of expired and unreferenced uploads.
async fn media_store<S: Accounts + ChatLog + MediaStore>(store: &S) -> Transcript {
    let mut t = Transcript::new();
    let ann = register(store, 1, "Ann").await;
    let bob = register(store, 2, "Bob").await;
    let cid = register(store, 3, "Cid").await;
    let da = store.devices(ann.id).await.unwrap()[0].id;
    let at = |s: u64| T0.plus(Duration::from_secs(s));
    // A quota of 100 bytes: 60 + 40 fit, one byte more does not.
    let first = upload(&ann, MediaKind::Image, 60, true, at(1));
    assert_eq!(
        store.create_media(first.clone(), 100, 2).await.unwrap(),
        MediaCreated::Created
    );
    let pending = upload(&ann, MediaKind::File, 40, false, at(2));
    assert_eq!(
        store.create_media(pending.clone(), 100, 2).await.unwrap(),
        MediaCreated::Created
    );
    assert_eq!(
        store
            .create_media(upload(&ann, MediaKind::File, 1, false, at(3)), 100, 2)
            .await
            .unwrap(),
        MediaCreated::QuotaExceeded
    );
    // Two uploads in progress at most (the third is refused).
    store
        .create_media(upload(&bob, MediaKind::File, 1, false, at(3)), 100, 2)
        .await
        .unwrap();
    store
        .create_media(upload(&bob, MediaKind::File, 1, false, at(3)), 100, 2)
        .await
        .unwrap();
    assert_eq!(
        store
            .create_media(upload(&bob, MediaKind::File, 1, false, at(3)), 100, 2)
            .await
            .unwrap(),
        MediaCreated::TooManyPending
    );
    // Progress: a compare-and-set from the recorded offset N, with the
    // segment that holds the bytes. From a stale offset (0 once at 25), from
    // N + 1 and from N - 1, nothing moves; from N it does.
    let segment = |media: natter_proto::MediaId, from: u64, to: u64| MediaSegment {
        media,
        from,
        to,
        key: format!("uploads/{media}/{from:020}-{to:x}"),
    };
    assert!(
        store
            .advance_media_received(segment(pending.id, 0, 25))
            .await
            .unwrap()
    );
    let record = store.media(pending.id).await.unwrap().unwrap();
    assert_eq!((record.received, record.finished.is_none()), (25, true));
    for (from, to) in [(0, 30), (26, 40), (24, 40)] {
        assert!(
            !store
                .advance_media_received(segment(pending.id, from, to))
                .await
                .unwrap(),
            "advancing from {from} while at 25"
        );
    }
    let record = store.media(pending.id).await.unwrap().unwrap();
    assert_eq!(record.received, 25, "a lost compare-and-set moves nothing");
    assert!(
        store
            .advance_media_received(segment(pending.id, 25, 40))
            .await
            .unwrap()
    );
    let segments = store.media_segments(pending.id).await.unwrap();
    assert_eq!(
        segments,
        [segment(pending.id, 0, 25), segment(pending.id, 25, 40)],
        "the recorded segments, in offset order"
    );
    t.push(format!(
        "segments {:?}",
        segments.iter().map(|s| (s.from, s.to)).collect::<Vec<_>>()
    ));
    let done = FinishedMedia {
        content_type: "application/pdf".into(),
        sha256: [9; 32],
        dimensions: None,
        thumbnail: false,
        completed_at: at(4),
    };
    assert!(store.finish_media(pending.id, done.clone()).await.unwrap());
    assert!(
        !store.finish_media(pending.id, done).await.unwrap(),
        "finished once"
    );
    assert!(
        !store
            .advance_media_received(segment(pending.id, 40, 41))
            .await
            .unwrap(),
        "no longer in progress"
    );
    assert!(
        store.media_segments(pending.id).await.unwrap().is_empty(),
        "a finished upload's segments are forgotten"
    );
    let mine: Vec<String> = store
        .media_of(ann.id)
        .await
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{:?} {} {:?}",
                m.kind,
                m.length,
                m.finished
                    .as_ref()
                    .map(|f| (f.content_type.clone(), f.dimensions))
            )
        })
        .collect();
    assert_eq!(mine.len(), 2);
    t.extend(mine);

    // Who may fetch: Bob after Ann sends it to him; Cid, never.
    assert!(store.media_visible(first.id, ann.id).await.unwrap());
    assert!(!store.media_visible(first.id, bob.id).await.unwrap());
    let ChatCreated::Created(chat, _) = store
        .create_chat(new_chat(ChatKind::Direct, &ann, &[&bob], at(5)))
        .await
        .unwrap()
    else {
        panic!("no chat");
    };
    let sent = store
        .post(NewMessage {
            message_type: MessageType::Image,
            media_id: Some(first.id),
            ..text(chat.id, &ann, da, "the beta", at(6))
        })
        .await
        .unwrap();
    assert!(matches!(sent, Posted::Created(_)), "{sent:?}");
    assert!(store.media_visible(first.id, bob.id).await.unwrap());
    assert!(!store.media_visible(first.id, cid.id).await.unwrap());
    let gone = store
        .post(NewMessage {
            media_id: Some(natter_proto::MediaId::new()),
            ..text(chat.id, &ann, da, "x", at(6))
        })
        .await
        .unwrap();
    assert!(matches!(gone, Posted::MediaGone), "{gone:?}");
    // A profile picture is anyone's to fetch.
    let avatar = upload(&cid, MediaKind::Image, 10, true, at(7));
    store.create_media(avatar.clone(), 100, 2).await.unwrap();
    let profile = store
        .update_profile(
            cid.id,
            ProfilePatch {
                profile_pic: Some(Some(avatar.id)),
                ..ProfilePatch::default()
            },
            at(7),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(profile.profile_pic, Some(avatar.id));
    assert!(store.media_visible(avatar.id, ann.id).await.unwrap());

    // Collection: Bob's expired uploads, and Ann's unreferenced PDF; the
    // sent image and the avatar stay.
    let collected = store.collect_media(at(7200), at(7200), 10).await.unwrap();
    t.push(format!(
        "collected {} expired, {} unreferenced",
        collected.expired.len(),
        collected.unreferenced.len()
    ));
    assert_eq!(
        (collected.expired.len(), collected.unreferenced.len()),
        (2, 1)
    );
    assert_eq!(collected.unreferenced, [pending.id]);
    assert!(store.media(first.id).await.unwrap().is_some());
    // Deleting takes only uploads in progress (with their segments): a
    // finished one stays, whoever lost the race to finish it.
    assert!(!store.delete_media(first.id).await.unwrap());
    assert!(store.media(first.id).await.unwrap().is_some());
    let terminated = upload(&cid, MediaKind::File, 20, false, at(7200));
    store
        .create_media(terminated.clone(), 100, 2)
        .await
        .unwrap();
    assert!(
        store
            .advance_media_received(segment(terminated.id, 0, 5))
            .await
            .unwrap()
    );
    assert!(store.delete_media(terminated.id).await.unwrap());
    assert!(!store.delete_media(terminated.id).await.unwrap());
    assert!(store.media(terminated.id).await.unwrap().is_none());
    assert!(
        store
            .media_segments(terminated.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !store
            .advance_media_received(segment(terminated.id, 5, 10))
            .await
            .unwrap(),
        "a deleted upload does not advance"
    );
    t
}

fn invitation_limits(max_per_user: usize, max_per_chat: usize) -> InvitationRules {
    InvitationRules {
        ttl_ms: 3_600_000,
        max_per_user,
        max_per_chat,
    }
}

/// Adds that respect the added users' settings, and invitations: who is
/// added and who invited, the per-user and per-group limits at N and N+1,
/// a pending invitation not made twice, accepting (also into a full group,
/// and after the inviter left), declining, expiry.
async fn group_invitations<S: Accounts + ChatLog + GroupInvitations>(store: &S) -> Transcript {
    let mut t = Transcript::new();
    let ann = register(store, 1, "Ann").await;
    let bob = register(store, 2, "Bob").await;
    let cid = register(store, 3, "Cid").await;
    let dee = register(store, 4, "Dee").await;
    let eve = register(store, 5, "Eve").await;
    let all = [&ann, &bob, &cid, &dee, &eve];
    let setting = |user: &User, p: GroupAddPermission| {
        store.update_profile(
            user.id,
            ProfilePatch {
                group_add_permission: Some(p),
                ..ProfilePatch::default()
            },
            T0,
        )
    };
    setting(&bob, GroupAddPermission::Contacts).await.unwrap();
    setting(&cid, GroupAddPermission::Nobody).await.unwrap();
    setting(&dee, GroupAddPermission::Contacts).await.unwrap();
    setting(&eve, GroupAddPermission::Nobody).await.unwrap();
    store
        .add_contact(bob.id, ann.id, false, 10, T0)
        .await
        .unwrap();

    let created = store
        .create_group(
            new_chat(ChatKind::Group, &ann, &[&bob, &cid, &dee], T0),
            invitation_limits(1, 5),
        )
        .await
        .unwrap();
    let GroupCreated::Created(group, _, outcome) = created else {
        panic!("{created:?}")
    };
    assert_eq!(names(&all, &outcome.added), ["Bob"]);
    assert_eq!(names(&all, &outcome.invited), ["Cid", "Dee"]);
    assert_eq!(outcome.fresh.len(), 2);
    t.push(format!(
        "added {:?} invited {:?}",
        names(&all, &outcome.added),
        names(&all, &outcome.invited)
    ));
    let pending = store.invitations(cid.id, T0).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (
            pending[0].chat_name.as_deref(),
            pending[0].inviter_name.as_str()
        ),
        (Some("Climbing"), "Ann")
    );
    // Cid holds one invitation, the most allowed: another group cannot invite him.
    let limited = store
        .create_group(
            new_chat(ChatKind::Group, &ann, &[&cid], T0),
            invitation_limits(1, 5),
        )
        .await
        .unwrap();
    assert!(
        matches!(limited, GroupCreated::InvitationLimit),
        "{limited:?}"
    );
    // Two pending in the group (Cid, Dee): a third fits a limit of 3, not of 2.
    let add =
        |users: Vec<UserId>, limits| store.add_to_group(group.id, ann.id, users, 10, limits, T0);
    let full = add(vec![eve.id], invitation_limits(5, 2)).await.unwrap();
    assert!(matches!(full, GroupAdded::InvitationLimit), "{full:?}");
    let GroupAdded::Done(appended, outcome) = add(vec![eve.id, cid.id], invitation_limits(5, 3))
        .await
        .unwrap()
    else {
        panic!("not added");
    };
    assert!(appended.is_empty());
    assert_eq!(names(&all, &outcome.invited), ["Eve", "Cid"]);
    assert_eq!(
        outcome.fresh.len(),
        1,
        "Cid's invitation was pending already"
    );
    let by_member = store
        .add_to_group(
            group.id,
            bob.id,
            vec![eve.id],
            10,
            invitation_limits(5, 5),
            T0,
        )
        .await
        .unwrap();
    assert!(
        matches!(by_member, GroupAdded::Refused(ChatChanged::Forbidden)),
        "{by_member:?}"
    );
    let ghost = store
        .add_to_group(
            group.id,
            ann.id,
            vec![UserId::new()],
            10,
            invitation_limits(5, 5),
            T0,
        )
        .await
        .unwrap();
    assert!(
        matches!(ghost, GroupAdded::Refused(ChatChanged::UnknownUser(_))),
        "{ghost:?}"
    );

    // Cid accepts; the group of 3 is then full for Dee (her invitation stays).
    let accepted = store
        .accept_invitation(pending[0].id, cid.id, 3, T0)
        .await
        .unwrap();
    let InvitationAccepted::Joined(_, entries) = accepted else {
        panic!("{accepted:?}")
    };
    assert_eq!(entries.len(), 1);
    let dees = store.invitations(dee.id, T0).await.unwrap();
    let refused = store
        .accept_invitation(dees[0].id, dee.id, 3, T0)
        .await
        .unwrap();
    assert!(
        matches!(refused, InvitationAccepted::GroupFull),
        "{refused:?}"
    );
    assert_eq!(store.invitations(dee.id, T0).await.unwrap().len(), 1);
    assert!(
        store
            .decline_invitation(dees[0].id, dee.id, T0)
            .await
            .unwrap()
    );
    assert!(
        !store
            .decline_invitation(dees[0].id, dee.id, T0)
            .await
            .unwrap()
    );
    let unknown = store
        .accept_invitation(InvitationId::new(), cid.id, 10, T0)
        .await
        .unwrap();
    assert!(
        matches!(unknown, InvitationAccepted::NotFound),
        "{unknown:?}"
    );
    // Ann leaves: her invitation of Eve is no longer valid.
    store
        .change_chat(group.id, ann.id, ChatChange::Remove(ann.id), 10, T0)
        .await
        .unwrap();
    let eves = store.invitations(eve.id, T0).await.unwrap();
    let stale = store
        .accept_invitation(eves[0].id, eve.id, 10, T0)
        .await
        .unwrap();
    assert!(
        matches!(stale, InvitationAccepted::NoLongerValid),
        "{stale:?}"
    );
    assert!(
        store.invitations(eve.id, T0).await.unwrap().is_empty(),
        "it is removed"
    );
    let members: Vec<String> = store
        .members(group.id)
        .await
        .unwrap()
        .iter()
        .map(|m| format!("{} {:?}", names(&all, &[m.user_id])[0], m.role))
        .collect();
    assert_eq!(members, ["Bob Admin", "Cid Member"]);
    t.extend(members);
    // Expiry.
    store
        .create_group(
            new_chat(ChatKind::Group, &bob, &[&eve], T0),
            invitation_limits(5, 5),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .invitations(eve.id, T0.plus(Duration::from_secs(3600)))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        store
            .delete_expired_invitations(T0.plus(Duration::from_secs(3600)))
            .await
            .unwrap(),
        1
    );
    t
}

/// The operator's administration: accounts without devices, the list,
/// deactivation (devices logged out, logins refused), counts, the
/// engine's own check, the blobs that must exist.
async fn administration<S: Accounts + Administration + MediaStore>(store: &S) -> Transcript {
    let mut t = Transcript::new();
    let ann = register(store, 1, "Ann").await;
    assert!(store.create_user(invited_user(2, "Bob")).await.unwrap());
    assert!(
        !store
            .create_user(invited_user(2, "Bob again"))
            .await
            .unwrap(),
        "the number is taken"
    );
    let summary: Vec<String> = store
        .users_summary()
        .await
        .unwrap()
        .iter()
        .map(|u| {
            format!(
                "{} devices {} deactivated {}",
                u.user.name,
                u.devices,
                u.deactivated_at.is_some()
            )
        })
        .collect();
    assert_eq!(summary.len(), 2);
    t.extend(summary);
    assert_eq!(store.deactivated_at(ann.id).await.unwrap(), Some(None));
    assert_eq!(store.deactivated_at(UserId::new()).await.unwrap(), None);
    let device = store.devices(ann.id).await.unwrap()[0].id;
    assert_eq!(
        store.device_by_id(device).await.unwrap().map(|d| d.user_id),
        Some(ann.id)
    );
    let avatar = upload(&ann, MediaKind::Image, 10, true, T0);
    store.create_media(avatar.clone(), 100, 2).await.unwrap();
    store
        .create_media(upload(&ann, MediaKind::File, 10, false, T0), 100, 2)
        .await
        .unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.users, stats.devices, stats.media, stats.media_bytes),
        (2, 1, 1, 10)
    );
    let blobs: Vec<bool> = store
        .referenced_blobs()
        .await
        .unwrap()
        .iter()
        .map(|b| b.thumbnail)
        .collect();
    assert_eq!(blobs, [true], "the finished upload only");
    let done = store.deactivate_user(ann.id, T0).await.unwrap();
    assert!(
        matches!(&done, Deactivated::Done(d) if d == &[device]),
        "{done:?}"
    );
    assert!(matches!(
        store.deactivate_user(ann.id, T0).await.unwrap(),
        Deactivated::Already
    ));
    assert!(matches!(
        store.deactivate_user(UserId::new(), T0).await.unwrap(),
        Deactivated::NoSuchUser
    ));
    assert!(store.device_by_id(device).await.unwrap().is_none());
    store
        .put_verification_code(new_code(
            &phone(1),
            code(1),
            T0.plus(Duration::from_secs(60)),
        ))
        .await
        .unwrap();
    let login = store
        .login(Login {
            phone: phone(1),
            code: code(1),
            device: new_device("x", T0),
            max_devices: 5,
        })
        .await
        .unwrap();
    assert!(matches!(login, LoggedIn::UnknownPhone), "{login:?}");
    let stats = store.stats().await.unwrap();
    t.push(format!(
        "users {} deactivated {} devices {}",
        stats.users, stats.deactivated_users, stats.devices
    ));
    assert_eq!(
        store.integrity_problems().await.unwrap(),
        Vec::<String>::new()
    );
    t
}

/// Presence audiences by setting, and deleting an account: the user
/// leaves every chat through the removal path (a group's next admin takes
/// over), their devices, contacts and uploads go, the row stays as a
/// tombstone and the number is free again.
async fn accounts_across_chats<S: Accounts + ChatLog + MediaStore + AccountsAcrossChats>(
    store: &S,
) -> Transcript {
    let mut t = Transcript::new();
    let ann = register(store, 1, "Ann").await;
    let bob = register(store, 2, "Bob").await;
    let cid = register(store, 3, "Cid").await;
    let dee = register(store, 4, "Dee").await;
    let all = [&ann, &bob, &cid, &dee];
    store
        .create_chat(new_chat(ChatKind::Direct, &ann, &[&bob], T0))
        .await
        .unwrap();
    let ChatCreated::Created(group, _) = store
        .create_chat(new_chat(ChatKind::Group, &ann, &[&bob, &cid], T0))
        .await
        .unwrap()
    else {
        panic!("no group");
    };
    store
        .add_contact(dee.id, ann.id, true, 10, T0)
        .await
        .unwrap();
    store
        .add_contact(ann.id, cid.id, true, 10, T0)
        .await
        .unwrap();
    let audience = |max: usize| async move {
        let mut who = names(&all, &store.presence_audience(ann.id, max).await.unwrap());
        who.sort();
        who
    };
    assert_eq!(
        audience(3).await,
        ["Bob", "Cid", "Dee"],
        "co-members and who has her"
    );
    assert_eq!(
        audience(2).await,
        ["Bob", "Dee"],
        "a group of 3 is past a limit of 2"
    );
    let set = |v| {
        store.update_profile(
            ann.id,
            ProfilePatch {
                last_seen_visibility: Some(v),
                ..ProfilePatch::default()
            },
            T0,
        )
    };
    set(LastSeenVisibility::Contacts).await.unwrap();
    assert_eq!(audience(3).await, ["Cid"], "only her own contacts");
    set(LastSeenVisibility::Nobody).await.unwrap();
    assert!(audience(3).await.is_empty());
    t.push("audiences as expected".into());

    store
        .create_media(upload(&ann, MediaKind::Image, 10, true, T0), 100, 2)
        .await
        .unwrap();
    store
        .create_media(upload(&ann, MediaKind::File, 10, false, T0), 100, 2)
        .await
        .unwrap();
    let deleted = store.delete_account(ann.id, T0).await.unwrap().unwrap();
    let left: Vec<String> = deleted
        .left
        .iter()
        .map(|a| describe_entry(&all, &a.entry))
        .collect();
    assert_eq!(
        left.len(),
        3,
        "left the direct chat and the group, Bob took over: {left:?}"
    );
    t.extend(left);
    assert_eq!(
        (
            deleted.devices.len(),
            deleted.media.len(),
            deleted.uploads.len()
        ),
        (1, 1, 1)
    );
    assert!(
        store.delete_account(ann.id, T0).await.unwrap().is_none(),
        "once"
    );
    assert!(store.user(ann.id).await.unwrap().is_none());
    assert!(
        store.user_by_phone(&phone(1)).await.unwrap().is_none(),
        "the number is free"
    );
    assert!(store.contacts(dee.id).await.unwrap().is_empty());
    let members: Vec<String> = store
        .members(group.id)
        .await
        .unwrap()
        .iter()
        .map(|m| format!("{} {:?}", names(&all, &[m.user_id])[0], m.role))
        .collect();
    assert_eq!(members, ["Bob Admin", "Cid Member"]);
    let direct = store.chats_of(bob.id).await.unwrap();
    let other: Vec<Option<String>> = direct
        .iter()
        .map(|o| o.other.as_ref().map(|p| p.name.clone()))
        .collect();
    assert!(other.contains(&Some("Deleted account".into())), "{other:?}");
    t.extend(members);
    // The number can sign up again, as a new account.
    let again = register(store, 1, "Ann again").await;
    assert_ne!(again.id, ann.id);
    t
}

/// Searching plaintext history: words split and folded alike (`don't`,
/// `e-mail`, `bob@example.com`, `café`), phrases, prefixes, OR and NOT,
/// CJK substrings of one to three characters, deleted and edited messages,
/// the user's membership periods, filters and paging. The hits (newest
/// first) and totals must be the same on both engines; snippets are each
/// engine's own.
async fn search<S: Accounts + ChatLog + SearchIndex>(store: &S) -> Transcript {
    let mut t = Transcript::new();
    let ann = register(store, 1, "Ann").await;
    let bob = register(store, 2, "Bob").await;
    let cid = register(store, 3, "Cid").await;
    let (da, db) = (
        store.devices(ann.id).await.unwrap()[0].id,
        store.devices(bob.id).await.unwrap()[0].id,
    );
    let dc = store.devices(cid.id).await.unwrap()[0].id;
    let ChatCreated::Created(direct, _) = store
        .create_chat(new_chat(ChatKind::Direct, &ann, &[&bob], T0))
        .await
        .unwrap()
    else {
        panic!("no chat");
    };
    let ChatCreated::Created(group, _) = store
        .create_chat(new_chat(ChatKind::Group, &ann, &[&bob, &cid], T0))
        .await
        .unwrap()
    else {
        panic!("no group");
    };
    let mut ids = Vec::new();
    for (n, (chat, who, device, body)) in [
        (direct.id, &ann, da, "Hello, how are you?"),
        (direct.id, &bob, db, "don't send e-mail to bob@example.com"),
        (group.id, &ann, da, "Un café, s'il vous plaît"),
        (group.id, &cid, dc, "我们明天去北京吧"),
        (group.id, &bob, db, "green tea or coffee"),
        (direct.id, &ann, da, "tea time"),
        (direct.id, &ann, da, "secret plan"),
        (group.id, &bob, db, "old text"),
    ]
    .into_iter()
    .enumerate()
    {
        let at = T0.plus(Duration::from_secs(10 + n as u64));
        let Posted::Created(a) = store.post(text(chat, who, device, body, at)).await.unwrap()
        else {
            panic!("not posted");
        };
        ids.push(a.entry.id);
    }
    let later = T0.plus(Duration::from_secs(100));
    store
        .change_message(MessageChange {
            message: ids[6],
            actor: ann.id,
            device: da,
            edit: None,
            now: later,
        })
        .await
        .unwrap();
    store
        .change_message(MessageChange {
            message: ids[7],
            actor: bob.id,
            device: db,
            edit: Some(NewContent {
                content: Some("new words here".into()),
                ciphertext: None,
                window_ms: 600_000,
            }),
            now: later,
        })
        .await
        .unwrap();
    // The embedded engine's index follows the log; PostgreSQL's has nothing to follow.
    while store.index_search(1_000).await.unwrap().remaining > 0 {}
    assert_eq!(store.search_index_lag().await.unwrap(), 0);
    let limits = crate::search_query::QueryLimits {
        max_chars: 256,
        max_terms: 16,
    };
    let ask = |user: &User,
               q: &str,
               chats: Vec<ChatId>,
               sender: Option<UserId>,
               offset: i64,
               limit: i64| {
        let query = SearchQuery {
            user: user.id,
            text: crate::search_query::parse(q, limits).unwrap(),
            chats,
            sender,
            message_type: None,
            before: None,
            after: None,
            by_relevance: false,
            offset,
            limit,
        };
        async move {
            let page = store.search_messages(query).await.unwrap();
            let texts: Vec<String> = page
                .hits
                .iter()
                .map(|h| h.entry.content.clone().unwrap_or_default())
                .collect();
            for h in &page.hits {
                assert!(
                    h.snippet
                        .marks
                        .iter()
                        .all(|m| h.snippet.text.get(m.clone()).is_some()),
                    "marks on character boundaries: {:?}",
                    h.snippet
                );
            }
            (page.total, texts)
        }
    };
    for (who, q, want) in [
        (&bob, "hello", vec!["Hello, how are you?"]),
        (&bob, "how are you?", vec!["Hello, how are you?"]),
        (&bob, "don't", vec!["don't send e-mail to bob@example.com"]),
        (&bob, "e-mail", vec!["don't send e-mail to bob@example.com"]),
        (
            &bob,
            "bob@example.com",
            vec!["don't send e-mail to bob@example.com"],
        ),
        (
            &bob,
            "example",
            vec!["don't send e-mail to bob@example.com"],
        ),
        (&bob, "cafe", vec!["Un café, s'il vous plaît"]),
        (&bob, "CAFÉ", vec!["Un café, s'il vous plaît"]),
        (&bob, "tea", vec!["tea time", "green tea or coffee"]),
        (&bob, "\"green tea\"", vec!["green tea or coffee"]),
        (&bob, "\"tea green\"", vec![]),
        (&bob, "tim*", vec!["tea time"]),
        (
            &bob,
            "tea OR hello",
            vec!["tea time", "green tea or coffee", "Hello, how are you?"],
        ),
        (&bob, "tea -green", vec!["tea time"]),
        (&bob, "北京", vec!["我们明天去北京吧"]),
        (&bob, "明天去", vec!["我们明天去北京吧"]),
        (&bob, "北京 coffee", vec![]),
        (&bob, "secret", vec![]),
        (&bob, "old", vec![]),
        (&bob, "words", vec!["new words here"]),
        (&cid, "hello", vec![]),
        (&cid, "tea", vec!["green tea or coffee"]),
    ] {
        let (total, texts) = ask(who, q, Vec::new(), None, 0, 10).await;
        assert_eq!(texts, want, "{} searching {q}", who.name);
        assert_eq!(total, i64::try_from(want.len()).unwrap(), "{q}");
        t.push(format!("{} {q}: {texts:?}", who.name));
    }
    let (total, page) = ask(&bob, "tea", Vec::new(), None, 1, 1).await;
    assert_eq!((total, page), (2, vec!["green tea or coffee".to_owned()]));
    let (_, by_ann) = ask(&bob, "tea", Vec::new(), Some(ann.id), 0, 10).await;
    assert_eq!(by_ann, ["tea time"]);
    let (_, in_group) = ask(&bob, "tea OR hello", vec![group.id], None, 0, 10).await;
    assert_eq!(in_group, ["green tea or coffee"]);
    // A run of letters longer than PostgreSQL keeps as one word (a pasted
    // key) is posted like any text, and found by its beginning.
    let long = format!("key {} end", "k".repeat(3000));
    let at = T0.plus(Duration::from_secs(200));
    let posted = store.post(text(direct.id, &ann, da, &long, at)).await;
    assert!(matches!(posted, Ok(Posted::Created(_))), "{posted:?}");
    while store.index_search(1_000).await.unwrap().remaining > 0 {}
    for q in ["kkkk*", "end"] {
        let (total, texts) = ask(&bob, q, Vec::new(), None, 0, 10).await;
        assert_eq!((total, texts), (1, vec![long.clone()]), "{q}");
    }
    t.push("a 3000-letter word: found by its beginning".to_owned());
    t
}

/// A named secret is made once and read back the same ever after.
async fn server_secrets(store: &dyn Accounts) -> Transcript {
    let first = store
        .server_secret("test", Box::new(|| vec![1, 2, 3]))
        .await
        .unwrap();
    let second = store
        .server_secret("test", Box::new(|| vec![9, 9, 9]))
        .await
        .unwrap();
    assert_eq!(first, [1, 2, 3]);
    assert_eq!(second, first);
    vec![format!("{first:?}")]
}

fn sqlite() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
    (dir, store)
}

fn pg_options(url: String) -> PgOptions {
    PgOptions {
        url,
        chat_urls: Vec::new(),
        pool_size: 4,
        connect_timeout: Duration::from_secs(10),
    }
}

/// A database of the test's own in the cluster, migrated (a copy of the
/// cluster's migrated template).
async fn migrated(cluster: &PgCluster) -> TestDatabase<'_> {
    cluster
        .database(&migrations_fingerprint(), |url| async move {
            Postgres::migrate_only(&url, Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap()
}

/// A node's connection pool to the test's database.
async fn node(db: &TestDatabase<'_>) -> Postgres {
    Postgres::connect(&pg_options(db.url())).await.unwrap()
}

/// A node's connection pools to a store of two databases: the accounts
/// database `a`, and the chats partitioned over `a` and `b`.
async fn node_on_two(a: &TestDatabase<'_>, b: &TestDatabase<'_>) -> Postgres {
    let mut options = pg_options(a.url());
    options.chat_urls = vec![a.url(), b.url()];
    Postgres::connect(&options).await.unwrap()
}

/// Runs `scenario` on a fresh SQLite store, on a fresh PostgreSQL database
/// and on a fresh PostgreSQL store of two databases (chats partitioned over
/// both), and requires the same transcript from all three.
macro_rules! on_both_engines {
    ($($name:ident => $scenario:ident;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let (_dir, embedded) = sqlite();
            let expected = $scenario(&embedded).await;
            embedded.close().await;
            let cluster = PgCluster::from_env_or_start().unwrap();
            let db = migrated(&cluster).await;
            let pg = node(&db).await;
            let answered = tokio::time::timeout(Duration::from_secs(60), $scenario(&pg))
                .await
                .expect("the PostgreSQL engine answered within a minute");
            pg.close();
            assert_eq!(answered, expected, "PostgreSQL and SQLite answered differently");
            let (a, b) = (migrated(&cluster).await, migrated(&cluster).await);
            let pg = node_on_two(&a, &b).await;
            let answered = tokio::time::timeout(Duration::from_secs(60), $scenario(&pg))
                .await
                .expect("the PostgreSQL engine on two databases answered within a minute");
            pg.close();
            assert_eq!(
                answered, expected,
                "PostgreSQL on two databases and SQLite answered differently"
            );
        }
    )*};
}

on_both_engines! {
    verification_codes_on_both_engines => verification_codes;
    registration_and_login_on_both_engines => registration_and_login;
    people_and_contacts_on_both_engines => people_and_contacts;
    server_secrets_on_both_engines => server_secrets;
    push_outbox_on_both_engines => push_outbox;
    invites_on_both_engines => invites;
    chat_log_on_both_engines => chat_log;
    key_directory_on_both_engines => key_directory;
    media_store_on_both_engines => media_store;
    group_invitations_on_both_engines => group_invitations;
    administration_on_both_engines => administration;
    accounts_across_chats_on_both_engines => accounts_across_chats;
    search_on_both_engines => search;
}

/// Many nodes adding contacts for one user at once never pass the limit:
/// the owner's row lock serializes the count.
#[tokio::test]
async fn concurrent_contact_adds_on_postgres_stop_at_the_limit() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = migrated(&cluster).await;
    let (pg, node_b) = (node(&db).await, node(&db).await);
    let owner = register(&pg, 1, "Owner").await;
    let mut others = Vec::new();
    for n in 2..12 {
        others.push(register(&pg, n, &format!("u{n}")).await);
    }
    // Two "nodes" (pools of their own), ten adds at once, room for four.
    let adds = others.iter().enumerate().map(|(i, other)| {
        let node = if i % 2 == 0 { &pg } else { &node_b };
        node.add_contact(owner.id, other.id, false, 4, T0)
    });
    let outcomes = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(adds),
    )
    .await
    .expect("the adds finished within a minute");
    let added = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(ContactAdded::Added)))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(ContactAdded::LimitReached)))
        .count();
    assert_eq!((added, refused), (4, 6), "{outcomes:?}");
    assert_eq!(pg.contacts(owner.id).await.unwrap().len(), 4);
    pg.close();
    node_b.close();
}

/// A push worker's loop: claims four at a time until nothing is due.
async fn claim_until_empty(node: &Postgres, now: Timestamp, lease: Timestamp) -> Vec<DeviceId> {
    let mut mine = Vec::new();
    loop {
        let batch = node.claim_pushes(now, 1_000, lease, 4).await.unwrap();
        if batch.is_empty() {
            return mine;
        }
        mine.extend(batch.into_iter().map(|p| p.device_id));
    }
}

/// Push workers on two nodes claiming at once share the due pushes: each
/// is claimed by exactly one of them.
#[tokio::test]
async fn concurrent_push_claims_on_postgres_never_send_twice() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = migrated(&cluster).await;
    let (pg, node_b) = (node(&db).await, node(&db).await);
    let mut pushes = Vec::new();
    for n in 0..24 {
        let user = register(&pg, n, &format!("u{n}")).await;
        let device = pg.devices(user.id).await.unwrap()[0].id;
        pg.put_push_channel(
            user.id,
            channel(device, "https://push.example/", PushKind::Webpush),
        )
        .await
        .unwrap();
        pushes.push(new_push(&user, device, ChatId::new(), 1, T0));
    }
    pg.queue_pushes(pushes).await.unwrap();
    let now = Timestamp(T0.0 + 10_000);
    let lease = Timestamp(T0.0 + 60_000);
    let (a, b) = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join(
            claim_until_empty(&pg, now, lease),
            claim_until_empty(&node_b, now, lease),
        ),
    )
    .await
    .expect("the workers finished within a minute");
    let mut all: Vec<DeviceId> = a.iter().chain(&b).copied().collect();
    all.sort_by_key(|d| *d.as_uuid());
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a push was claimed twice");
    assert_eq!(all.len(), 24, "every due push was claimed");
    pg.close();
    node_b.close();
}

/// Registrations on two nodes racing for an invite's last uses: exactly as
/// many accounts as it allows.
#[tokio::test]
async fn concurrent_invite_registrations_on_postgres_spend_each_use_once() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = migrated(&cluster).await;
    let (pg, node_b) = (node(&db).await, node(&db).await);
    let token = PlainToken::generate();
    pg.create_invite(invite(&token, 3, None, T0)).await.unwrap();
    let attempts = (0..8).map(|n| {
        let node = if n % 2 == 0 { &pg } else { &node_b };
        node.register_by_invite(by_invite(&token, invited_user(n, "racer"), T0))
    });
    let outcomes = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(attempts),
    )
    .await
    .expect("the registrations finished within a minute");
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(RegisteredByInvite::Created(_))))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(RegisteredByInvite::InviteInvalid)))
        .count();
    assert_eq!((created, refused), (3, 5), "{outcomes:?}");
    assert_eq!(pg.invites().await.unwrap()[0].uses, 3);
    pg.close();
    node_b.close();
}

/// Two nodes posting into one chat at once: every message is appended, at
/// its own seq, with no gap (the chat row's lock serializes the appends).
#[tokio::test]
async fn concurrent_posts_on_postgres_take_every_seq_once() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = migrated(&cluster).await;
    let (pg, node_b) = (node(&db).await, node(&db).await);
    let ann = register(&pg, 1, "Ann").await;
    let bob = register(&pg, 2, "Bob").await;
    let device = pg.devices(ann.id).await.unwrap()[0].id;
    let ChatCreated::Created(chat, _) = pg
        .create_chat(new_chat(ChatKind::Group, &ann, &[&bob], T0))
        .await
        .unwrap()
    else {
        panic!("no chat");
    };
    let posts = (0..40).map(|n| {
        let node = if n % 2 == 0 { &pg } else { &node_b };
        node.post(text(chat.id, &ann, device, &format!("m{n}"), T0))
    });
    let outcomes = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(posts),
    )
    .await
    .expect("the posts finished within a minute");
    let mut seqs: Vec<i64> = outcomes
        .iter()
        .map(|o| match o {
            Ok(Posted::Created(a)) => a.entry.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (2..42).collect::<Vec<_>>());
    let head = pg.chat_head(chat.id, bob.id).await.unwrap().unwrap();
    assert_eq!(head.last_seq, 41);
    pg.close();
    node_b.close();
}

/// Two nodes claiming one device's KeyPackages at once hand each one-time
/// package out once (then the last resort); two admins committing for one
/// epoch at once: one commit moves it, the other is told the epoch moved.
#[tokio::test]
async fn concurrent_claims_and_commits_on_postgres_are_decided_once() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = migrated(&cluster).await;
    let (pg, node_b) = (node(&db).await, node(&db).await);
    let ann = register(&pg, 1, "Ann").await;
    let bob = register(&pg, 2, "Bob").await;
    let a1 = pg.devices(ann.id).await.unwrap()[0].id;
    let b1 = pg.devices(bob.id).await.unwrap()[0].id;
    for (user, device, key) in [(&ann, a1, 1), (&bob, b1, 2)] {
        pg.set_identity_key(user.id, vec![key; 32], T0)
            .await
            .unwrap();
        pg.set_device_credential(user.id, credential(device, key, Some(key)), T0)
            .await
            .unwrap();
    }
    let packages: Vec<Vec<u8>> = (0..10u8).map(|n| vec![n]).collect();
    pg.publish_key_packages(b1, packages, Some(vec![99]), 10, T0)
        .await
        .unwrap();
    let claims = (0..14).map(|n| {
        let node = if n % 2 == 0 { &pg } else { &node_b };
        node.claim_key_packages(vec![bob.id], a1)
    });
    let claimed = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(claims),
    )
    .await
    .expect("the claims finished within a minute");
    let mut one_time: Vec<Vec<u8>> = Vec::new();
    let mut last_resort = 0;
    for c in claimed {
        let package = &c.unwrap()[0].devices[0];
        if package.last_resort {
            last_resort += 1;
        } else {
            one_time.push(package.key_package.clone());
        }
    }
    one_time.sort();
    let before = one_time.len();
    one_time.dedup();
    assert_eq!(
        before,
        one_time.len(),
        "a one-time package was handed out twice"
    );
    assert_eq!((one_time.len(), last_resort), (10, 4));

    // Both are admins of an encrypted group; both commit for epoch 0.
    let chat = encrypted_group(&pg, &ann, &bob).await;
    pg.change_chat(
        chat.id,
        ann.id,
        ChatChange::SetRole(bob.id, Role::Admin),
        10,
        T0,
    )
    .await
    .unwrap();
    let (first, second) = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join(
            pg.commit(commit_of(chat.id, &ann, a1, 0, "a", &[], 5)),
            node_b.commit(commit_of(chat.id, &bob, b1, 0, "b", &[], 5)),
        ),
    )
    .await
    .expect("the commits finished within a minute");
    let mut outcomes = [
        describe_commit(&first.unwrap()),
        describe_commit(&second.unwrap()),
    ];
    outcomes.sort();
    assert_eq!(
        outcomes,
        ["StaleEpoch(1)", "created seq 3 epoch 1 welcomes 0"]
    );
    pg.close();
    node_b.close();
}

/// How many rows of `table` a database holds.
async fn rows_in(db: &TestDatabase<'_>, table: &str) -> i64 {
    db.connect()
        .await
        .unwrap()
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// With two chat databases, chats land in both, each whole in one (its
/// members, log and receipts beside it); every user's chat list, heads and
/// search see all of them, from any node.
#[tokio::test]
async fn chats_are_partitioned_over_two_databases_and_found_from_any_node() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let (a, b) = (migrated(&cluster).await, migrated(&cluster).await);
    let (pg, node_b) = (node_on_two(&a, &b).await, node_on_two(&a, &b).await);
    let ann = register(&pg, 1, "Ann").await;
    let mut groups = Vec::new();
    for n in 0..16 {
        let created = pg
            .create_chat(new_chat(
                ChatKind::Group,
                &ann,
                &[],
                T0.plus(Duration::from_secs(n)),
            ))
            .await
            .unwrap();
        let ChatCreated::Created(chat, _) = created else {
            panic!("{created:?}");
        };
        groups.push(chat.id);
    }
    // 16 chats over two databases: each holds some (all in one would
    // happen once in 32,768 runs).
    let (in_a, in_b) = (rows_in(&a, "chats").await, rows_in(&b, "chats").await);
    assert_eq!(in_a + in_b, 16);
    assert!(in_a > 0 && in_b > 0, "{in_a} + {in_b}");
    assert_eq!(
        rows_in(&b, "users").await,
        0,
        "accounts live in the first database only"
    );
    assert_eq!(
        rows_in(&a, "memberships").await + rows_in(&b, "memberships").await,
        16
    );
    let listed: Vec<ChatId> = node_b
        .chats_of(ann.id)
        .await
        .unwrap()
        .iter()
        .map(|o| o.chat.id)
        .collect();
    let newest_first: Vec<ChatId> = groups.iter().rev().copied().collect();
    assert_eq!(listed, newest_first);
    assert_eq!(node_b.chat_heads(ann.id).await.unwrap().len(), 16);
    pg.close();
    node_b.close();
}

/// Two nodes creating the same pair's direct chat at once, on two chat
/// databases: one chat, found by both (the pair decides its database).
#[tokio::test]
async fn concurrent_direct_chats_of_one_pair_on_two_databases_are_one_chat() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let (a, b) = (migrated(&cluster).await, migrated(&cluster).await);
    let (pg, node_b) = (node_on_two(&a, &b).await, node_on_two(&a, &b).await);
    let mut pairs = Vec::new();
    for n in 0..6 {
        let x = register(&pg, 10 + 2 * n, "X").await;
        let y = register(&pg, 11 + 2 * n, "Y").await;
        pairs.push((x, y));
    }
    for (x, y) in &pairs {
        let (one, two) = tokio::join!(
            pg.create_chat(new_chat(ChatKind::Direct, x, &[y], T0)),
            node_b.create_chat(new_chat(ChatKind::Direct, y, &[x], T0)),
        );
        let id = |c: ChatCreated| match c {
            ChatCreated::Created(chat, _) | ChatCreated::Existing(chat) => chat.id,
            other @ ChatCreated::UnknownUser(_) => panic!("{other:?}"),
        };
        assert_eq!(id(one.unwrap()), id(two.unwrap()));
    }
    assert_eq!(rows_in(&a, "chats").await + rows_in(&b, "chats").await, 6);
    pg.close();
    node_b.close();
}

/// The chat databases are fixed at the store's first start: a node named
/// fewer, more, reordered or another store's refuses to start, and the
/// refusal says why; the same list again starts.
#[tokio::test]
async fn a_store_refuses_chat_databases_other_than_those_it_was_made_with() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let (a, b, c) = (
        migrated(&cluster).await,
        migrated(&cluster).await,
        migrated(&cluster).await,
    );
    let with = |urls: Vec<String>| {
        let mut options = pg_options(a.url());
        options.chat_urls = urls;
        options
    };
    Postgres::connect(&with(vec![a.url(), b.url()]))
        .await
        .unwrap()
        .close();
    for (urls, says) in [
        (
            vec![a.url()],
            "names 1 chat database(s), but this store's chats were placed over 2",
        ),
        (vec![a.url(), b.url(), c.url()], "names 3"),
        (vec![b.url(), a.url()], "the list's order can never change"),
        // An empty database in the place of one that holds chats.
        (vec![a.url(), c.url()], "holds no chats of this store"),
    ] {
        let text = Postgres::connect(&with(urls.clone()))
            .await
            .unwrap_err()
            .to_string();
        assert!(text.contains(says), "{urls:?}: {text}");
        assert!(!text.contains("postgres://"), "never the URL: {text}");
    }
    Postgres::connect(&with(vec![a.url(), b.url()]))
        .await
        .unwrap()
        .close();
    // Another store's chat database.
    let other = migrated(&cluster).await;
    let mut options = pg_options(other.url());
    options.chat_urls = vec![other.url(), b.url()];
    let refused = Postgres::connect(&options).await.unwrap_err().to_string();
    assert!(refused.contains("belongs to another store"), "{refused}");
}

/// On two databases a commit's Welcome goes through the chat database's
/// outbox to the device's inbox; the welcomed device reading its inbox on
/// another node at that moment moves it too. Every commit answers, and
/// the device gets each Welcome once.
#[tokio::test]
async fn welcomes_moved_by_a_commit_and_an_inbox_read_at_once_arrive_once() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let (a, b) = (migrated(&cluster).await, migrated(&cluster).await);
    let (pg, node_b) = (node_on_two(&a, &b).await, node_on_two(&a, &b).await);
    let ann = register(&pg, 1, "Ann").await;
    let bob = register(&pg, 2, "Bob").await;
    let a1 = pg.devices(ann.id).await.unwrap()[0].id;
    let b1 = pg.devices(bob.id).await.unwrap()[0].id;
    let mut chats = Vec::new();
    for _ in 0..8 {
        let chat = encrypted_group(&pg, &ann, &bob).await;
        chats.push(chat.id);
    }
    for (n, chat) in chats.iter().enumerate() {
        let key = format!("c{n}");
        let (committed, read) = tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::join(
                pg.commit(commit_of(*chat, &ann, a1, 0, &key, &[b1], 50)),
                node_b.inbox(b1, 100),
            ),
        )
        .await
        .expect("the commit and the read finished within a minute");
        read.unwrap();
        assert_eq!(
            describe_commit(&committed.unwrap()),
            "created seq 2 epoch 1 welcomes 1"
        );
    }
    let inbox = node_b.inbox(b1, 100).await.unwrap();
    let mut welcomed: Vec<ChatId> = inbox.iter().filter_map(|i| i.chat_id).collect();
    welcomed.sort_unstable_by_key(|c| *c.as_uuid());
    let mut expected = chats.clone();
    expected.sort_unstable_by_key(|c| *c.as_uuid());
    assert_eq!(welcomed, expected, "one Welcome per commit");
    assert_eq!(
        rows_in(&a, "welcome_outbox").await + rows_in(&b, "welcome_outbox").await,
        0
    );
    // A Welcome a stopped node left in an outbox (committed, not moved):
    // eight inbox reads on two nodes at once move it, once, and all answer.
    let left_in = if pg.chat_dbs()[0].is(pg.chat_db(chats[0])) {
        &a
    } else {
        &b
    };
    left_in
        .connect()
        .await
        .unwrap()
        .execute(
            "INSERT INTO welcome_outbox
               (device_id, chat_id, seq, from_user, from_device, payload, created_at)
             VALUES ($1, $2, 99, $3, $4, '\\x07', $5)",
            &[
                b1.as_uuid(),
                chats[0].as_uuid(),
                ann.id.as_uuid(),
                a1.as_uuid(),
                &T0.0,
            ],
        )
        .await
        .unwrap();
    let reads = (0..8).map(|n| if n % 2 == 0 { &pg } else { &node_b }.inbox(b1, 100));
    for read in futures_util::future::join_all(reads).await {
        read.unwrap();
    }
    let inbox = node_b.inbox(b1, 100).await.unwrap();
    assert_eq!(inbox.iter().filter(|i| i.seq == Some(99)).count(), 1);
    assert_eq!(rows_in(left_in, "welcome_outbox").await, 0);
    pg.close();
    node_b.close();
}
