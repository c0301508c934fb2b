//! The devchain validates, mines, replaces and reorganises like bitcoind, and serves its RPC
//! with bitcoind's shapes and error codes. Every transaction here is really built and signed.

use base64::Engine;
use bitcoin::hashes::Hash;
use bitcoin::key::{CompressedPublicKey, Keypair, TapTweak};
use bitcoin::secp256k1::{All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::transaction::Version;
use bitcoin::{
    absolute, Address, Amount, Block, BlockHash, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Txid, Witness,
};
use ldk_splice::devchain::{non_loopback_warning, DevChain, DevChainConfig, RejectReason};
use lightning_block_sync::http::HttpClientError;
use lightning_block_sync::rpc::{RpcClient, RpcClientError};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/processes.rs"]
mod processes;

/// A key that can receive and spend p2wpkh and p2tr (key path) outputs.
struct Key {
    secp: Secp256k1<All>,
    secret: SecretKey,
    keypair: Keypair,
    public: CompressedPublicKey,
}

impl Key {
    fn new(byte: u8) -> Key {
        let secp = Secp256k1::new();
        let secret = SecretKey::from_slice(&[byte; 32]).expect("valid key");
        let keypair = Keypair::from_secret_key(&secp, &secret);
        let public = CompressedPublicKey(secret.public_key(&secp));
        Key {
            secp,
            secret,
            keypair,
            public,
        }
    }

    fn p2wpkh(&self) -> Address {
        Address::p2wpkh(&self.public, Network::Regtest)
    }

    fn p2tr(&self) -> Address {
        let (internal, _) = self.keypair.x_only_public_key();
        Address::p2tr(&self.secp, internal, None, Network::Regtest)
    }

    /// Signs every input, committing to `signed_prevouts` (normally the real spent outputs).
    fn sign_with(&self, tx: &mut Transaction, signed_prevouts: &[TxOut]) {
        let unsigned = tx.clone();
        let mut cache = SighashCache::new(&unsigned);
        for (index, prevout) in signed_prevouts.iter().enumerate() {
            let witness = if prevout.script_pubkey.is_p2tr() {
                let sighash = cache
                    .taproot_key_spend_signature_hash(
                        index,
                        &Prevouts::All(signed_prevouts),
                        TapSighashType::Default,
                    )
                    .expect("sighash");
                let tweaked = self.keypair.tap_tweak(&self.secp, None).to_keypair();
                let msg = Message::from_digest(sighash.to_byte_array());
                let signature = self.secp.sign_schnorr_no_aux_rand(&msg, &tweaked);
                Witness::p2tr_key_spend(&bitcoin::taproot::Signature {
                    signature,
                    sighash_type: TapSighashType::Default,
                })
            } else {
                let sighash = cache
                    .p2wpkh_signature_hash(
                        index,
                        &prevout.script_pubkey,
                        prevout.value,
                        EcdsaSighashType::All,
                    )
                    .expect("sighash");
                let msg = Message::from_digest(sighash.to_byte_array());
                let signature = self.secp.sign_ecdsa(&msg, &self.secret);
                Witness::p2wpkh(
                    &bitcoin::ecdsa::Signature {
                        signature,
                        sighash_type: EcdsaSighashType::All,
                    },
                    &self.public.0,
                )
            };
            tx.input[index].witness = witness;
        }
    }

    /// A signed transaction spending `inputs` (all ours) to `outputs`.
    fn spend(&self, inputs: &[(OutPoint, TxOut)], outputs: Vec<TxOut>) -> Transaction {
        self.spend_with(
            inputs,
            outputs,
            absolute::LockTime::ZERO,
            Sequence::ENABLE_RBF_NO_LOCKTIME,
        )
    }

    fn spend_with(
        &self,
        inputs: &[(OutPoint, TxOut)],
        outputs: Vec<TxOut>,
        lock_time: absolute::LockTime,
        sequence: Sequence,
    ) -> Transaction {
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time,
            input: inputs
                .iter()
                .map(|(outpoint, _)| TxIn {
                    previous_output: *outpoint,
                    script_sig: ScriptBuf::new(),
                    sequence,
                    witness: Witness::new(),
                })
                .collect(),
            output: outputs,
        };
        let prevouts: Vec<TxOut> = inputs.iter().map(|(_, out)| out.clone()).collect();
        self.sign_with(&mut tx, &prevouts);
        tx
    }
}

fn out(address: &Address, sat: u64) -> TxOut {
    TxOut {
        value: Amount::from_sat(sat),
        script_pubkey: address.script_pubkey(),
    }
}

/// Output `vout` of `tx`, as an input.
fn coin(tx: &Transaction, vout: u32) -> (OutPoint, TxOut) {
    (
        OutPoint {
            txid: tx.compute_txid(),
            vout,
        },
        tx.output[vout as usize].clone(),
    )
}

/// The coinbase output of the active block at `height`.
fn coinbase(chain: &DevChain, height: u32) -> (OutPoint, TxOut) {
    let hash = chain.block_hash(height).expect("height exists");
    let block = chain.block(&hash).expect("block exists");
    coin(&block.txdata[0], 0)
}

const COINBASE_SAT: u64 = 50 * 100_000_000;

/// A chain with 101 blocks: the coinbase at height 1 pays `key`'s p2tr address, the others its
/// p2wpkh address, so the coinbases at heights 1 (p2tr) and 2 (p2wpkh) are spendable.
async fn setup(key: &Key) -> DevChain {
    let chain = DevChain::start(DevChainConfig::default())
        .await
        .expect("devchain starts");
    chain.mine_blocks(1, &key.p2tr());
    chain.mine_blocks(100, &key.p2wpkh());
    assert_eq!(chain.tip().0, 101);
    chain
}

fn rpc(chain: &DevChain) -> RpcClient {
    RpcClient::new(&chain.rpc_credentials_base64(), chain.rpc_url())
}

async fn call(chain: &DevChain, method: &str, params: &[Value]) -> Result<Value, RpcClientError> {
    rpc(chain).call_method::<Value>(method, params).await
}

/// The RPC error code and message of a call that must fail.
async fn rpc_error(chain: &DevChain, method: &str, params: &[Value]) -> (i64, String) {
    match call(chain, method, params).await {
        Err(RpcClientError::Rpc(e)) => (e.code, e.message),
        other => panic!("{method}: expected an RPC error, got {other:?}"),
    }
}

fn expect_reject(
    result: Result<Txid, RejectReason>,
    code: i32,
    reason_prefix: &str,
) -> RejectReason {
    let reason = result.expect_err("transaction must be rejected");
    assert_eq!(reason.code, code, "{reason}");
    assert!(reason.reason.starts_with(reason_prefix), "{reason}");
    reason
}

/// A raw HTTP/1.1 exchange: returns the status code and body.
async fn http(chain: &DevChain, request_line: &str, auth: bool, body: &str) -> (u16, Vec<u8>) {
    let credentials = auth.then(|| chain.rpc_credentials());
    http_as(chain, request_line, credentials.as_deref(), body).await
}

/// A raw HTTP/1.1 exchange with basic auth as `credentials` (`user:password`), if any.
async fn http_as(
    chain: &DevChain,
    request_line: &str,
    credentials: Option<&str>,
    body: &str,
) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(chain.rpc_addr())
        .await
        .expect("connect");
    let mut request = format!(
        "{request_line} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(credentials) = credentials {
        request.push_str(&format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, response[split + 4..].to_vec())
}

