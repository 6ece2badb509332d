//! The gateway's configuration: [`Settings`], what an operator sets, in one section per concern,
//! each section's `Default` the single source of its defaults. The handlers read it as it is.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use service_kit::settings::{LogFormat, SchedulerSettings, Section};

mod limits;
pub use limits::Limits;

/// Everything configurable. Loaded by `service_kit::settings::load` (defaults, TOML file,
/// `GATEWAY__<KEY>`; the sample's `ENDPOINT`, `TASKHUB` and connection-string variables). Keys
/// are flat for operators; the program keeps them in one section per concern ([`SOURCE`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Address of the admin listener: `/metrics`, `/healthz`, `/readyz` (not the public API's).
    pub admin_listen: SocketAddr,
    /// Absolute base for links, e.g. `https://api.example.com`; else from the request.
    pub public_base_url: Option<String>,
    /// Build links from `Forwarded` / `X-Forwarded-*` (only behind a proxy that sets them).
    pub trust_forwarded: bool,
    /// The version of the orchestration code new operations start at (the workers that run it
    /// declare the same `orchestration_version`); unset: none. See docs/worker-fleet.md.
    pub orchestration_version: Option<String>,
    /// Deadline of each scheduler call; past it the client gets 503.
    pub dts_timeout_ms: u64,
    /// `Retry-After` on 202s, unfinished statuses and 503s.
    pub retry_after_seconds: u64,
    /// After SIGTERM: how long the gateway keeps serving with readiness failing (so that load
    /// balancers stop sending it requests) before it stops accepting connections.
    pub drain_delay_seconds: u64,
    /// Then: how long open requests get to finish (long polls are answered at once).
    pub shutdown_timeout_seconds: u64,
    /// Where the Swagger UI (`/docs`, 1.5 MB of script) is served: `public` (with the API),
    /// `admin` (the admin listener only) or `off`. `/openapi.json` stays with the API.
    pub docs: Docs,
    /// `auto` (text on a terminal, else JSON), `text` or `json`.
    pub log_format: LogFormat,
    /// How callers authenticate: `jwt`, `api_key`, `jwt,api_key`, or `none` (anyone may do
    /// anything: for a laptop). No default: a deployment says which.
    pub auth: Option<Auth>,
    /// Keys the operation ids derived from owners and idempotency keys (HMAC-SHA256); at least
    /// 32 characters, the same on every replica, kept across restarts. Required with `jwt` or
    /// `api_key`.
    pub id_secret: Option<String>,
    /// The API keys file (JSON, hashed keys; see docs/authentication.md).
    pub api_keys_file: Option<String>,
    /// How often the API keys file is read again.
    pub api_keys_reload_seconds: u64,
    /// Where the scheduler is (`endpoint`, `taskhub`, `connection_string`).
    pub scheduler: SchedulerSettings,
    /// The public listener's connections (deadlines, head size, connection cap).
    pub server: ServerSettings,
    /// What a request may ask for and how much each caller may hold.
    pub limits: Limits,
    /// Bearer tokens (`jwt_*`).
    pub jwt: JwtSettings,
    /// Where completion callbacks may go (`callback_*`).
    pub callbacks: service_kit::callbacks::Targets,
    /// Large payloads (`payload_*`): a result the worker stored in blob storage is streamed
    /// from there by `/api/result/{id}`. Give the worker's.
    pub payloads: service_kit::payloads::PayloadSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            public_base_url: None,
            trust_forwarded: false,
            orchestration_version: None,
            dts_timeout_ms: 5000,
            retry_after_seconds: 1,
            drain_delay_seconds: 5,
            shutdown_timeout_seconds: 20,
            docs: Docs::Public,
            log_format: LogFormat::Auto,
            auth: None,
            id_secret: None,
            api_keys_file: None,
            api_keys_reload_seconds: 5,
            scheduler: SchedulerSettings::default(),
            server: ServerSettings::default(),
            limits: Limits::default(),
            jwt: JwtSettings::default(),
            callbacks: Default::default(),
            payloads: Default::default(),
        }
    }
}

