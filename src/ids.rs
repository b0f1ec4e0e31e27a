//! Random identifiers deckhand hands out (invocations, commands, managed
//! instances, replicas, dev keys and activations): a prefix, then hex
//! digits of a random (v4) UUID.

/// `prefix` followed by `digits` random hex digits (at most 32).
pub fn random(prefix: &str, digits: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + digits);
    id.push_str(prefix);
    id.extend(uuid::Uuid::new_v4().simple().to_string().chars().take(digits));
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_then_as_many_hex_digits_as_asked() {
        let id = super::random("t-", 22);
        assert_eq!(id.len(), 24);
        assert!(id.strip_prefix("t-").is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())), "{id}");
        assert_eq!(super::random("x", 99).len(), 33, "a UUID has 32 digits");
        assert_ne!(super::random("", 32), super::random("", 32));
    }
}
