//! Topics and filters: the grammar of PROTOCOL.md section 12, checked without I/O.

use std::fmt;

/// Longest topic or filter, in bytes of UTF-8.
pub const MAX_TOPIC_LEN: usize = 256;

/// Most elements in a topic or filter.
pub const MAX_ELEMENTS: usize = 32;

/// Why a topic or filter was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The empty string.
    #[error("empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("{len} bytes, more than {MAX_TOPIC_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// More than [`MAX_ELEMENTS`] elements.
    #[error("more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    /// Two dots in a row, or a dot at the start or the end.
    #[error("empty element at {index}")]
    EmptyElement {
        /// Which element (0-based).
        index: usize,
    },
    /// A character no element may hold (whitespace or a control character), or `*`/`>` inside
    /// an element with other characters.
    #[error("invalid character {ch:?} in element {index}")]
    InvalidCharacter {
        /// Which element (0-based).
        index: usize,
        /// The character.
        ch: char,
    },
    /// A wildcard in a topic (only filters have them).
    #[error("wildcard in a topic (element {index})")]
    WildcardInTopic {
        /// Which element (0-based).
        index: usize,
    },
    /// `>` anywhere but as the last element of a filter.
    #[error("'>' must be the last element")]
    FullWildcardNotLast,
}

/// One element of a parsed filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Element<'a> {
    /// A literal element: matches exactly itself.
    Literal(&'a str),
    /// `*`: matches exactly one element, whatever it is.
    One,
    /// `>`: matches one or more trailing elements (always the last element of a filter).
    Rest,
}

impl fmt::Display for Element<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(text) => f.write_str(text),
            Self::One => f.write_str("*"),
            Self::Rest => f.write_str(">"),
        }
    }
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: s.len() });
    }
    if s.split('.').count() > MAX_ELEMENTS {
        return Err(TopicError::TooManyElements);
    }
    Ok(())
}

fn check_literal(index: usize, element: &str) -> Result<(), TopicError> {
    if element.is_empty() {
        return Err(TopicError::EmptyElement { index });
    }
    match element
        .chars()
        .find(|&ch| ch.is_whitespace() || ch.is_control() || ch == '*' || ch == '>')
    {
        Some(ch) => Err(TopicError::InvalidCharacter { index, ch }),
        None => Ok(()),
    }
}

/// Checks a topic (what messages are published on): dot-separated, non-empty elements, no
/// wildcards, at most [`MAX_TOPIC_LEN`] bytes and [`MAX_ELEMENTS`] elements.
///
/// ```
/// use connect::pubsub::{validate_topic, TopicError};
/// assert!(validate_topic("orders.eu.created").is_ok());
/// assert_eq!(validate_topic("orders..created"), Err(TopicError::EmptyElement { index: 1 }));
/// assert_eq!(validate_topic("orders.*"), Err(TopicError::WildcardInTopic { index: 1 }));
/// ```
///
/// # Errors
/// The first rule the topic breaks.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    for (index, element) in topic.split('.').enumerate() {
        if element == "*" || element == ">" {
            return Err(TopicError::WildcardInTopic { index });
        }
        check_literal(index, element)?;
    }
    Ok(())
}

/// Parses a filter (what subscribers ask for): a topic whose elements may also be `*` (any one
/// element) or, as the last element, `>` (one or more elements).
///
/// ```
/// use connect::pubsub::{parse_filter, Element, TopicError};
/// assert_eq!(
///     parse_filter("orders.*.>").unwrap(),
///     [Element::Literal("orders"), Element::One, Element::Rest]
/// );
/// assert_eq!(parse_filter("orders.>.eu"), Err(TopicError::FullWildcardNotLast));
/// assert!(matches!(parse_filter("orders.e*"), Err(TopicError::InvalidCharacter { .. })));
/// ```
///
/// # Errors
/// The first rule the filter breaks.
pub fn parse_filter(filter: &str) -> Result<Vec<Element<'_>>, TopicError> {
    check_common(filter)?;
    let count = filter.split('.').count();
    filter
        .split('.')
        .enumerate()
        .map(|(index, element)| match element {
            "*" => Ok(Element::One),
            ">" if index + 1 == count => Ok(Element::Rest),
            ">" => Err(TopicError::FullWildcardNotLast),
            literal => check_literal(index, literal).map(|()| Element::Literal(literal)),
        })
        .collect()
}

/// Whether `topic` matches `filter`, both assumed valid: the reference the matcher is tested
/// against (a scan; the publisher uses the trie of [`Sublist`](super::Sublist)).
///
/// ```
/// use connect::pubsub::filter_matches;
/// assert!(filter_matches("orders.*.created", "orders.eu.created"));
/// assert!(filter_matches("orders.>", "orders.eu.created"));
/// assert!(!filter_matches("orders.>", "orders"));
/// assert!(!filter_matches("orders.*", "orders.eu.created"));
/// ```
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut topic = topic.split('.');
    for element in filter.split('.') {
        match (element, topic.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(t)) if literal == t => {}
            _ => return false,
        }
    }
    topic.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_refuses_what_the_spec_refuses() {
        for bad in ["", ".", "a.", ".a", "a..b", "a b", "a\tb", "a\u{0}b"] {
            assert!(validate_topic(bad).is_err(), "topic {bad:?}");
            assert!(parse_filter(bad).is_err(), "filter {bad:?}");
        }
        for bad in ["a.*", "*", ">", "a.>"] {
            assert!(validate_topic(bad).is_err(), "topic {bad:?}");
        }
        for bad in ["a*", "*a.b", "a.>b", ">.a", "a.>.>", "a.b>"] {
            assert!(parse_filter(bad).is_err(), "filter {bad:?}");
        }
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(
            validate_topic(&long),
            Err(TopicError::TooLong {
                len: MAX_TOPIC_LEN + 1
            })
        );
        assert!(validate_topic(&"a".repeat(MAX_TOPIC_LEN)).is_ok());
        let many = vec!["a"; MAX_ELEMENTS + 1].join(".");
        assert_eq!(parse_filter(&many), Err(TopicError::TooManyElements));
        assert!(parse_filter(&vec!["*"; MAX_ELEMENTS].join(".")).is_ok());
        assert!(validate_topic("ordres.ü.日本").is_ok());
    }
}
