//! Reads `providers` and `providers_ips` rows out of a SQL dump: `mysqldump` / `mariadb-dump`
//! output, a HeidiSQL export, or hand-written SQL like the seed's.
//!
//! Only `INSERT` / `REPLACE ... VALUES (...), (...)` into the two tables are read; every other
//! statement (`CREATE TABLE` of other tables, `SET`, `LOCK TABLES`, `/*!40101 ... */`
//! conditional comments, routines between `DELIMITER ;;` lines) is lexed, so quotes and
//! comments cannot hide a statement boundary, and skipped. The column order of a tuple comes
//! from the `INSERT`'s column list, else from the dump's `CREATE TABLE` of that table, else
//! from the seed's schema. String literals follow MariaDB's default escaping (backslash
//! escapes and doubled quotes). The input is bounded ([`MAX_SQL_BYTES`])
//! before anything is read; every row-level error is collected, with the line of the tuple.
//!
//! Why a reader of our own and not a SQL parser crate (`sqlparser`): a dump is a client
//! script, not SQL a server parses. `DELIMITER` (around routines and triggers) is a client
//! command, which `sqlparser` does not handle; other tables' rows may hold binary strings that
//! are not UTF-8, where `sqlparser` takes `&str`; it stops at the first error, where the export
//! must report every bad row with its line; and it would build the AST of every table of a
//! dump of up to [`MAX_SQL_BYTES`] to keep two. What this reader needs is a lexer that cannot
//! be fooled about statement boundaries, and the `INSERT ... VALUES` tuples of two tables.

use std::collections::HashMap;

use super::{MAX_ROWS, MAX_SQL_BYTES, ParseError, ParseErrorKind, Provider, ProviderIp, Tables, value};

/// Column order of the seed's schema (`tests/vectors/providers/seed.sql`), for dumps without a
/// `CREATE TABLE` or column list.
const PROVIDERS_COLUMNS: &[&str] = &[
    "id",
    "providername",
    "currency_id",
    "noncli_prefix",
    "cli_prefix",
    "premcli_prefix",
    "cli_allowed",
    "dynamic_calls",
    "append_plus",
    "dynamic_calls_caller_id",
];
const IPS_COLUMNS: &[&str] = &["id", "provider_id", "ipaddress", "domainname", "direction", "proto"];

/// Parses a dump. Returns the rows of both tables, or every error found.
pub fn parse(input: &[u8]) -> Result<Tables, Vec<ParseError>> {
    if input.len() > MAX_SQL_BYTES {
        return Err(vec![ParseError::new(1, ParseErrorKind::TooLarge { size: input.len(), max: MAX_SQL_BYTES })]);
    }
    let mut p = Parser {
        lx: Lexer::new(input),
        peeked: None,
        last_delim: false,
        columns: HashMap::new(),
        tables: Tables::default(),
        errors: Vec::new(),
    };
    if let Err(e) = p.run() {
        p.errors.push(e);
    }
    if p.errors.is_empty() { Ok(p.tables) } else { Err(p.errors) }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An unquoted word: keyword, identifier or number.
    Word(String),
    /// A `backquoted` identifier.
    Ident(String),
    /// A '...' or "..." string literal, unescaped (bytes: other tables may hold binary).
    Str(Vec<u8>),
    Punct(u8),
    /// The statement delimiter (`;` unless a `DELIMITER` line changed it).
    Delim,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: u32,
}

struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    line: u32,
    delimiter: Vec<u8>,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl<'a> Lexer<'a> {
    fn new(src: &'a [u8]) -> Lexer<'a> {
        Lexer { src, pos: 0, line: 1, delimiter: b";".to_vec() }
    }

    fn peek_byte(&self, ahead: usize) -> Option<u8> {
        self.src.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek_byte(0)?;
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
        }
        Some(b)
    }

    /// Skips whitespace and comments (`-- `, `#`, `/* */`, and `/*! */`, whose content only a
    /// MySQL server of the right version would execute; dumps put `SET`s there).
    fn skip_trivia(&mut self) -> Result<(), ParseError> {
        loop {
            match (self.peek_byte(0), self.peek_byte(1), self.peek_byte(2)) {
                (Some(b), _, _) if b.is_ascii_whitespace() => {
                    self.bump();
                }
                (Some(b'#'), _, _) => self.skip_line(),
                (Some(b'-'), Some(b'-'), c) if c.is_none_or(|c| c.is_ascii_whitespace() || c.is_ascii_control()) => {
                    self.skip_line()
                }
                (Some(b'/'), Some(b'*'), _) => {
                    let line = self.line;
                    self.pos += 2;
                    loop {
                        match (self.peek_byte(0), self.peek_byte(1)) {
                            (Some(b'*'), Some(b'/')) => {
                                self.pos += 2;
                                break;
                            }
                            (Some(_), _) => {
                                self.bump();
                            }
                            (None, _) => {
                                return Err(ParseError::new(line, ParseErrorKind::Unterminated { what: "comment" }));
                            }
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(b) = self.bump() {
            if b == b'\n' {
                break;
            }
        }
    }

    /// The rest of the current line (for `DELIMITER x`).
    fn rest_of_line(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = self.peek_byte(0) {
            if b == b'\n' {
                break;
            }
            out.push(b);
            self.pos += 1;
        }
        out
    }

    fn at_delimiter(&self) -> bool {
        self.src.get(self.pos..).is_some_and(|rest| rest.starts_with(&self.delimiter))
    }

    fn next(&mut self) -> Result<Option<Token>, ParseError> {
        self.skip_trivia()?;
        let line = self.line;
        let Some(b) = self.peek_byte(0) else { return Ok(None) };
        let tok = if self.at_delimiter() {
            self.pos += self.delimiter.len();
            Tok::Delim
        } else if b == b'\'' || b == b'"' {
            Tok::Str(self.quoted(b, "string")?)
        } else if b == b'`' {
            let raw = self.quoted(b'`', "identifier")?;
            Tok::Ident(String::from_utf8_lossy(&raw).into_owned())
        } else if is_word_byte(b) {
            let start = self.pos;
            let numeric = b.is_ascii_digit();
            while let Some(c) = self.peek_byte(0) {
                // A number keeps its decimal point: `1.5` is one word, `db.tbl` three tokens.
                if is_word_byte(c) || (numeric && c == b'.') {
                    self.pos += 1;
                } else {
                    break;
                }
            }
            let word = self.src.get(start..self.pos).unwrap_or_default();
            Tok::Word(String::from_utf8_lossy(word).into_owned())
        } else {
            self.bump();
            Tok::Punct(b)
        };
        Ok(Some(Token { tok, line }))
    }

    /// A quoted literal starting at the opening quote `q`. Backslash escapes apply to strings
    /// (MariaDB's default `sql_mode`), not to `identifiers`; a doubled quote is a quote.
    fn quoted(&mut self, q: u8, what: &'static str) -> Result<Vec<u8>, ParseError> {
        let line = self.line;
        self.bump();
        let mut out = Vec::new();
        loop {
            let Some(b) = self.bump() else { return Err(ParseError::new(line, ParseErrorKind::Unterminated { what })) };
            if b == q {
                if self.peek_byte(0) == Some(q) {
                    self.bump();
                    out.push(q);
                    continue;
                }
                return Ok(out);
            }
            if b == b'\\' && q != b'`' {
                let Some(e) = self.bump() else {
                    return Err(ParseError::new(line, ParseErrorKind::Unterminated { what }));
                };
                match e {
                    b'0' => out.push(0),
                    b'b' => out.push(8),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'Z' => out.push(0x1a),
                    // `\%` and `\_` keep their backslash (they are LIKE escapes).
                    b'%' | b'_' => out.extend_from_slice(&[b'\\', e]),
                    other => out.push(other),
                }
                continue;
            }
            out.push(b);
        }
    }
}

/// Which of the two tables a statement is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Table {
    Providers,
    Ips,
}

impl Table {
    fn from_name(name: &str) -> Option<Table> {
        if name.eq_ignore_ascii_case("providers") {
            Some(Table::Providers)
        } else if name.eq_ignore_ascii_case("providers_ips") {
            Some(Table::Ips)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Table::Providers => "providers",
            Table::Ips => "providers_ips",
        }
    }

    fn default_columns(self) -> &'static [&'static str] {
        match self {
            Table::Providers => PROVIDERS_COLUMNS,
            Table::Ips => IPS_COLUMNS,
        }
    }

    fn needed(self) -> &'static [&'static str] {
        match self {
            Table::Providers => &["id", "providername"],
            Table::Ips => IPS_COLUMNS,
        }
    }

    /// Columns read when present (a dump of an older schema may lack them): the caller-ID
    /// policy. Absent reads as NULL.
    fn optional(self) -> &'static [&'static str] {
        match self {
            Table::Providers => &["cli_allowed", "dynamic_calls_caller_id"],
            Table::Ips => &[],
        }
    }
}

/// One value of a tuple, as far as the allowlist cares.
#[derive(Debug, Clone)]
enum Raw {
    Null,
    Text(String),
    /// Something this reader does not evaluate (an expression, binary data): an error only if
    /// the column is one the allowlist needs.
    Unsupported(String),
}

struct Parser<'a> {
    lx: Lexer<'a>,
    peeked: Option<Token>,
    /// Whether the last token taken was the delimiter (so error recovery does not skip the
    /// next statement too).
    last_delim: bool,
    /// Column lists from the dump's `CREATE TABLE`s.
    columns: HashMap<Table, Vec<String>>,
    tables: Tables,
    errors: Vec<ParseError>,
}

