//! A guided tour of splicing on a private regtest chain.
//!
//! ```text
//! cargo run --release --example splice-demo
//! ```
//!
//! Starts a devchain and three LDK nodes in this process (Alice, Bob and
//! Carol, talking over TCP on 127.0.0.1), funds them, opens channels from
//! Alice to Bob and to Carol, then, each time mining until the splice is
//! locked:
//!
//! 1. splices 200 000 sat from Alice's wallet into the channel with Bob;
//! 2. splices 100 000 sat out of the channel with Carol to an address;
//! 3. runs a batch that moves 150 000 sat from Bob's channel to Carol's.
//!
//! It prints the capacities and balances before and after, and each
//! splice's transaction, fee and final state. It exits 0 only if every
//! splice reached `Locked`.

use std::time::{Duration, Instant};

use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Address, Amount, CompressedPublicKey, FeeRate, Network};
use ldk_splice::devchain::{DevChain, DevChainConfig};
use ldk_splice::node::{Node, NodeBuilder};
use ldk_splice::{
    BatchPlan, BatchState, ChannelRef, Destination, FeePolicy, Leg, SpliceId, SpliceState,
};

const WAIT: Duration = Duration::from_secs(60);
const CAPACITY: Amount = Amount::from_sat(1_000_000);

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let started = Instant::now();
    match run().await {
        Ok(()) => println!(
            "\nall splices locked in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("splice-demo failed: {e}");
            std::process::exit(1);
        }
    }
}

struct Demo {
    chain: DevChain,
    alice: Node,
    bob: Node,
    carol: Node,
    _dirs: Vec<tempfile::TempDir>,
}

impl Demo {
    fn nodes(&self) -> [&Node; 3] {
        [&self.alice, &self.bob, &self.carol]
    }

    /// Mines one block and waits until every node has it.
    async fn mine(&self) -> Result<(), Error> {
        self.chain.mine_blocks_to_burn(1);
        let (height, _) = self.chain.tip();
        for node in self.nodes() {
            node.wait_until(WAIT, "sync", |n| {
                n.best_block_height() == height && n.wallet().best_block().height == height
            })
            .await?;
        }
        Ok(())
    }

    /// Mines block by block until `done` holds (at most 20 blocks).
    async fn mine_until(&self, what: &str, done: impl Fn(&Demo) -> bool) -> Result<(), Error> {
        for _ in 0..20 {
            if done(self) {
                return Ok(());
            }
            self.mine().await?;
            // Let splice_locked messages cross before the next block.
            let _ = self
                .alice
                .wait_until(Duration::from_millis(300), what, |_| done(self))
                .await;
        }
        if done(self) {
            Ok(())
        } else {
            Err(format!("{what}: not done after 20 blocks").into())
        }
    }
}

