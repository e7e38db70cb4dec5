//! The parsers of option values: durations, intervals, sizes, process names.
use std::time::Duration;

use helios_trace_common::MAX_STACK_WINDOW;

pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("'{text}' is not a duration like 30s, 5m or 1h ({e})"))
}

/// The live view and summary lines follow the once-a-second sampling: at least a second.
pub(super) fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_secs(1) {
        return Err(format!("the interval must be at least 1s, not {text}"));
    }
    Ok(interval)
}

/// Sites are forgotten and series exported once a second: a retention under a second would
/// forget a site in the same batch as its last counts, before the exporter took them.
pub(super) fn parse_retention(text: &str) -> Result<Duration, String> {
    let retention = parse_duration(text)?;
    if retention < Duration::from_secs(1) {
        return Err(format!("the retention must be at least 1s, not {text}"));
    }
    Ok(retention)
}

/// "16M", "512K", "1G" or bytes.
fn parse_size(text: &str, example: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, multiplier) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("'{text}' is not a size like {example}"))
}

/// A power of two of at least one page, as the kernel requires.
pub(super) fn parse_ring_size(text: &str) -> Result<u32, String> {
    let bytes = parse_size(text, "16M")?;
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > 1 << 30 {
        return Err(format!("ring buffer size must be a power of two between 4K and 1G, not {text}"));
    }
    Ok(bytes as u32)
}

/// Between 512 bytes and the largest window the kernel programs have room for.
pub(super) fn parse_stack_window(text: &str) -> Result<u32, String> {
    let bytes = parse_size(text, "8K")?;
    if !(512..=u64::from(MAX_STACK_WINDOW)).contains(&bytes) {
        return Err(format!(
            "the stack window must be between 512 and {}K bytes, not {text}",
            MAX_STACK_WINDOW / 1024
        ));
    }
    Ok(bytes as u32)
}

/// A process name as the kernel keeps it (`TASK_COMM_LEN`): 1 to 15 bytes. A longer name is
/// refused rather than cut: the kernel cut the process's own name at 15 bytes, and the user
/// would not see which 15 are matched.
pub(super) fn parse_comm(text: &str) -> Result<[u8; 16], String> {
    helios_trace_common::comm_key(text.as_bytes()).ok_or_else(|| {
        if text.is_empty() {
            "a process name cannot be empty".to_string()
        } else {
            let cut: String = text.bytes().take(15).map(char::from).collect();
            format!("'{text}' is longer than the 15 bytes the kernel keeps of a process name (it would be '{cut}')")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_names() {
        assert_eq!(parse_comm("nginx"), Ok(*b"nginx\0\0\0\0\0\0\0\0\0\0\0"));
        assert_eq!(parse_comm("exactly15bytes!").map(|k| k[15]), Ok(0));
        assert_eq!(
            parse_comm("python3-worker-pool").unwrap_err(),
            "'python3-worker-pool' is longer than the 15 bytes the kernel keeps of a process name (it would be 'python3-worker-')"
        );
        assert!(parse_comm("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("not a duration"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("16M"), Ok(16 << 20));
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert!(parse_ring_size("3M").is_err());
        assert!(parse_ring_size("1K").is_err());
        assert!(parse_ring_size("lots").is_err());
        assert!(parse_ring_size("99999999999999999999G").is_err());
    }

    #[test]
    fn stack_windows() {
        assert_eq!(parse_stack_window("8K"), Ok(8192));
        assert_eq!(parse_stack_window("16k"), Ok(16384));
        assert!(parse_stack_window("32K").unwrap_err().contains("between 512 and 16K"));
        assert!(parse_stack_window("100").is_err());
    }
}
