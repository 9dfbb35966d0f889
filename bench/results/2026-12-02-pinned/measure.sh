#!/bin/bash
# Alternating pinned / unpinned measurement (scd-bench rounds, then the paired test).
cd /work/wt/pinbench
OUT=bench/results/2026-12-02-pinned
LOG=$OUT/loads.txt
T=cluster-wt-noha-direct-unix,cluster-wt-ha-direct-unix,cluster-wt-noha-relayed-unix,cluster-wt-ha-relayed-unix,cluster-dw-noha-direct-unix,cluster-dw-ha-direct-unix,cluster-dw-noha-relayed-unix,cluster-dw-ha-relayed-unix
paired() {
  round=$1
  if [ $((round % 2)) = 1 ]; then order="pinned unpinned"; else order="unpinned pinned"; fi
  for mode in $order; do
    pin=0; [ $mode = pinned ] && pin=1
    echo "$(date -u +%T) paired round $round $mode start load $(cut -d' ' -f1 /proc/loadavg)" >> $LOG
    SCD_PIN_NODES=$pin cargo test --release -p scd --test cluster_cycle ha_cost -- --ignored --nocapture \
      > $OUT/paired-r$round-$mode.txt 2>&1; rc=$?
    echo "$(date -u +%T) paired round $round $mode end rc $rc load $(cut -d' ' -f1 /proc/loadavg)" >> $LOG
  done
}
paired 1
for round in 1 2 3; do
  if [ $((round % 2)) = 1 ]; then order="pinned unpinned"; else order="unpinned pinned"; fi
  for mode in $order; do
    flag=""; [ $mode = pinned ] && flag="--pin-nodes"
    echo "$(date -u +%T) bench round $round $mode start load $(cut -d' ' -f1 /proc/loadavg)" >> $LOG
    ./target/release/scd-bench --nodes 2 $flag --no-disk --no-progress --targets $T \
      --out $OUT/bench-r$round-$mode --work-dir /tmp/pinb-work > $OUT/bench-r$round-$mode.log 2>&1; rc=$?
    echo "$(date -u +%T) bench round $round $mode end rc $rc load $(cut -d' ' -f1 /proc/loadavg)" >> $LOG
    rm -rf /tmp/pinb-work
  done
done
paired 2
echo done >> $LOG
