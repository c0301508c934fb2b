//! The `sample-node` daemon as something to run with real money: bitcoind's
//! credentials never on its command line, and settings it refuses before
//! anything starts.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use common::processes::*;

/// The tests here that run daemons take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `text` to `path` with permission bits `mode`.
fn write_file(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("file written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    #[cfg(not(unix))]
    let _ = mode;
}

/// Runs `sample-node daemon --datadir DIR args...` with `env`, expecting it
/// to refuse to start: its stderr.
fn refused(binary: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(binary);
    command
        .arg("daemon")
        .arg("--datadir")
        .arg(dir)
        .args(args)
        .env_remove(AUTH_ENV)
        .envs(env.iter().copied());
    let (status, _, stderr) = run_to_exit(command);
    assert!(!status.success(), "{args:?} started: {stderr}");
    stderr
}

#[test]
fn unsafe_daemon_settings_are_refused_before_anything_starts() {
    let binary = sample_node_binary();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("node");
    let auth = [(AUTH_ENV, "user:password")];

    // Credentials in the URL: refused, without repeating them, saying
    // where they go instead.
    let stderr = refused(
        &binary,
        &dir,
        &["--bitcoind-rpc", "http://alice:hunter2@127.0.0.1:18443"],
        &[],
    );
    assert!(stderr.contains("must not carry credentials"), "{stderr}");
    for place in ["--bitcoind-cookie", AUTH_ENV, "config file"] {
        assert!(stderr.contains(place), "{stderr} lacks {place}");
    }
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // Mainnet is not enabled yet.
    let stderr = refused(&binary, &dir, &["--network", "bitcoin"], &auth);
    assert!(
        stderr.contains("mainnet") && stderr.contains("not enabled yet"),
        "{stderr}"
    );

    // No credentials anywhere.
    let stderr = refused(&binary, &dir, &[], &[]);
    assert!(stderr.contains("no bitcoind credentials"), "{stderr}");

    // A config file holding a password that others can read.
    let config = tmp.path().join("open.toml");
    write_file(
        &config,
        "bitcoind_user = \"u\"\nbitcoind_password = \"p\"\n",
        0o644,
    );
    let stderr = refused(
        &binary,
        &dir,
        &["--config", config.to_str().unwrap()],
        &auth,
    );
    #[cfg(unix)]
    assert!(stderr.contains("chmod 600"), "{stderr}");

    // A typo in the config file is named.
    write_file(&config, "bitcoind_pasword = \"p\"\n", 0o600);
    let stderr = refused(
        &binary,
        &dir,
        &["--config", config.to_str().unwrap()],
        &auth,
    );
    assert!(stderr.contains("bitcoind_pasword"), "{stderr}");

    assert!(!dir.exists(), "nothing was created");
}

/// Stops `daemon` with `cli stop` and waits for it to exit cleanly.
fn stop(binary: &Path, mut daemon: Daemon) {
    cli_ok(binary, &daemon.dir, &["stop"]);
    let status = poll("the daemon to exit", || {
        daemon.child.try_wait().expect("daemon status")
    });
    assert!(status.success(), "daemon exited with {status}");
}

#[test]
fn bitcoind_credentials_from_cookie_env_or_config_in_that_order() {
    let _turn = one_at_a_time();
    let binary = sample_node_binary();
    let chain = ChainProcess::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let right = format!("{}:{}", chain.rpc_user(), chain.rpc_password());
    let wrong = format!("{}:not-the-password", chain.rpc_user());
    let good_cookie = tmp.path().join("good.cookie");
    write_file(&good_cookie, &format!("{right}\n"), 0o600);
    let bad_cookie = tmp.path().join("bad.cookie");
    write_file(&bad_cookie, &wrong, 0o600);
    let wrong_config = format!(
        "bitcoind_user = \"{}\"\nbitcoind_password = \"not-the-password\"\n",
        chain.rpc_user()
    );

    // The cookie file wins over the environment and the config file.
    let dir = tmp.path().join("cookie");
    std::fs::create_dir(&dir).unwrap();
    write_file(&dir.join("sample-node.toml"), &wrong_config, 0o600);
    let mut command = daemon_command(&binary, &chain, &dir);
    command
        .arg("--bitcoind-cookie")
        .arg(&good_cookie)
        .env(AUTH_ENV, &wrong);
    let by_cookie = spawn_daemon(command, dir);

    // The environment wins over the config file (DIR/sample-node.toml).
    let dir = tmp.path().join("env");
    std::fs::create_dir(&dir).unwrap();
    write_file(&dir.join("sample-node.toml"), &wrong_config, 0o600);
    // An existing data directory, and a file an earlier run left open to
    // others: the daemon makes them private.
    write_file(&dir.join("notes.txt"), "left by an earlier run", 0o644);
    let mut command = daemon_command(&binary, &chain, &dir);
    command.env(AUTH_ENV, &right);
    let by_env = spawn_daemon(command, dir);

    // The config file alone carries everything: URL, credentials, network
    // and the service settings.
    let dir = tmp.path().join("config");
    let config = tmp.path().join("node.toml");
    write_file(
        &config,
        &format!(
            "network = \"regtest\"\nbitcoind_rpc = \"http://{}\"\nbitcoind_user = \"{}\"\n\
             bitcoind_password = \"{}\"\nlisten = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\n\
             chain_poll_ms = 50\nreconnect_ms = 200\nlog_level = \"debug\"\n",
            chain.rpc_addr(),
            chain.rpc_user(),
            chain.rpc_password()
        ),
        0o600,
    );
    let mut command = Command::new(&binary);
    command
        .arg("daemon")
        .arg("--datadir")
        .arg(&dir)
        .arg("--config")
        .arg(&config)
        .env_remove(AUTH_ENV);
    let by_config = spawn_daemon(command, dir);

    // Each reaches the chain.
    chain.mine_blocks_to_burn(1);
    for daemon in [&by_cookie, &by_env, &by_config] {
        poll("the daemon to follow the chain", || {
            let info = cli_ok(&binary, &daemon.dir, &["getinfo"]);
            (info["block_height"] == 1).then_some(())
        });
    }
    let log = std::fs::read_to_string(by_config.dir.join("logs/sample-node.log")).unwrap();
    assert!(log.contains("DEBUG"), "the config's log level applies");
    assert!(
        !log.contains(chain.rpc_password()),
        "the password is never logged"
    );
    for daemon in [by_cookie, by_env, by_config] {
        let dir = daemon.dir.clone();
        stop(&binary, daemon);
        #[cfg(unix)]
        assert_private(&dir, "after a daemon ran");
    }

    // A wrong cookie is used even when the environment has the right
    // credentials: the cookie comes first, and bitcoind refuses it.
    let dir = tmp.path().join("wrong-cookie");
    let mut command = daemon_command(&binary, &chain, &dir);
    command
        .arg("--bitcoind-cookie")
        .arg(&bad_cookie)
        .env(AUTH_ENV, &right);
    let (status, _, stderr) = run_to_exit(command);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("node did not start"), "{stderr}");
    assert!(stderr.contains("bad.cookie"), "names the source: {stderr}");
}
