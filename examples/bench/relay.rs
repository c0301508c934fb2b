//! A TCP relay on 127.0.0.1 that delays every byte by half a round-trip
//! time in each direction, so that a loopback connection behaves like one
//! with that round-trip time (and no bandwidth limit: bytes are delayed,
//! not throttled, and keep their order). The round-trip time can change
//! while connections are open ([`Latency::set`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The round-trip time every relay sharing it adds.
#[derive(Clone, Default)]
pub struct Latency(Arc<AtomicU64>);

impl Latency {
    /// Sets the round-trip time.
    pub fn set(&self, rtt: Duration) {
        self.0.store(
            u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn one_way(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed) / 2)
    }
}

/// Relays connections made to [`Relay::addr`] to a target, half the
/// [`Latency`] late in each direction.
pub struct Relay {
    /// Where to connect instead of the target.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to `target` adding `latency` to every round trip.
    pub async fn start(target: SocketAddr, latency: Latency) -> std::io::Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let latency = latency.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::spawn(delayed_pipe(in_read, out_write, latency.clone()));
                    tokio::spawn(delayed_pipe(out_read, in_write, latency));
                });
            }
        });
        Ok(Relay { addr, task })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk written half the latency after it
/// was read.
async fn delayed_pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, latency: Latency) {
    let (sender, mut receiver) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = receiver.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sender
                    .send((Instant::now() + latency.one_way(), buffer[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(sender);
    let _ = writer.await;
}
