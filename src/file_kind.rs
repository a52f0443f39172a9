//! What a file system entry is, in words, and the refusal of the entries a read would
//! block on or never finish (a FIFO waits for a writer, /dev/zero never ends) where a
//! file is to be read: a path given on the command line, in an environment variable,
//! or inside a model folder. Below every layer: it uses nothing of ours.

use std::fs;
use std::io;
use std::path::Path;

/// What kind of file system entry `md` describes, in words (for refusals of FIFOs and
/// devices, which a read would block on or never finish).
pub fn file_kind(md: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "folder"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// `path` (symlinks followed) is a regular file; else an error that says what it is
/// (`InvalidInput`), or the `NotFound` of a missing one.
pub fn regular_file(path: &Path) -> io::Result<()> {
    let md = fs::metadata(path)?;
    if md.is_file() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("it is a {}, not a regular file", file_kind(&md)),
    ))
}

/// The bytes of `path` once [`regular_file`] has passed it: a file named by a user (a
/// key list, a font) that a plain read would block on or never finish is refused.
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    regular_file(path)?;
    fs::read(path)
}

/// What is at `path` when something is there but no regular file a reader can open (a
/// folder, a FIFO, a link that leads nowhere or in a loop), in words; None when it is a
/// file, or when nothing is there.
pub fn not_a_file(path: &Path) -> Option<String> {
    let link = fs::symlink_metadata(path).ok()?;
    match fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(m) => Some(format!("is a {}, not a file", file_kind(&m))),
        Err(e) if link.file_type().is_symlink() => Some(format!("is a link that cannot be followed ({e})")),
        Err(e) => Some(format!("cannot be read ({e})")),
    }
}

/// Where a folder is to be made at `dir` (an export, plots): the nearest of `dir` and
/// the folders above it that exists and is no folder (a file, a FIFO), with what it
/// is, so the refusal names it rather than the folder below it that could not be made.
pub fn not_a_folder_on_the_way(dir: &Path) -> Option<(&Path, &'static str)> {
    dir.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find_map(|a| fs::metadata(a).ok().map(|m| (a, m)))
        .filter(|(_, m)| !m.is_dir())
        .map(|(a, m)| (a, file_kind(&m)))
}

/// Before a file is written where one may already be (an export into a folder again,
/// `--force`): a symbolic link there is removed, so the write makes a file of its own
/// instead of writing through the link into whatever it points at (another export, a
/// store's artifact, the very file being copied, which a copy onto itself empties).
/// Anything else, or nothing, is left for the write to replace.
pub fn unlink_symlink(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_symlink() => fs::remove_file(path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_in_the_way_of_a_folder_is_the_one_named() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("afile");
        fs::write(&file, "").unwrap();
        assert_eq!(
            not_a_folder_on_the_way(&file.join("sub/deeper")),
            Some((file.as_path(), "regular file"))
        );
        assert_eq!(
            not_a_folder_on_the_way(&file),
            Some((file.as_path(), "regular file"))
        );
        assert_eq!(not_a_folder_on_the_way(&d.path().join("new/sub")), None);
        assert_eq!(
            not_a_folder_on_the_way(Path::new("relative-that-is-not-here")),
            None
        );
    }

    #[test]
    fn special_files_are_named_and_refused() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("f");
        fs::write(&file, b"x").unwrap();
        regular_file(&file).unwrap();
        let fifo = t.path().join("p");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        for (path, said) in [
            (fifo.as_path(), "it is a FIFO, not a regular file"),
            (
                Path::new("/dev/zero"),
                "it is a character device, not a regular file",
            ),
            (t.path(), "it is a folder, not a regular file"),
        ] {
            let e = regular_file(path).unwrap_err();
            assert_eq!(
                (e.kind(), e.to_string()),
                (io::ErrorKind::InvalidInput, said.to_string())
            );
        }
        assert_eq!(
            regular_file(&t.path().join("gone")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_link_is_removed_and_its_target_kept() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        fs::write(&target, b"kept").unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        unlink_symlink(&link).unwrap();
        assert!(fs::symlink_metadata(&link).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"kept");
        // A plain file, and nothing at all, are left as they are.
        unlink_symlink(&target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"kept");
        unlink_symlink(&t.path().join("none")).unwrap();
    }
}
