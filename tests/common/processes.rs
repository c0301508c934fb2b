//! Running the crate's example binaries as their own processes: the
//! devchain, the sample-node daemon, its CLI and its HTTP API.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::address::NetworkUnchecked;
use bitcoin::Address;
use serde_json::Value;

/// How long any one step may take.
pub const WAIT: Duration = Duration::from_secs(90);
/// A regtest coinbase.
pub const SUBSIDY_SAT: u64 = 5_000_000_000;

/// The `sample-node` example binary, built next to this test
/// (target/<profile>/examples/sample-node). `cargo test` builds every
/// example; when only this test was asked for, build it here.
pub fn sample_node_binary() -> PathBuf {
    example_binary("sample-node")
}

/// An example binary of this crate, built if need be.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building the {name} example failed");
    assert!(binary.exists(), "{} not found", binary.display());
    binary
}

/// The first line `child` prints on its (piped) stdout, when it comes.
fn first_line(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx
}

/// The `devchain` example running as its own process, driven over its
/// bitcoind-compatible RPC like any bitcoind.
pub struct ChainProcess {
    child: Child,
    addr: String,
}

impl ChainProcess {
    const USER: &'static str = "cli-test";
    const PASSWORD: &'static str = "cli-test-password";

    pub fn start() -> ChainProcess {
        let mut child = Command::new(example_binary("devchain"))
            .args([
                "--rpc-bind",
                "127.0.0.1:0",
                "--rpc-auth",
                &format!("{}:{}", Self::USER, Self::PASSWORD),
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("devchain starts");
        let first = first_line(&mut child);
        let mut chain = ChainProcess {
            child,
            addr: String::new(),
        };
        let line = first
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("devchain did not say it was listening in time"));
        chain.addr = line
            .trim()
            .strip_prefix("devchain listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the devchain: {line:?}"))
            .to_string();
        chain
    }

    pub fn rpc_user(&self) -> &str {
        Self::USER
    }

    pub fn rpc_password(&self) -> &str {
        Self::PASSWORD
    }

    pub fn rpc_addr(&self) -> &str {
        &self.addr
    }

    /// One JSON-RPC call over HTTP with basic auth, as bitcoin-cli makes it.
    pub fn rpc(&self, method: &str, params: Value) -> Value {
        use base64::Engine;
        let body =
            serde_json::json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params})
                .to_string();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            Self::USER,
            Self::PASSWORD
        ));
        let mut stream = std::net::TcpStream::connect(&self.addr).expect("devchain reachable");
        write!(
            stream,
            "POST / HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .expect("request sent");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response read");
        let json = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_else(|| panic!("no body in {response:?}"));
        let reply: Value = serde_json::from_str(json).expect("JSON reply");
        assert!(reply["error"].is_null(), "{method} failed: {reply}");
        reply["result"].clone()
    }

    pub fn mine_blocks(&self, n: usize, to: &Address) {
        self.rpc("generatetoaddress", serde_json::json!([n, to.to_string()]));
    }

    /// Mines to an address nobody in the test holds.
    pub fn mine_blocks_to_burn(&self, n: usize) {
        let burn: Address<NetworkUnchecked> = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
            .parse()
            .expect("regtest address");
        self.mine_blocks(n, &burn.assume_checked());
    }

    pub fn shutdown(&mut self) {
        self.rpc("stop", serde_json::json!([]));
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "devchain did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChainProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `sample-node daemon`.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only reached with the process still running when the test failed.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn start_daemon(binary: &Path, chain: &ChainProcess, dir: PathBuf) -> Daemon {
    start_daemon_with(binary, chain, dir, &[])
}

/// The environment variable the daemon reads bitcoind's `USER:PASSWORD` from.
pub const AUTH_ENV: &str = "LDK_SPLICE_BITCOIND_AUTH";

/// `sample-node daemon` on `dir` with the usual test settings (regtest,
/// `chain`'s URL, free ports, quick polling) and no credentials: add them
/// with [`with_env_auth`], a cookie file or a config file.
pub fn daemon_command(binary: &Path, chain: &ChainProcess, dir: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("daemon")
        .arg("--datadir")
        .arg(dir)
        .args([
            "--network",
            "regtest",
            "--bitcoind-rpc",
            &format!("http://{}", chain.rpc_addr()),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--chain-poll-ms",
            "50",
            "--reconnect-ms",
            "200",
        ])
        .env_remove(AUTH_ENV);
    command
}

/// Gives `command` the devchain's credentials in [`AUTH_ENV`].
pub fn with_env_auth<'a>(command: &'a mut Command, chain: &ChainProcess) -> &'a mut Command {
    command.env(
        AUTH_ENV,
        format!("{}:{}", chain.rpc_user(), chain.rpc_password()),
    )
}

/// Starts a daemon with `extra` arguments after the usual ones, bitcoind's
/// credentials in the environment.
pub fn start_daemon_with(
    binary: &Path,
    chain: &ChainProcess,
    dir: PathBuf,
    extra: &[&str],
) -> Daemon {
    let mut command = daemon_command(binary, chain, &dir);
    with_env_auth(&mut command, chain).args(extra);
    spawn_daemon(command, dir)
}

