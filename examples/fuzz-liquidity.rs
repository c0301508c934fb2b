//! Feeds random and mutated messages through the liquidity protocol's
//! decoding and handling, on the service side and the client side, and
//! counts panics (there must be none) and broken answers.
//!
//! ```text
//! cargo run --release --example fuzz-liquidity -- --iterations 1000000 --seed 7
//! ```
//!
//! It runs on the stable toolchain: a seeded generator (xorshift) makes
//! every run reproducible. The service is a real node's
//! [`LiquidityService`](ldk_splice::liquidity::LiquidityService) on the
//! devchain, with a real channel to a real client node, so well-formed
//! orders reach the deep paths (channel checks, invoices, the order store);
//! the client side is a [`LiquidityClient`] with requests outstanding,
//! given random and mutated answers to them.
//!
//! Each input goes through `CustomMessageReader::read` (message type 37913)
//! and `CustomMessageHandler::handle_custom_message`, and the answers are
//! checked: a request (or anything unreadable) gets exactly one JSON-RPC
//! answer, an answer gets none. The last line of output is one JSON object:
//! `{"iterations": N, "panics": 0, "broken_answers": 0, ...}`. The process
//! exits 1 if any input panicked or was answered wrongly.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::Amount;
use clap::Parser;
use ldk_splice::devchain::{DevChain, DevChainConfig};
use ldk_splice::liquidity::{
    parse, Incoming, LiquidityClient, LiquidityEndpoint, LiquidityMessageHandler, LiquidityPolicy,
    StaticTerms, Terms, LSPS_MESSAGE_TYPE,
};
use ldk_splice::node::{Node, NodeBuilder};
use ldk_splice::SharedStore;
use lightning::ln::peer_handler::CustomMessageHandler;
use lightning::ln::types::ChannelId;
use lightning::ln::wire::CustomMessageReader;
use lightning::sign::KeysManager;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "Fuzz the liquidity protocol's decoding and handling")]
struct Args {
    /// How many inputs to feed.
    #[arg(long, default_value_t = 100_000)]
    iterations: u64,
    /// The generator's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A small deterministic generator (xorshift64*): reproducible runs
/// without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A policy that never rate-limits, so every input reaches the handlers.
struct Unlimited(StaticTerms);

impl LiquidityPolicy for Unlimited {
    fn terms(&self, client: &PublicKey, feerate: bitcoin::FeeRate) -> Terms {
        self.0.terms(client, feerate)
    }
    fn max_requests_per_minute(&self, _: &PublicKey) -> u32 {
        u32::MAX
    }
    fn max_committed(&self) -> Amount {
        self.0.max_committed
    }
}

const METHODS: &[&str] = &[
    "ldksplice.get_info",
    "ldksplice.create_order",
    "ldksplice.get_order",
    "ldksplice.",
    "ldksplice.get_info\u{0}",
    "lsps0.list_protocols",
    "lsps1.get_info",
    "lsps2.buy",
    "",
    "LDKSPLICE.GET_INFO",
];

const ODD_STRINGS: &[&str] = &[
    "",
    "0",
    "-1",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "2100000000000001",
    "1e308",
    "NaN",
    "null",
    "\u{202e}",
    "\u{0}",
    "ldks-00",
    "💥",
];

fn random_string(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => rng.pick(ODD_STRINGS).to_string(),
        1 => "a".repeat(rng.below(70_000) as usize),
        2 => format!("{:064x}", rng.next()),
        3 => (0..rng.below(80))
            .map(|_| char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('?'))
            .collect(),
        _ => (0..rng.below(20))
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect(),
    }
}

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    let leaf = depth > 4 || rng.chance(40);
    match if leaf { rng.below(6) } else { rng.below(8) } {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => match rng.below(5) {
            0 => json!(rng.next()),
            1 => json!(-(rng.below(1 << 62) as i64)),
            2 => json!(f64::from_bits(rng.next()).clamp(-1e300, 1e300)),
            3 => json!(u64::MAX),
            _ => json!(rng.below(1_000_000)),
        },
        3..=5 => json!(random_string(rng)),
        6 => Value::Array(
            (0..rng.below(5))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(6))
                .map(|_| (random_key(rng), random_value(rng, depth + 1)))
                .collect(),
        ),
    }
}

const KEYS: &[&str] = &[
    "channel_id",
    "amount_sat",
    "client_order_id",
    "order_id",
    "jsonrpc",
    "id",
    "method",
    "params",
    "result",
    "error",
    "code",
    "message",
];

fn random_key(rng: &mut Rng) -> String {
    if rng.chance(70) {
        rng.pick(KEYS).to_string()
    } else {
        random_string(rng)
    }
}

