//! The broker's own limit on this machine, with no Socket.IO: publish `count` messages of `size`
//! bytes through a direct exchange to one queue while consuming them (auto-ack), and print the
//! messages per second. Used by `npm run bench` as the ceiling the adapters are measured against.
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
    let consumer_channel = connection.create_channel().await?;
    let queue = consumer_channel
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
    let mut consumer = consumer_channel
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
                queue.name().clone(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await?;
    }
    let received = receiving.await?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"messages\":{received},\"seconds\":{seconds:.3},\"perSecond\":{:.0}}}",
        received as f64 / seconds
    );
    connection.close(200, "done".into()).await?;
    Ok(())
}
