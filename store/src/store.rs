//! The [`Store`] handle: opening a data dir, the in-memory view of which
//! blobs exist, pins, and the size cap with least-recently-used eviction.
//!
//! Writing and reading blob bytes live in `put` and `read`; this module
//! decides where files go and which ones may be removed. Lock order: the
//! state lock may be taken before an index write transaction begins, never
//! while one is open.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kiln_protocol::Hash;

use crate::error::{Result, StoreError};
use crate::fsutil::{clear_dir, ensure_dir, mtime_ms, now_ms, sync_dir};
use crate::index::Index;
use crate::quarantine::QuarantineList;
use crate::{ACCESS_PERSIST_MS, PIN_REASON_BYTES_MAX};

/// How to open a store.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Most bytes of blobs kept; unpinned blobs are evicted, least recently
    /// used first, to stay under it. `None`: no cap.
    pub size_cap_bytes: Option<u64>,
}

/// A handle to an open data dir. Cheap to clone; every clone is the same
/// store. Blocking: call it from `spawn_blocking` in async code.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) blobs_dir: PathBuf,
    pub(crate) tmp_dir: PathBuf,
    pub(crate) partial_dir: PathBuf,
    pub(crate) index: Index,
    state: Mutex<State>,
    /// Told of every blob that leaves the store (see [`Store::on_removed`]).
    removed: Mutex<Option<RemovedListener>>,
    /// Blobs found corrupt (see [`Store::quarantine`]).
    quarantine: Mutex<QuarantineList>,
}

/// Called with the hashes of blobs that left the store: evicted under the
/// cap, removed, or forgotten because their file vanished or was corrupt.
pub type RemovedListener = Arc<dyn Fn(&[Hash]) + Send + Sync>;

/// What the store knows about one blob on disk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlobEntry {
    pub(crate) size_bytes: u64,
    pub(crate) last_access_ms: u64,
    persisted_access_ms: u64,
}

pub(crate) struct State {
    pub(crate) blobs: HashMap<Hash, BlobEntry>,
    pub(crate) total_bytes: u64,
    pub(crate) pinned: HashSet<Hash>,
    pub(crate) size_cap_bytes: Option<u64>,
    pub(crate) open_partials: HashSet<Hash>,
    /// Last access time handed out: access times strictly increase, so
    /// the eviction order is exact even within one millisecond.
    access_clock_ms: u64,
}

impl State {
    fn next_access_ms(&mut self) -> u64 {
        self.access_clock_ms = now_ms().max(self.access_clock_ms + 1);
        self.access_clock_ms
    }
}

/// How much a new blob may take under the cap once every unpinned blob is
/// evicted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Room {
    pub(crate) cap_bytes: u64,
    pub(crate) pinned_bytes: u64,
}

impl Room {
    /// [`StoreError::Full`] if a blob of `blob_bytes` cannot fit.
    pub(crate) fn check(&self, blob_bytes: u64) -> Result<()> {
        if blob_bytes.saturating_add(self.pinned_bytes) > self.cap_bytes {
            return Err(StoreError::Full {
                blob_bytes,
                cap_bytes: self.cap_bytes,
                pinned_bytes: self.pinned_bytes,
            });
        }
        Ok(())
    }
}

/// Which blobs to evict to make room, and whether that is enough.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EvictionPlan {
    pub(crate) victims: Vec<Hash>,
    pub(crate) fits: bool,
    pub(crate) pinned_bytes: u64,
}

impl Store {
    /// The default data dir (`~/.local/share/kiln` on Linux); the CLI's
    /// `--data-dir` overrides it.
    pub fn default_dir() -> Result<PathBuf> {
        directories::ProjectDirs::from("org", "kiln", "kiln")
            .map(|dirs| dirs.data_dir().to_path_buf())
            .ok_or(StoreError::NoDefaultDir)
    }

