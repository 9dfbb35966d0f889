//! End to end through Debian's php-fpm (a static pool on loopback, cluster.so loaded with
//! `php_admin_value[extension]`) and a FastCGI client: the process model production uses, where
//! the master respawns a worker that dies.

mod common;

use std::sync::{Mutex, MutexGuard};
use std::thread;

use common::{Jar, PhpFpm, Scd, TestDir, php_ini};

fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn n_of(r: &common::Response) -> u64 {
    r.field("n")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no n= in {:?}", r.body))
}

#[test]
fn fpm_counter_and_fifty_concurrent_increments() {
    let _g = serial();
    let dir = TestDir::new("fpm");
    let scd = Scd::start(&dir, &[]);
    let fpm = PhpFpm::start(&dir, 6, &php_ini(&scd.save_path(), &[]));
    let mut jar = Jar::default();
    for want in 1..=3 {
        let r = fpm.get("count.php", "", &mut jar);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(n_of(&r), want, "{}", r.body);
        assert!(!r.body.contains("Warning"), "{}", r.body);
    }
    assert!(jar.session_id().is_some());
    let port = fpm.port;
    let script = fpm.docroot.join("count.php");
    let workers: Vec<_> = (0..50)
        .map(|_| {
            let jar = jar.clone();
            let script = script.clone();
            thread::spawn(move || common::fastcgi_get(port, &script, "count.php", "", &jar))
        })
        .collect();
    let mut seen: Vec<u64> = workers
        .into_iter()
        .map(|w| n_of(&w.join().unwrap()))
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (4..=53).collect::<Vec<u64>>(),
        "every request saw its own count"
    );
    assert_eq!(n_of(&fpm.get("peek.php", "", &mut jar)), 53);
}

#[test]
fn fpm_worker_killed_while_holding_the_lock_does_not_block_the_session() {
    let _g = serial();
    let dir = TestDir::new("fpmkill");
    let scd = Scd::start(&dir, &[]);
    let fpm = PhpFpm::start(
        &dir,
        3,
        &php_ini(&scd.save_path(), &[("cluster.lock_wait_ms", "20000")]),
    );
    let mut jar = Jar::default();
    assert_eq!(n_of(&fpm.get("count.php", "", &mut jar)), 1);
    let pidfile = dir.join("holder.pid");
    let port = fpm.port;
    let script = fpm.docroot.join("hold.php");
    let query = format!("seconds=120&pidfile={}", pidfile.display());
    let holder_jar = jar.clone();
    // php-fpm answers the dead worker's request with an error or closes the connection.
    let holder = thread::spawn(move || {
        common::try_fastcgi_get(port, &script, "hold.php", &query, &holder_jar)
    });
    let pid = common::wait_for_pid_file(&pidfile);
    common::kill9_pid(pid);
    let r = fpm.get("count.php", "", &mut jar);
    assert_eq!(n_of(&r), 2, "{}", r.body);
    assert!(!r.body.contains("timed out"), "{}", r.body);
    let _ = holder.join();
}
