//! Numbers as people read them: thousands separators, a k suffix from 10,000, only as many
//! decimals as a step needs. Chart ticks (`report::style`) and messages (flight records, check
//! mode) write numbers the same way.

/// Decimals a tick step needs: the fewest that write it exactly (2.5 -> 1, 0.25 -> 2, 500 -> 0).
fn decimals(step: f64) -> usize {
    if !(step.is_finite() && step > 0.0) {
        return 0;
    }
    (0..4)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(3)
}

/// `1234567` -> `1,234,567`.
pub fn grouped(int: u64) -> String {
    let digits = int.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A tick value at a tick `step`: `0`, `2,500`, `12.5k`, `0.25`.
pub fn number(v: f64, step: f64) -> String {
    let sign = if v < 0.0 { "-" } else { "" };
    let a = v.abs();
    if a >= 10_000.0 && step >= 1000.0 {
        let k = a / 1000.0;
        let d = decimals(step / 1000.0);
        return format!("{sign}{k:.d$}k");
    }
    let d = decimals(step);
    if d == 0 {
        return format!("{sign}{}", grouped(a.round() as u64));
    }
    let int = a.trunc() as u64;
    let frac = format!("{:.d$}", a - int as f64);
    // `frac` is like "0.25" (or "1.00" when it rounds up).
    let (carry, rest) = frac.split_once('.').unwrap_or(("0", ""));
    format!(
        "{sign}{}.{rest}",
        grouped(int + carry.parse::<u64>().unwrap_or(0))
    )
}

/// A tick on an axis of whole counts (cores, epochs): the integer, or nothing between integers.
pub fn count(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 && v >= 0.0 {
        grouped(v.round() as u64)
    } else {
        String::new()
    }
}

/// A tick on a percent axis.
pub fn percent(v: f64, step: f64) -> String {
    format!("{}%", number(v, step))
}