#[tokio::test]
async fn p2wpkh_and_p2tr_spends_are_accepted_and_mined() {
    let key = Key::new(1);
    let chain = setup(&key).await;
    let other = Key::new(2);

    // p2wpkh coinbase (height 2) -> p2tr, and p2tr coinbase (height 1) -> p2wpkh.
    let from_wpkh = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&other.p2tr(), COINBASE_SAT - 10_000)],
    );
    let from_tr = key.spend(
        &[coinbase(&chain, 1)],
        vec![out(&other.p2wpkh(), COINBASE_SAT - 20_000)],
    );
    // A child spending the unconfirmed p2tr output, from `other`'s key.
    let child = other.spend(
        &[coin(&from_wpkh, 0)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 30_000)],
    );

    chain
        .test_mempool_accept(&from_wpkh)
        .expect("p2wpkh spend is valid");
    assert_eq!(
        chain.send_raw_transaction(&from_wpkh),
        Ok(from_wpkh.compute_txid())
    );
    assert_eq!(
        chain.send_raw_transaction(&from_tr),
        Ok(from_tr.compute_txid())
    );
    assert_eq!(chain.send_raw_transaction(&child), Ok(child.compute_txid()));
    // Sending it again is fine, as with bitcoind.
    assert_eq!(chain.send_raw_transaction(&child), Ok(child.compute_txid()));
    assert_eq!(chain.mempool_txids().len(), 3);
    assert_eq!(chain.confirmations(&child.compute_txid()), Some(0));
    assert_eq!(
        chain.transaction_fee(&child.compute_txid()),
        Some(Amount::from_sat(20_000))
    );

    let hashes = chain.mine_blocks_to_burn(1);
    assert_eq!(hashes.len(), 1);
    assert!(chain.mempool_txids().is_empty());
    let block = chain.block(&hashes[0]).expect("mined block");
    let txids: Vec<Txid> = block.txdata.iter().map(|tx| tx.compute_txid()).collect();
    assert_eq!(txids.len(), 4);
    let parent_pos = txids
        .iter()
        .position(|t| *t == from_wpkh.compute_txid())
        .expect("parent");
    let child_pos = txids
        .iter()
        .position(|t| *t == child.compute_txid())
        .expect("child");
    assert!(parent_pos < child_pos, "parents come before children");
    assert!(txids.contains(&from_tr.compute_txid()));
    // The coinbase collects subsidy plus the 10 000 + 20 000 + 20 000 sat of fees.
    assert_eq!(
        block.txdata[0].output[0].value,
        Amount::from_sat(COINBASE_SAT + 50_000)
    );
    assert!(block.check_merkle_root() && block.check_witness_commitment());

    for tx in [&from_wpkh, &from_tr, &child] {
        assert_eq!(chain.confirmations(&tx.compute_txid()), Some(1));
        assert_eq!(chain.transaction(&tx.compute_txid()).as_ref(), Some(tx));
    }
    assert_eq!(chain.utxo(&coinbase(&chain, 1).0), None, "spent");
    assert_eq!(
        chain.utxo(&coin(&from_wpkh, 0).0),
        None,
        "spent by the child"
    );
    assert_eq!(
        chain.utxo(&coin(&child, 0).0),
        Some(child.output[0].clone())
    );
    assert_eq!(
        chain.utxo(&coin(&from_tr, 0).0),
        Some(from_tr.output[0].clone())
    );

    // gettxout agrees.
    let txout = call(
        &chain,
        "gettxout",
        &[json!(child.compute_txid().to_string()), json!(0)],
    )
    .await
    .expect("gettxout");
    assert_eq!(txout["confirmations"], json!(1));
    assert_eq!(
        txout["value"].as_f64(),
        Some(Amount::from_sat(COINBASE_SAT - 30_000).to_btc())
    );
    assert_eq!(txout["scriptPubKey"]["type"], json!("witness_v0_keyhash"));
    assert_eq!(
        txout["scriptPubKey"]["address"],
        json!(key.p2wpkh().to_string())
    );
    assert_eq!(txout["coinbase"], json!(false));
    let spent = call(
        &chain,
        "gettxout",
        &[json!(from_wpkh.compute_txid().to_string()), json!(0)],
    )
    .await
    .expect("gettxout");
    assert!(spent.is_null());
}

#[tokio::test]
async fn bad_signatures_are_rejected_for_p2wpkh_and_taproot() {
    let key = Key::new(3);
    let chain = setup(&key).await;
    let wrong = Key::new(4);

    // p2wpkh signed by the wrong key: the pubkey hash does not match.
    let wpkh_coin = coinbase(&chain, 2);
    let mut bad_wpkh = key.spend(
        std::slice::from_ref(&wpkh_coin),
        vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)],
    );
    let mut forged = bad_wpkh.clone();
    wrong.sign_with(&mut forged, std::slice::from_ref(&wpkh_coin.1));
    // Keep our pubkey but put the wrong key's signature: the signature check itself fails.
    let mut witness: Vec<Vec<u8>> = bad_wpkh.input[0]
        .witness
        .iter()
        .map(|w| w.to_vec())
        .collect();
    witness[0] = forged.input[0].witness.iter().next().expect("sig").to_vec();
    bad_wpkh.input[0].witness = Witness::from_slice(&witness);
    let reason = expect_reject(
        chain.send_raw_transaction(&bad_wpkh),
        -26,
        "mandatory-script-verify-flag-failed",
    );
    assert!(reason
        .message()
        .starts_with("mandatory-script-verify-flag-failed ("));

    // Taproot signed over a wrong spent amount: only a verifier given every spent output sees it.
    let tr_coin = coinbase(&chain, 1);
    let mut bad_tr = key.spend(
        std::slice::from_ref(&tr_coin),
        vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)],
    );
    let mut lied = tr_coin.1.clone();
    lied.value += Amount::from_sat(1);
    key.sign_with(&mut bad_tr, &[lied]);
    expect_reject(
        chain.send_raw_transaction(&bad_tr),
        -26,
        "mandatory-script-verify-flag-failed",
    );
    // ... and the same over the RPC, as an RPC error (not a transport error).
    let (code, message) = rpc_error(
        &chain,
        "sendrawtransaction",
        &[json!(bitcoin::consensus::encode::serialize_hex(&bad_tr))],
    )
    .await;
    assert_eq!(code, -26);
    assert!(
        message.starts_with("mandatory-script-verify-flag-failed"),
        "{message}"
    );

    // Taproot signed by the wrong key.
    let mut wrong_key_tr = bad_tr.clone();
    wrong.sign_with(&mut wrong_key_tr, std::slice::from_ref(&tr_coin.1));
    expect_reject(
        chain.send_raw_transaction(&wrong_key_tr),
        -26,
        "mandatory-script-verify-flag-failed",
    );

    // The honest versions pass, and nothing bad reached the mempool.
    assert!(chain.mempool_txids().is_empty());
    let good_tr = key.spend(&[tr_coin], vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)]);
    chain
        .send_raw_transaction(&good_tr)
        .expect("valid taproot spend");
    let good_wpkh = key.spend(
        &[wpkh_coin],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)],
    );
    chain
        .send_raw_transaction(&good_wpkh)
        .expect("valid p2wpkh spend");
}

