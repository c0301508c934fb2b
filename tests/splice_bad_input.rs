//! Bad splice requests, against real nodes on the devchain: each one is
//! refused with its own `SpliceError` and a readable message, before anything
//! is reserved in the wallet, journaled, or sent to the peer. Also: quotes
//! describe the splice that follows them, and cancelling.
//!
//! "Nothing sent to the peer" is checked on both sides: our own channel shows
//! no splice candidate right after the refusal (LDK lists a contribution as a
//! candidate as soon as it is handed over, before any message goes out), the
//! counterparty's channel shows none either, the mempool is unchanged, and
//! where a valid splice follows, the counterparty ends up with exactly one
//! candidate: the valid one.
//!
//! Two cases need a counterparty that misbehaves in a controlled way (one
//! that does not advertise splicing, one that never answers `stfu`). The
//! node has no switch for either, so those tests stop Bob's node and put
//! Bob's own `ChannelManager` behind a `PeerManager` of the test's making,
//! whose channel handler forwards everything to it except what the case
//! changes (`common::fake_peer`). Alice then reconnects to that
//! `PeerManager` over TCP as usual.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use bitcoin::address::NetworkUnchecked;
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Address, Amount, FeeRate, Network, OutPoint, Transaction, Txid};
use common::fake_peer::{Behaviour, FakeBob};
use common::*;
use ldk_splice::devchain::DevChain;
use ldk_splice::node::Node;
use ldk_splice::{
    Destination, FeePolicy, Payout, ResizeRequest, SpliceError, SpliceId, SpliceQuote, SpliceState,
};
use lightning::chain::chaininterface::ConfirmationTarget;
use lightning::ln::types::ChannelId;

const CAPACITY: Amount = Amount::from_sat(1_000_000);
const FEERATE: FeeRate = FeeRate::from_sat_per_kwu(500);
/// Alice pays Bob this much over the channel first, so both have a balance.
const PAID_TO_BOB_MSAT: u64 = 100_000_000;

// ---- set-up -------------------------------------------------------------

fn secret_key(byte: u8) -> SecretKey {
    SecretKey::from_slice(&[byte; 32]).expect("valid key")
}

/// A node id nobody in the test has a channel with.
fn stranger() -> PublicKey {
    secret_key(0x07).public_key(&Secp256k1::new())
}

/// A regtest P2WPKH address of a key nobody in the test holds (dust limit 294 sat).
fn external_p2wpkh() -> Address {
    let public = bitcoin::CompressedPublicKey(secret_key(0x42).public_key(&Secp256k1::new()));
    Address::p2wpkh(&public, Network::Regtest)
}

/// A regtest P2TR address of a key nobody in the test holds (dust limit 330 sat).
fn external_p2tr() -> Address {
    let secp = Secp256k1::new();
    let (xonly, _) = secret_key(0x43).x_only_public_key(&secp);
    Address::p2tr(&secp, xonly, None, Network::Regtest)
}

fn to(address: &Address) -> Destination {
    Destination::Address(address.as_unchecked().clone())
}

/// BIP 173's mainnet P2WPKH example.
const MAINNET_BECH32: &str = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
/// A mainnet P2PKH address (base58).
const MAINNET_BASE58: &str = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2";

fn unchecked(address: &str) -> Address<NetworkUnchecked> {
    address.parse().expect("a valid address on some network")
}

// ---- what must not change when a request is refused --------------------

/// Everything a refused request must leave as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    reservations: Vec<(OutPoint, SpliceId)>,
    splices: Vec<(SpliceId, SpliceState)>,
    available: Amount,
    mempool: BTreeSet<Txid>,
}

fn snapshot(chain: &DevChain, node: &Node) -> Snapshot {
    Snapshot {
        reservations: node.coordinator().locked_coins(),
        splices: node
            .list_splices()
            .into_iter()
            .map(|r| (r.id, r.state))
            .collect(),
        available: node.wallet().available_balance(),
        mempool: chain.mempool_txids().into_iter().collect(),
    }
}

/// How many splice candidates (committed contributions, negotiations,
/// negotiated transactions) `node` has on `channel_id`.
fn splice_candidates(node: &Node, channel_id: &ChannelId) -> usize {
    node.channel(channel_id)
        .and_then(|c| c.splice_details)
        .map_or(0, |d| d.candidates.len())
}

/// Whether any channel of `node` has a splice under way.
fn any_splice_under_way(node: &Node) -> bool {
    node.list_channels()
        .iter()
        .any(|c| splice_candidates(node, &c.channel_id) > 0)
}

/// Checks made after every refused request: Alice's wallet, journal and
/// channels, Bob's channels and the mempool are as they were.
struct Watch<'a> {
    chain: &'a DevChain,
    a: &'a Node,
    b: &'a Node,
    before: Snapshot,
}

impl<'a> Watch<'a> {
    /// Starts watching; at this point nothing may be reserved or journaled.
    fn new(chain: &'a DevChain, a: &'a Node, b: &'a Node) -> Self {
        let before = snapshot(chain, a);
        assert!(before.reservations.is_empty(), "{before:?}");
        assert!(before.splices.is_empty(), "{before:?}");
        assert!(!any_splice_under_way(a) && !any_splice_under_way(b));
        Watch {
            chain,
            a,
            b,
            before,
        }
    }

    /// `result` must be an error, and nothing may have changed.
    fn refused<T: std::fmt::Debug>(
        &self,
        what: &str,
        result: Result<T, SpliceError>,
    ) -> SpliceError {
        let err = match result {
            Ok(value) => panic!("{what}: accepted ({value:?}), expected a refusal"),
            Err(err) => err,
        };
        self.unchanged(&format!("{what} (refused: {err})"));
        err
    }

