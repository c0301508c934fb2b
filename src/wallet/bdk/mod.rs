//! The on-chain wallet: a BDK wallet whose state lives in the node's `KVStore`.
//!
//! It is fed blocks through [`lightning::chain::Listen`] (the same blocks the
//! channel manager sees), funds channel opens, hands out addresses for
//! channel close outputs so that closed-channel funds come back here, selects
//! coins for splices, and signs its own splice inputs.
//!
//! Coins promised to a splice are locked in the BDK wallet itself
//! (`lock_outpoint`, persisted with the wallet's state), so every spend the
//! wallet builds honours them: splices, channel opens, payments. The wallet
//! knows nothing of splices; the splice journal says which splice holds
//! which coin.

mod changeset_log;
mod claims;
mod confirm;
mod signing;

use std::sync::{Mutex, MutexGuard};

use bdk_wallet::chain::BlockId;
use bdk_wallet::miniscript::psbt::PsbtExt;
use bdk_wallet::template::Bip84;
use bdk_wallet::{KeychainKind, Wallet};
use bitcoin::bip32::Xpriv;
use bitcoin::block::Header;
use bitcoin::{
    Address, Amount, Block, FeeRate, Network, OutPoint, ScriptBuf, Transaction, TxOut, Txid,
};
use changeset_log::ChangeLog;
use lightning::chain::{BlockLocator, Listen};

use super::{CoordinatorCall, FundingWallet, WalletCoin, WalletError};
use crate::store::SharedStore;

/// On-chain balance, split by how settled the coins are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalletBalance {
    /// Confirmed and spendable now.
    pub confirmed: Amount,
    /// Unconfirmed outputs of our own transactions (change), and coinbase
    /// outputs not yet mature.
    pub pending: Amount,
    /// Unconfirmed outputs paid to us by others.
    pub untrusted_pending: Amount,
}

impl WalletBalance {
    /// Everything the wallet knows of, settled or not.
    pub fn total(&self) -> Amount {
        self.confirmed + self.pending + self.untrusted_pending
    }
}

/// How many addresses past the last one used the wallet watches. A wallet
/// restored from its seed finds coins only on addresses within this many of
/// the last one it found used; the node reveals two per channel (its close
/// scripts) and one per splice-out to the wallet, so it is well above
/// BDK's default of 25.
const LOOKAHEAD: u32 = 200;

/// Blocks between two progress lines while the wallet reads many blocks
/// (a restore from a birthday height).
const PROGRESS_EVERY: u32 = 1000;

struct State {
    wallet: Wallet,
    /// Where staged changes are written.
    log: ChangeLog,
    /// Changes taken from the wallet whose write failed: written with the
    /// next ones, never dropped.
    unsaved: Option<bdk_wallet::ChangeSet>,
    /// Coins locked by `build_payment` (not by a splice): the only ones
    /// `payment_sent`/`payment_abandoned` unlock. In memory only: after a
    /// restart the coordinator frees every lock no splice holds.
    payment_locks: std::collections::BTreeSet<OutPoint>,
    /// A block arrived that does not connect to the blocks the wallet has:
    /// some are missing, and the blocks from its tip on must be passed
    /// again ([`BdkWallet::needs_resync`]).
    resync_needed: bool,
}

/// A BDK wallet (BIP84 P2WPKH, keys derived from the node seed) persisted in
/// a `KVStoreSync` and kept in step with the chain through [`Listen`].
pub struct BdkWallet {
    state: Mutex<State>,
    /// The BIP32 master key the descriptors derive from; signs our inputs.
    master_key: Xpriv,
    network: Network,
}

