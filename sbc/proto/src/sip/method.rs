//! SIP methods (RFC 3261 §7.1 and the extension RFCs the proxy treats specially).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    /// Any other token: forwarded as a non-INVITE request (RFC 3261 §16: proxies pass unknown methods).
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 3261 §7.1): `invite` is an unknown method.
    pub fn from_bytes(b: &[u8]) -> Method {
        match b {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other => "",
        }
    }

    /// Requests that create a dialog when answered with 2xx (RFC 3261 §12, RFC 6665, RFC 3515).
    pub fn creates_dialog(self) -> bool {
        matches!(self, Method::Invite | Method::Subscribe | Method::Refer)
    }

    /// Target refresh requests carry a Contact that replaces the remote target (RFC 3261 §12.2).
    pub fn refreshes_target(self) -> bool {
        matches!(self, Method::Invite | Method::Update | Method::Subscribe | Method::Notify | Method::Refer)
    }
}
