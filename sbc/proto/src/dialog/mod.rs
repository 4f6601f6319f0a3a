//! Dialog and registration state (RFC 3261 §12, §10). Both sides of the SBC see one dialog each
//! with the SBC as the peer; the SBC keeps, per side, the remote target (the UA's Contact), the
//! route set, and the flow it last talked on, so mid-dialog requests in either direction — BYE,
//! re-INVITE, UPDATE, INFO, REFER/NOTIFY — reach the right UA over the right connection.
//!
//! [`Dialogs`] owns the tables: dialogs by token and by each side's Call-ID (registrations are
//! the registration layer's). A dialog ends in one place, [`Dialogs::end`], which reports the end once
//! ([`Dialogs::poll_ended`]) for whoever holds resources per dialog (the media relay, the guard).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::flow::{Flow, Side};
use crate::own_keys::OwnKeyMap;

/// Why a dialog ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogEnd {
    /// A BYE was answered.
    Bye,
    /// The dialog-creating request failed, was cancelled or timed out before a 2xx.
    Failed,
    /// The 2xx was never ACKed (RFC 3261 §13.3.1.4).
    Unacknowledged,
    /// No request for the configured idle time.
    Idle,
}

/// Every dialog and registration binding the SBC holds.
#[derive(Debug, Default)]
pub struct Dialogs {
    /// Keyed by our own tokens: [`OwnKeyMap`].
    dialogs: OwnKeyMap<String, Dialog>,
    /// (side, Call-ID as that side sees it) → dialog token.
    by_call_id: HashMap<(Side, Vec<u8>), String>,
    ended: VecDeque<(String, DialogEnd)>,
}

impl Dialogs {
    pub fn len(&self) -> usize {
        self.dialogs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.dialogs.is_empty()
    }
    pub fn contains(&self, token: &str) -> bool {
        self.dialogs.contains_key(token)
    }
    pub fn get(&self, token: &str) -> Option<&Dialog> {
        self.dialogs.get(token)
    }
    pub fn get_mut(&mut self, token: &str) -> Option<&mut Dialog> {
        self.dialogs.get_mut(token)
    }
    /// The dialog a side knows by this Call-ID (for UAs that do not use our Contact).
    pub fn by_call_id(&self, side: Side, call_id: &[u8]) -> Option<&str> {
        self.by_call_id.get(&(side, call_id.to_vec())).map(String::as_str)
    }

    /// A new dialog, indexed by both sides' Call-IDs.
    pub fn insert(&mut self, d: Dialog) {
        for side in [Side::External, Side::Internal] {
            self.by_call_id.insert((side, d.call_id(side).to_vec()), d.token.clone());
        }
        self.dialogs.insert(d.token.clone(), d);
    }

    /// The one place a dialog ends; the end is reported once through [`Dialogs::poll_ended`].
    pub fn end(&mut self, token: &str, why: DialogEnd) {
        let Some(d) = self.dialogs.remove(token) else { return };
        for side in [Side::External, Side::Internal] {
            let key = (side, d.call_id(side).to_vec());
            if self.by_call_id.get(&key).is_some_and(|t| t == token) {
                self.by_call_id.remove(&key);
            }
        }
        self.ended.push_back((d.token, why));
    }

    /// Ends a dialog that never got its final 2xx (a failed or timed-out dialog-creating request).
    pub fn end_unconfirmed(&mut self, token: &str) {
        if self.dialogs.get(token).is_some_and(|d| !d.confirmed) {
            self.end(token, DialogEnd::Failed);
        }
    }

    /// Ends every dialog idle past its expiry.
    pub fn expire(&mut self, now: Instant) {
        let idle: Vec<String> = self.dialogs.values().filter(|d| d.expires <= now).map(|d| d.token.clone()).collect();
        for t in idle {
            self.end(&t, DialogEnd::Idle);
        }
    }

    pub fn poll_ended(&mut self) -> Option<(String, DialogEnd)> {
        self.ended.pop_front()
    }
}

