//! The behaviours every [`BackupStore`] must have, one function per behaviour, in the
//! manner of object_store's `integration.rs`. A new backend proves itself by passing
//! [`run_all`]; each function can also be called alone to chase one failure.
//!
//! Functions panic (they are test code) and keep all their keys under the `base` prefix
//! they are given, so several runs can share one bucket.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{BackupStore, BackupStoreExt, GET_RANGE_SIZE};
use crate::error::Error;

const MIB: usize = 1024 * 1024;

/// Runs the whole battery on `store`, using `other` as the second store for copies
/// (it may be the same store). Keys live under a fresh unique prefix, deleted from both
/// stores afterwards, even when a check fails.
pub async fn run_all(store: Arc<dyn BackupStore>, other: Arc<dyn BackupStore>) {
    let base = unique_base();
    let battery = {
        let (store, other, base) = (store.clone(), other.clone(), base.clone());
        tokio::spawn(async move {
            let s = &*store;
            round_trip_empty_and_tiny(s, &base).await;
            round_trip_streamed_20mib(s, &base).await;
            overwrite_replaces(s, &base).await;
            list_is_recursive_sorted_with_sizes(s, &base).await;
            head_reports_size_and_date(s, &base).await;
            delete_removes_and_tolerates_absent(s, &base).await;
            missing_key_is_not_found(s, &base).await;
            invalid_keys_are_rejected(s).await;
            aborted_put_stream_leaves_nothing(s, &base).await;
            dropped_put_stream_leaves_nothing(s, &base).await;
            large_stream_30mib_flows_through(s, &base).await;
            read_back_across_range_boundaries(s, &base).await;
            overwrite_during_read_never_mixes(s, &base).await;
            copy_to_other_store(s, &*other, &base).await;
        })
    };
    let outcome = battery.await;
    cleanup(&*store, &base).await;
    cleanup(&*other, &base).await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("conformance battery did not finish: {e}");
    }
}

/// A prefix no other run uses: `conformance/<pid>-<nanos>`.
pub fn unique_base() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("conformance/{}-{nanos}", std::process::id())
}

/// Deletes every object under `base`.
pub async fn cleanup(store: &dyn BackupStore, base: &str) {
    if let Ok(objects) = store.list(base).await {
        for o in objects {
            let _ = store.delete(&o.key).await;
        }
    }
}

/// Deterministic pseudo-random data, so a misplaced part shows as a mismatch.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&x.to_le_bytes()[..take]);
    }
    Bytes::from(out)
}

/// Cuts `data` into chunks of uneven sizes (1 B, odd sizes, larger than a part...).
pub fn uneven_chunks(data: &Bytes) -> Vec<Bytes> {
    const SIZES: [usize; 6] = [1, 65_536, 1_000_003, 17, 3 * MIB + 5, 9 * MIB + 1];
    let mut chunks = Vec::new();
    let mut at = 0;
    for size in SIZES.iter().cycle() {
        if at >= data.len() {
            break;
        }
        let end = (at + size).min(data.len());
        chunks.push(data.slice(at..end));
        at = end;
    }
    chunks
}

/// Streams `chunks` into `key` through a small channel, as a producer task would.
pub async fn put_chunks(store: &dyn BackupStore, key: &str, chunks: Vec<Bytes>) -> u64 {
    let (tx, rx) = mpsc::channel(4);
    let producer = tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(c)).await.is_err() {
                break;
            }
        }
    });
    let n = store
        .put_stream(key, rx)
        .await
        .unwrap_or_else(|e| panic!("put_stream `{key}` into {store:?}: {e}"));
    producer.await.unwrap();
    n
}

/// Reads `key` back through `get_stream`.
pub async fn get_streamed(store: &dyn BackupStore, key: &str) -> Vec<u8> {
    let mut stream = store
        .get_stream(key)
        .await
        .unwrap_or_else(|e| panic!("get_stream `{key}` from {store:?}: {e}"));
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap_or_else(|e| panic!("reading `{key}`: {e}")));
    }
    out
}

