//! The README's commands as written (issue 24): every `sudo helios-trace …` line of its examples
//! under "Using it", and the Quick start's leak-finding line, run with the binary installed as
//! `helios-trace` on PATH, as sudo runs them: as root with SUDO_UID, SUDO_GID and SUDO_USER of
//! user nobody, from a 0700 directory of that user (their home, where `-o r.json` lands). Each
//! example has its driver here: one the README gains without a driver fails the test, so the
//! README cannot promise a command nothing ran.
use std::{
    fs,
    os::unix::{fs::MetadataExt as _, fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{adhoc::Tmux, support::*};

const NOBODY: u32 = 65534;

fn readme() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap()
}

/// The commands of the fenced block that follows `heading` in the README, comments cut.
fn block_after(readme: &str, heading: &str) -> Vec<String> {
    let start = readme.find(heading).unwrap_or_else(|| panic!("README has no {heading:?}"));
    let block = readme[start..].split("```").nth(1).expect("a fenced block follows");
    block
        .lines()
        .skip(1) // the fence's language
        .map(|line| line.split(" # ").next().unwrap().trim().to_string())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// Where the README's commands run: nobody's home, the binary installed on PATH, the shipped
/// example copied where `examples/…` finds it.
struct Home {
    dir: tempfile::TempDir,
    bin: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::Builder::new().prefix("helios-readme-").tempdir_in("/tmp").unwrap();
        let bin = tempfile::Builder::new().prefix("helios-bin-").tempdir_in("/tmp").unwrap();
        fs::copy(helios_trace_bin(), bin.path().join("helios-trace")).unwrap();
        fs::set_permissions(bin.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let examples = dir.path().join("examples");
        fs::create_dir(&examples).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/leaky_server.py");
        fs::copy(&shipped, examples.join("leaky_server.py")).unwrap();
        for path in [dir.path(), examples.as_path(), examples.join("leaky_server.py").as_path()] {
            std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Home { dir, bin }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `sudo WORDS…` as sudo would run it for nobody, from their home.
    fn sudo(&self, words: &[String]) -> Command {
        assert_eq!(words[0], "sudo", "{words:?}");
        let mut command = Command::new(&words[1]);
        command
            .args(&words[2..])
            .current_dir(self.path())
            .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", self.bin.path().display()))
            .envs([("SUDO_UID", "65534"), ("SUDO_GID", "65534"), ("SUDO_USER", "nobody")])
            .stdin(Stdio::null());
        command
    }

    /// The same line for a shell (tmux): the environment and directory spelled out.
    fn sudo_shell(&self, words: &[String]) -> String {
        format!(
            "cd {} && env PATH={}:/usr/local/bin:/usr/bin:/bin SUDO_UID=65534 SUDO_GID=65534 SUDO_USER=nobody {}",
            self.path().display(),
            self.bin.path().display(),
            words[1..].join(" ")
        )
    }
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

/// Start `command`, wait until it says it attached, interrupt it as Ctrl-C does; its output
/// (stderr: the lines it wrote).
fn until_interrupted(mut command: Command, after: Duration) -> Output {
    let (child, stderr) = spawn_attached(command.stdout(Stdio::piped()));
    std::thread::sleep(after);
    signal(child.id(), libc::SIGINT);
    let mut out = child.wait_with_output().unwrap();
    // The stderr reader saw everything once the process is gone.
    out.stderr = stderr.iter().collect::<Vec<_>>().join("\n").into_bytes();
    out
}

fn said(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[cfg_attr(kernel_tests_not_root, ignore = "loads eBPF programs: needs root")]
fn the_readmes_examples_run_as_written_under_sudo() {
    if !require_bpf() {
        return;
    }
    let readme = readme();
    let examples = block_after(&readme, "Examples (also in `--help`):");
    let known = [
        "sudo helios-trace",
        "sudo helios-trace --duration 30s",
        "sudo helios-trace -p 4121 --format json -o r.json",
        "sudo helios-trace run -- python3 examples/leaky_server.py",
        "sudo helios-trace --comm nginx --uid 33",
    ];
    assert_eq!(examples, known, "a README example without a driver in this test (or one gone)");
    let quick = block_after(&readme, "To see it find a leak");
    assert_eq!(quick, ["cargo xtask run -- run -- python3 examples/leaky_server.py"]);

    let home = Home::new();
    // The 30-second session, beside the others.
    let thirty = {
        let mut command = home.sudo(&words(known[1]));
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.spawn().unwrap()
    };

    // `sudo helios-trace`: the live view on a terminal until q, then the report.
    let status = home.path().join("live-status");
    let tmux = Tmux::start(&format!(
        "{} > live-report.txt; echo $? > {}",
        home.sudo_shell(&words(known[0])),
        status.display()
    ));
    tmux.wait_for("events (", Duration::from_secs(40));
    tmux.keys("q");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status.exists() {
        assert!(Instant::now() < deadline, "no exit on q:\n{}", tmux.screen());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fs::read_to_string(&status).unwrap().trim(), "0");
    let live_report = fs::read_to_string(home.path().join("live-report.txt")).unwrap();
    assert!(live_report.starts_with("helios-trace: ") && live_report.contains("traced"), "{live_report}");

    // `-p 4121 --format json -o r.json`: a real process's pid, the report nobody's, in their home.
    let workload = Workload::spawn();
    let line = known[2].replace("4121", &workload.pid.to_string());
    let out = until_interrupted(home.sudo(&words(&line)), Duration::from_secs(1));
    assert!(out.status.success(), "{}", said(&out));
    let report_path = home.path().join("r.json");
    let meta = fs::metadata(&report_path).unwrap_or_else(|e| panic!("r.json: {e}\n{}", said(&out)));
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "r.json belongs to the sudo user");
    let report: Value = serde_json::from_str(&fs::read_to_string(&report_path).unwrap()).unwrap();
    assert!(process(&report, workload.pid).is_some(), "the pid's report");
    drop(workload);

    // `run -- python3 examples/leaky_server.py`: runs as nobody, exits 0, names the leak.
    let out = home.sudo(&words(known[3])).output().unwrap();
    assert!(out.status.success(), "{}", said(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().find(|l| l.starts_with("helios-trace: ")).unwrap_or_default();
    assert!(first.ends_with("1 suspected leak"), "{}", said(&out));
    let accept = readme_line_of("examples/leaky_server.py", "listener.accept()");
    let site = format!("leaky_server.py:serve:{accept}");
    assert!(text.contains(&format!("60 socket open at {site}")), "{}", said(&out));
    assert!(readme.contains(&format!("(`{site}`)")), "the README names the line the report names");
    assert!(text.contains("CLOSE_WAIT"), "{}", said(&out));
    assert!(text.contains("served 60 clients"), "the command's own output: {}", said(&out));

    // `--comm nginx --uid 33`: a process named nginx and one running as uid 33 are reported
    // (the filters combine as any); a third, neither, is not.
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // uid 33 runs its copy from here.
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let sleeper = |name: &str| {
        let path = scratch.path().join(name);
        fs::copy("/bin/sleep", &path).unwrap();
        let mut command = Command::new(&path);
        command.arg("60");
        command
    };
    let mut named = sleeper("nginx").spawn().unwrap();
    let mut as_33 = sleeper("worker").uid(33).gid(33).spawn().unwrap();
    let mut neither = sleeper("bystander").spawn().unwrap();
    let out = until_interrupted(home.sudo(&words(known[4])), Duration::from_secs(1));
    for child in [&mut named, &mut as_33, &mut neither] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(out.status.success(), "{}", said(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("PID {} nginx", named.id())), "the process named nginx: {}", said(&out));
    assert!(text.contains(&format!("PID {} worker", as_33.id())), "the process of uid 33: {}", said(&out));
    assert!(!text.contains(&format!("PID {} ", neither.id())), "a process of neither: {}", said(&out));

    let out = thirty.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", said(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("helios-trace: 30."), "a 30 s session: {}", said(&out));
}

/// The line of `file` (in the repository) that holds `text`.
fn readme_line_of(file: &str, text: &str) -> usize {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    fs::read_to_string(&path).unwrap().lines().position(|l| l.contains(text)).expect("the line") + 1
}
