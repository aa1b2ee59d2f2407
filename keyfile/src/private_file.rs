//! Files whose contents decide security (key-encryption keys, sealed keys,
//! the gateway's runtime credential, policy plugins).
//!
//! Reading: such a file must not be writable by anyone but its owner: a
//! local user who can rewrite one could swap the key or the policy. The
//! gateway, the agent and the plugin host all check with
//! [`refuse_writable_by_others`]; [`read_private`] checks the opened file,
//! so the check covers what is read.
//!
//! Writing: [`write_private`] and [`write_private_new`] write mode 0600
//! through a temporary file in the target's folder (the `tempfile` crate),
//! synced, renamed over the target, then the folder synced: a reader sees
//! the old content or the new one, never a part, and a failed write leaves
//! the old content and no temporary file.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use zeroize::Zeroizing;

/// The largest private file read: secrets are small, and the bound keeps a
/// misconfigured path (a log, a device) from being read whole.
const MAX_PRIVATE_FILE: usize = 1 << 20;

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
/// Reading by group or others is the operator's choice and is allowed.
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

/// Why a private file was not read.
#[derive(Debug)]
pub(crate) enum ReadError {
    NotPrivate(WritableByOthers),
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// The bytes of a private file, in buffers that are wiped when dropped:
/// the buffer is sized from the file's length and, should the file grow
/// while read, replaced by a larger one after copying (never reallocated
/// in place, which would free an unwiped copy).
pub(crate) fn read_checked(path: &Path) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let mut f = File::open(path)?;
    let meta = f.metadata()?;
    refuse_writable_by_others(path, &meta).map_err(ReadError::NotPrivate)?;
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_PRIVATE_FILE} bytes: not a secret file"),
        )
    };
    let len = usize::try_from(meta.len()).map_err(|_| too_large())?;
    if len > MAX_PRIVATE_FILE {
        return Err(too_large().into());
    }
    let mut buf = Zeroizing::new(vec![0u8; len + 1]);
    let mut n = 0;
    loop {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(r) => n += r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        if n == buf.len() {
            if n > MAX_PRIVATE_FILE {
                return Err(too_large().into());
            }
            let mut bigger = Zeroizing::new(vec![0u8; n * 2]);
            bigger[..n].copy_from_slice(&buf[..n]);
            buf = bigger;
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Reads a secret file as text, refusing one that group or others may
/// write: whoever can replace it can have new keys sealed under a key they
/// know, or hand the reader a credential of theirs. The check is made on
/// the opened file, so it covers what is read; the text is wiped from
/// memory when dropped. A refusal is an error of kind `Other` holding a
/// [`WritableByOthers`].
pub fn read_private(path: &Path) -> io::Result<Zeroizing<String>> {
    let mut bytes = read_checked(path).map_err(|e| match e {
        ReadError::NotPrivate(w) => io::Error::other(w),
        ReadError::Io(e) => e,
    })?;
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
        }
    }
}

/// Writes `data` to `path` with mode 0600, replacing the file atomically if
/// it exists: readers see the old content or the new one, and a failed
/// write leaves the old content.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    write_with(path, Replace::Yes, |f| f.write_all(data))
}

/// Writes `data` to a new file `path` with mode 0600, atomically; fails
/// with `AlreadyExists` (and changes nothing) when `path` exists.
pub fn write_private_new(path: &Path, data: &[u8]) -> io::Result<()> {
    write_with(path, Replace::No, |f| f.write_all(data))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replace {
    Yes,
    No,
}

/// The folder a file is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Writes what `fill` writes to `path`: temporary file `.<name>.<random>.tmp`
/// beside it (mode 0600), synced, renamed over `path` (or linked without
/// replacing, with [`Replace::No`]), then the folder synced so the new name
/// survives a crash. On any failure the temporary file is removed.
pub(crate) fn write_with(
    path: &Path,
    replace: Replace,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = folder_of(path);
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    fill(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    match replace {
        Replace::Yes => tmp.persist(path)?,
        Replace::No => tmp.persist_noclobber(path)?,
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn group_or_other_write_is_refused_read_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, b"x").unwrap();
        for (mode, ok) in [(0o600, true), (0o644, true), (0o664, false), (0o646, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = refuse_writable_by_others(&f, &std::fs::metadata(&f).unwrap());
            assert_eq!(r.is_ok(), ok, "{mode:o}");
            assert_eq!(read_private(&f).is_ok(), ok, "{mode:o}");
            if let Err(e) = r {
                let text = e.to_string();
                assert!(text.contains(&format!("{mode:04o}")), "{text}");
                assert!(text.contains(&f.display().to_string()), "{text}");
            }
        }
    }

    #[test]
    fn a_written_file_is_0600_new_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        write_private(&f, b"one").unwrap();
        assert_eq!(mode(&f), 0o600);
        // An existing file readable by others is replaced by a private one.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&f, b"two").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(*read_private(&f).unwrap(), "two");
        let g = dir.path().join("new");
        write_private_new(&g, b"three").unwrap();
        assert_eq!(mode(&g), 0o600);
        assert_eq!(std::fs::read(&g).unwrap(), b"three");
        assert_eq!(
            names_in(dir.path()),
            ["new", "secret"],
            "no temporary file left"
        );
    }

    #[test]
    fn a_bare_file_name_is_written_in_the_current_folder() {
        // The folder of `kek` is `.`, not the empty path.
        assert_eq!(folder_of(Path::new("kek")), Path::new("."));
        assert_eq!(folder_of(Path::new("/a/kek")), Path::new("/a"));
    }

    #[test]
    fn a_new_file_never_replaces_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kek");
        std::fs::write(&f, b"old").unwrap();
        let e = write_private_new(&f, b"new").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), b"old");
        assert_eq!(names_in(dir.path()), ["kek"], "no temporary file left");
    }

    #[test]
    fn a_write_that_fails_halfway_leaves_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        write_private(&f, b"the old content").unwrap();
        for replace in [Replace::Yes, Replace::No] {
            let e = write_with(&f, replace, |file| {
                file.write_all(b"the new ")?;
                Err(io::Error::other("disk full"))
            })
            .unwrap_err();
            assert!(e.to_string().contains("disk full"), "{e}");
            assert_eq!(std::fs::read(&f).unwrap(), b"the old content");
            assert_eq!(names_in(dir.path()), ["key"], "no temporary file left");
        }
    }

    #[test]
    fn a_write_into_a_read_only_folder_fails_and_leaves_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        write_private(&f, b"the old content").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        // A privileged user (root in a container) writes anyway: nothing to
        // test then beyond the halfway failure above.
        let probe = dir.path().join("probe");
        if std::fs::write(&probe, b"").is_ok() {
            std::fs::remove_file(&probe).unwrap();
            eprintln!("skipped: this user may write into a read-only folder");
        } else {
            let e = write_private(&f, b"new").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
            assert_eq!(std::fs::read(&f).unwrap(), b"the old content");
            assert_eq!(names_in(dir.path()), ["key"]);
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_file_that_grows_is_read_whole_and_a_huge_one_is_refused() {
        // A file whose length is not known in advance (0 in its metadata)
        // is read whole, through larger buffers.
        let proc_file = Path::new("/proc/self/status");
        if proc_file.exists() {
            assert_eq!(std::fs::metadata(proc_file).unwrap().len(), 0);
            let text = read_private(proc_file).unwrap();
            assert!(text.len() > 64 && text.ends_with('\n'), "{}", text.len());
        }
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_PRIVATE_FILE as u64 + 1)
            .unwrap();
        let e = read_private(&big).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }
}
