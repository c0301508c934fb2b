//! `SpliceCoordinator`: the one-call splice API, driving LDK's splice
//! primitives and following each splice to lock.
//!
//! - [`request`]: requests, quotes, cancel, starting a batch's legs;
//! - [`planning`]: checking a request and building its contribution;
//! - [`signing`]: the pre-sign check, signing alone or with a batch;
//! - [`ldk_events`]: what each LDK event means for our records;
//! - [`recovery`]: reading LDK's view (depth, lock, what it dropped) at
//!   start-up and on every tick, so no record contradicts LDK for long;
//! - [`engine`]: the one place records change, written with their events;
//! - [`unmanaged`]: channels whose splices the application drives itself.
//!
//! Batches (`crate::batch`) sit above: they drive the coordinator through
//! the narrow `pub(crate)` interface of [`request`] and [`signing`], and
//! hear about their legs through [`Notice`]s.

mod bump;
mod engine;
mod handoff;
mod ldk_events;
mod planning;
mod recovery;
mod request;
mod signing;
mod unmanaged;

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bitcoin::{Network, OutPoint, Transaction, Txid};
use lightning::chain::chaininterface::FeeEstimator;
use lightning::ln::channelmanager::AChannelManager;
use lightning::ln::types::ChannelId;

pub use bump::{BumpQuote, MAX_LOW_FEERATE_CANDIDATES};
pub use request::{Destination, Payout, ResizeRequest};

pub(crate) use engine::Update;
pub(crate) use planning::estimated_fee;
pub(crate) use request::{LegOutcome, LegStart, PlanMode};
pub(crate) use signing::SignLegsError;

use crate::error::SpliceError;
use crate::events::{EventNotifier, SpliceEvent};
use crate::ids::{BatchId, SpliceId};
use crate::journal::{Journal, SPLICE};
use crate::record::{SpliceRecord, SpliceState};
use crate::store::SharedStore;
use crate::wallet::FundingWallet;

/// Settings of a [`SpliceCoordinator`].
#[derive(Clone)]
#[non_exhaustive]
pub struct CoordinatorConfig {
    /// The network addresses must belong to.
    pub network: Network,
    /// Give our splice signatures to LDK only after the `ChannelManager`
    /// was written since LDK asked for them; you then call
    /// [`SpliceCoordinator::channel_manager_persisted`] after every write
    /// of the manager. Without it, a crash right after signing can leave the
    /// peer holding our signature for a negotiation we forgot, and it
    /// force-closes the channel. The bundled node sets it.
    pub signatures_wait_for_manager_persistence: bool,
    /// Where [`FeeRateSource::Funding`](crate::FeeRateSource::Funding)
    /// feerates come from; without one, the `FeeEstimator`'s
    /// `NonAnchorChannelFee`.
    pub funding_fee_estimator: Option<Arc<dyn crate::fees::FundingFeeEstimator>>,
    /// Automatic fee bumping for every splice of ours started from now on
    /// (not batch legs); off by default. Per splice:
    /// [`SpliceCoordinator::set_auto_bump`].
    pub auto_bump: Option<crate::record::AutoBump>,
}

impl std::fmt::Debug for CoordinatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorConfig")
            .field("network", &self.network)
            .field(
                "signatures_wait_for_manager_persistence",
                &self.signatures_wait_for_manager_persistence,
            )
            .field(
                "funding_fee_estimator",
                &self.funding_fee_estimator.is_some(),
            )
            .field("auto_bump", &self.auto_bump)
            .finish()
    }
}

impl CoordinatorConfig {
    /// Settings for `network`, signing at once (see
    /// [`CoordinatorConfig::signatures_wait_for_manager_persistence`]).
    pub fn new(network: Network) -> Self {
        CoordinatorConfig {
            network,
            signatures_wait_for_manager_persistence: false,
            funding_fee_estimator: None,
            auto_bump: None,
        }
    }

    /// Sets [`CoordinatorConfig::auto_bump`].
    pub fn with_auto_bump(mut self, policy: crate::record::AutoBump) -> Self {
        self.auto_bump = Some(policy);
        self
    }

    /// Sets [`CoordinatorConfig::funding_fee_estimator`].
    pub fn with_funding_fee_estimator(
        mut self,
        estimator: Arc<dyn crate::fees::FundingFeeEstimator>,
    ) -> Self {
        self.funding_fee_estimator = Some(estimator);
        self
    }

    /// Sets [`CoordinatorConfig::signatures_wait_for_manager_persistence`].
    pub fn with_signatures_waiting_for_manager_persistence(mut self, wait: bool) -> Self {
        self.signatures_wait_for_manager_persistence = wait;
        self
    }
}

