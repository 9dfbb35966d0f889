//! The command line: `scd` (run), `scd run`, `scd check-config`, `scd stats`, `scd drain`, `scd version`.
//! Every setting has a flag; see `settings::SettingsArgs`.

use clap::{Args, Parser, Subcommand};

use crate::settings::SettingsArgs;

#[derive(Debug, Parser)]
#[command(
    name = "scd",
    version,
    about = "SCD: the session clustering daemon for PHP web farms",
    long_about = "SCD: the session clustering daemon for PHP web farms.\n\nWith no subcommand, \
                  scd runs the daemon. With no arguments at all, it starts on built-in defaults \
                  (data and socket in ./scd-data).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (what `scd` alone does).
    Run(SettingsArgs),
    /// Check the settings (file and flags), print them in full as TOML, and exit.
    CheckConfig(SettingsArgs),
    /// Print the statistics of the running daemon (found through the same settings).
    Stats(StatsArgs),
    /// Hand every session of the running daemon to the other nodes, then stop it (found through
    /// the same settings; waits until it has stopped).
    Drain(SettingsArgs),
    /// Print the version and exit.
    Version,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
}
