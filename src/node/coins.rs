//! Preparing wallet coins for a batch: LDK funds each splice from
//! confirmed coins of its own, so a batch of N splice-ins needs N coins. A
//! wallet holding fewer splits one with a transaction of its own first.

use bitcoin::{FeeRate, OutPoint, Txid};

use super::*;

/// A transaction of ours splitting wallet coins into coins of given values
/// (see [`Node::prepare_coins`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoinPreparation {
    /// The transaction.
    pub txid: Txid,
    /// Its fee.
    pub fee: Amount,
    /// The coins it makes, with their values, in the order asked.
    pub coins: Vec<(OutPoint, Amount)>,
}

impl Node {
    /// Splits wallet coins into new coins of the wallet worth `amounts`, in
    /// one transaction at `feerate`, and broadcasts it. Once it confirms,
    /// each new coin can fund a splice of its own (LDK funds splices from
    /// confirmed coins only). Spends only coins no splice holds.
    pub async fn prepare_coins(
        &self,
        amounts: &[Amount],
        feerate: FeeRate,
    ) -> Result<CoinPreparation, NodeError> {
        let (tx, preparation) = self.build_preparation(amounts, feerate)?;
        if let Err(e) = self.bitcoind.send_transaction(&tx).await {
            if let Err(unlock) = self.wallet.payment_abandoned(&tx) {
                log::warn!("could not free the coins of the split: {unlock}");
            }
            return Err(NodeError::Chain(format!(
                "the split transaction was refused: {e}"
            )));
        }
        self.wallet.payment_sent(&tx)?;
        log::info!(
            "split wallet coins into {} in {} (fee {} sat)",
            amounts.len(),
            preparation.txid,
            preparation.fee.to_sat()
        );
        Ok(preparation)
    }

    /// What [`Node::prepare_coins`] would pay, without sending anything.
    pub fn quote_prepare_coins(
        &self,
        amounts: &[Amount],
        feerate: FeeRate,
    ) -> Result<CoinPreparation, NodeError> {
        let (tx, preparation) = self.build_preparation(amounts, feerate)?;
        self.wallet.payment_abandoned(&tx)?;
        Ok(preparation)
    }

    /// Splits wallet coins into one coin for each splice-in leg of `plan`
    /// (its amount and its fee at the plan's feerate), at the plan's
    /// feerate: after it confirms, `start_batch(plan)` finds a coin for
    /// every leg. Refused when the wallet has enough coins already.
    pub async fn prepare_coins_for_batch(
        &self,
        plan: &BatchPlan,
    ) -> Result<CoinPreparation, NodeError> {
        let amounts = self.coins_needed_for_batch(plan)?;
        let feerate = self.coordinator.feerate(&plan.fee)?;
        self.prepare_coins(&amounts, feerate).await
    }

    /// What [`Node::prepare_coins_for_batch`] would pay, without sending
    /// anything.
    pub fn quote_prepare_coins_for_batch(
        &self,
        plan: &BatchPlan,
    ) -> Result<CoinPreparation, NodeError> {
        let amounts = self.coins_needed_for_batch(plan)?;
        let feerate = self.coordinator.feerate(&plan.fee)?;
        self.quote_prepare_coins(&amounts, feerate)
    }

    fn coins_needed_for_batch(&self, plan: &BatchPlan) -> Result<Vec<Amount>, NodeError> {
        let amounts = self.batches.coins_for_batch(plan)?;
        let coins = self.coordinator.wallet.spendable_coins().len();
        if amounts.len() <= coins {
            return Err(NodeError::InvalidInput(format!(
                "the wallet has {coins} confirmed, unreserved coins for the batch's {} \
                 splice-in legs already",
                amounts.len()
            )));
        }
        Ok(amounts)
    }

    fn build_preparation(
        &self,
        amounts: &[Amount],
        feerate: FeeRate,
    ) -> Result<(bitcoin::Transaction, CoinPreparation), NodeError> {
        if amounts.is_empty() {
            return Err(NodeError::InvalidInput("no coins asked for".into()));
        }
        let mut recipients = Vec::with_capacity(amounts.len());
        for amount in amounts {
            if *amount < Amount::from_sat(330) || *amount > Amount::MAX_MONEY {
                return Err(NodeError::InvalidInput(format!(
                    "a coin of {} sat cannot be made",
                    amount.to_sat()
                )));
            }
            recipients.push((self.new_address()?.script_pubkey(), *amount));
        }
        let tx = self.wallet.build_payment_to(&recipients, feerate)?;
        let txid = tx.compute_txid();
        let mut coins = Vec::with_capacity(recipients.len());
        let mut used = Vec::new();
        for (script, amount) in &recipients {
            let vout = tx
                .output
                .iter()
                .enumerate()
                .position(|(i, o)| {
                    !used.contains(&i) && o.script_pubkey == *script && o.value == *amount
                })
                .ok_or_else(|| NodeError::Storage("the split lacks an output".into()))?;
            used.push(vout);
            coins.push((
                OutPoint {
                    txid,
                    vout: vout as u32,
                },
                *amount,
            ));
        }
        let spent: Amount = tx
            .input
            .iter()
            .filter_map(|i| self.wallet.owned_output(&i.previous_output))
            .map(|o| o.value)
            .sum();
        let out: Amount = tx.output.iter().map(|o| o.value).sum();
        let fee = spent
            .checked_sub(out)
            .ok_or_else(|| NodeError::Storage("the split creates money".into()))?;
        Ok((tx, CoinPreparation { txid, fee, coins }))
    }
}
