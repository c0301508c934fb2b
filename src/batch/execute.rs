//! `BatchCoordinator`: starting, quoting, cancelling and reading batches.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use bitcoin::{Amount, Weight};
use lightning::chain::chaininterface::FeeEstimator;
use lightning::ln::channelmanager::AChannelManager;

use super::{
    expand, funding_order, leg_error, part_key, weight_for_fee, BatchId, BatchPart, BatchPlan,
    BatchQuote, BatchRecord, BatchState, LegQuote, LegRole,
};
use crate::coordinator::{LegOutcome, LegStart, PlanMode, ResizeRequest, SpliceCoordinator};
use crate::error::SpliceError;
use crate::events::SpliceEvent;
use crate::fees::FeePolicy;
use crate::journal::{Change, BATCH};
use crate::wallet::{CoinPool, SpliceCoinSource};
use crate::weights;

/// Splices over many channels at once, atomic up to signing. It drives a
/// [`SpliceCoordinator`] and hears from it about its legs: build it once
/// beside the coordinator, and call [`BatchCoordinator::timer_tick`] every
/// second or so (deadlines, queued moves).
pub struct BatchCoordinator<CM: Deref, F: Deref>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    pub(super) core: Arc<SpliceCoordinator<CM, F>>,
    book: Mutex<Book>,
}

/// The batches, in memory; the journal has them on disk.
pub(super) struct Book {
    /// Every batch; changed only through [`Book::keep`].
    pub(super) records: BTreeMap<BatchId, BatchRecord>,
    /// The batches that have not ended: what every tick looks at.
    pub(super) open: std::collections::BTreeSet<BatchId>,
    pub(super) next_id: u64,
}

impl Book {
    /// Keeps `record` (new or changed), with its place among the open ones.
    pub(super) fn keep(&mut self, record: BatchRecord) {
        if record.state.is_final() {
            self.open.remove(&record.id);
        } else {
            self.open.insert(record.id);
        }
        self.records.insert(record.id, record);
    }

    /// The batches that have not ended, oldest first.
    pub(super) fn open_records(&self) -> impl Iterator<Item = &BatchRecord> {
        self.open.iter().filter_map(|id| self.records.get(id))
    }
}

impl<CM: Deref, F: Deref> BatchCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
    CM: Send + Sync + 'static,
    F: Send + Sync + 'static,
{
    /// Loads the batches from `coordinator`'s journal and settles those a
    /// restart interrupted: a batch not signed yet is cancelled cleanly
    /// (every leg, every coin); a signed one goes on.
    pub fn new(coordinator: Arc<SpliceCoordinator<CM, F>>) -> Result<Arc<Self>, SpliceError> {
        let mut book = Book {
            records: BTreeMap::new(),
            open: Default::default(),
            next_id: 1,
        };
        for body in coordinator.journal.take_loaded(BATCH) {
            let record: BatchRecord =
                serde_json::from_str::<crate::stored::StoredBatch>(body.get())
                    .map(BatchRecord::from)
                    .map_err(|e| {
                        SpliceError::Persistence(format!("unreadable batch record: {e}"))
                    })?;
            book.next_id = book.next_id.max(record.id.0 + 1);
            book.keep(record);
        }
        let this = Arc::new(BatchCoordinator {
            core: coordinator,
            book: Mutex::new(book),
        });
        let weak = Arc::downgrade(&this);
        this.core.set_wake(Box::new(move || {
            if let Some(batches) = weak.upgrade() {
                batches.process_notices();
            }
        }));
        this.reconcile();
        this.process_notices();
        Ok(this)
    }
}

