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
const EVENTS_KEY: &str = "queue";

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
/// lost across a restart.
pub struct EventQueue {
    queue: Mutex<VecDeque<SpliceEvent>>,
    ready: Condvar,
    store: SharedStore,
    on_push: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl EventQueue {
    /// Reads the queue from `store`.
    pub fn load(store: SharedStore) -> Self {
        let queue = store
            .read(
                PERSISTENCE_NAMESPACE,
                EVENTS_SECONDARY_NAMESPACE,
                EVENTS_KEY,
            )
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        EventQueue {
            queue: Mutex::new(queue),
            ready: Condvar::new(),
            store,
            on_push: Mutex::new(None),
        }
    }

    /// Calls `f` after each new event (e.g. to wake an async task).
    pub fn set_notifier(&self, f: Box<dyn Fn() + Send + Sync>) {
        *self.on_push.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    fn save(&self, queue: &VecDeque<SpliceEvent>) {
        match serde_json::to_vec(queue) {
            Ok(bytes) => {
                if let Err(e) = self.store.write(
                    PERSISTENCE_NAMESPACE,
                    EVENTS_SECONDARY_NAMESPACE,
                    EVENTS_KEY,
                    bytes,
                ) {
                    log::error!("could not persist splice events: {e}");
                }
            }
            Err(e) => log::error!("could not encode splice events: {e}"),
        }
    }

    /// Appends an event.
    pub fn push(&self, event: SpliceEvent) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.push_back(event);
            self.save(&queue);
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
            .cloned()
    }

    /// Waits up to `timeout` for an event and returns the oldest one.
    pub fn wait_next(&self, timeout: Duration) -> Option<SpliceEvent> {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (queue, _) = self
            .ready
            .wait_timeout_while(queue, timeout, |q| q.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        queue.front().cloned()
    }

    /// Acknowledges the oldest event, so [`EventQueue::next`] moves on.
    pub fn handled(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.pop_front().is_some() {
            self.save(&queue);
        }
    }

    /// Every event not yet acknowledged.
    pub fn pending(&self) -> Vec<SpliceEvent> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