fn assert_not_found<T: std::fmt::Debug>(
    result: crate::error::Result<T>,
    key: &str,
    store: &dyn BackupStore,
) {
    match result {
        Err(e @ Error::NotFound { .. }) => {
            let text = e.to_string();
            assert!(text.contains(key), "NotFound should name the key: {text}");
            assert!(
                text.contains(store.name()),
                "NotFound should name the store: {text}"
            );
        }
        other => panic!("expected NotFound for `{key}`, got {other:?}"),
    }
}

fn hash(data: &[u8], mut h: u64) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

const HASH_START: u64 = 0xcbf2_9ce4_8422_2325;

/// 0 B and 1 B objects, by stream and by bytes, read back both ways.
pub async fn round_trip_empty_and_tiny(store: &dyn BackupStore, base: &str) {
    for (name, data) in [("empty", Bytes::new()), ("one", Bytes::from_static(b"x"))] {
        let key = format!("{base}/tiny/{name}.stream");
        assert_eq!(
            put_chunks(store, &key, vec![data.clone()]).await,
            data.len() as u64
        );
        assert_eq!(store.get_bytes(&key).await.unwrap(), data);
        assert_eq!(get_streamed(store, &key).await, data.to_vec());
        assert_eq!(store.head(&key).await.unwrap().size, data.len() as u64);

        let key = format!("{base}/tiny/{name}.bytes");
        store.put_bytes(&key, data.clone()).await.unwrap();
        assert_eq!(store.get_bytes(&key).await.unwrap(), data);
        assert_eq!(get_streamed(store, &key).await, data.to_vec());
        assert_eq!(store.head(&key).await.unwrap().size, data.len() as u64);
    }
    // A stream that ends without a single chunk is an empty object.
    let key = format!("{base}/tiny/no-chunks");
    let (tx, rx) = mpsc::channel(1);
    drop(tx);
    assert_eq!(store.put_stream(&key, rx).await.unwrap(), 0);
    assert_eq!(store.head(&key).await.unwrap().size, 0);
}

/// 20 MiB in uneven chunks (several parts remotely) comes back byte for byte.
pub async fn round_trip_streamed_20mib(store: &dyn BackupStore, base: &str) {
    let data = pattern(20, 20 * MIB + 3);
    let key = format!("{base}/big/20mib.bin");
    let n = put_chunks(store, &key, uneven_chunks(&data)).await;
    assert_eq!(n, data.len() as u64);
    assert_eq!(store.head(&key).await.unwrap().size, data.len() as u64);
    let back = get_streamed(store, &key).await;
    assert!(back == data, "20 MiB object came back different");
    assert!(store.get_bytes(&key).await.unwrap() == data);
}

