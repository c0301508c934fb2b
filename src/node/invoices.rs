//! The node's Lightning payments: invoices, paying them, following them.

use super::*;

impl Node {
    /// Creates a BOLT11 invoice for `amount_msat` (any amount when `None`).
    pub fn create_invoice(
        &self,
        amount_msat: Option<u64>,
        description: &str,
        expiry: Duration,
    ) -> Result<Bolt11Invoice, NodeError> {
        self.invoice(amount_msat, description, expiry, None)
    }

    /// An invoice LDK makes the preimage of, or, with `payment_hash`, one
    /// whose preimage we do not know (a hold invoice).
    fn invoice(
        &self,
        amount_msat: Option<u64>,
        description: &str,
        expiry: Duration,
        payment_hash: Option<PaymentHash>,
    ) -> Result<Bolt11Invoice, NodeError> {
        let description = Description::new(description.to_string())
            .map_err(|e| NodeError::InvalidInput(format!("description: {e}")))?;
        let params = Bolt11InvoiceParameters {
            amount_msats: amount_msat,
            description: Bolt11InvoiceDescription::Direct(description),
            invoice_expiry_delta_secs: Some(u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX)),
            payment_hash,
            ..Default::default()
        };
        let invoice = self
            .channel_manager
            .create_bolt11_invoice(params)
            .map_err(|e| NodeError::Lightning(format!("{e:?}")))?;
        let hash = invoice.payment_hash();
        self.payments.upsert(hash, PaymentDirection::Inbound, |p| {
            p.amount_msat = amount_msat
        });
        Ok(invoice)
    }

    /// Creates a BOLT11 hold invoice for `payment_hash`, whose preimage the
    /// node does not know: a payment to it is held (its status becomes
    /// [`PaymentStatus::Held`]) until [`Node::claim_payment`] with the
    /// preimage or [`Node::fail_payment`]. Held too long, LDK fails it back
    /// before its HTLCs expire.
    pub fn create_hold_invoice(
        &self,
        amount_msat: Option<u64>,
        payment_hash: PaymentHash,
        description: &str,
        expiry: Duration,
    ) -> Result<Bolt11Invoice, NodeError> {
        self.invoice(amount_msat, description, expiry, Some(payment_hash))
    }

    /// Claims a held payment with its preimage (on-chain too, if its
    /// channel has closed meanwhile).
    pub fn claim_payment(
        &self,
        preimage: lightning::types::payment::PaymentPreimage,
    ) -> Result<(), NodeError> {
        use bitcoin::hashes::{sha256, Hash};
        let hash = PaymentHash(sha256::Hash::hash(&preimage.0).to_byte_array());
        match self.payments.get(&hash) {
            Some(p) if p.status == PaymentStatus::Held => {
                self.channel_manager.claim_funds(preimage);
                Ok(())
            }
            Some(p) => Err(NodeError::InvalidInput(format!(
                "payment {hash} is {:?}, not held",
                p.status
            ))),
            None => Err(NodeError::InvalidInput(format!("no payment {hash}"))),
        }
    }

    /// Fails a held payment back to its payer.
    pub fn fail_payment(&self, hash: &PaymentHash) -> Result<(), NodeError> {
        match self.payments.get(hash) {
            Some(p) if p.status == PaymentStatus::Held => {
                self.channel_manager.fail_htlc_backwards(hash);
                self.payments.upsert(*hash, PaymentDirection::Inbound, |p| {
                    p.status = PaymentStatus::Failed;
                });
                Ok(())
            }
            Some(p) => Err(NodeError::InvalidInput(format!(
                "payment {hash} is {:?}, not held",
                p.status
            ))),
            None => Err(NodeError::InvalidInput(format!("no payment {hash}"))),
        }
    }

    /// Pays a BOLT11 invoice; returns its payment hash. Follow it with
    /// [`Node::payment`] or [`Node::wait_for_payment`].
    pub fn pay_invoice(&self, invoice: &Bolt11Invoice) -> Result<PaymentHash, NodeError> {
        let hash = invoice.payment_hash();
        let payment_id = PaymentId(hash.0);
        self.payments.upsert(hash, PaymentDirection::Outbound, |p| {
            p.amount_msat = invoice.amount_milli_satoshis();
            p.status = PaymentStatus::Pending;
        });
        self.channel_manager
            .pay_for_bolt11_invoice(
                invoice,
                payment_id,
                None,
                OptionalBolt11PaymentParams::default(),
            )
            .map_err(|e| {
                self.payments.upsert(hash, PaymentDirection::Outbound, |p| {
                    p.status = PaymentStatus::Failed;
                });
                NodeError::Lightning(format!("{e:?}"))
            })?;
        Ok(hash)
    }

    /// What the node knows of a payment.
    pub fn payment(&self, hash: &PaymentHash) -> Option<PaymentInfo> {
        self.payments.get(hash)
    }

    /// Every payment the node knows of.
    pub fn list_payments(&self) -> Vec<PaymentInfo> {
        self.payments.list()
    }

    /// Waits until the payment with `hash` has succeeded or failed.
    pub async fn wait_for_payment(
        &self,
        hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<PaymentInfo, NodeError> {
        self.wait_until(timeout, "payment to settle", |node| {
            node.payment(hash)
                .is_some_and(|p| p.status != PaymentStatus::Pending)
        })
        .await?;
        self.payment(hash)
            .ok_or_else(|| NodeError::InvalidInput("unknown payment".into()))
    }
}
