//! A real PgBouncer (Debian's `pgbouncer` package) in transaction mode in
//! front of the tests' PostgreSQL, on a free port; stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

fn binary() -> PathBuf {
    for p in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "this test needs PgBouncer: install Debian's `pgbouncer` package \
         (scripts/test.sh does it when missing)"
    );
}

impl PgBouncer {
    /// Starts PgBouncer with `pool_mode = transaction` and `server_pool`
    /// server connections per database/user, in front of `upstream`
    /// (`host:port`).
    pub fn start(upstream: &str, server_pool: u32) -> PgBouncer {
        let (host, pg_port) = upstream.rsplit_once(':').expect("host:port");
        let port = super::free_port();
        let dir = std::env::temp_dir().join(format!("c3-pgbouncer-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ini = format!(
            "[databases]\n* = host={host} port={pg_port} user=postgres\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = any\npool_mode = transaction\ndefault_pool_size = {server_pool}\n\
             max_client_conn = 500\nignore_startup_parameters = extra_float_digits,options\n\
             logfile = {log}\npidfile = {pid}\n",
            log = dir.join("pgbouncer.log").display(),
            pid = dir.join("pgbouncer.pid").display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        // PgBouncer refuses to run as root.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let mut cmd = if root {
            let _ = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status();
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(binary());
            c
        } else {
            Command::new(binary())
        };
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PgBouncer { port, dir, child }
    }

    /// `db_url` (`postgres://user@host:port/db…`) through this PgBouncer.
    pub fn url(&self, db_url: &str) -> String {
        let at = db_url.rfind('@').map_or(0, |i| i + 1);
        let rest = &db_url[at..];
        let slash = rest.find('/').unwrap_or(rest.len());
        format!("{}127.0.0.1:{}{}", &db_url[..at], self.port, &rest[slash..])
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // runuser passes SIGTERM on to pgbouncer; kill the pid file's too.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
