//! A socket's outbound queue: bounded, any number of senders, one receiver (the
//! socket's writer), and memory that follows what is waiting.
//!
//! tokio's `mpsc` keeps every block of 32 slots it ever grew to for the channel's life:
//! a socket that subscribes to 100 rooms in a burst has a few hundred `subscribed` and
//! `presence` items queued for a moment and then keeps about 5 KiB of empty blocks
//! (heaptrack, `tests/bench/heap-profile`), and every socket starts with one block. Here
//! the items wait in a `VecDeque` that starts empty and gives back what a burst grew
//! once it is drained.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

/// Slots a drained queue keeps (a socket busy with one item at a time never reallocates).
const KEPT_WHEN_EMPTY: usize = 8;

/// A queue of at most `capacity` items.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver_gone: false,
        }),
        arrived: Notify::new(),
        space: Notify::new(),
        capacity,
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the receiver: an item arrived in an empty queue, or the last sender left.
    arrived: Notify,
    /// Wakes senders waiting for a free slot (they wait only while the queue is full).
    space: Notify,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().expect("not poisoned")
    }
}

/// Why [`Sender::try_send`] gave the item back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds `capacity` items.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.shared.arrived.notify_one();
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or its receiver is gone; never waits.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let was_empty = {
            let mut state = self.shared.lock();
            if state.receiver_gone {
                return Err(TrySendError::Closed(item));
            }
            if state.items.len() >= self.shared.capacity {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
            state.items.len() == 1
        };
        // The receiver waits only after it found the queue empty.
        if was_empty {
            self.shared.arrived.notify_one();
        }
        Ok(())
    }

    /// Queues `item`, waiting for a free slot; gives it back if the receiver is gone.
    pub async fn send(&self, item: T) -> Result<(), T> {
        let mut item = item;
        loop {
            // Registered before the check, so a slot freed between the two is not missed.
            let freed = self.shared.space.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => item = back,
            }
            freed.await;
        }
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

enum Ended {
    Empty,
    Closed,
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.lock();
            state.receiver_gone = true;
            std::mem::take(&mut state.items)
        };
        // Dropped outside the lock: an item may own anything.
        drop(items);
        self.shared.space.notify_waiters();
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once the queue is empty and every sender is gone.
    /// Cancel-safe: an item is taken only in the poll that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            // A busy socket finds an item at once and registers no waiter.
            match self.take() {
                Ok(item) => return Some(item),
                Err(Ended::Closed) => return None,
                Err(Ended::Empty) => {}
            }
            // Registered, then checked again: an arrival between the two is not missed.
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            match self.take() {
                Ok(item) => return Some(item),
                Err(Ended::Closed) => return None,
                Err(Ended::Empty) => arrived.await,
            }
        }
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        self.take().ok()
    }

    /// The next item, or why there is none (one lock: an item queued by a sender that
    /// then left is still taken).
    fn take(&self) -> Result<T, Ended> {
        let (item, wake_senders) = {
            let mut state = self.shared.lock();
            let was_full = state.items.len() >= self.shared.capacity;
            let Some(item) = state.items.pop_front() else {
                return Err(if state.senders == 0 {
                    Ended::Closed
                } else {
                    Ended::Empty
                });
            };
            if state.items.is_empty() && state.items.capacity() > KEPT_WHEN_EMPTY {
                state.items.shrink_to(KEPT_WHEN_EMPTY);
            }
            // Senders wait only on a full queue, so only its first free slot wakes them.
            (item, was_full)
        };
        if wake_senders {
            self.shared.space.notify_waiters();
        }
        Ok(item)
    }

    pub fn is_empty(&self) -> bool {
        self.shared.lock().items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_queue_refuses_and_a_queue_without_its_receiver_is_closed() {
        let (sender, mut receiver) = channel(2);
        assert_eq!(sender.try_send(1), Ok(()));
        assert_eq!(sender.try_send(2), Ok(()));
        assert_eq!(sender.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(receiver.try_recv(), Some(1));
        assert_eq!(sender.try_send(3), Ok(()));
        assert_eq!(receiver.try_recv(), Some(2));
        assert_eq!(receiver.try_recv(), Some(3));
        assert_eq!(receiver.try_recv(), None);
        drop(receiver);
        assert_eq!(sender.try_send(4), Err(TrySendError::Closed(4)));
    }

    #[tokio::test]
    async fn the_receiver_gets_items_in_order_then_none_once_every_sender_is_gone() {
        let (sender, mut receiver) = channel(16);
        let other = sender.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = receiver.recv().await {
                got.push(item);
            }
            got
        });
        for i in 0..10 {
            tokio::task::yield_now().await;
            sender.try_send(i).unwrap();
        }
        other.try_send(10).unwrap();
        drop(sender);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!reader.is_finished(), "a sender is left");
        drop(other);
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("recv ends once the senders are gone")
            .unwrap();
        assert_eq!(got, (0..=10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn send_waits_for_a_free_slot_and_gives_up_when_the_receiver_goes() {
        let (sender, mut receiver) = channel(1);
        sender.send(1).await.unwrap();
        let waiting = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(2).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the queue is full");
        assert_eq!(receiver.recv().await, Some(1));
        waiting.await.unwrap().unwrap();
        assert_eq!(receiver.recv().await, Some(2));

        sender.send(3).await.unwrap();
        let waiting = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(4).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(receiver);
        let back = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a waiting send ends when the receiver goes")
            .unwrap();
        assert_eq!(back, Err(4));
    }

    #[test]
    fn a_drained_queue_gives_back_what_a_burst_grew() {
        let (sender, mut receiver) = channel(1024);
        for i in 0..500 {
            sender.try_send(i).unwrap();
        }
        assert!(receiver.shared.lock().items.capacity() >= 500);
        while receiver.try_recv().is_some() {}
        assert!(receiver.shared.lock().items.capacity() <= KEPT_WHEN_EMPTY);
    }
}
