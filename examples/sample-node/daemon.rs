//! `sample-node daemon`: runs a [`Node`] and serves the control API.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitcoin::hex::DisplayHex;
use ldk_splice::node::{Node, NodeBuilder};
use lightning::sign::EntropySource;

use crate::api::{self, AppState};
use crate::crash::CrashPoints;
use crate::settings::{Settings, AUTH_ENV};

/// File in the data dir holding the API address.
pub const API_ADDR_FILE: &str = "api-addr";
/// File in the data dir holding the API token (mode 0600).
pub const API_TOKEN_FILE: &str = "api-token";

/// Arguments of `sample-node daemon`. Settings left out come from the
/// config file, else their defaults (see `settings.rs`).
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Data directory (made 0700): seed, channel state, wallet, logs, API address and token.
    #[arg(long)]
    pub datadir: PathBuf,
    /// Config file (TOML) [default: DIR/sample-node.toml when it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Bitcoin network: bitcoin (mainnet), signet, testnet, testnet4 or regtest [default: regtest].
    #[arg(long)]
    pub network: Option<String>,
    /// bitcoind's RPC URL, without credentials: http://HOST:PORT [default: http://127.0.0.1 on the network's RPC port].
    /// Credentials go in --bitcoind-cookie, LDK_SPLICE_BITCOIND_AUTH or the config file.
    #[arg(long, value_name = "URL")]
    pub bitcoind_rpc: Option<String>,
    /// bitcoind's cookie file (USER:PASSWORD, as bitcoind writes DATADIR/<network>/.cookie), read at start.
    #[arg(long, value_name = "PATH")]
    pub bitcoind_cookie: Option<PathBuf>,
    /// Where to accept Lightning peers (port 0 picks a free port) [default: 127.0.0.1:9735].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where to serve the control API; must be a loopback address (port 0 picks a free port) [default: 127.0.0.1:0].
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// How often to poll bitcoind for new blocks, in milliseconds [default: 1000].
    #[arg(long)]
    pub chain_poll_ms: Option<u64>,
    /// How often to redial channel peers we lost, in milliseconds [default: 5000].
    #[arg(long)]
    pub reconnect_ms: Option<u64>,
    /// Log level for DIR/logs/sample-node.log: error, warn, info, debug or trace [default: info].
    #[arg(long)]
    pub log_level: Option<log::LevelFilter>,
    /// For a new data directory (a restore: copy the old node's `seed`
    /// file into it first): the height from which the wallet looks for its
    /// coins, e.g. the chain height when the seed was made. Read once, at
    /// the first start; without it a new wallet starts at the tip.
    #[arg(long, value_name = "HEIGHT")]
    pub wallet_birthday: Option<u32>,
    /// Sell inbound liquidity to channel peers: they order an amount, pay a
    /// fee over Lightning, and the daemon splices the amount in from its
    /// wallet. Terms from the config file's [liquidity_service] table
    /// (which also turns the service on), else the defaults.
    #[arg(long)]
    pub liquidity_service: bool,
    /// Bump the fee of every splice of ours by itself (not batch legs):
    /// after each block a splice stays unconfirmed, rising evenly from its
    /// feerate to MAX_FEERATE (sat/vB), reached TARGET_BLOCKS blocks after
    /// its broadcast, never paying more than MAX_FEE sat; e.g. 6:20:10000.
    /// `off` turns off what the config file's [auto_bump] table turns on.
    #[arg(long, value_name = "TARGET_BLOCKS:MAX_FEERATE:MAX_FEE|off")]
    pub auto_bump: Option<String>,
    /// Crash tests only: serve the `crashat` command (see crash.rs).
    #[arg(long, hide = true)]
    pub enable_crash_points: bool,
}

#[cfg(test)]
impl DaemonArgs {
    /// Arguments with only `--datadir` given.
    pub fn for_tests(datadir: PathBuf) -> Self {
        DaemonArgs {
            datadir,
            config: None,
            network: None,
            bitcoind_rpc: None,
            bitcoind_cookie: None,
            listen: None,
            api: None,
            chain_poll_ms: None,
            reconnect_ms: None,
            log_level: None,
            wallet_birthday: None,
            liquidity_service: false,
            auto_bump: None,
            enable_crash_points: false,
        }
    }
}

