//! scd-bench: the benchmark harness. The same PHP session workload, driven by one load
//! generator, against scd, Redis, memcached and a null server, in one run.
//!
//! # Layout
//!
//! - [`cli`]: the command line. [`run`]: the targets, run one after another, each on a freshly
//!   started server; the report at the end.
//! - [`workload`]: workload settings, the key space (uniform or Zipf), session-ID text.
//! - [`lane`]: one simulated PHP worker: the exact commands each session handler sends.
//! - [`load`]: the load generator (client threads, monoio event loops, connections, histograms).
//! - [`proto`]: the wire protocols the generator speaks: scd (via `scd_wire`), RESP2, memcached
//!   binary.
//! - [`servers`]: starting and stopping scd, Redis, memcached and the null server.
//! - [`cluster`]: `--nodes N` scd processes on 127.0.0.1.. as one cluster.
//! - [`failover`]: `--failover`: kill -9 of a master under load; recovery time, failed requests,
//!   acknowledged writes read back. [`scd_client`]: a blocking scd client for it and for probes.
//! - [`null_server`]: the null server (scd's protocol, no store): the ceiling.
//! - [`disk`]: the durability limit (4 KiB writes with one fdatasync each and with group commit).
//! - [`report`], [`chart`]: the table, JSON, CSV and SVG. [`perf`]: `--perf` profiles.
//! - [`pin`]: `--pin-nodes`: each node and the clients on CPUs of their own (separate hosts
//!   emulated on one machine).
//! - [`sys`]: /proc facts (CPU time, load), free ports. [`constants`]: every default and limit.

pub mod chart;
pub mod cli;
pub mod cluster;
pub mod constants;
pub mod disk;
pub mod failover;
pub mod lane;
pub mod load;
pub mod null_server;
pub mod perf;
pub mod pin;
pub mod proto;
pub mod report;
pub mod run;
pub mod scd_client;
pub mod servers;
pub mod sys;
pub mod workload;
