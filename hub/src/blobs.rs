//! Content-addressed blob store on disk: each distinct file is kept once, named by the hex
//! sha256 of its bytes, under `<root>/sha256/<first two hex digits>/<digest>`.
//!
//! Design: the store itself keeps no reference counts; the registry does, in the same sled
//! transaction that adds or removes model versions. Files arrive in `<root>/staging/` (same
//! file system, so moving them in is an atomic rename) and are fsynced before the rename, so a
//! blob that exists under its digest always holds exactly those bytes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join("sha256"))?;
        fs::create_dir_all(root.join("staging"))?;
        Ok(Self { root })
    }

    /// Where a blob with this digest lives (whether or not it exists).
    pub fn path(&self, digest: &str) -> PathBuf {
        let shard = digest.get(..2).unwrap_or("__");
        self.root.join("sha256").join(shard).join(digest)
    }

    /// Folder for uploads in progress; on the same file system as the blobs.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_file()
    }

    /// Moves a staged, fsynced file into the store under `digest`. When the blob already
    /// exists the staged copy is simply left for the caller's staging clean-up.
    pub fn adopt(&self, staged: &Path, digest: &str) -> io::Result<()> {
        let target = self.path(digest);
        if target.is_file() {
            return Ok(());
        }
        let shard = target.parent().unwrap_or(&self.root);
        if !shard.is_dir() {
            fs::create_dir_all(shard)?;
            // A new shard folder is itself an entry of `sha256/` that must reach the disk.
            fs::File::open(self.root.join("sha256"))?.sync_all()?;
        }
        fs::rename(staged, &target)?;
        // The rename is durable only once the directory entry is.
        fs::File::open(shard)?.sync_all()
    }

    pub fn remove(&self, digest: &str) -> io::Result<()> {
        match fs::remove_file(self.path(digest)) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Every digest present on disk, for crash recovery (orphans are removed at startup).
    pub fn digests(&self) -> io::Result<Vec<String>> {
        let mut digests = Vec::new();
        for shard in fs::read_dir(self.root.join("sha256"))? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for blob in fs::read_dir(shard.path())? {
                if let Some(name) = blob?.file_name().to_str() {
                    digests.push(name.to_owned());
                }
            }
        }
        Ok(digests)
    }

    /// Removes whatever uploads a previous process left half-done.
    pub fn clear_staging(&self) -> io::Result<()> {
        let staging = self.staging_dir();
        fs::remove_dir_all(&staging)?;
        fs::create_dir_all(staging)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopting_the_same_digest_twice_keeps_one_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let digest = "ab".repeat(32);
        for _ in 0..2 {
            let staged = store.staging_dir().join("x");
            fs::write(&staged, b"bytes").expect("write");
            store.adopt(&staged, &digest).expect("adopt");
        }
        assert!(store.contains(&digest));
        assert_eq!(store.digests().expect("list"), vec![digest.clone()]);
        store.remove(&digest).expect("remove");
        store
            .remove(&digest)
            .expect("removing a missing blob is fine");
        assert!(!store.contains(&digest));
    }
}
