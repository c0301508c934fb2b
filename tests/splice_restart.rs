//! What the splice journal and the wallet's reservations promise across a
//! restart, against real nodes on the devchain:
//!
//! - a splice the restart killed (LDK keeps a splice that has not reached
//!   signing in memory only) ends `Failed`, and its coins are spendable
//!   again: a new splice spends them to lock;
//! - the events queue keeps every event not acknowledged before the restart,
//!   in order, and the splice's later events follow them;
//! - a splice stopped while awaiting signatures keeps its coins and goes on
//!   to lock once the peer is back.
//!
//! (That a broadcast splice survives a restart and locks is in
//! `splice_lifecycle.rs`.)
//!
//! The two cases that need the splice held at a given stage put Bob's
//! channel manager behind a counterparty of the test's making
//! (`common::fake_peer`), then start Bob's real node again from his data
//! directory once the splice is to go on.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use bitcoin::{Amount, FeeRate, OutPoint};
use common::fake_peer::Behaviour;
use common::*;
use ldk_splice::devchain::DevChain;
use ldk_splice::node::Node;
use ldk_splice::{FeePolicy, SpliceEvent, SpliceId, SpliceRecord, SpliceState};
use lightning::ln::channel_state::SpliceCandidateStatus;
use lightning::ln::types::ChannelId;

const CAPACITY: Amount = Amount::from_sat(1_000_000);
const FEERATE: FeeRate = FeeRate::from_sat_per_kwu(500);
/// Alice pays Bob this much over the channel first, so both have a balance.
const PAID_TO_BOB_MSAT: u64 = 100_000_000;

fn fee() -> FeePolicy {
    FeePolicy::fixed(FEERATE)
}

/// The states of `id`'s events in `node`'s queue, acknowledging each one.
fn drain_states(node: &Node, id: SpliceId) -> Vec<SpliceState> {
    drain_events(node)
        .into_iter()
        .filter(|e| e.splice_id() == Some(id))
        .map(|e| state_of(&e))
        .collect()
}

/// The state a splice event reports.
fn state_of(event: &SpliceEvent) -> SpliceState {
    match event {
        SpliceEvent::StateChanged { state, .. } => state.clone(),
        other => panic!("not a splice's event: {other:?}"),
    }
}

/// Every event in `node`'s queue, acknowledging each one.
fn drain_events(node: &Node) -> Vec<SpliceEvent> {
    std::iter::from_fn(|| {
        let event = node.coordinator().next_event()?;
        node.coordinator().event_handled();
        Some(event)
    })
    .collect()
}

/// The record fields a restart must not change.
fn identity(record: &SpliceRecord) -> impl PartialEq + std::fmt::Debug {
    (
        record.id,
        record.channel_id,
        record.counterparty,
        record.add,
        record.outputs.clone(),
        record.fee,
        record.inputs.clone(),
        record.change.clone(),
        record.net_value.to_sat(),
        record.capacity_before,
        record.created_at,
    )
}

fn as_set(outpoints: &[OutPoint]) -> BTreeSet<OutPoint> {
    outpoints.iter().copied().collect()
}

