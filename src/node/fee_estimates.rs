//! Fee estimates from bitcoind's `estimatesmartfee`, one per confirmation
//! target LDK asks about plus one for channel funding and splices, each with
//! its own fallback for when bitcoind has no estimate (a fresh node, a
//! regtest chain, an RPC error).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bitcoin::FeeRate;
use lightning::chain::chaininterface::{ConfirmationTarget, FEERATE_FLOOR_SATS_PER_KW};
use lightning_block_sync::http::JsonResponse;
use lightning_block_sync::rpc::RpcClient;
use serde_json::json;

/// What the node estimates a feerate for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FeeTarget {
    /// One of LDK's confirmation targets.
    Ldk(ConfirmationTarget),
    /// Channel funding and splice transactions (LDK has no target for them).
    Funding,
}

impl std::fmt::Display for FeeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeeTarget::Ldk(target) => write!(f, "{target:?}"),
            FeeTarget::Funding => f.write_str("Funding"),
        }
    }
}

/// How one target is estimated: the block target asked of bitcoind and the
/// feerate used while bitcoind has no estimate.
#[derive(Debug, Clone, Copy)]
pub struct TargetPolicy {
    /// The target.
    pub target: FeeTarget,
    /// `conf_target` for `estimatesmartfee`.
    pub blocks: u16,
    /// Used while bitcoind gives no estimate.
    pub fallback: FeeRate,
}

const fn sat_per_vb(rate: u64) -> FeeRate {
    FeeRate::from_sat_per_kwu(rate * 250)
}

/// Every target, its block target and its fallback. Urgent claims and the
/// maximum estimate fall back well above the normal rate: a claim that must
/// confirm before a timelock runs out must not wait at 2 sat/vB, and the
/// maximum bounds the feerates we accept from peers. The minimums we allow
/// peers fall back to the relay floor, so that a missing estimate never
/// makes us refuse a peer's feerate and close the channel.
pub const FEE_TARGETS: [TargetPolicy; 9] = [
    TargetPolicy {
        target: FeeTarget::Ldk(ConfirmationTarget::MaximumFeeEstimate),
        blocks: 1,
        fallback: sat_per_vb(50),
    },
    TargetPolicy {
        target: FeeTarget::Ldk(ConfirmationTarget::UrgentOnChainSweep),
        blocks: 6,
        fallback: sat_per_vb(20),
    },
    TargetPolicy {
        target: FeeTarget::Ldk(ConfirmationTarget::MinAllowedAnchorChannelRemoteFee),
        blocks: 1008,
        fallback: FeeRate::from_sat_per_kwu(FEERATE_FLOOR_SATS_PER_KW as u64),
    },
    TargetPolicy {
        target: FeeTarget::Ldk(ConfirmationTarget::MinAllowedNonAnchorChannelRemoteFee),
        blocks: 144,
        fallback: FeeRate::from_sat_per_kwu(FEERATE_FLOOR_SATS_PER_KW as u64),
    },
    TargetPolicy {
        target: FeeTarget::Ldk(ConfirmationTarget::AnchorChannelFee),
        blocks: 1008,
        fallback: sat_per_vb(2),
    },
    TargetPolicy {
        target: FeeTarget::Ldk(ConfirmationTarget::NonAnchorChannelFee),
        blocks: 12,
        fallback: sat_per_vb(10),
    },
    TargetPolicy {
        target: FeeTarget::Ldk(ConfirmationTarget::ChannelCloseMinimum),
        blocks: 144,
        fallback: FeeRate::from_sat_per_kwu(FEERATE_FLOOR_SATS_PER_KW as u64),
    },
    TargetPolicy {
        target: FeeTarget::Ldk(ConfirmationTarget::OutputSpendingFee),
        blocks: 12,
        fallback: sat_per_vb(4),
    },
    TargetPolicy {
        target: FeeTarget::Funding,
        blocks: 6,
        fallback: sat_per_vb(10),
    },
];

/// One target's current estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeEstimate {
    /// The target.
    pub target: FeeTarget,
    /// The feerate in use.
    pub feerate: FeeRate,
    /// Whether it is the fallback (bitcoind gave no estimate).
    pub fallback: bool,
}

struct Slot {
    policy: TargetPolicy,
    sat_per_kwu: AtomicU32,
    fallback: AtomicBool,
}

/// The cached estimates, refreshed from bitcoind and read by LDK without
/// waiting (LDK asks often, from inside its locks).
pub(crate) struct FeeEstimates {
    slots: Vec<Slot>,
}

