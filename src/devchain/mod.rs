//! A regtest chain with a bitcoind-compatible JSON-RPC and REST interface, for tests and demos
//! on machines where no bitcoind can be installed.
//!
//! The chain validates every transaction the way bitcoind does (consensus checks, every input
//! script through Bitcoin Core's own consensus library with all spent outputs so taproot is
//! checked, nLockTime and BIP68 finality, coinbase maturity, a 1 sat/vB relay floor), keeps a
//! mempool with full replace-by-fee, mines blocks with real regtest proof of work and witness
//! commitments, and can reorganise. Clients talk to it exactly as to bitcoind: an LDK node uses
//! `lightning_block_sync::rpc::RpcClient` with [`DevChain::rpc_credentials_base64`] and
//! [`DevChain::rpc_url`], or `lightning_block_sync::rest::RestClient` with
//! [`DevChain::rest_url`].
//!
//! There is no wallet and no way to create coins except mining: to get spendable coins, mine
//! 101 blocks to an address whose key you hold.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ldk_splice::devchain::{DevChain, DevChainConfig};
//! let chain = DevChain::start(DevChainConfig::default()).await?;
//! # let address: bitcoin::Address = todo!();
//! chain.mine_blocks(101, &address);
//! assert_eq!(chain.tip().0, 101);
//! println!("bitcoind RPC at {} ({})", chain.rpc_url(), chain.rpc_credentials());
//! chain.shutdown();
//! # Ok(()) }
//! ```

mod auth;
mod chain;
mod error;
mod json;
mod mempool;
mod mining;
mod package;
mod rest;
mod rpc;
mod server;
mod state;
mod validation;

pub use error::{DevChainError, RejectReason};

use base64::Engine;
use bitcoin::{
    Address, Amount, Block, BlockHash, FeeRate, OutPoint, Script, ScriptBuf, Transaction, TxOut,
    Txid,
};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

use state::State;

/// How to start a [`DevChain`].
#[derive(Clone, Debug)]
pub struct DevChainConfig {
    /// Where the RPC (and REST) server listens; port 0 picks a free one. Default
    /// `127.0.0.1:0`. Any address but loopback is warned about ([`non_loopback_warning`]).
    pub bind: SocketAddr,
    /// RPC user name. Default `devchain`.
    pub rpc_user: String,
    /// RPC password. Default `devchain`.
    pub rpc_password: String,
    /// What `estimatesmartfee` answers. Default 2 sat/vB.
    pub fee_rate: FeeRate,
}

impl Default for DevChainConfig {
    fn default() -> Self {
        DevChainConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            rpc_user: "devchain".to_string(),
            rpc_password: "devchain".to_string(),
            fee_rate: FeeRate::from_sat_per_vb_u32(2),
        }
    }
}

/// The warning to give when a devchain listens on `addr`, or `None` for a loopback address
/// (`127.0.0.0/8`, `::1`, or `::ffff:127.x.y.z`).
///
/// Its RPC takes the credentials in plain HTTP basic auth and mines blocks on request, so it is
/// meant to be reachable from this machine only. [`DevChain::start`] logs this warning
/// (`log::warn!`) and the `devchain` example also prints it on stderr.
pub fn non_loopback_warning(addr: SocketAddr) -> Option<String> {
    if addr.ip().to_canonical().is_loopback() {
        return None;
    }
    Some(format!(
        "the devchain listens on {addr}, which is not a loopback address: its RPC carries the \
         credentials in plain HTTP basic auth and mines blocks on request, so anyone who can \
         reach it can read them or drive the chain; bind 127.0.0.1 unless that is what you want"
    ))
}

/// State shared by the handles and the server.
pub(crate) struct Shared {
    state: Mutex<State>,
    credentials: auth::Credentials,
    changes: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the state without changing it.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock())
    }

    /// Runs `f` on the state, then tells waiters something may have changed.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let result = f(&mut self.lock());
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        result
    }

    /// Whether `given` (basic auth's decoded `user:password`) are the RPC credentials, checked
    /// in constant time.
    pub(crate) fn credentials_match(&self, given: &[u8]) -> bool {
        self.credentials.matches(given)
    }

    /// Asks the server to stop (the `stop` RPC).
    pub(crate) fn request_stop(&self) {
        self.stop.send_replace(true);
    }
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    user: String,
    password: String,
    shutdown: watch::Sender<bool>,
    finished: watch::Receiver<bool>,
}

