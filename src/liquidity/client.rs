//! The client side: asks a service for its terms, orders liquidity on a
//! channel, follows the order, and keeps its orders across restarts. It
//! sends requests and matches their answers; paying an order's invoice is
//! the application's (the bundled node's `buy_liquidity` does it all).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use bitcoin::hex::DisplayHex;
use bitcoin::secp256k1::PublicKey;
use bitcoin::Amount;
use lightning::bolt11_invoice::Bolt11Invoice;
use lightning::sign::EntropySource;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::msgs::{CreateOrder, LiquidityEvent, Order, Terms, CREATE_ORDER, GET_INFO, GET_ORDER};
use super::wire::{self, RawMessage, RpcError};
use crate::store::{read_json, write_json, SharedStore, PERSISTENCE_NAMESPACE};

/// Where the client keeps its orders.
const ORDERS_NAMESPACE: &str = "liquidity_client_orders";

/// Every request id of this client starts so: an answer carrying such an
/// id is this client's (and never handed to another LSPS implementation,
/// which would take an answer it did not ask for as a reason to ignore the
/// peer).
pub const REQUEST_ID_PREFIX: &str = "ldks-";

/// Identifies one request the client sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub String);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An order the client placed, with the service it placed it with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClientOrder {
    /// The service.
    pub service: PublicKey,
    /// The order, as the service last answered.
    pub order: Order,
}

/// Why an answer is not what was asked for.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ClientError {
    /// The service answered with an error.
    Refused(RpcError),
    /// The service answered something that is not an answer to the request.
    BadAnswer(String),
    /// The connection to the service dropped before it answered.
    Disconnected,
    /// The order would cost more than the client allows: nothing was paid
    /// (and, when the service's terms showed it, nothing was ordered).
    FeeAboveLimit {
        /// The order's fee.
        fee: Amount,
        /// The most the client would pay.
        max_fee: Amount,
    },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Refused(e) => write!(f, "the service refused: {e}"),
            ClientError::BadAnswer(e) => write!(f, "the service's answer is not valid: {e}"),
            ClientError::Disconnected => write!(f, "the service disconnected before answering"),
            ClientError::FeeAboveLimit { fee, max_fee } => write!(
                f,
                "the order would cost {} sat, above the limit of {} sat; nothing was ordered or paid",
                fee.to_sat(),
                max_fee.to_sat()
            ),
        }
    }
}

impl std::error::Error for ClientError {}

/// What the client asked, to read the answer.
#[derive(Clone, Debug)]
struct Pending {
    service: PublicKey,
    method: &'static str,
    /// For `create_order`: what was asked, to check the order against.
    order_request: Option<CreateOrder>,
}

/// A typed answer.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Answer {
    /// `get_info`'s.
    Terms(Terms),
    /// `create_order`'s or `get_order`'s.
    Order(Order),
}

struct State {
    outbox: Vec<(PublicKey, RawMessage)>,
    pending: HashMap<String, Pending>,
    answers: HashMap<String, Result<Answer, ClientError>>,
    orders: BTreeMap<String, ClientOrder>,
    events: Vec<LiquidityEvent>,
}

