//! The operator's side of a running gateway: its admin API (JSON over HTTP
//! on the admin listener, bearer admin tokens), the lifecycle commands of
//! its CLI (`tunnel rotate-key|delete`, `caller revoke`, `agent list|drain`,
//! `store rekey`, `audit list`), and a request loop that counts every
//! failure while an operator changes things underneath.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::body;
use crate::caller::Caller;
use crate::events::kind;
use crate::gateway::{Gateway, Tunnel};
use crate::{bin_path, PATIENCE};

/// An answer of the admin API.
#[derive(Debug, Clone)]
pub struct ApiReply {
    /// Status code.
    pub status: u16,
    /// Response headers (`WWW-Authenticate`, `Allow`, ...).
    pub headers: HeaderMap,
    /// The body as text.
    pub text: String,
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub json: Value,
}

impl ApiReply {
    /// The `"error"` field of an error answer ("" when there is none).
    pub fn error(&self) -> String {
        self.json["error"].as_str().unwrap_or_default().to_string()
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Panics (showing the answer) unless the status is `status`.
    pub fn expect(self, status: u16, what: &str) -> ApiReply {
        assert_eq!(self.status, status, "{what}: {self:?}");
        self
    }
}

/// A client of the gateway's admin API, presenting `token` (or nothing).
#[derive(Clone, Debug)]
pub struct AdminApi {
    addr: SocketAddr,
    token: Option<String>,
    /// More headers sent with every request (a cookie, a CSRF token).
    headers: Vec<(String, String)>,
}

impl AdminApi {
    /// A client of the admin listener at `addr`.
    pub fn new(addr: SocketAddr, token: Option<&str>) -> AdminApi {
        AdminApi {
            addr,
            token: token.map(str::to_string),
            headers: Vec::new(),
        }
    }

