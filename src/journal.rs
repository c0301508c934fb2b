//! The journal: every record this crate keeps (splices, batches), each
//! written together with the events that report its change, in one store
//! write.
//!
//! A record is a document `{kind}-{id}` in `ldk_splice/journal`. A change
//! to several records at once (a batch moving all its legs) is one group
//! entry in `ldk_splice/journal_groups`; on load the newest revision of
//! each document wins and the groups are folded back into documents.
//!
//! Events live inside the document whose change they report, so a change
//! and its event are written together or not at all. The application
//! acknowledges events oldest first. An acknowledgement is not a write of
//! its own: every document written carries the sequence number of the last
//! event acknowledged (and drops the events up to it), so the next change
//! makes it durable. One that no change follows within
//! [`ACK_WRITE_DELAY`] is written to `ldk_splice/events/acked` by the
//! timer; on load the newest of the two wins. A crash before either
//! delivers those events again: delivery is at least once, as LDK's own
//! events are.
//!
//! No change is kept in memory unless its write succeeded, so a failed
//! write leaves the records as the store has them and the caller acts on
//! nothing. (Acknowledgements alone run ahead of the store, as above.)

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use lightning::util::wakers::{Future, Notifier};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::SpliceError;
use crate::events::{EventNotifier, SpliceEvent};
use crate::store::{self, SharedStore, StoreError};

const DOCS: &str = "journal";
const GROUPS: &str = "journal_groups";
const EVENTS: &str = "events";
const ACKED_KEY: &str = "acked";
const FORMAT_VERSION: u32 = 1;

/// How long an acknowledgement may wait for a change to carry it before
/// the timer writes it by itself.
pub const ACK_WRITE_DELAY: Duration = Duration::from_secs(5);

