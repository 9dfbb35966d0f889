//! The report: one row per target, the ratios against scd, and the files (JSON, CSV, a text
//! table; the chart is in `chart`).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::disk::DiskLimit;
use crate::failover::FailoverResult;
use crate::workload::Workload;

/// One target's figures. Rates are per second of the measured window; a "request" is one PHP
/// request's worth of session work (one cycle: 2 round trips for scd, 4 for a locking handler).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetResult {
    pub name: String,
    /// null, scd, redis or memcached.
    pub family: String,
    /// unix or tcp.
    pub transport: String,
    /// What the client does per request, in the handler's own commands.
    pub handler: String,
    /// How the server was started.
    pub server: String,
    pub server_version: String,
    /// Set when the target was not run (its server is not installed, or it failed to start).
    pub skipped: Option<String>,
    pub requests_per_s: f64,
    pub round_trips_per_s: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    pub requests: u64,
    /// Requests that wrote session data (durable under write-through), per second.
    pub writes_per_s: f64,
    pub errors: u64,
    pub lock_failures: u64,
    pub misses: u64,
    pub lock_retries: u64,
    pub failed_connections: u64,
    pub first_errors: Vec<String>,
    /// Server CPU time per request, µs (all its threads).
    pub server_cpu_us_per_req: f64,
    /// Client (this harness) CPU time per request, µs.
    pub client_cpu_us_per_req: f64,
    pub window_s: f64,
    pub prefill_s: f64,
    /// Ratios filled in by [`Report::compute_ratios`].
    pub ratios: Ratios,
    /// Cluster targets: the cluster's shape and what its nodes counted during the run.
    pub cluster: Option<ClusterFacts>,
}

/// A cluster target's shape, and the change of its nodes' cluster counters over the run (warm-up
/// included): proof that requests really were relayed and replicated.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterFacts {
    pub nodes: usize,
    /// `wt` or `dw`.
    pub policy: String,
    pub ha: bool,
    /// `direct` (through node 1, the master) or `relayed` (through node 2).
    pub via: String,
    /// Requests the entry node relayed to another node (`node.cluster_relayed_out`).
    pub entry_relayed_out: u64,
    /// Requests node 1 got relayed (`node.cluster_relayed_in`).
    pub master_relayed_in: u64,
    /// Relays of the entry node that got no answer.
    pub entry_relay_failures: u64,
    /// Copies node 1's backups acknowledged (`node.cluster_replications`).
    pub master_replications: u64,
    /// Copies node 1's backups did not acknowledge.
    pub master_replication_failures: u64,
    /// Server CPU per request (µs) split by node (node 1 first): the row's
    /// `server_cpu_us_per_req` shared out by each node's CPU time over the run.
    pub node_cpu_us_per_req: Vec<f64>,
    /// Each node's CPU seconds per second over the run, warm-up included (1.0 = one CPU busy
    /// all the time): with `--pin-nodes`, node 1 near its CPU count means it was the bottleneck.
    pub node_cpu_busy: Vec<f64>,
    /// The CPUs each node's process was allowed on during the run (`Cpus_allowed_list` from
    /// /proc), node 1 first.
    pub node_cpus_allowed: Vec<String>,
    /// Store shards each node ran (its `shard.N.` statistics), node 1 first.
    pub node_shards: Vec<usize>,
    /// The CPU sets the client threads were allowed on.
    pub client_cpus_allowed: Vec<String>,
    /// How busy each CPU of the machine was over the run (0..=1, CPU 0 first; any process, this
    /// run's or not, from /proc/stat): a pinned node's CPU near 1 with the node itself well below
    /// means other work took the rest.
    pub machine_cpu_busy: Vec<f64>,
}

