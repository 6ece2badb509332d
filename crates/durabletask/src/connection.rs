//! Where the scheduler is and how to authenticate to it.
//!
//! Two ways in: the DTS connection string
//! (`Endpoint=https://x.durabletask.io;Authentication=ManagedIdentity;TaskHub=hub`) and the plain
//! endpoint + task hub pair the original sample reads from `ENDPOINT` / `TASKHUB`.
//! `https://` means TLS with the system roots; `http://` means plaintext HTTP/2 (h2c).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::auth::{AzureTokenSource, DEFAULT_REFRESH_MARGIN, TokenCache, TokenSource};

/// How the SDK obtains Entra ID tokens. Values of the connection string's `Authentication` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// No credential: local scheduler or emulator.
    None,
    /// Managed identity (App Service or IMDS); optional user-assigned client id.
    ManagedIdentity { client_id: Option<String> },
    /// AKS workload identity; values default to `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity {
        client_id: Option<String>,
        tenant_id: Option<String>,
        token_file_path: Option<String>,
    },
    /// `az` / `azd` logins on a developer machine.
    DeveloperTools,
    /// A service principal from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`.
    Environment,
    /// Our chain: workload identity when its environment is present, else managed identity
    /// when running in Azure, else developer tools.
    DefaultAzure { client_id: Option<String> },
}

impl Authentication {
    fn parse(
        value: &str,
        client_id: Option<String>,
        tenant_id: Option<String>,
        token_file: Option<String>,
    ) -> Result<Self, ConfigError> {
        Ok(match value.to_ascii_lowercase().as_str() {
            "none" => Self::None,
            "managedidentity" => Self::ManagedIdentity { client_id },
            "workloadidentity" => Self::WorkloadIdentity {
                client_id,
                tenant_id,
                token_file_path: token_file,
            },
            "azurecli" | "developertools" | "azuredevelopercli" => Self::DeveloperTools,
            "environment" => Self::Environment,
            "defaultazure" => Self::DefaultAzure { client_id },
            "azurepowershell" | "visualstudio" | "visualstudiocode" | "interactivebrowser" => {
                return Err(ConfigError::new(
                    "Authentication",
                    format!(
                        "'{value}' is not available in the Rust SDK (azure_identity 1.0 has no such credential); use ManagedIdentity, WorkloadIdentity, AzureCli, Environment, DefaultAzure or None"
                    ),
                ));
            }
            _ => {
                return Err(ConfigError::new(
                    "Authentication",
                    format!(
                        "unknown value '{value}'; expected one of None, ManagedIdentity, WorkloadIdentity, AzureCli, DeveloperTools, Environment, DefaultAzure"
                    ),
                ));
            }
        })
    }

    /// Builds the token source, or `None` for [`Authentication::None`].
    pub fn token_source(&self) -> Result<Option<Arc<dyn TokenSource>>, ConfigError> {
        use azure_identity as id;
        let err = |e: azure_core::Error| ConfigError::new("Authentication", e.to_string());
        let credential: Arc<dyn azure_core::credentials::TokenCredential> = match self {
            Self::None => return Ok(None),
            Self::ManagedIdentity { client_id } => {
                id::ManagedIdentityCredential::new(Some(id::ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(id::UserAssignedId::ClientId),
                    ..Default::default()
                }))
                .map_err(err)?
            }
            Self::WorkloadIdentity {
                client_id,
                tenant_id,
                token_file_path,
            } => id::WorkloadIdentityCredential::new(Some(id::WorkloadIdentityCredentialOptions {
                client_id: client_id.clone(),
                tenant_id: tenant_id.clone(),
                token_file_path: token_file_path.clone().map(Into::into),
                ..Default::default()
            }))
            .map_err(err)?,
            Self::DeveloperTools => id::DeveloperToolsCredential::new(None).map_err(err)?,
            Self::Environment => {
                let var = |k: &str| {
                    std::env::var(k).map_err(|_| {
                        ConfigError::new(
                            k,
                            "must be set for Authentication=Environment".to_string(),
                        )
                    })
                };
                let tenant = var("AZURE_TENANT_ID")?;
                let client = var("AZURE_CLIENT_ID")?;
                let secret = var("AZURE_CLIENT_SECRET")?;
                id::ClientSecretCredential::new(&tenant, client, secret.into(), None)
                    .map_err(err)?
            }
            Self::DefaultAzure { client_id } => {
                let has = |k: &str| std::env::var_os(k).is_some();
                if has("AZURE_FEDERATED_TOKEN_FILE") && has("AZURE_TENANT_ID") {
                    return Self::WorkloadIdentity {
                        client_id: client_id.clone(),
                        tenant_id: None,
                        token_file_path: None,
                    }
                    .token_source();
                }
                if has("IDENTITY_ENDPOINT") || has("MSI_ENDPOINT") || has("KUBERNETES_SERVICE_HOST")
                {
                    return Self::ManagedIdentity {
                        client_id: client_id.clone(),
                    }
                    .token_source();
                }
                return Self::DeveloperTools.token_source();
            }
        };
        Ok(Some(Arc::new(AzureTokenSource::new(credential))))
    }
}

