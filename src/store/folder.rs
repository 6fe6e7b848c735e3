//! The data folder: created private (0700) when missing, and a warning at
//! start when an existing one is open to other users.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::config::ConfigError;

/// Warns when the database's folder is accessible to other users. It is not
/// changed behind the operator's back (a backup user may need it); the files
/// latchkey writes in it are 0600 either way.
pub fn warn_if_data_folder_is_shared(data: &Path) {
    let folder = data
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(metadata) = fs::metadata(folder) else {
        return;
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            folder = %folder.display(),
            mode = format!("{mode:o}"),
            "the data folder is accessible to other users; consider `chmod 700` on it"
        );
    }
}

/// Creates the database's folder (mode 0700) if it does not exist yet.
pub fn ensure_data_folder(data: &Path) -> Result<(), ConfigError> {
    let Some(folder) = data.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if folder.exists() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
        .map_err(|e| {
            ConfigError(format!(
                "cannot create the data folder {}: {e}",
                folder.display()
            ))
        })?;
    // `recursive` applies the mode only through umask; set it exactly.
    let _ = fs::set_permissions(folder, fs::Permissions::from_mode(0o700));
    Ok(())
}
