//! A node's persistent identity: an ed25519 secret in the data dir, created
//! on first start (mode 0600) and reused after. The same key is the libp2p
//! identity (the peer id) and signs attestations and gossip.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_protocol::SecretKey;
use libp2p::PeerId;

/// The key file's name inside the data dir.
pub const KEY_FILE: &str = "node.key";

/// Why the identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {action} the node key {path}: {source}; check that the data dir is writable by you")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the node key {0} is damaged (it must hold exactly 32 bytes); move it away to create a new identity, or restore it from a backup")]
    Damaged(PathBuf),
    #[error("the node key {0} can be read by other users (mode {1:o}); run `chmod 600 {0}`")]
    Exposed(PathBuf, u32),
}

/// Loads the key from `data_dir`, creating it (and the dir) if absent.
pub fn load_or_create(data_dir: &Path) -> Result<SecretKey, IdentityError> {
    load_or_create_at(&data_dir.join(KEY_FILE))
}

/// Loads the key file at `path` (node key or recipe publisher key),
/// creating it, mode 0600, if absent.
pub fn load_or_create_at(path: &Path) -> Result<SecretKey, IdentityError> {
    match fs::read(path) {
        Ok(bytes) => {
            let mode = fs::metadata(path)
                .map_err(io_err("inspect", path))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::Exposed(path.to_path_buf(), mode));
            }
            let secret: [u8; 32] = bytes
                .try_into()
                .map_err(|_| IdentityError::Damaged(path.to_path_buf()))?;
            Ok(SecretKey::from_bytes(&secret))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(path),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IdentityError {
    let path = path.to_path_buf();
    move |source| IdentityError::Io { action, path, source }
}

fn create(path: &Path) -> Result<SecretKey, IdentityError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err("create the directory for", path))?;
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| io_err("generate", path)(io::Error::other(e.to_string())))?;
    // Write a temporary file and link it into place: two nodes starting at
    // once on a fresh data dir end up with one key, never a torn file.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| KEY_FILE.into());
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.write_all(&secret)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &tmp))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(SecretKey::from_bytes(&secret)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => load_or_create_at(path),
        Err(e) => Err(io_err("create", path)(e)),
    }
}

/// The libp2p keypair for a node key.
pub fn keypair(key: &SecretKey) -> libp2p::identity::Keypair {
    let mut bytes = key.to_bytes();
    // 32 bytes are always a valid ed25519 secret: this cannot fail.
    match libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes) {
        Ok(keypair) => keypair,
        Err(_) => unreachable!("any 32 bytes are an ed25519 secret key"),
    }
}

/// The peer id of an ed25519 public key (a gossip signer, a worker).
pub fn peer_id_of(key: &kiln_protocol::PublicKey) -> Option<PeerId> {
    let public = libp2p::identity::ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(PeerId::from_public_key(&libp2p::identity::PublicKey::from(public)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_reused_after_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public(), second.public());
        let peer = keypair(&first).public().to_peer_id();
        assert_eq!(peer_id_of(&first.public()), Some(peer));
    }

    #[test]
    fn a_damaged_or_exposed_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        fs::set_permissions(dir.path().join(KEY_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(IdentityError::Damaged(_))));
        fs::set_permissions(dir.path().join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
