//! bitcoind's JSON-RPC methods: parameter parsing, dispatch and results.

use bitcoin::address::NetworkUnchecked;
use bitcoin::consensus::encode::{deserialize, serialize_hex};
use bitcoin::hex::FromHex;
use bitcoin::{
    Address, Amount, BlockHash, Denomination, FeeRate, Network, OutPoint, Transaction, Txid,
};
use serde_json::{json, Map, Value};
use std::str::FromStr;

use super::error::RejectReason;
use super::json::{self, MempoolListing};
use super::mempool::MIN_RELAY_SAT_PER_KVB;
use super::package::{self, MAX_PACKAGE_COUNT};
use super::state::unix_now;
use super::Shared;

/// bitcoind's `RPC_MISC_ERROR`.
pub(crate) const RPC_MISC_ERROR: i64 = -1;
/// bitcoind's `RPC_TYPE_ERROR`.
pub(crate) const RPC_TYPE_ERROR: i64 = -3;
/// bitcoind's `RPC_INVALID_ADDRESS_OR_KEY`.
pub(crate) const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;
/// bitcoind's `RPC_INVALID_PARAMETER`.
pub(crate) const RPC_INVALID_PARAMETER: i64 = -8;
/// bitcoind's `RPC_DESERIALIZATION_ERROR`.
pub(crate) const RPC_DESERIALIZATION_ERROR: i64 = -22;
/// JSON-RPC's invalid request.
pub(crate) const RPC_INVALID_REQUEST: i64 = -32600;
/// JSON-RPC's method not found.
pub(crate) const RPC_METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC's parse error.
pub(crate) const RPC_PARSE_ERROR: i64 = -32700;

/// bitcoind's default `maxfeerate` for `sendrawtransaction` and `testmempoolaccept`, sat/kvB.
const DEFAULT_MAX_FEE_RATE_KVB: u64 = 10_000_000;

/// A JSON-RPC error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RpcError {
    /// bitcoind's error code.
    pub code: i64,
    /// The message.
    pub message: String,
}

impl RpcError {
    /// An error with a code and message.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// The JSON `error` object.
    pub fn to_json(&self) -> Value {
        json!({ "code": self.code, "message": self.message })
    }
}

impl From<RejectReason> for RpcError {
    fn from(reason: RejectReason) -> Self {
        RpcError::new(i64::from(reason.code), reason.message())
    }
}

type RpcResult = Result<Value, RpcError>;

/// The methods served, with their parameter names (for named parameters).
const METHODS: &[(&str, &[&str])] = &[
    ("getblockchaininfo", &[]),
    ("getnetworkinfo", &[]),
    ("getbestblockhash", &[]),
    ("getblockcount", &[]),
    ("getblockhash", &["height"]),
    ("getblockheader", &["blockhash", "verbose"]),
    ("getblock", &["blockhash", "verbosity"]),
    ("gettxout", &["txid", "n", "include_mempool"]),
    ("getrawtransaction", &["txid", "verbose", "blockhash"]),
    ("getrawmempool", &["verbose", "mempool_sequence"]),
    ("getmempoolentry", &["txid"]),
    ("getmempoolinfo", &[]),
    (
        "sendrawtransaction",
        &["hexstring", "maxfeerate", "maxburnamount"],
    ),
    ("testmempoolaccept", &["rawtxs", "maxfeerate"]),
    ("submitpackage", &["package", "maxfeerate", "maxburnamount"]),
    ("estimatesmartfee", &["conf_target", "estimate_mode"]),
    ("generatetoaddress", &["nblocks", "address", "maxtries"]),
    ("invalidateblock", &["blockhash"]),
    ("getmininginfo", &[]),
    ("uptime", &[]),
    ("ping", &[]),
    ("stop", &[]),
    ("help", &["command"]),
    ("setfeerate", &["sat_per_vb"]),
];

/// Positional arguments of one call (named ones mapped to their positions).
struct Args<'a> {
    method: &'a str,
    names: &'static [&'static str],
    values: Vec<Value>,
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(value: &Value, expected: &str) -> RpcError {
    RpcError::new(
        RPC_TYPE_ERROR,
        format!(
            "JSON value of type {} is not of expected type {expected}",
            type_name(value)
        ),
    )
}

