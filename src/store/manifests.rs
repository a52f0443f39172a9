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
        self.manifests_dir().join(record_name(manifest))
    }

    /// Whether `path` is where `manifest`'s record is (damaged or not): a damaged record
    /// of a manifest gc was given costs nothing, as gc keeps what that one reaches.
    pub fn is_record_of(&self, path: &Path, manifest: &Path) -> bool {
        path == self.manifest_record(manifest)
    }

    /// Notes that `manifest` (an absolute path) runs on this store; written once per
    /// manifest.
    pub fn record_manifest(&self, manifest: &Path) -> Result<(), StoreError> {
        let p = self.manifest_record(manifest);
        // The path's own bytes: one that is not UTF-8 must read back as itself.
        let mut line = manifest.as_os_str().as_encoded_bytes().to_vec();
        line.push(b'\n');
        if std::fs::read(&p).is_ok_and(|s| s == line) {
            return Ok(());
        }
        let dir = self.manifests_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        write_atomic(&p, &line).map_err(io_err(&p))
    }

    /// Every manifest recorded as having run on this store, in path order, and the
    /// records that do not name one (emptied, cut short, overwritten, unreadable):
    /// whose work such a record kept cannot be told, so gc must not take its manifest
    /// for gone.
    pub fn recorded_manifests(&self) -> (Vec<PathBuf>, Vec<DamagedRecord>) {
        let (mut found, mut damaged) = (vec![], vec![]);
        let entries = match std::fs::read_dir(self.manifests_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (found, damaged),
            // Unlistable (permissions): every record in it is unknown, not absent.
            Err(e) => {
                damaged.push(DamagedRecord {
                    path: self.manifests_dir(),
                    why: e.to_string(),
                });
                return (found, damaged);
            }
        };
        for entry in entries {
            let path = match entry {
                Ok(e) if is_partial_write(&e.file_name().to_string_lossy()) => continue,
                Ok(e) => e.path(),
                Err(e) => {
                    damaged.push(DamagedRecord {
                        path: self.manifests_dir(),
                        why: e.to_string(),
                    });
                    continue;
                }
            };
            match read_record(&path) {
                Ok(m) => found.push(m),
                Err(why) => damaged.push(DamagedRecord { path, why }),
            }
        }
        found.sort();
        found.dedup();
        damaged.sort_by(|a, b| a.path.cmp(&b.path));
        (found, damaged)
    }

    /// Forgets `manifest` (it no longer exists): its artifacts are no one's now.
    pub fn forget_manifest(&self, manifest: &Path) {
        let _ = std::fs::remove_file(self.manifest_record(manifest));
    }
}

/// A record under `runs/manifests/` that names no manifest, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRecord {
    pub path: PathBuf,
    pub why: String,
}

/// A record's file name: the first 32 hex digits of the blake3 of the manifest's path.
fn record_name(manifest: &Path) -> String {
    let hash = blake3::hash(manifest.as_os_str().as_encoded_bytes()).to_hex();
    hash.as_str()[..32].to_string()
}

/// The manifest a record names: one absolute path and a newline, under the name
/// [`record_name`] gives it.
fn read_record(path: &Path) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let raw = bytes
        .strip_suffix(b"\n")
        .filter(|l| !l.is_empty() && !l.contains(&b'\n') && !l.contains(&0))
        .ok_or("not one path and a newline")?;
    let manifest = PathBuf::from(std::ffi::OsStr::from_bytes(raw));
    let line = manifest.display();
    if !manifest.is_absolute() {
        return Err(format!("\"{line}\" is not an absolute path"));
    }
    let expected = record_name(&manifest);
    if path.file_name() != Some(std::ffi::OsStr::new(&expected)) {
        return Err(format!(
            "it names {line}, whose record has another name ({expected})"
        ));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_manifest_once_and_forgets_it() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("s")).unwrap();
        assert_eq!(store.recorded_manifests(), (vec![], vec![]));
        let (a, b) = (t.path().join("a.kdl"), t.path().join("b.kdl"));
        store.record_manifest(&b).unwrap();
        store.record_manifest(&a).unwrap();
        store.record_manifest(&a).unwrap();
        assert_eq!(store.recorded_manifests(), (vec![a.clone(), b.clone()], vec![]));
        store.forget_manifest(&a);
        assert_eq!(store.recorded_manifests(), (vec![b], vec![]));
    }

    /// A record emptied, cut short, overwritten or copied under another name names no
    /// manifest: said, never read as "no manifest".
    #[test]
    fn a_damaged_record_is_said_with_its_cause() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("s")).unwrap();
        let (a, b) = (t.path().join("a.kdl"), t.path().join("b.kdl"));
        store.record_manifest(&a).unwrap();
        store.record_manifest(&b).unwrap();
        let record = store.manifest_record(&b);
        for (bytes, why) in [
            (&b""[..], "not one path and a newline"),
            (&b"\0\0\0"[..], "not one path and a newline"),
            (&b"relative.kdl\n"[..], "\"relative.kdl\" is not an absolute path"),
            (
                format!("{}\n", a.display()).as_bytes(),
                "whose record has another name",
            ),
            (&b"\xff\xfe\n"[..], "is not an absolute path"),
        ] {
            std::fs::write(&record, bytes).unwrap();
            let (found, damaged) = store.recorded_manifests();
            assert_eq!(found, vec![a.clone()]);
            assert_eq!(damaged.len(), 1);
            assert_eq!(damaged[0].path, record);
            assert!(damaged[0].why.contains(why), "{:?}: {}", bytes, damaged[0].why);
        }
        // A path that is not UTF-8 is recorded as its bytes and read back as itself
        // (written lossily, it read back under another name: damaged).
        use std::os::unix::ffi::OsStrExt;
        let odd = t.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.kdl"));
        std::fs::remove_file(&record).unwrap();
        store.record_manifest(&odd).unwrap();
        assert_eq!(
            store.recorded_manifests(),
            (
                vec![a.clone(), odd]
                    .into_iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                vec![]
            )
        );
    }
}
