//! A real headless Chromium driven through W3C WebDriver: Debian's
//! `chromedriver` (`$CHROMEDRIVER`, default `/usr/bin/chromedriver`)
//! starting Debian's `chromium` (`$CHROMIUM`, default `/usr/bin/chromium`)
//! with a fresh profile, spoken to with hyper over loopback, one fresh
//! connection per command, every command bounded by [`COMMAND_TIMEOUT`].
//!
//! Every wait polls with a deadline ([`Browser::wait_for`],
//! [`Browser::wait_gone`], [`Browser::wait_text`]) and fails naming the
//! selector, the page's URL and the text of its `#status` element. The
//! driver and every browser process it started are killed when the
//! [`Browser`] is dropped; [`Browser::quit`] closes the session first.
//!
//! ```ignore
//! let browser = Browser::start().await?;
//! browser.goto(&format!("http://{addr}/")).await?;
//! browser.find("#name").await?.send_keys("Ada").await?;
//! browser.press_key(key::TAB).await?;
//! browser.press_key(key::ENTER).await?;
//! let text = browser.wait_text("#out", "Hello", PATIENCE).await?;
//! browser.quit().await?;
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use http::Method;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::body;

/// How long one WebDriver command may take before it fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `chromedriver` may take to say which port it listens on.
pub const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the waits look again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// The W3C key of an element reference in WebDriver JSON (the spec's
/// "web element identifier"; it ends in `cecf`).
pub const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The line `chromedriver` prints once it listens, followed by the port.
const STARTED_ON_PORT: &str = "ChromeDriver was started successfully on port ";

/// What to install when a binary is missing.
const INSTALL_HINT: &str = "install Debian's chromium and chromium-driver: scripts/setup.sh does";

/// WebDriver key codes for [`Browser::press_key`], [`Browser::press_chord`]
/// and [`Element::send_keys`].
pub mod key {
    /// Backspace.
    pub const BACKSPACE: &str = "\u{E003}";
    /// Tab: moves the focus forward (with [`SHIFT`]: backward).
    pub const TAB: &str = "\u{E004}";
    /// Enter: activates the focused button or link, submits a form.
    pub const ENTER: &str = "\u{E007}";
    /// Shift (a modifier for [`super::Browser::press_chord`]).
    pub const SHIFT: &str = "\u{E008}";
    /// Control (a modifier for [`super::Browser::press_chord`]).
    pub const CONTROL: &str = "\u{E009}";
    /// Alt (a modifier for [`super::Browser::press_chord`]).
    pub const ALT: &str = "\u{E00A}";
    /// Escape: closes dialogs and menus.
    pub const ESCAPE: &str = "\u{E00C}";
    /// Space: activates the focused button, toggles a checkbox.
    pub const SPACE: &str = "\u{E00D}";
    /// Page up.
    pub const PAGE_UP: &str = "\u{E00E}";
    /// Page down.
    pub const PAGE_DOWN: &str = "\u{E00F}";
    /// End.
    pub const END: &str = "\u{E010}";
    /// Home.
    pub const HOME: &str = "\u{E011}";
    /// Arrow left.
    pub const ARROW_LEFT: &str = "\u{E012}";
    /// Arrow up.
    pub const ARROW_UP: &str = "\u{E013}";
    /// Arrow right.
    pub const ARROW_RIGHT: &str = "\u{E014}";
    /// Arrow down.
    pub const ARROW_DOWN: &str = "\u{E015}";
    /// Delete.
    pub const DELETE: &str = "\u{E017}";
}

/// An error answer of WebDriver (`{"value":{"error","message"}}`), kept as
/// the source of the `anyhow` error so a test can `downcast_ref` it and
/// look at [`WebDriverError::error`] (`"no such element"`, ...).
#[derive(Debug, Clone)]
pub struct WebDriverError {
    /// The command, as `METHOD /path` below the session.
    pub command: String,
    /// The W3C error code (`"no such element"`, `"stale element reference"`).
    pub error: String,
    /// The first line (at most 300 characters) of the message.
    pub message: String,
}

