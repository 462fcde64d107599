//! Model signatures in the registry: a signature made offline is kept only if it verifies
//! over the version's files as the registry holds them.

use edgeship_domain::trust::{ModelSignature, Purpose};

use super::store::{Registry, decode, encode};
use super::{Error, ModelVersion, VersionRef, VersionSignature};
use crate::now_ms;

impl Registry {
    /// Adds a signature over a version's files, if it verifies; one by the same key replaces
    /// the earlier one.
    pub fn add_signature(
        &self,
        reference: &VersionRef,
        signed: ModelSignature,
    ) -> Result<ModelVersion, Error> {
        let _guard = self.write_guard();
        let Some((key, value)) = self.resolve(reference)? else {
            return Err(self.not_found(reference));
        };
        let mut model = decode(&value)?;
        signed
            .key
            .verify(Purpose::Model, &model.statement(), &signed.signature)
            .map_err(|_| {
                Error::invalid(format!(
                    "the signature by {} does not verify over the files of {}:{}: it was made for other bytes, another version, or with another key",
                    signed.key, model.model_id, model.version
                ))
            })?;
        model.signatures.retain(|s| s.signed.key != signed.key);
        model.signatures.push(VersionSignature {
            signed,
            sign_time_ms: now_ms(),
        });
        model.update_time_ms = now_ms();
        self.versions.insert(key, encode(&model))?;
        self.shared.db.flush()?;
        Ok(model)
    }
}