impl BdkWallet {
    /// Loads the wallet from `store`, or creates it from `seed` when the store
    /// has none. A new wallet starts at `birthday` (the current tip), so it
    /// does not rescan history it cannot have coins in.
    pub fn load_or_create(
        seed: &[u8; 32],
        network: Network,
        store: SharedStore,
        birthday: Option<&Block>,
        birthday_height: u32,
    ) -> Result<Self, WalletError> {
        let xprv = Xpriv::new_master(network, seed)
            .map_err(|e| WalletError::Build(format!("seed: {e}")))?;
        let external = Bip84(xprv, KeychainKind::External);
        let internal = Bip84(xprv, KeychainKind::Internal);

        let (stored, log) = ChangeLog::load(store)?;
        let wallet = match stored {
            Some(changeset) => Wallet::load()
                .lookahead(LOOKAHEAD)
                .descriptor(KeychainKind::External, Some(external))
                .descriptor(KeychainKind::Internal, Some(internal))
                .check_network(network)
                .load_wallet_no_persist(changeset)
                .map_err(|e| WalletError::Mismatch(e.to_string()))?
                .ok_or_else(|| WalletError::Mismatch("empty wallet state".into()))?,
            None => {
                let mut wallet = Wallet::create(external, internal)
                    .network(network)
                    .lookahead(LOOKAHEAD)
                    .create_wallet_no_persist()
                    .map_err(|e| WalletError::Build(e.to_string()))?;
                if let Some(block) = birthday.filter(|_| birthday_height > 0) {
                    // The wallet knows only the genesis block: the birthday
                    // joins it directly (BDK keeps sparse checkpoints), and
                    // blocks from there on connect to it one by one.
                    let genesis = wallet.latest_checkpoint().block_id();
                    wallet
                        .apply_block_connected_to(block, birthday_height, genesis)
                        .map_err(|e| WalletError::Build(e.to_string()))?;
                }
                wallet
            }
        };
        let this = BdkWallet {
            state: Mutex::new(State {
                wallet,
                log,
                unsaved: None,
                payment_locks: Default::default(),
                resync_needed: false,
            }),
            master_key: xprv,
            network,
        };
        this.persist(&mut this.lock())?;
        Ok(this)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, state: &mut State) -> Result<(), WalletError> {
        if let Some(staged) = state.wallet.take_staged() {
            match &mut state.unsaved {
                Some(unsaved) => bdk_wallet::chain::Merge::merge(unsaved, staged),
                None => state.unsaved = Some(staged),
            }
        }
        let Some(unsaved) = &state.unsaved else {
            return Ok(());
        };
        state.log.append(unsaved)?;
        state.unsaved = None;
        Ok(())
    }

    /// Whether `store` already holds a wallet.
    pub fn exists(store: &SharedStore) -> Result<bool, WalletError> {
        ChangeLog::exists(store)
    }

    fn persist_or_log(&self, state: &mut State) {
        if let Err(e) = self.persist(state) {
            log::error!("failed to persist wallet: {e}");
        }
    }

    /// The network the wallet's addresses are for.
    pub fn network(&self) -> Network {
        self.network
    }

    /// A fresh receive address.
    pub fn new_address(&self) -> Result<Address, WalletError> {
        let mut state = self.lock();
        let address = state
            .wallet
            .reveal_next_address(KeychainKind::External)
            .address;
        self.persist(&mut state)?;
        Ok(address)
    }

    /// A fresh script for a channel's close outputs. It comes from the
    /// receive keychain so it never coincides with a change output the
    /// wallet picks itself.
    pub fn new_channel_script(&self) -> Result<ScriptBuf, WalletError> {
        let mut state = self.lock();
        let script = state
            .wallet
            .reveal_next_address(KeychainKind::External)
            .address
            .script_pubkey();
        self.persist(&mut state)?;
        Ok(script)
    }

    /// The wallet balance.
    pub fn balance(&self) -> WalletBalance {
        let balance = self.lock().wallet.balance();
        WalletBalance {
            confirmed: balance.confirmed,
            pending: balance.trusted_pending + balance.immature,
            untrusted_pending: balance.untrusted_pending,
        }
    }