/// The kind of document a splice record is.
pub(crate) const SPLICE: &str = "splice";
/// The kind of document a batch record is.
pub(crate) const BATCH: &str = "batch";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct QueuedEvent {
    seq: u64,
    event: SpliceEvent,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredDoc {
    v: u32,
    kind: String,
    id: u64,
    revision: u64,
    /// Kept as written: a body is parsed once, by whoever owns its kind.
    body: Box<RawValue>,
    events: Vec<QueuedEvent>,
    /// The last event acknowledged when this was written (absent in
    /// documents written before acknowledgements rode along).
    #[serde(default)]
    acked: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredGroup {
    v: u32,
    docs: Vec<StoredDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Acked {
    v: u32,
    through: u64,
}

/// A change to one document: its new body and the events reporting it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) kind: &'static str,
    pub(crate) id: u64,
    pub(crate) body: Box<RawValue>,
    pub(crate) events: Vec<SpliceEvent>,
}

impl Change {
    /// A change of `kind` document `id` to `body`, reported by `events`.
    pub(crate) fn new<T: Serialize>(
        kind: &'static str,
        id: u64,
        body: &T,
        events: Vec<SpliceEvent>,
    ) -> Result<Self, SpliceError> {
        let body = serde_json::value::to_raw_value(body)
            .map_err(|e| SpliceError::Persistence(format!("encoding {kind}-{id}: {e}")))?;
        Ok(Change {
            kind,
            id,
            body,
            events,
        })
    }
}

#[derive(Debug, Default)]
struct DocState {
    /// Its events not acknowledged yet: written again with the document.
    events: Vec<QueuedEvent>,
}

/// A document's kind and id.
type Slot = (String, u64);

struct Inner {
    /// The documents that still hold unacknowledged events (and only
    /// those: a finished record costs nothing here).
    docs: BTreeMap<Slot, DocState>,
    /// Bodies read at load, handed once to whoever owns their kind.
    loaded: BTreeMap<String, Vec<Box<RawValue>>>,
    /// Unacknowledged events, oldest first, with the document holding each.
    pending: VecDeque<(QueuedEvent, Slot)>,
    /// The last event acknowledged.
    acked: u64,
    /// The last acknowledgement the store has, and since when a newer one
    /// waits to be written.
    acked_written: u64,
    acked_waiting_since: Option<Instant>,
    next_seq: u64,
    revision: u64,
    next_group: u64,
}

/// Records and their events, in memory and in the store.
pub struct Journal {
    store: SharedStore,
    inner: Mutex<Inner>,
    ready: Condvar,
    /// Sees each event right after its write (fault injection only).
    observer: Mutex<Option<EventNotifier>>,
    /// Wakes `Future`s waiting for events; notified outside every lock.
    waiters: Notifier,
    /// Events were queued since the waiters were last woken.
    unannounced: AtomicBool,
}

fn doc_key(kind: &str, id: u64) -> String {
    format!("{kind}-{id:020}")
}

fn persistence(e: StoreError) -> SpliceError {
    SpliceError::Persistence(e.to_string())
}

impl Journal {
    /// Reads every document, folds group entries in and queues every event
    /// not acknowledged yet. An unreadable entry is an error, never skipped:
    /// a journal that lost a record could release coins a splice still
    /// needs.
    pub(crate) fn load(store: SharedStore) -> Result<Self, SpliceError> {
        let mut winners: BTreeMap<(String, u64), (StoredDoc, bool)> = BTreeMap::new();
        for key in store::list(&store, DOCS).map_err(persistence)? {
            let doc: StoredDoc = store::read_json(&store, DOCS, &key)
                .map_err(persistence)?
                .ok_or_else(|| SpliceError::Persistence(format!("journal entry {key} vanished")))?;
            check_version(doc.v, &key)?;
            winners.insert((doc.kind.clone(), doc.id), (doc, false));
        }
        let mut groups = store::list(&store, GROUPS).map_err(persistence)?;
        groups.sort();
        let mut next_group = 0;
        for key in &groups {
            let sequence: u64 = key.parse().map_err(|_| {
                SpliceError::Persistence(format!("unexpected journal group key {key}"))
            })?;
            next_group = next_group.max(sequence + 1);
            let group: StoredGroup = store::read_json(&store, GROUPS, key)
                .map_err(persistence)?
                .ok_or_else(|| SpliceError::Persistence(format!("journal group {key} vanished")))?;
            check_version(group.v, key)?;
            for doc in group.docs {
                let slot = (doc.kind.clone(), doc.id);
                if winners
                    .get(&slot)
                    .is_none_or(|(old, _)| old.revision < doc.revision)
                {
                    winners.insert(slot, (doc, true));
                }
            }
        }
        let acked = winners.values().map(|(doc, _)| doc.acked).fold(
            store::read_json::<Acked>(&store, EVENTS, ACKED_KEY)
                .map_err(persistence)?
                .map_or(0, |a| a.through),
            u64::max,
        );

        let mut inner = Inner {
            docs: BTreeMap::new(),
            loaded: BTreeMap::new(),
            pending: VecDeque::new(),
            acked,
            acked_written: acked,
            acked_waiting_since: None,
            next_seq: acked + 1,
            revision: 0,
            next_group,
        };
        let mut pending = Vec::new();
        let mut to_fold = Vec::new();
        for ((kind, id), (doc, from_group)) in winners {
            inner.revision = inner.revision.max(doc.revision);
            for event in &doc.events {
                inner.next_seq = inner.next_seq.max(event.seq + 1);
            }
            let unacked: Vec<QueuedEvent> = doc
                .events
                .iter()
                .filter(|e| e.seq > acked)
                .cloned()
                .collect();
            pending.extend(unacked.iter().map(|e| (e.clone(), (kind.clone(), id))));
            let bodies = inner.loaded.entry(kind.clone()).or_default();
            if from_group {
                bodies.push(doc.body.clone());
                to_fold.push(doc);
            } else {
                bodies.push(doc.body);
            }
            if !unacked.is_empty() {
                inner.docs.insert((kind, id), DocState { events: unacked });
            }
        }
        pending.sort_by_key(|(e, _)| e.seq);
        inner.pending = pending.into();

        // Fold the groups back into one entry per document, then drop them.
        for doc in &to_fold {
            store::write_json(&store, DOCS, &doc_key(&doc.kind, doc.id), doc)
                .map_err(persistence)?;
        }
        for key in groups {
            store::remove(&store, GROUPS, &key).map_err(persistence)?;
        }
        Ok(Journal {
            store,
            inner: Mutex::new(inner),
            ready: Condvar::new(),
            observer: Mutex::new(None),
            waiters: Notifier::new(),
            unannounced: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bodies of every `kind` document read at load (each only once).
    pub(crate) fn take_loaded(&self, kind: &str) -> Vec<Box<RawValue>> {
        self.lock().loaded.remove(kind).unwrap_or_default()
    }

    /// Writes `changes` in one store write, with their events. On success
    /// the events are queued for the application and the notifier sees
    /// each; on failure nothing changed and the error says why.
    pub(crate) fn commit(&self, changes: Vec<Change>) -> Result<(), SpliceError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        let mut docs = Vec::with_capacity(changes.len());
        let mut new_events = Vec::new();
        let mut seq = inner.next_seq;
        let mut revision = inner.revision;
        for change in changes {
            revision += 1;
            let slot = (change.kind.to_string(), change.id);
            let mut events: Vec<QueuedEvent> = inner
                .docs
                .get(&slot)
                .map(|d| d.events.clone())
                .unwrap_or_default();
            // A document changed twice in one commit keeps the newest body.
            if let Some(position) = docs
                .iter()
                .position(|d: &StoredDoc| d.kind == change.kind && d.id == change.id)
            {
                events = docs.remove(position).events;
            }
            for event in change.events {
                let queued = QueuedEvent { seq, event };
                seq += 1;
                events.push(queued.clone());
                new_events.push((queued, slot.clone()));
            }
            docs.push(StoredDoc {
                v: FORMAT_VERSION,
                kind: change.kind.to_string(),
                id: change.id,
                revision,
                body: change.body,
                events,
                acked: inner.acked,
            });
        }
        if let [doc] = docs.as_slice() {
            store::write_json(&self.store, DOCS, &doc_key(&doc.kind, doc.id), doc)
                .map_err(persistence)?;
        } else {
            let key = format!("{:020}", inner.next_group);
            let group = StoredGroup {
                v: FORMAT_VERSION,
                docs,
            };
            store::write_json(&self.store, GROUPS, &key, &group).map_err(persistence)?;
            docs = group.docs;
            inner.next_group += 1;
        }
        inner.next_seq = seq;
        inner.revision = revision;
        inner.acked_written = inner.acked;
        inner.acked_waiting_since = None;
        for doc in docs {
            let slot = (doc.kind, doc.id);
            if doc.events.is_empty() {
                inner.docs.remove(&slot);
            } else {
                inner.docs.insert(slot, DocState { events: doc.events });
            }
        }
        inner.pending.extend(new_events.iter().cloned());
        drop(inner);
        if !new_events.is_empty() {
            self.ready.notify_all();
            self.unannounced.store(true, Ordering::Release);
            let observer = self.observer.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(observe) = observer.as_ref() {
                for (queued, _) in &new_events {
                    observe(&queued.event);
                }
            }
        }
        Ok(())
    }

    /// Calls `f` with every event right after the write holding it, under
    /// the writer's locks (fault injection only).
    pub(crate) fn set_observer(&self, f: EventNotifier) {
        *self.observer.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Wakes whoever waits for events if any were queued since the last
    /// call. Called with no lock held: a waiter's callback may run here.
    pub(crate) fn announce(&self) {
        if self.unannounced.swap(false, Ordering::AcqRel) {
            self.waiters.notify();
        }
    }

    /// A future that completes once events are announced after this call
    /// (or at once, if some were announced that no future saw).
    pub(crate) fn event_future(&self) -> Future {
        self.waiters.get_future()
    }

    /// The oldest event not acknowledged yet.
    pub(crate) fn next_event(&self) -> Option<SpliceEvent> {
        self.lock().pending.front().map(|(q, _)| q.event.clone())
    }

    /// Waits up to `timeout` for an event and returns the oldest one.
    pub(crate) fn wait_next_event(&self, timeout: Duration) -> Option<SpliceEvent> {
        let inner = self.lock();
        let (inner, _) = self
            .ready
            .wait_timeout_while(inner, timeout, |i| i.pending.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        inner.pending.front().map(|(q, _)| q.event.clone())
    }

    /// Acknowledges the oldest event: it is not delivered again in this
    /// run, and is written with the next change or by
    /// [`Journal::write_acknowledgement`].
    pub(crate) fn event_handled(&self) {
        let mut inner = self.lock();
        let Some((oldest, slot)) = inner.pending.pop_front() else {
            return;
        };
        inner.acked = oldest.seq;
        inner.acked_waiting_since.get_or_insert_with(Instant::now);
        // Events are acknowledged in order: the oldest is its document's
        // oldest too.
        if let Some(doc) = inner.docs.get_mut(&slot) {
            doc.events.retain(|e| e.seq > oldest.seq);
            if doc.events.is_empty() {
                inner.docs.remove(&slot);
            }
        }
    }

    /// Writes the last acknowledgement if the store does not have it yet
    /// and it has waited `at_least` for a change to carry it. On error it
    /// stays waiting (and the events it covers would be delivered again
    /// after a restart).
    pub(crate) fn write_acknowledgement(&self, at_least: Duration) -> Result<(), SpliceError> {
        let mut inner = self.lock();
        let due = inner
            .acked_waiting_since
            .is_some_and(|since| since.elapsed() >= at_least);
        if !due || inner.acked == inner.acked_written {
            return Ok(());
        }
        let through = inner.acked;
        store::write_json(
            &self.store,
            EVENTS,
            ACKED_KEY,
            &Acked {
                v: FORMAT_VERSION,
                through,
            },
        )
        .map_err(persistence)?;
        inner.acked_written = through;
        inner.acked_waiting_since = None;
        Ok(())
    }

    /// Every event not acknowledged yet, oldest first.
    pub(crate) fn pending_events(&self) -> Vec<SpliceEvent> {
        self.lock()
            .pending
            .iter()
            .map(|(q, _)| q.event.clone())
            .collect()
    }
}

fn check_version(version: u32, key: &str) -> Result<(), SpliceError> {
    if version == FORMAT_VERSION {
        Ok(())
    } else {
        Err(SpliceError::Persistence(format!(
            "journal entry {key} has format version {version}; this build reads version {FORMAT_VERSION}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};

    use super::*;
    use crate::ids::BatchId;
    use crate::record::BatchState;
    use lightning::util::persist::KVStoreSync;

    fn memory_store() -> SharedStore {
        Arc::new(crate::store::MemoryStore::default())
    }

    fn event(n: u64) -> SpliceEvent {
        SpliceEvent::BatchStateChanged {
            batch: BatchId(n),
            state: BatchState::Negotiating,
        }
    }

    fn change(id: u64, body: Value, events: Vec<SpliceEvent>) -> Change {
        Change::new(SPLICE, id, &body, events).expect("encodes")
    }

    fn bodies(journal: &Journal) -> Vec<Value> {
        journal
            .take_loaded(SPLICE)
            .iter()
            .map(|raw| serde_json::from_str(raw.get()).expect("a JSON body"))
            .collect()
    }

    #[test]
    fn groups_and_single_writes_fold_on_load_and_the_newest_revision_wins() {
        let dir = memory_store();
        let journal = Journal::load(dir.clone()).expect("empty journal");
        journal
            .commit(vec![change(1, json!("one"), vec![])])
            .expect("single");
        journal
            .commit(
                (2..=4)
                    .map(|id| change(id, json!("group"), vec![]))
                    .collect(),
            )
            .expect("group");
        journal
            .commit(vec![change(3, json!("three later"), vec![])])
            .expect("single after group");
        journal
            .commit(vec![
                change(1, json!("one later"), vec![]),
                change(4, json!("four later"), vec![]),
            ])
            .expect("group after single");
        drop(journal);
        let reloaded = Journal::load(dir.clone()).expect("load");
        assert_eq!(
            bodies(&reloaded),
            vec![
                json!("one later"),
                json!("group"),
                json!("three later"),
                json!("four later")
            ]
        );
        let groups = store::list(&dir.clone(), GROUPS).expect("list");
        assert!(groups.is_empty(), "groups left: {groups:?}");
        let again = Journal::load(dir.clone()).expect("load again");
        assert_eq!(bodies(&again).len(), 4);
    }

    #[test]
    fn events_survive_a_restart_until_acknowledged_and_follow_their_documents() {
        let dir = memory_store();
        let journal = Journal::load(dir.clone()).expect("empty journal");
        journal
            .commit(vec![change(1, json!(1), vec![event(1)])])
            .expect("write");
        journal
            .commit(vec![
                change(2, json!(2), vec![event(2)]),
                change(3, json!(3), vec![event(3), event(4)]),
            ])
            .expect("group");
        // Document 1 is written again before its first event is handled:
        // that event must not be lost.
        journal
            .commit(vec![change(1, json!(11), vec![event(5)])])
            .expect("rewrite");
        let all: Vec<SpliceEvent> = (1..=5).map(event).collect();
        assert_eq!(journal.pending_events(), all);
        assert_eq!(
            Journal::load(dir.clone()).expect("load").pending_events(),
            all
        );

        journal.event_handled();
        journal.event_handled();
        assert_eq!(journal.next_event(), Some(event(3)));
        // Not written yet: a restart now delivers them again.
        assert_eq!(
            Journal::load(dir.clone()).expect("load").pending_events(),
            all
        );
        journal
            .write_acknowledgement(ACK_WRITE_DELAY)
            .expect("not due: no write");
        assert_eq!(
            Journal::load(dir.clone()).expect("load").pending_events(),
            all
        );
        journal
            .write_acknowledgement(Duration::ZERO)
            .expect("written");
        let reloaded = Journal::load(dir.clone()).expect("load");
        assert_eq!(
            reloaded.pending_events(),
            (3..=5).map(event).collect::<Vec<_>>()
        );
        // Events written after a reload follow the older ones.
        reloaded
            .commit(vec![change(9, json!(9), vec![event(6)])])
            .expect("write");
        assert_eq!(
            Journal::load(dir.clone()).expect("load").pending_events(),
            (3..=6).map(event).collect::<Vec<_>>()
        );
        for _ in 0..4 {
            reloaded.event_handled();
        }
        assert_eq!(reloaded.next_event(), None);
        reloaded
            .write_acknowledgement(Duration::ZERO)
            .expect("written");
        assert!(Journal::load(dir.clone())
            .expect("load")
            .pending_events()
            .is_empty());
    }

    #[test]
    fn the_next_change_carries_the_acknowledgement_without_a_write_of_its_own() {
        let dir = Arc::new(CountingMemory::default());
        let journal = Journal::load(dir.clone()).expect("empty journal");
        journal
            .commit(vec![change(1, json!(1), vec![event(1), event(2)])])
            .expect("write");
        journal
            .commit(vec![change(2, json!(2), vec![event(3)])])
            .expect("write");
        journal.event_handled();
        journal.event_handled();
        // A change to another document carries the acknowledgement.
        journal
            .commit(vec![change(3, json!(3), vec![])])
            .expect("write");
        assert_eq!(dir.writes.load(Ordering::SeqCst), 3, "no write of its own");
        journal
            .write_acknowledgement(Duration::ZERO)
            .expect("nothing waits");
        assert_eq!(
            dir.writes.load(Ordering::SeqCst),
            3,
            "nothing left to write"
        );
        assert_eq!(
            Journal::load(dir.clone()).expect("load").pending_events(),
            vec![event(3)]
        );
        // The same through a group write.
        journal.event_handled();
        journal
            .commit(vec![
                change(4, json!(4), vec![]),
                change(5, json!(5), vec![]),
            ])
            .expect("group");
        assert!(Journal::load(dir.clone())
            .expect("load")
            .pending_events()
            .is_empty());
    }

    #[test]
    fn a_failed_acknowledgement_write_stays_due_and_is_retried() {
        let dir = Arc::new(CountingMemory::default());
        let journal = Journal::load(dir.clone()).expect("empty journal");
        journal
            .commit(vec![change(1, json!(1), vec![event(1)])])
            .expect("write");
        journal.event_handled();
        dir.broken.store(true, Ordering::SeqCst);
        assert!(journal.write_acknowledgement(Duration::ZERO).is_err());
        assert_eq!(journal.next_event(), None, "handled in this run");
        dir.broken.store(false, Ordering::SeqCst);
        assert_eq!(
            Journal::load(dir.clone()).expect("load").pending_events(),
            vec![event(1)],
            "delivered again after a restart"
        );
        journal
            .write_acknowledgement(Duration::ZERO)
            .expect("retried");
        assert!(Journal::load(dir.clone())
            .expect("load")
            .pending_events()
            .is_empty());
    }

    /// A memory store that counts writes and can refuse them.
    #[derive(Default)]
    struct CountingMemory {
        inner: crate::store::MemoryStore,
        writes: std::sync::atomic::AtomicU64,
        broken: AtomicBool,
    }

    impl KVStoreSync for CountingMemory {
        fn read(&self, p: &str, s: &str, k: &str) -> Result<Vec<u8>, lightning::io::Error> {
            self.inner.read(p, s, k)
        }
        fn write(
            &self,
            p: &str,
            s: &str,
            k: &str,
            buf: Vec<u8>,
        ) -> Result<(), lightning::io::Error> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(lightning::io::Error::new(
                    lightning::io::ErrorKind::Other,
                    "broken",
                ));
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.write(p, s, k, buf)
        }
        fn remove(
            &self,
            p: &str,
            s: &str,
            k: &str,
            lazy: bool,
        ) -> Result<(), lightning::io::Error> {
            self.inner.remove(p, s, k, lazy)
        }
        fn list(&self, p: &str, s: &str) -> Result<Vec<String>, lightning::io::Error> {
            self.inner.list(p, s)
        }
    }

    #[test]
    fn an_unreadable_entry_is_an_error_not_a_skip() {
        let dir = memory_store();
        let journal = Journal::load(dir.clone()).expect("empty journal");
        journal
            .commit(vec![change(1, json!(1), vec![event(1)])])
            .expect("write");
        dir.clone()
            .write(
                crate::store::PERSISTENCE_NAMESPACE,
                DOCS,
                &doc_key(SPLICE, 1),
                b"{not json".to_vec(),
            )
            .expect("corrupt it");
        let err = Journal::load(dir.clone()).err().expect("refused");
        assert!(err.to_string().contains("splice-"), "{err}");
    }

    #[test]
    fn waiters_wake_only_when_events_are_announced_outside_the_write() {
        let journal = Journal::load(memory_store()).expect("empty journal");
        let future = journal.event_future();
        let called = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        {
            let called = called.clone();
            journal.event_future().register_callback(Box::new(move || {
                called.fetch_add(1, Ordering::SeqCst);
            }));
        }
        journal
            .commit(vec![change(1, json!("one"), vec![event(1)])])
            .expect("written");
        assert!(
            !future.wait_timeout(Duration::ZERO),
            "not woken inside the write"
        );
        assert_eq!(
            called.load(Ordering::SeqCst),
            0,
            "no callback inside the write"
        );
        journal.announce();
        assert!(future.wait_timeout(Duration::ZERO));
        assert_eq!(called.load(Ordering::SeqCst), 1);
        journal.announce();
        assert!(
            !journal.event_future().wait_timeout(Duration::ZERO),
            "nothing new to announce"
        );
        journal
            .commit(vec![change(2, json!("two"), vec![])])
            .expect("written");
        journal.announce();
        assert!(
            !journal.event_future().wait_timeout(Duration::ZERO),
            "a write without events wakes no one"
        );
    }
}