    /// Nothing reserved, journaled, spent, broadcast or started with the peer.
    fn unchanged(&self, what: &str) {
        let now = snapshot(self.chain, self.a);
        assert_eq!(now, self.before, "{what}: state changed");
        assert!(
            self.a.coordinator().locked_coins().is_empty(),
            "{what}: coins reserved"
        );
        assert!(
            self.a.list_splices().is_empty(),
            "{what}: a splice was journaled"
        );
        assert!(
            !any_splice_under_way(self.a),
            "{what}: a contribution was handed to LDK"
        );
        assert!(
            !any_splice_under_way(self.b),
            "{what}: the counterparty has a splice under way"
        );
    }
}

fn assert_mentions(err: &SpliceError, words: &[&str]) {
    let text = err.to_string();
    for word in words {
        assert!(
            text.contains(word),
            "message {text:?} of {err:?} does not mention {word:?}"
        );
    }
}

fn splice_in_request(add: Amount) -> ResizeRequest {
    ResizeRequest {
        add,
        outputs: Vec::new(),
    }
}

fn splice_out_request(amount: Amount, to: Destination) -> ResizeRequest {
    ResizeRequest {
        add: Amount::ZERO,
        outputs: vec![Payout { to, amount }],
    }
}

// ---- rejections on a live channel ---------------------------------------

