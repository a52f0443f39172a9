//! Hugging Face hub datasets: the parquet (or `save_to_disk` Arrow) files of one
//! (config, split) at a revision,
//! from the standard HF cache (`datasets--org--name/{refs,snapshots,blobs}`), else
//! downloaded into it. Works offline when the files are cached; the resolved commit is
//! returned so the lockfile can pin it.
//!
//! Which files belong to a split, for the layouts the hub uses:
//! - the hub's parquet conversion (`revision="refs/convert/parquet"`):
//!   `CONFIG/SPLIT/0000.parquet` and the older `CONFIG/NAME-SPLIT.parquet`;
//! - `push_to_hub` layouts: `data/SPLIT-00000-of-00001.parquet`,
//!   `CONFIG/SPLIT-00000-of-00001.parquet`, `data/CONFIG/SPLIT-...`.

use std::path::{Path, PathBuf};

use hf_hub::HFError;

use super::cache_layout::{RepoKind, absent_why, cache_dir, cached_commit, repo_folder, snapshot_files};
use super::error::HubError;
use super::options::{HubOptions, client};
use super::watch::{DownloadReport, watched};

/// The files of a split and the commit they were read at.
#[derive(Debug, Clone)]
pub struct SplitFiles {
    pub commit: String,
    pub files: Vec<PathBuf>,
}

fn err(repo: &str, revision: &str, what: impl std::fmt::Display) -> HubError {
    HubError::Dataset {
        repo: repo.to_owned(),
        revision: revision.to_owned(),
        message: what.to_string(),
    }
}

/// Whether the repo-relative `path` is a parquet file of `split` in `config`.
pub fn matches(path: &str, config: Option<&str>, split: &str) -> bool {
    split_config(path, split).is_some_and(|dirs| match config {
        // A config is one folder, or a folder path (FLANV2/NIV2/Paraphrasing).
        Some(c) => dirs.contains(&c) || dirs.join("/") == c,
        None => dirs.iter().all(|d| *d == "data" || *d == "default"),
    })
}

/// The files of (config, split) among repo-relative `paths`, sorted. Without a config,
/// a repo whose split lives in exactly one config folder (e.g. `plain_text/`) is read
/// from that folder.
pub fn select(paths: &[String], config: Option<&str>, split: &str) -> Vec<String> {
    let mut out: Vec<String> = paths
        .iter()
        .filter(|p| matches(p, config, split))
        .cloned()
        .collect();
    if out.is_empty() && config.is_none() {
        let of_split: Vec<(&String, Vec<&str>)> = paths
            .iter()
            .filter_map(|p| split_config(p, split).map(|d| (p, d)))
            .collect();
        let configs: std::collections::BTreeSet<&Vec<&str>> = of_split.iter().map(|(_, d)| d).collect();
        if configs.len() == 1 {
            out = of_split.into_iter().map(|(p, _)| p.clone()).collect();
        }
    }
    out.sort();
    out
}

/// For a parquet file of `split`, the folders that name its config (the path's
/// folders, less a trailing `SPLIT/` folder); None for files of other splits.
fn split_config<'a>(path: &'a str, split: &str) -> Option<Vec<&'a str>> {
    let stem = path
        .strip_suffix(".parquet")
        .or_else(|| path.strip_suffix(".arrow"))?;
    let comps: Vec<&str> = stem.split('/').collect();
    let (dirs, file) = comps.split_at(comps.len() - 1);
    let file = file[0];
    let split_ok = dirs.last() == Some(&split)
        || file == split
        || file.starts_with(&format!("{split}-"))
        || file.ends_with(&format!("-{split}"))
        || file.contains(&format!("-{split}-"));
    // In CONFIG/SPLIT/0000.parquet the split is a folder; any other folder is a config.
    split_ok.then(|| {
        if dirs.last() == Some(&split) {
            dirs[..dirs.len() - 1].to_vec()
        } else {
            dirs.to_vec()
        }
    })
}

