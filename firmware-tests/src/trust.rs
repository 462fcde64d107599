//! Desired states signed as a hub signs them, for tests that stand in for the hub.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeship_domain::DesiredState;
use edgeship_domain::trust::{Purpose, SigningKey};
use edgeship_proto::v1 as pb;
use prost::Message;

/// One director key per test process, for tests that publish desired states themselves; the
/// agents they start are configured with its public half.
pub fn test_director() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("an Ed25519 key"))
}

/// `desired` as a hub publishes it: encoded, valid for an hour, signed with `key`.
pub fn signed_desired(key: &SigningKey, desired: &DesiredState) -> Vec<u8> {
    let mut state = pb::DesiredState::from(desired);
    state.expires_at_ms = now_ms() + Duration::from_secs(3600).as_millis() as i64;
    sign_state(key, &state)
}

/// An encoded state, signed as is (attack tests set their own expiry and device).
pub fn sign_state(key: &SigningKey, state: &pb::DesiredState) -> Vec<u8> {
    let state = state.encode_to_vec();
    pb::SignedDesiredState {
        signature: key.sign(Purpose::DesiredState, &state).into(),
        key_id: key.public().key_id(),
        state: state.into(),
    }
    .encode_to_vec()
}

/// The desired state inside a published payload, unchecked (simulated devices and tests that
/// watch what the hub publishes).
pub fn open_desired(payload: &[u8]) -> Option<pb::DesiredState> {
    let signed = pb::SignedDesiredState::decode(payload).ok()?;
    pb::DesiredState::decode(&signed.state[..]).ok()
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