/// Zero, dust, over the splice-out maximum, over the wallet's balance, wrong
/// network, unknown channel, wrong counterparty, feerate and fee over their
/// caps: each refused with its own variant and nothing reserved or sent;
/// the quote of the same request is refused the same way. Then a valid
/// splice right after the refusals goes through, and a second request while
/// it is in flight is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_requests_reserve_nothing_and_send_nothing() {
    let setup = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let (chain, a, b, channel_id) = (
        &setup.chain,
        &setup.alice.node,
        &setup.bob.node,
        setup.channel_id,
    );
    let bob = b.node_id();
    let policy = FeePolicy::fixed(FEERATE);
    let watch = Watch::new(chain, a, b);
    let p2wpkh = external_p2wpkh();
    let p2tr = external_p2tr();

    // 1. Zero.
    let err = watch.refused(
        "splice-in of 0",
        a.splice_in(&channel_id, &bob, Amount::ZERO, policy),
    );
    assert!(matches!(err, SpliceError::ZeroAmount), "{err:?}");
    assert_mentions(&err, &["amount", "zero"]);
    let err = watch.refused(
        "splice-out of 0",
        a.splice_out(&channel_id, &bob, Amount::ZERO, to(&p2wpkh), policy),
    );
    assert!(matches!(err, SpliceError::ZeroAmount), "{err:?}");
    let err = watch.refused(
        "splice-out of 0 to the wallet",
        a.splice_out(&channel_id, &bob, Amount::ZERO, Destination::Wallet, policy),
    );
    assert!(matches!(err, SpliceError::ZeroAmount), "{err:?}");
    let err = watch.refused(
        "empty resize",
        a.resize(&channel_id, &bob, ResizeRequest::default(), policy),
    );
    assert!(matches!(err, SpliceError::ZeroAmount), "{err:?}");
    let err = watch.refused(
        "quote of a splice-in of 0",
        a.quote_splice(&channel_id, &bob, &splice_in_request(Amount::ZERO), policy),
    );
    assert!(matches!(err, SpliceError::ZeroAmount), "{err:?}");

    // 2. Dust: the new funding output (P2WSH, 330 sat) for a splice-in, the
    // destination's own dust limit for a splice-out.
    let err = watch.refused(
        "splice-in of 329 sat",
        a.splice_in(&channel_id, &bob, Amount::from_sat(329), policy),
    );
    assert!(
        matches!(err, SpliceError::DustAmount { amount, dust_limit }
            if amount == Amount::from_sat(329) && dust_limit == Amount::from_sat(330)),
        "{err:?}"
    );
    assert_mentions(&err, &["329 sat", "330 sat", "dust"]);
    let err = watch.refused(
        "splice-out of 293 sat to P2WPKH",
        a.splice_out(
            &channel_id,
            &bob,
            Amount::from_sat(293),
            to(&p2wpkh),
            policy,
        ),
    );
    assert!(
        matches!(err, SpliceError::DustAmount { amount, dust_limit }
            if amount == Amount::from_sat(293) && dust_limit == Amount::from_sat(294)),
        "{err:?}"
    );
    assert_mentions(&err, &["293 sat", "294 sat", "dust"]);
    let err = watch.refused(
        "splice-out of 329 sat to P2TR",
        a.splice_out(&channel_id, &bob, Amount::from_sat(329), to(&p2tr), policy),
    );
    assert!(
        matches!(err, SpliceError::DustAmount { amount, dust_limit }
            if amount == Amount::from_sat(329) && dust_limit == Amount::from_sat(330)),
        "{err:?}"
    );
    let err = watch.refused(
        "splice-out of 100 sat to our wallet",
        a.splice_out(
            &channel_id,
            &bob,
            Amount::from_sat(100),
            Destination::Wallet,
            policy,
        ),
    );
    assert!(
        matches!(err, SpliceError::DustAmount { amount, dust_limit }
            if amount == Amount::from_sat(100) && dust_limit == Amount::from_sat(294)),
        "{err:?}"
    );
    let err = watch.refused(
        "quote of a splice-out of 293 sat",
        a.quote_splice(
            &channel_id,
            &bob,
            &splice_out_request(Amount::from_sat(293), to(&p2wpkh)),
            policy,
        ),
    );
    assert!(matches!(err, SpliceError::DustAmount { .. }), "{err:?}");
    // Exactly at the dust limit is fine (quoted, so nothing happens).
    a.quote_splice(
        &channel_id,
        &bob,
        &splice_in_request(Amount::from_sat(330)),
        policy,
    )
    .expect("a splice-in of 330 sat can be quoted");
    a.quote_splice(
        &channel_id,
        &bob,
        &splice_out_request(Amount::from_sat(294), to(&p2wpkh)),
        policy,
    )
    .expect("a splice-out of 294 sat to P2WPKH can be quoted");
    watch.unchanged("quotes at the dust limits");

    // 3. More than the channel lets us take out.
    let maximum = Amount::from_sat(a.channel(&channel_id).unwrap().next_splice_out_maximum_sat);
    assert!(maximum > Amount::from_sat(500_000), "maximum {maximum}");
    assert!(maximum < CAPACITY - Amount::from_sat(PAID_TO_BOB_MSAT / 1000));
    let over = maximum + Amount::from_sat(1);
    let err = watch.refused(
        "splice-out of the maximum + 1 sat",
        a.splice_out(&channel_id, &bob, over, to(&p2wpkh), policy),
    );
    assert!(
        matches!(err, SpliceError::ExceedsSpliceOutMaximum { requested, maximum: m }
            if requested == over && m == maximum),
        "{err:?}"
    );
    assert_mentions(
        &err,
        &[&over.to_sat().to_string(), &maximum.to_sat().to_string()],
    );
    let half = Amount::from_sat(maximum.to_sat() / 2 + 1);
    let err = watch.refused(
        "two payouts together over the maximum",
        a.resize(
            &channel_id,
            &bob,
            ResizeRequest {
                add: Amount::ZERO,
                outputs: vec![
                    Payout {
                        to: to(&p2wpkh),
                        amount: half,
                    },
                    Payout {
                        to: to(&p2tr),
                        amount: half,
                    },
                ],
            },
            policy,
        ),
    );
    assert!(
        matches!(err, SpliceError::ExceedsSpliceOutMaximum { requested, maximum: m }
            if requested == half + half && m == maximum),
        "{err:?}"
    );
    // The maximum itself, with the fee on top, is over it too.
    let err = watch.refused(
        "splice-out of exactly the maximum (the fee comes on top)",
        a.splice_out(&channel_id, &bob, maximum, to(&p2wpkh), policy),
    );
    // (What it reports as requested is checked in
    // `splice_out_of_the_maximum_reports_the_fee_on_top`.)
    assert!(
        matches!(err, SpliceError::ExceedsSpliceOutMaximum { maximum: m, .. } if m == maximum),
        "{err:?}"
    );
    let err = watch.refused(
        "quote of a splice-out over the maximum",
        a.quote_splice(
            &channel_id,
            &bob,
            &splice_out_request(over, to(&p2wpkh)),
            policy,
        ),
    );
    assert!(
        matches!(err, SpliceError::ExceedsSpliceOutMaximum { .. }),
        "{err:?}"
    );

    // 4. More than the wallet holds.
    let available = a.wallet().available_balance();
    assert_eq!(available, a.onchain_balance().confirmed);
    let too_much = available + Amount::from_sat(1);
    let err = watch.refused(
        "splice-in of the wallet balance + 1 sat",
        a.splice_in(&channel_id, &bob, too_much, policy),
    );
    assert!(
        matches!(err, SpliceError::InsufficientFunds { needed, available: have }
            if needed == too_much && have == available),
        "{err:?}"
    );
    assert_mentions(
        &err,
        &[
            &too_much.to_sat().to_string(),
            &available.to_sat().to_string(),
        ],
    );
    // The whole balance: the fee does not fit. (Coin selection runs, and
    // must release what it picked. What it reports as needed is checked in
    // `insufficient_funds_reports_what_the_fee_makes_it_need`.)
    let err = watch.refused(
        "splice-in of the whole wallet balance",
        a.splice_in(&channel_id, &bob, available, policy),
    );
    assert!(
        matches!(err, SpliceError::InsufficientFunds { available: have, .. } if have == available),
        "{err:?}"
    );
    let err = watch.refused(
        "quote of a splice-in over the wallet balance",
        a.quote_splice(&channel_id, &bob, &splice_in_request(too_much), policy),
    );
    assert!(
        matches!(err, SpliceError::InsufficientFunds { .. }),
        "{err:?}"
    );

    // 5. An address for another network.
    for address in [MAINNET_BECH32, MAINNET_BASE58] {
        let err = watch.refused(
            &format!("splice-out to mainnet {address}"),
            a.splice_out(
                &channel_id,
                &bob,
                Amount::from_sat(100_000),
                Destination::Address(unchecked(address)),
                policy,
            ),
        );
        assert!(
            matches!(&err, SpliceError::WrongNetwork { address: given, expected }
                if given == address && *expected == Network::Regtest),
            "{err:?}"
        );
        assert_mentions(&err, &[address, "regtest"]);
        let err = watch.refused(
            &format!("quote of a splice-out to mainnet {address}"),
            a.quote_splice(
                &channel_id,
                &bob,
                &splice_out_request(
                    Amount::from_sat(100_000),
                    Destination::Address(unchecked(address)),
                ),
                policy,
            ),
        );
        assert!(matches!(err, SpliceError::WrongNetwork { .. }), "{err:?}");
    }
    let err = watch.refused(
        "resize paying a mainnet address",
        a.resize(
            &channel_id,
            &bob,
            ResizeRequest {
                add: Amount::from_sat(100_000),
                outputs: vec![Payout {
                    to: Destination::Address(unchecked(MAINNET_BECH32)),
                    amount: Amount::from_sat(50_000),
                }],
            },
            policy,
        ),
    );
    assert!(matches!(err, SpliceError::WrongNetwork { .. }), "{err:?}");

    // 6. Unknown channel; the right channel with the wrong counterparty.
    let unknown = ChannelId::from_bytes([0x42; 32]);
    let err = watch.refused(
        "splice-in on an unknown channel",
        a.splice_in(&unknown, &bob, Amount::from_sat(100_000), policy),
    );
    assert!(
        matches!(err, SpliceError::UnknownChannel(id) if id == unknown),
        "{err:?}"
    );
    assert_mentions(&err, &[&unknown.to_string()]);
    let err = watch.refused(
        "splice-out on an unknown channel",
        a.splice_out(
            &unknown,
            &bob,
            Amount::from_sat(100_000),
            to(&p2wpkh),
            policy,
        ),
    );
    assert!(
        matches!(err, SpliceError::UnknownChannel(id) if id == unknown),
        "{err:?}"
    );
    for (who, counterparty) in [("a stranger", stranger()), ("ourselves", a.node_id())] {
        let err = watch.refused(
            &format!("splice-in on our channel named with {who} as counterparty"),
            a.splice_in(
                &channel_id,
                &counterparty,
                Amount::from_sat(100_000),
                policy,
            ),
        );
        assert!(
            matches!(err, SpliceError::UnknownChannel(id) if id == channel_id),
            "{err:?}"
        );
        assert_mentions(&err, &[&channel_id.to_string()]);
    }
    let err = watch.refused(
        "quote on an unknown channel",
        a.quote_splice(
            &unknown,
            &bob,
            &splice_in_request(Amount::from_sat(100_000)),
            policy,
        ),
    );
    assert!(matches!(err, SpliceError::UnknownChannel(_)), "{err:?}");

    // 11. Feerate and fee over their caps.
    let high = FeeRate::from_sat_per_kwu(5_000);
    let cap = FeeRate::from_sat_per_kwu(1_000);
    let capped = FeePolicy::fixed(high).with_max_feerate(cap);
    let err = watch.refused(
        "splice-in at a feerate over the cap",
        a.splice_in(&channel_id, &bob, Amount::from_sat(200_000), capped),
    );
    assert!(
        matches!(err, SpliceError::FeeRateTooHigh { feerate, max_feerate }
            if feerate == high && max_feerate == cap),
        "{err:?}"
    );
    assert_mentions(&err, &["5000 sat/kwu", "1000 sat/kwu"]);
    let err = watch.refused(
        "splice-out at a feerate over the cap",
        a.splice_out(
            &channel_id,
            &bob,
            Amount::from_sat(200_000),
            to(&p2wpkh),
            capped,
        ),
    );
    assert!(matches!(err, SpliceError::FeeRateTooHigh { .. }), "{err:?}");
    let estimated = FeePolicy::estimate(ConfirmationTarget::NonAnchorChannelFee)
        .with_max_feerate(FeeRate::ZERO);
    let err = watch.refused(
        "splice-in at the estimated feerate, capped at zero",
        a.splice_in(&channel_id, &bob, Amount::from_sat(200_000), estimated),
    );
    assert!(
        matches!(err, SpliceError::FeeRateTooHigh { feerate, max_feerate }
            if feerate > FeeRate::ZERO && max_feerate == FeeRate::ZERO),
        "{err:?}"
    );
    let err = watch.refused(
        "quote at a feerate over the cap",
        a.quote_splice(
            &channel_id,
            &bob,
            &splice_in_request(Amount::from_sat(200_000)),
            capped,
        ),
    );
    assert!(matches!(err, SpliceError::FeeRateTooHigh { .. }), "{err:?}");

    let tiny = Amount::from_sat(10);
    let stingy = FeePolicy::fixed(FEERATE).with_max_fee(tiny);
    // A splice-in selects (and for a moment reserves) coins before the fee
    // is known: all must be released.
    let err = watch.refused(
        "splice-in with a fee over the cap",
        a.splice_in(&channel_id, &bob, Amount::from_sat(200_000), stingy),
    );
    assert!(
        matches!(err, SpliceError::FeeTooHigh { fee, max_fee } if fee > tiny && max_fee == tiny),
        "{err:?}"
    );
    assert_mentions(&err, &["10 sat", "fee"]);
    let err = watch.refused(
        "splice-out with a fee over the cap",
        a.splice_out(
            &channel_id,
            &bob,
            Amount::from_sat(200_000),
            to(&p2wpkh),
            stingy,
        ),
    );
    assert!(
        matches!(err, SpliceError::FeeTooHigh { fee, max_fee } if fee > tiny && max_fee == tiny),
        "{err:?}"
    );
    let err = watch.refused(
        "quote with a fee over the cap",
        a.quote_splice(
            &channel_id,
            &bob,
            &splice_in_request(Amount::from_sat(200_000)),
            stingy,
        ),
    );
    assert!(matches!(err, SpliceError::FeeTooHigh { .. }), "{err:?}");

    // A valid request right after all those refusals goes through.
    let added = Amount::from_sat(200_000);
    let first = a
        .splice_in(&channel_id, &bob, added, policy)
        .expect("a valid splice-in after the refusals");

    // 10. Another request while it is in flight, refused with its id.
    let held: BTreeSet<OutPoint> = a.splice_status(first).unwrap().inputs.into_iter().collect();
    assert!(!held.is_empty());
    let check_in_flight = |what: &str, result: Result<SpliceId, SpliceError>| {
        let err = match result {
            Ok(id) => panic!("{what}: accepted as {id} while {first} is in flight"),
            Err(err) => err,
        };
        assert!(
            matches!(err, SpliceError::SpliceInFlight { channel_id: c, existing: Some(id) }
                if c == channel_id && id == first),
            "{what}: {err:?}"
        );
        assert_mentions(&err, &[&first.to_string(), &channel_id.to_string()]);
        let journaled: Vec<SpliceId> = a.list_splices().iter().map(|r| r.id).collect();
        assert_eq!(
            journaled,
            vec![first],
            "{what}: only the first is journaled"
        );
        let reserved = a.coordinator().locked_coins();
        assert!(
            reserved.iter().all(|(_, id)| *id == first),
            "{what}: coins reserved for another splice: {reserved:?}"
        );
        let reserved: BTreeSet<OutPoint> = reserved.into_iter().map(|(o, _)| o).collect();
        assert_eq!(
            reserved, held,
            "{what}: the first splice holds exactly its inputs"
        );
    };
    check_in_flight(
        "second splice-in",
        a.splice_in(&channel_id, &bob, Amount::from_sat(100_000), policy),
    );
    check_in_flight(
        "splice-out",
        a.splice_out(
            &channel_id,
            &bob,
            Amount::from_sat(100_000),
            to(&p2wpkh),
            policy,
        ),
    );
    let err = a
        .quote_splice(
            &channel_id,
            &bob,
            &splice_in_request(Amount::from_sat(100_000)),
            policy,
        )
        .expect_err("a quote while a splice is in flight");
    assert!(
        matches!(err, SpliceError::SpliceInFlight { existing: Some(id), .. } if id == first),
        "{err:?}"
    );

    let record = a
        .wait_for_splice(first, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .expect("the valid splice is broadcast");
    let txid = record.txid.expect("txid once broadcast");
    wait_in_mempool(chain, &txid).await;
    let mut expected_mempool = watch.before.mempool.clone();
    expected_mempool.insert(txid);
    assert_eq!(
        chain.mempool_txids().into_iter().collect::<BTreeSet<_>>(),
        expected_mempool,
        "the splice is the only new transaction"
    );
    b.wait_until(WAIT, "Bob to see the negotiated splice", |n| {
        splice_candidates(n, &channel_id) > 0
    })
    .await
    .expect("Bob has the splice");
    assert_eq!(
        splice_candidates(b, &channel_id),
        1,
        "Bob negotiated exactly one splice: {:?}",
        b.channel(&channel_id).unwrap().splice_details
    );
    check_in_flight(
        "splice-in while the first is broadcast",
        a.splice_in(&channel_id, &bob, Amount::from_sat(100_000), policy),
    );

    mine(chain, 6, &[a, b]).await;
    a.wait_for_splice(first, WAIT, |s| *s == SpliceState::Locked)
        .await
        .expect("locked");
    assert_eq!(
        a.channel(&channel_id).unwrap().channel_value_satoshis,
        (CAPACITY + added).to_sat()
    );
    assert!(a.coordinator().locked_coins().is_empty());
}

