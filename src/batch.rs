//! Multi-channel batches: validate every leg, negotiate all at once, sign
//! all or none.
//!
//! LDK negotiates one funding transaction per channel, so a batch over N
//! channels is N transactions, signed together: no leg is signed until every
//! leg is ready to sign, and if any leg fails first, every other leg is
//! cancelled and every coin released. After signing each transaction
//! confirms on its own.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::time::Duration;

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, Transaction, Weight};
use lightning::chain::chaininterface::FeeEstimator;
use lightning::ln::channelmanager::AChannelManager;
use lightning::ln::types::ChannelId;
use serde::{Deserialize, Serialize};

use crate::coordinator::{Destination, PlanMode, ResizeRequest, SpliceCoordinator, State};
use crate::error::SpliceError;
use crate::events::SpliceEvent;
use crate::fees::{weights, FeePolicy};
use crate::journal::{unix_now, SpliceId, SpliceState};
use crate::wallet::{CoinPool, SharedStore, PERSISTENCE_NAMESPACE};
use std::sync::Arc;

const BATCHES_NAMESPACE: &str = "batches";

/// A channel, named by its id and counterparty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelRef {
    /// The channel id.
    pub channel_id: ChannelId,
    /// The counterparty.
    pub counterparty: PublicKey,
}

/// One step of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leg {
    /// Add wallet funds to a channel.
    SpliceIn {
        /// The channel.
        channel: ChannelRef,
        /// How much.
        amount: Amount,
    },
    /// Pay channel funds out.
    SpliceOut {
        /// The channel.
        channel: ChannelRef,
        /// How much.
        amount: Amount,
        /// Where to.
        to: Destination,
    },
    /// Move liquidity: splice `amount` out of `from` to our wallet and into
    /// `to`. When the wallet's confirmed, unreserved coins cover the
    /// splice-in, both run in the batch; otherwise the splice-in waits and
    /// starts by itself once the splice-out's output confirms.
    Move {
        /// The channel giving.
        from: ChannelRef,
        /// The channel receiving.
        to: ChannelRef,
        /// How much.
        amount: Amount,
    },
}

/// A batch of splices over several channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// The legs, each channel in at most one.
    pub legs: Vec<Leg>,
    /// The fee policy for every leg.
    pub fee: FeePolicy,
    /// How long the legs may take to all be ready to sign before the batch
    /// is cancelled.
    pub deadline: Duration,
}

impl BatchPlan {
    /// The default time for every leg to be ready to sign: 60 s.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

    /// An empty plan with `fee` and the default deadline.
    pub fn new(fee: FeePolicy) -> Self {
        BatchPlan {
            legs: Vec::new(),
            fee,
            deadline: Self::DEFAULT_DEADLINE,
        }
    }

    /// Adds a leg.
    pub fn leg(mut self, leg: Leg) -> Self {
        self.legs.push(leg);
        self
    }

    /// Sets the deadline for reaching signatures.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

/// Identifies a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BatchId(pub u64);

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch-{}", self.0)
    }
}

impl std::str::FromStr for BatchId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("batch-").unwrap_or(s).parse().map(BatchId)
    }
}

/// Where a batch stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BatchState {
    /// Legs are negotiating; none is signed.
    Negotiating,
    /// Every leg in the batch was signed; waiting for confirmations (and for
    /// any queued move to start).
    Signed,
    /// Every leg is locked.
    Locked,
    /// A leg failed before signing; every leg was cancelled.
    Failed {
        /// The leg that failed.
        leg: usize,
        /// Why.
        reason: String,
    },
    /// Cancelled by the user before signing.
    Cancelled,
}

impl std::fmt::Display for BatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchState::Negotiating => write!(f, "negotiating"),
            BatchState::Signed => write!(f, "signed"),
            BatchState::Locked => write!(f, "locked"),
            BatchState::Failed { leg, reason } => write!(f, "failed at leg {leg}: {reason}"),
            BatchState::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// What one splice of a batch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegRole {
    /// A splice-in leg.
    SpliceIn,
    /// A splice-out leg.
    SpliceOut,
    /// The splice-out half of a move.
    MoveOut,
    /// The splice-in half of a move.
    MoveIn,
}

