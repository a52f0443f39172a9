//! Content keys: 32-byte blake3 digests naming store entries.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The 12-character prefix shown in tables (48 bits: collisions are not a concern
    /// at the scale of one store, and `show` accepts any unique prefix anyway).
    pub fn short(&self) -> String {
        short_hex(&self.hex()).to_string()
    }
}

/// The first 12 characters of a hex digest (a key's, an artifact's, a content's), as
/// messages and [`Key::short`] show them; a shorter or hand-edited one (a
/// lockfile is text) is shown whole up to a character boundary, never cut inside one.
pub fn short_hex(hex: &str) -> &str {
    hex.char_indices().nth(12).map_or(hex, |(end, _)| &hex[..end])
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.short())
    }
}

impl FromStr for Key {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("not a 64-digit hex key: {s:?}"));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hi = (chunk[0] as char).to_digit(16).expect("hex checked");
            let lo = (chunk[1] as char).to_digit(16).expect("hex checked");
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(Key(out))
    }
}

impl From<blake3::Hash> for Key {
    fn from(h: blake3::Hash) -> Self {
        Key(*h.as_bytes())
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_digest_is_twelve_characters_and_never_cuts_one() {
        let key = Key([0xab; 32]);
        assert_eq!(key.short(), "abababababab");
        assert_eq!(short_hex("abc"), "abc");
        // A hand-edited lockfile's digest may hold anything: slicing bytes panicked.
        assert_eq!(short_hex(&"é".repeat(13)), "é".repeat(12));
    }
}
