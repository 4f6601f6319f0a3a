//! Reads `providers_ips` joined with the provider's name from one CSV file (RFC 4180).
//!
//! The first non-empty line is the header; it must name `id`, `provider_id`, `provider_name`
//! (or `providername`), `ipaddress`, `domainname`, `direction` and `proto`, in any order, each
//! once; `cli_allowed` and `dynamic_calls_caller_id` (the provider's caller-ID policy) are
//! read when present (absent: no policy); other columns are ignored. Fields may be quoted with `"` (a doubled `""` inside is a
//! quote; commas and line breaks inside quotes are data). An unquoted `\N` (MariaDB's
//! `INTO OUTFILE`), an unquoted `NULL` or an empty field is NULL. A UTF-8 byte order mark and
//! CRLF line ends are accepted; empty lines are skipped. `ipaddress` is the INT or a dotted
//! quad. Every row that names a provider must give it the same name. The input is bounded
//! ([`MAX_CSV_BYTES`]) before parsing; every row error is collected with
//! its line.
//!
//! Splitting records into fields and unquoting them is `csv_core`'s (the parser under the `csv`
//! crate). What it leaves out on purpose, this module adds from each field's raw bytes: whether
//! the field was quoted (a quoted `"NULL"` is text), and the errors for a stray quote, text
//! after a closing quote and an unterminated quoted field, which `csv_core` reads leniently.
//! A row with such an error is dropped up to the end of its line and reading goes on.

use std::collections::HashMap;

use crate::caller_id::CliPolicy;

use super::{MAX_CSV_BYTES, MAX_ROWS, MAX_TEXT, ParseError, ParseErrorKind, Provider, ProviderIp, Tables, value};

