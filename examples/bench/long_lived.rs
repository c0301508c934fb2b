//! `bench -- long-lived [--records 10000]`: a node whose journal holds many
//! finished splices, against the same node without them.
//!
//! A hub opens one channel to a peer on the devchain and makes a splice-in
//! and a splice-out through the public API, each to `Locked`. Then, on the
//! same data directory and channel, in one process:
//!
//! 1. fresh: the hub is restarted a few times (`startup_ms_fresh`, the
//!    median of the runs) and makes a few splice-ins and splice-outs;
//! 2. the hub is stopped and its journal gets `--records` copies of its
//!    finished splice documents under new ids (each a `splice-{id}` entry in
//!    `ldk_splice/journal`, as the journal writes them), so it holds that
//!    many more `Locked` splices on this channel;
//! 3. aged: the same restarts and requests again.
//!
//! For both it measures:
//!
//! - the start: `NodeBuilder::start` returning (median of the restarts);
//! - the memory the started node holds: the growth of the resident set
//!   (`VmRSS`) and of glibc's live heap (`mallinfo2`) across each start,
//!   read after `malloc_trim`, with the previous node stopped and dropped;
//!   `bytes_per_record` and `heap_bytes_per_record` are the aged growth
//!   minus the fresh growth, divided by the records (growth across each
//!   start, not the process's total: a stopped node is not always freed,
//!   see `stopped_node_freed`);
//! - a new splice request: `request_ms`, `Node::splice_in` / `splice_out`
//!   returning (median of both kinds), and `broadcast_ms`, until it is
//!   broadcast and in the devchain's mempool;
//! - the calls that read or follow records: `splice_status`,
//!   `list_splices`, `quote_splice`, a coordinator tick
//!   (`BatchCoordinator::timer_tick`, which the node runs every 500 ms)
//!   and `event_handled` (one event acknowledged).
//!
//! Prints one JSON line (`*_fresh` against `*_aged`, with
//! `journal_bytes_on_disk` and its size per document, `peak_rss_bytes`),
//! then a table on stderr.
//!
//! The records are read from a warm page cache (they were just written).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::{Amount, FeeRate};
use ldk_splice::devchain::{DevChain, DevChainConfig};
use ldk_splice::node::{Node, NodeBuilder, NodeStore};
use ldk_splice::{
    ChannelRef, Destination, FeePolicy, ResizeRequest, SpliceId, SpliceState, PERSISTENCE_NAMESPACE,
};
use lightning::util::persist::KVStoreSync;
use serde_json::{json, Value};

use super::shared::{median, synced, Error};

/// A node on `chain` in `dir` (reconnecting every second).
fn builder(chain: &DevChain, dir: &Path) -> NodeBuilder {
    super::shared::node_builder(chain, dir).reconnect_interval(Duration::from_secs(1))
}

const WAIT: Duration = Duration::from_secs(120);
const FEERATE: FeeRate = FeeRate::from_sat_per_kwu(500);
const SPLICE: Amount = Amount::from_sat(20_000);
/// Restarts per phase.
const STARTS: usize = 3;
/// Splice-ins, and as many splice-outs, per phase.
const REQUESTS: usize = 5;
/// Calls per measurement of a reading call.
const READS: usize = 200;
/// The node's store directory inside its data directory (`Node::start`).
const STORE_DIR: &str = "ldk";
/// Where the journal keeps its documents.
const JOURNAL: &str = "journal";

