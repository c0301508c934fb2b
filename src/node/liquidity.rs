//! Liquidity orders on the node: the client every node has, the service a
//! node runs when built with [`NodeBuilder::liquidity_service`], and
//! lightning-liquidity's LSPS service or client beside them on the same
//! message type.

use std::collections::HashMap;
use std::str::FromStr;

use lightning::ln::msgs::{Init, LightningError};
use lightning::types::features::{InitFeatures, NodeFeatures};
use lightning_liquidity::lsps0::ser::RawLSPSMessage;
use lightning_liquidity::LiquidityServiceConfig;
use serde_json::{Map, Value};

use super::*;
use crate::liquidity::{
    Answer, ClientError, ClientOrder, CreateOrder, LiquidityEvent, OrderState, OtherLsps, RpcError,
    ServiceOrderView, Terms, INVALID_PARAMS,
};

/// How long the node waits for a service's answer.
pub const LIQUIDITY_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`Node::wait_for_liquidity_order`] asks the service. Under the
/// default limit of 30 requests a minute with room to spare.
const ORDER_POLL_INTERVAL: Duration = Duration::from_secs(3);

impl Node {
    /// The node's liquidity client (every node has one).
    pub fn liquidity_client(&self) -> &Arc<crate::liquidity::LiquidityClient> {
        &self.liquidity.client
    }

    /// The node's liquidity service, when it was built with one.
    pub fn liquidity_service(&self) -> Option<&Arc<NodeLiquidityService>> {
        self.liquidity.service.as_ref()
    }

    /// lightning-liquidity's manager, when the node was built with an LSPS
    /// service or client ([`NodeBuilder::lsps_service`],
    /// [`NodeBuilder::lsps_client`]). Its events are the application's.
    pub fn lsps_manager(&self) -> Option<&Arc<LspsManager>> {
        self.liquidity.lsps.as_ref()
    }

    /// Sends what the client queued and waits for the answer to `id`.
    async fn liquidity_answer(&self, id: crate::liquidity::RequestId) -> Result<Answer, NodeError> {
        self.wiring.send_messages.notify_one();
        let client = self.liquidity.client.clone();
        let mut answer = None;
        self.wait_until(LIQUIDITY_ANSWER_TIMEOUT, "the service's answer", |_| {
            answer = client.take_answer(&id);
            answer.is_some()
        })
        .await?;
        answer
            .unwrap_or(Err(ClientError::Disconnected))
            .map_err(NodeError::Liquidity)
    }

    fn connected_service(&self, service: &PublicKey) -> Result<(), NodeError> {
        if self.is_connected(service) {
            Ok(())
        } else {
            Err(NodeError::Connection(format!(
                "not connected to the liquidity service {service}"
            )))
        }
    }

    /// Asks `service` for its liquidity terms.
    pub async fn liquidity_terms(&self, service: PublicKey) -> Result<Terms, NodeError> {
        self.connected_service(&service)?;
        let id = self.liquidity.client.get_info(service);
        match self.liquidity_answer(id).await? {
            Answer::Terms(terms) => Ok(terms),
            other => Err(NodeError::Liquidity(ClientError::BadAnswer(format!(
                "expected terms, got {other:?}"
            )))),
        }
    }

