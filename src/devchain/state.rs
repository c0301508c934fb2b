//! The whole node state behind one lock: chain, mempool and fee estimate, with the operations
//! that touch both chain and mempool (mining, submission, reorgs).

use bitcoin::{Amount, BlockHash, FeeRate, OutPoint, ScriptBuf, Transaction, TxOut, Txid};
use std::time::{SystemTime, UNIX_EPOCH};

use super::chain::Chain;
use super::error::{RejectReason, RPC_TRANSACTION_ERROR};
use super::mempool::{AcceptOptions, Accepted, Mempool};
use super::mining::build_block;

/// The current UNIX time in seconds.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A transaction the node knows, and where it is.
pub(crate) struct KnownTx {
    /// The transaction.
    pub tx: Transaction,
    /// The active block confirming it, or `None` while in the mempool.
    pub block: Option<BlockHash>,
    /// Its fee, when known (not for coinbases).
    pub fee: Option<Amount>,
}

/// An unspent output as `gettxout` reports it.
pub(crate) struct UtxoInfo {
    /// The output.
    pub output: TxOut,
    /// Confirmations (0 for a mempool output).
    pub confirmations: u32,
    /// Created by a coinbase.
    pub coinbase: bool,
}

/// Chain, mempool and fee estimate.
pub(crate) struct State {
    /// The block chain.
    pub chain: Chain,
    /// The mempool.
    pub mempool: Mempool,
    /// What `estimatesmartfee` answers.
    pub fee_rate: FeeRate,
    /// When the node started (UNIX seconds).
    pub started: u64,
    extra_nonce: u64,
}

impl State {
    /// A fresh regtest node.
    pub fn new(fee_rate: FeeRate) -> Self {
        State {
            chain: Chain::new(),
            mempool: Mempool::default(),
            fee_rate,
            started: unix_now(),
            extra_nonce: 0,
        }
    }

    fn options(test_only: bool) -> AcceptOptions {
        AcceptOptions {
            test_only,
            bypass_fees: false,
            now: unix_now(),
        }
    }

    /// Mines `n` blocks paying `script`, each with every valid mempool transaction that fits.
    pub fn mine(&mut self, n: usize, script: &ScriptBuf) -> Vec<BlockHash> {
        let mut hashes = Vec::with_capacity(n);
        for _ in 0..n {
            self.extra_nonce += 1;
            let now = u32::try_from(unix_now()).unwrap_or(u32::MAX);
            let block = build_block(&self.chain, &self.mempool, script, self.extra_nonce, now);
            match self.chain.connect_block(block) {
                Ok(hash) => {
                    if let Some(entry) = self.chain.entry(&hash) {
                        let block = entry.block.clone();
                        self.mempool.remove_for_block(&block.txdata);
                        log::info!(
                            "devchain: mined block {} at height {} with {} transactions",
                            hash,
                            entry.height,
                            block.txdata.len()
                        );
                    }
                    hashes.push(hash);
                }
                Err(reason) => {
                    log::error!("devchain: a block it built itself is invalid: {reason}");
                    break;
                }
            }
        }
        hashes
    }

    /// Mines one block paying `script` with exactly `txs` (in or out of
    /// the mempool, fees not checked), as bitcoind's `generateblock`. Mempool
    /// transactions that conflict with them are dropped.
    pub fn mine_with(
        &mut self,
        txs: &[Transaction],
        script: &ScriptBuf,
    ) -> Result<BlockHash, RejectReason> {
        let wanted: Vec<Txid> = txs.iter().map(|tx| tx.compute_txid()).collect();
        let mut scratch = Mempool::default();
        let options = AcceptOptions {
            test_only: false,
            bypass_fees: true,
            now: unix_now(),
        };
        for (tx, txid) in txs.iter().zip(&wanted) {
            if scratch.get(txid).is_none() {
                scratch.accept(&self.chain, tx, options)?;
            }
        }
        self.extra_nonce += 1;
        let now = u32::try_from(unix_now()).unwrap_or(u32::MAX);
        let block = build_block(&self.chain, &scratch, script, self.extra_nonce, now);
        let missing: Vec<&Txid> = wanted
            .iter()
            .filter(|t| !block.txdata.iter().any(|tx| tx.compute_txid() == **t))
            .collect();
        if !missing.is_empty() {
            return Err(RejectReason::rejected(format!(
                "{missing:?} do not fit in one block"
            )));
        }
        let txdata = block.txdata.clone();
        let hash = self
            .chain
            .connect_block(block)
            .map_err(RejectReason::rejected)?;
        self.mempool.remove_for_block(&txdata);
        log::info!(
            "devchain: mined block {hash} with {} chosen transactions",
            txs.len()
        );
        Ok(hash)
    }

