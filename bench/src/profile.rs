//! The profile mode: system calls per request of each process on a path,
//! counted by `strace -c -f -p PID` attached during one wrk run and divided
//! by the requests wrk counted. (wrk has no request-count option, and a
//! Lua script stopping its threads still leaves it waiting out the
//! duration with the traced processes idle, so the run is timed and the
//! count read from wrk's output.) The number of hops, copies and wake-ups is what makes the
//! tunnel's path long (docs/performance.md), and system calls count them
//! on any machine, where hardware counters (`perf stat`) are often missing
//! in VMs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// One process's system calls over a run, from strace's `-c` summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Syscalls {
    pub total: u64,
    /// Every system call seen and its count, most frequent first.
    pub by_name: Vec<(String, u64)>,
}

/// Reads strace's `-c` summary table:
///
/// ```text
/// % time     seconds  usecs/call     calls    errors syscall
/// ------ ----------- ----------- --------- --------- ----------------
///  79.74    0.284980          91      3123           clock_nanosleep
///   7.38    0.026362          16      1636       462 futex
/// ------ ----------- ----------- --------- --------- ----------------
/// 100.00    0.357376          45      7881       462 total
/// ```
///
/// The errors column is blank when a call never failed, so the count is
/// the fourth field and the name the last. strace writes nothing at all
/// for a process that made no system call while attached (nginx's master
/// waiting in `sigsuspend`): zero calls.
pub fn parse_strace_summary(text: &str) -> anyhow::Result<Syscalls> {
    if text.trim().is_empty() {
        return Ok(Syscalls {
            total: 0,
            by_name: Vec::new(),
        });
    }
    let mut by_name = Vec::new();
    let mut total = None;
    let mut in_table = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("% time") {
            in_table = true;
            continue;
        }
        if !in_table || t.is_empty() || t.starts_with("---") {
            continue;
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        let (Some(calls), Some(name)) = (f.get(3), f.last()) else {
            bail!("unreadable strace summary line {t:?}");
        };
        let calls: u64 = calls
            .parse()
            .with_context(|| format!("no call count in strace summary line {t:?}"))?;
        if *name == "total" {
            total = Some(calls);
        } else {
            by_name.push((name.to_string(), calls));
        }
    }
    let Some(total) = total else {
        bail!("no total in strace summary:\n{text}");
    };
    by_name.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(Syscalls { total, by_name })
}

/// Why strace cannot be used here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    match Command::new("strace").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "strace -V failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("strace not found ({e}); scripts/setup.sh strace")),
    }
}

/// strace attached to one process (all its threads) until [`Tracer::finish`].
pub struct Tracer {
    child: Child,
    out: PathBuf,
    pid: u32,
    /// What strace said on stderr, shown when its summary is missing.
    said: Arc<Mutex<Vec<String>>>,
}

impl Tracer {
    /// Attaches and returns once strace says it is attached, so the run
    /// that follows is counted whole.
    pub fn attach(pid: u32, dir: &std::path::Path) -> anyhow::Result<Tracer> {
        let out = dir.join(format!("strace-{pid}.txt"));
        let mut child = Command::new("strace")
            .args(["-c", "-f", "-o"])
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting strace")?;
        let stderr = child.stderr.take().context("strace stderr")?;
        // strace prints "Process N attached [with M threads]" once every
        // thread is seized; a refusal (no ptrace permission) ends it instead.
        let (tx, rx) = std::sync::mpsc::channel();
        let said = Arc::new(Mutex::new(Vec::new()));
        let log = said.clone();
        std::thread::spawn(move || {
            let mut attached = false;
            // Read to the end so strace never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !attached && line.contains("attached") {
                    attached = true;
                    let _ = tx.send(Ok(()));
                }
                log.lock().unwrap().push(line);
            }
            if !attached {
                let _ = tx.send(Err(log.lock().unwrap().join("\n")));
            }
        });
        let mut tracer = Tracer {
            child,
            out,
            pid,
            said,
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(tracer),
            Ok(Err(said)) => {
                let _ = tracer.child.wait();
                bail!("strace could not attach to {pid}: {said}")
            }
            Err(_) => {
                let _ = tracer.stop();
                bail!("strace did not attach to {pid} within 10 s")
            }
        }
    }

    /// How strace ended: SIGINT makes it detach and write its summary;
    /// one that has not after 10 s is killed.
    fn stop(&mut self) -> String {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        "killed: no summary within 10 s of SIGINT".into()
    }

    /// Detaches (SIGINT makes strace detach and write its summary) and
    /// reads the counts.
    pub fn finish(mut self) -> anyhow::Result<Syscalls> {
        let ended = self.stop();
        if ended.starts_with("killed") {
            bail!("strace of {} {ended}", self.pid);
        }
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading strace's summary for {}", self.pid))?;
        parse_strace_summary(&text).with_context(|| {
            format!(
                "strace of {} ({ended}) said:\n{}",
                self.pid,
                self.said.lock().unwrap().join("\n")
            )
        })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop();
        }
    }
}