    /// The same client, also sending `name: value` (which replaces the
    /// JSON `Content-Type` when it names that header).
    pub fn with_header(mut self, name: &str, value: &str) -> AdminApi {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> ApiReply {
        self.request(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> ApiReply {
        self.request(Method::POST, path, Some(body.to_string().into_bytes()))
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> ApiReply {
        self.request(Method::DELETE, path, None).await
    }

    /// Any request; `body` is sent as `application/json`.
    pub async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> ApiReply {
        let what = format!("{method} {path}");
        let call = async {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect to the admin listener {}: {e}", self.addr))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let mut req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", self.addr.to_string());
            if let Some(token) = &self.token {
                req = req.header("authorization", format!("Bearer {token}"));
            }
            let typed = self
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
            for (name, value) in &self.headers {
                req = req.header(name.as_str(), value.as_str());
            }
            let body = match body {
                Some(bytes) => {
                    if !typed {
                        req = req.header("content-type", "application/json");
                    }
                    body::full(bytes)
                }
                None => body::empty(),
            };
            let req = req.body(body).map_err(|e| format!("bad request: {e}"))?;
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| format!("sending: {e}"))?;
            let (parts, incoming) = resp.into_parts();
            let bytes = incoming
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            Ok::<_, String>(ApiReply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                json: serde_json::from_str(&text).unwrap_or(Value::Null),
                text,
            })
        };
        tokio::time::timeout(PATIENCE, call)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PATIENCE:?}")))
            .unwrap_or_else(|e| panic!("admin API {what}: {e}"))
    }
}

/// What a CLI command did, success or not.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `gateway A B --config F REST...` and returns whatever happened.
pub async fn try_cli(config: &std::path::Path, args: &[&str]) -> CliOutput {
    let mut command = tokio::process::Command::new(bin_path("gateway"));
    command
        .args(&args[..2.min(args.len())])
        .arg("--config")
        .arg(config)
        .args(args.get(2..).unwrap_or_default())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE, command.output())
        .await
        .unwrap_or_else(|_| panic!("gateway {args:?} did not finish within {PATIENCE:?}"))
        .expect("run gateway CLI");
    CliOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The lifecycle commands and the admin API of a [`Gateway`].
#[allow(async_fn_in_trait)]
pub trait Operator {
    /// Runs a CLI command with `--json` appended and parses what it printed.
    async fn cli_json(&self, args: &[&str]) -> Value;
    /// Runs a CLI command that may fail.
    async fn try_cli(&self, args: &[&str]) -> CliOutput;
    /// `gateway admin-token create --scope SCOPE`: (id, token).
    async fn admin_token_with_id(&self, name: &str, scope: &str) -> (String, String);
    /// `gateway admin-token create --scope SCOPE`: the token.
    async fn admin_token(&self, scope: &str) -> String;
    /// A client of the admin API with `token`.
    fn api(&self, token: &str) -> AdminApi;
    /// A client of the admin API without a token.
    fn anonymous_api(&self) -> AdminApi;
    /// `gateway tunnel rotate-key NAME --overlap OVERLAP --json`: the
    /// tunnel with its new key.
    async fn rotate_key(&self, name: &str, overlap: &str) -> (Tunnel, Value);
    /// `gateway caller create --org ORG [--name N] [--expires E] --json`.
    async fn create_named_caller(&self, org: &str, name: &str, expires: Option<&str>) -> Value;
    /// `gateway agent list --json`.
    async fn agent_list(&self) -> Vec<Value>;
    /// `gateway audit list --json`.
    async fn audit_list(&self) -> Vec<Value>;
    /// Every `{"event":"audit"}` line the gateway printed, all processes.
    fn audit_events(&self) -> Vec<Value>;
    /// The connection id of the agent named `agent`, from its latest
    /// `agent_connected` event.
    fn conn_id(&self, agent: &str) -> u64;
    /// The whole log file of the gateway (every restart) plus its events.
    fn everything_it_wrote(&self) -> String;
    /// The key-encryption key file of the store.
    fn kek_file(&self) -> PathBuf;
}

impl Operator for Gateway {
    async fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all).await;
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("gateway {args:?} --json printed {out:?}: {e}"))
    }

    async fn try_cli(&self, args: &[&str]) -> CliOutput {
        try_cli(self.config_path(), args).await
    }

    async fn admin_token_with_id(&self, name: &str, scope: &str) -> (String, String) {
        let v = self
            .cli_json(&["admin-token", "create", "--name", name, "--scope", scope])
            .await;
        assert_eq!(v["scope"], scope, "admin-token create printed {v}");
        let id = v["id"].as_str().expect("admin token id").to_string();
        let token = v["token"].as_str().expect("admin token").to_string();
        assert!(id.starts_with("adm_"), "admin token id {id}");
        assert!(token.starts_with("at_"), "admin token {v}");
        (id, token)
    }

    async fn admin_token(&self, scope: &str) -> String {
        self.admin_token_with_id(&format!("ops-{scope}"), scope)
            .await
            .1
    }

    fn api(&self, token: &str) -> AdminApi {
        AdminApi::new(self.admin(), Some(token))
    }

    fn anonymous_api(&self) -> AdminApi {
        AdminApi::new(self.admin(), None)
    }

    async fn rotate_key(&self, name: &str, overlap: &str) -> (Tunnel, Value) {
        let v = self
            .cli_json(&["tunnel", "rotate-key", name, "--overlap", overlap])
            .await;
        let tunnel: Tunnel = serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("rotate-key printed {v}: {e}"));
        (tunnel, v)
    }

    async fn create_named_caller(&self, org: &str, name: &str, expires: Option<&str>) -> Value {
        let mut args = vec!["caller", "create", "--org", org, "--name", name];
        if let Some(expires) = expires {
            args.extend(["--expires", expires]);
        }
        let v = self.cli_json(&args).await;
        assert!(
            v["token"].as_str().is_some_and(|t| t.starts_with("ct_")),
            "caller create printed {v}"
        );
        v
    }

    async fn agent_list(&self) -> Vec<Value> {
        let v = self.cli_json(&["agent", "list"]).await;
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("agent list printed {v}: {e}"))
    }

    async fn audit_list(&self) -> Vec<Value> {
        let v = self.cli_json(&["audit", "list", "--limit", "1000"]).await;
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("audit list printed {v}: {e}"))
    }

    fn audit_events(&self) -> Vec<Value> {
        self.events()
            .snapshot()
            .into_iter()
            .filter(|e| kind(e) == "audit")
            .collect()
    }

    fn conn_id(&self, agent: &str) -> u64 {
        self.events()
            .snapshot()
            .iter()
            .rev()
            .find(|e| kind(e) == "agent_connected" && e["agent"] == agent)
            .and_then(|e| e["conn"].as_u64())
            .unwrap_or_else(|| {
                panic!(
                    "no agent_connected event with a conn id for {agent}\n{}",
                    self.events().dump()
                )
            })
    }

    fn everything_it_wrote(&self) -> String {
        let log = self.config_path().with_file_name("gateway.log");
        let mut all = std::fs::read_to_string(&log).unwrap_or_default();
        all.push_str(&self.events().dump());
        all
    }

    fn kek_file(&self) -> PathBuf {
        self.config_path().with_file_name("kek")
    }
}

