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
/// lost across a restart. Each store entry, keyed by a sequence number,
/// holds the events queued together (usually one; a batch queues many in one
/// write). An entry is removed once its last event is acknowledged, so after
/// a crash the unacknowledged rest of an entry is delivered again.
pub struct EventQueue {
    queue: Mutex<VecDeque<Queued>>,
    ready: Condvar,
    store: SharedStore,
    on_push: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

struct Queued {
    /// The store entry holding the event.
    entry: u64,
    event: SpliceEvent,
}

/// A store entry: one event, or several queued together.
#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Many(Vec<SpliceEvent>),
    One(SpliceEvent),
}

impl EventQueue {
    /// Reads the queue from `store`.
    pub fn load(store: SharedStore) -> Self {
        let mut entries: Vec<(u64, Vec<SpliceEvent>)> = store
            .list(PERSISTENCE_NAMESPACE, EVENTS_SECONDARY_NAMESPACE)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|key| {
                let sequence = key.parse::<u64>().ok()?;
                let bytes = store
                    .read(PERSISTENCE_NAMESPACE, EVENTS_SECONDARY_NAMESPACE, &key)
                    .ok()?;
                match serde_json::from_slice(&bytes) {
                    Ok(Entry::Many(events)) => Some((sequence, events)),
                    Ok(Entry::One(event)) => Some((sequence, vec![event])),
                    Err(e) => {
                        log::warn!("skipping unreadable splice event {key}: {e}");
                        None
                    }
                }
            })
            .collect();
        entries.sort_by_key(|(sequence, _)| *sequence);
        let queue = entries
            .into_iter()
            .flat_map(|(entry, events)| {
                events.into_iter().map(move |event| Queued { entry, event })
            })
            .collect();
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

    /// Appends an event.
    pub fn push(&self, event: SpliceEvent) {
        self.push_all(vec![event]);
    }

    /// Appends `events` in order, in one store write.
    pub fn push_all(&self, events: Vec<SpliceEvent>) {
        if events.is_empty() {
            return;
        }
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let entry = queue
                .back()
                .map_or(unix_nanos(), |last| (last.entry + 1).max(unix_nanos()));
            let encoded = match events.as_slice() {
                [one] => serde_json::to_vec(one),
                many => serde_json::to_vec(many),
            };
            match encoded {
                Ok(bytes) => {
                    if let Err(e) = self.store.write(
                        PERSISTENCE_NAMESPACE,
                        EVENTS_SECONDARY_NAMESPACE,
                        &format!("{entry:020}"),
                        bytes,
                    ) {
                        log::error!("could not persist splice events: {e}");
                    }
                }
                Err(e) => log::error!("could not encode splice events: {e}"),
            }
            queue.extend(events.into_iter().map(|event| Queued { entry, event }));
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
            .map(|queued| queued.event.clone())
    }

    /// Waits up to `timeout` for an event and returns the oldest one.
    pub fn wait_next(&self, timeout: Duration) -> Option<SpliceEvent> {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (queue, _) = self
            .ready
            .wait_timeout_while(queue, timeout, |q| q.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        queue.front().map(|queued| queued.event.clone())
    }

    /// Acknowledges the oldest event, so [`EventQueue::next`] moves on.
    pub fn handled(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(done) = queue.pop_front() else {
            return;
        };
        if queue.front().is_some_and(|next| next.entry == done.entry) {
            // Its entry still holds unacknowledged events.
            return;
        }
        if let Err(e) = self.store.remove(
            PERSISTENCE_NAMESPACE,
            EVENTS_SECONDARY_NAMESPACE,
            &format!("{:020}", done.entry),
            false,
        ) {
            log::error!("could not forget a handled splice event: {e}");
        }
    }

    /// Every event not yet acknowledged.
    pub fn pending(&self) -> Vec<SpliceEvent> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|queued| queued.event.clone())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lightning_persister::fs_store::v1::FilesystemStore;

    use super::*;
    use crate::batch::{BatchId, BatchState};

    fn store(dir: &std::path::Path) -> SharedStore {
        Arc::new(FilesystemStore::new(dir.to_path_buf()))
    }

    fn event(n: u64) -> SpliceEvent {
        SpliceEvent::BatchStateChanged {
            batch: BatchId(n),
            state: BatchState::Negotiating,
        }
    }

    #[test]
    fn events_queued_together_survive_a_restart_until_all_are_acknowledged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let queue = EventQueue::load(store(dir.path()));
        queue.push(event(1));
        queue.push_all(vec![event(2), event(3), event(4)]);
        queue.push(event(5));
        assert_eq!(
            EventQueue::load(store(dir.path())).pending(),
            (1..=5).map(event).collect::<Vec<_>>()
        );

        // Acknowledging part of a group keeps the group's entry.
        queue.handled();
        queue.handled();
        assert_eq!(queue.next(), Some(event(3)));
        assert_eq!(
            EventQueue::load(store(dir.path())).pending(),
            (2..=5).map(event).collect::<Vec<_>>()
        );
        // Its last event removes it.
        queue.handled();
        queue.handled();
        assert_eq!(
            EventQueue::load(store(dir.path())).pending(),
            vec![event(5)]
        );
        queue.handled();
        assert!(EventQueue::load(store(dir.path())).pending().is_empty());
        assert_eq!(queue.next(), None);
    }
}