/// A configuration problem, naming the offending key.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Everything needed to reach one task hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// Normalised endpoint URL, always with a scheme.
    pub endpoint: String,
    pub taskhub: String,
    pub authentication: Authentication,
}

impl ConnectionOptions {
    /// Endpoint + task hub with no credential (the seed's `ENDPOINT` / `TASKHUB`).
    pub fn new(endpoint: &str, taskhub: &str) -> Result<Self, ConfigError> {
        Self::with_auth(endpoint, taskhub, Authentication::None)
    }

    pub fn with_auth(
        endpoint: &str,
        taskhub: &str,
        authentication: Authentication,
    ) -> Result<Self, ConfigError> {
        let endpoint = normalize_endpoint(endpoint)?;
        validate_taskhub(taskhub)?;
        Ok(Self {
            endpoint,
            taskhub: taskhub.to_string(),
            authentication,
        })
    }

    /// Parses a DTS connection string. Keys are case-insensitive; `Endpoint`, `Authentication`
    /// and `TaskHub` are required.
    pub fn from_connection_string(s: &str) -> Result<Self, ConfigError> {
        let mut endpoint = None;
        let mut auth = None;
        let mut taskhub = None;
        let mut client_id = None;
        let mut tenant_id = None;
        let mut token_file = None;
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                ConfigError::new(part, "expected `Key=Value` in the connection string")
            })?;
            let (key, value) = (key.trim(), value.trim().to_string());
            let slot = match key.to_ascii_lowercase().as_str() {
                "endpoint" => &mut endpoint,
                "authentication" => &mut auth,
                "taskhub" => &mut taskhub,
                "clientid" => &mut client_id,
                "tenantid" => &mut tenant_id,
                "tokenfilepath" => &mut token_file,
                // Accepted for compatibility; azure_identity 1.0 has no per-credential tenant list.
                "additionallyallowedtenants" => continue,
                _ => {
                    return Err(ConfigError::new(
                        key,
                        "unknown connection string key; expected Endpoint, Authentication, TaskHub, ClientID, TenantId, TokenFilePath",
                    ));
                }
            };
            if slot.is_some() {
                return Err(ConfigError::new(
                    key,
                    "appears more than once in the connection string",
                ));
            }
            *slot = Some(value);
        }
        let endpoint = endpoint
            .ok_or_else(|| ConfigError::new("Endpoint", "missing from the connection string"))?;
        let auth = auth.ok_or_else(|| {
            ConfigError::new("Authentication", "missing from the connection string")
        })?;
        let taskhub = taskhub
            .ok_or_else(|| ConfigError::new("TaskHub", "missing from the connection string"))?;
        let authentication = Authentication::parse(&auth, client_id, tenant_id, token_file)?;
        Self::with_auth(&endpoint, &taskhub, authentication).map_err(|mut e| {
            // Name the connection-string key, not the internal field.
            if e.key == "endpoint" {
                e.key = "Endpoint".into();
            } else if e.key == "taskhub" {
                e.key = "TaskHub".into();
            }
            e
        })
    }

    pub fn is_tls(&self) -> bool {
        self.endpoint.starts_with("https://")
    }
}

