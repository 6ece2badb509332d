//! One way to load a service's typed settings: the struct's `Default` is the only source of
//! defaults (`#[serde(default)]` on the struct), then an optional TOML file, then
//! `<PREFIX>__<KEY>` environment variables; then the struct validates itself. Every error names
//! the key.
//!
//! Keys are flat for operators (`GATEWAY__JWT_ISSUER`, `jwt_issuer = ..` in a file) while the
//! program groups them in sections, one struct per concern with its own `Default`
//! (`settings.jwt.issuer`): a [`Section`] says which field holds a group and the prefix its keys
//! carry; a file may also write a group as a table (`[jwt]`, `issuer = ..`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where a service's settings come from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The program name, for `--help` and `--version`.
    pub service: &'a str,
    /// The variable naming a TOML file when `--config` is not given, e.g. `GATEWAY_CONFIG`.
    pub file_var: &'a str,
    /// The prefix of the environment variables, e.g. `GATEWAY` for `GATEWAY__LISTEN`.
    pub env_prefix: &'a str,
    /// Keys that hold lists: a variable's value is split on commas.
    pub list_keys: &'a [&'a str],
    /// Reads the original sample's `ENDPOINT`, `TASKHUB` and connection-string variables into
    /// `endpoint`, `taskhub` and `connection_string`.
    pub seed_variables: bool,
    /// A line added to `--help`.
    pub help: &'a str,
    /// The groups of keys the settings keep in structs of their own.
    pub sections: &'a [Section<'a>],
}

/// A group of settings held in a struct of its own, the settings' field `field`, whose keys are
/// written flat as `prefix` followed by the struct's field name (`jwt_` + `issuer`). Several
/// sections may share a prefix, the empty one included, as long as no flat key is claimed twice.
#[derive(Debug, Clone, Copy)]
pub struct Section<'a> {
    pub field: &'a str,
    pub prefix: &'a str,
}

/// Where each flat key lives in the sectioned settings, read from their defaults.
#[derive(Debug)]
struct Layout {
    /// Flat key -> the path in the settings (`jwt_issuer` -> `jwt.issuer`).
    nested: BTreeMap<String, String>,
    /// The sections' fields, which a file may write as tables.
    tables: BTreeSet<String>,
}

impl Layout {
    fn of<T: Serialize + Default>(sections: &[Section<'_>]) -> Result<Self, String> {
        let defaults = serde_json::to_value(T::default()).map_err(|e| e.to_string())?;
        let serde_json::Value::Object(fields) = defaults else {
            return Err("settings must be a struct".into());
        };
        let mut nested = BTreeMap::new();
        let mut tables = BTreeSet::new();
        let mut claim = |flat: String, path: String| match nested.insert(flat.clone(), path) {
            None => Ok(()),
            Some(_) => Err(format!("the key `{flat}` is claimed twice")),
        };
        for (field, value) in &fields {
            match sections.iter().find(|s| s.field == field) {
                None => claim(field.clone(), field.clone())?,
                Some(section) => {
                    let serde_json::Value::Object(inner) = value else {
                        return Err(format!("section `{field}` is not a struct"));
                    };
                    for name in inner.keys() {
                        claim(
                            format!("{}{name}", section.prefix),
                            format!("{field}.{name}"),
                        )?;
                    }
                    tables.insert(field.clone());
                }
            }
        }
        Ok(Self { nested, tables })
    }

    fn flat_key(&self, path: &str) -> String {
        self.nested
            .iter()
            .find(|(_, p)| *p == path)
            .map_or_else(|| path.to_string(), |(flat, _)| flat.clone())
    }

    /// A read error names the key as the operator wrote it.
    fn flat_error(&self, e: config::ConfigError) -> config::ConfigError {
        use config::ConfigError as E;
        match e {
            E::Type {
                origin,
                unexpected,
                expected,
                key,
            } => E::Type {
                origin,
                unexpected,
                expected,
                key: key.map(|k| self.flat_key(&k)),
            },
            E::At { error, origin, key } => E::At {
                error,
                origin,
                key: key.map(|k| self.flat_key(&k)),
            },
            other => other,
        }
    }
}

/// The settings' defaults as an operator writes them: one flat object, keyed as in files and
/// variables (what the configuration page's tables list).
pub fn flat_defaults<T: Serialize + Default>(source: &Source<'_>) -> serde_json::Value {
    let layout = Layout::of::<T>(source.sections).expect("a valid layout");
    let defaults = serde_json::to_value(T::default()).expect("settings serialize");
    let flat = layout
        .nested
        .iter()
        .map(|(flat, path)| {
            let value = path.split('.').fold(&defaults, |v, part| &v[part]).clone();
            (flat.clone(), value)
        })
        .collect();
    serde_json::Value::Object(flat)
}

/// Where the scheduler is: the section every service that talks to it has, under the flat keys
/// `endpoint`, `taskhub` and `connection_string` (and the original sample's variables).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// The scheduler's gRPC endpoint.
    pub endpoint: String,
    pub taskhub: String,
    /// A DTS connection string; wins over `endpoint` and `taskhub`.
    pub connection_string: Option<String>,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            endpoint: "http://localhost:8080".into(),
            taskhub: "default".into(),
            connection_string: None,
        }
    }
}

