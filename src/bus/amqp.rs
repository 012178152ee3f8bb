//! The bus over RabbitMQ: [`Transport`] (lapin) behind the seam's traits.

use super::{
    Bus, BusFuture, Connected, Deliveries, Delivery, Endpoint, Link, LogError, Outgoing, Refused,
    WriteState,
};
use crate::transport::{connect_any, BrokerConfig, Consuming, Transport, TransportConfig};
use futures_lite::Stream;
use lapin::options::BasicAckOptions;
use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// RabbitMQ at the URLs of a [`BrokerConfig`].
pub struct AmqpBus {
    config: BrokerConfig,
    /// The URL that worked last: tried first next time.
    preferred: Mutex<usize>,
}

impl AmqpBus {
    pub fn new(config: BrokerConfig) -> AmqpBus {
        AmqpBus {
            config,
            preferred: Mutex::new(0),
        }
    }
}

impl Bus for AmqpBus {
    fn connect<'a>(&'a self, endpoint: &'a Endpoint) -> BusFuture<'a, Result<Connected, String>> {
        Box::pin(async move {
            let config_for = |url: &str| TransportConfig {
                queue: endpoint.queue.clone(),
                prefetch: endpoint.prefetch,
                initial_bindings: endpoint.initial_bindings.clone(),
                queue_expiry: endpoint.queue_expiry,
                queue_existed: endpoint.queue_existed,
                ..self.config.transport(url, endpoint.connection_name.clone())
            };
            let mut preferred = *self.preferred.lock();
            let connected = connect_any(&self.config.urls, &mut preferred, config_for).await;
            *self.preferred.lock() = preferred;
            let (transport, consuming) = connected?;
            Ok(Connected {
                link: Arc::new(transport),
                deliveries: consuming.map(|Consuming { channel, consumer }| {
                    Box::new(AmqpDeliveries {
                        consumer,
                        channel,
                        last: None,
                    }) as Box<dyn Deliveries>
                }),
            })
        })
    }
}

impl Link for Transport {
    fn bind<'a>(&'a self, key: &'a str) -> BusFuture<'a, Result<(), String>> {
        Box::pin(Transport::bind(self, key))
    }

    fn unbind<'a>(&'a self, key: &'a str) -> BusFuture<'a, Result<(), String>> {
        Box::pin(Transport::unbind(self, key))
    }

    fn rebind<'a>(&'a self, changes: &'a [(String, bool)]) -> BusFuture<'a, Result<(), String>> {
        Box::pin(Transport::rebind(self, changes))
    }

    fn hand_off(&self, messages: Vec<Outgoing<'_>>) -> Result<(), Refused> {
        Transport::hand_off(self, messages)
    }

    fn publish(&self, key: &str, body: Vec<u8>) -> Result<(), String> {
        Transport::hand_off(self, vec![(key.to_string(), body, None)]).map_err(|r| r.reason)
    }

    fn write_state(&self) -> WriteState {
        Transport::write_state(self)
    }

    fn written(&self) -> BusFuture<'_, Result<(), String>> {
        Box::pin(Transport::written(self))
    }

    fn queue_kept(&self) -> bool {
        Transport::queue_kept(self)
    }

    fn queue_lost(&self) -> bool {
        Transport::queue_lost(self)
    }

    fn declare_log<'a>(
        &'a self,
        stream: &'a str,
        key: &'a str,
        arguments: lapin::types::FieldTable,
    ) -> BusFuture<'a, Result<(), LogError>> {
        Box::pin(Transport::declare_log(self, stream, key, arguments))
    }

    fn log_connection(&self) -> Option<Arc<lapin::Connection>> {
        Some(self.connection())
    }

    fn delete_queue(&self) -> BusFuture<'_, Result<(), String>> {
        Box::pin(Transport::delete_queue(self))
    }

    fn close(&self) -> BusFuture<'_, ()> {
        Box::pin(Transport::close(self))
    }

    fn spawn_receiver(&self, task: BusFuture<'static, ()>) {
        Transport::spawn_receiver(self, task)
    }
}

/// A lapin consumer as [`Deliveries`]: keeps the tag of the last delivery, since one `multiple`
/// ack of it acknowledges every one before.
struct AmqpDeliveries {
    consumer: lapin::Consumer,
    /// The consumer's channel: acknowledgements go on it directly (lapin's `Acker` sends them
    /// through its internal task on the runtime thread, a hand-off per ack).
    channel: lapin::Channel,
    last: Option<u64>,
}

impl Stream for AmqpDeliveries {
    type Item = Result<Delivery, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        Pin::new(&mut this.consumer).poll_next(cx).map(|next| {
            next.map(|delivery| match delivery {
                Ok(delivery) => {
                    this.last = Some(delivery.delivery_tag);
                    Ok(Delivery {
                        body: delivery.data,
                        // Moved out, not copied: this runs per delivery.
                        key: delivery.routing_key.into(),
                    })
                }
                Err(error) => Err(format!("the broker connection failed: {error}")),
            })
        })
    }
}

impl Deliveries for AmqpDeliveries {
    /// Queues the ack frame and wakes lapin's writer, without waiting for the write: an ack that
    /// never reaches the broker (the connection went) only means a redelivery, which receivers drop.
    fn ack_delivered(&mut self) -> BusFuture<'_, ()> {
        if let Some(tag) = self.last.take() {
            let mut ack = std::pin::pin!(self
                .channel
                .basic_ack(tag, BasicAckOptions { multiple: true }));
            let _ = ack.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        }
        Box::pin(std::future::ready(()))
    }
}
