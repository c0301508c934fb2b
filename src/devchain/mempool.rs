//! The mempool and bitcoind's acceptance policy, including full replace-by-fee.

use bitcoin::{Amount, OutPoint, Transaction, TxOut, Txid, Weight, Wtxid};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::chain::Chain;
use super::error::{RejectReason, RPC_TRANSACTION_ALREADY_IN_CHAIN};
use super::validation::{self, format_btc, Coin};

/// Minimum relay feerate, in sat/kvB (bitcoind's default 1 sat/vB).
pub(crate) const MIN_RELAY_SAT_PER_KVB: u64 = 1_000;
/// Incremental relay feerate for replacements, in sat/kvB.
pub(crate) const INCREMENTAL_RELAY_SAT_PER_KVB: u64 = 1_000;
/// Largest standard transaction weight.
const MAX_STANDARD_TX_WEIGHT: u64 = 400_000;
/// Smallest standard non-witness size.
const MIN_STANDARD_TX_NONWITNESS_SIZE: usize = 65;
/// Largest standard scriptSig.
const MAX_STANDARD_SCRIPTSIG_SIZE: usize = 1650;
/// Longest chain of unconfirmed ancestors, the transaction included.
const ANCESTOR_LIMIT: usize = 25;
/// Most transactions one replacement may evict.
const MAX_REPLACEMENT_CANDIDATES: usize = 100;

/// A transaction in the mempool.
#[derive(Clone, Debug)]
pub(crate) struct MempoolEntry {
    /// The transaction.
    pub tx: Arc<Transaction>,
    /// Its txid.
    pub txid: Txid,
    /// Its wtxid.
    pub wtxid: Wtxid,
    /// Fee it pays.
    pub fee: Amount,
    /// Virtual size.
    pub vsize: u64,
    /// Weight.
    pub weight: Weight,
    /// UNIX time it entered the mempool.
    pub time: u64,
    /// Chain height when it entered.
    pub height: u32,
    /// Entry order (parents always have a lower one than their children).
    pub sequence: u64,
}

/// The mempool: transactions valid on the current tip, and who spends what.
#[derive(Clone)]
pub(crate) struct Mempool {
    entries: HashMap<Txid, MempoolEntry>,
    spends: HashMap<OutPoint, Txid>,
    next_sequence: u64,
    mempool_sequence: u64,
}

impl Default for Mempool {
    fn default() -> Self {
        Mempool {
            entries: HashMap::new(),
            spends: HashMap::new(),
            next_sequence: 0,
            // bitcoind's count starts at 1 too.
            mempool_sequence: 1,
        }
    }
}

/// What an accepted transaction looks like.
#[derive(Clone, Debug)]
pub(crate) struct Accepted {
    /// The txid.
    pub txid: Txid,
    /// The wtxid.
    pub wtxid: Wtxid,
    /// Fee paid.
    pub fee: Amount,
    /// Virtual size.
    pub vsize: u64,
    /// Transactions it replaced (directly conflicting ones and their descendants).
    pub replaced: Vec<Txid>,
}

/// How to accept a transaction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AcceptOptions {
    /// Only check; leave the mempool unchanged.
    pub test_only: bool,
    /// Skip fee checks (transactions coming back from disconnected blocks).
    pub bypass_fees: bool,
    /// The current UNIX time.
    pub now: u64,
}

/// bitcoind's `CFeeRate(fee, vsize)`: sat/kvB, truncated.
fn fee_rate_kvb(fee: Amount, vsize: u64) -> u64 {
    if vsize == 0 {
        return 0;
    }
    fee.to_sat().saturating_mul(1000) / vsize
}

/// bitcoind's `CFeeRate::ToString()`.
fn format_fee_rate(sat_per_kvb: u64) -> String {
    format!(
        "{}.{:08} BTC/kvB",
        sat_per_kvb / 100_000_000,
        sat_per_kvb % 100_000_000
    )
}

impl Mempool {
    /// The entry for `txid`.
    pub fn get(&self, txid: &Txid) -> Option<&MempoolEntry> {
        self.entries.get(txid)
    }

    /// Number of transactions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// bitcoind's mempool sequence: one more for every transaction that entered or left
    /// (acceptance, replacement, mining, conflicts, reorgs).
    pub fn mempool_sequence(&self) -> u64 {
        self.mempool_sequence
    }

    /// All entries, oldest first (so parents come before children).
    pub fn entries(&self) -> Vec<&MempoolEntry> {
        let mut entries: Vec<_> = self.entries.values().collect();
        entries.sort_by_key(|e| e.sequence);
        entries
    }

    /// The mempool transaction spending `outpoint`.
    pub fn spender(&self, outpoint: &OutPoint) -> Option<Txid> {
        self.spends.get(outpoint).copied()
    }

