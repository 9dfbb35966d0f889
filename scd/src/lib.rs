//! The SCD daemon: one per web node, serving the PHP session module over a local endpoint.
//!
//! # Layout
//!
//! - `settings`: the TOML file, the flags, defaults and validation; `cli`: the command line.
//! - `daemon`: the main thread: endpoints, core threads, signals, the two-phase shutdown.
//! - `core`: one thread per core with its own monoio event loop (io_uring or epoll), its shards,
//!   the shard driver (events, expiry, group-commit flush) and its inbox of cross-core requests.
//! - `conn`: client connections: one reader and one writer task each, pipelined, bounded.
//! - `exec`: one request against one engine shard; pending lock waits and durable writes.
//! - `proto`, `answer`: answers and their encoding in the local protocol (`scd_wire`).
//! - `cluster`: the cluster thread: heartbeats, relays, replication, failover, rejoin, drain.
//! - `stats`, `metrics`: statistics from every core; table, JSON, Prometheus (`GET /metrics`).
//! - `stats_cmd`: `scd stats`, a client of the running daemon.
//! - `logging`: a one-line-per-event logger; `notify`: a wake-up flag for one core's tasks;
//!   `sys`: the only `unsafe` (waiting on the engine's completion fd); `constants`: every limit.

pub mod answer;
pub mod cli;
pub mod cluster;
pub mod conn;
pub mod constants;
pub mod core;
pub mod daemon;
pub mod exec;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod proto;
pub mod settings;
pub mod stats;
pub mod stats_cmd;
pub mod sys;
