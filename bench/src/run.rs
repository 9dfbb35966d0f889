//! One benchmark run: the targets, in order, each on a freshly started server with the same
//! workload and the same load generator; then the disk probe and the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::cli::RunArgs;
use crate::cluster::{Cluster, ClusterSpec, counter_of};
use crate::constants::*;
use crate::failover::{self, FailoverPlan};
use crate::lane::{Handler, Keyspace, Mode};
use crate::load::{LoadResult, LoadSpec, run_load};
use crate::pin::{self, Layout};
use crate::report::{ClusterFacts, Machine, Report, TargetResult};
use crate::servers::{self, RedisPersistence, ScdPolicy, Server};
use crate::workload::{KeyPicker, Workload, WorkloadKind, synthetic_id};
use crate::{chart, disk, perf, sys};

/// What kind of server a target runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Null,
    Scd(ScdPolicy),
    Redis {
        persistence: RedisPersistence,
        locked: bool,
    },
    Memcached {
        locked: bool,
    },
    /// `--nodes N` scd processes as one cluster; sessions created on node 1 and driven through
    /// node 1 (`Via::Direct`, the master) or node 2 (`Via::Relayed`).
    Cluster {
        policy: ScdPolicy,
        ha: bool,
        via: Via,
    },
}

/// Which node a cluster target's load enters through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Node 1, the sessions' master.
    Direct,
    /// Node 2, which relays every request to node 1.
    Relayed,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Relayed => "relayed",
        }
    }

    /// The node (0-based) the load enters through.
    pub fn node_index(self) -> usize {
        match self {
            Via::Direct => 0,
            Via::Relayed => 1,
        }
    }
}

/// One target: a server kind over one transport.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub kind: Kind,
    pub unix: bool,
}

impl Target {
    pub fn family(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Scd(_) => "scd",
            Kind::Redis { .. } => "redis",
            Kind::Memcached { .. } => "memcached",
            Kind::Cluster { .. } => "cluster",
        }
    }

    pub fn handler(&self) -> Handler {
        match self.kind {
            Kind::Null | Kind::Scd(_) | Kind::Cluster { .. } => Handler::Scd,
            Kind::Redis { locked: false, .. } => Handler::RedisPlain,
            Kind::Redis { locked: true, .. } => Handler::RedisLocked,
            Kind::Memcached { locked: false } => Handler::MemcachePlain,
            Kind::Memcached { locked: true } => Handler::MemcacheLocked,
        }
    }

    fn handler_text(&self, workload: WorkloadKind) -> &'static str {
        use WorkloadKind::*;
        match (self.handler(), workload) {
            (Handler::Scd, Cycle) => "ReadLock, WriteUnlock (Touch when unchanged)",
            (Handler::Scd, Read) => "ReadLock, Unlock (the module's read_and_close)",
            (Handler::Scd, Create) => "CreateId, ReadLock, WriteUnlock",
            (Handler::RedisPlain, Cycle) => "GET, SETEX (EXPIRE when unchanged)",
            (Handler::RedisPlain, Read) => "GET",
            (Handler::RedisPlain, Create) => "GET, SETEX",
            (Handler::RedisLocked, Cycle) => {
                "phpredis locking: SET _LOCK NX PX, GET, SETEX (EXPIRE when unchanged), EVALSHA unlock"
            }
            (Handler::RedisLocked, Read) => {
                "phpredis locking: SET _LOCK NX PX, GET, EVALSHA unlock"
            }
            (Handler::RedisLocked, Create) => {
                "phpredis locking: SET _LOCK NX PX, GET, SETEX, EVALSHA unlock"
            }
            (Handler::MemcachePlain, Cycle) => "binary GET, SET (TOUCH when unchanged)",
            (Handler::MemcachePlain, Read) => "binary GET",
            (Handler::MemcachePlain, Create) => "binary GET, SET",
            (Handler::MemcacheLocked, Cycle) => {
                "php-memcached locking: ADD lock., GET, SET (TOUCH when unchanged), DELETE lock."
            }
            (Handler::MemcacheLocked, Read) => {
                "php-memcached locking: ADD lock., GET, DELETE lock."
            }
            (Handler::MemcacheLocked, Create) => {
                "php-memcached locking: ADD lock., GET, SET, DELETE lock."
            }
        }
    }
}