impl<'a> Args<'a> {
    fn new(
        method: &'a str,
        names: &'static [&'static str],
        params: &Value,
    ) -> Result<Self, RpcError> {
        let values = match params {
            Value::Null => Vec::new(),
            Value::Array(values) => {
                if values.len() > names.len() {
                    return Err(RpcError::new(
                        RPC_MISC_ERROR,
                        format!("{method}: too many parameters (at most {})", names.len()),
                    ));
                }
                values.clone()
            }
            Value::Object(named) => {
                let mut values = vec![Value::Null; names.len()];
                for (key, value) in named {
                    match names.iter().position(|n| n == key) {
                        Some(i) => values[i] = value.clone(),
                        None => {
                            return Err(RpcError::new(
                                RPC_INVALID_PARAMETER,
                                format!("Unknown named parameter {key}"),
                            ))
                        }
                    }
                }
                while values.last() == Some(&Value::Null) {
                    values.pop();
                }
                values
            }
            _ => {
                return Err(RpcError::new(
                    RPC_INVALID_REQUEST,
                    "Params must be an array or object",
                ))
            }
        };
        Ok(Args {
            method,
            names,
            values,
        })
    }

    fn get(&self, i: usize) -> Option<&Value> {
        self.values.get(i).filter(|v| !v.is_null())
    }

    fn required(&self, i: usize) -> Result<&Value, RpcError> {
        self.get(i).ok_or_else(|| {
            let name = self.names.get(i).copied().unwrap_or("?");
            RpcError::new(
                RPC_MISC_ERROR,
                format!("{}: missing required parameter '{name}'", self.method),
            )
        })
    }

    fn int(&self, i: usize) -> Result<Option<i64>, RpcError> {
        match self.get(i) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                if v.is_number() {
                    RpcError::new(RPC_TYPE_ERROR, "JSON integer out of range")
                } else {
                    type_error(v, "number")
                }
            }),
        }
    }

    fn required_int(&self, i: usize) -> Result<i64, RpcError> {
        self.required(i)?;
        self.int(i).map(|v| v.unwrap_or_default())
    }

    fn bool(&self, i: usize, default: bool) -> Result<bool, RpcError> {
        match self.get(i) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| type_error(v, "bool")),
        }
    }

    /// A verbosity given as a bool or an integer.
    fn verbosity(&self, i: usize, default: i64) -> Result<i64, RpcError> {
        match self.get(i) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(i64::from(*b)),
            Some(v) => v.as_i64().ok_or_else(|| type_error(v, "number")),
        }
    }

    fn str(&self, i: usize) -> Result<&str, RpcError> {
        let v = self.required(i)?;
        v.as_str().ok_or_else(|| type_error(v, "string"))
    }

    fn hash<T: FromStr>(&self, i: usize) -> Result<T, RpcError> {
        let name = self.names.get(i).copied().unwrap_or("hash");
        let s = self.str(i)?;
        if s.len() != 64 {
            return Err(RpcError::new(
                RPC_INVALID_PARAMETER,
                format!("{name} must be of length 64 (not {}, for '{s}')", s.len()),
            ));
        }
        T::from_str(s).map_err(|_| {
            RpcError::new(
                RPC_INVALID_PARAMETER,
                format!("{name} must be hexadecimal string (not '{s}')"),
            )
        })
    }

    /// A feerate in BTC/kvB, returned in sat/kvB.
    fn fee_rate_kvb(&self, i: usize, default: u64) -> Result<u64, RpcError> {
        let amount = match self.get(i) {
            None => return Ok(default),
            Some(Value::Number(n)) => {
                let btc = n.as_f64().unwrap_or(f64::NAN);
                Amount::from_btc(btc)
                    .map_err(|_| RpcError::new(RPC_TYPE_ERROR, "Amount out of range"))?
            }
            Some(Value::String(s)) => Amount::from_str_in(s, Denomination::Bitcoin)
                .map_err(|_| RpcError::new(RPC_TYPE_ERROR, "Invalid amount"))?,
            Some(v) => {
                return Err(RpcError::new(
                    RPC_TYPE_ERROR,
                    format!("Amount is not a number or string (got {})", type_name(v)),
                ))
            }
        };
        Ok(amount.to_sat())
    }
}

