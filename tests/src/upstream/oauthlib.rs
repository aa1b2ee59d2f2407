//! OAuth 1.0a by an implementation independent of the gateway's `oauth1`
//! plugin: Python's oauthlib, through the scripts in `tests/oauth/`.
//!
//! - [`service`]: the on-prem service an agent forwards to, which verifies
//!   every request's signature again (`tests/oauth/service.py`);
//! - [`sign`]: oauthlib's `Client` signing requests the way an application
//!   link would (`tests/oauth/sign.py`).
//!
//! Both need `python3` with oauthlib, cryptography and PyJWT, which
//! `scripts/setup.sh` installs; without them they panic saying so.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::caller::{Call, Caller};
use crate::{body, PATIENCE};

/// What to do when the Python side is missing.
const SETUP: &str = "python3 with oauthlib, cryptography and pyjwt is needed: run scripts/setup.sh";

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("oauth")
        .join(name)
}

/// The oauthlib service, running; killed when dropped.
pub struct OauthService {
    addr: SocketAddr,
    child: Child,
    /// Held open: the service exits by itself when it closes.
    _stdin: Option<ChildStdin>,
    seen: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

/// Starts `tests/oauth/service.py` on 127.0.0.1 (a free port) and waits,
/// within [`PATIENCE`], until it listens.
///
/// `config` is the `oauth1` plugin's configuration text: the service
/// verifies against the same `public_base_url` and `consumers` (public
/// keys, secrets, token secrets), the same methods and timestamp window.
pub async fn service(config: &str) -> OauthService {
    let mut child = Command::new("python3")
        .arg(script("service.py"))
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start python3 tests/oauth/service.py: {e} ({SETUP})"));
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");

    let stderr = Arc::new(Mutex::new(String::new()));
    let stderr_thread: JoinHandle<()> = {
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                stderr
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };

    // The first line says where it listens; each later line is a request.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (listening, heard) = tokio::sync::oneshot::channel::<String>();
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = listening.send(first);
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    seen.lock().unwrap().push(v["request"].clone());
                }
            }
        });
    }

    let first = match tokio::time::timeout(PATIENCE, heard).await {
        Ok(Ok(line)) => line,
        Ok(Err(_)) => String::new(),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tests/oauth/service.py did not listen within {PATIENCE:?}");
        }
    };
    let addr = serde_json::from_str::<Value>(&first)
        .ok()
        .and_then(|v| v["listening"].as_str().and_then(|a| a.parse().ok()));
    let Some(addr) = addr else {
        let _ = child.kill();
        let status = child.wait().expect("reap service.py");
        let _ = stderr_thread.join();
        panic!(
            "tests/oauth/service.py exited ({status}) before listening, printing {first:?}; \
             {SETUP}\nits stderr:\n{}",
            stderr.lock().unwrap()
        );
    };
    OauthService {
        addr,
        child,
        _stdin: stdin,
        seen,
        stderr,
    }
}

impl OauthService {
    /// The address the agent forwards to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests it has received, as it counts them itself (asked
    /// directly at `/_count`, not through the gateway): a request answered
    /// before this call is counted.
    pub async fn requests(&self) -> u64 {
        let reply = Caller::new(self.addr, None)
            .get("127.0.0.1", "/_count")
            .send()
            .await;
        let count: Value = serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("/_count answered {reply:?}: {e}"));
        count["requests"].as_u64().expect("a request count")
    }

    /// Its answers so far, one per request (`status` added), in order.
    pub fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for OauthService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("requests seen by the oauthlib service:");
            for answer in self.seen() {
                eprintln!("  {answer}");
            }
            let stderr = self.stderr.lock().unwrap();
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "last {} lines of its stderr:\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// A request for oauthlib's `Client` to sign (the fields of
/// `tests/oauth/sign.py --batch`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sign {
    method: String,
    url: String,
    consumer: String,
    rsa_key: Option<String>,
    wrong_rsa_key: bool,
    secret: Option<String>,
    signature_method: Option<String>,
    token: Option<String>,
    token_secret: Option<String>,
    body: Option<String>,
    content_type: Option<String>,
    oauth_in: Option<&'static str>,
    realm: Option<String>,
    timestamp: Option<u64>,
    nonce: Option<String>,
}

impl Sign {
    fn new(method: &str, url: &str, consumer: &str) -> Sign {
        Sign {
            method: method.to_string(),
            url: url.to_string(),
            consumer: consumer.to_string(),
            ..Sign::default()
        }
    }

    /// `method url` (the absolute URL the client knows, query included),
    /// signed RSA-SHA1 with the PEM `private_key`.
    pub fn rsa(method: &str, url: &str, consumer: &str, private_key: &str) -> Sign {
        Sign {
            rsa_key: Some(private_key.to_string()),
            ..Sign::new(method, url, consumer)
        }
    }

