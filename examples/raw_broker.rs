//! The broker's own limit on this machine, with no Socket.IO: publish `count` messages of `size`
//! bytes through a direct exchange to one queue while consuming them (auto-ack), and print the
//! messages per second; then bounce a message between two connections 1000 times and print the
//! median round trip. Used by `npm run bench` as the floor and ceiling the adapters are measured
//! against.
//!
//! cargo run --release --no-default-features --example raw_broker -- <amqp-url> [count] [size]

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .map(String::as_str)
        .unwrap_or("amqp://127.0.0.1:5672");
    let count: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let size: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(100);

    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let publisher = connection.create_channel().await?;
    let (_consumer_channel, mut consumer) = own_queue(&connection).await?;
    let queue = consumer.queue();
    let body = vec![b'x'; size];
    let start = Instant::now();
    let receiving = tokio::spawn(async move {
        let mut received = 0;
        while received < count {
            match consumer.next().await {
                Some(Ok(_)) => received += 1,
                _ => break,
            }
        }
        received
    });
    for _ in 0..count {
        publisher
            .basic_publish(
                "".into(),
                queue.clone(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await?;
    }
    let received = receiving.await?;
    let seconds = start.elapsed().as_secs_f64();
    let round_trip_ms = round_trip(url).await?;
    println!(
        "{{\"messages\":{received},\"seconds\":{seconds:.3},\"perSecond\":{:.0},\"roundTripMs\":{round_trip_ms:.3}}}",
        received as f64 / seconds
    );
    // Measured and printed: a failing close (a channel still closing) changes nothing.
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Median time for a message to go from one connection to another and back (each side consumes
/// its own queue and the other answers at once): what a request between two servers costs at
/// least, through RabbitMQ and lapin.
async fn round_trip(url: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let pinger = Connection::connect(url, ConnectionProperties::default()).await?;
    let ponger = Connection::connect(url, ConnectionProperties::default()).await?;
    let (ping_channel, mut pings_back) = own_queue(&pinger).await?;
    let (pong_channel, mut pongs) = own_queue(&ponger).await?;
    let ping_queue = pings_back.queue();
    let pong_queue = pongs.queue();
    let answering = tokio::spawn(async move {
        while let Some(Ok(delivery)) = pongs.next().await {
            let _ = pong_channel
                .basic_publish(
                    "".into(),
                    ping_queue.clone(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    BasicProperties::default(),
                )
                .await;
        }
    });
    let mut times = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = Instant::now();
        ping_channel
            .basic_publish(
                "".into(),
                pong_queue.clone(),
                BasicPublishOptions::default(),
                b"ping",
                BasicProperties::default(),
            )
            .await?;
        pings_back.next().await.ok_or("the ping queue closed")??;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    answering.abort();
    times.sort_by(f64::total_cmp);
    let _ = pinger.close(200, "done".into()).await;
    let _ = ponger.close(200, "done".into()).await;
    Ok(times[times.len() / 2])
}

/// A channel, and a consumer (auto-ack) of a new exclusive queue on it.
async fn own_queue(
    connection: &Connection,
) -> Result<(lapin::Channel, lapin::Consumer), Box<dyn std::error::Error>> {
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}
