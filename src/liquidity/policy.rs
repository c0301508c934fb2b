//! How a liquidity service prices and limits orders: a trait an LSP can
//! implement to price per client or per moment, and static terms from
//! configuration as the default.

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate};

use super::msgs::{Terms, PROTOCOL_VERSION};

/// What a service offers each client and the limits it keeps.
pub trait LiquidityPolicy: Send + Sync {
    /// The terms `client` gets now; `feerate` is the node's funding
    /// estimate (a policy may quote another).
    fn terms(&self, client: &PublicKey, feerate: FeeRate) -> Terms;

    /// The most requests (of any method) one client may make per minute.
    fn max_requests_per_minute(&self, client: &PublicKey) -> u32;

    /// The most the service has in orders paid or splicing at once.
    fn max_committed(&self) -> Amount;
}

/// Static terms from configuration: the default [`LiquidityPolicy`]. Set
/// what you change and take the rest from `StaticTerms::default()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticTerms {
    /// The least an order may add.
    pub min_amount: Amount,
    /// The most an order may add.
    pub max_amount: Amount,
    /// Charged per order.
    pub fee_base: Amount,
    /// Charged per amount, in basis points (1/10 000).
    pub fee_basis: u16,
    /// The weight the service's inputs and outputs add to a splice (the
    /// client pays for it at the order's feerate). The default, 500 WU,
    /// covers one P2WPKH input and one change output with room to spare.
    pub funding_weight: u32,
    /// How long an order keeps its terms (seconds).
    pub quote_valid_secs: u32,
    /// How long an order's invoice can be paid (seconds).
    pub invoice_valid_secs: u32,
    /// The most orders a client may have open at once.
    pub max_open_orders_per_peer: u16,
    /// The fewest confirmations a channel's funding needs.
    pub min_channel_age_blocks: u32,
    /// The most requests one client may make per minute.
    pub max_requests_per_minute: u32,
    /// The most the service has in orders paid or splicing at once.
    pub max_committed: Amount,
}

impl Default for StaticTerms {
    fn default() -> Self {
        StaticTerms {
            min_amount: Amount::from_sat(100_000),
            max_amount: Amount::from_sat(10_000_000),
            fee_base: Amount::from_sat(1_000),
            fee_basis: 100,
            funding_weight: 500,
            quote_valid_secs: 600,
            invoice_valid_secs: 600,
            max_open_orders_per_peer: 2,
            min_channel_age_blocks: 6,
            max_requests_per_minute: 30,
            max_committed: Amount::from_sat(50_000_000),
        }
    }
}

impl LiquidityPolicy for StaticTerms {
    fn terms(&self, _client: &PublicKey, feerate: FeeRate) -> Terms {
        Terms {
            version: PROTOCOL_VERSION,
            min_amount: self.min_amount,
            max_amount: self.max_amount,
            fee_base: self.fee_base,
            fee_basis: self.fee_basis,
            funding_weight: self.funding_weight,
            feerate,
            quote_valid_secs: self.quote_valid_secs,
            invoice_valid_secs: self.invoice_valid_secs,
            max_open_orders_per_peer: self.max_open_orders_per_peer,
            min_channel_age_blocks: self.min_channel_age_blocks,
        }
    }

    fn max_requests_per_minute(&self, _client: &PublicKey) -> u32 {
        self.max_requests_per_minute
    }

    fn max_committed(&self) -> Amount {
        self.max_committed
    }
}