    /// Whether `script` pays this wallet.
    pub fn is_mine(&self, script: &ScriptBuf) -> bool {
        self.lock().wallet.is_mine(script.clone())
    }

    /// The block the wallet has synced to.
    pub fn best_block(&self) -> BlockLocator {
        let tip = self.lock().wallet.latest_checkpoint();
        BlockLocator::new(tip.hash(), tip.height())
    }

    /// Builds and signs a transaction paying `amount` to `script` at
    /// `fee_rate`, spending confirmed coins that are not locked. Its coins
    /// stay locked until [`BdkWallet::payment_sent`] or
    /// [`BdkWallet::payment_abandoned`] is called.
    pub fn build_payment(
        &self,
        script: ScriptBuf,
        amount: Amount,
        fee_rate: FeeRate,
    ) -> Result<Transaction, WalletError> {
        self.build_payment_to(&[(script, amount)], fee_rate)
    }

    /// [`BdkWallet::build_payment`] to several outputs (e.g. to split a
    /// coin into several of the wallet's own).
    pub fn build_payment_to(
        &self,
        recipients: &[(ScriptBuf, Amount)],
        fee_rate: FeeRate,
    ) -> Result<Transaction, WalletError> {
        let mut state = self.lock();
        let available = state.wallet.balance().confirmed;
        let mut builder = state.wallet.build_tx();
        builder.set_recipients(recipients.to_vec());
        builder.fee_rate(fee_rate).exclude_unconfirmed();
        let mut psbt = builder.finish().map_err(|e| match e {
            bdk_wallet::error::CreateTxError::CoinSelection(e) => WalletError::InsufficientFunds {
                needed: e.needed,
                available,
            },
            e => WalletError::Build(e.to_string()),
        })?;
        psbt.sign(&self.master_key, state.wallet.secp_ctx())
            .map_err(|(_, errors)| WalletError::Build(format!("signing failed: {errors:?}")))?;
        psbt.finalize_mut(state.wallet.secp_ctx())
            .map_err(|errors| WalletError::Build(format!("finalizing failed: {errors:?}")))?;
        let tx = psbt
            .extract_tx()
            .map_err(|e| WalletError::Build(e.to_string()))?;
        // Until it is broadcast (and so known to spend them), its coins are
        // locked like a splice's: nothing else may pick them meanwhile.
        for input in &tx.input {
            state.wallet.lock_outpoint(input.previous_output);
        }
        if let Err(e) = self.persist(&mut state) {
            for input in &tx.input {
                state.wallet.unlock_outpoint(input.previous_output);
            }
            return Err(e);
        }
        state
            .payment_locks
            .extend(tx.input.iter().map(|i| i.previous_output));
        Ok(tx)
    }

    /// A transaction from [`BdkWallet::build_payment`] will not be
    /// broadcast: its coins are free again. Only coins `build_payment`
    /// locked are unlocked; a splice's stay locked whatever `tx` spends.
    pub fn payment_abandoned(&self, tx: &Transaction) -> Result<(), WalletError> {
        let outpoints = self.take_payment_locks(tx);
        self.unlock_coins(&outpoints)
    }

    fn take_payment_locks(&self, tx: &Transaction) -> Vec<OutPoint> {
        let mut state = self.lock();
        tx.input
            .iter()
            .map(|i| i.previous_output)
            .filter(|o| state.payment_locks.remove(o))
            .collect()
    }

    /// A transaction from [`BdkWallet::build_payment`] was broadcast:
    /// it is recorded (see [`BdkWallet::transaction_broadcast`]) and its
    /// coins unlocked, since being spent now keeps them out of later spends.
    pub fn payment_sent(&self, tx: &Transaction) -> Result<(), WalletError> {
        self.transaction_broadcast(tx);
        let outpoints = self.take_payment_locks(tx);
        self.unlock_coins(&outpoints)
    }