/// Progress while starting, on stderr.
fn progress(message: &str) {
    eprintln!("sample-node: {message}");
}

/// Files the daemon, the node and LDK create are readable by us alone:
/// 0700 directories, 0600 files (the seed, channel monitors, the wallet's
/// descriptors and the logs live in the data directory).
fn private_umask() {
    #[cfg(unix)]
    // SAFETY: umask(2) only sets the process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Runs the daemon; returns the process exit code.
pub fn run(args: DaemonArgs) -> i32 {
    private_umask();
    let env_auth = std::env::var(AUTH_ENV).ok();
    let settings = match Settings::resolve(&args, env_auth.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            progress(&format!("error: {e}"));
            return 1;
        }
    };
    for warning in &settings.warnings {
        progress(&format!("warning: {warning}"));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            progress(&format!("error: cannot start the async runtime: {e}"));
            return 1;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => 0,
        Err(e) => {
            progress(&format!("error: {e}"));
            log::error!("{e}");
            1
        }
    }
}

/// Creates the data directory 0700, and takes group and other permissions
/// off it and everything in it that an earlier run (or another tool) left
/// open. Symbolic links are left alone. Returns how many entries it
/// tightened.
fn secure_datadir(dir: &Path) -> Result<usize, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fn tighten(path: &Path, count: &mut usize) -> Result<(), String> {
            let meta = std::fs::symlink_metadata(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if meta.file_type().is_symlink() {
                return Ok(());
            }
            let mode = meta.permissions().mode() & 0o7777;
            let wanted = if meta.is_dir() {
                (mode & 0o700) | 0o700
            } else {
                mode & 0o700
            };
            if wanted != mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))
                    .map_err(|e| format!("cannot make {} private: {e}", path.display()))?;
                *count += 1;
            }
            if meta.is_dir() {
                let entries = std::fs::read_dir(path)
                    .map_err(|e| format!("cannot list {}: {e}", path.display()))?;
                for entry in entries {
                    let entry =
                        entry.map_err(|e| format!("cannot list {}: {e}", path.display()))?;
                    tighten(&entry.path(), count)?;
                }
            }
            Ok(())
        }
        let mut count = 0;
        // The directory itself may be a link to where the data lives.
        let meta =
            std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if meta.permissions().mode() & 0o777 != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
            count += 1;
        }
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            tighten(&entry.path(), &mut count)?;
        }
        Ok(count)
    }
    #[cfg(not(unix))]
    Ok(0)
}

fn init_logging(datadir: &Path, level: log::LevelFilter) -> Result<PathBuf, String> {
    let dir = datadir.join("logs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("sample-node.log");
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format_timestamp_millis()
        .target(env_logger::Target::Pipe(Box::new(file)))
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(path)
}

/// Writes `contents` to `path`, readable only by us (0600 on unix).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    }
}

