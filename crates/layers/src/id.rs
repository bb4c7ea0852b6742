//! Layer ids: 64 lowercase hex digits of a SHA-256.
//!
//! Imported layers (a tarball, a directory) are content-addressed by the
//! digest of their archive, so importing the same base twice yields one
//! layer. Layers frozen from a workspace are not hashed over their content:
//! that would cost O(size) on every snapshot, against the O(1) rename that
//! freezing is. Their id hashes the stack they sit on plus a unique freeze
//! id instead; identical provisioned states are shared one level up, by the
//! provisioning cache key that names them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LayerId(String);

/// A string that is not a layer id.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a layer id (64 lowercase hex digits)")]
pub struct BadLayerId(pub String);

impl LayerId {
    /// Parses an id read from disk or given by a user.
    pub fn parse(text: &str) -> Result<Self, BadLayerId> {
        let ok = text.len() == 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(LayerId(text.to_string()))
        } else {
            Err(BadLayerId(text.to_string()))
        }
    }

    /// The id of content named by `parts` (a kind, then what identifies it).
    pub fn derive(parts: &[&[u8]]) -> Self {
        let mut hash = Sha256::new();
        for part in parts {
            // Length-prefixed so that different splits never collide.
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        LayerId(hex::encode(hash.finalize()))
    }

    /// The id of a freshly frozen layer on top of `parents`.
    pub fn unique(parents: &[LayerId]) -> Self {
        let freeze = ulid::Ulid::generate().to_string();
        let mut parts: Vec<&[u8]> = vec![b"frozen", freeze.as_bytes()];
        parts.extend(parents.iter().map(|p| p.0.as_bytes()));
        LayerId::derive(&parts)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short form for messages.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl TryFrom<String> for LayerId {
    type Error = BadLayerId;
    fn try_from(text: String) -> Result<Self, BadLayerId> {
        LayerId::parse(&text)
    }
}

impl From<LayerId> for String {
    fn from(id: LayerId) -> String {
        id.0
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_what_is_not_a_sha256() {
        assert!(LayerId::parse(&"a".repeat(64)).is_ok());
        assert!(LayerId::parse(&"A".repeat(64)).is_err());
        assert!(LayerId::parse("../etc").is_err());
        assert!(LayerId::parse(&"a".repeat(63)).is_err());
    }

    #[test]
    fn derive_separates_parts_and_unique_never_repeats() {
        assert_ne!(
            LayerId::derive(&[b"ab", b"c"]),
            LayerId::derive(&[b"a", b"bc"])
        );
        let parents = [LayerId::derive(&[b"x"])];
        assert_ne!(LayerId::unique(&parents), LayerId::unique(&parents));
    }
}
