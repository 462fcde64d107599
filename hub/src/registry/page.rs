//! List pages (AIP-158): the page token a list hands out, bound to the filter it was issued
//! for, so that a token used with other filter values is an error rather than a silently
//! wrong page.

use sha2::{Digest, Sha256};

use super::{Error, Kind, ListQuery};

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;

/// A page's size as asked: 0 is the default, more than the maximum is the maximum.
pub(super) fn size(query: &ListQuery) -> usize {
    match query.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// What a token is bound to: the registry and the filter.
pub(super) fn fingerprint(kind: Kind, query: &ListQuery) -> String {
    let mut hasher = Sha256::new();
    let mut add = |part: &str| {
        hasher.update(part.as_bytes());
        hasher.update([0xff]);
    };
    // Models' tokens stay as they were; a module list's token is not a model list's.
    if kind == Kind::Module {
        add(kind.collection());
    }
    add(query.model_id.as_deref().unwrap_or(""));
    add(query.framework.as_deref().unwrap_or(""));
    // Order-insensitive: the same conditions in another order are the same filter.
    let mut conditions: Vec<String> = query.tags.iter().map(|t| format!("t{t}")).collect();
    conditions.extend(query.properties.iter().map(|p| format!("p{p}")));
    conditions.sort();
    for condition in &conditions {
        add(condition);
    }
    hex::encode(&hasher.finalize()[..8])
}

pub(super) fn encode_token(fingerprint: &str, last_key: &[u8]) -> String {
    format!("v1.{fingerprint}.{}", hex::encode(last_key))
}

/// The key the previous page ended at.
pub(super) fn decode_token(token: &str, fingerprint: &str) -> Result<Vec<u8>, Error> {
    let invalid =
        || Error::invalid("invalid page_token: use the next_page_token of a previous response");
    let mut parts = token.splitn(3, '.');
    let (Some("v1"), Some(token_fingerprint), Some(key)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let key = hex::decode(key).map_err(|_| invalid())?;
    if token_fingerprint != fingerprint {
        return Err(Error::invalid(
            "page_token was issued for a different filter; repeat the same filter or start without a token",
        ));
    }
    Ok(key)
}