/// A path to profile: its name, where wrk sends requests, and each of
/// its processes by name.
pub type Path = (&'static str, crate::Target, Vec<(String, u32)>);

/// Runs wrk through each path for `secs` seconds with strace attached to
/// each of its processes. `Ok(Err(why))` when strace cannot be used here
/// (missing, or not allowed to attach): the profile is skipped with that
/// note; `Err` when the load itself failed.
pub fn run(paths: &[Path], secs: u64) -> anyhow::Result<Result<Vec<Line>, String>> {
    if let Some(why) = unavailable() {
        return Ok(Err(why));
    }
    let dir = tempfile::Builder::new().prefix("bench-strace-").tempdir()?;
    let mut lines = Vec::new();
    for (path, target, procs) in paths {
        eprintln!("  profiling {path} ({} processes)", procs.len());
        let mut tracers = Vec::new();
        for (name, pid) in procs {
            match Tracer::attach(*pid, dir.path()) {
                Ok(t) => tracers.push((name.clone(), t)),
                Err(e) => return Ok(Err(format!("{e:#}"))),
            }
        }
        let out = crate::wrk(target, "/1k", 16, secs, &[])?;
        let requests = crate::parse_requests(&out)?;
        for (process, tracer) in tracers {
            lines.push(Line {
                path,
                process,
                requests,
                syscalls: tracer.finish()?,
            });
        }
    }
    Ok(Ok(lines))
}

/// One process's line of the profile.
#[derive(Debug, Clone)]
pub struct Line {
    pub path: &'static str,
    pub process: String,
    pub requests: f64,
    pub syscalls: Syscalls,
}

impl Line {
    pub fn per_request(&self) -> f64 {
        self.syscalls.total as f64 / self.requests
    }

    /// The five most frequent calls, per request: `recvfrom 3.5, ...`.
    pub fn top5(&self) -> String {
        self.syscalls
            .by_name
            .iter()
            .take(5)
            .map(|(n, c)| format!("{n} {:.2}", *c as f64 / self.requests))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn json(&self) -> serde_json::Value {
        let top: Vec<_> = self
            .syscalls
            .by_name
            .iter()
            .take(5)
            .map(|(n, c)| serde_json::json!({"syscall": n, "per_request": *c as f64 / self.requests}))
            .collect();
        serde_json::json!({
            "path": self.path, "process": self.process, "requests": self.requests,
            "syscalls": self.syscalls.total, "per_request": self.per_request(), "top": top,
        })
    }
}

/// The profile's table; `how` says what load ran.
pub fn table(how: &str, lines: &[Line]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "profile: strace -c -f per process, {how}\n{:<8} {:<15} {:>9}  {}\n",
        "path", "process", "calls/req", "top 5 (calls per request)"
    );
    for l in lines {
        let _ = writeln!(
            out,
            "{:<8} {:<15} {:>9.2}  {}",
            l.path,
            l.process,
            l.per_request(),
            l.top5()
        );
    }
    out
}

#[cfg(test)]
mod checks {
    use super::*;

    const SUMMARY: &str = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 79.74    0.284980          91      3123           clock_nanosleep
 12.88    0.046034          14      3122           getpid
  7.38    0.026362          16      1636       462 futex
  0.00    0.000000           0      3122           recvfrom
------ ----------- ----------- --------- --------- ----------------
100.00    0.357376          45     11003       462 total
";

    #[test]
    fn strace_summary_gives_the_total_and_calls_by_frequency() {
        let s = parse_strace_summary(SUMMARY).unwrap();
        assert_eq!(s.total, 11003);
        assert_eq!(
            s.by_name,
            [
                ("clock_nanosleep".to_string(), 3123),
                ("getpid".to_string(), 3122),
                ("recvfrom".to_string(), 3122),
                ("futex".to_string(), 1636),
            ]
        );
        let line = Line {
            path: "tunnel",
            process: "gateway".into(),
            requests: 1000.0,
            syscalls: s,
        };
        assert_eq!(line.per_request(), 11.003);
        assert!(line.top5().starts_with("clock_nanosleep 3.12, getpid 3.12"));
        assert!(table("wrk", &[line]).contains("gateway"));
    }

    #[test]
    fn an_unreadable_strace_summary_is_an_error_that_shows_it() {
        // Nothing at all is a process that made no call (nginx's master);
        // rows without a total are a failed run, not zero.
        assert_eq!(parse_strace_summary("\n").unwrap().total, 0);
        let e = parse_strace_summary(
            "strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Operation not permitted"), "{e}");
        let broken = SUMMARY.replace("3122           getpid", "lots           getpid");
        assert!(parse_strace_summary(&broken).is_err());
        let quiet = "% time     seconds  usecs/call     calls    errors syscall\n\
                     ------ ----------- ----------- --------- --------- ----------------\n\
                     ------ ----------- ----------- --------- --------- ----------------\n\
                     100.00    0.000000           0         0           total\n";
        assert_eq!(parse_strace_summary(quiet).unwrap().total, 0);
    }
}