    /// Buys `amount` of inbound liquidity on `channel_id` from its
    /// counterparty: prices it from the service's terms (refusing with
    /// [`ClientError::FeeAboveLimit`] before ordering when the fee would be
    /// above `max_fee`), orders it, checks the order (channel, amount, a fee
    /// that adds up, an invoice from the service for exactly the fee, at
    /// most `max_fee`) and pays the fee invoice. The service splices
    /// `amount` in and claims the fee only once the splice is broadcast;
    /// otherwise the payment fails back. Follow it with
    /// [`Node::wait_for_liquidity_order`].
    ///
    /// `client_order_id` makes a retry safe: the same id gets the same
    /// order (paid once), never a second splice. Without one the node picks
    /// a fresh id.
    pub async fn buy_liquidity(
        &self,
        channel_id: &ChannelId,
        amount: Amount,
        max_fee: Amount,
        client_order_id: Option<String>,
    ) -> Result<ClientOrder, NodeError> {
        let channel = self
            .channel(channel_id)
            .ok_or_else(|| NodeError::InvalidInput(format!("no channel {channel_id}")))?;
        if !self.config.accept_inbound_splices {
            return Err(NodeError::InvalidInput(
                "this node refuses inbound splices, so the service could not add liquidity: \
                 build it with accept_inbound_splices(true)"
                    .into(),
            ));
        }
        let service = channel.counterparty.node_id;
        self.connected_service(&service)?;
        let client_order_id = client_order_id.unwrap_or_else(|| {
            use bitcoin::hex::DisplayHex;
            self.keys.get_secure_random_bytes()[..12].to_lower_hex_string()
        });
        if !crate::liquidity::valid_client_order_id(&client_order_id) {
            return Err(NodeError::InvalidInput(
                "client_order_id must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'".into(),
            ));
        }
        // A new order is priced from the service's terms first: one refused
        // for its fee after it was made would stay open, unpaid, at the
        // service until it expires, holding one of our open-order slots.
        let known = self
            .liquidity
            .client
            .orders()
            .iter()
            .any(|o| o.service == service && o.order.client_order_id == client_order_id);
        if !known {
            let terms = self.liquidity_terms(service).await?;
            if let Some(fee) = terms
                .fee_for(amount, terms.feerate)
                .map(|quote| quote.total)
                .filter(|total| *total > max_fee)
            {
                return Err(NodeError::Liquidity(ClientError::FeeAboveLimit {
                    fee,
                    max_fee,
                }));
            }
        }
        let request = CreateOrder {
            channel_id: *channel_id,
            amount,
            client_order_id,
        };
        let id = self.liquidity.client.create_order(service, request);
        let order = match self.liquidity_answer(id).await? {
            Answer::Order(order) => order,
            other => {
                return Err(NodeError::Liquidity(ClientError::BadAnswer(format!(
                    "expected an order, got {other:?}"
                ))))
            }
        };
        if order.fee.total > max_fee {
            return Err(NodeError::Liquidity(ClientError::FeeAboveLimit {
                fee: order.fee.total,
                max_fee,
            }));
        }
        let client_order = ClientOrder {
            service,
            order: order.clone(),
        };
        if order.state != OrderState::Created {
            // A retry of an order already paid.
            return Ok(client_order);
        }
        let invoice = Bolt11Invoice::from_str(&order.invoice)
            .map_err(|e| NodeError::Liquidity(ClientError::BadAnswer(format!("invoice: {e}"))))?;
        let paid_before = self
            .payment(&invoice.payment_hash())
            .is_some_and(|p| p.status != PaymentStatus::Failed);
        if !paid_before {
            self.pay_invoice(&invoice)?;
            self.wiring.send_messages.notify_one();
        }
        Ok(client_order)
    }

    /// Asks the service where order `order_id` stands (and records it).
    pub async fn refresh_liquidity_order(&self, order_id: &str) -> Result<ClientOrder, NodeError> {
        let known = self
            .liquidity
            .client
            .orders()
            .into_iter()
            .find(|o| o.order.order_id == order_id)
            .ok_or_else(|| NodeError::InvalidInput(format!("no liquidity order {order_id}")))?;
        self.connected_service(&known.service)?;
        let id = self.liquidity.client.get_order(known.service, order_id);
        match self.liquidity_answer(id).await? {
            Answer::Order(order) => Ok(ClientOrder {
                service: known.service,
                order,
            }),
            other => Err(NodeError::Liquidity(ClientError::BadAnswer(format!(
                "expected an order, got {other:?}"
            )))),
        }
    }

    /// Asks the service about order `order_id` every few seconds until
    /// `done` holds for it (e.g. `OrderState::is_final`), for at most
    /// `timeout`. Progress goes to the log.
    pub async fn wait_for_liquidity_order(
        &self,
        order_id: &str,
        timeout: Duration,
        mut done: impl FnMut(&OrderState) -> bool,
    ) -> Result<ClientOrder, NodeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_state = None;
        loop {
            let order = self.refresh_liquidity_order(order_id).await?;
            if done(&order.order.state) {
                return Ok(order);
            }
            if last_state.as_ref() != Some(&order.order.state) {
                log::info!("liquidity order {order_id}: {}", order.order.state);
                last_state = Some(order.order.state.clone());
            }
            if tokio::time::Instant::now() + ORDER_POLL_INTERVAL > deadline {
                return Err(NodeError::Timeout(format!(
                    "liquidity order {order_id} still {}",
                    order.order.state
                )));
            }
            tokio::time::sleep(ORDER_POLL_INTERVAL).await;
        }
    }

    /// The orders this node placed as a client, oldest first.
    pub fn liquidity_orders(&self) -> Vec<ClientOrder> {
        self.liquidity.client.orders()
    }

    /// The orders this node's service took, oldest first (none without a
    /// service).
    pub fn liquidity_service_orders(&self) -> Vec<ServiceOrderView> {
        self.liquidity
            .service
            .as_ref()
            .map(|s| s.orders())
            .unwrap_or_default()
    }

    /// Order changes on both sides since the last call.
    pub fn take_liquidity_events(&self) -> Vec<LiquidityEvent> {
        let mut events = self.liquidity.client.take_events();
        if let Some(service) = &self.liquidity.service {
            events.extend(service.take_events());
        }
        events
    }
}

