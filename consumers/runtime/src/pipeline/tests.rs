//! The consume loop against in-memory fakes: a source of scripted records, a decoder that
//! refuses bytes starting with `bad`, a dead-letter queue that records (or fails), and a sink
//! that answers from a script.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Mutex as StdMutex;

use foldline_schemas::event::ProductDeleted;
use foldline_schemas::{Envelope, Payload};
use rdkafka::error::KafkaError;
use rdkafka::Timestamp;
use tokio::sync::Notify;

use super::*;
use crate::error::DeadLetterError;
use crate::parking::BEHIND_A_PARKED_EVENT;

#[derive(Default)]
struct FakeLog {
    queued: StdMutex<VecDeque<OwnedMessage>>,
    arrived: Notify,
    generation: AtomicU64,
    seeks: StdMutex<Vec<(i32, i64)>>,
    commits: StdMutex<Vec<(Offsets, bool)>>,
    pauses: AtomicUsize,
    resumes: AtomicUsize,
    /// Every record ever pushed, for `refetch`.
    history: StdMutex<Vec<OwnedMessage>>,
}

#[derive(Clone, Default)]
struct FakeSource(Arc<FakeLog>);

impl FakeSource {
    fn push(&self, partition: i32, offset: i64, value: Option<&str>) {
        let message = OwnedMessage::new(
            value.map(|v| v.as_bytes().to_vec()),
            Some(b"key".to_vec()),
            "topic".into(),
            Timestamp::CreateTime(1_700_000_000_000),
            partition,
            offset,
            None,
        );
        self.0.history.lock().unwrap().push(message.clone());
        self.0.queued.lock().unwrap().push_back(message);
        self.0.arrived.notify_one();
    }

    fn commits(&self) -> Vec<(Offsets, bool)> {
        self.0.commits.lock().unwrap().clone()
    }

    fn seeks(&self) -> Vec<(i32, i64)> {
        self.0.seeks.lock().unwrap().clone()
    }
}

impl Source for FakeSource {
    async fn recv(&self) -> Result<OwnedMessage, KafkaError> {
        loop {
            if let Some(message) = self.0.queued.lock().unwrap().pop_front() {
                return Ok(message);
            }
            self.0.arrived.notified().await;
        }
    }
    fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::SeqCst)
    }
    fn seek(&self, partition: i32, offset: i64) -> Result<(), SourceError> {
        self.0.seeks.lock().unwrap().push((partition, offset));
        Ok(())
    }
    fn pause(&self) -> Result<(), SourceError> {
        self.0.pauses.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn resume(&self) -> Result<(), SourceError> {
        self.0.resumes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn commit(&self, next: &Offsets, mode: CommitMode) {
        let sync = matches!(mode, CommitMode::Sync);
        self.0.commits.lock().unwrap().push((next.clone(), sync));
    }
    async fn refetch(&self, wanted: &[(i32, i64)]) -> Result<Vec<OwnedMessage>, SourceError> {
        Ok(self
            .0
            .history
            .lock()
            .unwrap()
            .iter()
            .filter(|m| wanted.contains(&(m.partition(), m.offset())))
            .cloned()
            .collect())
    }
}

/// Products whose `newer:<product>` records this "build" reads (it was upgraded).
static UPGRADED: StdMutex<Vec<String>> = StdMutex::new(Vec::new());

/// Decodes any value into a deletion of the product named by the value; `bad…` is undecodable;
/// `newer:<product>` is written by a newer schema until the product is in [`UPGRADED`].
struct FakeDecoder;

impl Decoder for FakeDecoder {
    async fn decode(&self, bytes: &[u8]) -> Result<Envelope, foldline_schemas::wire::CodecError> {
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        if text.starts_with("bad") {
            return Err(foldline_schemas::wire::CodecError::Undecodable(format!(
                "not an event: {text}"
            )));
        }
        if let Some(product) = text.strip_prefix("newer:").map(str::to_owned) {
            if !UPGRADED.lock().unwrap().contains(&product) {
                let newer = foldline_schemas::read::NewerEvent {
                    event_id: Default::default(),
                    product_id: product,
                    version: 1,
                    event_type: "FutureEvent".into(),
                    unknown: "event type `FutureEvent`".into(),
                    schema_id: Some(9),
                    json: serde_json::Value::Null,
                };
                return Err(foldline_schemas::wire::CodecError::NewerSchema(Box::new(
                    newer,
                )));
            }
            text = product;
        }
        Ok(Envelope {
            event_id: Default::default(),
            product_id: text,
            version: 1,
            occurred_at: Default::default(),
            correlation_id: "c".into(),
            idempotency_key: None,
            command_index: None,
            payload: Payload::ProductDeleted(ProductDeleted {}),
            actor: None,
        })
    }
}

#[derive(Clone, Default)]
struct FakeDeadLetters {
    sent: Arc<StdMutex<Vec<DeadLetter>>>,
    /// Fails this many calls before accepting.
    failures: Arc<AtomicUsize>,
}

impl DeadLetters for FakeDeadLetters {
    async fn publish(&self, letters: &[DeadLetter]) -> Result<usize, DeadLetterError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(DeadLetterError::Append(KafkaError::Canceled));
        }
        self.sent.lock().unwrap().extend_from_slice(letters);
        Ok(0)
    }
}

