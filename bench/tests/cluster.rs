//! A `--nodes 2 --quick` run of the real harness against a real two-node scd cluster (two scd
//! processes on 127.0.0.1 and 127.0.0.2): every cluster target (each flush policy, HA off and on,
//! through the master and relayed through node 2) answers with no error, requests really were
//! relayed and replicated (the nodes' own counters say so), every ratio is there, and the report
//! files are well formed; and the same with `--pin-nodes` (each node and the clients on CPUs of
//! their own). It asserts nothing about speed.

use std::path::{Path, PathBuf};
use std::process::Command;

use scd_bench::pin::{self, Layout};

/// A finished, successful scd-bench run: its report folder and `report.json`. The folder is
/// removed when the test passes, and kept to look at when it fails.
struct Run {
    out: PathBuf,
    json: serde_json::Value,
}

impl Run {
    /// A report file's text.
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.join(name)).unwrap()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.out);
        }
    }
}

/// Runs scd-bench with `args` against the scd binary built beside it, its reports in a fresh
/// folder named after `what`, and asserts that it succeeded. None when the scd binary was not
/// built (`cargo test -p scd-bench` alone does not build the daemon; CI runs the workspace, and
/// there a missing binary fails the test).
fn run_bench(what: &str, args: &[&str]) -> Option<Run> {
    let bench = Path::new(env!("CARGO_BIN_EXE_scd-bench"));
    let Some(scd) = bench
        .parent()
        .map(|d| d.join("scd"))
        .filter(|p| p.is_file())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the scd binary was not built"
        );
        eprintln!("scd binary not built (cargo build -p scd): {what} run skipped");
        return None;
    };
    let out = std::env::temp_dir().join(format!("scd-bench-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(bench)
        .args(args)
        .arg("--scd-bin")
        .arg(&scd)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("running scd-bench");
    assert!(status.success(), "scd-bench {args:?} failed: {status}");
    let json =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    Some(Run { out, json })
}

#[test]
fn a_two_node_quick_run_relays_replicates_and_reports_every_cluster_target() {
    let Some(run) = run_bench(
        "cluster",
        &[
            "--nodes",
            "2",
            "--quick",
            "--no-progress",
            "--require-all",
            "--no-disk",
            // One connection: no two requests on one session at once. Concurrent requests on one
            // session through a relay are the cluster's own tests' business; here the bench
            // only has to run every target.
            "--connections",
            "1",
            "--sessions",
            "300",
            "--duration-s",
            "0.3",
            "--warmup-s",
            "0.1",
            "--targets",
            "scd,cluster",
            // Fast heartbeats: a node waits one node timeout after its start before it serves.
            "--scd-args",
            "--heartbeat-interval-ms 100",
        ],
    ) else {
        return;
    };
    let json = &run.json;
    assert_eq!(json["nodes"].as_u64(), Some(2));
    let rows = json["targets"].as_array().expect("targets array");
    // Four one-node rows (each policy, each transport), then 2 policies × HA off/on × direct/relayed × unix/tcp.
    assert_eq!(rows.len(), 4 + 16, "{rows:#?}");
    for row in rows {
        let name = row["name"].as_str().unwrap();
        assert!(row["skipped"].is_null(), "{name}: {}", row["skipped"]);
        assert!(row["requests"].as_u64().unwrap() > 0, "{name}: no request");
        assert_eq!(
            row["errors"].as_u64(),
            Some(0),
            "{name}: {}",
            row["first_errors"]
        );
        assert_eq!(row["failed_connections"].as_u64(), Some(0), "{name}");
        let p50 = row["p50_us"].as_f64().unwrap();
        let p99 = row["p99_us"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= p99, "{name}: p50 {p50} p99 {p99}");
        if row["family"] != "cluster" {
            assert!(row["cluster"].is_null(), "{name}");
            continue;
        }
        let c = &row["cluster"];
        let r = &row["ratios"];
        assert_eq!(c["nodes"].as_u64(), Some(2), "{name}");
        assert!(r["cluster_over_one_node"].as_f64().unwrap() > 0.0, "{name}");
        if c["via"] == "relayed" {
            assert!(
                c["entry_relayed_out"].as_u64().unwrap() > 0,
                "{name}: node 2 relayed nothing"
            );
            assert!(r["relayed_over_direct"].as_f64().unwrap() > 0.0, "{name}");
        } else {
            assert_eq!(c["via"], "direct", "{name}");
            assert_eq!(c["entry_relayed_out"].as_u64(), Some(0), "{name}");
        }
        if c["ha"] == true {
            assert!(
                c["master_replications"].as_u64().unwrap() > 0,
                "{name}: node 1 replicated nothing"
            );
            assert!(r["ha_on_over_off"].as_f64().unwrap() > 0.0, "{name}");
        } else {
            assert_eq!(c["master_replications"].as_u64(), Some(0), "{name}");
            assert!(r["ha_on_over_off"].is_null(), "{name}");
        }
    }

    let csv = run.read("report.csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), rows.len() + 1);
    let columns = lines[0].split(',').count();
    for line in &lines[1..] {
        assert_eq!(line.split(',').count(), columns, "{line}");
    }
    let table = run.read("report.txt");
    assert!(table.contains("HA cost"), "{table}");
    let svg = run.read("chart.svg");
    assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for row in rows {
        let name = row["name"].as_str().unwrap();
        assert!(table.contains(name), "{name} missing from the table");
        assert!(svg.contains(name), "{name} missing from the chart");
    }
}

#[test]
fn a_quick_failover_run_recovers_and_reads_back_every_acknowledged_write() {
    let Some(run) = run_bench(
        "failover",
        &[
            "--nodes",
            "3",
            "--quick",
            "--no-progress",
            "--require-all",
            "--failover-only",
            "--failover",
            "--failover-policies",
            "wt",
            "--failover-sessions",
            "50",
            "--failover-workers",
            "4",
            "--warmup-s",
            "0.2",
            "--scd-args",
            "--heartbeat-interval-ms 100",
        ],
    ) else {
        return;
    };
    let runs = run.json["failover"].as_array().expect("failover array");
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let f = &runs[0];
    assert!(f["error"].is_null(), "{}", f["error"]);
    assert_eq!(f["nodes"].as_u64(), Some(3));
    assert_eq!(f["fault"], "kill -9");
    assert!(f["steady_requests_per_s"].as_f64().unwrap() > 0.0, "{f:#}");
    // The load came back after the kill (figures are reported, not asserted).
    assert!(f["first_success_ms"].as_f64().is_some(), "{f:#}");
    assert!(f["all_workers_back_ms"].as_f64().is_some(), "{f:#}");
    assert!(f["acknowledged_writes"].as_u64().unwrap() > 0, "{f:#}");
    // Write-through with HA: nothing acknowledged may be missing, and nothing unreadable.
    assert_eq!(f["lost_sessions"].as_u64(), Some(0), "{f:#}");
    assert_eq!(f["stale_reads"].as_u64(), Some(0), "{f:#}");
    assert_eq!(f["unknown_values"].as_u64(), Some(0), "{f:#}");
    assert_eq!(f["unreadable_sessions"].as_u64(), Some(0), "{f:#}");
    let table = run.read("report.txt");
    assert!(table.contains("failover:"), "{table}");
}

/// `--pin-nodes`: the nodes, the one-node scd and the client threads really ran where the layout
/// puts them (the kernel's own `Cpus_allowed_list`, read while they ran), each node with as many
/// shards as CPUs it got (its own statistics), and the capacity ratio is reported. Nothing about
/// speed is asserted.
#[test]
fn a_pinned_two_node_run_puts_each_node_and_the_clients_on_their_own_cpus() {
    let allowed = pin::allowed().unwrap();
    if allowed.len() < 2 {
        eprintln!("one CPU only ({allowed}): --pin-nodes cannot give node 1 a CPU of its own");
        return;
    }
    let layout = Layout::split(&allowed, 2).unwrap();
    let Some(run) = run_bench(
        "pinned",
        &[
            "--nodes",
            "2",
            "--pin-nodes",
            "--quick",
            "--no-progress",
            "--require-all",
            "--no-disk",
            "--connections",
            "1",
            "--sessions",
            "200",
            "--duration-s",
            "0.3",
            "--warmup-s",
            "0.1",
            "--targets",
            "scd-wt-unix,cluster-wt-noha-direct-unix,cluster-wt-ha-direct-unix,cluster-wt-ha-relayed-unix",
            "--scd-args",
            "--heartbeat-interval-ms 100",
        ],
    ) else {
        return;
    };
    let json = &run.json;
    assert_eq!(
        json["machine"]["pinning"].as_str(),
        Some(layout.describe().as_str())
    );
    let rows = json["targets"].as_array().expect("targets array");
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let node1 = layout.nodes[0].to_string();
    let cores1 = format!("--cores {0} --shards {0}", layout.nodes[0].len());
    // The one-node scd target runs where node 1 does, with as many cores.
    let single = &rows[0];
    assert_eq!(single["name"], "scd-wt-unix");
    let server = single["server"].as_str().unwrap();
    assert!(
        server.starts_with(&format!("taskset -c {node1} ")),
        "{server}"
    );
    assert!(server.contains(&cores1), "{server}");
    for row in &rows[1..] {
        let name = row["name"].as_str().unwrap();
        assert!(row["skipped"].is_null(), "{name}: {}", row["skipped"]);
        assert_eq!(row["errors"].as_u64(), Some(0), "{name}");
        assert!(row["requests"].as_u64().unwrap() > 0, "{name}");
        let c = &row["cluster"];
        let allowed_by_node: Vec<&str> = c["node_cpus_allowed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let want: Vec<String> = layout.nodes.iter().map(|s| s.to_string()).collect();
        assert_eq!(allowed_by_node, want, "{name}");
        let shards: Vec<u64> = c["node_shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let want_shards: Vec<u64> = layout.nodes.iter().map(|s| s.len() as u64).collect();
        assert_eq!(shards, want_shards, "{name}");
        assert_eq!(
            c["client_cpus_allowed"],
            serde_json::json!([layout.clients.to_string()]),
            "{name}"
        );
        assert_eq!(c["node_cpu_busy"].as_array().unwrap().len(), 2, "{name}");
        let machine = c["machine_cpu_busy"].as_array().unwrap();
        assert!(machine.len() > *allowed.cpus().last().unwrap(), "{name}");
        let server = row["server"].as_str().unwrap();
        assert!(
            server.starts_with(&format!("taskset -c {node1} ")),
            "{server}"
        );
        let r = &row["ratios"];
        if c["ha"] == true && c["via"] == "direct" {
            // The capacity figure: node 1's CPU per request with HA ÷ without, same layout.
            assert!(
                r["master_cpu_on_over_off"].as_f64().unwrap() > 0.0,
                "{name}"
            );
            assert!(c["master_replications"].as_u64().unwrap() > 0, "{name}");
        } else {
            // No HA-off relayed row ran, and HA-off rows have nothing to compare.
            assert!(r["master_cpu_on_over_off"].is_null(), "{name}");
        }
    }
    let table = run.read("report.txt");
    assert!(table.contains("cap. cost"), "{table}");
    assert!(
        table.contains(&format!("pinned (--pin-nodes): {}", layout.describe())),
        "{table}"
    );
}

/// `--pin-nodes` is refused, with the reason, where it cannot apply: without a cluster, and with
/// targets it does not place.
#[test]
fn pin_nodes_is_refused_without_a_cluster_or_with_other_targets() {
    let bench = Path::new(env!("CARGO_BIN_EXE_scd-bench"));
    for (args, why) in [
        (&["--pin-nodes", "--targets", "scd"][..], "--nodes 2"),
        (
            &["--pin-nodes", "--nodes", "2", "--targets", "redis"][..],
            "scd and the cluster only",
        ),
    ] {
        let out = Command::new(bench)
            .args(args)
            .args(["--no-disk", "--no-progress", "--out"])
            .arg(std::env::temp_dir().join(format!("scd-bench-refused-{}", std::process::id())))
            .output()
            .expect("running scd-bench");
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}
