//! bitcoind's JSON shapes for headers, blocks, transactions, scripts and mempool entries,
//! shared by the RPC and REST interfaces.

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::hex::DisplayHex;
use bitcoin::script::Instruction;
use bitcoin::{Address, Amount, CompactTarget, Network, Script, Transaction};
use serde_json::{json, Map, Value};

use super::chain::{BlockEntry, Chain};
use super::mempool::{Mempool, MempoolEntry, MIN_RELAY_SAT_PER_KVB};
use super::state::State;

/// An amount as bitcoind prints it: a number of BTC.
pub(crate) fn btc(amount: Amount) -> Value {
    json!(amount.to_btc())
}

/// A sat/kvB feerate as a number of BTC/kvB.
pub(crate) fn btc_per_kvb(sat_per_kvb: u64) -> Value {
    json!(sat_per_kvb as f64 / 100_000_000.0)
}

/// bitcoind's `GetDifficulty`.
pub(crate) fn difficulty(bits: CompactTarget) -> f64 {
    let bits = bits.to_consensus();
    let mut shift = (bits >> 24) & 0xff;
    let mantissa = f64::from(bits & 0x00ff_ffff);
    if mantissa == 0.0 {
        return 0.0;
    }
    let mut diff = f64::from(0x0000_ffffu32) / mantissa;
    while shift < 29 {
        diff *= 256.0;
        shift += 1;
    }
    while shift > 29 {
        diff /= 256.0;
        shift -= 1;
    }
    diff
}

/// A script number as Bitcoin Core's `CScriptNum` reads it (non-minimal allowed).
fn script_num(bytes: &[u8]) -> i64 {
    let mut value: i64 = 0;
    for (i, byte) in bytes.iter().enumerate() {
        value |= i64::from(*byte) << (8 * i);
    }
    match bytes.last() {
        Some(last) if last & 0x80 != 0 => {
            let mask = !(0x80i64 << (8 * (bytes.len() - 1)));
            -(value & mask)
        }
        _ => value,
    }
}

/// A script's `asm` as Bitcoin Core prints it (`0 <hex>`, `OP_DUP`, ...).
pub(crate) fn asm(script: &Script) -> String {
    let mut parts = Vec::new();
    for instruction in script.instructions() {
        match instruction {
            Ok(Instruction::PushBytes(bytes)) => {
                let bytes = bytes.as_bytes();
                if bytes.len() <= 4 {
                    parts.push(script_num(bytes).to_string());
                } else {
                    parts.push(bytes.to_lower_hex_string());
                }
            }
            Ok(Instruction::Op(op)) => {
                let code = op.to_u8();
                parts.push(match code {
                    0x4f => "-1".to_string(),
                    0x51..=0x60 => (code - 0x50).to_string(),
                    0xb1 => "OP_CHECKLOCKTIMEVERIFY".to_string(),
                    0xb2 => "OP_CHECKSEQUENCEVERIFY".to_string(),
                    0xbb..=0xfe => "OP_UNKNOWN".to_string(),
                    _ => op.to_string(),
                });
            }
            Err(_) => {
                parts.push("[error]".to_string());
                break;
            }
        }
    }
    parts.join(" ")
}

/// bitcoind's name for a script's type.
pub(crate) fn script_type(script: &Script) -> &'static str {
    let bytes = script.as_bytes();
    if script.is_p2pkh() {
        "pubkeyhash"
    } else if script.is_p2sh() {
        "scripthash"
    } else if script.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if script.is_p2wsh() {
        "witness_v0_scripthash"
    } else if script.is_p2tr() {
        "witness_v1_taproot"
    } else if bytes == [0x51, 0x02, 0x4e, 0x73] {
        "anchor"
    } else if script.is_witness_program() {
        "witness_unknown"
    } else if script.is_p2pk() {
        "pubkey"
    } else if script.is_multisig() {
        "multisig"
    } else if script.is_op_return() && Script::from_bytes(&bytes[1..]).is_push_only() {
        "nulldata"
    } else {
        "nonstandard"
    }
}

/// A `scriptPubKey` object: asm, hex, address (when there is one) and type.
pub(crate) fn script_pubkey(script: &Script) -> Value {
    let mut obj = Map::new();
    obj.insert("asm".into(), json!(asm(script)));
    obj.insert("hex".into(), json!(script.to_hex_string()));
    if let Ok(address) = Address::from_script(script, Network::Regtest) {
        if !script.is_p2pk() {
            obj.insert("address".into(), json!(address.to_string()));
        }
    }
    obj.insert("type".into(), json!(script_type(script)));
    Value::Object(obj)
}

