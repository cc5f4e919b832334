//! In-process scenarios of the engine: devices, a trust store, and a
//! "server" that is just the order in which the test hands bytes around.

use natter_proto::{ChatId, DeviceId, UserId};

use super::handover;
use super::*;

/// A user of the scenario: their identity key stays in the test, which plays
/// the device that holds it.
struct User {
    id: UserId,
    identity: Identity,
}

/// Everyone's view of who is who (one trust store all devices share, except
/// where a test gives a device its own).
struct World {
    trust: PinnedKeys,
}

impl World {
    fn new() -> Self {
        Self {
            trust: PinnedKeys::new(),
        }
    }

    fn user(&mut self) -> User {
        let user = User {
            id: UserId::new(),
            identity: Identity::generate().unwrap(),
        };
        assert_eq!(
            self.trust
                .observe_identity(user.id, user.identity.public_key()),
            Some(TrustEvent::Pinned { user_id: user.id })
        );
        user
    }

    /// A device of `user`, certified by the user's identity key.
    fn device(&mut self, user: &User) -> Engine {
        let engine = Engine::new(user.id, DeviceId::new(), None).unwrap();
        let me = engine.device_ref();
        let cert = user
            .identity
            .certify(me.user, me.device, engine.signature_key())
            .unwrap();
        self.trust
            .add_certificate(me.user, me.device, engine.signature_key(), &cert)
            .unwrap();
        engine
    }

    /// `committer` claims a KeyPackage of `target` and checks it.
    fn claim(&self, committer: &Engine, target: &Engine) -> ValidatedKeyPackage {
        let published = target.key_packages(Suite::default(), 1).unwrap();
        committer
            .validate_key_package(
                &self.trust,
                target.device_ref(),
                Suite::default(),
                &published.one_time[0],
            )
            .unwrap()
    }
}

/// A chat's group as the server orders it: `members[0..]` are in the group.
struct Chat {
    id: ChatId,
    members: Vec<Engine>,
}

impl Chat {
    fn create(world: &World, creator: Engine, others: Vec<Engine>) -> Self {
        let mut chat = Self {
            id: ChatId::new(),
            members: vec![creator],
        };
        chat.members[0]
            .create_group(chat.id, Suite::default())
            .unwrap();
        if !others.is_empty() {
            chat.add(world, 0, others);
        }
        chat
    }

    /// Member `by` adds `devices`; the server accepts; everyone processes.
    fn add(&mut self, world: &World, by: usize, devices: Vec<Engine>) {
        let add = devices
            .iter()
            .map(|d| world.claim(&self.members[by], d))
            .collect();
        let pending = self.members[by]
            .commit(
                self.id,
                CommitIntent::Change {
                    add,
                    remove: vec![],
                },
            )
            .unwrap();
        assert_eq!(pending.welcome_for.len(), devices.len());
        self.land(world, by, &pending);
        let welcome = pending.welcome.unwrap();
        for mut d in devices {
            assert_eq!(d.join(&world.trust, &welcome).unwrap(), self.id);
            self.members.push(d);
        }
        self.assert_agree();
    }

