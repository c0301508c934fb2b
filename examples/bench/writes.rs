//! `bench -- writes`: how many durable writes the crate makes per splice.
//!
//! A node whose own state (journal, events, wallet) is written through a
//! counting store makes one splice of each kind, from the request to the
//! lock, acknowledging each event as an application would, with a block
//! mined every `--block-interval-ms` (100) once the transaction is out,
//! and the acknowledgements left at the end written as the node's timer
//! would write them. One JSON line per kind:
//! writes by namespace (`journal`, `journal_groups`, `events` for
//! acknowledgements, `wallet`), `blocks` mined, and `per_splice`: every
//! write but the wallet's one change set per block (which the wallet
//! writes whether or not anything is spliced), divided by the splices
//! (`ours_per_splice`; `ours_per_batch_leg` for the batch). Beside it, from
//! the node's store: `ldk_writes` and `ldk_per_splice` (LDK's own writes in
//! the same time: channel manager, monitors and their updates, sweeper,
//! graph, scorer; they include LDK's writes for the blocks mined), and
//! `fsyncs_per_splice` for all writes (`FilesystemStore` syncs the file and
//! its directory on each).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::{Amount, FeeRate};
use ldk_splice::devchain::{DevChain, DevChainConfig};
use ldk_splice::SharedStore;
use ldk_splice::{BatchPlan, ChannelRef, Destination, FeePolicy, Leg, ResizeRequest, SpliceState};
use lightning::io;
use lightning::util::persist::KVStoreSync;

use super::shared::{node_builder as builder, synced, Error};

const WAIT: Duration = Duration::from_secs(120);
const FEERATE: FeeRate = FeeRate::from_sat_per_kwu(500);

/// Counts writes and removals per secondary namespace.
#[derive(Default)]
struct Counts(Mutex<BTreeMap<String, u64>>);

impl Counts {
    fn add(&self, namespace: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(namespace.to_string())
            .or_default() += 1;
    }

    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct CountingStore {
    inner: SharedStore,
    counts: Arc<Counts>,
}

impl KVStoreSync for CountingStore {
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
        self.counts.add(secondary);
        self.inner.write(primary, secondary, key, buf)
    }

    fn remove(
        &self,
        primary: &str,
        secondary: &str,
        key: &str,
        lazy: bool,
    ) -> Result<(), io::Error> {
        self.counts.add(secondary);
        self.inner.remove(primary, secondary, key, lazy)
    }

    fn list(&self, primary: &str, secondary: &str) -> Result<Vec<String>, io::Error> {
        self.inner.list(primary, secondary)
    }
}

