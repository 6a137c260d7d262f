//! The pipeline's side of parked products: writing a batch around them, record by record when
//! the sink refuses its data, and answering operators' requests (list, retry, drop).

use super::*;

impl<Src: Source, Dec: Decoder, Dl: DeadLetters> Pipeline<Src, Dec, Dl> {
    /// Writes the batch, setting aside the records of parked products; when the sink refuses
    /// the batch's data, writes it again record by record and parks the product of each record
    /// it refuses. Returns false when asked to stop while the sink was unavailable.
    pub(super) async fn write_parking<S: Sink>(
        &self,
        sink: &mut S,
        batch: &Batch,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, ConsumerError> {
        if !sink.parks() && !batch.parked.is_empty() {
            return self.wait_for_upgrade(&batch.parked, stop).await;
        }
        if sink.parks() && !self.load_parked(sink, stop).await? {
            return Ok(false);
        }
        // Copied only when it holds records of parked products (rare).
        let prepared = self
            .set_aside(batch)
            .map_or(std::borrow::Cow::Borrowed(batch), std::borrow::Cow::Owned);
        match self.write(sink, &prepared, stop).await? {
            Step::Stopped => Ok(false),
            Step::Written => {
                self.note_parked(&prepared.parked);
                Ok(true)
            }
            Step::Reseeked => Ok(true),
            Step::Refused(error) => {
                tracing::warn!(
                    error = chain(error.as_ref()),
                    records = batch.records.len(),
                    "the sink refused a record of the batch; writing it record by record"
                );
                self.write_one_by_one(sink, batch, stop).await
            }
        }
    }

    /// A sink that cannot park (the archive keeps every offset, in order) met a record written
    /// by a newer schema: it neither drops it nor stops, but waits, not ready, its partitions
    /// paused and nothing of the batch committed, until it is stopped for its upgrade; the
    /// upgraded build reads the batch again from the group's offsets. Returns false (stopped).
    async fn wait_for_upgrade(
        &self,
        newer: &[Parked],
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, ConsumerError> {
        self.healthy.store(false, Ordering::Release);
        self.source.pause()?;
        let mut delays = Delays::new(retry::forever(
            Duration::from_secs(1),
            Duration::from_secs(60),
        ));
        loop {
            let first = &newer[0];
            tracing::error!(records = newer.len(), partition = first.partition,
                offset = first.offset, reason = %first.reason,
                "this consumer cannot park and cannot read a record: waiting for its upgrade");
            if delays.sleep_or_stop(stop).await {
                return Ok(false);
            }
        }
    }

    /// The batch cut into one piece per record, each written on its own; a refused record's
    /// product is parked and the piece written again without it.
    pub(super) async fn write_one_by_one<S: Sink>(
        &self,
        sink: &mut S,
        batch: &Batch,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, ConsumerError> {
        for piece in batch.split() {
            let mut piece = self.set_aside(&piece).unwrap_or(piece);
            loop {
                match self.write(sink, &piece, stop).await? {
                    Step::Stopped => return Ok(false),
                    // The rest of the batch is read again from where the sink stands.
                    Step::Reseeked => return Ok(true),
                    Step::Written => {
                        self.note_parked(&piece.parked);
                        break;
                    }
                    Step::Refused(error) => {
                        let Some(record) = piece.records.pop() else {
                            return Err(ConsumerError::RefusedParkedOnly(error));
                        };
                        let reason = chain(error.as_ref());
                        tracing::warn!(partition = record.partition, offset = record.offset,
                            product = %record.event.product_id, version = record.event.version,
                            %reason, "record refused by the sink: its product is parked");
                        piece.parked.push(Parked::of(&record, reason));
                    }
                }
            }
        }
        Ok(true)
    }

    /// A copy of `batch` with the records of parked products moved to its parked entries;
    /// `None` when it has none.
    pub(super) fn set_aside(&self, batch: &Batch) -> Option<Batch> {
        crate::parking::set_aside(batch, &self.parked.lock().expect("not poisoned").1)
    }

    /// Notes entries the sink made durable as parked.
    pub(super) fn note_parked(&self, entries: &[Parked]) {
        if entries.is_empty() {
            return;
        }
        let mut parked = self.parked.lock().expect("not poisoned");
        for entry in entries {
            if !parked.1.contains(&entry.product_id) {
                tracing::warn!(product = %entry.product_id, reason = %entry.reason, "product parked");
            }
            parked.1.insert(&entry.product_id);
        }
        self.metrics.parked_events.inc_by(entries.len() as u64);
        self.metrics.parked_products.set(parked.1.len() as i64);
    }

    /// Reads the parked products from the sink when not known for this rebalance generation
    /// (another instance may have parked or retried some). False when asked to stop.
    pub(super) async fn load_parked<S: Sink>(
        &self,
        sink: &mut S,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, ConsumerError> {
        let generation = self.source.generation();
        if self.parked.lock().expect("not poisoned").0 == Some(generation) {
            return Ok(true);
        }
        let Some(Outcome::Parked(entries)) = self.call(sink, Call::ListParked, stop).await? else {
            return Ok(false);
        };
        let mut parked = self.parked.lock().expect("not poisoned");
        parked.1.replace(&entries);
        parked.0 = Some(generation);
        self.metrics.parked_products.set(parked.1.len() as i64);
        Ok(true)
    }

    /// Answers an operator's request about parked records. False when asked to stop.
    pub(super) async fn answer<S: Sink>(
        &self,
        sink: &mut S,
        request: ParkingRequest,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, ConsumerError> {
        if !sink.parks() {
            let refusal = "this consumer's sink does not park records".to_owned();
            match request {
                ParkingRequest::List(reply) => drop(reply.send(Ok(Vec::new()))),
                ParkingRequest::Retry(_, reply) | ParkingRequest::Drop(_, reply) => {
                    drop(reply.send(Err(refusal)))
                }
            }
            return Ok(true);
        }
        // What another instance did meanwhile counts too.
        self.parked.lock().expect("not poisoned").0 = None;
        let Some(Outcome::Parked(entries)) = self.call(sink, Call::ListParked, stop).await? else {
            return Ok(false);
        };
        let (product, retry, reply) = match request {
            ParkingRequest::List(reply) => {
                let _ = reply.send(Ok(entries));
                return Ok(true);
            }
            ParkingRequest::Retry(product, reply) => (product, true, reply),
            ParkingRequest::Drop(product, reply) => (product, false, reply),
        };
        let mine: Vec<&Parked> = entries.iter().filter(|e| e.product_id == product).collect();
        if mine.is_empty() {
            let _ = reply.send(Err(format!("product {product:?} has no parked records")));
            return Ok(true);
        }
        let records = if retry {
            match self.read_again(&mine).await {
                Ok(records) => Some(records),
                Err(error) => {
                    let _ = reply.send(Err(format!(
                        "reading the parked records again failed: {}",
                        chain(&error)
                    )));
                    return Ok(true);
                }
            }
        } else {
            None
        };
        let answer = match self
            .call(sink, Call::Unpark(&product, records.as_deref()), stop)
            .await?
        {
            None => return Ok(false),
            Some(Outcome::Refused(error)) => Err(format!(
                "still refused, the product stays parked: {}",
                chain(error.as_ref())
            )),
            Some(_) => {
                let action = if retry { "retried" } else { "dropped" };
                tracing::info!(%product, records = mine.len(), action, "parked records resolved");
                let mut parked = self.parked.lock().expect("not poisoned");
                parked.1.remove(&product);
                self.metrics.parked_products.set(parked.1.len() as i64);
                Ok(Resolved {
                    product_id: product,
                    records: mine.len(),
                    action,
                })
            }
        };
        let _ = reply.send(answer);
        Ok(true)
    }

    /// The parked records, read again from the log and decoded, in log order.
    pub(super) async fn read_again(&self, entries: &[&Parked]) -> Result<Vec<Record>, SourceError> {
        let wanted: Vec<(i32, i64)> = entries.iter().map(|e| (e.partition, e.offset)).collect();
        let messages = self.source.refetch(&wanted).await?;
        let mut records = Vec::with_capacity(messages.len());
        for (partition, offset) in wanted {
            let message = messages
                .iter()
                .find(|m| m.partition() == partition && m.offset() == offset)
                .ok_or(SourceError::Gone { partition, offset })?;
            let bytes = message
                .payload()
                .ok_or(SourceError::NoValue { partition, offset })?;
            let event =
                self.decoder
                    .decode(bytes)
                    .await
                    .map_err(|error| SourceError::Undecodable {
                        partition,
                        offset,
                        error,
                    })?;
            records.push(Record::from_message(message, event));
        }
        Ok(records)
    }
}

/// The next operator request, or never when there is no channel (or it closed).
pub(super) async fn next_request(
    requests: &mut Option<mpsc::Receiver<ParkingRequest>>,
) -> Option<ParkingRequest> {
    match requests {
        Some(receiver) => match receiver.recv().await {
            Some(request) => Some(request),
            None => {
                *requests = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}