    /// The server accepted `pending` from member `by`: it merges, the
    /// others process the commit.
    fn land(&mut self, world: &World, by: usize, pending: &PendingCommit) -> Vec<GroupEvent> {
        self.members[by].commit_accepted(self.id).unwrap();
        let mut events = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            if i != by {
                events.push(m.process(&world.trust, self.id, &pending.commit).unwrap());
            }
        }
        events
    }

    /// Member `from` sends `text`; every other member decrypts it.
    fn say(&mut self, world: &World, from: usize, text: &str) -> Vec<u8> {
        let wire = self.members[from]
            .encrypt(self.id, text.as_bytes())
            .unwrap();
        let sender = self.members[from].device_ref();
        for (i, m) in self.members.iter_mut().enumerate() {
            if i != from {
                assert_eq!(
                    m.process(&world.trust, self.id, &wire).unwrap(),
                    GroupEvent::Application {
                        sender,
                        plaintext: text.as_bytes().to_vec()
                    },
                    "member {i} of {}",
                    self.members.len()
                );
            }
        }
        wire
    }

    /// Member `by` builds (but does not land) a commit adding `devices`.
    fn commit_adding(&mut self, world: &World, by: usize, devices: &[&Engine]) -> PendingCommit {
        let add = devices
            .iter()
            .map(|d| world.claim(&self.members[by], d))
            .collect();
        self.members[by]
            .commit(
                self.id,
                CommitIntent::Change {
                    add,
                    remove: vec![],
                },
            )
            .unwrap()
    }

    fn assert_agree(&self) {
        let first = self.members[0].epoch_authenticator(self.id).unwrap();
        for m in &self.members {
            assert_eq!(m.epoch_authenticator(self.id).unwrap(), first);
        }
    }

    fn index_of(&self, d: DeviceRef) -> usize {
        self.members
            .iter()
            .position(|m| m.device_ref() == d)
            .unwrap()
    }
}

#[test]
fn a_direct_chat_between_alice_with_two_devices_and_bob() {
    let mut w = World::new();
    let (alice, bob) = (w.user(), w.user());
    let a1 = w.device(&alice);
    let a2 = w.device(&alice);
    let b1 = w.device(&bob);
    let mut chat = Chat::create(&w, a1, vec![a2, b1]);
    assert_eq!(chat.members[0].members(chat.id).unwrap().len(), 3);
    for from in 0..3 {
        chat.say(&w, from, &format!("hello from {from}"));
    }
    // Our own message coming back from the log is recognised, not decrypted.
    let wire = chat.members[0].encrypt(chat.id, b"echo").unwrap();
    assert_eq!(
        chat.members[0].process(&w.trust, chat.id, &wire).unwrap(),
        GroupEvent::AlreadyApplied
    );
}

#[test]
fn a_group_grown_to_100_devices_reads_everything_sent_while_members() {
    let mut w = World::new();
    let users: Vec<User> = (0..3).map(|_| w.user()).collect();
    let first = w.device(&users[0]);
    let others = vec![w.device(&users[1]), w.device(&users[2])];
    let mut chat = Chat::create(&w, first, others);
    chat.say(&w, 1, "three of us");
    // Grow in four commits by different members, a message after each.
    let mut round = 0;
    while chat.members.len() < 100 {
        let n = (100 - chat.members.len()).min(25);
        let new: Vec<Engine> = (0..n).map(|i| w.device(&users[i % 3])).collect();
        let by = round % chat.members.len();
        chat.add(&w, by, new);
        let from = chat.members.len() - 1;
        chat.say(&w, from, &format!("round {round}"));
        round += 1;
    }
    assert_eq!(chat.members.len(), 100);
    assert_eq!(chat.members[42].members(chat.id).unwrap().len(), 100);
    chat.say(&w, 0, "all hundred");
}

#[test]
fn a_removed_device_cannot_read_what_follows() {
    let mut w = World::new();
    let (alice, bob, carol) = (w.user(), w.user(), w.user());
    let a = w.device(&alice);
    let others = vec![w.device(&bob), w.device(&carol)];
    let mut chat = Chat::create(&w, a, others);
    let bob_dev = chat.members[1].device_ref();
    // A copy of Bob that ignores the removal.
    let stubborn = Engine::restore(&chat.members[1].snapshot().unwrap()).unwrap();
    let pending = chat.members[0]
        .commit(
            chat.id,
            CommitIntent::Change {
                add: vec![],
                remove: vec![bob_dev],
            },
        )
        .unwrap();
    let events = chat.land(&w, 0, &pending);
    assert_eq!(
        events[0],
        GroupEvent::RemovedFromGroup {
            by: chat.members[0].device_ref()
        }
    );
    let GroupEvent::Commit(summary) = &events[1] else {
        panic!("carol saw {:?}", events[1]);
    };
    assert_eq!(summary.removed, vec![bob_dev]);
    let mut bob = chat.members.remove(1);
    assert!(bob.chats().next().is_none());
    let secret = chat.say(&w, 0, "bob is gone");
    assert!(matches!(
        bob.process(&w.trust, chat.id, &secret),
        Err(E2eeError::NoGroup)
    ));
    let mut stubborn = stubborn;
    assert!(stubborn.process(&w.trust, chat.id, &secret).is_err());
}

