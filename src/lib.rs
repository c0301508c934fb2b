#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod batch;
pub mod coordinator;
#[cfg(feature = "devchain")]
pub mod devchain;
pub mod error;
pub mod events;
pub mod fees;
pub mod journal;
pub mod logger;
#[cfg(feature = "node")]
pub mod node;
pub mod tracker;
pub mod wallet;

pub use batch::{BatchId, BatchPlan, BatchQuote, BatchRecord, BatchState, ChannelRef, Leg};
pub use coordinator::{CoordinatorConfig, Destination, Payout, ResizeRequest, SpliceCoordinator};
pub use error::SpliceError;
pub use events::SpliceEvent;
pub use fees::{FeePolicy, FeeRateSource, SpliceQuote};
pub use journal::{SpliceId, SpliceRecord, SpliceState};