fn word_is(t: &Tok, kw: &str) -> bool {
    matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => w.clone(),
        Tok::Ident(i) => format!("`{i}`"),
        Tok::Str(s) => format!("'{}'", String::from_utf8_lossy(s)),
        Tok::Punct(p) => char::from(*p).to_string(),
        Tok::Delim => "end of statement".to_owned(),
    }
}

impl Parser<'_> {
    fn next(&mut self) -> Result<Option<Token>, ParseError> {
        let t = match self.peeked.take() {
            Some(t) => Some(t),
            None => self.lx.next()?,
        };
        self.last_delim = t.as_ref().is_none_or(|t| t.tok == Tok::Delim);
        Ok(t)
    }

    fn peek(&mut self) -> Result<Option<&Token>, ParseError> {
        if self.peeked.is_none() {
            self.peeked = self.lx.next()?;
        }
        Ok(self.peeked.as_ref())
    }

    fn syntax(line: u32, msg: String) -> ParseError {
        ParseError::new(line, ParseErrorKind::Syntax(msg))
    }

    /// Consumes tokens up to and including the next delimiter (or the end).
    fn skip_statement(&mut self) -> Result<(), ParseError> {
        while let Some(t) = self.next()? {
            if t.tok == Tok::Delim {
                break;
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), ParseError> {
        loop {
            self.lx.skip_trivia()?;
            // DELIMITER is a client command: the rest of its line is the new delimiter.
            if self.peeked.is_none() && self.at_word("DELIMITER") {
                self.lx.pos += "DELIMITER".len();
                let line = self.lx.line;
                let d = self.lx.rest_of_line();
                let d = d.trim_ascii();
                if d.is_empty() {
                    return Err(Self::syntax(line, "DELIMITER without a delimiter".into()));
                }
                self.lx.delimiter = d.to_vec();
                continue;
            }
            let Some(first) = self.next()? else { return Ok(()) };
            let result = if word_is(&first.tok, "INSERT") || word_is(&first.tok, "REPLACE") {
                self.insert(first.line)
            } else if word_is(&first.tok, "CREATE") {
                self.create(first.line)
            } else if first.tok == Tok::Delim {
                Ok(())
            } else {
                self.skip_statement()
            };
            if let Err(e) = result {
                // A lexical error ends the parse; a statement-level one skips the statement.
                if matches!(e.kind, ParseErrorKind::Unterminated { .. } | ParseErrorKind::TooManyRows { .. }) {
                    return Err(e);
                }
                self.errors.push(e);
                if !self.last_delim {
                    self.skip_statement()?;
                }
            }
        }
    }

    fn at_word(&self, kw: &str) -> bool {
        let rest = self.lx.src.get(self.lx.pos..).unwrap_or_default();
        rest.len() >= kw.len()
            && rest.get(..kw.len()).is_some_and(|w| w.eq_ignore_ascii_case(kw.as_bytes()))
            && rest.get(kw.len()).is_none_or(|b| !is_word_byte(*b))
    }

    /// `[db.]table`: returns the table's name.
    fn table_name(&mut self, line: u32) -> Result<String, ParseError> {
        let mut name = self.name(line)?;
        while matches!(self.peek()?, Some(Token { tok: Tok::Punct(b'.'), .. })) {
            self.next()?;
            name = self.name(line)?;
        }
        Ok(name)
    }

    fn name(&mut self, line: u32) -> Result<String, ParseError> {
        match self.next()? {
            Some(Token { tok: Tok::Ident(s) | Tok::Word(s), .. }) => Ok(s),
            // ANSI_QUOTES dumps quote identifiers with ".
            Some(Token { tok: Tok::Str(s), .. }) => Ok(String::from_utf8_lossy(&s).into_owned()),
            Some(t) => Err(Self::syntax(t.line, format!("expected a name, found {}", describe(&t.tok)))),
            None => Err(Self::syntax(line, "expected a name, found the end of input".into())),
        }
    }

    fn expect_punct(&mut self, p: u8, line: u32) -> Result<u32, ParseError> {
        match self.next()? {
            Some(Token { tok: Tok::Punct(c), line }) if c == p => Ok(line),
            Some(t) => Err(Self::syntax(t.line, format!("expected {:?}, found {}", char::from(p), describe(&t.tok)))),
            None => Err(Self::syntax(line, format!("expected {:?}, found the end of input", char::from(p)))),
        }
    }

    /// `(a, b, c)` of names.
    fn name_list(&mut self, line: u32) -> Result<Vec<String>, ParseError> {
        self.expect_punct(b'(', line)?;
        let mut names = Vec::new();
        loop {
            names.push(self.name(line)?);
            match self.next()? {
                Some(Token { tok: Tok::Punct(b','), .. }) => continue,
                Some(Token { tok: Tok::Punct(b')'), .. }) => return Ok(names),
                Some(t) => {
                    return Err(Self::syntax(
                        t.line,
                        format!("expected ',' or ')' in a column list, found {}", describe(&t.tok)),
                    ));
                }
                None => return Err(Self::syntax(line, "unterminated column list".into())),
            }
        }
    }

    /// `CREATE [OR REPLACE] [TEMPORARY] TABLE [IF NOT EXISTS] name (...)`: remembers the
    /// column order of the two tables.
    fn create(&mut self, line: u32) -> Result<(), ParseError> {
        loop {
            match self.next()? {
                Some(t) if word_is(&t.tok, "TABLE") => break,
                Some(t) if word_is(&t.tok, "OR") || word_is(&t.tok, "REPLACE") || word_is(&t.tok, "TEMPORARY") => {
                    continue;
                }
                Some(t) if t.tok == Tok::Delim => return Ok(()),
                Some(_) => return self.skip_statement(),
                None => return Ok(()),
            }
        }
        if self.peek()?.is_some_and(|t| word_is(&t.tok, "IF")) {
            for kw in ["IF", "NOT", "EXISTS"] {
                match self.next()? {
                    Some(t) if word_is(&t.tok, kw) => {}
                    _ => return Err(Self::syntax(line, "malformed CREATE TABLE ... IF NOT EXISTS".into())),
                }
            }
        }
        let name = self.table_name(line)?;
        let Some(table) = Table::from_name(&name) else { return self.skip_statement() };
        self.expect_punct(b'(', line)?;
        let mut cols = Vec::new();
        let mut depth = 0usize;
        let mut at_def_start = true;
        loop {
            let Some(t) = self.next()? else {
                return Err(Self::syntax(line, format!("unterminated CREATE TABLE `{name}`")));
            };
            match &t.tok {
                Tok::Delim => return Err(Self::syntax(t.line, format!("unterminated CREATE TABLE `{name}`"))),
                Tok::Punct(b'(') => depth += 1,
                Tok::Punct(b')') if depth == 0 => break,
                Tok::Punct(b')') => depth -= 1,
                Tok::Punct(b',') if depth == 0 => {
                    at_def_start = true;
                    continue;
                }
                Tok::Ident(s) | Tok::Word(s) if at_def_start => {
                    const NOT_COLUMNS: &[&str] = &[
                        "PRIMARY",
                        "KEY",
                        "INDEX",
                        "UNIQUE",
                        "CONSTRAINT",
                        "FOREIGN",
                        "FULLTEXT",
                        "SPATIAL",
                        "CHECK",
                        "PERIOD",
                    ];
                    let keyword =
                        matches!(t.tok, Tok::Word(_)) && NOT_COLUMNS.iter().any(|k| s.eq_ignore_ascii_case(k));
                    if !keyword {
                        cols.push(s.clone());
                    }
                }
                _ => {}
            }
            at_def_start = false;
        }
        self.columns.insert(table, cols);
        self.skip_statement()
    }

    /// `INSERT|REPLACE [modifiers] [INTO] name [(cols)] VALUES (...), (...) [ON DUPLICATE ...]`.
    fn insert(&mut self, line: u32) -> Result<(), ParseError> {
        while self.peek()?.is_some_and(|t| {
            ["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"].iter().any(|k| word_is(&t.tok, k))
        }) {
            self.next()?;
        }
        let name = self.table_name(line)?;
        let Some(table) = Table::from_name(&name) else { return self.skip_statement() };
        let columns: Vec<String> = if matches!(self.peek()?, Some(Token { tok: Tok::Punct(b'('), .. })) {
            self.name_list(line)?
        } else if let Some(c) = self.columns.get(&table) {
            c.clone()
        } else {
            table.default_columns().iter().map(|s| (*s).to_owned()).collect()
        };
        match self.next()? {
            Some(t) if word_is(&t.tok, "VALUES") || word_is(&t.tok, "VALUE") => {}
            Some(t) => {
                return Err(Self::syntax(
                    t.line,
                    format!(
                        "INSERT into `{}`: only the VALUES form is supported, found {}",
                        table.name(),
                        describe(&t.tok)
                    ),
                ));
            }
            None => return Err(Self::syntax(line, "INSERT without VALUES".into())),
        }
        // Positions of the needed columns in a tuple, then of the optional ones (`None`: absent).
        let mut index = Vec::new();
        for need in table.needed() {
            match columns.iter().position(|c| c.eq_ignore_ascii_case(need)) {
                Some(i) => index.push(Some(i)),
                None => {
                    return Err(ParseError::new(
                        line,
                        ParseErrorKind::MissingColumn { table: table.name(), column: need },
                    ));
                }
            }
        }
        for opt in table.optional() {
            index.push(columns.iter().position(|c| c.eq_ignore_ascii_case(opt)));
        }
        loop {
            let tline = self.expect_punct(b'(', line)?;
            let values = self.tuple(tline)?;
            if values.len() != columns.len() {
                self.errors.push(ParseError::new(
                    tline,
                    ParseErrorKind::Arity { table: table.name(), got: values.len(), expected: columns.len() },
                ));
            } else {
                let picked: Vec<&Raw> =
                    index.iter().map(|i| i.and_then(|i| values.get(i)).unwrap_or(&Raw::Null)).collect();
                self.row(table, tline, &picked)?;
            }
            match self.next()? {
                Some(Token { tok: Tok::Punct(b','), .. }) => continue,
                Some(Token { tok: Tok::Delim, .. }) | None => return Ok(()),
                Some(t) if word_is(&t.tok, "ON") => return self.skip_statement(),
                Some(t) => {
                    return Err(Self::syntax(
                        t.line,
                        format!("expected ',' or the end of the INSERT after a row, found {}", describe(&t.tok)),
                    ));
                }
            }
        }
    }

    /// The values of one tuple, after its `(`; consumes the closing `)`.
    fn tuple(&mut self, line: u32) -> Result<Vec<Raw>, ParseError> {
        let mut values = Vec::new();
        let mut cur: Vec<Tok> = Vec::new();
        let mut depth = 0usize;
        loop {
            let Some(t) = self.next()? else { return Err(Self::syntax(line, "row not closed with ')'".into())) };
            match t.tok {
                Tok::Delim => {
                    return Err(Self::syntax(t.line, "row not closed with ')' before the end of the statement".into()));
                }
                Tok::Punct(b'(') => {
                    depth += 1;
                    cur.push(t.tok);
                }
                Tok::Punct(b')') if depth > 0 => {
                    depth -= 1;
                    cur.push(t.tok);
                }
                Tok::Punct(c @ (b')' | b',')) => {
                    if cur.is_empty() {
                        return Err(Self::syntax(t.line, "empty value in a row".into()));
                    }
                    values.push(raw(std::mem::take(&mut cur)));
                    if c == b')' {
                        return Ok(values);
                    }
                }
                other => cur.push(other),
            }
        }
    }

    /// Converts one tuple's needed values (in [`Table::needed`] order) and stores the row.
    fn row(&mut self, table: Table, line: u32, v: &[&Raw]) -> Result<(), ParseError> {
        let tname = table.name();
        let rows = match table {
            Table::Providers => self.tables.providers.len(),
            Table::Ips => self.tables.ips.len(),
        };
        if rows >= MAX_ROWS {
            return Err(ParseError::new(line, ParseErrorKind::TooManyRows { table: tname, max: MAX_ROWS }));
        }
        let mut errs = Vec::new();
        // `None`: a value this reader cannot evaluate (already reported).
        let cols: Vec<Option<Option<&str>>> = table
            .needed()
            .iter()
            .chain(table.optional())
            .enumerate()
            .map(|(i, name)| match v.get(i) {
                Some(Raw::Text(s)) => Some(Some(s.as_str())),
                Some(Raw::Null) | None => Some(None),
                Some(Raw::Unsupported(s)) => {
                    errs.push(ParseErrorKind::BadValue {
                        table: tname,
                        column: name,
                        value: s.clone(),
                        expected: "a literal",
                    });
                    None
                }
            })
            .collect();
        let col = |i: usize| cols.get(i).copied().flatten();
        match table {
            Table::Providers => {
                let id = field(&mut errs, col(0), |v| value::uint(tname, "id", v));
                let name = field(&mut errs, col(1), |v| value::text(tname, "providername", v));
                // `None`: a value this reader cannot evaluate (reported when `cols` was built).
                let cli = match (cols.get(2).copied().flatten(), cols.get(3).copied().flatten()) {
                    (Some(a), Some(n)) => value::cli(tname, a, n).map_err(|e| errs.push(e)).ok(),
                    _ => None,
                };
                if let (Some(id), Some(name), Some(cli)) = (id, name, cli)
                    && errs.is_empty()
                {
                    self.tables.providers.push(Provider { id, name, cli, line: Some(line) });
                }
            }
            Table::Ips => {
                let id = field(&mut errs, col(0), |v| value::uint(tname, "id", v));
                let provider_id = field(&mut errs, col(1), |v| value::uint(tname, "provider_id", v));
                let ipaddress = field(&mut errs, col(2), |v| value::ipaddress(tname, v));
                let domainname = field(&mut errs, col(3), |v| value::text(tname, "domainname", v));
                let direction = field(&mut errs, col(4), |v| value::direction(tname, v));
                let proto = field(&mut errs, col(5), |v| value::proto(tname, v));
                if let (Some(id), Some(provider_id), Some(ipaddress), Some(domainname), Some(direction), Some(proto)) =
                    (id, provider_id, ipaddress, domainname, direction, proto)
                    && errs.is_empty()
                {
                    self.tables.ips.push(ProviderIp {
                        id,
                        provider_id,
                        ipaddress,
                        domainname,
                        direction,
                        proto,
                        line: Some(line),
                    });
                }
            }
        }
        self.errors.extend(errs.into_iter().map(|k| ParseError::new(line, k)));
        Ok(())
    }
}

/// Converts one column's value, recording the error; `v` is `None` when the value was already
/// reported as unreadable.
fn field<T>(
    errs: &mut Vec<ParseErrorKind>,
    v: Option<Option<&str>>,
    f: impl FnOnce(Option<&str>) -> Result<T, ParseErrorKind>,
) -> Option<T> {
    f(v?).map_err(|e| errs.push(e)).ok()
}

/// Interprets a value's tokens: a literal, `NULL`, a signed number, or `_charset 'string'`.
fn raw(toks: Vec<Tok>) -> Raw {
    match toks.as_slice() {
        [Tok::Word(w)] if w.eq_ignore_ascii_case("NULL") => Raw::Null,
        [Tok::Word(w)] if w.bytes().all(|b| b.is_ascii_digit() || b == b'.') => Raw::Text(w.clone()),
        [Tok::Punct(b'-'), Tok::Word(w)] if w.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            Raw::Text(format!("-{w}"))
        }
        [Tok::Punct(b'+'), Tok::Word(w)] if w.bytes().all(|b| b.is_ascii_digit() || b == b'.') => Raw::Text(w.clone()),
        [Tok::Str(s)] => text(s),
        [Tok::Word(cs), Tok::Str(s)] if cs.starts_with('_') => text(s),
        other => Raw::Unsupported(other.iter().map(describe).collect::<Vec<_>>().join(" ")),
    }
}