/// What the fake sink answers to each write, in order; `Done` once the script is used up.
enum Answer {
    Done,
    Partly(Offsets),
    Reseek(Offsets),
    Transient,
    Fatal,
}

#[derive(Clone, Default)]
struct FakeSink {
    script: Arc<StdMutex<VecDeque<Answer>>>,
    /// Every batch `write` was called with (also the failed calls).
    batches: Arc<StdMutex<Vec<Batch>>>,
    flushes: Arc<StdMutex<Vec<Flush>>>,
    /// What `flush` reports durable.
    held_back: Arc<StdMutex<Offsets>>,
}

impl FakeSink {
    fn answering(answers: impl IntoIterator<Item = Answer>) -> FakeSink {
        let sink = FakeSink::default();
        sink.script.lock().unwrap().extend(answers);
        sink
    }
    fn batches(&self) -> Vec<Batch> {
        self.batches.lock().unwrap().clone()
    }
}

impl Sink for FakeSink {
    async fn write(&mut self, batch: &Batch) -> Result<Written, SinkError> {
        self.batches.lock().unwrap().push(batch.clone());
        match self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Done)
        {
            Answer::Done => Ok(Written::Done),
            Answer::Partly(durable) => Ok(Written::Partly(durable)),
            Answer::Reseek(stored) => Ok(Written::Reseek(stored)),
            Answer::Transient => Err(SinkError::Transient("database down".into())),
            Answer::Fatal => Err(SinkError::Fatal("broken invariant".into())),
        }
    }

    async fn flush(&mut self, why: Flush) -> Result<Offsets, SinkError> {
        self.flushes.lock().unwrap().push(why);
        Ok(std::mem::take(&mut *self.held_back.lock().unwrap()))
    }
}

struct Running {
    source: FakeSource,
    dead_letters: FakeDeadLetters,
    healthy: Arc<AtomicBool>,
    metrics: RuntimeMetrics,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ConsumerError>>,
}

/// Runs a pipeline over `sink`, an empty source and a dead-letter queue that works.
fn start_with(sink: &FakeSink) -> Running {
    start(
        sink.clone(),
        FakeSource::default(),
        FakeDeadLetters::default(),
    )
}

fn start(sink: FakeSink, source: FakeSource, dead_letters: FakeDeadLetters) -> Running {
    start_any(sink, source, dead_letters, None)
}

/// Runs a pipeline over any sink; `requests`: operators' parking requests, if any.
fn start_any<S: Sink>(
    sink: S,
    source: FakeSource,
    dead_letters: FakeDeadLetters,
    requests: Option<mpsc::Receiver<ParkingRequest>>,
) -> Running {
    let limits = Limits {
        max_records: 100,
        max_bytes: 1 << 20,
        max_wait: Duration::from_millis(20),
        quiet_gap: Duration::from_millis(20),
        idle_flush: Duration::from_millis(150),
    };
    start_limited(sink, source, dead_letters, requests, limits)
}

fn start_limited<S: Sink>(
    sink: S,
    source: FakeSource,
    dead_letters: FakeDeadLetters,
    requests: Option<mpsc::Receiver<ParkingRequest>>,
    limits: Limits,
) -> Running {
    let healthy = Arc::new(AtomicBool::new(true));
    let metrics = RuntimeMetrics::new(&prometheus::Registry::new());
    let mut pipeline = Pipeline::new(
        source.clone(),
        FakeDecoder,
        dead_letters.clone(),
        metrics.clone(),
        healthy.clone(),
        limits,
    );
    if let Some(requests) = requests {
        pipeline = pipeline.with_parking_requests(requests);
    }
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move { pipeline.run(sink, stop_rx).await });
    Running {
        source,
        dead_letters,
        healthy,
        metrics,
        stop,
        task,
    }
}

