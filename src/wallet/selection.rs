//! Coin selection for splice contributions: branch and bound for a
//! changeless solution, otherwise smallest-first with change.

use bitcoin::{Amount, FeeRate, Weight};

/// A coin the selection may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Its value.
    pub value: Amount,
    /// The weight of spending it (outpoint, sequence, script_sig and witness).
    pub input_weight: Weight,
}

/// What the selection must pay for besides the coins it picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Value the picked coins must provide (outputs minus inputs that are
    /// already fixed).
    pub value: Amount,
    /// Weight of everything already in the transaction.
    pub fixed_weight: Weight,
    /// The feerate to pay.
    pub feerate: FeeRate,
    /// Weight of a change output.
    pub change_weight: Weight,
    /// Smallest change output worth making.
    pub dust_limit: Amount,
    /// What spending a change output later costs (for deciding whether
    /// dropping the change is cheaper than making it).
    pub change_spend_weight: Weight,
}

/// The coins picked, by index into the candidates, and the change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Indices of the picked candidates.
    pub picked: Vec<usize>,
    /// The change output's value, if one is made.
    pub change: Option<Amount>,
}

const BNB_MAX_TRIES: usize = 100_000;

fn fee(feerate: FeeRate, weight: Weight) -> Amount {
    feerate.fee_wu(weight).unwrap_or(Amount::MAX_MONEY)
}

/// Picks coins to meet `target`. A changeless set whose leftover is smaller
/// than the cost of making and later spending change is preferred (the
/// leftover then goes to the channel, not to miners); otherwise coins are
/// added smallest effective value first and the rest comes back as change.
pub fn select(candidates: &[Candidate], target: &Target) -> Option<Selection> {
    let needed = target
        .value
        .checked_add(fee(target.feerate, target.fixed_weight))?;
    // Effective value: what a coin brings after paying for its own input.
    let mut usable: Vec<(usize, i64)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let effective =
                c.value.to_sat() as i64 - fee(target.feerate, c.input_weight).to_sat() as i64;
            (effective > 0).then_some((i, effective))
        })
        .collect();
    let cost_of_change =
        fee(target.feerate, target.change_weight) + fee(target.feerate, target.change_spend_weight);

    usable.sort_by_key(|c| std::cmp::Reverse(c.1));
    if let Some(picked) = branch_and_bound(
        &usable,
        needed.to_sat() as i64,
        cost_of_change.to_sat() as i64,
    ) {
        return Some(Selection {
            picked,
            change: None,
        });
    }

    // Smallest first, so big coins stay whole for later.
    usable.reverse();
    let mut total = Amount::ZERO;
    let mut weight = target.fixed_weight;
    let mut picked = Vec::new();
    for (index, _) in &usable {
        let coin = &candidates[*index];
        picked.push(*index);
        total += coin.value;
        weight += coin.input_weight;
        let Some(leftover) = total.checked_sub(target.value) else {
            continue;
        };
        if leftover < fee(target.feerate, weight) {
            continue;
        }
        // The change is what is left once the whole transaction, change
        // output included, pays the feerate: the same sum LDK makes.
        let change = leftover
            .checked_sub(fee(target.feerate, weight + target.change_weight))
            .filter(|change| *change >= target.dust_limit);
        return Some(Selection { picked, change });
    }
    None
}

/// Depth-first search for a set whose effective value lands in
/// `[needed, needed + tolerance]`, largest coins first, bounded in tries.
fn branch_and_bound(sorted: &[(usize, i64)], needed: i64, tolerance: i64) -> Option<Vec<usize>> {
    let total: i64 = sorted.iter().map(|(_, v)| v).sum();
    if total < needed {
        return None;
    }
    // remaining[i]: sum of effective values from i on.
    let mut remaining = vec![0i64; sorted.len() + 1];
    for i in (0..sorted.len()).rev() {
        remaining[i] = remaining[i + 1] + sorted[i].1;
    }
    let mut best: Option<(i64, Vec<usize>)> = None;
    let mut chosen: Vec<usize> = Vec::new();
    let mut tries = 0usize;
    search(
        sorted,
        &remaining,
        0,
        0,
        needed,
        tolerance,
        &mut chosen,
        &mut best,
        &mut tries,
    );
    best.map(|(_, picked)| picked.into_iter().map(|i| sorted[i].0).collect())
}

#[allow(clippy::too_many_arguments)]
fn search(
    sorted: &[(usize, i64)],
    remaining: &[i64],
    depth: usize,
    sum: i64,
    needed: i64,
    tolerance: i64,
    chosen: &mut Vec<usize>,
    best: &mut Option<(i64, Vec<usize>)>,
    tries: &mut usize,
) {
    *tries += 1;
    if *tries > BNB_MAX_TRIES || sum > needed + tolerance {
        return;
    }
    if sum >= needed {
        let waste = sum - needed;
        if best.as_ref().is_none_or(|(w, _)| waste < *w) {
            *best = Some((waste, chosen.clone()));
        }
        return;
    }
    if depth == sorted.len() || sum + remaining[depth] < needed {
        return;
    }
    chosen.push(depth);
    search(
        sorted,
        remaining,
        depth + 1,
        sum + sorted[depth].1,
        needed,
        tolerance,
        chosen,
        best,
        tries,
    );
    chosen.pop();
    if best.as_ref().is_some_and(|(w, _)| *w == 0) {
        return;
    }
    search(
        sorted,
        remaining,
        depth + 1,
        sum,
        needed,
        tolerance,
        chosen,
        best,
        tries,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(value: u64) -> Target {
        Target {
            value: Amount::from_sat(value),
            fixed_weight: Weight::from_wu(500),
            feerate: FeeRate::from_sat_per_kwu(1000),
            change_weight: Weight::from_wu(124),
            dust_limit: Amount::from_sat(294),
            change_spend_weight: Weight::from_wu(272),
        }
    }

    fn coin(value: u64) -> Candidate {
        Candidate {
            value: Amount::from_sat(value),
            input_weight: Weight::from_wu(272),
        }
    }

    #[test]
    fn exact_match_needs_no_change() {
        // 10_000 + 500 fixed fee; each coin costs 272 to spend.
        let coins = [coin(50_000), coin(6_272), coin(4_772)];
        let selection = select(&coins, &target(10_000)).unwrap();
        let mut picked = selection.picked.clone();
        picked.sort();
        assert_eq!(picked, vec![1, 2]);
        assert_eq!(selection.change, None);
    }

    #[test]
    fn no_exact_match_makes_change_smallest_first() {
        let coins = [coin(50_000), coin(100_000)];
        let selection = select(&coins, &target(10_000)).unwrap();
        assert_eq!(selection.picked, vec![0]);
        // 50_000 - 10_000 - fee of (500 fixed + 272 input + 124 change) weight
        assert_eq!(selection.change, Some(Amount::from_sat(39_104)));
    }

    #[test]
    fn not_enough_is_none() {
        assert_eq!(select(&[coin(5_000)], &target(10_000)), None);
        assert_eq!(select(&[], &target(1)), None);
    }

    #[test]
    fn coins_worth_less_than_their_input_fee_are_skipped() {
        let coins = [coin(200), coin(20_000)];
        let selection = select(&coins, &target(10_000)).unwrap();
        assert_eq!(selection.picked, vec![1]);
    }
}
