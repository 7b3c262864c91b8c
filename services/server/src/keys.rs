//! The token signing key of an embedded server, kept in its data directory so that tokens
//! (and the CLI's saved session) stay valid across restarts.

use std::{io::Write, path::Path};

use anyhow::Context;
use secrecy::SecretString;

const FILE: &str = "signing-key.pem";

/// The key in `dir`, generated and saved (mode 0600) when there is none yet. Two servers
/// starting at once on one directory end up with the same key: the file is published
/// with a hard link, which fails when another process got there first.
pub fn signing_key(dir: &Path) -> anyhow::Result<SecretString> {
    let path = dir.join(FILE);
    if let Some(pem) = read(&path)? {
        return Ok(pem);
    }
    let pem = auth_service::keys::generate_private_key_pem()?;
    let tmp = dir.join(format!(".{FILE}.{}", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(pem.as_bytes())?;
        file.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated a token signing key");
            Ok(SecretString::from(pem))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(&path)?.with_context(|| format!("{} vanished", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("saving {}", path.display())),
    }
}

fn read(path: &Path) -> anyhow::Result<Option<SecretString>> {
    match std::fs::read_to_string(path) {
        Ok(pem) => Ok(Some(SecretString::from(pem))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn the_key_is_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = signing_key(dir.path()).unwrap();
        let second = signing_key(dir.path()).unwrap();
        assert_eq!(first.expose_secret(), second.expose_secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// The saved key is one other tools read: OpenSSL 3 (when it is installed here).
    #[test]
    fn the_saved_key_is_readable_by_openssl() {
        let dir = tempfile::tempdir().unwrap();
        signing_key(dir.path()).unwrap();
        let path = dir.path().join(FILE);
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        match std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(&path)
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "openssl pkey refused the key: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => {
                eprintln!("openssl is not installed ({e}); only our own parsers checked the key")
            }
        }
    }
}
