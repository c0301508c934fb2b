//! The block chain: every block ever connected (stale ones too), the active chain, its UTXO set
//! with undo data, a transaction index, and block validation.

use bitcoin::blockdata::constants::genesis_block;
use bitcoin::pow::Work;
use bitcoin::script::{Builder, ScriptBuf};
use bitcoin::{Amount, Block, BlockHash, Network, OutPoint, Transaction, Txid};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::error::RejectReason;
use super::validation::{self, Coin, MAX_BLOCK_WEIGHT};

/// Regtest's subsidy halving interval.
pub(crate) const HALVING_INTERVAL: u32 = 150;

/// The block subsidy at `height`.
pub(crate) fn subsidy(height: u32) -> Amount {
    let halvings = height / HALVING_INTERVAL;
    if halvings >= 64 {
        return Amount::ZERO;
    }
    Amount::from_sat((50 * 100_000_000) >> halvings)
}

/// The script prefix BIP34 requires in the coinbase of a block at `height`, encoded as Bitcoin
/// Core's `CScript() << height` does (`OP_1`..`OP_16` for small heights).
pub(crate) fn bip34_prefix(height: u32) -> ScriptBuf {
    Builder::new().push_int(i64::from(height)).into_script()
}

/// A block the chain knows about.
#[derive(Clone, Debug)]
pub(crate) struct BlockEntry {
    /// The block.
    pub block: Arc<Block>,
    /// Its hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: u32,
    /// Total work of the chain up to and including it.
    pub chainwork: Work,
    /// Median time past of the eleven blocks ending with it.
    pub mtp: u32,
    /// Marked invalid by `invalidateblock`.
    pub invalid: bool,
}

/// Where a confirmed transaction is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TxLocation {
    /// The block holding it.
    pub block: BlockHash,
    /// Its index in that block.
    pub index: usize,
    /// Its fee (none for the coinbase).
    pub fee: Option<Amount>,
}

/// The chain state.
pub(crate) struct Chain {
    index: HashMap<BlockHash, BlockEntry>,
    active: Vec<BlockHash>,
    utxos: HashMap<OutPoint, Coin>,
    /// Coins spent by each active block, parallel to `active`.
    undo: Vec<Vec<(OutPoint, Coin)>>,
    txs: HashMap<Txid, TxLocation>,
}

impl Chain {
    /// A regtest chain holding only the genesis block (whose output is not spendable, as in
    /// bitcoind).
    pub fn new() -> Self {
        let genesis = genesis_block(Network::Regtest);
        let hash = genesis.block_hash();
        let entry = BlockEntry {
            hash,
            height: 0,
            chainwork: genesis.header.work(),
            mtp: genesis.header.time,
            invalid: false,
            block: Arc::new(genesis),
        };
        let mut index = HashMap::new();
        index.insert(hash, entry);
        Chain {
            index,
            active: vec![hash],
            utxos: HashMap::new(),
            undo: vec![Vec::new()],
            txs: HashMap::new(),
        }
    }

    /// Height of the tip.
    pub fn height(&self) -> u32 {
        (self.active.len() - 1) as u32
    }

    /// The tip's entry.
    pub fn tip(&self) -> &BlockEntry {
        &self.index[&self.active[self.active.len() - 1]]
    }

    /// Any known block (active, stale or invalid).
    pub fn entry(&self, hash: &BlockHash) -> Option<&BlockEntry> {
        self.index.get(hash)
    }

    /// Hash of the active block at `height`.
    pub fn hash_at(&self, height: u32) -> Option<BlockHash> {
        self.active.get(height as usize).copied()
    }

    /// The active block at `height`.
    pub fn entry_at(&self, height: u32) -> Option<&BlockEntry> {
        self.hash_at(height).and_then(|hash| self.index.get(&hash))
    }

    /// Whether `hash` is on the active chain.
    pub fn is_active(&self, hash: &BlockHash) -> bool {
        self.index
            .get(hash)
            .is_some_and(|entry| self.active.get(entry.height as usize) == Some(hash))
    }

    /// The active block after `hash`, if `hash` is active and not the tip.
    pub fn next_active(&self, hash: &BlockHash) -> Option<BlockHash> {
        if !self.is_active(hash) {
            return None;
        }
        self.hash_at(self.index.get(hash)?.height + 1)
    }

