//! Authentication of the connecting side, checked by the accepting side during the handshake.
//!
//! The accepting side's [`SessionConfig`](super::SessionConfig) holds an [`Authenticator`]; it
//! sees the [`Credentials`] of the `Hello` and the [`ConnectionInfo`] (addresses and, over TLS,
//! the verified peer identity) and either names the identity or refuses. Two mechanisms are
//! built in: [`PlainAuthenticator`] (user and password, compared in constant time) and
//! [`BearerAuthenticator`] (opaque tokens). Secrets never reach a log: the generated `Plain`
//! and `Bearer` messages have a `Debug` that redacts them, and so do the authenticators.
//!
//! ```
//! # futures::executor::block_on(async {
//! use connect::session::{Authenticator, PlainAuthenticator};
//! use connect::proto::v1::Credentials;
//! use connect::ConnectionInfo;
//!
//! let auth = PlainAuthenticator::new().with_user("alice", "s3cret");
//! let info = ConnectionInfo::new();
//! let identity = auth.authenticate(&Credentials::plain("alice", "s3cret"), &info).await;
//! assert_eq!(identity.unwrap(), "alice");
//! assert!(auth.authenticate(&Credentials::plain("alice", "guess"), &info).await.is_err());
//! assert!(!format!("{:?}", Credentials::plain("alice", "s3cret")).contains("s3cret"));
//! # });
//! ```

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use subtle::ConstantTimeEq;

use crate::connection::ConnectionInfo;
use crate::proto::v1::credentials::Mechanism;
use crate::proto::v1::{Bearer, Credentials, Plain};

/// Why an [`Authenticator`] refused. The text goes to the accepting side's log, never to the
/// peer (which only learns that authentication failed), and must not contain secrets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct AuthError {
    reason: String,
}

impl AuthError {
    /// A refusal for the log.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// Decides who the connecting side is, from its credentials and its connection.
///
/// Implement it to check credentials against your own store, or to trust a TLS client
/// certificate's identity found in the [`ConnectionInfo`].
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// The identity of the connecting side (a user name, a service name, ...), or why not.
    /// `credentials.mechanism` is `None` when the `Hello` carried no credentials.
    async fn authenticate(
        &self,
        credentials: &Credentials,
        connection: &ConnectionInfo,
    ) -> Result<String, AuthError>;
}

impl Credentials {
    /// User name and password (mechanism PLAIN).
    pub fn plain(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            mechanism: Some(Mechanism::Plain(Plain {
                user: user.into(),
                password: password.into(),
            })),
        }
    }

    /// A bearer token.
    pub fn bearer(token: impl Into<String>) -> Self {
        Self {
            mechanism: Some(Mechanism::Bearer(Bearer {
                token: token.into(),
            })),
        }
    }

    /// Name of the mechanism for logs: `PLAIN`, `BEARER` or `ANONYMOUS`.
    pub fn mechanism_name(&self) -> &'static str {
        match self.mechanism {
            Some(Mechanism::Plain(_)) => "PLAIN",
            Some(Mechanism::Bearer(_)) => "BEARER",
            None => "ANONYMOUS",
        }
    }
}

impl fmt::Debug for Plain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plain")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bearer")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Compares two secrets in time that depends only on their lengths.
fn secret_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Whether `given` is `stored`, doing the same work for every `stored`: each byte of `given`
/// is compared (with `stored` padded by zeros), then the lengths, all without branching on the
/// secret. The time depends on `given`'s length only, which the peer knows anyway.
fn password_eq(given: &str, stored: &str) -> bool {
    let (given, stored) = (given.as_bytes(), stored.as_bytes());
    let mut equal = subtle::Choice::from(1);
    for (i, g) in given.iter().enumerate() {
        equal &= g.ct_eq(stored.get(i).unwrap_or(&0));
    }
    #[cfg(test)]
    tests::COMPARED.with(|n| n.set(n.get() + given.len()));
    (equal & (given.len() as u64).ct_eq(&(stored.len() as u64))).into()
}

/// What an unknown user's password is compared with, so that an unknown user costs the same
/// comparison as a known user with a wrong password.
const DUMMY_PASSWORD: &str = "unknown user: no password matches this one";

/// PLAIN: a fixed set of users and passwords. Passwords are compared in constant time; an
/// unknown user costs the same comparison as a known one with a wrong password (against a
/// dummy password, through the same function).
#[derive(Clone, Default)]
pub struct PlainAuthenticator {
    users: HashMap<String, String>,
}

impl PlainAuthenticator {
    /// No users yet: everyone is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `user` with `password` (replacing an earlier password for `user`).
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.users.insert(user.into(), password.into());
        self
    }
}

