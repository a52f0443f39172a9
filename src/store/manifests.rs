//! Which manifests have run on this store: `runs/manifests/<blake3(path)>` holds the
//! absolute path of one. `gc FILE` keeps what the others' lockfiles pin, so a gc of
//! one project's manifest never deletes a sibling's work that it was not told about.

use std::path::{Path, PathBuf};

use super::fsutil::{is_partial_write, write_atomic};
use super::{Store, StoreError, io_err};

impl Store {
    fn manifests_dir(&self) -> PathBuf {
        self.root.join("runs").join("manifests")
    }

    fn manifest_record(&self, manifest: &Path) -> PathBuf {
        let hash = blake3::hash(manifest.as_os_str().as_encoded_bytes()).to_hex();
        self.manifests_dir().join(&hash.as_str()[..32])
    }

    /// Notes that `manifest` (an absolute path) runs on this store; written once per
    /// manifest.
    pub fn record_manifest(&self, manifest: &Path) -> Result<(), StoreError> {
        let p = self.manifest_record(manifest);
        let line = format!("{}\n", manifest.display());
        if std::fs::read_to_string(&p).is_ok_and(|s| s == line) {
            return Ok(());
        }
        let dir = self.manifests_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        write_atomic(&p, line.as_bytes()).map_err(io_err(&p))
    }

    /// Every manifest recorded as having run on this store, in path order.
    pub fn recorded_manifests(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.manifests_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !is_partial_write(&e.file_name().to_string_lossy()))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|s| s.strip_suffix('\n').map(PathBuf::from))
            .filter(|p| p.is_absolute())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Forgets `manifest` (it no longer exists): its artifacts are no one's now.
    pub fn forget_manifest(&self, manifest: &Path) {
        let _ = std::fs::remove_file(self.manifest_record(manifest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_manifest_once_and_forgets_it() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("s")).unwrap();
        assert!(store.recorded_manifests().is_empty());
        let (a, b) = (t.path().join("a.kdl"), t.path().join("b.kdl"));
        store.record_manifest(&b).unwrap();
        store.record_manifest(&a).unwrap();
        store.record_manifest(&a).unwrap();
        assert_eq!(store.recorded_manifests(), vec![a.clone(), b.clone()]);
        store.forget_manifest(&a);
        assert_eq!(store.recorded_manifests(), vec![b]);
    }
}
