//! A TCP proxy between the clients and a broker of the suite's own that can replay a Produce
//! request: the broker receives the same bytes twice (same producer id, epoch and sequence
//! numbers), exactly what it receives when a client retries a batch whose answer was lost,
//! and the client sees the first answer only. Everything else passes through unchanged.
//!
//! Kafka frames are a 4-byte big-endian size and the message. A request starts with its API
//! key (i16), API version (i16) and correlation id (i32); a response starts with the
//! correlation id.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

const PRODUCE: i16 = 0;
/// A frame larger than this is not Kafka (the broker's default is 100 MiB).
const MAX_FRAME: usize = 128 << 20;

pub struct Proxy {
    pub port: u16,
    replay: Arc<Replay>,
}

#[derive(Default)]
struct Replay {
    next_produce: AtomicBool,
    replayed: AtomicU64,
}

impl Proxy {
    /// Listens on `port` and forwards each connection to the broker on `upstream`.
    pub async fn start(port: u16, upstream: u16) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let replay = Arc::new(Replay::default());
        let shared = replay.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let replay = shared.clone();
                tokio::spawn(async move {
                    // A broker that is down (killed by a check) closes the client's
                    // connection, as a dead broker would.
                    if let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        connection(client, broker, replay).await;
                    }
                });
            }
        });
        Ok(Proxy { port, replay })
    }

    /// The next Produce request that passes is sent to the broker twice.
    pub fn replay_next_produce(&self) {
        self.replay.next_produce.store(true, Ordering::SeqCst);
    }

    /// How many Produce requests were replayed so far.
    pub fn replayed(&self) -> u64 {
        self.replay.replayed.load(Ordering::SeqCst)
    }
}

async fn connection(client: TcpStream, broker: TcpStream, replay: Arc<Replay>) {
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (broker_read, broker_write) = broker.into_split();
    // Correlation ids whose request went twice: the second answer is dropped.
    let doubled = Arc::new(Mutex::new(HashSet::new()));
    let requests = requests(client_read, broker_write, replay, doubled.clone());
    let responses = responses(broker_read, client_write, doubled);
    // Either side closing ends the connection, as a broken TCP connection would.
    tokio::select! {
        _ = requests => {}
        _ = responses => {}
    }
}

async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    replay: Arc<Replay>,
    doubled: Arc<Mutex<HashSet<i32>>>,
) -> std::io::Result<()> {
    loop {
        let frame = read_frame(&mut from).await?;
        to.write_all(&frame).await?;
        // size (4), API key (2), API version (2), correlation id (4)
        if frame.len() < 12 {
            continue;
        }
        let api_key = i16::from_be_bytes([frame[4], frame[5]]);
        if api_key == PRODUCE && replay.next_produce.swap(false, Ordering::SeqCst) {
            let correlation = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
            doubled.lock().unwrap().insert(correlation);
            to.write_all(&frame).await?;
            replay.replayed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn responses(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    doubled: Arc<Mutex<HashSet<i32>>>,
) -> std::io::Result<()> {
    // Correlation ids whose first answer went to the client already.
    let mut answered = HashSet::new();
    loop {
        let frame = read_frame(&mut from).await?;
        let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if doubled.lock().unwrap().contains(&correlation) && !answered.insert(correlation) {
            doubled.lock().unwrap().remove(&correlation);
            answered.remove(&correlation);
            continue;
        }
        to.write_all(&frame).await?;
    }
}

/// One whole frame, its size prefix included.
async fn read_frame(from: &mut OwnedReadHalf) -> std::io::Result<Vec<u8>> {
    let mut size = [0u8; 4];
    from.read_exact(&mut size).await?;
    let len = i32::from_be_bytes(size);
    let len = usize::try_from(len)
        .ok()
        .filter(|len| (4..=MAX_FRAME).contains(len))
        .ok_or_else(|| std::io::Error::other(format!("not a Kafka frame size: {len}")))?;
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&size);
    from.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}