#[tokio::test]
async fn double_spends_immature_coinbases_and_value_creation_are_rejected() {
    let key = Key::new(5);
    let chain = setup(&key).await;

    let spend = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)],
    );
    chain.send_raw_transaction(&spend).expect("accepted");
    chain.mine_blocks_to_burn(1);

    // Spending the now-spent coinbase again.
    let double = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2tr(), COINBASE_SAT - 20_000)],
    );
    let reason = expect_reject(
        chain.send_raw_transaction(&double),
        -25,
        "bad-txns-inputs-missingorspent",
    );
    assert!(reason.is_missing_inputs());
    let (code, message) = rpc_error(
        &chain,
        "sendrawtransaction",
        &[json!(bitcoin::consensus::encode::serialize_hex(&double))],
    )
    .await;
    assert_eq!(
        (code, message.as_str()),
        (-25, "bad-txns-inputs-missingorspent")
    );
    // Re-sending the confirmed transaction.
    expect_reject(
        chain.send_raw_transaction(&spend),
        -27,
        "Transaction outputs already in utxo set",
    );

    // Tip is 102: the coinbase at height 4 is 99 deep for the next block, one short.
    let immature_coin = coinbase(&chain, 4);
    let immature = key.spend(
        std::slice::from_ref(&immature_coin),
        vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)],
    );
    let reason = expect_reject(
        chain.send_raw_transaction(&immature),
        -26,
        "bad-txns-premature-spend-of-coinbase",
    );
    assert_eq!(
        reason.message(),
        "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth 99"
    );
    chain.mine_blocks_to_burn(1);
    chain.send_raw_transaction(&immature).expect("mature now");

    // Paying out more than comes in.
    let inflating = key.spend(
        &[coinbase(&chain, 3)],
        vec![out(&key.p2wpkh(), COINBASE_SAT + 1)],
    );
    let reason = expect_reject(
        chain.send_raw_transaction(&inflating),
        -26,
        "bad-txns-in-belowout",
    );
    assert_eq!(
        reason.message(),
        "bad-txns-in-belowout, value in (50.00) < value out (50.00000001)"
    );
    assert_eq!(chain.mempool_txids(), vec![immature.compute_txid()]);
}

#[tokio::test]
async fn fee_floor_and_lock_times_are_enforced() {
    let key = Key::new(6);
    let chain = setup(&key).await;

    // 50 sat for ~110 vB is under 1 sat/vB.
    let cheap = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 50)],
    );
    let reason = expect_reject(
        chain.send_raw_transaction(&cheap),
        -26,
        "min relay fee not met",
    );
    assert_eq!(
        reason.message(),
        format!("min relay fee not met, 50 < {}", cheap.vsize())
    );

    // nLockTime 102 is not final in block 102, final in block 103.
    let locked = key.spend_with(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)],
        absolute::LockTime::from_height(102).expect("height"),
        Sequence::ENABLE_LOCKTIME_NO_RBF,
    );
    expect_reject(chain.send_raw_transaction(&locked), -26, "non-final");
    chain.mine_blocks_to_burn(1);
    chain.send_raw_transaction(&locked).expect("final now");
    chain.mine_blocks_to_burn(1);
    assert_eq!(chain.confirmations(&locked.compute_txid()), Some(1));

    // BIP68: spending an output confirmed at 103 with a relative lock of 3 blocks is possible
    // from block 106 on.
    let relative = key.spend_with(
        &[coin(&locked, 0)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 20_000)],
        absolute::LockTime::ZERO,
        Sequence::from_height(3),
    );
    expect_reject(
        chain.send_raw_transaction(&relative),
        -26,
        "non-BIP68-final",
    );
    chain.mine_blocks_to_burn(1);
    expect_reject(
        chain.send_raw_transaction(&relative),
        -26,
        "non-BIP68-final",
    );
    chain.mine_blocks_to_burn(1);
    chain
        .send_raw_transaction(&relative)
        .expect("relative lock satisfied");
}

/// A parent spending the height-2 coinbase with `fee`, and a child of it paying 1000 sat.
fn parent_and_child(key: &Key, chain: &DevChain, fee: u64) -> (Transaction, Transaction) {
    let parent = key.spend(
        &[coinbase(chain, 2)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - fee)],
    );
    let child = key.spend(
        &[coin(&parent, 0)],
        vec![out(&key.p2tr(), COINBASE_SAT - fee - 1_000)],
    );
    chain.send_raw_transaction(&parent).expect("parent");
    chain.send_raw_transaction(&child).expect("child");
    (parent, child)
}

#[tokio::test]
async fn replacement_paying_enough_evicts_the_original_and_its_child() {
    let key = Key::new(7);
    let chain = setup(&key).await;
    let (parent, child) = parent_and_child(&key, &chain, 1_000);

    // Must beat 2000 sat replaced plus 1 sat/vB of its own size, at a higher feerate.
    let replacement = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2tr(), COINBASE_SAT - 2_000 - 200)],
    );
    assert!(replacement.vsize() < 200);
    assert_eq!(
        chain.send_raw_transaction(&replacement),
        Ok(replacement.compute_txid())
    );
    assert_eq!(chain.mempool_txids(), vec![replacement.compute_txid()]);
    assert_eq!(chain.confirmations(&parent.compute_txid()), None);
    assert_eq!(chain.confirmations(&child.compute_txid()), None);

    let mempool = call(&chain, "getrawmempool", &[])
        .await
        .expect("getrawmempool");
    assert_eq!(mempool, json!([replacement.compute_txid().to_string()]));
    let entry = call(
        &chain,
        "getmempoolentry",
        &[json!(replacement.compute_txid().to_string())],
    )
    .await
    .expect("getmempoolentry");
    assert_eq!(entry["vsize"], json!(replacement.vsize()));
    assert_eq!(
        entry["fees"]["base"].as_f64(),
        Some(Amount::from_sat(2_200).to_btc())
    );
    assert_eq!(entry["bip125-replaceable"], json!(true));

    chain.mine_blocks_to_burn(1);
    assert_eq!(chain.confirmations(&replacement.compute_txid()), Some(1));
}

#[tokio::test]
async fn replacement_paying_too_little_is_rejected() {
    let key = Key::new(8);
    let chain = setup(&key).await;
    let (parent, child) = parent_and_child(&key, &chain, 1_000);

    // Same feerate as the original.
    let same_rate = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2tr(), COINBASE_SAT - 1_000)],
    );
    let reason = expect_reject(
        chain.send_raw_transaction(&same_rate),
        -26,
        "insufficient fee",
    );
    assert!(
        reason.message().starts_with(&format!(
            "insufficient fee, rejecting replacement {}; new feerate",
            same_rate.compute_txid()
        )),
        "{reason}"
    );

    // Higher feerate, but less than the original and its child together.
    let less = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2tr(), COINBASE_SAT - 1_500)],
    );
    let reason = expect_reject(chain.send_raw_transaction(&less), -26, "insufficient fee");
    assert!(
        reason.message().contains("less fees than conflicting txs"),
        "{reason}"
    );

    // Enough to cover them, not the relay of itself.
    let no_relay = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2tr(), COINBASE_SAT - 2_010)],
    );
    let reason = expect_reject(
        chain.send_raw_transaction(&no_relay),
        -26,
        "insufficient fee",
    );
    assert!(
        reason
            .message()
            .contains("not enough additional fees to relay"),
        "{reason}"
    );

    // Through the RPC the error carries the same code and text.
    let (code, message) = rpc_error(
        &chain,
        "sendrawtransaction",
        &[json!(bitcoin::consensus::encode::serialize_hex(&less))],
    )
    .await;
    assert_eq!(code, -26);
    assert!(
        message.starts_with("insufficient fee, rejecting replacement"),
        "{message}"
    );

    let mut mempool = chain.mempool_txids();
    mempool.sort();
    let mut expected = vec![parent.compute_txid(), child.compute_txid()];
    expected.sort();
    assert_eq!(mempool, expected, "the originals stay");
}