async fn serve(settings: Settings) -> Result<(), String> {
    let datadir = settings.datadir.clone();
    let tightened = secure_datadir(&datadir)?;
    let log_path = init_logging(&datadir, settings.log_level)?;
    progress(&format!("logging to {}", log_path.display()));
    if tightened > 0 {
        log::warn!(
            "made {tightened} entries of {} private (0700 directories, 0600 files)",
            datadir.display()
        );
    }
    for warning in &settings.warnings {
        log::warn!("{warning}");
    }
    if let Some(path) = &settings.config_path {
        log::info!("settings from {}", path.display());
    }
    // A stale address from an earlier run must not send the CLI there.
    let _ = std::fs::remove_file(datadir.join(API_ADDR_FILE));

    let network = settings.network;
    let rpc_url = settings.rpc_url.clone();
    let started = format!(
        "starting node in {} on {network}, chain at {rpc_url}, credentials from {}",
        datadir.display(),
        settings.credentials.source
    );
    progress(&started);
    log::info!("{started}");
    let node = NodeBuilder::new(&datadir)
        .network(network)
        .bitcoind_rpc(
            rpc_url,
            settings.credentials.user.clone(),
            settings.credentials.password.clone(),
        )
        .listen(settings.listen)
        .chain_poll_interval(settings.chain_poll)
        .reconnect_interval(settings.reconnect);
    let node = match settings.wallet_birthday {
        Some(height) => {
            progress(&format!(
                "a new wallet reads every block from height {height}: this can take a while"
            ));
            node.wallet_birthday_height(height)
        }
        None => node,
    };
    let node = match &settings.liquidity_service {
        Some(terms) => {
            let offered = format!(
                "liquidity service on: {} to {} sat per order, fee {} sat + {} bp + {} WU of \
                 mining, funding at least {} blocks old",
                terms.min_amount.to_sat(),
                terms.max_amount.to_sat(),
                terms.fee_base.to_sat(),
                terms.fee_basis,
                terms.funding_weight,
                terms.min_channel_age_blocks
            );
            progress(&offered);
            log::info!("{offered}");
            node.liquidity_service(Arc::new(terms.clone()))
        }
        None => node,
    };
    let node = match settings.auto_bump {
        Some(policy) => {
            let on = format!(
                "automatic fee bumping of our splices: up to {} sat/kwu, {} blocks after the \
                 broadcast, at most {} sat in fees",
                policy.max_feerate.to_sat_per_kwu(),
                policy.target_blocks,
                policy.max_fee.to_sat()
            );
            progress(&on);
            log::info!("{on}");
            node.auto_bump(policy)
        }
        None => node,
    };
    let node = node
        .start()
        .await
        .map_err(|e| format!("node did not start: {e}"))?;
    progress(&format!(
        "node {} listening for peers on {}, synced to height {}",
        node.node_id(),
        node.listen_addr(),
        node.best_block_height()
    ));

    let result = serve_api(&settings, node).await;
    if let Err(e) = &result {
        log::error!("{e}");
    }
    let _ = std::fs::remove_file(datadir.join(API_ADDR_FILE));
    result
}

async fn serve_api(settings: &Settings, node: Node) -> Result<(), String> {
    let token = node.keys().get_secure_random_bytes().to_lower_hex_string();
    let token_path = settings.datadir.join(API_TOKEN_FILE);
    let listener = match tokio::net::TcpListener::bind(settings.api).await {
        Ok(l) => l,
        Err(e) => {
            let _ = node.stop().await;
            return Err(format!("cannot serve the API on {}: {e}", settings.api));
        }
    };
    let api_addr = listener.local_addr().map_err(|e| e.to_string())?;
    if let Err(e) = write_private(&token_path, &token) {
        let _ = node.stop().await;
        return Err(format!("cannot write {}: {e}", token_path.display()));
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let crash = settings.enable_crash_points.then(|| {
        let crash = Arc::new(CrashPoints::default());
        let observer = crash.clone();
        node.observe_written_events(Box::new(move |event| observer.observe(event)));
        crash
    });
    let state = Arc::new(AppState::new(node, token, stop_tx, crash));
    let router = api::router(state.clone());
    let addr_path = settings.datadir.join(API_ADDR_FILE);
    write_private(&addr_path, &api_addr.to_string())
        .map_err(|e| format!("cannot write {}: {e}", addr_path.display()))?;
    log::info!("api listening on {api_addr}");
    println!("sample-node api listening on {api_addr}");
    let _ = std::io::stdout().flush();

    let shutdown = async move {
        tokio::select! {
            _ = termination_signal() => log::info!("signal received, stopping"),
            _ = stop_rx.wait_for(|stop| *stop) => log::info!("stop requested, stopping"),
        }
    };
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("api server failed: {e}"));
    progress("stopping node");
    let stopped = state
        .node
        .stop()
        .await
        .map_err(|e| format!("node did not stop cleanly: {e}"));
    log::info!("node stopped");
    progress("stopped");
    served.and(stopped)
}
