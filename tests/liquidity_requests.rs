//! Peers asking for splices: a client orders inbound liquidity from its
//! channel counterparty, pays the fee over Lightning, and the service
//! splices the amount in from its wallet, claiming the fee only once the
//! splice is broadcast. Real nodes over TCP on the devchain.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::secp256k1::PublicKey;
use bitcoin::Amount;
use common::*;
use ldk_splice::devchain::DevChain;
use ldk_splice::liquidity::{
    ClientError, LiquidityPolicy, OrderError, OrderState, RawMessage, StaticTerms, Terms,
    LSPS_MESSAGE_TYPE, PROTOCOL_NUMBER,
};
use ldk_splice::node::{Node, NodeError, PaymentStatus};
use ldk_splice::{LogBridge, SpliceState};
use lightning::ln::msgs::{DecodeError, Init, LightningError};
use lightning::ln::peer_handler::{
    CustomMessageHandler, ErroringMessageHandler, IgnoringMessageHandler, MessageHandler,
};
use lightning::ln::types::ChannelId;
use lightning::ln::wire::CustomMessageReader;
use lightning::sign::{EntropySource, KeysManager};
use lightning::types::features::{InitFeatures, NodeFeatures};
use lightning::util::ser::LengthLimitedRead;
use serde_json::{json, Value};

const CAPACITY: Amount = Amount::from_sat(1_000_000);
const AMOUNT: Amount = Amount::from_sat(500_000);
const MAX_FEE: Amount = Amount::from_sat(20_000);
/// What the client pays the service before any order.
const PREPAID_MSAT: u64 = 10_000_000;

/// A service node (with `policy`) and a client node with a confirmed
/// channel the client opened to the service.
struct Pair {
    chain: DevChain,
    service: TestNode,
    client: TestNode,
    channel_id: ChannelId,
}

async fn service_node(chain: &DevChain, policy: Arc<dyn LiquidityPolicy>) -> TestNode {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = builder(chain, dir.path())
        .liquidity_service(policy)
        .start()
        .await
        .expect("service starts");
    TestNode { node, dir }
}

async fn pair(policy: StaticTerms) -> Pair {
    let chain = start_chain().await;
    let service = service_node(&chain, Arc::new(policy)).await;
    let client = start_node(&chain).await;
    fund_nodes(&chain, &[&service.node, &client.node]).await;
    let (channel_id, _) =
        open_channel(&chain, &client.node, &service.node, CAPACITY, Amount::ZERO).await;
    // The service holds a balance from the start, so the commitment already
    // carries both anchors and the fee moves exactly the fee.
    pay(&client.node, &service.node, PREPAID_MSAT).await;
    Pair {
        chain,
        service,
        client,
        channel_id,
    }
}

fn terms() -> StaticTerms {
    StaticTerms::default()
}