impl Default for CoordinatorConfig {
    /// Bitcoin mainnet, signing at once.
    fn default() -> Self {
        CoordinatorConfig::new(Network::Bitcoin)
    }
}

/// The splice API of an LDK node. Build it next to the `ChannelManager`,
/// pass every LDK event to [`SpliceCoordinator::handle_event`], call
/// [`SpliceCoordinator::timer_tick`] every second or so, and (optionally)
/// add it to the chain listeners so that depth changes are seen at once.
pub struct SpliceCoordinator<CM: Deref, F: Deref>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    pub(crate) channel_manager: CM,
    pub(crate) wallet: Arc<dyn FundingWallet>,
    pub(crate) fee_estimator: F,
    pub(crate) config: CoordinatorConfig,
    pub(crate) journal: Arc<Journal>,
    pub(crate) state: Mutex<State>,
    notices: Mutex<Vec<Notice>>,
    wake: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// Writes of the `ChannelManager` the application reported.
    manager_writes: std::sync::atomic::AtomicU64,
}

/// The coordinator's records and what it holds in memory only.
pub(crate) struct State {
    /// Every record; changed only through [`State::keep`], which keeps
    /// the indexes below.
    pub(crate) records: BTreeMap<SpliceId, SpliceRecord>,
    /// The records that have not ended: what every tick and request looks
    /// at, so finished records cost them nothing.
    pub(crate) live: std::collections::BTreeSet<SpliceId>,
    /// Each channel's records, oldest first.
    pub(crate) by_channel: HashMap<ChannelId, Vec<SpliceId>>,
    /// The id the next record gets.
    pub(crate) next_id: u64,
    /// Unsigned transactions of batch legs held until their batch signs.
    pub(crate) held: HashMap<SpliceId, Transaction>,
    /// Transactions we signed, until LDK says they are broadcast (then
    /// they are recorded in the wallet).
    pub(crate) signed: HashMap<Txid, Transaction>,
    /// The last depth seen for each confirmed splice (depth increases are
    /// not written; a depth that falls back is).
    pub(crate) depths: HashMap<SpliceId, u32>,
    /// Signatures waiting for the `ChannelManager` to be written.
    pub(crate) handoffs: Vec<handoff::Handoff>,
    /// For each splice, the manager writes reported when LDK last asked for
    /// its signatures: any later write holds that negotiation.
    pub(crate) asked_at: HashMap<SpliceId, u64>,
    /// Transactions LDK awaited our signatures for when it was loaded: the
    /// manager on disk holds their negotiation already.
    pub(crate) loaded_awaiting: std::collections::HashSet<Txid>,
    /// The height each automatic bump was last tried at (one try a block).
    pub(crate) auto_tried: HashMap<SpliceId, u32>,
    /// Channels whose splices the application drives itself.
    pub(crate) unmanaged: std::collections::HashSet<ChannelId>,
}

impl State {
    /// Keeps `record` (new or changed), with its place in the indexes.
    pub(crate) fn keep(&mut self, record: SpliceRecord) {
        if record.state.is_final() {
            self.live.remove(&record.id);
        } else {
            self.live.insert(record.id);
        }
        // Ids only grow, and a record never changes channel.
        let history = self.by_channel.entry(record.channel_id).or_default();
        if history.last().is_none_or(|last| *last < record.id) {
            history.push(record.id);
        }
        self.records.insert(record.id, record);
    }

    /// The records that have not ended, oldest first.
    pub(crate) fn live_records(&self) -> impl DoubleEndedIterator<Item = &SpliceRecord> {
        self.live.iter().filter_map(|id| self.records.get(id))
    }

    /// Every record of `channel_id`, oldest first.
    pub(crate) fn channel_records(
        &self,
        channel_id: &ChannelId,
    ) -> impl Iterator<Item = &SpliceRecord> {
        self.by_channel
            .get(channel_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.records.get(id))
    }
}

