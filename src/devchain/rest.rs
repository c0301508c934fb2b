//! bitcoind's REST interface (`-rest`): chain info, headers, blocks, block hashes by height,
//! transactions, UTXO queries and the mempool.

use axum::http::StatusCode;
use bitcoin::consensus::encode::{serialize, Encodable, VarInt};
use bitcoin::hex::DisplayHex;
use bitcoin::{BlockHash, OutPoint, Txid};
use serde_json::{json, Value};
use std::str::FromStr;

use super::json::{self, MempoolListing};
use super::Shared;

/// Most headers one request may ask for.
const MAX_HEADERS: u64 = 2000;
/// Most outpoints one `getutxos` request may ask for.
const MAX_GETUTXOS_OUTPOINTS: usize = 15;
/// The height bitcoind reports for mempool outputs in `getutxos`.
const MEMPOOL_HEIGHT: u32 = 0x7FFF_FFFF;

/// A REST reply.
pub(crate) struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    let mut body = message.into().into_bytes();
    body.extend_from_slice(b"\r\n");
    Reply {
        status,
        content_type: "text/plain",
        body,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Bin,
    Hex,
    Json,
}

/// Splits `name.ext` into the name and its output format.
fn split_format(resource: &str) -> Result<(&str, Format), Reply> {
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            "output format not found (available: .bin, .hex, .json)",
        )
    };
    let (name, ext) = resource.rsplit_once('.').ok_or_else(not_found)?;
    let format = match ext {
        "bin" => Format::Bin,
        "hex" => Format::Hex,
        "json" => Format::Json,
        _ => return Err(not_found()),
    };
    Ok((name, format))
}

/// Formats binary data (bin or hex) or a JSON value.
fn reply(format: Format, bin: impl FnOnce() -> Vec<u8>, json: impl FnOnce() -> Value) -> Reply {
    match format {
        Format::Bin => Reply {
            status: StatusCode::OK,
            content_type: "application/octet-stream",
            body: bin(),
        },
        Format::Hex => {
            let mut body = bin().to_lower_hex_string().into_bytes();
            body.push(b'\n');
            Reply {
                status: StatusCode::OK,
                content_type: "text/plain",
                body,
            }
        }
        Format::Json => {
            let mut body = json().to_string().into_bytes();
            body.push(b'\n');
            Reply {
                status: StatusCode::OK,
                content_type: "application/json",
                body,
            }
        }
    }
}

fn parse_hash<T: FromStr>(s: &str) -> Result<T, Reply> {
    if s.len() != 64 {
        return Err(error(StatusCode::BAD_REQUEST, format!("Invalid hash: {s}")));
    }
    T::from_str(s).map_err(|_| error(StatusCode::BAD_REQUEST, format!("Invalid hash: {s}")))
}

/// Answers `GET /rest/<path>?<query>`.
pub(crate) fn handle(shared: &Shared, path: &str, query: Option<&str>) -> Reply {
    let result = if let Some(rest) = path.strip_prefix("headers/") {
        headers(shared, rest, query)
    } else if let Some(rest) = path.strip_prefix("block/notxdetails/") {
        block(shared, rest, false)
    } else if let Some(rest) = path.strip_prefix("block/") {
        block(shared, rest, true)
    } else if let Some(rest) = path.strip_prefix("blockhashbyheight/") {
        block_hash_by_height(shared, rest)
    } else if let Some(rest) = path.strip_prefix("tx/") {
        transaction(shared, rest)
    } else if let Some(rest) = path.strip_prefix("getutxos") {
        get_utxos(shared, rest)
    } else if let Some(rest) = path.strip_prefix("chaininfo") {
        simple_json(rest, || shared.read(|s| json::blockchain_info(&s.chain)))
    } else if let Some(rest) = path.strip_prefix("mempool/info") {
        simple_json(rest, || shared.read(json::mempool_info))
    } else if let Some(rest) = path.strip_prefix("mempool/contents") {
        mempool_contents(shared, rest, query)
    } else {
        Err(error(StatusCode::NOT_FOUND, "not found"))
    };
    result.unwrap_or_else(|reply| reply)
}