fn decode_tx(hex: &str) -> Result<Transaction, RpcError> {
    Vec::<u8>::from_hex(hex)
        .ok()
        .and_then(|bytes| deserialize::<Transaction>(&bytes).ok())
        .ok_or_else(|| {
            RpcError::new(
                RPC_DESERIALIZATION_ERROR,
                "TX decode failed. Make sure the tx has at least one input.",
            )
        })
}

fn block_not_found() -> RpcError {
    RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
}

/// Runs one JSON-RPC method.
pub(crate) fn call(shared: &Shared, method: &str, params: &Value) -> RpcResult {
    let Some((_, names)) = METHODS.iter().find(|(name, _)| *name == method) else {
        return Err(RpcError::new(RPC_METHOD_NOT_FOUND, "Method not found"));
    };
    let args = Args::new(method, names, params)?;
    match method {
        "getblockchaininfo" => Ok(shared.read(|s| json::blockchain_info(&s.chain))),
        "getnetworkinfo" => Ok(network_info()),
        "getbestblockhash" => Ok(shared.read(|s| json!(s.chain.tip().hash.to_string()))),
        "getblockcount" => Ok(shared.read(|s| json!(s.chain.height()))),
        "getblockhash" => {
            let height = args.required_int(0)?;
            shared.read(|s| {
                u32::try_from(height)
                    .ok()
                    .and_then(|h| s.chain.hash_at(h))
                    .map(|hash| json!(hash.to_string()))
                    .ok_or_else(|| {
                        RpcError::new(RPC_INVALID_PARAMETER, "Block height out of range")
                    })
            })
        }
        "getblockheader" => {
            let hash: BlockHash = args.hash(0)?;
            let verbose = args.bool(1, true)?;
            shared.read(|s| {
                let entry = s.chain.entry(&hash).ok_or_else(block_not_found)?;
                if verbose {
                    Ok(Value::Object(json::header(&s.chain, entry)))
                } else {
                    Ok(json!(serialize_hex(&entry.block.header)))
                }
            })
        }
        "getblock" => {
            let hash: BlockHash = args.hash(0)?;
            let verbosity = args.verbosity(1, 1)?;
            shared.read(|s| {
                let entry = s.chain.entry(&hash).ok_or_else(block_not_found)?;
                Ok(match verbosity {
                    v if v <= 0 => json!(serialize_hex(&*entry.block)),
                    1 => json::block(&s.chain, entry, 1),
                    _ => json::block(&s.chain, entry, 2),
                })
            })
        }
        "gettxout" => gettxout(shared, &args),
        "getrawtransaction" => getrawtransaction(shared, &args),
        "getrawmempool" => getrawmempool(shared, &args),
        "getmempoolentry" => {
            let txid: Txid = args.hash(0)?;
            shared.read(|s| {
                s.mempool
                    .get(&txid)
                    .map(|entry| json::mempool_entry(&s.mempool, entry))
                    .ok_or_else(|| {
                        RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
                    })
            })
        }
        "getmempoolinfo" => Ok(shared.read(json::mempool_info)),
        "sendrawtransaction" => {
            let tx = decode_tx(args.str(0)?)?;
            let max_fee_rate = args.fee_rate_kvb(1, DEFAULT_MAX_FEE_RATE_KVB)?;
            let accepted = shared.write(|s| s.submit(&tx, max_fee_rate))?;
            Ok(json!(accepted.txid.to_string()))
        }
        "testmempoolaccept" => testmempoolaccept(shared, &args),
        "submitpackage" => submitpackage(shared, &args),
        "estimatesmartfee" => estimatesmartfee(shared, &args),
        "generatetoaddress" => {
            let n = args.required_int(0)?;
            let address = args.str(1)?;
            let address = Address::<NetworkUnchecked>::from_str(address)
                .ok()
                .and_then(|a| a.require_network(Network::Regtest).ok())
                .ok_or_else(|| {
                    RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address")
                })?;
            let n = usize::try_from(n).unwrap_or(0);
            let hashes = shared.write(|s| s.mine(n, &address.script_pubkey()));
            Ok(json!(hashes
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()))
        }
        "invalidateblock" => {
            let hash: BlockHash = args.hash(0)?;
            shared
                .write(|s| s.invalidate_block(&hash))
                .map_err(|msg| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, msg))?;
            Ok(Value::Null)
        }
        "getmininginfo" => Ok(shared.read(|s| {
            json!({
                "blocks": s.chain.height(),
                "difficulty": json::difficulty(s.chain.tip().block.header.bits),
                "networkhashps": 0,
                "pooledtx": s.mempool.len(),
                "chain": "regtest",
                "warnings": "",
            })
        })),
        "uptime" => Ok(shared.read(|s| json!(unix_now().saturating_sub(s.started)))),
        "ping" => Ok(Value::Null),
        "stop" => {
            shared.request_stop();
            Ok(json!("Bitcoin Core stopping"))
        }
        "help" => Ok(json!(METHODS
            .iter()
            .map(|(name, params)| format!("{name} {}", params.join(" ")))
            .collect::<Vec<_>>()
            .join("\n"))),
        "setfeerate" => {
            let v = args.required(0)?;
            let sat_per_vb = v.as_f64().ok_or_else(|| type_error(v, "number"))?;
            if !sat_per_vb.is_finite() || !(0.0..=1e9).contains(&sat_per_vb) {
                return Err(RpcError::new(RPC_INVALID_PARAMETER, "Invalid sat_per_vb"));
            }
            let rate = FeeRate::from_sat_per_kwu((sat_per_vb * 250.0).round() as u64);
            shared.write(|s| s.fee_rate = rate);
            Ok(Value::Null)
        }
        _ => Err(RpcError::new(RPC_METHOD_NOT_FOUND, "Method not found")),
    }
}

