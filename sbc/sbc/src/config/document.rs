//! The config file as a spanned TOML document, so that every problem carries the line it is on.
//!
//! [`Document::deserialize`] reports every type error and unknown key of the file, not only the
//! first one serde meets: each refused key is reported with its path and line, taken out of a
//! working copy of the document, and the rest deserialized again (the key's default stands in),
//! until nothing is refused. A file that is not TOML at all is one problem, with line and column.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem in a config file: where it is (path, line) and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, e.g. `external.udp[1]`; empty when the whole file is concerned.
    pub path: String,
    /// 1-based line, when the path (or, failing that, the nearest enclosing key) is in the file.
    pub line: Option<usize>,
    /// 1-based column (characters), given for TOML syntax errors only.
    pub column: Option<usize>,
    pub message: String,
}

impl Problem {
    /// A problem concerning the whole file (unreadable, not TOML).
    pub fn file(message: impl Into<String>) -> Self {
        Problem { path: String::new(), line: None, column: None, message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `a.b[1].c`; keys that are not bare TOML keys are quoted.
fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The inverse of [`render`] for the bare-key paths the checks write (`limits.max_headers`,
/// `core[0].transport`); `None` for anything else.
fn split(path: &str) -> Option<Vec<Seg>> {
    let mut segs = Vec::new();
    for part in path.split('.') {
        let mut pieces = part.split('[');
        let key = pieces.next().filter(|k| !k.is_empty())?;
        segs.push(Seg::Key(key.to_string()));
        for piece in pieces {
            segs.push(Seg::Index(piece.strip_suffix(']')?.parse().ok()?));
        }
    }
    Some(segs)
}

/// Whether a span covers a byte offset (an empty span covers its own start).
fn covers(span: &Range<usize>, at: usize) -> bool {
    span.start <= at && at < span.end.max(span.start + 1)
}

/// The path of the deepest key or array element whose key or value covers `at`.
fn locate_in_table(table: &DeTable<'_>, at: usize) -> Option<Vec<Seg>> {
    for (k, v) in table.iter() {
        let here = Seg::Key(k.get_ref().to_string());
        if covers(&k.span(), at) {
            return Some(vec![here]);
        }
        if let Some(mut rest) = locate_in_value(v, at) {
            rest.insert(0, here);
            return Some(rest);
        }
    }
    None
}

/// Children first: a table's span is only its header, an array of tables' only its first header.
fn locate_in_value(value: &Spanned<DeValue<'_>>, at: usize) -> Option<Vec<Seg>> {
    match value.get_ref() {
        DeValue::Table(t) => {
            if let Some(path) = locate_in_table(t, at) {
                return Some(path);
            }
        }
        DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                if let Some(mut rest) = locate_in_value(e, at) {
                    rest.insert(0, Seg::Index(i));
                    return Some(rest);
                }
            }
        }
        _ => {}
    }
    covers(&value.span(), at).then(Vec::new)
}

/// Removes the key `path` ends with (array indices after it are ignored); false when absent.
fn remove(table: &mut DeTable<'_>, path: &[Seg]) -> bool {
    let Some(last_key) = path.iter().rposition(|s| matches!(s, Seg::Key(_))) else {
        return false;
    };
    remove_key(table, &path[..=last_key])
}

fn remove_key(table: &mut DeTable<'_>, path: &[Seg]) -> bool {
    match path {
        [Seg::Key(k)] => table.remove(k.as_str()).is_some(),
        [Seg::Key(k), rest @ ..] => table.get_mut(k.as_str()).is_some_and(|v| remove_in_value(v.get_mut(), rest)),
        _ => false,
    }
}

fn remove_in_value(value: &mut DeValue<'_>, path: &[Seg]) -> bool {
    match (value, path) {
        (DeValue::Table(t), _) => remove_key(t, path),
        (DeValue::Array(a), [Seg::Index(i), rest @ ..]) => {
            a.get_mut(*i).is_some_and(|e| remove_in_value(e.get_mut(), rest))
        }
        _ => false,
    }
}

/// A parsed config file.
pub struct Document<'i> {
    text: &'i str,
    root: Spanned<DeTable<'i>>,
}

/// What [`Document::deserialize`] found.
pub struct Deserialized<T> {
    /// `None` only when an error could not be pinned to a key (it is among `problems`).
    pub value: Option<T>,
    /// Every type error and unknown key, each with its path and line.
    pub problems: Vec<Problem>,
    /// Paths of the keys refused (their defaults stand in for them in `value`).
    pub refused: Vec<String>,
}

impl<'i> Document<'i> {
    /// Parses TOML; a syntax error is a single problem with its line and column.
    pub fn parse(text: &'i str) -> Result<Self, Problem> {
        match DeTable::parse(text) {
            Ok(root) => Ok(Document { text, root }),
            Err(e) => {
                let (line, column) = match e.span() {
                    Some(span) => {
                        let (l, c) = position(text, span.start);
                        (Some(l), Some(c))
                    }
                    None => (None, None),
                };
                Err(Problem {
                    path: String::new(),
                    line,
                    column,
                    message: format!("not TOML: {}", one_line(e.message())),
                })
            }
        }
    }

