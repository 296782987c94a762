//! Files written whole or not at all.
//!
//! Every file st writes (embeddings, checkpoints, configs) goes through [`AtomicFile`]: a regular
//! file (or a path that does not exist yet) is written to a temporary sibling and renamed over
//! the target when complete, so a crash or a kill leaves the previous file or the new one, never
//! a mix. Anything that is not a regular file (a device such as `/dev/null`, a FIFO, a terminal,
//! `/dev/stdout`) is written in place: renaming over it would replace the device node with a
//! plain file. A symbolic link is followed, so the file it points to is replaced and the link
//! stays.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::BackboneError;

/// A file being written to `path`; [`AtomicFile::commit`] makes it appear. Dropped without a
/// commit (an error, a panic), it leaves the previous file untouched and no temporary behind.
#[derive(Debug)]
pub struct AtomicFile {
    /// The path the user named: every error names it, never the temporary.
    path: PathBuf,
    file: File,
    /// `(temporary, final target)` when writing through a rename; `None` when writing in place.
    rename: Option<(PathBuf, PathBuf)>,
}

impl AtomicFile {
    /// Starts writing `path`. Fails, naming `path`, when it is a folder, when its folder does
    /// not exist, or when it cannot be created.
    pub fn create(path: &Path) -> Result<Self, BackboneError> {
        let fail = |e: io::Error| BackboneError::io(path, e);
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                return Err(fail(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "is a folder, not a file",
                )));
            }
            Ok(meta) if !meta.is_file() => return Self::in_place(path),
            _ => {}
        }
        let target = follow_links(path).map_err(fail)?;
        if is_special_tree(&target) {
            // `/dev/stdout` redirected to a regular file: /proc/self/fd/1 resolves to that
            // file, which the shell opened and owns; append to what it opened.
            return Self::in_place(path);
        }
        let tmp = temp_sibling(&target);
        let file = File::create(&tmp).map_err(fail)?;
        if let Ok(meta) = fs::metadata(&target) {
            // Replacing a file keeps its permissions (a 0600 output stays private).
            let _ = file.set_permissions(meta.permissions());
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            rename: Some((tmp, target)),
        })
    }

    fn in_place(path: &Path) -> Result<Self, BackboneError> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| BackboneError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            rename: None,
        })
    }

    /// The path as the caller named it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<(), BackboneError> {
        let path = self.path.clone();
        let fail = |e: io::Error| BackboneError::io(&path, e);
        self.file.flush().map_err(fail)?;
        let Some((tmp, target)) = self.rename.take() else {
            return Ok(());
        };
        let result = self
            .file
            .sync_all()
            .and_then(|()| fs::rename(&tmp, &target));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(fail)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some((tmp, _)) = &self.rename {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Writes `bytes` to `path` whole or not at all (see [`AtomicFile`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BackboneError> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)
        .map_err(|e| BackboneError::io(path, e))?;
    file.commit()
}

/// A hidden temporary beside `path`, unique per process.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// The file a chain of symbolic links ends at (which may not exist yet).
fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let next = fs::read_link(&current)?;
                current = match current.parent() {
                    Some(dir) if next.is_relative() => dir.join(next),
                    _ => next,
                };
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Paths under `/proc` and `/dev` are the kernel's: never create temporaries there.
fn is_special_tree(path: &Path) -> bool {
    path.starts_with("/proc") || path.starts_with("/dev")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn replaces_a_regular_file_and_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn an_uncommitted_file_leaves_the_old_one_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        fs::write(&path, "old").unwrap();
        let mut file = AtomicFile::create(&path).unwrap();
        file.write_all(b"half of the new").unwrap();
        drop(file);
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_symlink_is_followed_and_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.txt");
        let link = dir.path().join("link.txt");
        fs::write(&target, "old").unwrap();
        std::os::unix::fs::symlink("real.txt", &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        // A dangling link creates its target.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink("created.txt", &dangling).unwrap();
        write_atomic(&dangling, b"x").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("created.txt")).unwrap(),
            "x"
        );
    }

    #[test]
    fn devices_are_written_in_place_and_stay_devices() {
        use std::os::unix::fs::FileTypeExt;
        write_atomic(Path::new("/dev/null"), b"discarded").unwrap();
        assert!(
            fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        // A full device reports the failure instead of swallowing it.
        let err = write_atomic(Path::new("/dev/full"), b"x").unwrap_err();
        assert!(err.to_string().starts_with("/dev/full: "), "{err}");
        assert!(
            fs::metadata("/dev/full")
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }

    #[test]
    fn a_fifo_gets_the_bytes_and_stays_a_fifo() {
        use std::io::Read;
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut text = String::new();
                File::open(fifo).unwrap().read_to_string(&mut text).unwrap();
                text
            })
        };
        write_atomic(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), "through the pipe");
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn a_folder_or_a_missing_parent_is_refused_naming_the_path_once() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(dir.path(), b"x").unwrap_err().to_string();
        assert!(err.starts_with(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("is a folder"), "{err}");
        let missing = dir.path().join("no/such/out.txt");
        let err = write_atomic(&missing, b"x").unwrap_err().to_string();
        assert!(err.starts_with(&missing.display().to_string()), "{err}");
        assert!(!err.contains(".tmp-"), "{err}");
        assert!(leftovers(dir.path()).is_empty());
    }
}