const TABLE: &str = "csv";
const COLUMNS: [&str; 9] = [
    "id",
    "provider_id",
    "provider_name",
    "ipaddress",
    "domainname",
    "direction",
    "proto",
    "cli_allowed",
    "dynamic_calls_caller_id",
];
/// The first this many of [`COLUMNS`] are required.
const REQUIRED: usize = 7;

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
    // `csv_core` drops a byte order mark at the start of the input (only there).
    let mut rd = Records::new(text);
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
    for (c, &i) in COLUMNS.iter().zip(index.iter()).take(REQUIRED) {
        if i == usize::MAX {
            errors.push(ParseError::new(header.line, ParseErrorKind::MissingColumn { table: TABLE, column: c }));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    // Rows.
    let mut names: HashMap<u32, (Option<String>, Option<CliPolicy>, u32)> = HashMap::new();
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
        let cli = keep(&mut errs, value::cli("providers", col(7), col(8)));
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
            Some(cli),
        ) = (id, provider_id, provider_name, ipaddress, domainname, direction, proto, cli)
        else {
            continue;
        };
        match names.get(&provider_id) {
            Some((_, first_cli, first)) if *first_cli != cli => errors.push(ParseError::new(
                line,
                ParseErrorKind::Syntax(format!(
                    "provider {provider_id} has another cli_allowed / dynamic_calls_caller_id here than on line {first}"
                )),
            )),
            Some((name, _, first)) if *name != provider_name => errors.push(ParseError::new(
                line,
                ParseErrorKind::Syntax(format!(
                    "provider {provider_id} is named {:?} here but {:?} on line {first}",
                    provider_name.as_deref().unwrap_or(""),
                    name.as_deref().unwrap_or("")
                )),
            )),
            Some(_) => {}
            None => {
                names.insert(provider_id, (provider_name.clone(), cli.clone(), line));
                tables.providers.push(Provider { id: provider_id, name: provider_name, cli, line: Some(line) });
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

const BOM: char = '\u{feff}';

/// Longest field accepted, in bytes (the longest column is [`MAX_TEXT`] characters).
const MAX_FIELD: usize = MAX_TEXT * 4;

/// Records of the CSV: `csv_core` splits and unquotes; [`Records::check`] adds, from each
/// field's raw bytes (`read_field` says how many it took), what `csv_core` does not tell or
/// enforce (see the module doc).
struct Records<'a> {
    text: &'a str,
    rdr: csv_core::Reader,
    /// Bytes of `text` handed to `rdr`.
    pos: usize,
    /// Unquoted output of the field being read.
    buf: Vec<u8>,
    /// `line` is the line of byte `line_pos` (a cursor, so counting lines stays linear).
    line_pos: usize,
    line: u32,
}

/// One field as `csv_core` split it: `raw` is `text[start..end]`, its delimiter included.
struct RawField {
    start: usize,
    end: usize,
    record_end: bool,
}

impl<'a> Records<'a> {
    fn new(text: &'a str) -> Records<'a> {
        Records { text, rdr: csv_core::Reader::new(), pos: 0, buf: vec![0; 256], line_pos: 0, line: 1 }
    }

    /// The line (1-based) of byte `at`, counted from the last one asked for (they only move
    /// forward, so each line end is counted once).
    fn line_at(&mut self, at: usize) -> u32 {
        if at < self.line_pos {
            (self.line_pos, self.line) = (0, 1);
        }
        let newlines =
            self.text.as_bytes().get(self.line_pos..at).map_or(0, |s| s.iter().filter(|&&b| b == b'\n').count());
        self.line = self.line.saturating_add(u32::try_from(newlines).unwrap_or(u32::MAX));
        self.line_pos = at;
        self.line
    }

    /// The next field, its unquoted text in `buf[..len]`; `None` at the end of input.
    fn read_field(&mut self) -> Option<(RawField, usize)> {
        let start = self.pos;
        let mut len = 0;
        loop {
            let input = self.text.as_bytes().get(self.pos..).unwrap_or_default();
            if len >= self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let out = self.buf.get_mut(len..).unwrap_or_default();
            let (res, nin, nout) = self.rdr.read_field(input, out);
            self.pos += nin;
            len += nout;
            match res {
                csv_core::ReadFieldResult::Field { record_end } => {
                    return Some((RawField { start, end: self.pos, record_end }, len));
                }
                // An empty input tells `csv_core` the input ended: it answers with a field or the end.
                csv_core::ReadFieldResult::InputEmpty if !input.is_empty() => {}
                csv_core::ReadFieldResult::OutputFull => {}
                csv_core::ReadFieldResult::InputEmpty | csv_core::ReadFieldResult::End => return None,
            }
        }
    }

    /// The next record, `None` at the end of input.
    fn record(&mut self) -> Result<Option<Record>, ParseError> {
        let mut fields = Vec::new();
        let mut line = None;
        loop {
            let Some((mut f, len)) = self.read_field() else { return Ok(None) };
            if fields.is_empty() {
                // Before the first field, `csv_core` skips the byte order mark at the start of the
                // input, the previous record's line end and empty lines.
                if f.start == 0 && self.text.starts_with(BOM) {
                    f.start = BOM.len_utf8();
                }
                let skipped = self
                    .text
                    .as_bytes()
                    .get(f.start..f.end)
                    .map_or(0, |raw| raw.iter().take_while(|&&b| b == b'\r' || b == b'\n').count());
                f.start += skipped;
            }
            let line = *line.get_or_insert_with(|| self.line_at(f.start));
            let quoted = match self.check(&f, len, line) {
                Ok(quoted) => quoted,
                Err((e, at)) => {
                    if !matches!(e.kind, ParseErrorKind::Unterminated { .. }) {
                        self.skip_line(at, f.record_end);
                    }
                    return Err(e);
                }
            };
            let text = String::from_utf8_lossy(self.buf.get(..len).unwrap_or_default()).into_owned();
            fields.push(Field { text, quoted });
            if f.record_end {
                return Ok(Some(Record { fields, line }));
            }
        }
    }

    /// Whether the field was quoted, or what is wrong with it and the byte the error is at:
    /// a quoted field must be closed and followed by its delimiter, an unquoted one must not
    /// hold a quote (RFC 4180 §2.5–2.7), and neither may be longer than [`MAX_FIELD`].
    fn check(&mut self, f: &RawField, len: usize, record_line: u32) -> Result<bool, (ParseError, usize)> {
        let raw = self.text.as_bytes().get(f.start..f.end).unwrap_or_default();
        let quoted = raw.first() == Some(&b'"');
        // Where the field's content ends: before its delimiter, if it has one.
        let mut content_end = f.end;
        if quoted {
            let mut i = 1;
            loop {
                let Some(q) = raw.get(i..).and_then(|r| r.iter().position(|&b| b == b'"')).map(|q| q + i) else {
                    let kind = ParseErrorKind::Unterminated { what: "quoted field" };
                    return Err((ParseError::new(record_line, kind), f.end));
                };
                match raw.get(q + 1) {
                    Some(b'"') => i = q + 2,
                    None | Some(b',' | b'\n' | b'\r') => {
                        content_end = f.start + q + 1;
                        break;
                    }
                    Some(_) => {
                        let at = f.start + q + 1;
                        let c = self.text.get(at..).and_then(|t| t.chars().next()).unwrap_or_default();
                        let kind = ParseErrorKind::Syntax(format!("{c:?} after a closing quote"));
                        return Err((ParseError::new(self.line_at(at), kind), at));
                    }
                }
            }
        } else {
            if let Some(q) = raw.iter().position(|&b| b == b'"') {
                let at = f.start + q;
                let kind = ParseErrorKind::Syntax("'\"' inside an unquoted field".into());
                return Err((ParseError::new(self.line_at(at), kind), at));
            }
            if raw.last().is_some_and(|b| matches!(b, b',' | b'\n' | b'\r')) {
                content_end -= 1;
            }
        }
        if len > MAX_FIELD {
            let kind = ParseErrorKind::Syntax(format!("field longer than {MAX_FIELD} bytes"));
            return Err((ParseError::new(self.line_at(content_end), kind), content_end));
        }
        Ok(quoted)
    }

    /// Error recovery: drops the rest of the line from byte `at` (the record goes with it).
    fn skip_line(&mut self, at: usize, record_end: bool) {
        if !record_end {
            // `csv_core` is inside the record: a line end closes it, so the next field read
            // starts a record.
            let _ = self.rdr.read_field(b"\n", &mut [0; 1]);
        }
        let rest = self.text.as_bytes().get(at..).unwrap_or_default();
        self.pos = rest.iter().position(|&b| b == b'\n').map_or(self.text.len(), |n| at + n + 1).max(self.pos);
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
    fn quoting_decides_null_and_errors_in_multiline_fields_name_their_own_line() {
        const HEADER: &str = "id,provider_id,provider_name,ipaddress,domainname,direction,proto\n";
        let t = parse(format!("{HEADER}1,8,\"NULL\",1,\"\\N\",IN,SIP\n2,9,NULL,1,\\N,IN,SIP\n").as_bytes()).unwrap();
        assert_eq!(t.providers[0].name.as_deref(), Some("NULL"));
        assert_eq!(t.ips[0].domainname.as_deref(), Some("\\N"));
        assert_eq!((t.providers[1].name.as_deref(), t.ips[1].domainname.as_deref()), (None, None));
        // Only the first byte order mark is one; a second is part of the first column's name.
        assert_eq!(errs(&format!("\u{feff}\u{feff}{HEADER}"))[0], "line 1: `csv` has no column `id`");
        assert_eq!(
            errs(&format!(
                "{HEADER}1,8,\"Vox\nBeam\"x,1,a,IN,SIP\n2,8,\"a\n\nb\",1,b\"c,IN,SIP\n3,7,C,1,,IN,\"SIP\"\r\n"
            )),
            vec!["line 3: 'x' after a closing quote", "line 6: '\"' inside an unquoted field"]
        );
        let long = format!("{HEADER}1,8,\"{}\n{}\",1,a,IN,SIP\n2,8,B,1,a,IN,SIP\n", "v".repeat(600), "w".repeat(600));
        assert_eq!(errs(&long), vec!["line 3: field longer than 1020 bytes"]);
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
