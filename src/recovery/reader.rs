//! The task that reads the recovery log for restores. Restores that arrive together share one
//! scan: the first waits a few milliseconds for company, then one fence is written, one consumer
//! reads from the earliest start to that fence, and every restore of the round gets its answer.
//! (200 clients of a closed server reconnecting within a second cost a few scans, not 200.)

use super::scan::{Restored, Scan};
use super::{now_ms, LogPublisher, Recovery, Reporter, MAX_REPLAYED};
use crate::connection::closed;
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
/// A scan that has not read its fence by then gives up (its restores are not recovered).
const SCAN_TIMEOUT: Duration = Duration::from_secs(10);
/// Stream deliveries in flight (streams need a prefetch and acknowledgements as credit).
const SCAN_PREFETCH: u16 = 1000;

pub(crate) struct Request {
    pub nsp: String,
    pub pid: String,
    pub offset: String,
    /// Where to start reading: the offset's time less the clock margin (ms since the epoch).
    pub start_ms: u64,
    pub reply: oneshot::Sender<Option<Restored>>,
}

pub(crate) async fn run(
    recovery: Arc<Recovery>,
    publish: LogPublisher,
    report: Reporter,
    mut requests: mpsc::UnboundedReceiver<Request>,
    mut closing: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            request = requests.recv() => match request {
                Some(request) => request,
                None => return,
            },
            _ = closed(&mut closing) => return,
        };
        tokio::time::sleep(GATHER).await;
        let mut round = vec![first];
        while let Ok(request) = requests.try_recv() {
            round.push(request);
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
    let fence = format!("{:x}-{}", now_ms(), crate::cluster::random_uid());
    let start_ms = round.iter().map(|r| r.start_ms).min().unwrap_or_default();
    let wanted = round
        .iter()
        .map(|r| (r.nsp.clone(), r.pid.clone(), r.offset.clone()));
    let scan = Scan::new(fence.clone(), wanted, MAX_REPLAYED);
    let claims = round.iter().map(|r| r.pid.clone()).collect();
    publish(Message::Fence { id: fence, claims });
    let outcomes = match recovery.connection() {
        Some(connection) => {
            let stream = recovery.config.stream.as_str();
            match tokio::time::timeout(SCAN_TIMEOUT, read(&connection, stream, start_ms, scan))
                .await
            {
                Ok(Ok(scan)) => Some(scan.finish(now_ms())),
                Ok(Err(error)) => {
                    report(format!(
                        "reading the recovery log failed ({error}): {} client(s) not recovered",
                        round.len()
                    ));
                    None
                }
                Err(_) => {
                    report(format!("reading the recovery log did not reach its fence within {} s: {} client(s) not recovered", SCAN_TIMEOUT.as_secs(), round.len()));
                    None
                }
            }
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

/// Reads the stream from `start_ms` (a timestamp offset: the broker starts at the first chunk
/// written at or after it) until the scan's fence, on a channel of its own.
async fn read(
    connection: &lapin::Connection,
    stream: &str,
    start_ms: u64,
    mut scan: Scan,
) -> Result<Scan, String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        channel
            .basic_qos(SCAN_PREFETCH, BasicQosOptions::default())
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-stream-offset".into(),
            AMQPValue::Timestamp(start_ms / 1000),
        );
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
                scan.feed(envelope);
            }
            unacked += 1;
            if scan.done() {
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
    let _ = channel.close(200, "restore scan done".into()).await;
    result.map_err(|e: lapin::Error| e.to_string())?;
    if scan.done() {
        Ok(scan)
    } else {
        Err("the recovery log's consumer ended before the scan's fence".into())
    }
}
