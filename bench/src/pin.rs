//! `--pin-nodes`: separate hosts emulated on one machine. Each scd node runs on its own set of
//! CPUs (`sched_setaffinity`, inherited across `exec`) with as many cores and shards as CPUs it
//! got, and the load generator's client threads run on a set of their own where the machine has
//! CPUs enough, so that one node's work (the backup applying and flushing copies) does not come
//! out of another node's CPU time (the master's throughput) as it does when every process floats
//! over every CPU.
//!
//! The layout ([`Layout::split`]) comes from the CPUs this harness may run on. With at least one
//! CPU per node plus one for the clients, each gets an equal share of its own. With fewer (two
//! CPUs, the usual test machine), node 1 (the sessions' master, the node whose capacity HA
//! costs) gets its share alone and every other node shares the rest with the clients: on a real
//! farm the other nodes are web nodes whose PHP workers (the clients) run beside their scd too.
//! The HA-off and HA-on runs of one invocation use the same layout.

use std::fmt;

use anyhow::{bail, ensure};

/// CPUs a mask can name: 1,024, as glibc's `cpu_set_t`.
const CPUS_MAX: usize = 1024;
const MASK_WORD_BITS: usize = libc::c_ulong::BITS as usize;
const MASK_WORDS: usize = CPUS_MAX / MASK_WORD_BITS;

/// A set of CPU numbers, ascending, none repeated.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CpuSet(Vec<usize>);

impl CpuSet {
    pub fn new(mut cpus: Vec<usize>) -> anyhow::Result<CpuSet> {
        cpus.sort_unstable();
        cpus.dedup();
        ensure!(!cpus.is_empty(), "an empty CPU set");
        ensure!(
            cpus.iter().all(|&c| c < CPUS_MAX),
            "CPU numbers must be below {CPUS_MAX}: {cpus:?}"
        );
        Ok(CpuSet(cpus))
    }

    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn mask(&self) -> [libc::c_ulong; MASK_WORDS] {
        let mut mask = [0 as libc::c_ulong; MASK_WORDS];
        for &c in &self.0 {
            mask[c / MASK_WORD_BITS] |= 1 << (c % MASK_WORD_BITS);
        }
        mask
    }

    fn from_mask(mask: &[libc::c_ulong; MASK_WORDS]) -> Vec<usize> {
        (0..CPUS_MAX)
            .filter(|&c| mask[c / MASK_WORD_BITS] & (1 << (c % MASK_WORD_BITS)) != 0)
            .collect()
    }
}

/// `0,1` or `2-5,7`, as `taskset -c` writes it.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

/// The CPUs the calling thread may run on.
pub fn allowed() -> anyhow::Result<CpuSet> {
    let mut mask = [0 as libc::c_ulong; MASK_WORDS];
    // SAFETY: the kernel writes at most `size_of_val(&mask)` bytes into `mask`, which lives on
    // this stack frame for the whole call; pid 0 is the calling thread.
    let rc = unsafe {
        libc::sched_getaffinity(
            0,
            std::mem::size_of_val(&mask),
            mask.as_mut_ptr().cast::<libc::cpu_set_t>(),
        )
    };
    if rc != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    CpuSet::new(CpuSet::from_mask(&mask))
}

/// Moves the calling thread onto `set`. Threads and processes it starts afterwards inherit it.
pub fn set_current_thread(set: &CpuSet) -> std::io::Result<()> {
    set_affinity(&set.mask())
}

