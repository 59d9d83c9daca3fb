//! A PostgreSQL cluster of the test's own, which it may stop and restart:
//! initdb in a temporary directory, started on a free port with the local
//! binaries (Debian's `postgresql` package; `initdb` refuses root, so the
//! cluster belongs to the `postgres` user then). Stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::free_port;

pub struct Cluster {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn bindir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    if let Some(b) = found.pop() {
        return b;
    }
    let which = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match which.as_deref().and_then(Path::parent) {
        Some(b) => b.to_owned(),
        None => panic!(
            "this test starts its own PostgreSQL cluster and needs initdb/pg_ctl: \
             install Debian's `postgresql` package (apt-get install postgresql)"
        ),
    }
}

impl Cluster {
    pub fn start(name: &str) -> Cluster {
        Self::start_with(name, |_| {})
    }

    /// A cluster that accepts TLS connections only, with a server
    /// certificate for `localhost` and `127.0.0.1` signed by a CA made for
    /// the test (the `openssl` command). Returns it and the CA's PEM file.
    pub fn start_tls(name: &str) -> (Cluster, PathBuf) {
        let mut ca = PathBuf::new();
        let c = Self::start_with(name, |c| {
            let data = PathBuf::from(c.data());
            let dir = &c.dir;
            let openssl = |args: &[&str]| {
                let out = Command::new("openssl")
                    .args(args)
                    .current_dir(dir)
                    .output()
                    .expect("the openssl command (Debian package openssl)");
                assert!(
                    out.status.success(),
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=c3 test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ]);
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ]);
            std::fs::write(
                dir.join("san.ext"),
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
            )
            .unwrap();
            openssl(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                "server.pem",
            ]);
            for f in ["server.pem", "server.key"] {
                std::fs::copy(dir.join(f), data.join(f)).unwrap();
            }
            let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
            conf.push_str(
                "\nssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n",
            );
            std::fs::write(data.join("postgresql.conf"), conf).unwrap();
            // TLS or nothing over TCP.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
            )
            .unwrap();
            if c.as_postgres {
                let ok = Command::new("chown")
                    .args(["-R", "postgres"])
                    .arg(&data)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "chown the certificates to postgres");
            }
            let _ = Command::new("chmod")
                .arg("600")
                .arg(data.join("server.key"))
                .status();
            ca = dir.join("ca.pem");
        });
        (c, ca)
    }

    /// A cluster with `wal_level = logical` (the relay's slot), replication
    /// slots and walsenders to spare, and a short `wal_sender_timeout` so a
    /// vanished relay's walsender lets go of the slot within seconds.
    pub fn start_logical(name: &str) -> Cluster {
        Self::start_with(name, |c| {
            let conf = PathBuf::from(c.data()).join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str(
                "\nwal_level = logical\nmax_replication_slots = 16\nmax_wal_senders = 16\n\
                 wal_sender_timeout = 5s\nmax_connections = 300\n",
            );
            std::fs::write(&conf, text).unwrap();
        })
    }

    /// [`start_logical`](Self::start_logical), with transaction ids in the
    /// 64-bit epoch `epoch` (`pg_resetwal -e` before the first start): as a
    /// cluster that has used more than `epoch`·2³² transaction ids, or
    /// inherited the count through `pg_upgrade`.
    pub fn start_logical_at_xid_epoch(name: &str, epoch: u32) -> Cluster {
        let c = Self::start_logical(name);
        c.stop();
        c.run("pg_resetwal", &["-e", &epoch.to_string(), "-D", &c.data()]);
        c.start_again();
        c
    }

    /// `start`, with `prepare` run between initdb and the first start.
    fn start_with(name: &str, prepare: impl FnOnce(&Cluster)) -> Cluster {
        let c = Self::fresh(name);
        c.run(
            "initdb",
            &["-D", &c.data(), "-A", "trust", "-U", "postgres"],
        );
        prepare(&c);
        c.first_start()
    }

    /// The first start, on another free port if the chosen one was taken
    /// meanwhile (initdb takes seconds; another test's cluster may have
    /// bound it). Later starts keep the port: clients hold its URL.
    fn first_start(mut self) -> Cluster {
        for _ in 0..5 {
            match self.try_pg_ctl("start", "fast") {
                Ok(()) => return self,
                Err(e) if self.log().contains("could not bind") => {
                    eprintln!("port {} was taken, choosing another: {e}", self.port);
                    self.port = free_port();
                    // So the next try's failure is read on its own.
                    let _ = std::fs::remove_file(self.dir.join("log"));
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free port for the cluster after 5 tries");
    }

    /// A streaming standby of the cluster listening on `primary_port`
    /// (this cluster's port, or a fault proxy's in front of it, so that a
    /// test can cut replication): `pg_basebackup -R`, then started. Its
    /// replication is asynchronous.
    pub fn standby(name: &str, primary_port: u16) -> Cluster {
        let c = Self::fresh(name);
        let port = primary_port.to_string();
        c.run(
            "pg_basebackup",
            &[
                "-D",
                &c.data(),
                "-R",
                "-X",
                "stream",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
            ],
        );
        c.first_start()
    }

    /// Promotes a standby to primary (a new timeline), waiting for it.
    pub fn promote(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-w", "promote"]);
    }

    /// Stops the server at once, with no shutdown checkpoint (a crash that
    /// it does not come back from).
    pub fn stop_immediately(&self) {
        self.pg_ctl_mode("stop", "immediate");
    }

    /// A cluster directory of its own on a free port, owned by the user the
    /// tools run as; nothing in it yet.
    fn fresh(name: &str) -> Cluster {
        let bindir = bindir();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("c3-{name}-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let as_postgres = running_as_root();
        let c = Cluster {
            bindir,
            dir,
            port,
            as_postgres,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&c.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the cluster directory to postgres");
        }
        c
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// A PostgreSQL tool, run as the cluster's owner.
    fn command(&self, tool: &str) -> Command {
        let exe = self.bindir.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        if let Err(e) = self.try_run(tool, args) {
            panic!("{e}");
        }
    }

    /// Runs a tool; a failure names it and carries its output and the tail
    /// of the server's log (why a start failed is only written there).
    fn try_run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .expect("run a PostgreSQL tool");
        if out.status.success() {
            return Ok(());
        }
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        Err(format!(
            "{tool} {args:?} failed: {}{}\nserver log (last lines):\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn pg_ctl(&self, action: &str) {
        self.pg_ctl_mode(action, "fast");
    }

    fn pg_ctl_mode(&self, action: &str, mode: &str) {
        if let Err(e) = self.try_pg_ctl(action, mode) {
            panic!("{e}");
        }
    }

    fn try_pg_ctl(&self, action: &str, mode: &str) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        let data = self.data();
        let mut args = vec!["-D", &data, "-l", &log, "-w", "-m", mode, action];
        if action != "stop" {
            args.extend(["-o", &opts]);
        }
        self.try_run("pg_ctl", &args)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    pub fn start_again(&self) {
        self.pg_ctl("start");
    }

    /// A crash: `pg_ctl stop -m immediate` (no shutdown checkpoint; the
    /// server recovers from WAL when it starts, and empties unlogged
    /// tables), then a start on the same port.
    pub fn crash(&self) {
        self.pg_ctl_mode("stop", "immediate");
        self.pg_ctl("start");
    }

    /// `pg_ctl restart -m fast`: every session is terminated, the server
    /// shuts down and comes back on the same port with the same data.
    pub fn restart(&self) {
        self.pg_ctl("restart");
    }
}

/// Whether this process runs as root (then initdb must run as `postgres`).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
