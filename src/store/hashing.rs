//! File and folder hashing with blake3, memory-mapped and multi-threaded, behind a
//! stat cache so an unchanged file is never read twice (DVC's idea, blake3's speed).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::fsutil::write_atomic;

/// blake3 of a file's bytes. Large files are memory-mapped and hashed on all cores.
pub fn hash_file(path: &Path) -> io::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path)?;
    Ok(h.finalize())
}

/// Which entries of a folder its hash covers: called with each entry's path relative
/// to the folder and whether it is a folder (walked into only when this says yes).
pub type Select<'a> = &'a dyn Fn(&Path, bool) -> bool;

/// Every entry: the whole folder.
pub fn every_entry(_: &Path, _: bool) -> bool {
    true
}

/// blake3 of a folder: every regular file `select` keeps, by sorted relative path, as
/// `path NUL size NUL hash NL` lines; symlinks are followed, other entries skipped.
/// A folder that holds only the files `select` keeps hashes as the whole folder does.
pub fn hash_dir_with(
    path: &Path,
    select: Select<'_>,
    file_hash: impl FnMut(&Path) -> io::Result<blake3::Hash>,
) -> io::Result<blake3::Hash> {
    Ok(digest_listing(&list_dir_with(path, select, file_hash)?))
}

/// The files of a folder that `select` keeps, by sorted relative path, with each
/// one's size and blake3: what [`hash_dir_with`] digests.
fn list_dir_with(
    path: &Path,
    select: Select<'_>,
    mut file_hash: impl FnMut(&Path) -> io::Result<blake3::Hash>,
) -> io::Result<Vec<(PathBuf, u64, blake3::Hash)>> {
    let mut files = vec![];
    walk(path, path, select, &mut files, &mut vec![])?;
    files.sort();
    files
        .into_iter()
        .map(|rel| {
            let full = path.join(&rel);
            let size = std::fs::metadata(&full)?.len();
            let fh = file_hash(&full)?;
            Ok((rel, size, fh))
        })
        .collect()
}

fn digest_listing(files: &[(PathBuf, u64, blake3::Hash)]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"goosepipe-dir-v1\n");
    for (rel, size, fh) in files {
        h.update(rel.to_string_lossy().as_bytes());
        h.update(b"\0");
        h.update(size.to_string().as_bytes());
        h.update(b"\0");
        h.update(fh.to_hex().as_bytes());
        h.update(b"\n");
    }
    h.finalize()
}

/// What a file or folder hashed to. For a folder, also the files its hash covers, each
/// with its blake3, so that `plan` can say which of them changed; left out (`None`) for
/// a file, and for a folder of more than [`MAX_LISTED_FILES`] (a recipe stays small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    pub hash: blake3::Hash,
    pub files: Option<BTreeMap<String, String>>,
}

/// The most files of a folder a recipe lists by name.
pub const MAX_LISTED_FILES: usize = 256;

/// Folders deeper than this below a hashed folder are refused (a path of one-letter
/// folders hits the OS path limit long before).
const MAX_DIR_DEPTH: usize = 256;

