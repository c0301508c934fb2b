//! What the node remembers of its payments, persisted in the `KVStore`.

use std::collections::HashMap;
use std::sync::Mutex;

use lightning::types::payment::PaymentHash;
use serde::{Deserialize, Serialize};

use crate::store::{SharedStore, PERSISTENCE_NAMESPACE};

const PAYMENTS_NAMESPACE: &str = "payments";

/// Which way a payment went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentDirection {
    /// We were paid.
    Inbound,
    /// We paid.
    Outbound,
}

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    /// Sent or invoiced, not settled yet.
    Pending,
    /// Inbound to a hold invoice: the payment arrived and waits for
    /// [`Node::claim_payment`](super::Node::claim_payment) or
    /// [`Node::fail_payment`](super::Node::fail_payment).
    Held,
    /// Settled: the preimage is known to both sides.
    Succeeded,
    /// Given up.
    Failed,
}

/// One payment, inbound or outbound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentInfo {
    /// The payment hash, hex.
    pub payment_hash: String,
    /// Inbound or outbound.
    pub direction: PaymentDirection,
    /// Amount in millisatoshis, once known.
    pub amount_msat: Option<u64>,
    /// Routing fee we paid, for outbound payments that succeeded.
    pub fee_paid_msat: Option<u64>,
    /// Current status.
    pub status: PaymentStatus,
}

/// Payments by hash, written through to the store.
pub struct PaymentStore {
    payments: Mutex<HashMap<PaymentHash, PaymentInfo>>,
    store: SharedStore,
}

impl PaymentStore {
    /// Reads every stored payment.
    pub fn load(store: SharedStore) -> Self {
        let mut payments = HashMap::new();
        let keys = store
            .list(PERSISTENCE_NAMESPACE, PAYMENTS_NAMESPACE)
            .unwrap_or_default();
        for key in keys {
            let Ok(bytes) = store.read(PERSISTENCE_NAMESPACE, PAYMENTS_NAMESPACE, &key) else {
                continue;
            };
            let Ok(info) = serde_json::from_slice::<PaymentInfo>(&bytes) else {
                log::warn!("skipping unreadable payment record {key}");
                continue;
            };
            let Some(hash) = parse_hash(&info.payment_hash) else {
                continue;
            };
            payments.insert(hash, info);
        }
        Self {
            payments: Mutex::new(payments),
            store,
        }
    }

    /// The payment with this hash.
    pub fn get(&self, hash: &PaymentHash) -> Option<PaymentInfo> {
        self.lock().get(hash).cloned()
    }

    /// Every payment.
    pub fn list(&self) -> Vec<PaymentInfo> {
        self.lock().values().cloned().collect()
    }

    /// Inserts or changes a payment and writes it to the store.
    pub fn upsert(
        &self,
        hash: PaymentHash,
        direction: PaymentDirection,
        update: impl FnOnce(&mut PaymentInfo),
    ) {
        let mut payments = self.lock();
        let info = payments.entry(hash).or_insert_with(|| PaymentInfo {
            payment_hash: hash.to_string(),
            direction,
            amount_msat: None,
            fee_paid_msat: None,
            status: PaymentStatus::Pending,
        });
        update(info);
        match serde_json::to_vec(info) {
            Ok(bytes) => {
                if let Err(e) = self.store.write(
                    PERSISTENCE_NAMESPACE,
                    PAYMENTS_NAMESPACE,
                    &hash.to_string(),
                    bytes,
                ) {
                    log::error!("failed to persist payment {hash}: {e}");
                }
            }
            Err(e) => log::error!("failed to encode payment {hash}: {e}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PaymentHash, PaymentInfo>> {
        self.payments.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn parse_hash(hex: &str) -> Option<PaymentHash> {
    use bitcoin::hex::FromHex;
    <[u8; 32]>::from_hex(hex).ok().map(PaymentHash)
}