/// A splice-in stuck in `Negotiating` (Bob never answers `stfu`) when Alice
/// restarts: LDK forgot it, so after the restart its record is the same one,
/// now `Failed` because of the restart; its coins are released and spendable
/// at once; and a new splice-in with the real Bob back spends exactly those
/// coins and locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_splice_is_failed_and_its_coins_spendable_after_restart() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let bob_id = bob.node.node_id();
    let full = alice.node.onchain_balance().confirmed;
    assert_eq!(alice.node.wallet().available_balance(), full);
    assert!(drain_events(&alice.node).is_empty(), "no splice yet");

    let fake =
        bob_behind_fake_peer(&alice.node, &bob.node, &channel_id, Behaviour::IgnoreStfu).await;
    let add = Amount::from_sat(200_000);
    let id = alice
        .node
        .splice_in(&channel_id, &bob_id, add, fee())
        .expect("splice-in starts");
    alice
        .node
        .wait_until(WAIT, "Bob to receive (and swallow) stfu", |_| {
            fake.handler.stfu_seen.load(Ordering::SeqCst) > 0
        })
        .await
        .expect("stfu sent");
    let before = alice.node.splice_status(id).expect("journaled");
    assert_eq!(before.state, SpliceState::Negotiating);
    let reserved = alice.node.coordinator().coins_held_by(id);
    assert!(!reserved.is_empty(), "the splice holds coins");
    assert_eq!(as_set(&reserved), as_set(&before.inputs));
    assert!(alice
        .node
        .coordinator()
        .locked_coins()
        .iter()
        .all(|(_, holder)| *holder == id));
    assert_eq!(
        alice.node.wallet().available_balance(),
        full - value_of(&chain, &reserved)
    );

    let alice = restart(&chain, alice).await;
    let a = &alice.node;

    // The same record, failed because of the restart.
    let splices = a.list_splices();
    assert_eq!(splices.len(), 1, "{splices:?}");
    let after = &splices[0];
    assert_eq!(identity(after), identity(&before));
    match &after.state {
        SpliceState::Failed { reason } => assert!(
            reason.contains("restart"),
            "the reason {reason:?} does not mention the restart"
        ),
        state => panic!("a splice LDK forgot is {state} after the restart"),
    }
    assert_eq!(a.splice_status(id).as_ref(), Some(after));
    assert_eq!(after.txid, None);
    // Its events, in order, ending with the failure.
    assert_eq!(
        drain_states(a, id),
        vec![
            SpliceState::Requested,
            SpliceState::Negotiating,
            after.state.clone()
        ]
    );
    // Its coins are free again, and LDK holds no contribution. (LDK also
    // replays a `DiscardFunding` for the lost contribution after the
    // restart, which frees the same coins; the journal's reconciliation at
    // start is what fails the record with the restart as its reason.)
    assert_eq!(a.coordinator().locked_coins(), Vec::new());
    assert_eq!(a.wallet().available_balance(), full);
    assert_eq!(a.onchain_balance().confirmed, full);
    let splice_details = a.channel(&channel_id).and_then(|c| c.splice_details);
    assert!(
        splice_details.is_none_or(|d| d.candidates.is_empty()),
        "LDK still has a splice candidate"
    );

    // The real Bob comes back; a new splice-in spends the released coins
    // and locks.
    let bob = bob_back_for_real(&chain, a, bob, fake).await;
    let b = &bob.node;
    let again = a
        .splice_in(&channel_id, &bob_id, add, fee())
        .expect("a new splice-in with the released coins");
    assert_ne!(again, id, "the journal does not reuse an id");
    let held = a.coordinator().coins_held_by(again);
    assert!(
        as_set(&reserved).is_subset(&as_set(&held)),
        "the new splice holds {held:?}, not the released {reserved:?}"
    );
    let record = a
        .wait_for_splice(again, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .expect("broadcast");
    let txid = record.txid.expect("txid once broadcast");
    wait_in_mempool(&chain, &txid).await;
    let tx = chain.transaction(&txid).expect("splice transaction");
    for outpoint in &reserved {
        assert!(
            tx.input.iter().any(|i| i.previous_output == *outpoint),
            "the splice spends the released coin {outpoint}"
        );
    }
    assert_eq!(fee_of(&chain, &tx), record.fee);
    mine(&chain, 6, &[a, b]).await;
    let record = a
        .wait_for_splice(again, WAIT, |s| *s == SpliceState::Locked)
        .await
        .expect("locked");
    assert_eq!(
        a.channel(&channel_id).unwrap().channel_value_satoshis,
        (CAPACITY + add).to_sat()
    );
    a.wait_until(WAIT, "wallet to see the splice", |n| {
        n.onchain_balance().confirmed == full - add - record.fee
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "wallet {:?}, expected {}",
            a.onchain_balance(),
            full - add - record.fee
        )
    });
    assert!(a.coordinator().locked_coins().is_empty());
    assert_eq!(
        a.splice_status(id).map(|r| r.state),
        Some(after.state.clone()),
        "the dead splice stays failed"
    );
    pay(a, b, 1_000_000).await;
}

