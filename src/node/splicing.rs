//! The node's splice API: the coordinator and the batches, with peer
//! messages sent right after each call.

use super::*;

impl Node {
    /// Calls `f` with every splice and batch event right after the write
    /// that holds it, before the change it reports is acted on, under the
    /// coordinator's lock (`f` must not call the node). For fault
    /// injection: applications take events from the coordinator
    /// (`next_event`, `event_future`, `next_event_async`).
    #[doc(hidden)]
    pub fn observe_written_events(&self, f: EventNotifier) {
        self.event_listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    /// The splice coordinator.
    pub fn coordinator(&self) -> &Arc<NodeCoordinator> {
        &self.coordinator
    }

    /// The batch coordinator.
    pub fn batches(&self) -> &Arc<NodeBatches> {
        &self.batches
    }

    /// Every batch, oldest first.
    pub fn list_batches(&self) -> Vec<BatchRecord> {
        self.batches.list_batches()
    }

    /// Adds `amount` from the on-chain wallet to a channel.
    pub fn splice_in(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        amount: Amount,
        fee: FeePolicy,
    ) -> Result<SpliceId, SpliceError> {
        let result = self
            .coordinator
            .splice_in(channel_id, counterparty, amount, fee);
        self.send_queued_messages();
        result
    }

    /// Pays `amount` out of a channel to `to`.
    pub fn splice_out(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        amount: Amount,
        to: Destination,
        fee: FeePolicy,
    ) -> Result<SpliceId, SpliceError> {
        let result = self
            .coordinator
            .splice_out(channel_id, counterparty, amount, to, fee);
        self.send_queued_messages();
        result
    }

    /// Adds wallet funds and pays channel funds out in one splice.
    pub fn resize(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        request: ResizeRequest,
        fee: FeePolicy,
    ) -> Result<SpliceId, SpliceError> {
        let result = self
            .coordinator
            .resize(channel_id, counterparty, request, fee);
        self.send_queued_messages();
        result
    }

    /// What a splice would cost, without reserving or sending anything.
    pub fn quote_splice(
        &self,
        channel_id: &ChannelId,
        counterparty: &PublicKey,
        request: &ResizeRequest,
        fee: FeePolicy,
    ) -> Result<SpliceQuote, SpliceError> {
        self.coordinator
            .quote_splice(channel_id, counterparty, request, fee)
    }

    /// Cancels a splice that has not been signed yet (a leg of a batch
    /// cancels its whole batch).
    pub fn cancel_splice(&self, id: SpliceId) -> Result<(), SpliceError> {
        let batch = self.coordinator.splice_status(id).and_then(|r| r.batch);
        let result = match batch {
            Some(batch) => self.batches.cancel_batch(batch),
            None => self.coordinator.cancel_splice(id),
        };
        self.send_queued_messages();
        result
    }

    /// Replaces broadcast splice `id` with a transaction paying a higher
    /// fee, keeping its amount and destinations (see
    /// [`SpliceCoordinator::bump_fee`](crate::SpliceCoordinator::bump_fee)).
    pub fn bump_fee(&self, id: SpliceId, fee: FeePolicy) -> Result<SpliceId, SpliceError> {
        let result = self.coordinator.bump_fee(id, fee);
        self.send_queued_messages();
        result
    }

    /// What a fee bump of splice `id` would cost, without reserving or
    /// sending anything.
    pub fn quote_bump_fee(
        &self,
        id: SpliceId,
        fee: FeePolicy,
    ) -> Result<crate::BumpQuote, SpliceError> {
        self.coordinator.quote_bump_fee(id, fee)
    }

    /// Turns automatic fee bumping on or off for splice `id` (see
    /// [`SpliceCoordinator::set_auto_bump`](crate::SpliceCoordinator::set_auto_bump)).
    pub fn set_auto_bump(
        &self,
        id: SpliceId,
        policy: Option<crate::AutoBump>,
    ) -> Result<(), SpliceError> {
        self.coordinator.set_auto_bump(id, policy)
    }

    /// The record of a splice.
    pub fn splice_status(&self, id: SpliceId) -> Option<SpliceRecord> {
        self.coordinator.splice_status(id)
    }

    /// Every splice, oldest first.
    pub fn list_splices(&self) -> Vec<SpliceRecord> {
        self.coordinator.list_splices()
    }

    /// Starts a batch of splices over several channels.
    pub fn start_batch(&self, plan: BatchPlan) -> Result<BatchId, SpliceError> {
        let result = self.batches.start_batch(plan);
        self.send_queued_messages();
        result
    }

    /// What a batch would cost, without reserving or sending anything.
    pub fn quote_batch(&self, plan: &BatchPlan) -> Result<BatchQuote, SpliceError> {
        self.batches.quote_batch(plan)
    }

    /// The record of a batch.
    pub fn batch_status(&self, id: BatchId) -> Option<BatchRecord> {
        self.batches.batch_status(id)
    }

    /// Bumps the fee of every unconfirmed leg of batch `id` together (see
    /// [`BatchCoordinator::bump_batch_fee`](crate::BatchCoordinator::bump_batch_fee)).
    pub fn bump_batch_fee(&self, id: BatchId, fee: FeePolicy) -> Result<(), SpliceError> {
        let result = self.batches.bump_batch_fee(id, fee);
        self.send_queued_messages();
        result
    }

    /// Cancels a batch that is not signed yet.
    pub fn cancel_batch(&self, id: BatchId) -> Result<(), SpliceError> {
        let result = self.batches.cancel_batch(id);
        self.send_queued_messages();
        result
    }

    /// Sends the messages our calls into LDK queued for peers now, rather
    /// than on the background processor's next round.
    fn send_queued_messages(&self) {
        self.peer_manager.process_events();
    }

    /// Waits until batch `id` is in a state `done` accepts.
    pub async fn wait_for_batch(
        &self,
        id: BatchId,
        timeout: Duration,
        mut done: impl FnMut(&BatchState) -> bool,
    ) -> Result<BatchRecord, NodeError> {
        self.wait_until(timeout, &format!("{id} to progress"), |node| {
            node.batch_status(id).is_some_and(|r| done(&r.state))
        })
        .await?;
        self.batch_status(id)
            .ok_or_else(|| NodeError::InvalidInput(format!("no batch {id}")))
    }

    /// Waits until splice `id` is in a state `done` accepts.
    pub async fn wait_for_splice(
        &self,
        id: SpliceId,
        timeout: Duration,
        mut done: impl FnMut(&crate::SpliceState) -> bool,
    ) -> Result<SpliceRecord, NodeError> {
        self.wait_until(timeout, &format!("{id} to progress"), |node| {
            node.splice_status(id).is_some_and(|r| done(&r.state))
        })
        .await?;
        self.splice_status(id)
            .ok_or_else(|| NodeError::InvalidInput(format!("no splice {id}")))
    }
}
