//! The custom message handler for LSPS0's message type: it routes this
//! protocol's requests to the service, answers to the client, answers
//! `lsps0.list_protocols` with this protocol included, and passes the
//! methods of another LSPS implementation (lightning-liquidity's
//! `LiquidityManager`) to it. What cannot be read gets a JSON-RPC error
//! answer; no peer is ever disconnected or ignored for what it sent.

use std::ops::Deref;
use std::sync::{Arc, Mutex};

use bitcoin::secp256k1::PublicKey;
use lightning::chain::chaininterface::FeeEstimator;
use lightning::ln::channelmanager::AChannelManager;
use lightning::ln::msgs::{DecodeError, Init, LightningError};
use lightning::ln::peer_handler::CustomMessageHandler;
use lightning::ln::wire::CustomMessageReader;
use lightning::types::features::{InitFeatures, NodeFeatures};
use lightning::util::ser::LengthLimitedRead;
use serde_json::{json, Map, Value};

use super::client::{LiquidityClient, REQUEST_ID_PREFIX};
use super::msgs::{LIST_PROTOCOLS, METHOD_PREFIX, PROTOCOL_NUMBER};
use super::service::LiquidityService;
use super::wire::{self, Incoming, RawMessage, RpcError, LSPS_MESSAGE_TYPE, METHOD_NOT_FOUND};

/// The largest Lightning message payload; nothing longer can arrive.
const MAX_MESSAGE_BYTES: u64 = 65_535;

/// Answers this protocol's requests (a [`LiquidityService`]).
pub trait LiquidityEndpoint: Send + Sync {
    /// The answer to `client`'s request.
    fn handle_request(
        &self,
        client: &PublicKey,
        method: &str,
        params: Map<String, Value>,
    ) -> Result<Value, RpcError>;
}

impl<CM: Deref, F: Deref> LiquidityEndpoint for LiquidityService<CM, F>
where
    CM: Send + Sync,
    F: Send + Sync,
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    fn handle_request(
        &self,
        client: &PublicKey,
        method: &str,
        params: Map<String, Value>,
    ) -> Result<Value, RpcError> {
        LiquidityService::handle_request(self, client, method, params)
    }
}

/// Another LSPS implementation sharing message type 37913, such as
/// lightning-liquidity's `LiquidityManager` (the bundled node adapts it).
pub trait OtherLsps: Send + Sync {
    /// The protocol numbers it serves, for `lsps0.list_protocols`.
    fn protocols(&self) -> Vec<u16>;
    /// Whether it handles requests for `method` (e.g. `lsps1.` methods).
    fn handles(&self, method: &str) -> bool;
    /// Checks a request's parameters before it is passed on; an `Err` is
    /// answered instead (lightning-liquidity ignores a peer whose message it
    /// cannot read, so it is given only what it reads).
    fn check_params(&self, _method: &str, _params: &Map<String, Value>) -> Result<(), RpcError> {
        Ok(())
    }
    /// A message for it: a request for one of its methods, or an answer
    /// that is not one of ours.
    fn handle_message(&self, payload: String, from: PublicKey) -> Result<(), LightningError>;
    /// What it wants to send.
    fn take_messages(&self) -> Vec<(PublicKey, String)>;
    /// A peer connected; `Err` asks to disconnect it (as LDK's
    /// `CustomMessageHandler::peer_connected` does).
    #[allow(clippy::result_unit_err)]
    fn peer_connected(&self, peer: PublicKey, init: &Init, inbound: bool) -> Result<(), ()>;
    /// A peer disconnected.
    fn peer_disconnected(&self, peer: PublicKey);
    /// The node features it sets.
    fn node_features(&self) -> NodeFeatures;
    /// The init features it sends `peer`.
    fn init_features(&self, peer: PublicKey) -> InitFeatures;
}

/// The handler to give a `PeerManager` as its custom message handler (it
/// reads message type 37913 too).
pub struct LiquidityMessageHandler {
    service: Option<Arc<dyn LiquidityEndpoint>>,
    client: Option<Arc<LiquidityClient>>,
    other: Option<Arc<dyn OtherLsps>>,
    outbox: Mutex<Vec<(PublicKey, RawMessage)>>,
}

impl LiquidityMessageHandler {
    /// A handler for `service` (answering clients), `client` (asking
    /// services) and `other` (another LSPS implementation), any of which
    /// may be absent.
    pub fn new(
        service: Option<Arc<dyn LiquidityEndpoint>>,
        client: Option<Arc<LiquidityClient>>,
        other: Option<Arc<dyn OtherLsps>>,
    ) -> Self {
        LiquidityMessageHandler {
            service,
            client,
            other,
            outbox: Mutex::new(Vec::new()),
        }
    }

    fn answer(&self, to: PublicKey, id: Option<&str>, outcome: Result<Value, RpcError>) {
        self.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((to, wire::response(id, outcome)));
    }

