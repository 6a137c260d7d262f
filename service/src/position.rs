//! Log positions in one vocabulary for every binary:
//! - a [`Position`] names one record, `P:O` — what the producer answers for a write and what
//!   `?after=` takes;
//! - [`Offsets`] is the next offset to read per partition, `0:41,1:17,2:30` — the SSE cursor
//!   (`Last-Event-ID`) and the archive restore's `--from`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One record of the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

impl FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (p, o) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected PARTITION:OFFSET, for example 0:42"))?;
        let partition: i32 = p
            .trim()
            .parse()
            .map_err(|_| format!("bad partition {p:?}"))?;
        let offset: i64 = o.trim().parse().map_err(|_| format!("bad offset {o:?}"))?;
        if partition < 0 || offset < 0 {
            return Err(format!("{s:?}: partition and offset are not negative"));
        }
        Ok(Position { partition, offset })
    }
}

/// The next offset per partition: everything before it has been read (or is to be skipped).
/// Serialised as a JSON object `{"0": 41, "1": 17}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Offsets(BTreeMap<i32, i64>);

impl Offsets {
    pub fn new() -> Offsets {
        Offsets::default()
    }

    /// The next offset of `partition`, if these offsets name it.
    pub fn get(&self, partition: i32) -> Option<i64> {
        self.0.get(&partition).copied()
    }

    /// Sets the next offset of `partition`, forwards or back (a seek).
    pub fn set(&mut self, partition: i32, next: i64) {
        self.0.insert(partition, next);
    }

    /// Moves past the record at (`partition`, `offset`); never moves back.
    pub fn advance(&mut self, partition: i32, offset: i64) {
        self.advance_to(partition, offset + 1);
    }

    /// Moves `partition` on to `next` unless it is already further; never moves back.
    pub fn advance_to(&mut self, partition: i32, next: i64) {
        let current = self.0.entry(partition).or_insert(next);
        *current = (*current).max(next);
    }

    /// Takes every partition `other` names at `other`'s offset (a later word wins).
    pub fn merge(&mut self, other: &Offsets) {
        self.0.extend(other.iter());
    }

    /// Whether the record at (`partition`, `offset`) is already behind these offsets.
    pub fn has_seen(&self, partition: i32, offset: i64) -> bool {
        self.0.get(&partition).is_some_and(|next| offset < *next)
    }

    /// Whether a reader that is at these offsets and next reads `first` of `partition` has
    /// read everything before `first`, given that whoever wrote `stored` as the partition's next
    /// offset holds everything before it: either `first` is not beyond `stored`, or the reader
    /// was at exactly `stored` (the offsets between hold no data, only transaction markers).
    pub fn continues_from(&self, partition: i32, first: i64, stored: i64) -> bool {
        first <= stored || self.get(partition) == Some(stored)
    }

    /// Partitions and their next offsets, by partition.
    pub fn iter(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.0.iter().map(|(p, o)| (*p, *o))
    }

    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.0.keys().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets every partition (after a rebalance nothing is known).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl FromIterator<(i32, i64)> for Offsets {
    fn from_iter<I: IntoIterator<Item = (i32, i64)>>(iter: I) -> Self {
        Offsets(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Offsets {
    type Item = (i32, i64);
    type IntoIter = std::iter::Map<
        std::collections::btree_map::Iter<'a, i32, i64>,
        fn((&i32, &i64)) -> (i32, i64),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(p, o)| (*p, *o))
    }
}

impl<const N: usize> From<[(i32, i64); N]> for Offsets {
    fn from(pairs: [(i32, i64); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl fmt::Display for Offsets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Offsets {
    type Err = String;
    /// `0:41,1:17`; the empty string is no offsets at all.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(|part| {
                let position: Position = part.parse()?;
                Ok((position.partition, position.offset))
            })
            .collect::<Result<Offsets, String>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_and_print_as_partition_colon_offset() {
        let position: Position = "2:41".parse().unwrap();
        assert_eq!(
            position,
            Position {
                partition: 2,
                offset: 41
            }
        );
        assert_eq!(position.to_string(), "2:41");
        for bad in ["2", "a:1", "1:-4", "-1:0", ""] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn offsets_round_trip_and_know_what_was_seen() {
        let mut offsets = Offsets::default();
        offsets.advance(2, 9);
        offsets.advance(0, 4);
        offsets.advance(0, 1);
        assert_eq!(offsets.to_string(), "0:5,2:10");
        assert_eq!("0:5,2:10".parse::<Offsets>(), Ok(offsets.clone()));
        assert!(offsets.has_seen(0, 4));
        assert!(!offsets.has_seen(0, 5));
        assert!(
            !offsets.has_seen(1, 0),
            "nothing seen of a partition it does not name"
        );
        assert_eq!("".parse::<Offsets>(), Ok(Offsets::default()));
        assert!("0:x".parse::<Offsets>().is_err());
        assert!("0:-1".parse::<Offsets>().is_err());
    }

    #[test]
    fn merging_takes_the_later_word_and_advancing_never_moves_back() {
        let mut offsets = Offsets::from([(0, 5), (1, 9)]);
        offsets.merge(&Offsets::from([(1, 3), (2, 7)]));
        assert_eq!(offsets, Offsets::from([(0, 5), (1, 3), (2, 7)]));
        offsets.advance_to(0, 2);
        offsets.advance_to(1, 4);
        assert_eq!(offsets, Offsets::from([(0, 5), (1, 4), (2, 7)]));
        assert_eq!(
            serde_json::to_string(&offsets).unwrap(),
            r#"{"0":5,"1":4,"2":7}"#
        );
    }

    #[test]
    fn a_reader_continues_a_stored_offset_only_without_unseen_data_between() {
        let read_from = Offsets::from([(0, 11)]);
        assert!(read_from.continues_from(0, 12, 12));
        assert!(
            read_from.continues_from(0, 12, 20),
            "already stored: the records are skipped"
        );
        // Read on from 11 without a break: offset 11 was a transaction marker.
        assert!(read_from.continues_from(0, 12, 11));
        assert!(
            !read_from.continues_from(0, 12, 10),
            "offset 10 was never read"
        );
        assert!(!Offsets::new().continues_from(0, 12, 11));
    }
}
