//! The daemon's settings, resolved before anything is created or started:
//! the command line, the config file, the environment and bitcoind's
//! credentials.
//!
//! Credentials never come from the command line (every local user sees it
//! in `ps`). They come from, first match wins:
//!
//! 1. `--bitcoind-cookie PATH`: bitcoind's cookie file (`USER:PASSWORD` on
//!    one line, as bitcoind writes `DATADIR/<network>/.cookie`), read at
//!    every start;
//! 2. the environment variable `LDK_SPLICE_BITCOIND_AUTH=USER:PASSWORD`;
//! 3. the config file: `bitcoind_cookie = "PATH"`, or `bitcoind_user` and
//!    `bitcoind_password`.
//!
//! Every other setting comes from the command line, else the config file,
//! else its default. The config file is `--config PATH`, or
//! `DIR/sample-node.toml` when it exists (TOML; see [`ConfigFile`]).
//!
//! Automatic fee bumping of every splice of ours is off unless
//! `--auto-bump TARGET_BLOCKS:MAX_FEERATE:MAX_FEE` is given or the config
//! file has an `[auto_bump]` table (see [`AutoBumpConfig`]); `--auto-bump
//! off` turns off what the table turns on.
//!
//! The liquidity service (selling inbound liquidity to channel peers, see
//! `docs/liquidity-protocol.md`) is off unless `--liquidity-service` is
//! given or the config file has a `[liquidity_service]` table (see
//! [`LiquidityServiceConfig`]); its terms come from that table, else
//! `StaticTerms::default()`.
//!
//! A config file that holds a password and is readable by group or others
//! is refused: it is ours, its only purpose is to hold the secret, and
//! `chmod 600` is the whole fix. A cookie file readable by group or others
//! gets a warning only: bitcoind writes it, and its `-rpccookieperms`
//! option makes it group-readable on purpose so that another user (this
//! daemon's) can read it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bitcoin::{Amount, Network};
use ldk_splice::liquidity::StaticTerms;
use ldk_splice::AutoBump;
use serde::Deserialize;

use crate::autobump::AutoBumpParams;
use crate::daemon::DaemonArgs;

/// The environment variable that may carry bitcoind's `USER:PASSWORD`.
pub const AUTH_ENV: &str = "LDK_SPLICE_BITCOIND_AUTH";
/// The config file read from the data directory when `--config` is not given.
pub const CONFIG_FILE: &str = "sample-node.toml";

/// The config file (TOML). Every key is optional; unknown keys are refused.
///
/// ```toml
/// network = "signet"                       # signet, testnet, testnet4 or regtest
/// bitcoind_rpc = "http://127.0.0.1:38332"  # the URL only, no credentials
/// bitcoind_cookie = "/home/me/.bitcoin/signet/.cookie"
/// # or, instead of the cookie (the file must then be mode 0600):
/// # bitcoind_user = "me"
/// # bitcoind_password = "secret"
/// listen = "0.0.0.0:9735"
/// api = "127.0.0.1:3001"
/// chain_poll_ms = 1000
/// reconnect_ms = 5000
/// log_level = "info"
///
/// [liquidity_service]                      # see LiquidityServiceConfig
/// enable = true
/// fee_base_sat = 2000
///
/// [auto_bump]                              # see AutoBumpConfig
/// target_blocks = 6
/// max_feerate_sat_per_vb = 20
/// max_fee_sat = 10000
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Bitcoin network.
    pub network: Option<String>,
    /// bitcoind's RPC URL, without credentials.
    pub bitcoind_rpc: Option<String>,
    /// bitcoind's cookie file.
    pub bitcoind_cookie: Option<PathBuf>,
    /// bitcoind's RPC user (with `bitcoind_password`).
    pub bitcoind_user: Option<String>,
    /// bitcoind's RPC password (with `bitcoind_user`).
    pub bitcoind_password: Option<String>,
    /// Where to accept Lightning peers.
    pub listen: Option<SocketAddr>,
    /// Where to serve the control API (a loopback address).
    pub api: Option<SocketAddr>,
    /// How often to poll bitcoind for new blocks, in milliseconds.
    pub chain_poll_ms: Option<u64>,
    /// How often to redial channel peers we lost, in milliseconds.
    pub reconnect_ms: Option<u64>,
    /// Log level: error, warn, info, debug or trace.
    pub log_level: Option<String>,
    /// The liquidity service and its terms.
    pub liquidity_service: Option<LiquidityServiceConfig>,
    /// Automatic fee bumping of every splice of ours.
    pub auto_bump: Option<AutoBumpConfig>,
}

/// The config file's `[auto_bump]` table: bump the fee of every splice of
/// ours (not batch legs) by itself. After each block a splice stays
/// unconfirmed its feerate rises evenly, from the feerate it was broadcast
/// at to `max_feerate_sat_per_vb`, reached `target_blocks` blocks after the
/// broadcast; a bump that would pay more than `max_fee_sat` (our share of
/// the fee) stops it for that splice. The table's presence turns it on
/// unless `enable = false`; then all three numbers are needed:
///
/// ```toml
/// [auto_bump]
/// target_blocks = 6                  # blocks to reach the maximum feerate
/// max_feerate_sat_per_vb = 20        # the highest feerate a bump pays
/// max_fee_sat = 10000                # the most one splice pays in fees
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoBumpConfig {
    /// Bump automatically (default: true when the table is present).
    pub enable: Option<bool>,
    /// Blocks after the broadcast by which the feerate reaches the maximum.
    pub target_blocks: Option<u64>,
    /// The highest feerate a bump may pay, in sat/vB.
    pub max_feerate_sat_per_vb: Option<u64>,
    /// The most our share of a splice's fee may be, in sat.
    pub max_fee_sat: Option<u64>,
}

