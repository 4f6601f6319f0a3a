//! SIP message handling: bounded framing, the zero-copy header index, strict value parsers,
//! sanity checks mapped to RFC reactions, the rsip adapter, and the splicing editor.

pub mod edit;
pub mod error;
pub mod framer;
pub mod message;
pub mod method;
pub mod sanity;
pub mod uri;
pub mod values;

pub use error::{Reaction, SipError};
pub use framer::{Datagram, Limits, StreamFramer, StreamItem, frame_datagram};
pub use message::{Header, HeaderName, Kind, Message};
pub use method::Method;
pub use sanity::{Checked, check};