    /// Opens (creating if needed) the store in `dir`, without a size cap.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(dir, StoreOptions::default())
    }

    /// Opens (creating if needed) the store in `dir`: clears `tmp/`, reads
    /// which blobs exist and evicts down to the cap if one is given.
    pub fn open_with(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        ensure_dir(&dir)?;
        // The index is locked first: it proves no other process uses the dir
        // before anything in it is cleared.
        let index = Index::open(&dir.join("index.redb"), &dir)?;
        let blobs_dir = dir.join(BLOBS_DIR);
        let tmp_dir = dir.join("tmp");
        let partial_dir = dir.join("partial");
        for sub in [&blobs_dir, &tmp_dir, &partial_dir] {
            ensure_dir(sub)?;
        }
        let leftovers = clear_dir(&tmp_dir)?;
        if leftovers > 0 {
            tracing::info!(dir = %tmp_dir.display(), leftovers, "removed unfinished writes");
        }
        let state = load_state(&index, &blobs_dir, options.size_cap_bytes)?;
        let store = Store {
            inner: Arc::new(Inner {
                dir,
                blobs_dir,
                tmp_dir,
                partial_dir,
                index,
                state: Mutex::new(state),
                removed: Mutex::new(None),
                quarantine: Mutex::new(QuarantineList::default()),
            }),
        };
        store.set_size_cap(options.size_cap_bytes)?;
        Ok(store)
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half
        // updated in a way that matters more than a crash would.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn quarantine_list(&self) -> MutexGuard<'_, QuarantineList> {
        self.inner.quarantine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn blob_path(&self, hash: &Hash) -> PathBuf {
        blob_file(&self.inner.blobs_dir, hash)
    }

    /// Whether the store in `dir` holds blob `hash`, known without opening
    /// it: the blob files are what the store holds (its index is rebuilt
    /// from them), so a short-lived client can look before it pays for
    /// opening and closing the index.
    pub fn holds(dir: &Path, hash: &Hash) -> bool {
        blob_file(&dir.join(BLOBS_DIR), hash).is_file()
    }

    /// Whether the blob is stored.
    pub fn has(&self, hash: &Hash) -> bool {
        self.lock().blobs.contains_key(hash)
    }

    /// The blob's size in bytes, if it is stored.
    pub fn size(&self, hash: &Hash) -> Option<u64> {
        self.lock().blobs.get(hash).map(|entry| entry.size_bytes)
    }

    /// Every stored blob with its size, sorted by hash.
    pub fn list(&self) -> Vec<(Hash, u64)> {
        let mut out: Vec<(Hash, u64)> = self
            .lock()
            .blobs
            .iter()
            .map(|(hash, entry)| (*hash, entry.size_bytes))
            .collect();
        out.sort_unstable();
        out
    }

    /// How many blobs are stored.
    pub fn blob_count(&self) -> u64 {
        self.lock().blobs.len() as u64
    }

    /// Bytes of all stored blobs.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    pub fn size_cap(&self) -> Option<u64> {
        self.lock().size_cap_bytes
    }

    /// Sets the size cap and evicts unpinned blobs, least recently used
    /// first, until the store is under it. If pinned blobs alone exceed the
    /// cap, they stay and later puts fail with [`StoreError::Full`].
    pub fn set_size_cap(&self, size_cap_bytes: Option<u64>) -> Result<()> {
        let mut state = self.lock();
        state.size_cap_bytes = size_cap_bytes;
        let Some(cap_bytes) = size_cap_bytes else {
            return Ok(());
        };
        let plan = plan_eviction(&state, cap_bytes, None, 0);
        if !plan.fits {
            tracing::warn!(
                cap_bytes,
                pinned_bytes = plan.pinned_bytes,
                "pinned blobs alone exceed the store size cap"
            );
        }
        self.evict(&mut state, &plan.victims)
    }

    /// Removes a blob (pinned or not). Returns whether it was stored.
    pub fn remove(&self, hash: &Hash) -> Result<bool> {
        let mut state = self.lock();
        if !state.blobs.contains_key(hash) {
            return Ok(false);
        }
        self.evict(&mut state, &[*hash])?;
        Ok(true)
    }

    /// Removes blobs from disk, the state and the index.
    pub(crate) fn evict(&self, state: &mut State, victims: &[Hash]) -> Result<()> {
        if victims.is_empty() {
            return Ok(());
        }
        for hash in victims {
            let path = self.blob_path(hash);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("removing blob", &path, e)),
            }
            if let Some(entry) = state.blobs.remove(hash) {
                state.total_bytes = state.total_bytes.saturating_sub(entry.size_bytes);
                tracing::debug!(blob = %hash, size_bytes = entry.size_bytes, "evicted blob");
            }
        }
        self.tell_removed(victims);
        self.inner.index.remove_access_times(victims)
    }

    /// Registers the one listener told of every blob that leaves the store
    /// (a node withdraws its provider records with it). It runs while the
    /// store's state lock is held: it must not call the store, and should
    /// only hand the hashes on.
    pub fn on_removed(&self, listener: RemovedListener) {
        if let Ok(mut slot) = self.inner.removed.lock() {
            *slot = Some(listener);
        }
    }

    fn tell_removed(&self, hashes: &[Hash]) {
        let listener = self.inner.removed.lock().ok().and_then(|slot| slot.clone());
        if let Some(listener) = listener {
            listener(hashes);
        }
    }

    /// Makes room for a new blob of `blob_bytes` under the cap, evicting
    /// what it must; [`StoreError::Full`] if pins leave no room.
    pub(crate) fn make_room(&self, state: &mut State, incoming: &Hash, blob_bytes: u64) -> Result<()> {
        let Some(cap_bytes) = state.size_cap_bytes else {
            return Ok(());
        };
        let plan = plan_eviction(state, cap_bytes, Some(incoming), blob_bytes);
        if !plan.fits {
            return Err(StoreError::Full {
                blob_bytes,
                cap_bytes,
                pinned_bytes: plan.pinned_bytes,
            });
        }
        self.evict(state, &plan.victims)
    }

    /// The room a new blob may take, or `None` without a cap.
    pub(crate) fn room(&self) -> Option<Room> {
        let state = self.lock();
        Some(Room {
            cap_bytes: state.size_cap_bytes?,
            pinned_bytes: pinned_bytes(&state),
        })
    }

    /// Records a new blob in the state and the index.
    pub(crate) fn record_blob(&self, state: &mut State, hash: Hash, size_bytes: u64) {
        let now = state.next_access_ms();
        let entry = BlobEntry {
            size_bytes,
            last_access_ms: now,
            persisted_access_ms: now,
        };
        if state.blobs.insert(hash, entry).is_none() {
            state.total_bytes += size_bytes;
        }
        if let Err(e) = self.inner.index.set_access_times(&[(hash, now)]) {
            tracing::warn!(blob = %hash, error = %e, "could not record access time");
        }
    }

    /// Notes that a blob was used, for eviction order. Written to the index
    /// at most every [`ACCESS_PERSIST_MS`] per blob.
    pub(crate) fn touch(&self, hash: &Hash) {
        let (now, persist) = {
            let mut state = self.lock();
            let now = state.next_access_ms();
            let Some(entry) = state.blobs.get_mut(hash) else {
                return;
            };
            entry.last_access_ms = now;
            let stale = now.saturating_sub(entry.persisted_access_ms) >= ACCESS_PERSIST_MS;
            if stale {
                entry.persisted_access_ms = now;
            }
            (now, stale)
        };
        if persist {
            if let Err(e) = self.inner.index.set_access_times(&[(*hash, now)]) {
                tracing::warn!(blob = %hash, error = %e, "could not record access time");
            }
        }
    }

    /// Forgets a blob whose file disappeared or was found corrupt.
    pub(crate) fn forget(&self, hash: &Hash) {
        let mut state = self.lock();
        if let Some(entry) = state.blobs.remove(hash) {
            state.total_bytes = state.total_bytes.saturating_sub(entry.size_bytes);
            self.tell_removed(std::slice::from_ref(hash));
        }
    }

    /// Pins a blob (stored or not yet): it is never evicted. Pinning again
    /// replaces the reason.
    pub fn pin(&self, hash: &Hash, reason: &str) -> Result<()> {
        self.inner.index.pin(hash, cut_at_char(reason, PIN_REASON_BYTES_MAX))?;
        self.lock().pinned.insert(*hash);
        Ok(())
    }

    /// Unpins a blob; returns whether it was pinned.
    pub fn unpin(&self, hash: &Hash) -> Result<bool> {
        let was = self.inner.index.unpin(hash)?;
        self.lock().pinned.remove(hash);
        Ok(was)
    }

    pub fn is_pinned(&self, hash: &Hash) -> bool {
        self.lock().pinned.contains(hash)
    }

    /// Every pin with its reason, sorted by hash.
    pub fn pins(&self) -> Result<Vec<(Hash, String)>> {
        self.inner.index.pins()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    /// Saves access times not yet written, so eviction order survives a
    /// clean restart.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let unsaved: Vec<(Hash, u64)> = state
            .blobs
            .iter()
            .filter(|(_, entry)| entry.last_access_ms > entry.persisted_access_ms)
            .map(|(hash, entry)| (*hash, entry.last_access_ms))
            .collect();
        if unsaved.is_empty() {
            return;
        }
        if let Err(e) = self.index.set_access_times(&unsaved) {
            tracing::warn!(error = %e, "could not save access times");
        }
    }
}