    /// Confirmations of a block as bitcoind counts them: -1 when not on the active chain.
    pub fn confirmations(&self, hash: &BlockHash) -> i64 {
        match self.index.get(hash) {
            Some(entry) if self.is_active(hash) => {
                i64::from(self.height()) - i64::from(entry.height) + 1
            }
            _ => -1,
        }
    }

    /// Median time past of the active block at `height` (the tip's beyond it).
    pub fn mtp_at(&self, height: u32) -> u32 {
        self.entry_at(height.min(self.height()))
            .map_or(0, |entry| entry.mtp)
    }

    /// The unspent output at `outpoint` in the active chain's UTXO set.
    pub fn coin(&self, outpoint: &OutPoint) -> Option<&Coin> {
        self.utxos.get(outpoint)
    }

    /// Where a transaction is confirmed in the active chain.
    pub fn tx_location(&self, txid: &Txid) -> Option<TxLocation> {
        self.txs.get(txid).copied()
    }

    /// A confirmed transaction.
    pub fn transaction(&self, txid: &Txid) -> Option<(&Transaction, TxLocation)> {
        let location = self.txs.get(txid)?;
        let tx = self
            .index
            .get(&location.block)?
            .block
            .txdata
            .get(location.index)?;
        Some((tx, *location))
    }

    /// Median time past a block built on `parent` would have with timestamp `time`.
    fn mtp_with(&self, parent_height: u32, time: u32) -> u32 {
        let mut times = vec![time];
        let low = parent_height.saturating_sub(9);
        for height in low..=parent_height {
            if let Some(entry) = self.entry_at(height) {
                times.push(entry.block.header.time);
            }
        }
        times.sort_unstable();
        times[times.len() / 2]
    }

    /// Validates `block` as the next block on the tip and connects it. Returns the hash.
    pub fn connect_block(&mut self, block: Block) -> Result<BlockHash, String> {
        let tip = self.tip();
        let hash = block.block_hash();
        if self.index.contains_key(&hash) {
            return Err("duplicate".to_string());
        }
        if block.header.prev_blockhash != tip.hash {
            return Err("prev-blk-not-tip".to_string());
        }
        let height = tip.height + 1;
        let prev_mtp = tip.mtp;
        let chainwork = tip.chainwork + block.header.work();
        if block.header.bits != tip.block.header.bits {
            return Err("bad-diffbits".to_string());
        }
        if block.header.validate_pow(block.header.target()).is_err() {
            return Err("high-hash".to_string());
        }
        if block.header.time <= prev_mtp {
            return Err("time-too-old".to_string());
        }
        if !block.check_merkle_root() {
            return Err("bad-txnmrklroot".to_string());
        }
        if !block.check_witness_commitment() {
            return Err("bad-witness-merkle-match".to_string());
        }
        if block.weight() > MAX_BLOCK_WEIGHT {
            return Err("bad-blk-weight".to_string());
        }
        let coinbase = match block.txdata.first() {
            Some(tx) if tx.is_coinbase() => tx,
            _ => return Err("bad-cb-missing".to_string()),
        };
        if block.txdata.iter().skip(1).any(|tx| tx.is_coinbase()) {
            return Err("bad-cb-multiple".to_string());
        }
        validation::check_transaction(coinbase).map_err(|r| r.reason)?;
        let expected_height = bip34_prefix(height);
        if !coinbase.input[0]
            .script_sig
            .as_bytes()
            .starts_with(expected_height.as_bytes())
        {
            return Err("bad-cb-height".to_string());
        }

        let mut view = BlockView::new(self, height, prev_mtp);
        let mut fees = Vec::with_capacity(block.txdata.len());
        for tx in block.txdata.iter().skip(1) {
            let fee = view.apply(tx).map_err(|r| r.message())?;
            fees.push(fee);
        }
        let total_fees = fees.iter().fold(Amount::ZERO, |a, b| a + *b);
        let coinbase_out = coinbase
            .output
            .iter()
            .fold(Amount::ZERO, |a, o| a + o.value);
        if coinbase_out > subsidy(height) + total_fees {
            return Err("bad-cb-amount".to_string());
        }
        view.add_outputs(coinbase, true);
        let BlockView { created, spent, .. } = view;

        for (outpoint, _) in &spent {
            self.utxos.remove(outpoint);
        }
        self.utxos.extend(created);
        for (index, tx) in block.txdata.iter().enumerate() {
            let fee = if index == 0 {
                None
            } else {
                fees.get(index - 1).copied()
            };
            self.txs.insert(
                tx.compute_txid(),
                TxLocation {
                    block: hash,
                    index,
                    fee,
                },
            );
        }
        let entry = BlockEntry {
            hash,
            height,
            chainwork,
            mtp: self.mtp_with(height - 1, block.header.time),
            invalid: false,
            block: Arc::new(block),
        };
        self.index.insert(hash, entry);
        self.active.push(hash);
        self.undo.push(spent);
        Ok(hash)
    }