#[tokio::test]
async fn reorg_returns_transactions_to_the_mempool_and_a_longer_branch_wins() {
    let key = Key::new(9);
    let chain = setup(&key).await;
    let tx = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)],
    );
    chain.send_raw_transaction(&tx).expect("accepted");
    let old = chain.mine_blocks_to_burn(2);
    assert_eq!(chain.confirmations(&tx.compute_txid()), Some(2));

    let returned = chain.invalidate_tip(2);
    assert_eq!(returned, vec![tx.compute_txid()]);
    assert_eq!(chain.tip().0, 101);
    assert_eq!(chain.mempool_txids(), vec![tx.compute_txid()]);
    assert_eq!(chain.confirmations(&tx.compute_txid()), Some(0));

    let new = chain.mine_blocks(3, &key.p2tr());
    assert_eq!(chain.tip(), (104, new[2]));
    assert_ne!(new[0], old[0]);
    assert_eq!(chain.block_hash(102), Some(new[0]));
    assert_eq!(chain.confirmations(&tx.compute_txid()), Some(3));
    assert!(chain
        .block(&new[0])
        .expect("new block")
        .txdata
        .contains(&tx));

    // The stale block is still known, off the active chain.
    let header = call(&chain, "getblockheader", &[json!(old[0].to_string())])
        .await
        .expect("header");
    assert_eq!(header["confirmations"], json!(-1));
    assert_eq!(header["height"], json!(102));
    assert!(header.get("nextblockhash").is_none());

    // invalidateblock over RPC disconnects that block and everything above it.
    let result = call(&chain, "invalidateblock", &[json!(new[1].to_string())])
        .await
        .expect("ok");
    assert!(result.is_null());
    assert_eq!(chain.tip(), (102, new[0]));
    assert_eq!(chain.confirmations(&tx.compute_txid()), Some(1));
    let (code, message) = rpc_error(
        &chain,
        "invalidateblock",
        &[json!(BlockHash::all_zeros().to_string())],
    )
    .await;
    assert_eq!((code, message.as_str()), (-5, "Block not found"));
}

#[tokio::test]
async fn getblock_over_rpc_deserialises_and_validates() {
    let key = Key::new(10);
    let chain = setup(&key).await;
    let tx = key.spend(
        &[coinbase(&chain, 1)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)],
    );
    chain.send_raw_transaction(&tx).expect("accepted");
    let hash = chain.mine_blocks(1, &key.p2wpkh())[0];

    let client = rpc(&chain);
    let block: Block = client
        .call_method("getblock", &[json!(hash.to_string()), json!(0)])
        .await
        .expect("getblock verbosity 0");
    assert_eq!(block.block_hash(), hash);
    assert_eq!(Some(&block), chain.block(&hash).as_ref());
    assert!(block.check_merkle_root());
    assert!(block.check_witness_commitment());
    assert_eq!(
        block
            .header
            .validate_pow(block.header.target())
            .expect("valid pow"),
        hash
    );
    assert_eq!(block.bip34_block_height().ok(), Some(102));
    assert_eq!(block.txdata[1], tx);

    let verbose = call(&chain, "getblock", &[json!(hash.to_string())])
        .await
        .expect("getblock");
    assert_eq!(verbose["height"], json!(102));
    assert_eq!(verbose["nTx"], json!(2));
    assert_eq!(verbose["tx"][1], json!(tx.compute_txid().to_string()));
    assert_eq!(verbose["bits"], json!("207fffff"));
    assert_eq!(verbose["confirmations"], json!(1));
    let info = call(&chain, "getblockchaininfo", &[]).await.expect("info");
    assert_eq!(info["chain"], json!("regtest"));
    assert_eq!(info["blocks"], json!(102));
    assert_eq!(info["bestblockhash"], json!(hash.to_string()));
    // Every regtest block adds 2 to the chain work, the genesis block included.
    assert_eq!(info["chainwork"], json!(format!("{:064x}", 2 * 103)));

    let raw = call(
        &chain,
        "getrawtransaction",
        &[json!(tx.compute_txid().to_string()), json!(true)],
    )
    .await
    .expect("getrawtransaction");
    assert_eq!(raw["blockhash"], json!(hash.to_string()));
    assert_eq!(raw["confirmations"], json!(1));
    assert_eq!(raw["vsize"], json!(tx.vsize()));
    assert_eq!(
        raw["hex"],
        json!(bitcoin::consensus::encode::serialize_hex(&tx))
    );
    let fetched: Transaction = client
        .call_method("getrawtransaction", &[json!(tx.compute_txid().to_string())])
        .await
        .expect("getrawtransaction hex");
    assert_eq!(fetched, tx);
}

