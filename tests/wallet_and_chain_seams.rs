//! The library fits nodes unlike ours: splices funded by a wallet that is
//! not BDK (a single key kept in memory, implementing `FundingWallet`), and
//! a node that learns about blocks through LDK's `Confirm` (as Electrum and
//! Esplora nodes do) instead of `Listen`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    Amount, Block, CompressedPublicKey, FeeRate, OutPoint, ScriptBuf, Transaction, TxOut, Txid,
    Witness,
};
use common::*;
use ldk_splice::devchain::DevChain;
use ldk_splice::node::{ChainFeed, Node};
use ldk_splice::{CoordinatorCall, FundingWallet, WalletCoin, WalletError};
use ldk_splice::{FeePolicy, SpliceState};

const CAPACITY: Amount = Amount::from_sat(1_000_000);
const FEERATE: FeeRate = FeeRate::from_sat_per_kwu(500);

/// The smallest wallet that can fund splices: one P2WPKH key, its coins
/// in memory, learned from the blocks the test shows it.
struct OneKeyWallet {
    key: SecretKey,
    public: CompressedPublicKey,
    script: ScriptBuf,
    state: Mutex<OneKeyState>,
}

#[derive(Default)]
struct OneKeyState {
    /// Every output ever paid to the key, with the transaction that made it.
    outputs: BTreeMap<OutPoint, (TxOut, Transaction)>,
    /// Those confirmed and not spent by a confirmed transaction.
    confirmed_unspent: BTreeSet<OutPoint>,
    /// Spent by a transaction we broadcast, not confirmed yet.
    spent_pending: BTreeSet<OutPoint>,
    locked: BTreeSet<OutPoint>,
    /// What was asked to be signed, for the test to check.
    signed: Vec<Vec<OutPoint>>,
}

