//! Attacks on the reliable layer; see `tests/adversarial.rs`.
