//! Checking RPC credentials without telling, through timing, how close a guess came.

use bitcoin::hashes::{sha256, Hash};

/// The `user:password` the RPC accepts, kept only as its SHA-256 digest.
///
/// A guess is hashed and the two digests compared byte for byte to the end, so the time taken
/// depends neither on where a guess first differs nor on the secret's length (only on the
/// length of the guess itself, which the client knows).
pub(crate) struct Credentials {
    digest: [u8; 32],
}

impl Credentials {
    /// The credentials `user:password`.
    pub fn new(user: &str, password: &str) -> Self {
        Credentials {
            digest: digest(format!("{user}:{password}").as_bytes()),
        }
    }

    /// Whether `given` (basic auth's decoded `user:password`) is exactly the credentials.
    pub fn matches(&self, given: &[u8]) -> bool {
        digests_equal(&digest(given), &self.digest)
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    sha256::Hash::hash(bytes).to_byte_array()
}

/// Compares every byte, whatever the first difference: no early exit.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the compiler from turning the fold back into a comparison that stops early.
    std::hint::black_box(difference) == 0
}
