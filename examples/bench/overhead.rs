//! `bench -- overhead --rtt-ms R`: what the coordinator costs one splice,
//! against the same splice driven through LDK's own API by hand.
//!
//! One hub and one peer, one channel, the peer reaching the hub through a
//! relay that adds the round-trip time measured. Each round splices the
//! same channel twice, in alternating order: once through the coordinator
//! (`Node::splice_out` / `Node::splice_in`: checks, quote, journal writes,
//! the check before signing), once raw, with the channel left to the
//! application (`SpliceCoordinator::unmanage_channel`): `splice_channel`,
//! the template's `splice_out` / `splice_in_sync` (coins from the same
//! wallet), `funding_contributed`, and a `NodeBuilder::ldk_event_hook`
//! that signs on `FundingTransactionReadyForSigning` and calls
//! `funding_transaction_signed`. Each time runs from the request until the
//! splice transaction is in the devchain's mempool; the splice is then
//! mined to lock before the next one.
//!
//! One JSON line per kind and round-trip time: `kind, rtt_ms, rounds,
//! coordinator_ms, raw_ldk_ms` (medians), `ratio`, and the minimum and
//! maximum of each; then a table on stderr.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Address, Amount, FeeRate, OutPoint, TxOut, Txid};
use ldk_splice::devchain::{DevChain, DevChainConfig};
use ldk_splice::node::{ChannelManager, Node};
use ldk_splice::{BdkWallet, Destination, FeePolicy, SpliceCoinSource, SpliceState};
use lightning::events::Event;
use lightning::ln::types::ChannelId;

use super::relay;

use super::shared::{median, node_builder as builder, synced, Error};

const WAIT: Duration = Duration::from_secs(120);
const FEERATE: FeeRate = FeeRate::from_sat_per_kwu(500);
const MAX_FEERATE: FeeRate = FeeRate::from_sat_per_kwu(5_000);
const SPLICE: Amount = Amount::from_sat(20_000);

/// What the raw path's hook needs: the node's parts (set once it is up)
/// and, per channel, the wallet coins a raw splice-in added.
#[derive(Default)]
struct RawSigner {
    parts: OnceLock<(Arc<ChannelManager>, Arc<BdkWallet>)>,
    inputs: Mutex<HashMap<ChannelId, Vec<OutPoint>>>,
}

impl RawSigner {
    /// Signs what LDK asks of a channel the application drives: exactly
    /// the coins this bench contributed, nothing else.
    fn on_event(&self, event: &Event) {
        let Event::FundingTransactionReadyForSigning {
            channel_id,
            counterparty_node_id,
            unsigned_transaction,
            ..
        } = event
        else {
            return;
        };
        let Some(inputs) = self
            .inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(channel_id)
        else {
            return;
        };
        let Some((manager, wallet)) = self.parts.get() else {
            return;
        };
        let signed = match wallet.sign_inputs(unsigned_transaction.clone(), &inputs) {
            Ok(signed) => signed,
            Err(e) => {
                eprintln!("bench: raw signing failed: {e}");
                return;
            }
        };
        if let Err(e) = manager.funding_transaction_signed(channel_id, counterparty_node_id, signed)
        {
            eprintln!("bench: LDK refused the raw signatures: {e:?}");
        }
    }
}

struct World {
    chain: DevChain,
    latency: relay::Latency,
    _relay: relay::Relay,
    hub: Node,
    peer: Node,
    channel: ChannelId,
    signer: Arc<RawSigner>,
    payout: Address,
    _dirs: Vec<tempfile::TempDir>,
}

/// Runs the measurement at every round-trip time in `rtts`.
pub async fn run(rtts: Vec<u64>, rounds: usize) -> Result<(), Error> {
    let world = World::new().await?;
    let mut lines = Vec::new();
    for rtt in rtts {
        world.latency.set(Duration::from_millis(rtt));
        for kind in ["splice_out", "splice_in"] {
            let (mut coordinator, mut raw) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                // Alternate which path goes first, so neither always runs
                // on a channel that just locked.
                if round % 2 == 0 {
                    raw.push(world.raw(kind).await?);
                    coordinator.push(world.through_coordinator(kind).await?);
                } else {
                    coordinator.push(world.through_coordinator(kind).await?);
                    raw.push(world.raw(kind).await?);
                }
            }
            let (c, r) = (median(&coordinator), median(&raw));
            coordinator.sort_by(f64::total_cmp);
            raw.sort_by(f64::total_cmp);
            let line = serde_json::json!({
                "kind": kind,
                "rtt_ms": rtt,
                "rounds": rounds,
                "coordinator_ms": round1(c),
                "raw_ldk_ms": round1(r),
                "ratio": (c / r * 1000.0).round() / 1000.0,
                "coordinator_min_ms": round1(coordinator[0]),
                "coordinator_max_ms": round1(coordinator[coordinator.len() - 1]),
                "raw_ldk_min_ms": round1(raw[0]),
                "raw_ldk_max_ms": round1(raw[raw.len() - 1]),
            });
            println!("{line}");
            lines.push(line);
        }
    }
    eprintln!(
        "\n{:<11} {:>6} {:>15} {:>11} {:>7}",
        "kind", "rtt_ms", "coordinator_ms", "raw_ldk_ms", "ratio"
    );
    for l in &lines {
        eprintln!(
            "{:<11} {:>6} {:>15} {:>11} {:>7}",
            l["kind"].as_str().unwrap_or(""),
            l["rtt_ms"].to_string(),
            l["coordinator_ms"].to_string(),
            l["raw_ldk_ms"].to_string(),
            l["ratio"].to_string()
        );
    }
    world.hub.stop().await?;
    world.peer.stop().await?;
    world.chain.shutdown();
    Ok(())
}

