//! Consensus checks of one transaction, shared by mempool acceptance and block connection:
//! well-formedness, finality (nLockTime and BIP68), input values and coinbase maturity, and
//! script verification with Bitcoin Core's consensus library.

use bitcoin::consensus::encode::serialize;
use bitcoin::{Amount, OutPoint, Transaction, TxOut, Weight};
use std::collections::HashSet;

use super::error::RejectReason;

/// Blocks a coinbase output must wait before it can be spent.
pub(crate) const COINBASE_MATURITY: u32 = 100;
/// Largest block weight.
pub(crate) const MAX_BLOCK_WEIGHT: Weight = Weight::MAX_BLOCK;
/// Locktime values below this are block heights, above it UNIX times.
const LOCKTIME_THRESHOLD: u32 = 500_000_000;
/// Script verification flags: bitcoind's mandatory flags as far as libbitcoinconsensus knows
/// them.
pub(crate) const VERIFY_FLAGS: u32 = bitcoinconsensus::VERIFY_P2SH
    | bitcoinconsensus::VERIFY_DERSIG
    | bitcoinconsensus::VERIFY_NULLDUMMY
    | bitcoinconsensus::VERIFY_CHECKLOCKTIMEVERIFY
    | bitcoinconsensus::VERIFY_CHECKSEQUENCEVERIFY
    | bitcoinconsensus::VERIFY_WITNESS
    | bitcoinconsensus::VERIFY_TAPROOT;

/// An unspent output together with where it was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Coin {
    /// The output itself.
    pub output: TxOut,
    /// Height of the block that created it (the next block's height for mempool outputs).
    pub height: u32,
    /// Whether it was created by a coinbase transaction.
    pub is_coinbase: bool,
}

/// Context-free checks (bitcoind's `CheckTransaction`).
pub(crate) fn check_transaction(tx: &Transaction) -> Result<(), RejectReason> {
    if tx.input.is_empty() {
        return Err(RejectReason::rejected("bad-txns-vin-empty"));
    }
    if tx.output.is_empty() {
        return Err(RejectReason::rejected("bad-txns-vout-empty"));
    }
    if tx.base_size() * 4 > MAX_BLOCK_WEIGHT.to_wu() as usize {
        return Err(RejectReason::rejected("bad-txns-oversize"));
    }
    let mut total = Amount::ZERO;
    for output in &tx.output {
        if output.value > Amount::MAX_MONEY {
            return Err(RejectReason::rejected("bad-txns-vout-toolarge"));
        }
        total = match total.checked_add(output.value) {
            Some(total) if total <= Amount::MAX_MONEY => total,
            _ => return Err(RejectReason::rejected("bad-txns-txouttotal-toolarge")),
        };
    }
    let mut seen = HashSet::with_capacity(tx.input.len());
    for input in &tx.input {
        if !seen.insert(input.previous_output) {
            return Err(RejectReason::rejected("bad-txns-inputs-duplicate"));
        }
    }
    if tx.is_coinbase() {
        let len = tx.input[0].script_sig.len();
        if !(2..=100).contains(&len) {
            return Err(RejectReason::rejected("bad-cb-length"));
        }
    } else if tx
        .input
        .iter()
        .any(|input| input.previous_output == OutPoint::null())
    {
        return Err(RejectReason::rejected("bad-txns-prevout-null"));
    }
    Ok(())
}

/// bitcoind's `IsFinalTx`: whether the transaction's nLockTime allows it in a block at `height`
/// whose lock time cut-off (median time past of its parent) is `block_time`.
pub(crate) fn is_final(tx: &Transaction, height: u32, block_time: u32) -> bool {
    let lock_time = tx.lock_time.to_consensus_u32();
    if lock_time == 0 {
        return true;
    }
    let cut_off = if lock_time < LOCKTIME_THRESHOLD {
        height
    } else {
        block_time
    };
    if lock_time < cut_off {
        return true;
    }
    tx.input.iter().all(|input| input.sequence.0 == u32::MAX)
}