/// The ratios of a row against scd on the same transport (1.25 = scd does 25% more).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ratios {
    /// scd write-through requests/s ÷ this target's.
    pub scd_wt_over_this: Option<f64>,
    /// scd delayed-write requests/s ÷ this target's.
    pub scd_dw_over_this: Option<f64>,
    /// This target's p99 ÷ scd write-through's p99 (above 1: scd's tail is shorter).
    pub p99_over_scd_wt: Option<f64>,
    /// This target's p99 ÷ scd delayed-write's p99.
    pub p99_over_scd_dw: Option<f64>,
    /// For scd rows: requests/s as a share of the null server's on the same transport.
    pub share_of_null: Option<f64>,
    /// For scd write-through rows: durable writes/s as a share of the disk's group-commit limit.
    pub share_of_disk_group_commit: Option<f64>,
    /// Cluster rows with HA on: requests/s ÷ the same row with HA off (1 − this = HA's cost).
    pub ha_on_over_off: Option<f64>,
    /// Cluster rows with HA on: node 1's (the master's) CPU µs per request ÷ the same row's with
    /// HA off. What HA costs a master whose own CPU is the limit (its own host): its capacity
    /// with HA is 1 ÷ this of the capacity without.
    pub master_cpu_on_over_off: Option<f64>,
    /// Relayed cluster rows: requests/s ÷ the same cluster's direct row.
    pub relayed_over_direct: Option<f64>,
    /// Cluster rows: requests/s ÷ one scd node's under the same policy and transport.
    pub cluster_over_one_node: Option<f64>,
}

/// Facts about the machine during the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    /// The event loop the client threads and the null server got (io_uring or epoll).
    pub client_driver: String,
    /// `--pin-nodes`: where each node and the clients ran (None: anywhere).
    pub pinning: Option<String>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: String,
    pub started_unix_s: u64,
    pub command: String,
    pub machine: Machine,
    pub workload: Workload,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub notes: Vec<String>,
    pub disk: Option<DiskLimit>,
    pub targets: Vec<TargetResult>,
    /// Nodes of the cluster targets (1: none ran).
    pub nodes: usize,
    /// `--failover` runs, one per flush policy.
    pub failover: Vec<FailoverResult>,
}

impl Report {
    fn find(&self, family_policy: &str, transport: &str) -> Option<&TargetResult> {
        self.targets.iter().find(|t| {
            t.skipped.is_none()
                && t.requests_per_s > 0.0
                && t.transport == transport
                && t.name.starts_with(family_policy)
        })
    }

    /// Fills in every row's ratios against scd (and scd's against the null server and the disk).
    pub fn compute_ratios(&mut self) {
        let mut all = Vec::new();
        for t in &self.targets {
            let wt = self.find("scd-wt", &t.transport).cloned();
            let dw = self.find("scd-dw", &t.transport).cloned();
            let null = self.find("null", &t.transport).cloned();
            let mut r = Ratios::default();
            if t.skipped.is_none() && t.requests_per_s > 0.0 {
                let over = |s: &Option<TargetResult>| {
                    s.as_ref().map(|s| s.requests_per_s / t.requests_per_s)
                };
                let p99 = |s: &Option<TargetResult>| {
                    s.as_ref()
                        .filter(|s| s.p99_us > 0.0)
                        .map(|s| t.p99_us / s.p99_us)
                };
                r.scd_wt_over_this = over(&wt);
                r.scd_dw_over_this = over(&dw);
                r.p99_over_scd_wt = p99(&wt);
                r.p99_over_scd_dw = p99(&dw);
                if t.family == "scd" {
                    r.share_of_null = null.as_ref().map(|n| t.requests_per_s / n.requests_per_s);
                }
                if let Some(c) = &t.cluster {
                    let same = |ha: bool, via: &str| {
                        self.targets.iter().find(|o| {
                            o.skipped.is_none()
                                && o.requests_per_s > 0.0
                                && o.transport == t.transport
                                && o.cluster.as_ref().is_some_and(|oc| {
                                    oc.policy == c.policy && oc.ha == ha && oc.via == via
                                })
                        })
                    };
                    let ratio =
                        |o: Option<&TargetResult>| o.map(|o| t.requests_per_s / o.requests_per_s);
                    if c.ha {
                        let off = same(false, &c.via);
                        r.ha_on_over_off = ratio(off);
                        let master_cpu = |t: &TargetResult| {
                            t.cluster
                                .as_ref()
                                .and_then(|c| c.node_cpu_us_per_req.first().copied())
                                .filter(|&us| us > 0.0)
                        };
                        r.master_cpu_on_over_off = off
                            .and_then(master_cpu)
                            .and_then(|off_us| master_cpu(t).map(|on_us| on_us / off_us));
                    }
                    if c.via == "relayed" {
                        r.relayed_over_direct = ratio(same(c.ha, "direct"));
                    }
                    r.cluster_over_one_node =
                        ratio(self.find(&format!("scd-{}", c.policy), &t.transport));
                }
                if t.name.starts_with("scd-wt") && t.writes_per_s > 0.0 {
                    r.share_of_disk_group_commit = self
                        .disk
                        .as_ref()
                        .filter(|d| d.group.writes_per_s > 0.0)
                        .map(|d| t.writes_per_s / d.group.writes_per_s);
                }
            }
            all.push(r);
        }
        for (t, r) in self.targets.iter_mut().zip(all) {
            t.ratios = r;
        }
    }