impl SchedulerSettings {
    /// The section, as it sits in a service's settings (the field `scheduler`, flat keys).
    pub const SECTION: Section<'static> = Section {
        field: "scheduler",
        prefix: "",
    };

    /// The connection string when given, else endpoint + task hub.
    pub fn connection_options(
        &self,
    ) -> Result<durabletask::ConnectionOptions, crate::run::RunError> {
        match &self.connection_string {
            Some(cs) => durabletask::ConnectionOptions::from_connection_string(cs),
            None => durabletask::ConnectionOptions::new(&self.endpoint, &self.taskhub),
        }
        .map_err(|e| {
            crate::run::RunError::config("`endpoint` / `taskhub` / `connection_string`", e)
        })
    }
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Startup<T> {
    /// Run with these settings.
    Run(T),
    /// Print this (`--help`, `--version`) and exit with success.
    Print(String),
}

/// Settings that can check themselves after loading.
pub trait Validate {
    /// A message naming the key, e.g. "`listen`: 'x' is not an address like 127.0.0.1:8000".
    fn validate(&self) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A bad command-line argument.
    #[error("{0}")]
    Args(String),
    /// The file, a variable or a value could not be read; the message names the key.
    #[error("invalid {service} configuration")]
    Read {
        service: String,
        #[source]
        source: config::ConfigError,
    },
    /// A value is out of its allowed range or form.
    #[error("invalid {service} configuration: {message}")]
    Invalid { service: String, message: String },
}

/// Reads the process's arguments and environment into `T`.
pub fn load<T: DeserializeOwned + Serialize + Default + Validate>(
    source: &Source<'_>,
) -> Result<Startup<T>, SettingsError> {
    load_args(source, std::env::args().skip(1).collect())
}

/// [`load`] with the arguments given (a subcommand's, after its name) and the process's
/// environment.
pub fn load_args<T: DeserializeOwned + Serialize + Default + Validate>(
    source: &Source<'_>,
    args: Vec<String>,
) -> Result<Startup<T>, SettingsError> {
    let file = match crate::parse_args(&args).map_err(SettingsError::Args)? {
        crate::Args::Run { config } => config.or_else(|| std::env::var(source.file_var).ok()),
        crate::Args::Version => {
            return Ok(Startup::Print(format!(
                "{} {}",
                source.service,
                env!("CARGO_PKG_VERSION")
            )));
        }
        crate::Args::Help => return Ok(Startup::Print(help(source))),
    };
    // `vars_os`: `vars` panics on a variable that is not UTF-8; such a variable is no setting.
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    load_from(source, file.as_deref(), vars).map(Startup::Run)
}

