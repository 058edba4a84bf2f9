//! Timestamp text to microseconds since the epoch, UTC.

use chrono::{DateTime, NaiveDateTime};

use crate::config::EpochUnit;

/// Parses RFC 3339 text (`2024-05-01T12:00:00.123Z`, `+02:00` offsets, a space
/// instead of `T`; no offset means UTC) or an epoch number in `unit`.
pub fn parse_timestamp_micros(text: &str, unit: EpochUnit) -> Result<i64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty timestamp".into());
    }
    if text.starts_with(|c: char| c.is_ascii_digit() || c == '-')
        && text
            .chars()
            .skip(1)
            .all(|c| c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E')
        && !text[1..].contains('-')
    {
        let value: f64 = text
            .parse()
            .map_err(|_| format!("`{text}` is not an epoch number"))?;
        return epoch_to_micros(value, unit)
            .ok_or_else(|| format!("epoch value `{text}` is out of range"));
    }
    if let Ok(parsed) = DateTime::parse_from_rfc3339(text) {
        return Ok(parsed.timestamp_micros());
    }
    let normalized = text.replacen(' ', "T", 1);
    if let Ok(parsed) = DateTime::parse_from_rfc3339(&normalized) {
        return Ok(parsed.timestamp_micros());
    }
    let naive = normalized.trim_end_matches('Z');
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(parsed) = NaiveDateTime::parse_from_str(naive, format) {
            return Ok(parsed.and_utc().timestamp_micros());
        }
    }
    Err(format!(
        "cannot parse `{text}` as a timestamp (expected RFC 3339 or epoch seconds/millis/micros)"
    ))
}

fn epoch_to_micros(value: f64, unit: EpochUnit) -> Option<i64> {
    let magnitude = value.abs();
    let factor = match unit {
        EpochUnit::Seconds => 1e6,
        EpochUnit::Millis => 1e3,
        EpochUnit::Micros => 1.0,
        EpochUnit::Auto if magnitude < 1e11 => 1e6,
        EpochUnit::Auto if magnitude < 1e14 => 1e3,
        EpochUnit::Auto => 1.0,
    };
    let micros = (value * factor).round();
    (micros.abs() < 9.2e18).then_some(micros as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: i64 = 1_714_564_800_000_000; // 2024-05-01T12:00:00Z

    #[test]
    fn parses_rfc3339_with_offsets_and_fractions() {
        let auto = EpochUnit::Auto;
        assert_eq!(
            parse_timestamp_micros("2024-05-01T12:00:00Z", auto),
            Ok(NOON)
        );
        assert_eq!(
            parse_timestamp_micros("2024-05-01T14:00:00+02:00", auto),
            Ok(NOON)
        );
        assert_eq!(
            parse_timestamp_micros("2024-05-01 12:00:00.000250", auto),
            Ok(NOON + 250)
        );
        assert_eq!(
            parse_timestamp_micros("1970-01-01T00:00:01Z", auto),
            Ok(1_000_000)
        );
    }

    #[test]
    fn parses_epoch_numbers_by_unit_or_magnitude() {
        let auto = EpochUnit::Auto;
        assert_eq!(parse_timestamp_micros("1714564800", auto), Ok(NOON));
        assert_eq!(parse_timestamp_micros("1714564800000", auto), Ok(NOON));
        assert_eq!(parse_timestamp_micros("1714564800000000", auto), Ok(NOON));
        assert_eq!(
            parse_timestamp_micros("1714564800.5", auto),
            Ok(NOON + 500_000)
        );
        assert_eq!(parse_timestamp_micros("5", EpochUnit::Millis), Ok(5_000));
        assert_eq!(
            parse_timestamp_micros("-1", EpochUnit::Seconds),
            Ok(-1_000_000)
        );
    }

    #[test]
    fn rejects_garbage_with_the_value() {
        let err = parse_timestamp_micros("yesterday", EpochUnit::Auto).unwrap_err();
        assert!(err.contains("yesterday"), "{err}");
        assert!(parse_timestamp_micros("2024-13-45T00:00:00Z", EpochUnit::Auto).is_err());
        assert!(parse_timestamp_micros("1e300", EpochUnit::Seconds).is_err());
    }
}
