//! Where the relay section's processes run: the database side (PostgreSQL,
//! the writer, the relay) on one half of the CPUs, the fan-out side (the
//! NATS server and the listener nodes) on the other.
//!
//! In a fleet the listeners are other machines' processes; on the bench's
//! two cores they would otherwise compete with the writer for the same
//! CPU, and "the writer's commit rate" would measure how much CPU 128
//! subscribers take rather than what the transport costs PostgreSQL. With
//! NOTIFY, the per-listener work stays on the database side — the
//! listening backends are PostgreSQL processes — which is the point the
//! comparison makes.
//!
//! Pinning uses `taskset` (util-linux) on processes of this machine:
//! PostgreSQL's postmaster and its children (new backends inherit it), the
//! process listening on the NATS port, and this process. Without `taskset`,
//! with one CPU, with a server on another machine, or with
//! `C3_BENCH_SPLIT=0`, everything shares the machine (and the report says so).

use std::process::Command;

/// The CPU sets of a split run, as `taskset -c` lists.
#[derive(Debug, Clone)]
pub(crate) struct Split {
    pub(crate) database: String,
    pub(crate) fanout: String,
    all: String,
    pinned: Vec<u32>,
    /// The NATS server's pid, once [`apply`](Self::apply) found it.
    pub(crate) nats: Option<u32>,
}

impl Split {
    /// A split of this machine's CPUs, if it can be made.
    pub(crate) fn plan() -> Result<Split, String> {
        if std::env::var("C3_BENCH_SPLIT").is_ok_and(|v| v.trim() == "0") {
            return Err("C3_BENCH_SPLIT=0".into());
        }
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        if cpus < 2 {
            return Err("one CPU".into());
        }
        if !Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Err("no taskset".into());
        }
        let half = cpus / 2;
        let range = |a: usize, b: usize| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        };
        Ok(Split {
            database: range(0, half - 1),
            fanout: range(half, cpus - 1),
            all: range(0, cpus - 1),
            pinned: Vec::new(),
            nats: None,
        })
    }

    /// Pins this process, PostgreSQL (through one of its backends' pid) and
    /// the NATS server (through its port).
    pub(crate) fn apply(&mut self, backend_pid: u32, nats_port: u16) -> Result<(), String> {
        let postmaster = parent_of(backend_pid)
            .filter(|p| comm(*p).as_deref() == Some("postgres"))
            .ok_or_else(|| "PostgreSQL is not a process of this machine".to_owned())?;
        let nats = listening_on(nats_port)
            .ok_or_else(|| format!("no local process listens on NATS port {nats_port}"))?;
        let mut database = vec![std::process::id(), postmaster];
        database.extend(children_of(postmaster));
        for pid in database {
            self.pin(pid, &self.database.clone())?;
        }
        self.pin(nats, &self.fanout.clone())?;
        self.nats = Some(nats);
        Ok(())
    }

    /// A command that runs on the fan-out CPUs.
    pub(crate) fn fanout_command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(&self.fanout).arg(program);
        c
    }

    fn pin(&mut self, pid: u32, cpus: &str) -> Result<(), String> {
        let out = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .output()
            .map_err(|e| format!("taskset: {e}"))?;
        // A backend that exited meanwhile is no reason to stop.
        if !out.status.success() && std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(format!(
                "taskset {pid}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        self.pinned.push(pid);
        Ok(())
    }

    /// Gives every pinned process (and PostgreSQL's later children) the
    /// whole machine back.
    pub(crate) fn undo(&mut self) {
        let mut pids = std::mem::take(&mut self.pinned);
        let extra: Vec<u32> = pids.iter().flat_map(|p| children_of(*p)).collect();
        pids.extend(extra);
        for pid in pids {
            let _ = Command::new("taskset")
                .args(["-a", "-p", "-c", &self.all, &pid.to_string()])
                .output();
        }
    }
}

impl Drop for Split {
    /// A run that stops early (a panic) leaves nothing pinned.
    fn drop(&mut self) {
        self.undo();
    }
}

/// `/proc/<pid>/stat`'s fields after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time (user and system) a process of this machine has used so far.
pub(crate) fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let f = stat_fields(pid)?;
    // utime and stime, the 14th and 15th fields of the whole line, in
    // clock ticks (100 per second on Linux).
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(std::time::Duration::from_millis(ticks * 10))
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_owned())
}

fn processes() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn children_of(parent: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| parent_of(*p) == Some(parent))
        .collect()
}

/// The process listening on TCP `port` (IPv4 or IPv6), from `/proc/net/tcp*`
/// and the processes' socket descriptors.
fn listening_on(port: u16) -> Option<u32> {
    let want = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, rem_address, st (0A = LISTEN), …, inode.
            if f.len() > 9 && f[1].ends_with(&want) && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    processes().into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|l| inodes.iter().any(|i| l.to_str() == Some(i)))
            })
        })
    })
}
