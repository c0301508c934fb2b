//! Crashes at every stage of a splice, with real processes: a devchain
//! process, Alice's and Bob's `sample-node` daemons. Alice's daemon is
//! killed with SIGKILL (nothing flushed) at each of: right after the API
//! call returns, during negotiation, awaiting signatures, signed (our
//! signatures handed to LDK), broadcast, one confirmation, and one block
//! before the lock; for a splice-in, a splice-out, a splice-in-and-out and a
//! three-leg batch. The daemon is started again from its data directory.
//!
//! Each case must end with every splice `Locked` or `Failed`/`Cancelled`
//! (never stuck past a deadline), no channel force-closed, Alice's wallet and
//! channel capacities exact to the satoshi (the fee checked against the
//! transaction on chain), no coin left locked, and a payment across the
//! channel going through.
//!
//! `random_kills` kills the daemon at random instants instead (seeded; a
//! failure prints its seed). CI runs 8; run more with
//! `CRASH_KILLS=30 CRASH_SEED=1 cargo test --release --test crash_matrix random_kills`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::rand::rngs::StdRng;
use bitcoin::secp256k1::rand::{Rng, SeedableRng};
use common::processes::*;
use serde_json::{json, Value};

const CAPACITY_SAT: u64 = 1_000_000;
const PUSH_SAT: u64 = 300_000;
const FEERATE_VB: u64 = 2;
/// Splice-outs pay here: an address nobody in the test holds.
const BURN: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
/// How long a case may take to settle after the restart.
const SETTLE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SpliceIn,
    SpliceOut,
    InAndOut,
    Batch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    AfterRequest,
    Negotiating,
    AwaitingSignatures,
    Signed,
    Broadcast,
    OneConfirmation,
    BeforeLock,
}

const POINTS: [Point; 7] = [
    Point::AfterRequest,
    Point::Negotiating,
    Point::AwaitingSignatures,
    Point::Signed,
    Point::Broadcast,
    Point::OneConfirmation,
    Point::BeforeLock,
];

impl Point {
    /// The daemon's crash point: the state whose event kills it, and how
    /// long after.
    fn hook(self) -> Option<(&'static str, u64)> {
        match self {
            Point::Negotiating => Some(("negotiating", 0)),
            Point::AwaitingSignatures => Some(("awaiting_signatures", 0)),
            // Long enough for our signatures to reach LDK (and the
            // exchange with the peer to start), short enough to beat it.
            Point::Signed => Some(("signed", 20)),
            Point::Broadcast => Some(("broadcast", 0)),
            Point::OneConfirmation => Some(("confirmed", 0)),
            Point::AfterRequest | Point::BeforeLock => None,
        }
    }
}

/// A devchain and two daemons, Alice with `channels` channels to Bob.
struct Pair {
    bin: PathBuf,
    chain: ChainProcess,
    alice: Daemon,
    bob: Daemon,
    _tmp: tempfile::TempDir,
    bob_id: String,
    channels: Vec<String>,
}

fn state_of(record: &Value) -> &str {
    record["state"].as_str().unwrap_or_default()
}

fn is_final(record: &Value) -> bool {
    matches!(state_of(record), "locked" | "failed" | "cancelled")
}

impl Pair {
    fn start(count: usize) -> Pair {
        let bin = sample_node_binary();
        let chain = ChainProcess::start();
        let tmp = tempfile::tempdir().expect("temp dir");
        let alice = start_daemon_with(
            &bin,
            &chain,
            tmp.path().join("alice"),
            &["--enable-crash-points"],
        );
        let bob = start_daemon(&bin, &chain, tmp.path().join("bob"));
        let info = api_ok(&bob.dir, "getinfo", json!({}));
        let bob_id = info["node_id"].as_str().unwrap().to_string();
        let bob_addr = info["listen_addr"].as_str().unwrap().to_string();
        let address = api_ok(&alice.dir, "newaddress", json!({}));
        let address: bitcoin::Address<bitcoin::address::NetworkUnchecked> =
            address["address"].as_str().unwrap().parse().unwrap();
        // Several coins, so that batches with two splice-ins can be funded.
        chain.mine_blocks(3, &address.assume_checked());
        chain.mine_blocks_to_burn(100);
        poll("Alice's coinbases to mature", || {
            let balance = api_ok(&alice.dir, "balance", json!({}));
            (sat(&balance, "confirmed_sat") == 3 * SUBSIDY_SAT).then_some(())
        });
        api_ok(
            &alice.dir,
            "connect",
            json!({ "peer": format!("{bob_id}@{bob_addr}") }),
        );
        for _ in 0..count {
            api_ok(
                &alice.dir,
                "openchannel",
                json!({ "node_id": bob_id, "amount_sat": CAPACITY_SAT, "push_sat": PUSH_SAT }),
            );
            poll("the funding in the mempool", || {
                (!chain.mempool().is_empty()).then_some(())
            });
            chain.mine_blocks_to_burn(1);
        }
        chain.mine_blocks_to_burn(6);
        let mut pair = Pair {
            bin,
            chain,
            alice,
            bob,
            _tmp: tmp,
            bob_id,
            channels: Vec::new(),
        };
        pair.channels = poll("every channel usable", || {
            let listed = api_ok(pair.a(), "listchannels", json!({}));
            let channels = listed.as_array()?;
            let ids: Vec<String> = channels
                .iter()
                .filter(|c| c["is_usable"] == true)
                .map(|c| c["channel_id"].as_str().unwrap().to_string())
                .collect();
            (ids.len() == channels.len() && ids.len() == count).then_some(ids)
        });
        pair.wait_usable("the start");
        pair
    }

