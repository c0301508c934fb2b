//! The `sample-node` daemon as something to run with real money: bitcoind's
//! credentials never on its command line, settings it refuses before
//! anything starts, its data directory private, an API that checks the
//! token before reading a body, caps bodies at 64 KiB, and keeps blocking
//! node calls off the threads that drive peers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::processes::*;
use serde_json::{json, Value};

/// The tests here that run daemons take turns: the load test times a
/// payment, and daemons starting beside it would skew that.
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
    // The environment-configured node gets a coin at height 2.
    let address = cli_ok(&binary, &by_env.dir, &["newaddress"]);
    let address: bitcoin::Address<bitcoin::address::NetworkUnchecked> =
        address["address"].as_str().unwrap().parse().unwrap();
    chain.mine_blocks(1, &address.assume_checked());
    let funded = poll("the coin to show", || {
        let balance = cli_ok(&binary, &by_env.dir, &["balance"]);
        (sat(&balance, "total_sat") > 0).then_some(sat(&balance, "total_sat"))
    });
    // A block past it: a wallet starting at the tip would not see the coin.
    chain.mine_blocks_to_burn(1);
    let seed = std::fs::read(by_env.dir.join("seed")).expect("seed");
    for daemon in [by_cookie, by_env, by_config] {
        let dir = daemon.dir.clone();
        stop(&binary, daemon);
        #[cfg(unix)]
        assert_private(&dir, "after a daemon ran");
    }

    // Its seed in a new data directory with --wallet-birthday 2, the
    // coin's block: the same coin.
    let dir = tmp.path().join("restored");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("seed"), &seed).unwrap();
    let restored = start_daemon_with(&binary, &chain, dir, &["--wallet-birthday", "2"]);
    let restored_total = poll("the restored wallet to find the coin", || {
        let balance = cli_ok(&binary, &restored.dir, &["balance"]);
        (sat(&balance, "total_sat") > 0).then_some(sat(&balance, "total_sat"))
    });
    assert_eq!(restored_total, funded);
    stop(&binary, restored);

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

    // Mainnet is a network like the others: the daemon warns, then the node
    // checks bitcoind's chain (the devchain is regtest) and refuses it.
    let dir = tmp.path().join("mainnet");
    let mut command = Command::new(&binary);
    command
        .arg("daemon")
        .arg("--datadir")
        .arg(&dir)
        .args(["--network", "bitcoin", "--bitcoind-rpc"])
        .arg(format!("http://{}", chain.rpc_addr()))
        .args(["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .env(AUTH_ENV, &right);
    let (status, _, stderr) = run_to_exit(command);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("running on mainnet"), "{stderr}");
    assert!(stderr.contains("expected 'main'"), "{stderr}");
}

