//! Files whose contents decide security (key-encryption keys, policy
//! plugins) must not be writable by anyone but their owner: a local user
//! who can rewrite one could swap the key or the policy. The gateway and
//! the agent both check with [`refuse_writable_by_others`].

use std::path::Path;

/// A file or folder that group or others may write.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} is writable by group or others (mode {mode:04o}); \
     remove that permission (chmod go-w {path})"
)]
pub struct WritableByOthers {
    /// The file or folder.
    pub path: String,
    /// Its permission bits.
    pub mode: u32,
}

/// Refuses `meta` (the metadata of `path`, ideally from the opened file so
/// the check covers what is read) when group or others may write it.
pub fn refuse_writable_by_others(
    path: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), WritableByOthers> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(WritableByOthers {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// Reads a secret file (a key-encryption key), refusing one that group or
/// others may write: whoever can replace it can have new keys sealed under
/// a key they know. The check is made on the opened file, so it covers
/// what is read; the text is wiped from memory when dropped.
pub fn read_private(path: &Path) -> std::io::Result<zeroize::Zeroizing<String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    refuse_writable_by_others(path, &f.metadata()?).map_err(std::io::Error::other)?;
    let mut text = zeroize::Zeroizing::new(String::new());
    f.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_other_write_is_refused_read_is_not() {
        let dir = std::env::temp_dir().join(format!("private-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k");
        std::fs::write(&f, b"x").unwrap();
        for (mode, ok) in [(0o600, true), (0o644, true), (0o664, false), (0o646, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = refuse_writable_by_others(&f, &std::fs::metadata(&f).unwrap());
            assert_eq!(r.is_ok(), ok, "{mode:o}");
            if let Err(e) = r {
                let text = e.to_string();
                assert!(text.contains(&format!("{mode:04o}")), "{text}");
                assert!(text.contains(&f.display().to_string()), "{text}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
