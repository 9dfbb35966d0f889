//! A `--quick` run of the real harness against every target whose server is installed (ci/deps
//! installs redis-server and memcached; the scd binary is built by `cargo test --workspace`).
//! It checks that every target answered with no error and that the JSON, CSV, text and SVG
//! files are well formed. It asserts nothing about speed: figures are reported, never tested.

use std::path::{Path, PathBuf};
use std::process::Command;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn scd_binary() -> Option<PathBuf> {
    let bench = Path::new(env!("CARGO_BIN_EXE_scd-bench"));
    let scd = bench.parent()?.join("scd");
    scd.is_file().then_some(scd)
}

/// The target families this machine can run.
fn installed_targets() -> Vec<&'static str> {
    let mut targets = vec!["null"];
    match scd_binary() {
        Some(_) => targets.push("scd"),
        // `cargo test -p scd-bench` alone does not build the daemon; CI runs the workspace.
        None if std::env::var_os("CI").is_some() => panic!("the scd binary was not built"),
        None => eprintln!("scd binary not built (cargo build -p scd): scd targets not run"),
    }
    if on_path("redis-server") {
        targets.push("redis");
    } else {
        eprintln!("redis-server not installed: Redis targets not run");
    }
    if on_path("memcached") {
        targets.push("memcached");
    } else {
        eprintln!("memcached not installed: memcached targets not run");
    }
    targets
}

#[test]
fn the_read_only_and_create_heavy_workloads_run_on_every_installed_target() {
    let targets = installed_targets();
    for workload in ["read", "create"] {
        let out = std::env::temp_dir().join(format!("scd-bench-{workload}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let status = Command::new(env!("CARGO_BIN_EXE_scd-bench"))
            .args([
                "--quick",
                "--no-progress",
                "--require-all",
                "--no-disk",
                "--workload",
                workload,
            ])
            .args([
                "--connections",
                "8",
                "--sessions",
                "200",
                "--duration-s",
                "0.3",
                "--warmup-s",
                "0",
            ])
            .arg("--targets")
            .arg(targets.join(","))
            .arg("--out")
            .arg(&out)
            .status()
            .expect("running scd-bench");
        assert!(
            status.success(),
            "scd-bench --workload {workload} failed: {status}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        let rows = json["targets"].as_array().expect("targets array");
        assert!(rows.len() >= 2);
        for row in rows {
            let name = row["name"].as_str().unwrap();
            assert!(
                row["requests"].as_u64().unwrap() > 0,
                "{workload}: {name} completed no request"
            );
            assert_eq!(
                row["errors"].as_u64(),
                Some(0),
                "{workload}: {name}: {}",
                row["first_errors"]
            );
            // Every session of the key space was written before a read-only run: no misses.
            if workload == "read" {
                assert_eq!(
                    row["misses"].as_u64(),
                    Some(0),
                    "{name} read a missing session"
                );
            }
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn a_quick_run_reaches_every_installed_target_and_writes_a_well_formed_report() {
    let targets = installed_targets();

    let out = std::env::temp_dir().join(format!("scd-bench-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_scd-bench"))
        .args([
            "--quick",
            "--no-progress",
            "--require-all",
            "--connections",
            "16",
            "--sessions",
            "500",
        ])
        .args([
            "--duration-s",
            "0.5",
            "--warmup-s",
            "0.1",
            "--disk-s",
            "0.05",
        ])
        .arg("--targets")
        .arg(targets.join(","))
        .arg("--out")
        .arg(&out)
        .status()
        .expect("running scd-bench");
    assert!(status.success(), "scd-bench --quick failed: {status}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rows = json["targets"].as_array().expect("targets array");
    // Every family asked for ran on both transports.
    let expected = targets.len() * 2
        + if targets.contains(&"scd") { 2 } else { 0 }
        + if targets.contains(&"redis") { 6 } else { 0 }
        + if targets.contains(&"memcached") { 2 } else { 0 };
    assert_eq!(rows.len(), expected, "{rows:#?}");
    for row in rows {
        let name = row["name"].as_str().unwrap();
        assert!(
            row["skipped"].is_null(),
            "{name} was skipped: {}",
            row["skipped"]
        );
        assert!(
            row["requests"].as_u64().unwrap() > 0,
            "{name} completed no request"
        );
        assert_eq!(
            row["errors"].as_u64(),
            Some(0),
            "{name}: {}",
            row["first_errors"]
        );
        assert_eq!(
            row["failed_connections"].as_u64(),
            Some(0),
            "{name}: {}",
            row["first_errors"]
        );
        let p50 = row["p50_us"].as_f64().unwrap();
        let p99 = row["p99_us"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= p99, "{name}: p50 {p50} p99 {p99}");
        if row["family"] == "scd" {
            assert!(
                row["ratios"]["share_of_null"].as_f64().unwrap() > 0.0,
                "{name}"
            );
        } else if targets.contains(&"scd") {
            assert!(
                row["ratios"]["scd_wt_over_this"].as_f64().unwrap() > 0.0,
                "{name}"
            );
        }
    }
    assert!(json["disk"]["group"]["writes_per_s"].as_f64().unwrap() > 0.0);

    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), rows.len() + 1);
    let columns = lines[0].split(',').count();
    for line in &lines[1..] {
        assert_eq!(line.split(',').count(), columns, "{line}");
    }

    let table = std::fs::read_to_string(out.join("report.txt")).unwrap();
    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for row in rows {
        let name = row["name"].as_str().unwrap();
        assert!(table.contains(name), "{name} missing from the table");
        assert!(svg.contains(name), "{name} missing from the chart");
    }
    let _ = std::fs::remove_dir_all(&out);
}
