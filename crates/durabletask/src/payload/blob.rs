//! Payloads in Azure Blob Storage (or Azurite), over its REST API: blobs
//! `<container>/<instance id>/<32 hex>`, gzip-compressed, named by `blob:v1:<container>:<blob>`,
//! as the Python and .NET SDKs keep them. Authorized with the account key of a connection string
//! (Shared Key) or with an Entra ID token (`azure_identity`, e.g. workload identity).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine as _;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode};

use super::{PayloadError, PayloadStore, TOKEN_PREFIX};

/// The REST API version asked for (one Azurite and Azure both serve).
const API_VERSION: &str = "2021-08-06";
/// Azurite's well-known development account (public, documented by Microsoft).
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// A payload being read: its bytes, decompressed, as they arrive.
pub type PayloadStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>>;

enum Auth {
    SharedKey(Box<hmac::Key>),
    Token(Arc<dyn azure_core::credentials::TokenCredential>),
}

/// Payloads in one blob container.
pub struct BlobPayloadStore {
    http: reqwest::Client,
    /// The blob service's URL with no trailing slash (for Azurite, with the account in its path).
    endpoint: String,
    account: String,
    auth: Auth,
    container: String,
    compress: bool,
    container_ready: tokio::sync::OnceCell<()>,
}

fn http_client() -> Result<reqwest::Client, PayloadError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| PayloadError::Config(format!("an HTTP client for the payload store: {e}")))
}

fn check_container(container: &str) -> Result<(), PayloadError> {
    // Azure's rule: 3-63 of lower-case letters, digits and single hyphens, not at either end.
    let ok = (3..=63).contains(&container.len())
        && container
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !container.starts_with('-')
        && !container.ends_with('-')
        && !container.contains("--");
    if ok {
        Ok(())
    } else {
        Err(PayloadError::Config(format!(
            "container: '{container}' is not a blob container name (3-63 lower-case letters, digits and single hyphens)"
        )))
    }
}

