//! The daemon's JSON control API: one `POST /v1/<command>` route per CLI
//! command, a JSON object of parameters in, JSON out.
//!
//! Every request needs `Authorization: Bearer TOKEN` (the token in
//! `DIR/api-token`). The token is checked from the headers alone, before
//! any of the body is read: without it the answer is `401 {"error": ...}`
//! and the body is never read. Bodies are limited to [`MAX_BODY_BYTES`]: a
//! `Content-Length` over it is refused at once with 413, a chunked body is
//! cut off there (413 too). Bad parameters get `400 {"error": ...}`,
//! refusals by the node `422`. Liquidity calls, which ask a peer, may also
//! get `429` (the peer rate-limits us: ask again later) or `503` (the peer
//! is not connected or did not answer in time: ask again later).
//!
//! Node and coordinator calls that block (locks, store writes, coin
//! selection) run on tokio's blocking pool, at most [`MAX_BLOCKING_CALLS`]
//! at once, never on the runtime's worker threads: those drive the peer
//! connections and chain sync, and a handful of slow API calls there would
//! stall every channel. Calls that only await (`connect`, `closechannel`,
//! waiting for a payment or for events) run as they are.
//!
//! Liquidity (see `docs/liquidity-protocol.md`): `liquidityinfo
//! {"node_id"}` asks a peer for its terms; `liquiditybuy {"channel_id",
//! "amount_sat", "max_fee_sat"?, "client_order_id"?}` orders inbound
//! liquidity from the channel's counterparty and pays the fee invoice;
//! `liquidityorder {"order_id"}` asks the service where an order we bought
//! stands (an order we sold is answered from our own records);
//! `liquidityorders` lists what we bought (as the service last answered)
//! and, when the daemon runs a service, what we sold.
//!
//! Events: `events` lists the coordinator's unacknowledged splice and batch
//! events, each with an id `RUN:N`; `ackevents {"through": ID}` acknowledges
//! every event up to and including that one. See [`EventLedger`].
//!
//! Fee bumps (RBF) of our broadcast splices: `bumpfee {"id",
//! "feerate_sat_per_vb", "max_fee_sat"?, "quote"?}` replaces the splice's
//! transaction with one paying more (same amount and destinations) and
//! answers its record, with `candidates_before` (how many candidates it
//! had: the bump is negotiated once it has more and `bump` is null); with
//! `"quote": true` it answers what the bump would cost, doing nothing.
//! `autobump {"id", "auto_bump": {"target_blocks", "max_feerate_sat_per_vb",
//! "max_fee_sat"} | null}` turns automatic bumping of a splice on or off;
//! `splicein`, `spliceout` and `resize` take the same `auto_bump` object to
//! turn it on as they start. An unknown splice is a 404, a fee bump the
//! node refuses (too low a feerate, over the cap, nothing to bump) a 422
//! whose message names the number needed.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bitcoin::address::NetworkUnchecked;
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Address, Amount, FeeRate};
use ldk_splice::liquidity::{
    valid_client_order_id, ClientError, ClientOrder, Order, OrderError, ServiceOrderView, Terms,
    METHOD_NOT_FOUND,
};
use ldk_splice::node::{Node, NodeError, PaymentStatus};
use ldk_splice::{
    AutoBump, BatchId, BatchPlan, BumpQuote, ChannelRef, Destination, FeePolicy, Leg, Payout,
    ResizeRequest, SpliceError, SpliceEvent, SpliceId,
};
use lightning::ln::types::ChannelId;
use lightning::sign::EntropySource;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tower_http::limit::RequestBodyLimitLayer;

use crate::autobump::{self, AutoBumpParams};

/// The largest request body the API reads: 64 KiB (a batch plan with
/// hundreds of legs fits).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How many blocking node calls run at once. Twice the cores of a small
/// machine: a slow call (a splice's store writes, a quote's coin selection)
/// does not hold up a quick `getinfo`, yet API threads never outnumber the
/// runtime's by much when they compete for the CPU and for the node's
/// locks with peer traffic and chain sync. Further calls wait, in order, as
/// futures that hold no thread.
pub const MAX_BLOCKING_CALLS: usize = 4;

/// The most fee `liquiditybuy` pays unless told otherwise, in sat.
pub const DEFAULT_LIQUIDITY_MAX_FEE_SAT: u64 = 50_000;

/// The most bitcoin there is, in sat.
const MAX_MONEY_SAT: u64 = 21_000_000 * 100_000_000;

/// How long `events` may wait for a first event (`wait_secs`).
const MAX_EVENT_WAIT: Duration = Duration::from_secs(60);

/// The daemon's numbering of the coordinator's event queue.
///
/// The coordinator keeps splice and batch events (one queue for both) until
/// they are acknowledged, oldest first, and does not expose their sequence
/// numbers. This daemon is the queue's only consumer, and only
/// `ackevents` removes events (from the front, under this ledger's lock), so
/// the `i`-th pending event (0-based) is event number `acked + i + 1` of
/// this run, and a number, once shown, always names the same event.
///
/// Events are shown as `RUN:N`, `RUN` being random per daemon start:
/// `ackevents {"through": "RUN:N"}` acknowledges events up to and including
/// N. Numbers follow the order events were queued, and `events` lists every
/// pending event, so a listing that shows N also shows every event before N
/// that was still pending. Two clients acknowledging, or one
/// acting on a stale listing, therefore never acknowledge an event they
/// have not seen: what another client already acknowledged is skipped (the
/// call is idempotent), newer events stay, and an id from an earlier run of
/// the daemon (whose numbering was reset by the restart) is refused with 409.
pub struct EventLedger {
    /// Events this run acknowledged.
    acked: u64,
}

/// What every handler shares.
pub struct AppState {
    /// The running node.
    pub node: Node,
    /// The bearer token clients must present.
    token: String,
    /// Set when `stop` is called: the daemon then shuts down.
    stop: tokio::sync::watch::Sender<bool>,
    /// Crash points, when the daemon was started for crash tests.
    crash: Option<Arc<crate::crash::CrashPoints>>,
    /// Permits for blocking node calls ([`MAX_BLOCKING_CALLS`]).
    blocking_calls: Arc<Semaphore>,
    /// This run's event numbering.
    events: Mutex<EventLedger>,
    /// This run's event id prefix.
    run: String,
}

