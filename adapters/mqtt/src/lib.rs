#![doc = include_str!("../README.md")]

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::egress::EgressPolicy;
use chamberlain_domain::ports::{DeliveryClient, DeliveryError};
use chamberlain_domain::transmit::{Delivery, Destination, MqttBroker, Transmitter};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::oneshot;

/// How long connecting to a broker may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a publish may wait for its PUBACK.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

type Waiter = oneshot::Sender<Result<(), DeliveryError>>;

/// Publishes awaiting their PUBACK: first in the order they were handed to the event loop
/// (which sends them in that order), then by packet id once sent.
#[derive(Default)]
struct Pending {
    queued: VecDeque<Waiter>,
    sent: HashMap<u16, Waiter>,
    dead: Option<String>,
}

impl Pending {
    fn fail_all(&mut self, reason: &str) {
        self.dead = Some(reason.to_owned());
        let failure = || DeliveryError::Transient {
            reason: format!("the MQTT connection failed: {reason}"),
        };
        for waiter in self.queued.drain(..) {
            let _ = waiter.send(Err(failure()));
        }
        for (_, waiter) in self.sent.drain() {
            let _ = waiter.send(Err(failure()));
        }
    }
}

/// One connection to one broker, driven by its own task.
struct Connection {
    client: AsyncClient,
    pending: Arc<Mutex<Pending>>,
    /// Publishes are handed to the event loop in the order their waiters are queued.
    send_order: tokio::sync::Mutex<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(p: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn drive(mut eventloop: EventLoop, pending: Arc<Mutex<Pending>>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut p = lock(&pending);
                if let Some(waiter) = p.queued.pop_front() {
                    p.sent.insert(pkid, waiter);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(waiter) = lock(&pending).sent.remove(&ack.pkid) {
                    let _ = waiter.send(Ok(()));
                }
            }
            Ok(_) => {}
            Err(e) => {
                // The connection is not reused: the next delivery opens a new one, so a
                // publish replayed by the library on reconnect can never be mistaken for
                // another.
                tracing::debug!(error = %e, "MQTT connection failed");
                lock(&pending).fail_all(&e.to_string());
                return;
            }
        }
    }
}

/// Publishes deliveries of MQTT transmitters. Cheap to share: hold it in an `Arc`.
pub struct MqttClient {
    egress: EgressPolicy,
    connections: Mutex<HashMap<MqttBroker, Arc<Connection>>>,
    client_id: String,
}

impl std::fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttClient")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl MqttClient {
    /// Connections only to addresses `egress` allows.
    pub fn new(egress: EgressPolicy) -> Self {
        Self {
            egress,
            connections: Mutex::new(HashMap::new()),
            client_id: format!("chamberlain-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    async fn resolve(&self, broker: &MqttBroker) -> Result<SocketAddr, DeliveryError> {
        let addrs: Vec<SocketAddr> = match broker.host().parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, broker.port())],
            Err(_) => tokio::net::lookup_host((broker.host(), broker.port()))
                .await
                .map_err(|e| DeliveryError::Transient {
                    reason: format!("{broker} cannot be resolved: {e}"),
                })?
                .collect(),
        };
        let mut refusal = None;
        for addr in addrs {
            match self.egress.check(addr.ip()) {
                Ok(()) => return Ok(addr),
                Err(e) => refusal = Some(e.to_string()),
            }
        }
        Err(match refusal {
            Some(reason) => DeliveryError::Blocked { reason },
            None => DeliveryError::Permanent {
                reason: format!("{broker} has no address"),
            },
        })
    }

    async fn connection(&self, broker: &MqttBroker) -> Result<Arc<Connection>, DeliveryError> {
        {
            let mut connections = self
                .connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(c) = connections.get(broker) {
                if lock(&c.pending).dead.is_none() {
                    return Ok(c.clone());
                }
                connections.remove(broker);
            }
        }
        let addr = self.resolve(broker).await?;
        let mut options = MqttOptions::new(
            format!("{}-{}", self.client_id, uuid::Uuid::new_v4().simple()),
            addr.ip().to_string(),
            addr.port(),
        );
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(1 << 20, 8 << 20);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(CONNECT_TIMEOUT.as_secs());
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        eventloop.set_network_options(network);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let task = tokio::spawn(drive(eventloop, pending.clone()));
        let connection = Arc::new(Connection {
            client,
            pending,
            send_order: tokio::sync::Mutex::new(()),
            task,
        });
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(broker.clone(), connection.clone());
        Ok(connection)
    }
}

#[async_trait]
impl DeliveryClient for MqttClient {
    /// # Errors
    /// `Transient`: the broker cannot be reached or resolved, the connection failed, or no
    /// PUBACK came within [`PUBLISH_TIMEOUT`]. `Blocked`: the egress policy refuses the broker's
    /// address. `Permanent`: the topic is not valid, or the transmitter is not an MQTT one.
    async fn deliver(
        &self,
        transmitter: &Transmitter,
        delivery: &Delivery,
    ) -> Result<(), DeliveryError> {
        let Destination::Mqtt {
            broker,
            topic_prefix,
        } = &transmitter.destination
        else {
            return Err(DeliveryError::Permanent {
                reason: "not an MQTT transmitter".into(),
            });
        };
        let topic = format!("{}/{}", topic_prefix.as_str(), delivery.topic);
        let connection = self.connection(broker).await?;
        let (tx, rx) = oneshot::channel();
        {
            let _order = connection.send_order.lock().await;
            lock(&connection.pending).queued.push_back(tx);
            if let Err(e) = connection
                .client
                .publish(
                    topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    delivery.body.as_bytes(),
                )
                .await
            {
                // Not handed to the event loop (it has stopped): take the waiter back out.
                let mut p = lock(&connection.pending);
                p.queued.pop_back();
                p.dead
                    .get_or_insert_with(|| "the event loop stopped".into());
                return Err(DeliveryError::Transient {
                    reason: format!("the MQTT connection to {broker} is closed: {e}"),
                });
            }
        }
        match tokio::time::timeout(PUBLISH_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(DeliveryError::Transient {
                reason: "the MQTT connection closed before the broker acknowledged".into(),
            }),
            Err(_) => {
                // A broker that stops acknowledging is not trusted with the next publish.
                self.connections
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(broker);
                Err(DeliveryError::Transient {
                    reason: format!("{broker} did not acknowledge within {PUBLISH_TIMEOUT:?}"),
                })
            }
        }
    }
}
