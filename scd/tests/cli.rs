//! The command line and the life of the process: `scd` alone starts on built-in defaults in a
//! local folder; invalid settings are refused at start with key, value and reason; `check-config`
//! and `version`; SIGTERM/SIGINT stop it cleanly, answering requests in flight.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Daemon, READY_WAIT, signal, socket_exists, test_id, wait_bounded};
use scd_client::{Client, Endpoint, ErrorCode, OwnedReply, Request};

fn scd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scd"))
}

#[test]
fn with_no_arguments_it_starts_in_a_local_folder_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = scd()
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + READY_WAIT;
    let mut log = Vec::new();
    loop {
        let line = lines.next().expect("log line").unwrap();
        log.push(line.clone());
        if line.contains("] ready: ") {
            break;
        }
        assert!(Instant::now() < deadline, "not ready: {log:?}");
    }
    let text = log.join("\n");
    assert!(text.contains("relay_port=34567"), "{text}");
    assert!(text.contains("heartbeat_port=45678"), "{text}");
    assert!(
        text.contains("clustering off"),
        "the log says clustering is off without a cluster key: {text}"
    );
    let socket = dir.path().join("scd-data/scd.sock");
    let mut c = Client::connect(&Endpoint::Unix(socket.clone())).expect("default socket");
    let id = c.create_id().unwrap();
    let r = c.read_lock(&id, 1000, 1000).unwrap();
    c.write_unlock(&id, r.token, 60, b"hello").unwrap();
    drop(c);
    // The log goes on being read so the daemon never blocks on a full pipe.
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    signal(child.id(), "INT");
    let status = wait_bounded(&mut child);
    assert!(status.success(), "{status:?}");
    let rest = reader.join().unwrap().join("\n");
    assert!(rest.contains("SIGINT received"), "{rest}");
    assert!(
        !socket_exists(&socket),
        "the socket file is removed on a clean stop"
    );
    assert!(dir.path().join("scd-data/shard-0000").is_dir());
}

#[test]
fn invalid_settings_are_refused_with_key_value_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str, &str); 4] = [
        (&["--relay-port", "0"], "cluster.relay_port", "0"),
        (
            &["--tcp-listen", "0.0.0.0:9000"],
            "local.tcp_listen",
            "0.0.0.0:9000",
        ),
        (
            &["--allowed-hosts", "10.0.0.0/8,banana"],
            "cluster.allowed_hosts",
            "banana",
        ),
        (
            &["--unix-socket-mode", "0999"],
            "local.unix_socket_mode",
            "0999",
        ),
    ];
    for (args, key, value) in cases {
        let out = scd().current_dir(dir.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key) && err.contains(value), "{args:?}: {err}");
    }
    // Nothing was started or created.
    assert!(!dir.path().join("scd-data").exists());

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[storage]\nmodel = \"sometimes\"\n").unwrap();
    let out = scd().arg("--config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model") && err.contains("sometimes"), "{err}");
}

#[test]
fn check_config_prints_the_full_settings_and_reads_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/scd.example.toml");
    // The example names a key file that exists only on a real node: refused for that, clearly.
    let out = scd()
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.cluster_key_file"), "{err}");

    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), [7u8; 32]).unwrap();
    let out = scd()
        .args(["check-config", "--config", example, "--cluster-key-file"])
        .arg(key.path())
        .args(["--relay-port", "40000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("data_dir = \"/var/lib/scd\""), "{text}");
    assert!(
        text.contains("relay_port = 40000"),
        "flag wins over the file: {text}"
    );
    assert!(text.contains("heartbeat_port = 45678"), "{text}");
}

#[test]
fn version_subcommand() {
    let out = scd().arg("version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("scd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn sigterm_answers_requests_in_flight_then_exits_zero() {
    let mut d = Daemon::start(&[]);
    let id = test_id(1, 77);
    let mut holder = d.client();
    let mut waiter = d.client();
    waiter.set_timeout(Some(READY_WAIT)).unwrap();
    let r = holder.read_lock(&id, 1000, 600_000).unwrap();
    holder.write_unlock(&id, r.token, 600, b"kept").unwrap();
    holder.read_lock(&id, 1000, 600_000).unwrap();
    // Pipelined: a lock wait that cannot finish, then a request behind it.
    let wait_rid = waiter
        .send(Request::ReadLock {
            id,
            wait_ms: 600_000,
            lease_ms: 600_000,
        })
        .unwrap();
    let exists_rid = waiter.send(Request::Exists { id }).unwrap();
    let (rid, reply) = waiter.recv().unwrap();
    assert_eq!(rid, exists_rid);
    assert_eq!(reply, OwnedReply::Existence(true));
    common::eventually("the waiter to be queued", || {
        d.stats()["total.lock_waits"] >= 1
    });

    let status = d.stop();
    assert!(status.success(), "{status:?}\n{}", d.log_text());
    // The queued wait was answered, not left hanging until its 10-minute deadline: either with
    // Unavailable (its connection was stopped first) or with the lock (the holder's connection
    // was stopped first, which released the lock to it).
    let (rid, reply) = waiter
        .recv()
        .expect("an answer before the connection closed");
    assert_eq!(rid, wait_rid);
    assert!(
        matches!(
            reply,
            OwnedReply::Error {
                code: ErrorCode::Unavailable,
                ..
            } | OwnedReply::Data { .. }
        ),
        "{reply:?}"
    );
    assert!(!socket_exists(&d.socket));
    d.restart();
    assert_eq!(
        d.client().read(&id).unwrap().data.as_deref(),
        Some(&b"kept"[..])
    );
}

#[test]
fn the_log_can_go_to_a_file_and_the_socket_gets_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/scd.log");
    let socket = dir.path().join("scd.sock");
    let mut child = scd()
        .current_dir(dir.path())
        .arg("--log-file")
        .arg(&log)
        .arg("--unix-socket")
        .arg(&socket)
        .args(["--unix-socket-mode", "0600"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::eventually("the log file to say ready", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("] ready: "))
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    signal(child.id(), "TERM");
    assert!(wait_bounded(&mut child).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("SIGTERM received") && text.contains("stopped: every shard flushed"),
        "{text}"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.is_empty(),
        "nothing on stderr when logging to a file: {stderr}"
    );
}

#[test]
fn io_uring_unavailable_falls_back_to_epoll_and_says_so() {
    // monoio's own switch makes its io_uring probe fail, as a seccomp filter or
    // kernel.io_uring_disabled would; scd must notice, log it, and serve on epoll.
    let d = Daemon::start_with_env(&[], &[("MONOIO_FORCE_LEGACY_DRIVER", "1")]);
    assert_eq!(
        d.log_lines_containing("running on the epoll fallback"),
        2,
        "{}",
        d.log_text()
    );
    let s = d.stats();
    assert_eq!(s["core.0.io_uring"] + s["core.1.io_uring"], 0);
    let mut c = d.client();
    let id = c.create_id().unwrap();
    let r = c.read_lock(&id, 1000, 1000).unwrap();
    c.write_unlock(&id, r.token, 60, b"on epoll").unwrap();
    assert_eq!(c.read(&id).unwrap().data.as_deref(), Some(&b"on epoll"[..]));
}
