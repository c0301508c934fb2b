//! Automatic fee bumping as the sample node takes it, in one form for the
//! CLI (`--auto-bump TARGET_BLOCKS:MAX_FEERATE_SAT_PER_VB:MAX_FEE_SAT`),
//! the API (`"auto_bump": {"target_blocks", "max_feerate_sat_per_vb",
//! "max_fee_sat"}`) and the daemon's config (`[auto_bump]`, `--auto-bump`),
//! checked the same way everywhere before it reaches the node.

use bitcoin::{Amount, FeeRate};
use ldk_splice::{AutoBump, FeePolicy};
use serde::Deserialize;
use serde_json::{json, Value};

/// The most bitcoin there is, in sat.
const MAX_MONEY_SAT: u64 = 21_000_000 * 100_000_000;

/// The least `max_feerate_sat_per_vb` that can ever bump: splices pay at
/// least LDK's floor of 253 sat/kwu (just above 1 sat/vB), and a bump must
/// pay more than that.
pub const MIN_MAX_FEERATE_SAT_PER_VB: u64 = 2;

/// What `--auto-bump` looks like, for error messages.
pub const SPEC_FORM: &str = "TARGET_BLOCKS:MAX_FEERATE_SAT_PER_VB:MAX_FEE_SAT, e.g. 6:20:10000";

/// An automatic fee bumping budget as the API takes it: reach
/// `max_feerate_sat_per_vb` `target_blocks` blocks after the broadcast,
/// never paying more than `max_fee_sat` in fees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoBumpParams {
    /// Blocks after the broadcast by which the feerate reaches the maximum.
    pub target_blocks: u64,
    /// The highest feerate a bump may pay, in sat/vB.
    pub max_feerate_sat_per_vb: u64,
    /// The most our share of the fee may be, in sat.
    pub max_fee_sat: u64,
}

impl AutoBumpParams {
    /// Parses `TARGET_BLOCKS:MAX_FEERATE_SAT_PER_VB:MAX_FEE_SAT` (whole
    /// numbers; `_` allowed as a digit separator) and checks it.
    pub fn parse(spec: &str) -> Result<AutoBumpParams, String> {
        let bad = || format!("invalid auto-bump '{spec}': expected {SPEC_FORM}");
        let numbers: Vec<u64> = spec
            .split(':')
            .map(|part| part.trim().replace('_', "").parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let [target_blocks, max_feerate_sat_per_vb, max_fee_sat] = numbers[..] else {
            return Err(bad());
        };
        let params = AutoBumpParams {
            target_blocks,
            max_feerate_sat_per_vb,
            max_fee_sat,
        };
        params
            .policy()
            .map_err(|e| format!("invalid auto-bump '{spec}': {e}"))?;
        Ok(params)
    }

    /// The policy, checked: at least one block, a maximum feerate above
    /// the floor splices start at and within what LDK can express, a fee
    /// cap of at least 1 sat and at most 21 million BTC.
    pub fn policy(&self) -> Result<AutoBump, String> {
        let target_blocks = u32::try_from(self.target_blocks)
            .ok()
            .filter(|blocks| *blocks >= 1)
            .ok_or_else(|| {
                format!(
                    "target_blocks {} is out of range: from 1 to {}",
                    self.target_blocks,
                    u32::MAX
                )
            })?;
        let rate = self.max_feerate_sat_per_vb;
        let limit_vb = FeePolicy::LIMIT_FEERATE.to_sat_per_kwu() / 250;
        if rate < MIN_MAX_FEERATE_SAT_PER_VB {
            return Err(format!(
                "max_feerate_sat_per_vb {rate} can never bump: splices pay at least 1 sat/vB \
                 and a bump more, so it must be at least {MIN_MAX_FEERATE_SAT_PER_VB}"
            ));
        }
        let max_feerate = FeeRate::from_sat_per_vb(rate)
            .filter(|r| *r <= FeePolicy::LIMIT_FEERATE)
            .ok_or_else(|| {
                format!(
                    "max_feerate_sat_per_vb {rate} is more than LDK can express (at most \
                     {limit_vb})"
                )
            })?;
        let fee = self.max_fee_sat;
        if fee == 0 {
            return Err("max_fee_sat must be at least 1".into());
        }
        if fee > MAX_MONEY_SAT {
            return Err(format!("max_fee_sat {fee} is over 21 million BTC"));
        }
        Ok(AutoBump::new(
            target_blocks,
            max_feerate,
            Amount::from_sat(fee),
        ))
    }
}

/// A policy as the API shows it (feerates in sat/kwu, as records show them,
/// and in sat/vB, as they are given).
pub fn policy_json(policy: &AutoBump) -> Value {
    let kwu = policy.max_feerate.to_sat_per_kwu();
    json!({
        "target_blocks": policy.target_blocks,
        "max_feerate_sat_per_kwu": kwu,
        "max_feerate_sat_per_vb": kwu / 250,
        "max_fee_sat": policy.max_fee.to_sat(),
    })
}

/// A feerate in sat/vB, two decimals, for messages.
pub fn sat_per_vb(rate: FeeRate) -> String {
    format!("{:.2}", rate.to_sat_per_kwu() as f64 / 250.0)
}

/// The least whole sat/vB that pays at least `rate`.
pub fn whole_sat_per_vb_at_least(rate: FeeRate) -> u64 {
    rate.to_sat_per_kwu().div_ceil(250)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let params = AutoBumpParams::parse("6:20:10_000").unwrap();
        assert_eq!(
            params,
            AutoBumpParams {
                target_blocks: 6,
                max_feerate_sat_per_vb: 20,
                max_fee_sat: 10_000
            }
        );
        let policy = params.policy().unwrap();
        assert_eq!(policy.target_blocks, 6);
        assert_eq!(policy.max_feerate, FeeRate::from_sat_per_kwu(5_000));
        assert_eq!(policy.max_fee, Amount::from_sat(10_000));
        assert_eq!(policy_json(&policy)["max_feerate_sat_per_vb"], 20);

        let refused = |spec: &str, words: &[&str]| {
            let message = AutoBumpParams::parse(spec).unwrap_err();
            for word in words {
                assert!(message.contains(word), "{spec}: {message:?} lacks {word:?}");
            }
        };
        refused("6:20", &["expected TARGET_BLOCKS"]);
        refused("6:20:1000:1", &["expected TARGET_BLOCKS"]);
        refused("six:20:1000", &["expected TARGET_BLOCKS"]);
        refused("-1:20:1000", &["expected TARGET_BLOCKS"]);
        refused("0:20:1000", &["target_blocks 0", "from 1"]);
        refused("4294967296:20:1000", &["target_blocks 4294967296"]);
        refused("6:1:1000", &["max_feerate_sat_per_vb 1", "at least 2"]);
        refused(
            "6:18446744073709551615:1000",
            &["max_feerate_sat_per_vb", "LDK"],
        );
        refused("6:20000000:1000", &["max_feerate_sat_per_vb", "LDK"]);
        refused("6:20:0", &["max_fee_sat", "at least 1"]);
        refused("6:20:2100000000000001", &["21 million"]);
    }

    #[test]
    fn whole_feerates_round_up() {
        let rate = |kwu| FeeRate::from_sat_per_kwu(kwu);
        assert_eq!(whole_sat_per_vb_at_least(rate(5_208)), 21);
        assert_eq!(whole_sat_per_vb_at_least(rate(5_000)), 20);
        assert_eq!(whole_sat_per_vb_at_least(rate(278)), 2);
        assert_eq!(sat_per_vb(rate(5_208)), "20.83");
    }
}
