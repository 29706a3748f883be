//! Node.js with protobuf.js and `ws` for the JavaScript interop tests: `npm ci` from
//! `tests/js/package-lock.json` into a directory under the target directory, once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::repo_root;

/// Whether `program --version` runs.
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The `node_modules` directory with the pinned packages, or why there is none (no `node` or
/// `npm` on this machine). An `npm ci` that fails where both exist fails the test.
pub fn node_modules() -> Result<&'static Path, String> {
    static MODULES: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MODULES
        .get_or_init(|| {
            for program in ["node", "npm"] {
                if !runs(program) {
                    return Err(format!("`{program}` cannot run here"));
                }
            }
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("js-interop");
            std::fs::create_dir_all(&dir).expect("npm dir");
            // Several test binaries may get here at once: only one installs.
            let lock = std::fs::File::create(dir.with_extension("lock")).expect("lock file");
            lock.lock().expect("lock the npm dir");
            let ready = dir.join(".ready");
            let lockfile = std::fs::read(repo_root().join("tests/js/package-lock.json"))
                .expect("tests/js/package-lock.json");
            // Reinstall when the lock file changed.
            if std::fs::read(&ready).ok().as_deref() != Some(&lockfile[..]) {
                for file in ["package.json", "package-lock.json"] {
                    std::fs::copy(repo_root().join("tests/js").join(file), dir.join(file))
                        .expect("copy package files");
                }
                let status = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&dir)
                    .status()
                    .expect("run npm ci");
                assert!(status.success(), "npm ci failed in {}", dir.display());
                std::fs::write(&ready, &lockfile).expect("mark npm dir ready");
            }
            Ok(dir.join("node_modules"))
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// Runs `tests/js/<script>` with the pinned packages; returns its exit status and output.
pub fn run_node(modules: &Path, script: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new("node")
        .arg(repo_root().join("tests/js").join(script))
        .args(args)
        .env("NODE_PATH", modules)
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{script}:\n{text}");
    (output.status.success(), text)
}