/// The fee does not fit in the wallet: the error says how much is needed,
/// fee included, which is more than the wallet has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]

async fn insufficient_funds_reports_what_the_fee_makes_it_need() {
    let setup = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let (chain, a, b, channel_id) = (
        &setup.chain,
        &setup.alice.node,
        &setup.bob.node,
        setup.channel_id,
    );
    let watch = Watch::new(chain, a, b);
    let available = a.wallet().available_balance();
    let err = watch.refused(
        "splice-in of the whole wallet balance",
        a.splice_in(
            &channel_id,
            &b.node_id(),
            available,
            FeePolicy::fixed(FEERATE),
        ),
    );
    match err {
        SpliceError::InsufficientFunds {
            needed,
            available: have,
        } => {
            assert_eq!(have, available);
            assert!(
                needed > have,
                "the error says the splice needs {needed} and the wallet has {have}: \
                 \"{err}\" does not tell the user why it failed"
            );
        }
        err => panic!("expected InsufficientFunds, got {err:?}"),
    }
}

/// A splice-out of exactly `next_splice_out_maximum_sat`: the fee on top
/// takes it over, and the error says so (requested, fee included, above the
/// maximum).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]

async fn splice_out_of_the_maximum_reports_the_fee_on_top() {
    let setup = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let (chain, a, b, channel_id) = (
        &setup.chain,
        &setup.alice.node,
        &setup.bob.node,
        setup.channel_id,
    );
    let watch = Watch::new(chain, a, b);
    let maximum = Amount::from_sat(a.channel(&channel_id).unwrap().next_splice_out_maximum_sat);
    let err = watch.refused(
        "splice-out of exactly the maximum",
        a.splice_out(
            &channel_id,
            &b.node_id(),
            maximum,
            to(&external_p2wpkh()),
            FeePolicy::fixed(FEERATE),
        ),
    );
    match err {
        SpliceError::ExceedsSpliceOutMaximum {
            requested,
            maximum: m,
        } => {
            assert_eq!(m, maximum);
            assert!(
                requested > maximum,
                "the error says {requested} was requested with {m} allowed: \
                 \"{err}\" does not tell the user why it failed"
            );
        }
        err => panic!("expected ExceedsSpliceOutMaximum, got {err:?}"),
    }
}

