//! What one SSE client of the fan-out bench checks of its stream, by event id: every write
//! the bench made carries a sequence number (its product is named `sse-<seq>`), and each
//! client keeps a bit per sequence number — a second frame for the same write is a duplicate,
//! an acknowledged write whose bit is still clear at the end is a gap — and the last offset it
//! had from each partition, which must only grow. Pure and allocation-free per frame, so the
//! clients' process spends its CPU on reading streams rather than on checking them.

/// A frame as the clients see it, read without parsing its JSON.
#[derive(Debug, PartialEq)]
pub enum Seen<'a> {
    /// A heartbeat, a comment, or a frame with no `id:`.
    Nothing,
    /// `event: reconnect`: the server cut the stream; resume from this id.
    Reconnect(&'a [u8]),
    Event(Event<'a>),
}

#[derive(Debug, PartialEq)]
pub struct Event<'a> {
    /// The `id:` line: the cursor sent back as `Last-Event-ID`.
    pub id: &'a [u8],
    /// The number after `"occurred_at":` (ms since the epoch).
    pub occurred_at: i64,
    /// The bench's sequence number: the digits after `"name":"sse-`.
    pub seq: Option<u64>,
    /// `"position":"P:O"`: the partition and offset the event was read from.
    pub position: Option<(u32, i64)>,
}

/// What a frame says: its `id:`, whether it is the `reconnect` event, the event's time, its
/// sequence number and position.
pub fn look_at(frame: &[u8]) -> Seen<'_> {
    let Some(id) = frame.strip_prefix(b"id: ") else {
        return Seen::Nothing;
    };
    let id = &id[..memchr::memchr(b'\n', id).unwrap_or(id.len())];
    if memchr::memmem::find(frame, b"\nevent: reconnect\n").is_some() {
        return Seen::Reconnect(id);
    }
    let Some(occurred_at) = number_after(frame, b"\"occurred_at\":") else {
        return Seen::Nothing;
    };
    const POSITION: &[u8] = b"\"position\":\"";
    let position = memchr::memmem::find(frame, POSITION).and_then(|at| {
        let rest = &frame[at + POSITION.len()..];
        let colon = memchr::memchr(b':', rest)?;
        Some((
            u32::try_from(digits(rest)?).ok()?,
            digits(&rest[colon + 1..])?,
        ))
    });
    Seen::Event(Event {
        id,
        occurred_at,
        seq: number_after(frame, b"\"name\":\"sse-").and_then(|n| u64::try_from(n).ok()),
        position,
    })
}

fn number_after(frame: &[u8], key: &[u8]) -> Option<i64> {
    let at = memchr::memmem::find(frame, key)?;
    digits(&frame[at + key.len()..])
}

fn digits(bytes: &[u8]) -> Option<i64> {
    let end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end]).ok()?.parse().ok()
}

/// One client's record of its stream.
#[derive(Debug, Default)]
pub struct ClientCheck {
    /// A bit per sequence number received.
    seen: Vec<u64>,
    /// (partition, last offset received from it).
    last_offset: Vec<(u32, i64)>,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl ClientCheck {
    pub fn receive(&mut self, seq: Option<u64>, position: Option<(u32, i64)>) {
        if let Some(seq) = seq {
            let (word, bit) = ((seq / 64) as usize, seq % 64);
            if self.seen.len() <= word {
                self.seen.resize(word + 1, 0);
            }
            if self.seen[word] & (1 << bit) != 0 {
                self.duplicates += 1;
            }
            self.seen[word] |= 1 << bit;
        }
        if let Some((partition, offset)) = position {
            match self.last_offset.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, last)) if offset <= *last => self.out_of_order += 1,
                Some((_, last)) => *last = offset,
                None => self.last_offset.push((partition, offset)),
            }
        }
    }

    pub fn has(&self, seq: u64) -> bool {
        self.seen
            .get((seq / 64) as usize)
            .is_some_and(|word| word & (1 << (seq % 64)) != 0)
    }

    /// How many of `expected` this client has.
    pub fn count_of(&self, expected: &[u64]) -> u64 {
        expected.iter().filter(|seq| self.has(**seq)).count() as u64
    }
}

/// The `id:` (the cursor a client sends back as `Last-Event-ID` when it reconnects) and the
/// JSON `data:` of every complete SSE frame in `buffer`, which keeps the incomplete rest
/// (comments, heartbeats and frames without JSON data are skipped).
pub fn drain_frames(buffer: &mut String) -> Vec<(Option<String>, serde_json::Value)> {
    let mut events = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let frame: String = buffer.drain(..end + 2).collect();
        let field = |name: &str| frame.lines().find_map(|l| l.strip_prefix(name));
        let id = field("id:").map(|id| id.trim().to_owned());
        if let Some(Ok(event)) = field("data:").map(|d| serde_json::from_str(d.trim())) {
            events.push((id, event));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: &[u8] = b"id: 0:3,1:2\nevent: ProductCreated\ndata: {\"occurred_at\":1700000000123,\"payload\":{\"name\":\"sse-42\",\"stock\":9},\"position\":\"1:17\"}\n\n";

    #[test]
    fn a_frame_gives_its_id_time_sequence_and_position() {
        let Seen::Event(event) = look_at(FRAME) else {
            panic!("an event")
        };
        assert_eq!(
            event,
            Event {
                id: b"0:3,1:2",
                occurred_at: 1_700_000_000_123,
                seq: Some(42),
                position: Some((1, 17)),
            }
        );
    }

    #[test]
    fn a_reconnect_and_a_heartbeat_are_told_apart_from_events() {
        let reconnect = b"id: 0:3,1:2\nevent: reconnect\ndata: {\"last_event_id\":\"0:3,1:2\"}\n\n";
        assert_eq!(look_at(reconnect), Seen::Reconnect(b"0:3,1:2"));
        assert_eq!(look_at(b": heartbeat\n\n"), Seen::Nothing);
    }

    #[test]
    fn a_second_frame_of_a_write_is_a_duplicate_and_a_missing_one_a_gap() {
        let mut check = ClientCheck::default();
        check.receive(Some(1), Some((0, 10)));
        check.receive(Some(130), Some((0, 11)));
        check.receive(Some(1), Some((1, 5)));
        assert_eq!(check.duplicates, 1);
        assert_eq!(check.count_of(&[1, 2, 130]), 2, "seq 2 is a gap");
        assert!(!check.has(200));
    }

    #[test]
    fn an_offset_that_does_not_grow_within_its_partition_is_out_of_order() {
        let mut check = ClientCheck::default();
        check.receive(Some(1), Some((0, 10)));
        check.receive(Some(2), Some((1, 3)));
        check.receive(Some(3), Some((0, 9)));
        check.receive(Some(4), Some((0, 10)));
        check.receive(Some(5), Some((0, 12)));
        assert_eq!((check.out_of_order, check.duplicates), (2, 0));
    }
}