/// Spawns `command` (a `sample-node daemon` on `dir`) and waits until it
/// serves its API.
pub fn spawn_daemon(mut command: Command, dir: PathBuf) -> Daemon {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("daemon starts");
    let first = first_line(&mut child);
    let mut daemon = Daemon { child, dir };
    let line = first.recv_timeout(WAIT).unwrap_or_else(|_| {
        let _ = daemon.child.kill();
        panic!("daemon did not report its API address in time")
    });
    let addr = line
        .trim()
        .strip_prefix("sample-node api listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the daemon: {line:?}"));
    let written = std::fs::read_to_string(daemon.dir.join("api-addr")).expect("api-addr written");
    assert_eq!(written.trim(), addr);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(daemon.dir.join("api-token"))
            .expect("api-token written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "token readable only by its owner");
    }
    daemon
}

/// Runs `command` to its end (at most [`WAIT`]); its status and what it
/// printed on stdout and stderr.
pub fn run_to_exit(mut command: Command) -> (std::process::ExitStatus, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("process starts");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout piped")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr piped")));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("process status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}

/// Every entry under `dir` (and `dir` itself) whose permissions are not
/// 0700 (directories) or 0600 (files), with its mode.
#[cfg(unix)]
pub fn loose_permissions(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut loose = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        // A running daemon may remove a file (a store's temporary) meanwhile.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        let wanted = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != wanted {
            loose.push((path.clone(), mode));
        }
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).into_iter().flatten();
            todo.extend(entries.flatten().map(|entry| entry.path()));
        }
    }
    loose
}

/// Fails unless `dir` and everything in it is 0700 (directories) or 0600
/// (files); `when` says at which point of the test.
#[cfg(unix)]
pub fn assert_private(dir: &Path, when: &str) {
    let loose = loose_permissions(dir);
    assert!(
        loose.is_empty(),
        "{when}: {} entries under {} are not 0700/0600, e.g. {:?}",
        loose.len(),
        dir.display(),
        &loose[..loose.len().min(8)]
    );
}

/// Runs `sample-node cli --datadir DIR args...`; returns its exit success and JSON.
pub fn cli(binary: &Path, dir: &Path, args: &[&str]) -> (bool, Value) {
    let output = Command::new(binary)
        .arg("cli")
        .arg("--datadir")
        .arg(dir)
        .args(args)
        .output()
        .expect("cli runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("cli {args:?} printed no JSON ({e}): {stdout}"));
    (output.status.success(), value)
}

/// Like [`cli`], but the command must succeed.
pub fn cli_ok(binary: &Path, dir: &Path, args: &[&str]) -> Value {
    let (ok, value) = cli(binary, dir, args);
    assert!(ok, "cli {args:?} failed: {value}");
    value
}

/// Polls `check` every 100 ms until it returns `Some`, for at most [`WAIT`].
pub fn poll<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn sat(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {value}"))
}

/// One call of the daemon's HTTP API in `dir` (address and token from its
/// files): the HTTP status and the JSON answer.
pub fn api(dir: &Path, command: &str, params: Value) -> (u16, Value) {
    try_api(dir, command, params).unwrap_or_else(|| panic!("{command}: no answer"))
}

/// Like [`api`], but `None` when the daemon does not answer (it died).
pub fn try_api(dir: &Path, command: &str, params: Value) -> Option<(u16, Value)> {
    let addr = std::fs::read_to_string(dir.join("api-addr")).ok()?;
    let token = std::fs::read_to_string(dir.join("api-token")).ok()?;
    let body = params.to_string();
    let mut stream = std::net::TcpStream::connect(addr.trim()).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    write!(
        stream,
        "POST /v1/{command} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        addr.trim(),
        token.trim(),
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok())?;
    let json = response.split("\r\n\r\n").nth(1).unwrap_or("null");
    Some((status, serde_json::from_str(json).unwrap_or(Value::Null)))
}

/// Like [`api`], but the call must succeed.
pub fn api_ok(dir: &Path, command: &str, params: Value) -> Value {
    let (status, value) = api(dir, command, params);
    assert_eq!(status, 200, "{command} failed: {value}");
    value
}

impl ChainProcess {
    /// A transaction the devchain knows (mempool or chain).
    pub fn transaction(&self, txid: &str) -> bitcoin::Transaction {
        let hex = self.rpc("getrawtransaction", serde_json::json!([txid]));
        bitcoin::consensus::encode::deserialize_hex(hex.as_str().expect("hex"))
            .expect("a transaction")
    }

    /// The fee `txid` pays, from the outputs it spends.
    pub fn fee_of(&self, txid: &str) -> u64 {
        let tx = self.transaction(txid);
        let inputs: u64 = tx
            .input
            .iter()
            .map(|i| {
                let prev = self.transaction(&i.previous_output.txid.to_string());
                prev.output[i.previous_output.vout as usize].value.to_sat()
            })
            .sum();
        let outputs: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        inputs - outputs
    }

    /// The txids in the mempool.
    pub fn mempool(&self) -> Vec<String> {
        self.rpc("getrawmempool", serde_json::json!([]))
            .as_array()
            .expect("a list")
            .iter()
            .map(|t| t.as_str().expect("txid").to_string())
            .collect()
    }
}

impl Daemon {
    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to end, calling `meanwhile`
    /// every 100 ms; returns its status.
    pub fn wait_exit(
        &mut self,
        timeout: Duration,
        mut meanwhile: impl FnMut(),
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("process status") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            meanwhile();
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's whole log (lossy: a line cut by a kill may not be UTF-8).
    fn log(&self) -> String {
        let path = self.dir.join("logs/sample-node.log");
        match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read {}: {e})", path.display()),
        }
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The last `n` log lines that are not API or connection chatter.
    pub fn log_notable(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                !l.contains("sample_node::api")
                    && !l.contains("Received Init message")
                    && !l.contains("data_loss_protect")
                    && !l.contains("node::connections")
            })
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}