impl AutoBumpConfig {
    /// The policy the table gives, checked; `None` with `enable = false`.
    pub fn policy(&self) -> Result<Option<AutoBump>, String> {
        if self.enable == Some(false) {
            return Ok(None);
        }
        let missing = |key: &str| {
            format!("{key} is missing (target_blocks, max_feerate_sat_per_vb and max_fee_sat are all needed)")
        };
        let params = AutoBumpParams {
            target_blocks: self.target_blocks.ok_or_else(|| missing("target_blocks"))?,
            max_feerate_sat_per_vb: self
                .max_feerate_sat_per_vb
                .ok_or_else(|| missing("max_feerate_sat_per_vb"))?,
            max_fee_sat: self.max_fee_sat.ok_or_else(|| missing("max_fee_sat"))?,
        };
        params.policy().map(Some)
    }
}

/// The config file's `[liquidity_service]` table: sell inbound liquidity
/// to channel peers (they order it, pay a fee over Lightning, and the
/// daemon splices the amount in from its wallet). Every key is optional;
/// the table's presence turns the service on unless `enable = false`.
/// Amounts are in sat; what is left out is `StaticTerms::default()`'s:
///
/// ```toml
/// [liquidity_service]
/// enable = true
/// min_amount_sat = 100000            # the least an order may add
/// max_amount_sat = 10000000          # the most an order may add
/// fee_base_sat = 1000                # charged per order
/// fee_basis = 100                    # charged per amount, in basis points (100 = 1%)
/// funding_weight = 500               # weight our inputs and change add; the buyer pays it
/// quote_valid_secs = 600             # how long an order keeps its terms
/// invoice_valid_secs = 600           # how long an order's fee invoice can be paid
/// max_open_orders_per_peer = 2
/// min_channel_age_blocks = 6         # confirmations a channel's funding needs
/// max_requests_per_minute = 30       # per peer, every request counts
/// max_committed_sat = 50000000       # the most in orders paid or splicing at once
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiquidityServiceConfig {
    /// Run the service (default: true when the table is present).
    pub enable: Option<bool>,
    /// The least an order may add, in sat.
    pub min_amount_sat: Option<u64>,
    /// The most an order may add, in sat.
    pub max_amount_sat: Option<u64>,
    /// Charged per order, in sat.
    pub fee_base_sat: Option<u64>,
    /// Charged per amount, in basis points (1/10 000).
    pub fee_basis: Option<u16>,
    /// The weight the service's inputs and outputs add to a splice.
    pub funding_weight: Option<u32>,
    /// How long an order keeps its terms, in seconds.
    pub quote_valid_secs: Option<u32>,
    /// How long an order's invoice can be paid, in seconds.
    pub invoice_valid_secs: Option<u32>,
    /// The most orders a peer may have open at once.
    pub max_open_orders_per_peer: Option<u16>,
    /// The fewest confirmations a channel's funding needs.
    pub min_channel_age_blocks: Option<u32>,
    /// The most requests one peer may make per minute.
    pub max_requests_per_minute: Option<u32>,
    /// The most the service has in orders paid or splicing at once, in sat.
    pub max_committed_sat: Option<u64>,
}

/// The most bitcoin there is, in sat.
const MAX_MONEY_SAT: u64 = 21_000_000 * 100_000_000;

/// How often `cli liquidity buy --wait` asks the service, per minute.
const CLI_POLLS_PER_MINUTE: u32 = 20;

impl LiquidityServiceConfig {
    /// The terms: what the table gives, `StaticTerms::default()` for the
    /// rest, checked.
    pub fn terms(&self) -> Result<StaticTerms, String> {
        let d = StaticTerms::default();
        let sat =
            |value: Option<u64>, default: Amount| value.map(Amount::from_sat).unwrap_or(default);
        let terms = StaticTerms {
            min_amount: sat(self.min_amount_sat, d.min_amount),
            max_amount: sat(self.max_amount_sat, d.max_amount),
            fee_base: sat(self.fee_base_sat, d.fee_base),
            fee_basis: self.fee_basis.unwrap_or(d.fee_basis),
            funding_weight: self.funding_weight.unwrap_or(d.funding_weight),
            quote_valid_secs: self.quote_valid_secs.unwrap_or(d.quote_valid_secs),
            invoice_valid_secs: self.invoice_valid_secs.unwrap_or(d.invoice_valid_secs),
            max_open_orders_per_peer: self
                .max_open_orders_per_peer
                .unwrap_or(d.max_open_orders_per_peer),
            min_channel_age_blocks: self
                .min_channel_age_blocks
                .unwrap_or(d.min_channel_age_blocks),
            max_requests_per_minute: self
                .max_requests_per_minute
                .unwrap_or(d.max_requests_per_minute),
            max_committed: sat(self.max_committed_sat, d.max_committed),
        };
        check_terms(&terms)?;
        Ok(terms)
    }
}

