//! Statistics: gathered from every core on request, flattened into named counters (the wire's
//! StatsReply carries `(name, u64)` pairs), and rendered as a table, JSON or Prometheus text.
//!
//! Names: `node.<field>` (whole daemon), `core.<n>.<field>`, `shard.<n>.<field>` and
//! `total.<field>` (the shards summed; smallest/largest/average over all shards).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::core::{Core, CoreMsg};

/// Per-core counters of the connection layer (single thread: plain cells).
#[derive(Default)]
pub struct CoreCounters {
    pub requests: Cell<u64>,
    pub cross_core: Cell<u64>,
    pub protocol_errors: Cell<u64>,
    pub connections_accepted: Cell<u64>,
    pub connections_refused: Cell<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CounterSnapshot {
    pub requests: u64,
    pub cross_core: u64,
    pub protocol_errors: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
}

impl CoreCounters {
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            requests: self.requests.get(),
            cross_core: self.cross_core.get(),
            protocol_errors: self.protocol_errors.get(),
            connections_accepted: self.connections_accepted.get(),
            connections_refused: self.connections_refused.get(),
        }
    }
}

/// One shard's figures (from the engine, plus the errors the daemon answered for it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardFigures {
    pub shard: u32,
    pub sessions: u64,
    pub bytes: u64,
    pub size_smallest: u64,
    pub size_largest: u64,
    pub reads: u64,
    pub writes: u64,
    pub lock_waits: u64,
    pub lock_timeouts: u64,
    pub flushes: u64,
    pub errors: u64,
    /// Size of the shard's slab files on disk.
    pub disk_bytes: u64,
}

/// What one core reports.
#[derive(Clone, Debug)]
pub struct CoreStats {
    pub core: usize,
    pub driver: &'static str,
    pub connections_open: u64,
    pub counters: CounterSnapshot,
    pub shards: Vec<ShardFigures>,
}

/// The whole daemon's statistics.
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    pub cores: Vec<CoreStats>,
    /// The cluster counters in the order of `CLUSTER_FIELDS` (clustering on only).
    pub cluster: Option<Vec<u64>>,
}

/// Asks every core (this one included, through its own inbox) for its statistics.
pub async fn gather(core: &Core) -> NodeStats {
    let (tx, rx) = flume::bounded(core.peers.len());
    let mut asked = 0;
    for peer in &core.peers {
        if peer.send_async(CoreMsg::Stats(tx.clone())).await.is_ok() {
            asked += 1;
        }
    }
    drop(tx);
    let mut cores = Vec::with_capacity(asked);
    while let Ok(s) = rx.recv_async().await {
        cores.push(s);
    }
    cores.sort_by_key(|c| c.core);
    NodeStats {
        cores,
        cluster: core.node.cluster.as_ref().map(|c| c.counters.values()),
    }
}