impl FeeEstimates {
    /// Every target at its fallback until the first refresh.
    pub(crate) fn new() -> Self {
        FeeEstimates {
            slots: FEE_TARGETS
                .iter()
                .map(|policy| Slot {
                    policy: *policy,
                    sat_per_kwu: AtomicU32::new(to_u32(policy.fallback)),
                    fallback: AtomicBool::new(true),
                })
                .collect(),
        }
    }

    fn slot(&self, target: FeeTarget) -> Option<&Slot> {
        self.slots.iter().find(|s| s.policy.target == target)
    }

    /// The feerate for `target`, in sat per 1000 weight units.
    pub(crate) fn sat_per_kwu(&self, target: FeeTarget) -> u32 {
        self.slot(target)
            .map(|slot| slot.sat_per_kwu.load(Ordering::Acquire))
            .unwrap_or(FEERATE_FLOOR_SATS_PER_KW)
    }

    /// Every target's estimate now.
    pub(crate) fn all(&self) -> Vec<FeeEstimate> {
        self.slots
            .iter()
            .map(|slot| FeeEstimate {
                target: slot.policy.target,
                feerate: FeeRate::from_sat_per_kwu(u64::from(
                    slot.sat_per_kwu.load(Ordering::Acquire),
                )),
                fallback: slot.fallback.load(Ordering::Acquire),
            })
            .collect()
    }

    /// Asks bitcoind for every target. A target it cannot estimate goes to
    /// (or stays at) its fallback, with a warning when it goes there.
    pub(crate) async fn refresh(&self, rpc: &RpcClient) {
        for slot in &self.slots {
            let estimate = estimate_smart_fee(rpc, slot.policy.blocks).await;
            let (rate, fallback) = match estimate {
                Ok(rate) => (rate, false),
                Err(why) => {
                    if !slot.fallback.load(Ordering::Acquire)
                        || slot.sat_per_kwu.load(Ordering::Acquire) != to_u32(slot.policy.fallback)
                    {
                        log::warn!(
                            "no fee estimate for {} ({} blocks) from bitcoind ({why}): using the fallback of {} sat/vB",
                            slot.policy.target,
                            slot.policy.blocks,
                            slot.policy.fallback.to_sat_per_vb_ceil()
                        );
                    }
                    (slot.policy.fallback, true)
                }
            };
            let was_fallback = slot.fallback.swap(fallback, Ordering::AcqRel);
            if was_fallback && !fallback {
                log::info!(
                    "fee estimate for {} from bitcoind: {} sat/kwu",
                    slot.policy.target,
                    rate.to_sat_per_kwu()
                );
            }
            slot.sat_per_kwu.store(to_u32(rate), Ordering::Release);
        }
    }

    /// Logs which targets run on their fallback (once, at start).
    pub(crate) fn log_fallbacks(&self) {
        for estimate in self.all().iter().filter(|e| e.fallback) {
            log::warn!(
                "fee estimate for {} is the fallback of {} sat/vB: bitcoind has none",
                estimate.target,
                estimate.feerate.to_sat_per_vb_ceil()
            );
        }
    }
}

fn to_u32(rate: FeeRate) -> u32 {
    u32::try_from(rate.to_sat_per_kwu())
        .unwrap_or(u32::MAX)
        .max(FEERATE_FLOOR_SATS_PER_KW)
}

/// `estimatesmartfee blocks ECONOMICAL`, as a feerate; `Err` with why not.
async fn estimate_smart_fee(rpc: &RpcClient, blocks: u16) -> Result<FeeRate, String> {
    let JsonResponse(value) = rpc
        .call_method("estimatesmartfee", &[json!(blocks), json!("ECONOMICAL")])
        .await
        .map_err(|e| e.to_string())?;
    let Some(btc_per_kvb) = value["feerate"].as_f64() else {
        let errors = value["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "no feerate in the answer".into());
        return Err(errors);
    };
    // BTC per kvB -> sat per 1000 weight units.
    let sat_per_kwu = (btc_per_kvb * 100_000_000.0 / 4.0).round();
    if !(sat_per_kwu.is_finite() && sat_per_kwu >= 0.0 && sat_per_kwu <= u32::MAX as f64) {
        return Err(format!("feerate {btc_per_kvb} BTC/kvB out of range"));
    }
    Ok(FeeRate::from_sat_per_kwu(sat_per_kwu as u64))
}