/// Writing a key again replaces the object.
pub async fn overwrite_replaces(store: &dyn BackupStore, base: &str) {
    let key = format!("{base}/overwrite/k");
    store
        .put_bytes(&key, Bytes::from_static(b"first version"))
        .await
        .unwrap();
    store
        .put_bytes(&key, Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(&store.get_bytes(&key).await.unwrap()[..], b"second");
    put_chunks(
        store,
        &key,
        vec![Bytes::from_static(b"th"), Bytes::from_static(b"ird")],
    )
    .await;
    assert_eq!(&store.get_bytes(&key).await.unwrap()[..], b"third");
    assert_eq!(
        store
            .list(&format!("{base}/overwrite"))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// `list` is recursive, sorted by key, matches whole segments, and reports exact sizes.
pub async fn list_is_recursive_sorted_with_sizes(store: &dyn BackupStore, base: &str) {
    let dir = format!("{base}/list");
    let objects = [
        ("web/b.tar", 3usize),
        ("web/a/2.tar", 0),
        ("web/a/1.tar", 1),
        ("web/c.bin", 5000),
        ("website/x", 2),
        ("db/only", 4),
    ];
    for (key, size) in objects {
        store
            .put_bytes(&format!("{dir}/{key}"), pattern(size as u64, size))
            .await
            .unwrap();
    }
    let listed = store.list(&format!("{dir}/web")).await.unwrap();
    let got: Vec<(String, u64)> = listed.iter().map(|o| (o.key.clone(), o.size)).collect();
    let want: Vec<(String, u64)> = [
        ("web/a/1.tar", 1),
        ("web/a/2.tar", 0),
        ("web/b.tar", 3),
        ("web/c.bin", 5000),
    ]
    .iter()
    .map(|(k, s)| (format!("{dir}/{k}"), *s))
    .collect();
    assert_eq!(got, want, "list of `web` (whole segments, sorted, sizes)");

    let with_slash: Vec<String> = store
        .list(&format!("{dir}/web/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        with_slash,
        want.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
    );

    let all = store.list(&dir).await.unwrap();
    assert_eq!(all.len(), objects.len());
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "sorted by key");

    let everything = store.list("").await.unwrap();
    for o in &all {
        assert!(
            everything.iter().any(|e| e.key == o.key),
            "`` lists {}",
            o.key
        );
    }

    assert!(store
        .list(&format!("{dir}/nothing-here"))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list(&format!("{dir}/web/b.ta"))
        .await
        .unwrap()
        .is_empty());
}

/// `head` gives the size and a plausible date.
pub async fn head_reports_size_and_date(store: &dyn BackupStore, base: &str) {
    let key = format!("{base}/head/obj");
    let before = chrono::Utc::now() - chrono::Duration::minutes(5);
    store.put_bytes(&key, pattern(7, 1234)).await.unwrap();
    let after = chrono::Utc::now() + chrono::Duration::minutes(5);
    let info = store.head(&key).await.unwrap();
    assert_eq!(info.key, key);
    assert_eq!(info.size, 1234);
    assert!(
        info.last_modified > before && info.last_modified < after,
        "last_modified {} not near now",
        info.last_modified
    );
    assert!(store.exists(&key).await.unwrap());
    assert!(!store.exists(&format!("{key}-absent")).await.unwrap());
}

/// `delete` removes the object; deleting again, or something never written, succeeds.
pub async fn delete_removes_and_tolerates_absent(store: &dyn BackupStore, base: &str) {
    let key = format!("{base}/delete/a/b");
    store
        .put_bytes(&key, Bytes::from_static(b"bye"))
        .await
        .unwrap();
    store.delete(&key).await.unwrap();
    assert_not_found(store.head(&key).await, &key, store);
    assert_not_found(store.get_bytes(&key).await, &key, store);
    assert!(store
        .list(&format!("{base}/delete"))
        .await
        .unwrap()
        .is_empty());
    store.delete(&key).await.unwrap();
    store
        .delete(&format!("{base}/delete/never/written"))
        .await
        .unwrap();
}

/// Reading a missing key is `NotFound` naming the key and the store, right at the call.
pub async fn missing_key_is_not_found(store: &dyn BackupStore, base: &str) {
    let key = format!("{base}/missing/nothing.tar");
    assert_not_found(store.get_bytes(&key).await, &key, store);
    assert_not_found(store.get_stream(&key).await.map(|_| ()), &key, store);
    assert_not_found(store.head(&key).await, &key, store);
}

/// Malformed keys are `InvalidInput` naming `key`, before anything is written.
pub async fn invalid_keys_are_rejected(store: &dyn BackupStore) {
    for bad in [
        "",
        "/abs",
        "trailing/",
        "a//b",
        "../up",
        "a/./b",
        "a#1",
        "back\\slash",
    ] {
        match store.put_bytes(bad, Bytes::from_static(b"x")).await {
            Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "key", "{bad:?}"),
            other => panic!("key {bad:?}: expected InvalidInput, got {other:?}"),
        }
        assert!(
            matches!(store.head(bad).await, Err(Error::InvalidInput { .. })),
            "head {bad:?}"
        );
    }
}

/// A producer that fails midway leaves nothing under the key, nor anywhere else, and an
/// older object under the same key stays intact.
pub async fn aborted_put_stream_leaves_nothing(store: &dyn BackupStore, base: &str) {
    let dir = format!("{base}/aborted");
    let before_all = store.list("").await.unwrap();
    // Small (before the first part), large (after parts were uploaded).
    for (name, sent) in [("small", 1000usize), ("large", 12 * MIB)] {
        let key = format!("{dir}/{name}-never-complete.tar");
        let (tx, rx) = mpsc::channel(4);
        let producer = tokio::spawn(async move {
            for c in uneven_chunks(&pattern(3, sent)) {
                tx.send(Ok(c)).await.unwrap();
            }
            tx.send(Err(std::io::Error::other("tar exited with status 2")))
                .await
                .unwrap();
        });
        let err = store.put_stream(&key, rx).await.unwrap_err();
        producer.await.unwrap();
        assert!(
            err.to_string().contains("tar exited with status 2"),
            "the producer's error is reported: {err}"
        );
        assert_not_found(store.head(&key).await, &key, store);
        let leaked: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .filter(|k| k.contains("never-complete"))
            .collect();
        assert!(leaked.is_empty(), "aborted upload left {leaked:?}");
    }
    assert!(store.list(&dir).await.unwrap().is_empty());

    // An aborted overwrite keeps the old object.
    let key = format!("{dir}/kept.tar");
    let old = pattern(4, 3 * MIB);
    store.put_bytes(&key, old.clone()).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    let producer = tokio::spawn(async move {
        for c in uneven_chunks(&pattern(5, 10 * MIB)) {
            tx.send(Ok(c)).await.unwrap();
        }
        tx.send(Err(std::io::Error::other("disk on fire")))
            .await
            .unwrap();
    });
    assert!(store.put_stream(&key, rx).await.is_err());
    producer.await.unwrap();
    assert!(
        store.get_bytes(&key).await.unwrap() == old,
        "old object intact"
    );
    store.delete(&key).await.unwrap();

    let before: std::collections::HashSet<String> = before_all.into_iter().map(|o| o.key).collect();
    let new_keys: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !before.contains(k) && k.starts_with(&dir))
        .collect();
    assert!(new_keys.is_empty(), "aborted uploads left {new_keys:?}");
}

/// Dropping the `put_stream` future midway (a cancelled backup) publishes nothing.
pub async fn dropped_put_stream_leaves_nothing(store: &dyn BackupStore, base: &str) {
    let key = format!("{base}/dropped/cancelled.tar");
    let (tx, rx) = mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        // More than a part, so a remote store has started its multipart upload.
        for c in uneven_chunks(&pattern(6, 9 * MIB + 100)) {
            if tx.send(Ok(c)).await.is_err() {
                return;
            }
        }
        // Stall, as a stuck producer would, then go away without an error.
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(tx);
    });
    let put = store.put_stream(&key, rx);
    assert!(
        tokio::time::timeout(Duration::from_millis(800), put)
            .await
            .is_err(),
        "put_stream finished although the producer stalled"
    );
    feeder.await.unwrap();
    // Give background clean-up (local writer thread, remote abort) a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_not_found(store.head(&key).await, &key, store);
    assert!(store
        .list(&format!("{base}/dropped"))
        .await
        .unwrap()
        .is_empty());
}