/// Percent-encodes a blob name for a URL path (`/` kept).
fn encode_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl BlobPayloadStore {
    /// From a storage connection string (`AccountName` and `AccountKey`, with `BlobEndpoint` or
    /// `DefaultEndpointsProtocol` and `EndpointSuffix`; or `UseDevelopmentStorage=true` for
    /// Azurite on its default port). Errors name the missing or bad key, never the key itself.
    pub fn from_connection_string(
        connection_string: &str,
        container: &str,
    ) -> Result<Self, PayloadError> {
        check_container(container)?;
        let mut parts = std::collections::HashMap::new();
        for part in connection_string
            .split(';')
            .filter(|p| !p.trim().is_empty())
        {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                PayloadError::Config("connection_string: every part must be Key=Value".into())
            })?;
            parts.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let dev = parts
            .get("usedevelopmentstorage")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let account = match parts.get("accountname") {
            Some(a) => a.clone(),
            None if dev => DEV_ACCOUNT.to_string(),
            None => {
                return Err(PayloadError::Config(
                    "connection_string: AccountName is missing".into(),
                ));
            }
        };
        let key = match parts.get("accountkey") {
            Some(k) => k.clone(),
            None if dev => DEV_KEY.to_string(),
            None => {
                return Err(PayloadError::Config(
                    "connection_string: AccountKey is missing (SAS and token connection strings are not supported; use with_credential)".into(),
                ));
            }
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(key.as_bytes())
            .map_err(|_| {
                PayloadError::Config("connection_string: AccountKey is not base64".into())
            })?;
        let endpoint = match parts.get("blobendpoint") {
            Some(e) => e.trim_end_matches('/').to_string(),
            None if dev => format!("http://127.0.0.1:10000/{DEV_ACCOUNT}"),
            None => format!(
                "{}://{account}.blob.{}",
                parts
                    .get("defaultendpointsprotocol")
                    .map_or("https", String::as_str),
                parts
                    .get("endpointsuffix")
                    .map_or("core.windows.net", String::as_str)
            ),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(PayloadError::Config(
                "connection_string: BlobEndpoint must be an http(s) URL".into(),
            ));
        }
        Ok(Self {
            http: http_client()?,
            endpoint,
            account,
            auth: Auth::SharedKey(Box::new(hmac::Key::new(hmac::HMAC_SHA256, &key))),
            container: container.to_string(),
            compress: true,
            container_ready: tokio::sync::OnceCell::new(),
        })
    }

    /// With an Entra ID credential (the identity needs the Storage Blob Data Contributor role)
    /// on `account_url` (`https://<account>.blob.core.windows.net`).
    pub fn with_credential(
        account_url: &str,
        credential: Arc<dyn azure_core::credentials::TokenCredential>,
        container: &str,
    ) -> Result<Self, PayloadError> {
        check_container(container)?;
        let endpoint = account_url.trim_end_matches('/').to_string();
        let host = endpoint
            .strip_prefix("https://")
            .ok_or_else(|| PayloadError::Config("account_url: must be an https URL".into()))?;
        let account = host.split('.').next().unwrap_or_default().to_string();
        Ok(Self {
            http: http_client()?,
            endpoint,
            account,
            auth: Auth::Token(credential),
            container: container.to_string(),
            compress: true,
            container_ready: tokio::sync::OnceCell::new(),
        })
    }

    /// Stores payloads as they are, not gzip-compressed (reads take either).
    pub fn without_compression(mut self) -> Self {
        self.compress = false;
        self
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// The container and blob a token names. Only this store's container: a token is data that
    /// came through the scheduler, and must not make this process read elsewhere in the account.
    fn parse_token<'t>(&self, token: &'t str) -> Result<(&'t str, &'t str), PayloadError> {
        token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .filter(|(c, b)| *c == self.container && !b.is_empty())
            .ok_or_else(|| PayloadError::BadToken(token.to_string()))
    }

    /// One request to the blob service at `path` (already encoded, from the container on).
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, PayloadError> {
        let mut url = format!("{}/{path}", self.endpoint);
        if !query.is_empty() {
            let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            url.push('?');
            url.push_str(&q.join("&"));
        }
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let mut headers: Vec<(String, String)> = vec![
            ("x-ms-date".into(), date),
            ("x-ms-version".into(), API_VERSION.into()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let length = body.as_ref().map_or(0, Vec::len);
        let authorization = match &self.auth {
            Auth::SharedKey(key) => {
                let url_path = url
                    .split_once("://")
                    .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                    .unwrap_or("/");
                let url_path = url_path.split('?').next().unwrap_or("/");
                let to_sign = string_to_sign(
                    method.as_str(),
                    length,
                    &headers,
                    &self.account,
                    url_path,
                    query,
                );
                let sig = hmac::sign(key, to_sign.as_bytes());
                format!(
                    "SharedKey {}:{}",
                    self.account,
                    base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
                )
            }
            Auth::Token(credential) => {
                let token = credential
                    .get_token(&[STORAGE_SCOPE], None)
                    .await
                    .map_err(|e| PayloadError::Store(format!("a token for blob storage: {e}")))?;
                format!("Bearer {}", token.token.secret())
            }
        };
        let mut req = self
            .http
            .request(method, &url)
            .header("authorization", authorization);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(body) = body {
            req = req.header("content-length", length).body(body);
        }
        req.send()
            .await
            .map_err(|e| PayloadError::Store(format!("{path}: {e}")))
    }

    async fn create_container(&self) -> Result<(), PayloadError> {
        let resp = self
            .send(
                Method::PUT,
                &self.container,
                &[("restype", "container")],
                &[],
                None,
            )
            .await?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::CONFLICT => Ok(()),
            s => Err(failed("creating the container", s, resp).await),
        }
    }

    /// Creates the container once per store (it may exist already).
    async fn ensure_container(&self) -> Result<(), PayloadError> {
        self.container_ready
            .get_or_try_init(|| self.create_container())
            .await
            .map(|_| ())
    }

    /// Reads a payload as a stream, decompressed as it arrives (for answers too large to hold).
    pub async fn open(&self, token: &str) -> Result<PayloadStream, PayloadError> {
        let (container, blob) = self.parse_token(token)?;
        let path = format!("{container}/{}", encode_path(blob));
        let resp = self.send(Method::GET, &path, &[], &[], None).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(PayloadError::Missing(token.to_string())),
            s => return Err(failed("reading a payload", s, resp).await),
        }
        let mut raw = resp.bytes_stream().map_err(std::io::Error::other).boxed();
        // Compressed or not, as the writer chose: JSON never starts with gzip's magic bytes.
        let first = match raw.next().await {
            Some(chunk) => chunk.map_err(|e| PayloadError::Store(e.to_string()))?,
            None => return Ok(futures::stream::empty().boxed()),
        };
        let gzipped = first.starts_with(&[0x1f, 0x8b]);
        let whole = futures::stream::once(async move { Ok(first) }).chain(raw);
        if !gzipped {
            return Ok(whole.boxed());
        }
        let reader = tokio_util::io::StreamReader::new(whole);
        let decoder = async_compression::tokio::bufread::GzipDecoder::new(reader);
        Ok(tokio_util::io::ReaderStream::new(decoder).boxed())
    }
}