/// Every target the harness knows, in run order.
pub fn all_targets() -> Vec<Target> {
    let kinds: [(&str, Kind); 9] = [
        ("null", Kind::Null),
        ("scd-wt", Kind::Scd(ScdPolicy::WriteThrough)),
        ("scd-dw", Kind::Scd(ScdPolicy::DelayedWrite)),
        (
            "redis",
            Kind::Redis {
                persistence: RedisPersistence::Off,
                locked: false,
            },
        ),
        (
            "redis-lock",
            Kind::Redis {
                persistence: RedisPersistence::Off,
                locked: true,
            },
        ),
        (
            "redis-lock-aof-always",
            Kind::Redis {
                persistence: RedisPersistence::Always,
                locked: true,
            },
        ),
        (
            "redis-lock-aof-everysec",
            Kind::Redis {
                persistence: RedisPersistence::Everysec,
                locked: true,
            },
        ),
        ("memcached", Kind::Memcached { locked: false }),
        ("memcached-lock", Kind::Memcached { locked: true }),
    ];
    let mut kinds: Vec<(String, Kind)> = kinds.iter().map(|(n, k)| (n.to_string(), *k)).collect();
    // The cluster's, grouped so that targets sharing one started cluster come one after another.
    for policy in [ScdPolicy::WriteThrough, ScdPolicy::DelayedWrite] {
        for ha in [false, true] {
            for via in [Via::Direct, Via::Relayed] {
                kinds.push((
                    format!(
                        "cluster-{}-{}-{}",
                        policy.short(),
                        if ha { "ha" } else { "noha" },
                        via.name()
                    ),
                    Kind::Cluster { policy, ha, via },
                ));
            }
        }
    }
    let mut out = Vec::new();
    for (name, kind) in kinds {
        for unix in [true, false] {
            let transport = if unix { "unix" } else { "tcp" };
            out.push(Target {
                name: format!("{name}-{transport}"),
                kind,
                unix,
            });
        }
    }
    out
}

/// The targets `patterns` select: each pattern is a target name, a name prefix ending in `-`
/// or `*` (`redis-*`), a family (`scd`, `cluster`, `redis`, ...), a transport (`unix`, `tcp`) or
/// `all`. Cluster targets exist only with `nodes` ≥ 2; then `all` alone means the one-node scd
/// targets and the cluster's (what the cluster is compared with).
pub fn select_targets(patterns: &[String], nodes: usize) -> anyhow::Result<Vec<Target>> {
    let clustered = nodes >= 2;
    let all: Vec<Target> = all_targets()
        .into_iter()
        .filter(|t| clustered || t.family() != "cluster")
        .collect();
    let default_cluster = [String::from("scd"), String::from("cluster")];
    let patterns = if clustered && patterns.len() == 1 && patterns[0].trim() == "all" {
        &default_cluster[..]
    } else {
        patterns
    };
    let mut chosen: Vec<Target> = Vec::new();
    for pattern in patterns {
        let p = pattern.trim();
        let matched: Vec<&Target> = all
            .iter()
            .filter(|t| {
                p == "all"
                    || t.name == p
                    || t.family() == p
                    || (p == "unix" && t.unix)
                    || (p == "tcp" && !t.unix)
                    || p.strip_suffix('*')
                        .is_some_and(|prefix| t.name.starts_with(prefix))
            })
            .collect();
        if matched.is_empty() && !clustered && p.starts_with("cluster") {
            bail!("the cluster targets ({p:?}) need --nodes 2 or --nodes 3");
        }
        if matched.is_empty() {
            let names: Vec<String> = all.iter().map(|t| t.name.clone()).collect();
            bail!("no target matches {p:?}; targets are: {}", names.join(", "));
        }
        for t in matched {
            if !chosen.iter().any(|c| c.name == t.name) {
                chosen.push(t.clone());
            }
        }
    }
    // Run order is the table's order whatever order the patterns came in.
    chosen.sort_by_key(|t| all.iter().position(|a| a.name == t.name));
    Ok(chosen)
}

/// Resolved settings of a run.
pub struct Plan {
    pub workload: Workload,
    pub warmup: Duration,
    pub duration: Duration,
    pub disk_s: Option<f64>,
    pub targets: Vec<Target>,
    pub out: PathBuf,
    pub work: PathBuf,
    pub scd_bin: Option<PathBuf>,
    pub scd_args: Vec<String>,
    pub redis_bin: Option<PathBuf>,
    pub memcached_bin: Option<PathBuf>,
    pub self_bin: PathBuf,
    pub require_all: bool,
    pub progress: bool,
    pub perf: bool,
    pub notes: Vec<String>,
    /// Nodes of the cluster targets (1: no cluster targets).
    pub nodes: usize,
    pub failover: Option<FailoverPlan>,
    /// `--pin-nodes`: where each node and the client threads run.
    pub pin: Option<Layout>,
}

