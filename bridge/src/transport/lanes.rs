//! The receiving half of a channel, shared by QUIC and TCP: one bounded queue per lane,
//! filled by the transport's reader tasks, drained lowest lane first by
//! [`ChannelReceiver::recv`]. A lane holds at most [`LANE_INBOX_BYTES`] (or one larger
//! frame) and [`LANE_QUEUE_FRAMES`] frames, counting the frame being read; a full lane
//! pushes back on its reader (on QUIC, only that lane's stream; on TCP, the whole
//! connection), so a slow consumer or a hostile peer bounds memory at about
//! [`super::MAX_LANES`] x [`super::MAX_FRAME`] per connection.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::{TransportError, MAX_LANES};

/// Frames buffered per inbound lane before its reader waits.
const LANE_QUEUE_FRAMES: usize = 64;
/// Bytes buffered per inbound lane before its reader waits.
const LANE_INBOX_BYTES: usize = 4 << 20;

/// A frame in a lane queue, holding its share of the lane's byte budget.
type Queued = (Bytes, OwnedSemaphorePermit);

/// The reader's end of one lane queue.
#[derive(Clone)]
pub(super) struct LaneTx {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
}

impl LaneTx {
    /// Waits until the lane has room for a frame of `len` bytes (at most the whole
    /// budget); `None` if the receiver is gone.
    pub(super) async fn reserve(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        // LANE_INBOX_BYTES fits in u32.
        let permits = len.min(LANE_INBOX_BYTES) as u32;
        tokio::select! {
            permit = self.budget.clone().acquire_many_owned(permits) => permit.ok(),
            () = self.tx.closed() => None,
        }
    }

    /// Queues `frame` with its reservation; false if the receiver is gone.
    pub(super) async fn send(&self, frame: Bytes, permit: OwnedSemaphorePermit) -> bool {
        self.tx.send((frame, permit)).await.is_ok()
    }
}

/// What the reader side tells the receiver besides frames.
enum InboxEvent {
    /// A lane appeared: its frames come on this queue.
    Lane(u8, mpsc::Receiver<Queued>),
    /// The connection ended.
    Closed(TransportError),
}

/// The reader side of an inbox: creates lane queues and reports the end.
pub(super) struct InboxTx {
    events: mpsc::UnboundedSender<InboxEvent>,
    lanes: Mutex<Vec<Option<LaneTx>>>,
}

impl InboxTx {
    /// The queue of `lane`, created on first use; `None` for a lane at or above
    /// [`MAX_LANES`].
    pub(super) fn lane(&self, lane: u8) -> Option<LaneTx> {
        // A poisoned lock only means another reader panicked; the table is still valid.
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let slot = lanes.get_mut(usize::from(lane))?;
        if let Some(tx) = slot {
            return Some(tx.clone());
        }
        let (tx, rx) = mpsc::channel(LANE_QUEUE_FRAMES);
        // The receiver may be gone; then frames are dropped, which is what it asked for.
        let _ = self.events.send(InboxEvent::Lane(lane, rx));
        let tx = LaneTx {
            tx,
            budget: Arc::new(Semaphore::new(LANE_INBOX_BYTES)),
        };
        *slot = Some(tx.clone());
        Some(tx)
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
        lanes: Mutex::new(vec![None; usize::from(MAX_LANES)]),
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
    lanes: Vec<(u8, mpsc::Receiver<Queued>)>,
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
                // The permit drops here: the lane's budget grows by the frame.
                Poll::Ready(Some((frame, _permit))) => return Poll::Ready(Ok((*lane, frame))),
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

    async fn push(lane: &LaneTx, frame: &'static [u8]) {
        let permit = lane.reserve(frame.len()).await.unwrap();
        assert!(lane.send(Bytes::from_static(frame), permit).await);
    }

    #[tokio::test]
    async fn lowest_lane_first_then_the_error() {
        let (tx, mut rx) = inbox();
        let bulk = tx.lane(3).unwrap();
        let alarm = tx.lane(1).unwrap();
        assert!(tx.lane(MAX_LANES).is_none());
        push(&bulk, b"b1").await;
        push(&bulk, b"b2").await;
        push(&alarm, b"a1").await;
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
        push(&tx.lane(0).unwrap(), b"x").await;
        drop(tx);
        assert_eq!(rx.recv().await.unwrap().0, 0);
        assert!(matches!(rx.recv().await, Err(TransportError::Lost { .. })));
    }

    #[tokio::test]
    async fn a_full_lane_waits_for_the_consumer() {
        let (tx, mut rx) = inbox();
        let lane = tx.lane(2).unwrap();
        let big = lane.reserve(LANE_INBOX_BYTES * 2).await.unwrap();
        assert!(lane.send(Bytes::from(vec![0u8; 10]), big).await);
        let waiting = tokio::spawn(async move { lane.reserve(1).await.is_some() });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the budget is spent");
        rx.recv().await.unwrap();
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn a_dropped_receiver_frees_a_waiting_reader() {
        let (tx, rx) = inbox();
        let lane = tx.lane(2).unwrap();
        let big = lane.reserve(LANE_INBOX_BYTES).await.unwrap();
        assert!(lane.send(Bytes::new(), big).await);
        // Either the wait ends with None, or (the drop released the budget too) the
        // frame cannot be queued: the reader stops either way.
        let waiting = tokio::spawn(async move {
            match lane.reserve(1).await {
                None => true,
                Some(permit) => !lane.send(Bytes::new(), permit).await,
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        drop(rx);
        assert!(waiting.await.unwrap());
    }
}
