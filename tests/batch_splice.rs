//! Batches over several channels of a hub: a mixed batch with moves to
//! lock, and batches that must end with nothing signed and every coin free.

mod common;

use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    Address, Amount, CompressedPublicKey, FeeRate, Network, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Witness,
};
use common::*;
use ldk_splice::devchain::DevChain;
use ldk_splice::node::Node;
use ldk_splice::{BatchPlan, BatchState, ChannelRef, Destination, FeePolicy, Leg, SpliceState};
use lightning::ln::types::ChannelId;

const FEERATE: FeeRate = FeeRate::from_sat_per_kwu(500);
const CAPACITY: Amount = Amount::from_sat(1_000_000);
const PUSH: Amount = Amount::from_sat(500_000);

/// A key the test holds, to hand a node an exact amount on-chain.
struct Faucet {
    key: SecretKey,
    public: CompressedPublicKey,
    coin: Option<(OutPoint, TxOut)>,
}

impl Faucet {
    /// Mines a coinbase to a fresh key; it matures with the blocks that follow.
    fn new(chain: &DevChain) -> Self {
        let secp = Secp256k1::new();
        let key = SecretKey::from_slice(&[0x7a; 32]).unwrap();
        let public = CompressedPublicKey(key.public_key(&secp));
        let address = Address::p2wpkh(&public, Network::Regtest);
        let hash = chain.mine_blocks(1, &address)[0];
        let coinbase = chain.block(&hash).unwrap().txdata[0].clone();
        let vout = coinbase
            .output
            .iter()
            .position(|o| o.script_pubkey == address.script_pubkey())
            .unwrap();
        Faucet {
            key,
            public,
            coin: Some((
                OutPoint {
                    txid: coinbase.compute_txid(),
                    vout: vout as u32,
                },
                coinbase.output[vout].clone(),
            )),
        }
    }

    /// Pays exactly `amount` to `to` (the faucet keeps the change).
    fn pay(&mut self, chain: &DevChain, to: &Address, amount: Amount) {
        let secp = Secp256k1::new();
        let (outpoint, prevout) = self.coin.take().expect("faucet has a coin");
        let own = ScriptBuf::new_p2wpkh(&self.public.wpubkey_hash());
        let fee = Amount::from_sat(1_000);
        let mut tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: vec![
                TxOut {
                    value: amount,
                    script_pubkey: to.script_pubkey(),
                },
                TxOut {
                    value: prevout.value - amount - fee,
                    script_pubkey: own.clone(),
                },
            ],
        };
        let sighash = SighashCache::new(&tx)
            .p2wpkh_signature_hash(0, &own, prevout.value, EcdsaSighashType::All)
            .unwrap();
        let signature = bitcoin::ecdsa::Signature {
            signature: secp.sign_ecdsa(&sighash.into(), &self.key),
            sighash_type: EcdsaSighashType::All,
        };
        tx.input[0].witness = Witness::p2wpkh(&signature, &self.public.0);
        let txid = chain
            .send_raw_transaction(&tx)
            .expect("faucet payment accepted");
        self.coin = Some((OutPoint { txid, vout: 1 }, tx.output[1].clone()));
    }
}

struct Hub {
    chain: DevChain,
    hub: TestNode,
    peers: Vec<TestNode>,
    /// (channel, peer index)
    channels: Vec<(ChannelId, usize)>,
}

impl Hub {
    fn node(&self) -> &Node {
        &self.hub.node
    }

    fn channel(&self, i: usize) -> ChannelRef {
        let (channel_id, peer) = self.channels[i];
        ChannelRef {
            channel_id,
            counterparty: self.peers[peer].node.node_id(),
        }
    }

    fn capacity(&self, i: usize) -> Amount {
        Amount::from_sat(
            self.node()
                .channel(&self.channels[i].0)
                .unwrap()
                .channel_value_satoshis,
        )
    }

    fn balance(&self, i: usize) -> Amount {
        self.node().channel_balance(&self.channels[i].0).unwrap()
    }

    fn peer_balance(&self, i: usize) -> Amount {
        let (channel_id, peer) = self.channels[i];
        self.peers[peer].node.channel_balance(&channel_id).unwrap()
    }

    fn all(&self) -> Vec<&Node> {
        std::iter::once(self.node())
            .chain(self.peers.iter().map(|p| &p.node))
            .collect()
    }
}

/// A hub whose wallet holds exactly `float` in two equal coins, and
/// `layout.len()` channels
/// that peers opened to it (each pushing half to the hub); `layout[i]` is
/// the peer of channel `i`.
async fn hub_with_channels(float: Amount, peers: usize, layout: &[usize]) -> Hub {
    let chain = start_chain().await;
    let hub = start_node(&chain).await;
    let mut peer_nodes = Vec::new();
    for _ in 0..peers {
        peer_nodes.push(start_node(&chain).await);
    }
    let mut faucet = Faucet::new(&chain);
    let funded: Vec<&Node> = peer_nodes.iter().map(|p| &p.node).collect();
    fund_nodes(&chain, &funded).await;
    for _ in 0..2 {
        faucet.pay(&chain, &hub.node.new_address().unwrap(), float / 2);
    }
    let mut channels = Vec::new();
    for &peer in layout {
        let (channel_id, _) =
            open_channel(&chain, &peer_nodes[peer].node, &hub.node, CAPACITY, PUSH).await;
        channels.push((channel_id, peer));
    }
    hub.node
        .wait_until(WAIT, "hub float confirmed", |n| {
            n.onchain_balance().confirmed == float
        })
        .await
        .expect("hub funded");
    Hub {
        chain,
        hub,
        peers: peer_nodes,
        channels,
    }
}