/// The public listener's connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// A request head must arrive within this time of the connection's opening or of its own
    /// first byte; slower clients are disconnected.
    pub header_read_timeout_seconds: u64,
    /// A kept-alive connection with no request for this long is closed. Keep it above the idle
    /// timeout of any proxy in front (ingress-nginx: 60 s), so that the proxy closes first.
    pub idle_timeout_seconds: u64,
    /// An answer the client takes no byte of for this long closes its connection.
    pub write_stall_timeout_seconds: u64,
    /// An answer (not a status stream) must be sent whole within this long of its head, however
    /// slowly the client reads; past it the connection closes.
    pub answer_timeout_seconds: u64,
    /// Largest request head (request line and headers) answered other than `431`.
    pub max_header_bytes: usize,
    /// Open connections; past it new ones get a `503` problem and are closed.
    pub max_connections: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout_seconds: 10,
            idle_timeout_seconds: 75,
            write_stall_timeout_seconds: 10,
            answer_timeout_seconds: 60,
            max_header_bytes: 16 * 1024,
            max_connections: 4096,
        }
    }
}

/// Bearer tokens: the keys `jwt_<field>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSettings {
    /// OIDC issuer (`iss`), e.g. `https://login.microsoftonline.com/<tenant>/v2.0`.
    pub issuer: Option<String>,
    /// Accepted audiences (`aud`), comma-separated.
    pub audiences: Vec<String>,
    /// The JWKS URL; unset: from the issuer's discovery document.
    pub jwks_url: Option<String>,
    /// Claims that identify the caller, comma-separated (`sub`; Entra ID: `tid,oid`).
    pub identity_claims: Vec<String>,
    pub roles_claim: String,
    /// The role that sees and acts on every operation.
    pub admin_role: String,
    /// A role every caller must have (else `403`); unset: any valid token.
    pub required_role: Option<String>,
    pub leeway_seconds: u64,
    /// The JWKS is fetched again after this long.
    pub jwks_refresh_seconds: u64,
    /// A token with an unknown key id fetches the JWKS again, at most this often.
    pub jwks_min_refetch_seconds: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            issuer: None,
            audiences: Vec::new(),
            jwks_url: None,
            identity_claims: vec!["sub".into()],
            roles_claim: "roles".into(),
            admin_role: "Operations.Admin".into(),
            required_role: None,
            leeway_seconds: 60,
            jwks_refresh_seconds: 3600,
            jwks_min_refetch_seconds: 30,
        }
    }
}

/// Where the settings come from.
pub const SOURCE: service_kit::settings::Source<'static> = service_kit::settings::Source {
    service: "gateway",
    file_var: "GATEWAY_CONFIG",
    env_prefix: "GATEWAY",
    list_keys: &[
        "jwt_audiences",
        "jwt_identity_claims",
        "callback_hosts",
        "callback_allowed_networks",
    ],
    seed_variables: true,
    help: "ENDPOINT, TASKHUB and DURABLE_TASK_SCHEDULER_CONNECTION_STRING work as in the original sample.",
    sections: &[
        SchedulerSettings::SECTION,
        Section {
            field: "server",
            prefix: "",
        },
        Section {
            field: "limits",
            prefix: "",
        },
        Section {
            field: "jwt",
            prefix: "jwt_",
        },
        Section {
            field: "callbacks",
            prefix: service_kit::callbacks::Targets::PREFIX,
        },
        service_kit::payloads::PayloadSettings::SECTION,
    ],
};

