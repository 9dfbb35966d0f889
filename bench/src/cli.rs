//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::constants::{CONNECTIONS_DEFAULT, SIZE_DEFAULT, THREADS_DEFAULT, ZIPF_S_DEFAULT};
use crate::null_server::NullArgs;
use crate::workload::{KeyDist, WorkloadKind};

#[derive(Debug, Parser)]
#[command(
    name = "scd-bench",
    version,
    about = "Benchmark harness: scd against Redis, memcached and a null server on the PHP session workload",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the benchmark (what `scd-bench` alone does).
    Run(Box<RunArgs>),
    /// Serve scd's protocol with no store: the ceiling (started by the harness itself).
    NullServer(NullArgs),
    /// List the target names.
    Targets,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// What each simulated PHP request does.
    #[arg(long, value_enum, default_value_t = WorkloadKind::Cycle)]
    pub workload: WorkloadKind,
    /// Session size in bytes (512, 4096 and 65536 are the reference sizes).
    #[arg(long, default_value_t = SIZE_DEFAULT)]
    pub size: usize,
    /// Sessions in the key space [default: 100000; 2000 with --quick].
    #[arg(long)]
    pub sessions: Option<usize>,
    /// How sessions are picked.
    #[arg(long, value_enum, default_value_t = KeyDist::Uniform)]
    pub dist: KeyDist,
    /// Zipf exponent (with --dist zipf).
    #[arg(long, default_value_t = ZIPF_S_DEFAULT)]
    pub zipf_s: f64,
    /// Share of session cycles whose data did not change (they touch instead of writing), 0..=1.
    #[arg(long, default_value_t = 0.0)]
    pub touch_share: f64,
    /// Client connections.
    #[arg(long, default_value_t = CONNECTIONS_DEFAULT)]
    pub connections: usize,
    /// Client threads the connections are spread over.
    #[arg(long, default_value_t = THREADS_DEFAULT)]
    pub threads: usize,
    /// Requests in flight per connection (simulated PHP workers sharing it, pipelined).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Measured seconds per target [default: 10; 1 with --quick].
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Warm-up seconds per target [default: 2; 0.2 with --quick].
    #[arg(long)]
    pub warmup_s: Option<f64>,
    /// A short smoke run: 1 s per target, 2,000 sessions, a short disk probe.
    #[arg(long)]
    pub quick: bool,
    /// Targets: names, families (scd, redis, memcached, null), transports (unix, tcp),
    /// prefixes ending in * (redis-lock*), or all. See `scd-bench targets`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub targets: Vec<String>,
    /// Where report.json, report.csv, report.txt and chart.svg go.
    #[arg(long, default_value = "target/bench-results")]
    pub out: PathBuf,
    /// Where servers keep their data and sockets (and the disk probe its file) [default: OUT/work].
    /// Put it on the disk scd would use: the durability figures depend on it.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The scd binary [default: `scd` beside this program].
    #[arg(long)]
    pub scd_bin: Option<PathBuf>,
    /// Extra flags for every scd started (space-separated), e.g. "--flush-interval-ms 200".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub scd_args: String,
    /// The Redis server binary [default: redis-server on PATH].
    #[arg(long)]
    pub redis_bin: Option<String>,
    /// The memcached binary [default: memcached on PATH].
    #[arg(long)]
    pub memcached_bin: Option<String>,
    /// Seconds per disk probe mode [default: 2; 0.2 with --quick].
    #[arg(long)]
    pub disk_s: Option<f64>,
    /// Skip the disk probe.
    #[arg(long)]
    pub no_disk: bool,
    /// Seed of every random choice (keys, data, picks).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fail when a target cannot run (its server is missing or fails), instead of skipping it.
    #[arg(long)]
    pub require_all: bool,
    /// No progress line.
    #[arg(long)]
    pub no_progress: bool,
    /// Also run scd as a cluster of this many nodes (2 or 3) on 127.0.0.1.., the cluster targets:
    /// sessions created on node 1, driven through node 1 (direct) and node 2 (relayed), HA off and
    /// on, under each flush policy. Alone, `--targets` then defaults to `scd,cluster`.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Emulate separate hosts: each cluster node on CPUs of its own (node 1, the sessions' master,
    /// alone; with too few CPUs for all, the other nodes share theirs with the client threads),
    /// started with as many cores and shards as CPUs it got; the client threads on their own
    /// CPUs where there are enough. The one-node scd targets run on node 1's CPUs. HA off and on
    /// use the same layout. Needs --nodes 2 or 3 and at least 2 CPUs; scd and cluster targets only.
    #[arg(long)]
    pub pin_nodes: bool,
    /// Measure a failover: steady session-cycle load through node 2 on sessions mastered by node 1
    /// (HA on), `kill -9` of node 1; time to the first successful request, failed requests, and
    /// every acknowledged write read back. Uses --nodes (3 when not given).
    #[arg(long)]
    pub failover: bool,
    /// Flush policies the failover runs under.
    #[arg(long, value_delimiter = ',', default_value = "wt,dw")]
    pub failover_policies: Vec<String>,
    /// How the failover takes node 1 down: `kill` (SIGKILL: a crash; its ports refuse at once)
    /// or `stop` (SIGSTOP: a hung or cut-off node; connections hang until timeouts).
    #[arg(long, value_delimiter = ',', default_value = "kill")]
    pub failover_faults: Vec<String>,
    /// Failover: sessions, all mastered by node 1 [default: 1000; 100 with --quick].
    #[arg(long)]
    pub failover_sessions: Option<usize>,
    /// Failover: client workers (each one request at a time, like PHP workers).
    #[arg(long, default_value_t = crate::constants::FAILOVER_WORKERS_DEFAULT)]
    pub failover_workers: usize,
    /// Only the failover (no targets).
    #[arg(long)]
    pub failover_only: bool,
    /// Profile the scd and null servers with `perf record -g` during each of their runs and write
    /// `perf-TARGET.txt` (the hottest symbols) into the output folder.
    #[arg(long)]
    pub perf: bool,
}