/// Well-formed parameters for `method`, with a field or two made odd now
/// and then.
fn params_for(rng: &mut Rng, method: &str, channel: &ChannelId, order_ids: &[String]) -> Value {
    let mut params = match method {
        "ldksplice.create_order" => json!({
            "channel_id": if rng.chance(70) { channel.to_string() } else { random_string(rng) },
            "amount_sat": if rng.chance(70) {
                json!((100_000 + rng.below(2_000_000)).to_string())
            } else {
                random_value(rng, 3)
            },
            "client_order_id": if rng.chance(70) {
                format!("fuzz-{}", rng.below(8))
            } else {
                random_string(rng)
            },
        }),
        "ldksplice.get_order" => json!({
            "order_id": if rng.chance(50) && !order_ids.is_empty() {
                rng.pick(order_ids).clone()
            } else {
                random_string(rng)
            }
        }),
        _ => json!({}),
    };
    if rng.chance(15) {
        if let Value::Object(map) = &mut params {
            map.insert(random_key(rng), random_value(rng, 2));
        }
    }
    params
}

fn request(rng: &mut Rng, channel: &ChannelId, order_ids: &[String]) -> Value {
    let method = *rng.pick(METHODS);
    let mut message = json!({
        "jsonrpc": "2.0",
        "id": format!("{}", rng.next()),
        "method": method,
        "params": params_for(rng, method, channel, order_ids),
    });
    if rng.chance(20) {
        let key = *rng.pick(&["jsonrpc", "id", "method", "params"]);
        let object = message.as_object_mut().expect("an object");
        if rng.chance(50) {
            object.remove(key);
        } else {
            object.insert(key.into(), random_value(rng, 1));
        }
    }
    message
}

/// A plausible answer to the client's request `id`: terms or an order,
/// right or subtly wrong, or an error.
fn answer(rng: &mut Rng, id: &str, service: &PublicKey, channel: &ChannelId) -> Value {
    let states = [
        json!({"state": "created"}),
        json!({"state": "splicing", "txid": format!("{:064x}", rng.next())}),
        json!({"state": "failed", "reason": random_string(rng)}),
        json!({"state": "teleported"}),
    ];
    let state = rng.pick(&states).clone();
    let result = match rng.below(4) {
        0 => json!({
            "version": 1, "min_amount_sat": "100000", "max_amount_sat": "10000000",
            "fee_base_sat": "1000", "fee_basis": 100, "funding_weight": 500,
            "feerate_sat_per_kwu": 253, "quote_valid_secs": 600, "invoice_valid_secs": 600,
            "max_open_orders_per_peer": 2, "min_channel_age_blocks": 6,
        }),
        1 => json!({
            "order_id": format!("{:032x}", rng.next()),
            "client_order_id": format!("fuzz-{}", rng.below(8)),
            "channel_id": channel.to_string(),
            "amount_sat": "500000",
            "fee": {"base_sat": "1000", "proportional_sat": "5000", "mining_sat": "127",
                    "total_sat": "6127", "feerate_sat_per_kwu": 253},
            "invoice": format!("lnbcrt61270n1{}", random_string(rng)),
            "created_at": rng.next() >> 33,
            "expires_at": rng.next() >> 33,
            "state": state,
        }),
        2 => random_value(rng, 0),
        _ => json!({ "service": service.to_string() }),
    };
    let mut message = if rng.chance(25) {
        json!({"jsonrpc": "2.0", "id": id,
               "error": {"code": rng.below(200) as i64 - 100, "message": random_string(rng),
                         "data": random_value(rng, 2)}})
    } else {
        json!({"jsonrpc": "2.0", "id": id, "result": result})
    };
    if rng.chance(20) {
        if let Some(object) = message.as_object_mut() {
            object.insert(random_key(rng), random_value(rng, 1));
        }
    }
    message
}

/// Flips, cuts, repeats or inserts bytes.
fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            1 if !bytes.is_empty() => {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes.truncate(at);
            }
            2 if !bytes.is_empty() => {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = *rng.pick(b"{}[]\",:0123456789-eE.\\nutfl \x00\xff");
            }
            3 => {
                let at = rng.below(bytes.len() as u64 + 1) as usize;
                let piece: Vec<u8> = match rng.below(3) {
                    0 => b"[".repeat(rng.below(300) as usize),
                    1 => b"{\"a\":".repeat(rng.below(100) as usize),
                    _ => b"9".repeat(rng.below(400) as usize),
                };
                bytes.splice(at..at, piece);
            }
            4 if bytes.len() > 2 => {
                let from = rng.below(bytes.len() as u64) as usize;
                let to = from + rng.below((bytes.len() - from) as u64) as usize;
                let copy = bytes[from..to].to_vec();
                bytes.extend_from_slice(&copy);
            }
            _ => bytes.push(rng.below(256) as u8),
        }
    }
    bytes.truncate(65_533);
    bytes
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    (0..rng.below(300)).map(|_| rng.below(256) as u8).collect()
}

