//! The in-memory source as a product feature: several sources of one queue.

use std::time::Duration;

use asyncworker_core::memory::MemoryQueue;
use futures::StreamExt;

#[tokio::test(start_paused = true)]
async fn closing_a_queue_ends_every_source_waiting_on_it() {
    let queue = MemoryQueue::new();
    let (mut a, mut b) = (queue.source(), queue.source());
    let a = tokio::spawn(async move { a.next().await.is_none() });
    let b = tokio::spawn(async move { b.next().await.is_none() });
    // Let both sources find the queue empty and wait.
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    queue.close();
    // Paused time: a source nobody woke makes this time out at once.
    for (name, source) in [("first", a), ("second", b)] {
        let ended = tokio::time::timeout(Duration::from_secs(1), source)
            .await
            .unwrap_or_else(|_| panic!("the {name} source was never woken by close()"))
            .unwrap();
        assert!(ended, "the {name} source should end");
    }
}

#[tokio::test(start_paused = true)]
async fn a_push_wakes_every_waiting_source() {
    let queue = MemoryQueue::new();
    let (mut a, mut b) = (queue.source(), queue.source());
    let a = tokio::spawn(async move { a.next().await.map(|m| m.is_ok()) });
    let b = tokio::spawn(async move { b.next().await.map(|m| m.is_ok()) });
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    queue.push_bytes("one");
    queue.push_bytes("two");
    for source in [a, b] {
        let got = tokio::time::timeout(Duration::from_secs(1), source)
            .await
            .expect("every waiting source gets a message")
            .unwrap();
        assert_eq!(got, Some(true));
    }
}
