//! Peers ask for splices: a liquidity-request protocol over LSPS0 (bLIP-50)
//! custom messages, with a service that splices its own funds into a
//! client's channel for a fee paid over Lightning, claimed only once the
//! splice is broadcast. See `docs/liquidity-protocol.md`.

mod client;
mod handler;
mod msgs;
mod policy;
mod service;
mod wire;

pub use client::{
    check_order, Answer, ClientError, ClientOrder, LiquidityClient, RequestId, REQUEST_ID_PREFIX,
};
pub use handler::{LiquidityEndpoint, LiquidityMessageHandler, OtherLsps};
pub use msgs::{
    valid_client_order_id, CreateOrder, FeeBreakdown, GetOrder, LiquidityEvent, Order, OrderError,
    OrderState, Terms, CREATE_ORDER, GET_INFO, GET_ORDER, LIST_PROTOCOLS, METHOD_PREFIX,
    PROTOCOL_NUMBER, PROTOCOL_VERSION,
};
pub use policy::{LiquidityPolicy, StaticTerms};
pub use service::{
    FailedBackHook, LiquidityService, ServiceOrderView, GIVE_UP_BLOCKS_BEFORE_CLAIM_DEADLINE,
    INVOICE_MIN_FINAL_CLTV_EXPIRY_DELTA, MAX_SPLICE_ATTEMPTS,
};
pub use wire::{
    parse, request, response, Incoming, RawMessage, RpcError, INTERNAL_ERROR, INVALID_PARAMS,
    INVALID_REQUEST, LSPS_MESSAGE_TYPE, MAX_DEPTH, MAX_ID_CHARS, MAX_PAYLOAD_BYTES,
    METHOD_NOT_FOUND, PARSE_ERROR,
};
