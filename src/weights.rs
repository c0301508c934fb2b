//! Weights of transaction parts the splice initiator pays for, as LDK counts
//! them when it estimates a contribution's fee.

use bitcoin::{TxOut, Weight};

/// Version, locktime, input and output counts, segwit marker and flag.
pub const TX_COMMON_FIELDS: Weight = Weight::from_wu((4 + 4 + 1 + 1) * 4 + 2);
/// Outpoint and sequence of an input, without its script.
pub const BASE_INPUT: Weight = Weight::from_wu((32 + 4 + 4) * 4);
/// An empty script_sig (its length byte).
pub const EMPTY_SCRIPT_SIG: Weight = Weight::from_wu(4);
/// The witness spending a 2-of-2 funding output.
pub const FUNDING_WITNESS: Weight = Weight::from_wu(1 + 1 + 1 + 72 + 1 + 72 + 1 + 71);
/// A P2WSH output (the new funding output).
pub const P2WSH_OUTPUT: Weight = Weight::from_wu((8 + 1 + 34) * 4);
/// A P2WPKH witness (the wallet's inputs).
pub const P2WPKH_WITNESS: Weight = Weight::from_wu(1 + 1 + 72 + 1 + 33);

/// The weight of `output` in a transaction.
pub fn output(output: &TxOut) -> Weight {
    output.weight()
}

/// What the initiator of a splice pays for besides its own inputs and
/// outputs: the common fields, the old funding input and the new
/// funding output.
pub fn initiator_shared() -> Weight {
    // LDK counts the funding witness with low-R signatures: one less.
    TX_COMMON_FIELDS + BASE_INPUT + EMPTY_SCRIPT_SIG + FUNDING_WITNESS + P2WSH_OUTPUT
        - Weight::from_wu(1)
}