/// `ancestors`: (device, inode) of the folders being walked, so a symlink back to one
/// of them is reported instead of recursing forever.
fn walk(
    root: &Path,
    dir: &Path,
    select: Select<'_>,
    out: &mut Vec<PathBuf>,
    ancestors: &mut Vec<(u64, u64)>,
) -> io::Result<()> {
    let md = std::fs::metadata(dir)?;
    let id = (md.dev(), md.ino());
    if ancestors.contains(&id) {
        return Err(io::Error::other(format!(
            "{} leads back into a folder above it (a symlink loop)",
            dir.display()
        )));
    }
    if ancestors.len() >= MAX_DIR_DEPTH {
        return Err(io::Error::other(format!(
            "{} is more than {MAX_DIR_DEPTH} folders deep",
            dir.display()
        )));
    }
    ancestors.push(id);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        let rel = p.strip_prefix(root).unwrap_or(&p);
        // Entries left out are not even looked at: an unreadable or looping folder
        // the key does not cover (a `.git`) cannot fail the hash.
        let kind = entry.file_type()?;
        let wanted = if kind.is_symlink() {
            select(rel, true) || select(rel, false)
        } else {
            select(rel, kind.is_dir())
        };
        if !wanted {
            continue;
        }
        let md = std::fs::metadata(&p)?;
        if kind.is_symlink() && !select(rel, md.is_dir()) {
            continue;
        }
        if md.is_dir() {
            walk(root, &p, select, out, ancestors)?;
        } else if md.is_file() {
            out.push(rel.to_path_buf());
        }
    }
    ancestors.pop();
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Stat {
    fn of(md: &std::fs::Metadata) -> Stat {
        Stat {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    stat: Stat,
    blake3: String,
}

/// path -> (dev, inode, size, mtime) -> blake3. A file whose stat is unchanged is not
/// re-read. Entries whose mtime is within the last 2 seconds of their recording are
/// not trusted (a write in the same mtime tick could go unnoticed).
#[derive(Debug, Default)]
pub struct HashCache {
    path: Option<PathBuf>,
    entries: Mutex<BTreeMap<String, CacheEntry>>,
    dirty: Mutex<bool>,
}

impl HashCache {
    /// A cache persisted at `path` (created on first save).
    pub fn open(path: PathBuf) -> HashCache {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        HashCache {
            path: Some(path),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// A cache that lives only in memory.
    pub fn in_memory() -> HashCache {
        HashCache::default()
    }

    pub fn file(&self, path: &Path) -> io::Result<blake3::Hash> {
        let md = std::fs::metadata(path)?;
        let stat = Stat::of(&md);
        let key = path.to_string_lossy().to_string();
        if let Some(e) = self.entries.lock().expect("hash cache lock").get(&key)
            && e.stat == stat
            && let Ok(h) = blake3::Hash::from_hex(&e.blake3)
        {
            return Ok(h);
        }
        let h = hash_file(path)?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        // Only remember hashes of files that have been quiet for a moment.
        if now_ns - stat.mtime_ns > 2_000_000_000 {
            self.entries.lock().expect("hash cache lock").insert(
                key,
                CacheEntry {
                    stat,
                    blake3: h.to_hex().to_string(),
                },
            );
            *self.dirty.lock().expect("hash cache lock") = true;
        }
        Ok(h)
    }

    pub fn dir(&self, path: &Path, select: Select<'_>) -> io::Result<blake3::Hash> {
        hash_dir_with(path, select, |f| self.file(f))
    }

    /// A file or a folder (all of it).
    pub fn path(&self, path: &Path) -> io::Result<blake3::Hash> {
        Ok(self.path_selected(path, &every_entry)?.hash)
    }

    /// A file, or of a folder the entries `select` keeps (listed, see [`Hashed`]).
    /// FIFOs, sockets and devices are refused: reading one would block (or, for
    /// /dev/zero, never end).
    pub fn path_selected(&self, path: &Path, select: Select<'_>) -> io::Result<Hashed> {
        let md = std::fs::metadata(path)?;
        if md.is_dir() {
            let listing = list_dir_with(path, select, |f| self.file(f))?;
            let files = (listing.len() <= MAX_LISTED_FILES).then(|| {
                listing
                    .iter()
                    .map(|(rel, _, h)| (rel.to_string_lossy().into_owned(), h.to_hex().to_string()))
                    .collect()
            });
            Ok(Hashed {
                hash: digest_listing(&listing),
                files,
            })
        } else if md.is_file() {
            Ok(Hashed {
                hash: self.file(path)?,
                files: None,
            })
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "it is a {}, not a regular file or folder",
                    super::fsutil::file_kind(&md)
                ),
            ))
        }
    }

    /// Persists the cache if anything changed. Failure to save is not an error for the
    /// caller: the cache only saves time.
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        if !*self.dirty.lock().expect("hash cache lock") {
            return;
        }
        let entries = self.entries.lock().expect("hash cache lock");
        if let Ok(bytes) = serde_json::to_vec(&*entries) {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = write_atomic(path, &bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_loops_and_special_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(t.path(), t.path().join("sub/up")).unwrap();
        let e = HashCache::in_memory().dir(t.path(), &every_entry).unwrap_err();
        assert!(e.to_string().contains("symlink loop"), "{e}");
        let e = HashCache::in_memory().path(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
    }

    #[test]
    fn dir_hash_depends_on_names_and_content() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"1").unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::fs::write(t.path().join("sub/b"), b"2").unwrap();
        let c = HashCache::in_memory();
        let h1 = c.dir(t.path(), &every_entry).unwrap();
        std::fs::write(t.path().join("sub/b"), b"3").unwrap();
        let h2 = c.dir(t.path(), &every_entry).unwrap();
        assert_ne!(h1, h2);
        std::fs::rename(t.path().join("a"), t.path().join("c")).unwrap();
        assert_ne!(c.dir(t.path(), &every_entry).unwrap(), h2);
    }

    #[test]
    fn a_selected_hash_ignores_what_it_leaves_out_and_equals_the_whole_folders_when_nothing_is() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("config.json"), b"{}").unwrap();
        let top_json = |rel: &Path, is_dir: bool| !is_dir && rel.extension().is_some_and(|e| e == "json");
        let c = HashCache::in_memory();
        let whole = c.dir(t.path(), &every_entry).unwrap();
        assert_eq!(c.dir(t.path(), &top_json).unwrap(), whole);
        // A .git folder with a loop and an unreadable link in it, and a README: all
        // left out, so none of them is read or can fail the hash.
        std::fs::create_dir(t.path().join(".git")).unwrap();
        std::os::unix::fs::symlink(t.path(), t.path().join(".git/up")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", t.path().join(".git/gone")).unwrap();
        std::fs::write(t.path().join("README.md"), b"notes").unwrap();
        assert_eq!(c.dir(t.path(), &top_json).unwrap(), whole);
        std::fs::write(t.path().join("config.json"), b"{\"a\": 1}").unwrap();
        assert_ne!(c.dir(t.path(), &top_json).unwrap(), whole);
    }

    /// A folder's files are listed with their blake3 (what `plan` names when one
    /// changes), up to [`MAX_LISTED_FILES`]; a file, or a larger folder, lists none.
    #[test]
    fn a_folder_lists_its_files_up_to_a_bound() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"1").unwrap();
        let c = HashCache::in_memory();
        let listed = c.path_selected(t.path(), &every_entry).unwrap();
        assert_eq!(listed.hash, c.dir(t.path(), &every_entry).unwrap());
        let files = listed.files.unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(files["a"], blake3::hash(b"1").to_hex().to_string());
        assert_eq!(
            c.path_selected(&t.path().join("a"), &every_entry).unwrap().files,
            None
        );
        for i in 0..MAX_LISTED_FILES {
            std::fs::write(t.path().join(format!("f{i}")), b"x").unwrap();
        }
        assert_eq!(c.path_selected(t.path(), &every_entry).unwrap().files, None);
    }
}
