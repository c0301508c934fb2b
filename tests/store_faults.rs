//! The crate's own writes failing, one at a time, across the whole life of
//! a splice and of a batch.
//!
//! Alice's splice journal and wallet are written through a store that fails
//! the Nth write (either before writing, or after the write landed: an
//! fsync error), for every N from the request to the lock. Each time the
//! operation either errors cleanly or completes; then Alice restarts with a
//! healthy store, and her records, coin locks, events, wallet and channel
//! must agree, to the satoshi. A store that always fails one key (the event
//! acknowledgements; the journal) is covered too.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bitcoin::{Amount, FeeRate};
use common::*;
use ldk_splice::devchain::DevChain;
use ldk_splice::node::Node;
use ldk_splice::SharedStore;
use ldk_splice::{
    BatchPlan, BatchState, ChannelRef, Destination, FeePolicy, Leg, SpliceError, SpliceEvent,
    SpliceId, SpliceState,
};
use lightning::io;
use lightning::ln::types::ChannelId;
use lightning::util::persist::KVStoreSync;

const CAPACITY: Amount = Amount::from_sat(1_000_000);
const FEERATE: FeeRate = FeeRate::from_sat_per_kwu(500);

/// What the faulty store does.
#[derive(Default)]
struct FaultPlan {
    /// Writes (and removals) since the plan was armed.
    writes: AtomicU64,
    /// The write that fails (counting from 1); 0 for none.
    fail_at: AtomicU64,
    /// Whether the failing write lands before it reports its failure.
    landed: AtomicBool,
    /// Writes to this secondary namespace always fail.
    broken: Mutex<Option<String>>,
    /// Failures injected so far.
    injected: AtomicU64,
}

impl FaultPlan {
    fn arm(&self, fail_at: u64, landed: bool) {
        self.writes.store(0, Ordering::SeqCst);
        self.landed.store(landed, Ordering::SeqCst);
        self.fail_at.store(fail_at, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.fail_at.store(0, Ordering::SeqCst);
        *self.broken.lock().unwrap() = None;
    }

    /// Whether this write fails, and whether it lands first.
    fn fails(&self, secondary: &str) -> Option<bool> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.broken.lock().unwrap().as_deref() == Some(secondary) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Some(false);
        }
        if n == self.fail_at.load(Ordering::SeqCst) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Some(self.landed.load(Ordering::SeqCst));
        }
        None
    }
}

struct FaultyStore {
    inner: SharedStore,
    plan: Arc<FaultPlan>,
}

fn injected() -> io::Error {
    io::Error::new(io::ErrorKind::Other, "injected store failure")
}

impl KVStoreSync for FaultyStore {
    fn read(&self, primary: &str, secondary: &str, key: &str) -> Result<Vec<u8>, io::Error> {
        self.inner.read(primary, secondary, key)
    }

    fn write(
        &self,
        primary: &str,
        secondary: &str,
        key: &str,
        buf: Vec<u8>,
    ) -> Result<(), io::Error> {
        match self.plan.fails(secondary) {
            None => self.inner.write(primary, secondary, key, buf),
            Some(true) => {
                self.inner.write(primary, secondary, key, buf)?;
                Err(injected())
            }
            Some(false) => Err(injected()),
        }
    }

    fn remove(
        &self,
        primary: &str,
        secondary: &str,
        key: &str,
        lazy: bool,
    ) -> Result<(), io::Error> {
        match self.plan.fails(secondary) {
            None => self.inner.remove(primary, secondary, key, lazy),
            Some(true) => {
                self.inner.remove(primary, secondary, key, lazy)?;
                Err(injected())
            }
            Some(false) => Err(injected()),
        }
    }

    fn list(&self, primary: &str, secondary: &str) -> Result<Vec<String>, io::Error> {
        self.inner.list(primary, secondary)
    }
}

/// Alice, her store faults, Bob, and their channels.
struct World {
    chain: DevChain,
    alice: Option<TestNode>,
    bob: TestNode,
    plan: Arc<FaultPlan>,
    channels: Vec<ChannelId>,
}

async fn start_alice(chain: &DevChain, dir: tempfile::TempDir, plan: &Arc<FaultPlan>) -> TestNode {
    let plan = plan.clone();
    let node = builder(chain, dir.path())
        .wrap_splice_store(move |inner| {
            Arc::new(FaultyStore {
                inner,
                plan: plan.clone(),
            })
        })
        .start()
        .await
        .expect("Alice starts");
    TestNode { node, dir }
}

