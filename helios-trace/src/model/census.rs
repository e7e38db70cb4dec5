//! The census of a process's heap (ARCHITECTURE.md, "Holders"): objects by type from one walk,
//! and their growth since the previous walk of the same process — the heap dump's "+47,000
//! socket objects" from a live process. Pure: resolve/holders counts, the session keeps the
//! previous census.
use std::collections::HashMap;

use serde::Serialize;

/// Objects by type name from one walk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Census {
    counts: HashMap<Box<str>, u64>,
}

/// One type's line of the census.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct CensusEntry {
    #[serde(rename = "type")]
    pub(crate) type_name: String,
    pub(crate) count: u64,
    /// Change since the previous walk of this process (null on the first walk).
    pub(crate) growth: Option<i64>,
}

impl Census {
    pub(crate) fn add(&mut self, type_name: &str) {
        match self.counts.get_mut(type_name) {
            Some(n) => *n += 1,
            None => {
                self.counts.insert(type_name.into(), 1);
            }
        }
    }

    /// The `top` types with the most objects, and any type that grew by at least a tenth of
    /// the largest growth (a leak of a rare type shows beside the many dicts), by count.
    pub(crate) fn entries(&self, previous: Option<&Census>, top: usize) -> Vec<CensusEntry> {
        let growth = |name: &str, count: u64| {
            previous.map(|p| count as i64 - p.counts.get(name).copied().unwrap_or(0) as i64)
        };
        let mut all: Vec<CensusEntry> = self
            .counts
            .iter()
            .map(|(name, count)| CensusEntry {
                type_name: name.to_string(),
                count: *count,
                growth: growth(name, *count),
            })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.type_name.cmp(&b.type_name)));
        let most_growth = all.iter().filter_map(|e| e.growth).max().unwrap_or(0);
        let mut shown: Vec<CensusEntry> = Vec::new();
        for (i, entry) in all.into_iter().enumerate() {
            let grew = most_growth > 0 && entry.growth.is_some_and(|g| g * 10 >= most_growth);
            if i < top || grew {
                shown.push(entry);
            }
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn census(items: &[(&str, u64)]) -> Census {
        let mut c = Census::default();
        for (name, n) in items {
            for _ in 0..*n {
                c.add(name);
            }
        }
        c
    }

    #[test]
    fn growth_is_against_the_previous_walk_and_a_growing_rare_type_shows() {
        let before = census(&[("dict", 500), ("list", 100), ("socket", 10)]);
        let after = census(&[("dict", 510), ("list", 100), ("socket", 40), ("tuple", 300)]);
        let first = after.entries(None, 2);
        assert_eq!(
            first.iter().map(|e| (e.type_name.as_str(), e.growth)).collect::<Vec<_>>(),
            [("dict", None), ("tuple", None)]
        );
        let entries = after.entries(Some(&before), 2);
        let got: Vec<_> = entries.iter().map(|e| (e.type_name.as_str(), e.count, e.growth)).collect();
        // tuple is new (+300): the most growth; socket +30 is a tenth of it; dict +10 is not.
        assert_eq!(got, [("dict", 510, Some(10)), ("tuple", 300, Some(300)), ("socket", 40, Some(30))]);
    }
}