fn network_info() -> Value {
    json!({
        "version": 270000,
        "subversion": "/Satoshi:27.0.0(devchain)/",
        "protocolversion": 70016,
        "localservices": "0000000000000409",
        "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED"],
        "localrelay": true,
        "timeoffset": 0,
        "networkactive": true,
        "connections": 0,
        "connections_in": 0,
        "connections_out": 0,
        "networks": [],
        "relayfee": json::btc_per_kvb(MIN_RELAY_SAT_PER_KVB),
        "incrementalfee": json::btc_per_kvb(MIN_RELAY_SAT_PER_KVB),
        "localaddresses": [],
        "warnings": "",
    })
}

fn getrawmempool(shared: &Shared, args: &Args) -> RpcResult {
    let verbose = args.bool(0, false)?;
    let with_sequence = args.bool(1, false)?;
    let listing = MempoolListing::from_flags(verbose, with_sequence).ok_or_else(|| {
        RpcError::new(
            RPC_INVALID_PARAMETER,
            "Verbose results cannot contain mempool sequence values.",
        )
    })?;
    Ok(shared.read(|s| json::raw_mempool(&s.mempool, listing)))
}

fn gettxout(shared: &Shared, args: &Args) -> RpcResult {
    let txid: Txid = args.hash(0)?;
    let vout = args.required_int(1)?;
    let include_mempool = args.bool(2, true)?;
    let Ok(vout) = u32::try_from(vout) else {
        return Ok(Value::Null);
    };
    shared.read(|s| {
        let Some(utxo) = s.utxo(&OutPoint { txid, vout }, include_mempool) else {
            return Ok(Value::Null);
        };
        Ok(json!({
            "bestblock": s.chain.tip().hash.to_string(),
            "confirmations": utxo.confirmations,
            "value": json::btc(utxo.output.value),
            "scriptPubKey": json::script_pubkey(&utxo.output.script_pubkey),
            "coinbase": utxo.coinbase,
        }))
    })
}