async fn run() -> Result<(), Error> {
    step("Starting a devchain and three nodes");
    let chain = DevChain::start(DevChainConfig::default()).await?;
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir()?;
        let node = NodeBuilder::new(dir.path())
            .bitcoind_rpc(chain.rpc_url(), chain.rpc_user(), chain.rpc_password())
            .chain_poll_interval(Duration::from_millis(50))
            .reconnect_interval(Duration::from_millis(500))
            .start()
            .await?;
        dirs.push(dir);
        nodes.push(node);
    }
    let carol = nodes.pop().ok_or("three nodes")?;
    let bob = nodes.pop().ok_or("three nodes")?;
    let alice = nodes.pop().ok_or("three nodes")?;
    let demo = Demo {
        chain,
        alice,
        bob,
        carol,
        _dirs: dirs,
    };
    println!("  devchain at {}", demo.chain.rpc_url());
    for (name, node) in names(&demo) {
        println!("  {name:<5} {} on {}", node.node_id(), node.listen_addr());
    }

    step("Funding every wallet with a coinbase");
    for node in demo.nodes() {
        demo.chain.mine_blocks(1, &node.new_address()?);
    }
    demo.chain.mine_blocks_to_burn(99);
    demo.mine().await?;

    step("Opening channels Alice -> Bob and Alice -> Carol (1 000 000 sat each)");
    let (a, b, c) = (&demo.alice, &demo.bob, &demo.carol);
    for peer in [b, c] {
        a.connect(peer.node_id(), peer.listen_addr()).await?;
        a.open_channel(peer.node_id(), CAPACITY, Amount::ZERO)?;
        // One funding transaction at a time: each spends the last one's change.
        demo.mine_until("funding", |d| {
            d.alice.list_channels().iter().any(|ch| {
                ch.counterparty.node_id == peer.node_id() && ch.confirmations.unwrap_or(0) > 0
            })
        })
        .await?;
    }
    demo.mine_until("channels usable", |d| {
        d.alice
            .list_channels()
            .iter()
            .filter(|ch| ch.is_usable)
            .count()
            == 2
    })
    .await?;
    let ab = channel_with(a, b)?;
    let ac = channel_with(a, c)?;
    // Give Bob and Carol a balance too.
    for peer in [b, c] {
        let invoice = peer.create_invoice(Some(100_000_000), "demo", Duration::from_secs(600))?;
        let hash = a.pay_invoice(&invoice)?;
        a.wait_for_payment(&hash, WAIT).await?;
    }
    let before = snapshot(&demo, &ab, &ac);
    print_table("Before", &before);

    let fee = FeePolicy::fixed(FeeRate::from_sat_per_vb(2).ok_or("feerate")?);
    let mut done: Vec<(String, SpliceId)> = Vec::new();

    step("1. Splice 200 000 sat from Alice's wallet into the channel with Bob");
    let quote = a.coordinator().quote_splice_in(
        &ab.channel_id,
        &ab.counterparty,
        Amount::from_sat(200_000),
        fee,
    )?;
    println!(
        "  quote: fee {} sat, {} wallet input(s), capacity {} -> {} sat",
        quote.fee.to_sat(),
        quote.inputs.len(),
        quote.capacity_before.to_sat(),
        quote.capacity_after.to_sat()
    );
    let id = a.splice_in(
        &ab.channel_id,
        &ab.counterparty,
        Amount::from_sat(200_000),
        fee,
    )?;
    follow(&demo, id).await?;
    done.push(("splice-in Alice-Bob".into(), id));

    step("2. Splice 100 000 sat out of the channel with Carol to an address");
    let to = outside_address();
    println!("  to {to}");
    let id = a.splice_out(
        &ac.channel_id,
        &ac.counterparty,
        Amount::from_sat(100_000),
        Destination::Address(to.as_unchecked().clone()),
        fee,
    )?;
    follow(&demo, id).await?;
    done.push(("splice-out Alice-Carol".into(), id));

    step("3. A batch moving 150 000 sat from Bob's channel to Carol's");
    let plan = BatchPlan::new(fee).leg(Leg::Move {
        from: ab,
        to: ac,
        amount: Amount::from_sat(150_000),
    });
    let quote = a.quote_batch(&plan)?;
    println!(
        "  quote: {} legs, fee {} sat, {} WU as separate transactions ({} WU as one)",
        quote.legs.len(),
        quote.total_fee.to_sat(),
        quote.total_weight.to_wu(),
        quote.single_tx_weight.to_wu()
    );
    let batch = a.start_batch(plan)?;
    a.wait_for_batch(batch, WAIT, |s| *s != BatchState::Negotiating)
        .await?;
    println!("  {batch}: {}", state_of_batch(a, batch));
    demo.mine_until("batch locked", |d| {
        d.alice
            .batch_status(batch)
            .is_some_and(|r| r.state == BatchState::Locked)
    })
    .await?;
    let record = a.batch_status(batch).ok_or("batch vanished")?;
    println!("  {batch}: {}", record.state);
    for part in &record.parts {
        if let Some(id) = part.splice {
            done.push((format!("move ({:?})", part.role), id));
        }
    }

    let after = snapshot(&demo, &ab, &ac);
    print_table("After", &after);
    println!("\nSplices:");
    println!("  {:<26} {:<66} {:>8}  state", "what", "txid", "fee sat");
    let mut all_locked = true;
    for (what, id) in &done {
        let record = a.splice_status(*id).ok_or("splice vanished")?;
        all_locked &= record.state == SpliceState::Locked;
        println!(
            "  {:<26} {:<66} {:>8}  {}",
            what,
            record.txid.map(|t| t.to_string()).unwrap_or_default(),
            record.fee.to_sat(),
            record.state
        );
    }
    for node in demo.nodes() {
        node.stop().await?;
    }
    demo.chain.shutdown();
    if all_locked {
        Ok(())
    } else {
        Err("not every splice locked".into())
    }
}

