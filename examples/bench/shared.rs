//! What every benchmark needs: a node on the devchain, waiting for nodes
//! to reach the chain's tip, and the median of a run of timings.

use std::time::Duration;

use ldk_splice::devchain::DevChain;
use ldk_splice::node::{Node, NodeBuilder};

/// The benchmarks' error type.
pub type Error = Box<dyn std::error::Error>;

/// A node on `chain` in `dir`, polling the chain every 20 ms.
pub fn node_builder(chain: &DevChain, dir: &std::path::Path) -> NodeBuilder {
    NodeBuilder::new(dir)
        .bitcoind_rpc(chain.rpc_url(), chain.rpc_user(), chain.rpc_password())
        .chain_poll_interval(Duration::from_millis(20))
        .reconnect_interval(Duration::from_millis(200))
}

/// Waits up to `wait` for each of `nodes` (its channels and its wallet) to
/// reach the chain's tip.
pub async fn synced(chain: &DevChain, nodes: &[&Node], wait: Duration) -> Result<(), Error> {
    let (height, _) = chain.tip();
    for node in nodes {
        node.wait_until(wait, "sync", |n| {
            n.best_block_height() == height && n.wallet().best_block().height == height
        })
        .await?;
    }
    Ok(())
}

/// The median of `values` (0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