fn getrawtransaction(shared: &Shared, args: &Args) -> RpcResult {
    let txid: Txid = args.hash(0)?;
    let verbosity = args.verbosity(1, 0)?;
    let block_hash: Option<BlockHash> = match args.get(2) {
        Some(_) => Some(args.hash(2)?),
        None => None,
    };
    shared.read(|s| {
        let genesis_coinbase = s.chain.entry_at(0).and_then(|g| g.block.txdata.first().map(|t| t.compute_txid()));
        if genesis_coinbase == Some(txid) {
            return Err(RpcError::new(
                RPC_INVALID_ADDRESS_OR_KEY,
                "The genesis block coinbase is not considered an ordinary transaction and cannot be retrieved",
            ));
        }
        let (tx, block, fee) = match block_hash {
            Some(hash) => {
                let entry = s
                    .chain
                    .entry(&hash)
                    .ok_or_else(|| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found"))?;
                let (index, tx) = entry
                    .block
                    .txdata
                    .iter()
                    .enumerate()
                    .find(|(_, tx)| tx.compute_txid() == txid)
                    .ok_or_else(|| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "No such transaction found in the provided block. Use gettransaction for wallet transactions."))?;
                let fee = s.chain.tx_location(&txid).filter(|l| l.block == hash && l.index == index).and_then(|l| l.fee);
                (tx.clone(), Some(hash), fee)
            },
            None => {
                let known = s.transaction(&txid).ok_or_else(|| {
                    RpcError::new(
                        RPC_INVALID_ADDRESS_OR_KEY,
                        "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
                    )
                })?;
                (known.tx, known.block, known.fee)
            },
        };
        if verbosity <= 0 {
            return Ok(json!(serialize_hex(&tx)));
        }
        let mut obj = Map::new();
        if block_hash.is_some() {
            obj.insert("in_active_chain".into(), json!(block.is_some_and(|h| s.chain.is_active(&h))));
        }
        obj.extend(json::transaction(&tx, true, if verbosity >= 2 { fee } else { None }));
        if let Some(hash) = block {
            obj.insert("blockhash".into(), json!(hash.to_string()));
            match s.chain.entry(&hash) {
                Some(entry) if s.chain.is_active(&hash) => {
                    obj.insert("confirmations".into(), json!(s.chain.height() - entry.height + 1));
                    obj.insert("time".into(), json!(entry.block.header.time));
                    obj.insert("blocktime".into(), json!(entry.block.header.time));
                },
                _ => {
                    obj.insert("confirmations".into(), json!(0));
                },
            }
        }
        Ok(Value::Object(obj))
    })
}

/// The array of raw transactions `testmempoolaccept` and `submitpackage` take.
fn raw_transactions(args: &Args) -> Result<Vec<Transaction>, RpcError> {
    let raw = args.required(0)?;
    let raw = raw.as_array().ok_or_else(|| type_error(raw, "array"))?;
    if raw.is_empty() || raw.len() > MAX_PACKAGE_COUNT {
        return Err(RpcError::new(
            RPC_INVALID_PARAMETER,
            format!("Array must contain between 1 and {MAX_PACKAGE_COUNT} transactions."),
        ));
    }
    let mut txs = Vec::with_capacity(raw.len());
    for item in raw {
        let hex = item.as_str().ok_or_else(|| type_error(item, "string"))?;
        let tx = Vec::<u8>::from_hex(hex)
            .ok()
            .and_then(|bytes| deserialize::<Transaction>(&bytes).ok())
            .ok_or_else(|| {
                RpcError::new(
                    RPC_DESERIALIZATION_ERROR,
                    format!("TX decode failed: {hex} Make sure the tx has at least one input."),
                )
            })?;
        txs.push(tx);
    }
    Ok(txs)
}

