//! Talking to bitcoind (or the devchain) over JSON-RPC: block source, fee
//! estimator and broadcaster.

use std::sync::{Arc, Mutex};

use base64::Engine;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::FeeRate;
use bitcoin::{Network, Transaction, Txid};
use lightning::chain::chaininterface::{
    BroadcasterInterface, ConfirmationTarget, FeeEstimator, TransactionType,
};
use lightning_block_sync::http::JsonResponse;
use lightning_block_sync::rpc::RpcClient;
use serde_json::json;

use super::fee_estimates::{FeeEstimate, FeeEstimates, FeeTarget};
use super::NodeError;

/// One bitcoind JSON-RPC endpoint, used for blocks, fees and broadcasting.
pub struct Bitcoind {
    rpc: Arc<RpcClient>,
    fees: FeeEstimates,
    runtime: tokio::runtime::Handle,
    /// Transactions we handed to bitcoind and whether it took them.
    broadcasts: Arc<Mutex<Vec<BroadcastRecord>>>,
    /// Told of every transaction LDK broadcasts, before it is sent.
    on_broadcast: Mutex<Option<BroadcastHook>>,
}

/// Called with each transaction LDK broadcasts.
pub type BroadcastHook = Box<dyn Fn(&Transaction) + Send + Sync>;

/// What happened to a transaction LDK asked us to broadcast.
#[derive(Debug, Clone)]
pub struct BroadcastRecord {
    /// The transaction id.
    pub txid: Txid,
    /// `None` when bitcoind accepted it, otherwise its error.
    pub error: Option<String>,
}

impl Bitcoind {
    /// Connects to `url` (e.g. `http://127.0.0.1:18443`) with `user:password`
    /// and checks that the node is on `network`.
    pub async fn connect(
        url: &str,
        user: &str,
        password: &str,
        network: Network,
    ) -> Result<Arc<Self>, NodeError> {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let rpc = Arc::new(RpcClient::new(
            &credentials,
            url.trim_end_matches('/').to_string(),
        ));
        let info: JsonResponse = rpc
            .call_method("getblockchaininfo", &[])
            .await
            .map_err(|e| NodeError::Chain(format!("bitcoind at {url} did not answer: {e}")))?;
        let chain = info.0["chain"].as_str().unwrap_or_default().to_string();
        let expected = match network {
            Network::Bitcoin => "main",
            Network::Testnet => "test",
            Network::Testnet4 => "testnet4",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        };
        if chain != expected {
            return Err(NodeError::Chain(format!(
                "bitcoind at {url} is on chain '{chain}', expected '{expected}'"
            )));
        }
        let this = Arc::new(Bitcoind {
            rpc,
            fees: FeeEstimates::new(),
            runtime: tokio::runtime::Handle::current(),
            broadcasts: Arc::new(Mutex::new(Vec::new())),
            on_broadcast: Mutex::new(None),
        });
        this.update_fee_estimates().await;
        this.fees.log_fallbacks();
        Ok(this)
    }

    /// The RPC client, for lightning-block-sync.
    pub fn rpc(&self) -> Arc<RpcClient> {
        Arc::clone(&self.rpc)
    }

    /// Asks bitcoind for a fresh fee estimate for every target. A target
    /// it cannot estimate uses its fallback (see
    /// [`FEE_TARGETS`](super::FEE_TARGETS)), with a
    /// warning in the log when it starts to.
    pub async fn update_fee_estimates(&self) {
        self.fees.refresh(&self.rpc).await;
    }

    /// The feerate for channel funding and splice transactions (confirmation
    /// within 6 blocks; LDK has no target for them).
    pub fn funding_feerate(&self) -> FeeRate {
        FeeRate::from_sat_per_kwu(u64::from(self.fees.sat_per_kwu(FeeTarget::Funding)))
    }

    /// Every target's feerate now, and whether it is a fallback.
    pub fn fee_estimates(&self) -> Vec<FeeEstimate> {
        self.fees.all()
    }