    /// Deserializes `T`, collecting every type error and unknown key (see the module doc). `T`
    /// should default every field, so that taking a key out never makes another error.
    pub fn deserialize<T: Deserialize<'i>>(&self) -> Deserialized<T> {
        let mut work = self.root.clone();
        let mut problems = Vec::new();
        let mut refused = Vec::new();
        // Each round takes one key out, so this ends; the bound only guards against a surprise.
        for _ in 0..=self.text.len() {
            let err = match T::deserialize(toml::de::Deserializer::from(work.clone())) {
                Ok(value) => return Deserialized { value: Some(value), problems, refused },
                Err(e) => e,
            };
            let message = one_line(err.message());
            let at = err.span().map(|s| s.start);
            let path = at.and_then(|at| locate_in_table(work.get_ref(), at));
            let line = at.map(|at| position(self.text, at).0);
            match path {
                Some(path) if remove(work.get_mut(), &path) => {
                    let key_end = path.iter().rposition(|s| matches!(s, Seg::Key(_))).map_or(0, |i| i + 1);
                    refused.push(render(&path[..key_end]));
                    problems.push(Problem { path: render(&path), line, column: None, message });
                }
                _ => {
                    problems.push(Problem { path: String::new(), line, column: None, message });
                    break;
                }
            }
        }
        Deserialized { value: None, problems, refused }
    }

    /// A problem at `path` (as the checks write it), on the line of that key or array element
    /// or, when it is absent from the file, of the nearest enclosing one.
    pub fn problem(&self, path: String, message: String) -> Problem {
        let line = split(&path).and_then(|segs| self.span_of(&segs)).map(|s| position(self.text, s.start).0);
        Problem { path, line, column: None, message }
    }

    /// Span of the deepest present prefix of `path`: a key's own span, an element's value span.
    fn span_of(&self, path: &[Seg]) -> Option<Range<usize>> {
        let mut table = Some(self.root.get_ref());
        let mut array: Option<&[Spanned<DeValue<'i>>]> = None;
        let mut found = None;
        for seg in path {
            let value = match (seg, table, array) {
                (Seg::Key(k), Some(t), _) => {
                    let Some((key, value)) = t.get_key_value(k.as_str()) else { break };
                    found = Some(key.span());
                    value
                }
                (Seg::Index(i), _, Some(a)) => {
                    let Some(value) = a.get(*i) else { break };
                    found = Some(value.span());
                    value
                }
                _ => break,
            };
            (table, array) = match value.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(&a[..])),
                _ => (None, None),
            };
        }
        found
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// toml's messages may span lines; a problem is one line.
fn one_line(message: &str) -> String {
    message.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_and_split_back() {
        let path = vec![Seg::Key("core".into()), Seg::Index(1), Seg::Key("transport".into())];
        assert_eq!(render(&path), "core[1].transport");
        assert_eq!(split("core[1].transport"), Some(path));
        assert_eq!(split("a[0][2]"), Some(vec![Seg::Key("a".into()), Seg::Index(0), Seg::Index(2)]));
        assert_eq!(render(&[Seg::Key("a b".into())]), "\"a b\"");
        assert_eq!(split("a[x]"), None);
        assert_eq!(split("a[0]b"), None);
    }

    #[test]
    fn syntax_error_is_one_problem_with_line_and_column() {
        let p = Document::parse("[a]\nx = 5\ny = [\n\"a\" \"b\"]\n").err().unwrap();
        assert_eq!((p.line, p.column), (Some(4), Some(5)), "{p}");
        assert!(p.to_string().starts_with("line 4, column 5: not TOML: "), "{p}");
    }

    #[test]
    fn problem_lines_fall_back_to_the_enclosing_key() {
        let text = "[a]\nx = 1\ny = [\n  \"p\",\n  \"q\",\n]\n\n[[c]]\nk = 1\n[[c]]\nk = 2\n";
        let doc = Document::parse(text).unwrap();
        let line = |p: &str| doc.problem(p.into(), String::new()).line;
        assert_eq!(line("a.x"), Some(2));
        assert_eq!(line("a.y[1]"), Some(5));
        assert_eq!(line("a.absent"), Some(1));
        assert_eq!(line("c[1]"), Some(10));
        assert_eq!(line("c[1].k"), Some(11));
        assert_eq!(line("c[1].absent"), Some(10));
        assert_eq!(line("absent"), None);
    }
}