/// The cluster's figures, shown with the node's (`node.cluster_*`); only when clustering is on.
pub const CLUSTER_FIELDS: [(&str, &str, &str); 38] = [
    ("cluster_on", "gauge", "1: clustering is on."),
    (
        "cluster_ready",
        "gauge",
        "1: the node has rejoined (synced with the live nodes) and serves.",
    ),
    (
        "cluster_peers_up",
        "gauge",
        "Other nodes heard from within the node timeout.",
    ),
    (
        "cluster_peers_down",
        "gauge",
        "Other nodes heard from before, silent now.",
    ),
    (
        "cluster_heartbeats_sent",
        "counter",
        "Heartbeat datagrams sent.",
    ),
    (
        "cluster_heartbeats_received",
        "counter",
        "Heartbeats accepted (allowed host, right key, not a replay).",
    ),
    (
        "cluster_heartbeats_rejected",
        "counter",
        "Heartbeats dropped (host not allowed, bad MAC, replay, malformed).",
    ),
    (
        "cluster_relayed_out",
        "counter",
        "Requests relayed to another node and answered.",
    ),
    (
        "cluster_relayed_in",
        "counter",
        "Requests relayed here by another node.",
    ),
    (
        "cluster_relay_failures",
        "counter",
        "Relays that got no answer (peer unreachable, timeout, connection lost).",
    ),
    (
        "cluster_relay_connections_refused",
        "counter",
        "Relay connections closed at once: host not allowed or handshake failed (wrong key).",
    ),
    (
        "cluster_replications",
        "counter",
        "Copies acknowledged by a backup.",
    ),
    (
        "cluster_replication_failures",
        "counter",
        "Copies a backup did not acknowledge (unreachable, or fenced by a newer epoch).",
    ),
    (
        "cluster_replications_coalesced",
        "counter",
        "Delayed-write copies replaced in the queue by a newer write (or a Destroy) of the same session before they were sent.",
    ),
    (
        "cluster_replicate_batches",
        "counter",
        "ReplicateBatch frames sent (delayed-write copies to a backup, many per frame).",
    ),
    (
        "cluster_replicas_applied",
        "counter",
        "Copies this node took as a backup.",
    ),
    (
        "cluster_failovers",
        "counter",
        "Sessions this node took over from an unreachable master.",
    ),
    (
        "cluster_fenced",
        "counter",
        "Sessions this node stopped mastering because another node holds a newer epoch.",
    ),
    (
        "cluster_backups_replaced",
        "counter",
        "Sessions whose backup was gone or draining and got a new one.",
    ),
    (
        "cluster_sync_items",
        "counter",
        "Sessions received while rejoining.",
    ),
    (
        "cluster_sessions_handed_off",
        "counter",
        "Sessions handed to another node by drain.",
    ),
    (
        "cluster_locates",
        "counter",
        "Requests whose session was searched for on every live node (Locate): the nodes its ID names could not serve it.",
    ),
    (
        "cluster_locates_found",
        "counter",
        "Of those, requests served where the search found the session.",
    ),
    (
        "cluster_locates_answered",
        "counter",
        "Locate queries from other nodes answered here.",
    ),
    (
        "cluster_rejoins",
        "counter",
        "Rejoins after the start (told RejoinNeeded, or heard a peer again after losing them all).",
    ),
    (
        "cluster_rejoins_requested",
        "counter",
        "RejoinNeeded messages sent to nodes heard again after they were declared down.",
    ),
    (
        "cluster_rejoin_hashes_listed",
        "counter",
        "Session hashes this node listed to its peers at its rejoins (SyncHashes), to learn where they live now.",
    ),
    (
        "cluster_rejoin_moved",
        "counter",
        "Sessions found taken over by another node at a rejoin (not naming this node): routed there, the local copy dropped.",
    ),
    (
        "cluster_leases_requested",
        "counter",
        "Read lease requests (LeaseRequest) this node sent to its peers.",
    ),
    (
        "cluster_leases_granted",
        "counter",
        "Read leases peers granted this node (LeaseGrant received).",
    ),
    (
        "cluster_leases_denied",
        "counter",
        "Read leases peers refused this node (LeaseDenied received: they took over or replaced it; it rejoins).",
    ),
    (
        "cluster_leases_missing",
        "counter",
        "Session requests this node masters that found no valid read lease from the session's backup (then waited for one, replaced a backup that is down, or answered Unavailable).",
    ),
    (
        "cluster_witness_requests",
        "counter",
        "Witness requests (WitnessRequest) this node sent before a placement change decided on a peer's silence (promotion, or dropping or replacing a backup).",
    ),
    (
        "cluster_witness_agreed",
        "counter",
        "Witness requests this node sent that a peer agreed to (Ack).",
    ),
    (
        "cluster_witness_refused",
        "counter",
        "Witness requests this node sent that a peer refused (NotAgreed: it still hears the suspect, is not serving, or does not know this node).",
    ),
    (
        "cluster_journal_records",
        "counter",
        "Records written to the placement journal since the start (placements not derivable from a session ID, their removals, lease-denial marks).",
    ),
    (
        "cluster_journal_syncs",
        "counter",
        "Group writes of the placement journal made durable (write + fdatasync) since the start.",
    ),
    (
        "cluster_journal_errors",
        "counter",
        "Placement journal writes that failed (logged as errors): the change holds in memory but a restart may forget it.",
    ),
];

