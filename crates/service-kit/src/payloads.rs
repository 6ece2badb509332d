//! Large payloads (the claim check) as a service configures them: the keys `payload_<field>`,
//! shared by the worker (which stores and reads payloads) and the gateway (which streams large
//! results from the store).

use std::sync::Arc;

use durabletask::payload::{BlobPayloadStore, LargePayloadOptions, Payloads};
use serde::{Deserialize, Serialize};

use crate::settings::Section;

/// Where large payloads go. Without a connection string there is no claim check: payloads over
/// the scheduler's message limit are refused, as before.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PayloadSettings {
    /// An Azure Storage connection string with the account key (`AccountName`, `AccountKey`,
    /// and `BlobEndpoint` or `EndpointSuffix`; `UseDevelopmentStorage=true` for Azurite). A
    /// secret: give it from a Kubernetes Secret or the environment, never in a committed file.
    pub connection_string: Option<String>,
    /// The blob container (made when missing).
    pub container: String,
    /// Payloads of more bytes are stored in the container (the SDKs' 256 KiB by default).
    pub threshold_bytes: usize,
    /// Payloads of more bytes are refused: the work fails with the reason.
    pub max_bytes: usize,
}

impl Default for PayloadSettings {
    fn default() -> Self {
        let sdk = LargePayloadOptions::default();
        Self {
            connection_string: None,
            container: "durabletask-payloads".into(),
            threshold_bytes: sdk.threshold_bytes,
            max_bytes: sdk.max_stored_payload_bytes,
        }
    }
}

/// The connection string holds the account key: never printed.
impl std::fmt::Debug for PayloadSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadSettings")
            .field(
                "connection_string",
                &self.connection_string.as_ref().map(|_| "<redacted>"),
            )
            .field("container", &self.container)
            .field("threshold_bytes", &self.threshold_bytes)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl PayloadSettings {
    pub const PREFIX: &'static str = "payload_";
    /// The section, as it sits in a service's settings (the field `payloads`).
    pub const SECTION: Section<'static> = Section {
        field: "payloads",
        prefix: Self::PREFIX,
    };

    /// The blob store, when configured; errors name the key.
    pub fn store(&self) -> Result<Option<Arc<BlobPayloadStore>>, String> {
        let Some(cs) = &self.connection_string else {
            return Ok(None);
        };
        if self.threshold_bytes == 0 {
            return Err("`payload_threshold_bytes` must be at least 1".into());
        }
        if self.max_bytes < self.threshold_bytes {
            return Err("`payload_max_bytes` must be at least `payload_threshold_bytes`".into());
        }
        BlobPayloadStore::from_connection_string(cs, &self.container)
            .map(|s| Some(Arc::new(s)))
            .map_err(|e| {
                let e = e.to_string();
                if e.starts_with("container") {
                    format!("`payload_container`: {e}")
                } else {
                    format!("`payload_{e}").replacen(
                        "payload_connection_string:",
                        "payload_connection_string`:",
                        1,
                    )
                }
            })
    }

    /// The claim check for the SDK's client and worker, when configured.
    pub fn payloads(&self) -> Result<Option<Payloads>, String> {
        Ok(self.store()?.map(|store| {
            Payloads::new(
                store,
                LargePayloadOptions {
                    threshold_bytes: self.threshold_bytes,
                    max_stored_payload_bytes: self.max_bytes,
                },
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_naming_the_key_and_the_key_is_never_shown() {
        let with = |cs: &str| PayloadSettings {
            connection_string: Some(cs.into()),
            ..Default::default()
        };
        assert!(
            PayloadSettings::default()
                .payloads()
                .expect("off")
                .is_none()
        );
        assert!(
            with("UseDevelopmentStorage=true")
                .payloads()
                .expect("on")
                .is_some()
        );
        let e = with("AccountName=a").payloads().unwrap_err();
        assert!(e.starts_with("`payload_connection_string`"), "{e}");
        let e = PayloadSettings {
            container: "No".into(),
            ..with("UseDevelopmentStorage=true")
        }
        .payloads()
        .unwrap_err();
        assert!(e.starts_with("`payload_container`"), "{e}");
        let e = PayloadSettings {
            max_bytes: 1,
            ..with("UseDevelopmentStorage=true")
        }
        .payloads()
        .unwrap_err();
        assert!(e.starts_with("`payload_max_bytes`"), "{e}");
        let secret = with("AccountName=a;AccountKey=c2VjcmV0LWtleQ==");
        assert!(!format!("{secret:?}").contains("c2VjcmV0"));
    }
}
