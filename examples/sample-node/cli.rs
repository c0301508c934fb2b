//! `sample-node cli`: calls a running daemon's API and prints JSON.
//!
//! Output: the answer as JSON on stdout, exit status 0. Any error: a JSON
//! object `{"error": "..."}` on stdout, exit status 1. Progress of `--wait`
//! goes to stderr.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::autobump::AutoBumpParams;
use crate::daemon::{API_ADDR_FILE, API_TOKEN_FILE};

/// Arguments of `sample-node cli`.
#[derive(clap::Args, Debug)]
pub struct CliArgs {
    /// The daemon's data directory (holds api-addr and api-token).
    #[arg(long)]
    datadir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// Fee options of splice commands.
#[derive(clap::Args, Debug, Clone)]
pub struct FeeArgs {
    /// Feerate in sat/vB (default: the node's estimate).
    #[arg(long)]
    feerate: Option<String>,
    /// Most we pay in fees, in sat (default 50000).
    #[arg(long)]
    max_fee: Option<String>,
}

/// Wait options of splice commands.
#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// Wait until the splice reaches this stage, showing progress on stderr.
    #[arg(long, value_enum)]
    wait: Option<WaitFor>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    wait_timeout: u64,
}

/// Automatic fee bumping option of splice commands.
#[derive(clap::Args, Debug, Clone)]
pub struct AutoBumpArgs {
    /// Once the splice starts, bump its fee by itself after each block it
    /// stays unconfirmed: rising evenly from its feerate to MAX_FEERATE
    /// (sat/vB), reached TARGET_BLOCKS blocks after the broadcast, never
    /// paying more than MAX_FEE sat. E.g. 6:20:10000.
    #[arg(long, value_name = "TARGET_BLOCKS:MAX_FEERATE:MAX_FEE")]
    auto_bump: Option<String>,
}

/// How far `bumpfee --wait` follows a fee bump.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BumpWaitFor {
    /// Until the replacement is negotiated with the peer (a new candidate
    /// of the splice, signed and broadcast).
    Negotiated,
    /// Until the splice locks (on whichever candidate confirms).
    Locked,
}

/// How far `--wait` follows a splice.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// Until the transaction is broadcast.
    Broadcast,
    /// Until the new funding is locked by both sides.
    Locked,
}

/// How far `liquidity buy --wait` follows an order.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderWaitFor {
    /// Until the service holds our fee payment (the order is `paid`, or
    /// further: the service is splicing).
    Paid,
    /// Until the splice locked and the order is `completed`.
    Locked,
}

/// How often `liquidity buy --wait` asks the service about the order: 20
/// requests a minute, under a service's default limit of 30.
const ORDER_POLL_INTERVAL: Duration = Duration::from_secs(3);

/// Inbound liquidity from channel peers (see docs/liquidity-protocol.md).
#[derive(clap::Subcommand, Debug)]
enum LiquidityCommand {
    /// A peer's liquidity terms (the peer must run a liquidity service and
    /// be connected).
    Info {
        /// The peer's node id.
        peer: String,
    },
    /// Buy inbound liquidity on a channel from its counterparty: order
    /// AMOUNT_SAT and pay the order's fee invoice. The service splices the
    /// amount into the channel from its wallet and claims the fee only
    /// once the splice is broadcast.
    Buy {
        channel_id: String,
        amount_sat: String,
        /// Most we pay for the order, in sat (default 50000): an order
        /// the service's terms price higher is not made.
        #[arg(long)]
        max_fee: Option<String>,
        /// Our key for the order (1 to 64 of A-Z a-z 0-9 . _ -): buying
        /// again with the same key gets the same order, paid once.
        #[arg(long, value_name = "ID")]
        order_id: Option<String>,
        /// Follow the order until this stage, asking the service every
        /// 3 s and showing progress on stderr; exits 1 if it fails or
        /// expires.
        #[arg(long, value_enum)]
        wait: Option<OrderWaitFor>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        wait_timeout: u64,
    },
    /// The orders this node bought (as the service last answered) and,
    /// when it runs a liquidity service, the orders it sold.
    Orders,
    /// Ask the service where an order stands (ORDER_ID as `buy` printed
    /// it); an order we sold is answered from our own records.
    Status { order_id: String },
}

