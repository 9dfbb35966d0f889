//! The module in a real PHP, without a working daemon: it loads, registers the save handler,
//! declares its dependency on `session`, shows its phpinfo section and settings, refuses bad
//! settings, and fails `session_start()` with a clear warning (never a hang) when scd is down or
//! does not answer.

mod common;

use std::net::TcpListener;
use std::process::{Command, Output};

use common::{TestDir, cluster_so, free_port};

/// `php -n -d extension=cluster.so [-d k=v]... -r CODE`; returns stdout+stderr.
fn php(ini: &[(&str, &str)], code: &str) -> (Output, String) {
    let mut cmd = Command::new(common::php_bin());
    cmd.arg("-n")
        .arg("-d")
        .arg(format!("extension={}", cluster_so().display()))
        .args([
            "-d",
            "display_errors=1",
            "-d",
            "html_errors=0",
            "-d",
            "log_errors=0",
        ]);
    for (k, v) in ini {
        cmd.arg("-d").arg(format!("{k}={v}"));
    }
    let out = cmd.arg("-r").arg(code).output().expect("run php");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn module_loads_and_requires_session() {
    let (out, text) = php(
        &[],
        r#"echo extension_loaded("cluster") ? "loaded\n" : "missing\n";
           var_dump((new ReflectionExtension("cluster"))->getDependencies());
           echo phpversion("cluster"), "\n";"#,
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("loaded\n"), "{text}");
    assert!(
        text.contains(r#"["session"]=>"#) && text.contains(r#"string(8) "Required""#),
        "{text}"
    );
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(!text.contains("Warning"), "{text}");

    let m = Command::new(common::php_bin())
        .arg("-n")
        .arg("-d")
        .arg(format!("extension={}", cluster_so().display()))
        .arg("-m")
        .output()
        .unwrap();
    let modules = String::from_utf8_lossy(&m.stdout);
    assert!(modules.lines().any(|l| l == "cluster"), "{modules}");
}

#[test]
fn save_handler_cluster_is_accepted() {
    let (out, text) = php(
        &[("session.save_handler", "cluster")],
        r#"$start = ini_get("session.save_handler");
           $a = ini_set("session.save_handler", "files");
           $b = ini_set("session.save_handler", "cluster");
           echo "handler=", $start, "\n"; var_dump($a, $b);"#,
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("handler=cluster\n"), "{text}");
    // ini_set returns the old value when the handler exists, false when it does not.
    assert!(text.contains(r#"string(7) "cluster""#), "{text}");
    assert!(text.contains(r#"string(5) "files""#), "{text}");
    assert!(!text.contains("Cannot find save handler"), "{text}");
}

#[test]
fn phpinfo_shows_version_save_path_connection_and_every_setting() {
    let dir = TestDir::new("info");
    let sock = dir.join("absent.sock");
    let save_path = format!("unix:{}", sock.display());
    let (out, text) = php(
        &[
            ("session.save_handler", "cluster"),
            ("session.save_path", &save_path),
            ("cluster.lock_wait_ms", "1234"),
            ("cluster.lock_failure", "readonly"),
        ],
        r#"phpinfo(INFO_MODULES);"#,
    );
    assert!(out.status.success(), "{text}");
    for want in [
        "cluster session module => enabled".to_string(),
        format!("Version => {}", env!("CARGO_PKG_VERSION")),
        format!("Save path in use => {save_path}"),
        "Connection => not connected; last error: cannot connect to scd at".to_string(),
        "cluster.lock_wait_ms => 1234 => 1234".to_string(),
        "cluster.lock_lease_ms => 0 => 0".to_string(),
        "cluster.lock_failure => readonly => readonly".to_string(),
        "cluster.connect_timeout_ms => 1000 => 1000".to_string(),
        "cluster.io_timeout_ms => 5000 => 5000".to_string(),
    ] {
        assert!(text.contains(&want), "phpinfo lacks {want:?}:\n{text}");
    }
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    let (out, text) = php(
        &[
            ("cluster.lock_failure", "ignore"),
            ("cluster.io_timeout_ms", "5s"),
        ],
        r#"echo "lf=", ini_get("cluster.lock_failure"), " io=", ini_get("cluster.io_timeout_ms"), "\n";
           var_dump(ini_set("cluster.lock_wait_ms", "-1"));
           var_dump(ini_set("cluster.lock_wait_ms", "250"));
           echo "wait=", ini_get("cluster.lock_wait_ms"), "\n";"#,
    );
    assert!(out.status.success(), "{text}");
    // Startup: the bad values are named, refused, and the defaults kept.
    assert!(
        text.contains(r#"cluster.lock_failure = "ignore" refused: must be `error` or `readonly`; using the default"#),
        "{text}"
    );
    assert!(
        text.contains(r#"cluster.io_timeout_ms = "5s" refused"#),
        "{text}"
    );
    assert!(text.contains("lf=error io=5000\n"), "{text}");
    // Runtime: ini_set of a bad value fails with the reason; a good one works.
    assert!(
        text.contains(r#"cluster.lock_wait_ms = "-1" refused"#),
        "{text}"
    );
    assert!(text.contains("bool(false)"), "{text}");
    assert!(text.contains("wait=250\n"), "{text}");
}

#[test]
fn unusable_save_path_fails_session_start_with_a_reason() {
    let (out, text) = php(
        &[
            ("session.save_handler", "cluster"),
            ("session.save_path", "/var/lib/php/sessions"),
        ],
        r#"var_dump(session_start());"#,
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("bool(false)"), "{text}");
    assert!(
        text.contains(
            r#"session.save_path "/var/lib/php/sessions" cannot be used: unknown scheme"#
        ),
        "{text}"
    );
}

#[test]
fn daemon_down_fails_session_start_with_a_clear_warning() {
    let dir = TestDir::new("down");
    // Nothing listens on this Unix socket path, nor on this TCP port.
    let unix = format!("unix:{}", dir.join("scd.sock").display());
    let tcp = format!("tcp://127.0.0.1:{}", free_port());
    for save_path in [unix, tcp] {
        let (out, text) = php(
            &[
                ("session.save_handler", "cluster"),
                ("session.save_path", &save_path),
            ],
            r#"var_dump(session_start()); echo "status=", session_status(), "\n";"#,
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("bool(false)"), "{text}");
        assert!(
            text.contains(&format!("cannot connect to scd at {save_path}")),
            "{text}"
        );
        assert!(text.contains("(is scd running?)"), "{text}");
        // PHP_SESSION_NONE: the page carries on without a session.
        assert!(text.contains("status=1\n"), "{text}");
    }
}

#[test]
fn a_daemon_that_never_answers_fails_within_the_io_timeout() {
    // The kernel completes the TCP handshake from the listen backlog, but nothing ever reads or
    // answers: exactly what a hung daemon looks like to the module.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let save_path = format!("tcp://{}", listener.local_addr().unwrap());
    let (out, text) = php(
        &[
            ("session.save_handler", "cluster"),
            ("session.save_path", &save_path),
            ("cluster.io_timeout_ms", "300"),
        ],
        r#"var_dump(session_start());"#,
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("bool(false)"), "{text}");
    assert!(text.contains("no reply within 300 ms"), "{text}");
    drop(listener);
}