#[test]
fn concurrent_commits_one_wins_the_other_rebases_and_lands() {
    let mut w = World::new();
    let (alice, bob, carol, dave) = (w.user(), w.user(), w.user(), w.user());
    let a = w.device(&alice);
    let b = w.device(&bob);
    let mut chat = Chat::create(&w, a, vec![b]);
    let c = w.device(&carol);
    let d = w.device(&dave);
    let epoch = chat.members[0].epoch(chat.id).unwrap();
    // Alice adds Carol; Bob, in the same epoch, adds Carol and Dave.
    let alice_wins = chat.commit_adding(&w, 0, &[&c]);
    let bob_loses = chat.commit_adding(&w, 1, &[&c, &d]);
    assert_eq!(alice_wins.epoch, epoch);
    assert_eq!(bob_loses.epoch, epoch);
    // The server takes Alice's; Bob gets 409 stale_epoch.
    chat.members[1].commit_rejected(chat.id).unwrap();
    chat.land(&w, 0, &alice_wins);
    let mut c = c;
    c.join(&w.trust, alice_wins.welcome.as_ref().unwrap())
        .unwrap();
    chat.members.push(c);
    chat.assert_agree();
    // Bob rebuilds his intent: Carol is in already, Dave is left.
    let rebased = chat.members[1]
        .rebase(chat.id, bob_loses.intent)
        .unwrap()
        .unwrap();
    assert_eq!(rebased.epoch, epoch + 1);
    assert_eq!(rebased.welcome_for, vec![d.device_ref()]);
    chat.land(&w, 1, &rebased);
    let mut d = d;
    d.join(&w.trust, rebased.welcome.as_ref().unwrap()).unwrap();
    chat.members.push(d);
    chat.assert_agree();
    chat.say(&w, 3, "dave made it");
    // A rebase with nothing left to do gives nothing.
    let again = CommitIntent::Change {
        add: vec![],
        remove: vec![],
    };
    assert!(chat.members[0].rebase(chat.id, again).unwrap().is_none());
    // The losing commit itself, replayed, is refused for its old epoch.
    assert_eq!(
        chat.members[0]
            .process(&w.trust, chat.id, &bob_loses.commit)
            .unwrap(),
        GroupEvent::AlreadyApplied
    );
}

#[test]
fn a_message_sent_just_before_a_commit_decrypts_after_it() {
    let mut w = World::new();
    let (alice, bob) = (w.user(), w.user());
    let a = w.device(&alice);
    let others = vec![w.device(&bob), w.device(&alice)];
    let mut chat = Chat::create(&w, a, others);
    let late = chat.members[1].encrypt(chat.id, b"just in time").unwrap();
    // Two commits land before the message is delivered.
    for by in [0, 2] {
        let pending = chat.members[by]
            .commit(chat.id, CommitIntent::SelfUpdate)
            .unwrap();
        chat.land(&w, by, &pending);
    }
    chat.assert_agree();
    let bob = chat.members[1].device_ref();
    for i in [0, 2] {
        assert_eq!(
            chat.members[i].process(&w.trust, chat.id, &late).unwrap(),
            GroupEvent::Application {
                sender: bob,
                plaintext: b"just in time".to_vec()
            }
        );
    }
}

