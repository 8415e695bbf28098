//! Compile-time durations for `requeue_after = "1m30s"`.

/// Units, longest suffix first so that `ms` wins over `m`.
const UNITS: [(&str, u64); 4] = [("ms", 1), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)];

/// Milliseconds in `text`: one or more `<digits><unit>` with units `h`, `m`, `s`, `ms`.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "invalid duration `{text}`: expected numbers with units `h`, `m`, `s` or `ms`, like \
             `30s`, `500ms` or `1m30s`"
        )
    };
    if text.is_empty() {
        return Err(invalid());
    }
    let mut rest = text;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let (unit, factor) = UNITS
            .iter()
            .find(|(unit, _)| rest.starts_with(unit))
            .ok_or_else(invalid)?;
        rest = &rest[unit.len()..];
        total = number
            .checked_mul(*factor)
            .and_then(|millis| total.checked_add(millis))
            .ok_or_else(|| format!("duration `{text}` is too long"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_millis("500ms"), Ok(500));
        assert_eq!(parse_millis("30s"), Ok(30_000));
        assert_eq!(parse_millis("2m"), Ok(120_000));
        assert_eq!(parse_millis("1h"), Ok(3_600_000));
        assert_eq!(parse_millis("1m30s"), Ok(90_000));
        assert_eq!(parse_millis("1h2m3s4ms"), Ok(3_723_004));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "30", "s", "30 s", "1.5s", "30sec", "-1s", "1d", "m30"] {
            assert!(parse_millis(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_millis("99999999999999999999h").is_err());
    }
}