// ---- channel not ready, peer offline, peer without splice support -------

/// A channel still waiting for its funding transaction to confirm, then a
/// peer that went offline, then the same peer back without splice support.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_ready_offline_and_unsupported_peers_are_refused() {
    let setup = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let (chain, a, b, channel_id) = (
        &setup.chain,
        &setup.alice.node,
        &setup.bob.node,
        setup.channel_id,
    );
    let bob = b.node_id();
    let policy = FeePolicy::fixed(FEERATE);
    let p2wpkh = external_p2wpkh();

    // 7. Bob opens a second channel to Alice; its funding transaction sits
    // in the mempool and is never mined.
    let pending_capacity = Amount::from_sat(555_555);
    b.open_channel(a.node_id(), pending_capacity, Amount::ZERO)
        .expect("Bob opens a second channel");
    let funding = wait_for_mempool_tx(chain, |tx| {
        tx.output.iter().any(|o| o.value == pending_capacity)
    })
    .await
    .compute_txid();
    a.wait_until(WAIT, "Alice to list the pending channel", |n| {
        n.list_channels()
            .iter()
            .any(|c| c.funding_txo.is_some_and(|o| o.txid == funding))
    })
    .await
    .expect("pending channel listed");
    let pending = a
        .list_channels()
        .into_iter()
        .find(|c| c.funding_txo.is_some_and(|o| o.txid == funding))
        .unwrap();
    assert!(!pending.is_channel_ready);
    let pending_id = pending.channel_id;

    let watch = Watch::new(chain, a, b);
    assert!(watch.before.mempool.contains(&funding));
    let err = watch.refused(
        "splice-in on a channel not confirmed yet",
        a.splice_in(&pending_id, &bob, Amount::from_sat(100_000), policy),
    );
    assert!(
        matches!(err, SpliceError::ChannelNotReady(id) if id == pending_id),
        "{err:?}"
    );
    assert_mentions(&err, &[&pending_id.to_string(), "not ready"]);
    let err = watch.refused(
        "splice-out on a channel not confirmed yet",
        a.splice_out(
            &pending_id,
            &bob,
            Amount::from_sat(100_000),
            to(&p2wpkh),
            policy,
        ),
    );
    assert!(
        matches!(err, SpliceError::ChannelNotReady(id) if id == pending_id),
        "{err:?}"
    );
    let err = watch.refused(
        "quote on a channel not confirmed yet",
        a.quote_splice(
            &pending_id,
            &bob,
            &splice_in_request(Amount::from_sat(100_000)),
            policy,
        ),
    );
    assert!(matches!(err, SpliceError::ChannelNotReady(_)), "{err:?}");

    // 8. Bob goes offline (stopped, so nothing reconnects him).
    b.stop().await.expect("Bob stops");
    a.wait_until(WAIT, "Alice to see Bob gone", |n| {
        !n.is_connected(&bob) && n.channel(&channel_id).is_some_and(|c| !c.is_usable)
    })
    .await
    .expect("Bob disconnected");
    let err = watch.refused(
        "splice-in with the peer offline",
        a.splice_in(&channel_id, &bob, Amount::from_sat(100_000), policy),
    );
    assert!(
        matches!(err, SpliceError::PeerDisconnected(p) if p == bob),
        "{err:?}"
    );
    assert_mentions(&err, &[&bob.to_string(), "not connected"]);
    let err = watch.refused(
        "splice-out with the peer offline",
        a.splice_out(
            &channel_id,
            &bob,
            Amount::from_sat(100_000),
            to(&p2wpkh),
            policy,
        ),
    );
    assert!(
        matches!(err, SpliceError::PeerDisconnected(p) if p == bob),
        "{err:?}"
    );
    let err = watch.refused(
        "quote with the peer offline",
        a.quote_splice(
            &channel_id,
            &bob,
            &splice_in_request(Amount::from_sat(100_000)),
            policy,
        ),
    );
    assert!(matches!(err, SpliceError::PeerDisconnected(_)), "{err:?}");
    // Still offline: the refusals did not make anything reconnect.
    assert!(!a.is_connected(&bob));

    // 9. Bob's channel manager comes back behind a peer manager that does
    // not advertise splicing (nor quiescence).
    let fake = FakeBob::start(b, Behaviour::HideSplicing).await;
    a.connect(bob, fake.addr)
        .await
        .expect("Alice reaches Bob's channel manager again");
    a.wait_until(WAIT, "the channel usable, without splice support", |n| {
        n.channel(&channel_id).is_some_and(|c| {
            c.is_usable
                && !c.counterparty.features.supports_splicing()
                && !c.counterparty.features.supports_quiescence()
        })
    })
    .await
    .expect("channel usable again");
    let err = watch.refused(
        "splice-in with a peer without splice support",
        a.splice_in(&channel_id, &bob, Amount::from_sat(100_000), policy),
    );
    assert!(
        matches!(err, SpliceError::PeerWithoutSpliceSupport(p) if p == bob),
        "{err:?}"
    );
    assert_mentions(&err, &[&bob.to_string(), "splicing"]);
    let err = watch.refused(
        "splice-out with a peer without splice support",
        a.splice_out(
            &channel_id,
            &bob,
            Amount::from_sat(100_000),
            to(&p2wpkh),
            policy,
        ),
    );
    assert!(
        matches!(err, SpliceError::PeerWithoutSpliceSupport(p) if p == bob),
        "{err:?}"
    );
    let err = watch.refused(
        "quote with a peer without splice support",
        a.quote_splice(
            &channel_id,
            &bob,
            &splice_in_request(Amount::from_sat(100_000)),
            policy,
        ),
    );
    assert!(
        matches!(err, SpliceError::PeerWithoutSpliceSupport(_)),
        "{err:?}"
    );
    assert!(fake.handler.stfu_seen.load(Ordering::SeqCst) == 0);
}

