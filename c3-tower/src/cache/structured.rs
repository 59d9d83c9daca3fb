//! Just enough of RFC 8941 (Structured Field Values) to read a dictionary:
//! targeted cache-control fields such as `CDN-Cache-Control` (RFC 9213) are
//! dictionaries, and a field that does not parse as one must be ignored.
//!
//! Parameters are parsed (so a field that uses them is valid) and dropped;
//! inner lists are parsed and kept only as "not a bare item".

/// A dictionary member's value, as far as cache directives care.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item {
    Integer(i64),
    Decimal,
    String(String),
    Token,
    Binary,
    Boolean(bool),
    InnerList,
}

/// Parses an RFC 8941 dictionary (§4.2.2); `None` if the input is not one.
/// A repeated key keeps its last value (RFC 8941 §3.2).
pub(crate) fn parse_dictionary(input: &str) -> Option<Vec<(String, Item)>> {
    let mut p = Parser {
        s: input.as_bytes(),
        i: 0,
    };
    p.skip_sp();
    let mut out: Vec<(String, Item)> = Vec::new();
    while !p.done() {
        let key = p.key()?;
        let value = if p.eat(b'=') {
            if p.peek() == Some(b'(') {
                p.inner_list()?;
                Item::InnerList
            } else {
                let v = p.bare_item()?;
                p.parameters()?;
                v
            }
        } else {
            p.parameters()?;
            Item::Boolean(true)
        };
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
        p.skip_ows();
        if p.done() {
            break;
        }
        if !p.eat(b',') {
            return None;
        }
        p.skip_ows();
        if p.done() {
            return None; // a trailing comma
        }
    }
    Some(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        // Trailing spaces are discarded (RFC 8941 §4.2).
        self.s[self.i..].iter().all(|&c| c == b' ')
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn key(&mut self) -> Option<String> {
        let start = self.i;
        match self.peek()? {
            b'a'..=b'z' | b'*' => self.i += 1,
            _ => return None,
        }
        while let Some(c) = self.peek() {
            match c {
                b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*' => self.i += 1,
                _ => break,
            }
        }
        Some(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn inner_list(&mut self) -> Option<()> {
        if !self.eat(b'(') {
            return None;
        }
        loop {
            self.skip_sp();
            if self.eat(b')') {
                return self.parameters();
            }
            self.bare_item()?;
            self.parameters()?;
            match self.peek()? {
                b' ' | b')' => {}
                _ => return None,
            }
        }
    }

    fn bare_item(&mut self) -> Option<Item> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b':' => self.binary(),
            b'?' => {
                self.i += 1;
                let b = match self.peek()? {
                    b'0' => false,
                    b'1' => true,
                    _ => return None,
                };
                self.i += 1;
                Some(Item::Boolean(b))
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'*' => {
                self.i += 1;
                while let Some(c) = self.peek() {
                    let tchar = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c);
                    if !tchar {
                        break;
                    }
                    self.i += 1;
                }
                Some(Item::Token)
            }
            _ => None,
        }
    }

    fn number(&mut self) -> Option<Item> {
        let neg = self.eat(b'-');
        let start = self.i;
        let mut dot = None;
        while let Some(c) = self.peek() {
            match c {
                b'0'..=b'9' => self.i += 1,
                b'.' if dot.is_none() => {
                    dot = Some(self.i);
                    self.i += 1;
                }
                _ => break,
            }
        }
        let digits = &self.s[start..self.i];
        match dot {
            None => {
                if digits.is_empty() || digits.len() > 15 {
                    return None;
                }
                let n: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
                Some(Item::Integer(if neg { -n } else { n }))
            }
            Some(d) => {
                let (int, frac) = (d - start, self.i - d - 1);
                if int == 0 || int > 12 || frac == 0 || frac > 3 {
                    return None;
                }
                Some(Item::Decimal)
            }
        }
    }

    fn string(&mut self) -> Option<Item> {
        self.i += 1; // the opening quote
        let mut out = String::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return Some(Item::String(out)),
                b'\\' => {
                    let e = self.peek()?;
                    if e != b'"' && e != b'\\' {
                        return None;
                    }
                    self.i += 1;
                    out.push(e as char);
                }
                0x20..=0x7e => out.push(c as char),
                _ => return None,
            }
        }
    }

    fn binary(&mut self) -> Option<Item> {
        self.i += 1;
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b':' => return Some(Item::Binary),
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => {}
                _ => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionaries() {
        let d = parse_dictionary("max-age=60, no-store, a=?0, b=\"x\\\"y\", c=(1 2);p=3, d=1.5;q")
            .unwrap();
        assert_eq!(d[0], ("max-age".into(), Item::Integer(60)));
        assert_eq!(d[1], ("no-store".into(), Item::Boolean(true)));
        assert_eq!(d[2], ("a".into(), Item::Boolean(false)));
        assert_eq!(d[3], ("b".into(), Item::String("x\"y".into())));
        assert_eq!(d[4], ("c".into(), Item::InnerList));
        assert_eq!(d[5], ("d".into(), Item::Decimal));
        assert_eq!(
            parse_dictionary("a=1, a=2").unwrap(),
            vec![("a".into(), Item::Integer(2))]
        );
        assert_eq!(parse_dictionary("  ").unwrap(), vec![]);
        for bad in [
            "A=1",
            "a=1,",
            ",a",
            "a=1 b=2",
            "a=\"\\x\"",
            "a=1234567890123456",
            "a=?2",
            "a=:!:",
            "a=(1",
            "a=1.2345",
        ] {
            assert!(parse_dictionary(bad).is_none(), "{bad}");
        }
    }
}
