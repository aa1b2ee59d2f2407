//! Why a plugin could not decide. What the caller is then answered is the
//! gateway's to say (its error table, `gateway/src/proxy/outcome.rs`).

use std::time::Duration;

/// Why a plugin could not decide. Each denies the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The plugin trapped (panic, `unreachable`, stack overflow…).
    Trap(String),
    /// The plugin ran past `plugins.call_timeout`.
    Deadline(Duration),
    /// The plugin tried to grow its memory past `plugins.max_memory_bytes`.
    Memory(usize),
    /// Every sandbox slot was in use.
    Busy,
    /// `init` refused the route's configuration in a request's sandbox.
    Init(String),
    /// The plugin answered something the gateway will not apply.
    Invalid(String),
}

impl Failure {
    /// Every [`Failure::kind`].
    pub const KINDS: [&'static str; 6] = ["trap", "deadline", "memory", "busy", "init", "invalid"];

    /// Short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Trap(_) => "trap",
            Failure::Deadline(_) => "deadline",
            Failure::Memory(_) => "memory",
            Failure::Busy => "busy",
            Failure::Init(_) => "init",
            Failure::Invalid(_) => "invalid",
        }
    }
}

impl std::error::Error for Failure {}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Trap(t) => write!(f, "trapped: {t}"),
            Failure::Deadline(d) => write!(f, "ran past its {} ms deadline", d.as_millis()),
            Failure::Memory(m) => write!(f, "tried to grow memory past {m} bytes"),
            Failure::Busy => write!(f, "no free sandbox"),
            Failure::Init(m) => write!(f, "init refused the configuration: {m}"),
            Failure::Invalid(m) => write!(f, "invalid decision: {m}"),
        }
    }
}