impl<CM: Deref, F: Deref> BatchCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    pub(super) fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The coordinator the batches drive.
    pub fn coordinator(&self) -> &Arc<SpliceCoordinator<CM, F>> {
        &self.core
    }

    /// Validates the whole plan, selects coins for every leg jointly, and
    /// starts every leg at once. Nothing is started (or locked, or written)
    /// if any leg is invalid; the error names the leg.
    pub fn start_batch(&self, plan: BatchPlan) -> Result<BatchId, SpliceError> {
        let result = {
            let mut book = self.lock();
            self.execute_locked(&mut book, &plan)
        };
        self.process_notices();
        result
    }

    fn execute_locked(&self, book: &mut Book, plan: &BatchPlan) -> Result<BatchId, SpliceError> {
        // Everything that can fail on its own comes before any leg is built.
        let parts = expand(plan)?;
        self.check_coin_count(&parts)?;
        if plan.deadline > BatchPlan::MAX_DEADLINE || plan.deadline.is_zero() {
            return Err(SpliceError::InvalidRequest(format!(
                "deadline: {} s is not between 1 s and a day",
                plan.deadline.as_secs()
            )));
        }
        let feerate = self.core.feerate(&plan.fee)?;
        // Every leg, and a queued move later, at the same feerate.
        let fee = FeePolicy::fixed(feerate)
            .with_max_feerate(plan.fee.max_feerate)
            .with_max_fee(plan.fee.max_fee);
        let now = crate::ids::now_in_seconds();
        let deadline = now + plan.deadline.max(std::time::Duration::from_secs(1));

        let pool = Arc::new(CoinPool::default());
        let mut starts = Vec::new();
        let mut started_parts = Vec::new();
        let mut queued = Vec::new();
        for part in funding_order(&parts) {
            let checked =
                self.core
                    .plan_leg(part.channel, &part.request, &fee, PlanMode::Execute, &pool);
            match checked {
                Ok(checked) => {
                    starts.push(LegStart {
                        plan: checked,
                        fee,
                        may_wait: part.role == LegRole::MoveIn,
                    });
                    started_parts.push(part_key(part));
                }
                Err(SpliceError::InsufficientFunds { .. }) if part.role == LegRole::MoveIn => {
                    // Funded later by its splice-out: checked without funds.
                    self.core
                        .plan_leg(part.channel, &part.request, &fee, PlanMode::Unfunded, &pool)
                        .map_err(leg_error(part.leg))?;
                    queued.push(part_key(part));
                }
                Err(e) => return Err(leg_error(part.leg)(e)),
            }
        }

        let id = BatchId(book.next_id);
        // Used up even if the batch does not start (see the coordinator's ids).
        book.next_id += 1;
        let record_for = |outcomes: &[LegOutcome], state: BatchState| BatchRecord {
            id,
            state,
            parts: parts
                .iter()
                .map(|part| {
                    let key = part_key(part);
                    let outcome = started_parts
                        .iter()
                        .position(|k| *k == key)
                        .and_then(|i| outcomes.get(i).copied());
                    BatchPart {
                        leg: part.leg,
                        role: part.role,
                        channel_id: part.channel.channel_id,
                        counterparty: part.channel.counterparty,
                        amount: part.amount,
                        splice: match outcome {
                            Some(LegOutcome::Started(splice)) => Some(splice),
                            _ => None,
                        },
                        queued: queued.contains(&key)
                            || matches!(outcome, Some(LegOutcome::Waiting)),
                    }
                })
                .collect(),
            max_feerate: fee.max_feerate,
            max_fee: fee.max_fee,
            feerate,
            deadline,
            created_at: now,
        };
        let leg_of = |index: usize| {
            started_parts
                .get(index)
                .and_then(|key| parts.iter().find(|p| part_key(p) == *key))
                .map_or(0, |p| p.leg)
        };
        let written: Mutex<Option<BatchRecord>> = Mutex::new(None);
        let keep = |record: BatchRecord| -> Result<Option<Change>, SpliceError> {
            let change = batch_change(&record)?;
            *written.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
            Ok(Some(change))
        };
        let started = self.core.start_legs(
            id,
            true,
            starts,
            |outcomes| keep(record_for(outcomes, BatchState::Negotiating)),
            |index, error| {
                let failed = BatchState::Failed {
                    leg: leg_of(index),
                    reason: error.to_string(),
                };
                let mut record = written
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_else(|| record_for(&[], failed.clone()));
                record.state = failed;
                keep(record)
            },
        );
        if let Some(record) = written.into_inner().unwrap_or_else(|e| e.into_inner()) {
            book.next_id = book.next_id.max(record.id.0 + 1);
            book.keep(record);
        }
        match started {
            Ok(_) => {
                log::info!("{id}: {} legs negotiating", plan.legs.len());
                Ok(id)
            }
            Err((_, e @ SpliceError::Persistence(_))) => Err(e),
            Err((index, e)) => Err(leg_error(leg_of(index))(e)),
        }
    }

    /// What a batch would cost: every leg's fee, weight and wallet coins
    /// (selected jointly, no coin twice), the total, and the weight one
    /// transaction carrying the whole batch would have. Nothing is locked
    /// or sent.
    pub fn quote_batch(&self, plan: &BatchPlan) -> Result<BatchQuote, SpliceError> {
        let parts = expand(plan)?;
        self.check_coin_count(&parts)?;
        let pool = Arc::new(CoinPool::default());
        let source = SpliceCoinSource::with_pool(&*self.core.wallet, false, &pool);
        let mut legs = Vec::with_capacity(parts.len());
        // Splice-ins of moves come last: they take what coins are left, and
        // wait for their splice-out when none are.
        for part in funding_order(&parts) {
            let quoted = self
                .core
                .plan_leg(
                    part.channel,
                    &part.request,
                    &plan.fee,
                    PlanMode::Quote,
                    &pool,
                )
                .and_then(|checked| self.core.quote_plan(&checked, &plan.fee, &source));
            let leg = match quoted {
                Ok(quote) => LegQuote {
                    leg: part.leg,
                    role: part.role,
                    fee: quote.fee,
                    weight: quote.weight,
                    inputs: quote.inputs,
                    queued: false,
                },
                Err(SpliceError::InsufficientFunds { .. }) if part.role == LegRole::MoveIn => {
                    // Funded later by the splice-out's output: estimate alone.
                    let request = ResizeRequest::splice_in(part.amount);
                    let checked = self
                        .core
                        .plan_leg(part.channel, &request, &plan.fee, PlanMode::Unfunded, &pool)
                        .map_err(leg_error(part.leg))?;
                    let fee = crate::coordinator::estimated_fee(&checked, 1);
                    LegQuote {
                        leg: part.leg,
                        role: part.role,
                        fee,
                        weight: weight_for_fee(fee, checked.feerate),
                        inputs: Vec::new(),
                        queued: true,
                    }
                }
                Err(e) => return Err(leg_error(part.leg)(e)),
            };
            legs.push(leg);
        }
        legs.sort_by_key(|l| (l.leg, l.role == LegRole::MoveIn));
        let total_fee = legs.iter().map(|l| l.fee).sum::<Amount>();
        let total_weight: Weight = legs.iter().map(|l| l.weight).sum();
        // One transaction would carry the common fields once and a single
        // change output for everything the wallet puts in.
        let transactions = legs.len() as u64;
        let changes = legs.iter().filter(|l| !l.inputs.is_empty()).count() as u64;
        let change_weight = Weight::from_wu((8 + 1 + 22) * 4);
        let single_tx_weight = total_weight
            - weights::TX_COMMON_FIELDS * transactions.saturating_sub(1)
            - change_weight * changes.saturating_sub(1);
        Ok(BatchQuote {
            legs,
            total_fee,
            total_weight,
            single_tx_weight,
        })
    }

    /// Each splice-in leg needs a confirmed coin of its own (a move's
    /// splice-in can wait for its splice-out's output instead).
    fn check_coin_count(&self, parts: &[super::Part]) -> Result<(), SpliceError> {
        let legs = parts.iter().filter(|p| p.role == LegRole::SpliceIn).count();
        let coins = self.core.wallet.spendable_coins().len();
        if coins < legs {
            return Err(SpliceError::TooFewCoins { legs, coins });
        }
        Ok(())
    }

    /// What each splice-in leg of `plan` needs in a coin of its own, its
    /// amount and its fee (one input, a change output) at the plan's
    /// feerate: the outputs [`Node::prepare_coins_for_batch`] splits a coin
    /// into.
    ///
    /// [`Node::prepare_coins_for_batch`]: crate::node::Node
    pub fn coins_for_batch(&self, plan: &BatchPlan) -> Result<Vec<bitcoin::Amount>, SpliceError> {
        let parts = expand(plan)?;
        let pool = CoinPool::default();
        let mut needs = Vec::new();
        for part in parts.iter().filter(|p| p.role == LegRole::SpliceIn) {
            let checked = self
                .core
                .plan_leg(
                    part.channel,
                    &part.request,
                    &plan.fee,
                    PlanMode::Unfunded,
                    &pool,
                )
                .map_err(leg_error(part.leg))?;
            let fee = crate::coordinator::estimated_fee(&checked, 1);
            let need = part
                .amount
                .checked_add(fee)
                .ok_or_else(|| SpliceError::InvalidRequest("amount overflows".into()))?;
            needs.push(need);
        }
        Ok(needs)
    }

    /// The record of batch `id`.
    pub fn batch_status(&self, id: BatchId) -> Option<BatchRecord> {
        self.lock().records.get(&id).cloned()
    }

    /// Every batch, oldest first.
    pub fn list_batches(&self) -> Vec<BatchRecord> {
        self.lock().records.values().cloned().collect()
    }

    /// Bumps the fee of every broadcast, unconfirmed leg of batch `id`
    /// together (see [`SpliceCoordinator::bump_fee`]): every leg is checked
    /// and built first, and none is signed until every one is ready to
    /// sign; if one cannot be bumped (its peer is offline, its feerate is
    /// below its minimum, ...) the error names its leg and nothing was
    /// started, and if one fails later, every leg's bump is backed out. The
    /// earlier candidates stay valid throughout.
    pub fn bump_batch_fee(&self, id: BatchId, fee: FeePolicy) -> Result<(), SpliceError> {
        let legs: Vec<(usize, crate::ids::SpliceId)> = {
            let book = self.lock();
            let record = book.records.get(&id).ok_or(SpliceError::UnknownBatch(id))?;
            record
                .parts
                .iter()
                .filter_map(|p| p.splice.map(|s| (p.leg, s)))
                .collect()
        };
        self.core.bump_legs(id, &legs, &fee)
    }

    /// Cancels a batch that is not signed yet: every leg is cancelled and
    /// every coin released.
    pub fn cancel_batch(&self, id: BatchId) -> Result<(), SpliceError> {
        let result = {
            let mut book = self.lock();
            let record = book
                .records
                .get(&id)
                .cloned()
                .ok_or(SpliceError::UnknownBatch(id))?;
            if record.state != BatchState::Negotiating {
                return Err(SpliceError::InvalidRequest(format!(
                    "{id} is {} and can no longer be cancelled",
                    record.state
                )));
            }
            self.end_batch(&mut book, id, BatchState::Cancelled)
        };
        self.process_notices();
        result
    }
}

/// The journal change writing `record`, with the event reporting its
/// state.
pub(super) fn batch_change(record: &BatchRecord) -> Result<Change, SpliceError> {
    Change::new(
        BATCH,
        record.id.0,
        &crate::stored::StoredBatch::from(record),
        vec![SpliceEvent::BatchStateChanged {
            batch: record.id,
            state: record.state.clone(),
        }],
    )
}

/// The journal change writing `record` when its state did not change.
pub(super) fn quiet_change(record: &BatchRecord) -> Result<Change, SpliceError> {
    Change::new(
        BATCH,
        record.id.0,
        &crate::stored::StoredBatch::from(record),
        Vec::new(),
    )
}