// ---- quotes ---------------------------------------------------------------

/// Checks a quote against the splice that followed it with the same request
/// and policy, once broadcast and once locked.
async fn check_quote_against_splice(setup: &Setup, request: ResizeRequest, policy: FeePolicy) {
    let (chain, a, b, channel_id) = (
        &setup.chain,
        &setup.alice.node,
        &setup.bob.node,
        setup.channel_id,
    );
    let bob = b.node_id();
    let watch = Watch::new(chain, a, b);
    let capacity = Amount::from_sat(a.channel(&channel_id).unwrap().channel_value_satoshis);

    let quote = a
        .quote_splice(&channel_id, &bob, &request, policy)
        .expect("quote");
    watch.unchanged("after a quote");
    let again = a
        .quote_splice(&channel_id, &bob, &request, policy)
        .expect("second quote");
    assert_eq!(again, quote, "quoting twice gives the same answer");
    watch.unchanged("after two quotes");
    assert_eq!(quote.capacity_before, capacity);
    assert_eq!(quote.feerate.to_sat_per_kwu(), FEERATE.to_sat_per_kwu());
    assert_eq!(quote.inputs.is_empty(), request.add == Amount::ZERO);

    let id = a
        .resize(&channel_id, &bob, request.clone(), policy)
        .expect("the quoted splice starts");
    let record = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Broadcast)
        .await
        .expect("broadcast");
    check_record_against_quote(&record, &quote);
    let txid = record.txid.unwrap();
    wait_in_mempool(chain, &txid).await;
    let tx = chain.transaction(&txid).unwrap();
    check_tx_against_quote(chain, &tx, &quote);

    mine(chain, 6, &[a, b]).await;
    let record = a
        .wait_for_splice(id, WAIT, |s| *s == SpliceState::Locked)
        .await
        .expect("locked");
    check_record_against_quote(&record, &quote);
    let channel = a.channel(&channel_id).unwrap();
    assert_eq!(channel.funding_txo.unwrap().txid, txid);
    assert_eq!(
        Amount::from_sat(channel.channel_value_satoshis),
        quote.capacity_after,
        "the channel's capacity once locked is what the quote said ({quote:?})"
    );
    assert_eq!(
        quote.capacity_after.to_sat() as i64 - quote.capacity_before.to_sat() as i64,
        quote.net_value.to_sat(),
        "the capacity changes by our net contribution"
    );
    assert!(a.coordinator().locked_coins().is_empty());

    // A splice that has locked cannot be cancelled; an unknown id is unknown.
    let err = a.cancel_splice(id).expect_err("cancel after lock");
    assert!(
        matches!(&err, SpliceError::NotCancellable { id: i, state: SpliceState::Locked } if *i == id),
        "{err:?}"
    );
    assert_mentions(&err, &[&id.to_string(), "locked", "cancel"]);
    assert_eq!(a.splice_status(id).unwrap().state, SpliceState::Locked);
    let unknown = SpliceId(id.0 + 1000);
    let err = a
        .cancel_splice(unknown)
        .expect_err("cancel of an unknown splice");
    assert!(
        matches!(err, SpliceError::UnknownSplice(i) if i == unknown),
        "{err:?}"
    );
    assert_mentions(&err, &[&unknown.to_string()]);
}

