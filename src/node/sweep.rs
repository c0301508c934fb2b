//! Sweeping what closed channels leave us into the wallet: LDK's
//! `OutputSweeperSync`, persisted in the node's store, fed the same blocks
//! as the channel manager and driven by the background processor.

use std::sync::Arc;

use lightning::chain::BlockLocator;
use lightning::sign::{KeysManager, SpendableOutputDescriptor};
use lightning::util::persist::{
    KVStoreSync, OUTPUT_SWEEPER_PERSISTENCE_KEY, OUTPUT_SWEEPER_PERSISTENCE_PRIMARY_NAMESPACE,
    OUTPUT_SWEEPER_PERSISTENCE_SECONDARY_NAMESPACE,
};
use lightning::util::ser::{Readable, ReadableArgs};
use lightning::util::sweep::OutputSweeperSync;

use super::bitcoind::Bitcoind;
use super::types::NoFilter;
use super::types::Store;
use super::NodeError;
use crate::logger::LogBridge;
use crate::store::PERSISTENCE_NAMESPACE;
use crate::wallet::BdkWallet;

/// The node's output sweeper.
pub type Sweeper = OutputSweeperSync<
    Arc<Bitcoind>,
    Arc<BdkWallet>,
    Arc<Bitcoind>,
    NoFilter,
    Arc<Store>,
    Arc<LogBridge>,
    Arc<KeysManager>,
>;

/// Where nodes before the sweeper kept the descriptors of outputs to sweep.
const LEGACY_NAMESPACE: &str = "spendable_outputs";

/// Reads the sweeper from `store`, or makes a new one starting at `best_block`.
pub(crate) fn load_sweeper(
    store: Arc<Store>,
    best_block: BlockLocator,
    bitcoind: Arc<Bitcoind>,
    keys: Arc<KeysManager>,
    wallet: Arc<BdkWallet>,
    logger: Arc<LogBridge>,
) -> Result<Sweeper, NodeError> {
    let stored = store.read(
        OUTPUT_SWEEPER_PERSISTENCE_PRIMARY_NAMESPACE,
        OUTPUT_SWEEPER_PERSISTENCE_SECONDARY_NAMESPACE,
        OUTPUT_SWEEPER_PERSISTENCE_KEY,
    );
    let sweeper = match stored {
        Ok(bytes) => {
            let args = (
                bitcoind.clone(),
                bitcoind,
                None::<NoFilter>,
                keys,
                wallet,
                store.clone(),
                logger,
            );
            let (_, sweeper) = <(BlockLocator, Sweeper)>::read(&mut &bytes[..], args)
                .map_err(|e| NodeError::Storage(format!("reading the output sweeper: {e:?}")))?;
            sweeper
        }
        Err(e) if e.kind() == lightning::io::ErrorKind::NotFound => Sweeper::new(
            best_block,
            bitcoind.clone(),
            bitcoind,
            None,
            keys,
            wallet,
            store.clone(),
            logger,
        ),
        Err(e) => {
            return Err(NodeError::Storage(format!(
                "reading the output sweeper: {e}"
            )))
        }
    };
    adopt_legacy_outputs(&sweeper, &*store)?;
    Ok(sweeper)
}

/// Hands outputs an older node stored for a later sweep to the sweeper,
/// then forgets them.
fn adopt_legacy_outputs(sweeper: &Sweeper, store: &dyn KVStoreSync) -> Result<(), NodeError> {
    let keys = store
        .list(PERSISTENCE_NAMESPACE, LEGACY_NAMESPACE)
        .map_err(|e| NodeError::Storage(format!("listing stored outputs: {e}")))?;
    for key in keys {
        let bytes = store
            .read(PERSISTENCE_NAMESPACE, LEGACY_NAMESPACE, &key)
            .map_err(|e| NodeError::Storage(format!("reading stored output {key}: {e}")))?;
        let descriptor = SpendableOutputDescriptor::read(&mut &bytes[..])
            .map_err(|e| NodeError::Storage(format!("stored output {key}: {e:?}")))?;
        sweeper
            .track_spendable_outputs(vec![descriptor], None, None, false, None)
            .map_err(|()| NodeError::Storage("the sweeper could not write".into()))?;
        store
            .remove(PERSISTENCE_NAMESPACE, LEGACY_NAMESPACE, &key, false)
            .map_err(|e| NodeError::Storage(format!("removing stored output {key}: {e}")))?;
        log::info!("output {key} stored by an earlier version handed to the sweeper");
    }
    Ok(())
}