/// Runs a splice to lock, mining as needed, and says how it went.
async fn follow(demo: &Demo, id: SpliceId) -> Result<(), Error> {
    let a = &demo.alice;
    let record = a
        .wait_for_splice(id, WAIT, |s| s.is_broadcast() || s.is_final())
        .await?;
    if !record.state.is_broadcast() {
        return Err(format!("{id} ended {}", record.state).into());
    }
    println!(
        "  {id}: broadcast {} (fee {} sat)",
        record.txid.map(|t| t.to_string()).unwrap_or_default(),
        record.fee.to_sat()
    );
    demo.mine_until("splice locked", |d| {
        d.alice
            .splice_status(id)
            .is_some_and(|r| r.state == SpliceState::Locked)
    })
    .await?;
    println!("  {id}: locked");
    Ok(())
}

fn state_of_batch(node: &Node, id: ldk_splice::BatchId) -> String {
    node.batch_status(id)
        .map(|r| r.state.to_string())
        .unwrap_or_default()
}

fn names(demo: &Demo) -> [(&'static str, &Node); 3] {
    [
        ("Alice", &demo.alice),
        ("Bob", &demo.bob),
        ("Carol", &demo.carol),
    ]
}

fn channel_with(a: &Node, peer: &Node) -> Result<ChannelRef, Error> {
    let channel = a
        .list_channels()
        .into_iter()
        .find(|c| c.counterparty.node_id == peer.node_id())
        .ok_or("channel missing")?;
    Ok(ChannelRef {
        channel_id: channel.channel_id,
        counterparty: peer.node_id(),
    })
}

struct Snapshot {
    wallets: Vec<(&'static str, Amount)>,
    channels: Vec<(&'static str, Amount, Amount, Amount)>,
}

fn snapshot(demo: &Demo, ab: &ChannelRef, ac: &ChannelRef) -> Snapshot {
    let a = &demo.alice;
    let capacity = |c: &ChannelRef| {
        Amount::from_sat(
            a.channel(&c.channel_id)
                .map_or(0, |d| d.channel_value_satoshis),
        )
    };
    let ours = |n: &Node, c: &ChannelRef| n.channel_balance(&c.channel_id).unwrap_or(Amount::ZERO);
    Snapshot {
        wallets: names(demo)
            .into_iter()
            .map(|(name, node)| (name, node.onchain_balance().total()))
            .collect(),
        channels: vec![
            ("Alice-Bob", capacity(ab), ours(a, ab), ours(&demo.bob, ab)),
            (
                "Alice-Carol",
                capacity(ac),
                ours(a, ac),
                ours(&demo.carol, ac),
            ),
        ],
    }
}

fn print_table(title: &str, s: &Snapshot) {
    println!("\n{title}:");
    println!(
        "  {:<12} {:>14} {:>14} {:>14}",
        "channel", "capacity sat", "Alice sat", "peer sat"
    );
    for (name, capacity, alice, peer) in &s.channels {
        println!(
            "  {:<12} {:>14} {:>14} {:>14}",
            name,
            capacity.to_sat(),
            alice.to_sat(),
            peer.to_sat()
        );
    }
    println!("  {:<12} {:>14}", "wallet", "on-chain sat");
    for (name, amount) in &s.wallets {
        println!("  {:<12} {:>14}", name, amount.to_sat());
    }
}

fn step(what: &str) {
    println!("\n== {what}");
}

fn outside_address() -> Address {
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[0x44; 32]).expect("valid key");
    Address::p2wpkh(
        &CompressedPublicKey(key.public_key(&secp)),
        Network::Regtest,
    )
}
