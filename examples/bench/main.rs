//! Benchmarks: batch splicing against one splice at a time; the durable
//! writes a splice costs (see `writes.rs`); a node with many finished
//! splices against a fresh one (see `long_lived.rs`); and what the
//! coordinator adds to one splice over LDK's raw API (see `overhead.rs`).
//!
//! ```text
//! cargo run --release --example bench -- batch [--sizes 1,8,32,128] [--rtt-ms 0,20,50,100] [--kinds splice_in]
//! cargo run --release --example bench -- writes [--block-interval-ms 6000]
//! cargo run --release --example bench -- long-lived [--records 10000]
//! cargo run --release --example bench -- overhead [--rtt-ms 0,50] [--rounds 5]
//! ```
//!
//! A hub with N peers over TCP loopback on an in-process devchain, one
//! channel each, every peer reaching the hub through a relay that delays
//! each direction by half the round-trip time measured (`--rtt-ms`). For N
//! splice-outs and for N splice-ins, at each round-trip time, it measures:
//!
//! - `single_ms`: one splice alone through the node, request to broadcast
//!   (the floor: a batch of any size needs about one splice's round trips);
//! - `batch_ms`: from `Node::start_batch` until every leg is broadcast,
//!   and `phases_ms`: when the first and the last leg was ready to sign
//!   and when the batch was signed;
//! - `sequential_ms`: the same N splices one after another, each started
//!   when the previous one is broadcast, the way an LDK application drives
//!   them: `splice_channel` + `funding_contributed` (here through the
//!   coordinator's single-splice call, which also signs), with peer messages
//!   sent when LDK's background processor next runs;
//! - `sequential_flushed_ms`: the same through `Node::splice_*`, which sends
//!   queued peer messages at once (this crate's node).
//!
//! Prints one JSON line per case: `kind, n, rtt_ms, single_ms,
//! batch_over_single, batch_ms, sequential_ms, sequential_flushed_ms,
//! speedup (sequential_ms / batch_ms), speedup_flushed, peak_rss_bytes,
//! total_weight, single_tx_weight`, and `manager_encode_ms`: how long one
//! encoding of the hub's ChannelManager takes while the N splices are
//! pending; then a table on stderr. LDK does that
//! encoding under its global lock every time it persists the manager, so it
//! bounds how fast any number of splices can progress.

mod long_lived;
mod overhead;
mod relay;
mod shared;
mod writes;

use std::time::{Duration, Instant};

use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    Address, Amount, CompressedPublicKey, FeeRate, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Witness,
};
use clap::{Parser, Subcommand};
use ldk_splice::devchain::{DevChain, DevChainConfig};
use ldk_splice::node::{Node, NodeBuilder};
use ldk_splice::{
    BatchPlan, BatchState, ChannelRef, Destination, FeePolicy, Leg, SpliceId, SpliceState,
};

#[derive(Parser)]
#[command(about = "ldk-splice benchmarks")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Batch splices against sequential ones, over N channels.
    Batch {
        /// Channel counts to measure.
        #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 8, 32, 128])]
        sizes: Vec<usize>,
        /// Round-trip times between the hub and every peer, in ms (each
        /// connection goes through a relay that delays both directions).
        #[arg(long, value_delimiter = ',', default_values_t = vec![0u64])]
        rtt_ms: Vec<u64>,
        /// Which kinds of splice to measure.
        #[arg(long, value_delimiter = ',', default_values_t = vec!["splice_out".to_string(), "splice_in".to_string()])]
        kinds: Vec<String>,
    },
    /// Durable writes per splice, by kind.
    Writes {
        /// Time between blocks once a splice is broadcast, in ms. Above
        /// the acknowledgement delay (5 s), every event acknowledged
        /// between two changes costs a write of its own, as with real
        /// block times.
        #[arg(long, default_value_t = 100)]
        block_interval_ms: u64,
    },
    /// One splice through the coordinator against the same splice through
    /// LDK's API by hand.
    Overhead {
        /// Round-trip times between the hub and its peer, in ms.
        #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 50])]
        rtt_ms: Vec<u64>,
        /// Splices of each kind and path per round-trip time.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Start, memory and request times of a node with many finished
    /// splices in its journal, against the same node without them.
    LongLived {
        /// Finished splices to add to the journal.
        #[arg(long, default_value_t = 10000)]
        records: usize,
    },
}

