//! Text from outside (participants' answers, callbacks) made storable everywhere: PostgreSQL's
//! `jsonb` and `text` refuse the NUL character, so a participant whose error body held one used
//! to make its saga's commit fail. At the boundary NUL becomes U+FFFD (the replacement
//! character), the same on every backend; API clients get a 400 instead ([`contains_nul`]).

use std::borrow::Cow;

use serde_json::Value;

use crate::Outcome;

/// What NUL is replaced with.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `text` with every NUL replaced (borrowed when there is none).
pub fn sanitize_str(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', &NUL_REPLACEMENT.to_string()))
    } else {
        Cow::Borrowed(text)
    }
}

/// `value` with every NUL in its strings and object keys replaced.
pub fn sanitize_value(value: Value) -> Value {
    if !contains_nul(&value) {
        return value;
    }
    match value {
        Value::String(s) => Value::String(sanitize_str(&s).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(sanitize_value).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (sanitize_str(&k).into_owned(), sanitize_value(v))).collect())
        }
        other => other,
    }
}

/// True when a string or key anywhere in `value` holds NUL.
pub fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

impl Outcome {
    /// The outcome with its output or message made storable.
    pub fn sanitized(self) -> Outcome {
        match self {
            Outcome::Succeeded(output) => Outcome::Succeeded(sanitize_value(output)),
            Outcome::Failed { kind, message } => Outcome::Failed { kind, message: sanitize_str(&message).into_owned() },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_is_replaced_in_strings_keys_and_messages_only() {
        let dirty = json!({"a\u{0}": ["x\u{0}y", 1, null, {"k": "\u{0}"}], "clean": "ok"});
        assert!(contains_nul(&dirty));
        let clean = sanitize_value(dirty);
        assert!(!contains_nul(&clean));
        assert_eq!(clean, json!({"a\u{FFFD}": ["x\u{FFFD}y", 1, null, {"k": "\u{FFFD}"}], "clean": "ok"}));
        let untouched = json!({"n": 1.5, "s": "plain"});
        assert_eq!(sanitize_value(untouched.clone()), untouched);
        let failed = Outcome::Failed { kind: crate::FailureKind::Retryable, message: "bad\0byte".into() };
        assert_eq!(
            failed.sanitized(),
            Outcome::Failed { kind: crate::FailureKind::Retryable, message: "bad\u{FFFD}byte".into() }
        );
    }
}