impl Plan {
    pub fn from_args(args: &RunArgs) -> anyhow::Result<Plan> {
        let mut notes = Vec::new();
        anyhow::ensure!(
            (1..=SIZE_MAX).contains(&args.size),
            "--size {} must be 1..={SIZE_MAX} bytes",
            args.size
        );
        anyhow::ensure!(
            (1..=CONNECTIONS_MAX).contains(&args.connections),
            "--connections must be 1..={CONNECTIONS_MAX}"
        );
        anyhow::ensure!(
            (1..=THREADS_MAX).contains(&args.threads),
            "--threads must be 1..={THREADS_MAX}"
        );
        anyhow::ensure!(
            (1..=IN_FLIGHT_MAX).contains(&args.in_flight),
            "--in-flight must be 1..={IN_FLIGHT_MAX}"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&args.touch_share),
            "--touch-share must be 0..=1"
        );
        anyhow::ensure!(
            args.zipf_s > 0.0 && args.zipf_s.is_finite(),
            "--zipf-s must be above 0"
        );
        let mut sessions = args.sessions.unwrap_or(if args.quick {
            QUICK_SESSIONS
        } else {
            SESSIONS_DEFAULT
        });
        anyhow::ensure!(
            (1..=SESSIONS_MAX).contains(&sessions),
            "--sessions must be 1..={SESSIONS_MAX}"
        );
        if sessions.saturating_mul(args.size) > DATASET_BYTES_MAX {
            let fit = (DATASET_BYTES_MAX / args.size).max(1);
            notes.push(format!(
                "{sessions} sessions of {} B would hold {} MiB per target; lowered to {fit} sessions ({} MiB)",
                args.size,
                (sessions * args.size) >> 20,
                (fit * args.size) >> 20
            ));
            sessions = fit;
        }
        let threads = args.threads.min(args.connections);
        let duration_s = args.duration_s.unwrap_or(if args.quick {
            QUICK_DURATION_S
        } else {
            DURATION_S_DEFAULT
        });
        let warmup_s = args.warmup_s.unwrap_or(if args.quick {
            QUICK_WARMUP_S
        } else {
            WARMUP_S_DEFAULT
        });
        anyhow::ensure!(
            duration_s > 0.0 && duration_s <= 3600.0,
            "--duration-s must be 0..=3600"
        );
        anyhow::ensure!(
            (0.0..=600.0).contains(&warmup_s),
            "--warmup-s must be 0..=600"
        );
        let disk_s = if args.no_disk {
            None
        } else {
            Some(args.disk_s.unwrap_or(if args.quick {
                QUICK_DISK_S
            } else {
                DISK_S_DEFAULT
            }))
        };
        let self_bin = std::env::current_exe().context("finding this program")?;
        let scd_bin = match &args.scd_bin {
            Some(p) => Some(p.clone()),
            // The harness and the daemon build into the same target directory.
            None => self_bin
                .parent()
                .map(|d| d.join("scd"))
                .filter(|p| p.is_file()),
        };
        anyhow::ensure!(
            args.nodes == 1 || (2..=NODES_MAX).contains(&args.nodes),
            "--nodes must be 1 (no cluster), or 2..={NODES_MAX}"
        );
        let failover = if args.failover || args.failover_only {
            let mut policies = Vec::new();
            for p in &args.failover_policies {
                policies.push(match p.trim() {
                    "wt" | "write-through" => ScdPolicy::WriteThrough,
                    "dw" | "delayed-write" => ScdPolicy::DelayedWrite,
                    other => bail!("--failover-policies: {other:?} is not wt or dw"),
                });
            }
            let mut faults = Vec::new();
            for f in &args.failover_faults {
                faults.push(match f.trim() {
                    "kill" => failover::Fault::Kill,
                    "stop" => failover::Fault::Stop,
                    other => bail!("--failover-faults: {other:?} is not kill or stop"),
                });
            }
            let sessions = args.failover_sessions.unwrap_or(if args.quick {
                FAILOVER_SESSIONS_QUICK
            } else {
                FAILOVER_SESSIONS_DEFAULT
            });
            anyhow::ensure!(
                (1..=SESSIONS_MAX).contains(&sessions),
                "--failover-sessions must be 1..={SESSIONS_MAX}"
            );
            anyhow::ensure!(
                (1..=CONNECTIONS_MAX).contains(&args.failover_workers),
                "--failover-workers must be 1..={CONNECTIONS_MAX}"
            );
            let quick_or = |quick: f64, normal: f64| {
                Duration::from_secs_f64(if args.quick { quick } else { normal })
            };
            Some(FailoverPlan {
                nodes: if args.nodes >= 2 { args.nodes } else { 3 },
                policies,
                faults,
                sessions,
                workers: args.failover_workers,
                size_bytes: args.size,
                warmup: Duration::from_secs_f64(warmup_s),
                steady: quick_or(1.0, FAILOVER_STEADY_S),
                after: quick_or(1.0, FAILOVER_AFTER_S),
                seed: args.seed,
            })
        } else {
            None
        };
        let targets = if args.failover_only {
            Vec::new()
        } else {
            select_targets(&args.targets, args.nodes)?
        };
        let pin = if args.pin_nodes {
            anyhow::ensure!(
                failover.is_none(),
                "--pin-nodes measures throughput; the failover runs do not pin (leave out --failover)"
            );
            anyhow::ensure!(
                args.nodes >= 2,
                "--pin-nodes places the nodes of a cluster: give --nodes 2 or --nodes 3"
            );
            if let Some(t) = targets
                .iter()
                .find(|t| !matches!(t.kind, Kind::Scd(_) | Kind::Cluster { .. }))
            {
                bail!(
                    "--pin-nodes runs scd and the cluster only; {} is neither (--targets scd,cluster)",
                    t.name
                );
            }
            let layout = Layout::split(&pin::allowed()?, args.nodes)?;
            notes.push(format!(
                "--pin-nodes: {}; HA off and on alike",
                layout.describe()
            ));
            Some(layout)
        } else {
            None
        };
        let work = args
            .work_dir
            .clone()
            .unwrap_or_else(|| args.out.join("work"));
        Ok(Plan {
            workload: Workload {
                kind: args.workload,
                size_bytes: args.size,
                sessions,
                dist: args.dist,
                zipf_s: args.zipf_s,
                touch_share: args.touch_share,
                connections: args.connections,
                threads,
                in_flight: args.in_flight,
                seed: args.seed,
            },
            warmup: Duration::from_secs_f64(warmup_s),
            duration: Duration::from_secs_f64(duration_s),
            disk_s,
            targets,
            out: args.out.clone(),
            work,
            scd_bin,
            scd_args: args
                .scd_args
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            redis_bin: servers::which(args.redis_bin.as_deref().unwrap_or("redis-server")),
            memcached_bin: servers::which(args.memcached_bin.as_deref().unwrap_or("memcached")),
            self_bin,
            require_all: args.require_all,
            progress: !args.no_progress,
            perf: args.perf,
            notes,
            nodes: args.nodes,
            failover,
            pin,
        })
    }
}