/// Lists the split's files in the cached snapshot of `revision`, if there is one.
/// Shards a split's files name but the cache does not hold: for each family of
/// `NAME-00000-of-00002.parquet` files, the indexes below the count that are absent,
/// and files that are links to a blob not there (an interrupted copy of a cache).
/// A split read without them would be part of its data, pinned as the whole.
fn missing_shards(snap: &Path, files: &[String]) -> Vec<String> {
    let mut families: std::collections::BTreeMap<
        (String, String, String, usize),
        std::collections::BTreeSet<usize>,
    > = Default::default();
    let mut out = vec![];
    for rel in files {
        if !snap.join(rel).exists() {
            out.push(format!("{rel} (a link to a file that is not in the cache)"));
        }
        let Some((stem, ext)) = rel.rsplit_once('.') else {
            continue;
        };
        let Some((head, total)) = stem.rsplit_once("-of-") else {
            continue;
        };
        let Some((name, index)) = head.rsplit_once('-') else {
            continue;
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if let (true, true, Ok(i), Ok(n)) = (digits(index), digits(total), index.parse(), total.parse()) {
            families
                .entry((name.to_string(), ext.to_string(), total.to_string(), n))
                .or_default()
                .insert(i);
        }
    }
    for ((name, ext, total, n), have) in families {
        let width = total.len();
        // At most a few named: a family of thousands would say too much.
        let absent: Vec<usize> = (0..n).filter(|i| !have.contains(i)).collect();
        for i in absent.iter().take(3) {
            out.push(format!("{name}-{i:0width$}-of-{total}.{ext}"));
        }
        if absent.len() > 3 {
            out.push(format!(
                "and {} more of {name}-*-of-{total}.{ext}",
                absent.len() - 3
            ));
        }
    }
    out
}

/// The split's files in the cache, or (Err) what is missing from it: the shards its
/// files' names call for (see [`missing_shards`]); empty where nothing is there.
fn cached_or_gaps(
    cache: &Path,
    repo: &str,
    revision: &str,
    config: Option<&str>,
    split: &str,
) -> Result<SplitFiles, Vec<String>> {
    let folder = repo_folder(cache, RepoKind::Dataset, repo);
    let commit = cached_commit(&folder, revision).ok_or_else(Vec::new)?;
    let snap = folder.join("snapshots").join(&commit);
    let all = snapshot_files(&snap).ok_or_else(Vec::new)?;
    let selected = select(&all, config, split);
    let gaps = missing_shards(&snap, &selected);
    if selected.is_empty() || !gaps.is_empty() {
        return Err(gaps);
    }
    let files: Vec<PathBuf> = selected.iter().map(|r| snap.join(r)).collect();
    Ok(SplitFiles { commit, files })
}

/// Marks a split whose download is under way: written before its first file
/// is fetched, removed after the last. A split cached with its marker still
/// there is what an interrupted download left (some files missing), not the
/// split, so it is fetched again.
fn pending_marker(cache: &Path, repo: &str, revision: &str, config: Option<&str>, split: &str) -> PathBuf {
    let id = format!("{revision}\n{}\n{split}", config.unwrap_or(""));
    repo_folder(cache, RepoKind::Dataset, repo)
        .join(".goosepipe-pending")
        .join(&blake3::hash(id.as_bytes()).to_hex()[..16])
}

/// The parquet files of `repo` (config, split) at `revision`: from the cache, else
/// (unless offline) listed on the hub and downloaded into the cache.
pub fn split_files(
    repo: &str,
    revision: &str,
    config: Option<&str>,
    split: &str,
    opts: &HubOptions,
) -> Result<SplitFiles, HubError> {
    split_files_reporting(repo, revision, config, split, opts, None)
}

/// [`split_files`], telling `report` how each download is going.
pub fn split_files_reporting(
    repo: &str,
    revision: &str,
    config: Option<&str>,
    split: &str,
    opts: &HubOptions,
    report: Option<&DownloadReport<'_>>,
) -> Result<SplitFiles, HubError> {
    let cache = cache_dir(opts);
    let pending = pending_marker(&cache, repo, revision, config, split);
    let interrupted = pending.exists();
    let gaps = match cached_or_gaps(&cache, repo, revision, config, split) {
        Ok(found) if !interrupted => return Ok(found),
        Ok(_) => vec![],
        Err(gaps) => gaps,
    };
    let what = format!(
        "split `{split}`{} has {} in the cache at {}",
        config.map(|c| format!(" of config `{c}`")).unwrap_or_default(),
        if interrupted {
            "only part of its data files (an earlier download was interrupted)".to_string()
        } else if !gaps.is_empty() {
            format!("only part of its data files (missing: {})", gaps.join(", "))
        } else {
            "no data files".to_string()
        },
        repo_folder(&cache, RepoKind::Dataset, repo).display()
    );
    if opts.offline {
        return Err(err(
            repo,
            revision,
            format!(
                "{what} (offline: {})",
                if interrupted || !gaps.is_empty() {
                    "run once with network access, or copy the HF cache here".to_string()
                } else {
                    absent_why(
                        &cache,
                        RepoKind::Dataset,
                        repo,
                        revision,
                        "none of this split",
                        "check the split, config and revision names",
                    )
                }
            ),
        ));
    }
    let Some((org, name)) = repo.split_once('/').map(|(o, n)| (o.to_string(), n.to_string())) else {
        return Err(err(
            repo,
            revision,
            format!(
                "{what}, and `{repo}` names no organisation: the hub moved its canonical datasets under organisations (e.g. fancyzhx/ag_news); use the org/name id"
            ),
        ));
    };
    let client = client(opts).map_err(|e| err(repo, revision, e))?;
    let ds = client.dataset(org, name);
    // Listing and downloads are watched for silence, so an unreachable or
    // stalled hub gives an error, not a hang.
    let (rev, cfg, spl) = (revision.to_string(), config.map(String::from), split.to_string());
    let (listed, mut ds) = watched(opts.timeout, None, move |_| {
        let r = ds
            .list_tree()
            .revision(rev.clone())
            .recursive(true)
            .send()
            .map(|entries| {
                entries
                    .into_iter()
                    .filter_map(|e| match e {
                        hf_hub::repository::RepoTreeEntry::File { path, .. } => Some(path),
                        _ => None,
                    })
                    .filter(|p| matches(p, cfg.as_deref(), &spl))
                    .collect::<Vec<_>>()
            });
        (r, ds)
    })
    .map_err(|silence| err(repo, revision, format!("{what}, and {}", silence.explain())))?;
    let names = listed.map_err(|e| match e {
        HFError::RepoNotFound { .. } => err(repo, revision, "no such dataset repo on the hub"),
        e => err(
            repo,
            revision,
            format!(
                "{what}, and listing the repo failed: {}",
                super::error::with_causes(&e)
            ),
        ),
    })?;
    if names.is_empty() {
        return Err(err(
            repo,
            revision,
            format!(
                "no parquet or arrow files for split `{split}`{} (for datasets without their own parquet, use revision=\"refs/convert/parquet\")",
                config.map(|c| format!(" of config `{c}`")).unwrap_or_default()
            ),
        ));
    }
    let mark = |r: std::io::Result<()>| {
        r.map_err(|e| err(repo, revision, format!("cannot write {}: {e}", pending.display())))
    };
    mark(std::fs::create_dir_all(pending.parent().unwrap_or(&cache)))?;
    mark(std::fs::write(&pending, names.join("\n")))?;
    for n in &names {
        let (file, rev) = (n.clone(), revision.to_string());
        let (got, back) = watched(opts.timeout, report.map(|r| (n.as_str(), r)), move |progress| {
            let r = ds
                .download_file()
                .filename(file)
                .revision(rev)
                .progress(progress)
                .send();
            (r, ds)
        })
        .map_err(|silence| {
            err(
                repo,
                revision,
                format!("downloading `{n}`: {}", silence.explain()),
            )
        })?;
        got.map_err(|e| {
            err(
                repo,
                revision,
                format!("downloading `{n}` failed: {}", super::error::with_causes(&e)),
            )
        })?;
        ds = back;
    }
    let found = cached_or_gaps(&cache, repo, revision, config, split).map_err(|gaps| {
        err(
            repo,
            revision,
            if gaps.is_empty() {
                "downloaded files did not appear in the cache".to_string()
            } else {
                // The repo itself lacks shards its file names count (or a download
                // left a link without its file).
                format!("after the download the split still lacks: {}", gaps.join(", "))
            },
        )
    })?;
    match std::fs::remove_file(&pending) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => mark(Err(e))?,
        _ => {}
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_layouts() {
        assert!(matches("rte/validation/0000.parquet", Some("rte"), "validation"));
        assert!(matches(
            "rte/super_glue-validation.parquet",
            Some("rte"),
            "validation"
        ));
        assert!(matches("data/train-00000-of-00002.parquet", None, "train"));
        assert!(matches(
            "boolean_expressions/train-00000-of-00001.parquet",
            Some("boolean_expressions"),
            "train"
        ));
        assert!(!matches("rte/train/0000.parquet", Some("rte"), "validation"));
        assert!(!matches("cb/validation/0000.parquet", Some("rte"), "validation"));
        assert!(!matches("rte/validation/0000.parquet", None, "validation"));
        assert!(!matches("data/train.jsonl", None, "train"));
        assert!(matches(
            "FLANV2/NIV2/Paraphrasing/train/data-00000-of-00001.arrow",
            Some("FLANV2/NIV2/Paraphrasing"),
            "train"
        ));
        assert!(!matches(
            "FLANV2/NIV2/Paraphrasing/train/state.json",
            Some("FLANV2/NIV2/Paraphrasing"),
            "train"
        ));
        let paths: Vec<String> = [
            "plain_text/test/0000.parquet",
            "plain_text/train/0000.parquet",
            "plain_text/train/0001.parquet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(select(&paths, None, "train"), &paths[1..]);
        let two: Vec<String> = ["a/train/0.parquet", "b/train/0.parquet"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(
            select(&two, None, "train").is_empty(),
            "ambiguous without a config"
        );
    }

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    /// The HF cache's layout of dataset `repo` (org--name) in `cache`, its ref
    /// `reference` at [`COMMIT`]: the repo's folder and the snapshot's `folder`, made
    /// empty, and offline options that read this cache.
    fn cached_repo(
        cache: &Path,
        repo: &str,
        reference: &str,
        folder: &str,
    ) -> (PathBuf, PathBuf, HubOptions) {
        let dir = cache.join(format!("datasets--{repo}"));
        let ref_file = dir.join("refs").join(reference);
        std::fs::create_dir_all(ref_file.parent().unwrap()).unwrap();
        std::fs::write(ref_file, COMMIT).unwrap();
        let snap = dir.join("snapshots").join(COMMIT).join(folder);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        let opts = HubOptions {
            cache_dir: Some(cache.to_path_buf()),
            offline: true,
            ..Default::default()
        };
        (dir, snap, opts)
    }

    /// A folder laid out as the HF cache (refs, snapshots, blobs) is read offline.
    #[test]
    fn reads_an_offline_cache() {
        let t = tempfile::tempdir().unwrap();
        let (repo, snap, opts) = cached_repo(t.path(), "org--ds", "refs/convert/parquet", "cfg/train");
        let commit = COMMIT;
        std::fs::write(repo.join("blobs/abc"), b"PAR1").unwrap();
        std::os::unix::fs::symlink("../../../../blobs/abc", snap.join("0000.parquet")).unwrap();
        let f = split_files("org/ds", "refs/convert/parquet", Some("cfg"), "train", &opts).unwrap();
        assert_eq!(f.commit, commit);
        assert_eq!(f.files.len(), 1);
        assert_eq!(std::fs::read(&f.files[0]).unwrap(), b"PAR1");
        let e = split_files("org/ds", "main", Some("cfg"), "train", &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("offline") && e.contains("datasets--org--ds"), "{e}");
        // Offline errors say which of the cache's layers is missing, and a split the
        // snapshot does not hold is not sent to the network.
        assert!(e.contains("the cache has no ref `main` (it has: refs)"), "{e}");
        let e = split_files("org/ds", "refs/convert/parquet", Some("cfg"), "test", &opts)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds 1 file(s), none of this split (cfg/train/0000.parquet): check the split"),
            "{e}"
        );
        let e = split_files("org/none", "main", None, "train", &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the repo is not in the cache"), "{e}");
        let e = split_files(
            "org/ds",
            "fedcba9876543210fedcba9876543210fedcba98",
            Some("cfg"),
            "train",
            &opts,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("the snapshot of commit fedcba98"), "{e}");
    }

    /// A split whose shards the cache holds only some of (an interrupted copy) is not
    /// read as the split: offline, the error names what is missing.
    #[test]
    fn a_split_with_a_shard_missing_from_the_cache_is_not_read() {
        let t = tempfile::tempdir().unwrap();
        let (repo, snap, opts) = cached_repo(t.path(), "org--ds3", "main", "data");
        std::fs::write(repo.join("blobs/a"), b"PAR1").unwrap();
        std::os::unix::fs::symlink("../../../blobs/a", snap.join("train-00000-of-00002.parquet")).unwrap();
        let e = split_files("org/ds3", "main", None, "train", &opts)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("only part of its data files (missing: data/train-00001-of-00002.parquet)"),
            "{e}"
        );
        // Its link there, but to a blob the copy left out: missing too.
        std::os::unix::fs::symlink("../../../blobs/b", snap.join("train-00001-of-00002.parquet")).unwrap();
        let e = split_files("org/ds3", "main", None, "train", &opts)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data/train-00001-of-00002.parquet (a link to a file that is not in the cache)"),
            "{e}"
        );
        std::fs::write(repo.join("blobs/b"), b"PAR1").unwrap();
        assert_eq!(
            split_files("org/ds3", "main", None, "train", &opts)
                .unwrap()
                .files
                .len(),
            2
        );
    }
}
