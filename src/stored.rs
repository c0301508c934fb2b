//! The journal's form of splice and batch records: private types, so the
//! public records can change without changing what is on disk (and the
//! other way round). The journal wraps each body with its format version.
//! Amounts are in sat, feerates in sat/kwu, times in Unix seconds.

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate, OutPoint, SignedAmount, Txid};
use lightning::ln::types::ChannelId;
use serde::{Deserialize, Serialize};

use crate::batch::{BatchPart, BatchRecord};
use crate::ids::{from_unix_seconds, to_unix_seconds, BatchId, SpliceId};
use crate::record::{
    AutoBump, AutoBumpState, BatchState, FeeBump, SpliceCandidate, SpliceOrigin, SpliceOutput,
    SpliceRecord, SpliceState,
};

/// A splice record as the journal stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredSplice {
    id: SpliceId,
    #[serde(with = "crate::ids::channel_id_hex")]
    channel_id: ChannelId,
    counterparty: PublicKey,
    #[serde(default)]
    origin: SpliceOrigin,
    #[serde(flatten)]
    state: SpliceState,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    add: Amount,
    outputs: Vec<SpliceOutput>,
    feerate_sat_per_kwu: u64,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    fee: Amount,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    max_fee: Amount,
    max_feerate_sat_per_kwu: u64,
    inputs: Vec<OutPoint>,
    change: Option<SpliceOutput>,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    capacity_before: Amount,
    net_value_sat: i64,
    txid: Option<Txid>,
    #[serde(default)]
    candidates: Vec<StoredCandidate>,
    confirmation_height: Option<u32>,
    #[serde(default)]
    batch: Option<BatchId>,
    #[serde(default)]
    sign_with_batch: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bump: Option<StoredBump>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auto_bump: Option<StoredAutoBump>,
    created_at: u64,
    updated_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredAutoBump {
    target_blocks: u32,
    max_feerate_sat_per_kwu: u64,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    max_fee: Amount,
    start_feerate_sat_per_kwu: u64,
    start_height: Option<u32>,
    last_bump_height: Option<u32>,
    stopped: Option<String>,
}

impl From<&AutoBumpState> for StoredAutoBump {
    fn from(a: &AutoBumpState) -> Self {
        StoredAutoBump {
            target_blocks: a.policy.target_blocks,
            max_feerate_sat_per_kwu: a.policy.max_feerate.to_sat_per_kwu(),
            max_fee: a.policy.max_fee,
            start_feerate_sat_per_kwu: a.start_feerate.to_sat_per_kwu(),
            start_height: a.start_height,
            last_bump_height: a.last_bump_height,
            stopped: a.stopped.clone(),
        }
    }
}

