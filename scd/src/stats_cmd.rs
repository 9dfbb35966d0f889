//! `scd stats`: asks the running daemon for its statistics over the local endpoint (the same
//! settings tell it where: the Unix socket if one is configured, else the loopback TCP address).

use scd_client::{Client, ClientError, Endpoint};

use crate::cli::StatsArgs;
use crate::settings::{Settings, SettingsError};
use crate::stats;

#[derive(Debug, thiserror::Error)]
pub enum StatsCmdError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(
        "cannot reach the daemon at {endpoint}: {source} (is scd running with these settings?)"
    )]
    Connect {
        endpoint: Endpoint,
        source: ClientError,
    },
    #[error("the settings name no local endpoint (local.unix_socket or local.tcp_listen)")]
    NoEndpoint,
    #[error("the daemon did not report its process ID (too old a daemon?)")]
    NoPid,
    #[error("the daemon runs without clustering (no cluster.cluster_key_file): nothing to drain")]
    NotClustered,
    #[error("cannot signal the daemon: {0}")]
    Signal(std::io::Error),
    #[error("the daemon (pid {0}) is still running after the drain time limit")]
    DrainTimeout(u32),
    #[error("the daemon at {endpoint} did not answer: {source}")]
    Request {
        endpoint: Endpoint,
        source: ClientError,
    },
}

/// The local endpoint the settings name.
fn endpoint_of(settings: &crate::settings::SettingsArgs) -> Result<Endpoint, StatsCmdError> {
    let (_, resolved) = Settings::load(settings)?;
    Ok(match (&resolved.unix_socket, resolved.tcp_listen) {
        (Some(path), _) => Endpoint::Unix(path.clone()),
        (None, Some(addr)) => Endpoint::Tcp(addr),
        (None, None) => return Err(StatsCmdError::NoEndpoint),
    })
}

/// `scd drain`: finds the daemon's process through its statistics (`node.pid`), sends it SIGUSR1,
/// and waits until it no longer answers.
pub fn drain(settings: &crate::settings::SettingsArgs) -> Result<String, StatsCmdError> {
    let endpoint = endpoint_of(settings)?;
    let mut client =
        Client::connect_named(&endpoint, "scd drain").map_err(|source| StatsCmdError::Connect {
            endpoint: endpoint.clone(),
            source,
        })?;
    let entries = client.stats().map_err(|source| StatsCmdError::Request {
        endpoint: endpoint.clone(),
        source,
    })?;
    drop(client);
    let pid = entries
        .iter()
        .find(|(n, _)| n == "node.pid")
        .map(|(_, v)| *v as u32)
        .ok_or(StatsCmdError::NoPid)?;
    if entries
        .iter()
        .all(|(n, v)| n != "node.cluster_on" || *v == 0)
    {
        return Err(StatsCmdError::NotClustered);
    }
    crate::sys::signal_drain(pid).map_err(StatsCmdError::Signal)?;
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(crate::constants::DRAIN_SECS_MAX + 60);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && Client::connect_named(&endpoint, "scd drain").is_ok();
        if !alive {
            return Ok(format!(
                "scd (pid {pid}) handed its sessions off and stopped; see its log for the figures\n"
            ));
        }
    }
    Err(StatsCmdError::DrainTimeout(pid))
}

/// The statistics, rendered as the flags ask.
pub fn run(args: &StatsArgs) -> Result<String, StatsCmdError> {
    let (_, resolved) = Settings::load(&args.settings)?;
    let endpoint = match (&resolved.unix_socket, resolved.tcp_listen) {
        (Some(path), _) => Endpoint::Unix(path.clone()),
        (None, Some(addr)) => Endpoint::Tcp(addr),
        // Validation requires one of the two; say so rather than panic if that ever changes.
        (None, None) => return Err(StatsCmdError::NoEndpoint),
    };
    let mut client =
        Client::connect_named(&endpoint, "scd stats").map_err(|source| StatsCmdError::Connect {
            endpoint: endpoint.clone(),
            source,
        })?;
    let entries = client
        .stats()
        .map_err(|source| StatsCmdError::Request { endpoint, source })?;
    Ok(if args.json {
        stats::render_json(&entries)
    } else {
        stats::render_table(&entries)
    })
}
