//! What makes a folder a store: a marker file written when the store is created.
//!
//! `run --store DIR` used to take any folder as a store, and `gc` then deleted the
//! user's own files under `DIR/tmp` or `DIR/work` as leftovers of interrupted runs. A
//! store is now made only in a new or empty folder (or one an earlier goosepipe laid
//! out as a store); any other folder is refused, naming what is in it.

use std::path::Path;

use super::{StoreError, io_err};

/// The marker file at the store's root.
pub const MARKER: &str = "goosepipe.store";

const MARKER_TEXT: &str = "This folder is a goosepipe store (format 1): goosepipe manages everything in it, and `goosepipe gc` deletes what no manifest needs.\n";

/// The folders of a store, made when it is opened.
pub const SUBFOLDERS: [&str; 7] = ["objects", "tmp", "work", "recipes", "locks", "runs", "names"];

/// Whether `root` is a store: it has the marker, or the layout a goosepipe from
/// before the marker made (its `objects/` and `recipes/`).
pub fn is_store(root: &Path) -> bool {
    root.join(MARKER).is_file() || laid_out_as_store(root)
}

/// The store that `path` is in (or is), if any: its nearest existing folder and
/// every folder above it are looked at, links resolved.
pub fn store_around(path: &Path) -> Option<std::path::PathBuf> {
    let (real, _) = nearest_existing(path)?;
    real.ancestors().find(|a| is_store(a)).map(Path::to_path_buf)
}

/// The marked store that `root` is inside (not `root` itself), if any.
fn marked_store_above(root: &Path) -> Option<std::path::PathBuf> {
    let (real, itself) = nearest_existing(root)?;
    // `root` itself, when it exists, is no store above it.
    let start = if itself { real.parent()? } else { real.as_path() };
    start
        .ancestors()
        .find(|a| a.join(MARKER).is_file())
        .map(Path::to_path_buf)
}

/// Where `path` lies on disk: its nearest existing folder (itself, or the deepest one
/// above it), links resolved, and whether that is `path` itself.
fn nearest_existing(path: &Path) -> Option<(std::path::PathBuf, bool)> {
    let absolute = std::path::absolute(path).ok()?;
    let existing = absolute.ancestors().find(|a| a.exists())?;
    Some((
        std::fs::canonicalize(existing).ok()?,
        existing == absolute.as_path(),
    ))
}

/// The names in `root` that a store does not make, sorted: a folder with any is
/// someone's own, not a store to be (empty when `root` is a store, empty, or absent).
pub fn foreign_entries(root: &Path) -> Vec<String> {
    if is_store(root) {
        return vec![];
    }
    // The marker too: another process may write it between the check above and
    // this listing (two runs on a new store at once; one refused the other's store).
    let ours =
        |n: &str| n == MARKER || SUBFOLDERS.contains(&n) || n == super::IN_USE_LOCK || n == "hashcache.json";
    let mut found: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !ours(n))
        .collect();
    found.sort();
    found
}

fn laid_out_as_store(root: &Path) -> bool {
    // The two folders every goosepipe has made (`names/` and `runs/` came later).
    ["objects", "recipes"].iter().all(|s| root.join(s).is_dir())
}

/// Makes `root` a store, or checks that it is one. A folder that does not exist or
/// is empty becomes one; a store of an earlier goosepipe gets its marker (where the
/// folder can be written: a read-only store stays readable); any other folder is
/// refused with [`StoreError::NotAStore`].
pub fn claim(root: &Path) -> Result<(), StoreError> {
    // A folder inside a store (`--store .goosepipe/objects`, or a new one there) is a
    // mistyped --store, not a store to make inside the other. Only a marked store
    // counts here: a project's own `objects/` and `recipes/` folders are no store.
    if let Some(store) = marked_store_above(root) {
        return Err(StoreError::InsideStore {
            path: root.to_path_buf(),
            store,
        });
    }
    if root.exists() && !root.is_dir() {
        return Err(StoreError::NotAFolder {
            path: root.to_path_buf(),
        });
    }
    std::fs::create_dir_all(root).map_err(io_err(root))?;
    let marker = root.join(MARKER);
    if marker.is_file() {
        return Ok(());
    }
    if laid_out_as_store(root) {
        let _ = std::fs::write(&marker, MARKER_TEXT);
        return Ok(());
    }
    std::fs::read_dir(root).map_err(io_err(root))?;
    let found = foreign_entries(root);
    // The marker goes first (before the folders): a second process opening the
    // same new store at once finds it, not a half-made layout it would refuse.
    // Writing it twice writes the same bytes.
    if found.is_empty() {
        return std::fs::write(&marker, MARKER_TEXT).map_err(io_err(&marker));
    }
    Err(refusal(root, &found))
}

/// The error for a folder that holds `found` (its [`foreign_entries`]).
pub fn refusal(root: &Path, found: &[String]) -> StoreError {
    let mut holds = found.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if found.len() > 3 {
        holds.push_str(&format!(", and {} more", found.len() - 3));
    }
    StoreError::NotAStore {
        path: root.to_path_buf(),
        holds,
    }
}