/// 30 MiB produced lazily by a task through a 4-slot channel: memory is bounded by
/// design (channel + a few parts), and the data arrives intact.
pub async fn large_stream_30mib_flows_through(store: &dyn BackupStore, base: &str) {
    const CHUNK: usize = 256 * 1024;
    const TOTAL: usize = 30 * MIB + 12_345;
    let key = format!("{base}/big/30mib.bin");
    let (tx, rx) = mpsc::channel(4);
    let producer = tokio::spawn(async move {
        let mut h = HASH_START;
        let mut sent = 0;
        let mut seed = 0;
        while sent < TOTAL {
            let len = CHUNK.min(TOTAL - sent);
            let chunk = pattern(1000 + seed, len);
            h = hash(&chunk, h);
            seed += 1;
            sent += len;
            tx.send(Ok(chunk)).await.unwrap();
        }
        h
    });
    let n = store.put_stream(&key, rx).await.unwrap();
    let sent_hash = producer.await.unwrap();
    assert_eq!(n, TOTAL as u64);
    assert_eq!(store.head(&key).await.unwrap().size, TOTAL as u64);
    let mut stream = store.get_stream(&key).await.unwrap();
    let (mut h, mut got) = (HASH_START, 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        got += chunk.len();
        h = hash(&chunk, h);
    }
    assert_eq!(got, TOTAL);
    assert_eq!(h, sent_hash, "30 MiB object came back different");
    store.delete(&key).await.unwrap();
}