impl service_kit::settings::Validate for Settings {
    fn validate(&self) -> Result<(), String> {
        self.payloads.store()?;
        if self.admin_listen == self.listen {
            return Err("`admin_listen` must differ from `listen`: metrics and probes are not part of the public API".into());
        }
        if let Some(v) = &self.orchestration_version {
            service_kit::settings::orchestration_version("orchestration_version", v)?;
        }
        for (key, value) in [
            (
                "write_stall_timeout_seconds",
                self.server.write_stall_timeout_seconds,
            ),
            ("answer_timeout_seconds", self.server.answer_timeout_seconds),
            (
                "header_read_timeout_seconds",
                self.server.header_read_timeout_seconds,
            ),
            ("idle_timeout_seconds", self.server.idle_timeout_seconds),
            ("max_connections", self.server.max_connections as u64),
            (
                "max_concurrent_requests",
                self.limits.max_concurrent_requests as u64,
            ),
        ] {
            if value == 0 {
                return Err(format!("`{key}` must be at least 1"));
            }
        }
        if self.limits.min_recurring_interval_seconds == 0 {
            return Err("`min_recurring_interval_seconds` must be at least 1".into());
        }
        if self.limits.max_recurring_interval_seconds < self.limits.min_recurring_interval_seconds {
            return Err("`max_recurring_interval_seconds` must be at least \
                        `min_recurring_interval_seconds`"
                .into());
        }
        if !(1..=1000).contains(&self.limits.max_recurring_per_caller) {
            return Err("`max_recurring_per_caller` must be between 1 and 1000".into());
        }
        if self.limits.rate_limit_per_second > 0 && self.limits.rate_limit_burst == 0 {
            return Err(
                "`rate_limit_burst` must be at least 1 when `rate_limit_per_second` is set".into(),
            );
        }
        for (key, share) in [
            (
                "max_requests_per_caller",
                self.limits.max_requests_per_caller,
            ),
            (
                "max_long_polls_per_caller",
                self.limits.max_long_polls_per_caller,
            ),
            (
                "max_starts_in_flight_per_caller",
                self.limits.max_starts_in_flight_per_caller,
            ),
        ] {
            if share == 0 {
                return Err(format!("`{key}` must be at least 1"));
            }
        }
        if self.limits.auth_failures_per_second > 0 && self.limits.auth_failures_burst == 0 {
            return Err(
                "`auth_failures_burst` must be at least 1 when `auth_failures_per_second` is set"
                    .into(),
            );
        }
        if self.server.max_header_bytes < 1024 {
            return Err("`max_header_bytes` must be at least 1024".into());
        }
        let longest = self.limits.max_wait_seconds + self.dts_timeout_ms.div_ceil(1000) * 2;
        if self.limits.request_timeout_seconds <= longest {
            return Err(format!(
                "`request_timeout_seconds` must be over {longest}: a long poll may last `max_wait_seconds` plus two scheduler calls (`dts_timeout_ms`)"
            ));
        }
        if self.limits.max_body_bytes < 256 {
            return Err("`max_body_bytes` must be at least 256".into());
        }
        if self.limits.max_name_chars < 1 {
            return Err("`max_name_chars` must be at least 1".into());
        }
        if self.dts_timeout_ms < 100 {
            return Err("`dts_timeout_ms` must be at least 100".into());
        }
        if self.limits.stream_poll_interval_ms < 100 {
            return Err("`stream_poll_interval_ms` must be at least 100".into());
        }
        if self.limits.max_stream_seconds < 1 {
            return Err("`max_stream_seconds` must be at least 1".into());
        }
        self.callbacks.policy()?;
        let modes = self.auth_modes()?;
        if !modes.is_empty() && self.id_secret.as_deref().is_none_or(|s| s.len() < 32) {
            return Err("`id_secret` must be set, at least 32 characters, when `auth` is not `none`: it keys the operation ids of each caller".into());
        }
        if modes.contains(&AuthMode::Jwt) {
            match &self.jwt.issuer {
                Some(i) if i.starts_with("https://") || i.starts_with("http://") => {}
                _ => {
                    return Err(
                        "`jwt_issuer` must be set to the issuer's URL when `auth` includes `jwt`"
                            .into(),
                    );
                }
            }
            if self.jwt.audiences.iter().all(|a| a.trim().is_empty()) {
                return Err(
                    "`jwt_audiences` must name at least one audience when `auth` includes `jwt`"
                        .into(),
                );
            }
            if self.jwt.identity_claims.iter().any(|c| c.trim().is_empty())
                || self.jwt.identity_claims.is_empty()
            {
                return Err(
                    "`jwt_identity_claims` must name at least one claim, e.g. `sub`".into(),
                );
            }
            if self.jwt.jwks_refresh_seconds == 0 || self.jwt.jwks_min_refetch_seconds == 0 {
                return Err("`jwt_jwks_refresh_seconds` and `jwt_jwks_min_refetch_seconds` must be at least 1".into());
            }
        }
        if modes.contains(&AuthMode::ApiKey) {
            if self.api_keys_file.as_deref().is_none_or(str::is_empty) {
                return Err("`api_keys_file` must be set when `auth` includes `api_key`".into());
            }
            if self.api_keys_reload_seconds == 0 {
                return Err("`api_keys_reload_seconds` must be at least 1".into());
            }
        }
        if let Some(u) = &self.public_base_url
            && !((u.starts_with("http://") || u.starts_with("https://")) && !u.ends_with('/'))
        {
            return Err("`public_base_url` must be an absolute http(s) URL without a trailing slash, like https://api.example.com".into());
        }
        Ok(())
    }
}

service_kit::choice! {
    /// One way of authenticating callers.
    pub enum AuthMode { Jwt = "jwt", ApiKey = "api_key" }
}

