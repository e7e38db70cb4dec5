//! What the kernel and our credentials must provide, checked before loading so that a user gets
//! one line naming what is missing instead of a verifier log or EPERM.
use std::{fs, path::Path};

use thiserror::Error;

// include/uapi/linux/capability.h
pub(crate) const CAP_DAC_OVERRIDE: u32 = 1;
pub(crate) const CAP_DAC_READ_SEARCH: u32 = 2;
pub(crate) const CAP_SYS_PTRACE: u32 = 19;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_PERFMON: u32 = 38;
pub(crate) const CAP_BPF: u32 = 39;

pub(crate) fn capability_name(cap: u32) -> &'static str {
    match cap {
        CAP_DAC_OVERRIDE => "CAP_DAC_OVERRIDE",
        CAP_DAC_READ_SEARCH => "CAP_DAC_READ_SEARCH",
        CAP_SYS_PTRACE => "CAP_SYS_PTRACE",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_BPF => "CAP_BPF",
        _ => "CAP_?",
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum CheckError {
    #[error(
        "missing capability {}: loading eBPF programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run as root (sudo helios-trace) or grant them",
        missing.join(" and ")
    )]
    MissingCapability { missing: Vec<&'static str> },
    #[error(
        "missing capability CAP_DAC_READ_SEARCH: tracefs at {path} is mode {mode:o} (owner uid {owner}), and the tracepoint ids in it can only be read with CAP_DAC_READ_SEARCH (or as its owner); run as root (sudo helios-trace) or grant it"
    )]
    TracefsUnreadable { path: String, mode: u32, owner: u32 },
    #[error("this kernel ({running}) lacks {feature}, which needs Linux {minimum} or later")]
    KernelTooOld { feature: &'static str, minimum: &'static str, running: String },
}

/// The effective capability set of this process, from /proc/self/status (CapEff, hex).
pub(crate) fn effective_capabilities(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

pub(crate) fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// CAP_BPF + CAP_PERFMON (Linux ≥ 5.8), or CAP_SYS_ADMIN which implies both.
pub(crate) fn check_bpf_capabilities(caps: u64) -> Result<(), CheckError> {
    if has(caps, CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&'static str> =
        [CAP_BPF, CAP_PERFMON].into_iter().filter(|c| !has(caps, *c)).map(capability_name).collect();
    if missing.is_empty() { Ok(()) } else { Err(CheckError::MissingCapability { missing }) }
}

/// `statfs(2)`'s f_type of tracefs (include/uapi/linux/magic.h TRACEFS_MAGIC).
const TRACEFS_MAGIC: i64 = 0x74726163;

/// Is a tracefs mounted at `path`? statfs needs no permission on the directory itself.
pub(crate) fn is_tracefs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statfs buffer of the right type.
    unsafe { libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == TRACEFS_MAGIC }
}

/// A tracefs root this process cannot search: without CAP_DAC_READ_SEARCH, that is the
/// capability missing.
pub(crate) fn check_tracefs_access(caps: u64, path: &str) -> Result<(), CheckError> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = fs::metadata(path) else { return Ok(()) };
    tracefs_access(caps, path, meta.mode() & 0o7777, meta.uid())
}

fn tracefs_access(caps: u64, path: &str, mode: u32, owner: u32) -> Result<(), CheckError> {
    if has(caps, CAP_DAC_READ_SEARCH) || has(caps, CAP_DAC_OVERRIDE) {
        return Ok(());
    }
    Err(CheckError::TracefsUnreadable { path: path.to_string(), mode, owner })
}

/// Capabilities that are not required to trace but without which /proc of other users'
/// processes cannot be read (baseline, reconciliation, stacks): worth a warning.
pub(crate) fn missing_proc_capabilities(caps: u64) -> Vec<&'static str> {
    [CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]
        .into_iter()
        .filter(|c| !has(caps, *c))
        .map(capability_name)
        .collect()
}