fn text(s: &[u8]) -> Raw {
    match std::str::from_utf8(s) {
        Ok(t) => Raw::Text(t.to_owned()),
        Err(_) => Raw::Unsupported(format!("'{}' (not UTF-8)", String::from_utf8_lossy(s))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::{Direction, Proto};

    fn ok(s: &str) -> Tables {
        parse(s.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn errs(s: &str) -> Vec<String> {
        parse(s.as_bytes()).expect_err("must fail").iter().map(ToString::to_string).collect()
    }

    #[test]
    fn mysqldump_style_with_create_table_comments_and_locks() {
        let dump = "-- MariaDB dump 10.19\n\
            /*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;\n\
            DROP TABLE IF EXISTS `providers_ips`;\n\
            CREATE TABLE `providers_ips` (\n  `proto` enum('SIP','IAX2','H323') NOT NULL DEFAULT 'SIP',\n  `id` int(11) unsigned NOT NULL AUTO_INCREMENT,\n  `provider_id` int(11) unsigned NOT NULL DEFAULT 0,\n  `ipaddress` int(11) unsigned NOT NULL DEFAULT 2130706433,\n  `domainname` varchar(50) DEFAULT NULL,\n  `direction` enum('IN','OUT','IN/OUT') NOT NULL DEFAULT 'IN',\n  PRIMARY KEY (`id`),\n  KEY `FK` (`provider_id`),\n  CONSTRAINT `FK` FOREIGN KEY (`provider_id`) REFERENCES `providers` (`id`)\n) ENGINE=InnoDB COMMENT='a;b';\n\
            LOCK TABLES `providers_ips` WRITE;\n\
            /*!40000 ALTER TABLE `providers_ips` DISABLE KEYS */;\n\
            INSERT INTO `providers_ips` VALUES ('SIP',1,8,2130706433,'sbc.voxbeam.com','OUT'),('IAX2',2,8,1607694320,NULL,'IN');\n\
            UNLOCK TABLES;\n";
        let t = ok(dump);
        assert_eq!(t.ips.len(), 2);
        assert_eq!(
            t.ips[0],
            ProviderIp {
                id: 1,
                provider_id: 8,
                ipaddress: 2130706433,
                domainname: Some("sbc.voxbeam.com".into()),
                direction: Direction::Out,
                proto: Proto::Sip,
                line: Some(17)
            }
        );
        assert_eq!(t.ips[1].proto, Proto::Other("IAX2".into()));
        assert_eq!(t.ips[1].domainname, None);
    }

    #[test]
    fn column_list_escapes_qualified_names_and_other_tables() {
        let t = ok("INSERT INTO other VALUES ('x;y', 'it''s', \"a\\\";\");\n\
            INSERT IGNORE INTO db.`providers` (`providername`, id) VALUES ('O\\'Neil\\tTel', 3), (NULL, 4);\n\
            # comment ; here\n\
            REPLACE providers_ips (id,provider_id,ipaddress,domainname,direction,proto) VALUE (9, 3, '1', _utf8mb4'h', 'in/out', 'sip')");
        assert_eq!(
            t.providers,
            vec![
                Provider { id: 3, name: Some("O'Neil\tTel".into()), cli: None, line: Some(2) },
                Provider { id: 4, name: None, cli: None, line: Some(2) }
            ]
        );
        assert_eq!(t.ips[0].direction, Direction::InOut);
        assert_eq!(t.ips[0].ipaddress, 1);
    }

    #[test]
    fn delimiter_blocks_are_skipped_even_with_semicolons_inside() {
        let t = ok(
            "DELIMITER ;;\nCREATE PROCEDURE p() BEGIN INSERT INTO x VALUES (1); SELECT 2; END ;;\nDELIMITER ;\nINSERT INTO providers VALUES (5,'A',96,NULL,NULL,NULL,'N','N',1,NULL);",
        );
        assert_eq!(t.providers.len(), 1);
    }

    #[test]
    fn malformed_rows_are_reported_with_their_line_and_all_collected() {
        let e = errs(
            "INSERT INTO providers_ips VALUES\n(1,8,2130706433,'a','OUT','SIP'),\n(2,8,'x',NULL,'IN','SIP'),\n(3,8,1,NULL,'SIDEWAYS','SIP'),\n(4,8,1,NULL,'IN');\n",
        );
        assert_eq!(
            e,
            vec![
                "line 3: `providers_ips`.`ipaddress`: \"x\" is not an unsigned 32-bit integer or an IPv4 address",
                "line 4: `providers_ips`.`direction`: \"SIDEWAYS\" is not IN, OUT or IN/OUT",
                "line 5: `providers_ips` row has 5 values, expected 6",
            ]
        );
        let e = errs(
            "INSERT INTO providers_ips VALUES (1,8,-5,NULL,'IN','SIP'),(2,8,4294967296,NULL,'IN','SIP'),(3,8,NOW(),NULL,'IN','SIP');",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[2].contains("NOW ( )"), "{e:?}");
    }

    #[test]
    fn unterminated_string_and_comment_and_unclosed_row() {
        assert_eq!(errs("INSERT INTO providers VALUES (1,'abc);\n"), vec!["line 1: unterminated string"]);
        assert_eq!(errs("SELECT 1;\n/* open"), vec!["line 2: unterminated comment"]);
        let e = errs(
            "INSERT INTO providers_ips VALUES (1,8,1,NULL,'IN','SIP';\nINSERT INTO providers_ips VALUES (2,8,1,NULL,'IN');",
        );
        assert_eq!(
            e,
            vec![
                "line 1: row not closed with ')' before the end of the statement",
                "line 2: `providers_ips` row has 5 values, expected 6"
            ]
        );
    }

    #[test]
    fn missing_column_and_unsupported_insert_forms() {
        assert_eq!(
            errs("INSERT INTO providers_ips (id, provider_id) VALUES (1, 2);"),
            vec!["line 1: `providers_ips` has no column `ipaddress`"]
        );
        assert!(errs("INSERT INTO providers_ips SET id=1;")[0].contains("only the VALUES form"));
    }

    #[test]
    fn input_is_bounded_before_parsing() {
        let big = vec![b' '; MAX_SQL_BYTES + 1];
        assert!(matches!(parse(&big).unwrap_err()[0].kind, ParseErrorKind::TooLarge { .. }));
    }
}
