//! Ruby literals, the only Ruby Girofle writes into `gitlab.rb`.
//!
//! A managed setting's value is exactly one literal: a string (`'…'`, or `"…"` with
//! Ruby's escapes and no interpolation), an integer, a float, `true`/`false`/`nil`, a
//! symbol (`:name`), or an array or hash of literals, nested. `gitlab.rb` is Ruby that
//! GitLab evaluates as root at every reconfigure, so anything more (a `;`, a call, a
//! backtick, `#{…}`, a heredoc, a `%`-literal, a comment) would run as code: this small
//! recursive-descent parser accepts the literal grammar and nothing else, and says at
//! which character it stopped. It does not evaluate anything, and it never quotes the
//! text it refuses in its errors (the value may be a secret).

/// How deep arrays and hashes may nest (a bound on the recursion, far above any real
/// GitLab setting).
pub const MAX_DEPTH: usize = 32;

/// One parsed literal.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// A string, its escapes decoded.
    Str(String),
    /// An integer or a float, as written (underscores kept).
    Number(String),
    Bool(bool),
    Nil,
    /// A symbol's name, without the colon.
    Symbol(String),
    Array(Vec<Literal>),
    Hash(Vec<(Literal, Literal)>),
}

impl Literal {
    /// The texts of its strings and symbols, nested ones included, hash keys left out
    /// (what an error message must not show; `'password'` as a key and numbers are no
    /// secret, and scrubbing every `port` or `8080` would garble messages).
    pub fn leaves(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_leaves(&mut out);
        out
    }

    fn collect_leaves(&self, out: &mut Vec<String>) {
        match self {
            Literal::Str(s) | Literal::Symbol(s) => out.push(s.clone()),
            Literal::Number(_) | Literal::Bool(_) | Literal::Nil => {}
            Literal::Array(items) => items.iter().for_each(|i| i.collect_leaves(out)),
            Literal::Hash(pairs) => pairs.iter().for_each(|(_, v)| v.collect_leaves(out)),
        }
    }
}

/// Why a text is not one literal, and where (the 1-based character in the text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub at: usize,
    pub why: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at character {}: {}", self.at, self.why)
    }
}

/// Parses `text` as exactly one literal (spaces and tabs around and inside allowed).
///
/// # Errors
/// [`ParseError`] saying why and at which character.
pub fn parse(text: &str) -> Result<Literal, ParseError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
    };
    p.skip_blank();
    let value = p.value(0)?;
    p.skip_blank();
    if p.pos < p.chars.len() {
        return Err(p.error(match p.chars[p.pos] {
            '#' => "a comment (`#`) after the literal: a value is one literal and nothing else",
            ';' => "a `;` after the literal: a value is one literal, not statements",
            _ => "more text after the literal: a value is one literal and nothing else",
        }));
    }
    Ok(value)
}

/// Whether `text` is a bare word Girofle quotes as a string (`UTC`, `Europe/Paris`,
/// `smtp.example.com`): it starts with a letter or `_`, holds only letters, digits and
/// `_-./:@+,=%~`, and is not `true`, `false` or `nil`.
pub fn is_bare_word(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@+,=%~".contains(c))
        && !matches!(text, "true" | "false" | "nil")
}