#[test]
fn a_key_package_the_server_forged_is_refused() {
    let mut w = World::new();
    let (alice, bob) = (w.user(), w.user());
    let a = w.device(&alice);
    let b = w.device(&bob);
    // The server makes a "bob" device with a key of its own: valid MLS, no certificate.
    let forged = Engine::new(bob.id, DeviceId::new(), None).unwrap();
    let kp = forged.key_packages(Suite::default(), 1).unwrap();
    let err = a
        .validate_key_package(
            &w.trust,
            forged.device_ref(),
            Suite::default(),
            &kp.one_time[0],
        )
        .unwrap_err();
    assert!(matches!(err, E2eeError::Uncertified { user, .. } if user == bob.id));
    // Bob's real package handed out as another device of Bob's.
    let real = b.key_packages(Suite::default(), 1).unwrap();
    let other = DeviceRef {
        user: bob.id,
        device: DeviceId::new(),
    };
    assert!(matches!(
        a.validate_key_package(&w.trust, other, Suite::default(), &real.one_time[0]),
        Err(E2eeError::CredentialMismatch)
    ));
    // Garbage and a Welcome-shaped lie.
    assert!(matches!(
        a.validate_key_package(&w.trust, b.device_ref(), Suite::default(), b"junk"),
        Err(E2eeError::BadKeyPackage(_))
    ));
    // The last-resort package validates like the others.
    a.validate_key_package(
        &w.trust,
        b.device_ref(),
        Suite::default(),
        &real.last_resort,
    )
    .unwrap();
}

#[test]
fn commits_and_welcomes_with_uncertified_leaves_are_refused() {
    let mut w = World::new();
    let (alice, bob, carol) = (w.user(), w.user(), w.user());
    let a = w.device(&alice);
    let b = w.device(&bob);
    let mut chat = Chat::create(&w, a, vec![b]);
    // Alice's client has been fooled into trusting a server-made "carol" device.
    let forged = Engine::new(carol.id, DeviceId::new(), None).unwrap();
    let mut fooled = PinnedKeys::new();
    fooled.observe_identity(carol.id, carol.identity.public_key());
    let fake_cert = Identity::generate()
        .unwrap()
        .certify(carol.id, forged.device_ref().device, forged.signature_key())
        .unwrap();
    assert!(matches!(
        fooled.add_certificate(
            carol.id,
            forged.device_ref().device,
            forged.signature_key(),
            &fake_cert
        ),
        Err(E2eeError::BadCertificate { .. })
    ));
    struct Gullible;
    impl TrustStore for Gullible {
        fn is_certified(&self, _: UserId, _: DeviceId, _: &[u8]) -> bool {
            true
        }
    }
    let kp = forged.key_packages(Suite::default(), 1).unwrap();
    let package = chat.members[0]
        .validate_key_package(
            &Gullible,
            forged.device_ref(),
            Suite::default(),
            &kp.one_time[0],
        )
        .unwrap();
    let epoch = chat.members[1].epoch(chat.id).unwrap();
    let pending = chat.members[0]
        .commit(
            chat.id,
            CommitIntent::Change {
                add: vec![package],
                remove: vec![],
            },
        )
        .unwrap();
    // Bob refuses the commit and stays where he was.
    assert!(matches!(
        chat.members[1].process(&w.trust, chat.id, &pending.commit),
        Err(E2eeError::Uncertified { user, .. }) if user == carol.id
    ));
    assert_eq!(chat.members[1].epoch(chat.id).unwrap(), epoch);
    // Alice merges anyway and invites the real Carol: Carol refuses the group.
    chat.members[0].commit_accepted(chat.id).unwrap();
    let c = w.device(&carol);
    let invite = chat.commit_adding(&w, 0, &[&c]);
    chat.members[0].commit_accepted(chat.id).unwrap();
    let welcome = invite.welcome.unwrap();
    let mut c = c;
    assert!(matches!(
        c.join(&w.trust, &welcome),
        Err(E2eeError::Uncertified { .. })
    ));
    assert!(c.chats().next().is_none());
    // The refusal rolled the state back: the same Welcome still opens
    // (here with a trust store that accepts everything, to show it).
    assert_eq!(c.join(&Gullible, &welcome).unwrap(), chat.id);
}

