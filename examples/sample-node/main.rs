//! A sample Lightning node with splicing: one binary, two modes.
//!
//! ```text
//! # Run a node (logs to DIR/logs, control API on loopback, token in DIR/api-token):
//! sample-node daemon --datadir DIR --network regtest \
//!     --bitcoind-rpc http://USER:PASS@127.0.0.1:18443 \
//!     --listen 127.0.0.1:9735 --api 127.0.0.1:0
//!
//! # Talk to it:
//! sample-node cli --datadir DIR getinfo
//! sample-node cli --datadir DIR splicein CHANNEL_ID NODE_ID 100000 --feerate 2 --wait locked
//! ```
//!
//! The daemon prints `sample-node api listening on 127.0.0.1:PORT` on stdout
//! once it serves, writes the API address to `DIR/api-addr` and a random
//! token to `DIR/api-token` (mode 0600), and stops cleanly on SIGINT,
//! SIGTERM or `cli stop`.
//!
//! The API is `POST /v1/<command>` on the loopback address, with
//! `Authorization: Bearer <DIR/api-token>` and a JSON object of parameters
//! (see `api.rs`); answers are JSON, errors `{"error": "..."}` with status
//! 400 (bad parameters), 401 (no or wrong token), 404 (unknown command or
//! id) or 422 (refused by the node, e.g. a `SpliceError`). The daemon logs
//! to `DIR/logs/sample-node.log` (`--log-level`, or `RUST_LOG`).
//!
//! The CLI prints JSON on stdout. On any error it prints
//! `{"error": "..."}` on stdout and exits with status 1 (argument errors are
//! reported by clap on stderr, status 2). Progress of `--wait` goes to
//! stderr.

mod api;
mod cli;
mod crash;
mod daemon;

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
