//! Attacks on the transport layer; see `tests/adversarial.rs`.