    /// An output created by a mempool transaction.
    pub fn output(&self, outpoint: &OutPoint) -> Option<&TxOut> {
        self.entries
            .get(&outpoint.txid)?
            .tx
            .output
            .get(outpoint.vout as usize)
    }

    /// Mempool transactions `txid` spends from.
    pub fn parents(&self, txid: &Txid) -> BTreeSet<Txid> {
        let Some(entry) = self.entries.get(txid) else {
            return BTreeSet::new();
        };
        entry
            .tx
            .input
            .iter()
            .map(|i| i.previous_output.txid)
            .filter(|parent| self.entries.contains_key(parent))
            .collect()
    }

    /// Mempool transactions spending from `txid`.
    pub fn children(&self, txid: &Txid) -> BTreeSet<Txid> {
        let Some(entry) = self.entries.get(txid) else {
            return BTreeSet::new();
        };
        (0..entry.tx.output.len() as u32)
            .filter_map(|vout| self.spends.get(&OutPoint { txid: *txid, vout }).copied())
            .collect()
    }

    /// `txid`'s unconfirmed ancestors, itself excluded.
    pub fn ancestors(&self, txid: &Txid) -> HashSet<Txid> {
        self.closure(self.parents(txid), |t| self.parents(t))
    }

    /// `txids` and all their descendants.
    pub fn with_descendants(&self, txids: impl IntoIterator<Item = Txid>) -> HashSet<Txid> {
        let start: BTreeSet<Txid> = txids
            .into_iter()
            .filter(|t| self.entries.contains_key(t))
            .collect();
        let mut all = self.closure(start.clone(), |t| self.children(t));
        all.extend(start);
        all
    }

    fn closure(
        &self,
        start: BTreeSet<Txid>,
        next: impl Fn(&Txid) -> BTreeSet<Txid>,
    ) -> HashSet<Txid> {
        let mut seen = HashSet::new();
        let mut queue: VecDeque<Txid> = start.into_iter().collect();
        while let Some(txid) = queue.pop_front() {
            if seen.insert(txid) {
                queue.extend(next(&txid));
            }
        }
        seen
    }

    /// Removes `txids` and all their descendants; returns the removed entries, oldest first.
    pub fn remove_with_descendants(
        &mut self,
        txids: impl IntoIterator<Item = Txid>,
    ) -> Vec<MempoolEntry> {
        let doomed = self.with_descendants(txids);
        let mut removed: Vec<MempoolEntry> = doomed
            .iter()
            .filter_map(|txid| self.remove_one(txid))
            .collect();
        removed.sort_by_key(|e| e.sequence);
        removed
    }

    fn remove_one(&mut self, txid: &Txid) -> Option<MempoolEntry> {
        let entry = self.entries.remove(txid)?;
        self.mempool_sequence += 1;
        for input in &entry.tx.input {
            if self.spends.get(&input.previous_output) == Some(txid) {
                self.spends.remove(&input.previous_output);
            }
        }
        Some(entry)
    }

    /// Removes what a newly connected block confirmed, and whatever conflicts with it.
    pub fn remove_for_block(&mut self, txdata: &[Transaction]) {
        let mut conflicts = Vec::new();
        for tx in txdata {
            let txid = tx.compute_txid();
            self.remove_one(&txid);
            for input in &tx.input {
                if let Some(spender) = self.spends.get(&input.previous_output) {
                    if *spender != txid {
                        conflicts.push(*spender);
                    }
                }
            }
        }
        self.remove_with_descendants(conflicts);
    }

    /// After a reorg: accepts `returning` (the transactions of the disconnected blocks, oldest
    /// first, fees not checked), then the entries that were here, each only if still valid on
    /// `chain`'s tip. Returns the txids of `returning` accepted. The mempool sequence moves
    /// only for transactions that really entered or left, not for entries that stayed.
    pub fn readmit_after_reorg(
        &mut self,
        chain: &Chain,
        returning: &[Transaction],
        now: u64,
    ) -> Vec<Txid> {
        let before: HashSet<Txid> = self.entries.keys().copied().collect();
        let sequence = self.mempool_sequence;
        let old = self.drain();
        let returned = returning
            .iter()
            .filter_map(|tx| self.readmit(chain, tx, now))
            .collect();
        for entry in old {
            self.readmit(chain, &entry.tx, entry.time);
        }
        let entered = self.entries.keys().filter(|t| !before.contains(*t)).count();
        let left = before
            .iter()
            .filter(|t| !self.entries.contains_key(*t))
            .count();
        self.mempool_sequence = sequence + (entered + left) as u64;
        returned
    }

