#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

#[cfg(feature = "devchain")]
pub mod devchain;
pub mod logger;
#[cfg(feature = "node")]
pub mod node;
pub mod wallet;
