//! Figures as a reader writes them, for failure messages.

use std::time::Duration;

/// A duration as a reader says it: `10 s`, `300 ms`.
pub fn duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// A count with thousands separators: `1,048,576`.
pub fn count(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `n bytes`, or `1 byte`.
pub(crate) fn bytes(n: usize) -> String {
    if n == 1 {
        "1 byte".to_string()
    } else {
        format!("{} bytes", count(n))
    }
}

/// Bytes as text with escapes (`"pin"`, `"\xff\n"`), the last few of a long run.
pub(crate) fn shown(data: &[u8]) -> String {
    const MAX: usize = 40;
    if data.len() <= MAX {
        format!("\"{}\"", data.escape_ascii())
    } else {
        let tail = &data[data.len() - MAX..];
        format!("\"...{}\"", tail.escape_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations_read_as_a_person_writes_them() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(524_288), "524,288");
        assert_eq!(count(1_048_576), "1,048,576");
        assert_eq!(duration(Duration::from_secs(10)), "10 s");
        assert_eq!(duration(Duration::from_millis(300)), "300 ms");
    }
}
