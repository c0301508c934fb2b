//! Channels left to the application: it drives their splices through
//! LDK's own API (`splice_channel`, `funding_contributed`, signing on
//! `FundingTransactionReadyForSigning`), and the coordinator neither signs,
//! cancels nor records them, and refuses requests for them.

use std::ops::Deref;

use lightning::chain::chaininterface::FeeEstimator;
use lightning::events::Event;
use lightning::ln::channelmanager::AChannelManager;
use lightning::ln::types::ChannelId;

use super::SpliceCoordinator;
use crate::error::SpliceError;

impl<CM: Deref, F: Deref> SpliceCoordinator<CM, F>
where
    CM::Target: AChannelManager,
    F::Target: FeeEstimator,
{
    /// Leaves the splices of `channel_id` to the application from now on:
    /// LDK's splice events for it are ignored (the application must sign
    /// or cancel what it started), the counterparty's splices on it are not
    /// recorded, and requests for it are refused. Refused while a splice of
    /// ours on it is under way. Kept in memory only: after a restart the
    /// coordinator manages every channel again.
    pub fn unmanage_channel(&self, channel_id: &ChannelId) -> Result<(), SpliceError> {
        let mut state = self.lock();
        if let Some(live) = Self::active_on(&state, channel_id) {
            return Err(SpliceError::InvalidRequest(format!(
                "{} is under way on channel {channel_id}",
                live.id
            )));
        }
        state.unmanaged.insert(*channel_id);
        Ok(())
    }

    /// Hands `channel_id` back to the coordinator (see
    /// [`SpliceCoordinator::unmanage_channel`]).
    pub fn manage_channel(&self, channel_id: &ChannelId) {
        self.lock().unmanaged.remove(channel_id);
    }
}

/// The channel of one of LDK's splice events.
pub(super) fn splice_event_channel(event: &Event) -> Option<&ChannelId> {
    match event {
        Event::FundingTransactionReadyForSigning { channel_id, .. }
        | Event::SpliceNegotiated { channel_id, .. }
        | Event::SpliceNegotiationFailed { channel_id, .. }
        | Event::DiscardFunding { channel_id, .. } => Some(channel_id),
        _ => None,
    }
}
