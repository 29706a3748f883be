//! Memory and CPU per idle link: N idle connections, then N idle sessions (default heartbeats),
//! between two child processes of this binary, a server and a client, so each side's RSS growth
//! is its own and each process stays under the file-descriptor limit with N sockets.
//!
//! ```text
//! connect-bench --idle-server conn|session N      prints "addr A", then "ready" after N links
//! connect-bench --idle-client conn|session N A    prints "rss KiB", then "ready" after N links
//! ```
//! Either exits when its standard input closes.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use connect::session::SessionConfig;
use connect::transport::tcp::{self, TcpListener};

/// What N idle links cost.
#[derive(Clone, Copy, Debug)]
pub struct Idle {
    pub links: usize,
    /// RSS growth per link of the accepting process, KiB.
    pub server_kib_per_link: f64,
    /// RSS growth per link of the connecting process, KiB.
    pub client_kib_per_link: f64,
    /// CPU time per second of wall time while the links sat idle, ms (server, client).
    pub server_cpu_ms_per_sec: f64,
    pub client_cpu_ms_per_sec: f64,
}

/// Whether the links are bare connections or sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Connection,
    Session,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Connection => "conn",
            Kind::Session => "session",
        }
    }

    fn parse(arg: &str) -> anyhow::Result<Self> {
        match arg {
            "conn" => Ok(Kind::Connection),
            "session" => Ok(Kind::Session),
            other => anyhow::bail!("unknown link kind {other:?}"),
        }
    }
}

/// Raises the soft file-descriptor limit to the hard one.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the kernel to fill in and to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Exits the process once standard input closes (the parent is done, or gone).
fn exit_with_stdin() {
    std::thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        std::process::exit(0);
    });
}

fn spawn(task: connect::transport::Task) {
    async_std::task::spawn(task);
}

/// The child process that accepts links and holds them, reading, until it is told to exit.
pub fn server(args: &[String]) -> anyhow::Result<()> {
    let [kind, n] = args else {
        anyhow::bail!("usage: --idle-server conn|session N");
    };
    let (kind, n): (Kind, usize) = (Kind::parse(kind)?, n.parse()?);
    raise_fd_limit();
    exit_with_stdin();
    async_std::task::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("addr {}", listener.local_addr()?);
        let ready = Arc::new(AtomicUsize::new(0));
        loop {
            let conn = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("idle server: accept: {e}");
                    async_std::task::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let ready = ready.clone();
            async_std::task::spawn(async move {
                let count = || {
                    if ready.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        println!("ready");
                    }
                };
                let result = match kind {
                    Kind::Connection => {
                        let mut conn = conn;
                        count();
                        conn.recv().await.map(drop)
                    }
                    Kind::Session => {
                        match tcp::accept_session(conn, &SessionConfig::new(), spawn).await {
                            Ok(mut session) => {
                                count();
                                session.recv().await.map(drop)
                            }
                            Err(e) => Err(e),
                        }
                    }
                };
                // Every link ends in an error when the parent kills the client after measuring;
                // one that fails before that never counts, and the parent's wait for "ready"
                // runs into its time limit.
                drop(result);
            });
        }
    })
}

/// The child process that opens N links and holds them until it is told to exit.
pub fn client(args: &[String]) -> anyhow::Result<()> {
    let [kind, n, addr] = args else {
        anyhow::bail!("usage: --idle-client conn|session N ADDR");
    };
    let (kind, n, addr): (Kind, usize, SocketAddr) =
        (Kind::parse(kind)?, n.parse()?, addr.parse()?);
    raise_fd_limit();
    exit_with_stdin();
    println!("rss {}", crate::harness::rss_kib());
    async_std::task::block_on(async {
        let mut connections = Vec::new();
        let mut sessions = Vec::new();
        for _ in 0..n {
            match kind {
                Kind::Connection => connections.push(tcp::connect(addr).await?),
                Kind::Session => {
                    sessions.push(tcp::connect_session(addr, &SessionConfig::new(), spawn).await?)
                }
            }
        }
        println!("ready");
        std::io::stdout().flush()?;
        // Held until the parent closes our standard input.
        loop {
            async_std::task::sleep(Duration::from_secs(3600)).await;
        }
    })
}

/// A child process, killed when dropped.
struct Process {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl Process {
    fn start(args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout),
        })
    }

    /// The next line the child prints that starts with `word`, without it.
    fn expect(&mut self, word: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        loop {
            line.clear();
            anyhow::ensure!(
                self.lines.read_line(&mut line)? > 0,
                "the child exited before saying {word:?}"
            );
            if let Some(rest) = line.trim().strip_prefix(word) {
                return Ok(rest.trim().to_string());
            }
        }
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.child.id()))?;
        let pages: u64 = statm.split_whitespace().nth(1).context("statm")?.parse()?;
        Ok(pages * 4)
    }

    /// CPU time (user + system) so far, ms.
    fn cpu_ms(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15, counted from the pid (field 1).
        let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
            + fields.get(12).context("stime")?.parse::<u64>()?;
        // SAFETY: sysconf with a constant name has no preconditions.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(ticks as f64 * 1000.0 / per_sec)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `links` idle links of `kind` and measures them, the CPU over `idle`.
pub fn measure(kind: Kind, links: usize, idle: Duration) -> anyhow::Result<Idle> {
    let n = links.to_string();
    let mut server = Process::start(&["--idle-server", kind.arg(), &n])?;
    let addr = server.expect("addr")?;
    std::thread::sleep(Duration::from_millis(100));
    let server_before = server.rss_kib()?;
    let mut client = Process::start(&["--idle-client", kind.arg(), &n, &addr])?;
    let client_before: u64 = client.expect("rss")?.parse()?;
    client.expect("ready")?;
    server.expect("ready")?;
    // Let the last handshakes' buffers settle.
    std::thread::sleep(Duration::from_millis(200));
    let (server_after, client_after) = (server.rss_kib()?, client.rss_kib()?);
    let (server_cpu, client_cpu) = (server.cpu_ms()?, client.cpu_ms()?);
    std::thread::sleep(idle);
    let secs = idle.as_secs_f64();
    let per_link = |before: u64, after: u64| after.saturating_sub(before) as f64 / links as f64;
    Ok(Idle {
        links,
        server_kib_per_link: per_link(server_before, server_after),
        client_kib_per_link: per_link(client_before, client_after),
        server_cpu_ms_per_sec: (server.cpu_ms()? - server_cpu) / secs,
        client_cpu_ms_per_sec: (client.cpu_ms()? - client_cpu) / secs,
    })
}
