//! `submitpackage`: a child with its unconfirmed parents, where the child may pay for parents
//! that are below the relay feerate on their own (CPFP package relay).

use bitcoin::{Amount, Transaction, Txid, Wtxid};
use std::collections::HashSet;

use super::error::{RejectReason, RPC_TRANSACTION_ERROR};
use super::mempool::{AcceptOptions, Mempool, MIN_RELAY_SAT_PER_KVB};
use super::state::{unix_now, State};

/// Most transactions in one package.
pub(crate) const MAX_PACKAGE_COUNT: usize = 25;

/// How one transaction of a package fared.
#[derive(Clone, Debug)]
pub(crate) struct PackageTx {
    /// Its txid.
    pub txid: Txid,
    /// Its wtxid.
    pub wtxid: Wtxid,
    /// Accepted (now or before), or why not.
    pub result: Result<PackageAccepted, RejectReason>,
}

/// An accepted package member.
#[derive(Clone, Debug)]
pub(crate) struct PackageAccepted {
    /// Virtual size.
    pub vsize: u64,
    /// Its own fee.
    pub fee: Amount,
    /// Feerate it was judged at, sat/kvB (the package's when a child paid for it).
    pub effective_kvb: u64,
    /// Wtxids whose fees and sizes made up that feerate.
    pub effective_includes: Vec<Wtxid>,
}

/// The outcome of `submitpackage`.
#[derive(Clone, Debug)]
pub(crate) struct PackageOutcome {
    /// `"success"` or bitcoind's package-level failure message.
    pub message: String,
    /// One entry per transaction, in the order given.
    pub txs: Vec<PackageTx>,
    /// Mempool transactions the package replaced.
    pub replaced: Vec<Txid>,
}

/// Checks bitcoind's child-with-parents topology: the last transaction spends every other one,
/// and no other spends another. Errors with bitcoind's message.
pub(crate) fn check_topology(txs: &[Transaction]) -> Result<(), RejectReason> {
    let disallowed = || {
        RejectReason::with_code(
            RPC_TRANSACTION_ERROR,
            "package topology disallowed. not child-with-parents or parents depend on each other.",
        )
    };
    let Some((child, parents)) = txs.split_last() else {
        return Err(disallowed());
    };
    let parent_ids: HashSet<Txid> = parents.iter().map(|tx| tx.compute_txid()).collect();
    if parent_ids.len() != parents.len() {
        return Err(disallowed());
    }
    let spent_by_child: HashSet<Txid> =
        child.input.iter().map(|i| i.previous_output.txid).collect();
    if !parent_ids.iter().all(|p| spent_by_child.contains(p)) {
        return Err(disallowed());
    }
    for parent in parents {
        if parent
            .input
            .iter()
            .any(|i| parent_ids.contains(&i.previous_output.txid))
        {
            return Err(disallowed());
        }
    }
    Ok(())
}

fn options(bypass_fees: bool) -> AcceptOptions {
    AcceptOptions {
        test_only: false,
        bypass_fees,
        now: unix_now(),
    }
}

/// Evaluates the package on a copy of the mempool: each transaction alone first; parents only
/// short of the relay floor are then accepted if the child brings the package's feerate to it.
/// Returns the resulting mempool and the per-transaction results.
fn evaluate(state: &State, txs: &[Transaction]) -> (Mempool, Vec<PackageTx>, Vec<Txid>) {
    let mut scratch = state.mempool.clone();
    let mut results = Vec::with_capacity(txs.len());
    let mut replaced = Vec::new();
    let mut below_floor: Vec<usize> = Vec::new();
    let last = txs.len().saturating_sub(1);
    for (index, tx) in txs.iter().enumerate() {
        let txid = tx.compute_txid();
        let wtxid = tx.compute_wtxid();
        if let Some(entry) = scratch.get(&txid) {
            let accepted = PackageAccepted {
                vsize: entry.vsize,
                fee: entry.fee,
                effective_kvb: entry.fee.to_sat() * 1000 / entry.vsize.max(1),
                effective_includes: vec![entry.wtxid],
            };
            results.push(PackageTx {
                txid,
                wtxid,
                result: Ok(accepted),
            });
            continue;
        }
        let mut outcome = scratch.accept(&state.chain, tx, options(false));
        if index < last {
            if let Err(reason) = &outcome {
                if reason.reason == "min relay fee not met" {
                    outcome = scratch.accept(&state.chain, tx, options(true));
                    if outcome.is_ok() {
                        below_floor.push(index);
                    }
                }
            }
        }
        let result = outcome.map(|accepted| {
            replaced.extend(accepted.replaced.iter().copied());
            PackageAccepted {
                vsize: accepted.vsize,
                fee: accepted.fee,
                effective_kvb: accepted.fee.to_sat() * 1000 / accepted.vsize.max(1),
                effective_includes: vec![accepted.wtxid],
            }
        });
        results.push(PackageTx {
            txid,
            wtxid,
            result,
        });
    }
    if !below_floor.is_empty() {
        let members: Vec<usize> = below_floor.iter().copied().chain([last]).collect();
        let (mut fee, mut vsize) = (Amount::ZERO, 0u64);
        let mut includes = Vec::new();
        for &i in &members {
            if let Some(Ok(accepted)) = results.get(i).map(|r| &r.result) {
                fee += accepted.fee;
                vsize += accepted.vsize;
                includes.push(results[i].wtxid);
            }
        }
        let package_kvb = fee.to_sat() * 1000 / vsize.max(1);
        let child_ok = matches!(results.get(last).map(|r| &r.result), Some(Ok(_)));
        for &i in &members {
            if let Some(Ok(accepted)) = results.get_mut(i).map(|r| &mut r.result) {
                accepted.effective_kvb = package_kvb;
                accepted.effective_includes = includes.clone();
            }
        }
        if !child_ok || package_kvb < MIN_RELAY_SAT_PER_KVB {
            let min_fee = MIN_RELAY_SAT_PER_KVB * vsize / 1000;
            for &i in &below_floor {
                results[i].result = Err(RejectReason::rejected("min relay fee not met")
                    .details(format!("{} < {}", fee.to_sat(), min_fee)));
            }
        }
    }
    (scratch, results, replaced)
}

/// `submitpackage`: accepts the package as a whole when every member is valid (parents below
/// the relay floor count with their child); otherwise the members valid on their own are
/// accepted individually, as bitcoind keeps them too.
pub(crate) fn submit_package(state: &mut State, txs: &[Transaction]) -> PackageOutcome {
    let (scratch, results, replaced) = evaluate(state, txs);
    if results.iter().all(|r| r.result.is_ok()) {
        state.mempool = scratch;
        return PackageOutcome {
            message: "success".to_string(),
            txs: results,
            replaced,
        };
    }
    // Some member failed: keep only what stands on its own, in order.
    let mut replaced = Vec::new();
    for tx in txs {
        if state.mempool.get(&tx.compute_txid()).is_none() {
            if let Ok(accepted) = state.mempool.accept(&state.chain, tx, options(false)) {
                replaced.extend(accepted.replaced);
            }
        }
    }
    let txs = results
        .into_iter()
        .map(|mut r| {
            if r.result.is_ok() && state.mempool.get(&r.txid).is_none() {
                r.result = Err(RejectReason::rejected("package-not-validated")
                    .details("another package member failed"));
            }
            r
        })
        .collect();
    PackageOutcome {
        message: "transaction failed".to_string(),
        txs,
        replaced,
    }
}
