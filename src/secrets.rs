//! The signing secret: the [`Secret`] type (its bytes never shown), where it
//! comes from (`--secret`, `--secret-file`, or one generated once beside the
//! database), and the rule for files that hold secrets: other users must
//! not be able to read them.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::ConfigError;
use crate::store::folder::ensure_data_folder;

fn err<T>(text: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(text.into()))
}

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
pub const MIN_SECRET_BYTES: usize = 32;

/// Key material; `Debug` never shows the bytes.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Result<Self, ConfigError> {
        if bytes.len() < MIN_SECRET_BYTES {
            return err(format!(
                "the signing secret is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} bytes (256 bits, RFC 7518 §3.2). \
                 Use a longer --secret, or omit it to let latchkey generate one",
                bytes.len()
            ));
        }
        Ok(Secret(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// Refuses a file holding secrets (signing secret, passwords) that users
/// other than its owner may read, unless `insecure` (then it only warns):
/// anyone who can read it can mint tokens or log in as its users, and a
/// start-up error is noticed where a warning scrolls by.
pub fn refuse_if_readable_by_others(
    path: &Path,
    what: &str,
    insecure: bool,
) -> Result<(), ConfigError> {
    let Ok(metadata) = fs::metadata(path) else {
        return Ok(());
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if insecure {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "{what} is accessible to other users (allowed by --insecure-secret-file)");
        return Ok(());
    }
    err(format!(
        "{what} {} is accessible to other users (mode {mode:o}); run `chmod 600 {}`, \
         or pass --insecure-secret-file to accept it",
        path.display(),
        path.display()
    ))
}

/// A key read from a file (an admin or verifier key): at least
/// [`MIN_SECRET_BYTES`], one trailing newline removed, refused when others
/// may read the file.
pub fn read_key_file(path: &Path, flag: &str, insecure: bool) -> Result<Secret, ConfigError> {
    refuse_if_readable_by_others(path, flag, insecure)?;
    let mut bytes = fs::read(path)
        .map_err(|e| ConfigError(format!("cannot read {flag} {}: {e}", path.display())))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    if !bytes.iter().all(u8::is_ascii_graphic) {
        return err(format!(
            "{flag} {}: a key is sent in an Authorization header, so it must be printable \
             ASCII without spaces (e.g. `head -c 32 /dev/urandom | base64`)",
            path.display()
        ));
    }
    if bytes.len() < MIN_SECRET_BYTES {
        return err(format!(
            "{flag} {} holds {} bytes; a key needs at least {MIN_SECRET_BYTES}",
            path.display(),
            bytes.len()
        ));
    }
    Ok(Secret(bytes))
}

/// The signing secret: `--secret`, else `--secret-file`, else the one
/// generated beside the database (created on first use).
///
/// A secret file that other users may read is refused unless
/// `--insecure-secret-file`: anyone who can read it can mint tokens for any
/// user, and a start-up error is noticed where a warning scrolls by.
pub fn resolve_secret(data: &Path, args: &crate::cli::SecretArgs) -> Result<Secret, ConfigError> {
    let check = |path: &Path| {
        refuse_if_readable_by_others(path, "the secret file", args.insecure_secret_file)
    };
    match (&args.secret, &args.secret_file) {
        (Some(text), _) => Secret::new(text.as_bytes().to_vec()),
        (None, Some(path)) => {
            check(path)?;
            read_secret_file(path)
        }
        (None, None) => {
            ensure_data_folder(data)?;
            let path = generated_secret_path(data);
            check(&path)?;
            load_or_generate_secret(&path)
        }
    }
}

/// The earlier secrets of `--previous-secret` and `--previous-secret-file`,
/// under the same rules as the secret itself.
pub fn resolve_previous_secrets(
    args: &crate::cli::SigningArgs,
    insecure: bool,
) -> Result<Vec<Secret>, ConfigError> {
    let mut secrets = Vec::new();
    for text in &args.previous_secret {
        secrets.push(Secret::new(text.as_bytes().to_vec())?);
    }
    for path in &args.previous_secret_file {
        refuse_if_readable_by_others(path, "--previous-secret-file", insecure)?;
        secrets.push(read_secret_file(path)?);
    }
    Ok(secrets)
}

/// Where a generated secret is kept: beside the database, `<stem>.secret`.
pub fn generated_secret_path(data: &Path) -> PathBuf {
    data.with_extension("secret")
}

fn read_secret_file(path: &Path) -> Result<Secret, ConfigError> {
    let mut bytes = fs::read(path).map_err(|e| {
        ConfigError(format!(
            "cannot read the secret file {}: {e}",
            path.display()
        ))
    })?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Secret::new(bytes)
}

/// Reads the generated secret, or creates it (32 random bytes, mode 0600) on first start.
fn load_or_generate_secret(path: &Path) -> Result<Secret, ConfigError> {
    match fs::read(path) {
        Ok(bytes) => return Secret::new(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return err(format!(
                "cannot read the secret file {}: {e}",
                path.display()
            ))
        }
    }
    let mut bytes = vec![0u8; MIN_SECRET_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| ConfigError(format!("no randomness available: {e}")))?;
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(&bytes)?;
        file.sync_all()
    };
    write().map_err(|e| {
        ConfigError(format!(
            "cannot write the secret file {}: {e}",
            path.display()
        ))
    })?;
    tracing::info!(path = %path.display(), "generated a new signing secret");
    Secret::new(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert!(Secret::new(vec![1; 31]).is_err());
        let secret = Secret::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
        assert!(!format!("{secret:?}").contains("0123"));
    }

    #[test]
    fn generated_secret_is_stable_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latchkey.secret");
        let first = load_or_generate_secret(&path).unwrap();
        let second = load_or_generate_secret(&path).unwrap();
        assert_eq!(first.bytes(), second.bytes());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn secret_file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        fs::write(&path, b"0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            read_secret_file(&path).unwrap().bytes(),
            b"0123456789abcdef0123456789abcdef"
        );
        fs::write(&path, b"short\n").unwrap();
        assert!(read_secret_file(&path).is_err());
    }
}
