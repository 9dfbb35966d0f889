//! Measures what the placement journal costs, in a journal in DIR (default: a temporary folder
//! under the current one), COUNT placement records per case:
//!
//! - `inline`: a commit (write + fdatasync) made on the calling thread, as the cluster thread did
//!   before the writer thread: one record per commit, then 64 (a rejoin's or a sweep's group);
//! - `thread, N submitters`: N tasks on one monoio event loop (as on the cluster thread), each
//!   submitting one change at a time to the writer thread and awaiting its commit; the writer's
//!   group commit puts every change submitted during a sync under the next one.
//!
//! For each case: p50 / p99 / max of one commit as its submitter sees it (µs), syncs made, and
//! how late a 1 ms timer on the same event loop fired (p99 / max, µs): how long the thread was
//! kept from its other tasks.
//!
//! `cargo run --release -p scd --example journal_probe -- [DIR] [COUNT] [N...]` (N default:
//! 1 8 64).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use scd::cluster::Placement;
use scd::cluster::journal::{self, Entry, Journal, Log};

fn pct(v: &mut [u128], p: f64) -> u128 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn entry(n: u64) -> Entry {
    let a: SocketAddr = "10.0.0.1:34567".parse().unwrap();
    let b: SocketAddr = "10.0.0.2:34567".parse().unwrap();
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&n.to_le_bytes());
    Entry::Place(
        h,
        Placement {
            epoch: 2,
            master: Some(b),
            backup: Some(a),
            prev: Some(a),
        },
    )
}

/// A 1 ms timer on the event loop, until `stop`: how late each tick fired (µs).
async fn ticker(stop: Rc<Cell<bool>>, late: Rc<RefCell<Vec<u128>>>) {
    let period = Duration::from_millis(1);
    while !stop.get() {
        let t = Instant::now();
        monoio::time::sleep(period).await;
        late.borrow_mut()
            .push(t.elapsed().saturating_sub(period).as_micros());
    }
}

fn report(name: &str, t: &mut [u128], syncs: u64, late: &mut [u128]) {
    let max = t.iter().copied().max().unwrap_or(0);
    let lmax = late.iter().copied().max().unwrap_or(0);
    println!(
        "{name}: {} commits, {syncs} syncs, commit p50 {} µs, p99 {} µs, max {max} µs; \
         1 ms timer late p99 {} µs, max {lmax} µs",
        t.len(),
        pct(t, 0.5),
        pct(t, 0.99),
        pct(late, 0.99),
    );
}

fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args.get(1).map_or_else(|| ".".to_string(), |s| s.clone());
    let count: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let mut submitters: Vec<u64> = args[3.min(args.len())..]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    if submitters.is_empty() {
        submitters = vec![1, 8, 64];
    }
    let next = Rc::new(Cell::new(0u64));
    let fresh = || {
        next.set(next.get() + 1);
        entry(next.get())
    };

    // Inline: the commit blocks the event loop.
    for group in [1u64, 64] {
        let dir = tempfile::Builder::new()
            .prefix("journal-probe")
            .tempdir_in(&base)
            .expect("temp dir");
        let (log, _) = Log::open(dir.path()).expect("journal");
        let log = Rc::new(RefCell::new(log));
        let (times, late) = runtime().block_on(async {
            let stop = Rc::new(Cell::new(false));
            let late = Rc::new(RefCell::new(Vec::new()));
            monoio::spawn(ticker(stop.clone(), late.clone()));
            let mut t = Vec::new();
            for _ in 0..(count / group).max(1) {
                let entries: Vec<Entry> = (0..group).map(|_| fresh()).collect();
                let s = Instant::now();
                log.borrow_mut().append(&entries).expect("append");
                t.push(s.elapsed().as_micros());
                // Lets the timer run between commits.
                monoio::time::sleep(Duration::from_micros(50)).await;
            }
            stop.set(true);
            let late = late.borrow().clone();
            (t, late)
        });
        let (mut times, mut late) = (times, late);
        let syncs = log.borrow().syncs;
        report(
            &format!("inline, {group:>2} records per commit"),
            &mut times,
            syncs,
            &mut late,
        );
    }

    // The writer thread, N submitters awaiting their commits.
    for n in submitters {
        let dir = tempfile::Builder::new()
            .prefix("journal-probe")
            .tempdir_in(&base)
            .expect("temp dir");
        let (j, _) = Journal::open(dir.path()).expect("journal");
        let j = Rc::new(RefCell::new(j));
        let (times, late) = runtime().block_on(async {
            let stop = Rc::new(Cell::new(false));
            let late = Rc::new(RefCell::new(Vec::new()));
            monoio::spawn(ticker(stop.clone(), late.clone()));
            let pj = j.clone();
            monoio::spawn(async move { journal::pump(&pj, |_, _| {}).await });
            let times = Rc::new(RefCell::new(Vec::new()));
            let (done_tx, done) = flume::unbounded::<()>();
            for _ in 0..n {
                let (j, times, done_tx) = (j.clone(), times.clone(), done_tx.clone());
                let mine: Vec<Entry> = (0..(count / n).max(1)).map(|_| fresh()).collect();
                monoio::spawn(async move {
                    for e in mine {
                        let s = Instant::now();
                        j.borrow_mut().add(e);
                        let seq = j.borrow_mut().submit();
                        journal::committed(&j, seq).await;
                        times.borrow_mut().push(s.elapsed().as_micros());
                    }
                    let _ = done_tx.send(());
                });
            }
            for _ in 0..n {
                done.recv_async().await.expect("submitter");
            }
            stop.set(true);
            let t = times.borrow().clone();
            let late = late.borrow().clone();
            (t, late)
        });
        let (mut times, mut late) = (times, late);
        let mut jr = j.borrow_mut();
        let _ = jr.finish();
        assert_eq!(jr.errors, 0, "journal errors");
        report(
            &format!("thread, {n:>2} submitters"),
            &mut times,
            jr.syncs,
            &mut late,
        );
    }
}
