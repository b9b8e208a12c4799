//! Names of workspaces and users. Both end up inside host names
//! (`<app>--<workspace>--<owner>.<domain>`), so both are DNS labels without `--`.

use std::fmt;

use serde::{Deserialize, Serialize};

pub const MAX_NAME_LEN: usize = 32;

/// A validated name: 1-32 characters of `a-z`, `0-9` and `-`, starting with a letter,
/// not ending with `-`, and without `--` (the separator of Cove's host names).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name must not be empty")]
    Empty,
    #[error("name {0:?} is longer than {MAX_NAME_LEN} characters; choose a shorter one")]
    TooLong(String),
    #[error("name {0:?} must start with a lowercase letter")]
    BadStart(String),
    #[error("name {0:?} must not end with '-'")]
    BadEnd(String),
    #[error("name {0:?} may only hold lowercase letters, digits and '-' (found {1:?})")]
    BadChar(String, char),
    #[error("name {0:?} must not contain '--', which separates the parts of Cove's host names")]
    DoubleDash(String),
}

impl Name {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let Some(first) = s.chars().next() else {
            return Err(NameError::Empty);
        };
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.to_string()));
        }
        if let Some(bad) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
            return Err(NameError::BadChar(s.to_string(), bad));
        }
        if !first.is_ascii_lowercase() {
            return Err(NameError::BadStart(s.to_string()));
        }
        if s.ends_with('-') {
            return Err(NameError::BadEnd(s.to_string()));
        }
        if s.contains("--") {
            return Err(NameError::DoubleDash(s.to_string()));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<(), NameError>) {
        assert_eq!(Name::parse(input).map(|_| ()), expected, "input {input:?}");
    }

    #[test]
    fn names() {
        check("api", Ok(()));
        check("a", Ok(()));
        check("a-b-c9", Ok(()));
        check(&"a".repeat(32), Ok(()));
        check("", Err(NameError::Empty));
        check(&"a".repeat(33), Err(NameError::TooLong("a".repeat(33))));
        check("Api", Err(NameError::BadChar("Api".into(), 'A')));
        check("a_b", Err(NameError::BadChar("a_b".into(), '_')));
        check("a.b", Err(NameError::BadChar("a.b".into(), '.')));
        check("api ", Err(NameError::BadChar("api ".into(), ' ')));
        check("über", Err(NameError::BadChar("über".into(), 'ü')));
        check("9lives", Err(NameError::BadStart("9lives".into())));
        check("-api", Err(NameError::BadStart("-api".into())));
        check("api-", Err(NameError::BadEnd("api-".into())));
        check("a--b", Err(NameError::DoubleDash("a--b".into())));
    }
}