const CAPACITY: Amount = Amount::from_sat(1_000_000);
const PUSH: Amount = Amount::from_sat(500_000);
const SPLICE: Amount = Amount::from_sat(20_000);
const COIN: Amount = Amount::from_sat(100_000);
const FEERATE: FeeRate = FeeRate::from_sat_per_kwu(500);
const WAIT: Duration = Duration::from_secs(600);
/// Coins per funding transaction of the hub's wallet.
const FAN_OUT: usize = 10;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let (sizes, rtts, kinds) = match args.bench {
        Bench::Batch {
            sizes,
            rtt_ms,
            kinds,
        } => (sizes, rtt_ms, kinds),
        Bench::Writes { block_interval_ms } => {
            return writes::run(Duration::from_millis(block_interval_ms)).await
        }
        Bench::LongLived { records } => return long_lived::run(records).await,
        Bench::Overhead { rtt_ms, rounds } => return overhead::run(rtt_ms, rounds.max(1)).await,
    };
    let max = sizes.iter().copied().max().unwrap_or(1);
    // Each size runs a batch, two sequential rounds and one single splice-in
    // per round-trip time: one coin per splice.
    let coins_needed = (sizes.iter().sum::<usize>() * 3 + sizes.len()) * rtts.len();
    let bench = Setup::new(max, coins_needed).await?;
    let mut table = Vec::new();
    for rtt in rtts {
        bench.latency.set(Duration::from_millis(rtt));
        for &n in &sizes {
            for kind in &kinds {
                let line = bench.measure(kind, n, rtt).await?;
                println!("{line}");
                table.push(line);
            }
        }
    }
    print_table(&table);
    bench.stop().await;
    Ok(())
}