impl AppState {
    /// The state of an API serving `node` to clients presenting `token`.
    pub fn new(
        node: Node,
        token: String,
        stop: tokio::sync::watch::Sender<bool>,
        crash: Option<Arc<crate::crash::CrashPoints>>,
    ) -> Self {
        let run = node.keys().get_secure_random_bytes()[..4].to_lower_hex_string();
        AppState {
            node,
            token,
            stop,
            crash,
            blocking_calls: Arc::new(Semaphore::new(MAX_BLOCKING_CALLS)),
            events: Mutex::new(EventLedger { acked: 0 }),
            run,
        }
    }

    /// Runs `call` on tokio's blocking pool once a permit is free; the
    /// permit is held until `call` returns, even if the client goes away.
    async fn blocking<T, F>(self: &Arc<Self>, call: F) -> Result<T, ApiError>
    where
        F: FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .blocking_calls
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("the daemon is stopping"))?;
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            call(&state)
        })
        .await
        .map_err(|e| ApiError::internal(format!("the node call did not finish: {e}")))?
    }
}

/// An error answer: an HTTP status and a message, sent as `{"error": msg}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn refused(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message.to_string())
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body over the API's limit of {} KiB",
                MAX_BODY_BYTES / 1024
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult = Result<Value, ApiError>;

/// The API's routes. Layers, outermost first: the token check (headers
/// only), 413s as JSON, the body limit, then the routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/{command}", post(handle))
        .fallback(|| async {
            ApiError::not_found("no such route; use POST /v1/<command>").into_response()
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(middleware::map_response(json_too_large))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Compares two strings in time independent of where they differ.
fn token_matches(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| token_matches(t.trim(), token))
}

/// Answers 401 unless the request carries the token, looking at the
/// headers only: the body of a refused request is never read.
async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if !authorized(request.headers(), &state.token) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token (send Authorization: Bearer <DIR/api-token>)",
        )
        .into_response();
    }
    next.run(request).await
}

/// The body limit's 413 (a Content-Length over the limit) as JSON, like
/// every other error.
async fn json_too_large(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return ApiError::too_large().into_response();
    }
    response
}

async fn handle(
    State(state): State<Arc<AppState>>,
    Path(command): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::too_large().into_response()
        }
        Err(e) => {
            return ApiError::new(e.status(), format!("cannot read the request body: {e}"))
                .into_response()
        }
    };
    let params: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return ApiError::bad_request(format!("request body is not JSON: {e}"))
                    .into_response()
            }
        }
    };
    log::info!("api: {command}");
    match dispatch(&state, &command, params).await {
        Ok(value) => Json(value).into_response(),
        Err(e) => {
            log::info!("api: {command} failed: {}", e.message);
            e.into_response()
        }
    }
}

/// Decodes a command's parameters.
fn params<T: serde::de::DeserializeOwned>(command: &str, value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("bad parameters for {command}: {e}")))
}

/// Parses a 64-hex channel id.
pub fn parse_channel_id(s: &str) -> Result<ChannelId, ApiError> {
    <[u8; 32]>::from_hex(s.trim()).map(ChannelId).map_err(|_| {
        ApiError::bad_request(format!("invalid channel id '{s}': expected 64 hex digits"))
    })
}

/// Parses a node id (33-byte compressed public key, hex).
pub fn parse_node_id(s: &str) -> Result<PublicKey, ApiError> {
    PublicKey::from_str(s.trim()).map_err(|_| {
        ApiError::bad_request(format!("invalid node id '{s}': expected 66 hex digits"))
    })
}

/// `wallet` or an address (network checked by the coordinator).
fn parse_destination(s: &str) -> Result<Destination, ApiError> {
    if s.eq_ignore_ascii_case("wallet") {
        return Ok(Destination::Wallet);
    }
    Address::<NetworkUnchecked>::from_str(s.trim())
        .map(Destination::Address)
        .map_err(|e| ApiError::bad_request(format!("invalid address '{s}': {e}")))
}

fn parse_splice_id(s: &str) -> Result<SpliceId, ApiError> {
    SpliceId::from_str(s.trim()).map_err(|_| {
        ApiError::bad_request(format!("invalid splice id '{s}': expected splice-N or N"))
    })
}

fn parse_batch_id(s: &str) -> Result<BatchId, ApiError> {
    BatchId::from_str(s.trim()).map_err(|_| {
        ApiError::bad_request(format!("invalid batch id '{s}': expected batch-N or N"))
    })
}

/// Fee settings shared by every splice command.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FeeParams {
    /// A fixed feerate; the node's estimate when absent.
    feerate_sat_per_vb: Option<u64>,
    /// Cap on the fee we pay.
    max_fee_sat: Option<u64>,
}

impl FeeParams {
    fn policy(&self) -> Result<FeePolicy, ApiError> {
        let mut policy = match self.feerate_sat_per_vb {
            Some(rate) => FeePolicy::fixed(
                FeeRate::from_sat_per_vb(rate)
                    .filter(|_| rate > 0)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("invalid feerate {rate} sat/vB"))
                    })?,
            ),
            None => FeePolicy::funding(),
        };
        if let Some(max) = self.max_fee_sat {
            policy = policy.with_max_fee(Amount::from_sat(max));
        }
        Ok(policy)
    }
}

#[derive(Deserialize)]
struct ChannelParams {
    channel_id: String,
    node_id: String,
}

impl ChannelParams {
    fn parse(&self) -> Result<ChannelRef, ApiError> {
        Ok(ChannelRef {
            channel_id: parse_channel_id(&self.channel_id)?,
            counterparty: parse_node_id(&self.node_id)?,
        })
    }
}

#[derive(Deserialize)]
struct SpliceParams {
    #[serde(flatten)]
    channel: ChannelParams,
    amount_sat: u64,
    /// For splice-out: `wallet` or an address.
    to: Option<String>,
    #[serde(flatten)]
    fee: FeeParams,
    /// Turn automatic fee bumping on for the splice once it starts.
    auto_bump: Option<AutoBumpParams>,
}

#[derive(Deserialize)]
struct PayoutParams {
    to: String,
    amount_sat: u64,
}

