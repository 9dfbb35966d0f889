#!/bin/bash
# Round 4: the same runs with each CPU's machine-wide busy share recorded (added after round 3).
cd /work/wt/pinbench
OUT=bench/results/2026-12-02-pinned
LOG=$OUT/loads.txt
T=cluster-wt-noha-direct-unix,cluster-wt-ha-direct-unix,cluster-wt-noha-relayed-unix,cluster-wt-ha-relayed-unix,cluster-dw-noha-direct-unix,cluster-dw-ha-direct-unix,cluster-dw-noha-relayed-unix,cluster-dw-ha-relayed-unix
round=4
for mode in unpinned pinned; do
    flag=""; [ $mode = pinned ] && flag="--pin-nodes"
    echo "$(date -u +%T) bench round $round $mode start load $(cut -d' ' -f1 /proc/loadavg)" >> $LOG
    ./target/release/scd-bench --nodes 2 $flag --no-disk --no-progress --targets $T \
      --out $OUT/bench-r$round-$mode --work-dir /tmp/pinb-work > $OUT/bench-r$round-$mode.log 2>&1; rc=$?
    echo "$(date -u +%T) bench round $round $mode end rc $rc load $(cut -d' ' -f1 /proc/loadavg)" >> $LOG
    rm -rf /tmp/pinb-work
done
echo done4 >> $LOG