    /// `sendrawtransaction`: adds `tx` to the mempool. A transaction already in the mempool is
    /// accepted again without change, as bitcoind does. With `max_fee_rate` (sat/kvB, 0 for no
    /// limit), a transaction paying more is refused.
    pub fn submit(
        &mut self,
        tx: &Transaction,
        max_fee_rate_kvb: u64,
    ) -> Result<Accepted, RejectReason> {
        let txid = tx.compute_txid();
        if let Some(entry) = self.mempool.get(&txid) {
            return Ok(Accepted {
                txid,
                wtxid: entry.wtxid,
                fee: entry.fee,
                vsize: entry.vsize,
                replaced: Vec::new(),
            });
        }
        if max_fee_rate_kvb > 0 {
            let checked = self.mempool.accept(&self.chain, tx, Self::options(true))?;
            if checked.fee.to_sat() > max_fee_rate_kvb.saturating_mul(checked.vsize) / 1000 {
                return Err(RejectReason::with_code(
                    RPC_TRANSACTION_ERROR,
                    "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
                ));
            }
        }
        let accepted = self.mempool.accept(&self.chain, tx, Self::options(false))?;
        log::info!(
            "devchain: accepted {} (fee {} sat, {} vB){}",
            accepted.txid,
            accepted.fee.to_sat(),
            accepted.vsize,
            if accepted.replaced.is_empty() {
                String::new()
            } else {
                format!(", replacing {:?}", accepted.replaced)
            }
        );
        Ok(accepted)
    }

    /// `testmempoolaccept` for one transaction.
    pub fn test_accept(&mut self, tx: &Transaction) -> Result<Accepted, RejectReason> {
        self.mempool.accept(&self.chain, tx, Self::options(true))
    }

    /// `testmempoolaccept` for several: each is checked as if the ones before it that passed
    /// had been accepted (so a child may follow its parent). The mempool is left unchanged.
    pub fn test_accept_many(&self, txs: &[Transaction]) -> Vec<Result<Accepted, RejectReason>> {
        let mut scratch = self.mempool.clone();
        txs.iter()
            .map(|tx| scratch.accept(&self.chain, tx, Self::options(false)))
            .collect()
    }

    /// Disconnects the top `n` blocks (never the genesis block), marking them invalid, and puts
    /// their transactions back in the mempool. Returns the txids that went back.
    pub fn invalidate_tip(&mut self, n: usize) -> Vec<Txid> {
        let mut disconnected = Vec::new();
        for _ in 0..n {
            let Some(block) = self.chain.disconnect_tip() else {
                break;
            };
            self.chain.mark_invalid(&block.block_hash());
            log::info!("devchain: disconnected block {}", block.block_hash());
            disconnected.push(block);
        }
        // Back to the mempool oldest block first, then what was in the mempool already.
        let returning: Vec<Transaction> = disconnected
            .iter()
            .rev()
            .flat_map(|block| block.txdata.iter().skip(1).cloned())
            .collect();
        self.mempool
            .readmit_after_reorg(&self.chain, &returning, unix_now())
    }

    /// `invalidateblock`: disconnects `hash` and every active block above it. Returns the txids
    /// put back in the mempool, or an error message.
    pub fn invalidate_block(&mut self, hash: &BlockHash) -> Result<Vec<Txid>, &'static str> {
        let entry = self.chain.entry(hash).ok_or("Block not found")?;
        if entry.height == 0 {
            return Err("Cannot invalidate the genesis block");
        }
        if !self.chain.is_active(hash) {
            self.chain.mark_invalid(hash);
            return Ok(Vec::new());
        }
        let n = (self.chain.height() - entry.height + 1) as usize;
        Ok(self.invalidate_tip(n))
    }

    /// A transaction in the mempool or the active chain.
    pub fn transaction(&self, txid: &Txid) -> Option<KnownTx> {
        if let Some(entry) = self.mempool.get(txid) {
            return Some(KnownTx {
                tx: (*entry.tx).clone(),
                block: None,
                fee: Some(entry.fee),
            });
        }
        let (tx, location) = self.chain.transaction(txid)?;
        Some(KnownTx {
            tx: tx.clone(),
            block: Some(location.block),
            fee: location.fee,
        })
    }

    /// Confirmations of a transaction: `Some(0)` in the mempool, `None` if unknown.
    pub fn confirmations(&self, txid: &Txid) -> Option<u32> {
        if self.mempool.get(txid).is_some() {
            return Some(0);
        }
        let location = self.chain.tx_location(txid)?;
        let height = self.chain.entry(&location.block)?.height;
        Some(self.chain.height() - height + 1)
    }

    /// `gettxout`: an unspent output, seen with or without the mempool.
    pub fn utxo(&self, outpoint: &OutPoint, include_mempool: bool) -> Option<UtxoInfo> {
        if include_mempool {
            if self.mempool.spender(outpoint).is_some() {
                return None;
            }
            if let Some(output) = self.mempool.output(outpoint) {
                return Some(UtxoInfo {
                    output: output.clone(),
                    confirmations: 0,
                    coinbase: false,
                });
            }
        }
        let coin = self.chain.coin(outpoint)?;
        Some(UtxoInfo {
            output: coin.output.clone(),
            confirmations: self.chain.height() - coin.height + 1,
            coinbase: coin.is_coinbase,
        })
    }
}