/// Waits (at most 5 s) until `done` holds.
async fn until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "condition not reached in 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Running {
    async fn stop(self) -> Result<(), ConsumerError> {
        self.stop.send(true).unwrap();
        self.task.await.unwrap()
    }
}

fn products(batch: &Batch) -> Vec<(i32, i64, String)> {
    batch
        .records
        .iter()
        .map(|r| (r.partition, r.offset, r.event.product_id.clone()))
        .collect()
}

#[tokio::test]
async fn a_durable_batch_is_committed_and_the_next_batch_reads_on_from_it() {
    let sink = FakeSink::default();
    let run = start_with(&sink);
    run.source.push(0, 10, Some("a"));
    run.source.push(1, 4, Some("b"));
    run.source.push(0, 11, Some("c"));
    until(|| !run.source.commits().is_empty()).await;
    let batch = &sink.batches()[0];
    assert_eq!(
        products(batch),
        [(0, 10, "a".into()), (1, 4, "b".into()), (0, 11, "c".into())]
    );
    assert_eq!(batch.records[0].key.as_deref(), Some("key"));
    assert_eq!(batch.records[0].timestamp_ms, Some(1_700_000_000_000));
    assert!(
        batch.read_from.is_empty(),
        "nothing known before the first batch"
    );
    assert_eq!(
        run.source.commits()[0],
        (Offsets::from([(0, 12), (1, 5)]), false)
    );

    // Offset 12 of partition 0 was a transaction marker: the next batch starts at 13 and
    // says it was read on from 12 without a break.
    run.source.push(0, 13, Some("d"));
    until(|| sink.batches().len() == 2).await;
    assert_eq!(
        sink.batches()[1].read_from,
        Offsets::from([(0, 12), (1, 5)])
    );
    assert!(sink.batches()[1].continues_from(0, 12));
    assert_eq!(run.metrics.events.get(), 4);
    run.stop().await.unwrap();
}

