//! Attacks on the session layer; see `tests/adversarial.rs`.