/// [`load`] from an explicit file and environment (name, value pairs): what tests call.
pub fn load_from<T: DeserializeOwned + Serialize + Default + Validate>(
    source: &Source<'_>,
    file: Option<&str>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, SettingsError> {
    let vars: config::Map<String, String> = vars.into_iter().collect();
    let env = |name: &str| vars.get(name).cloned();
    let read = |e: config::ConfigError| SettingsError::Read {
        service: source.service.to_string(),
        source: e,
    };
    let mut b = config::Config::builder();
    if let Some(f) = file {
        b = b.add_source(config::File::with_name(f).required(true));
    }
    if source.seed_variables {
        for (var, key) in [
            ("ENDPOINT", "endpoint"),
            ("TASKHUB", "taskhub"),
            (
                "DURABLE_TASK_SCHEDULER_CONNECTION_STRING",
                "connection_string",
            ),
        ] {
            if let Some(v) = env(var) {
                b = b.set_override(key, v).map_err(read)?;
            }
        }
    }
    // The variables come in as a map, so tests need not touch the process environment.
    let prefix = format!("{}__", source.env_prefix);
    let vars: config::Map<String, String> = vars
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut environment = config::Environment::with_prefix(source.env_prefix)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .source(Some(vars));
    if !source.list_keys.is_empty() {
        environment = environment.list_separator(",");
        for key in source.list_keys {
            environment = environment.with_list_parse_key(key);
        }
    }
    let invalid = |message| SettingsError::Invalid {
        service: source.service.to_string(),
        message,
    };
    let flat = b.add_source(environment).build().map_err(read)?;
    let settings: T = if source.sections.is_empty() {
        flat.try_deserialize().map_err(read)?
    } else {
        let layout = Layout::of::<T>(source.sections).map_err(invalid)?;
        let mut entries: Vec<(String, config::Value)> = flat
            .try_deserialize::<config::Map<String, config::Value>>()
            .map_err(read)?
            .into_iter()
            .collect();
        // A section written as a table goes first, so that a variable naming one of its keys
        // still wins. The nesting is done here, one value per top-level key, because the
        // builder applies its overrides in no particular order.
        entries.sort_by_key(|(key, _)| !layout.tables.contains(key));
        let mut top: BTreeMap<String, config::Value> = BTreeMap::new();
        for (key, value) in entries {
            if layout.tables.contains(&key) {
                top.insert(key, value);
                continue;
            }
            let path = layout.nested.get(&key).ok_or_else(|| {
                invalid(format!(
                    "unknown key `{key}` (docs/configuration.md lists every key)"
                ))
            })?;
            match path.split_once('.') {
                None => {
                    top.insert(path.clone(), value);
                }
                Some((section, field)) => {
                    let table = top.entry(section.to_string()).or_insert_with(|| {
                        config::Value::new(None, config::ValueKind::Table(config::Map::new()))
                    });
                    // A section given as something else than a table is refused when read.
                    if let config::ValueKind::Table(t) = &mut table.kind {
                        t.insert(field.to_string(), value);
                    }
                }
            }
        }
        let mut nested = config::Config::builder();
        for (key, value) in top {
            nested = nested.set_override(key, value).map_err(read)?;
        }
        nested
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| read(layout.flat_error(e)))?
    };
    settings.validate().map_err(invalid)?;
    Ok(settings)
}

fn help(source: &Source<'_>) -> String {
    format!(
        "usage: {service} [--config <file.toml>]\n\n\
         Configuration, each layer over the one before: built-in defaults; the TOML file\n\
         (--config, or {file_var}); {prefix}__<KEY> environment variables.\n\
         {also}\n\
         Every key, with its default, is in docs/configuration.md.",
        service = source.service,
        file_var = source.file_var,
        prefix = source.env_prefix,
        also = source.help,
    )
}

/// The check of an orchestration version (`orchestration_version`, `replays_versions`): 1 to
/// 64 of `A-Z a-z 0-9 . _ + -`, so it is a safe work-item filter, log field and label value.
pub fn orchestration_version(key: &str, value: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{key}`: '{value}' is not a version (1 to 64 of A-Z, a-z, 0-9, '.', '_', '+', '-')"
        ))
    }
}

/// A setting that takes one of a few words: an enum parsed once, whose error lists the words
/// (the loader adds the key), and written back as its word (the configuration tables).
///
/// ```ignore
/// service_kit::choice! {
///     /// Which work items a worker takes.
///     pub enum Runs { All = "all", Orchestrations = "orchestrations", Activities = "activities" }
/// }
/// ```
#[macro_export]
macro_rules! choice {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every word, in order.
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    other => Err(format!("'{other}' is not one of {}", Self::WORDS.join(", "))),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::__serde::Serialize for $name {
            fn serialize<S: $crate::__serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> $crate::__serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = <String as $crate::__serde::Deserialize>::deserialize(d)?;
                word.parse().map_err(<D::Error as $crate::__serde::de::Error>::custom)
            }
        }
    };
}

choice! {
    /// How logs are written: `auto` (text on a terminal, else JSON lines), `text` or `json`.
    #[derive(Default)]
    pub enum LogFormat {
        #[default]
        Auto = "auto",
        Text = "text",
        Json = "json",
    }
}

