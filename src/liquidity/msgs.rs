//! The protocol's methods, parameters, results and errors (see
//! `docs/liquidity-protocol.md`).

use bitcoin::{Amount, FeeRate, Txid};
use lightning::ln::types::ChannelId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::wire::{RpcError, INVALID_PARAMS};

/// The protocol number advertised through `lsps0.list_protocols`.
pub const PROTOCOL_NUMBER: u16 = 65101;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Every method of this protocol starts with this.
pub const METHOD_PREFIX: &str = "ldksplice.";
/// `get_info`: the service's terms.
pub const GET_INFO: &str = "ldksplice.get_info";
/// `create_order`: an order for liquidity on a channel.
pub const CREATE_ORDER: &str = "ldksplice.create_order";
/// `get_order`: an order's state.
pub const GET_ORDER: &str = "ldksplice.get_order";
/// LSPS0's protocol discovery.
pub const LIST_PROTOCOLS: &str = "lsps0.list_protocols";

/// The most a `sat` field may hold.
const MAX_SAT: u64 = 21_000_000 * 100_000_000;

/// Amounts travel as strings of decimal digits (LSPS0's `sat`).
mod sat_string {
    use bitcoin::Amount;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(amount: &Amount, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&amount.to_sat().to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        let text = String::deserialize(d)?;
        let valid =
            !text.is_empty() && text.len() <= 16 && text.bytes().all(|b| b.is_ascii_digit());
        let sat: u64 = valid
            .then(|| text.parse().ok())
            .flatten()
            .filter(|sat| *sat <= super::MAX_SAT)
            .ok_or_else(|| serde::de::Error::custom(format!("'{text}' is not an amount in sat")))?;
        Ok(Amount::from_sat(sat))
    }
}

/// Feerates travel as sat per 1000 weight units.
mod feerate_kwu {
    use bitcoin::FeeRate;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rate: &FeeRate, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(rate.to_sat_per_kwu())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FeeRate, D::Error> {
        let kwu = u32::deserialize(d)?;
        Ok(FeeRate::from_sat_per_kwu(u64::from(kwu)))
    }
}

/// What a service charges and allows, as `get_info` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Terms {
    /// The protocol version.
    pub version: u16,
    /// The least an order may add.
    #[serde(rename = "min_amount_sat", with = "sat_string")]
    pub min_amount: Amount,
    /// The most an order may add.
    #[serde(rename = "max_amount_sat", with = "sat_string")]
    pub max_amount: Amount,
    /// Charged per order.
    #[serde(rename = "fee_base_sat", with = "sat_string")]
    pub fee_base: Amount,
    /// Charged per amount, in basis points (1/10 000).
    pub fee_basis: u16,
    /// The weight the service's inputs and outputs add to a splice; the
    /// client pays for it at `feerate`.
    pub funding_weight: u32,
    /// The feerate the service would splice at now.
    #[serde(with = "feerate_kwu")]
    pub feerate: FeeRate,
    /// How long an order created from these terms keeps them.
    pub quote_valid_secs: u32,
    /// How long an order's invoice can be paid.
    pub invoice_valid_secs: u32,
    /// The most orders a client may have open at once.
    pub max_open_orders_per_peer: u16,
    /// The fewest confirmations a channel's funding needs.
    pub min_channel_age_blocks: u32,
}

impl Terms {
    /// What an order of `amount` costs under these terms, at `feerate`.
    /// `None` when the arithmetic overflows (no real amount does).
    pub fn fee_for(&self, amount: Amount, feerate: FeeRate) -> Option<FeeBreakdown> {
        let proportional = amount
            .to_sat()
            .checked_mul(u64::from(self.fee_basis))?
            .div_ceil(10_000);
        let mining = u64::from(self.funding_weight)
            .checked_mul(feerate.to_sat_per_kwu())?
            .div_ceil(1_000);
        let total = self
            .fee_base
            .to_sat()
            .checked_add(proportional)?
            .checked_add(mining)?;
        Some(FeeBreakdown {
            base: self.fee_base,
            proportional: Amount::from_sat(proportional),
            mining: Amount::from_sat(mining),
            total: Amount::from_sat(total),
            feerate,
        })
    }
}