    /// Records a transaction we broadcast (a payment, a channel funding, a
    /// splice, a sweep), so its inputs count as spent and its outputs to us
    /// as pending until it confirms. Transactions that neither spend nor
    /// pay this wallet are ignored.
    pub fn transaction_broadcast(&self, tx: &Transaction) {
        let mut state = self.lock();
        if !is_relevant(&state.wallet, tx) {
            return;
        }
        record_unconfirmed(&mut state.wallet, tx);
        self.persist_or_log(&mut state);
    }

    /// A transaction we recorded as broadcast can no longer confirm (it was
    /// never completed, or a conflicting one confirmed): its inputs are
    /// unspent again as far as the wallet is concerned.
    pub fn transaction_abandoned(&self, txid: Txid) {
        let mut state = self.lock();
        if state.wallet.get_tx(txid).is_none() {
            return;
        }
        state
            .wallet
            .apply_evicted_txs([(txid, crate::ids::unix_now())]);
        self.persist_or_log(&mut state);
    }

    /// Writes every change not written yet (locks included).
    pub fn save(&self) -> Result<(), WalletError> {
        let mut state = self.lock();
        self.persist(&mut state)
    }

    /// Unlocks `outpoints`: they are spendable at once. The unlock costs
    /// no write of its own; the wallet's next write carries it. A lock the
    /// store still has after a restart is one no splice holds, and the
    /// coordinator frees it at start.
    pub(crate) fn unlock_coins(&self, outpoints: &[OutPoint]) -> Result<(), WalletError> {
        let mut state = self.lock();
        for outpoint in outpoints {
            state.wallet.unlock_outpoint(*outpoint);
        }
        Ok(())
    }

    /// Every locked coin, spent or not.
    pub fn locked_coins(&self) -> Vec<OutPoint> {
        let mut locked: Vec<OutPoint> = self.lock().wallet.list_locked_outpoints().collect();
        locked.sort();
        locked
    }

    /// Whether `outpoint` is locked.
    pub fn is_locked(&self, outpoint: &OutPoint) -> bool {
        self.lock().wallet.is_outpoint_locked(*outpoint)
    }

    /// The fee the wallet paid in `tx`, if it knows all its inputs.
    pub fn fee_of(&self, tx: &Transaction) -> Option<Amount> {
        self.lock().wallet.calculate_fee(tx).ok()
    }

    /// Whether the wallet has seen `txid` confirmed.
    pub fn is_confirmed(&self, txid: &Txid) -> bool {
        self.lock()
            .wallet
            .get_tx(*txid)
            .is_some_and(|tx| tx.chain_position.is_confirmed())
    }

    fn apply_block(&self, block: &Block, height: u32) {
        let mut state = self.lock();
        let tip = state.wallet.latest_checkpoint();
        // A block connects when the wallet has its parent (its tip, or a
        // block below it after a reorganisation). Any other block means
        // blocks are missing: taking it would skip their transactions.
        let parent = height.checked_sub(1).and_then(|h| tip.get(h));
        if height > 0 && parent.map(|p| p.hash()) != Some(block.header.prev_blockhash) {
            if !state.resync_needed {
                log::warn!(
                    "wallet: block {} at {height} does not connect to the wallet's tip {} at {}; the blocks from there are passed again",
                    block.block_hash(),
                    tip.hash(),
                    tip.height()
                );
            }
            state.resync_needed = true;
            return;
        }
        let connected_to = BlockId {
            height: height.saturating_sub(1),
            hash: block.header.prev_blockhash,
        };
        if let Err(e) = state
            .wallet
            .apply_block_connected_to(block, height, connected_to)
        {
            log::error!("wallet could not connect block at height {height}: {e}");
            state.resync_needed = true;
            return;
        }
        if state.wallet.latest_checkpoint().hash() == block.block_hash() {
            state.resync_needed = false;
        }
        if height % PROGRESS_EVERY == 0 {
            log::info!("wallet: read block {height}");
        }
        self.persist_or_log(&mut state);
    }