/// The CLI's commands. Amounts are in satoshis unless named _msat.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Node id, addresses, height, channel count.
    Getinfo,
    /// A fresh on-chain address.
    Newaddress,
    /// On-chain balance (and the sum of our channel balances).
    Balance,
    /// Connect to a peer: NODEID@HOST:PORT.
    Connect { peer: String },
    /// Open a channel funded from the wallet.
    Openchannel {
        node_id: String,
        amount_sat: String,
        /// Give the peer this much of the channel, in sat.
        #[arg(long)]
        push: Option<String>,
    },
    /// Every channel with capacity and balances.
    Listchannels,
    /// Create a BOLT11 invoice.
    Invoice {
        amount_msat: String,
        #[arg(default_value = "")]
        description: String,
    },
    /// Pay a BOLT11 invoice and wait for the result.
    Pay { invoice: String },
    /// Add wallet funds to a channel.
    Splicein {
        channel_id: String,
        node_id: String,
        amount_sat: String,
        #[command(flatten)]
        fee: FeeArgs,
        #[command(flatten)]
        auto_bump: AutoBumpArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Pay channel funds to an address, or to our wallet with `wallet`.
    Spliceout {
        channel_id: String,
        node_id: String,
        amount_sat: String,
        /// An address of the node's network, or `wallet`.
        destination: String,
        #[command(flatten)]
        fee: FeeArgs,
        #[command(flatten)]
        auto_bump: AutoBumpArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Add wallet funds and pay out channel funds in one splice.
    Resize {
        channel_id: String,
        node_id: String,
        /// Wallet funds to add, in sat.
        #[arg(long)]
        add: Option<String>,
        /// A payout DESTINATION:AMOUNT_SAT (DESTINATION an address or `wallet`); repeatable.
        #[arg(long = "out")]
        outputs: Vec<String>,
        #[command(flatten)]
        fee: FeeArgs,
        #[command(flatten)]
        auto_bump: AutoBumpArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// What a splice would cost, without doing it (same options as resize).
    Quote {
        channel_id: String,
        node_id: String,
        /// Wallet funds to add, in sat.
        #[arg(long)]
        add: Option<String>,
        /// A payout DESTINATION:AMOUNT_SAT; repeatable.
        #[arg(long = "out")]
        outputs: Vec<String>,
        #[command(flatten)]
        fee: FeeArgs,
    },
    /// Run (or with --quote, price) a batch plan given as inline JSON or @FILE.
    ///
    /// The plan: {"legs": [LEG, ...], "feerate_sat_per_vb": N, "max_fee_sat": N,
    /// "deadline_secs": N} (all but legs optional), each LEG one of
    /// {"type": "splice_in", "channel_id": HEX, "node_id": HEX, "amount_sat": N},
    /// {"type": "splice_out", "channel_id": HEX, "node_id": HEX, "amount_sat": N, "to": ADDRESS|"wallet"},
    /// {"type": "move", "from": {"channel_id": HEX, "node_id": HEX}, "to": {...}, "amount_sat": N}.
    /// Follow it with `batchstatus BATCH_ID`.
    Batch {
        plan: String,
        /// Only quote the plan.
        #[arg(long)]
        quote: bool,
    },
    /// A batch's state and legs.
    Batchstatus { id: String },
    /// A splice's record (splice-N or N).
    Splicestatus { id: String },
    /// Every splice that changed a channel: ours, and those the counterparty
    /// started (`"origin": "theirs"`).
    Listsplices,
    /// Cancel a splice not yet signed.
    Cancel { id: String },
    /// Replace a broadcast splice's transaction with one paying a higher
    /// fee (same amount and destinations); prints its record. The splice
    /// locks on whichever of its transactions confirms.
    ///
    /// A bump must pay at least 25/24 of the previous feerate and 25
    /// sat/kwu more; `--quote` shows that minimum (min_feerate_sat_per_vb)
    /// and what the bump would cost, doing nothing.
    Bumpfee {
        /// The splice: splice-N or N.
        id: String,
        /// The new feerate in sat/vB (whole; at most the node's cap of 100).
        #[arg(long)]
        feerate: String,
        /// Most we pay in fees for the replacement, in sat (default 50000).
        #[arg(long)]
        max_fee: Option<String>,
        /// Only show what the bump would cost and the least feerate it may pay.
        #[arg(long, conflicts_with = "wait")]
        quote: bool,
        /// Wait until the replacement is negotiated, or the splice locked,
        /// showing progress on stderr.
        #[arg(long, value_enum)]
        wait: Option<BumpWaitFor>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        wait_timeout: u64,
    },
    /// Turn automatic fee bumping of a splice on (TARGET_BLOCKS:MAX_FEERATE:MAX_FEE,
    /// as `splicein --auto-bump` takes it) or off (--off); prints its record.
    Autobump {
        /// The splice: splice-N or N.
        id: String,
        /// TARGET_BLOCKS:MAX_FEERATE_SAT_PER_VB:MAX_FEE_SAT, e.g. 6:20:10000.
        #[arg(
            value_name = "TARGET_BLOCKS:MAX_FEERATE:MAX_FEE",
            required_unless_present = "off",
            conflicts_with = "off"
        )]
        policy: Option<String>,
        /// Turn automatic fee bumping off.
        #[arg(long)]
        off: bool,
    },
    /// Close a channel cooperatively (or, with --force, unilaterally).
    Closechannel {
        channel_id: String,
        node_id: String,
        /// Broadcast our latest commitment (the peer is gone or unresponsive);
        /// the funds come back to the wallet after the timelocks.
        #[arg(long)]
        force: bool,
    },
    /// Splice and batch events not acknowledged yet, oldest first, each with
    /// an id RUN:N. The daemon keeps them (across restarts too) until they
    /// are acknowledged.
    Events {
        /// Acknowledge every event up to and including ID (as a listing showed it).
        #[arg(long, value_name = "ID", conflicts_with = "follow")]
        ack: Option<String>,
        /// Print events as they come, one JSON object per line, and
        /// acknowledge each once printed. Runs until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Inbound liquidity from channel peers: ask a peer's terms, buy,
    /// follow and list orders.
    Liquidity {
        #[command(subcommand)]
        command: LiquidityCommand,
    },
    /// Stop the daemon.
    Stop,
}

/// A CLI failure, printed as `{"error": ...}`.
struct CliError(String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// Runs one CLI command; returns the process exit code.
pub fn run(args: CliArgs) -> i32 {
    match execute(args) {
        Ok(value) => {
            print_json(&value);
            0
        }
        Err(CliError(message)) => {
            print_json(&json!({ "error": message }));
            1
        }
    }
}

fn print_json(value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    println!("{text}");
}

/// Parses a whole number of satoshis (or msat) given on the command line.
fn amount(what: &str, s: &str) -> Result<u64, CliError> {
    s.trim().replace('_', "").parse::<u64>().map_err(|_| {
        CliError(format!(
            "invalid {what} '{s}': expected a whole non-negative number"
        ))
    })
}

fn fee_params(fee: &FeeArgs, into: &mut serde_json::Map<String, Value>) -> Result<(), CliError> {
    if let Some(rate) = &fee.feerate {
        into.insert(
            "feerate_sat_per_vb".into(),
            json!(amount("feerate (sat/vB)", rate)?),
        );
    }
    if let Some(max) = &fee.max_fee {
        into.insert("max_fee_sat".into(), json!(amount("max fee (sat)", max)?));
    }
    Ok(())
}

/// Adds `auto_bump` to a splice command's parameters, when asked for.
fn auto_bump_params(
    args: &AutoBumpArgs,
    into: &mut serde_json::Map<String, Value>,
) -> Result<(), CliError> {
    if let Some(spec) = &args.auto_bump {
        into.insert("auto_bump".into(), auto_bump_json(spec)?);
    }
    Ok(())
}

/// `TARGET_BLOCKS:MAX_FEERATE:MAX_FEE` as the API's `auto_bump` object.
fn auto_bump_json(spec: &str) -> Result<Value, CliError> {
    let params = AutoBumpParams::parse(spec).map_err(CliError)?;
    Ok(json!({
        "target_blocks": params.target_blocks,
        "max_feerate_sat_per_vb": params.max_feerate_sat_per_vb,
        "max_fee_sat": params.max_fee_sat,
    }))
}

fn payouts(outputs: &[String]) -> Result<Vec<Value>, CliError> {
    outputs
        .iter()
        .map(|o| {
            let (to, sat) = o.rsplit_once(':').ok_or_else(|| {
                CliError(format!(
                    "invalid --out '{o}': expected DESTINATION:AMOUNT_SAT"
                ))
            })?;
            Ok(json!({ "to": to, "amount_sat": amount("payout amount (sat)", sat)? }))
        })
        .collect()
}

fn execute(args: CliArgs) -> Result<Value, CliError> {
    let client = Client::from_datadir(&args.datadir)?;
    let (method, params, wait) = match args.command {
        Command::Getinfo => ("getinfo", json!({}), None),
        Command::Newaddress => ("newaddress", json!({}), None),
        Command::Balance => ("balance", json!({}), None),
        Command::Connect { peer } => ("connect", json!({ "peer": peer }), None),
        Command::Openchannel {
            node_id,
            amount_sat,
            push,
        } => {
            let push = push.map(|p| amount("push amount (sat)", &p)).transpose()?;
            (
                "openchannel",
                json!({
                    "node_id": node_id,
                    "amount_sat": amount("channel amount (sat)", &amount_sat)?,
                    "push_sat": push.unwrap_or(0),
                }),
                None,
            )
        }
        Command::Listchannels => ("listchannels", json!({}), None),
        Command::Invoice {
            amount_msat,
            description,
        } => (
            "invoice",
            json!({
                "amount_msat": amount("invoice amount (msat)", &amount_msat)?,
                "description": description,
            }),
            None,
        ),
        Command::Pay { invoice } => ("pay", json!({ "invoice": invoice }), None),
        Command::Splicein {
            channel_id,
            node_id,
            amount_sat,
            fee,
            auto_bump,
            wait,
        } => {
            let mut p = serde_json::Map::new();
            p.insert("channel_id".into(), json!(channel_id));
            p.insert("node_id".into(), json!(node_id));
            p.insert(
                "amount_sat".into(),
                json!(amount("splice amount (sat)", &amount_sat)?),
            );
            fee_params(&fee, &mut p)?;
            auto_bump_params(&auto_bump, &mut p)?;
            ("splicein", Value::Object(p), Some(wait))
        }
        Command::Spliceout {
            channel_id,
            node_id,
            amount_sat,
            destination,
            fee,
            auto_bump,
            wait,
        } => {
            let mut p = serde_json::Map::new();
            p.insert("channel_id".into(), json!(channel_id));
            p.insert("node_id".into(), json!(node_id));
            p.insert(
                "amount_sat".into(),
                json!(amount("splice amount (sat)", &amount_sat)?),
            );
            p.insert("to".into(), json!(destination));
            fee_params(&fee, &mut p)?;
            auto_bump_params(&auto_bump, &mut p)?;
            ("spliceout", Value::Object(p), Some(wait))
        }
        Command::Resize {
            channel_id,
            node_id,
            add,
            outputs,
            fee,
            auto_bump,
            wait,
        } => {
            let mut p = serde_json::Map::new();
            p.insert("channel_id".into(), json!(channel_id));
            p.insert("node_id".into(), json!(node_id));
            let add = add.map(|a| amount("amount to add (sat)", &a)).transpose()?;
            p.insert("add_sat".into(), json!(add.unwrap_or(0)));
            p.insert("outputs".into(), Value::Array(payouts(&outputs)?));
            fee_params(&fee, &mut p)?;
            auto_bump_params(&auto_bump, &mut p)?;
            ("resize", Value::Object(p), Some(wait))
        }
        Command::Quote {
            channel_id,
            node_id,
            add,
            outputs,
            fee,
        } => {
            let mut p = serde_json::Map::new();
            p.insert("channel_id".into(), json!(channel_id));
            p.insert("node_id".into(), json!(node_id));
            let add = add.map(|a| amount("amount to add (sat)", &a)).transpose()?;
            p.insert("add_sat".into(), json!(add.unwrap_or(0)));
            p.insert("outputs".into(), Value::Array(payouts(&outputs)?));
            fee_params(&fee, &mut p)?;
            ("quote", Value::Object(p), None)
        }
        Command::Batch { plan, quote } => {
            let text = match plan.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| CliError(format!("cannot read plan {path}: {e}")))?,
                None if Path::new(&plan).is_file() => std::fs::read_to_string(&plan)
                    .map_err(|e| CliError(format!("cannot read plan {plan}: {e}")))?,
                None => plan,
            };
            let plan: Value = serde_json::from_str(&text)
                .map_err(|e| CliError(format!("batch plan is not valid JSON: {e}")))?;
            (if quote { "quotebatch" } else { "batch" }, plan, None)
        }
        Command::Batchstatus { id } => ("batchstatus", json!({ "id": id }), None),
        Command::Splicestatus { id } => ("splicestatus", json!({ "id": id }), None),
        Command::Listsplices => ("listsplices", json!({}), None),
        Command::Cancel { id } => ("cancel", json!({ "id": id }), None),
        Command::Bumpfee {
            id,
            feerate,
            max_fee,
            quote,
            wait,
            wait_timeout,
        } => {
            let mut p = serde_json::Map::new();
            p.insert("id".into(), json!(id));
            fee_params(
                &FeeArgs {
                    feerate: Some(feerate),
                    max_fee,
                },
                &mut p,
            )?;
            if quote {
                p.insert("quote".into(), json!(true));
                return client.call("bumpfee", &Value::Object(p));
            }
            let answer = client.call("bumpfee", &Value::Object(p))?;
            return match wait {
                Some(until) => {
                    follow_bump(&client, answer, until, Duration::from_secs(wait_timeout))
                }
                None => Ok(answer),
            };
        }
        Command::Autobump { id, policy, off } => {
            let auto_bump = match (policy, off) {
                (Some(spec), false) => auto_bump_json(&spec)?,
                _ => Value::Null,
            };
            (
                "autobump",
                json!({ "id": id, "auto_bump": auto_bump }),
                None,
            )
        }
        Command::Closechannel {
            channel_id,
            node_id,
            force,
        } => (
            "closechannel",
            json!({ "channel_id": channel_id, "node_id": node_id, "force": force }),
            None,
        ),
        Command::Events { ack: Some(id), .. } => ("ackevents", json!({ "through": id }), None),
        Command::Events { follow: true, .. } => return follow_events(&client),
        Command::Events { .. } => ("events", json!({}), None),
        Command::Liquidity { command } => return liquidity(&client, command),
        Command::Stop => ("stop", json!({}), None),
    };
    let answer = client.call(method, &params)?;
    match wait {
        Some(WaitArgs {
            wait: Some(until),
            wait_timeout,
        }) => {
            let timeout = Duration::from_secs(wait_timeout);
            follow_splice(&client, &answer, until, deadline_after(timeout), timeout)
        }
        _ => Ok(answer),
    }
}