/// One request of a [`RequestLoop`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was sent.
    pub sent: Instant,
    /// When its answer was complete.
    pub done: Instant,
    /// The status, or why there was no answer.
    pub result: Result<u16, String>,
    /// The echo service that answered (`server`), for 200s.
    pub server: Option<String>,
    /// The request target.
    pub target: String,
}

/// Workers sending requests back to back through the gateway until stopped,
/// recording every outcome.
pub struct RequestLoop {
    stop: Arc<std::sync::atomic::AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl RequestLoop {
    /// `workers` tasks sending `GET {path}?w=..&i=..` to `host`, each
    /// waiting for its answer before sending the next.
    pub fn start(caller: &Caller, host: &str, path: &str, workers: usize) -> RequestLoop {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..workers)
            .map(|w| {
                let (caller, stop, outcomes) = (caller.clone(), stop.clone(), outcomes.clone());
                let (host, path) = (host.to_string(), path.to_string());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let target = format!("{path}?w={w}&i={i}");
                        let sent = Instant::now();
                        let reply = caller
                            .get(&host, &target)
                            .timeout(Duration::from_secs(10))
                            .try_send()
                            .await;
                        let done = Instant::now();
                        let (result, server) = match reply {
                            Ok(r) => {
                                let server = (r.status == 200)
                                    .then(|| {
                                        let text = r.text();
                                        let line = text
                                            .lines()
                                            .find(|l| l.starts_with('{'))
                                            .unwrap_or("")
                                            .to_string();
                                        serde_json::from_str::<Value>(&line)
                                            .ok()
                                            .and_then(|v| v["server"].as_str().map(str::to_string))
                                    })
                                    .flatten();
                                (Ok(r.status.as_u16()), server)
                            }
                            Err(e) => (Err(e), None),
                        };
                        outcomes.lock().unwrap().push(Outcome {
                            sent,
                            done,
                            result,
                            server,
                            target,
                        });
                        i += 1;
                    }
                })
            })
            .collect();
        RequestLoop {
            stop,
            outcomes,
            workers,
        }
    }

    /// A copy of the outcomes so far.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Waits until at least `n` more requests than now have completed.
    pub async fn wait_more(&self, n: usize) {
        let outcomes = &self.outcomes;
        let start = outcomes.lock().unwrap().len();
        crate::eventually(
            &format!("{n} more requests of the loop"),
            PATIENCE,
            || async move {
                let len = outcomes.lock().unwrap().len();
                if len >= start + n {
                    Ok(())
                } else {
                    Err(format!("{} more", len - start))
                }
            },
        )
        .await
    }

    /// Stops the workers and returns every outcome.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in self.workers {
            w.await.expect("request loop worker");
        }
        let outcomes = self.outcomes.lock().unwrap().clone();
        outcomes
    }
}

/// The outcomes that were not a 200, one line each (empty when all were).
pub fn failures(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| o.result != Ok(200))
        .map(|o| format!("{}: {:?}", o.target, o.result))
        .collect()
}

/// An audit entry's fields as one line, for failure messages.
pub fn audit_line(entry: &Value) -> String {
    format!(
        "{} {} {} {} {}",
        entry["actor"], entry["source"], entry["action"], entry["object"], entry["detail"]
    )
}

/// The first entry whose `action` is `action` and whose `object` mentions
/// `object`, or a panic listing them all.
pub fn find_audit<'a>(entries: &'a [Value], action: &str, object: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["action"] == action && e["object"].to_string().contains(object))
        .unwrap_or_else(|| {
            panic!(
                "no audit entry {action} for {object}; entries:\n{}",
                entries
                    .iter()
                    .map(audit_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
}