    fn a(&self) -> &Path {
        &self.alice.dir
    }

    fn b(&self) -> &Path {
        &self.bob.dir
    }

    /// Every channel of the pair is listed and usable on both sides.
    fn usable(&self, dir: &Path) -> bool {
        let Some((200, channels)) = try_api(dir, "listchannels", json!({})) else {
            return false;
        };
        let Some(channels) = channels.as_array() else {
            return false;
        };
        channels.len() == self.channels.len()
            && self.channels.iter().all(|id| {
                channels
                    .iter()
                    .any(|c| c["channel_id"] == id.as_str() && c["is_usable"] == true)
            })
    }

    fn wait_usable(&self, what: &str) {
        let deadline = Instant::now() + WAIT;
        while !(self.usable(self.a()) && self.usable(self.b())) {
            assert!(
                Instant::now() < deadline,
                "{what}: the channels are not usable on both sides (force-closed?)\nAlice:\n{}\nBob:\n{}",
                self.alice.log_notable(60),
                self.bob.log_notable(60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn restart_alice(&mut self, what: &str) {
        let dir = self.alice.dir.clone();
        self.alice = start_daemon_with(&self.bin, &self.chain, dir, &["--enable-crash-points"]);
        self.wait_usable(what);
    }

    fn capacities(&self) -> Vec<u64> {
        let channels = api_ok(self.a(), "listchannels", json!({}));
        self.channels
            .iter()
            .map(|id| {
                let channel = channels
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["channel_id"] == id.as_str())
                    .unwrap_or_else(|| panic!("channel {id} gone"));
                sat(channel, "capacity_sat")
            })
            .collect()
    }

    fn splices(&self) -> Vec<Value> {
        api_ok(self.a(), "listsplices", json!({}))
            .as_array()
            .unwrap()
            .clone()
    }

    /// Starts the splice `kind` names. `None` when the daemon died during
    /// the call.
    fn start_op(&self, kind: Kind) -> Option<(u16, Value)> {
        let channel = |i: usize| (self.channels[i].as_str(), self.bob_id.as_str());
        let (ch, node) = channel(0);
        match kind {
            Kind::SpliceIn => try_api(
                self.a(),
                "splicein",
                json!({ "channel_id": ch, "node_id": node, "amount_sat": 50_000, "feerate_sat_per_vb": FEERATE_VB }),
            ),
            Kind::SpliceOut => try_api(
                self.a(),
                "spliceout",
                json!({ "channel_id": ch, "node_id": node, "amount_sat": 30_000, "to": BURN, "feerate_sat_per_vb": FEERATE_VB }),
            ),
            Kind::InAndOut => try_api(
                self.a(),
                "resize",
                json!({ "channel_id": ch, "node_id": node, "add_sat": 40_000,
                        "outputs": [{ "to": BURN, "amount_sat": 20_000 }], "feerate_sat_per_vb": FEERATE_VB }),
            ),
            Kind::Batch => try_api(
                self.a(),
                "batch",
                json!({
                    "feerate_sat_per_vb": FEERATE_VB,
                    "legs": [
                        { "type": "splice_in", "channel_id": self.channels[0], "node_id": self.bob_id, "amount_sat": 20_000 },
                        { "type": "splice_out", "channel_id": self.channels[1], "node_id": self.bob_id, "amount_sat": 10_000, "to": BURN },
                        { "type": "splice_in", "channel_id": self.channels[2], "node_id": self.bob_id, "amount_sat": 15_000 },
                    ],
                }),
            ),
        }
    }

    /// The splices started since `known`.
    fn new_splices(&self, known: &BTreeSet<u64>) -> Vec<Value> {
        self.splices()
            .into_iter()
            .filter(|r| !known.contains(&r["id"].as_u64().unwrap()))
            .collect()
    }

    /// Mines while a new splice is out, until every new splice (and its
    /// batch) has ended.
    fn settle(&self, known: &BTreeSet<u64>, what: &str) -> Vec<Value> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let new = self.new_splices(known);
            let batches_done = new
                .iter()
                .filter_map(|r| r["batch"].as_u64())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .all(|b| {
                    let batch = api_ok(self.a(), "batchstatus", json!({ "id": b.to_string() }));
                    matches!(
                        batch["state"].as_str(),
                        Some("locked" | "failed" | "cancelled")
                    )
                });
            if new.iter().all(is_final) && batches_done {
                return new;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: stuck: {new:#?}\nAlice:\n{}\nBob:\n{}",
                self.alice.log_notable(150),
                self.bob.log_notable(150)
            );
            if new
                .iter()
                .any(|r| matches!(state_of(r), "signed" | "broadcast" | "confirmed"))
            {
                self.chain.mine_blocks_to_burn(1);
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Waits until every new splice has been broadcast.
    fn wait_broadcast(&self, known: &BTreeSet<u64>, legs: usize) -> Vec<Value> {
        poll("the splices broadcast", || {
            let new = self.new_splices(known);
            (new.len() == legs
                && new
                    .iter()
                    .all(|r| state_of(r) == "broadcast" && r["txid"].is_string()))
            .then_some(new)
        })
    }
}

fn legs(kind: Kind) -> usize {
    if kind == Kind::Batch {
        3
    } else {
        1
    }
}

/// What the checks compare against.
struct Before {
    known: BTreeSet<u64>,
    wallet: u64,
    capacities: Vec<u64>,
}

fn before(pair: &Pair) -> Before {
    let balance = api_ok(pair.a(), "balance", json!({}));
    assert_eq!(
        sat(&balance, "available_sat"),
        sat(&balance, "confirmed_sat"),
        "every confirmed coin is free before a case: {balance}"
    );
    Before {
        known: pair
            .splices()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect(),
        wallet: sat(&balance, "confirmed_sat"),
        capacities: pair.capacities(),
    }
}

/// Kills Alice at `point` of a `kind` splice, restarts her, and checks
/// everything.
fn run_case(pair: &mut Pair, kind: Kind, point: Point) {
    let what = format!("{kind:?} killed at {point:?}");
    eprintln!("crash case: {what}");
    let before = before(pair);
    if let Some((state, delay_ms)) = point.hook() {
        api_ok(
            pair.a(),
            "crashat",
            json!({ "state": state, "delay_ms": delay_ms }),
        );
    }
    let answer = pair.start_op(kind);
    if let Some((status, value)) = &answer {
        assert_eq!(*status, 200, "{what}: refused: {value}");
    }
    let status = match point {
        Point::AfterRequest => {
            pair.alice.kill();
            pair.alice.child.try_wait().unwrap()
        }
        Point::BeforeLock => {
            let new = pair.wait_broadcast(&before.known, legs(kind));
            pair.chain.mine_blocks_to_burn(1);
            let id = new[0]["id"].as_u64().unwrap().to_string();
            let required = poll("the first confirmation", || {
                let record = api_ok(pair.a(), "splicestatus", json!({ "id": id }));
                (state_of(&record) == "confirmed").then(|| sat(&record, "confirmations_required"))
            });
            assert!(required >= 2, "{what}: {required} confirmations to lock");
            pair.chain.mine_blocks_to_burn(required as usize - 2);
            poll("one confirmation short of the lock", || {
                let all = pair.new_splices(&before.known);
                all.iter()
                    .all(|r| {
                        state_of(r) == "confirmed" && r["depth"].as_u64() == Some(required - 1)
                    })
                    .then_some(())
            });
            pair.alice.kill();
            pair.alice.child.try_wait().unwrap()
        }
        _ => {
            let chain = &pair.chain;
            let mut ticks = 0;
            pair.alice.wait_exit(WAIT, || {
                ticks += 1;
                if point == Point::OneConfirmation && ticks % 3 == 0 {
                    chain.mine_blocks_to_burn(1);
                }
            })
        }
    };
    let status = status.unwrap_or_else(|| {
        panic!(
            "{what}: the daemon did not die at its crash point\n{}",
            pair.alice.log_tail(60)
        )
    });
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{what}: {status:?}");
    }

    pair.restart_alice(&what);
    let new = pair.settle(&before.known, &what);
    check(pair, &before, &new, &what);
}

/// Everything a case must leave: exact wallet and channels, fees as on
/// chain, no locks, no force-close, a payment through.
fn check(pair: &Pair, before: &Before, new: &[Value], what: &str) {
    let locked: Vec<&Value> = new.iter().filter(|r| state_of(r) == "locked").collect();
    if new.iter().any(|r| r["batch"].is_u64()) {
        assert!(
            locked.is_empty() || locked.len() == new.len(),
            "{what}: a batch locked in part: {new:#?}\nAlice:\n{}",
            pair.alice.log_notable(150)
        );
    }
    let mut wallet = before.wallet;
    let mut capacities = before.capacities.clone();
    for record in &locked {
        let add = sat(record, "add");
        let fee = sat(record, "fee");
        let txid = record["txid"].as_str().unwrap();
        assert_eq!(pair.chain.fee_of(txid), fee, "{what}: the fee on chain");
        if add > 0 {
            wallet -= add + fee;
        }
        let channel = record["channel_id"].as_str().unwrap();
        let i = pair
            .channels
            .iter()
            .position(|c| c == channel)
            .expect("a channel of the pair");
        capacities[i] = (capacities[i] as i64 + record["net_value_sat"].as_i64().unwrap()) as u64;
    }
    let balance = poll("the wallet to settle", || {
        let balance = api_ok(pair.a(), "balance", json!({}));
        (sat(&balance, "confirmed_sat") == wallet).then_some(balance)
    });
    assert_eq!(sat(&balance, "available_sat"), wallet, "{what}: {balance}");
    assert_eq!(balance["locked_coins"], json!([]), "{what}: {balance}");
    assert_eq!(
        balance["splice_locked_coins"],
        json!([]),
        "{what}: {balance}"
    );
    assert_eq!(pair.capacities(), capacities, "{what}");
    assert!(
        pair.chain.mempool().is_empty(),
        "{what}: left in the mempool"
    );
    pair.wait_usable(what);
    let invoice = api_ok(
        pair.b(),
        "invoice",
        json!({ "amount_msat": 1_000_000, "description": "after a crash" }),
    );
    let paid = api_ok(
        pair.a(),
        "pay",
        json!({ "invoice": invoice["invoice"].as_str().unwrap() }),
    );
    assert_eq!(paid["status"], "Succeeded", "{what}: {paid}");
}

fn matrix(kind: Kind) {
    let mut pair = Pair::start(if kind == Kind::Batch { 3 } else { 1 });
    let mut outcomes = BTreeMap::new();
    for point in POINTS {
        run_case(&mut pair, kind, point);
        let last = pair.splices().last().map(|r| state_of(r).to_string());
        outcomes.insert(format!("{point:?}"), last);
    }
    eprintln!("{kind:?}: {outcomes:?}");
}

#[test]
fn splice_in_killed_at_every_stage() {
    matrix(Kind::SpliceIn);
}

#[test]
fn splice_out_killed_at_every_stage() {
    matrix(Kind::SpliceOut);
}

#[test]
fn splice_in_and_out_killed_at_every_stage() {
    matrix(Kind::InAndOut);
}

#[test]
fn three_leg_batch_killed_at_every_stage() {
    matrix(Kind::Batch);
}

/// Kills at random instants of random splices (seeded by `CRASH_SEED`,
/// `CRASH_KILLS` of them).
#[test]
fn random_kills() {
    let kills: usize = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(8);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261125);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pair = Pair::start(3);
    let kinds = [Kind::SpliceIn, Kind::SpliceOut, Kind::InAndOut, Kind::Batch];
    let mut states = BTreeMap::<String, usize>::new();
    for k in 0..kills {
        let kind = kinds[rng.gen_range(0..kinds.len())];
        // Negotiation and signing take tens of milliseconds here, the
        // confirmations seconds: half the kills land in the first 150 ms.
        let delay = Duration::from_millis(if rng.gen_bool(0.5) {
            rng.gen_range(0..150)
        } else {
            rng.gen_range(150..2_500)
        });
        let what = format!("random kill {k} (seed {seed}): {kind:?} after {delay:?}");
        eprintln!("{what}");
        let before = before(&pair);
        let answer = pair.start_op(kind);
        if let Some((status, value)) = &answer {
            assert_eq!(*status, 200, "{what}: refused: {value}");
        }
        let started = Instant::now();
        let mut mined = Instant::now();
        while started.elapsed() < delay {
            if mined.elapsed() > Duration::from_millis(300) {
                pair.chain.mine_blocks_to_burn(1);
                mined = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let at = pair
            .new_splices(&before.known)
            .iter()
            .map(|r| state_of(r).to_string())
            .collect::<Vec<_>>()
            .join(",");
        pair.alice.kill();
        pair.restart_alice(&what);
        let new = pair.settle(&before.known, &what);
        check(&pair, &before, &new, &what);
        *states.entry(at).or_default() += 1;
    }
    eprintln!("killed at: {states:?}");
}
