//! Reads `providers_ips` joined with the provider's name from one CSV file (RFC 4180).
//!
//! The first non-empty line is the header; it must name `id`, `provider_id`, `provider_name`
//! (or `providername`), `ipaddress`, `domainname`, `direction` and `proto`, in any order, each
//! once; other columns are ignored. Fields may be quoted with `"` (a doubled `""` inside is a
//! quote; commas and line breaks inside quotes are data). An unquoted `\N` (MariaDB's
//! `INTO OUTFILE`), an unquoted `NULL` or an empty field is NULL. A UTF-8 byte order mark and
//! CRLF line ends are accepted; empty lines are skipped. `ipaddress` is the INT or a dotted
//! quad. Every row that names a provider must give it the same name. The input is bounded
//! ([`MAX_CSV_BYTES`]) before parsing; every row error is collected with
//! its line.

use std::collections::HashMap;

use super::{MAX_CSV_BYTES, MAX_ROWS, ParseError, ParseErrorKind, Provider, ProviderIp, Tables, value};

const TABLE: &str = "csv";
const COLUMNS: [&str; 7] = ["id", "provider_id", "provider_name", "ipaddress", "domainname", "direction", "proto"];

/// Parses the CSV. Returns the rows (providers taken from `provider_id` + `provider_name`), or
/// every error found.
pub fn parse(input: &[u8]) -> Result<Tables, Vec<ParseError>> {
    if input.len() > MAX_CSV_BYTES {
        return Err(vec![ParseError::new(1, ParseErrorKind::TooLarge { size: input.len(), max: MAX_CSV_BYTES })]);
    }
    let text = match std::str::from_utf8(input) {
        Ok(t) => t,
        Err(e) => {
            let line = line_of(input.get(..e.valid_up_to()).unwrap_or_default());
            return Err(vec![ParseError::new(line, ParseErrorKind::Syntax("not valid UTF-8".into()))]);
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rd = Reader { chars: text.char_indices().peekable(), line: 1 };
    let mut errors = Vec::new();
    let mut tables = Tables::default();

    // Header.
    let header = loop {
        match rd.record() {
            Ok(Some(r)) if r.is_blank() => continue,
            Ok(Some(r)) => break r,
            Ok(None) => {
                return Err(vec![ParseError::new(1, ParseErrorKind::Syntax("empty CSV: no header line".into()))]);
            }
            Err(e) => return Err(vec![e]),
        }
    };
    let mut index = [usize::MAX; COLUMNS.len()];
    for (i, f) in header.fields.iter().enumerate() {
        let name = f.text.trim().to_ascii_lowercase();
        let name = if name == "providername" { "provider_name".to_owned() } else { name };
        if let Some(c) = COLUMNS.iter().position(|c| *c == name)
            && let Some(slot) = index.get_mut(c)
        {
            if *slot != usize::MAX {
                errors.push(ParseError::new(
                    header.line,
                    ParseErrorKind::Syntax(format!("header names column `{name}` twice")),
                ));
            }
            *slot = i;
        }
    }
    for (c, &i) in COLUMNS.iter().zip(index.iter()) {
        if i == usize::MAX {
            errors.push(ParseError::new(header.line, ParseErrorKind::MissingColumn { table: TABLE, column: c }));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    // Rows.
    let mut names: HashMap<u32, (Option<String>, u32)> = HashMap::new();
    loop {
        let rec = match rd.record() {
            Ok(Some(r)) if r.is_blank() => continue,
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                let fatal = matches!(e.kind, ParseErrorKind::Unterminated { .. });
                errors.push(e);
                if fatal {
                    break;
                }
                continue;
            }
        };
        if tables.ips.len() >= MAX_ROWS {
            errors
                .push(ParseError::new(rec.line, ParseErrorKind::TooManyRows { table: "providers_ips", max: MAX_ROWS }));
            break;
        }
        if rec.fields.len() != header.fields.len() {
            errors.push(ParseError::new(
                rec.line,
                ParseErrorKind::Arity { table: TABLE, got: rec.fields.len(), expected: header.fields.len() },
            ));
            continue;
        }
        let col = |c: usize| index.get(c).and_then(|&i| rec.fields.get(i)).and_then(Field::value);
        let mut errs = Vec::new();
        let id = keep(&mut errs, value::uint("providers_ips", "id", col(0)));
        let provider_id = keep(&mut errs, value::uint("providers_ips", "provider_id", col(1)));
        let provider_name = keep(&mut errs, value::text("providers", "providername", col(2)));
        let ipaddress = keep(&mut errs, value::ipaddress("providers_ips", col(3)));
        let domainname = keep(&mut errs, value::text("providers_ips", "domainname", col(4)));
        let direction = keep(&mut errs, value::direction("providers_ips", col(5)));
        let proto = keep(&mut errs, value::proto("providers_ips", col(6)));
        let line = rec.line;
        errors.extend(errs.into_iter().map(|k| ParseError::new(line, k)));
        let (
            Some(id),
            Some(provider_id),
            Some(provider_name),
            Some(ipaddress),
            Some(domainname),
            Some(direction),
            Some(proto),
        ) = (id, provider_id, provider_name, ipaddress, domainname, direction, proto)
        else {
            continue;
        };
        match names.get(&provider_id) {
            Some((name, first)) if *name != provider_name => errors.push(ParseError::new(
                line,
                ParseErrorKind::Syntax(format!(
                    "provider {provider_id} is named {:?} here but {:?} on line {first}",
                    provider_name.as_deref().unwrap_or(""),
                    name.as_deref().unwrap_or("")
                )),
            )),
            Some(_) => {}
            None => {
                names.insert(provider_id, (provider_name.clone(), line));
                tables.providers.push(Provider { id: provider_id, name: provider_name, line: Some(line) });
            }
        }
        tables.ips.push(ProviderIp { id, provider_id, ipaddress, domainname, direction, proto, line: Some(line) });
    }
    if errors.is_empty() { Ok(tables) } else { Err(errors) }
}

fn keep<T>(errs: &mut Vec<ParseErrorKind>, r: Result<T, ParseErrorKind>) -> Option<T> {
    r.map_err(|e| errs.push(e)).ok()
}

fn line_of(prefix: &[u8]) -> u32 {
    u32::try_from(prefix.iter().filter(|&&b| b == b'\n').count()).unwrap_or(u32::MAX).saturating_add(1)
}

#[derive(Debug)]
struct Field {
    text: String,
    quoted: bool,
}

impl Field {
    /// The value, `None` for NULL (unquoted `\N`, `NULL` or empty).
    fn value(&self) -> Option<&str> {
        let t = self.text.as_str();
        if !self.quoted && (t.is_empty() || t == "\\N" || t.eq_ignore_ascii_case("NULL")) { None } else { Some(t) }
    }
}

#[derive(Debug)]
struct Record {
    fields: Vec<Field>,
    line: u32,
}

impl Record {
    fn is_blank(&self) -> bool {
        matches!(self.fields.as_slice(), [f] if !f.quoted && f.text.trim().is_empty())
    }
}

struct Reader<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    line: u32,
}

impl Reader<'_> {
    fn bump(&mut self) -> Option<char> {
        let (_, c) = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    /// Skips to the start of the next line (error recovery).
    fn skip_line(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }

    /// The next record, `None` at the end of input.
    fn record(&mut self) -> Result<Option<Record>, ParseError> {
        if self.peek().is_none() {
            return Ok(None);
        }
        let line = self.line;
        let mut fields = Vec::new();
        loop {
            let mut f = Field { text: String::new(), quoted: false };
            if self.peek() == Some('"') {
                f.quoted = true;
                self.bump();
                loop {
                    match self.bump() {
                        None => {
                            return Err(ParseError::new(line, ParseErrorKind::Unterminated { what: "quoted field" }));
                        }
                        Some('"') if self.peek() == Some('"') => {
                            self.bump();
                            f.text.push('"');
                        }
                        Some('"') => break,
                        Some(c) => f.text.push(c),
                    }
                }
                match self.peek() {
                    None | Some(',' | '\n' | '\r') => {}
                    Some(c) => {
                        let at = self.line;
                        self.skip_line();
                        return Err(ParseError::new(
                            at,
                            ParseErrorKind::Syntax(format!("{c:?} after a closing quote")),
                        ));
                    }
                }
            } else {
                while let Some(c) = self.peek() {
                    match c {
                        ',' | '\n' | '\r' => break,
                        '"' => {
                            let at = self.line;
                            self.skip_line();
                            return Err(ParseError::new(
                                at,
                                ParseErrorKind::Syntax("'\"' inside an unquoted field".into()),
                            ));
                        }
                        _ => {
                            self.bump();
                            f.text.push(c);
                        }
                    }
                }
            }
            if f.text.len() > super::MAX_TEXT * 4 {
                let at = self.line;
                self.skip_line();
                return Err(ParseError::new(
                    at,
                    ParseErrorKind::Syntax(format!("field longer than {} bytes", super::MAX_TEXT * 4)),
                ));
            }
            fields.push(f);
            match self.bump() {
                Some(',') => continue,
                Some('\r') => {
                    if self.peek() == Some('\n') {
                        self.bump();
                    }
                    break;
                }
                Some(_) | None => break,
            }
        }
        Ok(Some(Record { fields, line }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::{Direction, Proto};

    fn errs(s: &str) -> Vec<String> {
        parse(s.as_bytes()).expect_err("must fail").iter().map(ToString::to_string).collect()
    }

    #[test]
    fn header_in_any_order_quotes_nulls_crlf_and_bom() {
        let csv = "\u{feff}proto,direction,domainname,ipaddress,providername,provider_id,id,extra\r\n\
                   SIP,OUT,sbc.voxbeam.com,2130706433,VoxBeam,8,1,x\r\n\
                   \r\n\
                   sip,in,\\N,95.211.119.240,\"Vox\"\"Beam\"\"\",9,2,\"a,\nb\"\r\n\
                   IAX2,IN/OUT,,1,\"\",10,3,\n";
        let t = parse(csv.as_bytes()).unwrap();
        assert_eq!(t.ips.len(), 3);
        assert_eq!(
            t.ips[0],
            ProviderIp {
                id: 1,
                provider_id: 8,
                ipaddress: 2130706433,
                domainname: Some("sbc.voxbeam.com".into()),
                direction: Direction::Out,
                proto: Proto::Sip,
                line: Some(2)
            }
        );
        assert_eq!((t.ips[1].ipaddress, t.ips[1].domainname.as_deref(), t.ips[1].line), (1607694320, None, Some(4)));
        assert_eq!(t.ips[2].line, Some(6));
        assert_eq!(t.ips[2].proto, Proto::Other("IAX2".into()));
        assert_eq!(t.providers[1].name.as_deref(), Some("Vox\"Beam\""));
        assert_eq!(t.providers[2].name, None);
    }

    #[test]
    fn malformed_rows_are_each_reported_with_their_line() {
        let e = errs(
            "id,provider_id,provider_name,ipaddress,domainname,direction,proto\n\
                      1,8,VoxBeam,2130706433,a,OUT,SIP\n\
                      2,8,VoxBeam,2130706433,a,OUT\n\
                      3,8,VoxBeam,12x,a,OUT,SIP\n\
                      4,8,Vo\"xBeam,1,a,OUT,SIP\n\
                      5,8,VoxBeam,1,\"a\"b,OUT,SIP\n\
                      6,8,Other,1,a,OUT,SIP\n\
                      7,8,VoxBeam,1,a,OUT,SIP,\"open\n",
        );
        assert_eq!(
            e,
            vec![
                "line 3: `csv` row has 6 values, expected 7",
                "line 4: `providers_ips`.`ipaddress`: \"12x\" is not an unsigned 32-bit integer or an IPv4 address",
                "line 5: '\"' inside an unquoted field",
                "line 6: 'b' after a closing quote",
                "line 7: provider 8 is named \"Other\" here but \"VoxBeam\" on line 2",
                "line 8: unterminated quoted field",
            ]
        );
    }

    #[test]
    fn header_problems_are_all_reported() {
        assert_eq!(
            errs("id,provider_id,ID,ipaddress\n"),
            vec![
                "line 1: header names column `id` twice",
                "line 1: `csv` has no column `provider_name`",
                "line 1: `csv` has no column `domainname`",
                "line 1: `csv` has no column `direction`",
                "line 1: `csv` has no column `proto`",
            ]
        );
        assert_eq!(errs("\n\n"), vec!["line 1: empty CSV: no header line"]);
        assert_eq!(parse(b"id\n\xff").unwrap_err()[0].to_string(), "line 2: not valid UTF-8");
        assert!(matches!(parse(&vec![b'a'; MAX_CSV_BYTES + 1]).unwrap_err()[0].kind, ParseErrorKind::TooLarge { .. }));
    }
}
