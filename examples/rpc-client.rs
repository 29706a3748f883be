//! Request/reply client for `rpc-server`: a few calls in parallel on one connection, one that
//! times out, one the server refuses, one for a method the server does not have. Prints each
//! outcome and exits 0 only if every one is as expected.
//!
//! ```text
//! cargo run --example rpc-server &
//! cargo run --example rpc-client [ADDR]      # ADDR defaults to 127.0.0.1:7879
//! ```

use std::time::Duration;

use anyhow::{bail, ensure};
use connect::dispatch::Dispatcher;
use connect::peer::{Peer, PeerConfig};
use connect::proto::example::{Add, Divide, HelloWorld, Quotient, Sleep, Slept, Sum};
use connect::rpc::{CallError, CallOptions, StatusCode};
use connect::transport::tcp;

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7879".into());
    let (peer, driver) = Peer::new(
        tcp::connect(addr.as_str()).await?,
        Dispatcher::new(),
        &PeerConfig::new().with_call_timeout(Some(Duration::from_secs(10))),
    );
    async_std::task::spawn(driver);

    // Three calls in flight at once; the slow one does not hold up the others.
    let slow = peer.call::<_, Slept>(&Sleep { ms: 200 });
    let sum = peer.call::<_, Sum>(&Add { a: 2, b: 3 });
    let quotient = peer.call::<_, Quotient>(&Divide {
        dividend: 84,
        divisor: 2,
    });
    let (slow, sum, quotient) = futures::join!(slow, sum, quotient);
    let (slow, sum, quotient) = (slow?, sum?, quotient?);
    println!(
        "parallel: 2 + 3 = {}, 84 / 2 = {}, slept {} ms",
        sum.value, quotient.value, slow.ms
    );
    ensure!(
        sum.value == 5 && quotient.value == 42 && slow.ms == 200,
        "wrong answers"
    );

    // A deadline shorter than the work.
    let options = CallOptions::new().with_timeout(Duration::from_millis(100));
    match peer
        .call_with::<_, Slept>(&Sleep { ms: 5_000 }, options)
        .await
    {
        Err(CallError::DeadlineExceeded) => println!("timeout: deadline exceeded"),
        other => bail!("expected a deadline exceeded, got {other:?}"),
    }

    // The handler refuses with a status of its choosing.
    let divide_by_zero = Divide {
        dividend: 1,
        divisor: 0,
    };
    match peer.call::<_, Quotient>(&divide_by_zero).await {
        Err(CallError::Status(status)) if status.code() == StatusCode::InvalidArgument => {
            println!("refused: {status}")
        }
        other => bail!("expected INVALID_ARGUMENT, got {other:?}"),
    }

    // A method (message type) the server has no handler for.
    let unknown = HelloWorld {
        text: "hi".into(),
        sequence: 1,
    };
    match peer.call::<_, HelloWorld>(&unknown).await {
        Err(CallError::Status(status)) if status.code() == StatusCode::NotFound => {
            println!("unknown method: {status}")
        }
        other => bail!("expected NOT_FOUND, got {other:?}"),
    }

    peer.close().await?;
    println!("done: every outcome as expected");
    Ok(())
}
