//! The content-addressed artifact store.
//!
//! Layout (all below the store folder, default `.goosepipe/`):
//! ```text
//! objects/<k0k1>/<key>/meta.json   published artifact: metadata (ArtifactMeta)
//! objects/<k0k1>/<key>/files/...   published artifact: payload
//! tmp/<key>.<pid>.<nanos>/         staging of a step being built (gc removes leftovers)
//! work/<key>/                      resumable scratch (checkpoints) of an unfinished step
//! recipes/<key>.json               frozen StepSpec, written before the step runs
//! names/<blake3(id)>               "ID\nKEY": the key a run last found step ID at (an
//!                                  artifact is published under its builder's id only;
//!                                  twins and renamed steps find theirs here)
//! locks/<key>.lock                 per-key lock (fcntl OFD)
//! hashcache.json                   stat cache of hashed local files
//! runs/                            run logs; runs/manifests/<blake3(path)>: each manifest
//!                                  that ran here (what `gc` keeps for the others)
//! ```
//! Invariant: anything under `objects/` is complete. Publishing is rename of a fully
//! written, fsynced staging folder, so a kill -9 at any moment leaves either no object
//! or a complete one.

pub mod artifact;
pub mod fsutil;
pub mod gc;
pub mod hashing;
pub mod identity;
pub mod key;
pub mod lock;
pub mod lockfile;
pub mod manifests;
pub mod spec;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

pub use artifact::{ArtifactMeta, FileEntry};
pub use hashing::HashCache;
pub use key::Key;
pub use lock::KeyLock;
pub use spec::{External, SpecInput, StepSpec};

use fsutil::{nanos, sync_dir, sync_tree, write_atomic};

/// Environment variable naming the store folder (overridden by `--store`).
pub const STORE_ENV: &str = "GOOSEPIPE_STORE";
pub const DEFAULT_STORE: &str = ".goosepipe";
/// The store-wide lock of [`Store::in_use`] and [`Store::alone`].
pub(crate) const IN_USE_LOCK: &str = "in-use.lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("artifact {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// A folder with files of its own, given as a store: taking it would let `gc`
    /// delete them.
    #[error(
        "{path} is not a goosepipe store: it holds {holds}, and a store is made only in a new or empty folder"
    )]
    NotAStore { path: PathBuf, holds: String },
    /// A file (not a folder) given as a store.
    #[error("{path} is a file, not a store folder")]
    NotAFolder { path: PathBuf },
    #[error("{path} is inside the goosepipe store at {store}: a store is never made inside another")]
    InsideStore { path: PathBuf, store: PathBuf },
}

impl StoreError {
    /// A file this user may not read (a shared store, another user's umask): not
    /// damage, nothing to move aside or rebuild.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied)
    }

    /// The store may not be written here (permissions, a read-only mount).
    pub fn is_read_only(&self) -> bool {
        matches!(self, StoreError::Io { source, .. }
            if source.kind() == io::ErrorKind::PermissionDenied
                || source.kind() == io::ErrorKind::ReadOnlyFilesystem)
    }
}

/// What a user does about a corrupt artifact of the store at `root`, as commands to
/// copy (with `--store` where a bare command would look elsewhere).
pub fn corrupt_help(root: &Path) -> String {
    let flag = store_flag(root);
    format!("`goosepipe verify --all{flag}` moves it aside, `goosepipe run MANIFEST{flag}` rebuilds it")
}

/// ` --store DIR` for a command a hint prints, or nothing where DIR is the store a bare
/// command uses (`GOOSEPIPE_STORE`, else `.goosepipe`): a hint copied as printed must
/// act on the store the user meant.
pub fn store_flag(root: &Path) -> String {
    let default = std::env::var_os("GOOSEPIPE_STORE")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_STORE.into());
    if root == Path::new(&default) {
        String::new()
    } else {
        format!(" --store {}", shell_word(root))
    }
}