/// What an order costs, part by part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FeeBreakdown {
    /// The base fee.
    #[serde(rename = "base_sat", with = "sat_string")]
    pub base: Amount,
    /// The fee proportional to the amount.
    #[serde(rename = "proportional_sat", with = "sat_string")]
    pub proportional: Amount,
    /// The client's share of the mining fee (`funding_weight` at `feerate`).
    #[serde(rename = "mining_sat", with = "sat_string")]
    pub mining: Amount,
    /// What the invoice asks for: the sum of the three.
    #[serde(rename = "total_sat", with = "sat_string")]
    pub total: Amount,
    /// The feerate the service splices at for this order.
    #[serde(with = "feerate_kwu")]
    pub feerate: FeeRate,
}

/// `create_order`'s parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// The channel to add liquidity to.
    #[serde(with = "crate::ids::channel_id_hex")]
    pub channel_id: ChannelId,
    /// How much the service adds.
    #[serde(rename = "amount_sat", with = "sat_string")]
    pub amount: Amount,
    /// The client's key for this order: the same key gets the same order.
    pub client_order_id: String,
}

/// `get_order`'s parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetOrder {
    /// The service's id of the order.
    pub order_id: String,
}

/// Where an order stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum OrderState {
    /// Waiting for the fee to be paid.
    Created,
    /// The fee HTLC arrived and is held; the service is splicing.
    Paid,
    /// The splice is signed and broadcast; the fee is claimed.
    Splicing {
        /// The splice transaction.
        txid: Txid,
    },
    /// The splice locked: the liquidity is in the channel.
    Completed {
        /// The splice transaction.
        txid: Txid,
    },
    /// The splice did not happen; the fee HTLC was failed back.
    Failed {
        /// Why.
        reason: String,
    },
    /// Not paid in time.
    Expired,
}

impl OrderState {
    /// Whether the order has ended (completed, failed or expired).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            OrderState::Completed { .. } | OrderState::Failed { .. } | OrderState::Expired
        )
    }

    /// Whether the order counts against the client's open orders.
    pub fn is_open(&self) -> bool {
        !self.is_final()
    }
}

impl std::fmt::Display for OrderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderState::Created => write!(f, "created"),
            OrderState::Paid => write!(f, "paid"),
            OrderState::Splicing { txid } => write!(f, "splicing in {txid}"),
            OrderState::Completed { txid } => write!(f, "completed in {txid}"),
            OrderState::Failed { reason } => write!(f, "failed: {reason}"),
            OrderState::Expired => write!(f, "expired"),
        }
    }
}

/// An order, as both sides see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Order {
    /// The service's id.
    pub order_id: String,
    /// The client's key.
    pub client_order_id: String,
    /// The channel.
    #[serde(with = "crate::ids::channel_id_hex")]
    pub channel_id: ChannelId,
    /// How much the service adds.
    #[serde(rename = "amount_sat", with = "sat_string")]
    pub amount: Amount,
    /// What it costs.
    pub fee: FeeBreakdown,
    /// The BOLT11 invoice for `fee.total`.
    pub invoice: String,
    /// When the order was made (Unix seconds).
    pub created_at: u64,
    /// Until when the invoice can be paid (Unix seconds).
    pub expires_at: u64,
    /// Where it stands.
    pub state: OrderState,
}

/// An order changed, on either side.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LiquidityEvent {
    /// One of the service's orders changed.
    ServiceOrderChanged {
        /// The client who ordered.
        client: bitcoin::secp256k1::PublicKey,
        /// The order now.
        order: Order,
    },
    /// One of the client's orders changed, as the service answered.
    ClientOrderChanged {
        /// The service.
        service: bitcoin::secp256k1::PublicKey,
        /// The order now.
        order: Order,
    },
}

/// The application errors of this protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OrderError {
    /// `amount_sat` outside the terms.
    AmountOutOfRange {
        /// The least allowed.
        min: Amount,
        /// The most allowed.
        max: Amount,
    },
    /// No usable channel with this id between the two nodes.
    UnknownChannel,
    /// The channel's funding has too few confirmations.
    ChannelTooYoung {
        /// Confirmations needed.
        min_channel_age_blocks: u32,
    },
    /// The client has too many open orders.
    TooManyOpenOrders {
        /// The most allowed.
        max: u16,
    },
    /// Too many requests from this client lately.
    RateLimited {
        /// When to try again.
        retry_after_secs: u64,
    },
    /// The same `client_order_id` with other parameters.
    ClientOrderIdReused,
    /// The service cannot commit that much now.
    LiquidityUnavailable {
        /// Why.
        reason: String,
    },
    /// The service is off or cannot make an invoice.
    ServiceUnavailable {
        /// Why.
        reason: String,
    },
    /// No such order for this client.
    UnknownOrder,
}