/// Events queued before a restart and not acknowledged are still there
/// after it, in order, and the splice's later events follow them; an event
/// acknowledged before the restart does not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unacknowledged_events_survive_a_restart_in_order() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let (a, b) = (&alice.node, &bob.node);
    assert!(drain_events(a).is_empty(), "no splice yet");

    let add = Amount::from_sat(150_000);
    let id = a
        .splice_in(&channel_id, &b.node_id(), add, fee())
        .expect("splice-in starts");
    let broadcast = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .expect("broadcast");
    let txid = broadcast.txid.expect("txid once broadcast");
    wait_in_mempool(&chain, &txid).await;

    // The application handles the first two events only; the others stay
    // queued.
    for expected in [SpliceState::Requested, SpliceState::Negotiating] {
        let event = a.coordinator().next_event().expect("an event per state");
        assert_eq!(state_of(&event), expected);
        a.coordinator().event_handled();
    }
    let second = a.coordinator().next_event().expect("more events");
    assert_eq!(state_of(&second), SpliceState::AwaitingSignatures);
    assert_eq!(
        a.coordinator().next_event().as_ref(),
        Some(&second),
        "looking does not acknowledge"
    );

    let alice = restart(&chain, alice).await;
    let a = &alice.node;
    assert_eq!(
        a.coordinator().next_event().as_ref(),
        Some(&second),
        "the oldest unacknowledged event is first after the restart"
    );
    assert_eq!(
        a.splice_status(id).map(|r| r.state),
        Some(SpliceState::Broadcast)
    );

    mine(&chain, 6, &[a, b]).await;
    a.wait_for_splice(id, WAIT, |s| *s == SpliceState::Locked)
        .await
        .expect("locks after the restart");
    let events = drain_events(a);
    assert!(
        events.iter().all(|e| e.splice_id() == Some(id)),
        "{events:?}"
    );
    assert!(events.len() > 3, "{events:?}");
    assert_eq!(events[0], second, "the unacknowledged events first");
    assert_eq!(state_of(&events[1]), SpliceState::Signed, "{events:?}");
    match &events[2] {
        SpliceEvent::StateChanged {
            state,
            txid: event_txid,
            channel_id: event_channel,
            counterparty,
            ..
        } => {
            assert_eq!(*state, SpliceState::Broadcast, "{events:?}");
            assert_eq!(*event_txid, Some(txid));
            assert_eq!(*event_channel, channel_id);
            assert_eq!(*counterparty, b.node_id());
        }
        other => panic!("not a splice's event: {other:?}"),
    }
    let later: Vec<SpliceState> = events[3..].iter().map(state_of).collect();
    assert_eq!(
        later.last(),
        Some(&SpliceState::Locked),
        "then the new ones, up to Locked: {later:?}"
    );
    let depths: Vec<u32> = later[..later.len() - 1]
        .iter()
        .map(|s| match s {
            SpliceState::Confirmed { depth } => *depth,
            s => panic!("between Broadcast and Locked only depths, got {s} in {later:?}"),
        })
        .collect();
    assert!(!depths.is_empty(), "no confirmation event: {later:?}");
    assert!(
        depths.windows(2).all(|w| w[0] < w[1]),
        "depths only grow: {depths:?}"
    );
    assert_eq!(a.coordinator().next_event(), None);
    assert_eq!(
        a.channel(&channel_id).unwrap().channel_value_satoshis,
        (CAPACITY + add).to_sat()
    );
}

/// Alice's splice is negotiated and signed on her side, but Bob's
/// `tx_signatures` never reach her (nor hers him) when she restarts: the
/// splice is alive in LDK, so its record stays `Signed` and keeps its
/// coins; once the real Bob is back the signatures are exchanged,
/// the transaction broadcast, and the splice locks with those coins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splice_awaiting_signatures_goes_on_after_restart() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let bob_id = bob.node.node_id();
    let full = alice.node.onchain_balance().confirmed;

    let fake = bob_behind_fake_peer(
        &alice.node,
        &bob.node,
        &channel_id,
        Behaviour::WithholdTxSignatures,
    )
    .await;
    let add = Amount::from_sat(250_000);
    let id = alice
        .node
        .splice_in(&channel_id, &bob_id, add, fee())
        .expect("splice-in starts");
    alice
        .node
        .wait_until(WAIT, "the splice to reach the signature exchange", |n| {
            fake.handler.tx_signatures_withheld.load(Ordering::SeqCst) > 0
                && n.splice_status(id)
                    .is_some_and(|r| r.state == SpliceState::Signed)
                && awaiting_signatures_txid(n, &channel_id).is_some()
        })
        .await
        .expect("awaiting signatures");
    let negotiated = awaiting_signatures_txid(&alice.node, &channel_id).unwrap();
    assert!(
        !chain.mempool_txids().contains(&negotiated),
        "nobody could broadcast"
    );
    let before = alice.node.splice_status(id).unwrap();
    let reserved = alice.node.coordinator().coins_held_by(id);
    assert!(!reserved.is_empty());
    assert_eq!(as_set(&reserved), as_set(&before.inputs));

    let alice = restart(&chain, alice).await;
    let a = &alice.node;
    let after = a.splice_status(id).expect("journal kept the splice");
    assert_eq!(identity(&after), identity(&before));
    assert_eq!(
        after.state,
        SpliceState::Signed,
        "a splice LDK still has is not failed by the restart"
    );
    assert_eq!(
        awaiting_signatures_txid(a, &channel_id),
        Some(negotiated),
        "LDK kept the signing session"
    );
    assert_eq!(
        as_set(&a.coordinator().coins_held_by(id)),
        as_set(&reserved),
        "its coins stay reserved"
    );
    assert!(a.coordinator().locked_coins().iter().all(|(_, h)| *h == id));
    assert_eq!(
        a.wallet().available_balance(),
        full - value_of(&chain, &reserved),
        "only the reserved coins are unavailable"
    );

    let bob = bob_back_for_real(&chain, a, bob, fake).await;
    let b = &bob.node;
    let record = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .expect("broadcast once Bob is back");
    assert_eq!(
        record.txid,
        Some(negotiated),
        "the transaction negotiated before"
    );
    wait_in_mempool(&chain, &negotiated).await;
    let tx = chain.transaction(&negotiated).unwrap();
    for outpoint in &reserved {
        assert!(tx.input.iter().any(|i| i.previous_output == *outpoint));
    }
    assert_eq!(fee_of(&chain, &tx), record.fee);
    mine(&chain, 6, &[a, b]).await;
    let record = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Locked)
        .await
        .expect("locked");
    assert_eq!(
        a.channel(&channel_id).unwrap().channel_value_satoshis,
        (CAPACITY + add).to_sat()
    );
    a.wait_until(WAIT, "wallet to see the splice", |n| {
        n.onchain_balance().confirmed == full - add - record.fee
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "wallet {:?}, expected {}",
            a.onchain_balance(),
            full - add - record.fee
        )
    });
    assert!(a.coordinator().locked_coins().is_empty());
    assert_eq!(a.list_splices().len(), 1);
    pay(a, b, 1_000_000).await;
}

