//! Credentials: the API-token format and password rules. Only hashes are ever stored.
//!
//! An API token reads `chm_`, then 44 base62 characters of randomness (two random UUIDs: 244
//! bits), then 6 base62 characters of checksum (the first 32 bits of the SHA-256 of the rest),
//! e.g. `chm_0T3k…Xz9a1B2c`. The prefix makes a leaked token recognisable to secret scanners; the
//! checksum lets the auth service refuse a mistyped or made-up token without a database lookup.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::{Rule, ValidationError};
use crate::model::TokenHash;

const PREFIX: &str = "chm_";
const BODY_CHARS: usize = 44;
const CHECKSUM_CHARS: usize = 6;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly issued token secret: shown to its owner once, then only its hash is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(chm_…)")
    }
}

/// Why a presented credential is not even a well-formed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedToken {
    #[error("not a Chamberlain token (expected the chm_ prefix)")]
    Prefix,
    #[error("token has the wrong length or characters")]
    Shape,
    #[error("token checksum does not match (mistyped or truncated)")]
    Checksum,
}

fn base62(mut n: u128, width: usize, out: &mut String) {
    let mut digits = vec![b'0'; width];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out.extend(digits.into_iter().map(char::from));
}

fn checksum(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let mut out = String::with_capacity(CHECKSUM_CHARS);
    base62(u128::from(n), CHECKSUM_CHARS, &mut out);
    out
}

impl TokenSecret {
    /// A new random token (244 random bits from the operating system's generator).
    pub fn generate() -> Self {
        let mut s = String::with_capacity(PREFIX.len() + BODY_CHARS + CHECKSUM_CHARS);
        s.push_str(PREFIX);
        base62(uuid::Uuid::new_v4().as_u128(), BODY_CHARS / 2, &mut s);
        base62(uuid::Uuid::new_v4().as_u128(), BODY_CHARS / 2, &mut s);
        let sum = checksum(&s);
        s.push_str(&sum);
        Self(s)
    }

    /// Checks the shape and checksum of a presented token, and returns what is stored for it.
    ///
    /// # Errors
    /// [`MalformedToken`] saying what is wrong; no lookup is needed to refuse it.
    pub fn parse(raw: &str) -> Result<TokenHash, MalformedToken> {
        if !raw.starts_with(PREFIX) {
            return Err(MalformedToken::Prefix);
        }
        if raw.len() != PREFIX.len() + BODY_CHARS + CHECKSUM_CHARS
            || !raw[PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(MalformedToken::Shape);
        }
        let (body, sum) = raw.split_at(PREFIX.len() + BODY_CHARS);
        if checksum(body) != sum {
            return Err(MalformedToken::Checksum);
        }
        Ok(Self::hash_of(raw))
    }

    /// The secret, to show its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the token store keeps.
    pub fn hash(&self) -> TokenHash {
        Self::hash_of(&self.0)
    }

    fn hash_of(raw: &str) -> TokenHash {
        TokenHash(Sha256::digest(raw.as_bytes()).into())
    }
}

/// A password as a user submits it, checked against the password rules; handed to the
/// password hasher and dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(…)")
    }
}

impl Password {
    pub const MIN_CHARS: usize = 12;
    pub const MAX_CHARS: usize = 256;

    /// # Errors
    /// `password`: [`Rule::OutOfRange`] on length.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let n = raw.chars().count();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&n) {
            return Err(ValidationError::new(
                "password",
                Rule::OutOfRange {
                    min: format!("{} characters", Self::MIN_CHARS),
                    max: format!("{} characters", Self::MAX_CHARS),
                    actual: format!("{n} characters"),
                },
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_generated_token_parses_to_its_hash() {
        let t = TokenSecret::generate();
        assert!(t.expose().starts_with("chm_"));
        assert_eq!(t.expose().len(), 54);
        assert_eq!(TokenSecret::parse(t.expose()), Ok(t.hash()));
        assert_ne!(TokenSecret::generate(), t);
    }

    #[test]
    fn a_mistyped_token_fails_its_checksum() {
        let t = TokenSecret::generate();
        let mut chars: Vec<char> = t.expose().chars().collect();
        chars[10] = if chars[10] == 'a' { 'b' } else { 'a' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(TokenSecret::parse(&typo), Err(MalformedToken::Checksum));
        assert_eq!(
            TokenSecret::parse(&t.expose()[..50]),
            Err(MalformedToken::Shape)
        );
        assert_eq!(
            TokenSecret::parse("Bearer xyz"),
            Err(MalformedToken::Prefix)
        );
    }

    #[test]
    fn password_length_is_checked_and_names_the_field() {
        let e = Password::parse("short").unwrap_err();
        assert_eq!(e.field, "password");
        assert!(Password::parse("correct horse battery").is_ok());
    }

    proptest! {
        #[test]
        fn parse_never_panics(raw in ".{0,80}") {
            let _ = TokenSecret::parse(&raw);
        }
    }
}