/// Runs the measurement and prints one line per kind of splice.
pub async fn run(block_interval: Duration) -> Result<(), Error> {
    let chain = DevChain::start(DevChainConfig::default()).await?;
    let counts = Arc::new(Counts::default());
    let (hub_dir, peer_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let wrap = counts.clone();
    let hub = builder(&chain, hub_dir.path())
        .wrap_splice_store(move |inner| {
            Arc::new(CountingStore {
                inner,
                counts: wrap.clone(),
            })
        })
        .start()
        .await?;
    let peer = builder(&chain, peer_dir.path()).start().await?;
    chain.mine_blocks(2, &hub.new_address()?);
    chain.mine_blocks_to_burn(100);
    synced(&chain, &[&hub, &peer], WAIT).await?;
    hub.connect(peer.node_id(), peer.listen_addr()).await?;
    for _ in 0..3 {
        hub.open_channel(peer.node_id(), Amount::from_sat(1_000_000), Amount::ZERO)?;
        let deadline = Instant::now() + WAIT;
        while chain.mempool_txids().is_empty() {
            if Instant::now() > deadline {
                return Err("no funding transaction".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        chain.mine_blocks_to_burn(1);
        synced(&chain, &[&hub, &peer], WAIT).await?;
    }
    chain.mine_blocks_to_burn(6);
    synced(&chain, &[&hub, &peer], WAIT).await?;
    hub.wait_until(WAIT, "channels usable", |n| {
        n.list_channels().iter().filter(|c| c.is_usable).count() == 3
    })
    .await?;
    let channels: Vec<ChannelRef> = hub
        .list_channels()
        .iter()
        .map(|c| ChannelRef {
            channel_id: c.channel_id,
            counterparty: peer.node_id(),
        })
        .collect();
    let fee = FeePolicy::fixed(FEERATE);
    let to = || Destination::Wallet;

    for kind in ["splice_in", "splice_out", "splice_in_and_out", "batch_of_3"] {
        while hub.coordinator().next_event().is_some() {
            hub.coordinator().event_handled();
        }
        hub.coordinator().write_acknowledgements()?;
        counts.take();
        let store_before = hub.store().writes();
        let c = channels[0];
        let ids = match kind {
            "splice_in" => vec![hub.splice_in(
                &c.channel_id,
                &c.counterparty,
                Amount::from_sat(50_000),
                fee,
            )?],
            "splice_out" => vec![hub.splice_out(
                &c.channel_id,
                &c.counterparty,
                Amount::from_sat(30_000),
                to(),
                fee,
            )?],
            "splice_in_and_out" => {
                let mut request = ResizeRequest::splice_in(Amount::from_sat(40_000));
                request.outputs = ResizeRequest::splice_out(Amount::from_sat(20_000), to()).outputs;
                vec![hub.resize(&c.channel_id, &c.counterparty, request, fee)?]
            }
            _ => {
                let plan = BatchPlan::new(fee)
                    .leg(Leg::SpliceIn {
                        channel: channels[0],
                        amount: Amount::from_sat(20_000),
                    })
                    .leg(Leg::SpliceOut {
                        channel: channels[1],
                        amount: Amount::from_sat(10_000),
                        to: to(),
                    })
                    .leg(Leg::SpliceOut {
                        channel: channels[2],
                        amount: Amount::from_sat(10_000),
                        to: to(),
                    });
                let batch = hub.start_batch(plan)?;
                hub.batch_status(batch)
                    .ok_or("no batch")?
                    .parts
                    .iter()
                    .filter_map(|p| p.splice)
                    .collect()
            }
        };
        let mut blocks = 0;
        let mut last_block = Instant::now();
        let deadline = Instant::now() + WAIT + block_interval * 12;
        loop {
            while hub.coordinator().next_event().is_some() {
                hub.coordinator().event_handled();
            }
            let states: Vec<SpliceState> = ids
                .iter()
                .filter_map(|id| hub.splice_status(*id).map(|r| r.state))
                .collect();
            if states.iter().all(|s| *s == SpliceState::Locked) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{kind}: did not lock: {states:?}").into());
            }
            if states.iter().all(|s| s.is_broadcast()) && last_block.elapsed() >= block_interval {
                chain.mine_blocks_to_burn(1);
                last_block = Instant::now();
                blocks += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The events the lock itself queued.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while hub.coordinator().next_event().is_some() {
            hub.coordinator().event_handled();
        }
        // What the node's timer would write a few seconds later.
        hub.coordinator().write_acknowledgements()?;
        synced(&chain, &[&hub], WAIT).await?;
        let by_namespace = counts.take();
        let total: u64 = by_namespace.values().sum();
        let wallet = by_namespace.get("wallet").copied().unwrap_or(0);
        let attributable = total - wallet.min(blocks);
        let store = hub.store().writes();
        let ldk = store.ldk - store_before.ldk;
        let fsyncs = store.fsyncs() - store_before.fsyncs();
        let per = |n: u64| ((n as f64 / ids.len() as f64) * 10.0).round() / 10.0;
        let ours_per_splice = per(attributable);
        println!(
            "{}",
            serde_json::json!({
                "kind": kind,
                "splices": ids.len(),
                "writes": by_namespace,
                "blocks": blocks,
                "per_splice": ours_per_splice,
                "ours_per_splice": ours_per_splice,
                "ours_per_batch_leg": (kind == "batch_of_3").then_some(ours_per_splice),
                "ldk_writes": ldk,
                "ldk_per_splice": per(ldk),
                "fsyncs_per_splice": per(fsyncs),
            })
        );
    }
    hub.stop().await?;
    peer.stop().await?;
    chain.shutdown();
    Ok(())
}
