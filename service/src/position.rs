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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offsets(pub BTreeMap<i32, i64>);

impl Offsets {
    /// Moves past the record at (`partition`, `offset`); never moves back.
    pub fn advance(&mut self, partition: i32, offset: i64) {
        let next = self.0.entry(partition).or_insert(0);
        *next = (*next).max(offset + 1);
    }

    /// Whether the record at (`partition`, `offset`) is already behind these offsets.
    pub fn has_seen(&self, partition: i32, offset: i64) -> bool {
        self.0.get(&partition).is_some_and(|next| offset < *next)
    }
}

impl From<BTreeMap<i32, i64>> for Offsets {
    fn from(map: BTreeMap<i32, i64>) -> Self {
        Offsets(map)
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
            .collect::<Result<BTreeMap<_, _>, String>>()
            .map(Offsets)
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
}