/// bitcoind's `TxToUniv`: the decoded transaction, with `hex` when asked, and `fee` when known.
pub(crate) fn transaction(
    tx: &Transaction,
    include_hex: bool,
    fee: Option<Amount>,
) -> Map<String, Value> {
    let mut obj = Map::new();
    obj.insert("txid".into(), json!(tx.compute_txid().to_string()));
    obj.insert("hash".into(), json!(tx.compute_wtxid().to_string()));
    obj.insert("version".into(), json!(tx.version.0));
    obj.insert("size".into(), json!(tx.total_size()));
    obj.insert("vsize".into(), json!(tx.vsize()));
    obj.insert("weight".into(), json!(tx.weight().to_wu()));
    obj.insert("locktime".into(), json!(tx.lock_time.to_consensus_u32()));
    let coinbase = tx.is_coinbase();
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|input| {
            let mut i = Map::new();
            if coinbase {
                i.insert("coinbase".into(), json!(input.script_sig.to_hex_string()));
            } else {
                i.insert("txid".into(), json!(input.previous_output.txid.to_string()));
                i.insert("vout".into(), json!(input.previous_output.vout));
                i.insert(
                    "scriptSig".into(),
                    json!({
                        "asm": asm(&input.script_sig),
                        "hex": input.script_sig.to_hex_string(),
                    }),
                );
            }
            if !input.witness.is_empty() {
                let items: Vec<String> = input
                    .witness
                    .iter()
                    .map(|item| item.to_lower_hex_string())
                    .collect();
                i.insert("txinwitness".into(), json!(items));
            }
            i.insert("sequence".into(), json!(input.sequence.0));
            Value::Object(i)
        })
        .collect();
    obj.insert("vin".into(), Value::Array(vin));
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, output)| {
            json!({
                "value": btc(output.value),
                "n": n,
                "scriptPubKey": script_pubkey(&output.script_pubkey),
            })
        })
        .collect();
    obj.insert("vout".into(), Value::Array(vout));
    if let Some(fee) = fee {
        obj.insert("fee".into(), btc(fee));
    }
    if include_hex {
        obj.insert("hex".into(), json!(serialize_hex(tx)));
    }
    obj
}

/// bitcoind's `blockheaderToJSON`.
pub(crate) fn header(chain: &Chain, entry: &BlockEntry) -> Map<String, Value> {
    let h = &entry.block.header;
    let mut obj = Map::new();
    obj.insert("hash".into(), json!(entry.hash.to_string()));
    obj.insert(
        "confirmations".into(),
        json!(chain.confirmations(&entry.hash)),
    );
    obj.insert("height".into(), json!(entry.height));
    obj.insert("version".into(), json!(h.version.to_consensus()));
    obj.insert(
        "versionHex".into(),
        json!(format!("{:08x}", h.version.to_consensus())),
    );
    obj.insert("merkleroot".into(), json!(h.merkle_root.to_string()));
    obj.insert("time".into(), json!(h.time));
    obj.insert("mediantime".into(), json!(entry.mtp));
    obj.insert("nonce".into(), json!(h.nonce));
    obj.insert(
        "bits".into(),
        json!(format!("{:08x}", h.bits.to_consensus())),
    );
    obj.insert("difficulty".into(), json!(difficulty(h.bits)));
    obj.insert(
        "chainwork".into(),
        json!(entry.chainwork.to_be_bytes().to_lower_hex_string()),
    );
    obj.insert("nTx".into(), json!(entry.block.txdata.len()));
    if entry.height > 0 {
        obj.insert(
            "previousblockhash".into(),
            json!(h.prev_blockhash.to_string()),
        );
    }
    if let Some(next) = chain.next_active(&entry.hash) {
        obj.insert("nextblockhash".into(), json!(next.to_string()));
    }
    obj
}

/// bitcoind's `blockToJSON` for verbosity 1 (txids) or 2 (decoded transactions).
pub(crate) fn block(chain: &Chain, entry: &BlockEntry, verbosity: u8) -> Value {
    let mut obj = header(chain, entry);
    let block = &entry.block;
    obj.insert(
        "strippedsize".into(),
        json!((block.weight().to_wu() as usize - block.total_size()) / 3),
    );
    obj.insert("size".into(), json!(block.total_size()));
    obj.insert("weight".into(), json!(block.weight().to_wu()));
    let txs: Vec<Value> = block
        .txdata
        .iter()
        .map(|tx| {
            if verbosity >= 2 {
                let fee = chain.tx_location(&tx.compute_txid()).and_then(|l| l.fee);
                Value::Object(transaction(tx, true, fee))
            } else {
                json!(tx.compute_txid().to_string())
            }
        })
        .collect();
    obj.insert("tx".into(), Value::Array(txs));
    Value::Object(obj)
}