/// Per-shard fields in the order they are shown: (name, Prometheus type, help).
pub const SHARD_FIELDS: [(&str, &str, &str); 12] = [
    ("sessions", "gauge", "Sessions held."),
    ("bytes", "gauge", "Bytes of session data held."),
    (
        "size_smallest",
        "gauge",
        "Size of the smallest session in bytes.",
    ),
    (
        "size_largest",
        "gauge",
        "Size of the largest session in bytes.",
    ),
    ("size_average", "gauge", "Average session size in bytes."),
    ("reads", "counter", "Session reads."),
    ("writes", "counter", "Session writes."),
    ("lock_waits", "counter", "Lock requests that had to wait."),
    ("lock_timeouts", "counter", "Lock requests that timed out."),
    ("flushes", "counter", "Flushes to disk."),
    ("errors", "counter", "Requests answered with an error."),
    (
        "disk_bytes",
        "gauge",
        "Size of the slab files on disk in bytes.",
    ),
];

pub const NODE_FIELDS: [(&str, &str, &str); 7] = [
    ("connections_open", "gauge", "Client connections open."),
    (
        "connections_accepted",
        "counter",
        "Client connections accepted.",
    ),
    (
        "connections_refused",
        "counter",
        "Client connections refused (over connections_max).",
    ),
    ("requests", "counter", "Requests received."),
    (
        "cross_core_requests",
        "counter",
        "Requests passed to another core's shard.",
    ),
    (
        "protocol_errors",
        "counter",
        "Malformed frames and protocol violations.",
    ),
    ("cores", "gauge", "Event loops running."),
];

fn shard_values(s: &ShardFigures) -> [u64; 12] {
    [
        s.sessions,
        s.bytes,
        s.size_smallest,
        s.size_largest,
        s.bytes.checked_div(s.sessions).unwrap_or(0),
        s.reads,
        s.writes,
        s.lock_waits,
        s.lock_timeouts,
        s.flushes,
        s.errors,
        s.disk_bytes,
    ]
}

impl NodeStats {
    pub fn shards(&self) -> Vec<ShardFigures> {
        let mut v: Vec<ShardFigures> = self
            .cores
            .iter()
            .flat_map(|c| c.shards.iter().copied())
            .collect();
        v.sort_by_key(|s| s.shard);
        v
    }

    /// All shards summed; smallest and largest over the shards that hold sessions.
    pub fn total(&self) -> ShardFigures {
        let mut t = ShardFigures::default();
        let mut smallest: Option<u64> = None;
        for s in self.shards() {
            t.sessions += s.sessions;
            t.bytes += s.bytes;
            t.reads += s.reads;
            t.writes += s.writes;
            t.lock_waits += s.lock_waits;
            t.lock_timeouts += s.lock_timeouts;
            t.flushes += s.flushes;
            t.errors += s.errors;
            t.disk_bytes += s.disk_bytes;
            if s.sessions > 0 {
                smallest = Some(smallest.map_or(s.size_smallest, |m| m.min(s.size_smallest)));
                t.size_largest = t.size_largest.max(s.size_largest);
            }
        }
        t.size_smallest = smallest.unwrap_or(0);
        t
    }

    /// Flattened `(name, value)` pairs, node and totals first, then cores, then shards.
    pub fn entries(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let sum = |f: fn(&CoreStats) -> u64| self.cores.iter().map(f).sum::<u64>();
        let node_values = [
            sum(|c| c.connections_open),
            sum(|c| c.counters.connections_accepted),
            sum(|c| c.counters.connections_refused),
            sum(|c| c.counters.requests),
            sum(|c| c.counters.cross_core),
            sum(|c| c.counters.protocol_errors),
            self.cores.len() as u64,
        ];
        for ((name, _, _), v) in NODE_FIELDS.iter().zip(node_values) {
            out.push((format!("node.{name}"), v));
        }
        out.push(("node.pid".to_string(), u64::from(std::process::id())));
        if let Some(values) = &self.cluster {
            for ((name, _, _), v) in CLUSTER_FIELDS.iter().zip(values) {
                out.push((format!("node.{name}"), *v));
            }
        }
        let total = self.total();
        for ((name, _, _), v) in SHARD_FIELDS.iter().zip(shard_values(&total)) {
            out.push((format!("total.{name}"), v));
        }
        for c in &self.cores {
            out.push((
                format!("core.{}.io_uring", c.core),
                u64::from(c.driver == "io_uring"),
            ));
            out.push((
                format!("core.{}.connections_open", c.core),
                c.connections_open,
            ));
            out.push((format!("core.{}.requests", c.core), c.counters.requests));
        }
        for s in self.shards() {
            for ((name, _, _), v) in SHARD_FIELDS.iter().zip(shard_values(&s)) {
                out.push((format!("shard.{}.{name}", s.shard), v));
            }
        }
        out
    }