fn refused(result: Result<impl std::fmt::Debug, NodeError>) -> OrderError {
    match result {
        Err(NodeError::Liquidity(ClientError::Refused(error))) => {
            OrderError::from_rpc(&error).unwrap_or_else(|| panic!("not an order error: {error:?}"))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Nothing was spliced or claimed on the service's side.
fn assert_nothing_happened(service: &Node) {
    assert!(
        service.coordinator().list_splices().is_empty(),
        "no splice: {:?}",
        service.coordinator().list_splices()
    );
    assert!(
        service
            .list_payments()
            .iter()
            .all(|p| p.status != PaymentStatus::Succeeded || p.amount_msat == Some(PREPAID_MSAT)),
        "no fee claimed: {:?}",
        service.list_payments()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buying_inbound_liquidity_adds_exactly_the_amount() {
    let Pair {
        chain,
        service,
        client,
        channel_id,
    } = pair(terms()).await;
    let (s, c) = (&service.node, &client.node);

    let quoted = c.liquidity_terms(s.node_id()).await.expect("terms");
    assert_eq!(quoted.min_amount, Amount::from_sat(100_000));
    let service_wallet_before = s.onchain_balance().confirmed;
    let client_wallet_before = c.onchain_balance().confirmed;
    let client_channel_before = c.channel_balance(&channel_id).unwrap();
    let service_channel_before = s.channel_balance(&channel_id).unwrap();

    let order = c
        .buy_liquidity(&channel_id, AMOUNT, MAX_FEE, Some("first-order".into()))
        .await
        .expect("order placed and paid")
        .order;
    let fee = order.fee.clone();
    assert_eq!(fee.base, Amount::from_sat(1_000));
    assert_eq!(fee.proportional, Amount::from_sat(5_000), "1% of 500 000");
    assert_eq!(
        fee.mining.to_sat(),
        (500 * fee.feerate.to_sat_per_kwu()).div_ceil(1000),
        "500 WU at the order's feerate"
    );
    assert_eq!(fee.total, fee.base + fee.proportional + fee.mining);

    // The service splices; the fee is claimed once the splice is out.
    let splice_id = s
        .wait_until(WAIT, "the service's splice", |n| {
            n.liquidity_service_orders()
                .iter()
                .any(|o| o.splice.is_some())
        })
        .await
        .map(|()| s.liquidity_service_orders()[0].splice.unwrap())
        .expect("splice started");
    let record = s
        .wait_for_splice(splice_id, WAIT, |s| s.is_broadcast())
        .await
        .expect("broadcast");
    assert_eq!(record.add, AMOUNT);
    assert_eq!(
        record.feerate, fee.feerate,
        "spliced at the order's feerate"
    );
    let txid = record.txid.unwrap();
    wait_in_mempool(&chain, &txid).await;
    let invoice: lightning::bolt11_invoice::Bolt11Invoice = order.invoice.parse().unwrap();
    let hash = invoice.payment_hash();
    let paid = c.wait_for_payment(&hash, WAIT).await.expect("fee settles");
    assert_eq!(paid.status, PaymentStatus::Succeeded);
    assert_eq!(paid.fee_paid_msat, Some(0));
    assert_eq!(paid.amount_msat, Some(fee.total.to_sat() * 1000));

    // A double click: the same client_order_id gets the same order, paid
    // once, and no second splice.
    let again = c
        .buy_liquidity(&channel_id, AMOUNT, MAX_FEE, Some("first-order".into()))
        .await
        .expect("same order");
    assert_eq!(again.order.order_id, order.order_id);
    assert_eq!(c.list_payments().len(), 2, "the fee paid once");
    assert_eq!(s.liquidity_service_orders().len(), 1);

    let record = mine_to_lock(&chain, s, c, splice_id).await;
    assert_eq!(s.coordinator().list_splices().len(), 1, "one splice");
    let done = c
        .wait_for_liquidity_order(&order.order_id, WAIT, |s| s.is_final())
        .await
        .expect("order final");
    assert_eq!(
        done.order.state,
        OrderState::Completed {
            txid: record.txid.unwrap()
        }
    );
    let splice_tx = chain.transaction(&txid).unwrap();
    assert_eq!(fee_of(&chain, &splice_tx), record.fee);

    // Exact balances: the channel grew by the amount; the client paid the
    // fee over it; the service's wallet paid the amount and the mining fee.
    let channel = c.channel(&channel_id).unwrap();
    assert_eq!(channel.channel_value_satoshis, (CAPACITY + AMOUNT).to_sat());
    assert_eq!(
        c.channel_balance(&channel_id).unwrap(),
        client_channel_before - fee.total
    );
    assert_eq!(
        s.channel_balance(&channel_id).unwrap(),
        service_channel_before + AMOUNT + fee.total,
        "the client's inbound side grew by the amount (and the fee it paid)"
    );
    assert_eq!(c.onchain_balance().confirmed, client_wallet_before);
    s.wait_until(WAIT, "service wallet to see the splice", |n| {
        n.onchain_balance().confirmed == service_wallet_before - AMOUNT - record.fee
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "service wallet {:?}, expected {}",
            s.onchain_balance(),
            service_wallet_before - AMOUNT - record.fee
        )
    });
    assert!(s.coordinator().locked_coins().is_empty());

    // Both sides kept the order, and said so in events.
    let service_states: Vec<OrderState> = s
        .take_liquidity_events()
        .into_iter()
        .filter_map(|e| match e {
            ldk_splice::liquidity::LiquidityEvent::ServiceOrderChanged { order, .. } => {
                Some(order.state)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        service_states,
        vec![
            OrderState::Created,
            OrderState::Paid,
            OrderState::Splicing { txid },
            OrderState::Completed { txid },
        ]
    );
    let restarted = restart(&chain, client).await;
    let kept = restarted.node.liquidity_orders();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].order.state, OrderState::Completed { txid });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_limit_refuses_without_splice_or_claim() {
    let policy = StaticTerms {
        min_amount: Amount::from_sat(100_000),
        max_amount: Amount::from_sat(600_000),
        max_committed: Amount::from_sat(400_000),
        max_open_orders_per_peer: 1,
        min_channel_age_blocks: 10,
        max_requests_per_minute: 14,
        ..StaticTerms::default()
    };
    let Pair {
        chain,
        service,
        client,
        channel_id,
    } = pair(policy).await;
    let (s, c) = (&service.node, &client.node);

    // Six confirmations of ten: too young.
    let young = refused(c.buy_liquidity(&channel_id, AMOUNT, MAX_FEE, None).await);
    assert_eq!(
        young,
        OrderError::ChannelTooYoung {
            min_channel_age_blocks: 10
        }
    );
    mine(&chain, 4, &[s, c]).await;

    let small = refused(
        c.buy_liquidity(&channel_id, Amount::from_sat(99_999), MAX_FEE, None)
            .await,
    );
    let range = OrderError::AmountOutOfRange {
        min: Amount::from_sat(100_000),
        max: Amount::from_sat(600_000),
    };
    assert_eq!(small, range);
    let large = refused(
        c.buy_liquidity(&channel_id, Amount::from_sat(600_001), MAX_FEE, None)
            .await,
    );
    assert_eq!(large, range);
    // In range, but more than the service commits at once.
    let committed = refused(
        c.buy_liquidity(&channel_id, Amount::from_sat(500_000), MAX_FEE, None)
            .await,
    );
    assert!(
        matches!(committed, OrderError::LiquidityUnavailable { .. }),
        "{committed:?}"
    );
    let unknown = ChannelId([7; 32]);
    let id = c.liquidity_client().create_order(
        s.node_id(),
        ldk_splice::liquidity::CreateOrder {
            channel_id: unknown,
            amount: Amount::from_sat(200_000),
            client_order_id: "unknown-channel".into(),
        },
    );
    c.peer_manager().process_events();
    let answer = wait_answer(c, &id).await;
    assert!(
        matches!(&answer, Err(ClientError::Refused(e)) if OrderError::from_rpc(e) == Some(OrderError::UnknownChannel)),
        "{answer:?}"
    );

    // A fee above the client's limit: refused from the terms, before any
    // order exists.
    let costly = c
        .buy_liquidity(
            &channel_id,
            Amount::from_sat(200_000),
            Amount::from_sat(10),
            Some("too-dear".into()),
        )
        .await;
    assert!(
        matches!(
            costly,
            Err(NodeError::Liquidity(ClientError::FeeAboveLimit { max_fee, .. }))
                if max_fee == Amount::from_sat(10)
        ),
        "{costly:?}"
    );
    assert!(s.liquidity_service_orders().is_empty(), "nothing ordered");
    // An order left unpaid is open, so a second one is one too many.
    order_unpaid(c, s, channel_id, Amount::from_sat(200_000), "unpaid").await;
    let many = refused(
        c.buy_liquidity(&channel_id, Amount::from_sat(200_000), MAX_FEE, None)
            .await,
    );
    assert_eq!(many, OrderError::TooManyOpenOrders { max: 1 });
    // Its client_order_id cannot name another order.
    let reused = refused(
        c.buy_liquidity(
            &channel_id,
            Amount::from_sat(300_000),
            MAX_FEE,
            Some("unpaid".into()),
        )
        .await,
    );
    assert_eq!(reused, OrderError::ClientOrderIdReused);

    // Requests over the per-minute limit (14, all made above).
    let mut limited = None;
    for _ in 0..10 {
        if let Err(e) = c.liquidity_terms(s.node_id()).await {
            limited = Some(e);
            break;
        }
    }
    let limited = refused(Err::<(), _>(limited.expect("rate limited")));
    assert!(
        matches!(limited, OrderError::RateLimited { retry_after_secs } if retry_after_secs <= 60),
        "{limited:?}"
    );

    assert_nothing_happened(s);
    assert_eq!(c.list_payments().len(), 1, "the client paid no fee");
    assert!(c.is_connected(&s.node_id()), "never disconnected");
}

/// Orders `amount` on `channel_id` from `s` through `c`'s client without
/// paying; returns the order the service made.
async fn order_unpaid(
    c: &Node,
    s: &Node,
    channel_id: ChannelId,
    amount: Amount,
    client_order_id: &str,
) -> ldk_splice::liquidity::Order {
    let id = c.liquidity_client().create_order(
        s.node_id(),
        ldk_splice::liquidity::CreateOrder {
            channel_id,
            amount,
            client_order_id: client_order_id.into(),
        },
    );
    c.peer_manager().process_events();
    match wait_answer(c, &id).await {
        Ok(ldk_splice::liquidity::Answer::Order(order)) => order,
        other => panic!("{other:?}"),
    }
}

async fn wait_answer(
    node: &Node,
    id: &ldk_splice::liquidity::RequestId,
) -> Result<ldk_splice::liquidity::Answer, ClientError> {
    let mut answer = None;
    node.wait_until(WAIT, "an answer", |n| {
        answer = n.liquidity_client().take_answer(id);
        answer.is_some()
    })
    .await
    .expect("answered");
    answer.unwrap()
}

/// The client's fee payment ended one way or the other, and the outcome is
/// consistent: completed with the liquidity added and the fee paid, or
/// failed with the fee back and nothing added.
async fn assert_fee_only_with_liquidity(
    chain: &DevChain,
    s: &Node,
    c: &Node,
    channel_id: &ChannelId,
    order_id: &str,
    client_channel_before: Amount,
) -> OrderState {
    let service_order = || {
        s.liquidity_service_orders()
            .into_iter()
            .find(|o| o.order.order_id == order_id)
            .expect("service keeps the order")
    };
    // Mine while the splice confirms, if there is one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !service_order().order.state.is_final() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "order never ended: {:?}",
            service_order()
        );
        if matches!(service_order().order.state, OrderState::Splicing { .. }) {
            mine(chain, 1, &[s, c]).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let order = service_order();
    let fee = order.order.fee.total;
    let invoice: lightning::bolt11_invoice::Bolt11Invoice = order.order.invoice.parse().unwrap();
    let paid = c
        .wait_for_payment(&invoice.payment_hash(), WAIT)
        .await
        .expect("the fee payment ends");
    match &order.order.state {
        OrderState::Completed { .. } => {
            assert_eq!(paid.status, PaymentStatus::Succeeded);
            assert_eq!(
                c.channel(channel_id).unwrap().channel_value_satoshis,
                (CAPACITY + order.order.amount).to_sat()
            );
            assert_eq!(
                c.channel_balance(channel_id).unwrap(),
                client_channel_before - fee
            );
        }
        OrderState::Failed { .. } | OrderState::Expired => {
            assert_eq!(paid.status, PaymentStatus::Failed, "fee failed back");
            assert_eq!(
                c.channel_balance(channel_id).unwrap(),
                client_channel_before,
                "the client has its fee back"
            );
            assert!(
                !s.list_payments()
                    .iter()
                    .any(|p| p.payment_hash == invoice.payment_hash().to_string()
                        && p.status == PaymentStatus::Succeeded),
                "the service kept no fee"
            );
            assert_eq!(
                s.payment(&invoice.payment_hash()).map(|p| p.status),
                Some(PaymentStatus::Failed),
                "the service records the fee as failed back"
            );
            let spliced = s
                .coordinator()
                .list_splices()
                .into_iter()
                .any(|r| r.state == SpliceState::Locked || r.state.is_broadcast());
            assert!(!spliced, "no liquidity went out without its fee");
        }
        other => panic!("not final: {other:?}"),
    }
    order.order.state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unfundable_splice_fails_the_fee_back() {
    let Pair {
        chain,
        service,
        client,
        channel_id,
    } = pair(terms()).await;
    let (s, c) = (&service.node, &client.node);
    let before = c.channel_balance(&channel_id).unwrap();
    let order = order_unpaid(c, s, channel_id, AMOUNT, "unfundable").await;
    // The service's only coin gets taken by a payment it has not sent yet:
    // when the fee arrives, nothing can fund the splice.
    let held = s
        .wallet()
        .build_payment(
            address_of(c).script_pubkey(),
            Amount::from_sat(10_000),
            bitcoin::FeeRate::from_sat_per_vb(2).unwrap(),
        )
        .expect("payment built");
    let invoice = order.invoice.parse().unwrap();
    c.pay_invoice(&invoice).expect("fee sent");
    let state =
        assert_fee_only_with_liquidity(&chain, s, c, &channel_id, &order.order_id, before).await;
    assert!(
        matches!(&state, OrderState::Failed { reason } if reason.contains("could not start")),
        "{state:?}"
    );
    s.wallet().payment_abandoned(&held).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_paid_after_it_expired_is_failed_back() {
    let policy = StaticTerms {
        quote_valid_secs: 1,
        ..StaticTerms::default()
    };
    let Pair {
        chain,
        service,
        client,
        channel_id,
    } = pair(policy).await;
    let (s, c) = (&service.node, &client.node);
    let before = c.channel_balance(&channel_id).unwrap();
    let order = order_unpaid(c, s, channel_id, AMOUNT, "late").await;
    s.wait_until(WAIT, "the order to expire", |n| {
        n.liquidity_service_orders()[0].order.state == OrderState::Expired
    })
    .await
    .expect("expired");
    // Its invoice is still payable (it lives longer than the quote): the
    // service must not take the money.
    c.pay_invoice(&order.invoice.parse().unwrap())
        .expect("fee sent");
    let state =
        assert_fee_only_with_liquidity(&chain, s, c, &channel_id, &order.order_id, before).await;
    assert_eq!(state, OrderState::Expired);
    assert_nothing_happened(s);
    let refreshed = c.refresh_liquidity_order(&order.order_id).await.unwrap();
    assert_eq!(refreshed.order.state, OrderState::Expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_gone_during_the_splice_gets_liquidity_or_its_fee_back() {
    let Pair {
        chain,
        service,
        client,
        channel_id,
    } = pair(terms()).await;
    let (s, c) = (&service.node, &client.node);
    let before = c.channel_balance(&channel_id).unwrap();
    let order = c
        .buy_liquidity(&channel_id, AMOUNT, MAX_FEE, None)
        .await
        .expect("paid")
        .order;
    s.wait_until(WAIT, "the fee to arrive", |n| {
        n.liquidity_service_orders()[0].order.state != OrderState::Created
    })
    .await
    .expect("paid");
    c.disconnect(&s.node_id());
    s.wait_until(WAIT, "the client gone", |n| !n.is_connected(&c.node_id()))
        .await
        .expect("disconnected");
    // The client comes back (its reconnect task dials the service).
    c.wait_until(WAIT, "the client back", |n| n.is_connected(&s.node_id()))
        .await
        .expect("reconnected");
    let state =
        assert_fee_only_with_liquidity(&chain, s, c, &channel_id, &order.order_id, before).await;
    eprintln!("client gone during the splice: the order ended {state:?}");
    let splices = s.coordinator().list_splices();
    assert!(splices.len() <= 1, "one splice at most: {splices:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_restarted_after_the_payment_still_splices_once() {
    let Pair {
        chain,
        service,
        client,
        channel_id,
    } = pair(terms()).await;
    let c = &client.node;
    let before = c.channel_balance(&channel_id).unwrap();
    let order = c
        .buy_liquidity(&channel_id, AMOUNT, MAX_FEE, None)
        .await
        .expect("paid")
        .order;
    service
        .node
        .wait_until(WAIT, "the fee to arrive", |n| {
            n.liquidity_service_orders()[0].order.state != OrderState::Created
        })
        .await
        .expect("paid");
    let service_dir = service.dir;
    let service_addr = service.node.listen_addr();
    service.node.stop().await.expect("service stops");
    eprintln!(
        "service stopped with its order {:?} and splices {:?}",
        service.node.liquidity_service_orders()[0].order.state,
        service
            .node
            .coordinator()
            .list_splices()
            .iter()
            .map(|r| r.state.clone())
            .collect::<Vec<_>>()
    );
    drop(service.node);
    let s = builder(&chain, service_dir.path())
        .listen(service_addr)
        .liquidity_service(Arc::new(terms()))
        .start()
        .await
        .expect("service starts again");
    c.wait_until(WAIT, "the client back", |n| n.is_connected(&s.node_id()))
        .await
        .expect("reconnected");
    assert_eq!(s.liquidity_service_orders().len(), 1, "the order survived");
    let state =
        assert_fee_only_with_liquidity(&chain, &s, c, &channel_id, &order.order_id, before).await;
    eprintln!("service restarted: the order ended {state:?}");
    // Whatever the restart cut (nothing started, a splice mid-negotiation
    // that LDK then drops, a splice signed), the order is carried through.
    assert!(matches!(state, OrderState::Completed { .. }), "{state:?}");
    let splices = s.coordinator().list_splices();
    let live: Vec<_> = splices
        .iter()
        .filter(|r| !matches!(r.state, SpliceState::Failed { .. }))
        .collect();
    assert_eq!(live.len(), 1, "one splice carried the order: {splices:?}");
    let _keep = service_dir;
}

/// lightning-liquidity's LSPS1 and LSPS2 services and this protocol on one
/// node: the client uses all three, in turn, twice, and no side ignores
/// the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lsps1_lsps2_and_our_protocol_share_the_message_type() {
    use lightning_liquidity::events::LiquidityEvent as LspsEvent;
    use lightning_liquidity::lsps0::event::LSPS0ClientEvent;
    use lightning_liquidity::lsps0::ser::LSPSDateTime;
    use lightning_liquidity::lsps1::client::LSPS1ClientConfig;
    use lightning_liquidity::lsps1::event::LSPS1ClientEvent;
    use lightning_liquidity::lsps2::event::{LSPS2ClientEvent, LSPS2ServiceEvent};
    use lightning_liquidity::lsps2::msgs::LSPS2RawOpeningFeeParams;
    use lightning_liquidity::LiquidityClientConfig;
    use std::str::FromStr;

    let chain = start_chain().await;
    let options = lsps1_options();
    let service_dir = tempfile::tempdir().unwrap();
    let s = builder(&chain, service_dir.path())
        .liquidity_service(Arc::new(terms()))
        .lsps_service(lsps_services())
        .start()
        .await
        .unwrap();
    let client_dir = tempfile::tempdir().unwrap();
    let c = builder(&chain, client_dir.path())
        .lsps_client(LiquidityClientConfig {
            lsps1_client_config: Some(LSPS1ClientConfig {
                max_channel_fees_msat: None,
            }),
            lsps2_client_config: Some(lightning_liquidity::lsps2::client::LSPS2ClientConfig {}),
            lsps5_client_config: None,
        })
        .start()
        .await
        .unwrap();
    c.connect(s.node_id(), s.listen_addr()).await.unwrap();
    let lsps = c.lsps_manager().expect("LSPS client").clone();
    let next_lsps_event = |what: &'static str| {
        let lsps = lsps.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                if let Some(event) = lsps.next_event() {
                    return event;
                }
                assert!(tokio::time::Instant::now() < deadline, "no {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // Discovery lists both LSPS1 and this protocol.
    lsps.lsps0_client_handler().list_protocols(&s.node_id());
    c.peer_manager().process_events();
    match next_lsps_event("list_protocols answer").await {
        LspsEvent::LSPS0Client(LSPS0ClientEvent::ListProtocolsResponse { protocols, .. }) => {
            assert_eq!(protocols, vec![1, 2, PROTOCOL_NUMBER]);
        }
        other => panic!("{other:?}"),
    }
    // Ours, then LSPS1, then a method nobody knows, then both again.
    for round in 0..2 {
        let terms: Terms = c.liquidity_terms(s.node_id()).await.expect("our terms");
        assert_eq!(terms.min_amount, Amount::from_sat(100_000));
        lsps.lsps1_client_handler()
            .unwrap()
            .request_supported_options(s.node_id());
        c.peer_manager().process_events();
        match next_lsps_event("LSPS1 options").await {
            LspsEvent::LSPS1Client(LSPS1ClientEvent::SupportedOptionsReady {
                supported_options,
                ..
            }) => assert_eq!(supported_options, options, "round {round}"),
            other => panic!("{other:?}"),
        }
        // LSPS2 asks the service's application for its fee menu.
        lsps.lsps2_client_handler()
            .unwrap()
            .request_opening_params(s.node_id(), None);
        c.peer_manager().process_events();
        let service_lsps = s.lsps_manager().expect("LSPS service").clone();
        let deadline = tokio::time::Instant::now() + WAIT;
        let (request_id, client_id) = loop {
            if let Some(LspsEvent::LSPS2Service(LSPS2ServiceEvent::GetInfo {
                request_id,
                counterparty_node_id,
                ..
            })) = service_lsps.next_event()
            {
                break (request_id, counterparty_node_id);
            }
            assert!(tokio::time::Instant::now() < deadline, "no LSPS2 get_info");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(client_id, c.node_id());
        let fee_params = LSPS2RawOpeningFeeParams {
            min_fee_msat: 10_000_000,
            proportional: 1_000,
            valid_until: LSPSDateTime::from_str("2035-05-20T08:30:45Z").unwrap(),
            min_lifetime: 144,
            max_client_to_self_delay: 2016,
            min_payment_size_msat: 1_000_000,
            max_payment_size_msat: 1_000_000_000,
        };
        service_lsps
            .lsps2_service_handler()
            .unwrap()
            .opening_fee_params_generated(&client_id, request_id, vec![fee_params])
            .expect("menu sent");
        s.peer_manager().process_events();
        match next_lsps_event("LSPS2 fee menu").await {
            LspsEvent::LSPS2Client(LSPS2ClientEvent::OpeningParametersReady {
                opening_fee_params_menu,
                ..
            }) => {
                assert_eq!(opening_fee_params_menu.len(), 1, "round {round}");
                assert_eq!(opening_fee_params_menu[0].min_fee_msat, 10_000_000);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(c.is_connected(&s.node_id()));
    drop((service_dir, client_dir));
}

/// A peer of the test's own: sends raw payloads on message type 37913 and
/// keeps what comes back.
#[derive(Default)]
struct RawPeer {
    outbox: Mutex<Vec<(PublicKey, RawMessage)>>,
    inbox: Mutex<Vec<Vec<u8>>>,
}

impl RawPeer {
    /// Sends `payload` to `to` through `pm`.
    fn send(&self, pm: &RawPeerManager, to: PublicKey, payload: Vec<u8>) {
        self.outbox
            .lock()
            .unwrap()
            .push((to, RawMessage { payload }));
        pm.process_events();
    }

    /// The next answer, as JSON.
    async fn answer(&self, what: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(answer) = self.inbox.lock().unwrap().pop() {
                return serde_json::from_slice(&answer).expect("answers are JSON");
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: no answer");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl CustomMessageReader for RawPeer {
    type CustomMessage = RawMessage;
    fn read<R: LengthLimitedRead>(
        &self,
        message_type: u16,
        buffer: &mut R,
    ) -> Result<Option<RawMessage>, DecodeError> {
        if message_type != LSPS_MESSAGE_TYPE {
            return Ok(None);
        }
        let mut payload = vec![0u8; buffer.remaining_bytes() as usize];
        buffer
            .read_exact(&mut payload)
            .map_err(|_| DecodeError::ShortRead)?;
        Ok(Some(RawMessage { payload }))
    }
}

impl CustomMessageHandler for RawPeer {
    fn handle_custom_message(&self, msg: RawMessage, _: PublicKey) -> Result<(), LightningError> {
        self.inbox.lock().unwrap().push(msg.payload);
        Ok(())
    }
    fn get_and_clear_pending_msg(&self) -> Vec<(PublicKey, RawMessage)> {
        std::mem::take(&mut *self.outbox.lock().unwrap())
    }
    fn peer_disconnected(&self, _: PublicKey) {}
    fn peer_connected(&self, _: PublicKey, _: &Init, _: bool) -> Result<(), ()> {
        Ok(())
    }
    fn provided_node_features(&self) -> NodeFeatures {
        NodeFeatures::empty()
    }
    fn provided_init_features(&self, _: PublicKey) -> InitFeatures {
        InitFeatures::empty()
    }
}

type RawPeerManager = lightning::ln::peer_handler::PeerManager<
    lightning_net_tokio::SocketDescriptor,
    Arc<ErroringMessageHandler>,
    IgnoringMessageHandler,
    IgnoringMessageHandler,
    Arc<LogBridge>,
    Arc<RawPeer>,
    Arc<KeysManager>,
    IgnoringMessageHandler,
>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_messages_get_error_answers_and_no_disconnect() {
    let chain = start_chain().await;
    let service_dir = tempfile::tempdir().unwrap();
    let s = &builder(&chain, service_dir.path())
        .liquidity_service(Arc::new(terms()))
        .lsps_service(lsps_services())
        .start()
        .await
        .unwrap();
    let keys = Arc::new(KeysManager::new(&[42; 32], 1, 1, true));
    let raw = Arc::new(RawPeer::default());
    let pm: Arc<RawPeerManager> = Arc::new(RawPeerManager::new(
        MessageHandler {
            chan_handler: Arc::new(ErroringMessageHandler::new()),
            route_handler: IgnoringMessageHandler {},
            onion_message_handler: IgnoringMessageHandler {},
            custom_message_handler: raw.clone(),
            send_only_message_handler: IgnoringMessageHandler {},
        },
        0,
        &keys.get_secure_random_bytes(),
        Arc::new(LogBridge),
        keys.clone(),
    ));
    let connection =
        lightning_net_tokio::connect_outbound(pm.clone(), s.node_id(), s.listen_addr())
            .await
            .expect("connects");
    tokio::spawn(connection);
    s.wait_until(WAIT, "the raw peer", |n| {
        n.peer_manager()
            .peer_by_node_id(&keys_node_id(&keys))
            .is_some()
    })
    .await
    .expect("raw peer connected");

    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let long = "x".repeat(65_000 - 200);
    let cases: Vec<(&str, Vec<u8>, i64)> = vec![
        ("truncated JSON", br#"{"jsonrpc":"2.0","id":"a","method":"ldk"#.to_vec(), -32700),
        ("not UTF-8", vec![0xff, 0xfe, 0x00, 0x7b], -32700),
        (
            "huge number",
            br#"{"jsonrpc":"2.0","id":"b","method":"ldksplice.create_order","params":{"channel_id":"00","amount_sat":1e999999,"client_order_id":"x"}}"#.to_vec(),
            -32700,
        ),
        (
            "amount as a huge integer",
            br#"{"jsonrpc":"2.0","id":"c","method":"ldksplice.create_order","params":{"channel_id":"0000000000000000000000000000000000000000000000000000000000000000","amount_sat":"340282366920938463463374607431768211456","client_order_id":"x"}}"#.to_vec(),
            -32602,
        ),
        (
            "deep nesting",
            format!(r#"{{"jsonrpc":"2.0","id":"d","method":"ldksplice.get_info","params":{deep}}}"#).into_bytes(),
            -32600,
        ),
        (
            "wrong types",
            br#"{"jsonrpc":"2.0","id":"e","method":"ldksplice.get_order","params":{"order_id":17}}"#.to_vec(),
            -32602,
        ),
        (
            "params not an object",
            br#"{"jsonrpc":"2.0","id":"f","method":"ldksplice.get_info","params":[1,2]}"#.to_vec(),
            -32602,
        ),
        (
            "a 65 KiB string",
            format!(r#"{{"jsonrpc":"2.0","id":"g","method":"ldksplice.get_order","params":{{"order_id":"{long}"}}}}"#).into_bytes(),
            -32600,
        ),
        (
            "unknown method of ours",
            br#"{"jsonrpc":"2.0","id":"h","method":"ldksplice.steal","params":{}}"#.to_vec(),
            -32601,
        ),
        (
            "unknown method of nobody",
            br#"{"jsonrpc":"2.0","id":"i","method":"lsps9.nothing","params":{}}"#.to_vec(),
            -32601,
        ),
        (
            "no jsonrpc version",
            br#"{"id":"j","method":"ldksplice.get_info","params":{}}"#.to_vec(),
            -32600,
        ),
        ("a bare number", b"12345678901234567890123456789".to_vec(), -32600),
        (
            "LSPS1 with bad params (lightning-liquidity would ignore the peer)",
            br#"{"jsonrpc":"2.0","id":"k","method":"lsps1.create_order","params":{"lsp_balance_sat":[]}}"#.to_vec(),
            -32602,
        ),
        (
            "an LSPS1 method that does not exist",
            br#"{"jsonrpc":"2.0","id":"l","method":"lsps1.steal","params":{}}"#.to_vec(),
            -32601,
        ),
        (
            "an answer to nothing anyone asked",
            br#"{"jsonrpc":"2.0","id":"m","result":{}}"#.to_vec(),
            0,
        ),
        ("empty", Vec::new(), -32700),
    ];
    let server = s.node_id();
    for (name, payload, code) in &cases {
        raw.send(&pm, server, payload.clone());
        if *code == 0 {
            // Not answered (there is nothing to answer), and harmless.
            continue;
        }
        let answer = raw.answer(name).await;
        assert_eq!(answer["jsonrpc"], "2.0", "{name}");
        assert_eq!(answer["error"]["code"], json!(code), "{name}: {answer}");
        assert!(
            s.peer_manager()
                .peer_by_node_id(&keys_node_id(&keys))
                .is_some(),
            "{name}: still connected"
        );
    }
    // After all that, both protocols still answer this peer.
    for (id, method) in [("ok1", "ldksplice.get_info"), ("ok2", "lsps1.get_info")] {
        let request = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": {} });
        raw.send(&pm, server, RawMessage::from_json(&request).payload);
        let answer = raw.answer(method).await;
        assert_eq!(answer["id"], id);
        assert!(answer["result"].is_object(), "{method}: {answer}");
    }
    assert!(
        raw.inbox.lock().unwrap().is_empty(),
        "one answer per request"
    );
    assert_nothing_happened(s);
    drop(service_dir);
}

fn lsps1_options() -> lightning_liquidity::lsps1::msgs::LSPS1Options {
    lightning_liquidity::lsps1::msgs::LSPS1Options {
        min_required_channel_confirmations: 0,
        min_funding_confirms_within_blocks: 6,
        supports_zero_channel_reserve: false,
        max_channel_expiry_blocks: 4032,
        min_initial_client_balance_sat: 0,
        max_initial_client_balance_sat: 0,
        min_initial_lsp_balance_sat: 100_000,
        max_initial_lsp_balance_sat: 10_000_000,
        min_channel_balance_sat: 100_000,
        max_channel_balance_sat: 10_000_000,
    }
}

fn lsps_services() -> lightning_liquidity::LiquidityServiceConfig {
    lightning_liquidity::LiquidityServiceConfig {
        lsps1_service_config: Some(lightning_liquidity::lsps1::service::LSPS1ServiceConfig {
            supported_options: lsps1_options(),
        }),
        lsps2_service_config: Some(lightning_liquidity::lsps2::service::LSPS2ServiceConfig {
            promise_secret: [7; 32],
        }),
        lsps5_service_config: None,
        advertise_service: true,
    }
}

fn keys_node_id(keys: &KeysManager) -> PublicKey {
    use lightning::sign::{NodeSigner, Recipient};
    keys.get_node_id(Recipient::Node).unwrap()
}