#[test]
fn a_changed_identity_key_is_reported_and_voids_verification() {
    let mut w = World::new();
    let bob = w.user();
    let b = w.device(&bob);
    let me = b.device_ref();
    assert!(w.trust.is_certified(me.user, me.device, b.signature_key()));
    w.trust.set_verified(bob.id, true).unwrap();
    assert!(w.trust.is_verified(bob.id));
    assert_eq!(
        w.trust.observe_identity(bob.id, bob.identity.public_key()),
        None
    );
    let new_key = Identity::generate().unwrap();
    assert_eq!(
        w.trust.observe_identity(bob.id, new_key.public_key()),
        Some(TrustEvent::IdentityChanged { user_id: bob.id })
    );
    assert!(!w.trust.is_verified(bob.id));
    // Certificates under the old key no longer count.
    assert!(!w.trust.is_certified(me.user, me.device, b.signature_key()));
    let old_cert = bob
        .identity
        .certify(me.user, me.device, b.signature_key())
        .unwrap();
    assert!(
        w.trust
            .add_certificate(me.user, me.device, b.signature_key(), &old_cert)
            .is_err()
    );
    // The store survives a round trip.
    let again = PinnedKeys::from_bytes(&w.trust.to_bytes().unwrap()).unwrap();
    assert_eq!(again.identity_key(bob.id), Some(new_key.public_key()));
}

#[test]
fn a_snapshot_restores_a_working_group_and_unused_key_packages() {
    let mut w = World::new();
    let (alice, bob) = (w.user(), w.user());
    let a = w.device(&alice);
    let b = w.device(&bob);
    let mut chat = Chat::create(&w, a, vec![b]);
    chat.say(&w, 0, "before");
    // Carol publishes packages, then her device restarts from a snapshot.
    let carol = w.user();
    let c = w.device(&carol);
    let published = c.key_packages(Suite::default(), 2).unwrap();
    let mut c = Engine::restore(&c.snapshot().unwrap()).unwrap();
    for i in 0..2 {
        let bytes = chat.members[i].snapshot().unwrap();
        chat.members[i] = Engine::restore(&bytes).unwrap();
    }
    chat.say(&w, 1, "after restore");
    let package = chat.members[0]
        .validate_key_package(
            &w.trust,
            c.device_ref(),
            Suite::default(),
            &published.one_time[1],
        )
        .unwrap();
    let pending = chat.members[0]
        .commit(
            chat.id,
            CommitIntent::Change {
                add: vec![package],
                remove: vec![],
            },
        )
        .unwrap();
    // A snapshot with a commit in flight keeps it pending.
    chat.members[0] = Engine::restore(&chat.members[0].snapshot().unwrap()).unwrap();
    chat.land(&w, 0, &pending);
    c.join(&w.trust, pending.welcome.as_ref().unwrap()).unwrap();
    chat.members.push(c);
    chat.assert_agree();
    chat.say(&w, 2, "carol restored");
    assert!(Engine::restore(b"not a snapshot").is_err());
}

#[test]
fn reconcile_lists_what_to_add_and_remove() {
    let mut w = World::new();
    let (alice, bob, carol) = (w.user(), w.user(), w.user());
    let a = w.device(&alice);
    let others = vec![w.device(&bob), w.device(&carol)];
    let chat = Chat::create(&w, a, others);
    let bob_dev = chat.members[1].device_ref();
    let carol_dev = chat.members[2].device_ref();
    let a2 = w.device(&alice);
    let wanted = |e: &Engine| CertifiedDevice {
        device: e.device_ref(),
        signature_key: e.signature_key().to_vec(),
    };
    // Carol left; Alice linked a second device; Bob's leaf is fine.
    let want = vec![
        wanted(&chat.members[0]),
        wanted(&chat.members[1]),
        wanted(&a2),
    ];
    let r = chat.members[0].reconcile(chat.id, &want).unwrap();
    assert_eq!(r.add, vec![a2.device_ref()]);
    assert_eq!(r.remove, vec![carol_dev]);
    // Bob's device re-keyed: remove and re-add.
    let mut rekeyed = wanted(&chat.members[1]);
    rekeyed.signature_key = vec![0; 32];
    let r = chat.members[0]
        .reconcile(
            chat.id,
            &[wanted(&chat.members[0]), rekeyed, wanted(&chat.members[2])],
        )
        .unwrap();
    assert_eq!(r.add, vec![bob_dev]);
    assert_eq!(r.remove, vec![bob_dev]);
    let all: Vec<_> = chat.members.iter().map(wanted).collect();
    assert!(chat.members[2].reconcile(chat.id, &all).unwrap().is_empty());
    let _ = chat.index_of(bob_dev);
}