/// Given a long batch window and a short quiet gap, records that come close together share a
/// batch, and the batch is written as soon as the log goes quiet — not when the window ends.
#[tokio::test(start_paused = true)]
async fn a_batch_is_written_when_the_log_goes_quiet_not_when_its_window_ends() {
    let sink = FakeSink::default();
    let limits = Limits {
        max_records: 100,
        max_bytes: 1 << 20,
        max_wait: Duration::from_secs(10),
        quiet_gap: Duration::from_millis(5),
        idle_flush: Duration::from_secs(60),
    };
    let run = start_limited(
        sink.clone(),
        FakeSource::default(),
        FakeDeadLetters::default(),
        None,
        limits,
    );
    let started = tokio::time::Instant::now();
    run.source.push(0, 1, Some("a"));
    tokio::time::sleep(Duration::from_millis(2)).await;
    run.source.push(0, 2, Some("b"));
    until(|| !sink.batches().is_empty()).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "written {:?} after the first record: the batch waited for its window",
        started.elapsed()
    );
    assert_eq!(
        products(&sink.batches()[0]),
        [(0, 1, "a".into()), (0, 2, "b".into())]
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn undecodable_records_and_tombstones_go_to_the_dead_letters_and_offsets_move_past_them() {
    let sink = FakeSink::default();
    let run = start_with(&sink);
    run.source.push(0, 0, Some("a"));
    run.source.push(0, 1, Some("bad bytes"));
    run.source.push(0, 2, None);
    run.source.push(0, 3, Some("b"));
    until(|| !run.source.commits().is_empty()).await;
    let letters = run.dead_letters.sent.lock().unwrap().clone();
    assert_eq!(letters.len(), 2);
    assert_eq!(
        (letters[0].offset, letters[0].value.as_deref()),
        (1, Some(&b"bad bytes"[..]))
    );
    assert!(
        letters[0].reason.contains("not an event"),
        "{}",
        letters[0].reason
    );
    assert_eq!(letters[0].key.as_deref(), Some(&b"key"[..]));
    assert_eq!((letters[1].offset, letters[1].value.clone()), (2, None));
    assert_eq!(
        products(&sink.batches()[0]),
        [(0, 0, "a".into()), (0, 3, "b".into())]
    );
    assert_eq!(
        sink.batches()[0].ranges[&0],
        (0, 3),
        "ranges include the dead letters"
    );
    assert_eq!(run.source.commits()[0].0, Offsets::from([(0, 4)]));
    let counted = |reason| run.metrics.dead_lettered.with_label_values(&[reason]).get();
    assert_eq!((counted("undecodable"), counted("empty")), (1, 1));
    run.stop().await.unwrap();
}

#[tokio::test]
async fn the_batch_waits_for_the_dead_letter_topic_and_is_not_written_before() {
    let sink = FakeSink::default();
    let dead_letters = FakeDeadLetters::default();
    dead_letters.failures.store(2, Ordering::SeqCst);
    let run = start(sink.clone(), FakeSource::default(), dead_letters);
    run.source.push(0, 0, Some("bad"));
    run.source.push(0, 1, Some("a"));
    until(|| !run.source.commits().is_empty()).await;
    assert_eq!(
        run.dead_letters.failures.load(Ordering::SeqCst),
        0,
        "retried twice"
    );
    assert_eq!(run.dead_letters.sent.lock().unwrap().len(), 1);
    assert_eq!(sink.batches().len(), 1, "written once, after the letters");
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_transient_sink_error_pauses_the_partitions_and_retries_the_same_batch() {
    let sink = FakeSink::answering([Answer::Transient, Answer::Transient, Answer::Done]);
    let run = start_with(&sink);
    run.source.push(0, 5, Some("a"));
    until(|| run.source.0.pauses.load(Ordering::SeqCst) == 1).await;
    assert!(
        !run.healthy.load(Ordering::SeqCst),
        "not ready while the sink is down"
    );
    until(|| !run.source.commits().is_empty()).await;
    let batches = sink.batches();
    assert_eq!(batches.len(), 3);
    assert!(batches.iter().all(|b| products(b) == [(0, 5, "a".into())]));
    assert_eq!(run.source.0.pauses.load(Ordering::SeqCst), 1, "paused once");
    assert_eq!(run.source.0.resumes.load(Ordering::SeqCst), 1);
    assert!(run.healthy.load(Ordering::SeqCst));
    assert_eq!(run.metrics.sink_retries.get(), 2);
    assert_eq!(run.metrics.events.get(), 1, "counted once");
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_fatal_sink_error_stops_the_consumer_without_committing() {
    let sink = FakeSink::answering([Answer::Fatal]);
    let run = start_with(&sink);
    run.source.push(0, 0, Some("a"));
    let error = run.task.await.unwrap().unwrap_err();
    assert!(error.to_string().contains("broken invariant"), "{error}");
    assert!(run.source.commits().is_empty());
}

#[tokio::test]
async fn a_stop_while_the_sink_is_down_ends_without_committing_the_batch() {
    let sink = FakeSink::answering((0..1000).map(|_| Answer::Transient));
    let run = start_with(&sink);
    run.source.push(0, 0, Some("a"));
    until(|| !sink.batches().is_empty()).await;
    let source = run.source.clone();
    run.stop().await.unwrap();
    assert!(
        source
            .commits()
            .iter()
            .all(|(offsets, _)| offsets.is_empty()),
        "the batch is read again after a restart"
    );
}

#[tokio::test]
async fn a_reseek_moves_each_partition_to_the_sinks_offset_or_back_to_where_the_batch_began() {
    let sink = FakeSink::answering([Answer::Done, Answer::Reseek(Offsets::from([(0, 7)]))]);
    let run = start_with(&sink);
    run.source.push(1, 2, Some("a"));
    until(|| sink.batches().len() == 1).await;
    // Partition 1 continues from 3; partition 0 is new, first read at 9.
    run.source.push(0, 9, Some("b"));
    run.source.push(1, 3, Some("c"));
    until(|| run.source.seeks().len() == 2).await;
    let mut seeks = run.source.seeks();
    seeks.sort();
    assert_eq!(
        seeks,
        [(0, 7), (1, 3)],
        "the sink's word for 0, where the batch began for 1"
    );
    assert_eq!(
        run.source.commits().len(),
        1,
        "nothing of the refused batch is committed"
    );
    assert_eq!(run.metrics.reseeks.get(), 1);
    // What the source delivers after the seek is known to continue from the seek targets.
    run.source.push(0, 7, Some("d"));
    until(|| sink.batches().len() == 3).await;
    assert_eq!(sink.batches()[2].read_from, Offsets::from([(0, 7), (1, 3)]));
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_partly_written_batch_commits_only_what_is_durable_and_the_rest_at_idle_flush() {
    let sink = FakeSink::answering([Answer::Partly(Offsets::from([(0, 2)]))]);
    *sink.held_back.lock().unwrap() = Offsets::from([(0, 5)]);
    let run = start_with(&sink);
    for offset in 0..5 {
        run.source.push(0, offset, Some("a"));
    }
    until(|| run.source.commits().len() == 2).await;
    let commits = run.source.commits();
    assert_eq!(
        commits[0],
        (Offsets::from([(0, 2)]), false),
        "only what is durable"
    );
    assert_eq!(*sink.flushes.lock().unwrap(), [Flush::Idle]);
    assert_eq!(
        commits[1],
        (Offsets::from([(0, 5)]), false),
        "the rest once flushed"
    );
    // The next batch continues from the batch's end, not from the committed offsets.
    run.source.push(0, 5, Some("b"));
    until(|| sink.batches().len() == 2).await;
    assert_eq!(sink.batches()[1].read_from, Offsets::from([(0, 5)]));
    run.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_flushes_what_the_sink_holds_back_and_commits_it_synchronously() {
    let sink = FakeSink::answering([Answer::Partly(Offsets::new())]);
    let run = start_with(&sink);
    run.source.push(2, 40, Some("a"));
    until(|| sink.batches().len() == 1).await;
    *sink.held_back.lock().unwrap() = Offsets::from([(2, 41)]);
    let source = run.source.clone();
    run.stop().await.unwrap();
    assert_eq!(sink.flushes.lock().unwrap().last(), Some(&Flush::Shutdown));
    assert_eq!(
        source.commits().last(),
        Some(&(Offsets::from([(2, 41)]), true))
    );
}

#[tokio::test]
async fn after_a_rebalance_nothing_is_known_of_where_partitions_are_read_from() {
    let sink = FakeSink::default();
    let run = start_with(&sink);
    run.source.push(0, 0, Some("a"));
    until(|| sink.batches().len() == 1).await;
    run.source.push(0, 1, Some("b"));
    until(|| sink.batches().len() == 2).await;
    assert_eq!(sink.batches()[1].read_from, Offsets::from([(0, 1)]));
    assert_eq!(sink.batches()[1].generation, 0);

    run.source.0.generation.store(1, Ordering::SeqCst);
    run.source.push(0, 2, Some("c"));
    until(|| sink.batches().len() == 3).await;
    let after = &sink.batches()[2];
    assert_eq!(after.generation, 1);
    assert!(after.read_from.is_empty(), "{:?}", after.read_from);
    assert!(
        !after.continues_from(0, 1),
        "a sink at 1 must not trust a batch starting at 2"
    );
    run.stop().await.unwrap();
}

/// A sink that keeps parked entries and refuses every record of a product named `poison…`
/// (until `cured`), as a store refuses a value it cannot hold.
#[derive(Clone, Default)]
struct ParkingSink {
    applied: Arc<StdMutex<Vec<(String, i64)>>>,
    parked: Arc<StdMutex<Vec<Parked>>>,
    writes: Arc<AtomicUsize>,
    cured: Arc<AtomicBool>,
}

impl ParkingSink {
    fn refuses(&self, record: &Record) -> bool {
        record.event.product_id.starts_with("poison") && !self.cured.load(Ordering::SeqCst)
    }
    fn applied(&self) -> Vec<(String, i64)> {
        self.applied.lock().unwrap().clone()
    }
    fn parked_offsets(&self) -> Vec<i64> {
        self.parked
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.offset)
            .collect()
    }
}

impl Sink for ParkingSink {
    async fn write(&mut self, batch: &Batch) -> Result<Written, SinkError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if batch.records.iter().any(|r| self.refuses(r)) {
            return Err(SinkError::Data("value out of range".into()));
        }
        let mut applied = self.applied.lock().unwrap();
        applied.extend(
            batch
                .records
                .iter()
                .map(|r| (r.event.product_id.clone(), r.offset)),
        );
        self.parked
            .lock()
            .unwrap()
            .extend(batch.parked.iter().cloned());
        Ok(Written::Done)
    }
    fn parks(&self) -> bool {
        true
    }
    async fn parked(&mut self) -> Result<Vec<Parked>, SinkError> {
        Ok(self.parked.lock().unwrap().clone())
    }
    async fn unpark(&mut self, product: &str, records: Option<&[Record]>) -> Result<(), SinkError> {
        if let Some(records) = records {
            if records.iter().any(|r| self.refuses(r)) {
                return Err(SinkError::Data("value out of range".into()));
            }
            let mut applied = self.applied.lock().unwrap();
            applied.extend(
                records
                    .iter()
                    .map(|r| (r.event.product_id.clone(), r.offset)),
            );
        }
        self.parked
            .lock()
            .unwrap()
            .retain(|p| p.product_id != product);
        Ok(())
    }
}

fn start_parking(sink: ParkingSink) -> (Running, mpsc::Sender<ParkingRequest>) {
    let (requests, requests_rx) = mpsc::channel(4);
    let running = start_any(
        sink,
        FakeSource::default(),
        FakeDeadLetters::default(),
        Some(requests_rx),
    );
    (running, requests)
}

async fn request<T>(
    requests: &mpsc::Sender<ParkingRequest>,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, String>>) -> ParkingRequest,
) -> Result<T, String> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    requests.send(make(reply)).await.unwrap();
    answer.await.unwrap()
}

#[tokio::test]
async fn given_a_record_the_sink_refuses_then_its_product_is_parked_and_every_other_flows() {
    let sink = ParkingSink::default();
    let (run, requests) = start_parking(sink.clone());
    run.source.push(0, 0, Some("a"));
    run.source.push(0, 1, Some("poison-1"));
    run.source.push(0, 2, Some("bad bytes"));
    run.source.push(0, 3, Some("b"));
    run.source.push(1, 0, Some("c"));
    until(|| {
        run.source
            .commits()
            .iter()
            .any(|(o, _)| o.get(0) == Some(4))
    })
    .await;
    until(|| sink.applied().len() == 3).await;
    assert_eq!(
        sink.applied(),
        [("a".into(), 0), ("b".into(), 3), ("c".into(), 0)],
        "every other product applied, in order"
    );
    assert_eq!(sink.parked_offsets(), [1]);
    assert!(sink.parked.lock().unwrap()[0]
        .reason
        .contains("value out of range"));
    assert_eq!(run.metrics.parked_products.get(), 1);
    assert!(run.healthy.load(Ordering::SeqCst), "ready all along");

    // A later record of the parked product is parked behind it, in order; others flow.
    run.source.push(0, 4, Some("poison-1"));
    run.source.push(0, 5, Some("d"));
    until(|| sink.applied().len() == 4).await;
    assert_eq!(sink.parked_offsets(), [1, 4]);
    assert_eq!(sink.parked.lock().unwrap()[1].reason, BEHIND_A_PARKED_EVENT);
    assert_eq!(run.metrics.parked_events.get(), 2);

    // Retried while the sink still refuses: stays parked, nothing applied.
    let still = request(&requests, |r| ParkingRequest::Retry("poison-1".into(), r)).await;
    assert!(still.unwrap_err().contains("stays parked"));
    assert_eq!(sink.parked_offsets(), [1, 4]);

    // Fixed: a retry applies both, in order, once; the product flows again.
    sink.cured.store(true, Ordering::SeqCst);
    let resolved = request(&requests, |r| ParkingRequest::Retry("poison-1".into(), r)).await;
    assert_eq!(resolved.unwrap().records, 2);
    assert!(sink.parked_offsets().is_empty());
    run.source.push(0, 6, Some("poison-1"));
    until(|| sink.applied().len() == 7).await;
    assert_eq!(
        sink.applied()[4..],
        [
            ("poison-1".into(), 1),
            ("poison-1".into(), 4),
            ("poison-1".into(), 6)
        ]
    );
    assert_eq!(run.metrics.parked_products.get(), 0);
    let unknown = request(&requests, |r| ParkingRequest::Drop("nothing".into(), r)).await;
    assert!(unknown.is_err());
    run.stop().await.unwrap();
}

#[tokio::test]
async fn given_parked_records_when_dropped_then_forgotten_and_later_records_flow() {
    let sink = ParkingSink::default();
    let (run, requests) = start_parking(sink.clone());
    run.source.push(0, 0, Some("poison-2"));
    until(|| sink.parked_offsets() == [0]).await;
    let listed = request(&requests, ParkingRequest::List).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].product_id, "poison-2");
    let dropped = request(&requests, |r| ParkingRequest::Drop("poison-2".into(), r)).await;
    assert_eq!(dropped.unwrap().action, "dropped");
    assert!(sink.parked_offsets().is_empty());
    assert!(sink.applied().is_empty(), "a drop applies nothing");
    run.stop().await.unwrap();
}