fn normalize_endpoint(raw: &str) -> Result<String, ConfigError> {
    let raw = raw.trim().trim_end_matches('/');
    if raw.is_empty() {
        return Err(ConfigError::new("endpoint", "must not be empty"));
    }
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        // Same default as the .NET SDK: no scheme means TLS.
        format!("https://{raw}")
    };
    let (scheme, rest) = with_scheme.split_once("://").unwrap_or(("", ""));
    if scheme != "http" && scheme != "https" {
        return Err(ConfigError::new(
            "endpoint",
            format!(
                "unsupported scheme '{scheme}' in '{raw}': use https:// (TLS) or http:// (plaintext)"
            ),
        ));
    }
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(ConfigError::new("endpoint", format!("'{raw}' has no host")));
    }
    with_scheme
        .parse::<tonic::transport::Uri>()
        .map_err(|e| ConfigError::new("endpoint", format!("'{raw}' is not a valid URL: {e}")))?;
    Ok(with_scheme)
}

fn validate_taskhub(taskhub: &str) -> Result<(), ConfigError> {
    if taskhub.is_empty() {
        return Err(ConfigError::new("taskhub", "must not be empty"));
    }
    // It travels as a gRPC header, so it must be visible ASCII.
    if !taskhub.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "taskhub",
            format!("'{taskhub}' must be printable ASCII without spaces"),
        ));
    }
    Ok(())
}

/// Which SDK component is calling; goes into `x-user-agent`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Caller {
    Client,
    Worker,
}

/// Adds the DTS headers to every call, unary and streaming alike.
#[derive(Clone)]
pub struct MetadataInterceptor {
    taskhub: AsciiMetadataValue,
    user_agent: AsciiMetadataValue,
    worker_id: Option<AsciiMetadataValue>,
    tokens: Option<TokenCache>,
}

impl Interceptor for MetadataInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let md = req.metadata_mut();
        md.insert("taskhub", self.taskhub.clone());
        md.insert("x-user-agent", self.user_agent.clone());
        if let Some(id) = &self.worker_id {
            md.insert("workerid", id.clone());
        }
        if let Some(tokens) = &self.tokens {
            let header = tokens
                .header()
                .ok_or_else(|| tonic::Status::unauthenticated("no access token available yet"))?;
            let value = MetadataValue::try_from(header).map_err(|_| {
                tonic::Status::unauthenticated("access token is not valid header text")
            })?;
            md.insert("authorization", value);
        }
        Ok(req)
    }
}

/// A live connection: one HTTP/2 channel plus the header interceptor. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    pub(crate) options: ConnectionOptions,
    channel: Channel,
    tokens: Option<TokenCache>,
    stop_refresh: CancellationToken,
}

/// Largest message accepted from the server (histories can be big; DTS caps requests at ~4 MB).
pub(crate) const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

impl Connection {
    /// Builds the channel (connecting lazily) and, when a credential is configured, fetches the
    /// first token so a broken credential fails here rather than on the first call.
    pub async fn connect(options: ConnectionOptions) -> Result<Self, crate::Error> {
        let source = options.authentication.token_source()?;
        Self::connect_with_token_source(options, source, DEFAULT_REFRESH_MARGIN).await
    }

