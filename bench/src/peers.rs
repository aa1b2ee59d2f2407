//! The peers measured in the same run and against the same origin as the
//! tunnel: nginx as a reverse proxy (the cost of one plain HTTP hop) and
//! rathole over WebSocket+TLS (the nearest product: a client dialling out
//! to a server over the same kind of transport as our agent).
//!
//! Both run from generated configs in temp folders, on loopback ports
//! picked at start, and are stopped when dropped. nginx comes from the
//! Debian package (`scripts/setup.sh nginx`); rathole is built once with
//! `cargo install` into the bench's own folder (`target/bench-tools`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The rathole release measured. crates.io's newest; its TLS (and so its
/// WebSocket+TLS transport) is native-tls, which is OpenSSL on Linux; the
/// rustls option exists only in unreleased sources.
pub const RATHOLE_VERSION: &str = "0.5.0";
/// The features of rathole's WebSocket+TLS transport (`websocket` brings
/// `tls`), without noise or config hot-reload, which the run does not use.
pub const RATHOLE_FEATURES: &str = "server,client,websocket";
/// How long a peer gets to answer its first request through it.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Runs the project's setup script for what is missing (it installs
/// Debian packages only when their command is absent).
fn setup(what: &[&str]) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup.sh");
    eprintln!("installing {} with {}", what.join(" "), script.display());
    let status = Command::new("bash")
        .arg(&script)
        .args(what)
        .status()
        .context("running scripts/setup.sh")?;
    if !status.success() {
        bail!(
            "could not install {} (scripts/setup.sh); --no-peers skips the peers",
            what.join(" ")
        );
    }
    Ok(())
}

/// nginx's binary: Debian puts it in /usr/sbin, which a user's PATH may
/// not hold.
fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

pub fn nginx_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = find_nginx() {
        return Ok(p);
    }
    setup(&["nginx"])?;
    find_nginx().context("nginx still missing after scripts/setup.sh nginx")
}

/// rathole from the bench's tools folder, built there on first use.
pub fn rathole_binary(tools: &Path) -> anyhow::Result<PathBuf> {
    let bin = tools.join("bin").join("rathole");
    if bin.is_file() {
        return Ok(bin);
    }
    // native-tls builds against OpenSSL's headers.
    setup(&["libssl-dev"])?;
    eprintln!(
        "building rathole {RATHOLE_VERSION} into {} (once, a few minutes)",
        tools.display()
    );
    // Not `--locked`: the release's own lockfile pins `time` 0.3.29, which
    // no longer compiles with rustc 1.80 and later (E0282 in
    // `format_description`), so its dependencies resolve to their newest
    // semver-compatible releases.
    let status = crate::cargo_command()
        .args(["install", "rathole", "--version", RATHOLE_VERSION])
        .args(["--no-default-features", "--features", RATHOLE_FEATURES])
        .arg("--root")
        .arg(tools)
        .status()
        .context("running cargo install rathole")?;
    if !status.success() || !bin.is_file() {
        bail!("cargo install rathole failed; --no-peers skips the peers");
    }
    Ok(bin)
}

/// A loopback port free right now. nginx and rathole cannot be told to
/// bind port 0 and report it, so the port is taken from a listener that
/// is closed at once; another process taking it in between would make the
/// peer fail to start, with its log saying so.
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(l.local_addr()?)
}

/// Quotes a path or string for nginx's and TOML's configs (JSON string
/// escapes are valid in both for what the bench writes: paths and hex).
fn quoted(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("strings serialize")
}

/// A process the bench started, stopped with SIGTERM (then SIGKILL) when
/// dropped. It stays in the bench's process group, so a Ctrl-C on the
/// bench reaches it too.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Daemon> {
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Daemon { name, child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error naming the process and showing its log, if it has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("{} exited ({status}); its log:\n{log}", self.name);
        }
        Ok(())
    }
}

