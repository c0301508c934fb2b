#![doc = include_str!("crate_docs.md")]
#![deny(missing_docs)]

mod batch;
mod coordinator;
#[cfg(feature = "devchain")]
pub mod devchain;
mod error;
mod events;
mod fees;
mod ids;
mod journal;
pub mod liquidity;
mod logger;
#[cfg(feature = "node")]
pub mod node;
mod record;
mod store;
mod stored;
mod wallet;
mod weights;

pub use batch::{
    BatchCoordinator, BatchPart, BatchPlan, BatchQuote, BatchRecord, Leg, LegQuote, LegRole,
};
pub use coordinator::{
    BumpQuote, CoordinatorConfig, Destination, Payout, ResizeRequest, SpliceCoordinator,
    MAX_LOW_FEERATE_CANDIDATES,
};
pub use error::SpliceError;
#[doc(hidden)]
pub use events::EventNotifier;
pub use events::SpliceEvent;
pub use fees::{FeePolicy, FeeRateSource, FundingFeeEstimator, SpliceQuote};
pub use ids::{BatchId, ChannelRef, SpliceId};
pub use journal::ACK_WRITE_DELAY;
pub use logger::LogBridge;
pub use record::{
    AutoBump, AutoBumpState, BatchState, FeeBump, SpliceCandidate, SpliceOrigin, SpliceOutput,
    SpliceRecord, SpliceState,
};
pub use store::{SharedStore, PERSISTENCE_NAMESPACE};
#[cfg(feature = "bdk")]
pub use wallet::{BdkWallet, WalletBalance};
pub use wallet::{CoordinatorCall, FundingWallet, SpliceCoinSource, WalletCoin, WalletError};

/// The README's examples compile.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
