//! Reading a plugin file for load or reload, with the checks that come
//! before any of its bytes are compiled: the folder and the file are not
//! writable by group or others (a local user who could rewrite them could
//! replace a route's policy), the size is bounded, and the digest matches
//! the pin in `plugins.sha256` when there is one.

use std::io::Read;
use std::path::Path;

use keyfile::refuse_writable_by_others;
use sha2::{Digest, Sha256};

use crate::FileError;

/// The bytes of a plugin file and their SHA-256 (lower-case hex).
pub struct PluginFile {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

fn unreadable(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |error| FileError::Unreadable {
        path: path.display().to_string(),
        error,
    }
}

/// Reads `path` (in the plugin folder) after checking the folder's and the
/// file's permissions; refuses a file over `max_bytes` or whose digest is
/// not `pin`.
pub fn read(path: &Path, max_bytes: u64, pin: Option<&str>) -> Result<PluginFile, FileError> {
    if let Some(dir) = path.parent() {
        let meta = std::fs::metadata(dir).map_err(unreadable(dir))?;
        refuse_writable_by_others(dir, &meta).map_err(|error| FileError::NotPrivate {
            what: "folder",
            error,
        })?;
    }
    let file = std::fs::File::open(path).map_err(unreadable(path))?;
    // The opened file's own metadata: what is checked is what is read.
    let meta = file.metadata().map_err(unreadable(path))?;
    refuse_writable_by_others(path, &meta).map_err(|error| FileError::NotPrivate {
        what: "file",
        error,
    })?;
    read_open(path, file, max_bytes, pin)
}

/// Reads a file that is not in the plugin folder yet (`gateway plugin
/// check` of a build): the size limit and the pin, without the folder's
/// permission checks, which are about where it will be installed.
pub fn read_candidate(
    path: &Path,
    max_bytes: u64,
    pin: Option<&str>,
) -> Result<PluginFile, FileError> {
    let file = std::fs::File::open(path).map_err(unreadable(path))?;
    read_open(path, file, max_bytes, pin)
}

fn read_open(
    path: &Path,
    file: std::fs::File,
    max_bytes: u64,
    pin: Option<&str>,
) -> Result<PluginFile, FileError> {
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable(path))?;
    if bytes.len() as u64 > max_bytes {
        return Err(FileError::TooLarge { max: max_bytes });
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    check_pin(&sha256, pin)?;
    Ok(PluginFile { bytes, sha256 })
}

/// Why the file at `path` could not be installed with its mode as it is
/// (group or others may write it), if so.
pub fn writable_by_others(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    refuse_writable_by_others(path, &meta)
        .err()
        .map(|e| e.to_string())
}

/// Refuses a digest that is not the pin, when there is one.
pub fn check_pin(sha256: &str, pin: Option<&str>) -> Result<(), FileError> {
    match pin {
        Some(pin) if !sha256.eq_ignore_ascii_case(pin) => Err(FileError::PinMismatch {
            sha256: sha256.to_string(),
            pinned: pin.to_ascii_lowercase(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn refuses_shared_writes_oversize_and_a_wrong_pin() {
        let dir = std::env::temp_dir().join(format!("plugin-file-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.wasm");
        std::fs::write(&f, b"abc").unwrap();
        mode(&dir, 0o755);
        mode(&f, 0o644);
        let digest = hex::encode(Sha256::digest(b"abc"));
        let ok = read(&f, 3, Some(&digest.to_ascii_uppercase())).unwrap();
        assert_eq!(
            (ok.bytes.as_slice(), ok.sha256.as_str()),
            (&b"abc"[..], &*digest)
        );

        let e = format!("{}", read(&f, 3, Some(&"0".repeat(64))).err().unwrap());
        assert!(e.contains(&digest) && e.contains("pinned"), "{e}");
        let e = format!("{}", read(&f, 2, None).err().unwrap());
        assert!(e.contains("max_file_bytes"), "{e}");

        mode(&f, 0o664);
        let e = format!("{}", read(&f, 3, None).err().unwrap());
        assert!(
            e.contains("0664") && e.contains(&f.display().to_string()),
            "{e}"
        );
        mode(&f, 0o600);
        mode(&dir, 0o777);
        let e = format!("{}", read(&f, 3, None).err().unwrap());
        assert!(e.contains("plugin folder") && e.contains("0777"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