/// What happened to a batch leg, for the batch layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The leg's transaction is built, checked and held for signing.
    ReadyToSign {
        /// Its batch.
        batch: BatchId,
        /// The leg.
        id: SpliceId,
    },
    /// The leg reached `state`.
    Changed {
        /// Its batch.
        batch: BatchId,
        /// The leg.
        id: SpliceId,
        /// Where it stands now.
        state: SpliceState,
    },
}

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// Builds the coordinator and loads its journal from `store`. Splices
    /// a restart interrupted are settled against LDK's view: those LDK
    /// dropped before they were signed fail and free their coins, the rest
    /// go on; coins locked in the wallet that no splice holds are freed.
    pub fn new(
        channel_manager: CM,
        wallet: Arc<dyn FundingWallet>,
        fee_estimator: F,
        store: SharedStore,
        config: CoordinatorConfig,
    ) -> Result<Self, SpliceError> {
        let journal = Arc::new(Journal::load(store)?);
        let mut records = Vec::new();
        for body in journal.take_loaded(SPLICE) {
            let record: SpliceRecord =
                serde_json::from_str::<crate::stored::StoredSplice>(body.get())
                    .map(SpliceRecord::from)
                    .map_err(|e| {
                        SpliceError::Persistence(format!("unreadable splice record: {e}"))
                    })?;
            records.push(record);
        }
        records.sort_by_key(|r| r.id);
        let next_id = records.last().map_or(1, |r| r.id.0 + 1);
        let mut state = State {
            records: BTreeMap::new(),
            live: Default::default(),
            by_channel: HashMap::new(),
            next_id,
            held: HashMap::new(),
            signed: HashMap::new(),
            depths: HashMap::new(),
            handoffs: Vec::new(),
            asked_at: HashMap::new(),
            loaded_awaiting: std::collections::HashSet::new(),
            auto_tried: HashMap::new(),
            unmanaged: Default::default(),
        };
        for record in records {
            state.keep(record);
        }
        let this = SpliceCoordinator {
            channel_manager,
            wallet,
            fee_estimator,
            config,
            journal,
            state: Mutex::new(state),
            notices: Mutex::new(Vec::new()),
            wake: Mutex::new(None),
            manager_writes: std::sync::atomic::AtomicU64::new(0),
        };
        {
            let mut state = this.lock();
            state.loaded_awaiting = this.awaiting_our_signatures();
            this.refresh(&mut state);
            this.free_orphan_locks(&state)?;
        }
        Ok(this)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- reading ----------------------------------------------------------

    /// The record of splice `id`, its confirmation depth as LDK counts it now.
    pub fn splice_status(&self, id: SpliceId) -> Option<SpliceRecord> {
        let record = self.lock().records.get(&id).cloned()?;
        Some(self.live_view(record))
    }

    /// Every splice, oldest first: ours, and those the counterparty started
    /// on our channels.
    pub fn list_splices(&self) -> Vec<SpliceRecord> {
        let records: Vec<SpliceRecord> = self.lock().records.values().cloned().collect();
        records.into_iter().map(|r| self.live_view(r)).collect()
    }

    /// Every splice that has not ended, as [`SpliceCoordinator::status`]
    /// reports it; its cost does not grow with the finished ones.
    pub fn live_splices(&self) -> Vec<SpliceRecord> {
        let records: Vec<SpliceRecord> = self.lock().live_records().cloned().collect();
        records.into_iter().map(|r| self.live_view(r)).collect()
    }

    /// Every wallet coin a splice holds, with the splice holding it.
    pub fn locked_coins(&self) -> Vec<(OutPoint, SpliceId)> {
        let state = self.lock();
        let mut coins: Vec<(OutPoint, SpliceId)> = state
            .live_records()
            .filter(|r| r.holds_coins())
            .flat_map(|r| r.inputs.iter().map(move |o| (*o, r.id)))
            .collect();
        coins.sort();
        coins
    }

    /// The wallet coins splice `id` holds (none once it has ended).
    pub fn coins_held_by(&self, id: SpliceId) -> Vec<OutPoint> {
        self.lock()
            .records
            .get(&id)
            .filter(|r| r.holds_coins())
            .map(|r| r.inputs.clone())
            .unwrap_or_default()
    }

    /// The oldest unacknowledged event.
    pub fn next_event(&self) -> Option<SpliceEvent> {
        self.journal.next_event()
    }

    /// Waits up to `timeout` for an event, blocking the calling thread, and
    /// returns the oldest unacknowledged one.
    pub fn wait_next_event(&self, timeout: Duration) -> Option<SpliceEvent> {
        self.journal.wait_next_event(timeout)
    }

    /// Waits for an event without blocking a thread (any executor; no
    /// tokio needed) and returns the oldest unacknowledged one.
    pub async fn next_event_async(&self) -> SpliceEvent {
        loop {
            let announced = self.journal.event_future();
            if let Some(event) = self.next_event() {
                return event;
            }
            announced.await;
        }
    }

    /// LDK's [`Future`](lightning::util::wakers::Future) that completes
    /// when new events are queued: `.await` it, `wait()` on it, register a
    /// callback, or hand it to a `Sleeper` beside the `ChannelManager`'s
    /// own future. Callbacks run on the thread that queued the events, with
    /// no lock of the coordinator held.
    pub fn event_future(&self) -> lightning::util::wakers::Future {
        self.journal.event_future()
    }

    /// Acknowledges the event [`SpliceCoordinator::next_event`] returned:
    /// it is not delivered again in this run. The acknowledgement costs no
    /// write of its own: the next change the journal writes carries it, or
    /// [`SpliceCoordinator::timer_tick`] writes it once it has waited
    /// [`ACK_WRITE_DELAY`](crate::ACK_WRITE_DELAY) (a crash before
    /// that delivers the event again: delivery is at least once, as with
    /// LDK's events). [`SpliceCoordinator::write_acknowledgements`] writes
    /// it at once.
    pub fn event_handled(&self) {
        self.journal.event_handled()
    }

    /// Writes the acknowledgements no change has carried yet, now: after
    /// `Ok`, no event acknowledged so far is delivered again, even after a
    /// restart. On error they stay waiting and the next call retries.
    pub fn write_acknowledgements(&self) -> Result<(), SpliceError> {
        self.journal.write_acknowledgement(Duration::ZERO)
    }

    /// Every event not acknowledged yet, oldest first.
    pub fn pending_events(&self) -> Vec<SpliceEvent> {
        self.journal.pending_events()
    }

    /// Calls `f` with each new event right after the write that holds it,
    /// before the change it reports is acted on, under the coordinator's
    /// lock: `f` must not call the coordinator. For fault injection (the
    /// crash tests kill the process here); applications wait for events
    /// with [`SpliceCoordinator::event_future`] instead.
    #[doc(hidden)]
    pub fn observe_written_events(&self, f: EventNotifier) {
        self.journal.set_observer(f)
    }

    /// Follows LDK: confirmation depths, locks, splices LDK dropped, and
    /// splices the counterparty started. Call it every second or so (and
    /// after each block if you can: the coordinator's `chain::Listen` does).
    pub fn timer_tick(&self) {
        {
            let mut state = self.lock();
            self.refresh(&mut state);
        }
        if let Err(e) = self
            .journal
            .write_acknowledgement(crate::journal::ACK_WRITE_DELAY)
        {
            log::warn!("could not write the events' acknowledgement (retrying next tick): {e}");
        }
        self.deliver();
    }

    /// Tells the coordinator that `txid` is confirmed `confirmations` deep
    /// on `channel_id`, a channel that has closed: LDK's channel is gone,
    /// so only its `ChannelMonitor` still sees its splice transactions
    /// confirm (`ChannelMonitor::get_relevant_txids`). A signed splice of
    /// ours whose candidate `txid` is ends
    /// [`SpliceState::Closed`] at six
    /// confirmations, and its coins are freed (they are spent by `txid`).
    /// Without this call such a splice stays `Broadcast`. The bundled node
    /// makes it by itself.
    pub fn closed_channel_splice_confirmed(
        &self,
        channel_id: &ChannelId,
        txid: Txid,
        confirmations: u32,
    ) -> Result<(), SpliceError> {
        let result = {
            let mut state = self.lock();
            self.on_closed_channel_confirmed(&mut state, channel_id, txid, confirmations)
        };
        self.deliver();
        result
    }

    // ---- the batch layer's side -------------------------------------------

    /// Registers what to call when batch legs have news (see
    /// [`SpliceCoordinator::take_notices`]).
    pub(crate) fn set_wake(&self, wake: Box<dyn Fn() + Send + Sync>) {
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
    }

    /// Everything that happened to batch legs since the last call.
    pub(crate) fn take_notices(&self) -> Vec<Notice> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn notify(&self, notice: Notice) {
        self.notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(notice);
    }

    /// Wakes the application's event waiters if events were queued. Call
    /// with no lock held.
    pub(crate) fn announce_events(&self) {
        self.journal.announce();
    }

    /// Tells the batch layer there is news. Called by top-level entry
    /// points only, with no lock of the coordinator held.
    pub(crate) fn deliver(&self) {
        let pending = !self
            .notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if pending {
            if let Some(wake) = self.wake.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                wake();
            }
        }
        // Last: what the batch layer did on the news has events too.
        self.journal.announce();
    }

    /// The record of `id` as written (no live depth), for the batch layer.
    pub(crate) fn record(&self, id: SpliceId) -> Option<SpliceRecord> {
        self.lock().records.get(&id).cloned()
    }

    /// Whether `id` holds an unsigned transaction for its batch.
    pub(crate) fn is_held(&self, id: SpliceId) -> bool {
        self.lock().held.contains_key(&id)
    }
}