impl World {
    async fn new(channels: usize) -> World {
        let chain = start_chain().await;
        let plan = Arc::new(FaultPlan::default());
        let alice = start_alice(&chain, tempfile::tempdir().unwrap(), &plan).await;
        let bob = start_node(&chain).await;
        fund_nodes(&chain, &[&alice.node, &bob.node]).await;
        let mut ids = Vec::new();
        for _ in 0..channels {
            let (id, _) =
                open_channel(&chain, &alice.node, &bob.node, CAPACITY, Amount::ZERO).await;
            ids.push(id);
        }
        pay(&alice.node, &bob.node, 200_000_000).await;
        World {
            chain,
            alice: Some(alice),
            bob,
            plan,
            channels: ids,
        }
    }

    fn a(&self) -> &Node {
        &self.alice.as_ref().unwrap().node
    }

    fn b(&self) -> &Node {
        &self.bob.node
    }

    fn channel(&self, i: usize) -> ChannelRef {
        ChannelRef {
            channel_id: self.channels[i],
            counterparty: self.b().node_id(),
        }
    }

    fn capacity(&self, i: usize) -> Amount {
        Amount::from_sat(
            self.a()
                .channel(&self.channels[i])
                .unwrap()
                .channel_value_satoshis,
        )
    }

    /// Heals the store and restarts Alice from her data directory.
    async fn restart_healthy(&mut self) {
        self.plan.heal();
        let alice = self.alice.take().unwrap();
        alice.node.stop().await.expect("Alice stops");
        let TestNode { node, dir } = alice;
        drop(node);
        self.alice = Some(start_alice(&self.chain, dir, &self.plan).await);
        let bob = self.b().node_id();
        let _ = self.a().connect(bob, self.b().listen_addr()).await;
        let channels = self.channels.clone();
        self.a()
            .wait_until(WAIT, "every channel usable", |n| {
                channels
                    .iter()
                    .all(|c| n.channel(c).is_some_and(|c| c.is_usable))
            })
            .await
            .expect("channels usable after the restart");
    }