impl OrderError {
    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self {
            OrderError::AmountOutOfRange { .. } => 1,
            OrderError::UnknownChannel => 2,
            OrderError::ChannelTooYoung { .. } => 3,
            OrderError::TooManyOpenOrders { .. } => 4,
            OrderError::RateLimited { .. } => 5,
            OrderError::ClientOrderIdReused => 6,
            OrderError::LiquidityUnavailable { .. } => 7,
            OrderError::ServiceUnavailable { .. } => 8,
            OrderError::UnknownOrder => 9,
        }
    }

    /// The error as it goes on the wire.
    pub fn to_rpc(&self) -> RpcError {
        let error = RpcError::new(self.code(), self.to_string());
        match self {
            OrderError::AmountOutOfRange { min, max } => error.with_data(json!({
                "min_amount_sat": min.to_sat().to_string(),
                "max_amount_sat": max.to_sat().to_string(),
            })),
            OrderError::ChannelTooYoung {
                min_channel_age_blocks,
            } => error.with_data(json!({ "min_channel_age_blocks": min_channel_age_blocks })),
            OrderError::TooManyOpenOrders { max } => {
                error.with_data(json!({ "max_open_orders_per_peer": max }))
            }
            OrderError::RateLimited { retry_after_secs } => {
                error.with_data(json!({ "retry_after_secs": retry_after_secs }))
            }
            OrderError::LiquidityUnavailable { reason }
            | OrderError::ServiceUnavailable { reason } => {
                error.with_data(json!({ "reason": reason }))
            }
            _ => error,
        }
    }

    /// Reads an error a service answered, if it is one of ours.
    pub fn from_rpc(error: &RpcError) -> Option<Self> {
        let data = error.data.as_ref();
        let sat = |field: &str| {
            data.and_then(|d| d.get(field))
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .map(Amount::from_sat)
                .unwrap_or(Amount::ZERO)
        };
        let number = |field: &str| {
            data.and_then(|d| d.get(field))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        // The reason alone: from `data`, else the message less its prefix.
        let reason = |prefix: &str| {
            data.and_then(|d| d.get("reason"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    error
                        .message
                        .strip_prefix(prefix)
                        .unwrap_or(&error.message)
                        .to_string()
                })
        };
        Some(match error.code {
            1 => OrderError::AmountOutOfRange {
                min: sat("min_amount_sat"),
                max: sat("max_amount_sat"),
            },
            2 => OrderError::UnknownChannel,
            3 => OrderError::ChannelTooYoung {
                min_channel_age_blocks: u32::try_from(number("min_channel_age_blocks"))
                    .unwrap_or(u32::MAX),
            },
            4 => OrderError::TooManyOpenOrders {
                max: u16::try_from(number("max_open_orders_per_peer")).unwrap_or(u16::MAX),
            },
            5 => OrderError::RateLimited {
                retry_after_secs: number("retry_after_secs"),
            },
            6 => OrderError::ClientOrderIdReused,
            7 => OrderError::LiquidityUnavailable {
                reason: reason("liquidity unavailable: "),
            },
            8 => OrderError::ServiceUnavailable {
                reason: reason("service unavailable: "),
            },
            9 => OrderError::UnknownOrder,
            _ => return None,
        })
    }
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::AmountOutOfRange { min, max } => write!(
                f,
                "amount out of range: between {} and {} sat",
                min.to_sat(),
                max.to_sat()
            ),
            OrderError::UnknownChannel => write!(f, "unknown channel"),
            OrderError::ChannelTooYoung {
                min_channel_age_blocks,
            } => write!(
                f,
                "channel too young: its funding needs {min_channel_age_blocks} confirmations"
            ),
            OrderError::TooManyOpenOrders { max } => {
                write!(f, "too many open orders (at most {max})")
            }
            OrderError::RateLimited { retry_after_secs } => {
                write!(f, "rate limited: try again in {retry_after_secs} s")
            }
            OrderError::ClientOrderIdReused => {
                write!(f, "client_order_id reused with other parameters")
            }
            OrderError::LiquidityUnavailable { reason } => {
                write!(f, "liquidity unavailable: {reason}")
            }
            OrderError::ServiceUnavailable { reason } => write!(f, "service unavailable: {reason}"),
            OrderError::UnknownOrder => write!(f, "unknown order"),
        }
    }
}

