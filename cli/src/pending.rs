//! Sends whose outcome the CLI does not know yet, kept so that running the same command
//! again is safe.
//!
//! A send carries an idempotency key: the server stores one message per key. A send that
//! did not reach the server, lost its connection, timed out, or was accepted but not
//! finished leaves the person unsure, and the natural thing to do is to run the command
//! again. If that made a new key, a message that had in fact been stored would be stored
//! twice. So the key of such a send is kept here (in the config directory, beside the
//! session), under the send's server, chat, sender and text, and the same command takes it
//! up again; it is forgotten once the server gave a final answer. Entries expire after a
//! day: a person who sends the same text again tomorrow means a new message.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    error::CliError,
    session::{create_private_dir, now_unix, write_private},
};

const FILE: &str = "pending-sends.json";
/// How long an unfinished send's key is reused.
const KEEP_SECS: i64 = 24 * 3600;

#[derive(Debug, Default, Serialize, Deserialize)]
struct PendingFile {
    #[serde(default)]
    sends: BTreeMap<String, PendingSend>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingSend {
    key: String,
    at: i64,
}

/// The unfinished sends of one config directory.
pub struct PendingSends {
    path: PathBuf,
}

impl PendingSends {
    /// The pending sends recorded in `dir` (the session's config directory).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE),
        }
    }

    /// The idempotency key for this send: the one an unfinished identical send used, or a
    /// new one, recorded before the send is tried (a send killed midway is covered too).
    pub fn key_for(&self, what: &str) -> Result<String, CliError> {
        let mut file = self.read();
        let now = now_unix();
        file.sends.retain(|_, p| now - p.at < KEEP_SECS);
        if let Some(p) = file.sends.get(what) {
            return Ok(p.key.clone());
        }
        let key = uuid::Uuid::new_v4().to_string();
        file.sends.insert(
            what.to_owned(),
            PendingSend {
                key: key.clone(),
                at: now,
            },
        );
        self.write(&file)?;
        Ok(key)
    }

    /// The send got its final answer: its key is not reused.
    pub fn forget(&self, what: &str) {
        let mut file = self.read();
        if file.sends.remove(what).is_some() {
            // Failing to forget only means the next identical send is deduplicated.
            let _ = self.write(&file);
        }
    }

    /// A damaged or missing file counts as empty: the worst that follows is a new key.
    fn read(&self) -> PendingFile {
        fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write(&self, file: &PendingFile) -> Result<(), CliError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let failed = |e: std::io::Error| {
            CliError::new(format!(
                "cannot keep the send's key in {}: {e}",
                self.path.display()
            ))
        };
        let json = serde_json::to_vec_pretty(file)
            .map_err(|e| CliError::new(format!("cannot encode the unfinished sends: {e}")))?;
        create_private_dir(dir).map_err(failed)?;
        write_private(dir, FILE, &json).map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_send_keeps_its_key_until_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pending = PendingSends::in_dir(&dir.path().join("cfg"));
        let a = pending.key_for("s\n1\nalice\nhi").expect("key");
        assert_eq!(pending.key_for("s\n1\nalice\nhi").expect("key"), a);
        assert_ne!(pending.key_for("s\n1\nalice\nbye").expect("key"), a);
        pending.forget("s\n1\nalice\nhi");
        assert_ne!(pending.key_for("s\n1\nalice\nhi").expect("key"), a);
    }

    /// The file names chats and the texts of messages: only its owner may read it.
    #[cfg(unix)]
    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("cfg");
        PendingSends::in_dir(&cfg)
            .key_for("s\n1\nalice\nsecret")
            .expect("key");
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&cfg.join(FILE)), 0o600);
        assert_eq!(mode(&cfg), 0o700);
    }
}
