//! Start-up and shutdown plumbing shared by `local-scheduler`, `worker`, `gateway` and
//! `dashboard`, and the one HTTP server they all listen with ([`http_server`]).

pub mod admin;
pub mod api_keys;
pub mod callbacks;
pub mod http_server;
pub mod metrics;
pub mod payloads;
pub mod run;
pub mod settings;
pub mod telemetry;

pub use run::RunError;

#[doc(hidden)]
pub use serde as __serde;

/// Resolves when the process is asked to stop (SIGTERM, or Ctrl-C on a terminal).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A token cancelled when the process is asked to stop ([`shutdown_signal`]), logging `what`
/// happens next (nothing when empty): how every service turns the signal into its shutdown.
pub fn cancelled_on_signal(what: &'static str) -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        if !what.is_empty() {
            tracing::info!("shutting down: {what}");
        }
        cancel.cancel();
    });
    token
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Args {
    /// Run, with the configuration file of `--config <path>` if given.
    Run { config: Option<String> },
    /// `--help` / `-h`.
    Help,
    /// `--version` / `-V`.
    Version,
}

/// Reads the arguments after the program name: `--config <path>` (or `--config=<path>`),
/// `--help`, `--version`. Anything else is an error naming it, so a typo does not start a
/// service with defaults.
pub fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut config = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(Args::Help),
            "-V" | "--version" => return Ok(Args::Version),
            "--config" => match it.next() {
                Some(p) if !p.is_empty() && !p.starts_with("--") => config = Some(p.clone()),
                _ => return Err("--config needs a file path".into()),
            },
            other => match other.strip_prefix("--config=") {
                Some(p) if !p.is_empty() => config = Some(p.to_string()),
                Some(_) => return Err("--config needs a file path".into()),
                None => {
                    return Err(format!(
                        "unknown argument '{other}' (expected --config <file>, --help or --version)"
                    ));
                }
            },
        }
    }
    Ok(Args::Run { config })
}

#[cfg(test)]
mod args_tests {
    use super::{Args, parse_args};

    fn parse(a: &[&str]) -> Result<Args, String> {
        parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn arguments_are_read_strictly() {
        assert_eq!(parse(&[]), Ok(Args::Run { config: None }));
        assert_eq!(
            parse(&["--config", "a.toml"]),
            Ok(Args::Run {
                config: Some("a.toml".into())
            })
        );
        assert_eq!(
            parse(&["--config=b.toml"]),
            Ok(Args::Run {
                config: Some("b.toml".into())
            })
        );
        assert_eq!(parse(&["--help"]), Ok(Args::Help));
        assert_eq!(parse(&["-V"]), Ok(Args::Version));
        assert!(parse(&["--config"]).unwrap_err().contains("--config needs"));
        assert!(
            parse(&["--config="])
                .unwrap_err()
                .contains("--config needs")
        );
        assert!(parse(&["--confg", "a"]).unwrap_err().contains("'--confg'"));
        assert!(parse(&["serve"]).unwrap_err().contains("'serve'"));
    }
}
