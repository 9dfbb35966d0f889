//! A steady request load through node B while node A (the master of every session) is killed
//! with `kill -9`: every read sees at least the last acknowledged write of its session, and the
//! share of failed requests and the time until requests succeed again are printed (figures, not
//! assertions: no test asserts on time).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cluster;
use scd_client::{Client, Endpoint, SessionId};

fn value(n: u64) -> Vec<u8> {
    format!("counter={n};").into_bytes()
}

fn parse(data: &[u8]) -> u64 {
    let text = std::str::from_utf8(data).expect("utf-8");
    text.trim_start_matches("counter=")
        .trim_end_matches(';')
        .parse()
        .expect("a counter")
}

#[test]
fn steady_load_through_a_kill_of_the_master() {
    for (net, policy) in [(17u8, "write-through"), (18u8, "delayed-write")] {
        run(net, policy);
    }
}

/// What one load thread saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    ok_after_kill: u64,
    failed_after_kill: u64,
    first_ok_after_kill: Option<Duration>,
    last_fail_after_kill: Option<Duration>,
    /// Delayed-write: acknowledged writes a later read did not see.
    lost: u64,
    /// The latest, over this thread's sessions, of each session's first success after the
    /// kill whose request started after the kill: when every session was served again.
    all_back: Option<Duration>,
}

const THREADS: usize = 4;
const SESSIONS_PER_THREAD: usize = 4;

fn run(net: u8, policy: &str) {
    let mut c = Cluster::start(net, 3, &["--ha", "true", "--storage-model", policy]);
    let mut a = c.nodes[0].client();
    // Sessions mastered by A, each with its counter; each thread has its own.
    let mut per_thread: Vec<Vec<(SessionId, u64)>> = Vec::new();
    for _ in 0..THREADS {
        let mut mine = Vec::new();
        for _ in 0..SESSIONS_PER_THREAD {
            let id = a.create_id().unwrap();
            let r = a.read_lock(&id, 1000, 30_000).unwrap();
            a.write_unlock(&id, r.token, 600, &value(0)).unwrap();
            mine.push((id, 0));
        }
        per_thread.push(mine);
    }
    drop(a);

    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let socket = c.nodes[1].socket.clone();
    let policy_name = policy.to_string();
    let handles: Vec<_> = per_thread
        .into_iter()
        .map(|mut sessions| {
            let killed_at = killed_at.clone();
            let stop = stop.clone();
            let socket = socket.clone();
            let policy = policy_name.clone();
            std::thread::spawn(move || {
                let connect = || {
                    let mut b = Client::connect(&Endpoint::Unix(socket.clone())).unwrap();
                    b.set_timeout(Some(common::READY_WAIT)).unwrap();
                    b
                };
                let mut b = connect();
                let mut t = Tally::default();
                let lost = std::cell::Cell::new(0u64);
                let mut i = 0usize;
                let mut back: Vec<Option<Duration>> = vec![None; SESSIONS_PER_THREAD];
                while !stop.load(Ordering::Relaxed) {
                    let slot = i % SESSIONS_PER_THREAD;
                    let (id, acked) = &mut sessions[slot];
                    i += 1;
                    let started_after_kill = killed_at.lock().unwrap().is_some();
                    // One PHP request: read with the lock, write the counter + 1.
                    let result = b.read_lock(id, 2000, 30_000).and_then(|r| {
                        if let Some(n) = r.new_id {
                            assert!(n.same_session(id));
                            *id = n;
                        }
                        let seen = r.data.as_deref().map_or(0, parse);
                        if seen < *acked {
                            // Write-through + HA promises every acknowledged write survives;
                            // delayed-write only that it reaches the backup within the flush
                            // interval, so a kill may take the last ones: counted, not failed.
                            assert!(
                                policy == "delayed-write",
                                "{policy}: read {seen}, but {acked} was acknowledged (an older value)"
                            );
                            lost.set(lost.get() + (*acked - seen));
                        }
                        let next = seen + 1;
                        b.write_unlock(id, r.token, 600, &value(next)).map(|_| next)
                    });
                    let k = *killed_at.lock().unwrap();
                    match result {
                        Ok(next) => {
                            *acked = next;
                            t.ok += 1;
                            if let Some(k) = k {
                                t.ok_after_kill += 1;
                                t.first_ok_after_kill.get_or_insert(k.elapsed());
                                if started_after_kill {
                                    back[slot].get_or_insert(k.elapsed());
                                }
                            }
                        }
                        Err(_) => {
                            t.failed += 1;
                            if let Some(k) = k {
                                t.failed_after_kill += 1;
                                t.last_fail_after_kill = Some(k.elapsed());
                            }
                            // A new connection, like the next PHP worker's.
                            b = connect();
                        }
                    }
                }
                t.lost = lost.get();
                t.all_back = back.iter().copied().max().flatten();
                (t, sessions)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // The moment of the kill is taken before the signal goes out (kill9 also waits for the exit
    // and the log), so no failure caused by it is counted before it.
    *killed_at.lock().unwrap() = Some(Instant::now());
    c.nodes[0].kill9();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    let mut sessions = Vec::new();
    for h in handles {
        let (t, mut s) = h.join().expect("load thread");
        all.ok += t.ok;
        all.failed += t.failed;
        all.ok_after_kill += t.ok_after_kill;
        all.failed_after_kill += t.failed_after_kill;
        all.lost += t.lost;
        all.all_back = all.all_back.max(t.all_back);
        all.first_ok_after_kill = match (all.first_ok_after_kill, t.first_ok_after_kill) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        all.last_fail_after_kill = all.last_fail_after_kill.max(t.last_fail_after_kill);
        sessions.append(&mut s);
    }
    // Every session still holds at least its last acknowledged value.
    let mut check = c.nodes[2].client();
    for (id, acked) in &sessions {
        let r = check.read(id).unwrap();
        let seen = r.data.as_deref().map_or(0, parse);
        if policy == "write-through" {
            assert!(
                seen >= *acked,
                "{policy}: final read {seen} < acknowledged {acked}"
            );
        }
    }
    assert!(
        all.ok_after_kill > 0,
        "requests succeed again after the kill"
    );
    let total = all.ok + all.failed;
    println!(
        "FIGURES {policy}: {THREADS} clients through node B, {total} requests ({} ok, {} failed = \
         {:.2} %); after the kill: {} ok, {} failed; first success {:.1} ms after kill -9; last \
         failure {}",
        all.ok,
        all.failed,
        all.failed as f64 * 100.0 / total as f64,
        all.ok_after_kill,
        all.failed_after_kill,
        all.first_ok_after_kill.unwrap().as_secs_f64() * 1000.0,
        all.last_fail_after_kill
            .map_or("none".to_string(), |d| format!(
                "{:.1} ms after kill -9",
                d.as_secs_f64() * 1000.0
            )),
    );
    println!(
        "FIGURES {policy}: every session served again (a request started after the kill \
         succeeded) {} after kill -9; acknowledged writes lost {}; failovers on B {}, on C {}",
        all.all_back.map_or("never".to_string(), |d| format!(
            "{:.1} ms",
            d.as_secs_f64() * 1000.0
        )),
        all.lost,
        c.nodes[1].stat("node.cluster_failovers"),
        c.nodes[2].stat("node.cluster_failovers")
    );
}
