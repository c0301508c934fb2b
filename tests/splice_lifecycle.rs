//! A splice's life around other activity: payments before and after lock
//! and in flight, splices on two channels at once, a counterparty splicing
//! at the same moment, a restart before lock, and a reorg.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bitcoin::{Amount, FeeRate};
use common::*;
use ldk_splice::{FeePolicy, SpliceEvent, SpliceState};

const CAPACITY: Amount = Amount::from_sat(1_000_000);
const FEERATE: FeeRate = FeeRate::from_sat_per_kwu(500);

fn fee() -> FeePolicy {
    FeePolicy::fixed(FEERATE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_flow_before_and_after_lock_and_an_inflight_one_completes() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 100_000_000).await;
    let (a, b) = (&alice.node, &bob.node);

    // A payment is in flight when the splice is asked for.
    let invoice = b
        .create_invoice(
            Some(20_000_000),
            "in flight",
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    let hash = a.pay_invoice(&invoice).unwrap();
    let id = a
        .splice_in(&channel_id, &b.node_id(), Amount::from_sat(200_000), fee())
        .expect("splice accepted while a payment is in flight");
    let sent = a.wait_for_payment(&hash, WAIT).await.unwrap();
    assert_eq!(sent.status, ldk_splice::node::PaymentStatus::Succeeded);

    let record = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .unwrap();
    // Before lock, the channel keeps working both ways.
    pay(a, b, 30_000_000).await;
    pay(b, a, 5_000_000).await;
    mine(&chain, 6, &[a, b]).await;
    a.wait_for_splice(id, WAIT, |s| *s == SpliceState::Locked)
        .await
        .unwrap();
    // After lock too, and Bob's side adds up: 100k + 20k + 30k - 5k.
    pay(a, b, 1_000_000).await;
    assert_eq!(
        b.channel_balance(&channel_id).unwrap(),
        Amount::from_sat(146_000)
    );
    assert_eq!(
        a.channel(&channel_id).unwrap().channel_value_satoshis,
        (CAPACITY + Amount::from_sat(200_000)).to_sat()
    );
    assert_eq!(record.net_value.to_sat(), 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splices_on_two_channels_at_once() {
    let chain = start_chain().await;
    let alice = start_node(&chain).await;
    let bob = start_node(&chain).await;
    let carol = start_node(&chain).await;
    fund_nodes(&chain, &[&alice.node, &bob.node, &carol.node]).await;
    let (a, b, c) = (&alice.node, &bob.node, &carol.node);
    let (ab, _) = open_channel(&chain, a, b, CAPACITY, Amount::ZERO).await;
    let (ac, _) = open_channel(&chain, a, c, CAPACITY, Amount::ZERO).await;
    pay(a, b, 10_000_000).await;
    pay(a, c, 10_000_000).await;
    let wallet_before = a.onchain_balance().confirmed;

    let in_b = a
        .splice_in(&ab, &b.node_id(), Amount::from_sat(100_000), fee())
        .unwrap();
    let out_c = a
        .splice_out(
            &ac,
            &c.node_id(),
            Amount::from_sat(100_000),
            ldk_splice::Destination::Wallet,
            fee(),
        )
        .unwrap();
    // In the mempool, not just handed to the broadcaster, before mining.
    for id in [in_b, out_c] {
        broadcast_txid(&chain, a, id).await;
    }
    let in_record = a.splice_status(in_b).unwrap();
    let out_record = a.splice_status(out_c).unwrap();
    assert_ne!(
        in_record.txid, out_record.txid,
        "one transaction per channel"
    );
    mine(&chain, 6, &[a, b, c]).await;
    for id in [in_b, out_c] {
        a.wait_for_splice(id, WAIT, |s| *s == SpliceState::Locked)
            .await
            .unwrap();
    }
    assert_eq!(a.channel(&ab).unwrap().channel_value_satoshis, 1_100_000);
    assert_eq!(
        a.channel(&ac).unwrap().channel_value_satoshis,
        1_000_000 - 100_000 - out_record.fee.to_sat()
    );
    a.wait_until(WAIT, "wallet settles", |n| {
        n.onchain_balance().confirmed
            == wallet_before - Amount::from_sat(100_000) - in_record.fee + Amount::from_sat(100_000)
    })
    .await
    .unwrap_or_else(|_| panic!("wallet {:?}", a.onchain_balance()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_sides_splicing_at_once_ends_cleanly() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 200_000_000).await;
    let (a, b) = (&alice.node, &bob.node);

    // Both ask at the same moment. Depending on timing, LDK's quiescence
    // tie-break puts both contributions in one transaction, or queues one
    // behind the other (it starts once the first locks), or the second
    // request is refused while the first is in flight. Every outcome must
    // end with both splices done, at most after one retry of a refused or
    // failed one.
    let alice_add = Amount::from_sat(100_000);
    let bob_add = Amount::from_sat(50_000);
    let sides = [(a, b, alice_add), (b, a, bob_add)];
    let mut ids: Vec<Option<ldk_splice::SpliceId>> = sides
        .iter()
        .map(
            |(me, peer, add)| match me.splice_in(&channel_id, &peer.node_id(), *add, fee()) {
                Ok(id) => Some(id),
                Err(ldk_splice::SpliceError::SpliceInFlight { .. }) => None,
                Err(e) => panic!("unexpected refusal: {e}"),
            },
        )
        .collect();
    assert!(
        ids.iter().any(Option::is_some),
        "at least one splice starts"
    );

    let mut retried = [false, false];
    for _round in 0..40 {
        let mut all_locked = true;
        for (side, (me, peer, add)) in sides.iter().enumerate() {
            let state = ids[side]
                .and_then(|id| me.splice_status(id))
                .map(|r| r.state);
            match state {
                Some(SpliceState::Locked) => {}
                Some(SpliceState::Failed { .. }) | None => {
                    all_locked = false;
                    // A clean failure: nothing held, and a retry is accepted
                    // once the channel has no splice in flight.
                    assert!(me.coordinator().locked_coins().is_empty());
                    if let Ok(id) = me.splice_in(&channel_id, &peer.node_id(), *add, fee()) {
                        assert!(!retried[side], "retried once only");
                        retried[side] = true;
                        ids[side] = Some(id);
                    }
                }
                Some(_) => all_locked = false,
            }
        }
        if all_locked {
            break;
        }
        mine(&chain, 1, &[a, b]).await;
    }
    for (side, (me, ..)) in sides.iter().enumerate() {
        let record = me.splice_status(ids[side].unwrap()).unwrap();
        assert_eq!(record.state, SpliceState::Locked, "side {side}: {record:?}");
    }
    let expected = CAPACITY + alice_add + bob_add;
    a.wait_until(WAIT, "capacity", |n| {
        n.channel(&channel_id).unwrap().channel_value_satoshis == expected.to_sat()
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "capacity {}",
            a.channel(&channel_id).unwrap().channel_value_satoshis
        )
    });
    pay(a, b, 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_between_broadcast_and_lock_still_locks() {
    let chain = start_chain().await;
    let alice = start_node(&chain).await;
    let bob = start_node(&chain).await;
    fund_nodes(&chain, &[&alice.node, &bob.node]).await;
    let (channel_id, _) =
        open_channel(&chain, &alice.node, &bob.node, CAPACITY, Amount::ZERO).await;
    pay(&alice.node, &bob.node, 10_000_000).await;

    let id = alice
        .node
        .splice_in(
            &channel_id,
            &bob.node.node_id(),
            Amount::from_sat(200_000),
            fee(),
        )
        .unwrap();
    let broadcast = alice
        .node
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .unwrap();
    wait_in_mempool(&chain, &broadcast.txid.unwrap()).await;
    alice.node.stop().await.unwrap();
    let TestNode { node, dir } = alice;
    drop(node);

    // Blocks arrive while Alice is down.
    mine(&chain, 6, &[&bob.node]).await;
    let alice_node = builder(&chain, dir.path()).start().await.unwrap();
    let after_restart = alice_node
        .splice_status(id)
        .expect("journal kept the splice");
    assert_eq!(after_restart.txid, broadcast.txid);
    assert!(
        after_restart.state.is_broadcast(),
        "restart keeps a broadcast splice alive: {}",
        after_restart.state
    );
    let locked = alice_node
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Locked)
        .await
        .expect("locks after the restart");
    assert_eq!(locked.net_value.to_sat(), 200_000);
    assert_eq!(alice_node.list_splices().len(), 1);
    assert_eq!(
        alice_node
            .channel(&channel_id)
            .unwrap()
            .channel_value_satoshis,
        1_200_000
    );
    assert!(alice_node.coordinator().locked_coins().is_empty());
    pay(&alice_node, &bob.node, 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reorg_takes_confirmation_depth_back() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 10_000_000).await;
    let (a, b) = (&alice.node, &bob.node);
    while a.coordinator().next_event().is_some() {
        a.coordinator().event_handled();
    }

    let id = a
        .splice_in(&channel_id, &b.node_id(), Amount::from_sat(100_000), fee())
        .unwrap();
    let txid = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .unwrap()
        .txid
        .unwrap();
    wait_in_mempool(&chain, &txid).await;
    mine(&chain, 2, &[a, b]).await;
    a.wait_for_splice(id, WAIT, |s| *s == SpliceState::Confirmed { depth: 2 })
        .await
        .unwrap();
    let first_height = a.splice_status(id).unwrap().confirmation_height.unwrap();

    // Take both blocks away; the splice goes back to the mempool and a
    // longer branch confirms it again.
    let back = chain.invalidate_tip(2);
    assert!(back.contains(&txid));
    mine(&chain, 3, &[a, b]).await;
    a.wait_for_splice(id, WAIT, |s| *s == SpliceState::Confirmed { depth: 3 })
        .await
        .unwrap();
    assert_eq!(
        a.splice_status(id).unwrap().confirmation_height,
        Some(first_height)
    );

    let states: Vec<SpliceState> = std::iter::from_fn(|| {
        let event = a.coordinator().next_event();
        a.coordinator().event_handled();
        event
    })
    .filter_map(|e| match e {
        SpliceEvent::StateChanged { id: i, state, .. } if i == id => Some(state),
        _ => None,
    })
    .collect();
    // The first confirmation is an event (growth is read from `status`);
    // the reorg that took it back is one too.
    let confirmed = states
        .iter()
        .position(|s| matches!(s, SpliceState::Confirmed { .. }))
        .expect("the confirmation was reported");
    let back = confirmed
        + states[confirmed..]
            .iter()
            .position(|s| *s == SpliceState::Broadcast)
            .expect("the reorg was reported");
    assert!(
        states[back..]
            .iter()
            .any(|s| matches!(s, SpliceState::Confirmed { .. })),
        "confirmed again on the longer branch: {states:?}"
    );
    mine(&chain, 3, &[a, b]).await;
    a.wait_for_splice(id, WAIT, |s| *s == SpliceState::Locked)
        .await
        .unwrap();
}

/// Splice events wake every kind of waiter: an `.await`ing task, a blocked
/// thread and a callback on LDK's `Future`. The callback runs with the
/// coordinator free (it reads the splice list from inside; under the
/// coordinator's lock that would deadlock), once per batch of news.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_waiters_wake_with_the_coordinator_free() {
    let Setup {
        chain: _chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, 10_000_000).await;
    let (a, b) = (&alice.node, &bob.node);
    let coordinator = a.coordinator().clone();
    while coordinator.next_event().is_some() {
        coordinator.event_handled();
    }
    // Take the wake-up of the events just acknowledged.
    coordinator.event_future().wait_timeout(Duration::ZERO);

    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let (inner, seen) = (coordinator.clone(), seen.clone());
        coordinator
            .event_future()
            .register_callback(Box::new(move || {
                seen.lock().unwrap().push(inner.list_splices().len());
            }));
    }
    let task = {
        let coordinator = coordinator.clone();
        tokio::spawn(async move { coordinator.next_event_async().await })
    };
    let thread = {
        let coordinator = coordinator.clone();
        std::thread::spawn(move || coordinator.wait_next_event(WAIT))
    };
    assert!(seen.lock().unwrap().is_empty(), "no news yet");

    let id = a
        .splice_in(&channel_id, &b.node_id(), Amount::from_sat(100_000), fee())
        .unwrap();
    let event = tokio::time::timeout(WAIT, task)
        .await
        .expect("the task woke")
        .unwrap();
    assert_eq!(event.splice_id(), Some(id));
    let event = thread.join().unwrap().expect("the thread woke");
    assert_eq!(event.splice_id(), Some(id));
    assert_eq!(
        seen.lock().unwrap().first(),
        Some(&1),
        "the callback ran, and could read the coordinator"
    );
}
