//! JSON with comments, as devcontainer.json is written: `//` and `/* */` comments and
//! trailing commas in objects and arrays. A small hand-written parser rather than a crate:
//! it is ~250 lines, yields `serde_json::Value` directly, and gives errors with line and
//! column, which is what a user editing the file needs.

use std::fmt;

use serde_json::{Map, Number, Value};

/// Nesting deeper than this is refused instead of risking the stack.
const MAX_DEPTH: usize = 128;

/// A syntax error at a 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

/// Parses one JSONC document. Duplicate keys: the last wins, as `JSON.parse` does.
pub fn parse(text: &str) -> Result<Value, SyntaxError> {
    let mut p = Parser { text, pos: 0 };
    // A byte-order mark is common in files saved by Windows editors.
    if p.text.starts_with('\u{feff}') {
        p.pos = '\u{feff}'.len_utf8();
    }
    p.skip_trivia()?;
    if p.pos >= text.len() {
        return Err(p.error_at(p.pos, "the file holds no JSON value"));
    }
    let value = p.value(0)?;
    p.skip_trivia()?;
    if p.pos < text.len() {
        return Err(p.error_at(p.pos, "unexpected text after the end of the JSON value"));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error_at(&self, pos: usize, message: impl Into<String>) -> SyntaxError {
        let before = &self.text[..pos.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        SyntaxError { line, column, message: message.into() }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_trivia(&mut self) -> Result<(), SyntaxError> {
        loop {
            let rest = &self.text[self.pos..];
            if let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
                self.pos += c.len_utf8();
            } else if rest.starts_with("//") {
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else if let Some(body) = rest.strip_prefix("/*") {
                match body.find("*/") {
                    Some(end) => self.pos += 2 + end + 2,
                    None => return Err(self.error_at(self.pos, "unterminated /* comment")),
                }
            } else {
                return Ok(());
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error_at(self.pos, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        let start = self.pos;
        match self.peek() {
            Some('{') => self.object(depth),
            Some('[') => self.array(depth),
            Some('"') => self.string().map(Value::String),
            Some(c) if c == '-' || c.is_ascii_digit() => self.number(),
            Some(c) if c.is_ascii_alphabetic() => {
                let word = self.word().to_string();
                match word.as_str() {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    "null" => Ok(Value::Null),
                    _ => Err(self.error_at(start, format!("unexpected `{word}`; strings need double quotes"))),
                }
            }
            Some(c) => Err(self.error_at(start, format!("unexpected `{c}`, expected a value"))),
            None => Err(self.error_at(start, "unexpected end of file, expected a value")),
        }
    }

    fn word(&mut self) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn object(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        let open = self.pos;
        self.bump();
        let mut map = Map::new();
        loop {
            self.skip_trivia()?;
            match self.peek() {
                Some('}') => {
                    self.bump();
                    return Ok(Value::Object(map));
                }
                Some('"') => {}
                Some(c) => {
                    return Err(self.error_at(self.pos, format!("unexpected `{c}`, expected a property name in quotes")))
                }
                None => return Err(self.error_at(open, "this `{` is never closed")),
            }
            let key = self.string()?;
            self.skip_trivia()?;
            match self.peek() {
                Some(':') => {
                    self.bump();
                }
                _ => return Err(self.error_at(self.pos, format!("expected `:` after \"{key}\""))),
            }
            self.skip_trivia()?;
            let value = self.value(depth + 1)?;
            map.insert(key, value);
            self.skip_trivia()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('}') => {}
                Some(c) => return Err(self.error_at(self.pos, format!("unexpected `{c}`, expected `,` or `}}`"))),
                None => return Err(self.error_at(open, "this `{` is never closed")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        let open = self.pos;
        self.bump();
        let mut items = vec![];
        loop {
            self.skip_trivia()?;
            match self.peek() {
                Some(']') => {
                    self.bump();
                    return Ok(Value::Array(items));
                }
                None => return Err(self.error_at(open, "this `[` is never closed")),
                Some(_) => {}
            }
            items.push(self.value(depth + 1)?);
            self.skip_trivia()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(']') => {}
                Some(c) => return Err(self.error_at(self.pos, format!("unexpected `{c}`, expected `,` or `]`"))),
                None => return Err(self.error_at(open, "this `[` is never closed")),
            }
        }
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let open = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None => return Err(self.error_at(open, "unterminated string")),
                Some('"') => return Ok(out),
                Some('\n') => return Err(self.error_at(at, "line break inside a string; write it as \\n")),
                Some('\\') => match self.bump() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('/') => out.push('/'),
                    Some('b') => out.push('\u{8}'),
                    Some('f') => out.push('\u{c}'),
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some('u') => out.push(self.unicode_escape(at)?),
                    _ => return Err(self.error_at(at, "invalid escape in a string")),
                },
                Some(c) if (c as u32) < 0x20 => {
                    return Err(self.error_at(at, "control character inside a string; escape it"))
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn hex4(&mut self, at: usize) -> Result<u32, SyntaxError> {
        let digits = self.text.get(self.pos..self.pos + 4).filter(|d| d.chars().all(|c| c.is_ascii_hexdigit()));
        let Some(digits) = digits else {
            return Err(self.error_at(at, "\\u must be followed by four hex digits"));
        };
        self.pos += 4;
        u32::from_str_radix(digits, 16).map_err(|_| self.error_at(at, "\\u must be followed by four hex digits"))
    }

    /// `\uXXXX`, joining a UTF-16 surrogate pair; a lone surrogate becomes U+FFFD as in JS.
    fn unicode_escape(&mut self, at: usize) -> Result<char, SyntaxError> {
        let first = self.hex4(at)?;
        if (0xD800..0xDC00).contains(&first) && self.text[self.pos..].starts_with("\\u") {
            let save = self.pos;
            self.pos += 2;
            let second = self.hex4(at)?;
            if (0xDC00..0xE000).contains(&second) {
                let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                return Ok(char::from_u32(code).unwrap_or('\u{fffd}'));
            }
            self.pos = save;
        }
        Ok(char::from_u32(first).unwrap_or('\u{fffd}'))
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.')) {
            self.pos += 1;
        }
        let literal = &self.text[start..self.pos];
        let bad = || self.error_at(start, format!("`{literal}` is not a valid number"));
        if !is_json_number(literal) {
            return Err(bad());
        }
        if let Ok(i) = literal.parse::<i64>() {
            return Ok(Value::Number(i.into()));
        }
        if let Ok(u) = literal.parse::<u64>() {
            return Ok(Value::Number(u.into()));
        }
        let f: f64 = literal.parse().map_err(|_| bad())?;
        Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| self.error_at(start, format!("`{literal}` is out of range")))
    }
}

/// The JSON number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.first() == Some(&b'-') {
        i += 1;
    }
    if b.get(i) == Some(&b'0') {
        i += 1;
    } else if digits(&mut i) == 0 {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn comments_and_trailing_commas() {
        let v = parse("// top\n{ /* a */ \"a\": [1, 2,], \"b\": {\"c\": null,}, // end\n }").unwrap();
        assert_eq!(v, json!({"a": [1, 2], "b": {"c": null}}));
    }

    #[test]
    fn strings_and_numbers() {
        let v = parse(r#"["a\"\\\/\n\u00e9\ud83d\ude00", -0.5e3, 18446744073709551615, 0]"#).unwrap();
        assert_eq!(v, json!(["a\"\\/\né😀", -500.0, 18446744073709551615u64, 0]));
    }

    #[test]
    fn errors_carry_line_and_column() {
        assert_eq!(err("{\n  \"a\": 1\n  \"b\": 2\n}"), "line 3, column 3: unexpected `\"`, expected `,` or `}`");
        assert_eq!(err("{\"a\": tru}"), "line 1, column 7: unexpected `tru`; strings need double quotes");
        assert_eq!(err("{\"é\": 01}"), "line 1, column 7: `01` is not a valid number");
        assert_eq!(err("{\n\"a\": [1,\n"), "line 2, column 6: this `[` is never closed");
        assert_eq!(err("/* x"), "line 1, column 1: unterminated /* comment");
        assert_eq!(err("  "), "line 1, column 3: the file holds no JSON value");
        assert_eq!(err("{} {}"), "line 1, column 4: unexpected text after the end of the JSON value");
        assert_eq!(err("[1e999]"), "line 1, column 2: `1e999` is out of range");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = "[".repeat(100_000);
        assert!(err(&text).contains("nesting deeper than 128"));
    }
}
