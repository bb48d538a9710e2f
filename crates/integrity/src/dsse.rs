//! DSSE envelopes (Dead Simple Signing Envelope, v1): a payload, its type, and signatures over the
//! pre-authentication encoding `PAE(type, payload)`. Signatures are Ed25519 by the same minisign
//! keys as package signatures, each naming its key by minisign key id, so one keyring verifies
//! both and a rotated key can add its signature to an existing envelope.
//!
//! Verification is strict: a signature by a trusted key that does not verify is fatal (an altered
//! envelope is never accepted on the strength of another signature), signatures by keys the
//! keyring does not hold are ignored, and at least one trusted signature must verify.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::keys::{KeyId, Keyring};

/// An envelope line is a few kilobytes; anything past this is not one of ours.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// The signing key's id (minisign key id, 16 hex digits).
    pub keyid: String,
    /// Base64 of the 64-byte Ed25519 signature over `PAE(payloadType, payload)`.
    pub sig: String,
}

/// A DSSE envelope as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Base64 of the payload bytes.
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<EnvelopeSignature>,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DsseError {
    #[error("not a DSSE envelope: {0}")]
    Malformed(String),
    #[error("payload type is {found:?}, expected {expected:?}")]
    PayloadType { found: String, expected: String },
    #[error("the signature by trusted key {key_id} does not verify: the envelope was altered")]
    Invalid { key_id: KeyId },
    #[error("no signature by a trusted key (signed by: {signed_by}; trusted: {trusted})")]
    NoTrustedSignature { signed_by: String, trusted: String },
}

/// The payload of a verified envelope and the trusted keys that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPayload {
    pub payload: Vec<u8>,
    pub key_ids: Vec<KeyId>,
}

/// DSSE's pre-authentication encoding: `DSSEv1 <len(type)> <type> <len(body)> <body>`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut encoded = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    encoded.extend_from_slice(payload);
    encoded
}

impl Envelope {
    /// Parses an envelope's JSON, bounded in size.
    pub fn parse(text: &str) -> Result<Self, DsseError> {
        if text.len() > MAX_ENVELOPE_BYTES {
            return Err(DsseError::Malformed(format!(
                "{} bytes, more than the {MAX_ENVELOPE_BYTES} an envelope may have",
                text.len()
            )));
        }
        serde_json::from_str(text).map_err(|error| DsseError::Malformed(error.to_string()))
    }

    /// The envelope as one line of JSON (a `.jsonl` line).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("an envelope always serializes")
    }

    /// Verifies the envelope with the keyring and returns its payload.
    pub fn verify(
        &self,
        keyring: &Keyring,
        expected_payload_type: &str,
    ) -> Result<VerifiedPayload, DsseError> {
        if self.payload_type != expected_payload_type {
            return Err(DsseError::PayloadType {
                found: self.payload_type.clone(),
                expected: expected_payload_type.to_owned(),
            });
        }
        let payload = decode_base64(&self.payload)
            .ok_or_else(|| DsseError::Malformed("payload is not base64".to_owned()))?;
        let message = pae(&self.payload_type, &payload);
        let mut key_ids = Vec::new();
        for signature in &self.signatures {
            let Some(key) = KeyId::parse(&signature.keyid).and_then(|id| keyring.get(&id)) else {
                continue;
            };
            let valid =
                decode_base64(&signature.sig).is_some_and(|sig| key.verify_ed25519(&message, &sig));
            if !valid {
                return Err(DsseError::Invalid { key_id: key.id() });
            }
            key_ids.push(key.id());
        }
        if key_ids.is_empty() {
            return Err(DsseError::NoTrustedSignature {
                signed_by: if self.signatures.is_empty() {
                    "nobody".to_owned()
                } else {
                    self.signatures
                        .iter()
                        .map(|s| s.keyid.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                trusted: keyring.describe(),
            });
        }
        Ok(VerifiedPayload { payload, key_ids })
    }

    /// The payload bytes, unverified (for showing what an envelope claims).
    pub fn payload_unverified(&self) -> Option<Vec<u8>> {
        decode_base64(&self.payload)
    }
}

/// DSSE allows standard or URL-safe base64, padded or not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text.trim()).ok())
}

#[cfg(feature = "sign")]
mod signing {
    use base64::Engine as _;

    use super::{Envelope, EnvelopeSignature, pae};
    use crate::keys::SecretKey;

    impl Envelope {
        /// An envelope of `payload` signed by `key`.
        pub fn sign(key: &SecretKey, payload_type: &str, payload: &[u8]) -> Envelope {
            let mut envelope = Envelope {
                payload: base64::engine::general_purpose::STANDARD.encode(payload),
                payload_type: payload_type.to_owned(),
                signatures: Vec::new(),
            };
            envelope.add_signature(key);
            envelope
        }

        /// Adds `key`'s signature (a rotated-in key countersigning an existing envelope); a key
        /// that already signed is not added twice. The payload must decode.
        pub fn add_signature(&mut self, key: &SecretKey) {
            let keyid = key.id().to_string();
            if self.signatures.iter().any(|s| s.keyid == keyid) {
                return;
            }
            let payload = self.payload_unverified().unwrap_or_default();
            let sig = key.sign_ed25519(&pae(&self.payload_type, &payload));
            self.signatures.push(EnvelopeSignature {
                keyid,
                sig: base64::engine::general_purpose::STANDARD.encode(sig),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_the_specified_encoding() {
        // The DSSE specification's example.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[cfg(feature = "sign")]
    #[test]
    fn envelopes_verify_with_any_trusted_signer_and_never_when_altered() {
        use crate::keys::SecretKey;
        let dir = tempfile::tempdir().unwrap();
        let old =
            SecretKey::generate(&dir.path().join("old"), &dir.path().join("old.pub")).unwrap();
        let new =
            SecretKey::generate(&dir.path().join("new"), &dir.path().join("new.pub")).unwrap();
        let mut envelope = Envelope::sign(&old, "text/plain", b"statement");
        let mut old_ring = Keyring::new();
        old_ring.insert(old.public().clone(), "old").unwrap();
        let mut new_ring = Keyring::new();
        new_ring.insert(new.public().clone(), "new").unwrap();

        let verified = envelope.verify(&old_ring, "text/plain").unwrap();
        assert_eq!(verified.payload, b"statement");
        assert!(matches!(
            envelope.verify(&new_ring, "text/plain"),
            Err(DsseError::NoTrustedSignature { .. })
        ));
        assert!(matches!(
            envelope.verify(&old_ring, "application/json"),
            Err(DsseError::PayloadType { .. })
        ));

        envelope.add_signature(&new);
        envelope.add_signature(&new);
        assert_eq!(envelope.signatures.len(), 2);
        let parsed = Envelope::parse(&envelope.to_line()).unwrap();
        assert_eq!(
            parsed.verify(&new_ring, "text/plain").unwrap().key_ids,
            vec![new.id()]
        );

        let mut altered = parsed.clone();
        altered.payload = base64::engine::general_purpose::STANDARD.encode(b"statemenT");
        assert_eq!(
            altered.verify(&old_ring, "text/plain"),
            Err(DsseError::Invalid { key_id: old.id() })
        );
    }
}
