//! The SIP layer's error taxonomy. Every variant carries what went wrong and maps to exactly one
//! reaction: the response code RFC 3261 / RFC 4475 ask for, or a silent drop.

use super::message::{HeaderName, IndexError};
use super::values::ValueError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    #[error("message of {size} octets exceeds the limit of {max}")]
    MessageTooLarge { size: usize, max: usize },
    #[error("body of {declared} octets exceeds the limit of {max}")]
    BodyTooLarge { declared: usize, max: usize },
    #[error("more than {max} header lines")]
    TooManyHeaders { max: usize },
    #[error("start line is not a SIP request or status line")]
    BadStartLine,
    #[error("a header line has no colon or no valid name")]
    BadHeaderLine,
    #[error("header section not terminated by an empty line")]
    Unterminated,
    #[error("Content-Length is not a non-negative 32-bit number")]
    BadContentLength,
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    #[error("Content-Length {declared} but only {available} octets of body")]
    Truncated { declared: usize, available: usize },
    #[error("SIP version {0:?} not supported")]
    VersionNotSupported(String),
    #[error("malformed Request-Line")]
    BadRequestLine,
    #[error("malformed Request-URI: {0}")]
    BadRequestUri(&'static str),
    #[error("unsupported URI scheme")]
    UnsupportedUriScheme,
    #[error("missing {0:?} header")]
    Missing(HeaderName),
    #[error("{0:?} header appears more than once")]
    Duplicate(HeaderName),
    #[error("malformed {name:?} header: {error}")]
    BadHeader { name: HeaderName, error: ValueError },
    #[error("CSeq method does not match the request method")]
    CSeqMismatch { method_known: bool },
    #[error("Via branch is only the magic cookie")]
    BadBranch,
    #[error("Max-Forwards reached zero")]
    TooManyHops,
    #[error("Proxy-Require lists unsupported extensions {0:?}")]
    BadExtension(String),
    #[error("status code is not in 100..=699")]
    BadStatus,
}

impl From<IndexError> for SipError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Empty | IndexError::BadStartLine => SipError::BadStartLine,
            IndexError::TooManyHeaders { max } => SipError::TooManyHeaders { max },
            IndexError::BadHeaderLine { .. } => SipError::BadHeaderLine,
        }
    }
}

/// What the proxy does with a message that failed a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaction {
    /// Answer a request with this status and reason (never for ACK, never for responses).
    Reply { code: u16, reason: &'static str },
    /// Discard silently (responses, and requests too broken to answer).
    Drop,
}

impl SipError {
    /// The reaction to a bad *request* (responses are always dropped, RFC 3261 §16.7).
    pub fn reaction(&self) -> Reaction {
        let (code, reason) = match self {
            SipError::MessageTooLarge { .. } => (513, "Message Too Large"),
            SipError::BodyTooLarge { .. } => (413, "Request Entity Too Large"),
            SipError::VersionNotSupported(_) => (505, "Version Not Supported"),
            SipError::UnsupportedUriScheme => (416, "Unsupported URI Scheme"),
            SipError::CSeqMismatch { method_known: false } => (501, "Not Implemented"),
            SipError::TooManyHops => (483, "Too Many Hops"),
            SipError::BadExtension(_) => (420, "Bad Extension"),
            SipError::BadStartLine | SipError::BadStatus => return Reaction::Drop,
            SipError::TooManyHeaders { .. } => (400, "Too Many Headers"),
            _ => (400, "Bad Request"),
        };
        Reaction::Reply { code, reason }
    }
}
