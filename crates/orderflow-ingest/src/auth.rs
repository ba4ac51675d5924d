//! Bearer tokens, without I/O: the tokens file, its hashes, and who a token is.
//!
//! The file holds one storefront a line: its id, then the SHA-256 of its token in
//! lower-case hex (64 digits), separated by white space; `#` starts a comment, blank
//! lines are skipped. A storefront may have several lines (several tokens, to rotate
//! them). Only hashes are stored: the file reveals no token. `orderflow ingest
//! hash-token` prints the hash of a token read from standard input.
//!
//! ```text
//! # storefront     sha256(token)
//! app-ios          5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
//! web              a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3
//! ```
//!
//! A token is looked up by its hash, so the time taken says nothing about how much of a
//! stored token a guess matched.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

/// The SHA-256 of `token`, in lower-case hex: what the tokens file stores.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The storefront each token hash belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], String>,
}

/// A bad line of a tokens file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct BadLine {
    pub line: usize,
    pub problem: String,
}

/// A tokens file that cannot be used: every bad line, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct BadTokens(pub Vec<BadLine>);

impl Tokens {
    /// Reads a tokens file's text (see the module docs). Any bad line fails the whole
    /// file, so a reload never half-applies.
    pub fn parse(text: &str) -> Result<Tokens, BadTokens> {
        let mut by_hash = HashMap::new();
        let mut bad = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let problem = match fields.as_slice() {
                [storefront, hash] => match parse_hash(hash) {
                    Some(h) => match by_hash.insert(h, (*storefront).to_owned()) {
                        Some(other) if other != *storefront => Some(format!("the same token hash is also storefront `{other}`'s")),
                        _ => None,
                    },
                    None => Some("the hash is not 64 hex digits (SHA-256; `orderflow ingest hash-token` prints one)".to_owned()),
                },
                _ => Some(format!("expected `STOREFRONT_ID SHA256_HEX`, found {} fields", fields.len())),
            };
            if let Some(problem) = problem {
                bad.push(BadLine { line: i + 1, problem });
            }
        }
        if bad.is_empty() {
            Ok(Tokens { by_hash })
        } else {
            Err(BadTokens(bad))
        }
    }

    /// The storefront of the bearer token `token`, if any.
    pub fn storefront(&self, token: &str) -> Option<&str> {
        self.by_hash.get(&<[u8; 32]>::from(Sha256::digest(token.as_bytes()))).map(String::as_str)
    }

    /// How many tokens.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are none (every request is then refused).
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

fn parse_hash(hex_digits: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits.to_ascii_lowercase(), &mut out).ok()?;
    Some(out)
}

/// The token of an `Authorization` header value: `Bearer <token>` (scheme
/// case-insensitive), else `None`.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_as_sha256_hex() {
        // The SHA-256 of "password", a well-known value.
        assert_eq!(hash_token("password"), "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8");
        let text = format!(
            "# storefronts\n\napp-ios {}  # the iOS app\nweb\t{}\nweb {}\n",
            hash_token("ios-secret"),
            hash_token("web-1").to_uppercase(),
            hash_token("web-2")
        );
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 3);
        assert_eq!(tokens.storefront("ios-secret"), Some("app-ios"));
        assert_eq!(tokens.storefront("web-1"), Some("web"));
        assert_eq!(tokens.storefront("web-2"), Some("web"));
        assert_eq!(tokens.storefront("web-3"), None);
        assert_eq!(tokens.storefront(&hash_token("ios-secret")), None, "the hash itself is not a token");
    }

    #[test]
    fn every_bad_line_is_named() {
        let text = format!("a {}\nb notahash\nc\nd {} extra\ne {}\n", hash_token("1"), hash_token("2"), hash_token("1"));
        let err = Tokens::parse(&text).unwrap_err();
        assert_eq!(err.0.iter().map(|b| b.line).collect::<Vec<_>>(), [2, 3, 4, 5]);
        let shown = err.to_string();
        assert!(shown.contains("line 2: the hash is not 64 hex digits"), "{shown}");
        assert!(shown.contains("line 5: the same token hash is also storefront `a`'s"), "{shown}");
        assert!(!shown.contains(&hash_token("1")), "hashes are not repeated: {shown}");
        assert!(Tokens::parse("").unwrap().is_empty());
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