#[tokio::test]
async fn rpc_errors_have_bitcoind_codes_over_http() {
    let key = Key::new(11);
    let chain = DevChain::start(DevChainConfig::default())
        .await
        .expect("starts");
    chain.mine_blocks(1, &key.p2wpkh());

    // Wrong credentials: HTTP 401, not an RPC error.
    let bad = RpcClient::new("d3Jvbmc6d3Jvbmc=", chain.rpc_url());
    match bad.call_method::<Value>("getblockcount", &[]).await {
        Err(RpcClientError::Http(HttpClientError::Http(e))) => assert_eq!(e.status_code, 401),
        other => panic!("expected 401, got {other:?}"),
    }

    assert_eq!(
        rpc_error(&chain, "getfrobnicated", &[]).await,
        (-32601, "Method not found".into())
    );
    let (code, message) = rpc_error(&chain, "sendrawtransaction", &[json!("00zz")]).await;
    assert_eq!(code, -22);
    assert!(message.starts_with("TX decode failed"), "{message}");
    assert_eq!(rpc_error(&chain, "getblockhash", &[json!(5)]).await.0, -8);
    assert_eq!(
        rpc_error(
            &chain,
            "getblock",
            &[json!(BlockHash::all_zeros().to_string())]
        )
        .await,
        (-5, "Block not found".into())
    );
    assert_eq!(
        rpc_error(
            &chain,
            "getrawtransaction",
            &[json!(Txid::all_zeros().to_string())]
        )
        .await
        .0,
        -5
    );
    let mainnet = Address::p2wpkh(&key.public, Network::Bitcoin);
    assert_eq!(
        rpc_error(
            &chain,
            "generatetoaddress",
            &[json!(1), json!(mainnet.to_string())]
        )
        .await,
        (-5, "Error: Invalid address".into())
    );
    assert_eq!(
        rpc_error(&chain, "getblockhash", &[json!("one")]).await.0,
        -3
    );

    // Raw HTTP: JSON-RPC 1.0 error statuses, 2.0 and batches, and named parameters.
    let (status, _) = http(&chain, "POST /", false, r#"{"method":"getblockcount"}"#).await;
    assert_eq!(status, 401);
    let (status, body) = http(&chain, "POST /", true, r#"{"method":"nope","id":1}"#).await;
    assert_eq!(status, 404);
    let reply: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(reply["error"]["code"], json!(-32601));
    let (status, body) = http(
        &chain,
        "POST /",
        true,
        r#"{"method":"getblockhash","params":[9],"id":1}"#,
    )
    .await;
    assert_eq!(status, 500);
    let reply: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        reply["error"],
        json!({"code": -8, "message": "Block height out of range"})
    );
    let (status, body) = http(
        &chain,
        "POST /",
        true,
        r#"{"jsonrpc":"2.0","method":"getblockhash","params":{"height":9},"id":"x"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(reply["jsonrpc"], json!("2.0"));
    assert_eq!(reply["id"], json!("x"));
    assert_eq!(reply["error"]["code"], json!(-8));
    assert!(reply.get("result").is_none());
    let batch = r#"[{"method":"getblockcount","id":1},{"method":"getblockhash","params":{"height":0},"id":2},{"method":"nope","id":3}]"#;
    let (status, body) = http(&chain, "POST /", true, batch).await;
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(reply[0]["result"], json!(1));
    assert_eq!(
        reply[1]["result"],
        json!(chain.block_hash(0).expect("genesis").to_string())
    );
    assert_eq!(reply[2]["error"]["code"], json!(-32601));
    let (status, body) = http(&chain, "POST /", true, "{not json").await;
    assert_eq!(status, 500);
    let reply: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(reply["error"]["code"], json!(-32700));
}

#[tokio::test]
async fn fee_estimate_mempool_accept_and_mining_over_rpc() {
    let key = Key::new(12);
    let chain = setup(&key).await;

    let estimate = call(&chain, "estimatesmartfee", &[json!(6)])
        .await
        .expect("estimate");
    assert_eq!(estimate, json!({"feerate": 0.00002, "blocks": 6}));
    call(&chain, "setfeerate", &[json!(25)])
        .await
        .expect("setfeerate");
    let estimate = call(&chain, "estimatesmartfee", &[json!(1), json!("economical")])
        .await
        .expect("estimate");
    assert_eq!(estimate, json!({"feerate": 0.00025, "blocks": 2}));
    chain.set_fee_rate(bitcoin::FeeRate::from_sat_per_vb_u32(3));
    let estimate = call(&chain, "estimatesmartfee", &[json!(3)])
        .await
        .expect("estimate");
    assert_eq!(estimate["feerate"], json!(0.00003));
    chain.set_fee_rate(bitcoin::FeeRate::ZERO);
    let estimate = call(&chain, "estimatesmartfee", &[json!(3)])
        .await
        .expect("estimate");
    assert_eq!(
        estimate,
        json!({"errors": ["Insufficient data or no feerate found"], "blocks": 0}),
        "no estimate, as bitcoind answers without history"
    );
    chain.set_fee_rate(bitcoin::FeeRate::from_sat_per_vb_u32(3));
    assert_eq!(
        rpc_error(&chain, "estimatesmartfee", &[json!(0)]).await.0,
        -8
    );

    let good = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)],
    );
    let bad = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2wpkh(), COINBASE_SAT + 1)],
    );
    let hex = |tx: &Transaction| json!(bitcoin::consensus::encode::serialize_hex(tx));
    let results = call(&chain, "testmempoolaccept", &[json!([hex(&good)])])
        .await
        .expect("test");
    assert_eq!(results[0]["allowed"], json!(true));
    assert_eq!(results[0]["txid"], json!(good.compute_txid().to_string()));
    assert_eq!(results[0]["vsize"], json!(good.vsize()));
    assert_eq!(results[0]["fees"]["base"].as_f64(), Some(0.0001));
    let results = call(&chain, "testmempoolaccept", &[json!([hex(&bad)])])
        .await
        .expect("test");
    assert_eq!(results[0]["allowed"], json!(false));
    assert_eq!(results[0]["reject-reason"], json!("bad-txns-in-belowout"));
    assert!(
        chain.mempool_txids().is_empty(),
        "testmempoolaccept changes nothing"
    );

    let txid = call(&chain, "sendrawtransaction", &[hex(&good)])
        .await
        .expect("send");
    assert_eq!(txid, json!(good.compute_txid().to_string()));
    let hashes = call(
        &chain,
        "generatetoaddress",
        &[json!(2), json!(key.p2tr().to_string())],
    )
    .await
    .expect("generate");
    assert_eq!(hashes.as_array().map(Vec::len), Some(2));
    assert_eq!(chain.tip().1.to_string(), hashes[1].as_str().expect("hash"));
    assert_eq!(chain.confirmations(&good.compute_txid()), Some(2));
    let count = call(&chain, "getblockcount", &[]).await.expect("count");
    assert_eq!(count, json!(103));
    let best = call(&chain, "getbestblockhash", &[]).await.expect("best");
    assert_eq!(
        BlockHash::from_str(best.as_str().expect("str")).ok(),
        Some(chain.tip().1)
    );
}

#[tokio::test]
async fn waiting_for_the_mempool_and_shutting_down() {
    let key = Key::new(13);
    let chain = setup(&key).await;
    let tx = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)],
    );
    let hex = bitcoin::consensus::encode::serialize_hex(&tx);
    let sender = chain.clone();
    let send =
        tokio::spawn(async move { call(&sender, "sendrawtransaction", &[json!(hex)]).await });
    let txid = tx.compute_txid();
    assert!(
        chain
            .wait_until(Duration::from_secs(10), |c| c.confirmations(&txid)
                == Some(0))
            .await
    );
    send.await.expect("task").expect("sent");
    assert!(
        !chain
            .wait_until(Duration::from_millis(1), |c| c.tip().0 == 500)
            .await
    );

    chain.shutdown();
    chain.stopped().await;
    assert!(
        call(&chain, "getblockcount", &[]).await.is_err(),
        "server is down"
    );
    // In-process calls still work.
    assert_eq!(chain.mine_blocks_to_burn(1).len(), 1);
}

#[tokio::test]
async fn packages_let_a_child_pay_for_its_parent() {
    let key = Key::new(14);
    let chain = setup(&key).await;
    let hex = |tx: &Transaction| json!(bitcoin::consensus::encode::serialize_hex(tx));

    // A zero-fee parent cannot enter alone.
    let parent = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2wpkh(), COINBASE_SAT)],
    );
    expect_reject(
        chain.send_raw_transaction(&parent),
        -26,
        "min relay fee not met",
    );

    // A child paying too little for both: nothing enters.
    let stingy = key.spend(
        &[coin(&parent, 0)],
        vec![out(&key.p2tr(), COINBASE_SAT - 150)],
    );
    let reason = chain
        .submit_package(&[parent.clone(), stingy.clone()])
        .expect_err("too cheap");
    assert_eq!(reason.reason, "min relay fee not met");
    assert!(chain.mempool_txids().is_empty());

    // Parents must come first, as bitcoind requires.
    let child = key.spend(
        &[coin(&parent, 0)],
        vec![out(&key.p2tr(), COINBASE_SAT - 1_000)],
    );
    let (code, message) = rpc_error(
        &chain,
        "submitpackage",
        &[json!([hex(&child), hex(&parent)])],
    )
    .await;
    assert_eq!(code, -25);
    assert!(
        message.starts_with("package topology disallowed"),
        "{message}"
    );

    // The child pays for both.
    let result = call(
        &chain,
        "submitpackage",
        &[json!([hex(&parent), hex(&child)])],
    )
    .await
    .expect("submitpackage");
    assert_eq!(result["package_msg"], json!("success"));
    let parent_result = &result["tx-results"][parent.compute_wtxid().to_string()];
    assert_eq!(
        parent_result["txid"],
        json!(parent.compute_txid().to_string())
    );
    assert_eq!(parent_result["fees"]["base"].as_f64(), Some(0.0));
    assert_eq!(
        parent_result["fees"]["effective-includes"],
        json!([
            parent.compute_wtxid().to_string(),
            child.compute_wtxid().to_string()
        ])
    );
    let child_result = &result["tx-results"][child.compute_wtxid().to_string()];
    assert_eq!(child_result["vsize"], json!(child.vsize()));
    let mut mempool = chain.mempool_txids();
    mempool.sort();
    let mut expected = vec![parent.compute_txid(), child.compute_txid()];
    expected.sort();
    assert_eq!(mempool, expected);

    let block = chain
        .block(&chain.mine_blocks_to_burn(1)[0])
        .expect("block");
    assert_eq!(block.txdata[1..], [parent, child]);
}

