//! Running a README's commands as written. The `sh` blocks of a README are split into commands
//! (a line, a line continued with `\`, or a heredoc with its body) and run by `sh` through a
//! `cargo` on PATH that runs the binaries cargo already built: `cargo run --release -- ARGS` is
//! `sagaplane ARGS`, `cargo run --release -p PACKAGE -- ARGS` is that package's binary. A test
//! may change addresses (free ports instead of fixed ones), and says which.

use std::path::{Path, PathBuf};

/// The ```` ```sh ```` blocks of `markdown`, in order.
pub fn sh_blocks(markdown: &str) -> Vec<String> {
    markdown
        .split("```sh\n")
        .skip(1)
        .map(|block| block[..block.find("```").unwrap_or(block.len())].to_string())
        .collect()
}

/// The commands of a block: comment and blank lines dropped, continued lines and heredocs kept
/// whole.
pub fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let mut command = line.to_string();
        let mut last = line.to_string();
        while last.trim_end().ends_with('\\') {
            let Some(next) = lines.next() else { break };
            command.push('\n');
            command.push_str(next);
            last = next.to_string();
        }
        if let Some(at) = line.find("<<'") {
            let end = line[at + 3..].split('\'').next().unwrap_or_default().to_string();
            for body in lines.by_ref() {
                command.push('\n');
                command.push_str(body);
                if body == end {
                    break;
                }
            }
        }
        out.push(command);
    }
    out
}

/// A directory holding a `cargo` that runs already-built binaries: `packages` maps a package
/// name (`""` for the default, `sagaplane`) to its binary.
pub fn cargo_shim(dir: &Path, packages: &[(&str, &Path)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("cargo-shim");
    std::fs::create_dir_all(&bin).expect("shim dir");
    let mut cases = String::new();
    for (package, binary) in packages {
        let pattern =
            if package.is_empty() { "run --release --".to_string() } else { format!("run --release -p {package} --") };
        let skip = pattern.split(' ').count();
        cases.push_str(&format!("  \"{pattern}\"*) shift {skip}; exec '{}' \"$@\" ;;\n", binary.display()));
    }
    let script = format!(
        "#!/bin/sh\n# cargo run --release [-p PACKAGE] -- ARGS: the binary already built\ncase \"$*\" in\n{cases}  \"build \"*) exit 0 ;; # built already, by the cargo running the tests\n  *) echo \"cargo shim: cargo $* is not a README command\" >&2; exit 64 ;;\nesac\n"
    );
    let cargo = bin.join("cargo");
    std::fs::write(&cargo, script).expect("write shim");
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).expect("chmod shim");
    bin
}

/// `sh -c script` in `dir`, with only PATH (the shim first) and HOME of the test's environment,
/// in a process group of its own for [`stop_group`].
pub fn shell(dir: &Path, shim: &Path, script: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("sh");
    command
        .process_group(0)
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env_clear()
        .env("PATH", format!("{}:{}", shim.display(), std::env::var("PATH").unwrap_or_default()))
        .env("HOME", dir)
        .stdin(std::process::Stdio::null());
    command
}

/// Sends `signal` (`TERM`, `INT`, `KILL`) to the process group a [`shell`] started with `pid`.
pub fn stop_group(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill").args([&format!("-{signal}"), "--", &format!("-{pid}")]).status();
}

/// A [`shell`]'s child whose whole process group is killed when it is dropped, so a failing
/// test leaves no server behind.
pub struct Group(pub std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        stop_group(self.0.id(), "KILL");
        let _ = self.0.wait();
    }
}
