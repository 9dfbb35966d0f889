<?php
// Session cycles per second from one PHP process: N times session_start() (open, read with the
// lock), one change, session_write_close() (write and unlock, close), on one session of ~3 KiB.
// It measures the module plus scd plus PHP's own session machinery, one request at a time.
//
//   php -n -d extension=target/release/libcluster.so -d session.save_handler=cluster \
//       -d session.save_path=unix:/run/scd/scd.sock -d session.use_cookies=0 \
//       -d session.cache_limiter= php/bench/session_cycles.php 20000
//
// The same with -d session.save_handler=files -d session.save_path=/tmp/sess gives PHP's own
// handler for comparison.
$n = (int)($argv[1] ?? 20000);
if (!session_start()) {
    exit(1);
}
$id = session_id();
$_SESSION['blob'] = random_bytes(3000);
session_write_close();
$t = hrtime(true);
for ($i = 0; $i < $n; $i++) {
    session_id($id);
    session_start();
    $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
    session_write_close();
}
$s = (hrtime(true) - $t) / 1e9;
printf(
    "%s %s: %d cycles in %.2f s = %.0f cycles/s, %.1f us/cycle, n=%d\n",
    ini_get('session.save_handler'),
    ini_get('session.save_path'),
    $n,
    $s,
    $n / $s,
    $s / $n * 1e6,
    $_SESSION['n']
);