#[derive(Deserialize)]
struct ResizeParams {
    #[serde(flatten)]
    channel: ChannelParams,
    #[serde(default)]
    add_sat: u64,
    #[serde(default)]
    outputs: Vec<PayoutParams>,
    #[serde(flatten)]
    fee: FeeParams,
    /// `resize` only: turn automatic fee bumping on once it starts.
    auto_bump: Option<AutoBumpParams>,
}

impl ResizeParams {
    fn request(&self) -> Result<ResizeRequest, ApiError> {
        Ok(ResizeRequest {
            add: Amount::from_sat(self.add_sat),
            outputs: self
                .outputs
                .iter()
                .map(|o| {
                    Ok(Payout {
                        to: parse_destination(&o.to)?,
                        amount: Amount::from_sat(o.amount_sat),
                    })
                })
                .collect::<Result<_, ApiError>>()?,
        })
    }
}

/// One leg of a batch plan as JSON.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LegParams {
    SpliceIn {
        channel_id: String,
        node_id: String,
        amount_sat: u64,
    },
    SpliceOut {
        channel_id: String,
        node_id: String,
        amount_sat: u64,
        to: String,
    },
    Move {
        from: ChannelParams,
        to: ChannelParams,
        amount_sat: u64,
    },
}

/// A batch plan as JSON:
/// `{"legs": [{"type": "splice_in", "channel_id", "node_id", "amount_sat"},
/// {"type": "splice_out", ..., "to": "wallet"|ADDRESS}, {"type": "move",
/// "from": {"channel_id", "node_id"}, "to": {...}, "amount_sat"}],
/// "feerate_sat_per_vb": 2, "max_fee_sat": 5000, "deadline_secs": 60}`.
#[derive(Deserialize)]
struct PlanParams {
    legs: Vec<LegParams>,
    #[serde(flatten)]
    fee: FeeParams,
    deadline_secs: Option<u64>,
}

impl PlanParams {
    fn plan(&self) -> Result<BatchPlan, ApiError> {
        let mut plan = BatchPlan::new(self.fee.policy()?);
        if let Some(secs) = self.deadline_secs {
            plan = plan.with_deadline(Duration::from_secs(secs));
        }
        if self.legs.is_empty() {
            return Err(ApiError::bad_request("a batch plan needs at least one leg"));
        }
        for leg in &self.legs {
            let channel = |c: &str, n: &str| -> Result<ChannelRef, ApiError> {
                Ok(ChannelRef {
                    channel_id: parse_channel_id(c)?,
                    counterparty: parse_node_id(n)?,
                })
            };
            plan = plan.leg(match leg {
                LegParams::SpliceIn {
                    channel_id,
                    node_id,
                    amount_sat,
                } => Leg::SpliceIn {
                    channel: channel(channel_id, node_id)?,
                    amount: Amount::from_sat(*amount_sat),
                },
                LegParams::SpliceOut {
                    channel_id,
                    node_id,
                    amount_sat,
                    to,
                } => Leg::SpliceOut {
                    channel: channel(channel_id, node_id)?,
                    amount: Amount::from_sat(*amount_sat),
                    to: parse_destination(to)?,
                },
                LegParams::Move {
                    from,
                    to,
                    amount_sat,
                } => Leg::Move {
                    from: from.parse()?,
                    to: to.parse()?,
                    amount: Amount::from_sat(*amount_sat),
                },
            });
        }
        Ok(plan)
    }
}

#[derive(Deserialize)]
struct IdParams {
    id: String,
}

/// A splice record as JSON, with its id in the `splice-N` form. `bump`
/// (a fee bump under way) and `auto_bump` (automatic fee bumping) are
/// always there, `null` when there is none.
fn splice_json(record: &ldk_splice::SpliceRecord) -> Value {
    let mut value =
        serde_json::to_value(record).unwrap_or_else(|e| json!({ "error": e.to_string() }));
    if let Value::Object(map) = &mut value {
        map.insert("splice_id".into(), json!(record.id.to_string()));
        map.insert("status".into(), json!(record.state.to_string()));
        map.entry("bump").or_insert(Value::Null);
        map.entry("auto_bump").or_insert(Value::Null);
    }
    value
}

/// A fee bump's quote as JSON: the feerate asked and the least a bump may
/// pay now (in sat/kwu, and as the least whole sat/vB to ask for), our
/// share of the replacement's fee, of the newest candidate's, and the
/// difference, whether the wallet adds a coin, and the candidates so far.
fn bump_quote_json(quote: &BumpQuote) -> Value {
    json!({
        "splice_id": quote.id.to_string(),
        "feerate_sat_per_kwu": quote.feerate.to_sat_per_kwu(),
        "min_feerate_sat_per_kwu": quote.min_feerate.to_sat_per_kwu(),
        "min_feerate_sat_per_vb": autobump::whole_sat_per_vb_at_least(quote.min_feerate),
        "fee": quote.fee.to_sat(),
        "previous_fee": quote.previous_fee.to_sat(),
        "extra_fee": quote.extra_fee.to_sat(),
        "adds_inputs": quote.adds_inputs,
        "weight": quote.weight.to_wu(),
        "candidates": quote.candidates,
    })
}

/// A refused fee bump (or automatic bumping setting) as an API error: an
/// unknown splice is a 404, every other refusal a 422 whose message says
/// the number needed.
fn bump_error(error: SpliceError) -> ApiError {
    match error {
        SpliceError::UnknownSplice(id) => ApiError::not_found(format!("no splice {id}")),
        SpliceError::BumpFeeRateTooLow {
            feerate,
            min_feerate,
        } => ApiError::refused(format!(
            "a fee bump must pay at least {} sat/kwu ({} sat/vB): ask for {} sat/vB or more \
             ({} sat/kwu asked)",
            min_feerate.to_sat_per_kwu(),
            autobump::sat_per_vb(min_feerate),
            autobump::whole_sat_per_vb_at_least(min_feerate),
            feerate.to_sat_per_kwu()
        )),
        SpliceError::TooManyCandidates {
            candidates,
            min_feerate,
        } => ApiError::refused(format!(
            "the splice has {candidates} candidates already: a further bump must pay at least \
             the current estimate of {} sat/kwu ({} sat/vB): ask for {} sat/vB or more",
            min_feerate.to_sat_per_kwu(),
            autobump::sat_per_vb(min_feerate),
            autobump::whole_sat_per_vb_at_least(min_feerate)
        )),
        SpliceError::FeeTooHigh { fee, max_fee } => ApiError::refused(format!(
            "the fee bump would pay {} sat in fees, above the cap of {} sat: raise the cap \
             (max_fee_sat) or ask a lower feerate",
            fee.to_sat(),
            max_fee.to_sat()
        )),
        SpliceError::FeeRateTooHigh {
            feerate,
            max_feerate,
        } => ApiError::refused(format!(
            "feerate {} sat/kwu is above the cap of {} sat/kwu ({} sat/vB)",
            feerate.to_sat_per_kwu(),
            max_feerate.to_sat_per_kwu(),
            autobump::sat_per_vb(max_feerate)
        )),
        other => ApiError::refused(other),
    }
}

