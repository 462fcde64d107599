//! The hub's keys on disk (`<data>/keys/`, readable by its owner alone) and the director:
//! the key that signs every desired state, and how long a signature holds. `pki`: the
//! certificate authority; `enrollment`: bootstrap tokens, device identities, revocation.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use edgeship_domain::trust::{PublicKey, Purpose, SigningKey};

pub mod enrollment;
pub mod pki;

/// How long a signed desired state holds by default. A device that hears nothing newer for
/// that long refuses the state it last received (it keeps serving what it applied); the hub
/// signs live states again every quarter of it.
pub const DEFAULT_STATE_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The folder of the hub's keys inside its data folder.
pub fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

/// The file that holds the director's public key, for agents configured by hand
/// (`edgeship-agent run --director-key FILE`).
pub fn director_public_key_file(data_dir: &Path) -> PathBuf {
    keys_dir(data_dir).join("director.pub")
}

/// Loads the key `name` from `dir`, or creates it: `<name>.key` (PKCS#8, mode 0600) and
/// `<name>.pub` (its public half as text, for operators and agents).
pub fn load_or_create_key(dir: &Path, name: &str) -> anyhow::Result<SigningKey> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let private = dir.join(format!("{name}.key"));
    let key = match fs::read(&private) {
        Ok(pkcs8) => {
            check_private(&private)?;
            SigningKey::from_pkcs8(&pkcs8)
                .with_context(|| format!("reading {}", private.display()))?
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate()?;
            write_private(&private, key.pkcs8())?;
            key
        }
        Err(err) => return Err(err).with_context(|| format!("reading {}", private.display())),
    };
    let public = dir.join(format!("{name}.pub"));
    let text = format!("{}\n", key.public());
    if fs::read_to_string(&public).ok().as_deref() != Some(text.as_str()) {
        fs::write(&public, text).with_context(|| format!("writing {}", public.display()))?;
    }
    Ok(key)
}

/// Refuses a secret file that others may read.
pub fn check_private(path: &Path) -> anyhow::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{} is readable by others (mode {mode:o}); make it 0600 (chmod 600)",
            path.display()
        );
    }
    Ok(())
}

/// Writes a secret: created with mode 0600 (never readable by others, not even for a moment),
/// synced, then renamed into place.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The director role: signs each device's desired state for a limited time.
#[derive(Debug)]
pub struct Director {
    key: SigningKey,
    validity: Duration,
}

/// A desired state's signature and what the device needs to check it.
#[derive(Debug)]
pub struct StateSignature {
    pub signature: Vec<u8>,
    pub key_id: String,
}

impl Director {
    /// The director of the hub whose data folder is `data_dir` (its key is created on first
    /// start and kept).
    pub fn open(data_dir: &Path, validity: Duration) -> anyhow::Result<Self> {
        let key = load_or_create_key(&keys_dir(data_dir), "director")?;
        Ok(Director { key, validity })
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// How long a signature holds.
    pub fn validity(&self) -> Duration {
        self.validity
    }

    /// When a state signed now expires, in milliseconds since the Unix epoch.
    pub fn expiry_from(&self, now_ms: i64) -> i64 {
        now_ms.saturating_add(self.validity.as_millis().min(i64::MAX as u128) as i64)
    }

    /// Signs an encoded desired state.
    pub fn sign(&self, encoded_state: &[u8]) -> StateSignature {
        StateSignature {
            signature: self.key.sign(Purpose::DesiredState, encoded_state),
            key_id: self.key.public().key_id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_private_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Director::open(dir.path(), DEFAULT_STATE_VALIDITY).expect("director");
        let keys = keys_dir(dir.path());
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&keys.join("director.key")), 0o600);
        assert_eq!(mode(&keys), 0o700);
        let again = Director::open(dir.path(), DEFAULT_STATE_VALIDITY).expect("director");
        assert_eq!(first.public_key(), again.public_key());
        let public = fs::read_to_string(director_public_key_file(dir.path())).expect("pub");
        assert_eq!(public.parse::<PublicKey>(), Ok(first.public_key()));

        // A key others can read is refused, naming the file and the fix.
        fs::set_permissions(keys.join("director.key"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = Director::open(dir.path(), DEFAULT_STATE_VALIDITY).expect_err("refused");
        assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
    }

    #[test]
    fn a_signature_verifies_with_the_public_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let director = Director::open(dir.path(), Duration::from_secs(60)).expect("director");
        let signed = director.sign(b"state");
        assert_eq!(signed.key_id, director.public_key().key_id());
        director
            .public_key()
            .verify(Purpose::DesiredState, b"state", &signed.signature)
            .expect("verifies");
        assert_eq!(director.expiry_from(1_000), 61_000);
    }
}