#[tokio::test]
async fn given_a_sink_that_does_not_park_when_it_refuses_data_then_the_consumer_stops() {
    struct Refusing;
    impl Sink for Refusing {
        async fn write(&mut self, _: &Batch) -> Result<Written, SinkError> {
            Err(SinkError::Data("refused".into()))
        }
    }
    let source = FakeSource::default();
    let pipeline = Pipeline::new(
        source.clone(),
        FakeDecoder,
        FakeDeadLetters::default(),
        RuntimeMetrics::new(&prometheus::Registry::new()),
        Arc::new(AtomicBool::new(true)),
        Limits {
            max_records: 100,
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(20),
            quiet_gap: Duration::from_millis(20),
            idle_flush: Duration::from_millis(150),
        },
    );
    let (_stop, stop_rx) = watch::channel(false);
    source.push(0, 0, Some("a"));
    let error = pipeline.run(Refusing, stop_rx).await.unwrap_err();
    assert!(error.to_string().contains("does not park"), "{error}");
}

#[tokio::test]
async fn given_a_record_of_a_newer_schema_then_its_product_is_parked_until_an_upgraded_retry() {
    let sink = ParkingSink::default();
    let (run, requests) = start_parking(sink.clone());
    run.source.push(0, 0, Some("a"));
    run.source.push(0, 1, Some("newer:n1"));
    run.source.push(0, 2, Some("n1"));
    run.source.push(0, 3, Some("b"));
    run.source.push(1, 0, Some("n2"));
    until(|| {
        run.source
            .commits()
            .iter()
            .any(|(o, _)| o.get(0) == Some(4) && o.get(1) == Some(1))
    })
    .await;
    assert_eq!(
        sink.applied(),
        [("a".into(), 0), ("b".into(), 3), ("n2".into(), 0)],
        "every other product applied; nothing of n1 after its newer event"
    );
    assert_eq!(
        sink.parked_offsets(),
        [1, 2],
        "parked in order, not dropped"
    );
    let parked = sink.parked.lock().unwrap().clone();
    assert!(parked[0]
        .reason
        .contains("written by a newer schema (id 9)"));
    assert_eq!(parked[0].event_type, "FutureEvent");
    assert_eq!(parked[1].reason, BEHIND_A_PARKED_EVENT);
    assert!(
        run.dead_letters.sent.lock().unwrap().is_empty(),
        "not a dead letter"
    );

    // Before the upgrade a retry cannot read it: it stays parked.
    let early = request(&requests, |r| ParkingRequest::Retry("n1".into(), r)).await;
    assert!(early.unwrap_err().contains("newer schema"));
    assert_eq!(sink.parked_offsets(), [1, 2]);

    // After the upgrade the retry applies both, in order.
    UPGRADED.lock().unwrap().push("n1".into());
    let resolved = request(&requests, |r| ParkingRequest::Retry("n1".into(), r)).await;
    assert_eq!(resolved.unwrap().records, 2);
    assert_eq!(sink.applied()[3..], [("n1".into(), 1), ("n1".into(), 2)]);
    assert!(sink.parked_offsets().is_empty());
    run.stop().await.unwrap();
}

#[tokio::test]
async fn given_a_sink_that_cannot_park_when_a_newer_record_comes_then_it_waits_without_committing()
{
    let sink = FakeSink::default();
    let run = start_with(&sink);
    run.source.push(0, 0, Some("newer:n3"));
    until(|| !run.healthy.load(Ordering::SeqCst)).await;
    assert!(
        run.source.0.pauses.load(Ordering::SeqCst) > 0,
        "partitions paused"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        run.source.commits().iter().all(|(o, _)| o.get(0).is_none()),
        "nothing past the newer record committed: the upgraded build reads it again"
    );
    assert!(run.dead_letters.sent.lock().unwrap().is_empty());
    run.stop().await.expect("stops cleanly while waiting");
}
