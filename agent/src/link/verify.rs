//! The gate every desired state passes before the agent reads it: the director's signature
//! over the exact bytes received, the device it is addressed to, its expiry, and a generation
//! no older than the newest one taken (Uptane's director checks: forgery, mix-and-match
//! across devices, freeze and rollback).

use edgeship_domain::trust::{PublicKey, Purpose};
use edgeship_proto::v1 as pb;
use prost::Message;

use crate::config::Trust;

/// Why a desired state was refused; each message names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("unsigned (this agent takes only states signed with director key {0})")]
    Unsigned(String),
    #[error("signed with key {signed_by}, not the director key {expected}")]
    OtherKey { signed_by: String, expected: String },
    #[error("forged: the signature does not verify with director key {0}")]
    Forged(String),
    #[error("addressed to device {0:?}")]
    OtherDevice(String),
    #[error(
        "expired at {expired_at_ms} ms (now {now_ms} ms): the hub signs live states again before they expire"
    )]
    Expired { expired_at_ms: i64, now_ms: i64 },
    #[error("replayed: generation {generation} is older than generation {newest}, already taken")]
    Replayed { generation: u64, newest: u64 },
}

/// Checks desired states for one device; remembers the newest generation it let through.
#[derive(Debug)]
pub struct StateGate {
    device_id: String,
    director_key: Option<PublicKey>,
    newest: u64,
}

impl StateGate {
    /// `newest`: the newest generation the agent took before (persisted across restarts).
    pub fn new(device_id: &str, trust: &Trust, newest: u64) -> Self {
        StateGate {
            device_id: device_id.to_owned(),
            director_key: trust.director_key,
            newest,
        }
    }

    /// The desired state inside `payload`, if every check passes. The same generation again
    /// passes (the hub re-signs unchanged states before they expire).
    pub fn open(&mut self, payload: &[u8], now_ms: i64) -> Result<pb::DesiredState, Refusal> {
        let signed = pb::SignedDesiredState::decode(payload)
            .map_err(|err| Refusal::Malformed(err.to_string()))?;
        if let Some(key) = &self.director_key {
            let expected = key.key_id();
            if signed.signature.is_empty() {
                return Err(Refusal::Unsigned(expected));
            }
            if signed.key_id != expected {
                return Err(Refusal::OtherKey {
                    signed_by: printable(&signed.key_id),
                    expected,
                });
            }
            key.verify(Purpose::DesiredState, &signed.state, &signed.signature)
                .map_err(|_| Refusal::Forged(expected))?;
        }
        let state = pb::DesiredState::decode(&signed.state[..])
            .map_err(|err| Refusal::Malformed(format!("signed state: {err}")))?;
        if state.device_id != self.device_id {
            return Err(Refusal::OtherDevice(printable(&state.device_id)));
        }
        // An unsigned state (insecure agents) has no expiry worth checking: anyone could
        // have written it.
        if self.director_key.is_some() && state.expires_at_ms <= now_ms {
            return Err(Refusal::Expired {
                expired_at_ms: state.expires_at_ms,
                now_ms,
            });
        }
        if state.generation < self.newest {
            return Err(Refusal::Replayed {
                generation: state.generation,
                newest: self.newest,
            });
        }
        self.newest = state.generation;
        Ok(state)
    }
}

