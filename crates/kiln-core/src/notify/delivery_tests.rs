//! The deliverer against a real HTTP receiver on 127.0.0.1 that answers as a test scripts it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use kiln_store::MessageState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::principal::Principal;
use crate::state::Store;
use crate::store::Home;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    headers: BTreeMap<String, String>,
    body: String,
}

/// A webhook receiver: answers each request with the next scripted status (200 once the
/// script is empty), after `delay`.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    delay: Arc<Mutex<Duration>>,
}

impl Receiver {
    /// Serves on `listener` until the test ends.
    fn serve(&self, listener: TcpListener) {
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let Some(got) = read_request(&mut sock).await else {
                        return;
                    };
                    let delay = *me.delay.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    let status = me.script.lock().unwrap().pop_front().unwrap_or(200);
                    me.got.lock().unwrap().push(got);
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = sock.write_all(answer.as_bytes()).await;
                });
            }
        });
    }

    async fn start() -> (Receiver, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let r = Receiver::default();
        r.serve(listener);
        (r, url)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn answer(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Got> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: BTreeMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Got {
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

/// A clock the test moves by hand.
#[derive(Clone)]
struct HandClock(Arc<Mutex<DateTime<Utc>>>);

impl HandClock {
    fn new() -> HandClock {
        HandClock(Arc::new(Mutex::new(
            Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap(),
        )))
    }
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
    fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap();
        *t += chrono::Duration::from_std(d).unwrap();
    }
    fn clock(&self) -> Clock {
        let c = self.clone();
        Arc::new(move || c.now())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    home: Home,
    store: Store,
    topic: Topic,
    clock: HandClock,
}

async fn fixture(url: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::new(dir.path());
    let store = Store::open(&home).await.unwrap();
    let topic = Topics::new(store.clone())
        .create(&Principal::local("tester"), "builds", url, &[SECRET.into()])
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        home,
        store,
        topic,
        clock: HandClock::new(),
    }
}

impl Fixture {
    async fn enqueue(&self, subject: &str) -> kiln_store::Message {
        let m = message(
            &self.topic.arn,
            Event::ImageAvailable,
            subject,
            &serde_json::json!({"arn": subject}),
            self.clock.now().timestamp_millis(),
        );
        self.store.db().enqueue(vec![m.clone()]).await.unwrap();
        m
    }

    fn deliverer(&self) -> Deliverer {
        Deliverer::new(self.store.clone())
            .unwrap()
            .with_clock(self.clock.clock())
    }

    async fn queued(&self) -> Vec<kiln_store::Queued> {
        self.store
            .db()
            .messages(&self.topic.arn, 100)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_message_arrives_signed_once_and_is_recorded_delivered() {
    let (rx, url) = Receiver::start().await;
    let f = fixture(&url).await;
    let m = f.enqueue("img/1").await;
    let d = f.deliverer();
    assert_eq!(d.deliver_due().await.unwrap(), 1);
    assert_eq!(
        d.deliver_due().await.unwrap(),
        0,
        "delivered is not sent again"
    );
    let got = rx.got();
    assert_eq!(got.len(), 1);
    let h = &got[0].headers;
    assert_eq!(h["webhook-id"], m.id);
    assert_eq!(h["content-type"], "application/json");
    let ts: i64 = h["webhook-timestamp"].parse().unwrap();
    assert_eq!(ts, f.clock.now().timestamp());
    assert_eq!(got[0].body, m.body);
    let secret = Secret::parse(SECRET).unwrap();
    assert_eq!(
        h["webhook-signature"],
        sign_one(&secret, &m.id, ts, m.body.as_bytes()).unwrap()
    );
    let q = f.queued().await;
    assert_eq!((q[0].state, q[0].attempts), (MessageState::Delivered, 1));
}

#[tokio::test]
async fn a_failure_is_retried_after_its_backoff_and_then_delivered() {
    let (rx, url) = Receiver::start().await;
    rx.answer(&[500]);
    let f = fixture(&url).await;
    f.enqueue("img/1").await;
    let d = f.deliverer();
    assert_eq!(d.deliver_due().await.unwrap(), 1);
    let q = &f.queued().await[0];
    assert_eq!((q.state, q.attempts), (MessageState::Pending, 1));
    assert!(q.last_error.as_deref().unwrap().contains("500"), "{q:?}");
    let wait = q.next_ms - f.clock.now().timestamp_millis();
    assert!(
        (4000..=6000).contains(&wait),
        "the first retry is 5 s ± 20 %: {wait} ms"
    );
    assert_eq!(d.deliver_due().await.unwrap(), 0, "not due before its time");
    f.clock.advance(Duration::from_secs(6));
    assert_eq!(d.deliver_due().await.unwrap(), 1);
    let q = &f.queued().await[0];
    assert_eq!((q.state, q.attempts), (MessageState::Delivered, 2));
    assert_eq!(rx.got().len(), 2);
    let ids: Vec<String> = rx
        .got()
        .iter()
        .map(|g| g.headers["webhook-id"].clone())
        .collect();
    assert_eq!(
        ids[0], ids[1],
        "a retry is the same message: the same webhook-id"
    );
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_the_message_once_it_is_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let f = fixture(&format!("http://{addr}/hook")).await;
    f.enqueue("img/1").await;
    let d = f.deliverer();
    for _ in 0..3 {
        assert_eq!(d.deliver_due().await.unwrap(), 1);
        f.clock.advance(Duration::from_secs(200));
    }
    let q = &f.queued().await[0];
    assert_eq!((q.state, q.attempts), (MessageState::Pending, 3));
    assert!(
        q.last_error.as_deref().unwrap().contains("connect"),
        "{q:?}"
    );
    let rx = Receiver::default();
    rx.serve(TcpListener::bind(addr).await.unwrap());
    f.clock.advance(Duration::from_secs(700));
    assert_eq!(d.deliver_due().await.unwrap(), 1);
    assert_eq!(rx.got().len(), 1);
    assert_eq!(f.queued().await[0].state, MessageState::Delivered);
}

#[tokio::test]
async fn gone_drops_the_topics_messages_and_marks_it_gone() {
    let (rx, url) = Receiver::start().await;
    rx.answer(&[410]);
    let f = fixture(&url).await;
    f.enqueue("img/1").await;
    f.enqueue("img/2").await;
    let d = f.deliverer();
    assert_eq!(d.deliver_due().await.unwrap(), 1);
    assert!(f
        .queued()
        .await
        .iter()
        .all(|q| q.state == MessageState::Dropped
            && q.last_error.as_deref().unwrap().contains("410")));
    let topic = Topics::new(f.store.clone())
        .by_arn(&f.topic.arn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topic.state, TopicState::Gone);
    // What is written for a GONE topic later is dropped, never sent.
    f.enqueue("img/3").await;
    assert_eq!(d.deliver_due().await.unwrap(), 0);
    assert_eq!(rx.got().len(), 1);
    assert!(f
        .queued()
        .await
        .iter()
        .all(|q| q.state == MessageState::Dropped));
}

#[tokio::test]
async fn retries_stop_after_five_days() {
    let (rx, url) = Receiver::start().await;
    rx.answer(&[503; 100]);
    let f = fixture(&url).await;
    f.enqueue("img/1").await;
    let d = f.deliverer();
    let start = f.clock.now();
    let give_up = start + chrono::Duration::from_std(GIVE_UP_AFTER).unwrap();
    let mut attempts = 0;
    loop {
        attempts += d.deliver_due().await.unwrap();
        let q = f.queued().await.remove(0);
        if q.state != MessageState::Pending {
            assert_eq!(q.state, MessageState::Dropped);
            assert!(q.last_error.unwrap().contains("gave up"));
            break;
        }
        assert!(
            q.next_ms <= give_up.timestamp_millis(),
            "never retried after five days"
        );
        let next = DateTime::from_timestamp_millis(q.next_ms).unwrap();
        f.clock
            .advance((next - f.clock.now()).to_std().unwrap_or_default());
        assert!(attempts < 100, "runaway retries");
    }
    assert_eq!(
        f.clock.now(),
        give_up,
        "the last attempt is at the five-day mark"
    );
    assert!(
        (40..=60).contains(&attempts),
        "{attempts} attempts in five days"
    );
    assert_eq!(rx.got().len(), attempts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliverer_stopped_half_way_leaves_the_rest_to_the_next_and_none_go_twice() {
    let (rx, url) = Receiver::start().await;
    *rx.delay.lock().unwrap() = Duration::from_millis(150);
    let f = fixture(&url).await;
    for i in 0..8 {
        f.enqueue(&format!("img/{i}")).await;
    }
    let first = Running::spawn(f.deliverer());
    while rx.got().len() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.stop().await;
    let sent_before = rx.got().len();
    assert!(sent_before < 8, "stopped half-way");
    let delivered = f
        .queued()
        .await
        .iter()
        .filter(|q| q.state == MessageState::Delivered)
        .count();
    assert_eq!(
        delivered, sent_before,
        "every answered attempt was recorded before it stopped"
    );
    // A restarted kiln: a new store handle over the same file, a new deliverer.
    let store = Store::open(&f.home).await.unwrap();
    let second = Deliverer::new(store).unwrap().with_clock(f.clock.clock());
    while second.deliver_due().await.unwrap() > 0 {}
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for g in rx.got() {
        *per_id.entry(g.headers["webhook-id"].clone()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 8, "every message arrived");
    assert!(per_id.values().all(|&n| n == 1), "none twice: {per_id:?}");
}

#[tokio::test]
async fn topics_keep_their_secrets_out_of_views_and_debug() {
    let (_rx, url) = Receiver::start().await;
    let f = fixture(&url).await;
    let principal = Principal::local("tester");
    let topics = Topics::new(f.store.clone());
    let rotated = topics
        .rotate(&principal, "builds", None, false)
        .await
        .unwrap();
    assert_eq!(rotated.secrets.len(), 2);
    assert_eq!(
        rotated.secrets[0].expose(),
        SECRET,
        "the old secret is kept"
    );
    let shown = format!("{rotated:?} {:?}", topics.list(&principal).await.unwrap());
    for s in &rotated.secrets {
        assert!(!shown.contains(&s.expose()[6..]), "{shown}");
    }
    let only_new = topics
        .rotate(&principal, "builds", None, true)
        .await
        .unwrap();
    assert_eq!(only_new.secrets.len(), 1);
    // By its SNS shape too.
    let sns = format!("arn:aws:sns:local:{}:builds", principal.account);
    assert_eq!(topics.get(&principal, &sns).await.unwrap().arn, f.topic.arn);
    let other = Principal::new("111111111111", "x");
    assert!(
        topics.get(&other, &f.topic.arn).await.is_err(),
        "another account's topic"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(crate::state::db_path(&f.home))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the store holds secrets: owner only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_over_one_home_deliver_each_message_once() {
    let (rx, url) = Receiver::start().await;
    *rx.delay.lock().unwrap() = Duration::from_millis(100);
    let f = fixture(&url).await;
    for i in 0..6 {
        f.enqueue(&format!("img/{i}")).await;
    }
    // Two kiln processes: two store handles over one file, a deliverer each, running at once.
    let other = Deliverer::new(Store::open(&f.home).await.unwrap())
        .unwrap()
        .with_clock(f.clock.clock());
    let a = Running::spawn(f.deliverer());
    let b = Running::spawn(other);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rx.got().len() < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} arrived",
            rx.got().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The one holding the lock stops: the other takes the outbox over.
    a.stop().await;
    f.enqueue("img/late").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rx.got().len() < 7 {
        assert!(
            std::time::Instant::now() < deadline,
            "the other never took over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.stop().await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for g in rx.got() {
        *per_id.entry(g.headers["webhook-id"].clone()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 7, "every message arrived");
    assert!(per_id.values().all(|&n| n == 1), "none twice: {per_id:?}");
}