/// (major, minor) of a `uname -r` string such as "6.18.44-fc-v669".
pub(crate) fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// BPF ring buffers arrived in Linux 5.8 (commit 457f44363a88), the `bpf_loop` helper in 5.17:
/// the exit program calls it in every mode, for what recvmsg received
/// (helios-trace-ebpf/src/syscalls.rs, `received_nothing`), so an older verifier refuses it.
pub(crate) fn check_kernel(release: &str) -> Result<(), CheckError> {
    let too_old =
        |feature, minimum| CheckError::KernelTooOld { feature, minimum, running: release.to_string() };
    match kernel_version(release) {
        Some(version) if version < (5, 8) => Err(too_old("BPF ring buffers", "5.8")),
        Some(version) if version < (5, 17) => Err(too_old("bpf_loop", "5.17")),
        _ => Ok(()),
    }
}

pub(crate) fn running_kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

pub(crate) fn own_capabilities() -> u64 {
    fs::read_to_string("/proc/self/status").map(|s| effective_capabilities(&s)).unwrap_or(0)
}

/// The offset of a field in a tracepoint's format file, e.g. `group_dead` of
/// sched_process_exit ("field:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;").
pub(crate) fn tracepoint_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.split_whitespace().last()?.split('[').next()?;
        if name != field {
            return None;
        }
        rest.split(';').find_map(|kv| kv.trim().strip_prefix("offset:")?.parse().ok())
    })
}

pub(crate) fn tracepoint_exists(tracefs: &Path, category: &str, name: &str) -> bool {
    tracefs.join("events").join(category).join(name).join("id").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_from_status() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert!(check_bpf_capabilities(effective_capabilities(root)).is_ok());
        let none = "CapEff:\t0000000000000000\n";
        let err = check_bpf_capabilities(effective_capabilities(none)).unwrap_err();
        assert_eq!(err, CheckError::MissingCapability { missing: vec!["CAP_BPF", "CAP_PERFMON"] });
        assert!(err.to_string().starts_with("missing capability CAP_BPF and CAP_PERFMON"));
        let bpf_only = format!("CapEff:\t{:016x}\n", 1u64 << CAP_BPF);
        assert_eq!(
            check_bpf_capabilities(effective_capabilities(&bpf_only)),
            Err(CheckError::MissingCapability { missing: vec!["CAP_PERFMON"] })
        );
        assert_eq!(missing_proc_capabilities(1 << CAP_SYS_PTRACE), vec!["CAP_DAC_READ_SEARCH"]);
    }

    #[test]
    fn an_unreadable_tracefs_names_cap_dac_read_search() {
        let err =
            tracefs_access(1 << CAP_BPF | 1 << CAP_PERFMON, "/sys/kernel/tracing", 0o700, 0).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "missing capability CAP_DAC_READ_SEARCH: tracefs at /sys/kernel/tracing is mode 700 (owner uid 0)"
            ),
            "{err}"
        );
        assert!(tracefs_access(1 << CAP_DAC_READ_SEARCH, "/t", 0o700, 0).is_ok());
        assert!(tracefs_access(1 << CAP_DAC_OVERRIDE, "/t", 0o700, 0).is_ok());
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0-150-generic"), Some((5, 4)));
        assert!(check_kernel("6.18.44").is_ok());
        let err = check_kernel("5.4.0-150-generic").unwrap_err();
        assert_eq!(
            err.to_string(),
            "this kernel (5.4.0-150-generic) lacks BPF ring buffers, which needs Linux 5.8 or later"
        );
        let err = check_kernel("5.15.0-91-generic").unwrap_err();
        assert_eq!(
            err.to_string(),
            "this kernel (5.15.0-91-generic) lacks bpf_loop, which needs Linux 5.17 or later"
        );
        assert!(check_kernel("5.17.0").is_ok());
    }

    #[test]
    fn field_offsets_from_format_files() {
        let format = "name: sched_process_exit\nformat:\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";
        assert_eq!(tracepoint_field_offset(format, "group_dead"), Some(32));
        assert_eq!(tracepoint_field_offset(format, "comm"), Some(8));
        assert_eq!(tracepoint_field_offset(format, "missing"), None);
    }
}
