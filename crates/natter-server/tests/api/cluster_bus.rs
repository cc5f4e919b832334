//! The NATS bus between nodes: two buses (two "nodes") in this process
//! sharing one throwaway `nats-server -js`.

use std::sync::Arc;
use std::time::Duration;

use natter_proto::users::PresenceStatus;
use natter_proto::ws::close;
use natter_proto::{ChatId, DeviceId, UserId};
use natter_server::bus::{Bus, Kick, LiveEvent, NatsBus, NatsOptions, Outbound, Registration};
use natter_testkit::engines::NatsServer;

/// Longest anything here waits for the other node.
const WAIT: Duration = Duration::from_secs(20);

fn options(nats: &NatsServer, ttl: Duration) -> NatsOptions {
    NatsOptions {
        url: nats.url(),
        prefix: "natter".to_owned(),
        presence_ttl: ttl,
        presence_replicas: 1,
        connect_timeout: Duration::from_secs(5),
    }
}

async fn node(nats: &NatsServer) -> NatsBus {
    NatsBus::connect(options(nats, Duration::from_secs(30)))
        .await
        .unwrap()
}

fn event(chat: ChatId, seq: i64) -> Arc<LiveEvent> {
    Arc::new(LiveEvent {
        chat_id: chat,
        seq,
        joined: None,
        left: None,
        frame: Arc::from(format!("{{\"seq\":{seq}}}")),
    })
}

async fn next(reg: &mut Registration) -> Outbound {
    tokio::time::timeout(WAIT, reg.outbound.recv())
        .await
        .expect("nothing arrived in time")
        .expect("the queue closed")
}

async fn kicked(reg: &mut Registration) -> Kick {
    tokio::time::timeout(WAIT, reg.kicked.wait_for(Option::is_some))
        .await
        .expect("no kick in time")
        .expect("the kick channel closed")
        .expect("checked")
}

/// Polls `check` until it holds or `WAIT` passes.
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn events_state_signals_device_frames_and_kicks_cross_nodes() {
    let nats = NatsServer::start().await.unwrap();
    let (a, b) = (node(&nats).await, node(&nats).await);
    let (alice, bob) = (UserId::new(), UserId::new());
    let (alice_phone, bob_phone) = (DeviceId::new(), DeviceId::new());
    let mut on_a = a.register(alice, alice_phone, 16).await;
    let mut on_b = b.register(bob, bob_phone, 16).await;
    assert!(on_a.first_of_user && on_b.first_of_user);

    // A message sent on node A reaches Bob on node B, and Alice on A once.
    let chat = ChatId::new();
    a.send_event(&[alice, bob], event(chat, 1), None).await;
    match next(&mut on_b).await {
        Outbound::Event(e) => assert_eq!((e.chat_id, e.seq, &*e.frame), (chat, 1, "{\"seq\":1}")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next(&mut on_a).await, Outbound::Event(e) if e.seq == 1));
    // The sender's own connection is skipped on every node.
    b.send_event(&[alice, bob], event(chat, 2), Some(on_b.id))
        .await;
    assert!(matches!(next(&mut on_a).await, Outbound::Event(e) if e.seq == 2));

    a.send_state(&[bob], Arc::from("receipts")).await;
    assert!(matches!(next(&mut on_b).await, Outbound::State(f) if &*f == "receipts"));
    a.send_signal(bob, Arc::from("typing")).await;
    assert!(matches!(next(&mut on_b).await, Outbound::Signal(f) if &*f == "typing"));
    // A frame for another of Bob's devices does not reach this one.
    a.send_to_device(bob, DeviceId::new(), Arc::from("not yours"))
        .await;
    a.send_to_device(bob, bob_phone, Arc::from("welcome")).await;
    assert!(matches!(next(&mut on_b).await, Outbound::State(f) if &*f == "welcome"));
    assert!(
        on_b.outbound.try_recv().is_err(),
        "the event skipped for the sender"
    );

    // Presence and device state are the cluster's.
    assert_eq!(a.presence(bob).await, PresenceStatus::Online);
    assert!(a.device_online(bob, bob_phone).await);
    assert!(!a.device_online(bob, DeviceId::new()).await);
    assert_eq!(
        b.set_away(bob, on_b.id, true).await,
        Some(PresenceStatus::Away)
    );
    assert_eq!(a.presence(bob).await, PresenceStatus::Away);
    // Bob's laptop on A: not his first connection, and he is back online.
    let laptop = a.register(bob, DeviceId::new(), 16).await;
    assert!(!laptop.first_of_user);
    assert_eq!(b.presence(bob).await, PresenceStatus::Online);
    assert!(!a.unregister(bob, laptop.id).await, "still connected on B");

    // Revoking Bob's phone on A closes its socket on B.
    a.close_device(
        bob,
        bob_phone,
        Kick {
            code: close::REVOKED,
            reason: "device logged out",
        },
    )
    .await;
    assert_eq!(kicked(&mut on_b).await.code, close::REVOKED);
    assert!(b.unregister(bob, on_b.id).await, "his last, cluster-wide");
    assert!(eventually(|| async { a.presence(bob).await == PresenceStatus::Offline }).await);
}

