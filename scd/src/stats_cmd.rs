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
    #[error("the daemon at {endpoint} did not answer: {source}")]
    Request {
        endpoint: Endpoint,
        source: ClientError,
    },
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