/// One splice of a batch (a move has two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPart {
    /// The plan leg it comes from.
    pub leg: usize,
    /// What it does.
    pub role: LegRole,
    /// Its channel.
    #[serde(with = "crate::journal::channel_id_hex")]
    pub channel_id: ChannelId,
    /// The channel's counterparty.
    pub counterparty: PublicKey,
    /// How much it moves.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub amount: Amount,
    /// Its splice, once started.
    pub splice: Option<SpliceId>,
    /// A move's splice-in waiting for the splice-out's output to confirm.
    pub queued: bool,
}

/// A batch and its legs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// Its id.
    pub id: BatchId,
    /// Where it stands.
    #[serde(flatten)]
    pub state: BatchState,
    /// Its splices.
    pub parts: Vec<BatchPart>,
    /// The fee policy's feerate cap, in sat/kwu (queued legs use it).
    pub max_feerate_sat_per_kwu: u64,
    /// The fee policy's fee cap, in sat (queued legs use it).
    pub max_fee_sat: u64,
    /// The feerate every leg uses, in sat/kwu.
    pub feerate_sat_per_kwu: u64,
    /// Unix time by which every leg must be ready to sign.
    pub deadline: u64,
    /// Unix time of the request.
    pub created_at: u64,
}

/// One leg's share of a batch quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegQuote {
    /// The plan leg.
    pub leg: usize,
    /// What this splice does.
    pub role: LegRole,
    /// Its fee.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub fee: Amount,
    /// Its transaction's weight.
    pub weight_wu: u64,
    /// Wallet coins it would spend.
    pub inputs: Vec<bitcoin::OutPoint>,
    /// Whether it would wait for a splice-out to confirm first.
    pub queued: bool,
}

/// What a batch would cost, worked out without reserving or sending
/// anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchQuote {
    /// Every splice of the batch.
    pub legs: Vec<LegQuote>,
    /// All fees.
    #[serde(with = "bitcoin::amount::serde::as_sat")]
    pub total_fee: Amount,
    /// The weight of all the batch's transactions (one per channel).
    pub total_weight_wu: u64,
    /// What one transaction carrying the whole batch would weigh, for
    /// comparison: LDK negotiates one transaction per channel, so the batch
    /// pays for the common fields (and a change output) once per channel.
    pub single_tx_weight_wu: u64,
}

/// Batches in memory and in the store, plus the transactions held for
/// signing until every leg of their batch is ready.
pub(crate) struct BatchBook {
    store: SharedStore,
    records: BTreeMap<BatchId, BatchRecord>,
    held: HashMap<SpliceId, Transaction>,
}

impl BatchBook {
    pub(crate) fn load(store: SharedStore) -> Result<Self, SpliceError> {
        let mut records = BTreeMap::new();
        let keys = store
            .list(PERSISTENCE_NAMESPACE, BATCHES_NAMESPACE)
            .map_err(|e| SpliceError::Persistence(e.to_string()))?;
        for key in keys {
            let bytes = store
                .read(PERSISTENCE_NAMESPACE, BATCHES_NAMESPACE, &key)
                .map_err(|e| SpliceError::Persistence(e.to_string()))?;
            let record: BatchRecord = serde_json::from_slice(&bytes)
                .map_err(|e| SpliceError::Persistence(format!("unreadable batch {key}: {e}")))?;
            records.insert(record.id, record);
        }
        Ok(BatchBook {
            store,
            records,
            held: HashMap::new(),
        })
    }

    fn next_id(&self) -> BatchId {
        BatchId(self.records.keys().next_back().map_or(1, |id| id.0 + 1))
    }

    fn put(&mut self, record: BatchRecord) -> Result<(), SpliceError> {
        let bytes =
            serde_json::to_vec(&record).map_err(|e| SpliceError::Persistence(e.to_string()))?;
        self.store
            .write(
                PERSISTENCE_NAMESPACE,
                BATCHES_NAMESPACE,
                &record.id.0.to_string(),
                bytes,
            )
            .map_err(|e| SpliceError::Persistence(e.to_string()))?;
        self.records.insert(record.id, record);
        Ok(())
    }

