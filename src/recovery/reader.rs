//! The task that reads the recovery log for restores. Restores that arrive together share one
//! scan: the first waits a few milliseconds for company, then one fence is written, one consumer
//! reads from the earliest start to that fence, and every restore of the round gets its answer.
//! (200 clients of a closed server reconnecting within a second cost a few scans, not 200.)
//! Catch-ups (room routing's second read for one restore) are read one by one, from a position.

use super::scan::{CatchUp, Reading, Restored, Scan, StoredPacket};
use super::{now_ms, LogPublisher, Recovery, Reporter, MAX_REPLAYED};
use crate::reconnect::closed;
use crate::wire::{self, Message};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How long the first restore of a round waits for others to share its scan.
const GATHER: Duration = Duration::from_millis(15);
/// A read that has not reached its fence by then gives up (its restores are not recovered).
const SCAN_TIMEOUT: Duration = Duration::from_secs(10);
/// Stream deliveries in flight (streams need a prefetch and acknowledgements as credit).
const SCAN_PREFETCH: u16 = 1000;

pub(crate) enum Job {
    Restore(Request),
    CatchUp(CatchUpRequest),
}

pub(crate) struct Request {
    pub nsp: String,
    pub pid: String,
    pub offset: String,
    /// Where to start reading: the offset's time less the clock margin (ms since the epoch).
    pub start_ms: u64,
    pub reply: oneshot::Sender<Option<Restored>>,
}

pub(crate) struct CatchUpRequest {
    pub nsp: String,
    pub rooms: Vec<String>,
    /// The log position to read from (right after the restore's first fence).
    pub from: u64,
    pub reply: oneshot::Sender<Option<Vec<StoredPacket>>>,
}

pub(crate) async fn run(
    recovery: Arc<Recovery>,
    publish: LogPublisher,
    report: Reporter,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut closing: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
            _ = closed(&mut closing) => return,
        };
        tokio::time::sleep(GATHER).await;
        let mut round = Vec::new();
        let mut catch_ups = Vec::new();
        for job in std::iter::once(first).chain(std::iter::from_fn(|| jobs.try_recv().ok())) {
            match job {
                Job::Restore(request) => round.push(request),
                Job::CatchUp(request) => catch_ups.push(request),
            }
        }
        // Catch-ups first: their sockets are half-way through a restore.
        for request in catch_ups {
            let packets = catch_up(&recovery, &publish, &report, &request).await;
            let _ = request.reply.send(packets);
        }
        if round.is_empty() {
            continue;
        }
        // A pid asked for twice in one round (a client retrying) is restored once.
        let mut seen = HashSet::new();
        let (round, repeats): (Vec<_>, Vec<_>) = round
            .into_iter()
            .partition(|r| seen.insert((r.nsp.clone(), r.pid.clone())));
        for repeat in repeats {
            let _ = repeat.reply.send(None);
        }
        scan_round(&recovery, &publish, &report, round).await;
    }
}

async fn scan_round(
    recovery: &Recovery,
    publish: &LogPublisher,
    report: &Reporter,
    round: Vec<Request>,
) {
    recovery.stats.scans.fetch_add(1, Ordering::Relaxed);
    let fence = new_fence_id();
    let start_ms = round.iter().map(|r| r.start_ms).min().unwrap_or_default();
    let wanted = round
        .iter()
        .map(|r| (r.nsp.clone(), r.pid.clone(), r.offset.clone()));
    let scan = Scan::new(fence.clone(), wanted, MAX_REPLAYED);
    let claims = round.iter().map(|r| r.pid.clone()).collect();
    publish(Message::Fence { id: fence, claims });
    let start = AMQPValue::Timestamp(start_ms / 1000);
    let outcomes = match read_logged(recovery, report, start, scan, round.len()).await {
        Some((scan, fence_position)) => {
            let mut outcomes = scan.finish(now_ms());
            for restored in outcomes.iter_mut().flatten() {
                restored.resume_at = fence_position.map(|p| p + 1);
            }
            Some(outcomes)
        }
        None => None,
    };
    match outcomes {
        Some(outcomes) => {
            for (request, outcome) in round.into_iter().zip(outcomes) {
                let _ = request.reply.send(outcome.ok());
            }
        }
        None => {
            for request in round {
                let _ = request.reply.send(None);
            }
        }
    }
}

async fn catch_up(
    recovery: &Recovery,
    publish: &LogPublisher,
    report: &Reporter,
    request: &CatchUpRequest,
) -> Option<Vec<StoredPacket>> {
    recovery.stats.scans.fetch_add(1, Ordering::Relaxed);
    let fence = new_fence_id();
    let reading = CatchUp::new(
        fence.clone(),
        request.nsp.clone(),
        request.rooms.clone(),
        MAX_REPLAYED,
    );
    publish(Message::Fence {
        id: fence,
        claims: Vec::new(),
    });
    let start = AMQPValue::LongLongInt(i64::try_from(request.from).unwrap_or(i64::MAX));
    let (reading, _) = read_logged(recovery, report, start, reading, 1).await?;
    reading.finish()
}

fn new_fence_id() -> String {
    format!("{:x}-{}", now_ms(), crate::wire::random_uid())
}

/// [`read`] on the session's connection, reporting failures (`clients`: how many restores wait).
async fn read_logged<R: Reading>(
    recovery: &Recovery,
    report: &Reporter,
    start: AMQPValue,
    reading: R,
    clients: usize,
) -> Option<(R, Option<u64>)> {
    let connection = recovery.connection()?;
    let stream = recovery.config.stream.as_str();
    match tokio::time::timeout(SCAN_TIMEOUT, read(&connection, stream, start, reading)).await {
        Ok(Ok(done)) => Some(done),
        Ok(Err(error)) => {
            report(format!(
                "reading the recovery log failed ({error}): {clients} client(s) not recovered"
            ));
            None
        }
        Err(_) => {
            report(format!(
                "reading the recovery log did not reach its fence within {} s: {clients} client(s) \
                 not recovered",
                SCAN_TIMEOUT.as_secs()
            ));
            None
        }
    }
}

/// Reads the stream from `start` (`x-stream-offset`: a timestamp, from the first chunk written at
/// or after it, or a position) until the reading has seen its fence, on a channel of its own.
/// Returns the reading and the fence's position in the log.
async fn read<R: Reading>(
    connection: &lapin::Connection,
    stream: &str,
    start: AMQPValue,
    mut reading: R,
) -> Result<(R, Option<u64>), String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let mut fence_position = None;
    let result = async {
        channel
            .basic_qos(SCAN_PREFETCH, BasicQosOptions::default())
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-stream-offset".into(), start);
        let mut consumer = channel
            .basic_consume(
                stream.into(),
                "".into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await?;
        let mut unacked = 0u16;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            // Records another version wrote, or garbage, are skipped: they restore nothing.
            if let Ok(envelope) = wire::decode(&delivery.data) {
                reading.feed(envelope);
            }
            unacked += 1;
            if reading.done() {
                fence_position = stream_position(&delivery);
                break;
            }
            if unacked >= SCAN_PREFETCH / 4 {
                unacked = 0;
                delivery.ack(BasicAckOptions { multiple: true }).await?;
            }
        }
        Ok(())
    }
    .await;
    let _ = channel.close(200, "recovery log read".into()).await;
    result.map_err(|e: lapin::Error| e.to_string())?;
    if reading.done() {
        Ok((reading, fence_position))
    } else {
        Err("the recovery log's consumer ended before the read's fence".into())
    }
}

/// A stream delivery's position in the log (header `x-stream-offset`).
fn stream_position(delivery: &lapin::message::Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}