    /// Mines blocks until every splice of Alice has ended, and returns
    /// nothing left in the mempool.
    async fn drive_to_the_end(&self, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        loop {
            let open: Vec<_> = self
                .a()
                .list_splices()
                .into_iter()
                .filter(|r| !r.state.is_final())
                .collect();
            if open.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: splices never ended: {open:?}"
            );
            if open.iter().any(|r| r.state.is_broadcast()) {
                mine(&self.chain, 1, &[self.a(), self.b()]).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Records, locks, events and ids agree; the wallet holds `wallet`.
    async fn check(&self, what: &str, wallet: Amount, seen: &mut BTreeSet<SpliceId>) {
        let a = self.a();
        assert_eq!(a.coordinator().locked_coins(), Vec::new(), "{what}");
        a.wait_until(WAIT, "the wallet to settle", |n| {
            n.wallet().locked_coins().is_empty() && n.onchain_balance().confirmed == wallet
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: wallet {:?} (expected {wallet} confirmed), locks {:?}",
                a.onchain_balance(),
                a.wallet().locked_coins()
            )
        });
        assert_eq!(a.wallet().available_balance(), wallet, "{what}");
        // Each splice's last event reports where its record stands.
        let mut last = std::collections::BTreeMap::new();
        while let Some(event) = a.coordinator().next_event() {
            if let SpliceEvent::StateChanged { id, state, .. } = &event {
                last.insert(*id, state.clone());
            }
            a.coordinator().event_handled();
        }
        for (id, state) in last {
            let record = a.splice_status(id).expect("an event names a record");
            assert_eq!(record.state, state, "{what}: {id}'s last event");
        }
        for record in a.list_splices() {
            assert!(record.state.is_final(), "{what}: {record:?}");
        }
        let ids: BTreeSet<SpliceId> = a.list_splices().iter().map(|r| r.id).collect();
        assert!(ids.is_superset(seen), "{what}: records vanished");
        *seen = ids;
        for c in &self.channels {
            let details = a.channel(c).unwrap().splice_details;
            assert!(
                details.is_none_or(|d| d.candidates.is_empty()),
                "{what}: LDK still has a splice"
            );
        }
    }
}

/// Drains and acknowledges Alice's events (so each round starts clean).
fn drain(node: &Node) {
    while node.coordinator().next_event().is_some() {
        node.coordinator().event_handled();
    }
}

/// One splice-in to lock with the store counting writes; returns how many
/// there were.
async fn writes_of_a_splice(world: &World) -> u64 {
    world.plan.arm(0, false);
    let id = world
        .a()
        .splice_in(
            &world.channels[0],
            &world.b().node_id(),
            Amount::from_sat(50_000),
            FeePolicy::fixed(FEERATE),
        )
        .unwrap();
    world.drive_to_the_end("counting").await;
    assert_eq!(
        world.a().splice_status(id).unwrap().state,
        SpliceState::Locked
    );
    world.plan.writes.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_write_anywhere_in_a_splice_leaves_everything_consistent() {
    let mut world = World::new(1).await;
    let mut seen = BTreeSet::new();
    drain(world.a());
    let total = writes_of_a_splice(&world).await;
    assert!(total > 5, "a splice writes {total} times");
    world.restart_healthy().await;
    drain(world.a());
    seen.extend(world.a().list_splices().iter().map(|r| r.id));
    let mut seen_in_events = BTreeSet::new();
    let add = Amount::from_sat(40_000);
    for n in 1..=total {
        for landed in [false, true] {
            let what = format!(
                "write {n} of {total} failing{}",
                if landed { " after landing" } else { "" }
            );
            let wallet = world.a().onchain_balance().confirmed;
            let capacity = world.capacity(0);
            let injected = world.plan.injected.load(Ordering::SeqCst);
            world.plan.arm(n, landed);
            let started = world.a().splice_in(
                &world.channels[0],
                &world.b().node_id(),
                add,
                FeePolicy::fixed(FEERATE),
            );
            match &started {
                Ok(id) => {
                    // Never an id seen before, even one whose record's write
                    // "failed" after landing.
                    assert!(
                        seen.iter().all(|old| old < id)
                            && seen_in_events.iter().all(|old| old < id),
                        "{what}: {id} reused"
                    );
                }
                Err(SpliceError::Persistence(_)) => {
                    assert!(
                        world.plan.injected.load(Ordering::SeqCst) > injected,
                        "{what}: a persistence error without a failure"
                    );
                    assert_eq!(world.a().coordinator().locked_coins(), Vec::new(), "{what}");
                }
                Err(e) => panic!("{what}: {e:?}"),
            }
            // Carry on under the faulty store as far as the splice goes.
            world.drive_to_the_end(&what).await;
            seen_in_events.extend(
                world
                    .a()
                    .coordinator()
                    .pending_events()
                    .iter()
                    .filter_map(SpliceEvent::splice_id),
            );
            world.restart_healthy().await;
            world.drive_to_the_end(&what).await;
            let locked: Vec<_> = world
                .a()
                .list_splices()
                .into_iter()
                .filter(|r| !seen.contains(&r.id) && r.state == SpliceState::Locked)
                .collect();
            let (wallet_after, capacity_after) = match locked.as_slice() {
                [] => (wallet, capacity),
                [record] => {
                    assert!(started.is_ok(), "{what}: a refused splice locked");
                    (wallet - add - record.fee, capacity + add)
                }
                many => panic!("{what}: {many:?}"),
            };
            world.check(&what, wallet_after, &mut seen).await;
            assert_eq!(world.capacity(0), capacity_after, "{what}");
            if let Ok(id) = started {
                let state = world.a().splice_status(id).unwrap().state;
                assert!(
                    state == SpliceState::Locked || matches!(state, SpliceState::Failed { .. }),
                    "{what}: {state}"
                );
            }
        }
    }
    assert!(
        world.plan.injected.load(Ordering::SeqCst) >= total,
        "most rounds must have hit their failing write"
    );
    pay(world.a(), world.b(), 1_000_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_write_anywhere_in_a_batch_leaves_everything_consistent() {
    let mut world = World::new(2).await;
    let mut seen = BTreeSet::new();
    drain(world.a());
    let to = Destination::Address(address_of(world.b()).as_unchecked().clone());
    let plan = |world: &World| {
        BatchPlan::new(FeePolicy::fixed(FEERATE))
            .leg(Leg::SpliceIn {
                channel: world.channel(0),
                amount: Amount::from_sat(30_000),
            })
            .leg(Leg::SpliceOut {
                channel: world.channel(1),
                amount: Amount::from_sat(20_000),
                to: to.clone(),
            })
    };
    world.plan.arm(0, false);
    let id = world.a().start_batch(plan(&world)).unwrap();
    world.drive_to_the_end("counting").await;
    assert_eq!(
        world.a().batch_status(id).unwrap().state,
        BatchState::Locked
    );
    let total = world.plan.writes.load(Ordering::SeqCst);
    world.restart_healthy().await;
    drain(world.a());
    seen.extend(world.a().list_splices().iter().map(|r| r.id));
    for n in 1..=total {
        let landed = n % 2 == 0;
        let what = format!(
            "batch write {n} of {total} failing{}",
            if landed { " after landing" } else { "" }
        );
        let wallet = world.a().onchain_balance().confirmed;
        let capacities = [world.capacity(0), world.capacity(1)];
        world.plan.arm(n, landed);
        let started = world.a().start_batch(plan(&world));
        if let Err(e) = &started {
            assert!(matches!(e, SpliceError::Persistence(_)), "{what}: {e:?}");
        }
        world.drive_to_the_end(&what).await;
        world.restart_healthy().await;
        world.drive_to_the_end(&what).await;
        let legs: Vec<_> = world
            .a()
            .list_splices()
            .into_iter()
            .filter(|r| !seen.contains(&r.id))
            .collect();
        let all_locked = !legs.is_empty() && legs.iter().all(|r| r.state == SpliceState::Locked);
        // A batch that started ends on the node's next tick after its legs.
        let id = started.as_ref().ok().copied();
        if let Some(id) = id {
            world
                .a()
                .wait_until(WAIT, "the batch to end", |n| {
                    n.batch_status(id).is_some_and(|b| b.state.is_final())
                })
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        let batch = id.and_then(|id| world.a().batch_status(id));
        if all_locked {
            assert_eq!(batch.map(|b| b.state), Some(BatchState::Locked), "{what}");
            let splice_in = legs.iter().find(|r| r.add > Amount::ZERO).unwrap();
            let splice_out = legs.iter().find(|r| r.add == Amount::ZERO).unwrap();
            world
                .check(
                    &what,
                    wallet - Amount::from_sat(30_000) - splice_in.fee,
                    &mut seen,
                )
                .await;
            assert_eq!(world.capacity(0), capacities[0] + Amount::from_sat(30_000));
            assert_eq!(
                world.capacity(1),
                capacities[1] - Amount::from_sat(20_000) - splice_out.fee
            );
        } else {
            // Atomic up to signing: no leg locked alone.
            assert!(
                legs.iter().all(|r| r.state != SpliceState::Locked),
                "{what}: {legs:?}"
            );
            if let Some(batch) = batch {
                assert!(
                    batch.state.is_final() && batch.state != BatchState::Locked,
                    "{what}"
                );
            }
            world.check(&what, wallet, &mut seen).await;
            assert_eq!([world.capacity(0), world.capacity(1)], capacities, "{what}");
        }
    }
}

/// A store that always fails one key: writing event acknowledgements (an
/// error, retried once healed), and the journal (nothing starts, nothing
/// stays locked, nothing reaches LDK).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_that_always_fails() {
    let mut world = World::new(1).await;
    drain(world.a());
    let a = world.a();
    let id = a
        .splice_in(
            &world.channels[0],
            &world.b().node_id(),
            Amount::from_sat(30_000),
            FeePolicy::fixed(FEERATE),
        )
        .unwrap();
    let first = a.coordinator().next_event().expect("an event");
    *world.plan.broken.lock().unwrap() = Some("events".into());
    a.coordinator().event_handled();
    assert_ne!(
        a.coordinator().next_event(),
        Some(first.clone()),
        "handled in this run"
    );
    assert!(
        a.coordinator().write_acknowledgements().is_err(),
        "the acknowledgement cannot be written"
    );
    world.plan.heal();
    a.coordinator()
        .write_acknowledgements()
        .expect("written once healed");
    world.drive_to_the_end("the splice").await;
    assert_eq!(a.splice_status(id).unwrap().state, SpliceState::Locked);

    *world.plan.broken.lock().unwrap() = Some("journal".into());
    let wallet = a.wallet().available_balance();
    let err = a
        .splice_in(
            &world.channels[0],
            &world.b().node_id(),
            Amount::from_sat(30_000),
            FeePolicy::fixed(FEERATE),
        )
        .expect_err("the journal cannot be written");
    assert!(matches!(err, SpliceError::Persistence(_)), "{err:?}");
    assert_eq!(a.coordinator().locked_coins(), Vec::new());
    assert_eq!(a.wallet().locked_coins(), Vec::new());
    assert_eq!(a.wallet().available_balance(), wallet);
    assert!(a
        .channel(&world.channels[0])
        .unwrap()
        .splice_details
        .is_none_or(|d| d.candidates.is_empty()));
    world.restart_healthy().await;
    let mut seen = BTreeSet::new();
    let wallet = world.a().onchain_balance().confirmed;
    world
        .check("after the broken journal", wallet, &mut seen)
        .await;
}
