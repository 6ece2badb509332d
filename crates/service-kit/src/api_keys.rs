//! API keys: a file (a mounted Secret) of hashed keys, read again when it changes, so that a key
//! is added or revoked without a restart. The gateway's callers present them; the dashboard
//! takes the same file's admin keys.
//!
//! ```json
//! {"keys": [{"id": "nightly-batch", "name": "Nightly batch", "role": "user",
//!            "sha256": "<hex SHA-256 of the key>"}]}
//! ```
//!
//! Only hashes are stored: keys are random (32 bytes or more), so a fast hash is enough, and the
//! file leaks nothing that lets anyone call the API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;

/// The header a key is presented in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// What a key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Its own operations.
    User,
    /// Every operation.
    Admin,
}

/// The key a presented secret matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHolder {
    pub id: String,
    pub role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    #[allow(dead_code)] // for the people reading the file
    name: String,
    role: Role,
    sha256: String,
}

type Table = HashMap<[u8; 32], (String, Role)>;

pub struct ApiKeys {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    /// The file's bytes when last read: a reload happens only when they change.
    last: RwLock<Vec<u8>>,
}

impl ApiKeys {
    /// Reads `path`; an error names the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let table = parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            table: RwLock::new(Arc::new(table)),
            last: RwLock::new(bytes),
        })
    }

    /// How many keys are accepted now.
    pub fn len(&self) -> usize {
        self.table.read().map(|t| t.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key a presented secret is, if it is one of the file's.
    pub fn check(&self, presented: &str) -> Option<KeyHolder> {
        if presented.is_empty() || presented.len() > 512 {
            return None;
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, presented.as_bytes());
        let hash: [u8; 32] = digest.as_ref().try_into().ok()?;
        let table = self.table.read().ok()?.clone();
        table.get(&hash).map(|(id, role)| KeyHolder {
            id: id.clone(),
            role: *role,
        })
    }

    /// Reads the file again if it changed. A file that no longer parses is reported and the
    /// keys last read stay in force (a half-written Secret must not lock everyone out).
    pub fn reload(&self) -> Result<bool, String> {
        let bytes =
            std::fs::read(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if self.last.read().map(|l| *l == bytes).unwrap_or(false) {
            return Ok(false);
        }
        let table = parse(&bytes).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if let Ok(mut t) = self.table.write() {
            *t = Arc::new(table);
        }
        if let Ok(mut l) = self.last.write() {
            *l = bytes;
        }
        Ok(true)
    }

    /// Reloads every `every` until the process ends.
    pub fn watch(self: Arc<Self>, every: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match self.reload() {
                    Ok(true) => tracing::info!(keys = self.len(), "API keys reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "API keys file unreadable; the keys read before stay in force")
                    }
                }
            }
        });
    }
}

fn parse(bytes: &[u8]) -> Result<Table, String> {
    let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut table = Table::new();
    for k in file.keys {
        if k.id.is_empty()
            || !k
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "key id '{}' must be letters, digits, '-' or '_'",
                k.id
            ));
        }
        let hash: [u8; 32] = hex::decode(k.sha256.trim())
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| format!("key '{}': `sha256` must be 64 hex digits", k.id))?;
        if table.values().any(|(id, _)| *id == k.id) {
            return Err(format!("key id '{}' appears twice", k.id));
        }
        table.insert(hash, (k.id, k.role));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(key: &str) -> String {
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            key.as_bytes(),
        ))
    }

    #[test]
    fn keys_are_checked_by_hash_and_bad_files_are_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("keys.json");
        let write = |keys: &str| std::fs::write(&path, keys).expect("write");
        write(&format!(
            r#"{{"keys":[{{"id":"batch","name":"Batch","role":"user","sha256":"{}"}}]}}"#,
            sha("s3cret-key")
        ));
        let keys = ApiKeys::load(&path).expect("load");
        let holder = keys.check("s3cret-key").expect("known");
        assert_eq!(holder.id, "batch");
        assert_eq!(holder.role, Role::User);
        assert!(keys.check("another").is_none());
        assert!(keys.check("").is_none());

        // Revoked: gone after a reload; a broken file keeps the keys last read.
        write(r#"{"keys":[]}"#);
        assert_eq!(keys.reload(), Ok(true));
        assert!(keys.check("s3cret-key").is_none());
        write("{not json");
        assert!(keys.reload().is_err());
        assert!(keys.is_empty());

        for (bad, why) in [
            (
                r#"{"keys":[{"id":"a b","name":"","role":"user","sha256":"00"}]}"#,
                "letters",
            ),
            (
                r#"{"keys":[{"id":"a","name":"","role":"user","sha256":"00"}]}"#,
                "64 hex",
            ),
            (
                r#"{"keys":[{"id":"a","name":"","role":"root","sha256":"00"}]}"#,
                "unknown variant",
            ),
        ] {
            write(bad);
            let e = ApiKeys::load(&path).err().expect("refused");
            assert!(e.contains(why) && e.contains("keys.json"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
