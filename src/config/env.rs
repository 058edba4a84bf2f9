//! `${NAME}` interpolation of environment variables in config text.

/// Replaces every `${NAME}` with `lookup(NAME)`; `$${` stays a literal `${`.
pub(super) fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` near `{}`", &rest[start..]))?;
        let name = &after[..end];
        let line = text[..text.len() - rest.len() + start]
            .lines()
            .count()
            .max(1);
        let value = lookup(name).ok_or_else(|| {
            format!("line {line}: environment variable `{name}` is referenced but not set")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_set_variables_and_names_missing_ones() {
        let lookup = |name: &str| (name == "BROKERS").then(|| "k1:9092".to_string());
        assert_eq!(
            interpolate("brokers = \"${BROKERS}\"", lookup).unwrap(),
            "brokers = \"k1:9092\""
        );
        let err = interpolate("a = 1\nb = \"${NOPE}\"", lookup).unwrap_err();
        assert!(err.contains("NOPE") && err.contains("line 2"), "{err}");
        assert_eq!(
            interpolate("x = \"$${HOME}\"", lookup).unwrap(),
            "x = \"${HOME}\""
        );
    }
}