fn testmempoolaccept(shared: &Shared, args: &Args) -> RpcResult {
    let txs = raw_transactions(args)?;
    let max_fee_rate = args.fee_rate_kvb(1, DEFAULT_MAX_FEE_RATE_KVB)?;
    let results = if txs.len() == 1 {
        vec![shared.write(|s| s.test_accept(&txs[0]))]
    } else {
        shared.read(|s| s.test_accept_many(&txs))
    };
    let out: Vec<Value> = txs
        .iter()
        .zip(results)
        .map(|(tx, result)| {
            let mut obj = Map::new();
            obj.insert("txid".into(), json!(tx.compute_txid().to_string()));
            obj.insert("wtxid".into(), json!(tx.compute_wtxid().to_string()));
            match result {
                Ok(accepted)
                    if max_fee_rate > 0
                        && accepted.fee.to_sat()
                            > max_fee_rate.saturating_mul(accepted.vsize) / 1000 =>
                {
                    obj.insert("allowed".into(), json!(false));
                    obj.insert("reject-reason".into(), json!("max-fee-exceeded"));
                }
                Ok(accepted) => {
                    obj.insert("allowed".into(), json!(true));
                    obj.insert("vsize".into(), json!(accepted.vsize));
                    let rate = accepted.fee.to_sat().saturating_mul(1000) / accepted.vsize.max(1);
                    obj.insert(
                        "fees".into(),
                        json!({
                            "base": json::btc(accepted.fee),
                            "effective-feerate": json::btc_per_kvb(rate),
                            "effective-includes": [accepted.wtxid.to_string()],
                        }),
                    );
                }
                Err(reason) => {
                    obj.insert("allowed".into(), json!(false));
                    obj.insert("reject-reason".into(), json!(reason.test_accept_reason()));
                }
            }
            Value::Object(obj)
        })
        .collect();
    Ok(Value::Array(out))
}

fn submitpackage(shared: &Shared, args: &Args) -> RpcResult {
    let txs = raw_transactions(args)?;
    args.fee_rate_kvb(1, DEFAULT_MAX_FEE_RATE_KVB)?;
    package::check_topology(&txs)?;
    let outcome = shared.write(|s| package::submit_package(s, &txs));
    let mut results = Map::new();
    for tx in &outcome.txs {
        let mut obj = Map::new();
        obj.insert("txid".into(), json!(tx.txid.to_string()));
        match &tx.result {
            Ok(accepted) => {
                obj.insert("vsize".into(), json!(accepted.vsize));
                let includes: Vec<String> = accepted
                    .effective_includes
                    .iter()
                    .map(|w| w.to_string())
                    .collect();
                obj.insert(
                    "fees".into(),
                    json!({
                        "base": json::btc(accepted.fee),
                        "effective-feerate": json::btc_per_kvb(accepted.effective_kvb),
                        "effective-includes": includes,
                    }),
                );
            }
            Err(reason) => {
                obj.insert("error".into(), json!(reason.message()));
            }
        }
        results.insert(tx.wtxid.to_string(), Value::Object(obj));
    }
    let replaced: Vec<String> = outcome.replaced.iter().map(|t| t.to_string()).collect();
    Ok(json!({
        "package_msg": outcome.message,
        "tx-results": results,
        "replaced-transactions": replaced,
    }))
}

fn estimatesmartfee(shared: &Shared, args: &Args) -> RpcResult {
    let target = args.required_int(0)?;
    if !(1..=1008).contains(&target) {
        return Err(RpcError::new(
            RPC_INVALID_PARAMETER,
            "Invalid conf_target, must be between 1 and 1008",
        ));
    }
    if let Some(mode) = args.get(1) {
        let mode = mode.as_str().ok_or_else(|| type_error(mode, "string"))?;
        if !["unset", "economical", "conservative"].contains(&mode.to_ascii_lowercase().as_str()) {
            return Err(RpcError::new(
                RPC_INVALID_PARAMETER,
                "Invalid estimate_mode parameter, must be one of: \"unset\", \"economical\", \"conservative\"",
            ));
        }
    }
    let rate_kvb = shared.read(|s| s.fee_rate.to_sat_per_kwu().saturating_mul(4));
    if rate_kvb == 0 {
        // What a bitcoind without enough blocks and mempool history says.
        return Ok(json!({
            "errors": ["Insufficient data or no feerate found"],
            "blocks": 0,
        }));
    }
    Ok(json!({
        "feerate": json::btc_per_kvb(rate_kvb.max(MIN_RELAY_SAT_PER_KVB)),
        "blocks": target.max(2),
    }))
}