impl std::error::Error for OrderError {}

/// Decodes a method's parameters; a mismatch is `-32602` naming the problem.
pub fn params<T: serde::de::DeserializeOwned>(params: Map<String, Value>) -> Result<T, RpcError> {
    serde_json::from_value(Value::Object(params))
        .map_err(|e| RpcError::new(INVALID_PARAMS, format!("invalid params: {e}")))
}

/// Whether `id` is a valid `client_order_id`: 1 to 64 characters of
/// `[A-Za-z0-9._-]`.
pub fn valid_client_order_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> Terms {
        Terms {
            version: PROTOCOL_VERSION,
            min_amount: Amount::from_sat(100_000),
            max_amount: Amount::from_sat(10_000_000),
            fee_base: Amount::from_sat(1_000),
            fee_basis: 100,
            funding_weight: 500,
            feerate: FeeRate::from_sat_per_kwu(2_500),
            quote_valid_secs: 600,
            invoice_valid_secs: 600,
            max_open_orders_per_peer: 2,
            min_channel_age_blocks: 6,
        }
    }

    #[test]
    fn terms_price_an_order_and_round_trip_as_json() {
        let terms = terms();
        let fee = terms
            .fee_for(Amount::from_sat(500_000), terms.feerate)
            .unwrap();
        assert_eq!(fee.proportional, Amount::from_sat(5_000));
        assert_eq!(fee.mining, Amount::from_sat(1_250));
        assert_eq!(fee.total, Amount::from_sat(7_250));
        let json = serde_json::to_value(&terms).unwrap();
        assert_eq!(json["min_amount_sat"], "100000");
        assert_eq!(json["feerate"], 2_500);
        assert_eq!(serde_json::from_value::<Terms>(json).unwrap(), terms);
    }

    #[test]
    fn parameters_out_of_shape_are_invalid_params() {
        let bad = [
            json!({"channel_id": "00", "amount_sat": "1", "client_order_id": "a"}),
            json!({"channel_id": "00".repeat(32), "amount_sat": 1, "client_order_id": "a"}),
            json!({"channel_id": "00".repeat(32), "amount_sat": "1e9", "client_order_id": "a"}),
            json!({"channel_id": "00".repeat(32), "amount_sat": "99999999999999999999", "client_order_id": "a"}),
            json!({"channel_id": "00".repeat(32), "amount_sat": "2100000000000001", "client_order_id": "a"}),
            json!({"channel_id": "00".repeat(32), "amount_sat": "1", "client_order_id": "a", "extra": 1}),
            json!({"channel_id": "00".repeat(32), "client_order_id": "a"}),
        ];
        for value in bad {
            let Value::Object(map) = value else {
                unreachable!()
            };
            let err = params::<CreateOrder>(map.clone()).unwrap_err();
            assert_eq!(err.code, INVALID_PARAMS, "{map:?}");
        }
        assert!(valid_client_order_id("phone-42.a_b"));
        assert!(!valid_client_order_id(""));
        assert!(!valid_client_order_id("has space"));
        assert!(!valid_client_order_id(&"a".repeat(65)));
    }

    #[test]
    fn errors_round_trip() {
        let errors = [
            OrderError::AmountOutOfRange {
                min: Amount::from_sat(1),
                max: Amount::from_sat(2),
            },
            OrderError::UnknownChannel,
            OrderError::ChannelTooYoung {
                min_channel_age_blocks: 6,
            },
            OrderError::TooManyOpenOrders { max: 2 },
            OrderError::RateLimited {
                retry_after_secs: 30,
            },
            OrderError::ClientOrderIdReused,
            OrderError::UnknownOrder,
        ];
        for error in errors {
            assert_eq!(OrderError::from_rpc(&error.to_rpc()), Some(error));
        }
    }
}