    /// `entries`, cut to what one StatsReply may carry: with very many shards the last shards'
    /// entries are left out (node, totals and cores always fit).
    pub fn wire_entries(&self) -> Vec<(String, u64)> {
        let mut out = self.entries();
        out.truncate(scd_wire::constants::STATS_ENTRIES_MAX);
        out
    }
}

/// The entries grouped: `node`, `total`, each `core.N` and each `shard.N`.
struct Grouped {
    node: BTreeMap<String, u64>,
    total: BTreeMap<String, u64>,
    cores: BTreeMap<u32, BTreeMap<String, u64>>,
    shards: BTreeMap<u32, BTreeMap<String, u64>>,
}

fn group(entries: &[(String, u64)]) -> Grouped {
    let mut g = Grouped {
        node: BTreeMap::new(),
        total: BTreeMap::new(),
        cores: BTreeMap::new(),
        shards: BTreeMap::new(),
    };
    for (name, v) in entries {
        let mut parts = name.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("node"), Some(f), None) => {
                g.node.insert(f.to_string(), *v);
            }
            (Some("total"), Some(f), None) => {
                g.total.insert(f.to_string(), *v);
            }
            (Some("core"), Some(n), Some(f)) => {
                if let Ok(n) = n.parse() {
                    g.cores.entry(n).or_default().insert(f.to_string(), *v);
                }
            }
            (Some("shard"), Some(n), Some(f)) => {
                if let Ok(n) = n.parse() {
                    g.shards.entry(n).or_default().insert(f.to_string(), *v);
                }
            }
            // Names this build does not know (a newer daemon) are shown under node.
            _ => {
                g.node.insert(name.clone(), *v);
            }
        }
    }
    g
}

/// A table for people: one row per shard and a total row, then the node's counters.
pub fn render_table(entries: &[(String, u64)]) -> String {
    let g = group(entries);
    let mut out = String::new();
    let mut header = format!("{:<8}", "shard");
    for (name, _, _) in SHARD_FIELDS {
        let _ = write!(header, " {:>width$}", name, width = name.len().max(11));
    }
    out.push_str(header.trim_end());
    out.push('\n');
    let row = |label: &str, m: &BTreeMap<String, u64>, out: &mut String| {
        let mut line = format!("{label:<8}");
        for (name, _, _) in SHARD_FIELDS {
            let v = m.get(name).copied().unwrap_or(0);
            let _ = write!(line, " {:>width$}", v, width = name.len().max(11));
        }
        out.push_str(&line);
        out.push('\n');
    };
    for (n, m) in &g.shards {
        row(&n.to_string(), m, &mut out);
    }
    row("total", &g.total, &mut out);
    out.push('\n');
    for (name, v) in &g.node {
        let _ = writeln!(out, "{name:<24} {v}");
    }
    for (n, m) in &g.cores {
        let fields: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "core {n:<19} {}", fields.join(" "));
    }
    out
}

