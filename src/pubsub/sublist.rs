//! The subscription matcher: a trie over topic elements (like NATS' sublist), so matching a
//! topic costs in proportion to its elements and the wildcards on its path, not to the number
//! of filters. No I/O.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use super::topic::{parse_filter, Element, TopicError};

/// Filters and who holds them, matched against topics through a trie.
///
/// ```
/// use connect::pubsub::Sublist;
///
/// let mut subs = Sublist::new();
/// subs.insert("orders.*.created", 1).unwrap();
/// subs.insert("orders.>", 2).unwrap();
/// subs.insert("orders.eu.created", 2).unwrap();
/// let mut who = subs.matches("orders.eu.created");
/// who.sort();
/// assert_eq!(who, [1, 2]); // each holder once, however many of its filters match
/// assert!(subs.matches("payments.eu").is_empty());
/// ```
#[derive(Debug)]
pub struct Sublist<K> {
    root: Node<K>,
    filters: usize,
}

#[derive(Debug)]
struct Node<K> {
    literal: HashMap<Box<str>, Node<K>>,
    one: Option<Box<Node<K>>>,
    /// Holders of a filter ending in `>` right after this node.
    rest: HashSet<K>,
    /// Holders of a filter ending at this node.
    here: HashSet<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Self {
            literal: HashMap::new(),
            one: None,
            rest: HashSet::new(),
            here: HashSet::new(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.one.is_none()
            && self.rest.is_empty()
            && self.here.is_empty()
    }
}

impl<K: Copy + Eq + Hash> Default for Sublist<K> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            filters: 0,
        }
    }
}

impl<K: Copy + Eq + Hash> Sublist<K> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many (filter, holder) pairs it holds.
    pub fn len(&self) -> usize {
        self.filters
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.filters == 0
    }

    /// Adds `filter` for `holder`. Returns `false` if `holder` already held it.
    ///
    /// # Errors
    /// The filter is invalid ([`parse_filter`]).
    pub fn insert(&mut self, filter: &str, holder: K) -> Result<bool, TopicError> {
        let elements = parse_filter(filter)?;
        let mut node = &mut self.root;
        for element in elements {
            node = match element {
                Element::Literal(text) => node.literal.entry(text.into()).or_default(),
                Element::One => node.one.get_or_insert_with(Default::default),
                Element::Rest => {
                    let added = node.rest.insert(holder);
                    self.filters += usize::from(added);
                    return Ok(added);
                }
            };
        }
        let added = node.here.insert(holder);
        self.filters += usize::from(added);
        Ok(added)
    }

    /// Removes `filter` for `holder`; returns whether it was there. Empty branches are pruned.
    pub fn remove(&mut self, filter: &str, holder: K) -> bool {
        let Ok(elements) = parse_filter(filter) else {
            return false;
        };
        let removed = remove(&mut self.root, &elements, holder);
        self.filters -= usize::from(removed);
        removed
    }

    /// Every holder of a filter matching `topic`, each once, in no particular order.
    pub fn matches(&self, topic: &str) -> Vec<K> {
        let elements: Vec<&str> = topic.split('.').collect();
        let mut out = Vec::new();
        collect(&self.root, &elements, &mut out);
        if out.len() > 1 {
            let mut seen = HashSet::with_capacity(out.len());
            out.retain(|holder| seen.insert(*holder));
        }
        out
    }
}

fn collect<K: Copy + Eq + Hash>(node: &Node<K>, topic: &[&str], out: &mut Vec<K>) {
    let Some((first, rest)) = topic.split_first() else {
        out.extend(node.here.iter().copied());
        return;
    };
    out.extend(node.rest.iter().copied());
    if let Some(child) = node.literal.get(*first) {
        collect(child, rest, out);
    }
    if let Some(child) = &node.one {
        collect(child, rest, out);
    }
}

fn remove<K: Copy + Eq + Hash>(node: &mut Node<K>, filter: &[Element<'_>], holder: K) -> bool {
    let Some((first, rest)) = filter.split_first() else {
        return node.here.remove(&holder);
    };
    match first {
        Element::Rest => node.rest.remove(&holder),
        Element::One => {
            let Some(child) = node.one.as_mut() else {
                return false;
            };
            let removed = remove(child, rest, holder);
            if child.is_empty() {
                node.one = None;
            }
            removed
        }
        Element::Literal(text) => {
            let Some(child) = node.literal.get_mut(*text) else {
                return false;
            };
            let removed = remove(child, rest, holder);
            if child.is_empty() {
                node.literal.remove(*text);
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::topic::filter_matches;
    use super::*;
    use proptest::prelude::*;

    fn element() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from)
    }

    fn filter_element() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just("*")].prop_map(String::from)
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(filter_element(), 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut elements, rest)| {
                if rest {
                    elements.push(">".into());
                }
                elements.join(".")
            })
    }

    proptest! {
        /// The trie answers what a scan of every filter answers, after inserts and removals.
        #[test]
        fn the_trie_agrees_with_a_scan(
            filters in proptest::collection::vec((filter(), 0u8..6), 0..40),
            removed in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            topics in proptest::collection::vec(proptest::collection::vec(element(), 1..5), 1..20),
        ) {
            let mut subs = Sublist::new();
            let mut held: HashSet<(String, u8)> = HashSet::new();
            for (filter, holder) in &filters {
                let added = subs.insert(filter, *holder).unwrap();
                prop_assert_eq!(added, held.insert((filter.clone(), *holder)));
            }
            for index in removed {
                if filters.is_empty() { break; }
                let (filter, holder) = index.get(&filters);
                prop_assert_eq!(subs.remove(filter, *holder), held.remove(&(filter.clone(), *holder)));
            }
            prop_assert_eq!(subs.len(), held.len());
            for topic in topics {
                let topic = topic.join(".");
                let mut got = subs.matches(&topic);
                got.sort();
                let mut want: Vec<u8> = held
                    .iter()
                    .filter(|(filter, _)| filter_matches(filter, &topic))
                    .map(|(_, holder)| *holder)
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect();
                want.sort();
                prop_assert_eq!(got, want, "topic {}", topic);
            }
        }
    }

    #[test]
    fn removing_everything_prunes_the_trie() {
        let mut subs = Sublist::new();
        for (i, filter) in ["a.b.c", "a.*.c", "a.>", "*.*", "a.b.c"].iter().enumerate() {
            subs.insert(filter, i).unwrap();
        }
        for (i, filter) in ["a.b.c", "a.*.c", "a.>", "*.*", "a.b.c"].iter().enumerate() {
            assert!(subs.remove(filter, i));
        }
        assert!(subs.is_empty());
        assert!(subs.root.is_empty());
    }
}
