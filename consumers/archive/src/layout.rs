//! Object keys of the archive (CONTRACT.md):
//! `products/dt=<YYYY-MM-DD>/partition=<P>/<first offset, 20 digits>-<last offset, 20 digits>.avro`.
//!
//! The key is derived from offsets only (plus the UTC date of the file's first event), so a
//! range written again after a crash lands on the same key, and the listing of a partition's
//! keys tells exactly which offsets the archive holds.

use chrono::NaiveDate;

/// One archive file: a partition's offsets `first..=last`, named after the UTC date of its
/// first event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileRange {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    pub date: NaiveDate,
}

impl FileRange {
    /// The object key under `prefix` (`products` by default, no trailing slash).
    pub fn key(&self, prefix: &str) -> String {
        format!(
            "{prefix}/dt={}/partition={}/{:020}-{:020}.avro",
            self.date.format("%Y-%m-%d"),
            self.partition,
            self.first,
            self.last
        )
    }

    /// Reads a key written by [`FileRange::key`]; `None` for anything else under the prefix.
    pub fn parse(prefix: &str, key: &str) -> Option<FileRange> {
        let rest = key.strip_prefix(prefix)?.strip_prefix("/dt=")?;
        let (date, rest) = rest.split_once("/partition=")?;
        let (partition, name) = rest.split_once('/')?;
        let (first, last) = name.strip_suffix(".avro")?.split_once('-')?;
        if first.len() != 20 || last.len() != 20 {
            return None;
        }
        let range = FileRange {
            partition: partition.parse().ok()?,
            first: first.parse().ok()?,
            last: last.parse().ok()?,
            date: NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?,
        };
        (range.first <= range.last && range.partition >= 0).then_some(range)
    }

    /// The offset after this file.
    pub fn next(&self) -> i64 {
        self.last + 1
    }
}

/// What is wrong with a partition's sequence of files, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Continuity {
    Gap { after: i64, next_first: i64 },
    Overlap { first: FileRange, second: FileRange },
}

/// Checks that sorted files of one partition follow each other without gap or overlap.
pub fn check_continuity(files: &[FileRange]) -> Result<(), Continuity> {
    for pair in files.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.first <= a.last {
            return Err(Continuity::Overlap {
                first: a,
                second: b,
            });
        }
        if b.first != a.next() {
            return Err(Continuity::Gap {
                after: a.last,
                next_first: b.first,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(partition: i32, first: i64, last: i64) -> FileRange {
        FileRange {
            partition,
            first,
            last,
            date: NaiveDate::from_ymd_opt(2026, 11, 22).unwrap(),
        }
    }

    #[test]
    fn keys_follow_the_contract_and_parse_back() {
        let file = range(2, 41, 1_000_000);
        let key = file.key("products");
        assert_eq!(
            key,
            "products/dt=2026-11-22/partition=2/00000000000000000041-00000000000001000000.avro"
        );
        assert_eq!(FileRange::parse("products", &key), Some(file));
    }

    #[test]
    fn foreign_keys_are_not_files() {
        for key in [
            "products/dt=2026-11-22/partition=2/41-42.avro",
            "products/dt=2026-11-22/partition=x/00000000000000000041-00000000000000000042.avro",
            "products/dt=2026-13-22/partition=2/00000000000000000041-00000000000000000042.avro",
            "products/dt=2026-11-22/partition=2/00000000000000000042-00000000000000000041.avro",
            "products/dt=2026-11-22/partition=2/00000000000000000041-00000000000000000042.json",
            "other/dt=2026-11-22/partition=2/00000000000000000041-00000000000000000042.avro",
        ] {
            assert_eq!(FileRange::parse("products", key), None, "{key}");
        }
    }

    #[test]
    fn continuity_finds_gaps_and_overlaps() {
        assert_eq!(
            check_continuity(&[range(0, 0, 9), range(0, 10, 19)]),
            Ok(())
        );
        assert_eq!(
            check_continuity(&[range(0, 0, 9), range(0, 11, 19)]),
            Err(Continuity::Gap {
                after: 9,
                next_first: 11
            })
        );
        assert!(matches!(
            check_continuity(&[range(0, 0, 9), range(0, 5, 19)]),
            Err(Continuity::Overlap { .. })
        ));
    }
}