/// Bytes of stored blobs that may not be evicted.
fn pinned_bytes(state: &State) -> u64 {
    state
        .blobs
        .iter()
        .filter(|(hash, _)| state.pinned.contains(hash))
        .map(|(_, entry)| entry.size_bytes)
        .sum()
}

/// Chooses unpinned blobs, least recently used first (ties by hash), to
/// evict so that `incoming_bytes` more fit under `cap_bytes`. Never picks
/// a pinned blob or `incoming`.
pub(crate) fn plan_eviction(
    state: &State,
    cap_bytes: u64,
    incoming: Option<&Hash>,
    incoming_bytes: u64,
) -> EvictionPlan {
    let mut candidates: Vec<(u64, Hash, u64)> = state
        .blobs
        .iter()
        .filter(|(hash, _)| !state.pinned.contains(hash) && Some(*hash) != incoming)
        .map(|(hash, entry)| (entry.last_access_ms, *hash, entry.size_bytes))
        .collect();
    let evictable_bytes: u64 = candidates.iter().map(|(_, _, size)| size).sum();
    let pinned_bytes = state.total_bytes.saturating_sub(evictable_bytes);
    let wanted_bytes = state.total_bytes.saturating_add(incoming_bytes);
    let Some(mut excess_bytes) = wanted_bytes.checked_sub(cap_bytes).filter(|excess| *excess > 0) else {
        return EvictionPlan {
            victims: Vec::new(),
            fits: true,
            pinned_bytes,
        };
    };
    if excess_bytes > evictable_bytes {
        return EvictionPlan {
            victims: candidates.into_iter().map(|(_, hash, _)| hash).collect(),
            fits: false,
            pinned_bytes,
        };
    }
    candidates.sort_unstable();
    let mut victims = Vec::new();
    for (_, hash, size_bytes) in candidates {
        if excess_bytes == 0 {
            break;
        }
        victims.push(hash);
        excess_bytes = excess_bytes.saturating_sub(size_bytes);
    }
    EvictionPlan {
        victims,
        fits: true,
        pinned_bytes,
    }
}

