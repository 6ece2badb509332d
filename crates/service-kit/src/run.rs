//! The one entry point of every service's `main`: read the settings (or answer `--help` /
//! `--version`), run the service on a multi-threaded runtime, and exit 2 with one line naming
//! what failed (the error and its causes, `a: b: c`), 0 otherwise.

use std::future::Future;

use serde::de::DeserializeOwned;

use crate::settings::{SettingsError, Source, Startup, Validate};

/// Why a service could not start or stopped with an error. Each message names the setting or
/// the step; the cause follows it in the one line `main` prints.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A setting that loaded but cannot be used; the message names the key.
    #[error("{0}")]
    Config(String),
    /// A setting that loaded but cannot be used, and why.
    #[error("{key}")]
    ConfigCause {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("`{key}`: cannot bind {addr}")]
    Bind {
        key: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the scheduler")]
    Connect(#[source] durabletask::Error),
    /// The service's own error, which says what failed.
    #[error(transparent)]
    Service(Box<dyn std::error::Error + Send + Sync>),
    /// A step after start-up.
    #[error("{what}")]
    Failed {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl RunError {
    /// The service's own error (it names what failed).
    pub fn service(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Service(e.into())
    }

    /// A setting named `key` that cannot be used because of `source`.
    pub fn config(
        key: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::ConfigCause {
            key: key.into(),
            source: source.into(),
        }
    }

    /// A step (`what`) that failed because of `source`.
    pub fn failed(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Failed {
            what,
            source: source.into(),
        }
    }
}

/// Binds `addr` for the setting `key`, or says which setting could not be bound.
pub async fn bind(
    key: &'static str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, RunError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            key,
            addr: addr.to_string(),
            source,
        })
}

/// `error` and its causes on one line: `a: b: c`.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // A cause whose text its effect already ends with adds nothing.
        if !text.is_empty() && !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// A multi-threaded runtime, as `#[tokio::main]` builds.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Exits the process: 0 on success, else 2 after printing `service: <error: causes>`.
pub fn exit<E: std::error::Error + 'static>(service: &str, outcome: Result<(), E>) -> ! {
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{service}: {}", one_line(&e));
            std::process::exit(2)
        }
    }
}

/// The `main` of a service: loads `S` from `source` (arguments, file, environment), answers
/// `--help` and `--version`, else runs `run(settings)` and exits (see [`exit`]).
pub fn main<S, F, Fut>(source: &Source<'_>, run: F) -> !
where
    S: DeserializeOwned + serde::Serialize + Default + Validate,
    F: FnOnce(S) -> Fut,
    Fut: Future<Output = Result<(), RunError>>,
{
    let outcome = match crate::settings::load::<S>(source) {
        Ok(Startup::Print(text)) => {
            println!("{text}");
            Ok(())
        }
        Ok(Startup::Run(settings)) => runtime().block_on(run(settings)),
        Err(e) => Err(e.into()),
    };
    exit(source.service, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_and_its_causes_fit_on_one_line() {
        let e = RunError::Bind {
            key: "listen",
            addr: "1.2.3.4:5".into(),
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use"),
        };
        assert_eq!(
            one_line(&e),
            "`listen`: cannot bind 1.2.3.4:5: address in use"
        );
        let e = RunError::config("`api_keys_file`", "no such file");
        assert_eq!(one_line(&e), "`api_keys_file`: no such file");
        let e =
            RunError::Config("`runs`: 'x' is not one of all, orchestrations, activities".into());
        assert_eq!(
            one_line(&e),
            "`runs`: 'x' is not one of all, orchestrations, activities"
        );
    }
}
