//! Error types of the devchain: transaction rejections with bitcoind's codes and reasons, and
//! start-up failures.

use std::fmt;

/// bitcoind's `RPC_TRANSACTION_ERROR`: missing inputs, fee over the configured maximum.
pub const RPC_TRANSACTION_ERROR: i32 = -25;
/// bitcoind's `RPC_TRANSACTION_REJECTED`: policy or consensus rejection.
pub const RPC_TRANSACTION_REJECTED: i32 = -26;
/// bitcoind's `RPC_TRANSACTION_ALREADY_IN_CHAIN` (`RPC_VERIFY_ALREADY_IN_CHAIN`).
pub const RPC_TRANSACTION_ALREADY_IN_CHAIN: i32 = -27;

/// Why a transaction was not accepted, as bitcoind reports it.
///
/// `code` is the JSON-RPC error code bitcoind's `sendrawtransaction` returns (-25, -26 or -27),
/// `reason` is the short reject reason (`testmempoolaccept`'s `reject-reason`, e.g.
/// `"bad-txns-in-belowout"`), and `details` the optional debug message bitcoind appends after a
/// comma (e.g. `"value in (0.01) < value out (0.02)"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectReason {
    /// bitcoind's JSON-RPC error code for this rejection.
    pub code: i32,
    /// The short reject reason.
    pub reason: String,
    /// Extra detail, appended to `reason` after `", "` in the RPC error message.
    pub details: Option<String>,
}

impl RejectReason {
    /// A rejection with code -26 (`RPC_TRANSACTION_REJECTED`).
    pub(crate) fn rejected(reason: impl Into<String>) -> Self {
        RejectReason {
            code: RPC_TRANSACTION_REJECTED,
            reason: reason.into(),
            details: None,
        }
    }

    /// A rejection with the given code.
    pub(crate) fn with_code(code: i32, reason: impl Into<String>) -> Self {
        RejectReason {
            code,
            reason: reason.into(),
            details: None,
        }
    }

    /// Adds a debug message.
    pub(crate) fn details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// The missing-inputs rejection (-25 `bad-txns-inputs-missingorspent`).
    pub(crate) fn missing_inputs() -> Self {
        RejectReason::with_code(RPC_TRANSACTION_ERROR, "bad-txns-inputs-missingorspent")
    }

    /// True when the rejection is for missing or spent inputs.
    pub fn is_missing_inputs(&self) -> bool {
        self.reason == "bad-txns-inputs-missingorspent"
    }

    /// The error message bitcoind's `sendrawtransaction` returns: the reason, then `", "` and the
    /// details if there are any.
    pub fn message(&self) -> String {
        match &self.details {
            Some(details) => format!("{}, {}", self.reason, details),
            None => self.reason.clone(),
        }
    }

    /// The `reject-reason` bitcoind's `testmempoolaccept` reports.
    pub fn test_accept_reason(&self) -> String {
        if self.is_missing_inputs() {
            "missing-inputs".to_string()
        } else if self.code == RPC_TRANSACTION_ALREADY_IN_CHAIN
            && self.reason == "Transaction outputs already in utxo set"
        {
            "txn-already-known".to_string()
        } else {
            self.reason.clone()
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message(), self.code)
    }
}

impl std::error::Error for RejectReason {}

/// Failure to start a devchain.
#[derive(Debug)]
pub enum DevChainError {
    /// The RPC listener could not be bound.
    Bind(std::io::Error),
    /// `DevChain::start` was called outside a tokio runtime.
    NoRuntime,
}

impl fmt::Display for DevChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevChainError::Bind(e) => write!(f, "cannot bind the devchain RPC listener: {e}"),
            DevChainError::NoRuntime => {
                write!(
                    f,
                    "DevChain::start must be called from within a tokio runtime"
                )
            }
        }
    }
}

impl std::error::Error for DevChainError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DevChainError::Bind(e) => Some(e),
            DevChainError::NoRuntime => None,
        }
    }
}
