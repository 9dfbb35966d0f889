//! The blocking client of what is not load (readiness probes, statistics, the failover drivers
//! and the read-back after them): `scd-client`, connected with a timeout that also bounds every
//! later read and write. The load generator ([`crate::load`]) has its own pipelined event-loop
//! client.

use std::time::Duration;

use anyhow::Context;
pub use scd_client::{Client, OwnedReply as Owned};

use crate::load::Endpoint;

/// Connects to `endpoint` and says Hello; `timeout` bounds the connect and every later call.
pub fn connect(endpoint: &Endpoint, timeout: Duration) -> anyhow::Result<Client> {
    let target = match endpoint {
        Endpoint::Unix(p) => scd_client::Endpoint::Unix(p.clone()),
        Endpoint::Tcp(a) => scd_client::Endpoint::Tcp(*a),
    };
    Client::connect_timeout(&target, "scd-bench", timeout)
        .with_context(|| format!("connecting to {target}"))
}

/// The value of one counter in a Stats answer.
pub fn stat(stats: &[(String, u64)], name: &str) -> Option<u64> {
    stats.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}
