//! Durations in the configuration files of the gateway and the agent.
//!
//! A duration is written as humantime text (`"60s"`, `"500ms"`, `"1m30s"`,
//! `"2h"`), or as a bare number in the unit of the field's old name
//! (`upstream_timeout_secs = 60` became `upstream_timeout = "60s"`, and
//! `upstream_timeout = 60` still means 60 seconds). An all-digit string
//! counts as a number too: environment overrides arrive as text.
//!
//! ```ignore
//! #[serde(
//!     alias = "upstream_timeout_secs",
//!     deserialize_with = "protocol::duration::secs",
//!     serialize_with = "protocol::duration::serialize"
//! )]
//! pub upstream_timeout: Duration,
//! ```
//!
//! The old names are listed once more for the configuration loader
//! ([`crate::layered`]), which renames them in each layer (file,
//! environment) so that either spelling in one layer overrides either in
//! another.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;

/// The unit of a bare number.
#[derive(Clone, Copy)]
enum Unit {
    Secs,
    Millis,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Secs => "seconds",
            Unit::Millis => "milliseconds",
        }
    }

    fn of(self, n: u64) -> Duration {
        match self {
            Unit::Secs => Duration::from_secs(n),
            Unit::Millis => Duration::from_millis(n),
        }
    }
}

/// Reads a duration: humantime text, or a bare number of seconds.
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor(Unit::Secs))
}

/// Reads a duration: humantime text, or a bare number of milliseconds.
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor(Unit::Millis))
}

/// Writes a duration as humantime text (`"1m 30s"`, `"500ms"`), which
/// [`secs`] and [`millis`] read back.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    humantime_serde::serialize(d, s)
}

/// A duration as the configuration files write it (`"1m 30s"`), for
/// messages naming a configured value.
pub fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Whether `d` is a whole number of seconds: fields handed to code that
/// counts in seconds refuse anything else.
pub fn whole_secs(d: Duration) -> bool {
    d.subsec_nanos() == 0
}

fn accepted(unit: Unit) -> String {
    format!(
        "write e.g. \"60s\", \"1m30s\", \"500ms\", or a number of {}",
        unit.name()
    )
}

fn parse(text: &str, unit: Unit) -> Result<Duration, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(|n| unit.of(n))
            .map_err(|_| format!("{text:?} is too large a duration"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{text:?} is not a duration ({e}; {})", accepted(unit)))
}

struct DurationVisitor(Unit);

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a duration like \"60s\", \"1m30s\" or \"500ms\", or a number of {}",
            self.0.name()
        )
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
        Ok(self.0.of(n))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
        u64::try_from(n)
            .map(|n| self.0.of(n))
            .map_err(|_| E::custom(format!("{n} is negative: a duration is 0 or more")))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "{n} is not a duration (a bare number must be whole; {})",
            accepted(self.0)
        )))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
        parse(s, self.0).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Deserialize, Serialize)]
    struct T {
        #[serde(
            alias = "timeout_secs",
            deserialize_with = "secs",
            serialize_with = "serialize"
        )]
        timeout: Duration,
        #[serde(
            alias = "budget_ms",
            deserialize_with = "millis",
            serialize_with = "serialize"
        )]
        budget: Duration,
    }

    fn read(json: &str) -> Result<T, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn text_numbers_and_old_names_are_read_in_the_field_unit() {
        let t = read(r#"{"timeout": "1m30s", "budget": "1.5s"}"#).unwrap();
        assert_eq!(t.timeout, Duration::from_secs(90));
        assert_eq!(t.budget, Duration::from_millis(1500));
        let t = read(r#"{"timeout": 60, "budget": 50}"#).unwrap();
        assert_eq!(t.timeout, Duration::from_secs(60));
        assert_eq!(t.budget, Duration::from_millis(50));
        let t = read(r#"{"timeout_secs": 60, "budget_ms": 50}"#).unwrap();
        assert_eq!(
            (t.timeout, t.budget),
            (Duration::from_secs(60), Duration::from_millis(50))
        );
        // What an environment override hands over: digits as text.
        let t = read(r#"{"timeout_secs": "60", "budget": " 50 "}"#).unwrap();
        assert_eq!(
            (t.timeout, t.budget),
            (Duration::from_secs(60), Duration::from_millis(50))
        );
        let t = read(r#"{"timeout": "500ms", "budget": "0"}"#).unwrap();
        assert_eq!(
            (t.timeout, t.budget),
            (Duration::from_millis(500), Duration::ZERO)
        );
    }

    #[test]
    fn bad_values_say_what_is_accepted() {
        let e = read(r#"{"timeout": "60 secondz", "budget": 1}"#).unwrap_err();
        assert!(e.contains("\"60 secondz\" is not a duration"), "{e}");
        assert!(e.contains("\"500ms\", or a number of seconds"), "{e}");
        let e = read(r#"{"timeout": 1, "budget": "fast"}"#).unwrap_err();
        assert!(e.contains("\"fast\" is not a duration"), "{e}");
        assert!(e.contains("a number of milliseconds"), "{e}");
        let e = read(r#"{"timeout": 1.5, "budget": 1}"#).unwrap_err();
        assert!(e.contains("1.5 is not a duration"), "{e}");
        let e = read(r#"{"timeout": -1, "budget": 1}"#).unwrap_err();
        assert!(e.contains("negative"), "{e}");
        let e = read(r#"{"timeout": true, "budget": 1}"#).unwrap_err();
        assert!(e.contains("a duration like"), "{e}");
        let e = read(r#"{"timeout": "", "budget": 1}"#).unwrap_err();
        assert!(e.contains("is not a duration"), "{e}");
    }

    #[test]
    fn both_names_of_one_field_are_refused() {
        let e = read(r#"{"timeout": "1s", "timeout_secs": 1, "budget": 1}"#).unwrap_err();
        assert!(e.contains("duplicate field `timeout`"), "{e}");
    }

    #[test]
    fn written_as_humantime_and_read_back() {
        let t = read(r#"{"timeout": 90, "budget": 1500}"#).unwrap();
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text, r#"{"timeout":"1m 30s","budget":"1s 500ms"}"#);
        let back = read(&text).unwrap();
        assert_eq!((back.timeout, back.budget), (t.timeout, t.budget));
        assert_eq!(show(Duration::from_millis(50)), "50ms");
        assert!(whole_secs(Duration::from_secs(3)));
        assert!(!whole_secs(Duration::from_millis(1500)));
    }
}