/// Objects cut around the ranges a remote read fetches in parallel (one byte short of a
/// range, exactly one, one byte over, two, and more ranges than are fetched at once with
/// a last range of one byte) come back byte for byte, in chunks of at most 8 MiB.
pub async fn read_back_across_range_boundaries(store: &dyn BackupStore, base: &str) {
    let range = usize::try_from(GET_RANGE_SIZE).expect("a range fits in memory");
    for (seed, len) in [range - 1, range, range + 1, 2 * range, 5 * range + 1]
        .into_iter()
        .enumerate()
    {
        let data = pattern(500 + seed as u64, len);
        let key = format!("{base}/ranges/{len}.bin");
        assert_eq!(
            put_chunks(store, &key, uneven_chunks(&data)).await,
            len as u64
        );
        let mut stream = store
            .get_stream(&key)
            .await
            .unwrap_or_else(|e| panic!("get_stream `{key}` from {store:?}: {e}"));
        let mut back = Vec::with_capacity(len);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap_or_else(|e| panic!("reading `{key}`: {e}"));
            assert!(
                chunk.len() <= 8 * MIB,
                "a chunk of {} bytes while reading `{key}`",
                chunk.len()
            );
            back.extend_from_slice(&chunk);
        }
        if back != data {
            let at = back.iter().zip(data.iter()).position(|(a, b)| a != b);
            panic!(
                "object of {len} bytes came back as {} bytes, first difference at {at:?}",
                back.len()
            );
        }
        store.delete(&key).await.unwrap();
    }
}

/// An object replaced while a read of it is under way: the read yields the old bytes
/// whole, or fails saying so; never a mix of the two versions.
pub async fn overwrite_during_read_never_mixes(store: &dyn BackupStore, base: &str) {
    let len = 5 * usize::try_from(GET_RANGE_SIZE).expect("a range fits in memory") + 1;
    let old = pattern(600, len);
    let key = format!("{base}/ranges/replaced.bin");
    put_chunks(store, &key, uneven_chunks(&old)).await;
    let mut stream = store.get_stream(&key).await.unwrap();
    let first = stream
        .next()
        .await
        .expect("a first chunk")
        .unwrap_or_else(|e| panic!("reading `{key}`: {e}"));
    let new = pattern(601, len);
    put_chunks(store, &key, uneven_chunks(&new)).await;
    let mut back = first.to_vec();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => back.extend_from_slice(&chunk),
            Err(e @ Error::Conflict(_)) => {
                let text = e.to_string();
                assert!(
                    text.contains(&key) && text.contains("replaced"),
                    "the error should say that `{key}` was replaced: {text}"
                );
                store.delete(&key).await.unwrap();
                return;
            }
            Err(e) => panic!("reading `{key}` while it was replaced: unexpected error {e:?}"),
        }
    }
    assert!(
        back == old,
        "reading `{key}` while it was replaced gave {} bytes that are not the old object",
        back.len()
    );
    store.delete(&key).await.unwrap();
}

/// `copy_to` streams an object to another store (and back), intact; copying a missing
/// object is `NotFound` and creates nothing.
pub async fn copy_to_other_store(store: &dyn BackupStore, other: &dyn BackupStore, base: &str) {
    let data = pattern(9, 9 * MIB + 7);
    let src = format!("{base}/copy/src.bin");
    store.put_bytes(&src, data.clone()).await.unwrap();
    let there = format!("{base}/copy/there.bin");
    assert_eq!(
        store.copy_to(&src, other, &there).await.unwrap(),
        data.len() as u64
    );
    assert!(
        other.get_bytes(&there).await.unwrap() == data,
        "copy to other store"
    );
    let back = format!("{base}/copy/back.bin");
    assert_eq!(
        other.copy_to(&there, store, &back).await.unwrap(),
        data.len() as u64
    );
    assert!(get_streamed(store, &back).await == data, "copy back");

    let missing = format!("{base}/copy/missing.bin");
    let dest = format!("{base}/copy/from-missing.bin");
    assert_not_found(store.copy_to(&missing, other, &dest).await, &missing, store);
    assert!(!other.exists(&dest).await.unwrap());
}
