//! lightning-block-sync's own RPC and REST clients read the devchain as they read bitcoind, and
//! its chain poller follows new blocks and reorganisations.

use bitcoin::hashes::Hash;
use bitcoin::key::CompressedPublicKey;
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::transaction::Version;
use bitcoin::{
    absolute, Address, Amount, Block, BlockHash, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Witness,
};
use ldk_splice::devchain::{DevChain, DevChainConfig};
use lightning::chain::transaction::TransactionData;
use lightning::chain::{BlockLocator, Listen};
use lightning_block_sync::gossip::UtxoSource;
use lightning_block_sync::init::{synchronize_listeners, validate_best_block_header};
use lightning_block_sync::poll::{ChainPoller, ChainTip, Validate};
use lightning_block_sync::rest::RestClient;
use lightning_block_sync::rpc::RpcClient;
use lightning_block_sync::{BlockData, BlockSource, HeaderCache, SpvClient};
use std::sync::Mutex;

/// A chain of 101 blocks to a p2wpkh key, plus one block spending the height-1 coinbase.
/// Returns the chain and the spending transaction.
async fn chain_with_a_spend() -> (DevChain, Transaction) {
    let secp = Secp256k1::new();
    let secret = SecretKey::from_slice(&[42; 32]).expect("key");
    let public = CompressedPublicKey(secret.public_key(&secp));
    let address = Address::p2wpkh(&public, Network::Regtest);
    let chain = DevChain::start(DevChainConfig::default())
        .await
        .expect("devchain starts");
    chain.mine_blocks(101, &address);

    let coinbase = chain
        .block(&chain.block_hash(1).expect("block 1"))
        .expect("block")
        .txdata[0]
        .clone();
    let prevout = coinbase.output[0].clone();
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint {
                txid: coinbase.compute_txid(),
                vout: 0,
            },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: prevout.value - Amount::from_sat(5_000),
            script_pubkey: address.script_pubkey(),
        }],
    };
    let sighash = SighashCache::new(&tx)
        .p2wpkh_signature_hash(
            0,
            &prevout.script_pubkey,
            prevout.value,
            EcdsaSighashType::All,
        )
        .expect("sighash");
    let signature = secp.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &secret);
    tx.input[0].witness = Witness::p2wpkh(
        &bitcoin::ecdsa::Signature {
            signature,
            sighash_type: EcdsaSighashType::All,
        },
        &public.0,
    );
    chain.send_raw_transaction(&tx).expect("valid spend");
    chain.mine_blocks_to_burn(1);
    assert_eq!(chain.tip().0, 102);
    (chain, tx)
}

fn rpc_client(chain: &DevChain) -> RpcClient {
    RpcClient::new(&chain.rpc_credentials_base64(), chain.rpc_url())
}

fn rest_client(chain: &DevChain) -> RestClient {
    RestClient::new(chain.rest_url())
}

/// Checks one block source against the chain's own view.
async fn check_source<S: BlockSource + UtxoSource>(
    chain: &DevChain,
    source: &S,
    spend: &Transaction,
) {
    let (tip_height, tip_hash) = chain.tip();
    let (best, height) = source.get_best_block().await.expect("best block");
    assert_eq!((best, height), (tip_hash, Some(tip_height)));

    // Headers, validated by block-sync itself, chain up from genesis with heights and work.
    let mut previous = None;
    for h in 0..=tip_height {
        let hash = chain.block_hash(h).expect("active block");
        assert_eq!(
            source
                .get_block_hash_by_height(h)
                .await
                .expect("hash by height"),
            hash
        );
        let header = source
            .get_header(&hash, Some(h))
            .await
            .expect("header")
            .validate(hash)
            .expect("valid header");
        assert_eq!(header.height, h);
        if h == 0 {
            assert_eq!(header.chainwork, header.header.work());
        }
        if let Some(prev) = previous {
            let prev: lightning_block_sync::poll::ValidatedBlockHeader = prev;
            assert_eq!(header.header.prev_blockhash, prev.header.block_hash());
            assert_eq!(header.chainwork, prev.chainwork + header.header.work());
        }
        previous = Some(header);
    }

    // Full blocks deserialise, validate and match.
    for h in [0, 1, 101, 102] {
        let hash = chain.block_hash(h).expect("block");
        let data = source
            .get_block(&hash)
            .await
            .expect("block")
            .validate(hash)
            .expect("valid block");
        let BlockData::FullBlock(block) = &*data else {
            panic!("expected a full block")
        };
        assert_eq!(Some(block), chain.block(&hash).as_ref());
    }
    let top: Block = chain.block(&tip_hash).expect("tip");
    assert_eq!(top.txdata[1], *spend);

    // UTXO queries: the spend's output is unspent, the coinbase it spent is not, nor is
    // something that never existed.
    let spent = spend.input[0].previous_output;
    let unspent = OutPoint {
        txid: spend.compute_txid(),
        vout: 0,
    };
    let missing = OutPoint {
        txid: bitcoin::Txid::all_zeros(),
        vout: 0,
    };
    assert!(source.is_output_unspent(unspent).await.expect("query"));
    assert!(!source.is_output_unspent(spent).await.expect("query"));
    assert!(!source.is_output_unspent(missing).await.expect("query"));

    // An unknown block is an error, not a panic or a bogus header.
    assert!(source
        .get_header(&BlockHash::all_zeros(), None)
        .await
        .is_err());
    assert!(source.get_block(&BlockHash::all_zeros()).await.is_err());
    assert!(source
        .get_block_hash_by_height(tip_height + 1)
        .await
        .is_err());
}

