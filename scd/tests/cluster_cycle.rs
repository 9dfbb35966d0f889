//! Figures, not checks (ignored by default): session cycles per second (ReadLock + WriteUnlock of
//! 2 KiB) through the master and through a non-master node (relayed), HA off and on, against one
//! node without clustering. Run with:
//! `cargo test --release -p scd --test cluster_cycle -- --ignored --nocapture`
//!
//! `SCD_PIN_NODES=1` emulates separate hosts in `ha_cost_…`: node 1 (the master) on the first
//! CPU this test may use (half of them when it has four or more), node 2 (the backup) and the
//! client threads on the rest, each node with as many cores and shards as CPUs it got; the HA-off
//! and HA-on clusters get the same layout. See docs/benchmarks.md.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Daemon, blob};
use scd_client::{Client, Endpoint, SessionId};

const CLIENTS: usize = 4;
const SESSIONS_PER_CLIENT: usize = 64;
const RUN: Duration = Duration::from_secs(3);

/// CPUs a mask here can name (glibc's `cpu_set_t` size).
const CPUS_MAX: usize = 1024;
const WORD_BITS: usize = libc::c_ulong::BITS as usize;

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Vec<usize> {
    let mut mask = [0 as libc::c_ulong; CPUS_MAX / WORD_BITS];
    // SAFETY: the kernel writes at most `size_of_val(&mask)` bytes into `mask`, alive for the
    // call; pid 0 is the calling thread.
    let rc = unsafe {
        libc::sched_getaffinity(
            0,
            std::mem::size_of_val(&mask),
            mask.as_mut_ptr().cast::<libc::cpu_set_t>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..CPUS_MAX)
        .filter(|&c| mask[c / WORD_BITS] & (1 << (c % WORD_BITS)) != 0)
        .collect()
}

/// Moves the calling thread onto `cpus`; what it starts afterwards (threads, daemons) inherits
/// them.
fn set_thread_cpus(cpus: &[usize]) {
    let mut mask = [0 as libc::c_ulong; CPUS_MAX / WORD_BITS];
    for &c in cpus {
        assert!(c < CPUS_MAX, "CPU {c}");
        mask[c / WORD_BITS] |= 1 << (c % WORD_BITS);
    }
    // SAFETY: the kernel reads `size_of_val(&mask)` bytes from `mask`, alive for the call.
    let rc = unsafe {
        libc::sched_setaffinity(
            0,
            std::mem::size_of_val(&mask),
            mask.as_ptr().cast::<libc::cpu_set_t>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity {cpus:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// Where the nodes and the clients run under `SCD_PIN_NODES=1`.
struct Layout {
    master: Vec<usize>,
    /// Node 2 and the client threads.
    rest: Vec<usize>,
}

impl Layout {
    /// From the environment: None unless `SCD_PIN_NODES=1` and there are two CPUs or more.
    fn from_env() -> Option<Layout> {
        if std::env::var("SCD_PIN_NODES").ok().as_deref() != Some("1") {
            return None;
        }
        let cpus = allowed_cpus();
        assert!(
            cpus.len() >= 2,
            "SCD_PIN_NODES=1 needs two CPUs or more, this test may use {cpus:?}"
        );
        let master = (cpus.len() / 2).max(1);
        Some(Layout {
            master: cpus[..master].to_vec(),
            rest: cpus[master..].to_vec(),
        })
    }

    fn node(&self, i: u8) -> &[usize] {
        if i == 1 { &self.master } else { &self.rest }
    }

    /// A 2-node cluster with node `i` on `self.node(i)` and as many cores and shards.
    fn start(&self, net: u8, extra: &[&str]) -> Cluster {
        let everywhere = allowed_cpus();
        let c = Cluster::start_each(net, 2, extra, |i| {
            let cpus = self.node(i);
            set_thread_cpus(cpus);
            let n = cpus.len().to_string();
            vec!["--cores".into(), n.clone(), "--shards".into(), n]
        });
        set_thread_cpus(&everywhere);
        for (i, node) in c.nodes.iter().enumerate() {
            let want = self.node(i as u8 + 1);
            assert_eq!(cpus_allowed(node.pid()), want, "node {}", i + 1);
        }
        c
    }
}

/// The CPUs process `pid` may run on, from /proc (`Cpus_allowed_list`, e.g. `0-1,3`).
fn cpus_allowed(pid: u32) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    let mut out = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

/// CPU seconds (user + system, every thread) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name's ')': utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux architecture (a fixed part of the user ABI).
    ticks as f64 / 100.0
}

/// The 1-minute load average.
fn load_1m() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

/// Cycles per second through `through`, on sessions created through `creator`.
fn cycles(creator: &Daemon, through: &Daemon) -> f64 {
    cycles_on(creator, through, None).0
}

/// `cycles`, the client threads on `client_cpus` when given; also the cycles done.
fn cycles_on(creator: &Daemon, through: &Daemon, client_cpus: Option<&[usize]>) -> (f64, u64) {
    let mut c = creator.client();
    let ids: Vec<Vec<SessionId>> = (0..CLIENTS)
        .map(|_| {
            (0..SESSIONS_PER_CLIENT)
                .map(|_| c.create_id().unwrap())
                .collect()
        })
        .collect();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let data = blob(1, 2048);
    let handles: Vec<_> = ids
        .into_iter()
        .map(|ids| {
            let socket = through.socket.clone();
            let done = done.clone();
            let stop = stop.clone();
            let data = data.clone();
            let cpus = client_cpus.map(<[usize]>::to_vec);
            std::thread::spawn(move || {
                if let Some(cpus) = cpus {
                    set_thread_cpus(&cpus);
                }
                let mut cl = Client::connect(&Endpoint::Unix(socket)).unwrap();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = &ids[i % ids.len()];
                    i += 1;
                    let r = cl.read_lock(id, 1000, 30_000).unwrap();
                    cl.write_unlock(id, r.token, 600, &data).unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

#[test]
#[ignore]
fn session_cycles_per_second_through_master_and_relayed_ha_off_and_on() {
    for policy in ["write-through", "delayed-write"] {
        let single = Daemon::start(&["--storage-model", policy]);
        let base = cycles(&single, &single);
        drop(single);
        println!("FIGURES {policy}: one node, clustering off: {base:.0} cycles/s");
        for (net, ha) in [(21u8, "false"), (22u8, "true")] {
            let net = if policy == "write-through" {
                net
            } else {
                net + 10
            };
            let c = Cluster::start(net, 2, &["--ha", ha, "--storage-model", policy]);
            let master = cycles(&c.nodes[0], &c.nodes[0]);
            let relayed = cycles(&c.nodes[0], &c.nodes[1]);
            // The rows are what their names say: relayed requests went through node 2, and HA
            // writes were copied to the backup (none without HA).
            assert!(c.nodes[1].stat("node.cluster_relayed_out") > 0);
            let copies = c.nodes[0].stat("node.cluster_replications")
                + c.nodes[0].stat("node.cluster_replications_coalesced");
            assert_eq!(copies > 0, ha == "true", "HA {ha}: {copies} copies");
            println!(
                "FIGURES {policy}: 2 nodes, HA {ha}: through the master {master:.0} cycles/s, \
                 relayed through the other node {relayed:.0} cycles/s"
            );
        }
    }
}

/// HA's cost measured in pairs: two 2-node clusters (HA off, HA on) side by side, the load through
/// the master alternating between them `ROUNDS` times, so that both see the same machine load;
/// prints each round's HA on ÷ HA off (cycles per second, and the capacity figure: the master's
/// CPU µs per cycle HA on ÷ HA off) and their means. Run with:
/// `cargo test --release -p scd --test cluster_cycle ha_cost -- --ignored --nocapture`
/// and with `SCD_PIN_NODES=1` in front for separate hosts emulated (see the file's doc).
#[test]
#[ignore]
fn ha_cost_through_the_master_alternating_ha_off_and_on() {
    const ROUNDS: usize = 5;
    let layout = Layout::from_env();
    let clients = layout.as_ref().map(|l| l.rest.as_slice());
    match &layout {
        Some(l) => println!(
            "FIGURES pinned: node 1 on CPUs {:?}, node 2 and the clients on CPUs {:?}",
            l.master, l.rest
        ),
        None => println!("FIGURES unpinned: every node and the clients on any CPU"),
    }
    for (policy, net) in [("write-through", 23u8), ("delayed-write", 33u8)] {
        let start = |net: u8, ha: &str| {
            let extra = ["--ha", ha, "--storage-model", policy];
            match &layout {
                Some(l) => l.start(net, &extra),
                None => Cluster::start(net, 2, &extra),
            }
        };
        let off = start(net, "false");
        let on = start(net + 1, "true");
        // Cycles per second and the master's CPU µs per cycle, through the master.
        let measure = |c: &Cluster| {
            let master = c.nodes[0].pid();
            let cpu0 = cpu_seconds(master);
            let (rate, n) = cycles_on(&c.nodes[0], &c.nodes[0], clients);
            let us = (cpu_seconds(master) - cpu0) * 1e6 / n.max(1) as f64;
            (rate, us)
        };
        let (mut ratios, mut capacities) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let load_before = load_1m();
            let (a, a_us) = measure(&off);
            let (b, b_us) = measure(&on);
            println!(
                "FIGURES {policy} round {round}: HA off {a:.0} cycles/s ({a_us:.0} master CPU µs \
                 each), HA on {b:.0} cycles/s ({b_us:.0} µs), on ÷ off {:.2}, master CPU µs on ÷ \
                 off {:.2}; load {load_before} before, {} after",
                b / a,
                b_us / a_us,
                load_1m()
            );
            ratios.push(b / a);
            capacities.push(b_us / a_us);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "FIGURES {policy}: HA on ÷ HA off, mean of {ROUNDS} rounds: {:.2}; master CPU µs per \
             cycle HA on ÷ HA off (capacity: 1 ÷ this): {:.2}",
            mean(&ratios),
            mean(&capacities)
        );
        assert!(on.nodes[0].stat("node.cluster_replications") > 0);
        // Read leases: how many requests of the HA run found no valid lease on the master (they
        // went through the cluster thread and waited for a grant) out of all it served.
        let stats = on.nodes[0].stats();
        let missing = stats
            .get("node.cluster_leases_missing")
            .copied()
            .unwrap_or(0);
        let granted = stats
            .get("node.cluster_leases_granted")
            .copied()
            .unwrap_or(0);
        let served = stats.get("node.requests").copied().unwrap_or(0);
        println!(
            "FIGURES {policy}: HA on master: {missing} of {served} requests found no valid read \
             lease ({granted} leases granted)"
        );
    }
}