/// Refuses terms that cannot work: amounts over 21 million BTC, an empty
/// amount range or one the committed limit cannot serve, a proportional fee
/// over 100%, zero limits that would refuse every order.
fn check_terms(t: &StaticTerms) -> Result<(), String> {
    let (min, max) = (t.min_amount.to_sat(), t.max_amount.to_sat());
    for (name, value) in [
        ("min_amount_sat", min),
        ("max_amount_sat", max),
        ("fee_base_sat", t.fee_base.to_sat()),
        ("max_committed_sat", t.max_committed.to_sat()),
    ] {
        if value > MAX_MONEY_SAT {
            return Err(format!("{name} {value} is over 21 million BTC"));
        }
    }
    if min == 0 {
        return Err("min_amount_sat must be at least 1".into());
    }
    if min > max {
        return Err(format!(
            "min_amount_sat {min} is above max_amount_sat {max}"
        ));
    }
    if max > t.max_committed.to_sat() {
        return Err(format!(
            "max_amount_sat {max} is above max_committed_sat {}: no order that large could be served",
            t.max_committed.to_sat()
        ));
    }
    if t.fee_basis > 10_000 {
        return Err(format!(
            "fee_basis {} is over 10000 (100% of the amount)",
            t.fee_basis
        ));
    }
    for (name, value) in [
        ("quote_valid_secs", u64::from(t.quote_valid_secs)),
        ("invoice_valid_secs", u64::from(t.invoice_valid_secs)),
        (
            "max_open_orders_per_peer",
            u64::from(t.max_open_orders_per_peer),
        ),
        (
            "max_requests_per_minute",
            u64::from(t.max_requests_per_minute),
        ),
    ] {
        if value == 0 {
            return Err(format!("{name} must be at least 1 (0 refuses every order)"));
        }
    }
    Ok(())
}

/// Where the bitcoind credentials came from (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `--bitcoind-cookie PATH`.
    CookieArg(PathBuf),
    /// The `LDK_SPLICE_BITCOIND_AUTH` environment variable.
    Env,
    /// The config file's `bitcoind_cookie`.
    ConfigCookie(PathBuf),
    /// The config file's `bitcoind_user` and `bitcoind_password`.
    ConfigPassword(PathBuf),
}

impl std::fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::CookieArg(p) => {
                write!(f, "cookie file {} (--bitcoind-cookie)", p.display())
            }
            CredentialSource::Env => write!(f, "the {AUTH_ENV} environment variable"),
            CredentialSource::ConfigCookie(p) => {
                write!(f, "cookie file {} (config file)", p.display())
            }
            CredentialSource::ConfigPassword(p) => {
                write!(f, "bitcoind_user/bitcoind_password in {}", p.display())
            }
        }
    }
}

/// bitcoind's RPC user and password. `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// RPC user.
    pub user: String,
    /// RPC password.
    pub password: String,
    /// Where they came from.
    pub source: CredentialSource,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("source", &self.source)
            .finish()
    }
}

/// Everything the daemon runs with.
#[derive(Debug)]
pub struct Settings {
    /// The data directory.
    pub datadir: PathBuf,
    /// The network.
    pub network: Network,
    /// bitcoind's RPC URL, without credentials.
    pub rpc_url: String,
    /// bitcoind's credentials.
    pub credentials: Credentials,
    /// Where to accept Lightning peers.
    pub listen: SocketAddr,
    /// Where to serve the control API (loopback).
    pub api: SocketAddr,
    /// How often to poll bitcoind.
    pub chain_poll: Duration,
    /// How often to redial lost peers.
    pub reconnect: Duration,
    /// Log level for DIR/logs/sample-node.log.
    pub log_level: log::LevelFilter,
    /// Serve the crash tests' `crashat` command.
    pub enable_crash_points: bool,
    /// Where a new wallet starts looking for its coins.
    pub wallet_birthday: Option<u32>,
    /// The liquidity service's terms, when it runs.
    pub liquidity_service: Option<StaticTerms>,
    /// Automatic fee bumping of every splice of ours, when on.
    pub auto_bump: Option<AutoBump>,
    /// The config file read, if any.
    pub config_path: Option<PathBuf>,
    /// Things the operator should know (shown on stderr and logged).
    pub warnings: Vec<String>,
}

