//! Attacks on a running `connect` peer, collected in one place: each test plays a hostile or
//! broken peer against a real server on loopback and asserts two things: what the attacker can
//! make us hold stays bounded (checked on counters and queued bytes the code exposes, never on
//! wall time), and a well-behaved client of the same server keeps being served.
//!
//! The attacks are grouped by the layer they aim at; the README's "Reliability" section lists
//! them with the bounds that hold.

mod support;

#[path = "adversarial/session.rs"]
mod session;

#[path = "adversarial/reliable.rs"]
mod reliable;

#[path = "adversarial/transport.rs"]
mod transport;
