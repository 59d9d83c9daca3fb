//! Listener nodes in a child process of their own, pinned to the fan-out
//! CPUs (see `placement`): this binary again, with `--listener-child`.
//!
//! The conversation, one line each: the parent passes the
//! [`ListenerSpec`] as an argument; the child answers `ready` once every
//! node is built; the parent writes how many writes the series made; the
//! child waits for its nodes to apply them and answers with what they
//! [`Heard`] as JSON, then stops. Times are [`mono_ns`](crate::coherency::mono_ns),
//! the same clock in both processes.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

use crate::Env;
use crate::coherency::{Heard, ListenerSpec, Listeners};
use crate::placement::Split;

/// The flag that makes this binary a listener child.
pub(crate) const FLAG: &str = "--listener-child";

/// A running child and its pipes.
pub(crate) struct Child {
    process: tokio::process::Child,
    input: ChildStdin,
    output: Lines<BufReader<ChildStdout>>,
}

impl Child {
    /// Starts the child on the fan-out CPUs and waits until its nodes are up.
    pub(crate) async fn start(split: &Split, spec: &ListenerSpec) -> Child {
        Self::start_as(split, FLAG, &serde_json::to_string(spec).expect("spec")).await
    }

    /// Starts this binary with `flag` and `spec` on the fan-out CPUs, and
    /// waits for its `ready` (also the NATS floor's child, see `floor`).
    pub(crate) async fn start_as(split: &Split, flag: &str, spec: &str) -> Child {
        let exe = std::env::current_exe().expect("this executable");
        let mut command = tokio::process::Command::from(split.fanout_command(&exe));
        command
            .arg(flag)
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut process = command.spawn().expect("listener child");
        let input = process.stdin.take().expect("stdin");
        let mut output = BufReader::new(process.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(120), output.next_line()).await;
        match ready {
            Ok(Ok(Some(line))) if line == "ready" => {}
            other => panic!("the listener child did not start: {other:?}"),
        }
        Child {
            process,
            input,
            output,
        }
    }

    /// Tells the child how many writes to wait for, and collects what its
    /// nodes heard.
    pub(crate) async fn finish(&mut self, writes: u64) -> Heard {
        let line = self.answer(&writes.to_string()).await;
        serde_json::from_str(&line).expect("the listener child's report")
    }

    /// Writes `line` to the child, and waits (up to 60 s) for its one-line
    /// answer and (up to 30 s) for it to exit.
    pub(crate) async fn answer(&mut self, line: &str) -> String {
        self.input
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("to the listener child");
        self.input.flush().await.expect("to the listener child");
        let line = tokio::time::timeout(Duration::from_secs(60), self.output.next_line())
            .await
            .expect("the listener child answers within 60 s")
            .expect("from the listener child")
            .expect("the listener child's report");
        let _ = tokio::time::timeout(Duration::from_secs(30), self.process.wait()).await;
        line
    }
}

/// The child's side: `spec` is the JSON argument after [`FLAG`].
pub(crate) fn child_main(spec: &str) {
    let spec: ListenerSpec = serde_json::from_str(spec).expect("listener spec");
    // One thread: the child has its CPUs to itself, and a single-threaded
    // runtime wakes a node's tasks without crossing threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let env = Env {
            url: spec.url.clone(),
            redis: String::new(),
            quick: false,
            series: Duration::ZERO,
        };
        let mut listeners = Listeners::start(&env, &spec).await;
        println!("ready");
        let mut input = BufReader::new(tokio::io::stdin()).lines();
        let writes: u64 = input
            .next_line()
            .await
            .ok()
            .flatten()
            .and_then(|l| l.trim().parse().ok())
            .expect("the number of writes");
        let heard = listeners.finish(writes).await;
        println!("{}", serde_json::to_string(&heard).expect("report"));
    });
}