async fn failed(what: &str, status: StatusCode, resp: reqwest::Response) -> PayloadError {
    let code = resp
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    PayloadError::Store(format!("{what}: HTTP {status} {code}"))
}

/// The Shared Key string to sign of a Blob service request (version 2015-02-21 and later).
fn string_to_sign(
    method: &str,
    content_length: usize,
    headers: &[(String, String)],
    account: &str,
    url_path: &str,
    query: &[(&str, &str)],
) -> String {
    let length = if content_length == 0 {
        String::new()
    } else {
        content_length.to_string()
    };
    // VERB, Content-Encoding, -Language, -Length, -MD5, -Type, Date, If-Modified-Since,
    // If-Match, If-None-Match, If-Unmodified-Since, Range.
    let mut s = format!("{method}\n\n\n{length}\n\n\n\n\n\n\n\n\n");
    let mut ms: Vec<(String, &str)> = headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-ms-"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim()))
        .collect();
    ms.sort();
    for (k, v) in ms {
        s.push_str(&format!("{k}:{v}\n"));
    }
    s.push_str(&format!("/{account}{url_path}"));
    let mut q: Vec<(String, &str)> = query
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), *v))
        .collect();
    q.sort();
    for (k, v) in q {
        s.push_str(&format!("\n{k}:{v}"));
    }
    s
}