/// One side's view of a dialog.
#[derive(Debug, Clone)]
pub struct Leg {
    /// Where requests to this side go: the flow of the last message from it (symmetric, so a UA
    /// behind NAT or on a TCP connection is reached where it really is).
    pub flow: Flow,
    /// The UA's Contact URI (RFC 3261 §12.1: remote target), updated by target refreshes.
    pub target: Vec<u8>,
    /// Route set toward this side (Record-Route values, in the order to put in Route).
    pub route_set: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct Dialog {
    /// The opaque token in our Contact user part on both sides.
    pub token: String,
    /// Indexed by [`Side::idx`].
    pub legs: [Leg; 2],
    /// The side that sent the dialog-creating request: its Call-ID is native there.
    pub caller: Side,
    /// The Call-ID as each side sees it (masked toward a hidden side), indexed by side: the
    /// fallback lookup for UAs that do not send mid-dialog requests to our Contact.
    pub call_ids: [Vec<u8>; 2],
    pub confirmed: bool,
    pub expires: Instant,
    /// The internal caller's own `host[:port]` in its From, which the outside saw as ours:
    /// restored in the To of requests the outside sends in this dialog.
    pub internal_host: Option<Vec<u8>>,
    /// RFC 3261 §13.3.1.4: set while the 2xx to the initial INVITE waits for its ACK.
    pub ack_wait: Option<AckWait>,
}

/// A 2xx not ACKed by `deadline` ends its dialog, and the callee gets `bye` (prebuilt from the
/// 2xx, with our `branch`) on `flow`.
#[derive(Debug, Clone)]
pub struct AckWait {
    pub deadline: Instant,
    pub flow: Flow,
    pub branch: String,
    pub bye: Vec<u8>,
}

impl Dialog {
    pub fn call_id(&self, side: Side) -> &[u8] {
        match side {
            Side::External => &self.call_ids[0],
            Side::Internal => &self.call_ids[1],
        }
    }
    pub fn leg(&self, side: Side) -> &Leg {
        match side {
            Side::External => &self.legs[0],
            Side::Internal => &self.legs[1],
        }
    }
    pub fn leg_mut(&mut self, side: Side) -> &mut Leg {
        match side {
            Side::External => &mut self.legs[0],
            Side::Internal => &mut self.legs[1],
        }
    }
}

/// What a forwarded request's client transaction must remember to handle its responses.
#[derive(Debug)]
pub struct ForwardCtx {
    /// The side whose UA created the Call-ID (the dialog's caller, else the requester).
    pub call_id_native: Side,
    /// Token of the dialog this request belongs to or will create.
    pub dialog: Option<String>,
    /// True when a 1xx-with-tag / 2xx to this request creates the dialog.
    pub creates_dialog: bool,
    /// The requester's Contact URI and Record-Route set (for the dialog's leg on its side).
    pub requester_contact: Option<Vec<u8>>,
    pub requester_route_set: Vec<Vec<u8>>,
    /// The Call-ID as the requester sent it.
    pub requester_call_id: Vec<u8>,
    /// Registration tokens in this REGISTER, to map the registrar's Contact list back.
    pub registration: Vec<String>,
    /// The internal requester's own From `host[:port]` when it was replaced by ours.
    pub internal_host: Option<Vec<u8>>,
    /// Sent to a registered UA's own flow (a transport error there is RFC 5626's 430).
    pub to_binding: bool,
    /// The request carried a body (an offer): a body in its response is the answer.
    pub offer_in_request: bool,
    /// Core target index, for failover when the core does not answer.
    pub core: Option<usize>,
    /// Cores already tried for this request.
    pub tried: Vec<usize>,
}

impl Default for ForwardCtx {
    fn default() -> Self {
        ForwardCtx {
            call_id_native: Side::External,
            dialog: None,
            creates_dialog: false,
            requester_contact: None,
            requester_route_set: Vec::new(),
            requester_call_id: Vec::new(),
            registration: Vec::new(),
            internal_host: None,
            to_binding: false,
            offer_in_request: false,
            core: None,
            tried: Vec::new(),
        }
    }
}
