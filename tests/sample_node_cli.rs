//! Drives the `sample-node` example as a user would: a devchain process and
//! two daemons, a channel opened and spliced through the CLI, balances
//! checked from the CLI's JSON, the splices' events listed, acknowledged
//! and followed, both daemons stopped with `cli stop`, and everything they
//! wrote readable by the owner alone. And inbound liquidity bought through
//! the CLI from a daemon running the liquidity service. And a splice's fee
//! bumped through the CLI: quoted, replaced in the mempool, locked with the
//! wallet paying exactly the amount and the final fee.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use bitcoin::address::NetworkUnchecked;
use bitcoin::Address;
use std::time::{Duration, Instant};

use common::processes::*;
use serde_json::Value;
const CAPACITY_SAT: u64 = 1_000_000;
const SPLICE_SAT: u64 = 250_000;

/// Runs `cli --datadir DIR args...` as a child process, mining a block every
/// 200 ms until it exits (bounded by [`WAIT`]). Returns its exit status,
/// the JSON it printed and the progress it showed on stderr.
fn run_while_mining(
    binary: &Path,
    chain: &ChainProcess,
    dir: &Path,
    progress_file: &Path,
    args: &[&str],
) -> (std::process::ExitStatus, Value, String) {
    let mut child = Command::new(binary)
        .arg("cli")
        .arg("--datadir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(progress_file).expect("progress file"))
        .spawn()
        .expect("cli runs");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("cli status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let progress = std::fs::read_to_string(progress_file).unwrap_or_default();
            let log = std::fs::read_to_string(dir.join("logs/sample-node.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "{args:?} did not finish in time: {progress}\nlog:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        chain.mine_blocks_to_burn(1);
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().expect("cli output");
    let progress = std::fs::read_to_string(progress_file).unwrap_or_default();
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {} {progress}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (output.status, answer, progress)
}

/// Runs a splice command with `--wait locked` on `dir`'s daemon, mining a
/// block every 200 ms until the CLI exits (bounded by [`WAIT`]). Returns the
/// final record and the progress the CLI showed on stderr.
fn splice_to_lock(
    binary: &Path,
    chain: &ChainProcess,
    dir: &Path,
    progress_file: &Path,
    args: &[&str],
) -> (Value, String) {
    let (status, record, progress) = run_while_mining(binary, chain, dir, progress_file, args);
    assert!(status.success(), "{args:?} failed: {record} {progress}");
    assert_eq!(record["state"], "locked", "{record}");
    (record, progress)
}

/// `cli events`: the pending events, oldest first.
fn events(binary: &Path, dir: &Path) -> Vec<Value> {
    let listed = cli_ok(binary, dir, &["events"]);
    let listed = listed.as_array().expect("a list").clone();
    let numbers: Vec<u64> = listed
        .iter()
        .map(|e| {
            let id = e["id"].as_str().expect("an id");
            id.split_once(':').unwrap().1.parse().expect("RUN:N")
        })
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    listed
}

/// The states `splice` reached, as `listing` reports them.
fn states_of(listing: &[Value], splice: &str) -> Vec<String> {
    listing
        .iter()
        .filter(|e| e["splice_id"] == splice)
        .map(|e| e["state"].as_str().expect("a state").to_string())
        .collect()
}

/// The lines `stdout` prints, as they come.
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_node_daemon_and_cli_splice_in() {
    let started = Instant::now();
    let binary = sample_node_binary();
    let mut chain = ChainProcess::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let alice = start_daemon(&binary, &chain, tmp.path().join("alice"));
    let bob = start_daemon(&binary, &chain, tmp.path().join("bob"));
    let (a, b) = (alice.dir.as_path(), bob.dir.as_path());

    // The API wants the token.
    let api_addr = std::fs::read_to_string(a.join("api-addr")).unwrap();
    let mut stream = std::net::TcpStream::connect(api_addr.trim()).unwrap();
    stream
        .write_all(b"POST /v1/getinfo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");

    let info_a = cli_ok(&binary, a, &["getinfo"]);
    let info_b = cli_ok(&binary, b, &["getinfo"]);
    assert_eq!(info_a["network"], "regtest");
    let bob_id = info_b["node_id"].as_str().unwrap().to_string();
    let bob_addr = info_b["listen_addr"].as_str().unwrap().to_string();

    // Fund alice: one coinbase to her address, matured by 100 more blocks.
    fund_daemons(&binary, &chain, &[a]);

    // Bad input is a JSON error, not a crash.
    let (ok, error) = cli(&binary, a, &["openchannel", &bob_id, "lots"]);
    assert!(!ok);
    assert!(
        error["error"].as_str().unwrap().contains("invalid"),
        "{error}"
    );

    // Open a channel and mine until both sides can use it.
    let channel = open_channel_cli(&binary, &chain, a, b, (&bob_id, &bob_addr), 0);
    let channel_id = channel["channel_id"].as_str().unwrap().to_string();
    assert_eq!(sat(&channel, "capacity_sat"), CAPACITY_SAT);
    let before = poll("alice's change to confirm", || {
        let balance = cli_ok(&binary, a, &["balance"]);
        (sat(&balance, "pending_sat") == 0 && sat(&balance, "untrusted_pending_sat") == 0)
            .then_some(balance)
    });
    let wallet_before = sat(&before, "confirmed_sat");

    // An address of another network is refused with a clear error.
    let (ok, error) = cli(
        &binary,
        a,
        &[
            "spliceout",
            &channel_id,
            &bob_id,
            "10000",
            "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
        ],
    );
    assert!(!ok);
    assert!(
        error["error"].as_str().unwrap().contains("network")
            || error["error"].as_str().unwrap().contains("regtest"),
        "{error}"
    );

    // Out-of-range numbers over the HTTP API: a typed refusal naming the
    // field, and nothing locked, written or sent.
    let refused = |command: &str, params: Value, words: &[&str]| {
        let (status, answer) = api(a, command, params);
        assert!(
            status == 400 || status == 422,
            "{command}: {status} {answer}"
        );
        let message = answer["error"].as_str().unwrap_or_default();
        for word in words {
            assert!(
                message.contains(word),
                "{command}: {message:?} lacks {word:?}"
            );
        }
        let balance = api_ok(a, "balance", serde_json::json!({}));
        assert_eq!(balance["locked_coins"], serde_json::json!([]), "{command}");
        assert_eq!(sat(&balance, "available_sat"), wallet_before, "{command}");
        assert_eq!(
            api_ok(a, "listsplices", serde_json::json!({})),
            serde_json::json!([])
        );
    };
    let channel_param = |extra: Value| {
        let mut params = serde_json::json!({ "channel_id": channel_id, "node_id": bob_id });
        params
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        params
    };
    refused(
        "splicein",
        channel_param(serde_json::json!({ "amount_sat": u64::MAX, "feerate_sat_per_vb": 2 })),
        &["add", "21 million"],
    );
    refused(
        "resize",
        channel_param(serde_json::json!({
            "outputs": [{ "to": "wallet", "amount_sat": 1u64 << 63 }, { "to": "wallet", "amount_sat": 1u64 << 63 }],
            "feerate_sat_per_vb": 2,
        })),
        &["outputs[0]"],
    );
    refused(
        "splicein",
        channel_param(
            serde_json::json!({ "amount_sat": 10_000, "feerate_sat_per_vb": 20_000_000u64 }),
        ),
        &["feerate"],
    );
    refused(
        "batch",
        serde_json::json!({
            "legs": [{ "type": "splice_in", "channel_id": channel_id, "node_id": bob_id, "amount_sat": 10_000 }],
            "deadline_secs": u64::MAX,
        }),
        &["deadline"],
    );

    // Quote first: nothing is reserved or sent.
    let add = SPLICE_SAT.to_string();
    let quote = cli_ok(
        &binary,
        a,
        &[
            "quote",
            &channel_id,
            &bob_id,
            "--add",
            &add,
            "--feerate",
            "2",
        ],
    );
    assert_eq!(sat(&quote, "capacity_after"), CAPACITY_SAT + SPLICE_SAT);
    assert!(sat(&quote, "fee") > 0);

    // Splice in, waiting for lock, while blocks come every 200 ms.
    let (record, progress) = splice_to_lock(
        &binary,
        &chain,
        a,
        &tmp.path().join("splice-in-progress"),
        &[
            "splicein",
            &channel_id,
            &bob_id,
            &add,
            "--feerate",
            "2",
            "--wait",
            "locked",
        ],
    );
    assert!(progress.contains("broadcast"), "{progress}");
    assert!(progress.contains("confirmations"), "{progress}");
    assert!(progress.contains("locked"), "{progress}");
    let fee = sat(&record, "fee");
    assert!(fee > 0);
    assert_eq!(fee, sat(&quote, "fee"), "the quote said what it would cost");

    // The same record through splicestatus and listsplices.
    let id = record["splice_id"].as_str().unwrap();
    let status = cli_ok(&binary, a, &["splicestatus", id]);
    assert_eq!(status["state"], "locked");
    assert_eq!(sat(&status, "fee"), fee);
    let all = cli_ok(&binary, a, &["listsplices"]);
    assert_eq!(all.as_array().unwrap().len(), 1);

    // The splice's events wait to be acknowledged, oldest first.
    let first_listing = events(&binary, a);
    assert_eq!(
        states_of(&first_listing, id).last().map(String::as_str),
        Some("locked"),
        "{first_listing:#?}"
    );

    // Capacity grew by exactly the amount, on both sides; the wallet paid
    // the amount plus the recorded fee.
    for dir in [a, b] {
        poll("the new capacity", || {
            let channels = cli_ok(&binary, dir, &["listchannels"]);
            channels
                .as_array()
                .unwrap()
                .iter()
                .find(|c| {
                    c["channel_id"] == channel_id.as_str()
                        && sat(c, "capacity_sat") == CAPACITY_SAT + SPLICE_SAT
                })
                .cloned()
        });
    }
    poll("alice's wallet to pay amount + fee", || {
        let balance = cli_ok(&binary, a, &["balance"]);
        (sat(&balance, "confirmed_sat") == wallet_before - SPLICE_SAT - fee
            && sat(&balance, "pending_sat") == 0)
            .then_some(())
    });

    // Payments work over the spliced channel.
    let invoice = cli_ok(&binary, b, &["invoice", "10000000", "coffee"]);
    let paid = cli_ok(&binary, a, &["pay", invoice["invoice"].as_str().unwrap()]);
    assert_eq!(paid["status"], "Succeeded", "{paid}");

    // A batch plan can be quoted inline.
    let plan = format!(
        r#"{{"legs": [{{"type": "splice_out", "channel_id": "{channel_id}", "node_id": "{bob_id}",
            "amount_sat": 100000, "to": "wallet"}}], "feerate_sat_per_vb": 2}}"#
    );
    let batch_quote = cli_ok(&binary, a, &["batch", "--quote", &plan]);
    assert!(sat(&batch_quote, "total_fee") > 0, "{batch_quote}");

    // Splice out to our own wallet: the channel pays amount + fee, the
    // wallet receives the amount.
    let out_sat = 100_000;
    let wallet_before = wallet_before - SPLICE_SAT - fee;
    let (record, _) = splice_to_lock(
        &binary,
        &chain,
        a,
        &tmp.path().join("splice-out-progress"),
        &[
            "spliceout",
            &channel_id,
            &bob_id,
            &out_sat.to_string(),
            "wallet",
            "--feerate",
            "2",
            "--wait",
            "locked",
        ],
    );
    let out_fee = sat(&record, "fee");
    let channels = cli_ok(&binary, a, &["listchannels"]);
    assert_eq!(
        sat(&channels[0], "capacity_sat"),
        CAPACITY_SAT + SPLICE_SAT - out_sat - out_fee
    );
    poll("alice's wallet to receive the splice-out", || {
        let balance = cli_ok(&binary, a, &["balance"]);
        (sat(&balance, "confirmed_sat") == wallet_before + out_sat).then_some(())
    });
    assert_eq!(
        cli_ok(&binary, a, &["listsplices"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Acknowledging from the first listing (now stale: the splice-out's
    // events came since) drops exactly what it showed.
    let second_listing = events(&binary, a);
    let splice_out = record["splice_id"].as_str().unwrap();
    assert!(
        second_listing.len() > first_listing.len(),
        "{second_listing:#?}"
    );
    let stale = first_listing.last().unwrap()["id"].as_str().unwrap();
    let acked = cli_ok(&binary, a, &["events", "--ack", stale]);
    assert_eq!(sat(&acked, "acknowledged"), first_listing.len() as u64);
    let left = events(&binary, a);
    assert_eq!(left[..], second_listing[first_listing.len()..]);
    assert_eq!(
        states_of(&left, splice_out).last().map(String::as_str),
        Some("locked")
    );
    // A second client acting on the same stale listing drops nothing.
    let again = cli_ok(&binary, a, &["events", "--ack", stale]);
    assert_eq!(sat(&again, "acknowledged"), 0);
    assert_eq!(events(&binary, a), left);
    // Ids it never showed are refused: a later one, or another run's.
    let newest = left.last().unwrap()["id"].as_str().unwrap();
    let (run, n) = newest.split_once(':').unwrap();
    let later = format!("{run}:{}", n.parse::<u64>().unwrap() + 1);
    let (ok, error) = cli(&binary, a, &["events", "--ack", &later]);
    assert!(
        !ok && error["error"].as_str().unwrap().contains("no event"),
        "{error}"
    );
    let (ok, error) = cli(&binary, a, &["events", "--ack", "earlier-run:1"]);
    assert!(
        !ok && error["error"].as_str().unwrap().contains("earlier run"),
        "{error}"
    );
    assert_eq!(events(&binary, a), left);
    // Acknowledging through the newest listed empties the queue.
    cli_ok(&binary, a, &["events", "--ack", newest]);
    assert_eq!(events(&binary, a), Vec::<Value>::new());

    // A locked splice can no longer be cancelled.
    let (ok, error) = cli(&binary, a, &["cancel", "splice-1"]);
    assert!(!ok, "{error}");
    assert!(error["error"].is_string(), "{error}");

    // Grow and pay out in one splice, with `events --follow` printing (and
    // acknowledging) its events as they come.
    let mut follower = Command::new(&binary)
        .arg("cli")
        .arg("--datadir")
        .arg(a)
        .args(["events", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("cli runs");
    let followed = lines_of(follower.stdout.take().unwrap());
    let (record, _) = splice_to_lock(
        &binary,
        &chain,
        a,
        &tmp.path().join("resize-progress"),
        &[
            "resize",
            &channel_id,
            &bob_id,
            "--add",
            "50000",
            "--out",
            "wallet:20000",
            "--feerate",
            "2",
            "--wait",
            "locked",
        ],
    );
    let expected =
        sat(&record, "capacity_before") as i64 + record["net_value_sat"].as_i64().unwrap();
    let resize = record["splice_id"].as_str().unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&"locked".to_string()) {
        let line = followed
            .recv_timeout(WAIT)
            .expect("events --follow prints the resize's lock");
        let event: Value = serde_json::from_str(&line).expect("one JSON event per line");
        if event["splice_id"] == resize {
            seen.push(event["state"].as_str().unwrap().to_string());
        }
    }
    assert!(seen.contains(&"broadcast".to_string()), "{seen:?}");
    poll("--follow to acknowledge what it printed", || {
        events(&binary, a).is_empty().then_some(())
    });
    let _ = follower.kill();
    let _ = follower.wait();
    let channels = cli_ok(&binary, a, &["listchannels"]);
    assert_eq!(
        sat(&channels[0], "capacity_sat") as i64,
        expected,
        "{record}"
    );

    // Force-close through the CLI: `balance` follows what LDK claims and
    // what the sweeper sweeps, until the funds are back in the wallet.
    let before_close = sat(&cli_ok(&binary, a, &["balance"]), "confirmed_sat");
    let closing = cli_ok(
        &binary,
        a,
        &["closechannel", &channel_id, &bob_id, "--force"],
    );
    assert_eq!(closing["force"], true, "{closing}");
    let claimed = poll("the closed channel's funds to be claimed on-chain", || {
        chain.mine_blocks_to_burn(1);
        let balance = cli_ok(&binary, a, &["balance"]);
        (sat(&balance, "channels_sat") == 0 && sat(&balance, "claimable_on_chain_sat") > 0)
            .then_some(sat(&balance, "claimable_on_chain_sat"))
    });
    let swept = poll("the sweep into the wallet", || {
        chain.mine_blocks_to_burn(10);
        let balance = cli_ok(&binary, a, &["balance"]);
        let sweeps = balance["sweeps"].as_array().unwrap().clone();
        let done = !sweeps.is_empty()
            && sweeps
                .iter()
                .all(|s| s["status"] == "confirmed" && s["txid"].is_string())
            && sat(&balance, "claimable_on_chain_sat") == 0
            && sat(&balance, "pending_sweep_sat") == 0
            && sat(&balance, "pending_sat") == 0;
        done.then_some(balance)
    });
    let swept_sat = sat(&swept, "swept_awaiting_confirmations_sat");
    assert!(swept_sat > 0 && swept_sat <= claimed, "{swept}");
    // The wallet got what was swept, less the fees of the sweep (and of a
    // child for the commitment, if one was needed): `tests/force_close.rs`
    // accounts for every satoshi; here the CLI shows it.
    let gained = sat(&swept, "confirmed_sat") - before_close;
    assert!(
        gained <= swept_sat && gained + 20_000 > swept_sat,
        "{swept}"
    );

    // Both daemons stop cleanly on `cli stop`.
    for mut daemon in [alice, bob] {
        cli_ok(&binary, &daemon.dir, &["stop"]);
        let status = poll("the daemon to exit", || {
            daemon.child.try_wait().expect("daemon status")
        });
        assert!(status.success(), "daemon exited with {status}");
        assert!(
            !daemon.dir.join("api-addr").exists(),
            "api-addr removed on exit"
        );
    }
    // Everything the daemons wrote (seed, channel monitors, wallet, logs)
    // is theirs alone.
    #[cfg(unix)]
    for dir in ["alice", "bob"].map(|name| tmp.path().join(name)) {
        assert_private(&dir, "after the daemons stopped");
    }
    chain.shutdown();
    eprintln!("sample-node CLI test took {:?}", started.elapsed());
}

/// The liquidity the client buys in `sample_node_buys_inbound_liquidity`.
const LIQUIDITY_SAT: u64 = 500_000;
/// What the client pays the service before ordering, so both sides hold a
/// balance (and the fee moves exactly the fee).
const PREPAID_MSAT: u64 = 10_000_000;

/// The channel `channel_id` as `dir`'s `listchannels` shows it.
fn channel_of(binary: &Path, dir: &Path, channel_id: &str) -> Option<Value> {
    let channels = cli_ok(binary, dir, &["listchannels"]);
    channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel_id"] == channel_id)
        .cloned()
}

/// Mines a coinbase to each daemon in `dirs`, then 100 blocks, and waits
/// until each sees its coinbase mature.
fn fund_daemons(binary: &Path, chain: &ChainProcess, dirs: &[&Path]) {
    for dir in dirs {
        let address = cli_ok(binary, dir, &["newaddress"]);
        let address: Address<NetworkUnchecked> =
            address["address"].as_str().unwrap().parse().unwrap();
        chain.mine_blocks(1, &address.assume_checked());
    }
    chain.mine_blocks_to_burn(100);
    for dir in dirs {
        poll("the coinbases to mature", || {
            let balance = cli_ok(binary, dir, &["balance"]);
            (sat(&balance, "confirmed_sat") == SUBSIDY_SAT).then_some(())
        });
    }
}

/// Connects `from` to the daemon `to` (id `to_id` at `to_addr`), opens a
/// channel of `CAPACITY_SAT` from `from`, and mines until both daemons can
/// use it and it is `min_confirmations` deep; returns `from`'s view of it.
fn open_channel_cli(
    binary: &Path,
    chain: &ChainProcess,
    from: &Path,
    to: &Path,
    (to_id, to_addr): (&str, &str),
    min_confirmations: u64,
) -> Value {
    cli_ok(binary, from, &["connect", &format!("{to_id}@{to_addr}")]);
    cli_ok(
        binary,
        from,
        &["openchannel", to_id, &CAPACITY_SAT.to_string()],
    );
    poll("the channel to be usable", || {
        chain.mine_blocks_to_burn(1);
        std::thread::sleep(Duration::from_millis(100));
        let channels = cli_ok(binary, from, &["listchannels"]);
        let channel = channels.as_array().unwrap().first().cloned()?;
        let id = channel["channel_id"].as_str()?;
        let ready = |c: &Value| {
            c["is_usable"] == true && c["confirmations"].as_u64().unwrap_or(0) >= min_confirmations
        };
        (ready(&channel) && channel_of(binary, to, id).is_some_and(|c| ready(&c)))
            .then_some(channel)
    })
}

/// The order `order_id` in `list`.
fn order_in<'a>(list: &'a Value, order_id: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|o| o["order_id"] == order_id)
        .unwrap_or_else(|| panic!("no order {order_id} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_node_buys_inbound_liquidity() {
    let started = Instant::now();
    let binary = sample_node_binary();
    let mut chain = ChainProcess::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    // The service's terms from its config file: defaults but the fee, and
    // channels old enough after 3 blocks.
    let service_dir = tmp.path().join("service");
    std::fs::create_dir_all(&service_dir).unwrap();
    std::fs::write(
        service_dir.join("sample-node.toml"),
        "[liquidity_service]\nfee_base_sat = 2000\nfee_basis = 50\nmin_channel_age_blocks = 3\n",
    )
    .unwrap();
    let service = start_daemon(&binary, &chain, service_dir);
    let client = start_daemon(&binary, &chain, tmp.path().join("client"));
    let (s, c) = (service.dir.as_path(), client.dir.as_path());

    let info_s = cli_ok(&binary, s, &["getinfo"]);
    let info_c = cli_ok(&binary, c, &["getinfo"]);
    assert_eq!(info_s["liquidity_service"], true, "{info_s}");
    assert_eq!(info_c["liquidity_service"], false, "{info_c}");
    let service_id = info_s["node_id"].as_str().unwrap().to_string();
    let client_id = info_c["node_id"].as_str().unwrap().to_string();
    let service_addr = info_s["listen_addr"].as_str().unwrap();

    // A coinbase each, matured: the client opens the channel, the service
    // splices liquidity in from its wallet.
    fund_daemons(&binary, &chain, &[s, c]);
    let channel = open_channel_cli(&binary, &chain, c, s, (&service_id, service_addr), 3);
    let channel_id = channel["channel_id"].as_str().unwrap().to_string();

    // The client pays the service first, so both hold a balance.
    let invoice = cli_ok(&binary, s, &["invoice", &PREPAID_MSAT.to_string()]);
    let paid = cli_ok(&binary, c, &["pay", invoice["invoice"].as_str().unwrap()]);
    assert_eq!(paid["status"], "Succeeded", "{paid}");
    let balance_of = |dir: &Path| {
        sat(
            &channel_of(&binary, dir, &channel_id).unwrap(),
            "balance_sat",
        )
    };
    let client_before = poll("the prepayment to settle on both sides", || {
        let (client, service) = (balance_of(c), balance_of(s));
        (service == PREPAID_MSAT / 1000).then_some(client)
    });
    let service_before = balance_of(s);

    // The service's terms, as its config file set them.
    let terms = cli_ok(&binary, c, &["liquidity", "info", &service_id]);
    assert_eq!(terms["node_id"], service_id.as_str(), "{terms}");
    assert_eq!(sat(&terms, "min_amount_sat"), 100_000, "{terms}");
    assert_eq!(sat(&terms, "max_amount_sat"), 10_000_000, "{terms}");
    assert_eq!(sat(&terms, "fee_base_sat"), 2_000, "{terms}");
    assert_eq!(sat(&terms, "fee_basis"), 50, "{terms}");
    assert_eq!(sat(&terms, "min_channel_age_blocks"), 3, "{terms}");

    // Bad input: clear errors, exit 1, nothing ordered or paid.
    let refused = |dir: &Path, args: &[&str], words: &[&str]| {
        let (ok, error) = cli(&binary, dir, args);
        assert!(!ok, "{args:?}: {error}");
        let message = error["error"].as_str().unwrap_or_default();
        for word in words {
            assert!(
                message.contains(word),
                "{args:?}: {message:?} lacks {word:?}"
            );
        }
    };
    refused(
        c,
        &["liquidity", "buy", &channel_id, "1000"],
        &["out of range", "between 100000 and 10000000 sat"],
    );
    refused(c, &["liquidity", "info", "nope"], &["invalid node id"]);
    refused(c, &["liquidity", "buy", &channel_id, "lots"], &["invalid"]);
    refused(
        c,
        &["liquidity", "buy", &"00".repeat(32), "500000"],
        &["no channel"],
    );
    refused(
        c,
        &[
            "liquidity",
            "buy",
            &channel_id,
            "500000",
            "--order-id",
            "no spaces",
        ],
        &["client_order_id"],
    );
    // Over the API: numbers out of range and unknown fields are 400s.
    for (params, words) in [
        (
            serde_json::json!({ "channel_id": channel_id, "amount_sat": u64::MAX }),
            &["amount_sat", "21 million"][..],
        ),
        (
            serde_json::json!({ "channel_id": channel_id, "amount_sat": 500_000, "max_fee_sat": u64::MAX }),
            &["max_fee_sat", "21 million"][..],
        ),
        (
            serde_json::json!({ "channel_id": channel_id, "amount_sat": -1 }),
            &["bad parameters for liquiditybuy"][..],
        ),
        (
            serde_json::json!({ "channel_id": channel_id, "amount": 500_000 }),
            &["unknown field", "amount"][..],
        ),
    ] {
        let (status, answer) = api(c, "liquiditybuy", params.clone());
        assert_eq!(status, 400, "{params}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        for word in words {
            assert!(
                message.contains(word),
                "{params}: {message:?} lacks {word:?}"
            );
        }
    }

    // A peer that sells nothing says so.
    refused(
        s,
        &["liquidity", "info", &client_id],
        &["runs no liquidity service"],
    );
    // An order dearer than --max-fee is not even made.
    refused(
        c,
        &["liquidity", "buy", &channel_id, "500000", "--max-fee", "10"],
        &[
            "would cost",
            "above the limit of 10 sat",
            "nothing was ordered",
        ],
    );
    assert_eq!(
        cli_ok(&binary, c, &["liquidity", "orders"]),
        serde_json::json!({ "bought": [] })
    );
    assert_eq!(balance_of(c), client_before, "nothing paid");

    // Buy, following the order to completion while blocks come.
    let (status, order, progress) = run_while_mining(
        &binary,
        &chain,
        c,
        &tmp.path().join("liquidity-progress"),
        &[
            "liquidity",
            "buy",
            &channel_id,
            &LIQUIDITY_SAT.to_string(),
            "--order-id",
            "cli-test-1",
            "--wait",
            "locked",
        ],
    );
    assert!(status.success(), "buy failed: {order} {progress}");
    assert_eq!(order["state"], "completed", "{order}");
    assert_eq!(order["client_order_id"], "cli-test-1", "{order}");
    assert_eq!(order["service"], service_id.as_str(), "{order}");
    assert_eq!(sat(&order, "amount_sat"), LIQUIDITY_SAT, "{order}");
    assert!(order["txid"].is_string(), "{order}");
    assert!(progress.contains("created"), "{progress}");
    assert!(progress.contains("completed"), "{progress}");
    let order_id = order["order_id"].as_str().unwrap().to_string();
    let fee = &order["fee"];
    let fee_total = sat(fee, "total_sat");
    assert_eq!(sat(fee, "base_sat"), 2_000, "{fee}");
    assert_eq!(
        sat(fee, "proportional_sat"),
        LIQUIDITY_SAT * 50 / 10_000,
        "{fee}"
    );
    assert_eq!(
        fee_total,
        sat(fee, "base_sat") + sat(fee, "proportional_sat") + sat(fee, "mining_sat"),
        "{fee}"
    );

    // The channel grew by exactly the amount on both sides; the client paid
    // exactly the fee, which the service received.
    for dir in [s, c] {
        poll("the new capacity", || {
            channel_of(&binary, dir, &channel_id)
                .filter(|ch| sat(ch, "capacity_sat") == CAPACITY_SAT + LIQUIDITY_SAT)
        });
    }
    poll("the client's balance to drop by the fee", || {
        (balance_of(c) == client_before - fee_total).then_some(())
    });
    assert_eq!(
        balance_of(s),
        service_before + LIQUIDITY_SAT + fee_total,
        "the service's side grew by the amount and the fee"
    );

    // Both sides list the order as completed.
    let bought = cli_ok(&binary, c, &["liquidity", "orders"]);
    assert!(bought.get("sold").is_none(), "{bought}");
    let listed = order_in(&bought["bought"], &order_id);
    assert_eq!(listed["state"], "completed", "{listed}");
    assert_eq!(listed["fee_payment"], "succeeded", "{listed}");
    let sold = cli_ok(&binary, s, &["liquidity", "orders"]);
    assert_eq!(sold["bought"], serde_json::json!([]), "{sold}");
    let listed = order_in(&sold["sold"], &order_id);
    assert_eq!(listed["state"], "completed", "{listed}");
    assert_eq!(listed["client"], client_id.as_str(), "{listed}");
    assert!(listed["splice_id"].is_string(), "{listed}");
    assert_eq!(listed["txid"], order["txid"], "{listed}");
    let status = cli_ok(&binary, c, &["liquidity", "status", &order_id]);
    assert_eq!(status["state"], "completed", "{status}");
    refused(
        c,
        &["liquidity", "status", "no-such-order"],
        &["no liquidity order"],
    );

    // Buying again with the same --order-id gets the same order, not paid
    // again (and a --wait-timeout too large for the clock is no crash).
    let forever = u64::MAX.to_string();
    let again = cli_ok(
        &binary,
        c,
        &[
            "liquidity",
            "buy",
            &channel_id,
            &LIQUIDITY_SAT.to_string(),
            "--order-id",
            "cli-test-1",
            "--wait",
            "locked",
            "--wait-timeout",
            &forever,
        ],
    );
    assert_eq!(again["order_id"], order_id.as_str(), "{again}");
    assert_eq!(again["state"], "completed", "{again}");
    assert_eq!(balance_of(c), client_before - fee_total, "paid once");

    // --wait paid returns once the service holds the fee: with no block
    // mined, its splice stays unconfirmed.
    let mut buy = Command::new(&binary);
    buy.arg("cli").arg("--datadir").arg(c).args([
        "liquidity",
        "buy",
        &channel_id,
        "200000",
        "--wait",
        "paid",
    ]);
    let (status, stdout, progress) = run_to_exit(buy);
    assert!(status.success(), "{stdout} {progress}");
    let second: Value = serde_json::from_str(&stdout).expect("order JSON");
    assert!(
        second["state"] == "paid" || second["state"] == "splicing",
        "{second}"
    );

    for mut daemon in [service, client] {
        cli_ok(&binary, &daemon.dir, &["stop"]);
        let status = poll("the daemon to exit", || {
            daemon.child.try_wait().expect("daemon status")
        });
        assert!(status.success(), "daemon exited with {status}");
    }
    chain.shutdown();
    eprintln!("sample-node liquidity test took {:?}", started.elapsed());
}

/// The candidates of splice record `record`.
fn candidates(record: &Value) -> Vec<Value> {
    record["candidates"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_node_bumps_a_splice_fee() {
    let started = Instant::now();
    let binary = sample_node_binary();
    let mut chain = ChainProcess::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let alice = start_daemon(&binary, &chain, tmp.path().join("alice"));
    // Bob bumps his own splices by himself (he starts none here).
    let bob = start_daemon_with(
        &binary,
        &chain,
        tmp.path().join("bob"),
        &["--auto-bump", "6:30:20000"],
    );
    let (a, b) = (alice.dir.as_path(), bob.dir.as_path());
    let info_a = cli_ok(&binary, a, &["getinfo"]);
    let info_b = cli_ok(&binary, b, &["getinfo"]);
    assert_eq!(info_a["auto_bump"], Value::Null, "{info_a}");
    assert_eq!(
        info_b["auto_bump"],
        serde_json::json!({ "target_blocks": 6, "max_feerate_sat_per_kwu": 7500,
                            "max_feerate_sat_per_vb": 30, "max_fee_sat": 20000 }),
        "{info_b}"
    );
    let bob_id = info_b["node_id"].as_str().unwrap().to_string();
    let bob_addr = info_b["listen_addr"].as_str().unwrap().to_string();

    // Fund alice and open a channel.
    fund_daemons(&binary, &chain, &[a]);
    let channel = open_channel_cli(&binary, &chain, a, b, (&bob_id, &bob_addr), 0);
    let channel_id = channel["channel_id"].as_str().unwrap().to_string();
    let wallet_before = poll("alice's change to confirm", || {
        let balance = cli_ok(&binary, a, &["balance"]);
        (sat(&balance, "pending_sat") == 0 && sat(&balance, "untrusted_pending_sat") == 0)
            .then(|| sat(&balance, "confirmed_sat"))
    });

    // A budget that could never bump is refused before anything starts.
    let add = SPLICE_SAT.to_string();
    let splice_in = |extra: &[&str]| {
        let mut args = vec!["splicein", &channel_id, &bob_id, &add, "--feerate", "1"];
        args.extend_from_slice(extra);
        cli(&binary, a, &args)
    };
    for (spec, words) in [
        ("6:1:20000", &["max_feerate_sat_per_vb 1", "at least 2"][..]),
        (
            "6:20",
            &["TARGET_BLOCKS:MAX_FEERATE_SAT_PER_VB:MAX_FEE_SAT"][..],
        ),
        ("0:20:20000", &["target_blocks 0"][..]),
    ] {
        let (ok, error) = splice_in(&["--auto-bump", spec]);
        assert!(!ok, "{spec}: {error}");
        let message = error["error"].as_str().unwrap_or_default();
        for word in words {
            assert!(message.contains(word), "{spec}: {message:?} lacks {word:?}");
        }
    }
    let channel_param = serde_json::json!({
        "channel_id": channel_id, "node_id": bob_id, "add_sat": 1000,
        "auto_bump": { "target_blocks": 6, "max_feerate_sat_per_vb": 20, "max_fee_sat": 20000 },
    });
    let (status, answer) = api(a, "quote", channel_param);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        cli_ok(&binary, a, &["listsplices"]),
        serde_json::json!([]),
        "nothing started"
    );

    // Splice in at 1 sat/vB with automatic bumping on, until broadcast (no
    // block is mined: nothing confirms, nothing is bumped by itself).
    let (ok, record) = splice_in(&["--auto-bump", "6:30:20000", "--wait", "broadcast"]);
    assert!(ok, "{record}");
    assert_eq!(record["state"], "broadcast", "{record}");
    assert_eq!(
        record["auto_bump"]["policy"],
        serde_json::json!({ "target_blocks": 6, "max_feerate_sat_per_kwu": 7500, "max_fee_sat": 20000 }),
        "{record}"
    );
    assert_eq!(record["bump"], Value::Null, "{record}");
    let id = record["splice_id"].as_str().unwrap().to_string();
    let first_txid = record["txid"].as_str().unwrap().to_string();
    let first_fee = sat(&record, "fee");
    poll("the splice in the mempool", || {
        chain.mempool().contains(&first_txid).then_some(())
    });
    assert_eq!(chain.fee_of(&first_txid), first_fee);
    // Off again before a block comes: the bumps below are ours to ask.
    let off = cli_ok(&binary, a, &["autobump", &id, "--off"]);
    assert_eq!(off["auto_bump"], Value::Null, "{off}");

    // The quote: the least a bump may pay now, and what 20 sat/vB costs;
    // nothing is reserved or sent.
    let quote = cli_ok(&binary, a, &["bumpfee", &id, "--feerate", "20", "--quote"]);
    assert_eq!(quote["splice_id"], id.as_str(), "{quote}");
    assert_eq!(sat(&quote, "feerate_sat_per_kwu"), 5_000, "{quote}");
    // LDK's rule from 253 sat/kwu: 25/24 of it and 25 more, i.e. 278.
    let min = sat(&quote, "min_feerate_sat_per_kwu");
    assert!((278..=280).contains(&min), "{quote}");
    assert_eq!(sat(&quote, "min_feerate_sat_per_vb"), 2, "{quote}");
    assert_eq!(sat(&quote, "previous_fee"), first_fee, "{quote}");
    let bump_fee = sat(&quote, "fee");
    assert!(bump_fee > first_fee, "{quote}");
    assert_eq!(sat(&quote, "extra_fee"), bump_fee - first_fee, "{quote}");
    assert_eq!(quote["adds_inputs"], false, "the change pays: {quote}");
    assert_eq!(sat(&quote, "candidates"), 1, "{quote}");
    let unchanged = cli_ok(&binary, a, &["splicestatus", &id]);
    assert_eq!(unchanged["bump"], Value::Null, "{unchanged}");
    assert_eq!(candidates(&unchanged).len(), 1, "{unchanged}");

    // Bump to 20 sat/vB and wait until it is negotiated.
    let mut bump = Command::new(&binary);
    bump.arg("cli").arg("--datadir").arg(a).args([
        "bumpfee",
        &id,
        "--feerate",
        "20",
        "--wait",
        "negotiated",
    ]);
    let (status, stdout, progress) = run_to_exit(bump);
    assert!(status.success(), "{stdout} {progress}");
    assert!(progress.contains("negotiated"), "{progress}");
    let bumped: Value = serde_json::from_str(&stdout).expect("record JSON");
    let second_txid = bumped["txid"].as_str().unwrap().to_string();
    assert_ne!(second_txid, first_txid);
    assert_eq!(bumped["bump"], Value::Null, "{bumped}");
    assert_eq!(candidates(&bumped).len(), 2, "{bumped}");
    assert_eq!(sat(&bumped, "fee"), bump_fee, "the fee the quote said");
    assert_eq!(sat(&bumped, "feerate_sat_per_kwu"), 5_000, "{bumped}");
    let mempool = poll("the replacement in the mempool", || {
        let mempool = chain.mempool();
        mempool.contains(&second_txid).then_some(mempool)
    });
    assert!(!mempool.contains(&first_txid), "replaced: {mempool:?}");
    assert_eq!(chain.fee_of(&second_txid), bump_fee);
    let listed = cli_ok(&binary, a, &["events"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "fee_bumped"
                && e["splice_id"] == id.as_str()
                && e["txid"] == second_txid.as_str()
                && e["fee"] == bump_fee),
        "{listed:#}"
    );

    // Too low a feerate now: exit 1, naming the minimum.
    let min = sat(
        &cli_ok(&binary, a, &["bumpfee", &id, "--feerate", "30", "--quote"]),
        "min_feerate_sat_per_kwu",
    );
    assert!(min > 5_000, "{min}");
    let (ok, error) = cli(&binary, a, &["bumpfee", &id, "--feerate", "1"]);
    assert!(!ok, "{error}");
    let message = error["error"].as_str().unwrap_or_default();
    for word in [
        format!("at least {min} sat/kwu"),
        format!("ask for {} sat/vB", min.div_ceil(250)),
    ] {
        assert!(message.contains(&word), "{message:?} lacks {word:?}");
    }
    let (status, _) = api(
        a,
        "bumpfee",
        serde_json::json!({ "id": id, "feerate_sat_per_vb": 1 }),
    );
    assert_eq!(status, 422);
    let (status, answer) = api(
        a,
        "bumpfee",
        serde_json::json!({ "id": "splice-99", "feerate_sat_per_vb": 30 }),
    );
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = api(
        a,
        "bumpfee",
        serde_json::json!({ "id": id, "feerate_sat_per_vb": 0 }),
    );
    assert_eq!(status, 400, "{answer}");
    // Automatic bumping that could not beat the feerate paid now is refused.
    let (ok, error) = cli(&binary, a, &["autobump", &id, "3:20:20000"]);
    assert!(!ok, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap_or_default()
            .contains("at least 21 sat/vB"),
        "{error}"
    );
    let nothing_left = cli_ok(&binary, a, &["splicestatus", &id]);
    assert_eq!(nothing_left["bump"], Value::Null, "{nothing_left}");
    assert_eq!(nothing_left["auto_bump"], Value::Null, "{nothing_left}");
    assert_eq!(candidates(&nothing_left).len(), 2, "{nothing_left}");

    // Bump again to 30 sat/vB and follow it to lock: blocks come only once
    // it is negotiated, so it is the one that confirms.
    let progress_file = tmp.path().join("bump-progress");
    let mut child = Command::new(&binary)
        .arg("cli")
        .arg("--datadir")
        .arg(a)
        .args(["bumpfee", &id, "--feerate", "30", "--wait", "locked"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&progress_file).expect("progress file"))
        .spawn()
        .expect("cli runs");
    let third = poll("the second bump to be negotiated", || {
        let record = cli_ok(&binary, a, &["splicestatus", &id]);
        (candidates(&record).len() == 3 && record["bump"].is_null()).then_some(record)
    });
    let third_txid = third["txid"].as_str().unwrap().to_string();
    poll("the second replacement in the mempool", || {
        let mempool = chain.mempool();
        (mempool.contains(&third_txid) && !mempool.contains(&second_txid)).then_some(())
    });
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("cli status").is_none() {
        assert!(
            Instant::now() < deadline,
            "bumpfee --wait locked did not end"
        );
        chain.mine_blocks_to_burn(1);
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().expect("cli output");
    let progress = std::fs::read_to_string(&progress_file).unwrap_or_default();
    assert!(output.status.success(), "{progress}");
    assert!(progress.contains("negotiated"), "{progress}");
    assert!(progress.contains("locked"), "{progress}");
    let locked: Value = serde_json::from_slice(&output.stdout).expect("record JSON");
    assert_eq!(locked["state"], "locked", "{locked}");
    assert_eq!(locked["txid"], third_txid.as_str(), "{locked}");
    let fee = sat(&locked, "fee");
    assert_eq!(fee, sat(&third, "fee"), "{locked}");
    assert_eq!(chain.fee_of(&third_txid), fee, "the fee the record says");
    assert!(fee > bump_fee);

    // The channel grew by the amount; the wallet paid the amount and the
    // final fee, nothing more, and holds no coin for the splice.
    poll("the new capacity", || {
        channel_of(&binary, a, &channel_id)
            .filter(|c| c["is_usable"] == true)
            .filter(|c| sat(c, "capacity_sat") == CAPACITY_SAT + SPLICE_SAT)
    });
    let balance = poll("alice's wallet to pay amount + the final fee", || {
        let balance = cli_ok(&binary, a, &["balance"]);
        (sat(&balance, "confirmed_sat") == wallet_before - SPLICE_SAT - fee
            && sat(&balance, "pending_sat") == 0)
            .then_some(balance)
    });
    assert_eq!(
        balance["splice_locked_coins"],
        serde_json::json!([]),
        "{balance}"
    );
    let (ok, error) = cli(&binary, a, &["bumpfee", &id, "--feerate", "50"]);
    assert!(
        !ok && error["error"]
            .as_str()
            .unwrap()
            .contains("cannot be bumped"),
        "{error}"
    );

    for mut daemon in [alice, bob] {
        cli_ok(&binary, &daemon.dir, &["stop"]);
        let status = poll("the daemon to exit", || {
            daemon.child.try_wait().expect("daemon status")
        });
        assert!(status.success(), "daemon exited with {status}");
    }
    chain.shutdown();
    eprintln!("sample-node fee bump test took {:?}", started.elapsed());
}