/// The `auth` setting: the ways callers authenticate, comma-separated (`jwt`, `api_key`, both),
/// or `none` (no authentication); parsed once, at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth(Vec<AuthMode>);

impl std::str::FromStr for Auth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "none" {
            return Ok(Self(Vec::new()));
        }
        let mut modes = Vec::new();
        for word in s.split(',').map(str::trim) {
            let mode: AuthMode = word.parse().map_err(|_| {
                format!(
                    "unknown mode '{word}'; use `jwt`, `api_key`, both comma-separated, or `none`"
                )
            })?;
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
        Ok(Self(modes))
    }
}

impl std::fmt::Display for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let words: Vec<&str> = self.0.iter().map(|m| m.as_str()).collect();
        f.write_str(&words.join(","))
    }
}

impl Serialize for Auth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Auth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Settings {
    /// The authentication modes `auth` names; empty for `none`.
    pub fn auth_modes(&self) -> Result<Vec<AuthMode>, String> {
        match &self.auth {
            Some(Auth(modes)) => Ok(modes.clone()),
            None => Err("`auth` must be set: `jwt`, `api_key`, `jwt,api_key`, or `none` (no authentication: anyone who reaches the gateway may do anything)".into()),
        }
    }

    /// Deadline of each scheduler call.
    pub fn dts_timeout(&self) -> Duration {
        Duration::from_millis(self.dts_timeout_ms)
    }

    /// The JWT settings, when `auth` includes `jwt`.
    pub fn jwt_config(&self) -> Option<crate::auth::JwtConfig> {
        let jwt = &self.jwt;
        Some(crate::auth::JwtConfig {
            issuer: jwt.issuer.clone()?,
            audiences: jwt.audiences.iter().map(|a| a.trim().to_string()).collect(),
            jwks_url: jwt.jwks_url.clone(),
            identity_claims: jwt
                .identity_claims
                .iter()
                .map(|c| c.trim().to_string())
                .collect(),
            roles_claim: jwt.roles_claim.clone(),
            admin_role: jwt.admin_role.clone(),
            required_role: jwt.required_role.clone(),
            leeway_seconds: jwt.leeway_seconds,
            refresh: Duration::from_secs(jwt.jwks_refresh_seconds),
            min_refetch: Duration::from_secs(jwt.jwks_min_refetch_seconds),
        })
    }

    /// The limits of the public listener.
    pub fn server_limits(&self) -> crate::serve::ServerLimits {
        let server = &self.server;
        crate::serve::ServerLimits {
            header_read_timeout: Duration::from_secs(server.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(server.idle_timeout_seconds),
            write_stall_timeout: Duration::from_secs(server.write_stall_timeout_seconds),
            answer_timeout: Duration::from_secs(server.answer_timeout_seconds),
            max_header_bytes: server.max_header_bytes,
            max_connections: server.max_connections,
            send_buffer_bytes: 128 * 1024,
            retry_after_seconds: self.retry_after_seconds,
            service: "gateway",
        }
    }
}

service_kit::choice! {
    /// Where the Swagger UI (`/docs`) is served.
    pub enum Docs {
        /// With the API.
        Public = "public",
        /// On the admin listener only (with its own copy of `/openapi.json`).
        Admin = "admin",
        Off = "off",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_page_documents_every_setting_with_its_default() {
        let defaults = service_kit::settings::flat_defaults::<Settings>(&SOURCE);
        test_support::readme::assert_documented("GATEWAY", &defaults);
    }

    #[test]
    fn recurring_limits_out_of_range_are_refused_naming_the_key() {
        use service_kit::settings::Validate;
        let base = || Settings {
            auth: Some("none".parse().expect("auth")),
            ..Settings::default()
        };
        assert_eq!(base().validate(), Ok(()));
        type Patch = fn(&mut Limits);
        let cases: [(Patch, &str); 4] = [
            (
                |l| l.min_recurring_interval_seconds = 0,
                "`min_recurring_interval_seconds`",
            ),
            (
                |l| l.max_recurring_interval_seconds = 59,
                "`max_recurring_interval_seconds`",
            ),
            (
                |l| l.max_recurring_per_caller = 0,
                "`max_recurring_per_caller`",
            ),
            (
                |l| l.max_recurring_per_caller = 1001,
                "`max_recurring_per_caller`",
            ),
        ];
        for (patch, key) in cases {
            let mut s = base();
            patch(&mut s.limits);
            let e = s.validate().unwrap_err();
            assert!(e.starts_with(key), "{e}");
        }
    }
}
