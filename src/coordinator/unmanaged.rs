//! Channels left to the application: it drives their splices through
//! LDK's own API (`splice_channel`, `funding_contributed`, signing on
//! `FundingTransactionReadyForSigning`), and the coordinator neither signs,
//! cancels nor records them, and refuses requests for them.

use std::ops::Deref;

use lightning::chain::chaininterface::FeeEstimator;
use lightning::events::Event;
use lightning::ln::channel_state::SpliceCandidateStatus;
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
    /// recorded, and requests for it are refused (a batch's queued move
    /// into it waits until it is handed back). Refused while a splice of
    /// ours on it is under way.
    ///
    /// Kept in memory only: after a restart the coordinator manages every
    /// channel again, and would cancel an unsigned splice of the
    /// application's there when LDK asks for its signatures; finish or
    /// cancel such splices before stopping. Coins the application adds
    /// must be locked in the wallet (`SpliceCoinSource::new(wallet, true)`)
    /// so no other spend picks them; those locks are not written, and the
    /// coordinator frees them at the next start.
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
    /// [`SpliceCoordinator::unmanage_channel`]). Refused while LDK holds an
    /// unsigned contribution on it (the application's splice, which the
    /// coordinator would cancel when LDK asks for its signatures).
    pub fn manage_channel(&self, channel_id: &ChannelId) -> Result<(), SpliceError> {
        let unsigned = self
            .channel_manager
            .get_cm()
            .list_channels()
            .into_iter()
            .find(|c| c.channel_id == *channel_id)
            .and_then(|c| c.splice_details)
            .is_some_and(|d| {
                d.candidates.iter().any(|c| {
                    c.contribution.is_some()
                        && !matches!(c.status, SpliceCandidateStatus::Negotiated { .. })
                })
            });
        if unsigned {
            return Err(SpliceError::InvalidRequest(format!(
                "channel {channel_id} has a splice of the application's not signed yet"
            )));
        }
        self.lock().unmanaged.remove(channel_id);
        Ok(())
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