/// What the fuzzer tallies.
#[derive(Default)]
struct Tally {
    panics: u64,
    broken_answers: u64,
    service_inputs: u64,
    client_inputs: u64,
    answers_by_code: BTreeMap<i64, u64>,
    client_answers: u64,
    first_panics: Vec<String>,
}

struct Harness {
    handler: LiquidityMessageHandler,
    client: Arc<LiquidityClient>,
    service_key: PublicKey,
    peers: Vec<PublicKey>,
    channel: ChannelId,
}

impl Harness {
    /// Feeds `payload` from `from` through decode and handle; checks and
    /// counts the answers.
    fn feed(&self, payload: &[u8], from: PublicKey, tally: &mut Tally) {
        let expects_answer = !matches!(parse(payload), Incoming::Response { .. });
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut reader: &[u8] = payload;
            let message = self
                .handler
                .read(LSPS_MESSAGE_TYPE, &mut reader)
                .ok()
                .flatten();
            if let Some(message) = message {
                let _ = self.handler.handle_custom_message(message, from);
            }
            self.handler.get_and_clear_pending_msg()
        }));
        let answers = match outcome {
            Ok(answers) => answers,
            Err(panic) => {
                tally.panics += 1;
                if tally.first_panics.len() < 5 {
                    let text = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    tally.first_panics.push(format!(
                        "{text} on {:?}",
                        String::from_utf8_lossy(&payload[..payload.len().min(200)])
                    ));
                }
                return;
            }
        };
        // The client's own requests (sent by `ask`) go out too; only
        // answers to `from` count here.
        let answers: Vec<_> = answers
            .into_iter()
            .filter(|(to, message)| {
                let request = serde_json::from_slice::<Value>(&message.payload)
                    .is_ok_and(|m| m.get("method").is_some());
                *to == from && !request
            })
            .collect();
        let expected = usize::from(expects_answer);
        if answers.len() != expected {
            tally.broken_answers += 1;
        }
        for (_, message) in answers {
            match serde_json::from_slice::<Value>(&message.payload) {
                Ok(answer) if answer["jsonrpc"] == "2.0" => {
                    let code = answer["error"]["code"].as_i64().unwrap_or(0);
                    *tally.answers_by_code.entry(code).or_default() += 1;
                }
                _ => tally.broken_answers += 1,
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let args = Args::parse();
    match run(args).await {
        Ok(ok) => std::process::exit(if ok { 0 } else { 1 }),
        Err(e) => {
            eprintln!("fuzz-liquidity failed to set up: {e}");
            std::process::exit(2);
        }
    }
}

type Error = Box<dyn std::error::Error>;

async fn two_nodes(
    chain: &DevChain,
    dirs: &[tempfile::TempDir],
) -> Result<(Node, Node, ChannelId), Error> {
    let builder = |dir: &std::path::Path| {
        NodeBuilder::new(dir)
            .bitcoind_rpc(chain.rpc_url(), chain.rpc_user(), chain.rpc_password())
            .chain_poll_interval(Duration::from_millis(50))
    };
    let service = builder(dirs[0].path())
        .liquidity_service(Arc::new(Unlimited(StaticTerms::default())))
        .start()
        .await?;
    let client = builder(dirs[1].path()).start().await?;
    for node in [&service, &client] {
        chain.mine_blocks(1, &node.new_address()?);
    }
    chain.mine_blocks_to_burn(100);
    for node in [&service, &client] {
        node.wait_until(Duration::from_secs(60), "coins", |n| {
            n.onchain_balance().confirmed > Amount::ZERO
        })
        .await?;
    }
    client
        .connect(service.node_id(), service.listen_addr())
        .await?;
    client.open_channel(service.node_id(), Amount::from_sat(2_000_000), Amount::ZERO)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = loop {
        chain.mine_blocks_to_burn(1);
        if let Some(c) = service
            .list_channels()
            .into_iter()
            .find(|c| c.is_usable && c.confirmations.unwrap_or(0) >= 6)
        {
            break c;
        }
        if Instant::now() > deadline {
            return Err("the channel never became usable".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok((service, client, channel.channel_id))
}

async fn run(args: Args) -> Result<bool, Error> {
    let chain = DevChain::start(DevChainConfig::default()).await?;
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let (service, client_node, channel) = two_nodes(&chain, &dirs).await?;
    let endpoint: Arc<dyn LiquidityEndpoint> = service
        .liquidity_service()
        .ok_or("the service node has no service")?
        .clone();

    // The client side: a client of its own, asking a made-up service.
    let store: SharedStore = Arc::new(lightning_persister::fs_store::v1::FilesystemStore::new(
        dirs[2].path().to_path_buf(),
    ));
    let entropy = Arc::new(KeysManager::new(&[args.seed as u8; 32], 1, 1, true));
    let client = Arc::new(LiquidityClient::new(store, entropy)?);
    let secp = Secp256k1::new();
    let mut rng = Rng::new(args.seed);
    let key = |rng: &mut Rng| loop {
        let mut bytes = [0u8; 32];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        if let Ok(secret) = SecretKey::from_slice(&bytes) {
            return PublicKey::from_secret_key(&secp, &secret);
        }
    };
    let service_key = key(&mut rng);
    let mut peers: Vec<PublicKey> = (0..255).map(|_| key(&mut rng)).collect();
    peers.push(client_node.node_id());
    let harness = Harness {
        handler: LiquidityMessageHandler::new(Some(endpoint), Some(client.clone()), None),
        client,
        service_key,
        peers,
        channel,
    };

    let mut tally = Tally::default();
    let mut outstanding = Vec::new();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut order_ids: Vec<String> = Vec::new();
    for i in 0..args.iterations {
        if i % 1_000_000 == 0 && i > 0 {
            eprintln!(
                "{i} inputs, {:.0} per second, {} panics",
                i as f64 / started.elapsed().as_secs_f64(),
                tally.panics
            );
        }
        if i % 1_000 == 0 {
            order_ids = service
                .liquidity_service_orders()
                .into_iter()
                .map(|o| o.order.order_id)
                .take(4)
                .collect();
        }
        if rng.chance(30) {
            // The client side: answers (good, odd, broken) to its requests.
            tally.client_inputs += 1;
            if outstanding.len() < 8 {
                let id = if rng.chance(50) {
                    harness.client.get_info(harness.service_key)
                } else {
                    harness.client.create_order(
                        harness.service_key,
                        ldk_splice::liquidity::CreateOrder {
                            channel_id: harness.channel,
                            amount: Amount::from_sat(500_000),
                            client_order_id: format!("fuzz-{}", rng.below(8)),
                        },
                    )
                };
                outstanding.push(id);
            }
            let target = rng.pick(&outstanding).0.clone();
            let mut bytes =
                serde_json::to_vec(&answer(&mut rng, &target, &harness.service_key, &channel))?;
            if rng.chance(30) {
                bytes = mutate(&mut rng, bytes);
            }
            harness.feed(&bytes, harness.service_key, &mut tally);
            outstanding.retain(|id| match harness.client.take_answer(id) {
                Some(_) => {
                    tally.client_answers += 1;
                    false
                }
                None => true,
            });
            continue;
        }
        tally.service_inputs += 1;
        // A third from the channel's real counterparty, so orders can get
        // all the way to an invoice and the order store.
        let from = if rng.chance(33) {
            harness.peers[harness.peers.len() - 1]
        } else {
            *rng.pick(&harness.peers)
        };
        let bytes = match rng.below(10) {
            0 => random_bytes(&mut rng),
            1..=4 => serde_json::to_vec(&request(&mut rng, &channel, &order_ids))?,
            _ => {
                let valid = serde_json::to_vec(&request(&mut rng, &channel, &order_ids))?;
                mutate(&mut rng, valid)
            }
        };
        harness.feed(&bytes, from, &mut tally);
    }
    std::panic::set_hook(quiet);
    let elapsed = started.elapsed().as_secs_f64();
    for panic in &tally.first_panics {
        eprintln!("panic: {panic}");
    }
    let orders = service.liquidity_service_orders().len();
    let summary = json!({
        "iterations": args.iterations,
        "seed": args.seed,
        "panics": tally.panics,
        "broken_answers": tally.broken_answers,
        "service_inputs": tally.service_inputs,
        "client_inputs": tally.client_inputs,
        "client_answers_taken": tally.client_answers,
        "answers_by_code": tally.answers_by_code.iter()
            .map(|(code, n)| (code.to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "orders_created": orders,
        "elapsed_secs": (elapsed * 10.0).round() / 10.0,
        "inputs_per_sec": (args.iterations as f64 / elapsed).round(),
    });
    for node in [&service, &client_node] {
        node.stop().await?;
    }
    println!("{summary}");
    Ok(tally.panics == 0 && tally.broken_answers == 0)
}
