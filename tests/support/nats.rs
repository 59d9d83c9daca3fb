//! A NATS server of the test's own on a free port, from Debian's
//! `nats-server` package (installed by `scripts/test.sh` when missing), so
//! a test can stop and restart it. Killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    port: u16,
    child: Option<Child>,
    /// A configuration file (`-c`), if the test gave one.
    config: Option<std::path::PathBuf>,
}

fn binary() -> String {
    for candidate in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if std::path::Path::new(candidate).exists() {
            return candidate.to_owned();
        }
    }
    let found = Command::new("sh")
        .args(["-c", "command -v nats-server"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    found.unwrap_or_else(|| {
        panic!(
            "this test starts its own NATS server and needs `nats-server`: \
             install Debian's `nats-server` package (scripts/test.sh does)"
        )
    })
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let port = super::free_port();
        let mut s = NatsServer {
            port,
            child: None,
            config: None,
        };
        s.start_again();
        s
    }

    /// A server started with `config` (nats-server's configuration syntax,
    /// e.g. an `authorization` block) as its configuration file.
    pub fn start_with_config(config: &str) -> NatsServer {
        let port = super::free_port();
        let file = std::env::temp_dir().join(format!("c3-nats-{}-{port}.conf", std::process::id()));
        std::fs::write(&file, config).expect("NATS configuration file");
        let mut s = NatsServer {
            port,
            child: None,
            config: Some(file),
        };
        s.start_again();
        s
    }

    /// The URL with a user and password.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it accepts
    /// connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new(binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (every connection drops, nothing is kept).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
    }
}
