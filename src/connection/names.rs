//! A one-entry cache of a message type's name, for the per-message hot paths.

use std::ptr::fn_addr_eq;

use crate::codec::type_name;

/// Remembers the string of the last `fn() -> String` asked for: prost's `Name::full_name` and
/// `Name::type_url` build a fresh `String` on every call, which would otherwise be one
/// allocation per message sent or received. Connections usually carry one or a few types, so
/// one entry is enough; another type simply replaces it.
///
/// Keyed by the function's address: two types can only share an address if the compiler merged
/// their functions, which it does only when they are identical and so return the same string.
#[derive(Debug, Default)]
pub(crate) struct NameCache {
    last: Option<(fn() -> String, String)>,
    /// The last type URL found to name the type of `last` (see [`Self::is_url_of`]).
    accepted_url: Vec<u8>,
}

impl NameCache {
    /// What `name()` returns, computed at most once while the same function is asked for.
    #[inline]
    pub(crate) fn get(&mut self, name: fn() -> String) -> &str {
        if !matches!(&self.last, Some((f, _)) if fn_addr_eq(*f, name)) {
            self.last = Some((name, name()));
            self.accepted_url.clear();
        }
        self.last.as_ref().map_or("", |(_, s)| s.as_str())
    }

    /// Whether the type URL `url` names the message type whose full name `full_name()` returns
    /// (compared after the last `/`, like every protobuf library). A URL seen to match last
    /// time is recognised by one byte comparison.
    ///
    /// # Errors
    /// If `url` is not UTF-8.
    #[inline]
    pub(crate) fn is_url_of(
        &mut self,
        url: &[u8],
        full_name: fn() -> String,
    ) -> Result<bool, std::str::Utf8Error> {
        self.get(full_name);
        if !self.accepted_url.is_empty() && self.accepted_url == url {
            return Ok(true);
        }
        let name = self.last.as_ref().map_or("", |(_, s)| s.as_str());
        let matches = type_name(std::str::from_utf8(url)?) == name;
        if matches {
            self.accepted_url.clear();
            self.accepted_url.extend_from_slice(url);
        }
        Ok(matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> String {
        "a.A".into()
    }

    fn b() -> String {
        "b.B".into()
    }

    #[test]
    fn follows_the_function_asked_for() {
        let mut cache = NameCache::default();
        assert_eq!(cache.get(a), "a.A");
        assert_eq!(cache.get(a), "a.A");
        assert_eq!(cache.get(b), "b.B");
        assert_eq!(cache.get(a), "a.A");
    }

    #[test]
    fn recognises_urls_of_the_type() {
        let mut cache = NameCache::default();
        for _ in 0..2 {
            assert_eq!(cache.is_url_of(b"type.googleapis.com/a.A", a), Ok(true));
            assert_eq!(cache.is_url_of(b"x/a.A", a), Ok(true));
            assert_eq!(cache.is_url_of(b"a.A", a), Ok(true));
            assert_eq!(cache.is_url_of(b"type.googleapis.com/a.AA", a), Ok(false));
            assert_eq!(cache.is_url_of(b"type.googleapis.com/b.B", a), Ok(false));
            assert_eq!(cache.is_url_of(b"type.googleapis.com/a.A", b), Ok(false));
            assert_eq!(cache.is_url_of(b"", a), Ok(false));
        }
        assert!(cache.is_url_of(b"type.googleapis.com/\xff", a).is_err());
    }
}
