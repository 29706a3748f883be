//! Work-queue worker: connects to a distributor (`queue-producer`), takes jobs within its
//! credit, and acknowledges each (PROTOCOL.md section 14). Run several: the jobs are shared out
//! among them, and killing one loses nothing (its jobs go to the others).
//!
//! ```text
//! cargo run --example queue-worker -- ADDR [--credit N] [--work-ms D] [--count N]
//! ```
//!
//! For each job it prints `done <sequence> <delivery_count>` (before acknowledging it, so a
//! job whose acknowledgement was lost with a killed worker is printed again by the worker it is
//! redelivered to), sleeping D ms first (default 0) to play a slow worker. It holds at most N
//! unacknowledged jobs (`--credit`, default 16), reconnects by itself, and with `--count`
//! exits after acknowledging that many jobs.

use std::time::Duration;

use connect::dispatch::Dispatcher;
use connect::endpoint::{Endpoint, EndpointConfig};
use connect::proto::example::HelloWorld;
use connect::queue::{Worker, WorkerConfig};
use connect::reliable::Backoff;
use connect::transport::tcp;

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::init();
    let mut addr = None;
    let (mut credit, mut work_ms, mut count) = (16u32, 0u64, u64::MAX);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--credit" => credit = value()?.parse()?,
            "--work-ms" => work_ms = value()?.parse()?,
            "--count" => count = value()?.parse()?,
            flag if flag.starts_with('-') => addr = None,
            _ => addr = Some(arg),
        }
    }
    let Some(addr) = addr else {
        println!("usage: queue-worker ADDR [--credit N] [--work-ms D] [--count N]");
        return Ok(());
    };
    let addr: std::net::SocketAddr = addr.parse()?;

    let worker = Worker::new(WorkerConfig::new().with_credit(credit));
    let config = EndpointConfig::new().with_backoff(
        Backoff::new()
            .with_initial(Duration::from_millis(20))
            .with_max(Duration::from_millis(500)),
    );
    let endpoint = Endpoint::new(config, worker.route(Dispatcher::new()), |task| {
        async_std::task::spawn(task);
    });
    worker.attach(&endpoint);
    endpoint.connect(move || tcp::connect(addr));

    let mut deliveries = worker.deliveries();
    let mut acked = 0;
    while acked < count {
        let Some(delivery) = deliveries.recv().await else {
            break;
        };
        let job: HelloWorld = delivery.to_msg()?;
        if work_ms > 0 {
            async_std::task::sleep(Duration::from_millis(work_ms)).await;
        }
        println!("done {} {}", job.sequence, delivery.delivery_count());
        // A link that ended meanwhile gives the job back to the distributor: not an error here.
        if delivery.ack().await.is_ok() {
            acked += 1;
        }
    }
    endpoint.close().await;
    Ok(())
}