fn check_record_against_quote(record: &ldk_splice::SpliceRecord, quote: &SpliceQuote) {
    assert_eq!(record.fee, quote.fee, "fee as quoted");
    assert_eq!(record.inputs, quote.inputs, "wallet inputs as quoted");
    assert_eq!(
        record.change.as_ref().map(|c| c.value),
        quote.change,
        "change as quoted"
    );
    assert_eq!(
        record.net_value.to_sat(),
        quote.net_value.to_sat(),
        "net value as quoted"
    );
    assert_eq!(
        record.feerate.to_sat_per_kwu(),
        quote.feerate.to_sat_per_kwu()
    );
    assert_eq!(record.capacity_before, quote.capacity_before);
}

fn check_tx_against_quote(chain: &DevChain, tx: &Transaction, quote: &SpliceQuote) {
    assert_eq!(
        fee_of(chain, tx),
        quote.fee,
        "the transaction pays the quoted fee"
    );
    for outpoint in &quote.inputs {
        assert!(
            tx.input.iter().any(|i| i.previous_output == *outpoint),
            "quoted input {outpoint} spent"
        );
    }
    // The peer adds nothing, so the transaction is what we built; signatures
    // may come out a byte shorter than the estimate, never longer.
    let weight = tx.weight().to_wu();
    assert!(
        weight <= quote.weight.to_wu() && quote.weight.to_wu() - weight <= 8,
        "transaction weighs {weight} wu, quoted {} wu",
        quote.weight.to_wu()
    );
}

