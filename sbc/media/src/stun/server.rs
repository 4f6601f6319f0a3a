//! The STUN Binding server (RFC 8489 §6.3, §12): given one datagram and where it came from, the
//! reply to send back to that address, or why nothing is sent. Unauthenticated, like a public
//! STUN server (§9); stateless: every request is answered from itself alone, so a
//! retransmitted request gets the same answer.

use std::net::SocketAddr;

use super::message::{Class, Limits, Message, ParseError, Writer, encode_xor_address};
use super::{BINDING, attr};

/// What the server is built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Bounds on what is parsed.
    pub limits: Limits,
    /// The SOFTWARE attribute put in every response (RFC 8489 §14.14); `None` (the default)
    /// sends none, so the server tells nothing about itself.
    pub software: Option<String>,
}

/// A [`Config`] the server refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("software has {chars} characters and {bytes} octets; RFC 8489 §14.14 allows < 128 and ≤ 763")]
    SoftwareTooLong { chars: usize, bytes: usize },
}

/// Why a datagram gets no reply; for counting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreReason {
    /// Not a well-formed STUN message, or a wrong FINGERPRINT (RFC 8489 §6.3, §7: discarded).
    #[error("malformed STUN: {0}")]
    Malformed(#[from] ParseError),
    /// Indications ask for no answer (§6.3.2); none is defined for this server.
    #[error("indication, method {method:#05x}")]
    Indication { method: u16 },
    /// A response to a request we never sent (a server has no client transactions).
    #[error("{class:?} to nothing we sent, method {method:#05x}")]
    Response { class: Class, method: u16 },
}

/// The server's answer to one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A Binding success response, to send to the request's source.
    Success(Vec<u8>),
    /// An error response (400 or 420), to send to the request's source.
    Error { code: u16, bytes: Vec<u8> },
    /// Nothing to send.
    Ignore(IgnoreReason),
}

/// The Binding server. It holds only its configuration.
#[derive(Debug, Clone)]
pub struct Server {
    limits: Limits,
    software: Option<String>,
}

impl Server {
    /// A server for `config`, refusing a SOFTWARE over RFC 8489 §14.14's bounds.
    pub fn new(config: Config) -> Result<Server, ConfigError> {
        if let Some(s) = &config.software {
            let chars = s.chars().count();
            if chars >= 128 || s.len() > 763 {
                return Err(ConfigError::SoftwareTooLong { chars, bytes: s.len() });
            }
        }
        Ok(Server { limits: config.limits, software: config.software })
    }

    /// Answers one datagram received from `source` (RFC 8489 §6.3):
    /// - malformed, or a FINGERPRINT that does not match → ignored;
    /// - an indication or a response → ignored;
    /// - a request for another method than Binding → 400 Bad Request (rather than silence, so
    ///   the client stops retransmitting);
    /// - a request with comprehension-required attributes (§14: 0x0000–0x7FFF) we do not
    ///   understand, among those a receiver acts on (§9) → 420 with UNKNOWN-ATTRIBUTES (§14.13);
    /// - a Binding request → success with XOR-MAPPED-ADDRESS = `source` (§14.2).
    ///
    /// Every response carries the request's transaction id, the SOFTWARE when configured, and
    /// a FINGERPRINT (§14.7), so a peer multiplexing STUN with SIP can tell it apart.
    pub fn handle(&self, request: &[u8], source: SocketAddr) -> Reply {
        let msg = match Message::parse(request, &self.limits) {
            Ok(m) => m,
            Err(e) => return Reply::Ignore(e.into()),
        };
        match msg.class {
            Class::Request => {}
            Class::Indication => return Reply::Ignore(IgnoreReason::Indication { method: msg.method }),
            class => return Reply::Ignore(IgnoreReason::Response { class, method: msg.method }),
        }
        if msg.method != BINDING {
            return self.error(&msg, 400, "Bad Request", &[]);
        }
        let mut unknown: Vec<u16> = Vec::new();
        for a in msg.effective_attributes() {
            if attr::is_comprehension_required(a.typ) && !attr::UNDERSTOOD.contains(&a.typ) && !unknown.contains(&a.typ)
            {
                unknown.push(a.typ);
            }
        }
        if !unknown.is_empty() {
            let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
            return self.error(&msg, 420, "Unknown Attribute", &[(attr::UNKNOWN_ATTRIBUTES, &list)]);
        }
        let mut w = Writer::new(Class::SuccessResponse, BINDING, &msg.transaction_id);
        w.attribute(attr::XOR_MAPPED_ADDRESS, &encode_xor_address(source, &msg.transaction_id));
        Reply::Success(self.finish(w))
    }

    /// An error response (RFC 8489 §14.8: ERROR-CODE is two zero octets, the class (hundreds)
    /// and the number, then the reason phrase) to `msg`, with `extra` attributes after it.
    fn error(&self, msg: &Message<'_>, code: u16, reason: &str, extra: &[(u16, &[u8])]) -> Reply {
        let mut w = Writer::new(Class::ErrorResponse, msg.method, &msg.transaction_id);
        let mut value = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        value.extend_from_slice(reason.as_bytes());
        w.attribute(attr::ERROR_CODE, &value);
        for (typ, v) in extra {
            w.attribute(*typ, v);
        }
        Reply::Error { code, bytes: self.finish(w) }
    }

    /// SOFTWARE when configured, then FINGERPRINT.
    fn finish(&self, mut w: Writer) -> Vec<u8> {
        if let Some(s) = &self.software {
            w.attribute(attr::SOFTWARE, s.as_bytes());
        }
        w.finish_with_fingerprint()
    }
}