/// The automatic fee bumping a splice command asks for, checked before
/// the splice starts: a budget whose maximum feerate is not above the
/// splice's own fixed feerate could never bump, and is refused.
fn auto_bump_for(
    params: &Option<AutoBumpParams>,
    fee: &FeeParams,
) -> Result<Option<AutoBump>, ApiError> {
    let Some(params) = params else {
        return Ok(None);
    };
    let policy = params
        .policy()
        .map_err(|e| ApiError::bad_request(format!("auto_bump: {e}")))?;
    if let Some(rate) = fee.feerate_sat_per_vb {
        if rate >= params.max_feerate_sat_per_vb {
            return Err(ApiError::bad_request(format!(
                "auto_bump: max_feerate_sat_per_vb {} is not above the splice's feerate of {rate} \
                 sat/vB: it could never bump",
                params.max_feerate_sat_per_vb
            )));
        }
    }
    Ok(Some(policy))
}

/// Turns automatic fee bumping on for splice `id`, just started. A splice
/// that already ended (LDK refused it at once) is answered as it is; any
/// other failure is a 422 that names the splice, which did start.
fn start_auto_bump(node: &Node, id: SpliceId, policy: Option<AutoBump>) -> Result<(), ApiError> {
    let Some(policy) = policy else {
        return Ok(());
    };
    match node.set_auto_bump(id, Some(policy)) {
        Ok(()) => Ok(()),
        Err(_) if node.splice_status(id).is_some_and(|r| r.state.is_final()) => Ok(()),
        Err(e) => Err(ApiError::refused(format!(
            "{id} started (see splicestatus {id}), but automatic fee bumping could not be turned \
             on: {e}; turn it on with autobump"
        ))),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> ApiResult {
    serde_json::to_value(value).map_err(|e| ApiError::refused(format!("cannot encode answer: {e}")))
}

fn channel_json(node: &Node, c: &lightning::ln::channel_state::ChannelDetails) -> Value {
    json!({
        "channel_id": c.channel_id.0.to_lower_hex_string(),
        "counterparty": c.counterparty.node_id.to_string(),
        "capacity_sat": c.channel_value_satoshis,
        "balance_sat": node.channel_balance(&c.channel_id).map(|a| a.to_sat()),
        "outbound_capacity_msat": c.outbound_capacity_msat,
        "inbound_capacity_msat": c.inbound_capacity_msat,
        "is_outbound": c.is_outbound,
        "is_channel_ready": c.is_channel_ready,
        "is_usable": c.is_usable,
        "funding_txid": c.funding_txo.map(|o| o.txid.to_string()),
        "confirmations": c.confirmations,
    })
}

/// A failed liquidity call as an API error: the service's refusal (its
/// `OrderError` text) is a 422, or a 429 when it rate-limits us; a peer
/// that does not know the protocol's methods runs no service (422); a peer
/// not connected or not answering is a 503 (ask again later).
fn liquidity_error(error: NodeError) -> ApiError {
    match &error {
        NodeError::Liquidity(ClientError::Refused(rpc)) => match OrderError::from_rpc(rpc) {
            Some(e @ OrderError::RateLimited { .. }) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("the service refused: {e}"),
            ),
            Some(e) => ApiError::refused(format!("the service refused: {e}")),
            None if rpc.code == METHOD_NOT_FOUND => ApiError::refused(format!(
                "the peer runs no liquidity service (it answered: {rpc})"
            )),
            None => ApiError::refused(format!("the service refused: {rpc}")),
        },
        NodeError::Liquidity(ClientError::Disconnected)
        | NodeError::Connection(_)
        | NodeError::Timeout(_) => ApiError::unavailable(error.to_string()),
        NodeError::InvalidInput(_) => ApiError::bad_request(error.to_string()),
        _ => ApiError::refused(error),
    }
}

/// A service's terms as the API shows them (amounts as numbers).
fn terms_json(service: &PublicKey, terms: &Terms) -> Value {
    json!({
        "node_id": service.to_string(),
        "version": terms.version,
        "min_amount_sat": terms.min_amount.to_sat(),
        "max_amount_sat": terms.max_amount.to_sat(),
        "fee_base_sat": terms.fee_base.to_sat(),
        "fee_basis": terms.fee_basis,
        "funding_weight": terms.funding_weight,
        "feerate_sat_per_kwu": terms.feerate.to_sat_per_kwu(),
        "quote_valid_secs": terms.quote_valid_secs,
        "invoice_valid_secs": terms.invoice_valid_secs,
        "max_open_orders_per_peer": terms.max_open_orders_per_peer,
        "min_channel_age_blocks": terms.min_channel_age_blocks,
    })
}

/// An order as the API shows it: amounts as numbers, `state` its name
/// (`created`, `paid`, `splicing`, `completed`, `failed`, `expired`) with
/// the state's `txid` or `reason` beside it, `status` one line for a human.
fn order_json(order: &Order) -> Value {
    let state = serde_json::to_value(&order.state).unwrap_or(Value::Null);
    let mut value = json!({
        "order_id": order.order_id,
        "client_order_id": order.client_order_id,
        "channel_id": order.channel_id.0.to_lower_hex_string(),
        "amount_sat": order.amount.to_sat(),
        "fee": {
            "base_sat": order.fee.base.to_sat(),
            "proportional_sat": order.fee.proportional.to_sat(),
            "mining_sat": order.fee.mining.to_sat(),
            "total_sat": order.fee.total.to_sat(),
            "feerate_sat_per_kwu": order.fee.feerate.to_sat_per_kwu(),
        },
        "invoice": order.invoice,
        "created_at": order.created_at,
        "expires_at": order.expires_at,
        "state": state.get("state").cloned().unwrap_or(Value::Null),
        "status": order.state.to_string(),
    });
    if let (Value::Object(map), Value::Object(fields)) = (&mut value, state) {
        map.extend(fields.into_iter().filter(|(k, _)| k != "state"));
    }
    value
}

/// An order we bought: the order, the service, and where our payment of
/// its fee stands (`pending` until the service claims it, which it does
/// once the splice is broadcast).
fn client_order_json(node: &Node, bought: &ClientOrder) -> Value {
    let mut value = order_json(&bought.order);
    let payment = lightning::bolt11_invoice::Bolt11Invoice::from_str(&bought.order.invoice)
        .ok()
        .and_then(|invoice| node.payment(&invoice.payment_hash()))
        .map(|p| match p.status {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Held => "held",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
        });
    if let Value::Object(map) = &mut value {
        map.insert("service".into(), json!(bought.service.to_string()));
        map.insert("fee_payment".into(), json!(payment));
    }
    value
}

/// An order we sold: the order, the client, and our splice once started.
fn service_order_json(sold: &ServiceOrderView) -> Value {
    let mut value = order_json(&sold.order);
    if let Value::Object(map) = &mut value {
        map.insert("client".into(), json!(sold.client.to_string()));
        map.insert(
            "splice_id".into(),
            json!(sold.splice.map(|id| id.to_string())),
        );
    }
    value
}

/// An amount in sat from the API: at most 21 million BTC.
fn money(field: &str, sat: u64) -> Result<Amount, ApiError> {
    if sat > MAX_MONEY_SAT {
        return Err(ApiError::bad_request(format!(
            "{field} {sat} is over 21 million BTC"
        )));
    }
    Ok(Amount::from_sat(sat))
}

/// Runs `command`: the async ones here, the rest on the blocking pool.
async fn dispatch(state: &Arc<AppState>, command: &str, p: Value) -> ApiResult {
    let node = &state.node;
    match command {
        "connect" => {
            #[derive(Deserialize)]
            struct P {
                peer: String,
            }
            let P { peer } = params(command, p)?;
            let (id, addr) = peer.split_once('@').ok_or_else(|| {
                ApiError::bad_request(format!("invalid peer '{peer}': expected NODEID@HOST:PORT"))
            })?;
            let node_id = parse_node_id(id)?;
            let addr = tokio::net::lookup_host(addr)
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| ApiError::bad_request(format!("invalid peer address '{addr}'")))?;
            node.connect(node_id, addr)
                .await
                .map_err(ApiError::refused)?;
            Ok(json!({ "connected": node_id.to_string(), "addr": addr.to_string() }))
        }
        "pay" => {
            #[derive(Deserialize)]
            struct P {
                invoice: String,
            }
            let P { invoice } = params(command, p)?;
            let invoice = lightning::bolt11_invoice::Bolt11Invoice::from_str(invoice.trim())
                .map_err(|e| ApiError::bad_request(format!("invalid invoice: {e}")))?;
            let hash = state
                .blocking(move |s| s.node.pay_invoice(&invoice).map_err(ApiError::refused))
                .await?;
            let info = node
                .wait_for_payment(&hash, Duration::from_secs(60))
                .await
                .map_err(ApiError::refused)?;
            to_json(&info)
        }
        "closechannel" => {
            #[derive(Deserialize)]
            struct P {
                #[serde(flatten)]
                channel: ChannelParams,
                /// Broadcast our commitment instead of closing together.
                #[serde(default)]
                force: bool,
            }
            let P { channel, force } = params(command, p)?;
            let channel = channel.parse()?;
            if force {
                state
                    .blocking(move |s| {
                        s.node
                            .force_close_channel(
                                &channel.channel_id,
                                &channel.counterparty,
                                "closed by the operator",
                            )
                            .map_err(ApiError::refused)
                    })
                    .await?;
            } else {
                node.close_channel(&channel.channel_id, &channel.counterparty)
                    .await
                    .map_err(ApiError::refused)?;
            }
            Ok(json!({ "closing": channel.channel_id.0.to_lower_hex_string(), "force": force }))
        }
        "events" => {
            #[derive(Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct P {
                /// Wait up to this long for a first event when none is pending.
                #[serde(default)]
                wait_secs: u64,
            }
            let P { wait_secs } = params(command, p)?;
            let wait = Duration::from_secs(wait_secs).min(MAX_EVENT_WAIT);
            // Taken before listing, so an event queued in between wakes it.
            let announced = node.coordinator().event_future();
            let listed = state.blocking(|s| Ok(list_events(s))).await?;
            if !listed.is_empty() || wait.is_zero() {
                return Ok(Value::Array(listed));
            }
            let _ = tokio::time::timeout(wait, announced).await;
            Ok(Value::Array(state.blocking(|s| Ok(list_events(s))).await?))
        }
        "crashat" => {
            let Some(crash) = &state.crash else {
                return Err(ApiError::not_found(format!("unknown command '{command}'")));
            };
            #[derive(Deserialize)]
            struct P {
                state: String,
                #[serde(default)]
                delay_ms: u64,
            }
            let P { state, delay_ms } = params(command, p)?;
            crash.arm(state.clone(), Duration::from_millis(delay_ms));
            Ok(json!({ "armed": state, "delay_ms": delay_ms }))
        }
        "liquidityinfo" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                /// The peer that runs the service.
                node_id: String,
            }
            let P { node_id } = params(command, p)?;
            let service = parse_node_id(&node_id)?;
            let terms = node
                .liquidity_terms(service)
                .await
                .map_err(liquidity_error)?;
            Ok(terms_json(&service, &terms))
        }
        "liquiditybuy" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                /// The channel to add inbound liquidity to; its
                /// counterparty is the service.
                channel_id: String,
                /// How much the service adds.
                amount_sat: u64,
                /// The most fee we pay (default 50 000 sat).
                max_fee_sat: Option<u64>,
                /// Our key for the order: the same key gets the same order.
                client_order_id: Option<String>,
            }
            let P {
                channel_id,
                amount_sat,
                max_fee_sat,
                client_order_id,
            } = params(command, p)?;
            let channel_id = parse_channel_id(&channel_id)?;
            let amount = money("amount_sat", amount_sat)?;
            let max_fee = money(
                "max_fee_sat",
                max_fee_sat.unwrap_or(DEFAULT_LIQUIDITY_MAX_FEE_SAT),
            )?;
            if let Some(id) = client_order_id
                .as_deref()
                .filter(|id| !valid_client_order_id(id))
            {
                return Err(ApiError::bad_request(format!(
                    "invalid client_order_id '{id}': expected 1 to 64 characters of A-Z, a-z, \
                     0-9, '.', '_', '-'"
                )));
            }
            if node.channel(&channel_id).is_none() {
                return Err(ApiError::not_found(format!(
                    "no channel {}",
                    channel_id.0.to_lower_hex_string()
                )));
            }
            let bought = node
                .buy_liquidity(&channel_id, amount, max_fee, client_order_id)
                .await
                .map_err(liquidity_error)?;
            Ok(client_order_json(node, &bought))
        }
        "liquidityorder" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                order_id: String,
            }
            let P { order_id } = params(command, p)?;
            let order_id = order_id.trim();
            if node
                .liquidity_orders()
                .iter()
                .any(|o| o.order.order_id == order_id)
            {
                let bought = node
                    .refresh_liquidity_order(order_id)
                    .await
                    .map_err(liquidity_error)?;
                return Ok(client_order_json(node, &bought));
            }
            node.liquidity_service_orders()
                .iter()
                .find(|o| o.order.order_id == order_id)
                .map(service_order_json)
                .ok_or_else(|| ApiError::not_found(format!("no liquidity order '{order_id}'")))
        }
        "stop" => {
            let _ = state.stop.send(true);
            Ok(json!({ "stopping": true }))
        }
        _ => {
            let command = command.to_string();
            state
                .blocking(move |s| dispatch_blocking(s, &command, p))
                .await
        }
    }
}

