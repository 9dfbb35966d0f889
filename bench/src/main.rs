//! `scd-bench`: see `scd-bench --help` and docs/benchmarks.md.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use scd_bench::cli::{Cli, Command};
use scd_bench::{null_server, run};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::NullServer(args)) => return null_server::run(args),
        Some(Command::Targets) => {
            for t in run::all_targets() {
                println!("{}", t.name);
            }
            return Ok(());
        }
        Some(Command::Run(args)) => *args,
        None => cli.run,
    };
    // Ctrl-C or SIGTERM: finish the current target, stop its server (in Drop), write nothing more.
    let interrupted = Arc::new(AtomicBool::new(false));
    // A second one exits at once (servers started from a terminal got the same Ctrl-C).
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, interrupted.clone())?;
        signal_hook::flag::register(signal, interrupted.clone())?;
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let out = args.out.clone();
    let plan = run::Plan::from_args(&args)?;
    let report = run::run(plan, command, interrupted)?;
    println!("{}", report.table());
    println!(
        "files: {0}/report.json {0}/report.csv {0}/report.txt {0}/chart.svg",
        out.display()
    );
    Ok(())
}