    /// Accepts `tx` back after a reorg, fees not checked; logs why not.
    fn readmit(&mut self, chain: &Chain, tx: &Transaction, now: u64) -> Option<Txid> {
        let options = AcceptOptions {
            test_only: false,
            bypass_fees: true,
            now,
        };
        match self.accept(chain, tx, options) {
            Ok(accepted) => Some(accepted.txid),
            Err(reason) => {
                let txid = tx.compute_txid();
                log::info!("devchain: {txid} not kept in the mempool after a reorg: {reason}");
                None
            }
        }
    }

    /// Empties the mempool, returning its entries oldest first.
    fn drain(&mut self) -> Vec<MempoolEntry> {
        let mut entries: Vec<_> = self.entries.drain().map(|(_, e)| e).collect();
        self.spends.clear();
        entries.sort_by_key(|e| e.sequence);
        entries
    }

    /// Validates `tx` against `chain`'s tip and this mempool, with bitcoind's consensus checks
    /// and default policy (full RBF), and adds it unless `options.test_only`.
    pub fn accept(
        &mut self,
        chain: &Chain,
        tx: &Transaction,
        options: AcceptOptions,
    ) -> Result<Accepted, RejectReason> {
        let txid = tx.compute_txid();
        let wtxid = tx.compute_wtxid();
        validation::check_transaction(tx)?;
        if tx.is_coinbase() {
            return Err(RejectReason::rejected("coinbase"));
        }
        check_standard(tx)?;
        let next_height = chain.height() + 1;
        let tip_mtp = chain.tip().mtp;
        if !validation::is_final(tx, next_height, tip_mtp) {
            return Err(RejectReason::rejected("non-final"));
        }
        if self.entries.contains_key(&txid) {
            return Err(RejectReason::with_code(
                RPC_TRANSACTION_ALREADY_IN_CHAIN,
                "txn-already-in-mempool",
            ));
        }
        if (0..tx.output.len() as u32).any(|vout| chain.coin(&OutPoint { txid, vout }).is_some()) {
            return Err(RejectReason::with_code(
                RPC_TRANSACTION_ALREADY_IN_CHAIN,
                "Transaction outputs already in utxo set",
            ));
        }

        let mut conflicts = BTreeSet::new();
        let mut coins = Vec::with_capacity(tx.input.len());
        for input in &tx.input {
            let outpoint = input.previous_output;
            if let Some(spender) = self.spends.get(&outpoint) {
                conflicts.insert(*spender);
            }
            let coin = match self.output(&outpoint) {
                Some(output) => Coin {
                    output: output.clone(),
                    height: next_height,
                    is_coinbase: false,
                },
                None => match chain.coin(&outpoint) {
                    Some(coin) => coin.clone(),
                    None => return Err(RejectReason::missing_inputs()),
                },
            };
            coins.push(coin);
        }

        let locks_ok = validation::sequence_locks_ok(tx, &coins, next_height, tip_mtp, |h| {
            chain.mtp_at(h.saturating_sub(1))
        });
        if !locks_ok {
            return Err(RejectReason::rejected("non-BIP68-final"));
        }
        let fee = validation::check_inputs(tx, &coins, next_height)?;
        let vsize = tx.vsize() as u64;

        let parents: BTreeSet<Txid> = tx
            .input
            .iter()
            .map(|i| i.previous_output.txid)
            .filter(|t| self.entries.contains_key(t))
            .collect();
        let mut ancestors = HashSet::new();
        for parent in &parents {
            ancestors.insert(*parent);
            ancestors.extend(self.ancestors(parent));
        }
        if ancestors.len() + 1 > ANCESTOR_LIMIT {
            return Err(
                RejectReason::rejected("too-long-mempool-chain").details(format!(
                    "too many unconfirmed ancestors [limit: {ANCESTOR_LIMIT}]"
                )),
            );
        }

        if !options.bypass_fees {
            let min_fee = Amount::from_sat(MIN_RELAY_SAT_PER_KVB * vsize / 1000);
            if fee < min_fee {
                return Err(
                    RejectReason::rejected("min relay fee not met").details(format!(
                        "{} < {}",
                        fee.to_sat(),
                        min_fee.to_sat()
                    )),
                );
            }
        }

        let replaced = if conflicts.is_empty() {
            HashSet::new()
        } else {
            self.check_replacement(tx, &txid, fee, vsize, &conflicts, &ancestors)?
        };

        validation::verify_scripts(tx, &coins)?;

        let accepted = Accepted {
            txid,
            wtxid,
            fee,
            vsize,
            replaced: replaced.iter().copied().collect(),
        };
        if options.test_only {
            return Ok(accepted);
        }
        self.remove_with_descendants(replaced);
        for input in &tx.input {
            self.spends.insert(input.previous_output, txid);
        }
        let entry = MempoolEntry {
            tx: Arc::new(tx.clone()),
            txid,
            wtxid,
            fee,
            vsize,
            weight: tx.weight(),
            time: options.now,
            height: chain.height(),
            sequence: self.next_sequence,
        };
        self.next_sequence += 1;
        self.mempool_sequence += 1;
        self.entries.insert(txid, entry);
        Ok(accepted)
    }