    /// Handles one payload from `from`; never fails, never panics.
    pub fn handle_payload(&self, payload: &[u8], from: PublicKey) {
        match wire::parse(payload) {
            Incoming::Invalid { id, error } => {
                log::debug!("liquidity: unreadable message from {from}: {error}");
                self.answer(from, id.as_deref(), Err(error));
            }
            Incoming::Request { id, method, params } => {
                self.handle_request(from, id, method, params, payload)
            }
            Incoming::Response { id, outcome } => {
                if id.starts_with(REQUEST_ID_PREFIX) {
                    match &self.client {
                        Some(client) if client.is_waiting_for(&id) => {
                            client.handle_response(from, &id, outcome)
                        }
                        _ => log::debug!("liquidity: answer {id} from {from} to nothing we ask"),
                    }
                    return;
                }
                match &self.other {
                    Some(other) => self.forward(other, payload, from),
                    None => log::debug!("liquidity: answer {id} from {from} to nothing we asked"),
                }
            }
        }
    }

    fn handle_request(
        &self,
        from: PublicKey,
        id: String,
        method: String,
        params: Map<String, Value>,
        payload: &[u8],
    ) {
        if method.starts_with(METHOD_PREFIX) {
            let outcome = match &self.service {
                Some(service) => service.handle_request(&from, &method, params),
                None => Err(not_found(&method)),
            };
            return self.answer(from, Some(&id), outcome);
        }
        if method == LIST_PROTOCOLS && self.service.is_some() {
            let mut protocols = self
                .other
                .as_ref()
                .map(|o| o.protocols())
                .unwrap_or_default();
            protocols.push(PROTOCOL_NUMBER);
            protocols.sort_unstable();
            protocols.dedup();
            return self.answer(from, Some(&id), Ok(json!({ "protocols": protocols })));
        }
        match &self.other {
            Some(other) if other.handles(&method) => match other.check_params(&method, &params) {
                Ok(()) => self.forward(other, payload, from),
                Err(error) => self.answer(from, Some(&id), Err(error)),
            },
            _ if method == LIST_PROTOCOLS => {
                self.answer(from, Some(&id), Ok(json!({ "protocols": [] })))
            }
            _ => self.answer(from, Some(&id), Err(not_found(&method))),
        }
    }

    fn forward(&self, other: &Arc<dyn OtherLsps>, payload: &[u8], from: PublicKey) {
        // It parsed as JSON, so it is UTF-8.
        let Ok(text) = String::from_utf8(payload.to_vec()) else {
            return;
        };
        if let Err(e) = other.handle_message(text, from) {
            log::debug!("liquidity: the other LSPS handler refused a message from {from}: {e:?}");
        }
    }
}

fn not_found(method: &str) -> RpcError {
    RpcError::new(METHOD_NOT_FOUND, format!("method not found: {method}"))
}

impl CustomMessageReader for LiquidityMessageHandler {
    type CustomMessage = RawMessage;

    fn read<R: LengthLimitedRead>(
        &self,
        message_type: u16,
        buffer: &mut R,
    ) -> Result<Option<RawMessage>, DecodeError> {
        if message_type != LSPS_MESSAGE_TYPE {
            return Ok(None);
        }
        let length = buffer.remaining_bytes().min(MAX_MESSAGE_BYTES) as usize;
        let mut payload = vec![0u8; length];
        buffer
            .read_exact(&mut payload)
            .map_err(|_| DecodeError::ShortRead)?;
        Ok(Some(RawMessage { payload }))
    }
}

impl CustomMessageHandler for LiquidityMessageHandler {
    fn handle_custom_message(
        &self,
        msg: RawMessage,
        sender_node_id: PublicKey,
    ) -> Result<(), LightningError> {
        self.handle_payload(&msg.payload, sender_node_id);
        Ok(())
    }

    fn get_and_clear_pending_msg(&self) -> Vec<(PublicKey, RawMessage)> {
        let mut messages =
            std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(client) = &self.client {
            messages.extend(client.take_outgoing());
        }
        if let Some(other) = &self.other {
            messages.extend(other.take_messages().into_iter().map(|(peer, text)| {
                (
                    peer,
                    RawMessage {
                        payload: text.into_bytes(),
                    },
                )
            }));
        }
        messages
    }

    fn peer_disconnected(&self, their_node_id: PublicKey) {
        if let Some(client) = &self.client {
            client.peer_disconnected(&their_node_id);
        }
        if let Some(other) = &self.other {
            other.peer_disconnected(their_node_id);
        }
    }

    fn peer_connected(
        &self,
        their_node_id: PublicKey,
        msg: &Init,
        inbound: bool,
    ) -> Result<(), ()> {
        match &self.other {
            Some(other) => other.peer_connected(their_node_id, msg, inbound),
            None => Ok(()),
        }
    }

    fn provided_node_features(&self) -> NodeFeatures {
        self.other
            .as_ref()
            .map(|o| o.node_features())
            .unwrap_or_else(NodeFeatures::empty)
    }

    fn provided_init_features(&self, their_node_id: PublicKey) -> InitFeatures {
        self.other
            .as_ref()
            .map(|o| o.init_features(their_node_id))
            .unwrap_or_else(InitFeatures::empty)
    }
}