#[tokio::test]
async fn rest_interface_serves_bitcoind_formats() {
    let key = Key::new(15);
    let chain = setup(&key).await;
    let tx = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 10_000)],
    );
    chain.send_raw_transaction(&tx).expect("accepted");
    let get = |path: String| {
        let chain = chain.clone();
        async move { http(&chain, &format!("GET /rest/{path}"), false, "").await }
    };
    let json_of = |body: Vec<u8>| -> Value { serde_json::from_slice(&body).expect("json") };

    // The mempool view of getutxos: the coinbase is spent there, the new output exists.
    let spent = coinbase(&chain, 2).0;
    let created = OutPoint {
        txid: tx.compute_txid(),
        vout: 0,
    };
    let (status, body) = get(format!(
        "getutxos/checkmempool/{}-{}/{}-{}.json",
        spent.txid, spent.vout, created.txid, created.vout
    ))
    .await;
    assert_eq!(status, 200);
    let utxos = json_of(body);
    assert_eq!(utxos["bitmap"], json!("01"));
    assert_eq!(utxos["chainHeight"], json!(101));
    assert_eq!(utxos["utxos"][0]["height"], json!(0x7fff_ffff));
    let (_, body) = get(format!(
        "getutxos/{}-{}/{}-{}.json",
        spent.txid, spent.vout, created.txid, created.vout
    ))
    .await;
    assert_eq!(json_of(body)["bitmap"], json!("10"));
    let (_, body) = get(format!("getutxos/{}-{}.bin", spent.txid, spent.vout)).await;
    assert_eq!(&body[..4], &101i32.to_le_bytes());
    assert_eq!(&body[36..38], &[1, 1], "bitmap of one byte, first bit set");

    let hash = chain.mine_blocks_to_burn(1)[0];
    let block = chain.block(&hash).expect("block");
    let (status, body) = get(format!("block/{hash}.bin")).await;
    assert_eq!(status, 200);
    assert_eq!(
        bitcoin::consensus::deserialize::<Block>(&body)
            .ok()
            .as_ref(),
        Some(&block)
    );
    let (_, body) = get(format!("block/{hash}.hex")).await;
    assert_eq!(
        String::from_utf8(body).expect("utf8").trim(),
        bitcoin::consensus::encode::serialize_hex(&block)
    );
    let (_, body) = get(format!("block/{hash}.json")).await;
    assert_eq!(
        json_of(body)["tx"][1]["txid"],
        json!(tx.compute_txid().to_string())
    );
    let (_, body) = get(format!("block/notxdetails/{hash}.json")).await;
    assert_eq!(json_of(body)["tx"][1], json!(tx.compute_txid().to_string()));

    let genesis = chain.block_hash(0).expect("genesis");
    let (_, body) = get(format!("headers/{genesis}.json?count=3")).await;
    let headers = json_of(body);
    assert_eq!(headers.as_array().map(Vec::len), Some(3));
    assert_eq!(headers[2]["height"], json!(2));
    let (_, body) = get(format!("headers/4/{genesis}.bin")).await;
    assert_eq!(body.len(), 4 * 80);
    let (_, body) = get(format!("headers/{hash}.hex?count=10")).await;
    assert_eq!(
        String::from_utf8(body).expect("utf8").trim(),
        bitcoin::consensus::encode::serialize_hex(&block.header)
    );

    let (_, body) = get("blockhashbyheight/102.hex".to_string()).await;
    assert_eq!(
        String::from_utf8(body).expect("utf8").trim(),
        hash.to_string()
    );
    let (_, body) = get("blockhashbyheight/102.json".to_string()).await;
    assert_eq!(json_of(body), json!({ "blockhash": hash.to_string() }));
    let (_, body) = get(format!("tx/{}.bin", tx.compute_txid())).await;
    assert_eq!(
        bitcoin::consensus::deserialize::<Transaction>(&body).ok(),
        Some(tx.clone())
    );
    let (_, body) = get(format!("tx/{}.json", tx.compute_txid())).await;
    assert_eq!(json_of(body)["blockhash"], json!(hash.to_string()));
    let (_, body) = get("chaininfo.json".to_string()).await;
    assert_eq!(json_of(body)["blocks"], json!(102));

    assert_eq!(get("blockhashbyheight/103.bin".to_string()).await.0, 404);
    assert_eq!(
        get(format!("block/{}.bin", BlockHash::all_zeros())).await.0,
        404
    );
    assert_eq!(get("block/nothex.bin".to_string()).await.0, 400);
    assert_eq!(get(format!("block/{hash}.xml")).await.0, 404);
    assert_eq!(get(format!("headers/0/{hash}.json")).await.0, 400);
}

#[tokio::test]
async fn no_rpc_input_crashes_the_server() {
    let key = Key::new(16);
    let chain = DevChain::start(DevChainConfig::default())
        .await
        .expect("starts");
    chain.mine_blocks(2, &key.p2wpkh());
    let hash = json!(chain.tip().1.to_string());
    let methods = [
        "getblockchaininfo",
        "getnetworkinfo",
        "getbestblockhash",
        "getblockcount",
        "getblockhash",
        "getblockheader",
        "getblock",
        "gettxout",
        "getrawtransaction",
        "getrawmempool",
        "getmempoolentry",
        "getmempoolinfo",
        "sendrawtransaction",
        "testmempoolaccept",
        "submitpackage",
        "estimatesmartfee",
        "generatetoaddress",
        "invalidateblock",
        "getmininginfo",
        "uptime",
        "ping",
        "help",
        "setfeerate",
    ];
    let odd_params: Vec<Vec<Value>> = vec![
        vec![],
        vec![Value::Null],
        vec![json!("x")],
        vec![json!(-1)],
        vec![json!(u64::MAX)],
        vec![json!(1e300)],
        vec![json!({})],
        vec![json!([])],
        vec![json!(["00", "zz"])],
        vec![json!("0100000000"), json!(-5)],
        vec![hash.clone(), json!(99), json!("yes")],
        vec![hash.clone(), json!(-3)],
        vec![
            json!(0),
            json!("bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq"),
        ],
        vec![json!(1), json!(2), json!(3), json!(4), json!(5)],
    ];
    for method in methods {
        for params in &odd_params {
            match call(&chain, method, params).await {
                Ok(_) => {}
                Err(RpcClientError::Rpc(e)) => {
                    assert_ne!(e.message, "internal error", "{method} {params:?} crashed")
                }
                Err(e) => panic!("{method} {params:?}: {e:?}"),
            }
        }
    }
    // Still alive, and the chain is intact (no block was invalidated below genesis).
    let count = call(&chain, "getblockcount", &[]).await.expect("alive");
    assert!(count.as_u64().is_some());
}

