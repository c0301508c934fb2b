//! Splice events: a persisted queue the application polls and acknowledges.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use bitcoin::secp256k1::PublicKey;
use bitcoin::Txid;
use lightning::ln::types::ChannelId;
use serde::{Deserialize, Serialize};

use crate::journal::{SpliceId, SpliceState};
use crate::wallet::{SharedStore, PERSISTENCE_NAMESPACE};

const EVENTS_SECONDARY_NAMESPACE: &str = "events";

/// Something that happened to a splice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpliceEvent {
    /// A splice reached a new state.
    StateChanged {
        /// The splice.
        id: SpliceId,
        /// Its channel.
        #[serde(with = "crate::journal::channel_id_hex")]
        channel_id: ChannelId,
        /// The channel's counterparty.
        counterparty: PublicKey,
        /// The state it reached.
        state: SpliceState,
        /// The splice transaction, once known.
        txid: Option<Txid>,
    },
    /// A batch reached a new state.
    BatchStateChanged {
        /// The batch.
        batch: crate::batch::BatchId,
        /// The state it reached.
        state: crate::batch::BatchState,
    },
}

impl SpliceEvent {
    /// The splice the event is about, if it is about one.
    pub fn splice_id(&self) -> Option<SpliceId> {
        match self {
            SpliceEvent::StateChanged { id, .. } => Some(*id),
            SpliceEvent::BatchStateChanged { .. } => None,
        }
    }
}

/// Events waiting for the application, oldest first, persisted so none is
/// lost across a restart: one store entry per event, keyed by a sequence
/// number, so queueing or acknowledging one writes only that one.
pub struct EventQueue {
    queue: Mutex<VecDeque<(u64, SpliceEvent)>>,
    ready: Condvar,
    store: SharedStore,
    on_push: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl EventQueue {
    /// Reads the queue from `store`.
    pub fn load(store: SharedStore) -> Self {
        let mut entries: Vec<(u64, SpliceEvent)> = store
            .list(PERSISTENCE_NAMESPACE, EVENTS_SECONDARY_NAMESPACE)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|key| {
                let sequence = key.parse::<u64>().ok()?;
                let bytes = store
                    .read(PERSISTENCE_NAMESPACE, EVENTS_SECONDARY_NAMESPACE, &key)
                    .ok()?;
                match serde_json::from_slice(&bytes) {
                    Ok(event) => Some((sequence, event)),
                    Err(e) => {
                        log::warn!("skipping unreadable splice event {key}: {e}");
                        None
                    }
                }
            })
            .collect();
        entries.sort_by_key(|(sequence, _)| *sequence);
        EventQueue {
            queue: Mutex::new(entries.into()),
            ready: Condvar::new(),
            store,
            on_push: Mutex::new(None),
        }
    }

    /// Calls `f` after each new event (e.g. to wake an async task).
    pub fn set_notifier(&self, f: Box<dyn Fn() + Send + Sync>) {
        *self.on_push.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Appends an event.
    pub fn push(&self, event: SpliceEvent) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let sequence = queue
                .back()
                .map_or(unix_nanos(), |(last, _)| (last + 1).max(unix_nanos()));
            match serde_json::to_vec(&event) {
                Ok(bytes) => {
                    if let Err(e) = self.store.write(
                        PERSISTENCE_NAMESPACE,
                        EVENTS_SECONDARY_NAMESPACE,
                        &format!("{sequence:020}"),
                        bytes,
                    ) {
                        log::error!("could not persist a splice event: {e}");
                    }
                }
                Err(e) => log::error!("could not encode a splice event: {e}"),
            }
            queue.push_back((sequence, event));
        }
        self.ready.notify_all();
        if let Some(f) = self
            .on_push
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            f();
        }
    }

    /// The oldest event not yet acknowledged, if any.
    pub fn next(&self) -> Option<SpliceEvent> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .map(|(_, event)| event.clone())
    }

    /// Waits up to `timeout` for an event and returns the oldest one.
    pub fn wait_next(&self, timeout: Duration) -> Option<SpliceEvent> {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (queue, _) = self
            .ready
            .wait_timeout_while(queue, timeout, |q| q.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        queue.front().map(|(_, event)| event.clone())
    }

    /// Acknowledges the oldest event, so [`EventQueue::next`] moves on.
    pub fn handled(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((sequence, _)) = queue.pop_front() {
            if let Err(e) = self.store.remove(
                PERSISTENCE_NAMESPACE,
                EVENTS_SECONDARY_NAMESPACE,
                &format!("{sequence:020}"),
                false,
            ) {
                log::error!("could not forget a handled splice event: {e}");
            }
        }
    }

    /// Every event not yet acknowledged.
    pub fn pending(&self) -> Vec<SpliceEvent> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, event)| event.clone())
            .collect()
    }
}

/// Nanoseconds since the Unix epoch: keeps sequence numbers increasing
/// across restarts.
fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