    fn get(&self, id: BatchId) -> Option<&BatchRecord> {
        self.records.get(&id)
    }
}

/// A plan leg broken into splices, before anything is started.
struct Part {
    leg: usize,
    role: LegRole,
    channel: ChannelRef,
    amount: Amount,
    request: ResizeRequest,
}

fn expand(plan: &BatchPlan) -> Result<Vec<Part>, SpliceError> {
    if plan.legs.is_empty() {
        return Err(SpliceError::InvalidRequest("the batch has no legs".into()));
    }
    let mut parts = Vec::new();
    let mut seen: HashMap<ChannelId, usize> = HashMap::new();
    for (leg, step) in plan.legs.iter().enumerate() {
        let mut claim = |channel: &ChannelRef| match seen.insert(channel.channel_id, leg) {
            Some(other) => Err(SpliceError::BatchLeg {
                leg,
                error: Box::new(SpliceError::InvalidRequest(format!(
                    "channel {} is already in leg {other}",
                    channel.channel_id
                ))),
            }),
            None => Ok(()),
        };
        match step {
            Leg::SpliceIn { channel, amount } => {
                claim(channel)?;
                parts.push(Part {
                    leg,
                    role: LegRole::SpliceIn,
                    channel: *channel,
                    amount: *amount,
                    request: ResizeRequest::splice_in(*amount),
                });
            }
            Leg::SpliceOut {
                channel,
                amount,
                to,
            } => {
                claim(channel)?;
                parts.push(Part {
                    leg,
                    role: LegRole::SpliceOut,
                    channel: *channel,
                    amount: *amount,
                    request: ResizeRequest::splice_out(*amount, to.clone()),
                });
            }
            Leg::Move { from, to, amount } => {
                claim(from)?;
                claim(to)?;
                parts.push(Part {
                    leg,
                    role: LegRole::MoveOut,
                    channel: *from,
                    amount: *amount,
                    request: ResizeRequest::splice_out(*amount, Destination::Wallet),
                });
                parts.push(Part {
                    leg,
                    role: LegRole::MoveIn,
                    channel: *to,
                    amount: *amount,
                    request: ResizeRequest::splice_in(*amount),
                });
            }
        }
    }
    Ok(parts)
}