impl fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WebDriver {}: {}: {}",
            self.command, self.error, self.message
        )
    }
}

impl std::error::Error for WebDriverError {}

/// Whether `err` is a WebDriver error answer with code `code`.
fn is_webdriver(err: &anyhow::Error, code: &str) -> bool {
    err.downcast_ref::<WebDriverError>()
        .is_some_and(|e| e.error == code)
}

/// Whether a wait should look again after `err` (the page changed under
/// it) rather than fail at once (a bad selector, the driver gone).
fn is_transient(err: &anyhow::Error) -> bool {
    is_webdriver(err, "stale element reference")
        || is_webdriver(err, "no such element")
        || is_webdriver(err, "no such shadow root")
}

/// What [`Browser::wait_text`] waits for: a substring (`&str`, `String`) or
/// a predicate (a closure `|text: &str| ...`, the parameter's type spelled
/// out).
pub trait TextMatch {
    /// Whether `text` is what is awaited.
    fn matches(&self, text: &str) -> bool;
    /// What is awaited, for the error on timeout.
    fn describe(&self) -> String;
}

impl TextMatch for &str {
    fn matches(&self, text: &str) -> bool {
        text.contains(*self)
    }
    fn describe(&self) -> String {
        format!("containing {self:?}")
    }
}

impl TextMatch for String {
    fn matches(&self, text: &str) -> bool {
        text.contains(self.as_str())
    }
    fn describe(&self) -> String {
        format!("containing {self:?}")
    }
}

impl<F: Fn(&str) -> bool> TextMatch for F {
    fn matches(&self, text: &str) -> bool {
        self(text)
    }
    fn describe(&self) -> String {
        "satisfying the predicate".to_string()
    }
}

/// The connection to one WebDriver session: cheap to clone, shared by the
/// browser and its elements.
#[derive(Clone, Debug)]
struct Session {
    addr: SocketAddr,
    /// `/session/<id>`, the prefix of every command.
    prefix: Arc<str>,
}

impl Session {
    /// A command below the session (`rel` starts with `/`, or is empty).
    async fn cmd(&self, method: Method, rel: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let path = format!("{}{rel}", self.prefix);
        let command = format!("{method} {}", if rel.is_empty() { "/session" } else { rel });
        request(self.addr, method, &path, body, &command).await
    }

    async fn get(&self, rel: &str) -> anyhow::Result<Value> {
        self.cmd(Method::GET, rel, None).await
    }

    async fn post(&self, rel: &str, body: Value) -> anyhow::Result<Value> {
        self.cmd(Method::POST, rel, Some(body)).await
    }

    fn element(&self, value: &Value) -> Option<Element> {
        let id = value.get(ELEMENT_KEY)?.as_str()?;
        Some(Element {
            session: self.clone(),
            id: id.to_string(),
        })
    }

    fn elements(&self, value: &Value, command: &str) -> anyhow::Result<Vec<Element>> {
        value
            .as_array()
            .ok_or_else(|| anyhow!("{command}: not a list of elements: {value}"))?
            .iter()
            .map(|v| {
                self.element(v)
                    .ok_or_else(|| anyhow!("{command}: not an element: {v}"))
            })
            .collect()
    }

    /// `POST <under>/element` with a CSS selector; a missing element is an
    /// error naming the selector.
    async fn find(&self, under: &str, css: &str) -> anyhow::Result<Element> {
        match self.post(&format!("{under}/element"), by_css(css)).await {
            Ok(value) => self
                .element(&value)
                .ok_or_else(|| anyhow!("find `{css}`: not an element: {value}")),
            Err(e) if is_webdriver(&e, "no such element") => {
                Err(e.context(format!("no element matches `{css}`")))
            }
            Err(e) => Err(e.context(format!("find `{css}`"))),
        }
    }