/// The mempool's txids as bitcoind lists them: strings, oldest first.
fn txid_strings(txids: &[Txid]) -> Value {
    json!(txids.iter().map(Txid::to_string).collect::<Vec<_>>())
}

/// `GET /rest/mempool/contents.json` with `query` (after the `?`, or empty).
async fn rest_mempool(chain: &DevChain, query: &str) -> (u16, Vec<u8>) {
    let path = if query.is_empty() {
        "GET /rest/mempool/contents.json".to_string()
    } else {
        format!("GET /rest/mempool/contents.json?{query}")
    };
    http(chain, &path, false, "").await
}

/// The mempool sequence, read over REST and over RPC, which must agree with each other and
/// list exactly the mempool's txids.
async fn mempool_sequence(chain: &DevChain) -> u64 {
    let (status, body) = rest_mempool(chain, "verbose=false&mempool_sequence=true").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let rest: Value = serde_json::from_slice(&body).expect("json");
    let rpc = call(chain, "getrawmempool", &[json!(false), json!(true)])
        .await
        .expect("getrawmempool");
    assert_eq!(rest, rpc, "REST and RPC agree");
    assert_eq!(rest["txids"], txid_strings(&chain.mempool_txids()));
    assert_eq!(rest.as_object().map(|o| o.len()), Some(2), "{rest}");
    rest["mempool_sequence"].as_u64().expect("a number")
}

#[tokio::test]
async fn rest_mempool_contents_takes_verbose_and_mempool_sequence_like_bitcoind() {
    let key = Key::new(17);
    let chain = setup(&key).await;
    let (parent, child) = parent_and_child(&key, &chain, 1_000);
    let txids = vec![parent.compute_txid(), child.compute_txid()];
    assert_eq!(chain.mempool_txids(), txids);
    let json_of = |body: Vec<u8>| -> Value { serde_json::from_slice(&body).expect("json") };

    // verbose=false: the txids, oldest first.
    let (status, body) = rest_mempool(&chain, "verbose=false").await;
    assert_eq!(status, 200);
    assert_eq!(json_of(body), txid_strings(&txids));
    let (status, body) = rest_mempool(&chain, "mempool_sequence=false&verbose=false").await;
    assert_eq!(status, 200);
    assert_eq!(json_of(body), txid_strings(&txids));

    // With the sequence: an object with both, as getrawmempool false true answers.
    let (status, body) = rest_mempool(&chain, "verbose=false&mempool_sequence=true").await;
    assert_eq!(status, 200);
    let listed = json_of(body);
    assert_eq!(listed["txids"], txid_strings(&txids));
    assert_eq!(listed.as_object().map(|o| o.len()), Some(2), "{listed}");
    let rpc = call(&chain, "getrawmempool", &[json!(false), json!(true)])
        .await
        .expect("getrawmempool");
    assert_eq!(listed, rpc);

    // Verbose (the default, or said): one entry per txid, the same as getrawmempool true.
    let (status, body) = rest_mempool(&chain, "").await;
    assert_eq!(status, 200);
    let verbose = json_of(body);
    let keys: Vec<&String> = verbose.as_object().expect("object").keys().collect();
    let mut expected: Vec<String> = txids.iter().map(Txid::to_string).collect();
    expected.sort();
    assert_eq!(keys, expected.iter().collect::<Vec<_>>());
    assert_eq!(
        verbose[child.compute_txid().to_string()]["depends"],
        txid_strings(&[parent.compute_txid()])
    );
    let (status, body) = rest_mempool(&chain, "verbose=true").await;
    assert_eq!((status, json_of(body)), (200, verbose.clone()));
    let rpc = call(&chain, "getrawmempool", &[json!(true)])
        .await
        .expect("getrawmempool verbose");
    assert_eq!(rpc, verbose);

    // Verbose with the sequence is refused, with bitcoind's message.
    let refused =
        "Verbose results cannot contain mempool sequence values. (hint: set \"verbose=false\")\r\n";
    for query in [
        "mempool_sequence=true",
        "verbose=true&mempool_sequence=true",
    ] {
        let (status, body) = rest_mempool(&chain, query).await;
        assert_eq!(
            (status, String::from_utf8_lossy(&body).as_ref()),
            (400, refused),
            "{query}"
        );
    }
    assert_eq!(
        rpc_error(&chain, "getrawmempool", &[json!(true), json!(true)]).await,
        (
            -8,
            "Verbose results cannot contain mempool sequence values.".into()
        )
    );

    // Values other than "true" and "false" are refused, as bitcoind does.
    let bad_verbose = "The \"verbose\" query parameter must be either \"true\" or \"false\".\r\n";
    for query in [
        "verbose=yes",
        "verbose=TRUE",
        "verbose=1",
        "verbose=",
        "verbose",
    ] {
        let (status, body) = rest_mempool(&chain, query).await;
        assert_eq!(
            (status, String::from_utf8_lossy(&body).as_ref()),
            (400, bad_verbose),
            "{query}"
        );
    }
    let bad_sequence =
        "The \"mempool_sequence\" query parameter must be either \"true\" or \"false\".\r\n";
    for query in [
        "verbose=false&mempool_sequence=1",
        "verbose=false&mempool_sequence=no",
    ] {
        let (status, body) = rest_mempool(&chain, query).await;
        assert_eq!(
            (status, String::from_utf8_lossy(&body).as_ref()),
            (400, bad_sequence),
            "{query}"
        );
    }
    // Only JSON, as before.
    let (status, _) = http(
        &chain,
        "GET /rest/mempool/contents.bin?verbose=false",
        false,
        "",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn mempool_sequence_counts_every_transaction_added_or_removed() {
    let key = Key::new(18);
    let chain = setup(&key).await;
    // bitcoind starts at 1; mining empty blocks changes nothing.
    let start = mempool_sequence(&chain).await;
    assert_eq!(start, 1);

    // A broadcast parent and child: two additions.
    let (parent, child) = parent_and_child(&key, &chain, 1_000);
    assert_eq!(mempool_sequence(&chain).await, start + 2);

    // Sending one again, a rejection and a test acceptance change nothing.
    chain.send_raw_transaction(&parent).expect("already in");
    let too_much = key.spend(
        &[coinbase(&chain, 1)],
        vec![out(&key.p2wpkh(), COINBASE_SAT + 1)],
    );
    assert!(chain.send_raw_transaction(&too_much).is_err());
    let fine = key.spend(
        &[coinbase(&chain, 1)],
        vec![out(&key.p2wpkh(), COINBASE_SAT - 1_000)],
    );
    chain.test_mempool_accept(&fine).expect("would be accepted");
    assert_eq!(mempool_sequence(&chain).await, start + 2);

    // A replacement evicting both: one addition, two removals.
    let replacement = key.spend(
        &[coinbase(&chain, 2)],
        vec![out(&key.p2tr(), COINBASE_SAT - 2_000 - 200)],
    );
    chain.send_raw_transaction(&replacement).expect("replaces");
    assert_eq!(chain.mempool_txids(), vec![replacement.compute_txid()]);
    assert_eq!(mempool_sequence(&chain).await, start + 5);

    // Mined: one removal.
    chain.mine_blocks_to_burn(1);
    assert!(chain.mempool_txids().is_empty());
    assert_eq!(mempool_sequence(&chain).await, start + 6);

    // Disconnected: it comes back, one addition.
    assert_eq!(chain.invalidate_tip(1), vec![replacement.compute_txid()]);
    assert_eq!(mempool_sequence(&chain).await, start + 7);

    // A block confirming the original parent evicts the replacement: one removal.
    chain
        .mine_block_with(std::slice::from_ref(&parent))
        .expect("mined");
    assert!(chain.mempool_txids().is_empty());
    assert_eq!(mempool_sequence(&chain).await, start + 8);

    // The child can now enter (one addition), and a reorg that returns the parent under it
    // counts the parent alone (the child stays): one more addition.
    chain.send_raw_transaction(&child).expect("child");
    assert_eq!(mempool_sequence(&chain).await, start + 9);
    assert_eq!(chain.invalidate_tip(1), vec![parent.compute_txid()]);
    assert_eq!(
        chain.mempool_txids(),
        vec![parent.compute_txid(), child.compute_txid()]
    );
    assert_eq!(mempool_sequence(&chain).await, start + 10);

    // A package: nothing when the child pays too little, two additions when it pays enough.
    let free_parent = key.spend(
        &[coinbase(&chain, 1)],
        vec![out(&key.p2wpkh(), COINBASE_SAT)],
    );
    let stingy = key.spend(
        &[coin(&free_parent, 0)],
        vec![out(&key.p2tr(), COINBASE_SAT - 150)],
    );
    assert!(chain
        .submit_package(&[free_parent.clone(), stingy])
        .is_err());
    assert_eq!(mempool_sequence(&chain).await, start + 10);
    let paying = key.spend(
        &[coin(&free_parent, 0)],
        vec![out(&key.p2tr(), COINBASE_SAT - 1_000)],
    );
    chain
        .submit_package(&[free_parent, paying])
        .expect("package");
    assert_eq!(chain.mempool_txids().len(), 4);
    assert_eq!(mempool_sequence(&chain).await, start + 12);
}
#[tokio::test]
async fn rpc_refuses_credentials_that_differ_anywhere() {
    let chain = DevChain::start(DevChainConfig {
        rpc_user: "alice".to_string(),
        rpc_password: "correct-horse".to_string(),
        ..DevChainConfig::default()
    })
    .await
    .expect("starts");
    let body = r#"{"method":"getblockcount","id":1}"#;
    let (status, reply) = http_as(&chain, "POST /", Some("alice:correct-horse"), body).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&reply).expect("json")["result"],
        json!(0)
    );

    for wrong in [
        "alice:correct-horsf",  // same length, only the last byte differs
        "carol:correct-horse",  // another user, the right password
        "alice:correct-hors",   // a prefix
        "alice:correct-horsee", // longer
        "alice:",
        "alice",
        ":correct-horse",
        "",
    ] {
        let (status, _) = http_as(&chain, "POST /", Some(wrong), body).await;
        assert_eq!(status, 401, "{wrong:?} must be refused");
    }
    let (status, _) = http_as(&chain, "POST /", None, body).await;
    assert_eq!(status, 401);
}

