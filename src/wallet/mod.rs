//! The wallet seam: what the coordinator needs from an on-chain wallet to
//! fund and sign splices, and the BDK wallet that implements it (feature
//! `bdk`).
//!
//! Any wallet can fund splices by implementing [`FundingWallet`]. LDK's own
//! `WalletSourceSync` does not fit: it has no coin locks, and it signs a
//! whole PSBT, where the coordinator must sign exactly the coins it locked
//! for one splice after checking the negotiated transaction.

#[cfg(feature = "bdk")]
mod bdk;
mod coin_source;
mod selection;

#[cfg(feature = "bdk")]
pub use bdk::{BdkWallet, WalletBalance};

pub(crate) use coin_source::CoinPool;
pub use coin_source::SpliceCoinSource;

use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, TxOut, Txid};

/// What a wallet can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum WalletError {
    /// The wallet state could not be read or written.
    Persistence(String),
    /// The stored wallet belongs to another seed or network.
    Mismatch(String),
    /// Not enough confirmed funds for what was asked.
    InsufficientFunds {
        /// What the transaction needs, fees included.
        needed: Amount,
        /// What the wallet can spend.
        available: Amount,
    },
    /// The transaction could not be built or signed.
    Build(String),
}

impl std::fmt::Display for WalletError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalletError::Persistence(e) => write!(f, "wallet storage failed: {e}"),
            WalletError::Mismatch(e) => write!(f, "stored wallet does not match: {e}"),
            WalletError::InsufficientFunds { needed, available } => write!(
                f,
                "insufficient on-chain funds: need {} sat, have {} sat",
                needed.to_sat(),
                available.to_sat()
            ),
            WalletError::Build(e) => write!(f, "could not build transaction: {e}"),
        }
    }
}

impl std::error::Error for WalletError {}

/// Shows a [`FundingWallet`] that the splice coordinator makes the call.
/// Only this crate can make one, so no code outside it can lock or unlock
/// coins through the seam: a coin freed while a splice still holds it could
/// be spent twice. Implementations take it as an argument and ignore it.
#[derive(Debug)]
pub struct CoordinatorCall(());

/// The one [`CoordinatorCall`] this crate passes.
pub(crate) const COORDINATOR: &CoordinatorCall = &CoordinatorCall(());

/// A confirmed coin a wallet offers for a splice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletCoin {
    /// Where it is.
    pub outpoint: OutPoint,
    /// Its value and script (P2WPKH: the only kind splices are funded with).
    pub output: TxOut,
}

/// An on-chain wallet that funds and signs splices.
///
/// The contract, which the coordinator relies on for every money
/// guarantee it gives:
/// - a **locked** coin is never spent by anything the wallet builds, and is
///   never offered by [`FundingWallet::spendable_coins`], until it is
///   unlocked; locks survive a restart once [`FundingWallet::save`] returned;
/// - [`FundingWallet::sign_inputs`] signs exactly the inputs it is given,
///   nothing else, and changes nothing in the wallet.
///
/// The coordinator locks a splice's coins before it sends anything to the
/// peer, and unlocks them only when nothing can still spend them.
pub trait FundingWallet: Send + Sync {
    /// Confirmed P2WPKH coins that are not locked.
    fn spendable_coins(&self) -> Vec<WalletCoin>;

    /// The transaction that created `outpoint` (LDK puts it into the
    /// interactive transaction construction), if the wallet has it.
    fn previous_transaction(&self, outpoint: &OutPoint) -> Option<Transaction>;

    /// The output `outpoint` names if it is, or was, one of this wallet's
    /// coins (spent or not).
    fn owned_output(&self, outpoint: &OutPoint) -> Option<TxOut>;

    /// Locks `outpoints` at once for every later spend and listing. The lock
    /// must survive a restart after the next successful
    /// [`FundingWallet::save`].
    fn lock_coins(&self, outpoints: &[OutPoint], call: &CoordinatorCall);

    /// Unlocks `outpoints` at once. Writing it may wait for the next
    /// [`FundingWallet::save`] (the bundled wallet waits): the coordinator
    /// frees at start every lock no splice holds, so a lock that outlives
    /// a crash costs nothing. On a write error they are unlocked in memory
    /// anyway and the next write carries the change.
    fn unlock_coins(
        &self,
        outpoints: &[OutPoint],
        call: &CoordinatorCall,
    ) -> Result<(), WalletError>;

    /// Writes every change not written yet, locks included.
    fn save(&self) -> Result<(), WalletError>;

    /// Every locked coin, spent or not.
    fn locked_coins(&self) -> Vec<OutPoint>;

    /// Whether `outpoint` is locked.
    fn is_locked(&self, outpoint: &OutPoint) -> bool {
        self.locked_coins().contains(outpoint)
    }

    /// A fresh script for a splice's change output.
    fn change_script(&self) -> Result<ScriptBuf, WalletError>;

    /// A fresh script of this wallet to receive a splice-out.
    fn payout_script(&self) -> Result<ScriptBuf, WalletError>;

    /// Signs, with SIGHASH_ALL, exactly the inputs of `tx` that spend
    /// `inputs` (all P2WPKH coins of this wallet, each spent by `tx`), and
    /// returns `tx` with their witnesses filled in.
    fn sign_inputs(&self, tx: Transaction, inputs: &[OutPoint])
        -> Result<Transaction, WalletError>;

    /// A splice transaction spending or paying this wallet was broadcast:
    /// its inputs count as spent, its outputs as pending. The default does
    /// nothing (a wallet that learns it from the chain needs nothing more).
    fn transaction_broadcast(&self, tx: &Transaction) {
        let _ = tx;
    }

    /// A splice transaction reported broadcast can no longer confirm (a
    /// conflicting candidate confirmed): its inputs are unspent again unless
    /// another transaction spends them. The default does nothing.
    fn transaction_abandoned(&self, txid: Txid) {
        let _ = txid;
    }
}

/// The confirmed, unlocked value a wallet offers for splices.
pub(crate) fn available_balance(wallet: &dyn FundingWallet) -> Amount {
    wallet
        .spendable_coins()
        .iter()
        .map(|coin| coin.output.value)
        .sum()
}
