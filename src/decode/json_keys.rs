//! The top-level keys of a JSON object, found by a byte scan (no parse of
//! the values), so fields a table does not declare can be counted per name
//! and, with `evolve = "add_columns"`, added.

/// The top-level keys of the JSON object in `payload`, in order (see
/// [`for_each_top_level_key`]).
pub fn top_level_keys(payload: &[u8]) -> Vec<String> {
    let mut keys = Vec::new();
    for_each_top_level_key(payload, |key| keys.push(key.to_string()));
    keys
}

/// Calls `each` with every top-level key of the JSON object in `payload`,
/// in order, without allocating for keys that hold no escapes (this runs on
/// every JSON record). Values are skipped without being parsed; a
/// malformed document yields the keys read before the problem (the record
/// is rejected by the decoder anyway).
pub fn for_each_top_level_key(payload: &[u8], mut each: impl FnMut(&str)) {
    let mut at = skip_ws(payload, 0);
    if payload.get(at) != Some(&b'{') {
        return;
    }
    at += 1;
    loop {
        at = skip_ws(payload, at);
        match payload.get(at) {
            Some(b'"') => {}
            _ => return,
        }
        let Some(end) = string_end(payload, at) else {
            return;
        };
        let raw = &payload[at + 1..end];
        if raw.contains(&b'\\') {
            match serde_json::from_slice::<String>(&payload[at..=end]) {
                Ok(key) => each(&key),
                Err(_) => return,
            }
        } else {
            match std::str::from_utf8(raw) {
                Ok(key) => each(key),
                Err(_) => each(&String::from_utf8_lossy(raw)),
            }
        }
        at = skip_ws(payload, end + 1);
        if payload.get(at) != Some(&b':') {
            return;
        }
        let Some(next) = skip_value(payload, at + 1) else {
            return;
        };
        at = skip_ws(payload, next);
        match payload.get(at) {
            Some(b',') => at += 1,
            _ => return,
        }
    }
}

/// The value of top-level key `key` in `payload`, parsed (rare path: a new field's type).
pub fn value_of(payload: &[u8], key: &str) -> Option<serde_json::Value> {
    let document: serde_json::Value = serde_json::from_slice(payload).ok()?;
    document.get(key).cloned()
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

/// Index of the closing quote of the string opening at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' => return Some(at),
            _ => at += 1,
        }
    }
    None
}

/// The index just after the value starting at or after `at`.
fn skip_value(bytes: &[u8], at: usize) -> Option<usize> {
    let mut at = skip_ws(bytes, at);
    match bytes.get(at)? {
        b'"' => Some(string_end(bytes, at)? + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            while at < bytes.len() {
                match bytes[at] {
                    b'"' => at = string_end(bytes, at)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
            None
        }
        _ => {
            while at < bytes.len() && !matches!(bytes[at], b',' | b'}' | b']') {
                at += 1;
            }
            Some(at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_top_level_keys_only() {
        let doc = br#" {"a": 1, "b": {"x": [1, {"y": "}"}]}, "c\"d": "v,}", "e": [ ], "f": null} "#;
        assert_eq!(top_level_keys(doc), ["a", "b", "c\"d", "e", "f"]);
        assert_eq!(top_level_keys(b"[1,2]"), Vec::<String>::new());
        assert_eq!(top_level_keys(br#"{"a": 1, "b": "#), ["a", "b"]);
        assert_eq!(
            value_of(br#"{"a": {"n": 2}}"#, "a"),
            Some(serde_json::json!({"n": 2}))
        );
    }
}
