//! Runs a devchain as its own process: a regtest chain with bitcoind's JSON-RPC and REST.
//!
//! ```text
//! cargo run --release --example devchain -- --rpc-bind 127.0.0.1:18443 --rpc-auth user:pass [--fee-rate 2]
//! ```
//!
//! Prints `devchain listening on 127.0.0.1:PORT` on stdout once it serves, logs to stderr, and
//! runs until SIGINT, SIGTERM or a `stop` RPC. Bound to an address other than loopback, it
//! first prints a `WARNING:` line on stderr (whatever `--log-level`): its RPC sends the
//! credentials in plain HTTP and mines on request.

use clap::Parser;
use ldk_splice::devchain::{non_loopback_warning, DevChain, DevChainConfig};
use std::io::Write;
use std::net::SocketAddr;

/// A regtest chain serving bitcoind's JSON-RPC and REST interfaces.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:18443")]
    rpc_bind: SocketAddr,
    /// RPC credentials as USER:PASS.
    #[arg(long, default_value = "devchain:devchain")]
    rpc_auth: String,
    /// What estimatesmartfee answers, in sat/vB.
    #[arg(long, default_value_t = 2)]
    fee_rate: u32,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
}

/// Writes log records to stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            eprintln!(
                "{}.{:03} {:5} {}",
                now.as_secs(),
                now.subsec_millis(),
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    log::set_logger(&LOGGER).map_err(|e| e.to_string())?;
    log::set_max_level(args.log_level);

    let (user, password) = args
        .rpc_auth
        .split_once(':')
        .ok_or("--rpc-auth must be USER:PASS")?;
    let config = DevChainConfig {
        bind: args.rpc_bind,
        rpc_user: user.to_string(),
        rpc_password: password.to_string(),
        fee_rate: bitcoin::FeeRate::from_sat_per_vb_u32(args.fee_rate),
    };
    let chain = DevChain::start(config).await?;
    // Whatever the log level: this one must not go unseen.
    if let Some(warning) = non_loopback_warning(chain.rpc_addr()) {
        eprintln!("WARNING: {warning}");
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "devchain listening on {}", chain.rpc_addr())?;
        stdout.flush()?;
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("devchain: SIGINT, stopping"),
        _ = sigterm.recv() => log::info!("devchain: SIGTERM, stopping"),
        _ = chain.stopped() => log::info!("devchain: stopped by RPC"),
    }
    chain.shutdown();
    chain.stopped().await;
    Ok(())
}
