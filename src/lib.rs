#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod batch;
pub mod coordinator;
#[cfg(feature = "devchain")]
pub mod devchain;
pub mod error;
pub mod events;
pub mod fees;
pub mod ids;
mod journal;
pub mod logger;
#[cfg(feature = "node")]
pub mod node;
pub mod record;
pub mod store;
pub mod wallet;
pub mod weights;

pub use batch::{BatchCoordinator, BatchPlan, BatchQuote, BatchRecord, Leg};
pub use coordinator::{CoordinatorConfig, Destination, Payout, ResizeRequest, SpliceCoordinator};
pub use error::SpliceError;
pub use events::SpliceEvent;
pub use fees::{FeePolicy, FeeRateSource, SpliceQuote};
pub use ids::{BatchId, ChannelRef, SpliceId};
pub use record::{
    BatchState, SpliceCandidate, SpliceOrigin, SpliceOutput, SpliceRecord, SpliceState,
};