    /// Disconnects the tip (never the genesis block), restoring the coins it spent. Returns the
    /// disconnected block.
    pub fn disconnect_tip(&mut self) -> Option<Arc<Block>> {
        if self.active.len() <= 1 {
            return None;
        }
        let hash = self.active.pop()?;
        let spent = self.undo.pop().unwrap_or_default();
        let block = self.index.get(&hash)?.block.clone();
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            for vout in 0..tx.output.len() {
                self.utxos.remove(&OutPoint {
                    txid,
                    vout: vout as u32,
                });
            }
            self.txs.remove(&txid);
        }
        self.utxos.extend(spent);
        Some(block)
    }

    /// Marks a known block invalid.
    pub fn mark_invalid(&mut self, hash: &BlockHash) {
        if let Some(entry) = self.index.get_mut(hash) {
            entry.invalid = true;
        }
    }
}

/// The UTXO set as seen by a block being built or checked on the tip: the chain's coins, less
/// those the block already spent, plus those it created.
pub(crate) struct BlockView<'a> {
    chain: &'a Chain,
    height: u32,
    prev_mtp: u32,
    created: HashMap<OutPoint, Coin>,
    spent: Vec<(OutPoint, Coin)>,
    spent_set: HashSet<OutPoint>,
}

impl<'a> BlockView<'a> {
    /// A view for a block at `height` whose parent has median time past `prev_mtp`.
    pub fn new(chain: &'a Chain, height: u32, prev_mtp: u32) -> Self {
        BlockView {
            chain,
            height,
            prev_mtp,
            created: HashMap::new(),
            spent: Vec::new(),
            spent_set: HashSet::new(),
        }
    }

    fn lookup(&self, outpoint: &OutPoint) -> Option<Coin> {
        if let Some(coin) = self.created.get(outpoint) {
            return Some(coin.clone());
        }
        if self.spent_set.contains(outpoint) {
            return None;
        }
        self.chain.coin(outpoint).cloned()
    }

    fn add_outputs(&mut self, tx: &Transaction, is_coinbase: bool) {
        let txid = tx.compute_txid();
        for (vout, output) in tx.output.iter().enumerate() {
            if output.script_pubkey.is_op_return() {
                continue;
            }
            let coin = Coin {
                output: output.clone(),
                height: self.height,
                is_coinbase,
            };
            self.created.insert(
                OutPoint {
                    txid,
                    vout: vout as u32,
                },
                coin,
            );
        }
    }

    /// Fully validates a non-coinbase transaction against the view and, if valid, applies it.
    /// Returns its fee.
    pub fn apply(&mut self, tx: &Transaction) -> Result<Amount, RejectReason> {
        if tx.is_coinbase() {
            return Err(RejectReason::rejected("bad-cb-multiple"));
        }
        validation::check_transaction(tx)?;
        if !validation::is_final(tx, self.height, self.prev_mtp) {
            return Err(RejectReason::rejected("bad-txns-nonfinal"));
        }
        let mut coins = Vec::with_capacity(tx.input.len());
        for input in &tx.input {
            match self.lookup(&input.previous_output) {
                Some(coin) => coins.push(coin),
                None => return Err(RejectReason::missing_inputs()),
            }
        }
        let chain = self.chain;
        let locks_ok = validation::sequence_locks_ok(tx, &coins, self.height, self.prev_mtp, |h| {
            chain.mtp_at(h.saturating_sub(1))
        });
        if !locks_ok {
            return Err(RejectReason::rejected("bad-txns-nonfinal")
                .details("contains a non-BIP68-final transaction"));
        }
        let fee = validation::check_inputs(tx, &coins, self.height)?;
        validation::verify_scripts(tx, &coins)?;
        for (input, coin) in tx.input.iter().zip(coins) {
            let outpoint = input.previous_output;
            if self.created.remove(&outpoint).is_none() {
                self.spent_set.insert(outpoint);
                self.spent.push((outpoint, coin));
            }
        }
        self.add_outputs(tx, false);
        Ok(fee)
    }
}