#[tokio::test]
async fn rpc_client_reads_the_chain() {
    let (chain, spend) = chain_with_a_spend().await;
    check_source(&chain, &rpc_client(&chain), &spend).await;
}

#[tokio::test]
async fn rest_client_reads_the_chain() {
    let (chain, spend) = chain_with_a_spend().await;
    check_source(&chain, &rest_client(&chain), &spend).await;
}

/// What a chain listener was told.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Connected(u32, BlockHash),
    Disconnected(u32, BlockHash),
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }
}

impl Listen for Recorder {
    fn filtered_block_connected(
        &self,
        header: &bitcoin::block::Header,
        _: &TransactionData,
        height: u32,
    ) {
        self.0
            .lock()
            .expect("lock")
            .push(Event::Connected(height, header.block_hash()));
    }

    fn blocks_disconnected(&self, fork_point: BlockLocator) {
        self.0.lock().expect("lock").push(Event::Disconnected(
            fork_point.height,
            fork_point.block_hash,
        ));
    }
}

/// Follows the chain through new blocks and a reorg with the given block source.
async fn follow<S: BlockSource>(chain: &DevChain, source: &S) {
    let tip = validate_best_block_header(source)
        .await
        .expect("best header");
    assert_eq!(tip.height, chain.tip().0);
    let recorder = Recorder::default();
    let poller = ChainPoller::new(source, Network::Regtest);
    let mut client = SpvClient::new(tip, poller, HeaderCache::new(), &recorder);

    let (chain_tip, changed) = client.poll_best_tip().await.expect("poll");
    assert_eq!((chain_tip, changed), (ChainTip::Common, false));

    let start = chain.tip().0;
    let new = chain.mine_blocks_to_burn(3);
    let (_, changed) = client.poll_best_tip().await.expect("poll");
    assert!(changed);
    assert_eq!(
        recorder.take(),
        vec![
            Event::Connected(start + 1, new[0]),
            Event::Connected(start + 2, new[1]),
            Event::Connected(start + 3, new[2]),
        ]
    );

    // Replace the top two blocks with a longer branch of three.
    chain.invalidate_tip(2);
    let fork_point = chain.tip();
    assert_eq!(fork_point, (start + 1, new[0]));
    // A shorter chain alone is not better: nothing happens.
    let (chain_tip, changed) = client.poll_best_tip().await.expect("poll");
    assert!(matches!(chain_tip, ChainTip::Worse(_)));
    assert!(!changed);
    let branch = chain.mine_blocks_to_burn(3);
    let (_, changed) = client.poll_best_tip().await.expect("poll");
    assert!(changed);
    assert_eq!(
        recorder.take(),
        vec![
            Event::Disconnected(start + 1, new[0]),
            Event::Connected(start + 2, branch[0]),
            Event::Connected(start + 3, branch[1]),
            Event::Connected(start + 4, branch[2]),
        ]
    );
    let (chain_tip, changed) = client.poll_best_tip().await.expect("poll");
    assert_eq!((chain_tip, changed), (ChainTip::Common, false));
}

#[tokio::test]
async fn spv_client_over_rpc_follows_blocks_and_reorgs() {
    let (chain, _) = chain_with_a_spend().await;
    follow(&chain, &rpc_client(&chain)).await;
}

#[tokio::test]
async fn spv_client_over_rest_follows_blocks_and_reorgs() {
    let (chain, _) = chain_with_a_spend().await;
    follow(&chain, &rest_client(&chain)).await;
}

/// Start-up sync as an LDK node does it: one listener from genesis (every block fetched, many
/// at once over one client) and one from a tip that was reorganised away.
async fn catch_up<S: BlockSource>(chain: &DevChain, source: &S) {
    let stale_tip = chain.tip();
    chain.invalidate_tip(1);
    let branch = chain.mine_blocks_to_burn(2);
    let (height, tip) = chain.tip();

    let from_genesis = Recorder::default();
    let from_stale = Recorder::default();
    let listeners: Vec<(BlockLocator, &dyn Listen)> = vec![
        (BlockLocator::from_network(Network::Regtest), &from_genesis),
        (BlockLocator::new(stale_tip.1, stale_tip.0), &from_stale),
    ];
    let (_, best) = synchronize_listeners(source, Network::Regtest, listeners)
        .await
        .expect("synchronize_listeners");
    assert_eq!((best.height, best.header.block_hash()), (height, tip));

    let expected: Vec<Event> = (1..=height)
        .map(|h| Event::Connected(h, chain.block_hash(h).expect("active block")))
        .collect();
    assert_eq!(from_genesis.take(), expected);
    let fork = stale_tip.0 - 1;
    assert_eq!(
        from_stale.take(),
        vec![
            Event::Disconnected(fork, chain.block_hash(fork).expect("fork point")),
            Event::Connected(fork + 1, branch[0]),
            Event::Connected(fork + 2, branch[1]),
        ]
    );
}

#[tokio::test]
async fn startup_sync_over_rpc_from_genesis_and_a_stale_tip() {
    let (chain, _) = chain_with_a_spend().await;
    catch_up(&chain, &rpc_client(&chain)).await;
}

#[tokio::test]
async fn startup_sync_over_rest_from_genesis_and_a_stale_tip() {
    let (chain, _) = chain_with_a_spend().await;
    catch_up(&chain, &rest_client(&chain)).await;
}
