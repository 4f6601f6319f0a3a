//! Sans-IO SIP core.
