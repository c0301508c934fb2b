//! The one error type of the node.

use crate::wallet::WalletError;

/// What building, running or asking the node can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum NodeError {
    /// The data directory or the store could not be used.
    Storage(String),
    /// bitcoind could not be reached or answered something unusable.
    Chain(String),
    /// The on-chain wallet failed.
    Wallet(WalletError),
    /// A peer could not be reached.
    Connection(String),
    /// LDK refused the request.
    Lightning(String),
    /// The request itself is wrong.
    InvalidInput(String),
    /// The thing asked for did not happen in time.
    Timeout(String),
    /// A liquidity service refused an order or answered something unusable.
    Liquidity(crate::liquidity::ClientError),
    /// The splice coordinator refused.
    Splice(crate::SpliceError),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Storage(e) => write!(f, "storage error: {e}"),
            NodeError::Chain(e) => write!(f, "chain source error: {e}"),
            NodeError::Wallet(e) => write!(f, "wallet error: {e}"),
            NodeError::Connection(e) => write!(f, "connection error: {e}"),
            NodeError::Lightning(e) => write!(f, "lightning error: {e}"),
            NodeError::InvalidInput(e) => write!(f, "invalid input: {e}"),
            NodeError::Timeout(e) => write!(f, "timed out: {e}"),
            NodeError::Liquidity(e) => write!(f, "liquidity order: {e}"),
            NodeError::Splice(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<WalletError> for NodeError {
    fn from(e: WalletError) -> Self {
        NodeError::Wallet(e)
    }
}

impl From<crate::SpliceError> for NodeError {
    fn from(e: crate::SpliceError) -> Self {
        NodeError::Splice(e)
    }
}
