//! A sample Lightning node with splicing: one binary, two modes.
//!
//! ```text
//! # Run a node (logs to DIR/logs, control API on loopback, token in DIR/api-token).
//! # bitcoind's credentials never go on the command line: a cookie file,
//! # the environment, or the config file DIR/sample-node.toml.
//! sample-node daemon --datadir DIR --network regtest \
//!     --bitcoind-rpc http://127.0.0.1:18443 --bitcoind-cookie ~/.bitcoin/regtest/.cookie \
//!     --listen 127.0.0.1:9735 --api 127.0.0.1:0
//! LDK_SPLICE_BITCOIND_AUTH=USER:PASS sample-node daemon --datadir DIR
//!
//! # Talk to it:
//! sample-node cli --datadir DIR getinfo
//! sample-node cli --datadir DIR splicein CHANNEL_ID NODE_ID 100000 --feerate 2 --wait locked
//! sample-node cli --datadir DIR events
//! sample-node cli --datadir DIR events --ack RUN:N
//!
//! # Fee bumps (RBF) of a broadcast splice, asked for or automatic:
//! sample-node cli --datadir DIR bumpfee splice-1 --feerate 20 --quote
//! sample-node cli --datadir DIR bumpfee splice-1 --feerate 20 --wait negotiated
//! sample-node cli --datadir DIR splicein CHANNEL_ID NODE_ID 100000 --feerate 2 --auto-bump 6:20:10000
//! sample-node cli --datadir DIR autobump splice-1 --off
//! sample-node daemon --datadir DIR --auto-bump 6:20:10000   # every splice of ours
//!
//! # Inbound liquidity: the service runs with --liquidity-service (or a
//! # [liquidity_service] table in its config file); a peer buys from it:
//! sample-node cli --datadir DIR liquidity info SERVICE_NODE_ID
//! sample-node cli --datadir DIR liquidity buy CHANNEL_ID 500000 --wait locked
//! sample-node cli --datadir DIR liquidity orders
//! ```
//!
//! Settings come from the command line, else the config file (`--config
//! PATH`, or `DIR/sample-node.toml`), else their defaults; bitcoind's
//! credentials from `--bitcoind-cookie`, else `LDK_SPLICE_BITCOIND_AUTH`,
//! else the config file (see `settings.rs`). A `--bitcoind-rpc` URL with
//! credentials in it is refused. `--network bitcoin` runs on mainnet (with
//! a warning: read the README's "Running on signet or mainnet" first).
//!
//! The daemon sets its umask to 077 and makes the data directory 0700:
//! every file in it (seed, channel monitors, wallet, logs) is 0600. It
//! prints `sample-node api listening on 127.0.0.1:PORT` on stdout once it
//! serves, writes the API address to `DIR/api-addr` and a random token to
//! `DIR/api-token`, and stops cleanly on SIGINT, SIGTERM or `cli stop`.
//!
//! The API is `POST /v1/<command>` on the loopback address, with
//! `Authorization: Bearer <DIR/api-token>` and a JSON object of parameters
//! of at most 64 KiB (see `api.rs`); answers are JSON, errors `{"error":
//! "..."}` with status 400 (bad parameters), 401 (no or wrong token,
//! answered before any of the body is read), 404 (unknown command or id),
//! 409 (an event id from an earlier run), 413 (body over 64 KiB), 422
//! (refused by the node, e.g. a `SpliceError`, or by a liquidity service),
//! 429 (a liquidity service rate-limits us) or 503 (a liquidity service
//! not connected or not answering). Blocking node calls run on
//! a bounded blocking pool, never on the threads that drive peers and chain
//! sync. The daemon logs to `DIR/logs/sample-node.log` (`--log-level`, or
//! `RUST_LOG`).
//!
//! The CLI prints JSON on stdout. On any error it prints
//! `{"error": "..."}` on stdout and exits with status 1 (argument errors are
//! reported by clap on stderr, status 2). Progress of `--wait` goes to
//! stderr.

mod api;
mod autobump;
mod cli;
mod crash;
mod daemon;
mod settings;

use clap::{Parser, Subcommand};

/// A sample LDK node with splicing (daemon) and its command-line client (cli).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Run the node and its JSON control API.
    Daemon(daemon::DaemonArgs),
    /// Call a running daemon's API; prints JSON on stdout. Errors print
    /// `{"error": "..."}` on stdout and exit with status 1.
    Cli(cli::CliArgs),
}

fn main() {
    let args = Args::parse();
    let code = match args.mode {
        Mode::Daemon(args) => daemon::run(args),
        Mode::Cli(args) => cli::run(args),
    };
    std::process::exit(code);
}