/// One `sched_setaffinity` of the calling thread to `mask`: a single system call, no
/// allocation and no lock, so it may also run between fork and exec.
fn set_affinity(mask: &[libc::c_ulong; MASK_WORDS]) -> std::io::Result<()> {
    // SAFETY: the kernel reads `size_of_val(mask)` bytes from `mask`, alive for the call; pid 0
    // is the calling thread.
    let rc = unsafe {
        libc::sched_setaffinity(
            0,
            std::mem::size_of_val(mask),
            mask.as_ptr().cast::<libc::cpu_set_t>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes `command`'s process start on `set` (the child sets its own affinity between fork and
/// exec; every thread it starts inherits it).
pub fn pin_command(command: &mut std::process::Command, set: &CpuSet) {
    use std::os::unix::process::CommandExt;
    let mask = set.mask();
    // `mask` is owned by the closure.
    let pin = move || set_affinity(&mask);
    // SAFETY: the closure only makes one system call and builds an io::Error from errno, both
    // async-signal-safe, as `pre_exec` requires.
    unsafe {
        command.pre_exec(pin);
    }
}

/// Where each node and the client threads run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    /// Node 1 first.
    pub nodes: Vec<CpuSet>,
    pub clients: CpuSet,
    /// Whether the clients have CPUs of their own (else they share the last node's).
    pub clients_alone: bool,
}

impl Layout {
    /// Splits `allowed` among `nodes` nodes and the clients (see the module's doc).
    pub fn split(allowed: &CpuSet, nodes: usize) -> anyhow::Result<Layout> {
        let cpus = allowed.cpus();
        ensure!(nodes >= 1, "no node to place");
        ensure!(
            cpus.len() >= 2,
            "--pin-nodes needs at least 2 CPUs to give node 1 a CPU of its own; this harness may \
             run on {} ({allowed})",
            cpus.len()
        );
        let set = |range: &[usize]| CpuSet::new(range.to_vec());
        if cpus.len() > nodes {
            // A share each for every node and the clients; the clients get what is left over.
            let share = cpus.len() / (nodes + 1);
            let nodes_sets = (0..nodes)
                .map(|i| set(&cpus[i * share..(i + 1) * share]))
                .collect::<anyhow::Result<Vec<_>>>()?;
            return Ok(Layout {
                nodes: nodes_sets,
                clients: set(&cpus[nodes * share..])?,
                clients_alone: true,
            });
        }
        // Too few CPUs for every node alone: node 1 gets half (at least one), the other nodes and
        // the clients share the rest.
        let master = (cpus.len() / 2).max(1);
        let rest = set(&cpus[master..])?;
        let mut nodes_sets = vec![set(&cpus[..master])?];
        nodes_sets.extend(std::iter::repeat_n(rest.clone(), nodes - 1));
        Ok(Layout {
            nodes: nodes_sets,
            clients: rest,
            clients_alone: false,
        })
    }

    /// One line for the report: `node 1 on CPU 0; node 2 on CPU 1; clients on CPU 1`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, s)| format!("node {} on CPU {s} ({} cores)", i + 1, s.len()))
            .collect();
        parts.push(format!("clients on CPU {}", self.clients));
        parts.join("; ")
    }
}

/// Flags that give scd as many event loops and store shards as CPUs in `set`, unless `extra`
/// (the user's `--scd-args`) already sets them (scd refuses a flag given twice).
pub fn scd_core_flags(set: &CpuSet, extra: &[String]) -> Vec<String> {
    let mut flags = Vec::new();
    for flag in ["--cores", "--shards"] {
        if !extra
            .iter()
            .any(|e| e == flag || e.starts_with(&format!("{flag}=")))
        {
            flags.push(flag.to_string());
            flags.push(set.len().to_string());
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cpus: &[usize]) -> CpuSet {
        CpuSet::new(cpus.to_vec()).unwrap()
    }

    #[test]
    fn two_cpus_give_the_master_one_and_the_rest_the_other() {
        let l = Layout::split(&set(&[0, 1]), 2).unwrap();
        assert_eq!(l.nodes, vec![set(&[0]), set(&[1])]);
        assert_eq!(l.clients, set(&[1]));
        assert!(!l.clients_alone);
        let l3 = Layout::split(&set(&[0, 1]), 3).unwrap();
        assert_eq!(l3.nodes, vec![set(&[0]), set(&[1]), set(&[1])]);
        assert_eq!(
            l.describe(),
            "node 1 on CPU 0 (1 cores); node 2 on CPU 1 (1 cores); clients on CPU 1"
        );
    }

    #[test]
    fn enough_cpus_give_every_node_and_the_clients_their_own() {
        let l = Layout::split(&set(&(0..8).collect::<Vec<_>>()), 3).unwrap();
        assert_eq!(l.nodes, vec![set(&[0, 1]), set(&[2, 3]), set(&[4, 5])]);
        assert_eq!(l.clients, set(&[6, 7]));
        assert!(l.clients_alone);
        let l = Layout::split(&set(&[2, 3, 5]), 2).unwrap();
        assert_eq!(l.nodes, vec![set(&[2]), set(&[3])]);
        assert_eq!(l.clients, set(&[5]));
        // Every node set is disjoint from the clients' when they are alone.
        for n in &l.nodes {
            assert!(n.cpus().iter().all(|c| !l.clients.cpus().contains(c)));
        }
    }

    #[test]
    fn one_cpu_or_an_empty_set_is_refused() {
        assert!(Layout::split(&set(&[0]), 2).is_err());
        assert!(CpuSet::new(Vec::new()).is_err());
        assert!(CpuSet::new(vec![CPUS_MAX]).is_err());
    }

    #[test]
    fn sets_print_as_taskset_lists_and_survive_a_mask() {
        assert_eq!(set(&[0, 1, 2, 5, 7, 8]).to_string(), "0-2,5,7-8");
        assert_eq!(set(&[3]).to_string(), "3");
        let s = set(&[0, 63, 64, 1023]);
        assert_eq!(CpuSet::from_mask(&s.mask()), s.cpus());
    }

    #[test]
    fn a_thread_moved_onto_one_cpu_reports_that_cpu_alone() {
        let all = allowed().unwrap();
        let last = *all.cpus().last().unwrap();
        std::thread::spawn(move || {
            set_current_thread(&set(&[last])).unwrap();
            assert_eq!(allowed().unwrap(), set(&[last]));
        })
        .join()
        .unwrap();
        // The spawning thread kept its own set.
        assert_eq!(allowed().unwrap(), all);
    }

    #[test]
    fn core_flags_follow_the_set_unless_given() {
        assert_eq!(
            scd_core_flags(&set(&[0, 1]), &[]),
            vec!["--cores", "2", "--shards", "2"]
        );
        assert_eq!(
            scd_core_flags(&set(&[0]), &["--cores".into(), "4".into()]),
            vec!["--shards", "1"]
        );
    }
}