#[async_trait::async_trait]
impl PayloadStore for BlobPayloadStore {
    async fn upload(
        &self,
        data: Vec<u8>,
        instance_id: Option<&str>,
    ) -> Result<String, PayloadError> {
        self.ensure_container().await?;
        let data = if self.compress {
            use std::io::Write as _;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&data)
                .and_then(|()| gz.finish())
                .map_err(|e| PayloadError::Store(format!("compressing a payload: {e}")))?
        } else {
            data
        };
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let blob = match instance_id.filter(|i| !i.is_empty()) {
            Some(id) => format!("{id}/{unique}"),
            None => unique,
        };
        let path = format!("{}/{}", self.container, encode_path(&blob));
        let put = || {
            self.send(
                Method::PUT,
                &path,
                &[],
                &[("x-ms-blob-type", "BlockBlob")],
                Some(data.clone()),
            )
        };
        let mut resp = put().await?;
        if resp.status() == StatusCode::NOT_FOUND {
            // The container went away since it was made: make it again, once.
            self.create_container().await?;
            resp = put().await?;
        }
        if !resp.status().is_success() {
            return Err(failed("storing a payload", resp.status(), resp).await);
        }
        Ok(format!("{TOKEN_PREFIX}{}:{blob}", self.container))
    }

    async fn download(&self, token: &str) -> Result<Vec<u8>, PayloadError> {
        let stream = self.open(token).await?;
        let chunks: Vec<bytes::Bytes> = stream
            .try_collect()
            .await
            .map_err(|e| PayloadError::Store(format!("reading a payload: {e}")))?;
        Ok(chunks.concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_to_sign_follows_the_shared_key_rules() {
        let headers = vec![
            ("x-ms-version".to_string(), "2021-08-06".to_string()),
            (
                "x-ms-date".to_string(),
                "Sun, 06 Dec 2026 20:00:00 GMT".to_string(),
            ),
            ("x-ms-blob-type".to_string(), "BlockBlob".to_string()),
        ];
        let s = string_to_sign(
            "PUT",
            11,
            &headers,
            "devstoreaccount1",
            "/devstoreaccount1/payloads/i%3A1/abc",
            &[("restype", "container"), ("comp", "list")],
        );
        assert_eq!(
            s,
            "PUT\n\n\n11\n\n\n\n\n\n\n\n\n\
             x-ms-blob-type:BlockBlob\nx-ms-date:Sun, 06 Dec 2026 20:00:00 GMT\nx-ms-version:2021-08-06\n\
             /devstoreaccount1/devstoreaccount1/payloads/i%3A1/abc\ncomp:list\nrestype:container"
        );
        // No body: an empty length line.
        assert!(string_to_sign("GET", 0, &[], "a", "/c/b", &[]).starts_with("GET\n\n\n\n"));
    }

    #[test]
    fn connection_strings_are_read_and_bad_ones_name_what_is_wrong() {
        let s = BlobPayloadStore::from_connection_string("UseDevelopmentStorage=true", "payloads")
            .expect("dev storage");
        assert_eq!(s.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        let s = BlobPayloadStore::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
            "durabletask-payloads",
        )
        .expect("account");
        assert_eq!(s.endpoint, "https://acct.blob.core.windows.net");
        for (cs, container, want) in [
            ("AccountKey=a2V5", "payloads", "AccountName"),
            ("AccountName=acct", "payloads", "AccountKey"),
            ("AccountName=acct;AccountKey=!!", "payloads", "base64"),
            ("nonsense", "payloads", "Key=Value"),
            ("UseDevelopmentStorage=true", "Bad_Name", "container"),
            (
                "UseDevelopmentStorage=true;BlobEndpoint=ftp://x",
                "payloads",
                "BlobEndpoint",
            ),
        ] {
            let e = BlobPayloadStore::from_connection_string(cs, container)
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains(want), "{cs}: {e}");
            assert!(!e.contains("a2V5"), "the key leaked: {e}");
        }
    }

    #[test]
    fn tokens_are_parsed_as_the_other_sdks_write_them() {
        let s = BlobPayloadStore::from_connection_string("UseDevelopmentStorage=true", "payloads")
            .expect("store");
        assert_eq!(
            s.parse_token("blob:v1:payloads:abc/0123").expect("token"),
            ("payloads", "abc/0123")
        );
        // The blob name may hold colons (instance ids do).
        assert_eq!(
            s.parse_token("blob:v1:payloads:a:b/c").expect("token"),
            ("payloads", "a:b/c")
        );
        for bad in [
            "blob:v1:payloads",
            "blob:v1::x",
            "blob:v2:payloads:x",
            "x",
            // Another container of the account: not this store's to read.
            "blob:v1:secrets:x",
        ] {
            assert!(s.parse_token(bad).is_err(), "{bad}");
        }
        assert_eq!(encode_path("a b/c:d+e"), "a%20b/c%3Ad%2Be");
    }
}
