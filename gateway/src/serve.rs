//! `gateway serve`: wires the store, the registry, the public pingora proxy,
//! the agent listener and the readiness announcement into one pingora server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::agent_listener::AgentListener;
use crate::config::{parse_listen, GatewayConfig};
use crate::proxy::TunnelProxy;
use crate::registry::Registry;
use crate::store::Store;
use protocol::events::emit;

/// Holds a port for pingora: bound with `SO_REUSEPORT` but never listening,
/// so a configured port 0 becomes a concrete port before pingora binds it
/// (with the same option) and nobody else can take it in between.
fn reserve_port(addr: SocketAddr) -> std::io::Result<(socket2::Socket, SocketAddr)> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    let local = s
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an inet address"))?;
    Ok((s, local))
}

/// The agent listener and its housekeeping, run on one runtime.
struct TunnelServices {
    agents: AgentListener,
    registry: Arc<Registry>,
    refresh: Duration,
    /// Told when a shutdown begins: the plugin file reloader stops.
    stop_plugin_reloads: tokio::sync::watch::Sender<bool>,
    /// With `[cluster]`: this instance's presence, renewed until shutdown.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

#[async_trait]
impl BackgroundService for TunnelServices {
    async fn start(&self, shutdown: ShutdownWatch) {
        let refresh = async {
            let mut sd = shutdown.clone();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(self.refresh) => self.registry.refresh().await,
                    _ = sd.changed() => break,
                }
            }
        };
        // A rotation's overlap ends without any change to the store:
        // checked every second, so old-key agents go within a second.
        let enforce = async {
            let mut sd = shutdown.clone();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => { self.registry.enforce(); }
                    _ = sd.changed() => break,
                }
            }
        };
        // PostgreSQL: another instance's change (a revoked caller, a
        // rotated key, a deleted tunnel) is notified; the tables are read
        // again at once and its agents judged again.
        let notified = async {
            let mut sd = shutdown.clone();
            loop {
                tokio::select! {
                    _ = self.registry.store().changed() => {
                        self.registry.refresh().await;
                        self.registry.enforce();
                    }
                    _ = sd.changed() => break,
                }
            }
        };
        let presence = async {
            if let Some(c) = &self.cluster {
                c.clone().run(self.registry.clone(), shutdown.clone()).await;
            }
        };
        let stop_reloads = async {
            let mut sd = shutdown.clone();
            let _ = sd.changed().await;
            let _ = self.stop_plugin_reloads.send(true);
        };
        tokio::join!(
            self.agents.start(shutdown.clone()),
            refresh,
            enforce,
            notified,
            presence,
            stop_reloads
        );
    }
}

/// The public proxy and the tunnels on one runtime. Every request crosses
/// from the caller's connection into an agent's HTTP/2 connection and back;
/// when both are driven by the same worker threads a request's wake-ups
/// stay on one thread instead of crossing between two runtimes (a futex
/// wake and a context switch each way).
struct PublicAndTunnels<A> {
    public: pingora_core::services::listening::Service<A>,
    tunnels: TunnelServices,
    threads: usize,
}

#[async_trait]
impl<A> pingora_core::services::Service for PublicAndTunnels<A>
where
    A: pingora_core::apps::ServerApp + Send + Sync + 'static,
{
    async fn start_service(
        &mut self,
        fds: Option<pingora_core::server::ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let public = self
            .public
            .start_service(fds, shutdown.clone(), listeners_per_fd);
        tokio::join!(public, self.tunnels.start(shutdown));
    }

    fn name(&self) -> &str {
        "public"
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        pingora_core::services::Service::listen_addresses(&self.public)
    }
}

/// What `/readyz` reports: up once the public listener accepts
/// connections, and no longer once a graceful shutdown has begun.
#[derive(Default)]
struct Readiness {
    up: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            Err("shutting down".into())
        } else if !self.up.load(Ordering::Acquire) {
            Err("starting".into())
        } else {
            Ok(())
        }
    }
}

/// The admin listener (`/metrics`, `/healthz`, `/readyz`).
struct AdminService {
    listener: Mutex<Option<std::net::TcpListener>>,
    admin: Arc<telemetry::admin::Admin>,
    readiness: Arc<Readiness>,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().expect("lock").take() else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("admin listener: {e}");
                return;
            }
        };
        let serve = self.admin.clone().serve(listener);
        tokio::pin!(serve);
        tokio::select! {
            _ = &mut serve => return,
            _ = shutdown.changed() => self.readiness.draining.store(true, Ordering::Release),
        }
        // Keep answering (readyz now 503) while in-flight requests drain.
        serve.await;
    }
}