    /// Like [`Connection::connect`] with an explicit token source (tests, custom credentials).
    pub async fn connect_with_token_source(
        options: ConnectionOptions,
        source: Option<Arc<dyn TokenSource>>,
        refresh_margin: Duration,
    ) -> Result<Self, crate::Error> {
        let mut endpoint = Endpoint::from_shared(options.endpoint.clone())
            .map_err(|e| ConfigError::new("endpoint", e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
        // No HTTP/2 keepalive pings, like the official SDKs: gRPC-core servers count pings on a
        // quiet connection as abuse and send GOAWAY. Stream liveness comes from the scheduler's
        // health pings and the worker's silent-disconnect timer instead.
        if options.is_tls() {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| ConfigError::new("endpoint", format!("TLS setup failed: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        let stop_refresh = CancellationToken::new();
        let tokens = match source {
            Some(src) => Some(TokenCache::start(src, refresh_margin, stop_refresh.clone()).await?),
            None => None,
        };
        Ok(Self {
            options,
            channel,
            tokens,
            stop_refresh,
        })
    }

    pub fn options(&self) -> &ConnectionOptions {
        &self.options
    }

    pub(crate) fn interceptor(
        &self,
        caller: Caller,
        worker_id: Option<&str>,
    ) -> MetadataInterceptor {
        let ua = match caller {
            Caller::Client => format!(
                "durabletask-rust/{} (DurableTaskClient)",
                env!("CARGO_PKG_VERSION")
            ),
            Caller::Worker => format!(
                "durabletask-rust/{} (DurableTaskWorker)",
                env!("CARGO_PKG_VERSION")
            ),
        };
        MetadataInterceptor {
            // Both were validated as visible ASCII.
            taskhub: AsciiMetadataValue::try_from(self.options.taskhub.as_str())
                .unwrap_or_else(|_| AsciiMetadataValue::from_static("default")),
            user_agent: AsciiMetadataValue::try_from(ua.as_str())
                .unwrap_or_else(|_| AsciiMetadataValue::from_static("durabletask-rust")),
            worker_id: worker_id.and_then(|w| AsciiMetadataValue::try_from(w).ok()),
            tokens: self.tokens.clone(),
        }
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Stops the background token refresh now (it also stops once the connection and every
    /// client and worker built from it are dropped). Calls in flight keep their token.
    pub fn close(&self) {
        self.stop_refresh.cancel();
    }
}

/// `<host>,<pid>,<uuid>`: lets DTS tell worker processes apart.
pub(crate) fn default_worker_id() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "unknown-host".into());
    format!(
        "{host},{},{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_emulator_connection_string() {
        let o = ConnectionOptions::from_connection_string(
            "Endpoint=http://localhost:8080;Authentication=None;TaskHub=default",
        )
        .unwrap();
        assert_eq!(o.endpoint, "http://localhost:8080");
        assert_eq!(o.taskhub, "default");
        assert_eq!(o.authentication, Authentication::None);
        assert!(!o.is_tls());
    }

    #[test]
    fn keys_and_values_are_case_insensitive() {
        let o = ConnectionOptions::from_connection_string(
            "endpoint=https://x.westus.durabletask.io; AUTHENTICATION=managedidentity ;taskHub=h1;clientid=abc",
        )
        .unwrap();
        assert!(o.is_tls());
        assert_eq!(
            o.authentication,
            Authentication::ManagedIdentity {
                client_id: Some("abc".into())
            }
        );
    }

    #[test]
    fn all_supported_authentication_values_parse() {
        for v in [
            "None",
            "ManagedIdentity",
            "WorkloadIdentity",
            "AzureCLI",
            "DeveloperTools",
            "Environment",
            "DefaultAzure",
        ] {
            let s = format!("Endpoint=https://e;Authentication={v};TaskHub=h");
            assert!(ConnectionOptions::from_connection_string(&s).is_ok(), "{v}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("Authentication=None;TaskHub=h", "Endpoint"),
            ("Endpoint=http://e;TaskHub=h", "Authentication"),
            ("Endpoint=http://e;Authentication=None", "TaskHub"),
            (
                "Endpoint=http://e;Authentication=Magic;TaskHub=h",
                "Authentication",
            ),
            (
                "Endpoint=http://e;Authentication=VisualStudio;TaskHub=h",
                "Authentication",
            ),
            ("Endpoint=ftp://e;Authentication=None;TaskHub=h", "Endpoint"),
            (
                "Endpoint=http://e;Authentication=None;TaskHub=h;Colour=red",
                "Colour",
            ),
            (
                "Endpoint=http://e;Authentication=None;TaskHub=h;TaskHub=g",
                "TaskHub",
            ),
            (
                "Endpoint=http://e;Authentication=None;TaskHub=a b",
                "TaskHub",
            ),
            ("Endpoint=http://e;garbage;TaskHub=h", "garbage"),
        ];
        for (s, key) in cases {
            let e = ConnectionOptions::from_connection_string(s).unwrap_err();
            assert_eq!(e.key, key, "{s}: {e}");
            assert!(e.to_string().contains(key));
        }
    }

    #[test]
    fn endpoint_without_scheme_means_tls() {
        let o = ConnectionOptions::new("myscheduler.westus.durabletask.io", "hub").unwrap();
        assert_eq!(o.endpoint, "https://myscheduler.westus.durabletask.io");
    }

    #[test]
    fn worker_id_has_three_parts() {
        let id = default_worker_id();
        assert_eq!(id.split(',').count(), 3, "{id}");
    }
}