/// Why the daemon will not start with these settings.
#[derive(Debug)]
pub enum SettingsError {
    /// A bitcoind URL carries a user or password.
    CredentialsInUrl {
        /// `--bitcoind-rpc` or the config file's `bitcoind_rpc`.
        origin: String,
    },
    /// A bitcoind URL that is not `http(s)://HOST:PORT[/PATH]`.
    BadUrl {
        /// Where it was given.
        origin: String,
        /// The URL.
        url: String,
    },
    /// No credentials anywhere.
    NoCredentials,
    /// A cookie file or config file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A cookie file or the environment variable is not `USER:PASSWORD`.
    NotUserPassword {
        /// The cookie file or the environment variable.
        origin: String,
    },
    /// The config file is not valid.
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A config file holding a password is readable by group or others.
    ConfigReadable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A network name we do not know.
    UnknownNetwork(String),
    /// `--api` (or the config's `api`) is not a loopback address.
    ApiNotLoopback(SocketAddr),
    /// A command-line argument the daemon cannot use.
    Argument {
        /// The flag, e.g. `--auto-bump`.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingsError::CredentialsInUrl { origin } => write!(
                f,
                "{origin} must not carry credentials (http://USER:PASS@...): a command line is \
                 visible to every local user (ps). Give the URL alone (http://HOST:PORT) and the \
                 credentials with --bitcoind-cookie PATH (bitcoind's .cookie file), the \
                 {AUTH_ENV}=USER:PASSWORD environment variable, or bitcoind_cookie, or \
                 bitcoind_user and bitcoind_password, in the config file (DIR/{CONFIG_FILE} \
                 or --config PATH, mode 0600)"
            ),
            SettingsError::BadUrl { origin, url } => write!(
                f,
                "{origin} '{url}' is not a URL: expected http://HOST:PORT"
            ),
            SettingsError::NoCredentials => write!(
                f,
                "no bitcoind credentials: give --bitcoind-cookie PATH (bitcoind's .cookie file), \
                 set {AUTH_ENV}=USER:PASSWORD, or put bitcoind_cookie, or bitcoind_user and \
                 bitcoind_password, in the config file (DIR/{CONFIG_FILE} or --config PATH)"
            ),
            SettingsError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            SettingsError::NotUserPassword { origin } => {
                write!(f, "{origin} is not in bitcoind's USER:PASSWORD form")
            }
            SettingsError::Config { path, message } => {
                write!(f, "config file {}: {message}", path.display())
            }
            SettingsError::ConfigReadable { path, mode } => write!(
                f,
                "config file {} holds bitcoind_password and is readable by other users \
                 (mode {mode:04o}); make it private with: chmod 600 {}",
                path.display(),
                path.display()
            ),
            SettingsError::UnknownNetwork(name) => write!(
                f,
                "unknown network '{name}': use bitcoin, signet, testnet, testnet4 or regtest"
            ),
            SettingsError::ApiNotLoopback(addr) => {
                write!(f, "--api {addr} is not a loopback address")
            }
            SettingsError::Argument { flag, message } => write!(f, "{flag}: {message}"),
        }
    }
}

impl std::error::Error for SettingsError {}

/// Permission bits of `path` beyond the owner's (0 off unix).
fn others_bits(meta: &std::fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o777
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0
    }
}

/// Splits `USER:PASSWORD` (surrounding whitespace and a final newline
/// ignored); `None` unless both are there.
fn user_password(text: &str) -> Option<(String, String)> {
    let (user, password) = text.trim().split_once(':')?;
    (!user.is_empty() && !password.is_empty()).then(|| (user.to_string(), password.to_string()))
}

/// Reads bitcoind's cookie file. Warns when others may read it.
fn read_cookie(
    path: &Path,
    source: CredentialSource,
    warnings: &mut Vec<String>,
) -> Result<Credentials, SettingsError> {
    let read_error = |error| SettingsError::Read {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let (user, password) = user_password(&text).ok_or_else(|| SettingsError::NotUserPassword {
        origin: format!("cookie file {}", path.display()),
    })?;
    let mode = others_bits(&meta);
    if mode & 0o077 != 0 {
        warnings.push(format!(
            "cookie file {} is readable by other users (mode {mode:04o}); bitcoind writes it \
             0600 unless -rpccookieperms says otherwise",
            path.display()
        ));
    }
    Ok(Credentials {
        user,
        password,
        source,
    })
}

/// Checks a bitcoind RPC URL: `http(s)://HOST:PORT[/PATH]`, no credentials.
/// The error never repeats a URL that carries a password.
pub fn check_rpc_url(url: &str, origin: &str) -> Result<String, SettingsError> {
    let url = url.trim();
    let bad = || SettingsError::BadUrl {
        origin: origin.to_string(),
        url: url.to_string(),
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        if url.contains('@') {
            SettingsError::CredentialsInUrl {
                origin: origin.to_string(),
            }
        } else {
            bad()
        }
    })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(SettingsError::CredentialsInUrl {
            origin: origin.to_string(),
        });
    }
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        || authority.is_empty()
    {
        return Err(bad());
    }
    Ok(url.to_string())
}

/// bitcoind's default RPC port on `network`.
fn default_rpc_port(network: Network) -> u16 {
    match network {
        Network::Bitcoin => 8332,
        Network::Testnet => 18332,
        Network::Testnet4 => 48332,
        Network::Signet => 38332,
        _ => 18443,
    }
}

fn parse_network(name: &str) -> Result<Network, SettingsError> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("mainnet") {
        return Ok(Network::Bitcoin);
    }
    Network::from_str(&name.to_ascii_lowercase())
        .map_err(|_| SettingsError::UnknownNetwork(name.to_string()))
}

