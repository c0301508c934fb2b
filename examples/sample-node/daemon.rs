//! `sample-node daemon`: runs a [`Node`] and serves the control API.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::hex::DisplayHex;
use ldk_splice::node::{Node, NodeBuilder};
use lightning::sign::EntropySource;

use crate::api::{self, AppState};
use crate::crash::CrashPoints;

/// File in the data dir holding the API address.
pub const API_ADDR_FILE: &str = "api-addr";
/// File in the data dir holding the API token (mode 0600).
pub const API_TOKEN_FILE: &str = "api-token";

/// Arguments of `sample-node daemon`.
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Data directory: seed, channel state, wallet, logs, API address and token.
    #[arg(long)]
    datadir: PathBuf,
    /// Bitcoin network: bitcoin, testnet, signet or regtest.
    #[arg(long, default_value = "regtest")]
    network: String,
    /// bitcoind's RPC endpoint with credentials: http://USER:PASS@HOST:PORT.
    #[arg(long, default_value = "http://devchain:devchain@127.0.0.1:18443")]
    bitcoind_rpc: String,
    /// Where to accept Lightning peers (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9735")]
    listen: SocketAddr,
    /// Where to serve the control API; must be a loopback address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    api: SocketAddr,
    /// How often to poll bitcoind for new blocks, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    chain_poll_ms: u64,
    /// How often to redial channel peers we lost, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    reconnect_ms: u64,
    /// Log level for DIR/logs/sample-node.log: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
    /// Crash tests only: serve the `crashat` command (see crash.rs).
    #[arg(long, hide = true)]
    enable_crash_points: bool,
}

/// Splits `http://USER:PASS@HOST:PORT` into the URL without credentials, the
/// user and the password.
fn split_rpc_url(url: &str) -> Result<(String, String, String), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!("--bitcoind-rpc '{url}' must look like http://USER:PASS@HOST:PORT")
    })?;
    match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
            Ok((
                format!("{scheme}://{host}"),
                user.to_string(),
                pass.to_string(),
            ))
        }
        None => Ok((url.to_string(), String::new(), String::new())),
    }
}

/// Progress while starting, on stderr.
fn progress(message: &str) {
    eprintln!("sample-node: {message}");
}

/// Runs the daemon; returns the process exit code.
pub fn run(args: DaemonArgs) -> i32 {
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
    match runtime.block_on(serve(args)) {
        Ok(()) => 0,
        Err(e) => {
            progress(&format!("error: {e}"));
            log::error!("{e}");
            1
        }
    }
}

fn init_logging(datadir: &Path, level: log::LevelFilter) -> Result<PathBuf, String> {
    let dir = datadir.join("logs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("sample-node.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
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

async fn serve(args: DaemonArgs) -> Result<(), String> {
    if !args.api.ip().is_loopback() {
        return Err(format!("--api {} is not a loopback address", args.api));
    }
    let network = bitcoin::Network::from_str(&args.network).map_err(|_| {
        format!(
            "unknown network '{}': use bitcoin, testnet, signet or regtest",
            args.network
        )
    })?;
    let (rpc_url, rpc_user, rpc_pass) = split_rpc_url(&args.bitcoind_rpc)?;
    std::fs::create_dir_all(&args.datadir)
        .map_err(|e| format!("cannot create {}: {e}", args.datadir.display()))?;
    let log_path = init_logging(&args.datadir, args.log_level)?;
    progress(&format!("logging to {}", log_path.display()));
    // A stale address from an earlier run must not send the CLI there.
    let _ = std::fs::remove_file(args.datadir.join(API_ADDR_FILE));

    progress(&format!(
        "starting node in {} on {network}, chain at {rpc_url}",
        args.datadir.display()
    ));
    log::info!(
        "starting node in {} on {network}, chain at {rpc_url}",
        args.datadir.display()
    );
    let node = NodeBuilder::new(&args.datadir)
        .network(network)
        .bitcoind_rpc(rpc_url, rpc_user, rpc_pass)
        .listen(args.listen)
        .chain_poll_interval(Duration::from_millis(args.chain_poll_ms.max(10)))
        .reconnect_interval(Duration::from_millis(args.reconnect_ms.max(10)))
        .start()
        .await
        .map_err(|e| format!("node did not start: {e}"))?;
    progress(&format!(
        "node {} listening for peers on {}, synced to height {}",
        node.node_id(),
        node.listen_addr(),
        node.best_block_height()
    ));

    let result = serve_api(&args, node).await;
    if let Err(e) = &result {
        log::error!("{e}");
    }
    let _ = std::fs::remove_file(args.datadir.join(API_ADDR_FILE));
    result
}

async fn serve_api(args: &DaemonArgs, node: Node) -> Result<(), String> {
    let token = node.keys().get_secure_random_bytes().to_lower_hex_string();
    let token_path = args.datadir.join(API_TOKEN_FILE);
    let listener = match tokio::net::TcpListener::bind(args.api).await {
        Ok(l) => l,
        Err(e) => {
            let _ = node.stop().await;
            return Err(format!("cannot serve the API on {}: {e}", args.api));
        }
    };
    let api_addr = listener.local_addr().map_err(|e| e.to_string())?;
    if let Err(e) = write_private(&token_path, &token) {
        let _ = node.stop().await;
        return Err(format!("cannot write {}: {e}", token_path.display()));
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let crash = args.enable_crash_points.then(|| {
        let crash = Arc::new(CrashPoints::default());
        let observer = crash.clone();
        node.observe_written_events(Box::new(move |event| observer.observe(event)));
        crash
    });
    let state = Arc::new(AppState::new(node, token, stop_tx, crash));
    let router = api::router(state.clone());
    let addr_path = args.datadir.join(API_ADDR_FILE);
    std::fs::write(&addr_path, api_addr.to_string())
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

#[cfg(test)]
mod tests {
    use super::split_rpc_url;

    #[test]
    fn rpc_url_credentials() {
        assert_eq!(
            split_rpc_url("http://u:p@127.0.0.1:1").unwrap(),
            ("http://127.0.0.1:1".into(), "u".into(), "p".into())
        );
        assert!(split_rpc_url("127.0.0.1").is_err());
    }
}