/// When a wait of `timeout` ends: a `--wait-timeout` too large for the
/// clock waits for ten years instead.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(10 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Polls `splicestatus` until the splice reaches `until` (or fails), showing
/// each new stage on stderr, giving up at `deadline` (`timeout` is what the
/// user asked, for the message); returns the last record.
fn follow_splice(
    client: &Client,
    record: &Value,
    until: WaitFor,
    deadline: Instant,
    timeout: Duration,
) -> Result<Value, CliError> {
    let id = record["splice_id"]
        .as_str()
        .ok_or_else(|| CliError("the daemon's answer has no splice_id".into()))?
        .to_string();
    let mut last_shown = String::new();
    let mut txid_shown = false;
    let mut record = record.clone();
    loop {
        let state = record["state"].as_str().unwrap_or("unknown").to_string();
        // Polling may miss the broadcast stage; show the transaction anyway.
        if let Some(txid) = record["txid"].as_str().filter(|_| !txid_shown) {
            txid_shown = true;
            if state != "broadcast" {
                eprintln!("{id}: broadcast {txid}");
            }
        }
        let shown = match state.as_str() {
            "confirmed" => match record["confirmations_required"].as_u64() {
                Some(required) => format!(
                    "confirmations {} of {required}",
                    record["depth"].as_u64().unwrap_or(0)
                ),
                None => format!("confirmations {}", record["depth"].as_u64().unwrap_or(0)),
            },
            "broadcast" => format!("broadcast {}", record["txid"].as_str().unwrap_or("")),
            "failed" => format!(
                "failed: {}",
                record["reason"].as_str().unwrap_or("unknown reason")
            ),
            "awaiting_signatures" => "signing".to_string(),
            other => other.to_string(),
        };
        if shown != last_shown {
            eprintln!("{id}: {shown}");
            last_shown = shown;
        }
        match state.as_str() {
            "failed" | "cancelled" => {
                return Err(CliError(format!("{id} {last_shown}")));
            }
            "locked" => return Ok(record),
            "broadcast" | "confirmed" if until == WaitFor::Broadcast => return Ok(record),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(CliError(format!(
                "{id} did not reach {until:?} within {} s (last: {last_shown})",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
        record = client.call("splicestatus", &json!({ "id": id }))?;
    }
}

/// Whether fee bump `record` (a splice record as `splicestatus` shows it)
/// has been negotiated: no bump under way, more candidates than `before`,
/// and the newest of them is the splice's transaction.
fn bump_negotiated(record: &Value, before: u64) -> bool {
    let candidates = record["candidates"].as_array().cloned().unwrap_or_default();
    record["bump"].is_null()
        && candidates.len() as u64 > before
        && candidates.last().map(|c| &c["txid"]) == Some(&record["txid"])
}

/// Follows the fee bump `bumpfee` answered (the splice's record, with
/// `candidates_before`) until it is negotiated or, with `Locked`, until
/// the splice locks, polling `splicestatus` and showing progress on
/// stderr; returns the last record. A bump dropped before it was
/// negotiated (its round failed) is an error, with the reason the events
/// give; so is, when waiting for `Negotiated`, an earlier transaction
/// confirming first (the splice then locks on it).
fn follow_bump(
    client: &Client,
    answer: Value,
    until: BumpWaitFor,
    timeout: Duration,
) -> Result<Value, CliError> {
    let id = answer["splice_id"]
        .as_str()
        .ok_or_else(|| CliError("the daemon's answer has no splice_id".into()))?
        .to_string();
    let before = answer["candidates_before"]
        .as_u64()
        .ok_or_else(|| CliError("the daemon's answer has no candidates_before".into()))?;
    let deadline = deadline_after(timeout);
    if answer["bump"].is_object() {
        eprintln!(
            "{id}: fee bump to {} sat/kwu asked, {} sat in fees (the newest transaction pays {} sat)",
            answer["bump"]["feerate_sat_per_kwu"],
            answer["bump"]["fee"],
            answer["fee"]
        );
    }
    let mut record = answer;
    loop {
        let state = record["state"].as_str().unwrap_or("unknown").to_string();
        if bump_negotiated(&record, before) {
            eprintln!(
                "{id}: fee bump negotiated: {} pays {} sat in fees at {} sat/kwu",
                record["txid"].as_str().unwrap_or("?"),
                record["fee"],
                record["feerate_sat_per_kwu"]
            );
            break;
        }
        if record["bump"].is_null() {
            // Not negotiated, and no longer under way.
            match state.as_str() {
                "confirmed" | "locked" if until == BumpWaitFor::Locked => {
                    eprintln!(
                        "{id}: {} confirmed before the fee bump was negotiated; the splice \
                         locks on it",
                        record["txid"].as_str().unwrap_or("an earlier transaction")
                    );
                    break;
                }
                "confirmed" | "locked" => {
                    return Err(CliError(format!(
                        "{id}: {} confirmed before the fee bump was negotiated: there is \
                         nothing left to bump",
                        record["txid"].as_str().unwrap_or("an earlier transaction")
                    )))
                }
                "failed" | "closed" => {
                    return Err(CliError(format!(
                        "{id} {}",
                        record["status"].as_str().unwrap_or(&state)
                    )))
                }
                _ => {
                    let reason = dropped_reason(client, &id)
                        .unwrap_or_else(|| "see `events` for the reason".to_string());
                    return Err(CliError(format!(
                        "the fee bump of {id} was dropped ({reason}); its earlier transaction \
                         {} stands",
                        record["txid"].as_str().unwrap_or("?")
                    )));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(CliError(format!(
                "the fee bump of {id} was not negotiated within {} s (it goes on in the \
                 daemon: see splicestatus {id})",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
        record = client.call("splicestatus", &json!({ "id": id }))?;
    }
    match until {
        BumpWaitFor::Negotiated => Ok(record),
        BumpWaitFor::Locked => follow_splice(client, &record, WaitFor::Locked, deadline, timeout),
    }
}

/// Why the newest fee bump of splice `id` was dropped, as its pending
/// `fee_bump_dropped` event says (`None` when that event was acknowledged
/// already, or the daemon does not answer).
fn dropped_reason(client: &Client, id: &str) -> Option<String> {
    let events = client.call("events", &json!({})).ok()?;
    events
        .as_array()?
        .iter()
        .rev()
        .find(|e| e["kind"] == "fee_bump_dropped" && e["splice_id"] == id)
        .and_then(|e| e["reason"].as_str().map(str::to_string))
}

/// Runs a `liquidity` command.
fn liquidity(client: &Client, command: LiquidityCommand) -> Result<Value, CliError> {
    match command {
        LiquidityCommand::Info { peer } => {
            client.call("liquidityinfo", &json!({ "node_id": peer }))
        }
        LiquidityCommand::Buy {
            channel_id,
            amount_sat,
            max_fee,
            order_id,
            wait,
            wait_timeout,
        } => {
            let mut p = serde_json::Map::new();
            p.insert("channel_id".into(), json!(channel_id));
            p.insert(
                "amount_sat".into(),
                json!(amount("liquidity amount (sat)", &amount_sat)?),
            );
            if let Some(max) = max_fee {
                p.insert("max_fee_sat".into(), json!(amount("max fee (sat)", &max)?));
            }
            if let Some(id) = order_id {
                p.insert("client_order_id".into(), json!(id));
            }
            let order = client.call("liquiditybuy", &Value::Object(p))?;
            match wait {
                Some(until) => {
                    follow_order(client, order, until, Duration::from_secs(wait_timeout))
                }
                None => Ok(order),
            }
        }
        LiquidityCommand::Orders => client.call("liquidityorders", &json!({})),
        LiquidityCommand::Status { order_id } => {
            client.call("liquidityorder", &json!({ "order_id": order_id }))
        }
    }
}

/// Asks the service about `order` every [`ORDER_POLL_INTERVAL`] until it
/// reaches `until`, showing each new stage on stderr; returns the last
/// answer. A failed or expired order, or a fee payment that failed, is an
/// error. A service that is briefly unreachable or rate-limits us is shown
/// and asked again.
fn follow_order(
    client: &Client,
    mut order: Value,
    until: OrderWaitFor,
    timeout: Duration,
) -> Result<Value, CliError> {
    let id = order["order_id"]
        .as_str()
        .ok_or_else(|| CliError("the daemon's answer has no order_id".into()))?
        .to_string();
    let deadline = deadline_after(timeout);
    let mut last_shown = String::new();
    loop {
        let state = order["state"].as_str().unwrap_or("unknown").to_string();
        let mut shown = order["status"].as_str().unwrap_or(&state).to_string();
        if state == "created" {
            if let Some(payment) = order["fee_payment"].as_str() {
                shown = format!("{shown}, fee payment {payment}");
            }
        }
        if shown != last_shown {
            eprintln!("liquidity order {id}: {shown}");
            last_shown = shown;
        }
        match state.as_str() {
            "completed" => return Ok(order),
            "paid" | "splicing" if until == OrderWaitFor::Paid => return Ok(order),
            "failed" | "expired" => {
                return Err(CliError(format!("liquidity order {id} {last_shown}")))
            }
            "created" if order["fee_payment"] == "failed" => {
                return Err(CliError(format!(
                    "liquidity order {id}: paying its fee failed (nothing was paid; the \
                     order expires unpaid)"
                )))
            }
            _ => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(CliError(format!(
                "liquidity order {id} did not reach {until:?} within {} s (last: {last_shown})",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(ORDER_POLL_INTERVAL.min(deadline.saturating_duration_since(now)));
        let (status, answer) = client.request("liquidityorder", &json!({ "order_id": id }))?;
        match status {
            200..=299 => order = answer,
            // Rate limited, or the service is not connected right now.
            429 | 503 => eprintln!(
                "liquidity order {id}: {}; asking again",
                answer["error"]
                    .as_str()
                    .unwrap_or("no answer from the service")
            ),
            _ => return Err(CliError(error_message(status, &answer))),
        }
    }
}

/// `events --follow`: waits for events, prints each on its own line, then
/// acknowledges through the last one printed. An event is acknowledged only
/// once it was written out; one printed just before an interruption may be
/// printed again by the next `--follow`. Ends with an error when the daemon
/// stops (a restarted daemon has a new token: run `--follow` again).
fn follow_events(client: &Client) -> Result<Value, CliError> {
    let mut stdout = std::io::stdout();
    loop {
        let events = client.call("events", &json!({ "wait_secs": 30 }))?;
        let events = events.as_array().cloned().unwrap_or_default();
        let Some(last) = events
            .last()
            .and_then(|e| e["id"].as_str())
            .map(str::to_string)
        else {
            continue;
        };
        for event in &events {
            writeln!(stdout, "{event}")
                .and_then(|()| stdout.flush())
                .map_err(|e| CliError(format!("cannot print events: {e}")))?;
        }
        client.call("ackevents", &json!({ "through": last }))?;
    }
}

/// A minimal HTTP/1.1 client for the daemon's loopback API.
struct Client {
    addr: SocketAddr,
    token: String,
}

impl Client {
    fn from_datadir(dir: &Path) -> Result<Client, CliError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| {
                CliError(format!(
                    "cannot read {}: {e} (is the daemon running with --datadir {}?)",
                    dir.join(name).display(),
                    dir.display()
                ))
            })
        };
        let addr = read(API_ADDR_FILE)?;
        let addr = addr.trim().parse().map_err(|_| {
            CliError(format!(
                "bad API address '{}' in {API_ADDR_FILE}",
                addr.trim()
            ))
        })?;
        let token = read(API_TOKEN_FILE)?.trim().to_string();
        Ok(Client { addr, token })
    }

    /// POSTs `params` to `/v1/<method>`; the answer's JSON, or its error.
    fn call(&self, method: &str, params: &Value) -> Result<Value, CliError> {
        let (status, value) = self.request(method, params)?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(CliError(error_message(status, &value)))
        }
    }

    /// POSTs `params` to `/v1/<method>`; the HTTP status and the answer's
    /// JSON, whatever the status. An error only when there is no JSON answer.
    fn request(&self, method: &str, params: &Value) -> Result<(u16, Value), CliError> {
        let body = params.to_string();
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .map_err(|e| CliError(format!("cannot reach the daemon at {}: {e}", self.addr)))?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let request = format!(
            "POST /v1/{method} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .map_err(|e| CliError(format!("no answer from the daemon: {e}")))?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| CliError("malformed answer from the daemon".into()))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CliError("malformed status line from the daemon".into()))?;
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        let value: Value = serde_json::from_str(&body).map_err(|e| {
            CliError(format!(
                "answer from the daemon is not JSON (HTTP {status}): {e}"
            ))
        })?;
        Ok((status, value))
    }
}

/// The message of an API error answer.
fn error_message(status: u16, answer: &Value) -> String {
    answer["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}: {answer}"))
}

/// Decodes a chunked HTTP body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
