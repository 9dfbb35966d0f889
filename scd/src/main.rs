//! `scd`: see `scd --help`, and docs/operations.md.

use std::process::ExitCode;

use clap::Parser;
use scd::cli::{Cli, Command};
use scd::settings::{Settings, SettingsArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(&cli.settings),
        Some(Command::Run(args)) => run(&args),
        Some(Command::CheckConfig(args)) => match Settings::load(&args) {
            Ok((settings, resolved)) => {
                print!("{}", settings.to_toml());
                eprintln!(
                    "settings are valid ({} cores, {} shards)",
                    resolved.cores, resolved.shards
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("scd: {e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Stats(args)) => match scd::stats_cmd::run(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("scd stats: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Drain(args)) => match scd::stats_cmd::drain(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("scd drain: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Version) => {
            println!("scd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

fn run(args: &SettingsArgs) -> ExitCode {
    let (settings, resolved) = match Settings::load(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = scd::logging::init(resolved.log_level, resolved.log_file.as_deref()) {
        eprintln!("scd: cannot open log file: {e}");
        return ExitCode::from(2);
    }
    match scd::daemon::run(settings, resolved) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("cannot start: {e}");
            eprintln!("scd: {e}");
            ExitCode::FAILURE
        }
    }
}