fn external_address() -> Address {
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[0x43; 32]).unwrap();
    Address::p2wpkh(
        &CompressedPublicKey(key.public_key(&secp)),
        Network::Regtest,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_batch_with_moves_locks_everywhere_with_exact_balances() {
    // Channels 0..6 over 4 peers.
    let float = Amount::from_sat(600_000);
    let hub = hub_with_channels(float, 4, &[0, 1, 2, 3, 0, 1]).await;
    let h = hub.node();
    let to = external_address();
    let (add, out, small_move, big_move) = (
        Amount::from_sat(100_000),
        Amount::from_sat(100_000),
        Amount::from_sat(200_000),
        Amount::from_sat(400_000),
    );
    let plan = BatchPlan::new(FeePolicy::fixed(FEERATE))
        .leg(Leg::SpliceIn {
            channel: hub.channel(0),
            amount: add,
        })
        .leg(Leg::SpliceOut {
            channel: hub.channel(1),
            amount: out,
            to: Destination::Address(to.as_unchecked().clone()),
        })
        .leg(Leg::Move {
            from: hub.channel(2),
            to: hub.channel(3),
            amount: small_move,
        })
        .leg(Leg::Move {
            from: hub.channel(4),
            to: hub.channel(5),
            amount: big_move,
        });

    let quote = h.quote_batch(&plan).expect("quote");
    assert_eq!(quote.legs.len(), 6);
    assert!(
        quote.legs.iter().filter(|l| l.queued).count() == 1,
        "{quote:?}"
    );
    assert!(
        h.wallet().reservations().is_empty(),
        "a quote reserves nothing"
    );
    let capacities: Vec<Amount> = (0..6).map(|i| hub.capacity(i)).collect();
    let balances: Vec<Amount> = (0..6).map(|i| hub.balance(i)).collect();
    let peer_balances: Vec<Amount> = (0..6).map(|i| hub.peer_balance(i)).collect();

    let id = h.batch(plan).expect("batch starts");
    let signed = h
        .wait_for_batch(id, WAIT, |s| *s == BatchState::Signed)
        .await
        .expect("every leg signed");
    // The big move waits for its splice-out to confirm.
    let queued: Vec<_> = signed.parts.iter().filter(|p| p.queued).collect();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].channel_id, hub.channels[5].0);

    // Mine until every leg, the queued one included, is locked.
    let all = hub.all();
    for _ in 0..30 {
        if h.batch_status(id).unwrap().state == BatchState::Locked {
            break;
        }
        mine(&hub.chain, 1, &all).await;
    }
    let done = h.batch_status(id).unwrap();
    assert_eq!(done.state, BatchState::Locked, "{done:?}");
    let fee = |i: usize| {
        let splice = done
            .parts
            .iter()
            .find(|p| p.channel_id == hub.channels[i].0)
            .and_then(|p| p.splice)
            .unwrap();
        let record = h.splice_status(splice).unwrap();
        assert_eq!(record.state, SpliceState::Locked);
        let tx = hub.chain.transaction(&record.txid.unwrap()).unwrap();
        assert_eq!(
            fee_of(&hub.chain, &tx),
            record.fee,
            "fee on chain is the recorded fee"
        );
        record.fee
    };
    let (f0, f1, f2, f3, f4, f5) = (fee(0), fee(1), fee(2), fee(3), fee(4), fee(5));
    let expect = [
        (0, add.to_signed().unwrap()),
        (1, -(out + f1).to_signed().unwrap()),
        (2, -(small_move + f2).to_signed().unwrap()),
        (3, small_move.to_signed().unwrap()),
        (4, -(big_move + f4).to_signed().unwrap()),
        (5, big_move.to_signed().unwrap()),
    ];
    for (i, delta) in expect {
        let cap = (capacities[i].to_signed().unwrap() + delta)
            .to_unsigned()
            .unwrap();
        let bal = (balances[i].to_signed().unwrap() + delta)
            .to_unsigned()
            .unwrap();
        h.wait_until(WAIT, "channel settled", |_| hub.capacity(i) == cap)
            .await
            .unwrap_or_else(|_| panic!("channel {i}: capacity {} want {cap}", hub.capacity(i)));
        assert_eq!(hub.balance(i), bal, "hub balance in channel {i}");
        assert_eq!(
            hub.peer_balance(i),
            peer_balances[i],
            "peer balance in channel {i}"
        );
    }
    // The wallet paid the splice-in and both moves' splice-ins with their
    // fees, and got both moves' splice-outs back.
    let wallet = float - add - f0 - f3 - f5;
    h.wait_until(WAIT, "wallet settles", |n| {
        n.onchain_balance().confirmed == wallet
    })
    .await
    .unwrap_or_else(|_| panic!("wallet {:?}, want {wallet}", h.onchain_balance()));
    assert!(h.wallet().reservations().is_empty());
    let paid: Amount = hub
        .chain
        .transaction(
            &h.splice_status(done.parts[1].splice.unwrap())
                .unwrap()
                .txid
                .unwrap(),
        )
        .unwrap()
        .output
        .iter()
        .filter(|o| o.script_pubkey == to.script_pubkey())
        .map(|o| o.value)
        .sum();
    assert_eq!(paid, out);
}