/// JSON for tools: `{"node": {...}, "total": {...}, "cores": [...], "shards": [...]}`.
pub fn render_json(entries: &[(String, u64)]) -> String {
    use serde_json::{Map, Value, json};
    let g = group(entries);
    let obj = |m: &BTreeMap<String, u64>| -> Map<String, Value> {
        m.iter().map(|(k, v)| (k.clone(), json!(v))).collect()
    };
    let list = |label: &str, groups: &BTreeMap<u32, BTreeMap<String, u64>>| -> Vec<Value> {
        groups
            .iter()
            .map(|(n, m)| {
                let mut o = obj(m);
                o.insert(label.to_string(), json!(n));
                Value::Object(o)
            })
            .collect()
    };
    let doc = json!({
        "node": obj(&g.node),
        "total": obj(&g.total),
        "cores": list("core", &g.cores),
        "shards": list("shard", &g.shards),
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    text
}

/// Prometheus text exposition format (version 0.0.4).
pub fn render_prometheus(entries: &[(String, u64)]) -> String {
    let g = group(entries);
    let mut out = String::new();
    for (name, kind, help) in NODE_FIELDS.iter().chain(CLUSTER_FIELDS.iter()) {
        if let Some(v) = g.node.get(*name) {
            let metric = prometheus_name(name, kind);
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {v}"
            );
        }
    }
    for (name, kind, help) in SHARD_FIELDS {
        let metric = format!("scd_shard_{}", prometheus_suffix(name, kind));
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (n, m) in &g.shards {
            if let Some(v) = m.get(name) {
                let _ = writeln!(out, "{metric}{{shard=\"{n}\"}} {v}");
            }
        }
    }
    out
}

fn prometheus_suffix(name: &str, kind: &str) -> String {
    if kind == "counter" {
        format!("{name}_total")
    } else {
        name.to_string()
    }
}

fn prometheus_name(name: &str, kind: &str) -> String {
    format!("scd_{}", prometheus_suffix(name, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeStats {
        let s0 = ShardFigures {
            shard: 0,
            sessions: 2,
            bytes: 300,
            size_smallest: 100,
            size_largest: 200,
            reads: 5,
            writes: 2,
            lock_waits: 1,
            lock_timeouts: 0,
            flushes: 3,
            errors: 0,
            disk_bytes: 8192,
        };
        let s1 = ShardFigures {
            shard: 1,
            sessions: 1,
            bytes: 50,
            size_smallest: 50,
            size_largest: 50,
            ..s0
        };
        let s2 = ShardFigures {
            shard: 2,
            ..Default::default()
        };
        let c = |core, shards| CoreStats {
            core,
            driver: "io_uring",
            connections_open: 1,
            counters: CounterSnapshot {
                requests: 10,
                ..Default::default()
            },
            shards,
        };
        NodeStats {
            cluster: None,
            cores: vec![c(1, vec![s1]), c(0, vec![s0, s2])],
        }
    }

    #[test]
    fn totals_sum_shards_and_take_extremes_over_non_empty_shards() {
        let t = sample().total();
        assert_eq!(t.sessions, 3);
        assert_eq!(t.bytes, 350);
        assert_eq!(t.size_smallest, 50);
        assert_eq!(t.size_largest, 200);
        assert_eq!(t.reads, 10);
    }

    #[test]
    fn entries_carry_node_total_and_shards() {
        let e: BTreeMap<String, u64> = sample().entries().into_iter().collect();
        assert_eq!(e["node.requests"], 20);
        assert_eq!(e["node.connections_open"], 2);
        assert_eq!(e["total.sessions"], 3);
        assert_eq!(e["total.size_average"], 116);
        assert_eq!(e["shard.1.bytes"], 50);
        assert_eq!(e["shard.2.size_average"], 0);
        assert_eq!(e["core.0.io_uring"], 1);
    }

    #[test]
    fn wire_entries_fit_one_reply() {
        let shards = (0..1024)
            .map(|shard| ShardFigures {
                shard,
                sessions: 1,
                ..Default::default()
            })
            .collect();
        let c = CoreStats {
            core: 0,
            driver: "epoll",
            connections_open: 0,
            counters: CounterSnapshot::default(),
            shards,
        };
        let n = NodeStats {
            cores: vec![c],
            cluster: None,
        };
        assert!(n.entries().len() > scd_wire::constants::STATS_ENTRIES_MAX);
        let w = n.wire_entries();
        assert_eq!(w.len(), scd_wire::constants::STATS_ENTRIES_MAX);
        let names: Vec<&str> = w.iter().map(|(k, _)| k.as_str()).collect();
        let pairs: Vec<(&str, u64)> = w.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert!(scd_wire::local::StatEntries::new(&pairs).is_ok());
        assert!(names.contains(&"total.sessions") && names.contains(&"shard.0.sessions"));
        assert_eq!(
            w.iter().find(|(k, _)| k == "total.sessions").map(|e| e.1),
            Some(1024)
        );
    }

    #[test]
    fn renderings() {
        let e = sample().entries();
        let table = render_table(&e);
        assert!(
            table.lines().next().unwrap().starts_with("shard"),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("total") && l.contains("350")),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&render_json(&e)).unwrap();
        assert_eq!(json["total"]["sessions"], 3);
        assert_eq!(json["shards"][1]["shard"], 1);
        assert_eq!(json["shards"][1]["bytes"], 50);
        let prom = render_prometheus(&e);
        assert!(
            prom.contains("# TYPE scd_shard_reads_total counter"),
            "{prom}"
        );
        assert!(prom.contains("scd_shard_sessions{shard=\"0\"} 2"), "{prom}");
        assert!(prom.contains("scd_requests_total 20"), "{prom}");
    }
}