/// What one raw HTTP exchange brought back: the answer's status line and
/// body, and how long after the request was sent it came.
struct Answer {
    status: String,
    body: String,
    after: Duration,
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body`, then reads one answer (to its Content-Length, or to the end).
/// Writing stops quietly if the server closes the connection first.
fn exchange(addr: &str, head: &str, body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("api reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sent = Instant::now();
    let _ = stream
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .and_then(|()| stream.write_all(body));
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| rest.len() >= n) {
                break;
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "no whole answer within 10 s ({e}); got {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    let after = sent.elapsed();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Answer {
        status: head.lines().next().unwrap_or_default().to_string(),
        body: body.to_string(),
        after,
    }
}

/// The API's oversize and unauthenticated bodies, on `dir`'s daemon.
fn check_body_limits(dir: &Path) {
    let addr = std::fs::read_to_string(dir.join("api-addr")).unwrap();
    let addr = addr.trim();
    let token = std::fs::read_to_string(dir.join("api-token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let ten_mib = 10 * 1024 * 1024;
    let announced = |auth: &str| {
        format!(
            "POST /v1/getinfo HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {ten_mib}"
        )
    };

    // No token, 10 MiB announced, 9 bytes sent: 401 at once.
    let answer = exchange(addr, &announced("X-No-Token: 1"), b"{\"pad\": \"");
    assert!(answer.status.contains(" 401 "), "{}", answer.status);
    assert!(answer.body.contains("API token"), "{}", answer.body);
    assert!(answer.after < Duration::from_secs(5), "{:?}", answer.after);
    // A wrong token: the same.
    let answer = exchange(addr, &announced("Authorization: Bearer nope"), b"{");
    assert!(answer.status.contains(" 401 "), "{}", answer.status);

    // With the token, a Content-Length over 64 KiB: 413 at once, as JSON.
    let answer = exchange(addr, &announced(&auth), b"{\"pad\": \"");
    assert!(answer.status.contains(" 413 "), "{}", answer.status);
    let error: Value = serde_json::from_str(&answer.body).expect("JSON error");
    assert!(
        error["error"].as_str().unwrap().contains("64 KiB"),
        "{error}"
    );
    assert!(answer.after < Duration::from_secs(5), "{:?}", answer.after);

    // A chunked body is cut off at 64 KiB: 80 KiB sent, never finished.
    let chunk = vec![b' '; 8 * 1024];
    let mut body = Vec::new();
    for _ in 0..10 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    let answer = exchange(
        addr,
        &format!(
            "POST /v1/getinfo HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
        ),
        &body,
    );
    assert!(answer.status.contains(" 413 "), "{}", answer.status);

    // Just under the limit is read.
    let body = json!({ "pad": " ".repeat(60 * 1024) }).to_string();
    let answer = exchange(
        addr,
        &format!(
            "POST /v1/getinfo HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close",
            body.len()
        ),
        body.as_bytes(),
    );
    assert!(answer.status.contains(" 200 "), "{}", answer.status);
}

/// Bob pays one of Alice's invoices through his API; how long it took.
fn timed_payment(bob: &Path, invoice: &str) -> Duration {
    let started = Instant::now();
    let paid = api_ok(bob, "pay", json!({ "invoice": invoice }));
    assert_eq!(paid["status"], "Succeeded", "{paid}");
    started.elapsed()
}

#[test]
fn api_keeps_peers_moving_under_load_and_limits_bodies() {
    let _turn = one_at_a_time();
    let binary = sample_node_binary();
    let chain = ChainProcess::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let alice = start_daemon(&binary, &chain, tmp.path().join("alice"));
    let bob = start_daemon(&binary, &chain, tmp.path().join("bob"));
    let (a, b) = (alice.dir.as_path(), bob.dir.as_path());

    // Alice funds a channel to Bob, pushing him enough to pay her.
    let info = api_ok(b, "getinfo", json!({}));
    let bob_id = info["node_id"].as_str().unwrap().to_string();
    let address = api_ok(a, "newaddress", json!({}));
    let address: bitcoin::Address<bitcoin::address::NetworkUnchecked> =
        address["address"].as_str().unwrap().parse().unwrap();
    chain.mine_blocks(1, &address.assume_checked());
    chain.mine_blocks_to_burn(100);
    poll("Alice's coinbase to mature", || {
        let balance = api_ok(a, "balance", json!({}));
        (sat(&balance, "confirmed_sat") == SUBSIDY_SAT).then_some(())
    });
    api_ok(
        a,
        "connect",
        json!({ "peer": format!("{bob_id}@{}", info["listen_addr"].as_str().unwrap()) }),
    );
    api_ok(
        a,
        "openchannel",
        json!({ "node_id": bob_id, "amount_sat": 1_000_000, "push_sat": 300_000 }),
    );
    poll("the funding in the mempool", || {
        (!chain.mempool().is_empty()).then_some(())
    });
    chain.mine_blocks_to_burn(6);
    let channel_id = poll("the channel usable on both sides", || {
        let usable = |dir: &Path| {
            api_ok(dir, "listchannels", json!({}))
                .as_array()
                .and_then(|c| c.first().cloned())
                .filter(|c| c["is_usable"] == true)
        };
        let channel = usable(a)?;
        usable(b)?;
        channel["channel_id"].as_str().map(str::to_string)
    });
    #[cfg(unix)]
    assert_private(a, "after a channel open");

    check_body_limits(a);

    // A payment to Alice with the API idle (after one to warm up).
    let invoice = |n: u64| {
        let invoice = api_ok(
            a,
            "invoice",
            json!({ "amount_msat": 1_000_000 + n, "description": "load" }),
        );
        invoice["invoice"].as_str().unwrap().to_string()
    };
    let (warm_up, idle_invoice, loaded_invoice) = (invoice(0), invoice(1), invoice(2));
    timed_payment(b, &warm_up);
    let idle = timed_payment(b, &idle_invoice);

    // A batch splice starts on the channel; then 100 clients call the API
    // at once, over and over, while Bob pays Alice again.
    let batch = api_ok(
        a,
        "batch",
        json!({ "feerate_sat_per_vb": 2, "legs": [
            { "type": "splice_in", "channel_id": channel_id, "node_id": bob_id, "amount_sat": 50_000 },
        ] }),
    );
    let batch_id = batch["batch_id"].as_str().unwrap().to_string();
    let quote = json!({ "channel_id": channel_id, "node_id": bob_id, "add_sat": 10_000, "feerate_sat_per_vb": 2 });
    let plan = json!({ "feerate_sat_per_vb": 2, "legs": [
        { "type": "splice_out", "channel_id": channel_id, "node_id": bob_id, "amount_sat": 10_000, "to": "wallet" },
    ] });
    let calls: Vec<(&str, Value)> = vec![
        ("getinfo", json!({})),
        ("listsplices", json!({})),
        ("quote", quote),
        ("events", json!({})),
        ("balance", json!({})),
        ("listchannels", json!({})),
        ("quotebatch", plan),
        ("batchstatus", json!({ "id": batch_id })),
        ("newaddress", json!({})),
        (
            "invoice",
            json!({ "amount_msat": 5_000, "description": "load" }),
        ),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(std::sync::Barrier::new(101));
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let (command, params) = calls[i % calls.len()].clone();
            let (dir, stop, answered, start) = (
                a.to_path_buf(),
                stop.clone(),
                answered.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let (status, answer) = api(&dir, command, params.clone());
                    assert!(status < 500, "{command}: {status} {answer}");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    start.wait();
    // Let the load build up before paying.
    poll("the load to build up", || {
        (answered.load(Ordering::Relaxed) >= 100).then_some(())
    });
    let loaded = timed_payment(b, &loaded_invoice);
    let during = answered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client failed");
    }
    eprintln!(
        "payment to the daemon: {idle:?} idle, {loaded:?} under 100 concurrent API clients \
         ({during} calls answered by then, {} in all)",
        answered.load(Ordering::Relaxed)
    );
    assert!(
        loaded < idle * 10 + Duration::from_secs(2),
        "peer traffic stalled under API load: {loaded:?} against {idle:?} idle"
    );

    // The batch goes on to lock.
    let deadline = Instant::now() + WAIT;
    loop {
        let batch = api_ok(a, "batchstatus", json!({ "id": batch_id }));
        match batch["state"].as_str() {
            Some("locked") => break,
            Some("failed" | "cancelled") => panic!("the batch ended: {batch}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "the batch did not lock: {batch}");
        chain.mine_blocks_to_burn(1);
        std::thread::sleep(Duration::from_millis(200));
    }
    #[cfg(unix)]
    for dir in [a, b] {
        assert_private(dir, "after a batch splice");
    }
}