#[cfg(test)]
mod section_tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields, default)]
    struct Probe {
        log_format: LogFormat,
        scheduler: SchedulerSettings,
        limits: Limits,
    }

    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields, default)]
    struct Limits {
        max_body_bytes: usize,
        hosts: Vec<String>,
    }

    impl Default for Limits {
        fn default() -> Self {
            Self {
                max_body_bytes: 100,
                hosts: vec!["*".into()],
            }
        }
    }

    impl Validate for Probe {
        fn validate(&self) -> Result<(), String> {
            Ok(())
        }
    }

    const SOURCE: Source<'static> = Source {
        service: "probe",
        file_var: "PROBE_CONFIG",
        env_prefix: "PROBE",
        list_keys: &["limit_hosts"],
        seed_variables: true,
        help: "",
        sections: &[
            SchedulerSettings::SECTION,
            Section {
                field: "limits",
                prefix: "limit_",
            },
        ],
    };

    fn load(file: Option<&str>, vars: &[(&str, &str)]) -> Result<Probe, String> {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        load_from::<Probe>(&SOURCE, file, vars).map_err(|e| crate::run::one_line(&e))
    }

    #[test]
    fn flat_keys_fill_sections_and_errors_name_the_flat_key() {
        let p = load(
            None,
            &[
                ("PROBE__ENDPOINT", "http://s:1"),
                ("PROBE__LIMIT_MAX_BODY_BYTES", "2048"),
                ("PROBE__LIMIT_HOSTS", "a.example,b.example"),
                ("TASKHUB", "hub"),
            ],
        )
        .expect("loads");
        assert_eq!(p.scheduler.endpoint, "http://s:1");
        assert_eq!(p.scheduler.taskhub, "hub", "the sample's variable");
        assert_eq!(p.limits.max_body_bytes, 2048);
        assert_eq!(p.limits.hosts, ["a.example", "b.example"]);

        let e = load(None, &[("PROBE__LIMIT_MAX_BODY_BYTES", "lots")]).expect_err("not a number");
        assert!(e.contains("`limit_max_body_bytes`"), "{e}");
        let e = load(None, &[("PROBE__MAX_BODY_BYTES", "1")]).expect_err("no such key");
        assert!(e.contains("unknown key `max_body_bytes`"), "{e}");
        let e = load(None, &[("PROBE__LIMITS", "1")]).expect_err("a section is no value");
        assert!(e.contains("`limits`"), "{e}");

        assert_eq!(
            flat_defaults::<Probe>(&SOURCE),
            serde_json::json!({
                "log_format": "auto",
                "endpoint": "http://localhost:8080",
                "taskhub": "default",
                "connection_string": null,
                "limit_max_body_bytes": 100,
                "limit_hosts": ["*"],
            })
        );
    }

    #[test]
    fn a_file_may_write_a_section_as_a_table_and_a_variable_still_wins() {
        let dir = std::env::temp_dir().join(format!("sections-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("probe.toml");
        std::fs::write(
            &file,
            "limit_hosts = [\"x.example\"]\n[limits]\nmax_body_bytes = 7\n",
        )
        .expect("write");
        let file = file.display().to_string();
        let p = load(Some(&file), &[]).expect("loads");
        assert_eq!(
            (p.limits.max_body_bytes, p.limits.hosts.clone()),
            (7, vec!["x.example".into()])
        );
        let p = load(Some(&file), &[("PROBE__LIMIT_MAX_BODY_BYTES", "9")]).expect("loads");
        assert_eq!(p.limits.max_body_bytes, 9);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod choice_tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields, default)]
    struct Probe {
        log_format: LogFormat,
        listen: std::net::SocketAddr,
    }

    impl Default for Probe {
        fn default() -> Self {
            Self {
                log_format: LogFormat::Auto,
                listen: ([127, 0, 0, 1], 1).into(),
            }
        }
    }

    impl Validate for Probe {
        fn validate(&self) -> Result<(), String> {
            Ok(())
        }
    }

    fn load(var: &str, value: &str) -> Result<Probe, String> {
        let source = Source {
            service: "probe",
            file_var: "PROBE_CONFIG",
            env_prefix: "PROBE",
            list_keys: &[],
            seed_variables: false,
            help: "",
            sections: &[],
        };
        load_from::<Probe>(&source, None, [(var.to_string(), value.to_string())])
            .map_err(|e| crate::run::one_line(&e))
    }

    #[test]
    fn a_word_or_an_address_is_parsed_once_and_a_bad_one_is_refused_naming_the_key() {
        assert_eq!(
            load("PROBE__LOG_FORMAT", "json").expect("json").log_format,
            LogFormat::Json
        );
        let e = load("PROBE__LOG_FORMAT", "yaml").expect_err("not a word");
        assert!(e.contains("'yaml' is not one of auto, text, json"), "{e}");
        assert!(e.contains("`log_format`"), "{e}");
        let e = load("PROBE__LISTEN", "localhost").expect_err("not an address");
        assert!(e.contains("`listen`"), "{e}");
        assert_eq!(
            load("PROBE__LISTEN", "0.0.0.0:80").expect("address").listen,
            std::net::SocketAddr::from(([0, 0, 0, 0], 80))
        );
        assert_eq!(
            serde_json::to_value(Probe::default()).expect("json"),
            serde_json::json!({"log_format": "auto", "listen": "127.0.0.1:1"}),
            "written back as the words and addresses the configuration page shows"
        );
    }
}