    /// The current tip height and hash.
    pub async fn tip(&self) -> Result<(u32, bitcoin::BlockHash), NodeError> {
        let info: JsonResponse = self
            .rpc
            .call_method("getblockchaininfo", &[])
            .await
            .map_err(|e| NodeError::Chain(e.to_string()))?;
        let height = info.0["blocks"]
            .as_u64()
            .and_then(|h| u32::try_from(h).ok())
            .ok_or_else(|| NodeError::Chain("getblockchaininfo without blocks".into()))?;
        let hash = info.0["bestblockhash"]
            .as_str()
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| NodeError::Chain("getblockchaininfo without bestblockhash".into()))?;
        Ok((height, hash))
    }

    /// The hash of the block at `height` on bitcoind's best chain.
    pub async fn block_hash(&self, height: u32) -> Result<bitcoin::BlockHash, NodeError> {
        let JsonResponse(value) = self
            .rpc
            .call_method("getblockhash", &[json!(height)])
            .await
            .map_err(|e| NodeError::Chain(format!("getblockhash {height}: {e}")))?;
        value
            .as_str()
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| NodeError::Chain(format!("getblockhash {height}: no hash")))
    }

    /// Fetches a whole block.
    pub async fn block(&self, hash: &bitcoin::BlockHash) -> Result<bitcoin::Block, NodeError> {
        let hex: JsonResponse = self
            .rpc
            .call_method("getblock", &[json!(hash.to_string()), json!(0)])
            .await
            .map_err(|e| NodeError::Chain(e.to_string()))?;
        let hex = hex
            .0
            .as_str()
            .ok_or_else(|| NodeError::Chain("getblock returned no hex".into()))?;
        bitcoin::consensus::encode::deserialize_hex(hex)
            .map_err(|e| NodeError::Chain(format!("bad block from bitcoind: {e}")))
    }

    /// The txids in bitcoind's mempool.
    pub async fn mempool_txids(&self) -> Result<std::collections::HashSet<Txid>, NodeError> {
        let JsonResponse(value) = self
            .rpc
            .call_method("getrawmempool", &[json!(false)])
            .await
            .map_err(|e| NodeError::Chain(format!("getrawmempool: {e}")))?;
        value
            .as_array()
            .ok_or_else(|| NodeError::Chain("getrawmempool returned no list".into()))?
            .iter()
            .map(|txid| {
                txid.as_str()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| NodeError::Chain(format!("getrawmempool: bad txid {txid}")))
            })
            .collect()
    }

    /// Sends one transaction now and returns bitcoind's verdict.
    pub async fn send_transaction(&self, tx: &Transaction) -> Result<Txid, String> {
        send_raw(&self.rpc, &self.broadcasts, tx).await
    }

    /// Calls `hook` with every transaction LDK broadcasts from now on.
    pub fn on_broadcast(&self, hook: BroadcastHook) {
        *self.on_broadcast.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Every broadcast attempt so far, oldest first.
    pub fn broadcasts(&self) -> Vec<BroadcastRecord> {
        self.broadcasts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl FeeEstimator for Bitcoind {
    fn get_est_sat_per_1000_weight(&self, target: ConfirmationTarget) -> u32 {
        self.fees.sat_per_kwu(FeeTarget::Ldk(target))
    }
}

impl crate::fees::FundingFeeEstimator for Bitcoind {
    fn funding_feerate(&self) -> FeeRate {
        Bitcoind::funding_feerate(self)
    }
}

impl BroadcasterInterface for Bitcoind {
    fn broadcast_transactions(&self, txs: &[(&Transaction, TransactionType)]) {
        // LDK calls this from synchronous code: send on the runtime without
        // blocking the caller. Several transactions are one package (a child
        // and its parents), given in no particular order.
        let txs = parents_first(txs.iter().map(|(tx, _)| (*tx).clone()).collect());
        if let Some(hook) = self
            .on_broadcast
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            for tx in &txs {
                hook(tx);
            }
        }
        let rpc = Arc::clone(&self.rpc);
        let records = Arc::clone(&self.broadcasts);
        self.runtime.spawn(async move {
            if txs.len() > 1 && submit_package(&rpc, &records, &txs).await {
                return;
            }
            for tx in txs {
                let _ = send_raw(&rpc, &records, &tx).await;
            }
        });
    }
}

/// Orders transactions so that every parent comes before its children.
fn parents_first(mut txs: Vec<Transaction>) -> Vec<Transaction> {
    let mut ordered = Vec::with_capacity(txs.len());
    while !txs.is_empty() {
        let pending: Vec<Txid> = txs.iter().map(|tx| tx.compute_txid()).collect();
        // A transaction is ready when none of the others still pending is its parent.
        let ready = txs
            .iter()
            .position(|tx| {
                !tx.input
                    .iter()
                    .any(|input| pending.contains(&input.previous_output.txid))
            })
            .unwrap_or(0);
        ordered.push(txs.remove(ready));
    }
    ordered
}

/// Sends a package with `submitpackage`; false when bitcoind does not know
/// the call, so the caller falls back to one transaction at a time.
async fn submit_package(
    rpc: &RpcClient,
    records: &Mutex<Vec<BroadcastRecord>>,
    txs: &[Transaction],
) -> bool {
    let hexes: Vec<String> = txs.iter().map(serialize_hex).collect();
    let result: Result<JsonResponse, _> = rpc.call_method("submitpackage", &[json!(hexes)]).await;
    let error = match result {
        Err(lightning_block_sync::rpc::RpcClientError::Rpc(e)) if e.code == -32601 => {
            return false;
        }
        Err(e) => Some(e.to_string()),
        Ok(JsonResponse(value)) => match value["package_msg"].as_str() {
            Some("success") | None => None,
            Some(msg) => Some(msg.to_string()),
        },
    };
    let mut records = records.lock().unwrap_or_else(|e| e.into_inner());
    for tx in txs {
        let txid = tx.compute_txid();
        match &error {
            Some(e) => log::warn!("bitcoind rejected package with {txid}: {e}"),
            None => log::debug!("broadcast {txid} in a package"),
        }
        records.push(BroadcastRecord {
            txid,
            error: error.clone(),
        });
    }
    true
}

async fn send_raw(
    rpc: &RpcClient,
    records: &Mutex<Vec<BroadcastRecord>>,
    tx: &Transaction,
) -> Result<Txid, String> {
    let result: Result<JsonResponse, _> = rpc
        .call_method("sendrawtransaction", &[json!(serialize_hex(tx))])
        .await;
    let txid = tx.compute_txid();
    let error = match result {
        Ok(_) => None,
        // A rebroadcast of a known transaction is not a failure.
        Err(e) if e.to_string().contains("already") => None,
        Err(e) => Some(e.to_string()),
    };
    match &error {
        Some(e) => log::warn!("bitcoind rejected {txid}: {e}"),
        None => log::debug!("broadcast {txid}"),
    }
    records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(BroadcastRecord {
            txid,
            error: error.clone(),
        });
    match error {
        None => Ok(txid),
        Some(e) => Err(e),
    }
}
