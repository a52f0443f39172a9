//! Per-key locks that work across processes and hosts.
//!
//! Open-file-description locks (`F_OFD_SETLKW`): held per open file, so two threads of
//! one run exclude each other as two processes do, and on NFS they map to POSIX byte
//! range locks (NLM), so they also work between cluster nodes sharing a store. The lock
//! is released when the [`KeyLock`] is dropped or the process dies (no stale lock files
//! to clean by hand after a crash).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct KeyLock {
    _file: File,
    pub path: PathBuf,
}

fn flock(file: &File, cmd: libc::c_int, typ: libc::c_short) -> io::Result<bool> {
    // SAFETY: `flock` is a plain C struct; zeroed is a valid value (whole-file range).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    loop {
        // SAFETY: valid fd and a pointer to an initialised flock struct.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) if cmd == libc::F_OFD_SETLK => {
                return Ok(false);
            }
            _ => return Err(err),
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl KeyLock {
    /// Takes the lock on `path`: shared (any number of holders) or exclusive (one,
    /// and no shared ones); waiting while it is taken, or answering None then.
    fn take(path: &Path, shared: bool, wait: bool) -> io::Result<Option<KeyLock>> {
        let file = open(path)?;
        let typ = if shared { libc::F_RDLCK } else { libc::F_WRLCK };
        let cmd = if wait {
            libc::F_OFD_SETLKW
        } else {
            libc::F_OFD_SETLK
        };
        Ok(flock(&file, cmd, typ as libc::c_short)?.then(|| KeyLock {
            _file: file,
            path: path.to_path_buf(),
        }))
    }

    /// Takes the exclusive lock, waiting as long as another holder keeps it.
    pub fn acquire(path: &Path) -> io::Result<KeyLock> {
        Self::take(path, false, true)?.ok_or_else(|| io::Error::other("a waiting lock was not taken"))
    }

    /// Takes a shared lock, waiting while an exclusive holder keeps it: any number of
    /// shared holders at once, none while the exclusive one holds it.
    pub fn acquire_shared(path: &Path) -> io::Result<KeyLock> {
        Self::take(path, true, true)?.ok_or_else(|| io::Error::other("a waiting lock was not taken"))
    }

    /// Takes a shared lock if no exclusive holder keeps it right now.
    pub fn try_acquire_shared(path: &Path) -> io::Result<Option<KeyLock>> {
        Self::take(path, true, false)
    }

    /// Takes the lock if it is free right now.
    pub fn try_acquire(path: &Path) -> io::Result<Option<KeyLock>> {
        Self::take(path, false, false)
    }

    /// Whether someone (another process, or another open file of this one) holds a
    /// lock on `path` now; asks without taking it, so a holder-to-be never waits on
    /// the question. No file: nobody.
    pub fn is_held(path: &Path) -> io::Result<bool> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        // SAFETY: `flock` is a plain C struct; zeroed is a valid value (whole-file range).
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        loop {
            // SAFETY: valid fd and a pointer to an initialised flock struct.
            let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
            if rc == 0 {
                return Ok(fl.l_type != libc::F_UNLCK as libc::c_short);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_excluded_until_release() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("k.lock");
        assert!(!KeyLock::is_held(&p).unwrap(), "no file, no holder");
        let a = KeyLock::acquire(&p).unwrap();
        assert!(KeyLock::is_held(&p).unwrap());
        assert!(KeyLock::try_acquire(&p).unwrap().is_none());
        drop(a);
        assert!(!KeyLock::is_held(&p).unwrap());
        assert!(KeyLock::try_acquire(&p).unwrap().is_some());
    }

    #[test]
    fn shared_holders_exclude_only_the_exclusive_one() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("k.lock");
        let a = KeyLock::acquire_shared(&p).unwrap();
        let b = KeyLock::acquire_shared(&p).unwrap();
        assert!(KeyLock::try_acquire(&p).unwrap().is_none());
        drop(a);
        assert!(KeyLock::try_acquire(&p).unwrap().is_none());
        drop(b);
        assert!(KeyLock::try_acquire(&p).unwrap().is_some());
    }
}
