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
         Every key, with its default, is in the README.",
        service = source.service,
        file_var = source.file_var,
        prefix = source.env_prefix,
        also = source.help,
    )
}

/// The check every service makes of a socket address setting.
pub fn socket_addr(key: &str, value: &str, example: &str) -> Result<(), String> {
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("`{key}`: '{value}' is not an address like {example}"))
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

/// The check every service makes of `log_format`.
pub fn log_format(value: &str) -> Result<(), String> {
    if matches!(value, "auto" | "text" | "json") {
        Ok(())
    } else {
        Err("`log_format` must be `auto`, `text` or `json`".into())
    }
}