/// Reads the config file: `explicit`, or DIR/sample-node.toml if it exists.
fn load_config(
    explicit: Option<&Path>,
    datadir: &Path,
) -> Result<Option<(PathBuf, ConfigFile)>, SettingsError> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let path = datadir.join(CONFIG_FILE);
            if !path.exists() {
                return Ok(None);
            }
            path
        }
    };
    let read_error = |error| SettingsError::Read {
        path: path.clone(),
        error,
    };
    let meta = std::fs::metadata(&path).map_err(read_error)?;
    let text = std::fs::read_to_string(&path).map_err(read_error)?;
    let config: ConfigFile = toml::from_str(&text).map_err(|e| SettingsError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mode = others_bits(&meta);
    if config.bitcoind_password.is_some() && mode & 0o077 != 0 {
        return Err(SettingsError::ConfigReadable { path, mode });
    }
    Ok(Some((path, config)))
}

/// Picks bitcoind's credentials by the precedence in the module docs.
fn credentials(
    cookie_arg: Option<&Path>,
    env: Option<&str>,
    config: Option<(&Path, &ConfigFile)>,
    warnings: &mut Vec<String>,
) -> Result<Credentials, SettingsError> {
    if let Some(path) = cookie_arg {
        return read_cookie(
            path,
            CredentialSource::CookieArg(path.to_path_buf()),
            warnings,
        );
    }
    if let Some(value) = env {
        let (user, password) =
            user_password(value).ok_or_else(|| SettingsError::NotUserPassword {
                origin: format!("the {AUTH_ENV} environment variable"),
            })?;
        return Ok(Credentials {
            user,
            password,
            source: CredentialSource::Env,
        });
    }
    let Some((path, config)) = config else {
        return Err(SettingsError::NoCredentials);
    };
    let config_error = |message: &str| SettingsError::Config {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    match (
        &config.bitcoind_cookie,
        &config.bitcoind_user,
        &config.bitcoind_password,
    ) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(config_error(
            "give bitcoind_cookie, or bitcoind_user and bitcoind_password, not both",
        )),
        (Some(cookie), None, None) => {
            // A relative cookie path is relative to the config file.
            let cookie = match path.parent() {
                Some(dir) if cookie.is_relative() => dir.join(cookie),
                _ => cookie.clone(),
            };
            read_cookie(
                &cookie,
                CredentialSource::ConfigCookie(cookie.clone()),
                warnings,
            )
        }
        (None, Some(user), Some(password)) if !user.is_empty() && !password.is_empty() => {
            Ok(Credentials {
                user: user.clone(),
                password: password.clone(),
                source: CredentialSource::ConfigPassword(path.to_path_buf()),
            })
        }
        (None, None, None) => Err(SettingsError::NoCredentials),
        _ => Err(config_error(
            "bitcoind_user and bitcoind_password go together, and neither may be empty",
        )),
    }
}

