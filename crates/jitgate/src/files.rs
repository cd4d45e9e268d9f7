//! Files the CLI writes into the user's config: private, replaced whole.

use anyhow::{Context, Result};

/// Write a file only its owner may read or write, replaced whole (written beside, renamed);
/// its folder is created 0700.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = path.parent()
        && !d.as_os_str().is_empty()
        && !d.exists()
    {
        // Only a folder made here is narrowed to 0700 (never $HOME or a system folder).
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
        }
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    {
        use std::io::Write;
        let mut f = opts.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes)?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
