//! Sessions over mutual TLS: the session's authenticator sees the client certificate the TLS
//! layer verified, so a service can be authenticated by its certificate instead of a password.

mod support;

use support::spawn;

use std::time::Duration;

use async_trait::async_trait;
use connect::proto::example::HelloWorld;
use connect::proto::v1::{Credentials, ReasonCode};
use connect::session::{self, AuthError, Authenticator, SessionConfig, SessionEnd};
use connect::transport::tls::{self, TlsListener};
use connect::{ConnectionInfo, Error};
use support::certs::{client_config, server_config, Ca, Role};

/// Accepts clients whose verified certificate names one of the allowed services, and only when
/// they send no password-style credentials.
struct CertificateAuthenticator {
    allowed: Vec<&'static str>,
}

#[async_trait]
impl Authenticator for CertificateAuthenticator {
    async fn authenticate(
        &self,
        credentials: &Credentials,
        connection: &ConnectionInfo,
    ) -> Result<String, AuthError> {
        if credentials.mechanism.is_some() {
            return Err(AuthError::new("certificate clients send no credentials"));
        }
        let name = connection
            .peer_identity()
            .and_then(|id| id.common_name())
            .ok_or_else(|| AuthError::new("no verified client certificate"))?;
        if self.allowed.contains(&name) {
            Ok(format!("service:{name}"))
        } else {
            Err(AuthError::new(format!("service {name} is not allowed")))
        }
    }
}

#[async_std::test]
async fn the_authenticator_sees_the_verified_client_certificate() {
    async_std::future::timeout(Duration::from_secs(20), async {
        let ca = Ca::new("test CA");
        let server = ca.issue("server", &["localhost"], Role::Server);
        let allowed = ca.issue("billing", &["billing.internal"], Role::Client);
        let other = ca.issue("intruder", &["intruder.internal"], Role::Client);

        let mut listener = TlsListener::bind("127.0.0.1:0", server_config(&server, Some(&ca)))
            .await
            .unwrap();
        let addr = listener.local_addr();
        let accepted = async_std::task::spawn(async move {
            let config = SessionConfig::new().with_authenticator(CertificateAuthenticator {
                allowed: vec!["billing"],
            });
            let mut outcomes = Vec::new();
            for _ in 0..2 {
                let conn = listener.accept().await.unwrap();
                let outcome = match session::accept(conn, &config).await {
                    Ok((mut session, driver)) => {
                        spawn(connect::transport::driver_task(driver));
                        let identity = session.info().identity().map(str::to_owned);
                        // Echo until the client closes.
                        while let Some(any) = session.recv().await.unwrap() {
                            session.send(any).await.unwrap();
                        }
                        Ok(identity)
                    }
                    Err(e) => Err(e),
                };
                outcomes.push(outcome);
            }
            outcomes
        });

        // The allowed service: handshake, one echo, graceful close.
        let conn = tls::connect(
            addr,
            "localhost",
            &client_config(ca.certificates(), Some(&allowed)),
        )
        .await
        .unwrap();
        let (mut session, driver) = session::connect(conn, &SessionConfig::new()).await.unwrap();
        spawn(connect::transport::driver_task(driver));
        assert_eq!(session.info().identity(), Some("service:billing"));
        let msg = HelloWorld {
            text: "invoice".into(),
            sequence: 1,
        };
        session.send_message(&msg).await.unwrap();
        assert_eq!(
            session.recv_message::<HelloWorld>().await.unwrap(),
            Some(msg)
        );
        session
            .close_with(ReasonCode::Normal, "done")
            .await
            .unwrap();

        // A certificate from the same CA passes TLS but not the authenticator.
        let conn = tls::connect(
            addr,
            "localhost",
            &client_config(ca.certificates(), Some(&other)),
        )
        .await
        .unwrap();
        match session::connect(conn, &SessionConfig::new()).await {
            Err(Error::Session(SessionEnd::Refused { code, .. })) => {
                assert_eq!(code, ReasonCode::AuthenticationFailed)
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }

        let outcomes = accepted.await;
        assert_eq!(
            outcomes[0].as_ref().unwrap().as_deref(),
            Some("service:billing")
        );
        assert!(
            matches!(
                &outcomes[1],
                Err(Error::Session(SessionEnd::Refused {
                    code: ReasonCode::AuthenticationFailed,
                    ..
                }))
            ),
            "{:?}",
            outcomes[1].as_ref().map(|_| ())
        );
    })
    .await
    .expect("bounded in time");
}