/// `text` as a single-quoted Ruby string.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl Parser {
    fn error(&self, why: impl Into<String>) -> ParseError {
        ParseError {
            at: self.pos + 1,
            why: why.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn skip_blank(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Literal, ParseError> {
        let Some(c) = self.peek() else {
            return Err(self.error("a literal was expected, the text ended"));
        };
        match c {
            '\'' => self.single_quoted(),
            '"' => self.double_quoted(),
            '[' | '{' if depth >= MAX_DEPTH => Err(self.error(format!(
                "arrays and hashes nest deeper than {MAX_DEPTH} levels"
            ))),
            '[' => self.array(depth + 1),
            '{' => self.hash(depth + 1),
            ':' => self.symbol(),
            '-' | '+' | '0'..='9' => self.number(),
            c if is_ident_start(c) => {
                let start = self.pos;
                let word = self.ident();
                match word.as_str() {
                    "true" => Ok(Literal::Bool(true)),
                    "false" => Ok(Literal::Bool(false)),
                    "nil" => Ok(Literal::Nil),
                    _ => {
                        self.pos = start;
                        Err(self.error(
                            "a name here would be Ruby code (a method or a constant): quote it as a 'string'",
                        ))
                    }
                }
            }
            '`' => Err(self.error("a backtick runs a command: quote it as a 'string'")),
            '%' => Err(self.error("%-literals are not accepted: write a 'string' or an [array]")),
            '<' => Err(self.error("heredocs are not accepted: write a 'string'")),
            '#' => Err(self.error("a comment (`#`) where a literal was expected")),
            c if c.is_control() => Err(self.error("a control character (a line break?)")),
            _ => Err(self.error(
                "not the start of a literal ('string', \"string\", number, true/false/nil, :symbol, [array], {hash})",
            )),
        }
    }

    fn ident(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_ident) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn single_quoted(&mut self) -> Result<Literal, ParseError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    self.pos = open;
                    return Err(self.error("this string is not closed"));
                }
                Some('\'') => {
                    self.pos += 1;
                    return Ok(Literal::Str(out));
                }
                // In single quotes only `\\` and `\'` are escapes; any other backslash
                // is itself.
                Some('\\') if matches!(self.peek_at(1), Some('\\' | '\'')) => {
                    out.push(self.chars[self.pos + 1]);
                    self.pos += 2;
                }
                Some(c) if c.is_control() => {
                    return Err(self.error("a control character (a line break?) in a string"))
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn double_quoted(&mut self) -> Result<Literal, ParseError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    self.pos = open;
                    return Err(self.error("this string is not closed"));
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(Literal::Str(out));
                }
                // `#{…}`, `#@var` and `#$var` interpolate: Ruby would run them.
                Some('#') if matches!(self.peek_at(1), Some('{' | '@' | '$')) => {
                    return Err(self.error(
                        "interpolation (`#{`, `#@`, `#$`) in a \"string\" runs code: use a 'string', or write \\# for a literal #",
                    ))
                }
                Some('\\') => {
                    self.pos += 1;
                    out.push(self.escape()?);
                }
                Some(c) if c.is_control() => {
                    return Err(self.error("a control character (a line break?) in a string"))
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// One escape of a double-quoted string, after its backslash.
    fn escape(&mut self) -> Result<char, ParseError> {
        let Some(c) = self.peek() else {
            return Err(self.error("the string ends inside an escape"));
        };
        self.pos += 1;
        let simple = match c {
            '\\' | '"' | '\'' | '#' => Some(c),
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            's' => Some(' '),
            '0' => Some('\0'),
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'e' => Some('\u{1b}'),
            'f' => Some('\u{c}'),
            'v' => Some('\u{b}'),
            _ => None,
        };
        if let Some(s) = simple {
            return Ok(s);
        }
        if c == 'u' {
            let braced = self.peek() == Some('{');
            if braced {
                self.pos += 1;
            }
            let start = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) && self.pos - start < 6 {
                self.pos += 1;
            }
            let hex: String = self.chars[start..self.pos].iter().collect();
            let ok_len = if braced {
                !hex.is_empty()
            } else {
                hex.len() == 4
            };
            if braced && self.peek() == Some('}') {
                self.pos += 1;
            } else if braced {
                return Err(self.error("a \\u{…} escape is not closed"));
            }
            return match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                Some(ch) if ok_len => Ok(ch),
                _ => Err(self.error("a \\u escape takes 4 hex digits, or 1-6 in braces")),
            };
        }
        self.pos -= 1;
        Err(self.error(
            "an escape Girofle does not accept (use \\\\ \\\" \\# \\n \\t \\r \\s \\0 \\a \\b \\e \\f \\v \\uXXXX)",
        ))
    }

    fn digits(&mut self) -> Result<(), ParseError> {
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err(self.error("a digit was expected"));
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                self.pos += 1;
            } else if c == '_' && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 2;
            } else {
                break;
            }
        }
        Ok(())
    }

    fn number(&mut self) -> Result<Literal, ParseError> {
        let start = self.pos;
        if matches!(self.peek(), Some('-' | '+')) {
            self.pos += 1;
        }
        self.digits()?;
        if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some('-' | '+')) {
                self.pos += 1;
            }
            self.digits()?;
        }
        if self.peek().is_some_and(is_ident) {
            return Err(self.error("a number runs into a name: quote it as a 'string'"));
        }
        Ok(Literal::Number(
            self.chars[start..self.pos].iter().collect(),
        ))
    }

    fn symbol(&mut self) -> Result<Literal, ParseError> {
        self.pos += 1;
        if !self.peek().is_some_and(is_ident_start) {
            return Err(self.error("a symbol is `:` and a name (letters, digits, _)"));
        }
        let mut name = self.ident();
        if let Some(c @ ('?' | '!')) = self.peek() {
            name.push(c);
            self.pos += 1;
        }
        Ok(Literal::Symbol(name))
    }

    /// `,` between items, or the closing bracket; a trailing comma is allowed.
    fn separator(&mut self, close: char) -> Result<bool, ParseError> {
        self.skip_blank();
        match self.peek() {
            Some(c) if c == close => {
                self.pos += 1;
                Ok(true)
            }
            Some(',') => {
                self.pos += 1;
                self.skip_blank();
                if self.peek() == Some(close) {
                    self.pos += 1;
                    return Ok(true);
                }
                Ok(false)
            }
            None => Err(self.error(format!("the text ended before the closing `{close}`"))),
            Some(_) => Err(self.error(format!("`,` or `{close}` was expected"))),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Literal, ParseError> {
        self.pos += 1;
        self.skip_blank();
        let mut items = Vec::new();
        if self.peek() == Some(']') {
            self.pos += 1;
            return Ok(Literal::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            if self.separator(']')? {
                return Ok(Literal::Array(items));
            }
        }
    }

    fn hash(&mut self, depth: usize) -> Result<Literal, ParseError> {
        self.pos += 1;
        self.skip_blank();
        let mut pairs = Vec::new();
        if self.peek() == Some('}') {
            self.pos += 1;
            return Ok(Literal::Hash(pairs));
        }
        loop {
            // `name: value` (a symbol key), or `key => value`.
            let start = self.pos;
            let key = if self.peek().is_some_and(is_ident_start) {
                let name = self.ident();
                if self.peek() == Some(':') && self.peek_at(1) != Some(':') {
                    self.pos += 1;
                    Some(Literal::Symbol(name))
                } else {
                    self.pos = start;
                    None
                }
            } else {
                None
            };
            let key = match key {
                Some(k) => k,
                None => {
                    let k = self.value(depth)?;
                    self.skip_blank();
                    if !(self.peek() == Some('=') && self.peek_at(1) == Some('>')) {
                        return Err(self.error("`=>` was expected after a hash key"));
                    }
                    self.pos += 2;
                    k
                }
            };
            self.skip_blank();
            let value = self.value(depth)?;
            pairs.push((key, value));
            if self.separator('}')? {
                return Ok(Literal::Hash(pairs));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Literal {
        Literal::Str(text.into())
    }

    #[test]
    fn literals_parse() {
        assert_eq!(parse("'UTC'").unwrap(), s("UTC"));
        assert_eq!(parse(r"'it\'s \d'").unwrap(), s(r"it's \d"));
        assert_eq!(
            parse(r#""a\tb\u00e9\u{1F600}\#{x}""#).unwrap(),
            s("a\tbé😀#{x}")
        );
        assert_eq!(parse(" 8080 ").unwrap(), Literal::Number("8080".into()));
        assert_eq!(parse("-1_000").unwrap(), Literal::Number("-1_000".into()));
        assert_eq!(parse("1.5e-3").unwrap(), Literal::Number("1.5e-3".into()));
        assert_eq!(parse("true").unwrap(), Literal::Bool(true));
        assert_eq!(parse("nil").unwrap(), Literal::Nil);
        assert_eq!(parse(":plain").unwrap(), Literal::Symbol("plain".into()));
        assert_eq!(
            parse("[1, 'a', [], {}, ]").unwrap(),
            Literal::Array(vec![
                Literal::Number("1".into()),
                s("a"),
                Literal::Array(vec![]),
                Literal::Hash(vec![]),
            ])
        );
        let h = parse(
            "{'provider' => 'AWS', region: 'eu', :x => [true, nil], 'main' => {'password' => 'p', 'hosts' => ['a', 'b']}}",
        )
        .unwrap();
        let Literal::Hash(pairs) = &h else {
            panic!("{h:?}")
        };
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[1].0, Literal::Symbol("region".into()));
        assert_eq!(h.leaves(), ["AWS", "eu", "p", "a", "b"]);
    }

    #[test]
    fn code_is_refused_with_its_position() {
        for (text, at) in [
            ("'a'; system('x'); 'b'", 4),
            ("'a' + `id`", 5),
            ("`id`", 1),
            ("\"#{x}\"", 2),
            ("\"#@x\"", 2),
            ("\"#$x\"", 2),
            ("[1, foo]", 5),
            ("{'a' => File.read('/etc/shadow')}", 9),
            ("'unclosed", 1),
            ("\"unclosed", 1),
            ("[1, 2", 6),
            ("{'a' => 1", 10),
            ("{'a' 1}", 6),
            ("1 2", 3),
            ("'a' __END__", 5),
            ("'a' # comment", 5),
            ("# comment", 1),
            ("%w[a b]", 1),
            ("<<~EOS", 1),
            ("1.foo", 2),
            ("12abc", 3),
            ("Foo", 1),
            ("system('id')", 1),
            ("exit", 1),
            (":", 2),
            ("'a\nb'", 3),
            ("\"\\M-a\"", 3),
            ("\"\\u12\"", 6),
            ("", 1),
            ("[1,,2]", 4),
            ("{a: 1 b: 2}", 7),
            ("::Kernel", 2),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.at, at, "{text:?}: {e}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        parse(&ok).unwrap();
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse(&deep).unwrap_err();
        assert_eq!(e.at, MAX_DEPTH + 1);
        assert!(e.why.contains("deeper"), "{e}");
    }

    #[test]
    fn bare_words_and_quoting() {
        for w in [
            "UTC",
            "Europe/Paris",
            "smtp.example.com",
            "a@b.c",
            "__END__",
            "x-1",
        ] {
            assert!(is_bare_word(w), "{w}");
        }
        for w in [
            "true", "nil", "1a", "a b", "it's", "a;b", "a`b", "a#b", "'a'", "a(b)", "",
        ] {
            assert!(!is_bare_word(w), "{w}");
        }
        assert_eq!(quote(r"it's \ "), r"'it\'s \\ '");
        assert_eq!(parse(&quote(r"it's \ ")).unwrap(), s(r"it's \ "));
    }

    /// Random texts over the characters that matter: the parser never panics, what it
    /// accepts stays refused with anything after it, and a bare word quoted reads back.
    #[test]
    fn random_texts_never_panic_and_nothing_follows_a_literal() {
        const ALPHABET: &[char] = &[
            '\'', '"', '[', ']', '{', '}', ',', ':', '=', '>', '#', '$', '@', '\\', ' ', 'u', '0',
            '1', 'e', '.', '-', '_', 'a', 'x', '%', '<', '`', ';', '\t', '\n', 'é',
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..50_000 {
            let len = (next() % 16) as usize;
            let text: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            if let Ok(lit) = parse(&text) {
                accepted += 1;
                assert!(parse(&format!("{text}; x")).is_err(), "{text:?}");
                assert!(
                    !text.contains('`')
                        || matches!(lit, Literal::Str(_) | Literal::Array(_) | Literal::Hash(_))
                );
            }
            if is_bare_word(&text) {
                assert_eq!(parse(&quote(&text)), Ok(Literal::Str(text.clone())));
            }
        }
        assert!(accepted > 100, "only {accepted} texts parsed");
    }

    #[test]
    fn errors_never_hold_the_text() {
        let e = parse("'PLANTED-value'; x").unwrap_err();
        assert!(!e.to_string().contains("PLANTED"), "{e}");
    }
}