/// A running regtest chain and its bitcoind-compatible server.
///
/// Cheap to clone; the server runs on the tokio runtime `start` was called on and stops when
/// [`shutdown`](Self::shutdown) is called, a client sends `stop`, or every handle is dropped.
#[derive(Clone)]
pub struct DevChain {
    inner: Arc<Inner>,
}

impl fmt::Debug for DevChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (height, hash) = self.tip();
        f.debug_struct("DevChain")
            .field("rpc_addr", &self.inner.addr)
            .field("height", &height)
            .field("tip", &hash)
            .finish()
    }
}

impl DevChain {
    /// Creates a chain holding only the regtest genesis block and starts serving RPC and REST
    /// on `config.bind`.
    pub async fn start(config: DevChainConfig) -> Result<DevChain, DevChainError> {
        tokio::runtime::Handle::try_current().map_err(|_| DevChainError::NoRuntime)?;
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(DevChainError::Bind)?;
        let addr = listener.local_addr().map_err(DevChainError::Bind)?;
        if let Some(warning) = non_loopback_warning(addr) {
            log::warn!("devchain: {warning}");
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config.fee_rate)),
            credentials: auth::Credentials::new(&config.rpc_user, &config.rpc_password),
            changes: watch::channel(0).0,
            stop: watch::channel(false).0,
        });
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let (finished_tx, finished) = watch::channel(false);
        let mut stop_rx = shared.stop.subscribe();
        let app = server::router(shared.clone());
        tokio::spawn(async move {
            let signal = async move {
                tokio::select! {
                    _ = shutdown_rx.wait_for(|stop| *stop) => {},
                    _ = stop_rx.wait_for(|stop| *stop) => {},
                }
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                log::error!("devchain: server failed: {e}");
            }
            log::info!("devchain: server on {addr} stopped");
            finished_tx.send_replace(true);
        });
        log::info!("devchain: listening on {addr}");
        Ok(DevChain {
            inner: Arc::new(Inner {
                shared,
                addr,
                user: config.rpc_user,
                password: config.rpc_password,
                shutdown,
                finished,
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The address the server listens on.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The RPC URL, `http://127.0.0.1:PORT`.
    pub fn rpc_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The REST base URL, `http://127.0.0.1:PORT/rest`, as `RestClient::new` wants it.
    pub fn rest_url(&self) -> String {
        format!("http://{}/rest", self.inner.addr)
    }

    /// The RPC user name.
    pub fn rpc_user(&self) -> &str {
        &self.inner.user
    }

    /// The RPC password.
    pub fn rpc_password(&self) -> &str {
        &self.inner.password
    }

    /// `user:password`, as bitcoind's `-rpcauth`-style clients take it.
    pub fn rpc_credentials(&self) -> String {
        format!("{}:{}", self.inner.user, self.inner.password)
    }

    /// Base64 of `user:password`: what `lightning_block_sync::rpc::RpcClient::new` takes as its
    /// `credentials` (it prefixes `Basic `).
    pub fn rpc_credentials_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.rpc_credentials())
    }

    /// Mines `n` blocks paying their coinbase to `to`, each including every valid mempool
    /// transaction that fits. Returns their hashes.
    pub fn mine_blocks(&self, n: usize, to: &Address) -> Vec<BlockHash> {
        self.mine_blocks_to_script(n, &to.script_pubkey())
    }

    /// Mines `n` blocks paying their coinbase to `script`.
    pub fn mine_blocks_to_script(&self, n: usize, script: &Script) -> Vec<BlockHash> {
        let script = script.to_owned();
        self.shared().write(|s| s.mine(n, &script))
    }

    /// Mines `n` blocks whose coinbase output is unspendable (an `OP_RETURN`), still including
    /// the mempool.
    pub fn mine_blocks_to_burn(&self, n: usize) -> Vec<BlockHash> {
        self.mine_blocks_to_script(n, &ScriptBuf::new_op_return([]))
    }

    /// Mines one block with exactly `txs`, whether or not they are in the
    /// mempool (a transaction replaced there can still be mined), as
    /// bitcoind's `generateblock`; the coinbase is burnt. The rest of the
    /// mempool stays, less what conflicts with `txs`.
    pub fn mine_block_with(&self, txs: &[Transaction]) -> Result<BlockHash, RejectReason> {
        let script = ScriptBuf::new_op_return([]);
        self.shared().write(|s| s.mine_with(txs, &script))
    }

    /// `sendrawtransaction`: validates `tx` and adds it to the mempool (replacing conflicting
    /// transactions when it pays enough). Sending a transaction already in the mempool succeeds
    /// again, as with bitcoind.
    pub fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid, RejectReason> {
        self.shared()
            .write(|s| s.submit(tx, 0))
            .map(|accepted| accepted.txid)
    }

    /// `submitpackage`: a child and its unconfirmed parents (sorted, child last, as bitcoind
    /// requires), where the child may pay for parents below the relay feerate. All are
    /// accepted, or the first failure is returned (members valid on their own are still
    /// accepted, as with bitcoind).
    pub fn submit_package(&self, txs: &[Transaction]) -> Result<Vec<Txid>, RejectReason> {
        package::check_topology(txs)?;
        let outcome = self.shared().write(|s| package::submit_package(s, txs));
        let mut txids = Vec::with_capacity(outcome.txs.len());
        for tx in outcome.txs {
            txids.push(tx.result.map(|_| tx.txid)?);
        }
        Ok(txids)
    }

    /// `testmempoolaccept`: whether `tx` would be accepted now; the mempool is not changed.
    pub fn test_mempool_accept(&self, tx: &Transaction) -> Result<(), RejectReason> {
        self.shared().write(|s| s.test_accept(tx)).map(|_| ())
    }

    /// A transaction in the mempool or the active chain.
    pub fn transaction(&self, txid: &Txid) -> Option<Transaction> {
        self.shared()
            .read(|s| s.transaction(txid).map(|known| known.tx))
    }

    /// The fee a mempool or confirmed transaction pays (`None` when unknown or a coinbase).
    pub fn transaction_fee(&self, txid: &Txid) -> Option<Amount> {
        self.shared()
            .read(|s| s.transaction(txid).and_then(|known| known.fee))
    }

    /// `None` if unknown, `Some(0)` in the mempool, `Some(n)` confirmed `n` deep.
    pub fn confirmations(&self, txid: &Txid) -> Option<u32> {
        self.shared().read(|s| s.confirmations(txid))
    }

    /// The mempool's txids, oldest first.
    pub fn mempool_txids(&self) -> Vec<Txid> {
        self.shared()
            .read(|s| s.mempool.entries().iter().map(|e| e.txid).collect())
    }

    /// Height and hash of the tip.
    pub fn tip(&self) -> (u32, BlockHash) {
        self.shared()
            .read(|s| (s.chain.height(), s.chain.tip().hash))
    }

    /// Hash of the active block at `height`.
    pub fn block_hash(&self, height: u32) -> Option<BlockHash> {
        self.shared().read(|s| s.chain.hash_at(height))
    }

    /// Any block the chain has seen (including disconnected ones).
    pub fn block(&self, hash: &BlockHash) -> Option<Block> {
        self.shared()
            .read(|s| s.chain.entry(hash).map(|e| (*e.block).clone()))
    }

    /// Sets what `estimatesmartfee` answers; zero makes it answer that it
    /// has no estimate, as a bitcoind without enough history does.
    pub fn set_fee_rate(&self, rate: FeeRate) {
        self.shared().write(|s| s.fee_rate = rate)
    }

    /// What `estimatesmartfee` answers (before bitcoind's 1 sat/vB floor).
    pub fn fee_rate(&self) -> FeeRate {
        self.shared().read(|s| s.fee_rate)
    }

    /// Disconnects the top `n` blocks (as `invalidateblock` on the lowest of them) and puts
    /// their transactions back in the mempool where still valid. Returns those txids. Mine
    /// more blocks than were disconnected to make a competing branch the best chain.
    pub fn invalidate_tip(&self, n: usize) -> Vec<Txid> {
        self.shared().write(|s| s.invalidate_tip(n))
    }

    /// An unspent output of the active chain (mempool spends are not considered).
    pub fn utxo(&self, outpoint: &OutPoint) -> Option<TxOut> {
        self.shared()
            .read(|s| s.chain.coin(outpoint).map(|c| c.output.clone()))
    }

    /// Waits until `condition` holds, re-checking whenever the chain or mempool changes.
    /// Returns whether it held before `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl Fn(&DevChain) -> bool,
    ) -> bool {
        let mut changes = self.shared().changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.mark_unchanged();
            if condition(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return condition(self),
            }
        }
    }

    /// Stops the server (in-process calls keep working).
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Resolves once the server has stopped (after [`shutdown`](Self::shutdown) or a `stop`
    /// RPC).
    pub async fn stopped(&self) {
        let mut finished = self.inner.finished.clone();
        let _ = finished.wait_for(|done| *done).await;
    }
}