/// One output the sweeper follows, for `balance`.
fn sweep_json(sweep: &ldk_splice::node::SweepInfo) -> Value {
    use ldk_splice::node::SweepStatus;
    let (status, txid, height) = match &sweep.status {
        SweepStatus::AwaitingBroadcast => ("awaiting_broadcast", None, None),
        SweepStatus::Broadcast { txid } => ("broadcast", Some(txid.to_string()), None),
        SweepStatus::Confirmed { txid, height } => {
            ("confirmed", Some(txid.to_string()), Some(*height))
        }
        _ => ("unknown", None, None),
    };
    json!({
        "channel_id": sweep.channel_id.map(|c| c.0.to_lower_hex_string()),
        "amount_sat": sweep.amount.to_sat(),
        "status": status,
        "txid": txid,
        "height": height,
    })
}

/// The commands that call the node synchronously; run on the blocking pool.
fn dispatch_blocking(state: &AppState, command: &str, p: Value) -> ApiResult {
    let node = &state.node;
    match command {
        "getinfo" => {
            let channels = node.list_channels();
            Ok(json!({
                "node_id": node.node_id().to_string(),
                "listen_addr": node.listen_addr().to_string(),
                "network": node.config().network.to_string(),
                "block_height": node.best_block_height(),
                "channels": channels.len(),
                "usable_channels": channels.iter().filter(|c| c.is_usable).count(),
                "peers": node.peer_manager().list_peers().len(),
                "liquidity_service": node.liquidity_service().is_some(),
                "auto_bump": node.config().auto_bump.as_ref().map(autobump::policy_json),
            }))
        }
        "newaddress" => node
            .new_address()
            .map(|a| json!({ "address": a.to_string() }))
            .map_err(ApiError::refused),
        "balance" => {
            let all = node.balances();
            let b = all.onchain;
            let shown = |o: &bitcoin::OutPoint| o.to_string();
            Ok(json!({
                "available_sat": node.wallet().available_balance().to_sat(),
                "locked_coins": node.wallet().locked_coins().iter().map(shown).collect::<Vec<_>>(),
                "splice_locked_coins": node
                    .coordinator()
                    .locked_coins()
                    .iter()
                    .map(|(o, id)| json!({"outpoint": shown(o), "splice_id": id.to_string()}))
                    .collect::<Vec<_>>(),
                "confirmed_sat": b.confirmed.to_sat(),
                "pending_sat": b.pending.to_sat(),
                "untrusted_pending_sat": b.untrusted_pending.to_sat(),
                "total_sat": b.total().to_sat(),
                "channels_sat": node
                    .list_channels()
                    .iter()
                    .filter_map(|c| node.channel_balance(&c.channel_id))
                    .map(|a| a.to_sat())
                    .sum::<u64>(),
                "claimable_on_chain_sat": all.claimable_on_chain.to_sat(),
                "pending_sweep_sat": all.pending_sweep.to_sat(),
                "swept_awaiting_confirmations_sat": all.swept_awaiting_confirmations.to_sat(),
                "sweeps": all.sweeps.iter().map(sweep_json).collect::<Vec<_>>(),
            }))
        }
        "openchannel" => {
            #[derive(Deserialize)]
            struct P {
                node_id: String,
                amount_sat: u64,
                #[serde(default)]
                push_sat: u64,
            }
            let P {
                node_id,
                amount_sat,
                push_sat,
            } = params(command, p)?;
            let node_id = parse_node_id(&node_id)?;
            let id = node
                .open_channel(
                    node_id,
                    Amount::from_sat(amount_sat),
                    Amount::from_sat(push_sat),
                )
                .map_err(ApiError::refused)?;
            Ok(json!({ "temporary_channel_id": id.0.to_lower_hex_string() }))
        }
        "listchannels" => Ok(Value::Array(
            node.list_channels()
                .iter()
                .map(|c| channel_json(node, c))
                .collect(),
        )),
        "invoice" => {
            #[derive(Deserialize)]
            struct P {
                amount_msat: Option<u64>,
                #[serde(default)]
                description: String,
            }
            let P {
                amount_msat,
                description,
            } = params(command, p)?;
            let invoice = node
                .create_invoice(amount_msat, &description, Duration::from_secs(3600))
                .map_err(ApiError::refused)?;
            Ok(json!({
                "invoice": invoice.to_string(),
                "payment_hash": invoice.payment_hash().to_string(),
            }))
        }
        "splicein" | "spliceout" => {
            let sp: SpliceParams = params(command, p)?;
            let channel = sp.channel.parse()?;
            let fee = sp.fee.policy()?;
            let auto_bump = auto_bump_for(&sp.auto_bump, &sp.fee)?;
            let amount = Amount::from_sat(sp.amount_sat);
            let id = if command == "splicein" {
                node.splice_in(&channel.channel_id, &channel.counterparty, amount, fee)
            } else {
                let to = parse_destination(sp.to.as_deref().ok_or_else(|| {
                    ApiError::bad_request("spliceout needs a destination: an address or 'wallet'")
                })?)?;
                node.splice_out(&channel.channel_id, &channel.counterparty, amount, to, fee)
            }
            .map_err(ApiError::refused)?;
            start_auto_bump(node, id, auto_bump)?;
            splice_by_id(node, id)
        }
        "resize" | "quote" => {
            let rp: ResizeParams = params(command, p)?;
            let channel = rp.channel.parse()?;
            let request = rp.request()?;
            let fee = rp.fee.policy()?;
            if command == "quote" {
                if rp.auto_bump.is_some() {
                    return Err(ApiError::bad_request(
                        "quote takes no auto_bump: it starts nothing",
                    ));
                }
                let quote = node
                    .quote_splice(&channel.channel_id, &channel.counterparty, &request, fee)
                    .map_err(ApiError::refused)?;
                to_json(&quote)
            } else {
                let auto_bump = auto_bump_for(&rp.auto_bump, &rp.fee)?;
                let id = node
                    .resize(&channel.channel_id, &channel.counterparty, request, fee)
                    .map_err(ApiError::refused)?;
                start_auto_bump(node, id, auto_bump)?;
                splice_by_id(node, id)
            }
        }
        "bumpfee" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                /// The splice (splice-N or N).
                id: String,
                /// The feerate the replacement pays.
                feerate_sat_per_vb: u64,
                /// Cap on our share of its fee (default 50 000 sat).
                max_fee_sat: Option<u64>,
                /// Only say what the bump would cost.
                #[serde(default)]
                quote: bool,
            }
            let P {
                id,
                feerate_sat_per_vb,
                max_fee_sat,
                quote,
            } = params(command, p)?;
            let id = parse_splice_id(&id)?;
            if let Some(max) = max_fee_sat {
                money("max_fee_sat", max)?;
            }
            let fee = FeeParams {
                feerate_sat_per_vb: Some(feerate_sat_per_vb),
                max_fee_sat,
            }
            .policy()?;
            fee.validate()
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            if quote {
                let quote = node.quote_bump_fee(id, fee).map_err(bump_error)?;
                return Ok(bump_quote_json(&quote));
            }
            let before = node
                .splice_status(id)
                .ok_or_else(|| ApiError::not_found(format!("no splice {id}")))?
                .candidates
                .len();
            node.bump_fee(id, fee).map_err(bump_error)?;
            let record = node
                .splice_status(id)
                .ok_or_else(|| ApiError::not_found(format!("no splice {id}")))?;
            let candidates_before = record
                .bump
                .as_ref()
                .map(|b| b.candidates_before)
                .unwrap_or(before);
            let mut value = splice_by_id(node, id)?;
            if let Value::Object(map) = &mut value {
                map.insert("candidates_before".into(), json!(candidates_before));
            }
            Ok(value)
        }
        "autobump" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                /// The splice (splice-N or N).
                id: String,
                /// The budget, or null to turn automatic bumping off.
                auto_bump: Option<AutoBumpParams>,
            }
            if p.get("auto_bump").is_none() {
                return Err(ApiError::bad_request(
                    "autobump needs auto_bump: {\"target_blocks\", \"max_feerate_sat_per_vb\", \
                     \"max_fee_sat\"} to turn it on, or null to turn it off",
                ));
            }
            let P { id, auto_bump } = params(command, p)?;
            let id = parse_splice_id(&id)?;
            let policy = auto_bump
                .map(|a| a.policy())
                .transpose()
                .map_err(|e| ApiError::bad_request(format!("auto_bump: {e}")))?;
            let record = node
                .splice_status(id)
                .ok_or_else(|| ApiError::not_found(format!("no splice {id}")))?;
            if let Some(policy) = &policy {
                if policy.max_feerate <= record.feerate && !record.state.is_final() {
                    return Err(ApiError::refused(format!(
                        "automatic bumping up to {} sat/kwu ({} sat/vB) could never bump {id}: \
                         it already pays {} sat/kwu; give a max feerate of at least {} sat/vB",
                        policy.max_feerate.to_sat_per_kwu(),
                        autobump::sat_per_vb(policy.max_feerate),
                        record.feerate.to_sat_per_kwu(),
                        record.feerate.to_sat_per_kwu() / 250 + 1
                    )));
                }
            }
            node.set_auto_bump(id, policy).map_err(bump_error)?;
            splice_by_id(node, id)
        }
        "splicestatus" => {
            let IdParams { id } = params(command, p)?;
            splice_by_id(node, parse_splice_id(&id)?)
        }
        "listsplices" => Ok(Value::Array(
            node.list_splices().iter().map(splice_json).collect(),
        )),
        "cancel" => {
            let IdParams { id } = params(command, p)?;
            let id = parse_splice_id(&id)?;
            node.cancel_splice(id).map_err(ApiError::refused)?;
            splice_by_id(node, id)
        }
        "batch" | "quotebatch" => {
            let plan: PlanParams = params(command, p)?;
            let plan = plan.plan()?;
            if command == "quotebatch" {
                to_json(&node.quote_batch(&plan).map_err(ApiError::refused)?)
            } else {
                let id = node.start_batch(plan).map_err(ApiError::refused)?;
                batch_by_id(node, id)
            }
        }
        "batchstatus" => {
            let IdParams { id } = params(command, p)?;
            batch_by_id(node, parse_batch_id(&id)?)
        }
        "cancelbatch" => {
            let IdParams { id } = params(command, p)?;
            let id = parse_batch_id(&id)?;
            node.cancel_batch(id).map_err(ApiError::refused)?;
            batch_by_id(node, id)
        }
        "liquidityorders" => {
            let mut listing = json!({
                "bought": node
                    .liquidity_orders()
                    .iter()
                    .map(|o| client_order_json(node, o))
                    .collect::<Vec<_>>(),
            });
            if node.liquidity_service().is_some() {
                listing["sold"] = node
                    .liquidity_service_orders()
                    .iter()
                    .map(service_order_json)
                    .collect();
            }
            Ok(listing)
        }
        "ackevents" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                through: String,
            }
            let P { through } = params(command, p)?;
            ack_events(state, &through)
        }
        other => Err(ApiError::not_found(format!("unknown command '{other}'"))),
    }
}

