//! Batches over several channels of a hub: a mixed batch with moves to
//! lock, and batches that must end with nothing signed and every coin free.

mod common;

use common::fake_peer;

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

    /// Stops the hub and starts it again from its data directory, then
    /// reconnects it to every peer (at `addresses`, when they moved).
    async fn restart_hub(
        &mut self,
        addresses: &[(bitcoin::secp256k1::PublicKey, std::net::SocketAddr)],
    ) {
        self.hub.node.stop().await.unwrap();
        self.hub.node = builder(&self.chain, self.hub.dir.path())
            .start()
            .await
            .expect("hub starts again");
        for (peer, addr) in addresses {
            self.hub
                .node
                .connect(*peer, *addr)
                .await
                .expect("reconnects");
        }
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
    hub_with_refusing_peers(float, peers, layout, &[]).await
}

/// Like [`hub_with_channels`], with the peers in `refusing` configured to
/// refuse splices (`reject_inbound_splices`).
async fn hub_with_refusing_peers(
    float: Amount,
    peers: usize,
    layout: &[usize],
    refusing: &[usize],
) -> Hub {
    let chain = start_chain().await;
    let hub = start_node(&chain).await;
    let mut peer_nodes = Vec::new();
    for i in 0..peers {
        let dir = tempfile::tempdir().unwrap();
        let node = builder(&chain, dir.path())
            .accept_inbound_splices(!refusing.contains(&i))
            .start()
            .await
            .unwrap();
        peer_nodes.push(TestNode { node, dir });
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
        h.coordinator().locked_coins().is_empty(),
        "a quote reserves nothing"
    );
    let capacities: Vec<Amount> = (0..6).map(|i| hub.capacity(i)).collect();
    let balances: Vec<Amount> = (0..6).map(|i| hub.balance(i)).collect();
    let peer_balances: Vec<Amount> = (0..6).map(|i| hub.peer_balance(i)).collect();

    let id = h.start_batch(plan).expect("batch starts");
    let signed = h
        .wait_for_batch(id, WAIT, |s| *s == BatchState::Signed)
        .await
        .expect("every leg signed");
    // The big move waits for its splice-out to confirm.
    let queued: Vec<_> = signed.parts.iter().filter(|p| p.queued).collect();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].channel_id, hub.channels[5].0);

    // Mine until every leg, the queued one included, is locked. After each
    // block, give a leg that just started time to reach the chain, so the
    // blocks do not run ahead of its negotiation.
    let all = hub.all();
    for _ in 0..30 {
        if h.batch_status(id).unwrap().state == BatchState::Locked {
            break;
        }
        mine(&hub.chain, 1, &all).await;
        let _ = h
            .wait_until(
                std::time::Duration::from_secs(5),
                "every leg broadcast",
                |n| {
                    n.batch_status(id).is_some_and(|b| {
                        b.parts.iter().all(|p| {
                            p.splice
                                .and_then(|s| n.splice_status(s))
                                .is_some_and(|r| r.state.is_broadcast())
                        })
                    })
                },
            )
            .await;
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
    assert!(h.coordinator().locked_coins().is_empty());
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

/// What every batch that ends before signing must leave behind: each leg
/// ended, nothing broadcast, every coin free and spendable again.
async fn assert_nothing_left(
    hub: &Hub,
    id: ldk_splice::BatchId,
    float: Amount,
    mempool_before: usize,
) {
    let h = hub.node();
    let record = h.batch_status(id).unwrap();
    for part in &record.parts {
        if let Some(splice) = part.splice {
            let state = h.splice_status(splice).unwrap().state;
            assert!(
                matches!(state, SpliceState::Failed { .. } | SpliceState::Cancelled),
                "leg {} ended {state}",
                part.leg
            );
            assert!(h.splice_status(splice).unwrap().txid.is_none());
        }
    }
    assert_eq!(
        hub.chain.mempool_txids().len(),
        mempool_before,
        "nothing broadcast"
    );
    h.wait_until(WAIT, "every reservation released", |n| {
        n.coordinator().locked_coins().is_empty()
    })
    .await
    .expect("reservations released");
    assert_eq!(h.wallet().available_balance(), float);
    for (channel_id, _) in &hub.channels {
        h.wait_until(WAIT, "LDK dropped every contribution", |n| {
            n.channel(channel_id)
                .is_some_and(|c| c.splice_details.is_none_or(|d| d.candidates.is_empty()))
        })
        .await
        .expect("no splice left in LDK");
    }
    // Spend every coin: one payment of the whole float (less a fee).
    let to = external_address();
    let tx = h
        .wallet()
        .build_payment(to.script_pubkey(), float - Amount::from_sat(2_000), FEERATE)
        .expect("all coins spendable");
    assert_eq!(tx.input.len(), 2, "both coins spent");
    hub.chain
        .send_raw_transaction(&tx)
        .expect("the devchain accepts the spend");
}

/// Legs 0 and 1 splice normally; leg 2 is on channel 2.
fn three_leg_plan(hub: &Hub) -> BatchPlan {
    BatchPlan::new(FeePolicy::fixed(FEERATE))
        .leg(Leg::SpliceIn {
            channel: hub.channel(0),
            amount: Amount::from_sat(100_000),
        })
        .leg(Leg::SpliceOut {
            channel: hub.channel(1),
            amount: Amount::from_sat(100_000),
            to: Destination::Wallet,
        })
        .leg(Leg::SpliceIn {
            channel: hub.channel(2),
            amount: Amount::from_sat(100_000),
        })
}

/// Stops peer `index` and serves its channel manager through a fake peer
/// behaving as `behaviour`; the hub reconnects to it.
async fn fake_peer(hub: &Hub, index: usize, behaviour: fake_peer::Behaviour) -> fake_peer::FakeBob {
    let peer = &hub.peers[index].node;
    let peer_id = peer.node_id();
    peer.stop().await.unwrap();
    hub.node()
        .wait_until(WAIT, "peer gone", |n| !n.is_connected(&peer_id))
        .await
        .unwrap();
    let fake = fake_peer::FakeBob::start(peer, behaviour).await;
    hub.node().connect(peer_id, fake.addr).await.unwrap();
    hub.node()
        .wait_until(WAIT, "channel usable", |n| {
            n.list_channels()
                .iter()
                .any(|c| c.counterparty.node_id == peer_id && c.is_usable)
        })
        .await
        .unwrap();
    fake
}

/// Waits until legs 0 and 1 are ready to sign (held, unsigned).
async fn wait_two_legs_held(hub: &Hub, id: ldk_splice::BatchId) {
    let h = hub.node();
    h.wait_until(WAIT, "two legs ready to sign", |n| {
        let record = n.batch_status(id).unwrap();
        record.parts.iter().filter(|p| p.leg < 2).all(|p| {
            n.splice_status(p.splice.unwrap()).unwrap().state == SpliceState::AwaitingSignatures
        })
    })
    .await
    .expect("legs 0 and 1 wait for leg 2");
    assert_eq!(h.batch_status(id).unwrap().state, BatchState::Negotiating);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_disconnecting_mid_negotiation_cancels_the_whole_batch() {
    let float = Amount::from_sat(600_000);
    let hub = hub_with_channels(float, 3, &[0, 1, 2]).await;
    let fake = fake_peer(&hub, 2, fake_peer::Behaviour::IgnoreStfu).await;
    let mempool_before = hub.chain.mempool_txids().len();
    let id = hub
        .node()
        .start_batch(three_leg_plan(&hub))
        .expect("batch starts");
    wait_two_legs_held(&hub, id).await;

    drop(fake);
    let record = hub
        .node()
        .wait_for_batch(id, WAIT, |s| matches!(s, BatchState::Failed { .. }))
        .await
        .expect("batch fails");
    match &record.state {
        BatchState::Failed { leg, reason } => {
            assert_eq!(*leg, 2);
            assert!(reason.contains("disconnect"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert_nothing_left(&hub, id, float, mempool_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_refusing_splices_cancels_the_whole_batch() {
    let float = Amount::from_sat(600_000);
    let hub = hub_with_refusing_peers(float, 3, &[0, 1, 2], &[2]).await;
    let mempool_before = hub.chain.mempool_txids().len();
    let id = hub
        .node()
        .start_batch(three_leg_plan(&hub))
        .expect("batch starts");
    let record = hub
        .node()
        .wait_for_batch(id, WAIT, |s| matches!(s, BatchState::Failed { .. }))
        .await
        .expect("batch fails");
    assert!(
        matches!(record.state, BatchState::Failed { leg: 2, .. }),
        "{}",
        record.state
    );
    assert_nothing_left(&hub, id, float, mempool_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_passed_deadline_ends_the_batch() {
    let float = Amount::from_sat(600_000);
    let hub = hub_with_channels(float, 3, &[0, 1, 2]).await;
    let _fake = fake_peer(&hub, 2, fake_peer::Behaviour::IgnoreStfu).await;
    let mempool_before = hub.chain.mempool_txids().len();

    let plan = three_leg_plan(&hub).with_deadline(std::time::Duration::from_secs(2));
    let id = hub.node().start_batch(plan).expect("batch starts");
    wait_two_legs_held(&hub, id).await;
    let record = hub
        .node()
        .wait_for_batch(id, WAIT, |s| matches!(s, BatchState::Failed { .. }))
        .await
        .expect("deadline ends the batch");
    match &record.state {
        BatchState::Failed { leg, reason } => {
            assert_eq!(*leg, 2, "the leg that was not ready is named");
            assert!(reason.contains("deadline"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert_nothing_left(&hub, id, float, mempool_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_batch_before_signing_releases_everything() {
    let float = Amount::from_sat(600_000);
    let hub = hub_with_channels(float, 3, &[0, 1, 2]).await;
    let _fake = fake_peer(&hub, 2, fake_peer::Behaviour::IgnoreStfu).await;
    let mempool_before = hub.chain.mempool_txids().len();
    let id = hub
        .node()
        .start_batch(three_leg_plan(&hub))
        .expect("batch starts");
    wait_two_legs_held(&hub, id).await;
    hub.node().cancel_batch(id).expect("cancel");
    assert_eq!(
        hub.node().batch_status(id).unwrap().state,
        BatchState::Cancelled
    );
    assert!(hub.node().cancel_batch(id).is_err(), "cancelled once only");
    assert_nothing_left(&hub, id, float, mempool_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_restarted_before_signing_cancels_the_batch_cleanly() {
    let float = Amount::from_sat(600_000);
    let mut hub = hub_with_channels(float, 3, &[0, 1, 2]).await;
    let fake = fake_peer(&hub, 2, fake_peer::Behaviour::IgnoreStfu).await;
    let mempool_before = hub.chain.mempool_txids().len();
    let id = hub
        .node()
        .start_batch(three_leg_plan(&hub))
        .expect("batch starts");
    wait_two_legs_held(&hub, id).await;

    let addresses: Vec<_> = (0..2)
        .map(|i| (hub.peers[i].node.node_id(), hub.peers[i].node.listen_addr()))
        .chain(std::iter::once((hub.peers[2].node.node_id(), fake.addr)))
        .collect();
    hub.restart_hub(&addresses).await;
    let record = hub
        .node()
        .batch_status(id)
        .expect("batch kept in the journal");
    match &record.state {
        BatchState::Failed { reason, .. } => assert!(reason.contains("restart"), "{reason}"),
        other => panic!("a batch unsigned at restart must fail, it is {other}"),
    }
    assert_nothing_left(&hub, id, float, mempool_before).await;
    drop(fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_restarted_after_signing_still_locks_the_batch() {
    let float = Amount::from_sat(600_000);
    let mut hub = hub_with_channels(float, 3, &[0, 1, 2]).await;
    let capacities: Vec<Amount> = (0..3).map(|i| hub.capacity(i)).collect();
    let id = hub
        .node()
        .start_batch(three_leg_plan(&hub))
        .expect("batch starts");
    let signed = hub
        .node()
        .wait_for_batch(id, WAIT, |s| *s == BatchState::Signed)
        .await
        .expect("signed");
    let splices: Vec<_> = signed.parts.iter().filter_map(|p| p.splice).collect();
    assert_eq!(splices.len(), 3);
    hub.node()
        .wait_until(WAIT, "every leg broadcast", |n| {
            splices
                .iter()
                .all(|s| n.splice_status(*s).is_some_and(|r| r.state.is_broadcast()))
        })
        .await
        .unwrap();
    for splice in &splices {
        wait_in_mempool(
            &hub.chain,
            &hub.node().splice_status(*splice).unwrap().txid.unwrap(),
        )
        .await;
    }

    let addresses: Vec<_> = hub
        .peers
        .iter()
        .map(|p| (p.node.node_id(), p.node.listen_addr()))
        .collect();
    hub.restart_hub(&addresses).await;
    assert_eq!(
        hub.node().batch_status(id).unwrap().state,
        BatchState::Signed
    );
    let all = hub.all();
    for _ in 0..20 {
        if hub.node().batch_status(id).unwrap().state == BatchState::Locked {
            break;
        }
        mine(&hub.chain, 1, &all).await;
    }
    assert_eq!(
        hub.node().batch_status(id).unwrap().state,
        BatchState::Locked
    );
    let fee = |i: usize| hub.node().splice_status(splices[i]).unwrap().fee;
    assert_eq!(hub.capacity(0), capacities[0] + Amount::from_sat(100_000));
    assert_eq!(
        hub.capacity(1),
        capacities[1] - Amount::from_sat(100_000) - fee(1)
    );
    assert_eq!(hub.capacity(2), capacities[2] + Amount::from_sat(100_000));
    assert!(hub.node().coordinator().locked_coins().is_empty());
}