/// The node's liquidity parts.
pub(super) struct LiquidityParts {
    pub(super) client: Arc<crate::liquidity::LiquidityClient>,
    pub(super) service: Option<Arc<NodeLiquidityService>>,
    pub(super) lsps: Option<Arc<LspsManager>>,
}

/// lightning-liquidity's manager behind the node's message handler: it gets
/// requests for the protocols it serves (and only those it can read), and
/// answers only to requests it sent.
pub(super) struct LspsAdapter {
    manager: Arc<LspsManager>,
    config: Option<LiquidityServiceConfig>,
    /// The requests it sent that are not answered yet, by id.
    asked: Mutex<HashMap<String, PublicKey>>,
}

impl LspsAdapter {
    pub(super) fn new(manager: Arc<LspsManager>, config: Option<LiquidityServiceConfig>) -> Self {
        LspsAdapter {
            manager,
            config,
            asked: Mutex::new(HashMap::new()),
        }
    }

    fn serves(&self, protocol: u16) -> bool {
        self.config.as_ref().is_some_and(|c| match protocol {
            1 => c.lsps1_service_config.is_some(),
            2 => c.lsps2_service_config.is_some(),
            5 => c.lsps5_service_config.is_some(),
            _ => false,
        })
    }
}

fn readable<T: serde::de::DeserializeOwned>(params: &Map<String, Value>) -> Result<(), RpcError> {
    serde_json::from_value::<T>(Value::Object(params.clone()))
        .map(|_| ())
        .map_err(|e| RpcError::new(INVALID_PARAMS, format!("invalid params: {e}")))
}

impl OtherLsps for LspsAdapter {
    fn protocols(&self) -> Vec<u16> {
        [1, 2, 5].into_iter().filter(|p| self.serves(*p)).collect()
    }

    fn handles(&self, method: &str) -> bool {
        match method {
            crate::liquidity::LIST_PROTOCOLS => self.config.is_some(),
            "lsps1.get_info" | "lsps1.create_order" | "lsps1.get_order" => self.serves(1),
            "lsps2.get_info" | "lsps2.buy" => self.serves(2),
            "lsps5.set_webhook" | "lsps5.list_webhooks" | "lsps5.remove_webhook" => self.serves(5),
            _ => false,
        }
    }

    fn check_params(&self, method: &str, params: &Map<String, Value>) -> Result<(), RpcError> {
        use lightning_liquidity::{lsps0, lsps1, lsps2, lsps5};
        match method {
            crate::liquidity::LIST_PROTOCOLS => {
                readable::<lsps0::msgs::LSPS0ListProtocolsRequest>(params)
            }
            "lsps1.get_info" => readable::<lsps1::msgs::LSPS1GetInfoRequest>(params),
            "lsps1.create_order" => readable::<lsps1::msgs::LSPS1CreateOrderRequest>(params),
            "lsps1.get_order" => readable::<lsps1::msgs::LSPS1GetOrderRequest>(params),
            "lsps2.get_info" => readable::<lsps2::msgs::LSPS2GetInfoRequest>(params),
            "lsps2.buy" => readable::<lsps2::msgs::LSPS2BuyRequest>(params),
            "lsps5.set_webhook" => readable::<lsps5::msgs::SetWebhookRequest>(params),
            "lsps5.list_webhooks" => readable::<lsps5::msgs::ListWebhooksRequest>(params),
            "lsps5.remove_webhook" => readable::<lsps5::msgs::RemoveWebhookRequest>(params),
            _ => Err(RpcError::new(
                crate::liquidity::METHOD_NOT_FOUND,
                format!("method not found: {method}"),
            )),
        }
    }