    async fn find_all(&self, under: &str, css: &str) -> anyhow::Result<Vec<Element>> {
        let value = self
            .post(&format!("{under}/elements"), by_css(css))
            .await
            .with_context(|| format!("find all `{css}`"))?;
        self.elements(&value, &format!("find all `{css}`"))
    }
}

fn by_css(css: &str) -> Value {
    json!({ "using": "css selector", "value": css })
}

/// One HTTP request to `chromedriver`; returns the answer's `value`.
async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
    command: &str,
) -> anyhow::Result<Value> {
    let call = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to chromedriver at {addr}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        let body = match body {
            Some(json) => {
                req = req.header("content-type", "application/json; charset=utf-8");
                body::full(json.to_string().into_bytes())
            }
            None => body::empty(),
        };
        let resp = send
            .send_request(req.body(body)?)
            .await
            .context("sending")?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        Ok::<_, anyhow::Error>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(COMMAND_TIMEOUT, call)
        .await
        .map_err(|_| anyhow!("WebDriver {command}: no answer within {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("WebDriver {command}"))?;
    let mut answer: Value = serde_json::from_slice(&bytes).map_err(|_| {
        anyhow!(
            "WebDriver {command}: {status}, not JSON: {}",
            first_line(&String::from_utf8_lossy(&bytes))
        )
    })?;
    let value = answer["value"].take();
    if !status.is_success() {
        // A script may well return `{"error": ...}`: only a failed status
        // makes it a WebDriver error.
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            // chromedriver repeats the code at the start of the message.
            let message = value["message"].as_str().unwrap_or_default();
            let message = message
                .strip_prefix(error)
                .and_then(|m| m.strip_prefix(": "))
                .unwrap_or(message);
            return Err(WebDriverError {
                command: command.to_string(),
                error: error.to_string(),
                message: first_line(message),
            }
            .into());
        }
        bail!(
            "WebDriver {command}: {status}: {}",
            first_line(&value.to_string())
        );
    }
    Ok(value)
}

/// The first line of `text`, at most 300 characters.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    }
}

/// Percent-encodes a path segment (attribute and property names).
fn segment(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The last lines of a log file, for errors at start.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    if tail.is_empty() {
        "(nothing on its stderr)".to_string()
    } else {
        format!("its stderr ends with:\n{tail}")
    }
}