/// Checks that `rest` is just `.json`, the only format of the JSON-only resources.
fn json_only(rest: &str) -> Result<(), Reply> {
    let ("", format) = split_format(rest)? else {
        return Err(error(StatusCode::NOT_FOUND, "not found"));
    };
    if format != Format::Json {
        return Err(error(
            StatusCode::NOT_FOUND,
            "output format not found (available: json)",
        ));
    }
    Ok(())
}

fn simple_json(rest: &str, value: impl FnOnce() -> Value) -> Result<Reply, Reply> {
    json_only(rest)?;
    Ok(reply(Format::Json, Vec::new, value))
}

/// The value of query parameter `name` (its first occurrence, as bitcoind reads it); a
/// parameter given without `=` has the empty value.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// A `true`/`false` query parameter, `default` when absent; bitcoind refuses anything else.
fn bool_param(query: Option<&str>, name: &str, default: bool) -> Result<bool, Reply> {
    match query_param(query, name) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("The \"{name}\" query parameter must be either \"true\" or \"false\"."),
        )),
    }
}

/// `mempool/contents.json?verbose=<bool>&mempool_sequence=<bool>`: the verbose entries by
/// default, the txids with `verbose=false`, and the txids with the mempool sequence when that
/// is asked for too, as bitcoind 25 and later answer.
fn mempool_contents(shared: &Shared, rest: &str, query: Option<&str>) -> Result<Reply, Reply> {
    json_only(rest)?;
    let verbose = bool_param(query, "verbose", true)?;
    let with_sequence = bool_param(query, "mempool_sequence", false)?;
    let listing = MempoolListing::from_flags(verbose, with_sequence).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "Verbose results cannot contain mempool sequence values. (hint: set \"verbose=false\")",
        )
    })?;
    Ok(reply(Format::Json, Vec::new, || {
        shared.read(|s| json::raw_mempool(&s.mempool, listing))
    }))
}

fn headers(shared: &Shared, rest: &str, query: Option<&str>) -> Result<Reply, Reply> {
    let (name, format) = split_format(rest)?;
    // Old style `headers/<count>/<hash>`, or new style `headers/<hash>?count=<count>`.
    let (count, hash) = match name.split_once('/') {
        Some((count, hash)) => (count.to_string(), hash),
        None => {
            let count = query_param(query, "count").unwrap_or("5").to_string();
            (count, name)
        }
    };
    let count = count
        .parse::<u64>()
        .ok()
        .filter(|c| (1..=MAX_HEADERS).contains(c))
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                format!(
                    "Header count is invalid or out of acceptable range (1-{MAX_HEADERS}): {count}"
                ),
            )
        })?;
    let hash: BlockHash = parse_hash(hash)?;
    Ok(shared.read(|s| {
        let mut entries = Vec::new();
        let mut next = s.chain.entry(&hash);
        while let Some(entry) = next {
            entries.push(entry);
            if entries.len() as u64 == count {
                break;
            }
            next = s
                .chain
                .next_active(&entry.hash)
                .and_then(|h| s.chain.entry(&h));
        }
        reply(
            format,
            || {
                entries
                    .iter()
                    .flat_map(|e| serialize(&e.block.header))
                    .collect()
            },
            || {
                Value::Array(
                    entries
                        .iter()
                        .map(|e| Value::Object(json::header(&s.chain, e)))
                        .collect(),
                )
            },
        )
    }))
}

fn block(shared: &Shared, rest: &str, tx_details: bool) -> Result<Reply, Reply> {
    let (name, format) = split_format(rest)?;
    let hash: BlockHash = parse_hash(name)?;
    shared.read(|s| {
        let entry = s
            .chain
            .entry(&hash)
            .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("{name} not found")))?;
        Ok(reply(
            format,
            || serialize(&*entry.block),
            || json::block(&s.chain, entry, if tx_details { 2 } else { 1 }),
        ))
    })
}