    /// Whether the wallet was given a block that does not connect to the
    /// ones it has (so some were never passed to it): the blocks from
    /// [`BdkWallet::best_block`] on must be passed again, e.g. with
    /// lightning-block-sync's `synchronize_listeners`. The bundled node
    /// does it by itself.
    pub fn needs_resync(&self) -> bool {
        self.lock().resync_needed
    }

    /// The blocks from the wallet's tip on were passed to it again (see
    /// [`BdkWallet::needs_resync`]).
    pub fn resync_done(&self) {
        self.lock().resync_needed = false;
    }

    /// Transactions of the wallet that are not confirmed (and not known to
    /// be replaced or evicted).
    pub fn unconfirmed_txids(&self) -> Vec<Txid> {
        self.lock()
            .wallet
            .transactions()
            .filter(|tx| !tx.chain_position.is_confirmed())
            .map(|tx| tx.tx_node.txid)
            .collect()
    }

    /// Unconfirmed transactions that left the mempool (replaced, expired,
    /// or never accepted) and are not confirmed: their inputs are unspent
    /// again and their outputs gone, until they are broadcast again.
    pub fn transactions_evicted(&self, txids: &[Txid]) {
        let mut state = self.lock();
        let now = crate::ids::unix_now();
        state
            .wallet
            .apply_evicted_txs(txids.iter().map(|txid| (*txid, now)));
        self.persist_or_log(&mut state);
    }
}

impl BdkWallet {
    /// Confirmed P2WPKH coins that are not locked.
    pub fn spendable_coins(&self) -> Vec<WalletCoin> {
        let state = self.lock();
        state
            .wallet
            .list_unspent()
            .filter(|utxo| utxo.chain_position.is_confirmed())
            .filter(|utxo| utxo.txout.script_pubkey.is_p2wpkh())
            .filter(|utxo| !state.wallet.is_outpoint_locked(utxo.outpoint))
            .map(|utxo| WalletCoin {
                outpoint: utxo.outpoint,
                output: utxo.txout,
            })
            .collect()
    }

    /// The transaction that created `outpoint`, as LDK wants it for an input.
    pub fn previous_transaction(&self, outpoint: &OutPoint) -> Option<Transaction> {
        let state = self.lock();
        let tx = state.wallet.tx_graph().get_tx(outpoint.txid)?;
        Some(tx.as_ref().clone())
    }

    /// The output `outpoint` names, if it is (or was) one of this wallet's.
    pub fn owned_output(&self, outpoint: &OutPoint) -> Option<TxOut> {
        let state = self.lock();
        graph_output(&state.wallet, outpoint)
            .filter(|txout| state.wallet.is_mine(txout.script_pubkey.clone()))
    }

    /// The confirmed balance that is not locked.
    pub fn available_balance(&self) -> Amount {
        crate::wallet::available_balance(self)
    }

    /// Whether `outpoint` is (or was) an output of this wallet.
    pub fn owns_outpoint(&self, outpoint: &OutPoint) -> bool {
        self.owned_output(outpoint).is_some()
    }

    fn change_script(&self) -> Result<ScriptBuf, WalletError> {
        let mut state = self.lock();
        let script = state
            .wallet
            .next_unused_address(KeychainKind::Internal)
            .address
            .script_pubkey();
        self.persist(&mut state)?;
        Ok(script)
    }
}

/// Records `tx` as seen unconfirmed now, and later than any eviction of it
/// (timestamps are whole seconds; BDK counts a transaction evicted until it
/// is seen after its eviction).
fn record_unconfirmed(wallet: &mut Wallet, tx: &Transaction) {
    let txid = tx.compute_txid();
    let seen = crate::ids::unix_now().max(
        wallet
            .tx_graph()
            .get_last_evicted(txid)
            .map_or(0, |evicted| evicted.saturating_add(1)),
    );
    wallet.apply_unconfirmed_txs([(tx.clone(), seen)]);
}