/// Quote a splice-in, then do it: fee, inputs, change, weight and the
/// capacity once locked are what the quote said, and quoting reserved
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quote_matches_the_splice_in_that_follows() {
    let setup = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let add = Amount::from_sat(250_000);
    check_quote_against_splice(&setup, splice_in_request(add), FeePolicy::fixed(FEERATE)).await;
    let a = &setup.alice.node;
    assert_eq!(
        a.channel(&setup.channel_id).unwrap().channel_value_satoshis,
        (CAPACITY + add).to_sat()
    );
}

/// The same for a splice-out, where the fee comes out of the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]

async fn quote_matches_the_splice_out_that_follows() {
    let setup = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let request = splice_out_request(Amount::from_sat(300_000), to(&external_p2wpkh()));
    check_quote_against_splice(&setup, request, FeePolicy::fixed(FEERATE)).await;
}

/// The same for a resize that adds and pays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]

async fn quote_matches_the_resize_that_follows() {
    let setup = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let request = ResizeRequest {
        add: Amount::from_sat(400_000),
        outputs: vec![Payout {
            to: to(&external_p2wpkh()),
            amount: Amount::from_sat(100_000),
        }],
    };
    check_quote_against_splice(&setup, request, FeePolicy::fixed(FEERATE)).await;
}

// ---- cancel before signing --------------------------------------------------

/// A splice held before signing (the peer never answers `stfu`) is cancelled:
/// its coins are released, LDK drops the contribution, and a second cancel
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_before_signing_releases_the_coins() {
    let setup = two_nodes_with_channel(CAPACITY, PAID_TO_BOB_MSAT).await;
    let (chain, a, b, channel_id) = (
        &setup.chain,
        &setup.alice.node,
        &setup.bob.node,
        setup.channel_id,
    );
    let bob = b.node_id();
    let policy = FeePolicy::fixed(FEERATE);

    b.stop().await.expect("Bob stops");
    a.wait_until(WAIT, "Alice to see Bob gone", |n| !n.is_connected(&bob))
        .await
        .expect("Bob disconnected");
    let fake = FakeBob::start(b, Behaviour::IgnoreStfu).await;
    a.connect(bob, fake.addr)
        .await
        .expect("Alice reaches Bob again");
    a.wait_until(WAIT, "the channel usable, with splice support", |n| {
        n.channel(&channel_id)
            .is_some_and(|c| c.is_usable && c.counterparty.features.supports_splicing())
    })
    .await
    .expect("channel usable again");

    let watch = Watch::new(chain, a, b);
    let quote = a
        .quote_splice(
            &channel_id,
            &bob,
            &splice_in_request(Amount::from_sat(200_000)),
            policy,
        )
        .expect("quote");
    let id = a
        .splice_in(&channel_id, &bob, Amount::from_sat(200_000), policy)
        .expect("splice-in starts");
    let held: BTreeSet<OutPoint> = a.coordinator().coins_held_by(id).into_iter().collect();
    assert_eq!(
        held,
        quote.inputs.iter().copied().collect(),
        "the quoted coins are reserved"
    );
    assert!(a.coordinator().locked_coins().iter().all(|(_, i)| *i == id));
    assert!(a.wallet().available_balance() < watch.before.available);

    // Alice asked Bob to quiesce; Bob's side swallowed it: the splice is
    // stuck before any transaction is built.
    a.wait_until(WAIT, "Bob to receive stfu", |_| {
        fake.handler.stfu_seen.load(Ordering::SeqCst) > 0
    })
    .await
    .expect("stfu sent");
    assert_eq!(a.splice_status(id).unwrap().state, SpliceState::Negotiating);
    assert_eq!(
        splice_candidates(a, &channel_id),
        1,
        "LDK holds our contribution"
    );

    let err = a
        .cancel_splice(SpliceId(id.0 + 1))
        .expect_err("cancel of an unknown id");
    assert!(matches!(err, SpliceError::UnknownSplice(_)), "{err:?}");
    assert_eq!(
        a.coordinator()
            .coins_held_by(id)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        held,
        "an unknown id releases nothing"
    );

    a.cancel_splice(id).expect("cancel before signing");
    assert_eq!(a.splice_status(id).unwrap().state, SpliceState::Cancelled);
    assert!(a.coordinator().locked_coins().is_empty(), "coins released");
    assert_eq!(a.wallet().available_balance(), watch.before.available);
    assert_eq!(
        splice_candidates(a, &channel_id),
        0,
        "LDK dropped our contribution"
    );
    assert_eq!(
        chain.mempool_txids().into_iter().collect::<BTreeSet<_>>(),
        watch.before.mempool
    );
    let err = a.cancel_splice(id).expect_err("second cancel");
    assert!(
        matches!(&err, SpliceError::NotCancellable { id: i, state: SpliceState::Cancelled } if *i == id),
        "{err:?}"
    );
    assert_mentions(&err, &[&id.to_string(), "cancelled"]);

    // Cancelling while waiting on the peer's stfu drops the connection (LDK
    // cannot leave quiescence otherwise); once Alice is back, the released
    // coins are spendable again: the same splice quotes the same coins.
    a.wait_until(WAIT, "Alice to reconnect after the cancel", |n| {
        fake.handler.connections.load(Ordering::SeqCst) >= 2
            && n.channel(&channel_id).is_some_and(|c| c.is_usable)
    })
    .await
    .expect("reconnected");
    let again = a
        .quote_splice(
            &channel_id,
            &bob,
            &splice_in_request(Amount::from_sat(200_000)),
            policy,
        )
        .expect("quote after the cancel");
    assert_eq!(again.inputs, quote.inputs);
    assert!(a.coordinator().locked_coins().is_empty());
    assert_eq!(a.splice_status(id).unwrap().state, SpliceState::Cancelled);
}