fn block_hash_by_height(shared: &Shared, rest: &str) -> Result<Reply, Reply> {
    let (name, format) = split_format(rest)?;
    let height = name
        .parse::<u32>()
        .map_err(|_| error(StatusCode::BAD_REQUEST, format!("Invalid height: {name}")))?;
    let hash = shared
        .read(|s| s.chain.hash_at(height))
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "Block height out of range"))?;
    Ok(match format {
        // bitcoind's hex form is the hash as displayed, not its serialization.
        Format::Hex => Reply {
            status: StatusCode::OK,
            content_type: "text/plain",
            body: format!("{hash}\n").into_bytes(),
        },
        _ => reply(
            format,
            || serialize(&hash),
            || json!({ "blockhash": hash.to_string() }),
        ),
    })
}

fn transaction(shared: &Shared, rest: &str) -> Result<Reply, Reply> {
    let (name, format) = split_format(rest)?;
    let txid: Txid = parse_hash(name)?;
    shared.read(|s| {
        let known = s
            .transaction(&txid)
            .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("{name} not found")))?;
        Ok(reply(
            format,
            || serialize(&known.tx),
            || {
                let mut obj = json::transaction(&known.tx, true, None);
                if let Some(hash) = known.block {
                    obj.insert("blockhash".into(), json!(hash.to_string()));
                }
                Value::Object(obj)
            },
        ))
    })
}

fn get_utxos(shared: &Shared, rest: &str) -> Result<Reply, Reply> {
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let (check_mempool, rest) = match rest.strip_prefix("checkmempool") {
        Some(after) => (true, after.strip_prefix('/').unwrap_or(after)),
        None => (false, rest),
    };
    let (list, format) = split_format(rest)?;
    let parse_error = || error(StatusCode::BAD_REQUEST, "Parse error");
    let mut outpoints = Vec::new();
    for item in list.split('/').filter(|s| !s.is_empty()) {
        let (txid, vout) = item.split_once('-').ok_or_else(parse_error)?;
        let txid = Txid::from_str(txid).map_err(|_| parse_error())?;
        let vout = vout.parse::<u32>().map_err(|_| parse_error())?;
        outpoints.push(OutPoint { txid, vout });
    }
    if outpoints.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "Error: empty request"));
    }
    if outpoints.len() > MAX_GETUTXOS_OUTPOINTS {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "Error: max outpoints exceeded (max: {MAX_GETUTXOS_OUTPOINTS}, tried: {})",
                outpoints.len()
            ),
        ));
    }
    Ok(shared.read(|s| {
        let tip = s.chain.tip();
        let mut bitmap = vec![0u8; outpoints.len().div_ceil(8)];
        let mut bits = String::with_capacity(outpoints.len());
        let mut coins = Vec::new();
        for (i, outpoint) in outpoints.iter().enumerate() {
            let found = if check_mempool && s.mempool.spender(outpoint).is_some() {
                None
            } else if let Some(output) = s.mempool.output(outpoint).filter(|_| check_mempool) {
                Some((MEMPOOL_HEIGHT, output.clone()))
            } else {
                s.chain.coin(outpoint).map(|c| (c.height, c.output.clone()))
            };
            bits.push(if found.is_some() { '1' } else { '0' });
            if let Some(coin) = found {
                bitmap[i / 8] |= 1 << (i % 8);
                coins.push(coin);
            }
        }
        reply(
            format,
            || {
                let mut out = Vec::new();
                // Writing to a Vec cannot fail.
                let _ = (tip.height as i32).consensus_encode(&mut out);
                let _ = tip.hash.consensus_encode(&mut out);
                let _ = bitmap.consensus_encode(&mut out);
                let _ = VarInt(coins.len() as u64).consensus_encode(&mut out);
                for (height, output) in &coins {
                    let _ = 0u32.consensus_encode(&mut out);
                    let _ = height.consensus_encode(&mut out);
                    let _ = output.consensus_encode(&mut out);
                }
                out
            },
            || {
                let utxos: Vec<Value> = coins
                    .iter()
                    .map(|(height, output)| {
                        json!({
                            "height": height,
                            "value": json::btc(output.value),
                            "scriptPubKey": json::script_pubkey(&output.script_pubkey),
                        })
                    })
                    .collect();
                json!({
                    "chainHeight": tip.height,
                    "chaintipHash": tip.hash.to_string(),
                    "bitmap": bits,
                    "utxos": utxos,
                })
            },
        )
    }))
}