    /// The text table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let w = &self.workload;
        let _ = writeln!(
            s,
            "workload: {}, {} B sessions, {} sessions ({:?}{}), {} connections on {} client threads, \
             {} in flight each, touch share {}",
            w.kind.name(),
            w.size_bytes,
            w.sessions,
            w.dist,
            if w.dist == crate::workload::KeyDist::Zipf {
                format!(" s={}", w.zipf_s)
            } else {
                String::new()
            },
            w.connections,
            w.threads,
            w.in_flight,
            w.touch_share,
        );
        let _ = writeln!(
            s,
            "machine: {} × {}, kernel {}, load {} before / {} after; {:.1} s warm-up, {:.1} s measured per target",
            self.machine.cpus,
            self.machine.cpu,
            self.machine.kernel,
            fmt_opt(self.machine.load_before, 2),
            fmt_opt(self.machine.load_after, 2),
            self.warmup_s,
            self.duration_s
        );
        let _ = writeln!(s);
        let name_w = self
            .targets
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(0)
            .max(24);
        let _ = writeln!(
            s,
            "{:<name_w$} {:>10} {:>9} {:>9} {:>9} {:>6} {:>6} {:>8} {:>7} {:>7} {:>7}",
            "target",
            "req/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "errors",
            "lockf",
            "srv µs/r",
            "wt÷this",
            "dw÷this",
            "share"
        );
        for t in &self.targets {
            if let Some(why) = &t.skipped {
                let _ = writeln!(s, "{:<name_w$} skipped: {why}", t.name);
                continue;
            }
            let share = t
                .ratios
                .share_of_null
                .map(|x| format!("{:.0}% null", x * 100.0))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "{:<name_w$} {:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>6} {:>6} {:>8.1} {:>7} {:>7} {:>7}",
                t.name,
                t.requests_per_s,
                t.p50_us,
                t.p99_us,
                t.p999_us,
                t.errors,
                t.lock_failures,
                t.server_cpu_us_per_req,
                fmt_opt(t.ratios.scd_wt_over_this, 2),
                fmt_opt(t.ratios.scd_dw_over_this, 2),
                share,
            );
        }
        if let Some(d) = &self.disk {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "disk ({}, {} B writes): {:.0} writes/s with 1 fdatasync each (commit p99 {:.0} µs), {:.0} writes/s with {} per fdatasync (p99 {:.0} µs)",
                d.path,
                d.write_bytes,
                d.single.writes_per_s,
                d.single.commit_p99_us,
                d.group.writes_per_s,
                d.group.group,
                d.group.commit_p99_us
            );
            for t in self
                .targets
                .iter()
                .filter(|t| t.ratios.share_of_disk_group_commit.is_some())
            {
                let _ = writeln!(
                    s,
                    "  {}: {:.0} durable writes/s = {:.0}% of the group-commit limit, {:.1}× the one-fdatasync-per-write rate",
                    t.name,
                    t.writes_per_s,
                    t.ratios.share_of_disk_group_commit.unwrap_or(0.0) * 100.0,
                    t.writes_per_s / d.single.writes_per_s.max(1.0)
                );
            }
        }
        self.cluster_table(&mut s);
        self.failover_table(&mut s);
        for note in &self.notes {
            let _ = writeln!(s, "note: {note}");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "wt÷this / dw÷this: scd write-through / delayed-write requests/s divided by this target's, same transport (above 1: scd is ahead)."
        );
        s
    }

    fn cluster_table(&self, s: &mut String) {
        let rows: Vec<&TargetResult> = self
            .targets
            .iter()
            .filter(|t| t.skipped.is_none() && t.cluster.is_some())
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "cluster of {} nodes on 127.0.0.1..{0} (sessions created on node 1; direct = through node 1, relayed = through node 2):",
            self.nodes
        );
        let _ = writeln!(
            s,
            "{:<30} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>12}  CPU µs/req by node  CPU busy by node    machine CPUs busy",
            "target",
            "req/s",
            "p99 µs",
            "HA cost",
            "cap. cost",
            "relay÷dir",
            "÷1 node",
            "relayed",
            "replic.",
            "failures",
        );
        for t in rows {
            let r = &t.ratios;
            let c = t.cluster.as_ref().expect("filtered above");
            let _ = writeln!(
                s,
                "{:<30} {:>10.0} {:>9.0} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>12}  {:<18}  {:<18}  {}",
                t.name,
                t.requests_per_s,
                t.p99_us,
                r.ha_on_over_off
                    .map(|x| format!("{:.1}%", (1.0 - x) * 100.0))
                    .unwrap_or_else(|| "-".into()),
                r.master_cpu_on_over_off
                    .map(|x| format!("{:.1}%", (1.0 - 1.0 / x) * 100.0))
                    .unwrap_or_else(|| "-".into()),
                fmt_opt(r.relayed_over_direct, 2),
                fmt_opt(r.cluster_over_one_node, 2),
                c.entry_relayed_out,
                c.master_replications,
                format!(
                    "{}+{}",
                    c.entry_relay_failures, c.master_replication_failures
                ),
                c.node_cpu_us_per_req
                    .iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                c.node_cpu_busy
                    .iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                c.machine_cpu_busy
                    .iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
            );
        }
        let _ = writeln!(
            s,
            "HA cost: 1 − requests/s with HA ÷ without (same policy, entry node, transport); cap. cost: 1 − node 1's \
             CPU µs/req without HA ÷ with (the capacity HA costs a master whose own CPU is the limit); relay÷dir: \
             relayed ÷ direct; ÷1 node: ÷ one scd node (scd-wt / scd-dw); relayed / replic.: requests node 2 relayed \
             and copies node 1's backups acknowledged during the run; failures: relays + copies that failed; CPU µs/req \
             by node: node 1 / node 2 / ...; CPU busy by node: CPU seconds per second over the run (1.00 = one CPU); \
             machine CPUs busy: each CPU's busy share over the run, whoever used it."
        );
        if let Some(p) = &self.machine.pinning {
            let _ = writeln!(s, "pinned (--pin-nodes): {p}");
        }
    }

    fn failover_table(&self, s: &mut String) {
        if self.failover.is_empty() {
            return;
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "failover: load through node 2 on sessions mastered by node 1 (HA on), node 1 killed (kill -9) or frozen (kill -STOP):"
        );
        for f in &self.failover {
            let pct = |x: Option<f64>| {
                x.map(|v| format!("{:.1}%", v * 100.0))
                    .unwrap_or_else(|| "-".into())
            };
            let ms = |x: Option<f64>| {
                x.map(|v| format!("{v:.0} ms"))
                    .unwrap_or_else(|| "never".into())
            };
            if let Some(e) = &f.error {
                let _ = writeln!(
                    s,
                    "  {}, {} ({} nodes): not measured: {e}",
                    f.fault, f.policy, f.nodes
                );
                continue;
            }
            let _ = writeln!(
                s,
                "  {}, {} ({} nodes, {} sessions, {} workers, node timeout {} ms): before the kill {:.0} req/s (p99 {:.0} µs); \
                 first success {} after the kill, every worker back after {}, every session after {}; failed {}/{} ({}) until the first success, \
                 {}/{} ({}) until every worker was back, {}/{} ({}) overall; after: {:.0} req/s (p99 {:.0} µs); \
                 {} acknowledged writes, {} sessions lost at read-back, {} stale reads during the run ({} acknowledged writes missing), \
                 {} reads of values never written, {} unreadable, {} new IDs",
                f.fault,
                f.policy,
                f.nodes,
                f.sessions,
                f.workers,
                f.node_timeout_ms,
                f.steady_requests_per_s,
                f.steady_p99_us,
                ms(f.first_success_ms),
                ms(f.all_workers_back_ms),
                ms(f.all_sessions_back_ms),
                f.failed_until_first_success,
                f.requests_until_first_success,
                pct(f.failed_share_until_first_success()),
                f.failed_until_all_back,
                f.requests_until_all_back,
                pct(f.failed_share_until_all_back()),
                f.failed_total,
                f.requests_total,
                pct(f.failed_share_total()),
                f.after_requests_per_s,
                f.after_p99_us,
                f.acknowledged_writes,
                f.lost_sessions,
                f.stale_reads,
                f.lost_writes_seen,
                f.unknown_values,
                f.unreadable_sessions,
                f.new_ids,
            );
            for e in &f.first_errors {
                let _ = writeln!(s, "    error seen: {e}");
            }
        }
    }

    /// CSV, one row per target.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "target,family,transport,skipped,requests_per_s,round_trips_per_s,p50_us,p90_us,p99_us,p999_us,max_us,\
             writes_per_s,errors,lock_failures,misses,lock_retries,failed_connections,server_cpu_us_per_req,\
             client_cpu_us_per_req,scd_wt_over_this,scd_dw_over_this,p99_over_scd_wt,p99_over_scd_dw,share_of_null,\
             share_of_disk_group_commit,nodes,ha,via,ha_on_over_off,relayed_over_direct,cluster_over_one_node,\
             entry_relayed_out,master_replications,master_cpu_on_over_off,node1_cpu_us_per_req,node1_cpu_busy\n",
        );
        for t in &self.targets {
            let r = &t.ratios;
            let _ = writeln!(
                s,
                "{},{},{},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{},{},{},{},{},{:.2},{:.2},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                t.name,
                t.family,
                t.transport,
                csv_text(t.skipped.as_deref().unwrap_or("")),
                t.requests_per_s,
                t.round_trips_per_s,
                t.p50_us,
                t.p90_us,
                t.p99_us,
                t.p999_us,
                t.max_us,
                t.writes_per_s,
                t.errors,
                t.lock_failures,
                t.misses,
                t.lock_retries,
                t.failed_connections,
                t.server_cpu_us_per_req,
                t.client_cpu_us_per_req,
                fmt_opt(r.scd_wt_over_this, 4),
                fmt_opt(r.scd_dw_over_this, 4),
                fmt_opt(r.p99_over_scd_wt, 4),
                fmt_opt(r.p99_over_scd_dw, 4),
                fmt_opt(r.share_of_null, 4),
                fmt_opt(r.share_of_disk_group_commit, 4),
                t.cluster.as_ref().map(|c| c.nodes).unwrap_or(1),
                t.cluster
                    .as_ref()
                    .map(|c| c.ha.to_string())
                    .unwrap_or_default(),
                t.cluster.as_ref().map(|c| c.via.as_str()).unwrap_or(""),
                fmt_opt(r.ha_on_over_off, 4),
                fmt_opt(r.relayed_over_direct, 4),
                fmt_opt(r.cluster_over_one_node, 4),
                t.cluster.as_ref().map(|c| c.entry_relayed_out).unwrap_or(0),
                t.cluster
                    .as_ref()
                    .map(|c| c.master_replications)
                    .unwrap_or(0),
                fmt_opt(r.master_cpu_on_over_off, 4),
                fmt_opt(
                    t.cluster
                        .as_ref()
                        .and_then(|c| c.node_cpu_us_per_req.first().copied()),
                    2
                ),
                fmt_opt(
                    t.cluster
                        .as_ref()
                        .and_then(|c| c.node_cpu_busy.first().copied()),
                    3
                ),
            );
        }
        s
    }

    /// Writes report.json, report.csv and report.txt into `dir`.
    pub fn write_files(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        fs::write(dir.join("report.json"), json)?;
        fs::write(dir.join("report.csv"), self.csv())?;
        fs::write(dir.join("report.txt"), self.table())?;
        Ok(())
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".into(),
    }
}