/// Runs the measurement with `records` finished splices added.
pub async fn run(records: usize) -> Result<(), Error> {
    let chain = DevChain::start(DevChainConfig::default()).await?;
    let (hub_dir, peer_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let peer = builder(&chain, peer_dir.path()).start().await?;
    let mut hub = builder(&chain, hub_dir.path()).start().await?;
    chain.mine_blocks(2, &hub.new_address()?);
    chain.mine_blocks_to_burn(100);
    synced(&chain, &[&hub, &peer], WAIT).await?;
    hub.connect(peer.node_id(), peer.listen_addr()).await?;
    hub.open_channel(peer.node_id(), Amount::from_sat(1_000_000), Amount::ZERO)?;
    wait_for_mempool(&chain, 1).await?;
    chain.mine_blocks_to_burn(7);
    synced(&chain, &[&hub, &peer], WAIT).await?;
    hub.wait_until(WAIT, "channel usable", |n| {
        n.list_channels().iter().any(|c| c.is_usable)
    })
    .await?;
    let channel = ChannelRef {
        channel_id: hub.list_channels()[0].channel_id,
        counterparty: peer.node_id(),
    };
    let bench = Bench {
        chain: &chain,
        peer: &peer,
        dir: hub_dir.path(),
        channel,
    };

    // The finished splices every added record copies.
    let mut acks = Vec::new();
    let splice_in = bench.request(&hub, "splice_in")?;
    bench.lock(&hub, splice_in, &mut acks).await?;
    let splice_out = bench.request(&hub, "splice_out")?;
    bench.lock(&hub, splice_out, &mut acks).await?;
    eprintln!("long-lived: channel open, two splices locked");

    let (fresh, restarted) = bench.phase(hub).await?;
    hub = restarted;
    let weak = Arc::downgrade(hub.coordinator());
    hub.stop().await?;
    drop(hub);
    let stopped_node_freed = weak.strong_count() == 0;

    let replay_started = Instant::now();
    let (templates, on_disk) = add_records(hub_dir.path(), records)?;
    let replay_ms = ms(replay_started);
    eprintln!(
        "long-lived: {records} finished splices added in {replay_ms:.0} ms ({} bytes on disk)",
        on_disk.bytes
    );
    let hub = builder(&chain, hub_dir.path()).start().await?;
    let (aged, hub) = bench.phase(hub).await?;
    let listed = hub.list_splices().len();
    if listed < records + templates {
        return Err(format!(
            "the aged node lists {listed} splices, not {}",
            records + templates
        )
        .into());
    }

    let per_record = |fresh: f64, aged: f64| ((aged - fresh) / records.max(1) as f64).round();
    let ratio = |fresh: f64, aged: f64| (aged / fresh * 100.0).round() / 100.0;
    let line = json!({
        "records": records,
        "startup_ms": round(aged.startup_ms),
        "startup_ms_fresh": round(fresh.startup_ms),
        "bytes_per_record": per_record(fresh.rss_growth, aged.rss_growth),
        "heap_bytes_per_record": per_record(fresh.heap_growth, aged.heap_growth),
        "request_ms_fresh": round(fresh.request_ms),
        "request_ms_aged": round(aged.request_ms),
        "request_aged_over_fresh": ratio(fresh.request_ms, aged.request_ms),
        "splice_in_ms_fresh": round(fresh.splice_in_ms),
        "splice_in_ms_aged": round(aged.splice_in_ms),
        "splice_out_ms_fresh": round(fresh.splice_out_ms),
        "splice_out_ms_aged": round(aged.splice_out_ms),
        "broadcast_ms_fresh": round(fresh.broadcast_ms),
        "broadcast_ms_aged": round(aged.broadcast_ms),
        "status_us_fresh": round(fresh.status_us),
        "status_us_aged": round(aged.status_us),
        "list_splices_ms_fresh": round(fresh.list_ms),
        "list_splices_ms_aged": round(aged.list_ms),
        "quote_ms_fresh": round(fresh.quote_ms),
        "quote_ms_aged": round(aged.quote_ms),
        "tick_ms_fresh": round(fresh.tick_ms),
        "tick_ms_aged": round(aged.tick_ms),
        "ack_ms_fresh": round(fresh.ack_ms),
        "ack_ms_aged": round(aged.ack_ms),
        "startup_runs_ms_fresh": fresh.startup_runs.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        "startup_runs_ms_aged": aged.startup_runs.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        "rss_growth_fresh": fresh.rss_growth,
        "rss_growth_aged": aged.rss_growth,
        "heap_growth_fresh": fresh.heap_growth,
        "heap_growth_aged": aged.heap_growth,
        "journal_bytes_on_disk": on_disk.bytes,
        "journal_bytes_per_record": (on_disk.bytes as f64 / on_disk.files as f64).round(),
        "journal_blocks_bytes_per_record": (on_disk.allocated as f64 / on_disk.files as f64).round(),
        "replay_ms": round(replay_ms),
        "peak_rss_bytes": super::peak_rss_bytes(),
        "stopped_node_freed": stopped_node_freed,
    });
    println!("{line}");
    print_table(&line);
    hub.stop().await?;
    peer.stop().await?;
    chain.shutdown();
    Ok(())
}

/// What one phase (fresh or aged) measured: medians, times in ms unless
/// named otherwise, memory in bytes.
#[derive(Default)]
struct Phase {
    startup_runs: Vec<f64>,
    startup_ms: f64,
    rss_growth: f64,
    heap_growth: f64,
    request_ms: f64,
    splice_in_ms: f64,
    splice_out_ms: f64,
    broadcast_ms: f64,
    status_us: f64,
    list_ms: f64,
    quote_ms: f64,
    tick_ms: f64,
    ack_ms: f64,
}

struct Bench<'a> {
    chain: &'a DevChain,
    peer: &'a Node,
    /// The hub's data directory.
    dir: &'a Path,
    channel: ChannelRef,
}

