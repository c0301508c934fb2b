//! ldk-splice: splicing as a finished capability for LDK-based Lightning nodes.
#![deny(missing_docs)]

#[cfg(feature = "devchain")]
pub mod devchain;
pub mod logger;
#[cfg(feature = "node")]
pub mod node;
pub mod wallet;