#[test]
fn only_loopback_addresses_go_without_a_warning() {
    for loopback in [
        "127.0.0.1:0",
        "127.8.9.10:18443",
        "[::1]:0",
        "[::ffff:127.0.0.1]:0",
    ] {
        let addr: SocketAddr = loopback.parse().expect("address");
        assert_eq!(non_loopback_warning(addr), None, "{loopback}");
    }
    for exposed in [
        "0.0.0.0:0",
        "[::]:18443",
        "192.168.1.20:18443",
        "10.0.0.1:0",
        "[2001:db8::1]:0",
        "[::ffff:10.0.0.1]:0",
    ] {
        let addr: SocketAddr = exposed.parse().expect("address");
        let warning = non_loopback_warning(addr).unwrap_or_else(|| panic!("{exposed}"));
        assert!(
            warning.contains(&addr.to_string()) && warning.contains("not a loopback address"),
            "{warning}"
        );
    }
}

/// Every warning logged in this test binary (other tests' too), for the one test that looks.
struct Warnings(std::sync::Mutex<Vec<String>>);

impl log::Log for Warnings {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let mut warnings = self.0.lock().unwrap_or_else(|e| e.into_inner());
            warnings.push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

static WARNINGS: Warnings = Warnings(std::sync::Mutex::new(Vec::new()));

/// A password nobody can guess, for the chains these tests bind beyond loopback for an instant.
fn throwaway_password() -> String {
    let mut bytes = [0u8; 16];
    bitcoin::secp256k1::rand::RngCore::fill_bytes(
        &mut bitcoin::secp256k1::rand::thread_rng(),
        &mut bytes,
    );
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The warnings logged so far that mention `addr`.
fn warnings_about(addr: SocketAddr) -> Vec<String> {
    let warnings = WARNINGS.0.lock().unwrap_or_else(|e| e.into_inner());
    let addr = addr.to_string();
    warnings
        .iter()
        .filter(|w| w.contains(&addr))
        .cloned()
        .collect()
}

#[tokio::test]
async fn starting_on_a_non_loopback_address_logs_a_warning() {
    log::set_logger(&WARNINGS).expect("no other logger in this test binary");
    log::set_max_level(log::LevelFilter::Warn);

    let exposed = DevChain::start(DevChainConfig {
        bind: SocketAddr::from(([0, 0, 0, 0], 0)),
        rpc_password: throwaway_password(),
        ..DevChainConfig::default()
    })
    .await
    .expect("starts");
    exposed.shutdown();
    let addr = exposed.rpc_addr();
    let expected = non_loopback_warning(addr).expect("0.0.0.0 is not loopback");
    assert_eq!(warnings_about(addr), vec![format!("devchain: {expected}")]);

    let local = DevChain::start(DevChainConfig::default())
        .await
        .expect("starts");
    local.shutdown();
    assert_eq!(warnings_about(local.rpc_addr()), Vec::<String>::new());
    exposed.stopped().await;
    local.stopped().await;
}

/// Runs the `devchain` example bound to `bind` with logging off until it says it listens;
/// returns the address it printed and everything it wrote on stderr by then.
fn example_stderr(bind: &str) -> (SocketAddr, String) {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let mut child = Command::new(processes::example_binary("devchain"))
        .args(["--rpc-bind", bind, "--rpc-auth"])
        .arg(format!("example:{}", throwaway_password()))
        .args(["--log-level", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let stdout = child.stdout.take().expect("piped");
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = line_tx.send(line);
    });
    let line = line_rx.recv_timeout(Duration::from_secs(60));
    // The warning comes before the line on stdout; nothing more is needed from it.
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("the example said it listens in time");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("stderr read");
    let addr = line
        .trim()
        .strip_prefix("devchain listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (addr, stderr)
}

#[test]
fn the_example_warns_on_stderr_when_not_on_loopback() {
    let (addr, stderr) = example_stderr("0.0.0.0:0");
    let warning = non_loopback_warning(addr).expect("0.0.0.0 is not loopback");
    assert_eq!(stderr, format!("WARNING: {warning}\n"));

    let (addr, stderr) = example_stderr("127.0.0.1:0");
    assert!(addr.ip().is_loopback());
    assert_eq!(stderr, "", "no warning on loopback");
}
