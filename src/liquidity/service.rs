//! The service side: answers `get_info`, `create_order` and `get_order`,
//! holds each order's fee HTLC, splices the liquidity in with the splice
//! coordinator, and claims the HTLC only once the splice is broadcast (or
//! fails it back when the splice does not happen).
//!
//! Every change of an order is written before it is acted on: an order is
//! on disk before its invoice leaves, `paid` before the splice starts,
//! `splicing` before the HTLC is claimed, `failed` before it is failed back.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::secp256k1::PublicKey;
use bitcoin::Amount;
use lightning::bolt11_invoice::{Bolt11InvoiceDescription, Description};
use lightning::chain::chaininterface::FeeEstimator;
use lightning::events::{Event, ReplayEvent};
use lightning::ln::channelmanager::{AChannelManager, Bolt11InvoiceParameters};
use lightning::sign::EntropySource;
use lightning::types::payment::{PaymentHash, PaymentPreimage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::msgs::{
    self, CreateOrder, GetOrder, LiquidityEvent, Order, OrderError, OrderState, CREATE_ORDER,
    GET_INFO, GET_ORDER,
};
use super::policy::LiquidityPolicy;
use super::wire::{RpcError, INTERNAL_ERROR, METHOD_NOT_FOUND};
use crate::coordinator::{ResizeRequest, SpliceCoordinator};
use crate::fees::FeePolicy;
use crate::ids::{unix_now, SpliceId};
use crate::record::SpliceState;
use crate::store::{read_json, write_json, SharedStore, PERSISTENCE_NAMESPACE};

/// Where the service keeps its orders.
const ORDERS_NAMESPACE: &str = "liquidity_service_orders";

/// The final CLTV delta the fee invoice asks for.
pub const INVOICE_MIN_FINAL_CLTV_EXPIRY_DELTA: u16 = 144;

/// The service gives up on a paid order this many blocks before LDK would
/// fail its HTLC back by itself (the payment's claim deadline).
pub const GIVE_UP_BLOCKS_BEFORE_CLAIM_DEADLINE: u32 = 48;

/// How many splices the service starts for one paid order when LDK drops
/// them before signing (a restart, a disconnection mid-negotiation); then
/// it fails the fee back.
pub const MAX_SPLICE_ATTEMPTS: u32 = 3;

/// What [`LiquidityService::on_failed_back`] calls.
pub type FailedBackHook = Box<dyn Fn(PaymentHash) + Send + Sync>;

/// An order as the service keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ServiceOrder {
    order: Order,
    client: PublicKey,
    /// Hex of the 32-byte preimage of the fee invoice.
    preimage: String,
    splice: Option<SpliceId>,
    /// The height at which LDK fails the fee HTLC back, once it arrived.
    claim_deadline: Option<u32>,
    /// When the service asked the coordinator for the splice (Unix
    /// seconds), written before it asks: a crash between the two is found
    /// at the next start and the splice adopted, never started twice.
    #[serde(default)]
    splice_requested_at: Option<u64>,
    /// Splices started for this order that LDK dropped before signing.
    #[serde(default)]
    splice_attempts: u32,
}

impl ServiceOrder {
    fn preimage(&self) -> Option<PaymentPreimage> {
        <[u8; 32]>::from_hex(&self.preimage)
            .ok()
            .map(PaymentPreimage)
    }

    fn payment_hash(&self) -> Option<PaymentHash> {
        self.preimage()
            .map(|p| PaymentHash(sha256::Hash::hash(&p.0).to_byte_array()))
    }
}

/// One order of a client, as the service sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceOrderView {
    /// The client.
    pub client: PublicKey,
    /// The order.
    pub order: Order,
    /// The splice that adds its liquidity, once started.
    pub splice: Option<SpliceId>,
}

