//! Large payloads: the claim check the Durable Task SDKs share. A payload (an input, output,
//! event, custom status or entity state: any `StringValue` of any message) larger than a
//! threshold is stored outside the scheduler, and the message carries a token in its place,
//! `blob:v1:<container>:<blob name>`; whoever receives a message with tokens reads the payloads
//! back. So payloads past the scheduler's message limit pass through it, and a payload stored by
//! one SDK is read by another (the Python and .NET SDKs use the same token and blob layout:
//! `<instance id>/<32 hex>`, gzip-compressed).
//!
//! - [`PayloadStore`]: where payloads go; [`BlobPayloadStore`] is Azure Blob Storage (or
//!   Azurite).
//! - [`Payloads`]: a store and its [`LargePayloadOptions`], applied to whole messages by the
//!   [`crate::Client`] and the [`crate::Worker`] when configured with one.

mod blob;
pub(crate) mod walk;

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

pub use blob::{BlobPayloadStore, PayloadStream};

/// The token prefix the SDKs' blob stores share.
pub const TOKEN_PREFIX: &str = "blob:v1:";

/// When a payload is stored outside the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LargePayloadOptions {
    /// Payloads of more bytes (UTF-8) are stored outside (256 KiB by default, the SDKs').
    pub threshold_bytes: usize,
    /// Payloads of more bytes are refused (10 MiB by default, the SDKs').
    pub max_stored_payload_bytes: usize,
}

impl Default for LargePayloadOptions {
    fn default() -> Self {
        Self {
            threshold_bytes: 256 * 1024,
            max_stored_payload_bytes: 10 * 1024 * 1024,
        }
    }
}

/// Why a payload could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Over `max_stored_payload_bytes`: no retry helps.
    #[error("a payload of {size} bytes is over the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// The token names nothing this store can read: no retry helps.
    #[error("not a payload token this store can read: {0}")]
    BadToken(String),
    /// The stored payload is gone (deleted, or another account).
    #[error("the stored payload {0} does not exist")]
    Missing(String),
    /// The store failed or could not be reached; a retry may succeed.
    #[error("the payload store failed: {0}")]
    Store(String),
    /// The message around the payloads cannot be read.
    #[error("{0}")]
    Message(String),
    /// The configuration is wrong (a connection string without a key, say).
    #[error("{0}")]
    Config(String),
}

impl PayloadError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

/// Where large payloads are kept.
#[async_trait::async_trait]
pub trait PayloadStore: Send + Sync {
    /// Stores `data` and returns its token.
    async fn upload(
        &self,
        data: Vec<u8>,
        instance_id: Option<&str>,
    ) -> Result<String, PayloadError>;
    /// The payload a token names.
    async fn download(&self, token: &str) -> Result<Vec<u8>, PayloadError>;
    /// Whether `value` is a token of this store.
    fn is_token(&self, value: &str) -> bool {
        value.starts_with(TOKEN_PREFIX)
    }
}

/// A payload store and when to use it.
#[derive(Clone)]
pub struct Payloads {
    pub store: Arc<dyn PayloadStore>,
    pub options: LargePayloadOptions,
}