fn round1(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T, Error> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = check() {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl World {
    async fn new() -> Result<Self, Error> {
        let chain = DevChain::start(DevChainConfig::default()).await?;
        let (hub_dir, peer_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let signer = Arc::new(RawSigner::default());
        let hook = signer.clone();
        let hub = builder(&chain, hub_dir.path())
            .ldk_event_hook(move |event| hook.on_event(event))
            .start()
            .await?;
        let _ = signer
            .parts
            .set((hub.channel_manager().clone(), hub.wallet().clone()));
        let peer = builder(&chain, peer_dir.path()).start().await?;
        // Coins for the channel and for every splice-in (their change comes
        // back and confirms while each splice locks).
        for _ in 0..4 {
            chain.mine_blocks(1, &hub.new_address()?);
        }
        chain.mine_blocks_to_burn(100);
        synced(&chain, &[&hub, &peer], WAIT).await?;

        let latency = relay::Latency::default();
        let relay = relay::Relay::start(peer.listen_addr(), latency.clone()).await?;
        hub.connect(peer.node_id(), relay.addr).await?;
        hub.open_channel(
            peer.node_id(),
            Amount::from_sat(2_000_000),
            Amount::from_sat(500_000),
        )?;
        wait_for("the funding transaction", || {
            (!chain.mempool_txids().is_empty()).then_some(())
        })
        .await?;
        chain.mine_blocks_to_burn(6);
        synced(&chain, &[&hub, &peer], WAIT).await?;
        hub.wait_until(WAIT, "channel usable", |n| {
            n.list_channels().iter().any(|c| c.is_usable)
        })
        .await?;
        let channel = hub.list_channels()[0].channel_id;
        let payout = peer.new_address()?;
        Ok(World {
            chain,
            latency,
            _relay: relay,
            hub,
            peer,
            channel,
            signer,
            payout,
            _dirs: vec![hub_dir, peer_dir],
        })
    }

    fn counterparty(&self) -> PublicKey {
        self.peer.node_id()
    }

    /// The splice through the node's coordinator; ms until it is in the
    /// mempool.
    async fn through_coordinator(&self, kind: &str) -> Result<f64, Error> {
        let fee = FeePolicy::fixed(FEERATE);
        let started = Instant::now();
        let id = match kind {
            "splice_in" => self
                .hub
                .splice_in(&self.channel, &self.counterparty(), SPLICE, fee)?,
            _ => self.hub.splice_out(
                &self.channel,
                &self.counterparty(),
                SPLICE,
                Destination::Address(self.payout.as_unchecked().clone()),
                fee,
            )?,
        };
        let txid = self.in_mempool().await?;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        self.lock(txid).await?;
        // The coordinator records the lock on its next event or tick.
        self.hub
            .wait_for_splice(id, WAIT, |s| *s == SpliceState::Locked)
            .await?;
        Ok(elapsed)
    }

    /// The same splice through LDK's API by hand; ms until it is in the
    /// mempool.
    async fn raw(&self, kind: &str) -> Result<f64, Error> {
        let coordinator = self.hub.coordinator();
        coordinator.unmanage_channel(&self.channel)?;
        let manager = self.hub.channel_manager();
        let started = Instant::now();
        let template = manager
            .splice_channel(&self.channel, &self.counterparty())
            .map_err(|e| format!("splice_channel: {e:?}"))?;
        let contribution = match kind {
            "splice_in" => {
                let coins = SpliceCoinSource::new(&**self.hub.wallet(), true);
                template
                    .splice_in_sync(SPLICE, FEERATE, MAX_FEERATE, coins)
                    .map_err(|e| format!("splice_in: {e:?}"))?
            }
            _ => template
                .splice_out(
                    vec![TxOut {
                        value: SPLICE,
                        script_pubkey: self.payout.script_pubkey(),
                    }],
                    FEERATE,
                    MAX_FEERATE,
                )
                .map_err(|e| format!("splice_out: {e:?}"))?,
        };
        let inputs: Vec<OutPoint> = contribution
            .inputs()
            .iter()
            .map(|utxo| utxo.outpoint())
            .collect();
        self.signer
            .inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.channel, inputs);
        manager
            .funding_contributed(&self.channel, &self.counterparty(), contribution, None)
            .map_err(|e| format!("funding_contributed: {e:?}"))?;
        // What the node's own calls do: send the queued messages now.
        self.hub.peer_manager().process_events();
        let txid = self.in_mempool().await?;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        self.lock(txid).await?;
        coordinator.manage_channel(&self.channel)?;
        Ok(elapsed)
    }

    async fn in_mempool(&self) -> Result<Txid, Error> {
        wait_for("the splice in the mempool", || {
            self.chain.mempool_txids().first().copied()
        })
        .await
    }

    /// Mines until both sides run the channel on `txid`.
    async fn lock(&self, txid: Txid) -> Result<(), Error> {
        let on_it = |node: &Node| {
            node.channel(&self.channel)
                .is_some_and(|c| c.is_usable && c.funding_txo.is_some_and(|f| f.txid == txid))
        };
        for _ in 0..20 {
            if on_it(&self.hub) && on_it(&self.peer) {
                return Ok(());
            }
            self.chain.mine_blocks_to_burn(1);
            synced(&self.chain, &[&self.hub, &self.peer], WAIT).await?;
            // splice_locked has to cross the relay both ways.
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline && !(on_it(&self.hub) && on_it(&self.peer)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Err(format!("{txid} did not lock").into())
    }
}
