//! API access: bearer tokens with roles, stored as their sha256 in sled (tree `api_tokens`),
//! and which role each gRPC method needs ([`guard`] enforces it on every call).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgeship_domain::names::{self, NameKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub mod guard;

/// What a token may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Reader,
    Deployer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as stored and listed: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    InvalidName(#[from] names::InvalidName),
    #[error("a token named {0:?} exists already")]
    Exists(String),
    #[error("no token named {0:?}")]
    NotFound(String),
    #[error("{0:?} is the last admin token: create another admin token before deleting it")]
    LastAdmin(String),
    #[error("token store: {0}")]
    Storage(String),
}

impl From<sled::Error> for AccessError {
    fn from(err: sled::Error) -> Self {
        AccessError::Storage(err.to_string())
    }
}

/// Every token starts with this, so that a leaked one is easy to recognize (secret scanners).
const TOKEN_PREFIX: &str = "est_";

/// The API tokens of a hub.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// sha256(token) → [`TokenRecord`] as JSON.
    tree: sled::Tree,
}

impl Tokens {
    pub fn open(db: &sled::Db) -> Result<Self, AccessError> {
        Ok(Tokens {
            tree: db.open_tree("api_tokens")?,
        })
    }

    /// The role of `token`, if it is one of ours. The lookup is by the token's sha256, so
    /// timing reveals nothing about the stored tokens.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let record = self.tree.get(digest(token)).ok()??;
        serde_json::from_slice::<TokenRecord>(&record)
            .ok()
            .map(|record| record.role)
    }

    /// Creates a token; returns it (the only time it exists outside its holder's hands).
    pub fn create(&self, name: &str, role: Role) -> Result<(TokenRecord, String), AccessError> {
        names::id(NameKind::Token, name)?;
        if self.list()?.iter().any(|t| t.name == name) {
            return Err(AccessError::Exists(name.to_owned()));
        }
        let mut random = [0u8; 32];
        getrandom::getrandom(&mut random)
            .map_err(|err| AccessError::Storage(format!("no randomness: {err}")))?;
        let secret = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(random));
        let record = TokenRecord {
            name: name.to_owned(),
            role,
            created_at_ms: crate::now_ms(),
        };
        let json = serde_json::to_vec(&record).map_err(|e| AccessError::Storage(e.to_string()))?;
        self.tree.insert(digest(&secret), json)?;
        self.tree.flush()?;
        Ok((record, secret))
    }

    pub fn list(&self) -> Result<Vec<TokenRecord>, AccessError> {
        let mut tokens = Vec::new();
        for entry in self.tree.iter() {
            let (_, value) = entry?;
            let record: TokenRecord = serde_json::from_slice(&value).map_err(|err| {
                AccessError::Storage(format!("a stored token is unreadable: {err}"))
            })?;
            tokens.push(record);
        }
        tokens.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tokens)
    }

    pub fn delete(&self, name: &str) -> Result<(), AccessError> {
        let mut found = None;
        let mut admins = 0;
        for entry in self.tree.iter() {
            let (key, value) = entry?;
            let Ok(record) = serde_json::from_slice::<TokenRecord>(&value) else {
                continue;
            };
            admins += usize::from(record.role == Role::Admin);
            if record.name == name {
                found = Some((key, record));
            }
        }
        let Some((key, record)) = found else {
            return Err(AccessError::NotFound(name.to_owned()));
        };
        if record.role == Role::Admin && admins == 1 {
            return Err(AccessError::LastAdmin(name.to_owned()));
        }
        self.tree.remove(key)?;
        self.tree.flush()?;
        Ok(())
    }

    /// On a hub with no token at all, creates the admin token `admin` and writes it to
    /// `<data>/keys/admin.token` (mode 0600). Returns the file when it did.
    pub fn bootstrap(&self, data_dir: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
        if !self.tree.is_empty() {
            return Ok(None);
        }
        let (_, secret) = self.create("admin", Role::Admin)?;
        let file = crate::trust::keys_dir(data_dir).join("admin.token");
        std::fs::create_dir_all(crate::trust::keys_dir(data_dir))?;
        crate::trust::write_private(&file, format!("{secret}\n").as_bytes())?;
        Ok(Some(file))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// The role a gRPC method needs, by its path (`/package.Service/Method`); `None`: open to
/// anyone (health checks). Unknown methods need admin, so a new method is closed until it
/// is given a role here.
pub fn required_role(path: &str) -> Option<Role> {
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    match service {
        // The bootstrap token in the request is the credential.
        "grpc.health.v1.Health" | "edgeship.v1.Enrollment" => None,
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            Some(Role::Reader)
        }
        "edgeship.v1.Access" => Some(Role::Admin),
        "edgeship.v1.ModelRegistry"
        | "edgeship.v1.ModuleRegistry"
        | "edgeship.v1.Deployments"
        | "edgeship.v1.Fleet"
        | "edgeship.v1.Profiles"
        | "edgeship.v1.Jobs" => Some(match method {
            // They answer with endpoint secrets.
            "GetDeploymentKeys" | "GetDeploymentToken" => Role::Deployer,
            m if ["Get", "List", "Download", "Watch"]
                .iter()
                .any(|read| m.starts_with(read)) =>
            {
                Role::Reader
            }
            _ => Role::Deployer,
        }),
        _ => Some(Role::Admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> (tempfile::TempDir, Tokens) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path().join("db")).expect("sled");
        (dir, Tokens::open(&db).expect("tokens"))
    }

    #[test]
    fn tokens_are_stored_hashed_and_carry_their_role() {
        let (dir, tokens) = tokens();
        let file = tokens
            .bootstrap(dir.path())
            .expect("bootstrap")
            .expect("created");
        let admin = std::fs::read_to_string(&file).expect("admin token");
        assert_eq!(tokens.role_of(&admin), Some(Role::Admin));
        // Only the first start creates one.
        assert_eq!(tokens.bootstrap(dir.path()).expect("bootstrap"), None);
        let (record, reader) = tokens.create("ci", Role::Reader).expect("create");
        assert_eq!(record.role, Role::Reader);
        assert!(reader.starts_with("est_"));
        assert_eq!(tokens.role_of(&reader), Some(Role::Reader));
        assert_eq!(tokens.role_of("est_guess"), None);
        assert_eq!(tokens.role_of(""), None);
        // No stored byte is the token itself.
        for entry in tokens.tree.iter() {
            let (key, value) = entry.expect("entry");
            for bytes in [&key[..], &value[..]] {
                let text = String::from_utf8_lossy(bytes);
                assert!(!text.contains(reader.trim_start_matches("est_")), "{text}");
            }
        }
        assert!(matches!(
            tokens.create("ci", Role::Admin),
            Err(AccessError::Exists(_))
        ));
        assert!(matches!(
            tokens.create("a/b", Role::Admin),
            Err(AccessError::InvalidName(_))
        ));
        assert!(matches!(
            tokens.delete("admin"),
            Err(AccessError::LastAdmin(_))
        ));
        tokens.delete("ci").expect("delete");
        assert_eq!(tokens.role_of(&reader), None);
        assert!(matches!(tokens.delete("ci"), Err(AccessError::NotFound(_))));
        let names: Vec<_> = tokens
            .list()
            .expect("list")
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["admin"]);
    }

    #[test]
    fn every_method_needs_the_role_its_effect_calls_for() {
        let cases = [
            ("/grpc.health.v1.Health/Check", None),
            ("/edgeship.v1.Enrollment/Enroll", None),
            ("/edgeship.v1.Access/RevokeDevice", Some(Role::Admin)),
            ("/edgeship.v1.ModelRegistry/ListModels", Some(Role::Reader)),
            (
                "/edgeship.v1.ModelRegistry/DownloadModel",
                Some(Role::Reader),
            ),
            (
                "/edgeship.v1.Deployments/WatchDeployment",
                Some(Role::Reader),
            ),
            (
                "/edgeship.v1.ModelRegistry/RegisterModel",
                Some(Role::Deployer),
            ),
            (
                "/edgeship.v1.Deployments/CreateDeployment",
                Some(Role::Deployer),
            ),
            (
                "/edgeship.v1.Deployments/GetDeploymentKeys",
                Some(Role::Deployer),
            ),
            (
                "/edgeship.v1.Deployments/GetDeploymentToken",
                Some(Role::Deployer),
            ),
            ("/edgeship.v1.Fleet/SetDeviceLabels", Some(Role::Deployer)),
            ("/edgeship.v1.Jobs/CancelJob", Some(Role::Deployer)),
            ("/edgeship.v1.Access/ListTokens", Some(Role::Admin)),
            ("/edgeship.v1.Unknown/GetThing", Some(Role::Admin)),
            ("garbage", Some(Role::Admin)),
        ];
        for (path, role) in cases {
            assert_eq!(required_role(path), role, "{path}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// No text but a token the hub made has a role; routes of any shape get one or none.
        #[test]
        fn any_text_is_no_token_and_any_path_gets_a_role(text in "\\PC{0,120}", path in "\\PC{0,80}") {
            let (_dir, tokens) = tokens();
            tokens.create("ci", Role::Reader).expect("create");
            proptest::prop_assert_eq!(tokens.role_of(&text), None);
            let _ = required_role(&path);
        }
    }
}
