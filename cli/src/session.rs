//! The login session on disk: who is logged in and their tokens, one entry per auth server.
//!
//! The file lives in the user's config directory (`$CHAT_CONFIG_DIR` overrides it, for tests
//! and for people who keep several identities) and is written with mode 0600 in a 0700
//! directory: the refresh token is as good as the password for a month.
//!
//! Several `chat` processes may share the file (one connected, another sending). Refresh
//! tokens are single use and presenting a used one revokes the whole login, so two
//! processes must never refresh with the same token. [`SessionStore::lock`] takes a lock file
//! around refresh; under it the refresher re-reads the file and adopts tokens that another
//! process already rotated instead of rotating them again.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// A logged-in user and their tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user's id, as auth assigned it.
    pub user_id: i64,
    /// The email the user logged in with.
    pub email: String,
    /// The username, as auth knows it.
    pub username: String,
    /// The current access token, sent with every call.
    pub access_token: String,
    /// Unix seconds.
    pub access_expires_at: i64,
    /// Exchanged for a new pair when the access token is about to expire.
    pub refresh_token: String,
    /// Unix seconds.
    pub refresh_expires_at: i64,
}

impl Session {
    /// Whether the access token expires within `margin` of now (or already has), so it
    /// should be refreshed before use rather than fail in flight.
    pub fn access_expiring(&self, margin: Duration) -> bool {
        now_unix() + margin.as_secs() as i64 >= self.access_expires_at
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SessionFile {
    /// Keyed by the auth server's address.
    sessions: BTreeMap<String, Session>,
}

/// The session file, seen from one auth server.
#[derive(Debug, Clone)]
pub struct SessionStore {
    dir: PathBuf,
    /// The auth server's address; sessions of other servers in the file are left alone.
    key: String,
}

const FILE: &str = "session.json";
const LOCK: &str = "session.lock";

impl SessionStore {
    /// The store in `$CHAT_CONFIG_DIR`, or `<config dir>/grpc-chat`.
    pub fn for_server(key: &str) -> Result<Self, CliError> {
        let dir = match std::env::var_os("CHAT_CONFIG_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => dirs::config_dir()
                .ok_or_else(|| {
                    CliError::new(
                        "cannot find a config directory to keep the session in; set CHAT_CONFIG_DIR",
                    )
                })?
                .join("grpc-chat"),
        };
        Ok(Self::in_dir(dir, key))
    }

    /// The store in `dir` for the auth server at `key`; nothing is read or created yet.
    pub fn in_dir(dir: PathBuf, key: &str) -> Self {
        Self {
            dir,
            key: key.to_owned(),
        }
    }

    /// The config directory the file is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the session file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// This server's session, if the file holds one; a missing file is no session.
    pub fn load(&self) -> Result<Option<Session>, CliError> {
        Ok(self.read_file()?.sessions.remove(&self.key))
    }

    /// Keeps `session` as this server's, replacing the one before; sessions of other servers in the
    /// file are kept.
    pub fn save(&self, session: &Session) -> Result<(), CliError> {
        let mut file = self.read_file()?;
        file.sessions.insert(self.key.clone(), session.clone());
        self.write_file(&file)
    }

    /// Forgets this server's session; other servers' sessions are kept.
    pub fn clear(&self) -> Result<(), CliError> {
        let mut file = self.read_file()?;
        if file.sessions.remove(&self.key).is_some() {
            self.write_file(&file)?;
        }
        Ok(())
    }

    /// Takes the store's lock, waiting up to a few seconds for another process to release
    /// it. A lock older than that is taken to be left by a crashed process and broken.
    pub async fn lock(&self) -> Result<StoreLock, CliError> {
        self.ensure_dir()?;
        let path = self.dir.join(LOCK);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(StoreLock { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > Duration::from_secs(30));
                    if stale || tokio::time::Instant::now() >= deadline {
                        let _ = fs::remove_file(&path);
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Err(e) => return Err(io_error("cannot lock the session file", &path, &e)),
            }
        }
    }

    fn read_file(&self) -> Result<SessionFile, CliError> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| {
                CliError::new(format!(
                    "the session file {} is damaged: delete it and log in again",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SessionFile::default()),
            Err(e) => Err(io_error("cannot read the session file", &path, &e)),
        }
    }

    /// Writes to a private temporary file and renames it over the old one, so a reader
    /// never sees half a file and the tokens are never readable by others, not even briefly.
    fn write_file(&self, file: &SessionFile) -> Result<(), CliError> {
        self.ensure_dir()?;
        let json = serde_json::to_vec_pretty(file)
            .map_err(|e| CliError::new(format!("cannot encode the session: {e}")))?;
        write_private(&self.dir, FILE, &json)
            .map_err(|e| io_error("cannot save the session", &self.path(), &e))
    }

    fn ensure_dir(&self) -> Result<(), CliError> {
        create_private_dir(&self.dir)
            .map_err(|e| io_error("cannot create the config directory", &self.dir, &e))
    }
}

/// Creates `dir` (and its parents) readable by its owner only, if it is missing.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Replaces `dir/name` with `bytes` at once: written to a private temporary file, synced,
/// then renamed over it, so a crash leaves the old file or the new one, never half of one,
/// and nobody else can read what the CLI keeps (tokens, chats and texts).
pub(crate) fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = open_private(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, dir.join(name)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Held while refreshing; removes the lock file when dropped.
pub struct StoreLock {
    path: PathBuf,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn open_private(path: &Path) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> CliError {
    CliError::new(format!("{what} {}: {e}", path.display()))
}

/// Now, in seconds since the Unix epoch (0 when the clock is before it).
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(token: &str) -> Session {
        Session {
            user_id: 1,
            email: "alice@example.com".into(),
            username: "alice".into(),
            access_token: token.into(),
            access_expires_at: now_unix() + 600,
            refresh_token: "r".into(),
            refresh_expires_at: now_unix() + 6000,
        }
    }

    #[test]
    fn sessions_are_kept_per_server_in_a_private_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = SessionStore::in_dir(dir.path().join("cfg"), "http://a");
        let b = SessionStore::in_dir(dir.path().join("cfg"), "http://b");
        a.save(&session("ta")).expect("save a");
        b.save(&session("tb")).expect("save b");
        assert_eq!(a.load().expect("load").expect("a").access_token, "ta");
        a.clear().expect("clear");
        assert!(a.load().expect("load").is_none());
        assert_eq!(b.load().expect("load").expect("b").access_token, "tb");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(a.path()).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn expiry_margin() {
        let mut s = session("t");
        assert!(!s.access_expiring(Duration::from_secs(30)));
        s.access_expires_at = now_unix() + 10;
        assert!(s.access_expiring(Duration::from_secs(30)));
    }
}
