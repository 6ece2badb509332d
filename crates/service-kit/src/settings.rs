//! One way to load a service's typed settings: the struct's `Default` is the only source of
//! defaults (`#[serde(default)]` on the struct), then an optional TOML file, then
//! `<PREFIX>__<KEY>` environment variables; then the struct validates itself. Every error names
//! the key.

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
pub fn load<T: DeserializeOwned + Validate>(
    source: &Source<'_>,
) -> Result<Startup<T>, SettingsError> {
    load_args(source, std::env::args().skip(1).collect())
}

/// [`load`] with the arguments given (a subcommand's, after its name) and the process's
/// environment.
pub fn load_args<T: DeserializeOwned + Validate>(
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
pub fn load_from<T: DeserializeOwned + Validate>(
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
    let settings: T = b
        .add_source(environment)
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(read)?;
    settings
        .validate()
        .map_err(|message| SettingsError::Invalid {
            service: source.service.to_string(),
            message,
        })?;
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