impl From<StoredAutoBump> for AutoBumpState {
    fn from(a: StoredAutoBump) -> Self {
        AutoBumpState {
            policy: AutoBump::new(
                a.target_blocks,
                FeeRate::from_sat_per_kwu(a.max_feerate_sat_per_kwu),
                a.max_fee,
            ),
            start_feerate: FeeRate::from_sat_per_kwu(a.start_feerate_sat_per_kwu),
            start_height: a.start_height,
            last_bump_height: a.last_bump_height,
            stopped: a.stopped,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredBump {
    feerate_sat_per_kwu: u64,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    fee: Amount,
    #[serde(default)]
    added_inputs: Vec<OutPoint>,
    #[serde(default)]
    candidates_before: usize,
    #[serde(default)]
    batch: Option<BatchId>,
    started_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredCandidate {
    txid: Txid,
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    fee: Amount,
    #[serde(with = "bitcoin::amount::serde::as_sat::opt")]
    change: Option<Amount>,
    net_value_sat: i64,
}

impl From<&SpliceRecord> for StoredSplice {
    fn from(r: &SpliceRecord) -> Self {
        StoredSplice {
            id: r.id,
            channel_id: r.channel_id,
            counterparty: r.counterparty,
            origin: r.origin,
            state: r.state.clone(),
            add: r.add,
            outputs: r.outputs.clone(),
            feerate_sat_per_kwu: r.feerate.to_sat_per_kwu(),
            fee: r.fee,
            max_fee: r.max_fee,
            max_feerate_sat_per_kwu: r.max_feerate.to_sat_per_kwu(),
            inputs: r.inputs.clone(),
            change: r.change.clone(),
            capacity_before: r.capacity_before,
            net_value_sat: r.net_value.to_sat(),
            txid: r.txid,
            candidates: r
                .candidates
                .iter()
                .map(|c| StoredCandidate {
                    txid: c.txid,
                    fee: c.fee,
                    change: c.change,
                    net_value_sat: c.net_value.to_sat(),
                })
                .collect(),
            confirmation_height: r.confirmation_height,
            batch: r.batch,
            sign_with_batch: r.sign_with_batch,
            bump: r.bump.as_ref().map(|b| StoredBump {
                feerate_sat_per_kwu: b.feerate.to_sat_per_kwu(),
                fee: b.fee,
                added_inputs: b.added_inputs.clone(),
                candidates_before: b.candidates_before,
                batch: b.batch,
                started_at: to_unix_seconds(b.started_at),
            }),
            auto_bump: r.auto_bump.as_ref().map(StoredAutoBump::from),
            created_at: to_unix_seconds(r.created_at),
            updated_at: to_unix_seconds(r.updated_at),
        }
    }
}

impl From<StoredSplice> for SpliceRecord {
    fn from(s: StoredSplice) -> Self {
        SpliceRecord {
            id: s.id,
            channel_id: s.channel_id,
            counterparty: s.counterparty,
            origin: s.origin,
            state: s.state,
            add: s.add,
            outputs: s.outputs,
            feerate: FeeRate::from_sat_per_kwu(s.feerate_sat_per_kwu),
            fee: s.fee,
            max_fee: s.max_fee,
            max_feerate: FeeRate::from_sat_per_kwu(s.max_feerate_sat_per_kwu),
            inputs: s.inputs,
            change: s.change,
            capacity_before: s.capacity_before,
            net_value: SignedAmount::from_sat(s.net_value_sat),
            txid: s.txid,
            candidates: s
                .candidates
                .into_iter()
                .map(|c| SpliceCandidate {
                    txid: c.txid,
                    fee: c.fee,
                    change: c.change,
                    net_value: SignedAmount::from_sat(c.net_value_sat),
                })
                .collect(),
            confirmation_height: s.confirmation_height,
            batch: s.batch,
            sign_with_batch: s.sign_with_batch,
            bump: s.bump.map(|b| FeeBump {
                feerate: FeeRate::from_sat_per_kwu(b.feerate_sat_per_kwu),
                fee: b.fee,
                added_inputs: b.added_inputs,
                candidates_before: b.candidates_before,
                batch: b.batch,
                started_at: from_unix_seconds(b.started_at),
            }),
            auto_bump: s.auto_bump.map(AutoBumpState::from),
            created_at: from_unix_seconds(s.created_at),
            updated_at: from_unix_seconds(s.updated_at),
        }
    }
}

/// A batch record as the journal stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredBatch {
    id: BatchId,
    #[serde(flatten)]
    state: BatchState,
    parts: Vec<BatchPart>,
    max_feerate_sat_per_kwu: u64,
    max_fee_sat: u64,
    feerate_sat_per_kwu: u64,
    deadline: u64,
    created_at: u64,
}

impl From<&BatchRecord> for StoredBatch {
    fn from(b: &BatchRecord) -> Self {
        StoredBatch {
            id: b.id,
            state: b.state.clone(),
            parts: b.parts.clone(),
            max_feerate_sat_per_kwu: b.max_feerate.to_sat_per_kwu(),
            max_fee_sat: b.max_fee.to_sat(),
            feerate_sat_per_kwu: b.feerate.to_sat_per_kwu(),
            deadline: to_unix_seconds(b.deadline),
            created_at: to_unix_seconds(b.created_at),
        }
    }
}

impl From<StoredBatch> for BatchRecord {
    fn from(s: StoredBatch) -> Self {
        BatchRecord {
            id: s.id,
            state: s.state,
            parts: s.parts,
            max_feerate: FeeRate::from_sat_per_kwu(s.max_feerate_sat_per_kwu),
            max_fee: Amount::from_sat(s.max_fee_sat),
            feerate: FeeRate::from_sat_per_kwu(s.feerate_sat_per_kwu),
            deadline: from_unix_seconds(s.deadline),
            created_at: from_unix_seconds(s.created_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record body as this format has always written it.
    const WRITTEN: &str = r#"{
        "id": 4, "channel_id": "7de2ae042a66a3210c22f3382ab38dff72c2b8e2ad74300a496df290b30e3359",
        "counterparty": "03740ddea4a8b643d9834f36bf0af2cd541d3489ff534a219739e0579c28b00fd0",
        "origin": "ours", "state": "confirmed", "depth": 1, "add": 50000, "outputs": [],
        "feerate_sat_per_kwu": 500, "fee": 496, "max_fee": 50000, "max_feerate_sat_per_kwu": 25000,
        "inputs": ["8cdbb1f0b719c3f2c37cdf3965b08f196d5351773a2bab20b69c8f713289e3c8:0"],
        "change": {"script_pubkey": "0014b134e81fba1239a9509fed3f84e76633e54ae919", "value": 4998898703},
        "capacity_before": 1050000, "net_value_sat": 50000,
        "txid": "0afae536c15e0f05c3d64698176293e25142c9d2a13d82a3813f1da6e90334a2",
        "candidates": [{"change": 4998898703, "fee": 496, "net_value_sat": 50000,
                        "txid": "0afae536c15e0f05c3d64698176293e25142c9d2a13d82a3813f1da6e90334a2"}],
        "confirmation_height": 118, "batch": null, "sign_with_batch": false,
        "created_at": 1795616662, "updated_at": 1795616663
    }"#;

    #[test]
    fn written_records_read_back_typed_and_write_the_same() {
        let written: serde_json::Value = serde_json::from_str(WRITTEN).unwrap();
        let stored: StoredSplice = serde_json::from_value(written.clone()).unwrap();
        let record = SpliceRecord::from(stored);
        assert_eq!(record.feerate, FeeRate::from_sat_per_kwu(500));
        assert_eq!(record.max_feerate, FeeRate::from_sat_per_kwu(25_000));
        assert_eq!(record.net_value, SignedAmount::from_sat(50_000));
        assert_eq!(
            record.candidates[0].net_value,
            SignedAmount::from_sat(50_000)
        );
        assert_eq!(
            record.created_at,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_616_662)
        );
        assert_eq!(record.state, SpliceState::Confirmed { depth: 1 });
        let again = serde_json::to_value(StoredSplice::from(&record)).unwrap();
        assert_eq!(again, written, "the disk format is unchanged");
    }
}