/// Runs the plan and writes the report. Returns the report.
pub fn run(plan: Plan, command: String, interrupted: Arc<AtomicBool>) -> anyhow::Result<Report> {
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    std::fs::create_dir_all(&plan.work)
        .with_context(|| format!("creating {}", plan.work.display()))?;
    let mut report = Report {
        tool: format!("scd-bench {}", env!("CARGO_PKG_VERSION")),
        started_unix_s,
        command,
        machine: Machine {
            cpu: sys::cpu_model(),
            cpus: sys::cpus(),
            kernel: sys::kernel(),
            load_before: sys::load_average(),
            load_after: None,
            client_driver: String::new(),
            pinning: plan.pin.as_ref().map(Layout::describe),
        },
        workload: plan.workload.clone(),
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s: plan.duration.as_secs_f64(),
        notes: plan.notes.clone(),
        disk: None,
        targets: Vec::new(),
        nodes: plan.nodes,
        failover: Vec::new(),
    };
    if let Some(load) = report.machine.load_before {
        if load > 0.5 {
            report.notes.push(format!(
                "the 1-minute load average was {load:.2} at the start: other work shares the cores, so \
                 compare ratios from this run only"
            ));
        }
    }

    let picker = KeyPicker::new(
        plan.workload.sessions,
        plan.workload.dist,
        plan.workload.zipf_s,
    )?;
    // The cluster the cluster targets of one (policy, HA) group share, with its sessions.
    let mut cluster: Option<ClusterRun> = None;
    for target in &plan.targets {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        eprintln!("{} ...", target.name);
        let outcome = match target.kind {
            Kind::Cluster { .. } => run_cluster_target(
                &plan,
                target,
                &picker,
                &mut report.machine.client_driver,
                &mut cluster,
            ),
            _ => {
                cluster = None;
                run_target(&plan, target, &picker, &mut report.machine.client_driver)
            }
        };
        let result = match outcome {
            Ok(r) => r,
            Err(e) => {
                if plan.require_all {
                    return Err(e.context(format!("target {}", target.name)));
                }
                let why = format!("{e:#}");
                eprintln!("  {}: skipped: {why}", target.name);
                TargetResult {
                    name: target.name.clone(),
                    family: target.family().into(),
                    transport: transport_name(target.unix).into(),
                    skipped: Some(why),
                    ..TargetResult::default()
                }
            }
        };
        if result.skipped.is_none() {
            eprintln!(
                "  {:<26} {:>9.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  errors {}  lock failures {}",
                result.name,
                result.requests_per_s,
                result.p50_us,
                result.p99_us,
                result.errors,
                result.lock_failures
            );
        }
        report.targets.push(result);
    }
    drop(cluster);

    if let Some(failover) = &plan.failover {
        match plan.scd_bin.as_deref() {
            Some(bin) => {
                report.failover =
                    failover::run(failover, bin, &plan.scd_args, &plan.work, &interrupted);
                if plan.require_all {
                    if let Some(e) = report.failover.iter().find_map(|f| f.error.clone()) {
                        bail!("failover: {e}");
                    }
                }
            }
            None => bail!(
                "--failover needs the scd binary: build it with `cargo build --release -p scd` or pass --scd-bin"
            ),
        }
    }

    if let Some(seconds) = plan.disk_s {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        eprintln!("disk probe ({seconds} s per mode) ...");
        // The same file system as scd's data directory.
        report.disk = Some(disk::probe(&plan.work, seconds, plan.workload.size_bytes)?);
    }
    report.machine.load_after = sys::load_average();
    report.compute_ratios();
    report.write_files(&plan.out)?;
    chart::draw(&report, &plan.out.join("chart.svg"))?;
    Ok(report)
}