/// `getblockchaininfo` / `/rest/chaininfo.json`.
pub(crate) fn blockchain_info(chain: &Chain) -> Value {
    let tip = chain.tip();
    json!({
        "chain": "regtest",
        "blocks": tip.height,
        "headers": tip.height,
        "bestblockhash": tip.hash.to_string(),
        "difficulty": difficulty(tip.block.header.bits),
        "time": tip.block.header.time,
        "mediantime": tip.mtp,
        "verificationprogress": 1,
        "initialblockdownload": false,
        "chainwork": tip.chainwork.to_be_bytes().to_lower_hex_string(),
        "size_on_disk": 0,
        "pruned": false,
        "warnings": "",
    })
}

/// bitcoind's mempool `entryToJSON`.
pub(crate) fn mempool_entry(mempool: &Mempool, entry: &MempoolEntry) -> Value {
    let ancestors = mempool.ancestors(&entry.txid);
    let descendants = mempool.with_descendants([entry.txid]);
    let sum = |set: &std::collections::HashSet<bitcoin::Txid>| {
        set.iter()
            .filter_map(|t| mempool.get(t))
            .fold((0u64, Amount::ZERO), |(size, fee), e| {
                (size + e.vsize, fee + e.fee)
            })
    };
    let (ancestor_size, ancestor_fees) = sum(&ancestors);
    let (descendant_size, descendant_fees) = sum(&descendants);
    let signals = |tx: &Transaction| tx.input.iter().any(|i| i.sequence.0 < 0xffff_fffe);
    let replaceable = signals(&entry.tx)
        || ancestors
            .iter()
            .filter_map(|t| mempool.get(t))
            .any(|e| signals(&e.tx));
    let depends: Vec<String> = mempool
        .parents(&entry.txid)
        .iter()
        .map(|t| t.to_string())
        .collect();
    let spent_by: Vec<String> = mempool
        .children(&entry.txid)
        .iter()
        .map(|t| t.to_string())
        .collect();
    json!({
        "vsize": entry.vsize,
        "weight": entry.weight.to_wu(),
        "time": entry.time,
        "height": entry.height,
        "descendantcount": descendants.len(),
        "descendantsize": descendant_size,
        "ancestorcount": ancestors.len() + 1,
        "ancestorsize": ancestor_size + entry.vsize,
        "wtxid": entry.wtxid.to_string(),
        "fees": {
            "base": btc(entry.fee),
            "modified": btc(entry.fee),
            "ancestor": btc(ancestor_fees + entry.fee),
            "descendant": btc(descendant_fees),
        },
        "depends": depends,
        "spentby": spent_by,
        "bip125-replaceable": replaceable,
        "unbroadcast": false,
    })
}

/// `getmempoolinfo`.
pub(crate) fn mempool_info(state: &State) -> Value {
    let entries = state.mempool.entries();
    let bytes: u64 = entries.iter().map(|e| e.vsize).sum();
    let fees = entries.iter().fold(Amount::ZERO, |sum, e| sum + e.fee);
    json!({
        "loaded": true,
        "size": entries.len(),
        "bytes": bytes,
        "usage": bytes * 4,
        "total_fee": btc(fees),
        "maxmempool": 300_000_000,
        "mempoolminfee": btc_per_kvb(MIN_RELAY_SAT_PER_KVB),
        "minrelaytxfee": btc_per_kvb(MIN_RELAY_SAT_PER_KVB),
        "incrementalrelayfee": btc_per_kvb(MIN_RELAY_SAT_PER_KVB),
        "unbroadcastcount": 0,
        "fullrbf": true,
    })
}

/// What `getrawmempool` and REST `mempool/contents` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MempoolListing {
    /// Every entry in full, keyed by txid.
    Verbose,
    /// The txids, oldest first.
    Txids,
    /// The txids and the mempool sequence.
    TxidsWithSequence,
}

impl MempoolListing {
    /// The listing bitcoind's `verbose` and `mempool_sequence` flags ask for; `None` when both
    /// are set, which bitcoind refuses.
    pub fn from_flags(verbose: bool, with_sequence: bool) -> Option<Self> {
        match (verbose, with_sequence) {
            (true, true) => None,
            (true, false) => Some(MempoolListing::Verbose),
            (false, false) => Some(MempoolListing::Txids),
            (false, true) => Some(MempoolListing::TxidsWithSequence),
        }
    }
}

/// `getrawmempool` (and REST `mempool/contents`) in the shape `listing` asks for.
pub(crate) fn raw_mempool(mempool: &Mempool, listing: MempoolListing) -> Value {
    let entries = mempool.entries();
    let txids = || {
        let txids = entries.iter().map(|e| json!(e.txid.to_string()));
        Value::Array(txids.collect())
    };
    match listing {
        MempoolListing::Verbose => Value::Object(
            entries
                .iter()
                .map(|e| (e.txid.to_string(), mempool_entry(mempool, e)))
                .collect(),
        ),
        MempoolListing::Txids => txids(),
        MempoolListing::TxidsWithSequence => json!({
            "txids": txids(),
            "mempool_sequence": mempool.mempool_sequence(),
        }),
    }
}