struct Setup {
    chain: DevChain,
    /// The round-trip time every hub-peer connection has.
    latency: relay::Latency,
    _relays: Vec<relay::Relay>,
    hub: Node,
    peers: Vec<Node>,
    channels: Vec<ChannelRef>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Setup {
    async fn new(peers: usize, coins: usize) -> Result<Self, Box<dyn std::error::Error>> {
        let chain = DevChain::start(DevChainConfig::default()).await?;
        let mut dirs = Vec::new();
        let start = |dirs: &mut Vec<tempfile::TempDir>, poll_ms: u64| {
            let dir = tempfile::tempdir().expect("temp dir");
            let builder = NodeBuilder::new(dir.path())
                .bitcoind_rpc(chain.rpc_url(), chain.rpc_user(), chain.rpc_password())
                .chain_poll_interval(Duration::from_millis(poll_ms))
                .reconnect_interval(Duration::from_secs(1));
            dirs.push(dir);
            builder
        };
        let hub = start(&mut dirs, 50).start().await?;
        let mut peer_nodes = Vec::with_capacity(peers);
        for _ in 0..peers {
            peer_nodes.push(start(&mut dirs, 250).start().await?);
        }
        eprintln!("bench: {} nodes up", peers + 1);

        // Peers get a coinbase each; the hub gets one coin per splice-in.
        for peer in &peer_nodes {
            chain.mine_blocks(1, &peer.new_address()?);
        }
        let mut faucet = Faucet::new(&chain);
        chain.mine_blocks_to_burn(100);
        let hub_outputs: Vec<Address> = (0..coins)
            .map(|_| hub.new_address())
            .collect::<Result<_, _>>()?;
        // Wallet-sized transactions: every splice-in input carries its whole
        // previous transaction (tx_add_input), so one giant fan-out would
        // make every leg ship and store the same huge transaction.
        for chunk in hub_outputs.chunks(FAN_OUT) {
            faucet.fan_out(&chain, chunk, COIN);
            chain.mine_blocks_to_burn(1);
        }
        let everyone: Vec<&Node> = std::iter::once(&hub).chain(peer_nodes.iter()).collect();
        shared::synced(&chain, &everyone, WAIT).await?;

        // Every peer opens a channel to the hub, pushing half to it. LDK
        // accepts inbound channels from at most 50 peers whose channels have
        // no confirmation yet, so open in groups, each confirmed before the
        // next.
        // Every peer reaches the hub through a relay of its own, which adds
        // the round-trip time being measured (none while setting up).
        let latency = relay::Latency::default();
        let mut relays = Vec::with_capacity(peer_nodes.len());
        for _ in &peer_nodes {
            relays.push(relay::Relay::start(hub.listen_addr(), latency.clone()).await?);
        }
        for (group, group_relays) in peer_nodes.chunks(40).zip(relays.chunks(40)) {
            let before = chain.mempool_txids().len();
            for (peer, relay) in group.iter().zip(group_relays) {
                peer.connect(hub.node_id(), relay.addr).await?;
                peer.open_channel(hub.node_id(), CAPACITY, PUSH)?;
            }
            let deadline = Instant::now() + WAIT;
            while chain.mempool_txids().len() < before + group.len() {
                if Instant::now() > deadline {
                    return Err("funding transactions did not arrive".into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            chain.mine_blocks_to_burn(1);
            shared::synced(&chain, &[&hub], WAIT).await?;
        }
        chain.mine_blocks_to_burn(6);
        shared::synced(&chain, &everyone, WAIT).await?;
        hub.wait_until(WAIT, "channels usable", |n| {
            n.list_channels().iter().filter(|c| c.is_usable).count() == peers
        })
        .await?;
        let channels = peer_nodes
            .iter()
            .map(|peer| {
                let channel = hub
                    .list_channels()
                    .into_iter()
                    .find(|c| c.counterparty.node_id == peer.node_id())
                    .expect("channel with every peer");
                ChannelRef {
                    channel_id: channel.channel_id,
                    counterparty: peer.node_id(),
                }
            })
            .collect();
        eprintln!("bench: {peers} channels open, hub has {coins} coins");

        Ok(Setup {
            chain,
            latency,
            _relays: relays,
            hub,
            peers: peer_nodes,
            channels,
            _dirs: dirs,
        })
    }

    fn leg(&self, kind: &str, channel: ChannelRef) -> Leg {
        match kind {
            "splice_in" => Leg::SpliceIn {
                channel,
                amount: SPLICE,
            },
            _ => Leg::SpliceOut {
                channel,
                amount: SPLICE,
                to: Destination::Wallet,
            },
        }
    }

    async fn measure(
        &self,
        kind: &str,
        n: usize,
        rtt_ms: u64,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let channels = &self.channels[..n];
        let fee = FeePolicy::fixed(FEERATE);
        // One splice alone, through the node: the floor a batch of any size
        // is compared with.
        let single_ms = self.sequential(kind, &channels[..1], fee, true).await?;
        let plan = channels
            .iter()
            .fold(BatchPlan::new(fee).with_deadline(WAIT), |plan, c| {
                plan.leg(self.leg(kind, *c))
            });
        let quote = self.hub.quote_batch(&plan)?;

        // The batch.
        let started = Instant::now();
        let id = self.hub.start_batch(plan)?;
        let started_all = started.elapsed().as_secs_f64() * 1000.0;
        let phases = self.follow_phases(id, started).await?;
        let record = self.hub.batch_status(id).ok_or("batch vanished")?;
        if record.state != BatchState::Signed {
            return Err(format!("batch ended {}", record.state).into());
        }
        let splices: Vec<SpliceId> = record.parts.iter().filter_map(|p| p.splice).collect();
        self.wait_broadcast(&splices).await?;
        let batch_ms = started.elapsed().as_secs_f64() * 1000.0;
        // LDK re-encodes the whole ChannelManager, under its global lock,
        // each time it persists it; with N splices pending this dominates.
        let encode_started = Instant::now();
        let _ = lightning::util::ser::Writeable::encode(&**self.hub.channel_manager());
        let manager_encode_ms = encode_started.elapsed().as_secs_f64() * 1000.0;
        let total_weight: u64 = splices
            .iter()
            .map(|id| {
                let txid = self.hub.splice_status(*id).and_then(|r| r.txid);
                txid.and_then(|t| self.chain.transaction(&t))
                    .map_or(0, |tx| tx.weight().to_wu())
            })
            .sum();
        self.lock(&splices).await?;

        // The same splices, one after another: as an LDK application would,
        // then through the node, which flushes peer messages at once.
        let sequential_ms = self.sequential(kind, channels, fee, false).await?;
        let sequential_flushed_ms = self.sequential(kind, channels, fee, true).await?;

        Ok(serde_json::json!({
            "kind": kind,
            "n": n,
            "rtt_ms": rtt_ms,
            "single_ms": (single_ms * 10.0).round() / 10.0,
            "batch_over_single": ((batch_ms / single_ms) * 100.0).round() / 100.0,
            "batch_ms": (batch_ms * 10.0).round() / 10.0,
            "batch_start_ms": (started_all * 10.0).round() / 10.0,
            "sequential_ms": (sequential_ms * 10.0).round() / 10.0,
            "sequential_flushed_ms": (sequential_flushed_ms * 10.0).round() / 10.0,
            "speedup": ((sequential_ms / batch_ms) * 100.0).round() / 100.0,
            "speedup_flushed": ((sequential_flushed_ms / batch_ms) * 100.0).round() / 100.0,
            "manager_encode_ms": (manager_encode_ms * 10.0).round() / 10.0,
            "phases_ms": phases,
            "peak_rss_bytes": peak_rss_bytes(),
            "total_weight": total_weight,
            "single_tx_weight": quote.single_tx_weight.to_wu(),
        })
        .to_string())
    }

    /// Waits until batch `id` is no longer negotiating, noting when its
    /// legs passed each step (ms since `started`): the first and the last
    /// leg whose transaction was built and held for signing, and the batch
    /// signed.
    async fn follow_phases(
        &self,
        id: ldk_splice::BatchId,
        started: Instant,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let ms = || (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
        let (mut first_ready, mut all_ready) = (None, None);
        let deadline = Instant::now() + WAIT;
        loop {
            let record = self.hub.batch_status(id).ok_or("batch vanished")?;
            let ready = record
                .parts
                .iter()
                .filter_map(|p| p.splice)
                .filter(|leg| {
                    self.hub.splice_status(*leg).is_some_and(|r| {
                        r.state == SpliceState::AwaitingSignatures || r.state.is_signed()
                    })
                })
                .count();
            if ready > 0 && first_ready.is_none() {
                first_ready = Some(ms());
            }
            if ready == record.parts.len() && all_ready.is_none() {
                all_ready = Some(ms());
            }
            if record.state != BatchState::Negotiating {
                return Ok(serde_json::json!({
                    "first_leg_ready_to_sign": first_ready,
                    "all_legs_ready_to_sign": all_ready,
                    "signed": ms(),
                }));
            }
            if Instant::now() > deadline {
                return Err("the batch did not reach signing".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs `kind` on every channel, one at a time, and returns the time
    /// until the last was broadcast; then locks them all.
    async fn sequential(
        &self,
        kind: &str,
        channels: &[ChannelRef],
        fee: FeePolicy,
        flush: bool,
    ) -> Result<f64, Box<dyn std::error::Error>> {
        let coordinator = self.hub.coordinator();
        let started = Instant::now();
        let mut splices = Vec::with_capacity(channels.len());
        for channel in channels {
            let (id, to) = (&channel.channel_id, &channel.counterparty);
            let id = match (kind, flush) {
                ("splice_in", true) => self.hub.splice_in(id, to, SPLICE, fee)?,
                ("splice_in", false) => coordinator.splice_in(id, to, SPLICE, fee)?,
                (_, true) => self
                    .hub
                    .splice_out(id, to, SPLICE, Destination::Wallet, fee)?,
                (_, false) => coordinator.splice_out(id, to, SPLICE, Destination::Wallet, fee)?,
            };
            self.wait_broadcast(&[id]).await?;
            splices.push(id);
        }
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        self.lock(&splices).await?;
        Ok(elapsed)
    }

    async fn wait_broadcast(&self, splices: &[SpliceId]) -> Result<(), Box<dyn std::error::Error>> {
        self.hub
            .wait_until(WAIT, "splices broadcast", |n| {
                splices
                    .iter()
                    .all(|id| n.splice_status(*id).is_some_and(|r| r.state.is_broadcast()))
            })
            .await?;
        // Broadcast means handed to bitcoind: wait until it has them all.
        let txids: Vec<_> = splices
            .iter()
            .filter_map(|id| self.hub.splice_status(*id).and_then(|r| r.txid))
            .collect();
        let deadline = Instant::now() + WAIT;
        while !txids.iter().all(|t| self.chain.confirmations(t).is_some()) {
            if Instant::now() > deadline {
                return Err("splice transactions never reached the devchain".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Mines until every splice is locked, so the channels can splice again.
    async fn lock(&self, splices: &[SpliceId]) -> Result<(), Box<dyn std::error::Error>> {
        let everyone: Vec<&Node> = std::iter::once(&self.hub)
            .chain(self.peers.iter())
            .collect();
        for _ in 0..20 {
            let locked = splices.iter().all(|id| {
                self.hub
                    .splice_status(*id)
                    .is_some_and(|r| r.state == SpliceState::Locked)
            });
            if locked {
                return Ok(());
            }
            self.chain.mine_blocks_to_burn(1);
            shared::synced(&self.chain, &everyone, WAIT).await?;
            // Give splice_locked messages a moment to cross before mining more.
            let _ = self
                .hub
                .wait_until(Duration::from_millis(500), "locks", |n| {
                    splices.iter().all(|id| {
                        n.splice_status(*id)
                            .is_some_and(|r| r.state == SpliceState::Locked)
                    })
                })
                .await;
        }
        Err("splices did not lock".into())
    }

    async fn stop(self) {
        for node in self.peers.iter().chain(std::iter::once(&self.hub)) {
            let _ = node.stop().await;
        }
        self.chain.shutdown();
    }
}

/// A short table of the JSON lines on stderr.
fn print_table(lines: &[String]) {
    eprintln!(
        "{:<11} {:>4} {:>7} {:>11} {:>14} {:>8} {:>10} {:>13}",
        "kind", "n", "rtt ms", "batch ms", "sequential ms", "speedup", "single ms", "batch/single"
    );
    for line in lines {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let field = |name: &str| v[name].to_string();
        eprintln!(
            "{:<11} {:>4} {:>7} {:>11} {:>14} {:>8} {:>10} {:>13}",
            v["kind"].as_str().unwrap_or(""),
            field("n"),
            field("rtt_ms"),
            field("batch_ms"),
            field("sequential_ms"),
            field("speedup"),
            field("single_ms"),
            field("batch_over_single")
        );
    }
}

/// The process's peak resident set size, from /proc (0 where unavailable).
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A coinbase the benchmark holds, to give the hub many coins in one go.
struct Faucet {
    key: SecretKey,
    public: CompressedPublicKey,
    coin: (OutPoint, TxOut),
}

impl Faucet {
    fn new(chain: &DevChain) -> Self {
        let secp = Secp256k1::new();
        let key = SecretKey::from_slice(&[0x7b; 32]).expect("valid key");
        let public = CompressedPublicKey(key.public_key(&secp));
        let address = Address::p2wpkh(&public, Network::Regtest);
        let hash = chain.mine_blocks(1, &address)[0];
        let coinbase = chain.block(&hash).expect("block").txdata[0].clone();
        let vout = coinbase
            .output
            .iter()
            .position(|o| o.script_pubkey == address.script_pubkey())
            .expect("coinbase pays the faucet");
        Faucet {
            key,
            public,
            coin: (
                OutPoint {
                    txid: coinbase.compute_txid(),
                    vout: vout as u32,
                },
                coinbase.output[vout].clone(),
            ),
        }
    }

    /// Pays `each` to every address in one transaction; its change is the
    /// faucet's next coin.
    fn fan_out(&mut self, chain: &DevChain, to: &[Address], each: Amount) {
        let secp = Secp256k1::new();
        let (outpoint, prevout) = &self.coin;
        let own = ScriptBuf::new_p2wpkh(&self.public.wpubkey_hash());
        let mut output: Vec<TxOut> = to
            .iter()
            .map(|a| TxOut {
                value: each,
                script_pubkey: a.script_pubkey(),
            })
            .collect();
        let fee = Amount::from_sat(50 * (to.len() as u64 + 2) + 1_000);
        output.push(TxOut {
            value: prevout.value - each * to.len() as u64 - fee,
            script_pubkey: own.clone(),
        });
        let mut tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: *outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output,
        };
        let sighash = SighashCache::new(&tx)
            .p2wpkh_signature_hash(0, &own, prevout.value, EcdsaSighashType::All)
            .expect("sighash");
        let signature = bitcoin::ecdsa::Signature {
            signature: secp.sign_ecdsa(&sighash.into(), &self.key),
            sighash_type: EcdsaSighashType::All,
        };
        tx.input[0].witness = Witness::p2wpkh(&signature, &self.public.0);
        chain.send_raw_transaction(&tx).expect("fan-out accepted");
        let change = tx.output.len() - 1;
        self.coin = (
            OutPoint {
                txid: tx.compute_txid(),
                vout: change as u32,
            },
            tx.output[change].clone(),
        );
    }
}