impl fmt::Debug for PlainAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<_> = self.users.keys().collect();
        users.sort();
        f.debug_struct("PlainAuthenticator")
            .field("users", &users)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Authenticator for PlainAuthenticator {
    async fn authenticate(
        &self,
        credentials: &Credentials,
        _connection: &ConnectionInfo,
    ) -> Result<String, AuthError> {
        let Some(Mechanism::Plain(plain)) = &credentials.mechanism else {
            return Err(AuthError::new(format!(
                "PLAIN credentials required, got {}",
                credentials.mechanism_name()
            )));
        };
        let (known, stored) = match self.users.get(&plain.user) {
            Some(stored) => (true, stored.as_str()),
            None => (false, DUMMY_PASSWORD),
        };
        if password_eq(&plain.password, stored) & known {
            Ok(plain.user.clone())
        } else {
            Err(AuthError::new("unknown user or wrong password"))
        }
    }
}

/// Bearer tokens: each known token stands for an identity. Every token is compared, in
/// constant time, whatever matches.
#[derive(Clone, Default)]
pub struct BearerAuthenticator {
    tokens: Vec<(String, String)>,
}

impl BearerAuthenticator {
    /// No tokens yet: everyone is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` as `identity`.
    pub fn with_token(mut self, token: impl Into<String>, identity: impl Into<String>) -> Self {
        self.tokens.push((token.into(), identity.into()));
        self
    }
}

impl fmt::Debug for BearerAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identities: Vec<_> = self.tokens.iter().map(|(_, id)| id).collect();
        f.debug_struct("BearerAuthenticator")
            .field("identities", &identities)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Authenticator for BearerAuthenticator {
    async fn authenticate(
        &self,
        credentials: &Credentials,
        _connection: &ConnectionInfo,
    ) -> Result<String, AuthError> {
        let Some(Mechanism::Bearer(bearer)) = &credentials.mechanism else {
            return Err(AuthError::new(format!(
                "BEARER credentials required, got {}",
                credentials.mechanism_name()
            )));
        };
        let mut found = None;
        for (token, identity) in &self.tokens {
            if secret_eq(&bearer.token, token) && found.is_none() {
                found = Some(identity.clone());
            }
        }
        found.ok_or_else(|| AuthError::new("unknown token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Password bytes compared by `password_eq` on this thread.
        pub(super) static COMPARED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn unknown_users_cost_the_same_comparison_as_wrong_passwords() {
        let auth = PlainAuthenticator::new().with_user("alice", "a much longer password");
        let info = ConnectionInfo::new();
        let compared = |user: &str, password: &str| {
            COMPARED.with(|n| n.set(0));
            let result = run(auth.authenticate(&Credentials::plain(user, password), &info));
            (result.is_ok(), COMPARED.with(|n| n.get()))
        };
        for password in [
            "",
            "x",
            "wrong password",
            "a much longer password, and more",
        ] {
            let known = compared("alice", password);
            let unknown = compared("mallory", password);
            // Both go through the same comparison, byte for byte of what the peer sent.
            assert_eq!(known, (false, password.len()), "{password:?}");
            assert_eq!(unknown, (false, password.len()), "{password:?}");
        }
        assert_eq!(
            compared("alice", "a much longer password"),
            (true, "a much longer password".len())
        );
        assert!(!password_eq("a", "ab") && !password_eq("ab", "a") && password_eq("", ""));
        assert!(!password_eq("a\0", "a"));
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        futures_util::FutureExt::now_or_never(f).expect("authenticators do not wait")
    }

    #[test]
    fn plain() {
        let auth = PlainAuthenticator::new()
            .with_user("alice", "pw1")
            .with_user("bob", "pw2");
        let info = ConnectionInfo::new();
        let check = |c: Credentials| run(auth.authenticate(&c, &info));
        assert_eq!(check(Credentials::plain("bob", "pw2")).unwrap(), "bob");
        assert!(check(Credentials::plain("bob", "pw1")).is_err());
        assert!(check(Credentials::plain("bob", "pw22")).is_err());
        assert!(check(Credentials::plain("carol", "")).is_err());
        assert!(check(Credentials::bearer("pw1")).is_err());
        assert!(check(Credentials::default()).is_err());
        assert!(!format!("{auth:?}").contains("pw"));
    }

    #[test]
    fn bearer() {
        let auth = BearerAuthenticator::new()
            .with_token("t-1", "svc-a")
            .with_token("t-2", "svc-b");
        let info = ConnectionInfo::new();
        let check = |c: Credentials| run(auth.authenticate(&c, &info));
        assert_eq!(check(Credentials::bearer("t-2")).unwrap(), "svc-b");
        assert!(check(Credentials::bearer("t-3")).is_err());
        assert!(check(Credentials::plain("svc-a", "t-1")).is_err());
        assert!(!format!("{auth:?}").contains("t-1"));
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let hello = crate::proto::v1::Hello {
            credentials: Some(Credentials::plain("alice", "hunter2")),
            ..Default::default()
        };
        let shown = format!("{hello:?} {:?}", Credentials::bearer("tok-123"));
        assert!(shown.contains("alice"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok-123"),
            "{shown}"
        );
    }
}
