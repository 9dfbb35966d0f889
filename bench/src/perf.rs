//! `--perf`: where a server's time goes. `perf record -g` samples the server process for the
//! whole of its run (warm-up and measured window); `perf report` then lists its hottest
//! symbols, self time, with call chains folded to the callers that matter.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// A running `perf record`.
pub struct Recording {
    child: Child,
    data: PathBuf,
}

impl Recording {
    /// Starts sampling process `pid` (all its threads) into `dir/perf.data`.
    pub fn start(pid: u32, dir: &Path) -> anyhow::Result<Recording> {
        let data = dir.join("perf.data");
        let child = Command::new("perf")
            .args([
                "record",
                "-q",
                "-F",
                "999",
                "-g",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf (apt-get install linux-perf)")?;
        Ok(Recording { child, data })
    }

    /// Stops sampling (SIGINT, so perf writes its file out) and returns the report text.
    pub fn finish(mut self) -> anyhow::Result<String> {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("could not stop perf record");
        }
        self.child.wait()?;
        // Three views: by binary (kernel, scd, libc), by symbol, and the kernel's share by the
        // user-space caller that entered it (call chains folded to their callers).
        let mut text = String::new();
        for (title, args) in [
            ("by binary", &["--sort", "dso", "-g", "none"][..]),
            (
                "by symbol (self time)",
                &[
                    "--sort",
                    "dso,symbol",
                    "-g",
                    "none",
                    "--percent-limit",
                    "0.5",
                ][..],
            ),
            (
                "hottest symbols with their callers",
                &["--sort", "symbol", "-g", "caller,2", "--percent-limit", "4"][..],
            ),
        ] {
            let out = Command::new("perf")
                .args(["report", "--stdio", "--no-children", "-i"])
                .arg(&self.data)
                .args(args)
                .output()
                .context("running perf report")?;
            if !out.status.success() {
                bail!(
                    "perf report failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            text.push_str(&format!("==== {title} ====\n"));
            text.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| format!("{}\n", l.trim_end().trim_end_matches(['-', ' ']))),
            );
            text.push('\n');
        }
        // perf.data stays in the target's work folder for a closer look (`perf report -i`).
        Ok(text)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Not finished (an error on the way): do not leave perf sampling behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