    /// Signed RSA-SHA1 with a fresh key pair that nobody configured.
    pub fn rsa_with_a_wrong_key(method: &str, url: &str, consumer: &str) -> Sign {
        Sign {
            wrong_rsa_key: true,
            ..Sign::new(method, url, consumer)
        }
    }

    /// Signed HMAC-SHA1 with the consumer `secret`.
    pub fn hmac(method: &str, url: &str, consumer: &str, secret: &str) -> Sign {
        Sign {
            secret: Some(secret.to_string()),
            ..Sign::new(method, url, consumer)
        }
    }

    /// Another `oauth_signature_method` of the same kind (`HMAC-SHA256`).
    pub fn signature_method(mut self, name: &str) -> Sign {
        self.signature_method = Some(name.to_string());
        self
    }

    /// With `oauth_token` (and its secret, for HMAC).
    pub fn token(mut self, token: &str, secret: &str) -> Sign {
        self.token = Some(token.to_string());
        self.token_secret = Some(secret.to_string());
        self
    }

    /// With this `application/x-www-form-urlencoded` body, whose
    /// parameters are signed.
    pub fn form_body(mut self, body: &str) -> Sign {
        self.body = Some(body.to_string());
        self
    }

    /// With a body of another content type (oauthlib then signs its
    /// SHA-1 as `oauth_body_hash`).
    pub fn body(mut self, content_type: &str, body: &str) -> Sign {
        self.body = Some(body.to_string());
        self.content_type = Some(content_type.to_string());
        self
    }

    /// The OAuth parameters go in the form body instead of the header.
    pub fn oauth_in_body(mut self) -> Sign {
        self.oauth_in = Some("body");
        self
    }

    /// The OAuth parameters go in the query instead of the header.
    pub fn oauth_in_query(mut self) -> Sign {
        self.oauth_in = Some("query");
        self
    }

    /// With `realm` in the Authorization header (never signed).
    pub fn realm(mut self, realm: &str) -> Sign {
        self.realm = Some(realm.to_string());
        self
    }

    /// With this `oauth_timestamp` instead of now.
    pub fn timestamp(mut self, secs: u64) -> Sign {
        self.timestamp = Some(secs);
        self
    }

    /// With this `oauth_nonce` instead of a random one.
    pub fn nonce(mut self, nonce: &str) -> Sign {
        self.nonce = Some(nonce.to_string());
        self
    }
}

/// A request as oauthlib signed it.
#[derive(Clone, Debug, Deserialize)]
pub struct Signed {
    /// The method.
    pub method: String,
    /// The absolute URL that was signed.
    pub uri: String,
    /// Its path and query: the request target to send.
    pub target: String,
    /// The `Authorization: OAuth ...` header, unless the OAuth parameters
    /// went in the body.
    pub authorization: Option<String>,
    /// The body to send, if any.
    pub body: Option<String>,
    /// Its content type.
    pub content_type: Option<String>,
}

impl Signed {
    /// The request, ready to send through `caller` with `Host: host`:
    /// its target, its Authorization header and its body.
    pub fn call(&self, caller: &Caller, host: &str) -> Call {
        let method = http::Method::from_bytes(self.method.as_bytes()).expect("an HTTP method");
        let mut call = caller.request(method, host, &self.target);
        if let Some(authorization) = &self.authorization {
            call = call.header("authorization", authorization);
        }
        if let Some(content_type) = &self.content_type {
            call = call.header("content-type", content_type);
        }
        if let Some(body) = &self.body {
            call = call.body(body::full(body.clone()));
        }
        call
    }

    /// The same signed request sent to another target (path and query).
    pub fn with_target(&self, target: &str) -> Signed {
        Signed {
            target: target.to_string(),
            ..self.clone()
        }
    }

    /// The same signed request with another body.
    pub fn with_body(&self, body: &str) -> Signed {
        Signed {
            body: Some(body.to_string()),
            ..self.clone()
        }
    }
}

/// Signs every request with oauthlib in one `tests/oauth/sign.py --batch`
/// run (Python starts once); the answers are in the same order.
pub async fn sign(requests: &[Sign]) -> Vec<Signed> {
    let mut input = String::new();
    for request in requests {
        input += &serde_json::to_string(request).expect("a request serializes");
        input.push('\n');
    }
    let mut child = tokio::process::Command::new("python3")
        .arg(script("sign.py"))
        .arg("--batch")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start python3 tests/oauth/sign.py: {e} ({SETUP})"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let run = async {
        stdin.write_all(input.as_bytes()).await?;
        drop(stdin);
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .unwrap_or_else(|_| panic!("tests/oauth/sign.py did not finish within {PATIENCE:?}"))
        .expect("run tests/oauth/sign.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/oauth/sign.py failed ({}); {SETUP}\nits stderr:\n{stderr}",
        out.status
    );
    let signed: Vec<Signed> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("sign.py printed {line:?}: {e}\n{stderr}"))
        })
        .collect();
    assert_eq!(signed.len(), requests.len(), "sign.py: {stderr}");
    signed
}