/// The output `outpoint` names, from any transaction the wallet has seen
/// (confirmed, pending or replaced). A lookup: `Wallet::get_tx` would
/// canonicalise the whole history on each call, which the checks before
/// signing and coin selection make for every input.
pub(super) fn graph_output(wallet: &Wallet, outpoint: &OutPoint) -> Option<TxOut> {
    wallet.tx_graph().get_txout(*outpoint).cloned()
}

/// Whether `tx` spends or pays `wallet`.
fn is_relevant(wallet: &Wallet, tx: &Transaction) -> bool {
    let spends_ours = tx.input.iter().any(|i| {
        graph_output(wallet, &i.previous_output)
            .is_some_and(|out| wallet.is_mine(out.script_pubkey))
    });
    spends_ours
        || tx
            .output
            .iter()
            .any(|o| wallet.is_mine(o.script_pubkey.clone()))
}

impl FundingWallet for BdkWallet {
    fn spendable_coins(&self) -> Vec<WalletCoin> {
        BdkWallet::spendable_coins(self)
    }

    fn previous_transaction(&self, outpoint: &OutPoint) -> Option<Transaction> {
        BdkWallet::previous_transaction(self, outpoint)
    }

    fn owned_output(&self, outpoint: &OutPoint) -> Option<TxOut> {
        BdkWallet::owned_output(self, outpoint)
    }

    fn lock_coins(&self, outpoints: &[OutPoint], _: &CoordinatorCall) {
        let mut state = self.lock();
        for outpoint in outpoints {
            state.wallet.lock_outpoint(*outpoint);
        }
    }

    fn unlock_coins(&self, outpoints: &[OutPoint], _: &CoordinatorCall) -> Result<(), WalletError> {
        BdkWallet::unlock_coins(self, outpoints)
    }

    fn save(&self) -> Result<(), WalletError> {
        BdkWallet::save(self)
    }

    fn locked_coins(&self) -> Vec<OutPoint> {
        BdkWallet::locked_coins(self)
    }

    fn is_locked(&self, outpoint: &OutPoint) -> bool {
        BdkWallet::is_locked(self, outpoint)
    }

    fn change_script(&self) -> Result<ScriptBuf, WalletError> {
        BdkWallet::change_script(self)
    }

    fn payout_script(&self) -> Result<ScriptBuf, WalletError> {
        Ok(self.new_address()?.script_pubkey())
    }

    fn sign_inputs(
        &self,
        tx: Transaction,
        inputs: &[OutPoint],
    ) -> Result<Transaction, WalletError> {
        BdkWallet::sign_inputs(self, tx, inputs)
    }

    fn transaction_broadcast(&self, tx: &Transaction) {
        BdkWallet::transaction_broadcast(self, tx)
    }

    fn transaction_abandoned(&self, txid: Txid) {
        BdkWallet::transaction_abandoned(self, txid)
    }
}

impl Listen for BdkWallet {
    fn filtered_block_connected(
        &self,
        header: &Header,
        txdata: &lightning::chain::transaction::TransactionData,
        height: u32,
    ) {
        let block = Block {
            header: *header,
            txdata: txdata.iter().map(|(_, tx)| (*tx).clone()).collect(),
        };
        self.apply_block(&block, height);
    }

    fn block_connected(&self, block: &Block, height: u32) {
        self.apply_block(block, height);
    }

    fn blocks_disconnected(&self, fork_point: BlockLocator) {
        // BDK drops the stale blocks when the next block connects to the
        // fork point; nothing to do until then.
        log::debug!(
            "wallet: blocks disconnected back to {} at {}",
            fork_point.block_hash,
            fork_point.height
        );
    }
}

impl lightning::sign::ChangeDestinationSourceSync for BdkWallet {
    fn get_change_destination_script(&self) -> Result<ScriptBuf, ()> {
        self.change_script().map_err(|e| {
            log::error!("no change script: {e}");
        })
    }
}