/// A path as one shell word: quoted when it holds anything but plain characters.
pub fn shell_word(p: &Path) -> String {
    let s = p.display().to_string();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the store has for a key, judged cheaply (no hashing of payload bytes).
#[derive(Debug)]
pub enum Presence {
    Missing,
    Present(Box<ArtifactMeta>),
    Corrupt(String),
}

#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

/// A step's output being built: write files into `files`, then [`Store::publish`].
#[derive(Debug)]
pub struct Staging {
    pub key: Key,
    pub dir: PathBuf,
    pub files: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`; refuses a folder that holds
    /// anything but a store ([`identity::claim`]).
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        identity::claim(&root)?;
        for sub in identity::SUBFOLDERS {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Store { root })
    }

    /// The store at `root` as it is, creating nothing: for commands that only look
    /// (`plan`, `graph`, `explain`), where a folder that does not exist yet is a store
    /// with nothing in it, and a dry run leaves no trace.
    pub fn at(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The store folder to use: `--store`, else $GOOSEPIPE_STORE, else `.goosepipe`.
    pub fn resolve_root(flag: Option<&Path>) -> PathBuf {
        if let Some(p) = flag {
            return p.to_path_buf();
        }
        match std::env::var_os(STORE_ENV) {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => PathBuf::from(DEFAULT_STORE),
        }
    }

    pub fn object_dir(&self, key: &Key) -> PathBuf {
        let h = key.hex();
        self.root.join("objects").join(&h[..2]).join(h)
    }

    pub fn files_dir(&self, key: &Key) -> PathBuf {
        self.object_dir(key).join("files")
    }

    pub fn work_dir(&self, key: &Key) -> PathBuf {
        self.root.join("work").join(key.hex())
    }

    pub fn lock_path(&self, key: &Key) -> PathBuf {
        self.root.join("locks").join(format!("{}.lock", key.hex()))
    }

    pub fn hash_cache(&self) -> HashCache {
        HashCache::open(self.root.join("hashcache.json"))
    }

    pub fn lock(&self, key: &Key) -> Result<KeyLock, StoreError> {
        let p = self.lock_path(key);
        KeyLock::acquire(&p).map_err(io_err(&p))
    }

    /// Held (shared) by every run and every `exec` while they use the store, so that
    /// gc, which takes it alone, never deletes what a live run has built or is about
    /// to read. A run waits while a gc holds it; a gc refuses while any run holds it.
    pub fn in_use(&self) -> Result<KeyLock, StoreError> {
        let p = self.root.join(IN_USE_LOCK);
        KeyLock::acquire_shared(&p).map_err(io_err(&p))
    }

    /// [`Store::in_use`] if no gc holds the store right now.
    pub fn try_in_use(&self) -> Result<Option<KeyLock>, StoreError> {
        let p = self.root.join(IN_USE_LOCK);
        KeyLock::try_acquire_shared(&p).map_err(io_err(&p))
    }

    /// The store to itself for a gc, if no run is using it now.
    pub fn alone(&self) -> Result<Option<KeyLock>, StoreError> {
        let p = self.root.join(IN_USE_LOCK);
        KeyLock::try_acquire(&p).map_err(io_err(&p))
    }

    /// Whether a run is building this key now (holds its lock), asked without
    /// taking the lock.
    pub fn is_building(&self, key: &Key) -> bool {
        KeyLock::is_held(&self.lock_path(key)).unwrap_or(false)
    }

    pub fn try_lock(&self, key: &Key) -> Result<Option<KeyLock>, StoreError> {
        let p = self.lock_path(key);
        KeyLock::try_acquire(&p).map_err(io_err(&p))
    }

    /// Reads an artifact's metadata and checks that every file is there with its
    /// recorded size. Cheap enough for `plan` on thousands of steps.
    pub fn presence(&self, key: &Key) -> Presence {
        let dir = self.object_dir(key);
        let meta_path = dir.join("meta.json");
        let bytes = match std::fs::read(&meta_path) {
            Ok(b) => b,
            // A store path that is a file (`plan --store FILE`) holds nothing either.
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                return if dir.is_dir() {
                    Presence::Corrupt("meta.json is missing".into())
                } else {
                    Presence::Missing
                };
            }
            Err(e) => return Presence::Corrupt(format!("meta.json unreadable: {e}")),
        };
        let meta: ArtifactMeta = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => return Presence::Corrupt(format!("meta.json does not parse: {e}")),
        };
        // Every goosepipe so far writes format 1: another number is an edit, or a
        // layout this version would misread.
        if meta.format != artifact::META_FORMAT {
            return Presence::Corrupt(format!(
                "meta.json is in format {}, and this goosepipe reads format {} (edited, or written by another version)",
                meta.format,
                artifact::META_FORMAT
            ));
        }
        if meta.key != *key {
            return Presence::Corrupt(format!("meta.json names key {}", meta.key.short()));
        }
        if artifact::digest_of(&meta.files) != meta.digest {
            return Presence::Corrupt("file list does not match its digest".into());
        }
        let files = dir.join("files");
        for f in &meta.files {
            match std::fs::metadata(files.join(&f.path)) {
                // A folder's size is its file system's, not the file's: said as what it is.
                Ok(md) if !md.is_file() => {
                    return Presence::Corrupt(format!(
                        "{} is not a file (a folder, or another special file)",
                        f.path
                    ));
                }
                Ok(md) if md.len() == f.size => {}
                Ok(md) => {
                    return Presence::Corrupt(format!(
                        "{} has {} bytes, recorded {}",
                        f.path,
                        md.len(),
                        f.size
                    ));
                }
                Err(_) => return Presence::Corrupt(format!("{} is missing", f.path)),
            }
        }
        Presence::Present(Box::new(meta))
    }

    /// The permission error, if this user may not read `key`'s artifact (its folder or
    /// meta.json: a shared store, another user's umask) and that is why
    /// [`Store::presence`] calls it corrupt: not damage, so nothing is to be moved
    /// aside or rebuilt ([`StoreError::is_permission_denied`]).
    pub fn denied(&self, key: &Key) -> Option<StoreError> {
        let meta = self.object_dir(key).join("meta.json");
        match std::fs::File::open(&meta) {
            Err(source) if source.kind() == io::ErrorKind::PermissionDenied => {
                Some(StoreError::Io { path: meta, source })
            }
            _ => None,
        }
    }

    /// Re-hashes every payload file against the recorded digests: the check done before
    /// an artifact is used as an input, so a flipped bit is rebuilt, never consumed.
    pub fn verify(&self, key: &Key) -> Result<ArtifactMeta, StoreError> {
        let meta = match self.presence(key) {
            Presence::Present(m) => *m,
            Presence::Missing => {
                return Err(StoreError::Corrupt {
                    key: key.hex(),
                    reason: "not in the store".into(),
                });
            }
            // Unreadable by this user is said as that, as a payload file's is below.
            Presence::Corrupt(reason) => {
                return Err(self.denied(key).unwrap_or(StoreError::Corrupt {
                    key: key.hex(),
                    reason,
                }));
            }
        };
        let files = self.files_dir(key);
        for f in &meta.files {
            let p = files.join(&f.path);
            let h = hashing::hash_file(&p).map_err(io_err(&p))?;
            if h.to_hex().as_str() != f.blake3 {
                return Err(StoreError::Corrupt {
                    key: key.hex(),
                    reason: format!("{} does not match its recorded blake3", f.path),
                });
            }
        }
        Ok(meta)
    }

    /// Entries in an artifact's folder that it did not publish (a `.DS_Store`, a file
    /// copied in by hand). Every reader opens its files by name, so they change
    /// nothing read; they are said by `verify`, not taken for corruption (which would
    /// rebuild an intact artifact).
    pub fn unrecorded(&self, meta: &ArtifactMeta) -> Vec<String> {
        let recorded: std::collections::HashSet<&str> = meta.files.iter().map(|f| f.path.as_str()).collect();
        artifact::payload_entries(&self.files_dir(&meta.key))
            .unwrap_or_default()
            .into_iter()
            .map(|(rel, _, _)| rel)
            .filter(|rel| !recorded.contains(rel.as_str()))
            .collect()
    }

    pub fn meta(&self, key: &Key) -> Option<ArtifactMeta> {
        match self.presence(key) {
            Presence::Present(m) => Some(*m),
            _ => None,
        }
    }

    /// Moves a corrupt object out of `objects/` (atomically) so it is never read again;
    /// gc deletes it later.
    pub fn quarantine(&self, key: &Key) -> Result<(), StoreError> {
        let dir = self.object_dir(key);
        if !dir.exists() {
            return Ok(());
        }
        let to = self
            .root
            .join("tmp")
            .join(format!("corrupt.{}.{}", key.hex(), nanos()));
        std::fs::rename(&dir, &to).map_err(io_err(&dir))
    }

    /// Checks `key` again with `check` (the store's [`Store::verify`], or a caller's
    /// stricter one) holding its lock, and moves it aside only if it is still corrupt,
    /// returning why. A key a run holds right now (it is rebuilding or publishing it)
    /// is left alone, and an artifact that reads fine the second time is kept: None.
    pub fn quarantine_if_corrupt(
        &self,
        key: &Key,
        check: impl Fn(&Key) -> Result<ArtifactMeta, StoreError>,
    ) -> Result<Option<String>, StoreError> {
        let Some(_lock) = self.try_lock(key)? else {
            return Ok(None);
        };
        match check(key) {
            Err(StoreError::Corrupt { reason, .. }) => {
                self.quarantine(key)?;
                Ok(Some(reason))
            }
            _ => Ok(None),
        }
    }

    /// Whether a corrupt artifact of `key` was moved aside (and gc has not yet deleted
    /// it): the step is then rebuilt even if nothing needs it, so the store is whole again.
    pub fn was_quarantined(&self, key: &Key) -> bool {
        self.quarantined().contains(key)
    }

    /// The keys of every quarantined copy in `tmp/` (gc has not deleted it yet).
    pub fn quarantined(&self) -> Vec<Key> {
        std::fs::read_dir(self.root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| quarantined_key(&e.file_name().to_string_lossy()))
            .collect()
    }

    /// A fresh staging folder for building `key`.
    pub fn begin(&self, key: &Key) -> Result<Staging, StoreError> {
        let dir = self
            .root
            .join("tmp")
            .join(format!("{}.{}.{}", key.hex(), std::process::id(), nanos()));
        let files = dir.join("files");
        std::fs::create_dir_all(&files).map_err(io_err(&files))?;
        Ok(Staging {
            key: *key,
            dir,
            files,
        })
    }

    /// Publishes a staging folder as the artifact for its key: hashes and fsyncs the
    /// payload, writes meta.json, and renames the folder into `objects/`. If another run
    /// published the same key first, its artifact wins and ours is discarded (same key,
    /// same content by construction). `numerics`: what set the last bits of its results
    /// (`process::numerics`), recorded in its metadata.
    pub fn publish(
        &self,
        staging: Staging,
        spec: &StepSpec,
        pins: BTreeMap<String, String>,
        numerics: Option<String>,
        started_unix: f64,
    ) -> Result<ArtifactMeta, StoreError> {
        let files = artifact::scan_files(&staging.files).map_err(io_err(&staging.files))?;
        let meta = ArtifactMeta {
            format: artifact::META_FORMAT,
            key: staging.key,
            spec: spec.clone(),
            digest: artifact::digest_of(&files),
            files,
            pins,
            numerics,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            host: hostname(),
            started_unix,
            finished_unix: artifact::now_unix(),
        };
        let meta_bytes = serde_json::to_vec_pretty(&meta).expect("meta serializes");
        let meta_path = staging.dir.join("meta.json");
        std::fs::write(&meta_path, meta_bytes).map_err(io_err(&meta_path))?;
        sync_tree(&staging.dir).map_err(io_err(&staging.dir))?;
        crate::faults::point("publish.meta-written");
        let target = self.object_dir(&staging.key);
        let parent = target.parent().expect("object dir has a parent").to_path_buf();
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        match std::fs::rename(&staging.dir, &target) {
            Ok(()) => {
                sync_dir(&parent).map_err(io_err(&parent))?;
                crate::faults::point("publish.renamed");
                Ok(meta)
            }
            Err(e) if target.exists() => {
                // Lost a race with another publisher of the same key.
                let _ = std::fs::remove_dir_all(&staging.dir);
                match self.presence(&staging.key) {
                    Presence::Present(m) => Ok(*m),
                    _ => Err(io_err(&target)(e)),
                }
            }
            Err(e) => Err(io_err(&target)(e)),
        }
    }

    /// Throws a staging folder away (failed or cancelled step).
    pub fn abandon(&self, staging: Staging) {
        let _ = std::fs::remove_dir_all(&staging.dir);
    }

    pub fn save_recipe(&self, spec: &StepSpec) -> Result<(), StoreError> {
        let p = self.root.join("recipes").join(format!("{}.json", spec.key.hex()));
        let bytes = serde_json::to_vec_pretty(spec).expect("spec serializes");
        // Under early cutoff one key has several recipes, each reading another
        // artifact of the same content (a dataset rebuilt with the same rows): the
        // newest names inputs that are in the store now (an older one's may have
        // been gc'd), so it replaces the one there. Either is whole (atomic rename).
        if std::fs::read(&p).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        write_atomic(&p, &bytes).map_err(io_err(&p))
    }

    /// The recipe of `key`, None where there is none or it cannot be read (see
    /// [`Store::read_recipe`] for why).
    pub fn recipe(&self, key: &Key) -> Option<StepSpec> {
        self.read_recipe(key).ok().flatten()
    }

    /// The recipe of `key`: None where the store has none, an error saying why where
    /// one is there and cannot be read (truncated, edited, not a file), which a job
    /// must not take for a missing one.
    pub fn read_recipe(&self, key: &Key) -> Result<Option<StepSpec>, String> {
        let p = self.root.join("recipes").join(format!("{}.json", key.hex()));
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", p.display())),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: not a recipe ({e})", p.display()))
    }

    /// Every published key (for gc and `show`).
    pub fn keys(&self) -> Vec<Key> {
        let mut out = vec![];
        let objects = self.root.join("objects");
        if let Ok(rd) = std::fs::read_dir(&objects) {
            for shard in rd.flatten() {
                if let Ok(inner) = std::fs::read_dir(shard.path()) {
                    for e in inner.flatten() {
                        if let Ok(k) = e.file_name().to_string_lossy().parse::<Key>() {
                            out.push(k);
                        }
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// The keys that have a work folder: steps running now, or interrupted.
    pub fn work_keys(&self) -> Vec<Key> {
        let mut out: Vec<Key> = std::fs::read_dir(self.root.join("work"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        out.sort();
        out
    }

    fn name_path(&self, id: &str) -> PathBuf {
        self.root
            .join("names")
            .join(&blake3::hash(id.as_bytes()).to_hex()[..32])
    }

    /// Records that step `id` has its artifact at `key`, as the run of `manifest` found
    /// it (written by `run` for every step it finds published; unchanged records are
    /// not rewritten). The manifest is said by `show` and `export`, which follow the
    /// last run of any manifest.
    pub fn record_name(&self, id: &str, key: &Key, manifest: &Path) -> Result<(), StoreError> {
        let p = self.name_path(id);
        let manifest = std::path::absolute(manifest).unwrap_or_else(|_| manifest.to_path_buf());
        // A manifest path with a line break cannot be a third line: left out.
        let manifest = manifest.to_str().filter(|m| !m.contains('\n')).unwrap_or("");
        let line = format!("{id}\n{}\n{manifest}\n", key.hex());
        if std::fs::read_to_string(&p).is_ok_and(|s| s == line) {
            return Ok(());
        }
        // Renamed into place (never read torn) but not fsynced: an index, rebuilt by
        // the next run; a record lost or damaged by a crash only sends `find` to the
        // metadata scan.
        let tmp = p.with_extension(format!("tmp-{}", fsutil::unique_suffix()));
        std::fs::write(&tmp, line.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, &p))
            .inspect_err(|_| {
                // A full disk leaves no partial record behind.
                let _ = std::fs::remove_file(&tmp);
            })
            .map_err(io_err(&p))
    }

    /// The key recorded for step `id` by the last run that found it published.
    pub fn named(&self, id: &str) -> Option<Key> {
        let (recorded, key, _) = read_name_record(&self.name_path(id))?;
        (recorded == id).then_some(key)
    }

    /// The manifest whose run recorded step `id` last (None for a record written
    /// before manifests were recorded).
    pub fn named_by(&self, id: &str) -> Option<PathBuf> {
        let (recorded, _, manifest) = read_name_record(&self.name_path(id))?;
        manifest.filter(|_| recorded == id)
    }

    /// Every step id a run recorded in the `names/` index (for suggestions).
    pub fn named_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.root.join("names"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| read_name_record(&e.path()).map(|(id, ..)| id))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// How many artifacts other than `key` were built by step `id` (earlier settings
    /// of the step, kept until gc): `show` and `export` say so when they resolved an id
    /// through the last run, which may not be what the manifest has now.
    pub fn others_of(&self, id: &str, key: &Key) -> usize {
        self.keys()
            .iter()
            .filter(|k| *k != key)
            .filter(|k| self.meta(k).is_some_and(|m| m.spec.id == id))
            .count()
    }

    /// Resolves a user's `STEP|KEY` argument: a full key, a unique key prefix, a step
    /// id as a run of its manifest last found it (a twin or renamed step included), or
    /// a step id / name recorded in artifact metadata (the newest match wins).
    pub fn find(&self, what: &str) -> Result<ArtifactMeta, String> {
        if let Some(k) = self.named(what)
            && let Presence::Present(m) = self.presence(&k)
        {
            return Ok(*m);
        }
        let keys = self.keys();
        if what.len() >= 4 && what.bytes().all(|b| b.is_ascii_hexdigit()) {
            // Keys are written in lower case; a prefix copied in upper case is one too.
            let prefix = what.to_ascii_lowercase();
            let matches: Vec<&Key> = keys.iter().filter(|k| k.hex().starts_with(&prefix)).collect();
            match matches.as_slice() {
                [k] => {
                    // A name may be hex too (`cafe`, `added`): then it is not for us to
                    // pick which was meant.
                    // Metadata alone (no file sizes checked): only names are compared;
                    // then the names a run recorded (a twin or a renamed step is
                    // there under its own name, not in the artifact's metadata).
                    let named = keys
                        .iter()
                        .filter(|other| *other != *k)
                        .find_map(|other| {
                            self.meta(other)
                                .filter(|m| m.spec.name == what)
                                .map(|m| m.spec.id)
                        })
                        .or_else(|| {
                            self.named_ids()
                                .into_iter()
                                .find(|id| id.split_once(':').is_some_and(|(_, name)| name == what))
                        });
                    if let Some(id) = named {
                        return Err(format!(
                            "{what:?} is both the start of the key {} and the name of {id}; give the step id ({id}) or more digits of the key",
                            k.short()
                        ));
                    }
                    return match self.presence(k) {
                        Presence::Present(m) => Ok(*m),
                        Presence::Corrupt(reason) => Err(format!(
                            "artifact {} is corrupt: {reason}; {}",
                            k.short(),
                            corrupt_help(&self.root)
                        )),
                        Presence::Missing => Err(format!("artifact {} vanished", k.short())),
                    };
                }
                [] => {}
                many => {
                    return Err(format!(
                        "key prefix {what} is ambiguous ({} artifacts); give more digits",
                        many.len()
                    ));
                }
            }
        }
        // By id, the newest of its versions; by bare name, only when one step has it
        // (`sort` may be a dataset, an expert and a gate).
        let mut by_id: Option<ArtifactMeta> = None;
        let mut by_name: BTreeMap<String, ArtifactMeta> = BTreeMap::new();
        let newer =
            |b: &Option<&ArtifactMeta>, m: &ArtifactMeta| b.is_none_or(|b| m.finished_unix > b.finished_unix);
        let mut corrupt: Option<(Key, String)> = None;
        for k in &keys {
            match self.presence(k) {
                Presence::Present(m) if m.spec.id == what && newer(&by_id.as_ref(), &m) => {
                    by_id = Some(*m);
                }
                Presence::Present(m) if m.spec.name == what && newer(&by_name.get(&m.spec.id), &m) => {
                    by_name.insert(m.spec.id.clone(), *m);
                }
                Presence::Corrupt(reason) => {
                    // Its metadata may be what is damaged: the recipe names the step too.
                    let spec = self.recipe(k).or_else(|| {
                        let bytes = std::fs::read(self.object_dir(k).join("meta.json")).ok()?;
                        serde_json::from_slice::<ArtifactMeta>(&bytes)
                            .ok()
                            .map(|m| m.spec)
                    });
                    if spec.is_some_and(|s| s.id == what || s.name == what) {
                        corrupt = Some((*k, reason));
                    }
                }
                _ => {}
            }
        }
        let best = match by_id {
            Some(m) => Some(m),
            None if by_name.len() > 1 => {
                let ids: Vec<&str> = by_name.keys().map(String::as_str).collect();
                return Err(format!(
                    "{what:?} names several steps in this store ({}); give the step id, e.g. {}",
                    ids.join(", "),
                    ids[0]
                ));
            }
            None => by_name.into_values().next(),
        };
        if let (None, Some((k, reason))) = (&best, corrupt) {
            // Not damage: this user may not read it (a shared store). Nothing to move
            // aside or rebuild, as `verify` says too.
            if let Some(denied) = self.denied(&k) {
                return Err(format!(
                    "the artifact of {what} ({}) cannot be read by this user: {denied}; it is not damaged (ask its owner, or use a store of your own)",
                    k.short()
                ));
            }
            return Err(format!(
                "the artifact of {what} ({}) is corrupt: {reason}; {}",
                k.short(),
                corrupt_help(&self.root)
            ));
        }
        if best.is_none()
            && let Some(k) = self.named(what)
            && self.was_quarantined(&k)
        {
            return Err(format!(
                "the artifact of {what} ({}) was moved aside as corrupt (by a verify, a report or a run) and is not rebuilt yet: the next `goosepipe run` of its manifest rebuilds it",
                k.short()
            ));
        }
        best.ok_or_else(|| {
            let short = if !what.is_empty() && what.len() < 4 && what.bytes().all(|b| b.is_ascii_hexdigit()) {
                "; a key prefix needs at least 4 hex digits"
            } else {
                ""
            };
            format!(
                "no artifact in {} matches {what:?} (a key, key prefix, or step id such as expert:NAME){short}",
                self.root.display()
            )
        })
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The metadata of the published artifact holding `path` (a file or folder anywhere
/// under `objects/<k0k1>/<key>/files/`), for a file taken from a store by hand.
fn artifact_holding(path: &Path) -> Option<ArtifactMeta> {
    let path = std::fs::canonicalize(path).ok()?;
    let files = path
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "files"))?;
    let bytes = std::fs::read(files.parent()?.join("meta.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The key of the published artifact holding `path`: what an expert file records as
/// its base model, when the model is a store artifact.
pub fn artifact_key_of(path: &Path) -> Option<Key> {
    artifact_holding(path).map(|m| m.key)
}

/// The name of the step that built the published artifact holding `file`: artifacts
/// record no step name in their files (their bytes depend on their key alone), so a
/// tool that names what it loads asks here.
pub fn step_name_of_file(file: &Path) -> Option<String> {
    artifact_holding(file).map(|m| m.spec.name)
}

/// A `names/` record: the step id and the key written by [`Store::record_name`].
/// The key of a quarantined copy's name in `tmp/` (`corrupt.KEY.NANOS`), or None.
pub(crate) fn quarantined_key(name: &str) -> Option<Key> {
    name.strip_prefix("corrupt.")?.get(..64)?.parse().ok()
}

/// A `names/` record as [`Store::record_name`] writes it: the step id, its key, and the
/// manifest whose run recorded it (None in a record from before manifests were).
pub(crate) fn read_name_record(path: &Path) -> Option<(String, Key, Option<PathBuf>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let id = lines.next()?;
    let key = lines.next()?.parse().ok()?;
    let manifest = lines.next().filter(|m| !m.is_empty()).map(PathBuf::from);
    Some((id.to_string(), key, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two runs in one process (threads of a library user, the engine tests) record
    /// the same names at once: each write has a temporary file of its own (they shared
    /// `NAME.tmp-PID`, and one's rename found the other's file gone: a failed run).
    #[test]
    fn threads_of_one_process_record_one_name_at_once() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("s")).unwrap();
        let keys: Vec<Key> = ["1", "2"].iter().map(|d| d.repeat(64).parse().unwrap()).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for i in 0..300 {
                        store
                            .record_name("expert:a", &keys[i % 2], Path::new("m.kdl"))
                            .unwrap();
                    }
                });
            }
        });
        assert!(store.named("expert:a").is_some());
    }

    #[test]
    fn a_key_s_newest_recipe_replaces_the_one_there() {
        // Under early cutoff one key is made from two datasets of the same content.
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("s")).unwrap();
        let recipe = |dataset: u8| StepSpec {
            key: Key([1; 32]),
            id: "tokenize:a".into(),
            kind: "tokenize".into(),
            name: "a".into(),
            version: 1,
            params: serde_json::json!({}),
            settings: serde_json::json!({}),
            inputs: vec![SpecInput {
                role: "data".into(),
                id: "dataset:a".into(),
                key: Key([dataset; 32]),
                digest: Some("c".repeat(64)),
            }],
            externals: vec![],
        };
        store.save_recipe(&recipe(2)).unwrap();
        store.save_recipe(&recipe(3)).unwrap();
        assert_eq!(store.recipe(&Key([1; 32])).unwrap(), recipe(3));
    }

    #[test]
    fn read_only_stores_are_told_from_other_failures() {
        let err = |kind| io_err(Path::new("s/in-use.lock"))(io::Error::from(kind));
        assert!(err(io::ErrorKind::PermissionDenied).is_read_only());
        assert!(err(io::ErrorKind::ReadOnlyFilesystem).is_read_only());
        assert!(!err(io::ErrorKind::NotFound).is_read_only());
        assert!(!err(io::ErrorKind::IsADirectory).is_read_only());
    }
}
