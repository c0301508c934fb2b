//! Block assembly: transaction selection from the mempool, the coinbase with its BIP34 height
//! and witness commitment, and regtest proof of work.

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash;
use bitcoin::script::{Builder, ScriptBuf};
use bitcoin::transaction::Version;
use bitcoin::{
    absolute, Amount, Block, OutPoint, Sequence, Transaction, TxIn, TxMerkleNode, TxOut, Txid,
    Weight, Witness,
};
use std::collections::HashSet;

use super::chain::{bip34_prefix, subsidy, BlockView, Chain};
use super::mempool::Mempool;
use super::validation::MAX_BLOCK_WEIGHT;

/// Weight kept free for the block header and coinbase.
const COINBASE_RESERVED_WEIGHT: Weight = Weight::from_wu(4_000);
/// bitcoind's default block version (BIP9 top bits, no deployment signalled).
const BLOCK_VERSION: i32 = 0x2000_0000;
/// The witness commitment output's script prefix: OP_RETURN, push 36, 0xaa21a9ed.
const WITNESS_COMMITMENT_HEADER: [u8; 6] = [0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];

/// Builds the next block on `chain`'s tip paying `script`: every mempool transaction that is
/// still valid and fits, highest feerate first but parents before children. `extra_nonce` makes
/// the coinbase (and so the block) unique; `now` is the current UNIX time.
pub(crate) fn build_block(
    chain: &Chain,
    mempool: &Mempool,
    script: &ScriptBuf,
    extra_nonce: u64,
    now: u32,
) -> Block {
    let tip = chain.tip();
    let height = tip.height + 1;
    let mut view = BlockView::new(chain, height, tip.mtp);

    let candidates = mempool.entries();
    let mut done: HashSet<Txid> = HashSet::new();
    let mut included: HashSet<Txid> = HashSet::new();
    let mut txdata = Vec::new();
    let mut fees = Amount::ZERO;
    let mut weight = COINBASE_RESERVED_WEIGHT;
    loop {
        // The best candidate whose mempool parents are all in the block already.
        let best = candidates
            .iter()
            .filter(|e| !done.contains(&e.txid))
            .filter(|e| {
                mempool
                    .parents(&e.txid)
                    .iter()
                    .all(|p| included.contains(p))
            })
            .max_by(|a, b| {
                let lhs = u128::from(a.fee.to_sat()) * u128::from(b.vsize);
                let rhs = u128::from(b.fee.to_sat()) * u128::from(a.vsize);
                lhs.cmp(&rhs).then(b.sequence.cmp(&a.sequence))
            });
        let Some(entry) = best else { break };
        done.insert(entry.txid);
        if weight + entry.weight > MAX_BLOCK_WEIGHT {
            continue;
        }
        match view.apply(&entry.tx) {
            Ok(fee) => {
                fees += fee;
                weight += entry.weight;
                included.insert(entry.txid);
                txdata.push((*entry.tx).clone());
            }
            Err(reason) => {
                log::warn!(
                    "devchain: leaving {} out of block {height}: {reason}",
                    entry.txid
                );
            }
        }
    }

    let script_sig = Builder::from(bip34_prefix(height).into_bytes())
        .push_slice(extra_nonce.to_le_bytes())
        .into_script();
    let coinbase = Transaction {
        version: Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig,
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[[0u8; 32]]),
        }],
        output: vec![TxOut {
            value: subsidy(height) + fees,
            script_pubkey: script.clone(),
        }],
    };
    txdata.insert(0, coinbase);

    let time = now.max(tip.block.header.time + 1).max(tip.mtp + 1);
    let mut block = Block {
        header: Header {
            version: BlockVersion::from_consensus(BLOCK_VERSION),
            prev_blockhash: tip.hash,
            merkle_root: TxMerkleNode::all_zeros(),
            time,
            bits: tip.block.header.bits,
            nonce: 0,
        },
        txdata,
    };
    if let Some(witness_root) = block.witness_root() {
        let commitment = Block::compute_witness_commitment(&witness_root, &[0u8; 32]);
        let mut bytes = WITNESS_COMMITMENT_HEADER.to_vec();
        bytes.extend_from_slice(commitment.as_byte_array());
        block.txdata[0].output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(bytes),
        });
    }
    if let Some(root) = block.compute_merkle_root() {
        block.header.merkle_root = root;
    }
    grind(&mut block.header);
    block
}

/// Finds a nonce (bumping the time if every nonce fails) that satisfies the header's target.
fn grind(header: &mut Header) {
    loop {
        for nonce in 0..=u32::MAX {
            header.nonce = nonce;
            if header.validate_pow(header.target()).is_ok() {
                return;
            }
        }
        header.time += 1;
    }
}