/// A headless Chromium with a fresh profile, driven by its own
/// `chromedriver`. Dropping it kills the driver and every browser process
/// (they share a process group); [`Browser::quit`] closes the session first.
pub struct Browser {
    session: Session,
    driver: Child,
    /// The driver's process group (the driver's pid), `None` once killed.
    group: Option<Pid>,
    /// The profile (`--user-data-dir`) and the driver's log: removed after
    /// the processes are killed.
    dir: tempfile::TempDir,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("driver", &self.session.addr)
            .field("session", &self.session.prefix)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Browser {
    /// Starts `chromedriver --port=0` (`$CHROMEDRIVER`), reads the port it
    /// prints (for at most [`DRIVER_START_TIMEOUT`]), and opens a session
    /// on a headless `chromium` (`$CHROMIUM`) with a fresh profile and a
    /// 1280x800 window, without background traffic to Google.
    pub async fn start() -> anyhow::Result<Browser> {
        let driver_bin = env_path("CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium_bin = env_path("CHROMIUM", "/usr/bin/chromium");
        if !chromium_bin.is_file() {
            bail!("{} not found: {INSTALL_HINT}", chromium_bin.display());
        }
        let dir = tempfile::Builder::new()
            .prefix("browser-")
            .tempdir()
            .context("temporary folder for the browser profile")?;
        let profile = dir.path().join("profile");
        let log_path = dir.path().join("chromedriver.log");
        let log = std::fs::File::create(&log_path).context("chromedriver's log file")?;

        let mut command = Command::new(&driver_bin);
        command
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group, which the browser processes join: one
            // signal kills them all (killing the driver alone leaves them).
            .process_group(0)
            .kill_on_drop(true);
        let mut driver = command.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!("{} not found: {INSTALL_HINT}", driver_bin.display())
            } else {
                anyhow!("spawn {}: {e}", driver_bin.display())
            }
        })?;
        let group = driver.id().map(|pid| Pid::from_raw(pid as i32));
        let stdout = driver.stdout.take().expect("piped stdout");

        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let port = tokio::time::timeout(DRIVER_START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(STARTED_ON_PORT) {
                    let port: u16 = rest
                        .trim_end_matches('.')
                        .trim()
                        .parse()
                        .with_context(|| format!("port in {line:?}"))?;
                    return Ok(Some(port));
                }
                seen.push(line);
            }
            Ok::<_, anyhow::Error>(None)
        })
        .await;
        let port = match port {
            Ok(Ok(Some(port))) => port,
            failed => {
                let why = match failed {
                    Err(_) => format!("did not say its port within {DRIVER_START_TIMEOUT:?}"),
                    Ok(Err(e)) => format!("reading its stdout: {e:#}"),
                    Ok(Ok(_)) => format!("exited ({:?})", driver.try_wait().ok().flatten()),
                };
                kill_group(group);
                bail!(
                    "{} {why}; its stdout:\n{}\n{}",
                    driver_bin.display(),
                    seen.join("\n"),
                    log_tail(&log_path)
                );
            }
        };
        // Keep reading its stdout so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut browser = Browser {
            session: Session {
                addr,
                prefix: Arc::from(""),
            },
            driver,
            group,
            dir,
        };
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "implicit": 0, "pageLoad": 25_000, "script": 25_000 },
                    "goog:chromeOptions": {
                        "binary": chromium_bin,
                        "args": [
                            "--headless=new",
                            // Running as root needs it.
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--disable-quic",
                            "--no-first-run",
                            // Without these Chromium keeps calling Google.
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--disable-extensions",
                            "--window-size=1280,800",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                },
            },
        });
        let created = request(
            addr,
            Method::POST,
            "/session",
            Some(capabilities),
            "POST /session",
        )
        .await
        .map_err(|e| {
            anyhow!(
                "{}: new session on {}: {e:#}\n{}",
                driver_bin.display(),
                chromium_bin.display(),
                log_tail(&log_path)
            )
        })?;
        let id = created["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("new session: no sessionId in {created}"))?;
        browser.session.prefix = Arc::from(format!("/session/{id}"));
        Ok(browser)
    }

    /// Closes the session (the driver closes the browser), then kills the
    /// driver and whatever is left of its process group.
    pub async fn quit(mut self) -> anyhow::Result<()> {
        let closed = self.session.cmd(Method::DELETE, "", None).await;
        self.kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.driver.wait()).await;
        closed.map(|_| ())
    }

    fn kill(&mut self) {
        kill_group(self.group.take());
        let _ = self.driver.start_kill();
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.session
            .post("/url", json!({ "url": url }))
            .await
            .with_context(|| format!("go to {url}"))?;
        Ok(())
    }

    /// The page's URL.
    pub async fn current_url(&self) -> anyhow::Result<String> {
        let url = self.session.get("/url").await?;
        Ok(url.as_str().unwrap_or_default().to_string())
    }

    /// The page's title.
    pub async fn title(&self) -> anyhow::Result<String> {
        let title = self.session.get("/title").await?;
        Ok(title.as_str().unwrap_or_default().to_string())
    }

    /// Resizes the window (outer size, in CSS pixels).
    pub async fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.session
            .post("/window/rect", json!({ "width": width, "height": height }))
            .await?;
        Ok(())
    }

    /// The first element matching `css`; an error naming the selector when
    /// there is none (it does not wait: see [`Browser::wait_for`]).
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        self.session.find("", css).await
    }

    /// Every element matching `css`, in document order (maybe none).
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        self.session.find_all("", css).await
    }

    /// The focused element (the body when nothing is focused).
    pub async fn active_element(&self) -> anyhow::Result<Element> {
        let value = self.session.get("/element/active").await?;
        self.session
            .element(&value)
            .ok_or_else(|| anyhow!("active element: not an element: {value}"))
    }

    /// Waits (polling every 50 ms) until an element matching `css` exists
    /// and is displayed, and returns the first such element.
    pub async fn wait_for(&self, css: &str, within: Duration) -> anyhow::Result<Element> {
        let deadline = Instant::now() + within;
        loop {
            match self.displayed(css).await {
                Ok(mut shown) if !shown.is_empty() => return Ok(shown.swap_remove(0)),
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                bail!(
                    "no displayed element matches `{css}` within {within:?} {}",
                    self.whereabouts().await
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits (polling every 50 ms) until no displayed element matches
    /// `css` (none exists, or all are hidden).
    pub async fn wait_gone(&self, css: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = String::new();
            match self.displayed(css).await {
                Ok(shown) if shown.is_empty() => return Ok(()),
                Ok(shown) => {
                    if let Ok(text) = shown[0].text().await {
                        seen = format!(" (showing {:?})", first_line(&text));
                    }
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                bail!(
                    "an element matching `{css}` is still displayed after {within:?}{seen} {}",
                    self.whereabouts().await
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits (polling every 50 ms) until an element matching `css` has a
    /// visible text that `what` accepts (a substring, or a closure
    /// `|text: &str| ...`); returns that text.
    pub async fn wait_text(
        &self,
        css: &str,
        what: impl TextMatch,
        within: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        let mut last: Vec<String> = Vec::new();
        loop {
            match self.texts(css).await {
                Ok(texts) => {
                    if let Some(hit) = texts.iter().find(|t| what.matches(t)) {
                        return Ok(hit.clone());
                    }
                    last = texts;
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                let seen = if last.is_empty() {
                    "no element matched".to_string()
                } else {
                    format!("texts seen: {last:?}")
                };
                bail!(
                    "no element matching `{css}` has a text {} within {within:?} ({seen}) {}",
                    what.describe(),
                    self.whereabouts().await
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    async fn displayed(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        let mut shown = Vec::new();
        for element in self.find_all(css).await? {
            if element.is_displayed().await? {
                shown.push(element);
            }
        }
        Ok(shown)
    }

    async fn texts(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let mut texts = Vec::new();
        for element in self.find_all(css).await? {
            texts.push(element.text().await?);
        }
        Ok(texts)
    }

    /// Where the page is, for errors: its URL and the text of `#status`.
    async fn whereabouts(&self) -> String {
        let url = match self.current_url().await {
            Ok(url) => url,
            Err(e) => format!("(URL unknown: {e:#})"),
        };
        let status = match self.find_all("#status").await {
            Ok(found) => match found.first() {
                Some(el) => match el.text().await {
                    Ok(text) => format!("; #status says {:?}", first_line(&text)),
                    Err(_) => String::new(),
                },
                None => String::new(),
            },
            Err(_) => String::new(),
        };
        format!("(at {url}{status})")
    }

    /// Presses and releases `key` (a [`key`] constant or a character) on
    /// whatever has the focus, through the Actions API.
    pub async fn press_key(&self, key: &str) -> anyhow::Result<()> {
        self.press_chord(&[key]).await
    }

    /// Presses `keys` in order and releases them in reverse order
    /// (`&[key::SHIFT, key::TAB]` moves the focus backward).
    pub async fn press_chord(&self, keys: &[&str]) -> anyhow::Result<()> {
        let mut actions: Vec<Value> = keys
            .iter()
            .map(|k| json!({ "type": "keyDown", "value": k }))
            .collect();
        actions.extend(
            keys.iter()
                .rev()
                .map(|k| json!({ "type": "keyUp", "value": k })),
        );
        let body = json!({
            "actions": [{ "type": "key", "id": "keyboard", "actions": actions }]
        });
        self.session
            .post("/actions", body)
            .await
            .with_context(|| format!("press {keys:?}"))?;
        Ok(())
    }

    /// Runs `script` (a function body: `return ...;`, arguments in
    /// `arguments[i]`) in the page and returns what it returned; elements
    /// come back as references ([`Browser::as_element`]).
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.session
            .post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Runs `script` in the page with a callback as its last argument
    /// (`arguments[arguments.length - 1]`) and returns what it was called
    /// with (within the session's 25 s script timeout).
    pub async fn execute_async(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.session
            .post("/execute/async", json!({ "script": script, "args": args }))
            .await
    }

    /// The element a script returned (an element reference), if it is one.
    pub fn as_element(&self, value: &Value) -> Option<Element> {
        self.session.element(value)
    }

    /// Saves a PNG screenshot of the window to `path` (creating its folder).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let value = self.session.get("/screenshot").await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap_or_default())
            .context("screenshot: not base64")?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }

    /// The cookies the browser stores for the page, as WebDriver shows
    /// them (`name`, `value`, `httpOnly`, `sameSite`, `secure`, `path`, ...).
    pub async fn cookies(&self) -> anyhow::Result<Vec<Value>> {
        match self.session.get("/cookie").await? {
            Value::Array(cookies) => Ok(cookies),
            other => bail!("cookies: not a list: {other}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILL to the driver's process group (the driver and the browser).
fn kill_group(group: Option<Pid>) {
    if let Some(group) = group {
        // Already gone: nothing to kill.
        let _ = killpg(group, Signal::SIGKILL);
    }
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// An element of the page (a WebDriver reference: stale once the page
/// replaced it).
#[derive(Clone)]
pub struct Element {
    session: Session,
    id: String,
}

impl fmt::Debug for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Element({})", self.id)
    }
}

/// The same element: WebDriver gives a node the same reference each time
/// it is found (compare [`Browser::active_element`] with a found element).
impl PartialEq for Element {
    fn eq(&self, other: &Element) -> bool {
        self.id == other.id
    }
}

impl Eq for Element {}

impl Element {
    fn path(&self, rel: &str) -> String {
        format!("/element/{}{rel}", self.id)
    }

    /// The reference to pass in the `args` of [`Browser::execute`].
    pub fn to_arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    /// Clicks it (scrolled into view; an error if something covers it).
    pub async fn click(&self) -> anyhow::Result<()> {
        self.session.post(&self.path("/click"), json!({})).await?;
        Ok(())
    }

    /// Types `text` into it (focusing it first); [`key`] constants work.
    pub async fn send_keys(&self, text: &str) -> anyhow::Result<()> {
        self.session
            .post(&self.path("/value"), json!({ "text": text }))
            .await?;
        Ok(())
    }

    /// Empties an input or a textarea.
    pub async fn clear(&self) -> anyhow::Result<()> {
        self.session.post(&self.path("/clear"), json!({})).await?;
        Ok(())
    }

    /// Its visible text (empty when it is hidden).
    pub async fn text(&self) -> anyhow::Result<String> {
        let text = self.session.get(&self.path("/text")).await?;
        Ok(text.as_str().unwrap_or_default().to_string())
    }

    /// The attribute `name` as written in the markup, `None` when absent.
    pub async fn attr(&self, name: &str) -> anyhow::Result<Option<String>> {
        let value = self
            .session
            .get(&self.path(&format!("/attribute/{}", segment(name))))
            .await?;
        Ok(value.as_str().map(str::to_string))
    }

    /// The DOM property `name` (`value`, `checked`, ...), `Null` when absent.
    pub async fn property(&self, name: &str) -> anyhow::Result<Value> {
        self.session
            .get(&self.path(&format!("/property/{}", segment(name))))
            .await
    }

    /// Whether it is displayed (rendered, not hidden by CSS).
    pub async fn is_displayed(&self) -> anyhow::Result<bool> {
        let shown = self.session.get(&self.path("/displayed")).await?;
        Ok(shown.as_bool().unwrap_or(false))
    }

    /// The first element inside it matching `css`; an error naming the
    /// selector when there is none.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        self.session.find(&self.path(""), css).await
    }

    /// Every element inside it matching `css` (maybe none).
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        self.session.find_all(&self.path(""), css).await
    }
}