/// BIP68: whether the relative lock times of `tx`'s inputs are satisfied in a block at `height`
/// whose parent's median time past is `prev_mtp`. `coins[i]` is the output input `i` spends and
/// `mtp_before(h)` is the median time past of the block just below height `h`.
pub(crate) fn sequence_locks_ok(
    tx: &Transaction,
    coins: &[Coin],
    height: u32,
    prev_mtp: u32,
    mtp_before: impl Fn(u32) -> u32,
) -> bool {
    if tx.version.0 < 2 {
        return true;
    }
    const DISABLE: u32 = 1 << 31;
    const TYPE_TIME: u32 = 1 << 22;
    const MASK: u32 = 0x0000_ffff;
    let mut min_height: i64 = -1;
    let mut min_time: i64 = -1;
    for (input, coin) in tx.input.iter().zip(coins) {
        let sequence = input.sequence.0;
        if sequence & DISABLE != 0 {
            continue;
        }
        let value = i64::from(sequence & MASK);
        if sequence & TYPE_TIME != 0 {
            let coin_time = i64::from(mtp_before(coin.height));
            min_time = min_time.max(coin_time + (value << 9) - 1);
        } else {
            min_height = min_height.max(i64::from(coin.height) + value - 1);
        }
    }
    min_height < i64::from(height) && min_time < i64::from(prev_mtp)
}

/// bitcoind's `CheckTxInputs`: coinbase maturity and values, spending in a block at
/// `spend_height`. Returns the fee.
pub(crate) fn check_inputs(
    tx: &Transaction,
    coins: &[Coin],
    spend_height: u32,
) -> Result<Amount, RejectReason> {
    let mut value_in = Amount::ZERO;
    for coin in coins {
        let depth = spend_height.saturating_sub(coin.height);
        if coin.is_coinbase && depth < COINBASE_MATURITY {
            return Err(
                RejectReason::rejected("bad-txns-premature-spend-of-coinbase")
                    .details(format!("tried to spend coinbase at depth {depth}")),
            );
        }
        value_in = match value_in.checked_add(coin.output.value) {
            Some(v) if v <= Amount::MAX_MONEY && coin.output.value <= Amount::MAX_MONEY => v,
            _ => return Err(RejectReason::rejected("bad-txns-inputvalues-outofrange")),
        };
    }
    // check_transaction bounded the output total by MAX_MONEY.
    let value_out = tx
        .output
        .iter()
        .map(|o| o.value)
        .fold(Amount::ZERO, |a, b| a + b);
    if value_in < value_out {
        return Err(
            RejectReason::rejected("bad-txns-in-belowout").details(format!(
                "value in ({}) < value out ({})",
                format_btc(value_in),
                format_btc(value_out)
            )),
        );
    }
    Ok(value_in - value_out)
}

/// Verifies every input script of `tx` against the outputs it spends, with Bitcoin Core's
/// consensus code and all spent outputs (so taproot signatures are checked too).
pub(crate) fn verify_scripts(tx: &Transaction, coins: &[Coin]) -> Result<(), RejectReason> {
    let serialized = serialize(tx);
    let mut spent = Vec::with_capacity(coins.len());
    for coin in coins {
        let value = i64::try_from(coin.output.value.to_sat())
            .map_err(|_| RejectReason::rejected("bad-txns-inputvalues-outofrange"))?;
        let script = coin.output.script_pubkey.as_bytes();
        spent.push(bitcoinconsensus::Utxo {
            script_pubkey: script.as_ptr(),
            script_pubkey_len: script.len() as u32,
            value,
        });
    }
    for (index, coin) in coins.iter().enumerate() {
        if let Err(error) = bitcoinconsensus::verify_with_flags(
            coin.output.script_pubkey.as_bytes(),
            coin.output.value.to_sat(),
            &serialized,
            Some(&spent),
            index,
            VERIFY_FLAGS,
        ) {
            let what = match error {
                bitcoinconsensus::Error::ERR_SCRIPT => "script verification failed".to_string(),
                other => other.to_string(),
            };
            return Err(RejectReason::rejected(format!(
                "mandatory-script-verify-flag-failed ({what})"
            ))
            .details(format!("input {index}")));
        }
    }
    Ok(())
}

/// Formats an amount the way bitcoind's `FormatMoney` does: BTC with trailing zeros trimmed but
/// at least two decimals (`0.01`, `1.00`, `0.00012345`).
pub(crate) fn format_btc(amount: Amount) -> String {
    let sat = amount.to_sat();
    let mut s = format!("{}.{:08}", sat / 100_000_000, sat % 100_000_000);
    while s.ends_with('0') && s.len() - s.find('.').unwrap_or(0) > 3 {
        s.pop();
    }
    s
}