impl Daemon {
    /// SIGTERM, then SIGKILL after 5 s; nothing once it has exited (its
    /// pid may belong to another process by then).
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `GET /1k` through `addr` answers 200.
async fn answers(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(b"GET /1k HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(&head == b"HTTP/1.1 200")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

/// Polls until a request through `addr` succeeds, failing at once if one
/// of `procs` exits and after [`READY_WITHIN`] otherwise.
async fn wait_ready(name: &str, addr: SocketAddr, procs: &mut [&mut Daemon]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if answers(addr).await {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_running()?;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
                .collect();
            bail!(
                "{name} did not answer through {addr} within {READY_WITHIN:?}; logs:\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The processes whose parent is `pid` (nginx's workers).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    // The parent is the second field after the command name.
                    let rest = s.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// nginx's configuration: every path under `prefix`, so it needs no root
/// file and leaves nothing behind.
///
/// - `worker_processes` is given (the bench passes the gateway's proxy
///   threads: one worker per thread the gateway gives its callers).
/// - Upstream keepalive, as our gateway keeps its tunnel connections: a
///   new origin connection per request would measure the origin's accept.
/// - `keepalive_requests` raised from 1,000 on both sides: wrk's
///   connections and the pooled ones would otherwise be closed every
///   1,000 requests, which neither our gateway nor rathole does.
/// - The access log is on and buffered (64 KiB, flushed every second), as
///   the gateway writes an access line per request through a buffered
///   writer.
/// - Bodies stream: `proxy_request_buffering off` (an upload is not
///   spooled to disk first) and `proxy_max_temp_file_size 0` (a download
///   goes through memory buffers, never a temp file).
pub fn nginx_config(
    prefix: &Path,
    listen: SocketAddr,
    origin: SocketAddr,
    workers: usize,
) -> String {
    let p = |name: &str| quoted(prefix.join(name).to_string_lossy());
    format!(
        "# Generated by the bench: nginx in front of the bench's origin.\n\
         worker_processes {workers};\n\
         pid {pid};\n\
         error_log {error} warn;\n\
         worker_rlimit_nofile 65536;\n\
         events {{\n    worker_connections 16384;\n}}\n\
         http {{\n\
         \x20   access_log {access} combined buffer=64k flush=1s;\n\
         \x20   client_body_temp_path {body};\n\
         \x20   proxy_temp_path {proxy};\n\
         \x20   fastcgi_temp_path {fastcgi};\n\
         \x20   uwsgi_temp_path {uwsgi};\n\
         \x20   scgi_temp_path {scgi};\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   upstream origin {{\n\
         \x20       server {origin};\n\
         \x20       keepalive 256;\n\
         \x20       keepalive_requests 1000000;\n\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen {listen};\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://origin;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           client_max_body_size 0;\n\
         \x20           proxy_request_buffering off;\n\
         \x20           proxy_max_temp_file_size 0;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        pid = p("nginx.pid"),
        error = p("error.log"),
        access = p("access.log"),
        body = p("tmp/body"),
        proxy = p("tmp/proxy"),
        fastcgi = p("tmp/fastcgi"),
        uwsgi = p("tmp/uwsgi"),
        scgi = p("tmp/scgi"),
    )
}

/// nginx as a reverse proxy: a master and its workers.
pub struct Nginx {
    pub addr: SocketAddr,
    workers: Vec<u32>,
    master: Daemon,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub async fn start(bin: &Path, origin: SocketAddr, workers: usize) -> anyhow::Result<Nginx> {
        let dir = tempfile::Builder::new().prefix("bench-nginx-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("tmp"))?;
        let addr = free_port()?;
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_config(dir.path(), addr, origin, workers))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            // Before reading its config nginx opens its compiled-in error
            // log (/var/log/nginx); -e keeps that in the folder too.
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"]);
        let mut master = Daemon::spawn("nginx", cmd, dir.path().join("stderr.log"))?;
        wait_ready("nginx", addr, &mut [&mut master]).await?;
        let deadline = Instant::now() + READY_WITHIN;
        let mut found = children_of(master.pid());
        while found.len() < workers {
            master.check_running()?;
            if Instant::now() > deadline {
                bail!("nginx has {} of {workers} workers", found.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            found = children_of(master.pid());
        }
        Ok(Nginx {
            addr,
            workers: found,
            master,
            _dir: dir,
        })
    }

    /// The master and its workers, for CPU and memory.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.master.pid())
            .chain(self.workers.iter().copied())
            .collect()
    }

    /// Each process with a name for the profile.
    pub fn named_pids(&self) -> Vec<(String, u32)> {
        std::iter::once(("nginx master".to_string(), self.master.pid()))
            .chain(
                self.workers
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("nginx worker {i}"), *p)),
            )
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers. A master that had to be
        // killed leaves them running (they would keep the port), so any
        // still there, and still nginx, are killed after it.
        self.master.stop();
        for w in &self.workers {
            let comm = std::fs::read_to_string(format!("/proc/{w}/comm")).unwrap_or_default();
            if comm.starts_with("nginx") {
                let pid = nix::unistd::Pid::from_raw(*w as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// What rathole's two configs are made of.
pub struct RatholeSetup<'a> {
    /// The server's control (and data) channel listener.
    pub control: SocketAddr,
    /// The server-side service port callers connect to.
    pub service: SocketAddr,
    /// Where the client forwards.
    pub origin: SocketAddr,
    pub token: &'a str,
    /// The server's certificate and key (PKCS#12, as rathole's native-tls
    /// transport reads them) and its password.
    pub pkcs12: &'a Path,
    pub pkcs12_password: &'a str,
    /// The CA the client trusts, and the name it checks the server for.
    pub ca: &'a Path,
    pub hostname: &'a str,
}

/// rathole's server and client configs for one service, `origin`, over its
/// WebSocket transport with TLS (rathole's `transport.type = "websocket"`,
/// `websocket.tls = true`, TLS settings under `transport.tls`).
pub fn rathole_configs(s: &RatholeSetup) -> (String, String) {
    let server = format!(
        "[server]\n\
         bind_addr = {control}\n\
         default_token = {token}\n\n\
         [server.transport]\n\
         type = \"websocket\"\n\n\
         [server.transport.tls]\n\
         pkcs12 = {pkcs12}\n\
         pkcs12_password = {password}\n\n\
         [server.transport.websocket]\n\
         tls = true\n\n\
         [server.services.origin]\n\
         bind_addr = {service}\n",
        control = quoted(s.control.to_string()),
        token = quoted(s.token),
        pkcs12 = quoted(s.pkcs12.to_string_lossy()),
        password = quoted(s.pkcs12_password),
        service = quoted(s.service.to_string()),
    );
    let client = format!(
        "[client]\n\
         remote_addr = {control}\n\
         default_token = {token}\n\n\
         [client.transport]\n\
         type = \"websocket\"\n\n\
         [client.transport.tls]\n\
         trusted_root = {ca}\n\
         hostname = {hostname}\n\n\
         [client.transport.websocket]\n\
         tls = true\n\n\
         [client.services.origin]\n\
         local_addr = {origin}\n",
        control = quoted(s.control.to_string()),
        token = quoted(s.token),
        ca = quoted(s.ca.to_string_lossy()),
        hostname = quoted(s.hostname),
        origin = quoted(s.origin.to_string()),
    );
    (server, client)
}

/// rathole over WebSocket+TLS: its server (where callers connect) and its
/// client (next to the origin), both on loopback.
pub struct Rathole {
    /// The server-side service port.
    pub addr: SocketAddr,
    server: Daemon,
    client: Daemon,
    _dir: tempfile::TempDir,
}

impl Rathole {
    pub async fn start(bin: &Path, origin: SocketAddr) -> anyhow::Result<Rathole> {
        let dir = tempfile::Builder::new()
            .prefix("bench-rathole-")
            .tempdir()?;
        // A CA and a certificate for localhost, as the tunnel's own are
        // made, then the PKCS#12 bundle rathole's server reads.
        let pki = tests::Pki::generate_in(&dir.path().join("pki"));
        let pkcs12 = dir.path().join("identity.p12");
        let password = hex::encode(rand::random::<[u8; 16]>());
        let out = Command::new("openssl")
            .args(["pkcs12", "-export", "-out"])
            .arg(&pkcs12)
            .arg("-inkey")
            .arg(&pki.gateway.key)
            .arg("-in")
            .arg(&pki.gateway.cert)
            .arg("-certfile")
            .arg(&pki.ca_file)
            .arg("-passout")
            .arg(format!("pass:{password}"))
            .output()
            .context("running openssl pkcs12 (apt-get install openssl)")?;
        if !out.status.success() {
            bail!(
                "openssl pkcs12 -export failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let token = hex::encode(rand::random::<[u8; 16]>());
        let addr = free_port()?;
        let (server_toml, client_toml) = rathole_configs(&RatholeSetup {
            control: free_port()?,
            service: addr,
            origin,
            token: &token,
            pkcs12: &pkcs12,
            pkcs12_password: &password,
            ca: &pki.ca_file,
            hostname: "localhost",
        });
        let (server_cfg, client_cfg) = (
            dir.path().join("server.toml"),
            dir.path().join("client.toml"),
        );
        std::fs::write(&server_cfg, server_toml)?;
        std::fs::write(&client_cfg, client_toml)?;
        let run = |mode: &str, cfg: &Path| {
            let mut cmd = Command::new(bin);
            // rathole's own default level, whatever the bench was given.
            cmd.arg(mode).arg(cfg).env("RUST_LOG", "info");
            cmd
        };
        let mut server = Daemon::spawn(
            "rathole server",
            run("--server", &server_cfg),
            dir.path().join("server.log"),
        )?;
        let mut client = Daemon::spawn(
            "rathole client",
            run("--client", &client_cfg),
            dir.path().join("client.log"),
        )?;
        // The server binds the service port once the client's control
        // channel is up; the first answer through it proves the whole path.
        wait_ready("rathole", addr, &mut [&mut server, &mut client]).await?;
        Ok(Rathole {
            addr,
            server,
            client,
            _dir: dir,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        vec![self.server.pid(), self.client.pid()]
    }

    pub fn named_pids(&self) -> Vec<(String, u32)> {
        vec![
            ("rathole server".into(), self.server.pid()),
            ("rathole client".into(), self.client.pid()),
        ]
    }

    pub fn server_pid(&self) -> u32 {
        self.server.pid()
    }

    pub fn client_pid(&self) -> u32 {
        self.client.pid()
    }
}

#[cfg(test)]
mod checks {
    use super::*;

    #[test]
    fn nginx_config_keeps_every_path_in_its_folder_and_keeps_the_origin_alive() {
        let prefix = Path::new("/tmp/bench-nginx-x");
        let c = nginx_config(
            prefix,
            "127.0.0.1:8081".parse().unwrap(),
            "127.0.0.1:9000".parse().unwrap(),
            2,
        );
        assert!(c.contains("worker_processes 2;"), "{c}");
        assert!(c.contains("listen 127.0.0.1:8081;"), "{c}");
        assert!(c.contains("server 127.0.0.1:9000;"), "{c}");
        assert!(c.contains("keepalive 256;"), "{c}");
        assert!(c.contains("proxy_set_header Connection \"\";"), "{c}");
        assert!(c.contains("buffer=64k flush=1s"), "{c}");
        // Daemon mode is turned off on the command line, not here.
        assert!(!c.contains("daemon"), "{c}");
        // Every file nginx writes is under the prefix.
        for word in c.split_whitespace() {
            let word = word.trim_end_matches(';').trim_matches('"');
            // (`location /` is a URI, not a file.)
            if word.starts_with('/') && word != "/" {
                assert!(word.starts_with("/tmp/bench-nginx-x/"), "{word} in\n{c}");
            }
        }
        // Braces balance: nginx would refuse the file otherwise.
        assert_eq!(c.matches('{').count(), c.matches('}').count(), "{c}");
    }

    #[test]
    fn rathole_configs_pair_one_service_over_websocket_tls() {
        let s = RatholeSetup {
            control: "127.0.0.1:2333".parse().unwrap(),
            service: "127.0.0.1:2334".parse().unwrap(),
            origin: "127.0.0.1:9000".parse().unwrap(),
            token: "t0k",
            pkcs12: Path::new("/tmp/x/identity.p12"),
            pkcs12_password: "pw",
            ca: Path::new("/tmp/x/pki/ca \"q\".pem"),
            hostname: "localhost",
        };
        let (server, client) = rathole_configs(&s);
        for (c, side) in [(&server, "server"), (&client, "client")] {
            assert!(
                c.contains(&format!("[{side}.transport]\ntype = \"websocket\"")),
                "{c}"
            );
            assert!(
                c.contains(&format!("[{side}.transport.websocket]\ntls = true")),
                "{c}"
            );
            assert!(c.contains(&format!("[{side}.transport.tls]")), "{c}");
            assert!(c.contains(&format!("[{side}.services.origin]")), "{c}");
            assert!(c.contains("default_token = \"t0k\""), "{c}");
        }
        assert!(
            server.contains("bind_addr = \"127.0.0.1:2333\""),
            "{server}"
        );
        assert!(
            server.contains("bind_addr = \"127.0.0.1:2334\""),
            "{server}"
        );
        assert!(
            server.contains("pkcs12 = \"/tmp/x/identity.p12\""),
            "{server}"
        );
        assert!(server.contains("pkcs12_password = \"pw\""), "{server}");
        assert!(
            client.contains("remote_addr = \"127.0.0.1:2333\""),
            "{client}"
        );
        assert!(
            client.contains("local_addr = \"127.0.0.1:9000\""),
            "{client}"
        );
        assert!(client.contains("hostname = \"localhost\""), "{client}");
        // A quote in a path is escaped, not the end of the string.
        assert!(
            client.contains(r#"trusted_root = "/tmp/x/pki/ca \"q\".pem""#),
            "{client}"
        );
        // Neither side carries the other's settings.
        assert!(!client.contains("pkcs12") && !server.contains("trusted_root"));
    }

    fn shell(name: &'static str, script: &str, dir: &Path) -> Daemon {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        Daemon::spawn(name, cmd, dir.join(format!("{name}.log"))).unwrap()
    }

    #[tokio::test]
    async fn a_peer_that_exits_while_starting_is_named_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut peer = shell(
            "fake-peer",
            "echo 'bind() to 127.0.0.1:1 failed' >&2; exit 3",
            dir.path(),
        );
        let nobody = free_port().unwrap();
        let started = Instant::now();
        let e = wait_ready("fake-peer", nobody, &mut [&mut peer])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("fake-peer exited"), "{e}");
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.contains("bind() to 127.0.0.1:1 failed"), "{e}");
        // At once, not at the readiness deadline.
        assert!(started.elapsed() < READY_WITHIN / 2);
    }

    #[tokio::test]
    async fn a_peer_is_ready_once_a_request_through_it_answers_and_is_stopped_when_dropped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let mut peer = shell("fake-peer", "exec sleep 60", dir.path());
        wait_ready("fake-peer", addr, &mut [&mut peer])
            .await
            .unwrap();
        let pid = peer.pid();
        drop(peer);
        // Reaped: nothing left under that pid that is our sleep.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_ne!(comm.trim(), "sleep");
    }

    #[test]
    fn a_free_port_can_be_bound_again() {
        let a = free_port().unwrap();
        assert!(a.ip().is_loopback() && a.port() != 0);
        std::net::TcpListener::bind(a).unwrap();
    }
}