impl std::fmt::Debug for Payloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payloads")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Payloads {
    pub fn new(store: Arc<dyn PayloadStore>, options: LargePayloadOptions) -> Self {
        Self { store, options }
    }

    /// Stores every payload of `msg` (a message of contract type `type_name`) over the
    /// threshold and puts its token in its place. A message no larger than the threshold is
    /// left as it is without a look.
    pub(crate) async fn externalize<M: Message + Default>(
        &self,
        msg: &mut M,
        type_name: &str,
        instance_id: Option<&str>,
    ) -> Result<(), PayloadError> {
        let threshold = self.options.threshold_bytes;
        if msg.encoded_len() <= threshold {
            return Ok(());
        }
        let bytes = msg.encode_to_vec();
        let mut large: HashMap<String, Option<String>> = HashMap::new();
        walk::rewrite(&bytes, type_name, &mut |v| {
            if v.len() > threshold && !self.store.is_token(v) {
                large.entry(v.to_string()).or_default();
            }
            None
        })
        .map_err(|e| PayloadError::Message(e.to_string()))?;
        if large.is_empty() {
            return Ok(());
        }
        for (value, token) in &mut large {
            if value.len() > self.options.max_stored_payload_bytes {
                return Err(PayloadError::TooLarge {
                    size: value.len(),
                    max: self.options.max_stored_payload_bytes,
                });
            }
            *token = Some(
                self.store
                    .upload(value.as_bytes().to_vec(), instance_id)
                    .await?,
            );
        }
        self.replace(msg, &bytes, type_name, |v| large.get(v).cloned().flatten())
    }

    /// Reads back every payload of `msg` that is a token. A message without the token prefix
    /// anywhere in it is left as it is.
    pub(crate) async fn internalize<M: Message + Default>(
        &self,
        msg: &mut M,
        type_name: &str,
    ) -> Result<(), PayloadError> {
        let bytes = msg.encode_to_vec();
        if memchr::memmem::find(&bytes, TOKEN_PREFIX.as_bytes()).is_none() {
            return Ok(());
        }
        let mut tokens: HashMap<String, Option<String>> = HashMap::new();
        walk::rewrite(&bytes, type_name, &mut |v| {
            if self.store.is_token(v) {
                tokens.entry(v.to_string()).or_default();
            }
            None
        })
        .map_err(|e| PayloadError::Message(e.to_string()))?;
        if tokens.is_empty() {
            return Ok(());
        }
        for (token, value) in &mut tokens {
            let data = self.store.download(token).await?;
            *value = Some(String::from_utf8(data).map_err(|_| {
                PayloadError::Message(format!("the payload of {token} is not UTF-8 text"))
            })?);
        }
        self.replace(msg, &bytes, type_name, |v| tokens.get(v).cloned().flatten())
    }

    fn replace<M: Message + Default>(
        &self,
        msg: &mut M,
        bytes: &[u8],
        type_name: &str,
        with: impl Fn(&str) -> Option<String>,
    ) -> Result<(), PayloadError> {
        let rewritten = walk::rewrite(bytes, type_name, &mut |v| with(v))
            .map_err(|e| PayloadError::Message(e.to_string()))?;
        if let Some(new) = rewritten {
            *msg = M::decode(&new[..]).map_err(|e| PayloadError::Message(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use durabletask_proto as pb;
    use std::sync::Mutex;

    /// Keeps payloads in memory, counting uploads.
    #[derive(Default)]
    struct Memory(Mutex<HashMap<String, Vec<u8>>>);

    #[async_trait::async_trait]
    impl PayloadStore for Memory {
        async fn upload(&self, data: Vec<u8>, id: Option<&str>) -> Result<String, PayloadError> {
            let mut m = self.0.lock().expect("lock");
            let token = format!("{TOKEN_PREFIX}c:{}/{}", id.unwrap_or(""), m.len());
            m.insert(token.clone(), data);
            Ok(token)
        }
        async fn download(&self, token: &str) -> Result<Vec<u8>, PayloadError> {
            let m = self.0.lock().expect("lock");
            m.get(token)
                .cloned()
                .ok_or_else(|| PayloadError::Missing(token.to_string()))
        }
    }

    fn payloads(store: Arc<Memory>, threshold: usize, max: usize) -> Payloads {
        Payloads::new(
            store,
            LargePayloadOptions {
                threshold_bytes: threshold,
                max_stored_payload_bytes: max,
            },
        )
    }

    #[tokio::test]
    async fn large_payloads_become_tokens_and_come_back_and_small_ones_stay() {
        let store = Arc::new(Memory::default());
        let p = payloads(store.clone(), 100, 10_000);
        let large = "y".repeat(5_000);
        let mut req = pb::CreateInstanceRequest {
            instance_id: "abc".into(),
            name: "o".into(),
            input: Some(large.clone()),
            ..Default::default()
        };
        p.externalize(&mut req, "CreateInstanceRequest", Some("abc"))
            .await
            .expect("externalize");
        let token = req.input.clone().expect("input");
        assert_eq!(token, "blob:v1:c:abc/0");
        p.internalize(&mut req, "CreateInstanceRequest")
            .await
            .expect("internalize");
        assert_eq!(req.input.as_deref(), Some(large.as_str()));
        // Small: untouched, nothing stored.
        let mut small = pb::CreateInstanceRequest {
            input: Some("\"small\"".into()),
            ..Default::default()
        };
        p.externalize(&mut small, "CreateInstanceRequest", None)
            .await
            .expect("externalize");
        assert_eq!(small.input.as_deref(), Some("\"small\""));
        assert_eq!(store.0.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn a_payload_over_the_maximum_is_refused_and_the_message_kept() {
        let p = payloads(Arc::new(Memory::default()), 100, 1_000);
        let mut req = pb::ActivityResponse {
            result: Some("z".repeat(2_000)),
            ..Default::default()
        };
        let e = p
            .externalize(&mut req, "ActivityResponse", None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                PayloadError::TooLarge {
                    size: 2000,
                    max: 1000
                }
            ),
            "{e}"
        );
        assert!(!e.is_transient());
        assert_eq!(req.result.as_ref().map(String::len), Some(2_000));
        // A token that names nothing: an error, not a panic or an empty payload.
        let mut bad = pb::ActivityRequest {
            input: Some("blob:v1:c:nothing".into()),
            ..Default::default()
        };
        assert!(matches!(
            p.internalize(&mut bad, "ActivityRequest").await,
            Err(PayloadError::Missing(_))
        ));
    }
}