struct State {
    orders: BTreeMap<String, ServiceOrder>,
    /// Each order's id by the payment hash of its fee invoice.
    by_hash: HashMap<PaymentHash, String>,
    /// When each client's requests of the last minute came (Unix seconds).
    recent: HashMap<PublicKey, VecDeque<u64>>,
    events: Vec<LiquidityEvent>,
}

/// What the service does to LDK once the state that justifies it is
/// written, outside its lock.
enum Action {
    Claim(PaymentPreimage),
    FailBack(PaymentHash),
    Splice(String),
}

/// A liquidity service on top of a [`SpliceCoordinator`]: put it into a
/// [`LiquidityMessageHandler`](super::LiquidityMessageHandler), pass it
/// every LDK event ([`LiquidityService::handle_event`]) and tick it
/// ([`LiquidityService::timer_tick`]) like the coordinator.
pub struct LiquidityService<CM: Deref, F: Deref>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    coordinator: Arc<SpliceCoordinator<CM, F>>,
    policy: Arc<dyn LiquidityPolicy>,
    entropy: Arc<dyn EntropySource + Send + Sync>,
    store: SharedStore,
    state: Mutex<State>,
    failed_back: Mutex<Option<FailedBackHook>>,
}

impl<CM: Deref, F: Deref> LiquidityService<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// A service splicing with `coordinator`, pricing with `policy`, and
    /// keeping its orders in `store` (loaded now).
    pub fn new(
        coordinator: Arc<SpliceCoordinator<CM, F>>,
        policy: Arc<dyn LiquidityPolicy>,
        entropy: Arc<dyn EntropySource + Send + Sync>,
        store: SharedStore,
    ) -> Result<Self, crate::SpliceError> {
        let mut orders = BTreeMap::new();
        let keys = store
            .list(PERSISTENCE_NAMESPACE, ORDERS_NAMESPACE)
            .map_err(|e| crate::SpliceError::Persistence(format!("listing orders: {e}")))?;
        for key in keys {
            let order: ServiceOrder = read_json(&store, ORDERS_NAMESPACE, &key)
                .map_err(|e| crate::SpliceError::Persistence(e.to_string()))?
                .ok_or_else(|| crate::SpliceError::Persistence(format!("order {key} vanished")))?;
            orders.insert(order.order.order_id.clone(), order);
        }
        Ok(LiquidityService {
            coordinator,
            policy,
            entropy,
            store,
            state: Mutex::new(State {
                by_hash: orders
                    .values()
                    .filter_map(|o| Some((o.payment_hash()?, o.order.order_id.clone())))
                    .collect(),
                orders,
                recent: HashMap::new(),
                events: Vec::new(),
            }),
            failed_back: Mutex::new(None),
        })
    }

    /// Calls `f` with the payment hash of each fee HTLC the service fails
    /// back (with no lock held), e.g. to mark the payment failed in the
    /// application's own records.
    pub fn on_failed_back(&self, f: FailedBackHook) {
        *self.failed_back.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every order, oldest first.
    pub fn orders(&self) -> Vec<ServiceOrderView> {
        let mut orders: Vec<ServiceOrderView> = self
            .lock()
            .orders
            .values()
            .map(|o| ServiceOrderView {
                client: o.client,
                order: o.order.clone(),
                splice: o.splice,
            })
            .collect();
        orders.sort_by_key(|o| o.order.created_at);
        orders
    }

    /// Order changes since the last call.
    pub fn take_events(&self) -> Vec<LiquidityEvent> {
        std::mem::take(&mut self.lock().events)
    }

    /// Answers a request of `client`. Never panics on what a client sends.
    pub fn handle_request(
        &self,
        client: &PublicKey,
        method: &str,
        params: Map<String, Value>,
    ) -> Result<Value, RpcError> {
        let now = unix_now();
        {
            let mut state = self.lock();
            let limit = self.policy.max_requests_per_minute(client);
            let recent = state.recent.entry(*client).or_default();
            while recent.front().is_some_and(|t| *t + 60 <= now) {
                recent.pop_front();
            }
            if recent.len() >= limit as usize {
                let oldest = recent.front().copied().unwrap_or(now);
                return Err(OrderError::RateLimited {
                    retry_after_secs: (oldest + 60).saturating_sub(now).max(1),
                }
                .to_rpc());
            }
            recent.push_back(now);
        }
        match method {
            GET_INFO => {
                msgs::params::<Empty>(params)?;
                let terms = self.policy.terms(client, self.funding_feerate());
                serde_json::to_value(terms).map_err(internal)
            }
            CREATE_ORDER => {
                let request: CreateOrder = msgs::params(params)?;
                let order = self.create_order(client, request, now)?;
                serde_json::to_value(order).map_err(internal)
            }
            GET_ORDER => {
                let request: GetOrder = msgs::params(params)?;
                let state = self.lock();
                let order = state
                    .orders
                    .get(&request.order_id)
                    .filter(|o| o.client == *client)
                    .ok_or_else(|| OrderError::UnknownOrder.to_rpc())?;
                serde_json::to_value(&order.order).map_err(internal)
            }
            _ => Err(RpcError::new(
                METHOD_NOT_FOUND,
                format!("method not found: {method}"),
            )),
        }
    }

    fn funding_feerate(&self) -> bitcoin::FeeRate {
        self.coordinator
            .feerate(&FeePolicy::funding())
            .unwrap_or(bitcoin::FeeRate::from_sat_per_kwu(253))
    }

    fn create_order(
        &self,
        client: &PublicKey,
        request: CreateOrder,
        now: u64,
    ) -> Result<Order, RpcError> {
        if !msgs::valid_client_order_id(&request.client_order_id) {
            return Err(RpcError::new(
                super::wire::INVALID_PARAMS,
                "client_order_id must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'",
            ));
        }
        let mut state = self.lock();
        if let Some(existing) = state
            .orders
            .values()
            .find(|o| o.client == *client && o.order.client_order_id == request.client_order_id)
        {
            let same = existing.order.channel_id == request.channel_id
                && existing.order.amount == request.amount;
            return if same {
                Ok(existing.order.clone())
            } else {
                Err(OrderError::ClientOrderIdReused.to_rpc())
            };
        }
        let terms = self.policy.terms(client, self.funding_feerate());
        if request.amount < terms.min_amount || request.amount > terms.max_amount {
            return Err(OrderError::AmountOutOfRange {
                min: terms.min_amount,
                max: terms.max_amount,
            }
            .to_rpc());
        }
        let cm = self.coordinator.channel_manager.get_cm();
        let channel = cm
            .list_channels_with_counterparty(client)
            .into_iter()
            .find(|c| c.channel_id == request.channel_id && c.is_usable)
            .ok_or_else(|| OrderError::UnknownChannel.to_rpc())?;
        if channel.confirmations.unwrap_or(0) < terms.min_channel_age_blocks {
            return Err(OrderError::ChannelTooYoung {
                min_channel_age_blocks: terms.min_channel_age_blocks,
            }
            .to_rpc());
        }
        let open = state
            .orders
            .values()
            .filter(|o| o.client == *client && o.order.state.is_open())
            .count();
        if open >= usize::from(terms.max_open_orders_per_peer) {
            return Err(OrderError::TooManyOpenOrders {
                max: terms.max_open_orders_per_peer,
            }
            .to_rpc());
        }
        let fee = terms
            .fee_for(request.amount, terms.feerate)
            .ok_or_else(|| RpcError::new(INTERNAL_ERROR, "fee overflows"))?;
        self.check_liquidity(&state, &request, &fee)
            .map_err(|e| e.to_rpc())?;

        let preimage = PaymentPreimage(self.entropy.get_secure_random_bytes());
        let hash = PaymentHash(sha256::Hash::hash(&preimage.0).to_byte_array());
        let order_id = self.entropy.get_secure_random_bytes()[..16].to_lower_hex_string();
        let unavailable = |reason: String| OrderError::ServiceUnavailable { reason }.to_rpc();
        let description = Description::new(format!("ldk-splice liquidity order {order_id}"))
            .map_err(|e| unavailable(e.to_string()))?;
        let invoice = cm
            .create_bolt11_invoice(Bolt11InvoiceParameters {
                amount_msats: Some(
                    fee.total
                        .to_sat()
                        .checked_mul(1000)
                        .ok_or_else(|| unavailable("fee too large".into()))?,
                ),
                description: Bolt11InvoiceDescription::Direct(description),
                invoice_expiry_delta_secs: Some(terms.invoice_valid_secs),
                min_final_cltv_expiry_delta: Some(INVOICE_MIN_FINAL_CLTV_EXPIRY_DELTA),
                payment_hash: Some(hash),
                ..Default::default()
            })
            .map_err(|e| unavailable(format!("no invoice: {e:?}")))?;
        let order = Order {
            order_id: order_id.clone(),
            client_order_id: request.client_order_id,
            channel_id: request.channel_id,
            amount: request.amount,
            fee,
            invoice: invoice.to_string(),
            created_at: now,
            expires_at: now + u64::from(terms.invoice_valid_secs.min(terms.quote_valid_secs)),
            state: OrderState::Created,
        };
        let stored = ServiceOrder {
            order: order.clone(),
            client: *client,
            preimage: preimage.0.to_lower_hex_string(),
            splice: None,
            claim_deadline: None,
            splice_requested_at: None,
            splice_attempts: 0,
        };
        self.write(&mut state, stored)
            .map_err(|e| unavailable(format!("could not record the order: {e}")))?;
        log::info!(
            "liquidity order {order_id}: {} sat for {} on channel {} at {} sat",
            order.amount.to_sat(),
            client,
            order.channel_id,
            order.fee.total.to_sat()
        );
        Ok(order)
    }

    /// Whether the service can commit `request.amount` now.
    fn check_liquidity(
        &self,
        state: &State,
        request: &CreateOrder,
        fee: &msgs::FeeBreakdown,
    ) -> Result<(), OrderError> {
        let unavailable = |reason: String| OrderError::LiquidityUnavailable { reason };
        let committed: Amount = state
            .orders
            .values()
            .filter(|o| {
                matches!(
                    o.order.state,
                    OrderState::Paid | OrderState::Splicing { .. }
                )
            })
            .map(|o| o.order.amount)
            .sum();
        if committed + request.amount > self.policy.max_committed() {
            return Err(unavailable(format!(
                "{} sat already committed of at most {} sat",
                committed.to_sat(),
                self.policy.max_committed().to_sat()
            )));
        }
        let available = crate::wallet::available_balance(&*self.coordinator.wallet);
        if available < request.amount + fee.mining {
            return Err(unavailable("not enough funds in the wallet".into()));
        }
        let busy = state.orders.values().any(|o| {
            o.order.channel_id == request.channel_id
                && matches!(
                    o.order.state,
                    OrderState::Paid | OrderState::Splicing { .. }
                )
        });
        if busy {
            return Err(unavailable(
                "another order is splicing on this channel".into(),
            ));
        }
        Ok(())
    }

    /// Writes `order` and keeps it; an event reports a changed state.
    fn write(&self, state: &mut State, order: ServiceOrder) -> Result<(), String> {
        let key = order.order.order_id.clone();
        write_json(&self.store, ORDERS_NAMESPACE, &key, &order).map_err(|e| e.to_string())?;
        let changed = state
            .orders
            .get(&key)
            .is_none_or(|before| before.order.state != order.order.state);
        if changed {
            state.events.push(LiquidityEvent::ServiceOrderChanged {
                client: order.client,
                order: order.order.clone(),
            });
        }
        if let Some(hash) = order.payment_hash() {
            state.by_hash.entry(hash).or_insert_with(|| key.clone());
        }
        state.orders.insert(key, order);
        Ok(())
    }

    /// Takes the LDK events about fee payments: an HTLC for an order's
    /// invoice is held and its splice started, or failed back. Returns
    /// `Err(ReplayEvent)` when it could not write what the event means.
    pub fn handle_event(&self, event: &Event) -> Result<(), ReplayEvent> {
        let Event::PaymentClaimable {
            payment_hash,
            amount_msat,
            claim_deadline,
            ..
        } = event
        else {
            return Ok(());
        };
        let actions = {
            let mut state = self.lock();
            let Some(order) = state
                .by_hash
                .get(payment_hash)
                .and_then(|id| state.orders.get(id))
                .cloned()
            else {
                return Ok(());
            };
            self.on_payment(&mut state, order, *amount_msat, *claim_deadline)
                .map_err(|e| {
                    log::error!("liquidity: could not record a fee payment: {e}");
                    ReplayEvent()
                })?
        };
        self.act(actions);
        Ok(())
    }

    fn on_payment(
        &self,
        state: &mut State,
        mut order: ServiceOrder,
        amount_msat: u64,
        claim_deadline: Option<u32>,
    ) -> Result<Vec<Action>, String> {
        let id = order.order.order_id.clone();
        let Some(hash) = order.payment_hash() else {
            return Err(format!("order {id} has no valid preimage"));
        };
        let fail = vec![Action::FailBack(hash)];
        match &order.order.state {
            OrderState::Created => {
                let paid_enough = amount_msat >= order.order.fee.total.to_sat() * 1000;
                if unix_now() > order.order.expires_at {
                    order.order.state = OrderState::Expired;
                    self.write(state, order)?;
                    log::info!("liquidity order {id}: paid after it expired; failing back");
                    return Ok(fail);
                }
                if !paid_enough {
                    log::warn!("liquidity order {id}: paid {amount_msat} msat, too little");
                    return Ok(fail);
                }
                order.order.state = OrderState::Paid;
                order.claim_deadline = claim_deadline;
                self.write(state, order)?;
                log::info!("liquidity order {id}: paid; splicing");
                Ok(vec![Action::Splice(id)])
            }
            // LDK hands a held payment over again after a restart.
            OrderState::Paid if order.splice.is_none() && order.splice_requested_at.is_none() => {
                Ok(vec![Action::Splice(id)])
            }
            OrderState::Paid => Ok(Vec::new()),
            OrderState::Splicing { .. } | OrderState::Completed { .. } => match order.preimage() {
                Some(preimage) => Ok(vec![Action::Claim(preimage)]),
                None => Ok(fail),
            },
            OrderState::Failed { .. } | OrderState::Expired => Ok(fail),
        }
    }

    /// Follows the splices of paid orders (claiming the fee once a splice
    /// is broadcast, failing it back when the splice fails or time runs
    /// out) and expires unpaid orders. Call it every second or so.
    pub fn timer_tick(&self) {
        let height = self
            .coordinator
            .channel_manager
            .get_cm()
            .current_best_block()
            .height;
        let now = unix_now();
        let actions = {
            let mut state = self.lock();
            // Forget clients with no request in the last minute.
            state
                .recent
                .retain(|_, times| times.back().is_some_and(|t| t + 60 > now));
            let open: Vec<ServiceOrder> = state
                .orders
                .values()
                .filter(|o| o.order.state.is_open())
                .cloned()
                .collect();
            let mut actions = Vec::new();
            for order in open {
                match self.advance(&mut state, order, height, now) {
                    Ok(mut more) => actions.append(&mut more),
                    Err(e) => log::error!("liquidity: could not record an order change: {e}"),
                }
            }
            actions
        };
        self.act(actions);
    }

    fn advance(
        &self,
        state: &mut State,
        mut order: ServiceOrder,
        height: u32,
        now: u64,
    ) -> Result<Vec<Action>, String> {
        let id = order.order.order_id.clone();
        let Some(hash) = order.payment_hash() else {
            return Ok(Vec::new());
        };
        match order.order.state.clone() {
            OrderState::Created if now > order.order.expires_at => {
                order.order.state = OrderState::Expired;
                self.write(state, order)?;
                log::info!("liquidity order {id}: expired unpaid");
                Ok(Vec::new())
            }
            OrderState::Paid if order.splice.is_none() && order.splice_requested_at.is_none() => {
                // Paid before a restart that came before its splice.
                Ok(vec![Action::Splice(id)])
            }
            OrderState::Paid => {
                if order.splice.is_none() {
                    if let Some(splice) = self.find_requested_splice(&order) {
                        order.splice = Some(splice);
                        self.write(state, order.clone())?;
                        log::info!("liquidity order {id}: adopted splice {splice}");
                    }
                }
                let record = order
                    .splice
                    .and_then(|splice| self.coordinator.splice_status(splice));
                let out_of_time = order.claim_deadline.is_some_and(|deadline| {
                    height + GIVE_UP_BLOCKS_BEFORE_CLAIM_DEADLINE >= deadline
                });
                match record.map(|r| (r.state, r.txid)) {
                    Some((state_now, Some(txid))) if state_now.is_broadcast() => {
                        order.order.state = if state_now == SpliceState::Locked {
                            OrderState::Completed { txid }
                        } else {
                            OrderState::Splicing { txid }
                        };
                        let preimage = order.preimage();
                        self.write(state, order)?;
                        log::info!(
                            "liquidity order {id}: splice {txid} broadcast; claiming the fee"
                        );
                        Ok(preimage.map(Action::Claim).into_iter().collect())
                    }
                    Some((SpliceState::Failed { .. }, _))
                        if order.splice_attempts + 1 < MAX_SPLICE_ATTEMPTS && !out_of_time =>
                    {
                        // Never signed, so it can never confirm: try again.
                        log::info!("liquidity order {id}: its splice failed; starting another");
                        order.splice_attempts += 1;
                        order.splice = None;
                        order.splice_requested_at = None;
                        self.write(state, order)?;
                        Ok(vec![Action::Splice(id)])
                    }
                    Some((SpliceState::Failed { reason }, _)) => self
                        .fail(state, order, format!("the splice failed: {reason}"))
                        .map(|()| vec![Action::FailBack(hash)]),
                    Some((SpliceState::Cancelled, _)) => self
                        .fail(state, order, "the splice was cancelled".into())
                        .map(|()| vec![Action::FailBack(hash)]),
                    Some((s, _)) if out_of_time && !s.is_signed() => {
                        if let Some(splice) = order.splice {
                            let _ = self.coordinator.cancel_splice(splice);
                        }
                        self.fail(
                            state,
                            order,
                            "the splice was not signed before the fee HTLC's deadline".into(),
                        )
                        .map(|()| vec![Action::FailBack(hash)])
                    }
                    None if out_of_time => self
                        .fail(
                            state,
                            order,
                            "the splice did not start before the fee HTLC's deadline".into(),
                        )
                        .map(|()| vec![Action::FailBack(hash)]),
                    _ => Ok(Vec::new()),
                }
            }
            OrderState::Splicing { txid } => {
                let locked = order
                    .splice
                    .and_then(|splice| self.coordinator.splice_status(splice))
                    .is_some_and(|r| r.state == SpliceState::Locked);
                if locked {
                    let txid = self
                        .coordinator
                        .splice_status(order.splice.unwrap_or(SpliceId(0)))
                        .and_then(|r| r.txid)
                        .unwrap_or(txid);
                    order.order.state = OrderState::Completed { txid };
                    self.write(state, order)?;
                    log::info!("liquidity order {id}: completed in {txid}");
                }
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn fail(
        &self,
        state: &mut State,
        mut order: ServiceOrder,
        reason: String,
    ) -> Result<(), String> {
        log::warn!(
            "liquidity order {}: {reason}; failing the fee HTLC back",
            order.order.order_id
        );
        order.order.state = OrderState::Failed { reason };
        self.write(state, order)
    }

    /// Does what written states call for, with no lock held.
    fn act(&self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Claim(preimage) => self
                    .coordinator
                    .channel_manager
                    .get_cm()
                    .claim_funds(preimage),
                Action::FailBack(hash) => {
                    self.coordinator
                        .channel_manager
                        .get_cm()
                        .fail_htlc_backwards(&hash);
                    if let Some(f) = self
                        .failed_back
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                    {
                        f(hash);
                    }
                }
                Action::Splice(order_id) => self.start_splice(&order_id),
            }
        }
    }

    /// The splice the coordinator started for `order` when a crash came
    /// between asking for it and writing its id: on the order's channel,
    /// adding its amount, started by us no earlier than the request.
    fn find_requested_splice(&self, order: &ServiceOrder) -> Option<SpliceId> {
        let requested_at = order.splice_requested_at?;
        let since = std::time::UNIX_EPOCH + std::time::Duration::from_secs(requested_at);
        self.coordinator
            .list_splices()
            .into_iter()
            .filter(|r| {
                r.channel_id == order.order.channel_id
                    && r.counterparty == order.client
                    && !r.is_theirs()
                    && r.add == order.order.amount
                    && r.batch.is_none()
                    && !matches!(r.state, SpliceState::Failed { .. } | SpliceState::Cancelled)
                    && r.created_at >= since
            })
            .min_by_key(|r| r.created_at)
            .map(|r| r.id)
    }

    /// Starts the splice of a paid order and writes its id; a splice that
    /// cannot start fails the order and its HTLC back. That the splice is
    /// asked for is written first, so a crash in between never leads to a
    /// second splice (the next tick adopts the first).
    fn start_splice(&self, order_id: &str) {
        {
            let mut state = self.lock();
            let Some(mut order) = state.orders.get(order_id).cloned() else {
                return;
            };
            if order.order.state != OrderState::Paid
                || order.splice.is_some()
                || order.splice_requested_at.is_some()
            {
                return;
            }
            // Whole seconds, rounded down: the splice record is never older.
            order.splice_requested_at = Some(unix_now());
            if let Err(e) = self.write(&mut state, order) {
                log::error!("liquidity order {order_id}: could not record the splice request: {e}");
                return;
            }
        }
        let Some(order) = self.lock().orders.get(order_id).cloned() else {
            return;
        };
        let fee = FeePolicy::fixed(order.order.fee.feerate);
        let started = self.coordinator.resize(
            &order.order.channel_id,
            &order.client,
            ResizeRequest::splice_in(order.order.amount),
            fee,
        );
        let mut state = self.lock();
        let Some(mut current) = state.orders.get(order_id).cloned() else {
            return;
        };
        let result = match started {
            Ok(splice) => {
                current.splice = Some(splice);
                self.write(&mut state, current).map(|()| Vec::new())
            }
            Err(e) => {
                let hash = current.payment_hash();
                self.fail(
                    &mut state,
                    current,
                    format!("the splice could not start: {e}"),
                )
                .map(|()| hash.map(Action::FailBack).into_iter().collect())
            }
        };
        drop(state);
        match result {
            Ok(actions) => self.act(actions),
            // The splice goes on; the next tick adopts it from the journal.
            Err(e) => log::error!("liquidity order {order_id}: could not record its splice: {e}"),
        }
    }
}

/// `get_info` takes no parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

fn internal(e: serde_json::Error) -> RpcError {
    RpcError::new(INTERNAL_ERROR, format!("internal error: {e}"))
}
