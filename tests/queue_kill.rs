//! Work queues under fire: 100 000 jobs through 4 worker processes (the `queue-worker` example)
//! that are SIGKILLed and restarted while they work, against a distributor process (the
//! `queue-producer` example). Every job must be acknowledged, none lost, none dead-lettered;
//! a job a worker printed twice must have been redelivered.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{example, Server};

const JOBS: usize = 100_000;
const WORKERS: usize = 4;
const KILLS: usize = 8;
/// A hang guard only: the run takes seconds.
const GUARD: Duration = Duration::from_secs(300);

/// What the workers printed: how many times each job was done, and in total.
#[derive(Default)]
struct Seen {
    done: Mutex<Vec<u32>>,
    total: AtomicU64,
}

fn start_worker(addr: &str, seen: &Arc<Seen>) -> Child {
    let mut child = Command::new(example("queue-worker"))
        .args([addr, "--credit", "32"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start queue-worker");
    let stdout = child.stdout.take().expect("piped stdout");
    let seen = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut words = line.split_whitespace();
            if words.next() != Some("done") {
                continue;
            }
            let sequence: usize = words.next().and_then(|s| s.parse().ok()).expect("sequence");
            seen.done.lock().unwrap()[sequence] += 1;
            seen.total.fetch_add(1, Ordering::Relaxed);
        }
    });
    child
}

#[test]
fn killed_workers_lose_nothing() {
    let started = Instant::now();
    let mut producer = Server::start(
        "queue-producer",
        &[
            "127.0.0.1:0",
            "--count",
            &JOBS.to_string(),
            "--max-deliveries",
            "0",
        ],
    );
    let addr = producer.addr.to_string();
    let seen = Arc::new(Seen {
        done: Mutex::new(vec![0; JOBS]),
        total: AtomicU64::new(0),
    });
    let mut workers: Vec<Child> = (0..WORKERS).map(|_| start_worker(&addr, &seen)).collect();

    // Kill one worker at each tenth of the way (by jobs done, not by time), and start it again.
    for kill in 0..KILLS {
        let mark = (kill as u64 + 1) * JOBS as u64 / (KILLS as u64 + 2);
        while seen.total.load(Ordering::Relaxed) < mark {
            assert!(started.elapsed() < GUARD, "stuck before kill {kill}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let victim = &mut workers[kill % WORKERS];
        victim.kill().expect("SIGKILL a worker");
        victim.wait().expect("reap it");
        *victim = start_worker(&addr, &seen);
    }

    // The distributor says when every job is acknowledged; past the guard a watchdog kills it,
    // which ends its output.
    let pid = producer.child.id().to_string();
    let left = GUARD.saturating_sub(started.elapsed());
    std::thread::spawn(move || {
        std::thread::sleep(left);
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
    });
    let mut done = String::new();
    let mut line = String::new();
    while producer.stdout.read_line(&mut line).unwrap_or(0) > 0 {
        if line.starts_with("done:") {
            done = line.trim().to_owned();
            break;
        }
        assert!(!line.starts_with("dead letter"), "{line}");
        line.clear();
    }
    assert!(
        !done.is_empty(),
        "the distributor did not finish within {GUARD:?}"
    );
    for mut worker in workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    println!("{done} ({KILLS} workers killed, {:?})", started.elapsed());
    let numbers: Vec<u64> = done
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [enqueued, acked, redelivered, dead, expired] = numbers[..] else {
        panic!("unexpected summary: {done}");
    };
    assert_eq!(
        (enqueued, acked, dead, expired),
        (JOBS as u64, JOBS as u64, 0, 0)
    );

    let done = seen.done.lock().unwrap();
    let missing = done.iter().filter(|&&n| n == 0).count();
    let again: u64 = done.iter().map(|&n| u64::from(n.saturating_sub(1))).sum();
    println!("redeliveries: {redelivered}; jobs done more than once by the workers: {again}");
    assert_eq!(missing, 0, "jobs no worker did");
    assert!(
        again <= redelivered,
        "{again} jobs done twice but only {redelivered} redelivered"
    );
    assert!(redelivered > 0, "the kills hit no job in flight");
}
