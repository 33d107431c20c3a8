//! The receiving half of a channel, shared by QUIC and TCP: one bounded queue per lane,
//! filled by the transport's reader tasks, drained lowest lane first by
//! [`ChannelReceiver::recv`]. A full lane queue pushes back on its reader (on QUIC, only
//! that lane's stream; on TCP, the whole connection), so a slow consumer bounds memory.

use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::TransportError;

/// Frames buffered per inbound lane before its reader waits.
const LANE_QUEUE_FRAMES: usize = 64;

/// What the reader side tells the receiver besides frames.
enum InboxEvent {
    /// A lane appeared: its frames come on this queue.
    Lane(u8, mpsc::Receiver<Bytes>),
    /// The connection ended.
    Closed(TransportError),
}

/// The reader side of an inbox: creates lane queues and reports the end.
pub(super) struct InboxTx {
    events: mpsc::UnboundedSender<InboxEvent>,
    lanes: Mutex<Vec<Option<mpsc::Sender<Bytes>>>>,
}

impl InboxTx {
    /// The queue of `lane`, created on first use.
    pub(super) fn lane(&self, lane: u8) -> mpsc::Sender<Bytes> {
        // A poisoned lock only means another reader panicked; the table is still valid.
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut lanes[usize::from(lane)];
        if let Some(tx) = slot {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(LANE_QUEUE_FRAMES);
        // The receiver may be gone; then frames are dropped, which is what it asked for.
        let _ = self.events.send(InboxEvent::Lane(lane, rx));
        *slot = Some(tx.clone());
        tx
    }

    /// Reports the end of the connection (the first report wins).
    pub(super) fn close(&self, error: TransportError) {
        let _ = self.events.send(InboxEvent::Closed(error));
    }
}

/// A new inbox: the reader side and the [`ChannelReceiver`].
pub(super) fn inbox() -> (InboxTx, ChannelReceiver) {
    let (events, rx) = mpsc::unbounded_channel();
    let tx = InboxTx {
        events,
        lanes: Mutex::new(vec![None; 256]),
    };
    let receiver = ChannelReceiver {
        lanes: Vec::new(),
        events: rx,
        events_open: true,
        closed: None,
    };
    (tx, receiver)
}

/// The receiving half of a channel.
#[derive(Debug)]
pub struct ChannelReceiver {
    /// Lane queues, sorted by lane id.
    lanes: Vec<(u8, mpsc::Receiver<Bytes>)>,
    events: mpsc::UnboundedReceiver<InboxEvent>,
    events_open: bool,
    closed: Option<TransportError>,
}

impl std::fmt::Debug for InboxEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InboxEvent::Lane(lane, _) => write!(f, "Lane({lane})"),
            InboxEvent::Closed(e) => write!(f, "Closed({e})"),
        }
    }
}

impl ChannelReceiver {
    /// The next frame, from the lowest lane that has one. Frames already received are
    /// delivered before the error that ended the connection; after it, every call
    /// returns that error.
    pub async fn recv(&mut self) -> Result<(u8, Bytes), TransportError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<(u8, Bytes), TransportError>> {
        while self.events_open {
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(InboxEvent::Lane(lane, rx))) => {
                    let at = self.lanes.partition_point(|(l, _)| *l < lane);
                    self.lanes.insert(at, (lane, rx));
                }
                Poll::Ready(Some(InboxEvent::Closed(e))) => {
                    self.closed.get_or_insert(e);
                }
                Poll::Ready(None) => {
                    self.events_open = false;
                    self.closed.get_or_insert(TransportError::Lost {
                        reason: "transport tasks ended".to_owned(),
                    });
                }
                Poll::Pending => break,
            }
        }
        let mut i = 0;
        while i < self.lanes.len() {
            let (lane, rx) = &mut self.lanes[i];
            match rx.poll_recv(cx) {
                Poll::Ready(Some(frame)) => return Poll::Ready(Ok((*lane, frame))),
                Poll::Ready(None) => {
                    self.lanes.remove(i);
                }
                Poll::Pending => i += 1,
            }
        }
        match &self.closed {
            Some(e) => {
                // Sticky: a frame that straggles in after the error is not delivered.
                self.lanes.clear();
                Poll::Ready(Err(e.clone()))
            }
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lowest_lane_first_then_the_error() {
        let (tx, mut rx) = inbox();
        let bulk = tx.lane(3);
        let alarm = tx.lane(1);
        bulk.send(Bytes::from_static(b"b1")).await.unwrap();
        bulk.send(Bytes::from_static(b"b2")).await.unwrap();
        alarm.send(Bytes::from_static(b"a1")).await.unwrap();
        tx.close(TransportError::Closed {
            reason: "bye".into(),
        });
        assert_eq!(rx.recv().await.unwrap(), (1, Bytes::from_static(b"a1")));
        assert_eq!(rx.recv().await.unwrap(), (3, Bytes::from_static(b"b1")));
        assert_eq!(rx.recv().await.unwrap(), (3, Bytes::from_static(b"b2")));
        for _ in 0..2 {
            assert_eq!(
                rx.recv().await.unwrap_err(),
                TransportError::Closed {
                    reason: "bye".into()
                }
            );
        }
    }

    #[tokio::test]
    async fn dropped_reader_side_ends_the_receiver() {
        let (tx, mut rx) = inbox();
        tx.lane(0).send(Bytes::from_static(b"x")).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.unwrap().0, 0);
        assert!(matches!(rx.recv().await, Err(TransportError::Lost { .. })));
    }
}