/// One event as the API shows it: its id, its `kind` (`state_changed`,
/// `batch_state_changed`, `fee_bumped`, `fee_bump_dropped`,
/// `auto_bump_stopped`), what it is about (`splice_id` or `batch_id`), the
/// state reached (state changes) or what happened (`txid`,
/// `feerate_sat_per_kwu` and `fee` of a bump; `reason` of a dropped bump
/// or stopped automatic bumping), and the event as the library serializes
/// it.
fn event_json(id: String, event: &SpliceEvent) -> Value {
    let mut value = json!({ "id": id });
    let serialized = serde_json::to_value(event).unwrap_or(Value::Null);
    // The library's variant name, e.g. FeeBumped -> fee_bumped.
    if let Some(name) = serialized.as_object().and_then(|m| m.keys().next()) {
        value["kind"] = json!(snake_case(name));
    }
    let state_name = |state: Value| state["state"].as_str().map(str::to_string);
    match event {
        SpliceEvent::StateChanged { id, state, .. } => {
            value["splice_id"] = json!(id.to_string());
            value["state"] = json!(serde_json::to_value(state).ok().and_then(state_name));
        }
        SpliceEvent::BatchStateChanged { batch, state } => {
            value["batch_id"] = json!(batch.to_string());
            value["state"] = json!(serde_json::to_value(state).ok().and_then(state_name));
        }
        SpliceEvent::FeeBumped {
            id,
            txid,
            feerate,
            fee,
        } => {
            value["splice_id"] = json!(id.to_string());
            value["txid"] = json!(txid.to_string());
            value["feerate_sat_per_kwu"] = json!(feerate.to_sat_per_kwu());
            value["fee"] = json!(fee.to_sat());
        }
        SpliceEvent::FeeBumpDropped { id, reason }
        | SpliceEvent::AutoBumpStopped { id, reason } => {
            value["splice_id"] = json!(id.to_string());
            value["reason"] = json!(reason);
        }
        other => {
            if let Some(id) = other.splice_id() {
                value["splice_id"] = json!(id.to_string());
            }
        }
    }
    value["event"] = serialized;
    value
}