fn transport_name(unix: bool) -> &'static str {
    if unix { "unix" } else { "tcp" }
}

fn run_target(
    plan: &Plan,
    target: &Target,
    picker: &KeyPicker,
    driver: &mut String,
) -> anyhow::Result<TargetResult> {
    let w = &plan.workload;
    let dir = plan.work.join(&target.name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (mut server, version) = start(plan, target, &dir)?;
    let endpoint = server.endpoint(target.unix).with_context(|| {
        format!(
            "{} has no {} endpoint",
            server.name,
            transport_name(target.unix)
        )
    })?;

    // The key space: every session written once before the clock starts.
    let needs_sessions = w.kind != WorkloadKind::Create;
    let mut keys = Keyspace {
        ids: Vec::new(),
        seed: w.seed,
        len: w.sessions,
    };
    let mut prefill_s = 0.0;
    let spec = |mode: Mode, keys: Arc<Keyspace>, label: String, server: &Server| LoadSpec {
        label,
        endpoint: endpoint.clone(),
        handler: target.handler(),
        mode,
        size_bytes: w.size_bytes,
        touch_share: w.touch_share,
        connections: w.connections,
        threads: w.threads,
        in_flight: w.in_flight,
        seed: w.seed,
        keys,
        picker: picker.clone(),
        warmup: plan.warmup,
        duration: plan.duration,
        server_pids: server.pid().into_iter().collect(),
        progress: plan.progress,
        client_cpus: plan.pin.as_ref().map(|l| l.clients.clone()),
    };
    match target.kind {
        Kind::Null => {
            keys.ids = (0..w.sessions as u64)
                .map(|i| synthetic_id(w.seed, i))
                .collect();
        }
        _ if needs_sessions => {
            let started = Instant::now();
            let label = format!("{} prefill", target.name);
            let prefill = spec(
                Mode::Prefill,
                Arc::new(Keyspace {
                    ids: Vec::new(),
                    seed: w.seed,
                    len: w.sessions,
                }),
                label,
                &server,
            );
            let result = run_load(prefill, &mut || server.stop())?;
            check_clean("prefill", &result)?;
            prefill_s = started.elapsed().as_secs_f64();
            if target.handler() == Handler::Scd {
                keys.ids = prefilled_ids(result.created, w.sessions)?;
            }
        }
        _ => {}
    }

    let mode = match w.kind {
        WorkloadKind::Cycle => Mode::Cycle,
        WorkloadKind::Read => Mode::Read,
        WorkloadKind::Create => Mode::Create,
    };
    let keys = Arc::new(keys);
    let load = spec(mode, keys, target.name.clone(), &server);
    let profile = match (plan.perf, target.kind, server.pid()) {
        (true, Kind::Null | Kind::Scd(_), Some(pid)) => Some(perf::Recording::start(pid, &dir)?),
        _ => None,
    };
    let result = run_load(load, &mut || server.stop());
    if let Some(recording) = profile {
        let text = recording.finish()?;
        let path = plan.out.join(format!("perf-{}.txt", target.name));
        std::fs::create_dir_all(&plan.out)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let result = result?;
    // The server stops here, before the next target starts: each target has the machine alone.
    let log_tail = server.log_tail();
    server.stop();
    *driver = result.driver.to_string();
    if result.cycles == 0 {
        bail!(
            "no request completed: {}{}",
            result.first_errors.join("; "),
            if log_tail.is_empty() {
                String::new()
            } else {
                format!("\nserver log:\n{log_tail}")
            }
        );
    }
    Ok(row(
        target,
        w.kind,
        server.settings.clone(),
        version,
        &result,
        prefill_s,
    ))
}

/// A started cluster and the sessions created on it, shared by the targets of one (policy, HA).
pub struct ClusterRun {
    policy: ScdPolicy,
    ha: bool,
    cluster: Cluster,
    keys: Arc<Keyspace>,
    prefill_s: f64,
    version: String,
}

/// The cluster counters a row reports (their change over the run, warm-up included).
const CLUSTER_COUNTERS: [&str; 5] = [
    "node.cluster_relayed_out",
    "node.cluster_relayed_in",
    "node.cluster_relay_failures",
    "node.cluster_replications",
    "node.cluster_replication_failures",
];

fn cluster_counters(c: &Cluster) -> anyhow::Result<Vec<[u64; 5]>> {
    (0..c.nodes.len())
        .map(|i| {
            let s = c.stats(i)?;
            Ok(CLUSTER_COUNTERS.map(|name| counter_of(&s, name)))
        })
        .collect()
}

fn run_cluster_target(
    plan: &Plan,
    target: &Target,
    picker: &KeyPicker,
    driver: &mut String,
    cache: &mut Option<ClusterRun>,
) -> anyhow::Result<TargetResult> {
    let Kind::Cluster { policy, ha, via } = target.kind else {
        bail!("{} is not a cluster target", target.name);
    };
    let w = &plan.workload;
    if !cache
        .as_ref()
        .is_some_and(|c| c.policy == policy && c.ha == ha)
    {
        // The previous group's cluster stops before this one starts.
        *cache = None;
        let bin = plan.scd_bin.as_deref().with_context(|| {
            "no scd binary beside this program: build it with `cargo build --release -p scd` or pass --scd-bin"
        })?;
        let version = servers::version(bin, "version");
        let dir = plan.work.join(format!(
            "cluster-{}-{}",
            policy.short(),
            if ha { "ha" } else { "noha" }
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = ClusterSpec {
            nodes: plan.nodes,
            policy,
            ha,
            extra: plan.scd_args.clone(),
            pinned: plan.pin.as_ref().map(|l| l.nodes.clone()),
        };
        let mut cluster = Cluster::start(bin, &dir, &spec)?;
        // Every session created through node 1, so node 1 masters them all.
        let mut keys = Keyspace {
            ids: Vec::new(),
            seed: w.seed,
            len: w.sessions,
        };
        let mut prefill_s = 0.0;
        if w.kind != WorkloadKind::Create {
            let started = Instant::now();
            let prefill = LoadSpec {
                label: format!("{} prefill", target.name),
                endpoint: cluster.endpoint(0, target.unix)?,
                handler: Handler::Scd,
                mode: Mode::Prefill,
                size_bytes: w.size_bytes,
                touch_share: w.touch_share,
                connections: w.connections,
                threads: w.threads,
                in_flight: w.in_flight,
                seed: w.seed,
                keys: Arc::new(Keyspace {
                    ids: Vec::new(),
                    seed: w.seed,
                    len: w.sessions,
                }),
                picker: picker.clone(),
                warmup: plan.warmup,
                duration: plan.duration,
                server_pids: cluster.pids(),
                progress: plan.progress,
                client_cpus: plan.pin.as_ref().map(|l| l.clients.clone()),
            };
            let result = run_load(prefill, &mut || cluster.stop())?;
            check_clean("prefill", &result).map_err(|e| e.context(cluster.log_tails()))?;
            prefill_s = started.elapsed().as_secs_f64();
            keys.ids = prefilled_ids(result.created, w.sessions)?;
        }
        *cache = Some(ClusterRun {
            policy,
            ha,
            cluster,
            keys: Arc::new(keys),
            prefill_s,
            version,
        });
    }
    let run = cache.as_mut().context("the cluster was just started")?;
    let outcome = measure_cluster(plan, target, picker, driver, run, via);
    if outcome.is_err() {
        // A cluster that failed a run is not trusted with the next one.
        *cache = None;
    }
    outcome
}

fn measure_cluster(
    plan: &Plan,
    target: &Target,
    picker: &KeyPicker,
    driver: &mut String,
    run: &mut ClusterRun,
    via: Via,
) -> anyhow::Result<TargetResult> {
    let w = &plan.workload;
    let entry = via.node_index();
    let everyone: Vec<usize> = (0..run.cluster.nodes.len()).collect();
    run.cluster.wait_up(&everyone, plan.nodes - 1)?;
    let before = cluster_counters(&run.cluster)?;
    let mode = match w.kind {
        WorkloadKind::Cycle => Mode::Cycle,
        WorkloadKind::Read => Mode::Read,
        WorkloadKind::Create => Mode::Create,
    };
    let spec = LoadSpec {
        label: target.name.clone(),
        endpoint: run.cluster.endpoint(entry, target.unix)?,
        handler: Handler::Scd,
        mode,
        size_bytes: w.size_bytes,
        touch_share: w.touch_share,
        connections: w.connections,
        threads: w.threads,
        in_flight: w.in_flight,
        seed: w.seed,
        keys: run.keys.clone(),
        picker: picker.clone(),
        warmup: plan.warmup,
        duration: plan.duration,
        server_pids: run.cluster.pids(),
        progress: plan.progress,
        client_cpus: plan.pin.as_ref().map(|l| l.clients.clone()),
    };
    let pids = run.cluster.pids();
    let cpu_before: Vec<f64> = pids.iter().map(|&p| sys::cpu_seconds(&[p])).collect();
    let node_cpus_allowed: Vec<String> = pids
        .iter()
        .map(|&p| sys::cpus_allowed(p).unwrap_or_default())
        .collect();
    let wall = Instant::now();
    let machine_before = sys::cpu_ticks_by_cpu();
    let cluster = &mut run.cluster;
    let result = run_load(spec, &mut || cluster.stop())?;
    let wall_s = wall.elapsed().as_secs_f64().max(1e-9);
    let machine_cpu_busy = sys::busy_between(&machine_before, &sys::cpu_ticks_by_cpu());
    // Each node's share of the cluster's CPU over the whole run (warm-up included), applied to
    // the measured window's CPU per request: where the cluster's work is done.
    let cpu_used: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(&p, b)| (sys::cpu_seconds(&[p]) - b).max(0.0))
        .collect();
    let cpu_total: f64 = cpu_used.iter().sum();
    *driver = result.driver.to_string();
    if result.cycles == 0 {
        bail!(
            "no request completed: {}\n{}",
            result.first_errors.join("; "),
            run.cluster.log_tails()
        );
    }
    let after = cluster_counters(&run.cluster)?;
    let node_shards = (0..run.cluster.nodes.len())
        .map(|i| Ok(shard_count(&run.cluster.stats(i)?)))
        .collect::<anyhow::Result<Vec<usize>>>()?;
    let delta = |node: usize, k: usize| after[node][k].saturating_sub(before[node][k]);
    let mut r = row(
        target,
        w.kind,
        run.cluster.settings(),
        run.version.clone(),
        &result,
        run.prefill_s,
    );
    r.cluster = Some(ClusterFacts {
        nodes: plan.nodes,
        policy: run.policy.short().into(),
        ha: run.ha,
        via: via.name().into(),
        entry_relayed_out: delta(entry, 0),
        master_relayed_in: delta(0, 1),
        entry_relay_failures: delta(entry, 2),
        master_replications: delta(0, 3),
        master_replication_failures: delta(0, 4),
        node_cpu_us_per_req: cpu_used
            .iter()
            .map(|u| {
                if cpu_total > 0.0 {
                    r.server_cpu_us_per_req * u / cpu_total
                } else {
                    0.0
                }
            })
            .collect(),
        node_cpu_busy: cpu_used.iter().map(|u| u / wall_s).collect(),
        node_cpus_allowed,
        node_shards,
        client_cpus_allowed: result.client_cpus.clone(),
        machine_cpu_busy,
    });
    Ok(r)
}

/// How many store shards a node runs: the distinct `shard.N.` prefixes of its statistics.
fn shard_count(stats: &[(String, u64)]) -> usize {
    let mut shards: Vec<&str> = stats
        .iter()
        .filter_map(|(name, _)| name.strip_prefix("shard."))
        .filter_map(|rest| rest.split_once('.').map(|(n, _)| n))
        .collect();
    shards.sort_unstable();
    shards.dedup();
    shards.len()
}

/// The session IDs a prefill created, in session order; every one of the `sessions` must be there.
fn prefilled_ids(
    created: Vec<(usize, scd_client::SessionId)>,
    sessions: usize,
) -> anyhow::Result<Vec<scd_client::SessionId>> {
    let mut ids = vec![None; sessions];
    for (i, id) in created {
        if let Some(slot) = ids.get_mut(i) {
            *slot = Some(id);
        }
    }
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| id.with_context(|| format!("prefill made no session {i}")))
        .collect()
}

fn check_clean(phase: &str, r: &LoadResult) -> anyhow::Result<()> {
    if r.errors > 0 || r.failed_connections > 0 || r.lock_failures > 0 {
        bail!(
            "{phase}: {} errors, {} failed connections, {} lock failures: {}",
            r.errors,
            r.failed_connections,
            r.lock_failures,
            r.first_errors.join("; ")
        );
    }
    Ok(())
}

fn start(plan: &Plan, target: &Target, dir: &Path) -> anyhow::Result<(Server, String)> {
    let w = &plan.workload;
    match target.kind {
        Kind::Null => {
            let s = servers::start_null(&plan.self_bin, dir, w.size_bytes)?;
            Ok((
                s,
                format!("scd-bench null-server {}", env!("CARGO_PKG_VERSION")),
            ))
        }
        Kind::Scd(policy) => {
            let bin = plan.scd_bin.as_deref().with_context(|| {
                "no scd binary beside this program: build it with `cargo build --release -p scd` or pass --scd-bin"
            })?;
            let version = servers::version(bin, "version");
            Ok((
                servers::start_scd(
                    bin,
                    dir,
                    policy,
                    &plan.scd_args,
                    plan.pin.as_ref().map(|l| &l.nodes[0]),
                )?,
                version,
            ))
        }
        Kind::Cluster { .. } => bail!("{} is a cluster target", target.name),
        Kind::Redis { persistence, .. } => {
            let bin = plan
                .redis_bin
                .as_deref()
                .context("redis-server is not installed (apt-get install redis-server)")?;
            let version = servers::version(bin, "--version");
            Ok((servers::start_redis(bin, dir, persistence)?, version))
        }
        Kind::Memcached { .. } => {
            let bin = plan
                .memcached_bin
                .as_deref()
                .context("memcached is not installed (apt-get install memcached)")?;
            let dataset_mb = w.sessions.saturating_mul(w.size_bytes + 200) >> 20;
            let memory_mb = (dataset_mb * 2 + 64).max(MEMCACHED_MB_MIN);
            let version = servers::version(bin, "-V");
            Ok((
                servers::start_memcached(bin, dir, target.unix, memory_mb)?,
                version,
            ))
        }
    }
}

fn row(
    target: &Target,
    kind: WorkloadKind,
    server: String,
    server_version: String,
    r: &LoadResult,
    prefill_s: f64,
) -> TargetResult {
    let secs = r.window.as_secs_f64().max(1e-9);
    let us = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
    let per_req = |cpu_s: f64| {
        if r.cycles > 0 {
            cpu_s * 1e6 / r.cycles as f64
        } else {
            0.0
        }
    };
    TargetResult {
        name: target.name.clone(),
        family: target.family().into(),
        transport: transport_name(target.unix).into(),
        handler: target.handler_text(kind).into(),
        server,
        server_version,
        skipped: None,
        requests_per_s: r.cycles as f64 / secs,
        round_trips_per_s: r.ops as f64 / secs,
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: r.hist.max() as f64 / 1000.0,
        mean_us: r.hist.mean() / 1000.0,
        requests: r.cycles,
        writes_per_s: r.writes as f64 / secs,
        errors: r.errors,
        lock_failures: r.lock_failures,
        misses: r.misses,
        lock_retries: r.retries,
        failed_connections: r.failed_connections,
        first_errors: r.first_errors.clone(),
        server_cpu_us_per_req: per_req(r.server_cpu_s),
        client_cpu_us_per_req: per_req(r.client_cpu_s),
        window_s: secs,
        prefill_s,
        ratios: Default::default(),
        cluster: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_select_targets_in_table_order() {
        let names = |p: &[&str], nodes: usize| -> Vec<String> {
            select_targets(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), nodes)
                .unwrap()
                .into_iter()
                .map(|t| t.name)
                .collect()
        };
        assert_eq!(names(&["all"], 1).len(), 18);
        assert_eq!(
            names(&["redis-unix", "null-unix"], 1),
            vec!["null-unix", "redis-unix"]
        );
        assert_eq!(names(&["scd"], 1).len(), 4);
        assert_eq!(names(&["memcached*"], 1).len(), 4);
        assert!(names(&["tcp"], 1).iter().all(|n| n.ends_with("-tcp")));
        assert!(select_targets(&["nonsense".to_string()], 1).is_err());
        // Cluster targets only with --nodes; then "all" is one-node scd plus the cluster's.
        assert!(select_targets(&["cluster".to_string()], 1).is_err());
        let clustered = names(&["all"], 2);
        assert_eq!(clustered.len(), 4 + 16);
        assert!(clustered[..4].iter().all(|n| n.starts_with("scd-")));
        assert_eq!(
            names(&["cluster-wt-*"], 3)[..4],
            [
                "cluster-wt-noha-direct-unix",
                "cluster-wt-noha-direct-tcp",
                "cluster-wt-noha-relayed-unix",
                "cluster-wt-noha-relayed-tcp"
            ]
        );
        assert_eq!(names(&["cluster", "unix"], 2).len(), 16 + 9);
    }
}