impl Bench<'_> {
    /// Restarts `hub` `STARTS` times, then measures requests and reads on
    /// the last one, which it returns.
    async fn phase(&self, mut hub: Node) -> Result<(Phase, Node), Error> {
        let mut phase = Phase::default();
        let (mut rss, mut heap) = (Vec::new(), Vec::new());
        for _ in 0..STARTS {
            hub.stop().await?;
            drop(hub);
            let before = memory();
            let started = Instant::now();
            hub = builder(self.chain, self.dir).start().await?;
            phase.startup_runs.push(ms(started));
            let after = memory();
            rss.push(after.rss as f64 - before.rss as f64);
            heap.push(after.heap as f64 - before.heap as f64);
        }
        phase.startup_ms = median(&phase.startup_runs);
        phase.rss_growth = median(&rss);
        phase.heap_growth = median(&heap);
        self.reconnect(&hub).await?;
        hub.wait_until(WAIT, "channel usable after the restart", |n| {
            n.list_channels()
                .iter()
                .any(|c| c.channel_id == self.channel.channel_id && c.is_usable)
        })
        .await?;

        let oldest = hub
            .list_splices()
            .first()
            .map(|r| r.id)
            .ok_or("no splices")?;
        phase.status_us = timed(READS, || {
            hub.splice_status(oldest);
        }) * 1000.0;
        phase.list_ms = timed(READS / 20, || {
            hub.list_splices();
        });
        let quote = || {
            hub.quote_splice(
                &self.channel.channel_id,
                &self.channel.counterparty,
                &ResizeRequest::splice_out(SPLICE, Destination::Wallet),
                FeePolicy::fixed(FEERATE),
            )
        };
        quote()?;
        phase.quote_ms = timed(READS / 10, || {
            let _ = quote();
        });
        phase.tick_ms = timed(READS / 10, || hub.batches().timer_tick());

        let (mut splice_in, mut splice_out, mut broadcast, mut acks) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..REQUESTS {
            for (kind, times) in [
                ("splice_in", &mut splice_in),
                ("splice_out", &mut splice_out),
            ] {
                ack_all(&hub, &mut acks);
                let started = Instant::now();
                let id = self.request(&hub, kind)?;
                times.push(ms(started));
                self.wait_broadcast(&hub, id).await?;
                broadcast.push(ms(started));
                self.lock(&hub, id, &mut acks).await?;
            }
        }
        phase.splice_in_ms = median(&splice_in);
        phase.splice_out_ms = median(&splice_out);
        phase.request_ms = median(&[splice_in, splice_out].concat());
        phase.broadcast_ms = median(&broadcast);
        phase.ack_ms = median(&acks);
        Ok((phase, hub))
    }

    /// Connects the restarted `hub` to the peer. The peer may still hold
    /// the connection of the hub's previous run and refuse the first try.
    async fn reconnect(&self, hub: &Node) -> Result<(), Error> {
        let deadline = Instant::now() + WAIT;
        while !hub.is_connected(&self.peer.node_id()) {
            let tried = hub
                .connect(self.peer.node_id(), self.peer.listen_addr())
                .await;
            if Instant::now() > deadline {
                return Err(tried.err().map_or("peer not connected".into(), Into::into));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn request(&self, hub: &Node, kind: &str) -> Result<SpliceId, Error> {
        let (channel, to) = (&self.channel.channel_id, &self.channel.counterparty);
        let fee = FeePolicy::fixed(FEERATE);
        Ok(match kind {
            "splice_in" => hub.splice_in(channel, to, SPLICE, fee)?,
            _ => hub.splice_out(channel, to, SPLICE, Destination::Wallet, fee)?,
        })
    }

    /// Waits until `id` is broadcast and its transaction is in the
    /// devchain's mempool.
    async fn wait_broadcast(&self, hub: &Node, id: SpliceId) -> Result<(), Error> {
        hub.wait_until(WAIT, "splice broadcast", |n| {
            n.splice_status(id).is_some_and(|r| r.state.is_broadcast())
        })
        .await?;
        let txid = hub
            .splice_status(id)
            .and_then(|r| r.txid)
            .ok_or("broadcast without a txid")?;
        let deadline = Instant::now() + WAIT;
        while self.chain.confirmations(&txid).is_none() {
            if Instant::now() > deadline {
                return Err(format!("{id}: {txid} never reached the devchain").into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Mines until `id` is locked, acknowledging every event on the way
    /// (the time of each acknowledgement goes to `acks`).
    async fn lock(&self, hub: &Node, id: SpliceId, acks: &mut Vec<f64>) -> Result<(), Error> {
        self.wait_broadcast(hub, id).await?;
        let deadline = Instant::now() + WAIT;
        loop {
            ack_all(hub, acks);
            let state = hub.splice_status(id).map(|r| r.state);
            if state == Some(SpliceState::Locked) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{id} did not lock: {state:?}").into());
            }
            self.chain.mine_blocks_to_burn(1);
            synced(self.chain, &[hub, self.peer], WAIT).await?;
            let _ = hub
                .wait_until(Duration::from_millis(200), "lock", |n| {
                    n.splice_status(id).map(|r| r.state) == Some(SpliceState::Locked)
                })
                .await;
        }
        // The events the lock itself wrote.
        tokio::time::sleep(Duration::from_millis(100)).await;
        ack_all(hub, acks);
        Ok(())
    }
}

/// Acknowledges every pending event, timing each acknowledgement.
fn ack_all(hub: &Node, acks: &mut Vec<f64>) {
    while hub.coordinator().next_event().is_some() {
        let started = Instant::now();
        hub.coordinator().event_handled();
        acks.push(ms(started));
    }
}

/// The size of the journal's documents.
struct OnDisk {
    files: u64,
    /// Their contents.
    bytes: u64,
    /// The disk space allocated to them.
    allocated: u64,
}

/// Adds `records` finished splices to the journal of the stopped node in
/// `dir`: copies of its `Locked` splice documents, in turn, each under the
/// next free id with a newer revision and no events. Returns how many
/// documents the journal had, and the size of all of them on disk.
fn add_records(dir: &Path, records: usize) -> Result<(usize, OnDisk), Error> {
    let store = NodeStore::new(dir.join(STORE_DIR));
    let mut docs = Vec::new();
    for key in store.list(PERSISTENCE_NAMESPACE, JOURNAL)? {
        let doc: Value =
            serde_json::from_slice(&store.read(PERSISTENCE_NAMESPACE, JOURNAL, &key)?)?;
        docs.push(doc);
    }
    let number = |doc: &Value, field: &str| doc[field].as_u64().unwrap_or(0);
    let first_id = docs.iter().map(|d| number(d, "id")).max().unwrap_or(0) + 1;
    let first_revision = docs
        .iter()
        .map(|d| number(d, "revision"))
        .max()
        .unwrap_or(0)
        + 1;
    let finished: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "splice" && d["body"]["state"] == "locked")
        .collect();
    if finished.is_empty() {
        return Err("no locked splice in the journal to copy".into());
    }
    // Written as `FilesystemStore` lays keys out (`{primary}/{secondary}/{key}`),
    // without its two fsyncs per key: checked against a key it wrote.
    let journal_dir = dir
        .join(STORE_DIR)
        .join(PERSISTENCE_NAMESPACE)
        .join(JOURNAL);
    let first_key = format!("splice-{:020}", number(finished[0], "id"));
    if !journal_dir.join(&first_key).is_file() {
        return Err(format!("{first_key} is not in {}", journal_dir.display()).into());
    }
    for (n, template) in (0u64..).zip(finished.iter().cycle().take(records)) {
        let id = first_id + n;
        let mut doc = (*template).clone();
        doc["id"] = json!(id);
        doc["revision"] = json!(first_revision + n);
        doc["events"] = json!([]);
        doc["body"]["id"] = json!(id);
        let key = format!("splice-{id:020}");
        std::fs::write(journal_dir.join(&key), serde_json::to_vec(&doc)?)?;
    }
    let last = first_id + records as u64 - 1;
    let read_back: Value = serde_json::from_slice(&store.read(
        PERSISTENCE_NAMESPACE,
        JOURNAL,
        &format!("splice-{last:020}"),
    )?)?;
    if records > 0 && read_back["body"]["id"] != json!(last) {
        return Err("the store does not read back the records written".into());
    }
    let mut on_disk = OnDisk {
        files: 0,
        bytes: 0,
        allocated: 0,
    };
    for entry in std::fs::read_dir(&journal_dir)? {
        let meta = entry?.metadata()?;
        on_disk.files += 1;
        on_disk.bytes += meta.len();
        on_disk.allocated += allocated(&meta);
    }
    Ok((docs.len(), on_disk))
}

#[cfg(unix)]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

#[cfg(not(unix))]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    meta.len()
}

/// The process's resident set and live heap, in bytes.
struct Memory {
    rss: u64,
    heap: u64,
}

/// The resident set (`VmRSS`) and glibc's live heap, after giving free
/// heap pages back to the system (0 where unavailable).
fn memory() -> Memory {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: both only walk glibc's own arenas under its locks.
    let heap = unsafe {
        libc::malloc_trim(0);
        let info = libc::mallinfo2();
        (info.uordblks + info.hblkhd) as u64
    };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let heap = 0;
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    Memory { rss, heap }
}

/// The median time of `n` calls of `f`, in ms.
fn timed(n: usize, mut f: impl FnMut()) -> f64 {
    let times: Vec<f64> = (0..n.max(1))
        .map(|_| {
            let started = Instant::now();
            f();
            ms(started)
        })
        .collect();
    median(&times)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Four significant digits (the reading calls take microseconds).
fn round(value: f64) -> f64 {
    if value == 0.0 || !value.is_finite() {
        return value;
    }
    let scale = 10f64.powi(3 - value.abs().log10().floor() as i32);
    (value * scale).round() / scale
}

async fn wait_for_mempool(chain: &DevChain, n: usize) -> Result<(), Error> {
    let deadline = Instant::now() + WAIT;
    while chain.mempool_txids().len() < n {
        if Instant::now() > deadline {
            return Err("transactions did not reach the mempool".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The JSON line as a table on stderr: fresh against aged.
fn print_table(line: &Value) {
    let field = |name: &str| line[name].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "long-lived: {} finished splices; {} B per record in memory ({} B heap), {} B on disk",
        line["records"],
        line["bytes_per_record"],
        line["heap_bytes_per_record"],
        line["journal_bytes_per_record"]
    );
    eprintln!(
        "{:<16} {:>12} {:>12} {:>10}",
        "", "fresh", "aged", "aged/fresh"
    );
    for (label, base) in [
        ("startup ms", "startup_ms"),
        ("request ms", "request_ms"),
        ("splice_in ms", "splice_in_ms"),
        ("splice_out ms", "splice_out_ms"),
        ("broadcast ms", "broadcast_ms"),
        ("status us", "status_us"),
        ("list_splices ms", "list_splices_ms"),
        ("quote ms", "quote_ms"),
        ("tick ms", "tick_ms"),
        ("ack ms", "ack_ms"),
    ] {
        let (fresh, aged) = match base {
            "startup_ms" => (field("startup_ms_fresh"), field("startup_ms")),
            _ => (
                field(&format!("{base}_fresh")),
                field(&format!("{base}_aged")),
            ),
        };
        eprintln!("{label:<16} {fresh:>12} {aged:>12} {:>10.2}", aged / fresh);
    }
}