    /// bitcoind's replacement rules; returns every transaction the replacement evicts.
    fn check_replacement(
        &self,
        tx: &Transaction,
        txid: &Txid,
        fee: Amount,
        vsize: u64,
        conflicts: &BTreeSet<Txid>,
        ancestors: &HashSet<Txid>,
    ) -> Result<HashSet<Txid>, RejectReason> {
        let replaced = self.with_descendants(conflicts.iter().copied());
        if let Some(bad) = ancestors.iter().find(|a| replaced.contains(*a)) {
            return Err(RejectReason::rejected("bad-txns-spends-conflicting-tx")
                .details(format!("{txid} spends conflicting transaction {bad}")));
        }
        if replaced.len() > MAX_REPLACEMENT_CANDIDATES {
            return Err(
                RejectReason::rejected("too many potential replacements").details(format!(
                    "rejecting replacement {txid}; too many potential replacements ({} > {})",
                    replaced.len(),
                    MAX_REPLACEMENT_CANDIDATES
                )),
            );
        }
        // Rule 2: no new unconfirmed inputs.
        let conflict_parents: HashSet<Txid> =
            conflicts.iter().flat_map(|c| self.parents(c)).collect();
        for (index, input) in tx.input.iter().enumerate() {
            let parent = input.previous_output.txid;
            if self.entries.contains_key(&parent) && !conflict_parents.contains(&parent) {
                return Err(
                    RejectReason::rejected("replacement-adds-unconfirmed").details(format!(
                        "replacement {txid} adds unconfirmed input, idx {index}"
                    )),
                );
            }
        }
        // Rule 6: a higher feerate than every directly conflicting transaction.
        let new_rate = fee_rate_kvb(fee, vsize);
        for conflict in conflicts {
            if let Some(entry) = self.entries.get(conflict) {
                let old_rate = fee_rate_kvb(entry.fee, entry.vsize);
                if new_rate <= old_rate {
                    return Err(RejectReason::rejected("insufficient fee").details(format!(
                        "rejecting replacement {txid}; new feerate {} <= old feerate {}",
                        format_fee_rate(new_rate),
                        format_fee_rate(old_rate)
                    )));
                }
            }
        }
        // Rules 3 and 4: pay for everything replaced, plus the relay of the replacement.
        let replaced_fees = replaced
            .iter()
            .filter_map(|t| self.entries.get(t))
            .fold(Amount::ZERO, |sum, e| sum + e.fee);
        if fee < replaced_fees {
            return Err(RejectReason::rejected("insufficient fee").details(format!(
                "rejecting replacement {txid}, less fees than conflicting txs; {} < {}",
                format_btc(fee),
                format_btc(replaced_fees)
            )));
        }
        let additional = fee - replaced_fees;
        let required = Amount::from_sat(INCREMENTAL_RELAY_SAT_PER_KVB * vsize / 1000);
        if additional < required {
            return Err(RejectReason::rejected("insufficient fee").details(format!(
                "rejecting replacement {txid}, not enough additional fees to relay; {} < {}",
                format_btc(additional),
                format_btc(required)
            )));
        }
        Ok(replaced)
    }
}

/// bitcoind's `IsStandardTx` subset that matters on regtest, plus `tx-size-small`.
fn check_standard(tx: &Transaction) -> Result<(), RejectReason> {
    if !(1..=3).contains(&tx.version.0) {
        return Err(RejectReason::rejected("version"));
    }
    if tx.weight().to_wu() > MAX_STANDARD_TX_WEIGHT {
        return Err(RejectReason::rejected("tx-size"));
    }
    for input in &tx.input {
        if input.script_sig.len() > MAX_STANDARD_SCRIPTSIG_SIZE {
            return Err(RejectReason::rejected("scriptsig-size"));
        }
        if !input.script_sig.is_push_only() {
            return Err(RejectReason::rejected("scriptsig-not-pushonly"));
        }
    }
    let mut op_returns = 0;
    for output in &tx.output {
        if output.script_pubkey.is_op_return() {
            op_returns += 1;
        } else if output.value < output.script_pubkey.minimal_non_dust() {
            return Err(RejectReason::rejected("dust"));
        }
    }
    if op_returns > 1 {
        return Err(RejectReason::rejected("multi-op-return"));
    }
    if tx.base_size() < MIN_STANDARD_TX_NONWITNESS_SIZE {
        return Err(RejectReason::rejected("tx-size-small"));
    }
    Ok(())
}