/// The txid of the splice candidate awaiting signatures on `channel_id`.
fn awaiting_signatures_txid(node: &Node, channel_id: &ChannelId) -> Option<bitcoin::Txid> {
    node.channel(channel_id)?
        .splice_details?
        .candidates
        .into_iter()
        .find_map(|c| match c.status {
            SpliceCandidateStatus::AwaitingSignatures { txid, .. } => Some(txid),
            _ => None,
        })
}

/// What `outpoints` hold together, as the devchain knows them.
fn value_of(chain: &DevChain, outpoints: &[OutPoint]) -> Amount {
    outpoints
        .iter()
        .map(|o| {
            chain
                .transaction(&o.txid)
                .expect("a known transaction")
                .output[o.vout as usize]
                .value
        })
        .sum()
}

/// `Node::stop` then `Node::start` on the same value, as LDK Node does: the
/// node catches up with blocks mined while it was stopped, its peer comes
/// back, and a splice and a payment go through. Starting twice is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_and_started_on_the_same_value_splices_again() {
    let Setup {
        chain,
        alice,
        bob,
        channel_id,
    } = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let (a, b) = (&alice.node, &bob.node);
    a.stop().await.expect("stops");
    assert!(!a.is_running());
    a.stop()
        .await
        .expect("stopping a stopped node does nothing");
    b.wait_until(WAIT, "Bob to see Alice gone", |n| {
        !n.is_connected(&a.node_id())
    })
    .await
    .expect("disconnected");
    let stopped_at = a.best_block_height();
    chain.mine_blocks_to_burn(3);
    assert_eq!(
        a.best_block_height(),
        stopped_at,
        "a stopped node syncs nothing"
    );

    a.start().await.expect("starts again");
    assert!(a.is_running());
    assert!(matches!(
        a.start().await,
        Err(ldk_splice::node::NodeError::InvalidInput(_))
    ));
    wait_synced(&chain, a).await;
    assert_eq!(a.best_block_height(), stopped_at + 3);
    a.wait_until(WAIT, "Bob back and the channel usable", |n| {
        n.channel(&channel_id).is_some_and(|c| c.is_usable)
    })
    .await
    .expect("reconnected");

    let wallet_before = a.onchain_balance().confirmed;
    let added = Amount::from_sat(120_000);
    let id = a
        .splice_in(&channel_id, &b.node_id(), added, fee())
        .expect("splice-in accepted");
    broadcast_txid(&chain, a, id).await;
    let record = mine_to_lock(&chain, a, b, id).await;
    assert_eq!(
        a.channel(&channel_id).unwrap().channel_value_satoshis,
        (CAPACITY + added).to_sat()
    );
    a.wait_until(WAIT, "the wallet to see the splice", |n| {
        n.onchain_balance().confirmed == wallet_before - added - record.fee
    })
    .await
    .expect("wallet paid exactly the amount and the fee");
    pay(a, b, 50_000_000).await;
}