#[test]
fn a_handover_opens_only_on_its_device() {
    let mut w = World::new();
    let User { id, identity } = w.user();
    let alice = User {
        id,
        identity: Identity::generate().unwrap(),
    };
    let a1 = Engine::new(alice.id, DeviceId::new(), Some(identity)).unwrap();
    let mut a2 = Engine::new(alice.id, DeviceId::new(), None).unwrap();
    let other = Engine::new(a1.device_ref().user, DeviceId::new(), None).unwrap();
    let history = handover::HistoryRef {
        media_id: natter_proto::MediaId::new(),
        key: media::encrypt_stream(&b"history"[..], std::io::sink()).unwrap(),
    };
    let identity = a1.identity().unwrap();
    let sealed = handover::seal(
        a2.device_ref().user,
        a2.device_ref().device,
        a2.link_key(),
        identity,
        Some(history.clone()),
    )
    .unwrap();
    let opened = handover::open(&a2, &sealed).unwrap();
    assert_eq!(opened.identity.public_key(), identity.public_key());
    assert_eq!(opened.history, Some(history));
    assert!(handover::open(&other, &sealed).is_err());
    let mut bent = sealed.clone();
    let last = bent.len() - 1;
    bent[last] ^= 1;
    assert!(handover::open(&a2, &bent).is_err());
    // The new device can now certify further devices.
    a2.set_identity(opened.identity);
    let cert = a2.self_certificate().unwrap();
    let me = a2.device_ref();
    verify_certificate(
        identity.public_key(),
        me.user,
        me.device,
        a2.signature_key(),
        &cert,
    )
    .unwrap();
}

#[cfg(feature = "pq")]
#[test]
fn a_post_quantum_group_works_and_refuses_classic_packages() {
    let mut w = World::new();
    let (alice, bob) = (w.user(), w.user());
    let mut a = w.device(&alice);
    let mut b = w.device(&bob);
    let chat = ChatId::new();
    a.create_group(chat, Suite::PqHybrid).unwrap();
    let classic = b.key_packages(Suite::Classic, 1).unwrap();
    assert!(matches!(
        a.validate_key_package(
            &w.trust,
            b.device_ref(),
            Suite::PqHybrid,
            &classic.one_time[0]
        ),
        Err(E2eeError::WrongSuite)
    ));
    let pq = b.key_packages(Suite::PqHybrid, 1).unwrap();
    assert!(
        pq.one_time[0].len() > 2000,
        "an ML-KEM768 KeyPackage is large"
    );
    let package = a
        .validate_key_package(&w.trust, b.device_ref(), Suite::PqHybrid, &pq.one_time[0])
        .unwrap();
    let pending = a
        .commit(
            chat,
            CommitIntent::Change {
                add: vec![package],
                remove: vec![],
            },
        )
        .unwrap();
    a.commit_accepted(chat).unwrap();
    b.join(&w.trust, pending.welcome.as_ref().unwrap()).unwrap();
    let wire = b.encrypt(chat, b"post-quantum hello").unwrap();
    assert!(matches!(
        a.process(&w.trust, chat, &wire).unwrap(),
        GroupEvent::Application { plaintext, .. } if plaintext == b"post-quantum hello"
    ));
    let update = b.commit(chat, CommitIntent::SelfUpdate).unwrap();
    b.commit_accepted(chat).unwrap();
    a.process(&w.trust, chat, &update.commit).unwrap();
    assert_eq!(
        a.epoch_authenticator(chat).unwrap(),
        b.epoch_authenticator(chat).unwrap()
    );
}