    fn handle_message(&self, payload: String, from: PublicKey) -> Result<(), LightningError> {
        if let Ok(Value::Object(message)) = serde_json::from_str::<Value>(&payload) {
            if !message.contains_key("method") {
                let id = message.get("id").and_then(Value::as_str).unwrap_or("");
                let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
                if asked.get(id) != Some(&from) {
                    log::debug!("lsps: dropping an answer from {from} to nothing it asked");
                    return Ok(());
                }
                asked.remove(id);
            }
        }
        lightning::ln::peer_handler::CustomMessageHandler::handle_custom_message(
            &*self.manager,
            RawLSPSMessage { payload },
            from,
        )
    }

    fn take_messages(&self) -> Vec<(PublicKey, String)> {
        let messages: Vec<(PublicKey, String)> =
            lightning::ln::peer_handler::CustomMessageHandler::get_and_clear_pending_msg(
                &*self.manager,
            )
            .into_iter()
            .map(|(peer, message)| (peer, message.payload))
            .collect();
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        for (peer, payload) in &messages {
            if let Ok(Value::Object(message)) = serde_json::from_str::<Value>(payload) {
                if message.contains_key("method") {
                    if let Some(id) = message.get("id").and_then(Value::as_str) {
                        asked.insert(id.to_string(), *peer);
                    }
                }
            }
        }
        messages
    }

    fn peer_connected(&self, peer: PublicKey, init: &Init, inbound: bool) -> Result<(), ()> {
        lightning::ln::peer_handler::CustomMessageHandler::peer_connected(
            &*self.manager,
            peer,
            init,
            inbound,
        )
    }

    fn peer_disconnected(&self, peer: PublicKey) {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, asked| *asked != peer);
        lightning::ln::peer_handler::CustomMessageHandler::peer_disconnected(&*self.manager, peer)
    }

    fn node_features(&self) -> NodeFeatures {
        lightning::ln::peer_handler::CustomMessageHandler::provided_node_features(&*self.manager)
    }

    fn init_features(&self, peer: PublicKey) -> InitFeatures {
        lightning::ln::peer_handler::CustomMessageHandler::provided_init_features(
            &*self.manager,
            peer,
        )
    }
}

/// What [`build_liquidity`] assembles.
pub(super) struct BuiltLiquidity {
    pub(super) parts: LiquidityParts,
    pub(super) handler: Arc<crate::liquidity::LiquidityMessageHandler>,
}

/// The liquidity client, the service and lightning-liquidity's manager as
/// `settings` asks, and the message handler in front of them.
pub(super) fn build_liquidity(
    settings: super::builder::LiquiditySettings,
    coordinator: &Arc<NodeCoordinator>,
    keys: &Arc<KeysManager>,
    channel_manager: &Arc<ChannelManager>,
    store: &Arc<Store>,
    bitcoind: &Arc<Bitcoind>,
    shared_store: &SharedStore,
) -> Result<BuiltLiquidity, NodeError> {
    let entropy: Arc<dyn EntropySource + Send + Sync> = keys.clone();
    let client = Arc::new(
        crate::liquidity::LiquidityClient::new(shared_store.clone(), entropy.clone())
            .map_err(|e| NodeError::Storage(format!("liquidity client: {e}")))?,
    );
    let service = match settings.service {
        Some(policy) => Some(Arc::new(
            NodeLiquidityService::new(coordinator.clone(), policy, entropy, shared_store.clone())
                .map_err(|e| NodeError::Storage(format!("liquidity service: {e}")))?,
        )),
        None => None,
    };
    let lsps = if settings.lsps_service.is_some() || settings.lsps_client.is_some() {
        Some(Arc::new(
            LspsManager::new(
                keys.clone(),
                keys.clone(),
                channel_manager.clone(),
                store.clone(),
                bitcoind.clone(),
                settings.lsps_service.clone(),
                settings.lsps_client,
            )
            .map_err(|e| NodeError::Storage(format!("lightning-liquidity: {e}")))?,
        ))
    } else {
        None
    };
    let other: Option<Arc<dyn OtherLsps>> = lsps.as_ref().map(|manager| {
        Arc::new(LspsAdapter::new(manager.clone(), settings.lsps_service)) as Arc<dyn OtherLsps>
    });
    let endpoint: Option<Arc<dyn crate::liquidity::LiquidityEndpoint>> = service
        .clone()
        .map(|s| s as Arc<dyn crate::liquidity::LiquidityEndpoint>);
    let handler = Arc::new(crate::liquidity::LiquidityMessageHandler::new(
        endpoint,
        Some(client.clone()),
        other,
    ));
    Ok(BuiltLiquidity {
        parts: LiquidityParts {
            client,
            service,
            lsps,
        },
        handler,
    })
}
