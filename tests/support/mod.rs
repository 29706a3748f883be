//! Helpers shared by the integration tests: running the example binaries and a Python with the
//! official protobuf package.
#![allow(dead_code)] // each test binary uses a different subset

#[cfg(feature = "tls")]
pub mod certs;
pub mod js;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

/// Root of the repository.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a compiled example. `cargo test` builds the examples before running tests.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "example {name} is not built at {}: run the whole `cargo test` (it builds the examples)",
        path.display()
    );
    path
}

/// An example server running as a child process; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts example `name` with `args` and waits for its `listening on <addr>` line.
    pub fn start(name: &str, args: &[&str]) -> Server {
        Self::try_start(name, args)
            .unwrap_or_else(|| panic!("example {name} exited before printing `listening on`"))
    }

    /// Like [`start`](Self::start), but `None` if the example exits before listening (for
    /// instance because its port is not free yet).
    pub fn try_start(name: &str, args: &[&str]) -> Option<Server> {
        let mut child = Command::new(example(name))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        // From here on `Drop` kills the child, whatever happens.
        let mut server = Server {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stdout,
        };
        let mut line = String::new();
        loop {
            line.clear();
            let n = server
                .stdout
                .read_line(&mut line)
                .expect("read example stdout");
            if n == 0 {
                return None;
            }
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                server.addr = addr.parse().expect("address after `listening on`");
                return Some(server);
            }
        }
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python interpreter with the official `protobuf` package (and `grpcio-tools`, whose bundled
/// protoc generates Python classes from our .proto files), in a virtualenv under the target
/// directory. Made once; later runs reuse it.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
        let python = venv.join("bin").join("python");
        let ready = venv.join(".ready");
        // Several test binaries may get here at once: only one builds the virtualenv.
        std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).expect("target tmp dir");
        let lock = std::fs::File::create(venv.with_extension("lock")).expect("lock file");
        lock.lock().expect("lock the virtualenv");
        if !ready.exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
            run(Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "protobuf>=5.28",
                "grpcio-tools",
            ]));
            std::fs::write(&ready, b"").expect("mark virtualenv ready");
        }
        python
    })
}

/// Generates Python classes for every .proto file under `proto/` into a fresh directory and
/// returns it (to be put on `PYTHONPATH`).
pub fn python_protos() -> PathBuf {
    let out =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("python-gen-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("output dir");
    let protos: Vec<PathBuf> = walk(&repo_root().join("proto"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    let include = repo_root().join("proto");
    run(Command::new(python())
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", include.display()))
        .arg(format!("--python_out={}", out.display()))
        .args(&protos)
        .current_dir(repo_root()));
    out
}

/// Runs a Python script from `tests/python/` with the generated classes on its path; panics with
/// its output if it fails, returns its stdout otherwise.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let gen = python_protos();
    let output = Command::new(python())
        .arg(repo_root().join("tests").join("python").join(script))
        .args(args)
        .env("PYTHONPATH", &gen)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    print!("{stdout}");
    stdout
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Where the library's background work (session and reliable-stream drivers) runs in the
/// tests: async-std.
pub fn spawn(task: connect::transport::Task) {
    async_std::task::spawn(task);
}

/// The `n`th message of the reliable-stream tests: a `HelloWorld` with sequence `n`, packed.
pub fn numbered(sequence: u64) -> connect::prost_types::Any {
    connect::prost_types::Any::from_msg(&connect::proto::example::HelloWorld {
        text: "m".into(),
        sequence,
    })
    .expect("pack")
}

/// The sequence number of a message made by [`numbered`].
pub fn sequence(any: &connect::prost_types::Any) -> u64 {
    any.to_msg::<connect::proto::example::HelloWorld>()
        .expect("a HelloWorld")
        .sequence
}

/// Bounds a test step: a hang fails the test instead of blocking the suite.
pub async fn within<F: std::future::Future>(secs: u64, what: &str, fut: F) -> F::Output {
    async_std::future::timeout(std::time::Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {secs} s"))
}

/// A message whose large fields are `bytes::Bytes` (prost-build's `.bytes(..)` option): sessions
/// and reliable streams send fields of 16 KiB or more from where the application has them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Chunks {
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub parts: Vec<bytes::Bytes>,
    #[prost(string, tag = "3")]
    pub note: String,
}

impl prost::Name for Chunks {
    const NAME: &'static str = "Chunks";
    const PACKAGE: &'static str = "test.v1";
}