impl OneKeyWallet {
    fn new(seed: u8) -> Self {
        let secp = Secp256k1::new();
        let key = SecretKey::from_slice(&[seed; 32]).unwrap();
        let public = CompressedPublicKey(key.public_key(&secp));
        OneKeyWallet {
            key,
            public,
            script: ScriptBuf::new_p2wpkh(&public.wpubkey_hash()),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OneKeyState> {
        self.state.lock().unwrap()
    }

    /// Takes what a confirmed block pays to or spends from the key.
    fn scan_block(&self, block: &Block) {
        let mut state = self.state();
        for tx in &block.txdata {
            for input in &tx.input {
                state.confirmed_unspent.remove(&input.previous_output);
                state.spent_pending.remove(&input.previous_output);
            }
            let txid = tx.compute_txid();
            for (vout, output) in tx.output.iter().enumerate() {
                if output.script_pubkey == self.script {
                    let outpoint = OutPoint::new(txid, vout as u32);
                    state.outputs.insert(outpoint, (output.clone(), tx.clone()));
                    state.confirmed_unspent.insert(outpoint);
                }
            }
        }
    }

    fn confirmed_balance(&self) -> Amount {
        let state = self.state();
        state
            .confirmed_unspent
            .iter()
            .map(|o| state.outputs[o].0.value)
            .sum()
    }
}

impl FundingWallet for OneKeyWallet {
    fn spendable_coins(&self) -> Vec<WalletCoin> {
        let state = self.state();
        state
            .confirmed_unspent
            .iter()
            .filter(|o| !state.locked.contains(o) && !state.spent_pending.contains(o))
            .map(|o| WalletCoin {
                outpoint: *o,
                output: state.outputs[o].0.clone(),
            })
            .collect()
    }

    fn previous_transaction(&self, outpoint: &OutPoint) -> Option<Transaction> {
        self.state().outputs.get(outpoint).map(|(_, tx)| tx.clone())
    }

    fn owned_output(&self, outpoint: &OutPoint) -> Option<TxOut> {
        self.state().outputs.get(outpoint).map(|(o, _)| o.clone())
    }

    fn lock_coins(&self, outpoints: &[OutPoint], _: &CoordinatorCall) {
        self.state().locked.extend(outpoints.iter().copied());
    }

    fn unlock_coins(&self, outpoints: &[OutPoint], _: &CoordinatorCall) -> Result<(), WalletError> {
        let mut state = self.state();
        for outpoint in outpoints {
            state.locked.remove(outpoint);
        }
        Ok(())
    }

    fn save(&self) -> Result<(), WalletError> {
        Ok(())
    }

    fn locked_coins(&self) -> Vec<OutPoint> {
        self.state().locked.iter().copied().collect()
    }

    fn change_script(&self) -> Result<ScriptBuf, WalletError> {
        Ok(self.script.clone())
    }

    fn payout_script(&self) -> Result<ScriptBuf, WalletError> {
        Ok(self.script.clone())
    }

    fn sign_inputs(
        &self,
        mut tx: Transaction,
        inputs: &[OutPoint],
    ) -> Result<Transaction, WalletError> {
        let secp = Secp256k1::new();
        let mut witnesses = Vec::new();
        {
            let state = self.state();
            let mut cache = SighashCache::new(&tx);
            for outpoint in inputs {
                let index = tx
                    .input
                    .iter()
                    .position(|i| i.previous_output == *outpoint)
                    .ok_or_else(|| WalletError::Build(format!("{outpoint} not spent")))?;
                let (output, _) = state
                    .outputs
                    .get(outpoint)
                    .ok_or_else(|| WalletError::Build(format!("{outpoint} not ours")))?;
                let sighash = cache
                    .p2wpkh_signature_hash(
                        index,
                        &output.script_pubkey,
                        output.value,
                        EcdsaSighashType::All,
                    )
                    .map_err(|e| WalletError::Build(e.to_string()))?;
                let signature = bitcoin::ecdsa::Signature {
                    signature: secp.sign_ecdsa_low_r(&Message::from(sighash), &self.key),
                    sighash_type: EcdsaSighashType::All,
                };
                witnesses.push((index, Witness::p2wpkh(&signature, &self.public.0)));
            }
        }
        for (index, witness) in witnesses {
            tx.input[index].witness = witness;
        }
        self.state().signed.push(inputs.to_vec());
        Ok(tx)
    }

    fn transaction_broadcast(&self, tx: &Transaction) {
        let mut state = self.state();
        for input in &tx.input {
            if state.outputs.contains_key(&input.previous_output) {
                state.spent_pending.insert(input.previous_output);
            }
        }
    }

    fn transaction_abandoned(&self, txid: Txid) {
        let _ = txid;
    }
}

/// Shows `wallet` every block from `from` to the chain's tip; returns the
/// next height to show.
fn show_blocks(chain: &DevChain, wallet: &OneKeyWallet, from: u32) -> u32 {
    let (tip, _) = chain.tip();
    for height in from..=tip {
        let hash = chain.block_hash(height).unwrap();
        wallet.scan_block(&chain.block(&hash).unwrap());
    }
    tip + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wallet_of_ours_funds_a_splice_in_and_signs_only_its_coins() {
    let chain = start_chain().await;
    let one_key = Arc::new(OneKeyWallet::new(0x17));
    let dir = tempfile::tempdir().unwrap();
    let alice = builder(&chain, dir.path())
        .funding_wallet(one_key.clone())
        .start()
        .await
        .expect("node starts");
    let bob = start_node(&chain).await;
    let (a, b) = (&alice, &bob.node);

    let start = chain.tip().0 + 1;
    chain.mine_blocks_to_script(1, &one_key.script);
    fund_nodes(&chain, &[a, b]).await;
    show_blocks(&chain, &one_key, start);
    assert_eq!(one_key.confirmed_balance(), SUBSIDY);
    let coin = one_key.spendable_coins()[0].outpoint;

    let (channel_id, _) = open_channel(&chain, a, b, CAPACITY, Amount::ZERO).await;
    let bdk_before = a.onchain_balance().confirmed;
    let added = Amount::from_sat(300_000);
    let id = a
        .splice_in(&channel_id, &b.node_id(), added, FeePolicy::fixed(FEERATE))
        .expect("splice-in accepted");
    assert_eq!(
        one_key.locked_coins(),
        vec![coin],
        "its coin is locked at once"
    );
    let txid = broadcast_txid(&chain, a, id).await;
    let record = a.splice_status(id).unwrap();
    let tx = chain.transaction(&txid).unwrap();
    assert_eq!(record.inputs, vec![coin]);
    assert_eq!(
        one_key.state().signed,
        vec![vec![coin]],
        "only its coin signed"
    );
    assert_eq!(fee_of(&chain, &tx), record.fee);

    let next = chain.tip().0 + 1;
    mine_to_lock(&chain, a, b, id).await;
    show_blocks(&chain, &one_key, next);
    assert_eq!(
        a.channel(&channel_id).unwrap().channel_value_satoshis,
        (CAPACITY + added).to_sat()
    );
    assert_eq!(
        one_key.confirmed_balance(),
        SUBSIDY - added - record.fee,
        "the key's coin paid the splice and its fee, the change came back"
    );
    assert!(one_key.locked_coins().is_empty(), "nothing stays locked");
    assert_eq!(
        a.onchain_balance().confirmed,
        bdk_before,
        "the node's own wallet was not touched"
    );
    pay(a, b, 200_000_000).await;
}

/// Feeds `node` every new block of `chain` through `Confirm` until `stop`.
fn feed_through_confirm(chain: DevChain, node: Arc<Node>, stop: Arc<AtomicBool>) {
    let mut next = node.best_block_height() + 1;
    while !stop.load(Ordering::SeqCst) {
        next = feed_blocks_through_confirm(&chain, &node, next);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_fed_through_confirm_opens_splices_and_locks() {
    let chain = start_chain().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = Arc::new(
        builder(&chain, dir.path())
            .chain_feed(ChainFeed::Confirm)
            .start()
            .await
            .expect("node starts"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (chain, node, stop) = (chain.clone(), alice.clone(), stop.clone());
        std::thread::spawn(move || feed_through_confirm(chain, node, stop))
    };
    let bob = start_node(&chain).await;
    let (a, b) = (&*alice, &bob.node);
    fund_nodes(&chain, &[a, b]).await;

    let (channel_id, _) = open_channel(&chain, a, b, CAPACITY, Amount::ZERO).await;
    let wallet_before = a.onchain_balance().confirmed;
    let added = Amount::from_sat(250_000);
    let id = a
        .splice_in(&channel_id, &b.node_id(), added, FeePolicy::fixed(FEERATE))
        .expect("splice-in accepted");
    broadcast_txid(&chain, a, id).await;
    mine(&chain, 1, &[a, b]).await;
    a.wait_for_splice(id, WAIT, |s| matches!(s, SpliceState::Confirmed { .. }))
        .await
        .expect("confirmation seen through Confirm");
    mine(&chain, 5, &[a, b]).await;
    let record = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Locked)
        .await
        .expect("locked");
    assert_eq!(
        a.channel(&channel_id).unwrap().channel_value_satoshis,
        (CAPACITY + added).to_sat()
    );
    a.wait_until(WAIT, "the wallet to see the splice confirmed", |n| {
        n.onchain_balance().confirmed == wallet_before - added - record.fee
    })
    .await
    .unwrap_or_else(|_| panic!("wallet {:?}", a.onchain_balance()));
    assert!(a.coordinator().locked_coins().is_empty());
    pay(a, b, 100_000_000).await;

    stop.store(true, Ordering::SeqCst);
    feeder.join().unwrap();
}