fn leg_error(leg: usize) -> impl Fn(SpliceError) -> SpliceError {
    move |error| SpliceError::BatchLeg {
        leg,
        error: Box::new(error),
    }
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// What a batch would cost: every leg's fee, weight and wallet coins
    /// (selected jointly, no coin twice), the total, and the weight one
    /// transaction carrying the whole batch would have. Nothing is reserved
    /// or sent.
    pub fn quote_batch(&self, plan: &BatchPlan) -> Result<BatchQuote, SpliceError> {
        let parts = expand(plan)?;
        let pool = Arc::new(CoinPool::default());
        let source = self.wallet.coin_source_in(None, &pool);
        let mut legs = Vec::with_capacity(parts.len());
        // Splice-ins of moves come last: they take what coins are left, and
        // wait for their splice-out when none are.
        for part in funding_order(&parts) {
            let checked = {
                let state = self.lock();
                self.plan(
                    &state,
                    part.channel,
                    &part.request,
                    &plan.fee,
                    PlanMode::Quote,
                    &pool,
                )
            };
            let quoted = checked.and_then(|checked| {
                self.quote_plan(&checked, &plan.fee, &source)
                    .map(|quote| (checked, quote))
            });
            let leg = match quoted {
                Ok((_, quote)) => LegQuote {
                    leg: part.leg,
                    role: part.role,
                    fee: quote.fee,
                    weight_wu: quote.weight_wu,
                    inputs: quote.inputs,
                    queued: false,
                },
                Err(SpliceError::InsufficientFunds { .. }) if part.role == LegRole::MoveIn => {
                    // Funded later by the splice-out's output: estimate alone.
                    let state = self.lock();
                    let request = ResizeRequest::splice_in(part.amount);
                    let checked = self
                        .plan(
                            &state,
                            part.channel,
                            &request,
                            &plan.fee,
                            PlanMode::Unfunded,
                            &pool,
                        )
                        .map_err(leg_error(part.leg))?;
                    let fee = crate::coordinator::estimated_fee(&checked, 1);
                    LegQuote {
                        leg: part.leg,
                        role: part.role,
                        fee,
                        weight_wu: weight_for_fee(fee, checked.feerate),
                        inputs: Vec::new(),
                        queued: true,
                    }
                }
                Err(e) => return Err(leg_error(part.leg)(e)),
            };
            legs.push(leg);
        }
        legs.sort_by_key(|l| (l.leg, l.role == LegRole::MoveIn));
        let total_fee = legs.iter().map(|l| l.fee).sum();
        let total_weight_wu: u64 = legs.iter().map(|l| l.weight_wu).sum();
        // One transaction would carry the common fields once and a single
        // change output for everything the wallet puts in.
        let transactions = legs.len() as u64;
        let changes = legs.iter().filter(|l| !l.inputs.is_empty()).count() as u64;
        let change_weight = (8 + 1 + 22) * 4;
        let single_tx_weight_wu = total_weight_wu
            - weights::TX_COMMON_FIELDS.to_wu() * transactions.saturating_sub(1)
            - change_weight * changes.saturating_sub(1);
        Ok(BatchQuote {
            legs,
            total_fee,
            total_weight_wu,
            single_tx_weight_wu,
        })
    }

    /// Validates the whole plan, selects coins for every leg jointly, and
    /// starts every leg at once. Nothing is started if any leg is invalid;
    /// the error names the leg.
    pub fn execute_batch(&self, plan: BatchPlan) -> Result<BatchId, SpliceError> {
        let parts = expand(&plan)?;
        let mut state = self.lock();
        let pool = Arc::new(CoinPool::for_batch());

        // Check every leg before anything is reserved. A move's splice-in
        // that the wallet cannot fund now is checked without its funds: it
        // waits for the splice-out.
        let mut checked = Vec::new();
        for part in funding_order(&parts) {
            let p = self.plan(
                &state,
                part.channel,
                &part.request,
                &plan.fee,
                PlanMode::Execute,
                &pool,
            );
            match p {
                Ok(p) => checked.push((part, Some(p))),
                Err(SpliceError::InsufficientFunds { .. }) if part.role == LegRole::MoveIn => {
                    self.plan(
                        &state,
                        part.channel,
                        &part.request,
                        &plan.fee,
                        PlanMode::Unfunded,
                        &pool,
                    )
                    .map_err(leg_error(part.leg))?;
                    checked.push((part, None));
                }
                Err(e) => return Err(leg_error(part.leg)(e)),
            }
        }

        // Build every contribution, coins selected jointly: each leg's coins
        // are reserved before the next leg selects.
        let batch_id = state.batches.next_id();
        let mut prepared = Vec::new();
        let mut queued: Vec<usize> = Vec::new();
        for (part, p) in &checked {
            let Some(p) = p else {
                queued.push(part_key(part));
                continue;
            };
            let id = state.journal.next_id();
            match self.prepare(&mut state, id, p, &plan.fee, Some(batch_id), &pool) {
                Ok(contribution) => prepared.push((part_key(part), part.leg, id, contribution)),
                Err(SpliceError::InsufficientFunds { .. }) if part.role == LegRole::MoveIn => {
                    queued.push(part_key(part));
                }
                Err(e) => {
                    for (_, _, id, _) in &prepared {
                        self.release_quietly(*id);
                        let _ = state.journal.remove(*id);
                    }
                    return Err(leg_error(part.leg)(e));
                }
            }
        }
        let started: HashMap<usize, SpliceId> =
            prepared.iter().map(|(key, _, id, _)| (*key, *id)).collect();
        let now = unix_now();
        let record = BatchRecord {
            id: batch_id,
            state: BatchState::Negotiating,
            parts: parts
                .iter()
                .map(|part| BatchPart {
                    leg: part.leg,
                    role: part.role,
                    channel_id: part.channel.channel_id,
                    counterparty: part.channel.counterparty,
                    amount: part.amount,
                    splice: started.get(&part_key(part)).copied(),
                    queued: queued.contains(&part_key(part)),
                })
                .collect(),
            max_feerate_sat_per_kwu: plan.fee.max_feerate.to_sat_per_kwu(),
            max_fee_sat: plan.fee.max_fee.to_sat(),
            feerate_sat_per_kwu: plan.fee.feerate(&*self.fee_estimator)?.to_sat_per_kwu(),
            deadline: now + plan.deadline.as_secs().max(1),
            created_at: now,
        };
        if let Err(e) = state.batches.put(record) {
            for (_, _, id, _) in &prepared {
                self.release_quietly(*id);
                let _ = state.journal.remove(*id);
            }
            return Err(e);
        }
        // Every leg's coins and record, in two writes, before any leg
        // reaches LDK.
        let saved = self.wallet.save_reservations().is_ok();
        if !(saved && self.commit_staged(&mut state)) {
            for (_, _, id, _) in &prepared {
                self.release_quietly(*id);
                let _ = state.journal.remove(*id);
            }
            self.set_batch_state(
                &mut state,
                batch_id,
                BatchState::Failed {
                    leg: 0,
                    reason: "could not journal the batch".into(),
                },
            );
            return Err(SpliceError::Persistence(
                "could not journal the batch's legs".into(),
            ));
        }
        self.emit_batch(batch_id, BatchState::Negotiating);

        let mut failure = None;
        for (_, leg, id, contribution) in prepared {
            if failure.is_some() {
                // An earlier leg was refused: this one never reaches LDK.
                self.release_quietly(id);
                let reason = "an earlier leg of its batch was refused".to_string();
                self.stage_transition(&mut state, id, SpliceState::Failed { reason }, |_| {});
                continue;
            }
            if let Err(e) = self.contribute(&mut state, id, contribution) {
                failure = Some((leg, e));
            }
        }
        // Every leg's progress in one write.
        self.commit_staged(&mut state);
        if let Some((leg, e)) = failure {
            self.fail_batch(
                &mut state,
                batch_id,
                BatchState::Failed {
                    leg,
                    reason: e.to_string(),
                },
            );
            return Err(leg_error(leg)(e));
        }
        log::info!("{batch_id}: {} legs negotiating", plan.legs.len());
        Ok(batch_id)
    }

    /// The record of batch `id`.
    pub fn batch_status(&self, id: BatchId) -> Option<BatchRecord> {
        self.lock().batches.get(id).cloned()
    }

    /// Every batch, oldest first.
    pub fn list_batches(&self) -> Vec<BatchRecord> {
        self.lock().batches.records.values().cloned().collect()
    }

    /// Cancels a batch that is not signed yet: every leg is cancelled and
    /// every coin released.
    pub fn cancel_batch(&self, id: BatchId) -> Result<(), SpliceError> {
        let mut state = self.lock();
        let record = state
            .batches
            .get(id)
            .cloned()
            .ok_or(SpliceError::UnknownBatch(id))?;
        if record.state != BatchState::Negotiating {
            return Err(SpliceError::InvalidRequest(format!(
                "{id} is {} and can no longer be cancelled",
                record.state
            )));
        }
        self.fail_batch(&mut state, id, BatchState::Cancelled);
        Ok(())
    }

    /// Checks batch deadlines and starts queued moves whose funds have
    /// confirmed. The node calls this every second or so.
    pub fn timer_tick(&self) {
        let mut state = self.lock();
        self.commit_staged(&mut state);
        self.check_deadlines(&mut state);
        self.start_queued(&mut state);
    }

    /// Ends batches that can no longer all reach signatures: the deadline
    /// passed, or a leg's peer is gone (LDK keeps a contribution waiting for
    /// quiescence across a disconnection; a batch does not wait for it).
    pub(crate) fn check_deadlines(&self, state: &mut State) {
        let now = unix_now();
        let pending: Vec<BatchRecord> = state
            .batches
            .records
            .values()
            .filter(|b| b.state == BatchState::Negotiating)
            .cloned()
            .collect();
        if pending.is_empty() {
            return;
        }
        let usable: HashMap<ChannelId, bool> = self
            .channel_manager
            .get_cm()
            .list_channels()
            .into_iter()
            .map(|c| (c.channel_id, c.is_usable))
            .collect();
        for batch in pending {
            let not_ready = |p: &&BatchPart| {
                p.splice
                    .is_some_and(|id| !state.batches.held.contains_key(&id))
            };
            let disconnected = batch
                .parts
                .iter()
                .filter(not_ready)
                .find(|p| !usable.get(&p.channel_id).copied().unwrap_or(false));
            let end = if let Some(part) = disconnected {
                BatchState::Failed {
                    leg: part.leg,
                    reason: format!(
                        "peer {} disconnected before the batch was signed",
                        part.counterparty
                    ),
                }
            } else if now > batch.deadline {
                // Blame the first leg that was not ready to sign.
                let leg = batch.parts.iter().find(not_ready).map_or(0, |p| p.leg);
                BatchState::Failed {
                    leg,
                    reason: "the deadline passed before every leg was ready to sign".into(),
                }
            } else {
                continue;
            };
            self.fail_batch(state, batch.id, end);
        }
    }

    /// A leg is ready to sign: hold its transaction; once every leg is,
    /// check them all and sign them all.
    pub(crate) fn hold_for_batch(
        &self,
        state: &mut State,
        batch: BatchId,
        id: SpliceId,
        unsigned: Transaction,
    ) {
        let Some(record) = state.batches.get(batch).cloned() else {
            return;
        };
        if record.state != BatchState::Negotiating {
            self.commit_staged(state);
            let Some(splice) = state.journal.get(id).cloned() else {
                return;
            };
            if record.state == BatchState::Signed {
                // A queued move started after the batch was signed: on its own.
                if let Err(why) = self.sign_now(state, &splice, &unsigned) {
                    self.refuse(state, &splice, &why);
                }
            } else {
                // The batch ended (e.g. across a restart) and LDK still asks:
                // never sign a leg of a batch that did not go through.
                self.refuse(state, &splice, &format!("{batch} is {}", record.state));
            }
            return;
        }
        state.batches.held.insert(id, unsigned);
        let legs: Vec<(usize, SpliceId)> = record
            .parts
            .iter()
            .filter_map(|p| p.splice.map(|s| (p.leg, s)))
            .collect();
        if legs
            .iter()
            .any(|(_, s)| !state.batches.held.contains_key(s))
        {
            log::debug!("{batch}: {id} ready to sign, waiting for the other legs");
            return;
        }
        // Every leg is ready: check all before signing any.
        for (leg, splice) in &legs {
            let (Some(splice_record), Some(tx)) = (
                state.journal.get(*splice).cloned(),
                state.batches.held.get(splice).cloned(),
            ) else {
                continue;
            };
            if let Err(why) = self.check_negotiated(&splice_record, &tx) {
                self.fail_batch(
                    state,
                    batch,
                    BatchState::Failed {
                        leg: *leg,
                        reason: format!("refused to sign: {why}"),
                    },
                );
                return;
            }
        }
        // Every leg's AwaitingSignatures in one write, before any is signed.
        if !self.commit_staged(state) {
            self.fail_batch(
                state,
                batch,
                BatchState::Failed {
                    leg: 0,
                    reason: "could not journal the legs before signing".into(),
                },
            );
            return;
        }
        for (_, splice) in &legs {
            let (Some(splice_record), Some(tx)) = (
                state.journal.get(*splice).cloned(),
                state.batches.held.remove(splice),
            ) else {
                continue;
            };
            if let Err(why) = self.sign_now(state, &splice_record, &tx) {
                // Checked above; only the wallet can fail here.
                log::error!("{batch}: could not sign {splice}: {why}");
            }
        }
        self.set_batch_state(state, batch, BatchState::Signed);
        log::info!("{batch}: every leg signed");
    }

    /// A leg failed before signing: the whole batch ends.
    pub(crate) fn leg_failed(&self, state: &mut State, batch: BatchId, id: SpliceId, reason: &str) {
        let Some(record) = state.batches.get(batch).cloned() else {
            return;
        };
        if record.state != BatchState::Negotiating {
            return;
        }
        let leg = record
            .parts
            .iter()
            .find(|p| p.splice == Some(id))
            .map_or(0, |p| p.leg);
        self.fail_batch(
            state,
            batch,
            BatchState::Failed {
                leg,
                reason: reason.to_string(),
            },
        );
    }

    /// Cancels every unsigned leg of `batch`, releases every coin, and ends
    /// the batch in `end`.
    pub(crate) fn fail_batch(&self, state: &mut State, batch: BatchId, end: BatchState) {
        // Staged changes (and their events) go first, the failure after.
        self.commit_staged(state);
        let Some(record) = state.batches.get(batch).cloned() else {
            return;
        };
        let why = match &end {
            BatchState::Failed { leg, reason } => format!("batch leg {leg} failed: {reason}"),
            _ => "batch cancelled".to_string(),
        };
        for part in &record.parts {
            let Some(id) = part.splice else { continue };
            state.batches.held.remove(&id);
            let Some(splice) = state.journal.get(id).cloned() else {
                continue;
            };
            if splice.state.is_broadcast() {
                // Signed and out: its coins stay with it.
                continue;
            }
            if splice.state.is_final() {
                self.release_quietly(id);
                continue;
            }
            let _ = self
                .channel_manager
                .get_cm()
                .cancel_funding_contributed(&splice.channel_id, &splice.counterparty);
            let new_state = if end == BatchState::Cancelled {
                SpliceState::Cancelled
            } else {
                SpliceState::Failed {
                    reason: why.clone(),
                }
            };
            self.transition(state, id, new_state);
            self.release_quietly(id);
        }
        log::warn!("{batch}: {end}");
        self.set_batch_state(state, batch, end);
    }

    fn set_batch_state(&self, state: &mut State, batch: BatchId, new_state: BatchState) {
        let Some(mut record) = state.batches.get(batch).cloned() else {
            return;
        };
        if record.state == new_state {
            return;
        }
        record.state = new_state.clone();
        if let Err(e) = state.batches.put(record) {
            log::error!("{batch}: could not journal {new_state}: {e}");
            return;
        }
        self.emit_batch(batch, new_state);
    }

    fn emit_batch(&self, batch: BatchId, state: BatchState) {
        self.events
            .push(SpliceEvent::BatchStateChanged { batch, state });
    }

    /// Whether every started leg of `batch` has been broadcast.
    pub(crate) fn batch_broadcast(&self, state: &State, batch: BatchId) -> bool {
        state.batches.get(batch).is_some_and(|record| {
            record.parts.iter().filter_map(|p| p.splice).all(|id| {
                state
                    .journal
                    .get(id)
                    .is_some_and(|r| r.state.is_broadcast() || r.state.is_final())
            })
        })
    }

    /// After a leg's splice changed state: a batch whose every leg is
    /// locked is done.
    pub(crate) fn batch_leg_changed(&self, state: &mut State, batch: BatchId) {
        let Some(record) = state.batches.get(batch).cloned() else {
            return;
        };
        if record.state != BatchState::Signed {
            return;
        }
        let all_locked = record.parts.iter().all(|p| {
            p.splice
                .and_then(|id| state.journal.get(id))
                .is_some_and(|s| s.state == SpliceState::Locked)
        });
        if all_locked {
            self.set_batch_state(state, batch, BatchState::Locked);
        }
    }

    /// Starts queued move splice-ins whose splice-out has confirmed.
    pub(crate) fn start_queued(&self, state: &mut State) {
        let waiting: Vec<(BatchRecord, usize)> = state
            .batches
            .records
            .values()
            .filter(|b| b.state == BatchState::Signed)
            .flat_map(|b| {
                b.parts
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.queued && p.splice.is_none())
                    .map(|(i, _)| (b.clone(), i))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (batch, index) in waiting {
            let part = &batch.parts[index];
            let out_confirmed = batch
                .parts
                .iter()
                .find(|p| p.leg == part.leg && p.role == LegRole::MoveOut)
                .and_then(|p| p.splice)
                .and_then(|id| state.journal.get(id))
                .is_some_and(|s| {
                    matches!(s.state, SpliceState::Confirmed { .. } | SpliceState::Locked)
                });
            if !out_confirmed {
                continue;
            }
            let fee = FeePolicy::fixed(bitcoin::FeeRate::from_sat_per_kwu(
                batch.feerate_sat_per_kwu,
            ))
            .with_max_feerate(bitcoin::FeeRate::from_sat_per_kwu(
                batch.max_feerate_sat_per_kwu,
            ))
            .with_max_fee(Amount::from_sat(batch.max_fee_sat));
            let request = ResizeRequest::splice_in(part.amount);
            let pool = Arc::new(CoinPool::default());
            let started = self
                .plan(
                    state,
                    ChannelRef {
                        channel_id: part.channel_id,
                        counterparty: part.counterparty,
                    },
                    &request,
                    &fee,
                    PlanMode::Execute,
                    &pool,
                )
                .and_then(|p| {
                    let id = state.journal.next_id();
                    let contribution = self.prepare(state, id, &p, &fee, Some(batch.id), &pool)?;
                    if !self.commit_staged(state) {
                        self.release_quietly(id);
                        let _ = state.journal.remove(id);
                        return Err(SpliceError::Persistence(format!("could not journal {id}")));
                    }
                    let contributed = self.contribute(state, id, contribution);
                    self.commit_staged(state);
                    contributed.map(|()| id)
                });
            match started {
                Ok(id) => {
                    let mut record = batch.clone();
                    record.parts[index].splice = Some(id);
                    record.parts[index].queued = false;
                    if let Err(e) = state.batches.put(record) {
                        log::error!("{}: could not journal the move's splice-in: {e}", batch.id);
                    }
                    log::info!(
                        "{}: queued move into {} started as {id}",
                        batch.id,
                        part.channel_id
                    );
                }
                // The funds may not be spendable yet; try again next block.
                Err(e) => log::debug!("{}: queued move not started yet: {e}", batch.id),
            }
        }
    }

    /// After a restart: a batch not yet signed is cancelled cleanly; a
    /// signed one goes on.
    pub(crate) fn reconcile_batches(&self, state: &mut State) {
        let unsigned: Vec<BatchId> = state
            .batches
            .records
            .values()
            .filter(|b| b.state == BatchState::Negotiating)
            .map(|b| b.id)
            .collect();
        for id in unsigned {
            self.fail_batch(
                state,
                id,
                BatchState::Failed {
                    leg: 0,
                    reason: "the node restarted before the batch was signed".into(),
                },
            );
        }
    }
}

/// Parts in the order their coins are selected: everything but the
/// splice-ins of moves first, so a move waits rather than starving a leg
/// that has no other source of funds.
fn funding_order(parts: &[Part]) -> Vec<&Part> {
    let mut ordered: Vec<&Part> = parts.iter().filter(|p| p.role != LegRole::MoveIn).collect();
    ordered.extend(parts.iter().filter(|p| p.role == LegRole::MoveIn));
    ordered
}

/// Distinguishes the two splices of a move in a map keyed by part.
fn part_key(part: &Part) -> usize {
    part.leg * 2 + usize::from(part.role == LegRole::MoveIn)
}

fn weight_for_fee(fee: Amount, feerate: bitcoin::FeeRate) -> u64 {
    let rate = feerate.to_sat_per_kwu().max(1);
    Weight::from_wu(fee.to_sat() * 1000 / rate).to_wu()
}