/// A CSV field: quoted when it holds a comma, quote or newline.
fn csv_text(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{KeyDist, WorkloadKind};

    fn row(name: &str, family: &str, transport: &str, rps: f64, p99: f64) -> TargetResult {
        TargetResult {
            name: name.into(),
            family: family.into(),
            transport: transport.into(),
            requests_per_s: rps,
            p99_us: p99,
            writes_per_s: rps,
            ..TargetResult::default()
        }
    }

    fn report(targets: Vec<TargetResult>) -> Report {
        Report {
            tool: "scd-bench".into(),
            started_unix_s: 0,
            command: String::new(),
            machine: Machine::default(),
            workload: Workload {
                kind: WorkloadKind::Cycle,
                size_bytes: 4096,
                sessions: 10,
                dist: KeyDist::Uniform,
                zipf_s: 0.99,
                touch_share: 0.0,
                connections: 1,
                threads: 1,
                in_flight: 1,
                seed: 1,
            },
            warmup_s: 0.0,
            duration_s: 1.0,
            notes: vec![],
            disk: None,
            targets,
            nodes: 1,
            failover: Vec::new(),
        }
    }

    #[test]
    fn ratios_compare_against_scd_on_the_same_transport() {
        let mut r = report(vec![
            row("null-unix", "null", "unix", 200.0, 50.0),
            row("scd-wt-unix", "scd", "unix", 100.0, 100.0),
            row("scd-dw-unix", "scd", "unix", 150.0, 80.0),
            row("redis-unix", "redis", "unix", 50.0, 200.0),
            row("redis-tcp", "redis", "tcp", 40.0, 300.0),
        ]);
        r.compute_ratios();
        let redis = &r.targets[3].ratios;
        assert_eq!(redis.scd_wt_over_this, Some(2.0));
        assert_eq!(redis.scd_dw_over_this, Some(3.0));
        assert_eq!(redis.p99_over_scd_wt, Some(2.0));
        assert_eq!(r.targets[1].ratios.share_of_null, Some(0.5));
        // No scd over TCP in this run: no ratio rather than a wrong one.
        assert_eq!(r.targets[4].ratios.scd_wt_over_this, None);
    }

    #[test]
    fn cluster_ratios_compare_ha_relay_and_one_node_like_with_like() {
        let node = |name: &str, rps: f64, ha: bool, via: &str| {
            let mut t = row(name, "cluster", "unix", rps, 1.0);
            t.cluster = Some(ClusterFacts {
                nodes: 2,
                policy: "wt".into(),
                ha,
                via: via.into(),
                ..ClusterFacts::default()
            });
            t
        };
        let mut r = report(vec![
            row("scd-wt-unix", "scd", "unix", 200.0, 1.0),
            node("cluster-wt-noha-direct-unix", 100.0, false, "direct"),
            node("cluster-wt-noha-relayed-unix", 50.0, false, "relayed"),
            node("cluster-wt-ha-direct-unix", 95.0, true, "direct"),
            node("cluster-wt-ha-relayed-unix", 40.0, true, "relayed"),
        ]);
        r.compute_ratios();
        let ratios = |i: usize| r.targets[i].ratios.clone();
        assert_eq!(ratios(1).ha_on_over_off, None);
        assert_eq!(ratios(1).relayed_over_direct, None);
        assert_eq!(ratios(1).cluster_over_one_node, Some(0.5));
        assert_eq!(ratios(2).relayed_over_direct, Some(0.5));
        assert_eq!(ratios(3).ha_on_over_off, Some(0.95));
        assert_eq!(ratios(4).ha_on_over_off, Some(0.8));
        assert_eq!(ratios(4).relayed_over_direct, Some(40.0 / 95.0));
        assert_eq!(ratios(4).cluster_over_one_node, Some(0.2));
        // The one-node row gets no cluster ratio, and the tables name every cluster row.
        assert_eq!(ratios(0).cluster_over_one_node, None);
        let table = r.table();
        assert!(table.contains("HA cost") && table.contains("5.0%"));
        let csv = r.csv();
        let columns = csv.lines().next().unwrap().split(',').count();
        assert!(csv.lines().all(|l| l.split(',').count() == columns));
    }

    #[test]
    fn csv_has_a_header_and_one_line_per_target_with_equal_columns() {
        let mut r = report(vec![
            row("scd-wt-unix", "scd", "unix", 1.0, 1.0),
            row("redis-tcp", "redis", "tcp", 2.0, 2.0),
        ]);
        r.targets[1].skipped = Some("not \"installed\", sorry".into());
        r.compute_ratios();
        let csv = r.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns = lines[0].split(',').count();
        assert_eq!(lines[1].split(',').count(), columns);
        assert!(lines[2].contains("\"not \"\"installed\"\", sorry\""));
        assert!(r.table().contains("skipped"));
    }
}