/// Announces readiness once the public listener accepts connections, and
/// writes the runtime file through which the CLI reaches the admin API.
struct Ready {
    public: SocketAddr,
    agents: SocketAddr,
    admin: Option<SocketAddr>,
    /// With `[cluster]`: the relay listener and its port's reservation.
    relay: Option<SocketAddr>,
    relay_reservation: Mutex<Option<socket2::Socket>>,
    reservation: Mutex<Option<socket2::Socket>>,
    readiness: Arc<Readiness>,
    /// The store's path and the local CLI credential.
    runtime: (std::path::PathBuf, String),
    /// The SHA-256 of the admin listener's TLS certificate, if it has one.
    admin_pin: Option<String>,
}

#[async_trait]
impl BackgroundService for Ready {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(self.public).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::error!("public listener {} did not come up within 30s", self.public);
                std::process::exit(1);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(relay) = self.relay {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::net::TcpStream::connect(relay).await.is_err() {
                if tokio::time::Instant::now() > deadline {
                    tracing::error!("relay listener {relay} did not come up within 30s");
                    std::process::exit(1);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        drop(self.reservation.lock().expect("lock").take());
        drop(self.relay_reservation.lock().expect("lock").take());
        if let Some(admin) = self.admin {
            let (store, token) = &self.runtime;
            match crate::admin::runtime::write(store, admin, token, self.admin_pin.clone()) {
                // Removed by `serve` once the server stops.
                Ok(guard) => std::mem::forget(guard),
                Err(e) => tracing::warn!(
                    "could not write {}: the CLI will work on the store directly ({e})",
                    crate::admin::runtime::path(store).display()
                ),
            }
        }
        self.readiness.up.store(true, Ordering::Release);
        let admin = self.admin.map(|a| a.to_string());
        tracing::info!(public = %self.public, agents = %self.agents, admin = admin.as_deref().unwrap_or("off"), "gateway ready");
        emit(json!({
            "event": "ready",
            "public": self.public.to_string(),
            "agents": self.agents.to_string(),
            "admin": admin,
            "relay": self.relay.map(|a| a.to_string()),
        }));
    }
}

/// Runs the gateway until SIGTERM (graceful) or SIGINT.
pub fn serve(cfg: GatewayConfig) -> anyhow::Result<()> {
    // The store's pool lives on its own small runtime; pingora's services
    // each have theirs and reach the store through the registry.
    let store_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("store")
        .enable_all()
        .build()?;
    let store = store_rt
        .block_on(Store::open(&cfg.store))
        .with_context(|| format!("opening store {}", cfg.store.describe()))?;
    // Listening starts before the first read: a change between the two is
    // read again, not missed.
    store_rt
        .block_on(store.listen())
        .context("listening for the store's changes")?;
    let registry = Arc::new(Registry::new(store, store_rt.handle().clone()));
    // The tables are read before anything is served: the admin API and
    // `enforce` work on them from the first request.
    store_rt
        .block_on(registry.reread_now())
        .context("reading tunnels and callers from the store")?;
    let local_token = crate::admin::runtime::new_token();

    let agent_tls = crate::tls::agent_server_config(&cfg.agents.tls_cert, &cfg.agents.tls_key)
        .context("agents.tls_cert / agents.tls_key")?;
    let agents_addr = parse_listen("agents.listen", &cfg.agents.listen)?;
    let agents_listener = std::net::TcpListener::bind(agents_addr)
        .with_context(|| format!("binding agents.listen {agents_addr}"))?;
    agents_listener.set_nonblocking(true)?;
    let agents_addr = agents_listener.local_addr()?;

    let admin_tls = telemetry::admin::tls(&cfg.admin)?;
    // What the CLI pins when it reaches the listener over TLS.
    let admin_pin = match &cfg.admin.tls_cert {
        Some(path) => protocol::pem::certs(path)?
            .first()
            .map(|c| hex::encode(Sha256::digest(c.as_ref()))),
        None => None,
    };
    let admin_listener = telemetry::admin::bind(&cfg.admin, crate::config::DEFAULT_ADMIN_LISTEN)?;
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    if let Some(a) = admin_addr.filter(|a| !a.ip().is_loopback() && admin_tls.is_none()) {
        tracing::warn!(
            "admin listener on {a}, not loopback: it speaks plain HTTP, so admin tokens cross \
             the network in the clear; set admin.tls_cert and admin.tls_key, or keep it on a \
             trusted network"
        );
    }
    let readiness = Arc::new(Readiness::default());

    let public_addr = parse_listen("public.listen", &cfg.public.listen)?;
    let (reservation, public_addr) = reserve_port(public_addr)
        .with_context(|| format!("binding public.listen {public_addr}"))?;

    // Whole seconds (checked at load): pingora counts them so.
    let grace = cfg.server.grace_period;
    let conf = ServerConf {
        threads: cfg.server.threads,
        grace_period_seconds: Some(grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(grace.as_secs() + 1),
        max_retries: 3,
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let plugins = crate::plugins::load(&cfg).context("loading policy plugins")?;
    // Routes, chains and per-request limits: one snapshot, swapped by a
    // live reload of the configuration (`crate::reload`).
    let live = crate::live::current(crate::live::Live::new(&cfg, plugins.clone()));
    let watched = live.clone();
    let shown = live.clone();
    // The file reloader stops when a shutdown begins (`TunnelServices`).
    let (stop_plugin_reloads, plugin_reloads_stop) = tokio::sync::watch::channel(false);
    plugins
        .spawn_reloader(move || watched.load().plugins.clone(), plugin_reloads_stop)
        .context("starting the plugin reloader")?;
    let failures = Arc::new(crate::auth_limit::FailureBudget::new(
        cfg.callers.max_failures_per_minute,
    ));
    let mut proxy = TunnelProxy::new(&cfg, registry.clone(), live.clone(), failures.clone());
    // `[cluster]`: the relay listener (its port reserved like the public
    // one's until pingora listens) and this instance's presence.
    let mut relay = None;
    let mut relay_live = None;
    let mut cluster = None;
    if let Some(c) = &cfg.cluster {
        let addr = c.listen_addr()?;
        let (reservation, bound) =
            reserve_port(addr).with_context(|| format!("binding cluster.relay_listen {addr}"))?;
        let advertised = c.advertised(bound)?;
        let member = Arc::new(crate::cluster::Cluster::new(c, advertised)?);
        tracing::info!(instance = %member.instance, relay = %advertised, "cluster member");
        proxy = proxy.with_cluster(member.clone());
        let relay_proxy =
            TunnelProxy::new(&cfg, registry.clone(), live.clone(), failures.clone()).relay_side();
        // The public listener's caps: the per-source one holds before the
        // TLS handshake, so one host on the network cannot take every
        // slot (an instance's pooled connections stay far below it).
        let (service, relay_limits) = crate::public_listener::relay_service(
            &server.configuration,
            relay_proxy,
            &cfg.public,
            &bound.to_string(),
            crate::cluster::relay_server_config(c)?,
        );
        relay = Some((service, reservation, bound));
        relay_live = Some(relay_limits);
        cluster = Some(member);
    }
    let (public, listener_limits) = crate::public_listener::service(
        &server.configuration,
        proxy,
        &cfg.public,
        &public_addr.to_string(),
    )?;
    // On a shared store, reloads are announced to the other instances
    // and theirs heard (see `crate::reload`).
    let instance = cluster
        .as_ref()
        .map_or_else(crate::cluster::new_instance_id, |c| c.instance.clone());
    let _reloader = crate::reload::start(
        crate::reload::Reloader::new(
            cfg.clone(),
            live,
            failures,
            listener_limits.also(relay_live),
        )
        .map(|r| r.shared(instance, registry.clone())),
    )
    .context("starting the configuration reloader")?;
    // The agent connections (TLS, WebSocket and HTTP/2 framing of every
    // tunnel) run on the public proxy's runtime: see `PublicAndTunnels`.
    server.add_service(PublicAndTunnels {
        public,
        threads: cfg.server.threads,
        tunnels: TunnelServices {
            agents: AgentListener::new(
                agents_listener,
                agent_tls,
                registry.clone(),
                cfg.agents.clone(),
                grace,
            ),
            registry: registry.clone(),
            refresh: cfg.store.refresh,
            stop_plugin_reloads,
            cluster,
        },
    });
    let (relay_addr, relay_reservation) = match relay {
        Some((service, reservation, bound)) => {
            server.add_service(service);
            (Some(bound), Some(reservation))
        }
        None => (None, None),
    };
    if let Some(listener) = admin_listener {
        let r = readiness.clone();
        let api_state = Arc::new(crate::admin::api::ApiState {
            registry: registry.clone(),
            store_rt: store_rt.handle().clone(),
            local_token: local_token.clone(),
            failures: crate::auth_limit::FailureBudget::new(cfg.callers.max_failures_per_minute),
            live: shown,
            sessions: Default::default(),
            secure_cookies: admin_tls.is_some(),
        });
        let api: telemetry::admin::Api = Arc::new(move |req, peer| {
            Box::pin(crate::admin::api::handle(api_state.clone(), req, peer))
        });
        server.add_service(background_service(
            "admin",
            AdminService {
                listener: Mutex::new(Some(listener)),
                admin: Arc::new(telemetry::admin::Admin {
                    registry: Arc::new(crate::metrics::registry()),
                    ready: Arc::new(move || r.check()),
                    api: Some(api),
                    tls: admin_tls.clone(),
                }),
                readiness: readiness.clone(),
            },
        ));
    }
    server.add_service(background_service(
        "ready",
        Ready {
            public: public_addr,
            agents: agents_addr,
            admin: admin_addr,
            relay: relay_addr,
            relay_reservation: Mutex::new(relay_reservation),
            reservation: Mutex::new(Some(reservation)),
            readiness,
            runtime: (cfg.store.path.clone(), local_token),
            admin_pin,
        },
    ));

    server.run(pingora_core::server::RunArgs::default());
    let _ = std::fs::remove_file(crate::admin::runtime::path(&cfg.store.path));
    drop(store_rt);
    Ok(())
}