#[tokio::test]
async fn a_dead_nodes_users_go_offline_after_the_ttl() {
    let nats = NatsServer::start().await.unwrap();
    let ttl = Duration::from_secs(2);
    let a = NatsBus::connect(options(&nats, ttl)).await.unwrap();
    let b = NatsBus::connect(options(&nats, ttl)).await.unwrap();
    let bob = UserId::new();
    let phone = DeviceId::new();
    let _reg = b.register(bob, phone, 4).await;
    assert_eq!(a.presence(bob).await, PresenceStatus::Online);
    // Still online after more than one TTL: B's heartbeat is heard.
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(a.presence(bob).await, PresenceStatus::Online);
    // B dies without unregistering anyone.
    drop(b);
    assert!(eventually(|| async { a.presence(bob).await == PresenceStatus::Offline }).await);
    assert!(!a.device_online(bob, phone).await);
}

#[tokio::test]
async fn a_connected_users_presence_key_is_not_rewritten_to_stay_online() {
    let nats = NatsServer::start().await.unwrap();
    let ttl = Duration::from_secs(2);
    let a = NatsBus::connect(options(&nats, ttl)).await.unwrap();
    let b = NatsBus::connect(options(&nats, ttl)).await.unwrap();
    let bob = UserId::new();
    let _reg = b.register(bob, DeviceId::new(), 4).await;
    let bucket = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap())
        .get_key_value("natter_online")
        .await
        .unwrap();
    let revision = || async {
        bucket
            .entry(bob.to_string())
            .await
            .unwrap()
            .expect("bob has a presence key")
            .revision
    };
    let written = revision().await;
    // Three TTLs later Bob is still online for A, kept so by B's heartbeat:
    // his key was written once, when his socket came.
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(a.presence(bob).await, PresenceStatus::Online);
    assert_eq!(revision().await, written, "the key was rewritten");
}

#[tokio::test]
async fn after_a_nats_restart_sockets_resync_and_delivery_resumes() {
    let mut nats = NatsServer::start().await.unwrap();
    let (a, b) = (node(&nats).await, node(&nats).await);
    let (alice, bob) = (UserId::new(), UserId::new());
    let _on_a = a.register(alice, DeviceId::new(), 16).await;
    let mut on_b = b.register(bob, DeviceId::new(), 16).await;
    let chat = ChatId::new();
    a.send_event(&[bob], event(chat, 1), None).await;
    assert!(matches!(next(&mut on_b).await, Outbound::Event(e) if e.seq == 1));

    nats.kill();
    // Sending while NATS is away neither fails nor waits on it.
    tokio::time::timeout(WAIT, a.send_event(&[bob], event(chat, 2), None))
        .await
        .unwrap();
    // Presence falls back to this node's own view.
    assert_eq!(b.presence(bob).await, PresenceStatus::Online);
    nats.restart().await.unwrap();

    // B's socket is told to reconnect and sync (seq 2 is in the store).
    assert_eq!(kicked(&mut on_b).await.code, close::BEHIND);
    assert!(b.unregister(bob, on_b.id).await);
    let mut again = b.register(bob, DeviceId::new(), 16).await;
    // A may reconnect a little later than B: send until one arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seq = 3;
    let received = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery did not resume"
        );
        a.send_event(&[bob], event(chat, seq), None).await;
        if let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(200), again.outbound.recv()).await
        {
            break item;
        }
        seq += 1;
    };
    assert!(matches!(received, Outbound::Event(e) if e.seq >= 3));
}
