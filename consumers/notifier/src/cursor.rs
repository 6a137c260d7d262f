//! The SSE `id:`: a cursor over all partitions — the next offset of every partition after
//! the event — so `Last-Event-ID` says exactly what the client has seen, in every partition.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<i32, i64>);

impl Cursor {
    /// The cursor after the event at (`partition`, `offset`).
    pub fn advance(&mut self, partition: i32, offset: i64) {
        let next = self.0.entry(partition).or_insert(0);
        *next = (*next).max(offset + 1);
    }

    /// Whether the event at (`partition`, `offset`) is already behind this cursor.
    pub fn has_seen(&self, partition: i32, offset: i64) -> bool {
        self.0.get(&partition).is_some_and(|next| offset < *next)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (p, o) = part
                .split_once(':')
                .ok_or_else(|| format!("bad cursor part {part:?}"))?;
            let p: i32 = p
                .parse()
                .map_err(|_| format!("bad partition in {part:?}"))?;
            let o: i64 = o.parse().map_err(|_| format!("bad offset in {part:?}"))?;
            if p < 0 || o < 0 {
                return Err(format!("negative value in {part:?}"));
            }
            map.insert(p, o);
        }
        Ok(Cursor(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_knows_what_was_seen() {
        let mut cursor = Cursor::default();
        cursor.advance(2, 9);
        cursor.advance(0, 4);
        assert_eq!(cursor.to_string(), "0:5,2:10");
        assert_eq!("0:5,2:10".parse::<Cursor>(), Ok(cursor.clone()));
        assert!(cursor.has_seen(0, 4));
        assert!(!cursor.has_seen(0, 5));
        assert!(
            !cursor.has_seen(1, 0),
            "nothing seen of a partition it does not name"
        );
        assert!("0:x".parse::<Cursor>().is_err());
        assert!("0:-1".parse::<Cursor>().is_err());
    }
}