/// `FeeBumped` -> `fee_bumped`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Every pending event, oldest first, numbered as [`EventLedger`] says.
fn list_events(state: &AppState) -> Vec<Value> {
    let ledger = state.events.lock().unwrap_or_else(|e| e.into_inner());
    state
        .node
        .coordinator()
        .pending_events()
        .iter()
        .zip(ledger.acked + 1..)
        .map(|(event, n)| event_json(format!("{}:{n}", state.run), event))
        .collect()
}

/// Acknowledges every pending event up to and including `through`.
fn ack_events(state: &AppState, through: &str) -> ApiResult {
    let (run, n) = through
        .trim()
        .split_once(':')
        .and_then(|(run, n)| Some((run, n.parse::<u64>().ok().filter(|n| *n > 0)?)))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid event id '{through}': expected RUN:N as `events` shows it"
            ))
        })?;
    if run != state.run {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "event {through} is from an earlier run of the daemon (events are now \
                 {}:N); list the events again and acknowledge from that listing",
                state.run
            ),
        ));
    }
    let coordinator = state.node.coordinator();
    let mut ledger = state.events.lock().unwrap_or_else(|e| e.into_inner());
    let pending = coordinator.pending_events().len() as u64;
    let newest = ledger.acked + pending;
    if n > newest {
        return Err(ApiError::not_found(format!(
            "no event {through}: the newest is {}:{newest}; list the events first",
            state.run
        )));
    }
    let count = n.saturating_sub(ledger.acked);
    for _ in 0..count {
        coordinator.event_handled();
        ledger.acked += 1;
    }
    // A client that was told "acknowledged" must not see them again after
    // a restart: one write for all of them.
    coordinator.write_acknowledgements().map_err(|e| {
        ApiError::internal(format!(
            "acknowledged {count} events, but could not write it (they may come back after a restart): {e}"
        ))
    })?;
    Ok(json!({
        "acknowledged": count,
        "through": through.trim(),
        "pending": pending - count,
    }))
}

fn splice_by_id(node: &Node, id: SpliceId) -> ApiResult {
    let record = node
        .splice_status(id)
        .ok_or_else(|| ApiError::not_found(format!("no splice {id}")))?;
    let mut value = splice_json(&record);
    // How many confirmations LDK wants before the splice locks, when known.
    let required = node.channel(&record.channel_id).and_then(|c| {
        c.splice_details
            .and_then(|d| d.confirmed_candidate)
            .map(|confirmed| confirmed.confirmations_required)
            .or(c.confirmations_required)
    });
    if let (Value::Object(map), Some(required)) = (&mut value, required) {
        map.insert("confirmations_required".into(), json!(required));
    }
    Ok(value)
}

fn batch_by_id(node: &Node, id: BatchId) -> ApiResult {
    let record = node
        .batch_status(id)
        .ok_or_else(|| ApiError::not_found(format!("no batch {id}")))?;
    let mut value = to_json(&record)?;
    if let Value::Object(map) = &mut value {
        map.insert("batch_id".into(), json!(id.to_string()));
    }
    Ok(value)
}
