//! Deterministic archives: a directory packed as a tar file whose bytes
//! depend only on the tree's paths, contents, executable bits and symlink
//! targets — entries sorted by path, times, owners and names fixed — so the
//! same tree always has the same hash, on any machine.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Modification time written into every entry (the Unix epoch).
pub const ARCHIVE_MTIME: u64 = 0;
/// Most entries one archive may hold.
pub const ARCHIVE_ENTRIES_MAX: usize = 1_000_000;

/// Why a tree could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot pack {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot pack {0}: only regular files, directories and symlinks can be packed")]
    Special(PathBuf),
    #[error("cannot pack {0}: more than {ARCHIVE_ENTRIES_MAX} entries")]
    TooMany(PathBuf),
}

/// Writes the deterministic archive of the tree at `root` to `out`.
pub fn pack_dir(root: &Path, out: impl Write) -> Result<(), ArchiveError> {
    let mut entries = Vec::new();
    collect(root, Path::new(""), &mut entries)?;
    entries.sort();
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    for relative in entries {
        append(&mut builder, root, &relative)?;
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|source| ArchiveError::Io {
            path: root.into(),
            source,
        })
}

/// Writes the deterministic archive of the listed paths under `root`
/// (files, or directories with everything in them): a build's outputs.
/// A listed path that does not exist is an error naming it.
pub fn pack_paths(
    root: &Path,
    paths: &std::collections::BTreeSet<String>,
    out: impl Write,
) -> Result<(), ArchiveError> {
    let mut entries = Vec::new();
    for listed in paths {
        let relative = PathBuf::from(listed);
        let full = root.join(&relative);
        let meta = fs::symlink_metadata(&full).map_err(|source| ArchiveError::Io {
            path: full.clone(),
            source,
        })?;
        entries.push(relative.clone());
        if meta.is_dir() {
            collect(root, &relative, &mut entries)?;
        }
    }
    entries.sort();
    entries.dedup();
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    for relative in entries {
        append(&mut builder, root, &relative)?;
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|source| ArchiveError::Io {
            path: root.into(),
            source,
        })
}

fn collect(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) -> Result<(), ArchiveError> {
    let dir = root.join(relative);
    let read = fs::read_dir(&dir).map_err(|source| ArchiveError::Io {
        path: dir.clone(),
        source,
    })?;
    for entry in read {
        let entry = entry.map_err(|source| ArchiveError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = relative.join(entry.file_name());
        let kind = entry.file_type().map_err(|source| ArchiveError::Io {
            path: root.join(&path),
            source,
        })?;
        out.push(path.clone());
        if out.len() > ARCHIVE_ENTRIES_MAX {
            return Err(ArchiveError::TooMany(root.into()));
        }
        if kind.is_dir() {
            collect(root, &path, out)?;
        }
    }
    Ok(())
}

fn append<W: Write>(builder: &mut tar::Builder<W>, root: &Path, relative: &Path) -> Result<(), ArchiveError> {
    let full = root.join(relative);
    let io_err = |source| ArchiveError::Io {
        path: full.clone(),
        source,
    };
    let meta = fs::symlink_metadata(&full).map_err(io_err)?;
    let mut header = tar::Header::new_gnu();
    header.set_mtime(ARCHIVE_MTIME);
    header.set_uid(0);
    header.set_gid(0);
    let kind = meta.file_type();
    if kind.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        builder.append_data(&mut header, relative, io::empty()).map_err(io_err)
    } else if kind.is_symlink() {
        let target = fs::read_link(&full).map_err(io_err)?;
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        builder.append_link(&mut header, relative, &target).map_err(io_err)
    } else if kind.is_file() {
        let executable = meta.permissions().mode() & 0o111 != 0;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(if executable { 0o755 } else { 0o644 });
        header.set_size(meta.len());
        let file = fs::File::open(&full).map_err(io_err)?;
        builder.append_data(&mut header, relative, file).map_err(io_err)
    } else {
        Err(ArchiveError::Special(full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("b/c")).unwrap();
        fs::write(root.join("a.txt"), b"alpha").unwrap();
        fs::write(root.join("b/c/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("b/c/run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    }

    #[test]
    fn same_tree_same_bytes_whatever_the_times_and_modes() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(one.path());
        tree(two.path());
        fs::set_permissions(two.path().join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        let file = fs::File::options().write(true).open(two.path().join("a.txt")).unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
            .unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        pack_dir(one.path(), &mut a).unwrap();
        pack_dir(two.path(), &mut b).unwrap();
        assert_eq!(a, b);

        fs::write(two.path().join("a.txt"), b"alphA").unwrap();
        let mut c = Vec::new();
        pack_dir(two.path(), &mut c).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn packs_only_the_listed_paths() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let listed: std::collections::BTreeSet<String> = ["b".to_string(), "a.txt".to_string()].into();
        let mut bytes = Vec::new();
        pack_paths(dir.path(), &listed, &mut bytes).unwrap();
        let names: Vec<String> = tar::Archive::new(&bytes[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.txt", "b", "b/c", "b/c/run.sh"]);
        let missing: std::collections::BTreeSet<String> = ["nope".to_string()].into();
        let err = pack_paths(dir.path(), &missing, Vec::new()).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn unpacks_to_the_same_tree() {
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(src.path());
        let mut bytes = Vec::new();
        pack_dir(src.path(), &mut bytes).unwrap();
        tar::Archive::new(&bytes[..]).unpack(dst.path()).unwrap();
        assert_eq!(
            fs::read(dst.path().join("b/c/run.sh")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        let mode = fs::metadata(dst.path().join("b/c/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        assert_eq!(fs::read_link(dst.path().join("link")).unwrap(), PathBuf::from("a.txt"));
    }
}
