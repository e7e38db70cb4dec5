//! Numbers and durations for people, as the report, its sentences and the live view write
//! them: "12,345", "+60/min", "3m 12s", "240 MB".

/// A growth rate in the unit that reads best: "+20/h", "+60/min", "+30/s".
pub(crate) fn rate(per_minute: f64) -> String {
    let sign = if per_minute < 0.0 { "-" } else { "+" };
    let m = per_minute.abs();
    if m >= 600.0 {
        format!("{sign}{}/s", thousands((m / 60.0).round() as u64))
    } else if m >= 1.0 {
        format!("{sign}{}/min", thousands(m.round() as u64))
    } else {
        let per_hour = m * 60.0;
        if per_hour >= 1.0 || per_hour == 0.0 {
            format!("{sign}{}/h", thousands(per_hour.round() as u64))
        } else {
            format!("{sign}{per_hour:.2}/h")
        }
    }
}

/// 12345 → "12,345".
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "1 process", "3 processes".
pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "19h 4m", "3m 12s", "4.2s".
pub(crate) fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m {}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h {}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

/// "1.5 GB", "240 MB", "12 KB".
pub(crate) fn bytes(n: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n.abs();
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let sign = if n < 0.0 { "-" } else { "" };
    if unit == 0 || value >= 100.0 {
        format!("{sign}{value:.0} {}", units[unit])
    } else {
        format!("{sign}{value:.1} {}", units[unit])
    }
}

/// "+240 MB", "-1.5 KB".
pub(crate) fn signed_bytes(n: f64) -> String {
    if n >= 0.0 { format!("+{}", bytes(n)) } else { bytes(n) }
}

/// "+7,200", "-3".
pub(crate) fn signed_count(n: f64) -> String {
    let rounded = n.round();
    let text = thousands(rounded.abs() as u64);
    if rounded < 0.0 { format!("-{text}") } else { format!("+{text}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_numbers_for_people() {
        assert_eq!(rate(2000.0 / 60.0), "+33/min");
        assert_eq!(rate(2000.0 / 3600.0), "+33/h");
        assert_eq!(rate(0.001), "+0.06/h");
        assert_eq!(rate(120.0), "+120/min");
        assert_eq!(rate(6000.0), "+100/s");
        assert_eq!(rate(-3.0), "-3/min");
        assert_eq!(rate(0.0), "+0/h");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_duration(4.25), "4.2s");
        assert_eq!(human_duration(192.0), "3m 12s");
        assert_eq!(human_duration(68_640.0), "19h 4m");
    }
}