/// The client of splice liquidity services: put it into a
/// [`LiquidityMessageHandler`](super::LiquidityMessageHandler).
pub struct LiquidityClient {
    store: SharedStore,
    entropy: Arc<dyn EntropySource + Send + Sync>,
    state: Mutex<State>,
    answered: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl LiquidityClient {
    /// A client keeping its orders in `store` (loaded now).
    pub fn new(
        store: SharedStore,
        entropy: Arc<dyn EntropySource + Send + Sync>,
    ) -> Result<Self, crate::SpliceError> {
        let mut orders = BTreeMap::new();
        let keys = store
            .list(PERSISTENCE_NAMESPACE, ORDERS_NAMESPACE)
            .map_err(|e| crate::SpliceError::Persistence(format!("listing orders: {e}")))?;
        for key in keys {
            let order: ClientOrder = read_json(&store, ORDERS_NAMESPACE, &key)
                .map_err(|e| crate::SpliceError::Persistence(e.to_string()))?
                .ok_or_else(|| crate::SpliceError::Persistence(format!("order {key} vanished")))?;
            orders.insert(order.order.order_id.clone(), order);
        }
        Ok(LiquidityClient {
            store,
            entropy,
            state: Mutex::new(State {
                outbox: Vec::new(),
                pending: HashMap::new(),
                answers: HashMap::new(),
                orders,
                events: Vec::new(),
            }),
            answered: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` whenever an answer arrives (with no lock held), e.g. to
    /// wake a task waiting for it.
    pub fn on_answer(&self, f: Box<dyn Fn() + Send + Sync>) {
        *self.answered.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    fn send(
        &self,
        service: PublicKey,
        method: &'static str,
        params: Value,
        order_request: Option<CreateOrder>,
    ) -> RequestId {
        let id = format!(
            "{REQUEST_ID_PREFIX}{}",
            self.entropy.get_secure_random_bytes()[..8].to_lower_hex_string()
        );
        let mut state = self.lock();
        state
            .outbox
            .push((service, wire::request(&id, method, params)));
        state.pending.insert(
            id.clone(),
            Pending {
                service,
                method,
                order_request,
            },
        );
        RequestId(id)
    }

    /// Asks `service` for its terms.
    pub fn get_info(&self, service: PublicKey) -> RequestId {
        self.send(service, GET_INFO, json!({}), None)
    }

    /// Orders liquidity from `service`. The same `client_order_id` gets the
    /// same order back, so a retry never makes a second one.
    pub fn create_order(&self, service: PublicKey, request: CreateOrder) -> RequestId {
        let params = serde_json::to_value(&request).unwrap_or_else(|_| json!({}));
        self.send(service, CREATE_ORDER, params, Some(request))
    }

    /// Asks `service` where order `order_id` stands.
    pub fn get_order(&self, service: PublicKey, order_id: &str) -> RequestId {
        self.send(service, GET_ORDER, json!({ "order_id": order_id }), None)
    }

    /// The answer to `id`, once it came (taken: a second call returns
    /// `None`).
    pub fn take_answer(&self, id: &RequestId) -> Option<Result<Answer, ClientError>> {
        self.lock().answers.remove(&id.0)
    }

    /// Every order this client placed, oldest first.
    pub fn orders(&self) -> Vec<ClientOrder> {
        let mut orders: Vec<ClientOrder> = self.lock().orders.values().cloned().collect();
        orders.sort_by_key(|o| o.order.created_at);
        orders
    }

    /// Order changes since the last call.
    pub fn take_events(&self) -> Vec<LiquidityEvent> {
        std::mem::take(&mut self.lock().events)
    }

    /// Whether `id` names a request of ours still waiting for its answer.
    pub(crate) fn is_waiting_for(&self, id: &str) -> bool {
        self.lock().pending.contains_key(id)
    }

    /// The requests to send.
    pub(crate) fn take_outgoing(&self) -> Vec<(PublicKey, RawMessage)> {
        std::mem::take(&mut self.lock().outbox)
    }

    /// An answer from `from` to request `id`.
    pub(crate) fn handle_response(
        &self,
        from: PublicKey,
        id: &str,
        outcome: Result<Value, RpcError>,
    ) {
        {
            let mut state = self.lock();
            let Some(pending) = state.pending.get(id).cloned() else {
                return;
            };
            if pending.service != from {
                // Only the node we asked answers our request.
                return;
            }
            state.pending.remove(id);
            let answer = match outcome {
                Err(error) => Err(ClientError::Refused(error)),
                Ok(value) => self.read_answer(&mut state, &pending, value),
            };
            state.answers.insert(id.to_string(), answer);
        }
        self.answered();
    }

    fn answered(&self) {
        if let Some(f) = self
            .answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            f();
        }
    }

    fn read_answer(
        &self,
        state: &mut State,
        pending: &Pending,
        value: Value,
    ) -> Result<Answer, ClientError> {
        let bad = |e: String| ClientError::BadAnswer(e);
        if pending.method == GET_INFO {
            return serde_json::from_value(value)
                .map(Answer::Terms)
                .map_err(|e| bad(e.to_string()));
        }
        let order: Order = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if let Some(request) = &pending.order_request {
            check_order(&order, request, &pending.service).map_err(bad)?;
        }
        let known = state.orders.get(&order.order_id);
        if pending.method == GET_ORDER && known.is_none() {
            return Err(bad(format!("{} is not an order of ours", order.order_id)));
        }
        if let Some(known) = known {
            if known.service != pending.service
                || known.order.invoice != order.invoice
                || known.order.amount != order.amount
                || known.order.channel_id != order.channel_id
            {
                return Err(bad(format!(
                    "the service changed order {} under us",
                    order.order_id
                )));
            }
        }
        let changed = known.is_none_or(|k| k.order != order);
        if changed {
            let record = ClientOrder {
                service: pending.service,
                order: order.clone(),
            };
            write_json(&self.store, ORDERS_NAMESPACE, &order.order_id, &record)
                .map_err(|e| bad(format!("could not record the order: {e}")))?;
            state.orders.insert(order.order_id.clone(), record);
            state.events.push(LiquidityEvent::ClientOrderChanged {
                service: pending.service,
                order: order.clone(),
            });
        }
        Ok(Answer::Order(order))
    }

    /// `service` disconnected: what it did not answer will not be answered.
    pub(crate) fn peer_disconnected(&self, service: &PublicKey) {
        let dropped = {
            let mut state = self.lock();
            let ids: Vec<String> = state
                .pending
                .iter()
                .filter(|(_, p)| p.service == *service)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &ids {
                state.pending.remove(id);
                state
                    .answers
                    .insert(id.clone(), Err(ClientError::Disconnected));
            }
            !ids.is_empty()
        };
        if dropped {
            self.answered();
        }
    }
}

/// Checks an order the service made for `request`: the same channel and
/// amount, a fee that adds up, and an invoice from `service` for exactly
/// the fee. Returns the invoice.
pub fn check_order(
    order: &Order,
    request: &CreateOrder,
    service: &PublicKey,
) -> Result<Bolt11Invoice, String> {
    if order.channel_id != request.channel_id || order.amount != request.amount {
        return Err("the order is for another channel or amount".into());
    }
    if order.client_order_id != request.client_order_id {
        return Err("the order carries another client_order_id".into());
    }
    let fee = &order.fee;
    let sum = fee
        .base
        .checked_add(fee.proportional)
        .and_then(|a| a.checked_add(fee.mining));
    if sum != Some(fee.total) {
        return Err("the fee's parts do not add up to its total".into());
    }
    let invoice = Bolt11Invoice::from_str(&order.invoice)
        .map_err(|e| format!("the invoice does not parse: {e}"))?;
    if invoice.amount_milli_satoshis() != fee.total.to_sat().checked_mul(1000) {
        return Err(format!(
            "the invoice asks for {:?} msat, the fee is {} sat",
            invoice.amount_milli_satoshis(),
            fee.total.to_sat()
        ));
    }
    let payee = invoice
        .payee_pub_key()
        .copied()
        .unwrap_or_else(|| invoice.recover_payee_pub_key());
    if payee != *service {
        return Err("the invoice is not the service's".into());
    }
    if fee.total > Amount::from_sat(21_000_000 * 100_000_000) {
        return Err("the fee is not a real amount".into());
    }
    Ok(invoice)
}