pub(crate) fn cut_at_char(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads which blobs exist (the directory is the truth), their access
/// times (from the index, else the file's mtime) and the pins.
fn load_state(index: &Index, blobs_dir: &Path, size_cap_bytes: Option<u64>) -> Result<State> {
    let on_disk = scan_blobs(blobs_dir)?;
    let mut access = index.access_times()?;
    let gone: Vec<Hash> = access
        .keys()
        .filter(|hash| !on_disk.contains_key(hash))
        .copied()
        .collect();
    if !gone.is_empty() {
        index.remove_access_times(&gone)?;
    }
    let mut blobs = HashMap::with_capacity(on_disk.len());
    let mut total_bytes = 0;
    for (hash, (size_bytes, mtime)) in on_disk {
        let at_ms = access.remove(&hash).unwrap_or(mtime);
        total_bytes += size_bytes;
        blobs.insert(
            hash,
            BlobEntry {
                size_bytes,
                last_access_ms: at_ms,
                persisted_access_ms: at_ms,
            },
        );
    }
    let pinned = index.pins()?.into_iter().map(|(hash, _)| hash).collect();
    let access_clock_ms = blobs.values().map(|entry| entry.last_access_ms).max().unwrap_or(0);
    Ok(State {
        blobs,
        total_bytes,
        pinned,
        size_cap_bytes,
        open_partials: HashSet::new(),
        access_clock_ms,
    })
}

/// The directory of finished blobs, under the data dir.
const BLOBS_DIR: &str = "blobs";

/// Where blob `hash` lives under `blobs_dir`: a directory per first byte.
fn blob_file(blobs_dir: &Path, hash: &Hash) -> PathBuf {
    let name = hash.to_string();
    blobs_dir.join(&name[..2]).join(name)
}

/// Every `blobs/xx/<hash>` file with its size and mtime. Anything else is
/// logged and left alone.
fn scan_blobs(blobs_dir: &Path) -> Result<HashMap<Hash, (u64, u64)>> {
    let mut out = HashMap::new();
    let shards = fs::read_dir(blobs_dir).map_err(|e| StoreError::io("listing", blobs_dir, e))?;
    for shard in shards {
        let shard = shard.map_err(|e| StoreError::io("listing", blobs_dir, e))?;
        let shard_path = shard.path();
        if !shard_path.is_dir() {
            tracing::warn!(path = %shard_path.display(), "ignoring unexpected file in blobs/");
            continue;
        }
        let files = fs::read_dir(&shard_path).map_err(|e| StoreError::io("listing", &shard_path, e))?;
        for file in files {
            let file = file.map_err(|e| StoreError::io("listing", &shard_path, e))?;
            let path = file.path();
            let Some(hash) = blob_name(&path) else {
                tracing::warn!(path = %path.display(), "ignoring file in blobs/ not named by a hash");
                continue;
            };
            let metadata = file
                .metadata()
                .map_err(|e| StoreError::io("reading metadata of", &path, e))?;
            out.insert(hash, (metadata.len(), mtime_ms(&metadata)));
        }
    }
    Ok(out)
}

/// The hash a path in `blobs/` is named by, if it is in the right shard.
fn blob_name(path: &Path) -> Option<Hash> {
    let name = path.file_name()?.to_str()?;
    let shard = path.parent()?.file_name()?.to_str()?;
    let hash: Hash = name.parse().ok()?;
    name.starts_with(shard).then_some(hash).filter(|_| shard.len() == 2)
}

/// Makes sure the shard directory of a blob exists, durably.
pub(crate) fn ensure_shard(blob_path: &Path) -> Result<()> {
    match blob_path.parent() {
        Some(shard) => ensure_dir(shard),
        None => Ok(()),
    }
}

/// Makes a rename into a shard durable.
pub(crate) fn sync_shard(blob_path: &Path) -> Result<()> {
    match blob_path.parent() {
        Some(shard) => sync_dir(shard),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(blobs: &[(u8, u64, u64)], pinned: &[u8]) -> State {
        let blobs: HashMap<Hash, BlobEntry> = blobs
            .iter()
            .map(|(id, size_bytes, at_ms)| {
                (
                    Hash::of(&[*id]),
                    BlobEntry {
                        size_bytes: *size_bytes,
                        last_access_ms: *at_ms,
                        persisted_access_ms: *at_ms,
                    },
                )
            })
            .collect();
        State {
            total_bytes: blobs.values().map(|entry| entry.size_bytes).sum(),
            blobs,
            pinned: pinned.iter().map(|id| Hash::of(&[*id])).collect(),
            size_cap_bytes: None,
            open_partials: HashSet::new(),
            access_clock_ms: 0,
        }
    }

    #[test]
    fn evicts_least_recently_used_first_and_skips_pins() {
        let state = state(&[(1, 10, 300), (2, 10, 100), (3, 10, 200), (4, 10, 50)], &[4]);
        let plan = plan_eviction(&state, 40, None, 15);
        assert!(plan.fits);
        assert_eq!(plan.victims, vec![Hash::of(&[2]), Hash::of(&[3])]);
        assert_eq!(plan.pinned_bytes, 10);
    }

    #[test]
    fn nothing_evicted_under_the_cap() {
        let state = state(&[(1, 10, 1)], &[]);
        let plan = plan_eviction(&state, 20, None, 10);
        assert!(plan.fits && plan.victims.is_empty());
    }

    #[test]
    fn does_not_fit_when_pins_take_the_room() {
        let state = state(&[(1, 30, 1), (2, 10, 2)], &[1]);
        let plan = plan_eviction(&state, 35, None, 10);
        assert!(!plan.fits);
        assert_eq!(plan.pinned_bytes, 30);
    }

    #[test]
    fn never_evicts_the_incoming_blob() {
        let state = state(&[(1, 10, 1), (2, 10, 2)], &[]);
        let plan = plan_eviction(&state, 15, Some(&Hash::of(&[1])), 0);
        assert_eq!(plan.victims, vec![Hash::of(&[2])]);
    }

    #[test]
    fn blob_names_must_sit_in_their_shard() {
        let hash = Hash::of(b"x").to_string();
        let good = PathBuf::from(format!("/d/blobs/{}/{hash}", &hash[..2]));
        let wrong_shard = PathBuf::from(format!("/d/blobs/zz/{hash}"));
        assert_eq!(blob_name(&good), Some(Hash::of(b"x")));
        assert_eq!(blob_name(&wrong_shard), None);
        assert_eq!(blob_name(Path::new("/d/blobs/ab/notahash")), None);
    }

    #[test]
    fn handles_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync + Clone>() {}
        fn sendable<T: Send>() {}
        shareable::<Store>();
        sendable::<crate::PartialBlob>();
        sendable::<crate::BlobReader>();
    }

    #[test]
    fn pin_reasons_are_cut_at_a_character() {
        assert_eq!(cut_at_char("héllo", 2), "h");
        assert_eq!(cut_at_char("hello", 10), "hello");
    }
}
