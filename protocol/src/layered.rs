//! The configuration loader of the gateway and the agent: a TOML file,
//! then `PREFIX__SECTION__FIELD` environment overrides (the `config`
//! crate, which lower-cases the variables' names), deserialized into the
//! caller's type.
//!
//! Fields that were renamed keep their old names in both layers: each
//! layer has its old names replaced by the new ones before the layers are
//! merged, so `GATEWAY__PUBLIC__UPSTREAM_TIMEOUT_SECS=90` overrides
//! `upstream_timeout = "60s"` in the file, and `..._UPSTREAM_TIMEOUT=90s`
//! overrides `upstream_timeout_secs = 60`. One layer setting both names of
//! one field is refused, naming both. (The types carry the old names as
//! serde aliases too, for text read without this loader.)

use std::path::Path;

use config::{Config, ConfigError, Environment, File, FileFormat, Map, Source, Value, ValueKind};
use serde::de::DeserializeOwned;

/// Renamed fields by section: `(section, &[(old name, new name)])`.
pub type Renamed<'a> = &'a [(&'a str, &'a [(&'a str, &'a str)])];

/// Loads `path` (TOML), applies the `<env_prefix>__SECTION__FIELD`
/// environment variables over it, and deserializes the result. Old field
/// names in `renamed` are read as their new names, in either layer.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    env_prefix: &str,
    renamed: Renamed,
) -> Result<T, ConfigError> {
    load_with(path, environment(env_prefix), env_prefix, renamed)
}

fn environment(prefix: &str) -> Environment {
    Environment::with_prefix(prefix)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
}

fn load_with<T: DeserializeOwned>(
    path: &Path,
    env: Environment,
    env_prefix: &str,
    renamed: Renamed,
) -> Result<T, ConfigError> {
    let file = File::from(path).format(FileFormat::Toml);
    let file = Layer::of(&file, renamed, |section, old, new| {
        format!(
            "`{section}.{old}` and `{section}.{new}` are both set in {}",
            path.display()
        )
    })?;
    let env = Layer::of(&env, renamed, |section, old, new| {
        let var = |field: &str| format!("{env_prefix}__{section}__{field}").to_uppercase();
        format!(
            "`{section}.{old}` and `{section}.{new}` are both set in the environment ({} and {})",
            var(old),
            var(new)
        )
    })?;
    Config::builder()
        .add_source(file)
        .add_source(env)
        .build()?
        .try_deserialize()
        .map_err(key_first)
}

/// `public.upstream_timeout: "soon" is not a duration (…)` rather than
/// the `config` crate's `… for key `public.upstream_timeout``.
fn key_first(e: ConfigError) -> ConfigError {
    match e {
        ConfigError::At {
            error,
            key: Some(key),
            ..
        } if matches!(*error, ConfigError::Message(_)) => {
            ConfigError::Message(format!("{key}: {error}"))
        }
        e => e,
    }
}

/// One layer's settings, old names renamed.
#[derive(Clone, Debug)]
struct Layer(Map<String, Value>);

impl Layer {
    fn of(
        source: &dyn Source,
        renamed: Renamed,
        both: impl Fn(&str, &str, &str) -> String,
    ) -> Result<Layer, ConfigError> {
        let mut root: Value = Map::<String, Value>::new().into();
        source.collect_to(&mut root)?;
        let ValueKind::Table(mut table) = root.kind else {
            return Ok(Layer(Map::new()));
        };
        for (section, fields) in renamed {
            let Some(Value {
                kind: ValueKind::Table(t),
                ..
            }) = table.get_mut(*section)
            else {
                continue;
            };
            for (old, new) in fields.iter() {
                let Some(value) = t.remove(*old) else {
                    continue;
                };
                if t.contains_key(*new) {
                    return Err(ConfigError::Message(format!(
                        "{}: they are one setting (`{old}` is its old name); keep only `{new}`",
                        both(section, old, new)
                    )));
                }
                t.insert((*new).to_string(), value);
            }
        }
        Ok(Layer(table))
    }
}

impl Source for Layer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, ConfigError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        public: Public,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Public {
        #[serde(
            alias = "upstream_timeout_secs",
            deserialize_with = "crate::duration::secs"
        )]
        upstream_timeout: Duration,
        #[serde(default)]
        listen: String,
    }

    const RENAMED: Renamed = &[("public", &[("upstream_timeout_secs", "upstream_timeout")])];

    fn load(file: &str, env: &[(&str, &str)]) -> Result<Cfg, String> {
        let dir = std::env::temp_dir().join(format!("layered-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, file).unwrap();
        let vars = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = load_with(&path, environment("GW").source(Some(vars)), "GW", RENAMED);
        std::fs::remove_dir_all(&dir).unwrap();
        r.map_err(|e| e.to_string())
    }

    fn timeout(file: &str, env: &[(&str, &str)]) -> Duration {
        load(file, env).unwrap().public.upstream_timeout
    }

    #[test]
    fn either_name_in_either_layer_and_the_environment_wins() {
        let new = "[public]\nupstream_timeout = \"1m\"\n";
        let old = "[public]\nupstream_timeout_secs = 60\n";
        assert_eq!(timeout(new, &[]), Duration::from_secs(60));
        assert_eq!(timeout(old, &[]), Duration::from_secs(60));
        for file in [new, old] {
            for var in [
                "GW__PUBLIC__UPSTREAM_TIMEOUT_SECS",
                "GW__PUBLIC__UPSTREAM_TIMEOUT",
            ] {
                assert_eq!(timeout(file, &[(var, "90")]), Duration::from_secs(90));
            }
            let t = timeout(file, &[("GW__PUBLIC__UPSTREAM_TIMEOUT", "1500ms")]);
            assert_eq!(t, Duration::from_millis(1500));
        }
        // Other fields of the section are kept.
        let c = load(
            "[public]\nlisten = \"x\"\nupstream_timeout_secs = 5\n",
            &[("GW__PUBLIC__UPSTREAM_TIMEOUT", "7s")],
        )
        .unwrap();
        assert_eq!(c.public.listen, "x");
        assert_eq!(c.public.upstream_timeout, Duration::from_secs(7));
    }

    #[test]
    fn both_names_in_one_layer_are_refused_naming_both() {
        let e = load(
            "[public]\nupstream_timeout = \"1m\"\nupstream_timeout_secs = 60\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.contains(
                "`public.upstream_timeout_secs` and `public.upstream_timeout` are both set in"
            ),
            "{e}"
        );
        assert!(e.contains("keep only `upstream_timeout`"), "{e}");
        let e = load(
            "[public]\nupstream_timeout = \"1m\"\n",
            &[
                ("GW__PUBLIC__UPSTREAM_TIMEOUT_SECS", "60"),
                ("GW__PUBLIC__UPSTREAM_TIMEOUT", "60s"),
            ],
        )
        .unwrap_err();
        assert!(
            e.contains(
                "environment (GW__PUBLIC__UPSTREAM_TIMEOUT_SECS and GW__PUBLIC__UPSTREAM_TIMEOUT)"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_bad_value_is_named_by_its_key() {
        let e = load("[public]\nupstream_timeout = \"soon\"\n", &[]).unwrap_err();
        assert!(
            e.starts_with("public.upstream_timeout: \"soon\" is not a duration ("),
            "{e}"
        );
        let e = load(
            "[public]\nupstream_timeout = \"1s\"\n",
            &[("GW__PUBLIC__UPSTREAM_TIMEOUT_SECS", "1.5")],
        )
        .unwrap_err();
        assert!(
            e.starts_with("public.upstream_timeout: 1.5 is not a duration"),
            "{e}"
        );
    }
}
