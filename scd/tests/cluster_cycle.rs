//! Figures, not checks (ignored by default): session cycles per second (ReadLock + WriteUnlock of
//! 2 KiB) through the master and through a non-master node (relayed), HA off and on, against one
//! node without clustering. Run with:
//! `cargo test --release -p scd --test cluster_cycle -- --ignored --nocapture`

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Daemon, blob};
use scd_client::{Client, Endpoint, SessionId};

const CLIENTS: usize = 4;
const SESSIONS_PER_CLIENT: usize = 64;
const RUN: Duration = Duration::from_secs(3);

/// Cycles per second through `through`, on sessions created through `creator`.
fn cycles(creator: &Daemon, through: &Daemon) -> f64 {
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
            std::thread::spawn(move || {
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
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
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
/// prints each round's HA on ÷ HA off and their mean. Run with:
/// `cargo test --release -p scd --test cluster_cycle ha_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn ha_cost_through_the_master_alternating_ha_off_and_on() {
    const ROUNDS: usize = 5;
    for (policy, net) in [("write-through", 23u8), ("delayed-write", 33u8)] {
        let off = Cluster::start(net, 2, &["--ha", "false", "--storage-model", policy]);
        let on = Cluster::start(net + 1, 2, &["--ha", "true", "--storage-model", policy]);
        let mut ratios = Vec::new();
        for round in 0..ROUNDS {
            let a = cycles(&off.nodes[0], &off.nodes[0]);
            let b = cycles(&on.nodes[0], &on.nodes[0]);
            println!(
                "FIGURES {policy} round {round}: HA off {a:.0} cycles/s, HA on {b:.0} cycles/s, \
                 on ÷ off {:.2}",
                b / a
            );
            ratios.push(b / a);
        }
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        println!("FIGURES {policy}: HA on ÷ HA off, mean of {ROUNDS} rounds: {mean:.2}");
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