impl Settings {
    /// Resolves the daemon's settings from its arguments, the value of
    /// [`AUTH_ENV`] and the config file. Reads files, creates nothing.
    pub fn resolve(args: &DaemonArgs, env_auth: Option<&str>) -> Result<Settings, SettingsError> {
        let mut warnings = Vec::new();
        let loaded = load_config(args.config.as_deref(), &args.datadir)?;
        let (config_path, config) = match loaded {
            Some((path, config)) => (Some(path), config),
            None => (None, ConfigFile::default()),
        };
        let config_error = |message: String| SettingsError::Config {
            path: config_path.clone().unwrap_or_default(),
            message,
        };

        let network = parse_network(
            args.network
                .as_deref()
                .or(config.network.as_deref())
                .unwrap_or("regtest"),
        )?;
        if network == Network::Bitcoin {
            warnings.push(
                "running on mainnet with LDK 0.3.0-rc3, a release candidate: keep confirmed coins \
                 in the wallet for fee bumps, back up DIR/seed once and DIR/ldk continuously \
                 (README: Running on signet or mainnet)"
                    .to_string(),
            );
        }
        let rpc_url = match (&args.bitcoind_rpc, &config.bitcoind_rpc) {
            (Some(url), _) => check_rpc_url(url, "--bitcoind-rpc")?,
            (None, Some(url)) => check_rpc_url(url, "the config file's bitcoind_rpc")?,
            (None, None) => format!("http://127.0.0.1:{}", default_rpc_port(network)),
        };
        let credentials = credentials(
            args.bitcoind_cookie.as_deref(),
            env_auth,
            config_path.as_deref().map(|p| (p, &config)),
            &mut warnings,
        )?;
        let log_level = match (args.log_level, &config.log_level) {
            (Some(level), _) => level,
            (None, Some(name)) => log::LevelFilter::from_str(name).map_err(|_| {
                config_error(format!(
                    "log_level '{name}': expected off, error, warn, info, debug or trace"
                ))
            })?,
            (None, None) => log::LevelFilter::Info,
        };
        let api = args
            .api
            .or(config.api)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        if !api.ip().is_loopback() {
            return Err(SettingsError::ApiNotLoopback(api));
        }
        let table = config.liquidity_service.as_ref();
        let liquidity_service =
            if args.liquidity_service || table.is_some_and(|t| t.enable.unwrap_or(true)) {
                let terms = table
                    .map(LiquidityServiceConfig::terms)
                    .unwrap_or_else(|| Ok(StaticTerms::default()))
                    .map_err(|e| config_error(format!("[liquidity_service]: {e}")))?;
                if terms.max_requests_per_minute < CLI_POLLS_PER_MINUTE {
                    warnings.push(format!(
                        "liquidity service: max_requests_per_minute {} is below the {} a minute \
                     that `cli liquidity buy --wait` asks at; such a buyer will be rate limited",
                        terms.max_requests_per_minute, CLI_POLLS_PER_MINUTE
                    ));
                }
                Some(terms)
            } else {
                None
            };
        let auto_bump = match args.auto_bump.as_deref().map(str::trim) {
            Some(off) if off.eq_ignore_ascii_case("off") => None,
            Some(spec) => Some(
                AutoBumpParams::parse(spec)
                    .and_then(|params| params.policy())
                    .map_err(|message| SettingsError::Argument {
                        flag: "--auto-bump",
                        message: format!("{message} (or 'off')"),
                    })?,
            ),
            None => match &config.auto_bump {
                Some(table) => table
                    .policy()
                    .map_err(|e| config_error(format!("[auto_bump]: {e}")))?,
                None => None,
            },
        };
        Ok(Settings {
            datadir: args.datadir.clone(),
            network,
            rpc_url,
            credentials,
            listen: args
                .listen
                .or(config.listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9735))),
            api,
            chain_poll: Duration::from_millis(
                args.chain_poll_ms
                    .or(config.chain_poll_ms)
                    .unwrap_or(1000)
                    .max(10),
            ),
            reconnect: Duration::from_millis(
                args.reconnect_ms
                    .or(config.reconnect_ms)
                    .unwrap_or(5000)
                    .max(10),
            ),
            log_level,
            enable_crash_points: args.enable_crash_points,
            wallet_birthday: args.wallet_birthday,
            liquidity_service,
            auto_bump,
            config_path,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(datadir: &Path) -> DaemonArgs {
        DaemonArgs::for_tests(datadir.to_path_buf())
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = mode;
    }

    #[test]
    fn urls_with_credentials_are_refused_without_repeating_them() {
        for url in [
            "http://u:secret@127.0.0.1:18443",
            "http://u@127.0.0.1:18443",
            "u:secret@127.0.0.1:18443",
            "https://u:secret@host/wallet/x",
        ] {
            let err = check_rpc_url(url, "--bitcoind-rpc").unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, SettingsError::CredentialsInUrl { .. }),
                "{url}"
            );
            assert!(!message.contains("secret"), "{message}");
            assert!(message.contains("--bitcoind-cookie"), "{message}");
            assert!(message.contains(AUTH_ENV), "{message}");
        }
        assert_eq!(
            check_rpc_url("http://127.0.0.1:18443", "x").unwrap(),
            "http://127.0.0.1:18443"
        );
        // An '@' past the host is a path, not credentials.
        assert!(check_rpc_url("http://127.0.0.1:18443/wallet/a@b", "x").is_ok());
        assert!(matches!(
            check_rpc_url("127.0.0.1:18443", "x"),
            Err(SettingsError::BadUrl { .. })
        ));
        assert!(check_rpc_url("ftp://127.0.0.1", "x").is_err());
    }

    #[test]
    fn every_network_is_known_and_mainnet_warns() {
        for name in ["bitcoin", "mainnet", "Bitcoin"] {
            assert_eq!(parse_network(name).unwrap(), Network::Bitcoin, "{name}");
        }
        for name in ["signet", "testnet", "testnet4", "regtest"] {
            assert!(parse_network(name).is_ok(), "{name}");
        }
        assert!(matches!(
            parse_network("lolnet"),
            Err(SettingsError::UnknownNetwork(_))
        ));
        assert_eq!(default_rpc_port(Network::Bitcoin), 8332);
        let dir = tempfile::tempdir().unwrap();
        let mut args = DaemonArgs::for_tests(dir.path().join("node"));
        args.network = Some("bitcoin".into());
        let settings = Settings::resolve(&args, Some("u:p")).unwrap();
        assert_eq!(settings.network, Network::Bitcoin);
        assert_eq!(settings.rpc_url, "http://127.0.0.1:8332");
        assert!(
            settings.warnings.iter().any(|w| w.contains("mainnet")),
            "{:?}",
            settings.warnings
        );
    }

    #[test]
    fn credentials_precedence_cookie_then_env_then_config() {
        let dir = tempfile::tempdir().unwrap();
        let cookie = dir.path().join(".cookie");
        write(&cookie, "__cookie__:fromcookie\n", 0o600);
        let config_path = dir.path().join(CONFIG_FILE);
        write(
            &config_path,
            "bitcoind_user = \"cfg\"\nbitcoind_password = \"fromconfig\"\n",
            0o600,
        );
        let mut a = args(dir.path());
        a.bitcoind_cookie = Some(cookie.clone());
        let got = |a: &DaemonArgs, env: Option<&str>| Settings::resolve(a, env).unwrap();

        let s = got(&a, Some("env:fromenv"));
        assert_eq!(s.credentials.password, "fromcookie");
        assert_eq!(s.credentials.source, CredentialSource::CookieArg(cookie));
        a.bitcoind_cookie = None;
        let s = got(&a, Some("env:fromenv"));
        assert_eq!(
            (s.credentials.user.as_str(), s.credentials.password.as_str()),
            ("env", "fromenv")
        );
        let s = got(&a, None);
        assert_eq!(s.credentials.password, "fromconfig");
        assert!(
            !format!("{s:?}").contains("fromconfig"),
            "Debug hides the password"
        );

        std::fs::remove_file(&config_path).unwrap();
        assert!(matches!(
            Settings::resolve(&a, None),
            Err(SettingsError::NoCredentials)
        ));
        assert!(matches!(
            Settings::resolve(&a, Some("no-colon")),
            Err(SettingsError::NotUserPassword { .. })
        ));
    }

    #[test]
    fn config_file_settings_and_its_checks() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("node.toml");
        write(
            &config_path,
            "network = \"signet\"\nbitcoind_cookie = \"cookie\"\nlisten = \"127.0.0.1:9999\"\n\
             chain_poll_ms = 250\nlog_level = \"debug\"\n",
            0o644,
        );
        write(&dir.path().join("cookie"), "u:p", 0o640);
        let mut a = args(&dir.path().join("data"));
        a.config = Some(config_path.clone());
        let s = Settings::resolve(&a, None).unwrap();
        assert_eq!(s.network, Network::Signet);
        assert_eq!(s.rpc_url, "http://127.0.0.1:38332");
        assert_eq!(s.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(s.chain_poll, Duration::from_millis(250));
        assert_eq!(s.log_level, log::LevelFilter::Debug);
        assert_eq!(s.credentials.user, "u");
        #[cfg(unix)]
        assert!(
            s.warnings.iter().any(|w| w.contains("readable")),
            "{:?}",
            s.warnings
        );
        // The command line wins over the file.
        a.network = Some("regtest".into());
        assert_eq!(
            Settings::resolve(&a, None).unwrap().network,
            Network::Regtest
        );

        write(
            &config_path,
            "bitcoind_rpc = \"http://u:p@127.0.0.1:1\"\n",
            0o600,
        );
        assert!(matches!(
            Settings::resolve(&a, Some("u:p")),
            Err(SettingsError::CredentialsInUrl { .. })
        ));
        write(&config_path, "bitcoind_pasword = \"typo\"\n", 0o600);
        let err = Settings::resolve(&a, Some("u:p")).unwrap_err();
        assert!(err.to_string().contains("bitcoind_pasword"), "{err}");
        write(
            &config_path,
            "bitcoind_user = \"u\"\nbitcoind_password = \"p\"\n",
            0o644,
        );
        #[cfg(unix)]
        assert!(matches!(
            Settings::resolve(&a, None),
            Err(SettingsError::ConfigReadable { .. })
        ));
    }

    #[test]
    fn liquidity_service_from_the_flag_or_the_config_table() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("node.toml");
        let mut a = args(&dir.path().join("data"));
        let resolve = |a: &DaemonArgs| Settings::resolve(a, Some("u:p"));

        // Off by default; the flag turns it on with the default terms.
        assert_eq!(resolve(&a).unwrap().liquidity_service, None);
        a.liquidity_service = true;
        assert_eq!(
            resolve(&a).unwrap().liquidity_service,
            Some(StaticTerms::default())
        );

        // A table turns it on by itself; what it leaves out is the default.
        a.liquidity_service = false;
        a.config = Some(config_path.clone());
        write(
            &config_path,
            "[liquidity_service]\nmin_amount_sat = 200000\nmax_amount_sat = 900000\n\
             fee_base_sat = 2000\nfee_basis = 50\nfunding_weight = 600\n\
             quote_valid_secs = 60\ninvoice_valid_secs = 120\nmax_open_orders_per_peer = 1\n\
             min_channel_age_blocks = 3\nmax_requests_per_minute = 40\n\
             max_committed_sat = 1000000\n",
            0o600,
        );
        let terms = resolve(&a).unwrap().liquidity_service.unwrap();
        assert_eq!(
            terms,
            StaticTerms {
                min_amount: Amount::from_sat(200_000),
                max_amount: Amount::from_sat(900_000),
                fee_base: Amount::from_sat(2_000),
                fee_basis: 50,
                funding_weight: 600,
                quote_valid_secs: 60,
                invoice_valid_secs: 120,
                max_open_orders_per_peer: 1,
                min_channel_age_blocks: 3,
                max_requests_per_minute: 40,
                max_committed: Amount::from_sat(1_000_000),
            }
        );
        write(&config_path, "[liquidity_service]\nfee_basis = 25\n", 0o600);
        assert_eq!(
            resolve(&a).unwrap().liquidity_service,
            Some(StaticTerms {
                fee_basis: 25,
                ..StaticTerms::default()
            })
        );
        // `enable = false` keeps it off, unless the flag says otherwise.
        write(
            &config_path,
            "[liquidity_service]\nenable = false\nfee_basis = 25\n",
            0o600,
        );
        assert_eq!(resolve(&a).unwrap().liquidity_service, None);
        a.liquidity_service = true;
        assert_eq!(
            resolve(&a).unwrap().liquidity_service.unwrap().fee_basis,
            25
        );

        // Terms that cannot work are refused, naming the keys.
        let refused = |table: &str, words: &[&str]| {
            write(
                &config_path,
                &format!("[liquidity_service]\n{table}"),
                0o600,
            );
            let err = resolve(&a).unwrap_err();
            let message = err.to_string();
            for word in words {
                assert!(
                    message.contains(word),
                    "{table}: {message:?} lacks {word:?}"
                );
            }
        };
        refused(
            "min_amount_sat = 500000\nmax_amount_sat = 400000\n",
            &["min_amount_sat 500000", "max_amount_sat 400000"],
        );
        refused("min_amount_sat = 0\n", &["min_amount_sat", "at least 1"]);
        refused(
            "max_committed_sat = 1000\n",
            &["max_amount_sat", "max_committed_sat 1000"],
        );
        refused("max_amount_sat = 2100000000000001\n", &["21 million"]);
        refused("fee_basis = 10001\n", &["fee_basis"]);
        refused(
            "max_requests_per_minute = 0\n",
            &["max_requests_per_minute"],
        );
        refused("invoice_valid_secs = 0\n", &["invoice_valid_secs"]);
        // Out of its type's range, or misspelt: the TOML error names it.
        refused("fee_basis = 70000\n", &["fee_basis"]);
        refused("fee_basis = -1\n", &["fee_basis"]);
        refused("fee_bases = 1\n", &["fee_bases"]);
        refused("min_amount_sat = \"lots\"\n", &["min_amount_sat"]);

        // A low request limit is allowed, with a warning.
        write(
            &config_path,
            "[liquidity_service]\nmax_requests_per_minute = 5\n",
            0o600,
        );
        let s = resolve(&a).unwrap();
        assert!(
            s.warnings.iter().any(|w| w.contains("rate limited")),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn auto_bump_from_the_flag_or_the_config_table() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("node.toml");
        let mut a = args(&dir.path().join("data"));
        let resolve = |a: &DaemonArgs| Settings::resolve(a, Some("u:p"));
        let policy = |blocks, vb, fee| {
            AutoBump::new(
                blocks,
                bitcoin::FeeRate::from_sat_per_vb(vb).unwrap(),
                Amount::from_sat(fee),
            )
        };

        // Off by default; the flag turns it on.
        assert_eq!(resolve(&a).unwrap().auto_bump, None);
        a.auto_bump = Some("6:20:10_000".into());
        assert_eq!(resolve(&a).unwrap().auto_bump, Some(policy(6, 20, 10_000)));

        // A table turns it on by itself; the flag wins over it, `off` too.
        a.auto_bump = None;
        a.config = Some(config_path.clone());
        write(
            &config_path,
            "[auto_bump]\ntarget_blocks = 3\nmax_feerate_sat_per_vb = 50\nmax_fee_sat = 20000\n",
            0o600,
        );
        assert_eq!(resolve(&a).unwrap().auto_bump, Some(policy(3, 50, 20_000)));
        a.auto_bump = Some("2:10:5000".into());
        assert_eq!(resolve(&a).unwrap().auto_bump, Some(policy(2, 10, 5_000)));
        a.auto_bump = Some("off".into());
        assert_eq!(resolve(&a).unwrap().auto_bump, None);
        a.auto_bump = None;
        write(
            &config_path,
            "[auto_bump]\nenable = false\ntarget_blocks = 3\n",
            0o600,
        );
        assert_eq!(resolve(&a).unwrap().auto_bump, None);

        // What cannot work is refused, naming the key or the flag.
        let refused = |a: &DaemonArgs, words: &[&str]| {
            let message = resolve(a).unwrap_err().to_string();
            for word in words {
                assert!(message.contains(word), "{message:?} lacks {word:?}");
            }
        };
        let table = |text: &str| write(&config_path, &format!("[auto_bump]\n{text}"), 0o600);
        table("target_blocks = 3\nmax_fee_sat = 20000\n");
        refused(&a, &["[auto_bump]", "max_feerate_sat_per_vb is missing"]);
        table("target_blocks = 0\nmax_feerate_sat_per_vb = 50\nmax_fee_sat = 20000\n");
        refused(&a, &["[auto_bump]", "target_blocks 0"]);
        table("target_blocks = 3\nmax_feerate_sat_per_vb = 1\nmax_fee_sat = 20000\n");
        refused(&a, &["max_feerate_sat_per_vb 1", "at least 2"]);
        table("target_blocks = 3\nmax_feerate_sat_per_vb = 50\nmax_fee_sat = 0\n");
        refused(&a, &["max_fee_sat", "at least 1"]);
        table("target_blocks = 3\nmax_feerate_sat_per_vb = 50\nmax_fee_sat = 2100000000000001\n");
        refused(&a, &["21 million"]);
        table("target_blocks = -3\n");
        refused(&a, &["target_blocks"]);
        table("max_fee = 1\n");
        refused(&a, &["max_fee"]);
        a.config = None;
        a.auto_bump = Some("6:20".into());
        refused(
            &a,
            &[
                "--auto-bump",
                "TARGET_BLOCKS:MAX_FEERATE_SAT_PER_VB:MAX_FEE_SAT",
            ],
        );
        a.auto_bump = Some("6:20000000:1000".into());
        refused(&a, &["--auto-bump", "max_feerate_sat_per_vb", "LDK"]);
    }
}
