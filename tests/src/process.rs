//! A child process whose stdout feeds an [`EventLog`] and whose stderr (its
//! logs) goes to a file, shown when a test fails.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::kill;
pub(crate) use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::events::EventLog;

/// A running `gateway serve` or `agent run`, killed when dropped.
pub(crate) struct Proc {
    name: String,
    child: Child,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
    /// The thread feeding stdout to the event log: joined by
    /// [`Proc::kill`], so that its "closed" mark cannot land after a
    /// restarted process's start (and fail the wait for its `ready`).
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `command`; each stdout line goes to `events`, stderr to
    /// `stderr_path` (appended, so restarts keep earlier logs).
    pub(crate) fn spawn(
        name: &str,
        mut command: Command,
        events: &EventLog,
        stderr_path: &Path,
    ) -> Proc {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_path)
            .expect("open stderr log");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Own process group: a Ctrl-C on the demo's terminal reaches the
            // demo only, which then stops its children in order.
            .process_group(0);
        let chosen = command.get_envs().any(|(k, _)| k == "RUST_LOG");
        if !chosen && std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let generation = events.started();
        let stdout = child.stdout.take().expect("piped stdout");
        let log = events.clone();
        let reader = std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    match line {
                        Ok(line) => log.push_line(&line),
                        Err(_) => break,
                    }
                }
                log.closed(generation);
            })
            .expect("spawn stdout reader");
        Proc {
            name: name.to_string(),
            child,
            stderr_path: stderr_path.to_path_buf(),
            exit: None,
            reader: Some(reader),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub(crate) fn signal_terminate(&self) {
        if self.exit.is_none() {
            // The process may have exited on its own already: nothing to stop.
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        }
    }

    /// Sends `signal` (SIGSTOP and SIGCONT freeze and thaw the process).
    pub(crate) fn signal(&self, signal: Signal) {
        if self.exit.is_none() {
            kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal child");
        }
    }

    /// SIGKILL and reap: when this returns, the process's sockets are closed.
    pub(crate) fn kill(&mut self) -> ExitStatus {
        let status = match self.exit {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                self.child.wait().expect("reap killed child")
            }
        };
        self.exit = Some(status);
        // The process is gone, so its stdout reaches its end at once.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status
    }

    /// The exit status if the process has exited.
    pub(crate) fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("poll child");
        }
        self.exit
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{} still running {timeout:?} after it was expected to exit\n{}",
                    self.name,
                    self.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The whole of the process's logs (every run of it, for a restarted
    /// process).
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last lines of the process's logs, for failure messages.
    pub(crate) fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        format!(
            "last {} log lines of {} ({}):\n{}",
            tail.len(),
            self.name,
            self.stderr_path.display(),
            tail.join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.stderr_tail());
        }
    }
}