/// At most 64 characters of a string from the network, for a log line.
fn printable(text: &str) -> String {
    text.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeship_domain::trust::SigningKey;

    const NOW: i64 = 1_000_000;

    fn state(device: &str, generation: u64, expires_at_ms: i64) -> Vec<u8> {
        pb::DesiredState {
            device_id: device.into(),
            generation,
            expires_at_ms,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn signed(key: &SigningKey, state: Vec<u8>) -> Vec<u8> {
        pb::SignedDesiredState {
            signature: key.sign(Purpose::DesiredState, &state).into(),
            key_id: key.public().key_id(),
            state: state.into(),
        }
        .encode_to_vec()
    }

    fn gate(key: &SigningKey, newest: u64) -> StateGate {
        let trust = Trust {
            director_key: Some(key.public()),
            insecure: false,
            identity: None,
            model_signers: Vec::new(),
        };
        StateGate::new("edge-1", &trust, newest)
    }

    #[test]
    fn only_a_fresh_state_signed_for_this_device_passes() {
        let hub = SigningKey::generate().expect("key");
        let intruder = SigningKey::generate().expect("key");
        let mut gate = gate(&hub, 5);
        let good = signed(&hub, state("edge-1", 6, NOW + 1));
        assert_eq!(gate.open(&good, NOW).map(|s| s.generation), Ok(6));
        // The same generation again (re-signed) passes; an older one does not.
        assert!(gate.open(&good, NOW).is_ok());
        let older = signed(&hub, state("edge-1", 5, NOW + 1));
        assert_eq!(
            gate.open(&older, NOW),
            Err(Refusal::Replayed {
                generation: 5,
                newest: 6
            })
        );
        let refused = |gate: &mut StateGate, payload: &[u8]| {
            gate.open(payload, NOW).expect_err("refused").to_string()
        };
        let unsigned = pb::SignedDesiredState {
            state: state("edge-1", 7, NOW + 1).into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(refused(&mut gate, &unsigned).starts_with("unsigned"));
        let foreign = signed(&intruder, state("edge-1", 7, NOW + 1));
        assert!(refused(&mut gate, &foreign).contains("not the director key"));
        // The intruder claims the hub's key id: the signature gives it away.
        let mut forged = pb::SignedDesiredState::decode(foreign.as_slice()).expect("decode");
        forged.key_id = hub.public().key_id();
        let forged = forged.encode_to_vec();
        assert!(refused(&mut gate, &forged).starts_with("forged"));
        // A state signed by the hub, with one byte changed after signing.
        let mut tampered = pb::SignedDesiredState::decode(good.as_slice()).expect("decode");
        let mut bytes = tampered.state.to_vec();
        *bytes.last_mut().expect("bytes") ^= 1;
        tampered.state = bytes.into();
        assert!(refused(&mut gate, &tampered.encode_to_vec()).starts_with("forged"));
        let elsewhere = signed(&hub, state("edge-2", 7, NOW + 1));
        assert!(refused(&mut gate, &elsewhere).contains("\"edge-2\""));
        let expired = signed(&hub, state("edge-1", 7, NOW));
        assert!(refused(&mut gate, &expired).starts_with("expired"));
        let no_expiry = signed(&hub, state("edge-1", 7, 0));
        assert!(refused(&mut gate, &no_expiry).starts_with("expired"));
        assert!(refused(&mut gate, b"\xff\x00garbage").starts_with("malformed"));
        // None of the refusals moved the gate: the next good state still passes.
        let next = signed(&hub, state("edge-1", 7, NOW + 1));
        assert_eq!(gate.open(&next, NOW).map(|s| s.generation), Ok(7));
    }

    #[test]
    fn an_insecure_agent_takes_unsigned_states_but_still_checks_device_and_generation() {
        let trust = Trust {
            director_key: None,
            insecure: true,
            identity: None,
            model_signers: Vec::new(),
        };
        let mut gate = StateGate::new("edge-1", &trust, 3);
        let unsigned = |device: &str, generation| {
            pb::SignedDesiredState {
                state: state(device, generation, 0).into(),
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert!(gate.open(&unsigned("edge-1", 3), NOW).is_ok());
        assert!(gate.open(&unsigned("edge-2", 4), NOW).is_err());
        assert!(gate.open(&unsigned("edge-1", 2), NOW).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Any bytes at all are refused, without a panic.
        #[test]
        fn any_bytes_are_refused_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let hub = SigningKey::generate().expect("key");
            proptest::prop_assert!(gate(&hub, 0).open(&bytes, NOW).is_err());
        }

        /// A signed state damaged anywhere is refused, or is (after decoding) exactly the
        /// state the hub signed.
        #[test]
        fn a_damaged_signed_state_is_refused_or_is_what_was_signed(
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..4),
            cut in proptest::option::of(0.0f64..1.0),
        ) {
            let hub = SigningKey::generate().expect("key");
            let original = state("edge-1", 6, NOW + 1);
            let mut bytes = signed(&hub, original.clone());
            for (position, value) in edits {
                let at = position % bytes.len();
                bytes[at] = value;
            }
            if let Some(fraction) = cut {
                bytes.truncate((bytes.len() as f64 * fraction) as usize);
            }
            if let Ok(taken) = gate(&hub, 5).open(&bytes, NOW) {
                proptest::prop_assert_eq!(taken.encode_to_vec(), original);
            }
        }
    }
}
