//! One suite for every store: SQLite always, PostgreSQL when
//! `CONFAB_TEST_POSTGRES_URL` is set (each run in a database of its own).

use std::sync::Arc;

use confab::protocol::{RoomMessage, RoomName, UserName};
use confab::store::idempotency::{KeyClaim, KeyRecord};
use confab::store::{self, Draft, PageQuery, Paged, Prune, Store, Stored};

fn room(s: &str) -> RoomName {
    RoomName::parse(s).unwrap()
}

fn user(s: &str) -> UserName {
    UserName::parse(s).unwrap()
}

fn say(r: &str, from: &str, body: &str) -> Draft {
    Draft::Room {
        room: room(r),
        from: user(from),
        body: body.into(),
        client_id: Some(format!("c-{body}")),
    }
}

fn dm(from: &str, to: &str, body: &str) -> Draft {
    Draft::Direct {
        from: user(from),
        to: user(to),
        body: body.into(),
        client_id: None,
    }
}

fn ids(stored: &[Stored]) -> Vec<i64> {
    stored.iter().map(|s| s.id_ts().0).collect()
}

/// The contract of `store::Store`.
async fn contract(s: Arc<dyn Store>) {
    // Room ids are per room, dense and in batch order; DM ids increase.
    let first = s
        .append(
            &[
                say("a", "ann", "1"),
                say("b", "ann", "x"),
                say("a", "bob", "2"),
                dm("ann", "bob", "d1"),
            ],
            &Prune::default(),
        )
        .await
        .unwrap();
    assert_eq!(ids(&first)[..3], [1, 1, 2]);
    let second = s
        .append(
            &[
                say("a", "ann", "3"),
                dm("bob", "ann", "d2"),
                dm("ann", "cy", "d3"),
            ],
            &Prune::default(),
        )
        .await
        .unwrap();
    assert_eq!(ids(&second)[0], 3);
    let dm_ids = [ids(&first)[3], ids(&second)[1], ids(&second)[2]];
    assert!(dm_ids[0] < dm_ids[1] && dm_ids[1] < dm_ids[2], "{dm_ids:?}");
    match &second[0] {
        Stored::Room(m) => {
            assert_eq!(
                (m.body.as_str(), m.client_id.as_deref()),
                ("3", Some("c-3"))
            );
            assert!(m.ts > 0);
        }
        other => panic!("{other:?}"),
    }

    // Pages: oldest first, `more` when the query had more.
    let q = |before, after, limit| PageQuery {
        before,
        after,
        limit,
    };
    let newest = s.room_page(&room("a"), q(None, None, 2)).await.unwrap();
    assert_eq!(
        newest.items.iter().map(|m| m.id).collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(newest.more);
    let older = s.room_page(&room("a"), q(Some(2), None, 5)).await.unwrap();
    assert_eq!(older.items.iter().map(|m| m.id).collect::<Vec<_>>(), [1]);
    assert!(!older.more);
    let after = s.room_page(&room("a"), q(None, Some(1), 5)).await.unwrap();
    assert_eq!(after.items.iter().map(|m| m.id).collect::<Vec<_>>(), [2, 3]);
    assert!(s
        .room_page(&room("none"), q(None, None, 5))
        .await
        .unwrap()
        .items
        .is_empty());

    // Conversations and resume.
    let conv = s
        .dm_page(&user("bob"), &user("ann"), q(None, None, 10))
        .await
        .unwrap();
    assert_eq!(
        conv.items
            .iter()
            .map(|d| d.body.as_str())
            .collect::<Vec<_>>(),
        ["d1", "d2"]
    );
    let since = s.dms_since(&user("ann"), dm_ids[0], 10).await.unwrap();
    assert_eq!(
        since.items.iter().map(|d| d.id).collect::<Vec<_>>(),
        dm_ids[1..]
    );
    let limited = s.dms_since(&user("ann"), 0, 1).await.unwrap();
    assert_eq!(limited.items.len(), 1);
    assert!(limited.more);

    // Users and offline delivery.
    assert!(!s.user_exists(&user("bob")).await.unwrap());
    s.register_user(&user("bob")).await.unwrap();
    s.register_user(&user("bob")).await.unwrap();
    assert!(s.user_exists(&user("bob")).await.unwrap());
    let undelivered = s.undelivered_dms(&user("bob"), 10).await.unwrap();
    assert_eq!(
        undelivered.iter().map(|d| d.id).collect::<Vec<_>>(),
        [dm_ids[0]]
    );
    s.mark_delivered(&user("bob"), dm_ids[0]).await.unwrap();
    s.mark_delivered(&user("bob"), 0).await.unwrap();
    assert!(s
        .undelivered_dms(&user("bob"), 10)
        .await
        .unwrap()
        .is_empty());

    let heads = s.room_heads().await.unwrap();
    let heads: Vec<(String, i64)> = heads
        .into_iter()
        .map(|(r, id, _)| (r.to_string(), id))
        .collect();
    assert_eq!(heads, [("a".to_owned(), 3), ("b".to_owned(), 1)]);
    s.ping().await.unwrap();
}

/// Pruning deletes what falls out of the window and nothing else, in the
/// transaction of an append (whose batch may be empty): a room's ids up to
/// the bound, a user's direct messages beyond the newest `keep`, and ids
/// go on from where they were.
async fn pruning(s: Arc<dyn Store>) {
    let batch: Vec<Draft> = (0..10)
        .map(|i| say("p", "ann", &i.to_string()))
        .chain((0..5).map(|i| dm("ann", "bob", &format!("d{i}"))))
        .chain([say("q", "ann", "other room"), dm("bob", "ann", "reply")])
        .collect();
    let stored = s.append(&batch, &Prune::default()).await.unwrap();
    let room_ids = |page: Paged<RoomMessage>| page.items.iter().map(|m| m.id).collect::<Vec<_>>();
    let all = PageQuery {
        limit: 100,
        ..PageQuery::default()
    };
    let conversation = || async {
        let conv = s.dm_page(&user("ann"), &user("bob"), all).await.unwrap();
        conv.items.into_iter().map(|d| d.body).collect::<Vec<_>>()
    };

    // Bob keeps his newest 2; what Ann was sent is not his to lose, and
    // Cy, who was sent nothing, loses nothing.
    let mut prune = Prune::keeping(2);
    prune.room(room("p"), 6);
    prune.dms.extend([user("bob"), user("cy")]);
    assert!(s.append(&[], &prune).await.unwrap().is_empty());
    assert_eq!(
        room_ids(s.room_page(&room("p"), all).await.unwrap()),
        [7, 8, 9, 10]
    );
    assert_eq!(room_ids(s.room_page(&room("q"), all).await.unwrap()), [1]);
    assert_eq!(conversation().await, ["d3", "d4", "reply"]);
    let last_dm = stored.last().unwrap().id_ts().0;

    // The same prune carried by a batch deletes nothing more of the
    // room, and counts the batch's own direct message among Bob's newest.
    let next = s
        .append(&[say("p", "ann", "next"), dm("ann", "bob", "d5")], &prune)
        .await
        .unwrap();
    assert_eq!(ids(&next)[0], 11);
    assert!(ids(&next)[1] > last_dm);
    assert_eq!(
        room_ids(s.room_page(&room("p"), all).await.unwrap()),
        [7, 8, 9, 10, 11]
    );
    assert_eq!(conversation().await, ["d4", "reply", "d5"]);
    let heads = s.room_heads().await.unwrap();
    assert!(
        heads
            .iter()
            .any(|(r, id, _)| r.as_str() == "p" && *id == 11),
        "{heads:?}"
    );
}

fn claim(key: &str, target: &str, created_at: i64) -> KeyClaim {
    KeyClaim {
        key: key.into(),
        scope: "room",
        target: target.into(),
        sender: "api".into(),
        created_at,
    }
}

/// Idempotency keys: one claimant wins, a completed key remembers its
/// message, a released one can be claimed again, old ones are pruned.
async fn idempotency_keys(s: Arc<dyn Store>) {
    assert_eq!(s.claim_key(&claim("k1", "a", 100)).await.unwrap(), None);
    // A second claim (another target even) gets the first one back.
    let earlier = s.claim_key(&claim("k1", "b", 150)).await.unwrap();
    let pending = KeyRecord {
        scope: "room".into(),
        target: "a".into(),
        sender: "api".into(),
        message_id: None,
        created_at: 100,
    };
    assert_eq!(earlier, Some(pending.clone()));
    s.complete_key("k1", 7).await.unwrap();
    let done = s.claim_key(&claim("k1", "a", 160)).await.unwrap();
    assert_eq!(
        done,
        Some(KeyRecord {
            message_id: Some(7),
            ..pending
        })
    );
    // Releasing a completed key does nothing.
    s.release_key("k1").await.unwrap();
    assert_eq!(
        s.claim_key(&claim("k1", "a", 170))
            .await
            .unwrap()
            .and_then(|r| r.message_id),
        Some(7)
    );

    // A failed publish releases its key: the retry claims it afresh.
    assert_eq!(s.claim_key(&claim("k2", "a", 200)).await.unwrap(), None);
    s.release_key("k2").await.unwrap();
    assert_eq!(s.claim_key(&claim("k2", "a", 300)).await.unwrap(), None);
    s.release_key("never-claimed").await.unwrap();
    s.complete_key("never-claimed", 1).await.unwrap();

    // Concurrent claims of one key (as from several nodes): one wins.
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move { s.claim_key(&claim("race", "a", t)).await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap().is_none() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);

    // Pruning forgets keys claimed strictly before the cutoff.
    assert_eq!(
        s.prune_keys(200).await.unwrap(),
        2,
        "k1 and the race winner"
    );
    assert_eq!(s.prune_keys(200).await.unwrap(), 0);
    assert_eq!(s.claim_key(&claim("k1", "b", 400)).await.unwrap(), None);
    assert!(s.claim_key(&claim("k2", "a", 400)).await.unwrap().is_some());
    assert_eq!(s.prune_keys(i64::MAX).await.unwrap(), 2);
}

/// Concurrent appends to one room (as from several nodes): ids stay
/// unique and dense.
async fn concurrent_appends(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..20 {
                    let batch = [
                        say("busy", "u", &format!("{t}-{i}")),
                        say("quiet", "u", &format!("{t}-{i}")),
                    ];
                    got.extend(
                        ids(&s.append(&batch, &Prune::default()).await.unwrap())
                            .into_iter()
                            .step_by(2),
                    );
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=80).collect::<Vec<i64>>());
}

/// Both of SQLite's writers: in memory (written on the caller's thread)
/// and in a file (through sqlx's worker thread).
#[tokio::test]
async fn sqlite_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    for (i, url) in [
        "sqlite::memory:".to_string(),
        format!("sqlite://{}/c.db", dir.path().display()),
    ]
    .iter()
    .enumerate()
    {
        // A fresh database for each part; a file per part too.
        let url = |part: &str| url.replace("c.db", &format!("c{i}-{part}.db"));
        contract(store::open(&url("contract")).await.unwrap()).await;
        idempotency_keys(store::open(&url("keys")).await.unwrap()).await;
        pruning(store::open(&url("pruning")).await.unwrap()).await;
        concurrent_appends(store::open(&url("concurrent")).await.unwrap()).await;
    }
}

/// A new file opens every time. Turning a fresh database to WAL takes an
/// exclusive lock that SQLite's busy timeout does not wait for, so two
/// connections opening it at once made about one first start in twenty
/// fail with "database is locked" (on the binary's runtime, which has a
/// thread per core).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sqlite_file_opens_every_time() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..60 {
        let url = format!("sqlite://{}/new-{i}.db", dir.path().display());
        let s = store::open(&url).await;
        s.unwrap_or_else(|e| panic!("opening new file {i}: {e:#}"))
            .close()
            .await;
    }
}

/// Ids go on from where they stopped when the file is opened again, for
/// rooms and direct messages, and a batch mixing both is stored whole.
#[tokio::test]
async fn sqlite_ids_continue_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/r.db", dir.path().display());
    let first = store::open(&url).await.unwrap();
    let batch = [say("a", "u", "1"), dm("u", "v", "d1"), say("a", "u", "2")];
    assert_eq!(
        ids(&first.append(&batch, &Prune::default()).await.unwrap()),
        vec![1, 1, 2]
    );
    first.close().await;
    // A closed store refuses appends (its writer connection is gone)
    // rather than hang or write behind the reopened one's back.
    let refused = first
        .append(&[say("a", "u", "late")], &Prune::default())
        .await;
    assert!(refused.is_err(), "{refused:?}");

    let again = store::open(&url).await.unwrap();
    let batch = [say("a", "u", "3"), say("b", "u", "x"), dm("v", "u", "d2")];
    assert_eq!(
        ids(&again.append(&batch, &Prune::default()).await.unwrap()),
        vec![3, 1, 2]
    );
    let heads = again.room_heads().await.unwrap();
    let heads: Vec<(String, i64)> = heads
        .into_iter()
        .map(|(r, id, _)| (r.to_string(), id))
        .collect();
    assert_eq!(heads, vec![("a".into(), 3), ("b".into(), 1)]);
    let page = again
        .room_page(
            &room("a"),
            PageQuery {
                limit: 10,
                ..PageQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);

    // A room's row is written once, with its first batch: on opening, each
    // head is read back from the room's messages.
    again.close().await;
    let third = store::open(&url).await.unwrap();
    let batch = [say("a", "u", "4"), say("b", "u", "y")];
    assert_eq!(
        ids(&third.append(&batch, &Prune::default()).await.unwrap()),
        vec![4, 2]
    );
}

#[tokio::test]
async fn postgres_keeps_the_store_contract() {
    let Ok(admin) = std::env::var("CONFAB_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CONFAB_TEST_POSTGRES_URL must be set in CI"
        );
        println!("SKIP postgres_keeps_the_store_contract: set CONFAB_TEST_POSTGRES_URL to run it");
        return;
    };
    let db = TempDb::create(&admin).await;
    let s = store::open(&db.url).await.unwrap();
    contract(s.clone()).await;
    idempotency_keys(s.clone()).await;
    concurrent_appends(s.clone()).await;
    s.close().await;
    // Pruning on a database of its own: the contract's rooms are taken.
    let pruned_db = TempDb::create(&admin).await;
    let p = store::open(&pruned_db.url).await.unwrap();
    pruning(p.clone()).await;
    p.close().await;
    pruned_db.drop_now().await;
    // Migrations are applied once: a second node opening it is fine.
    let again = store::open(&db.url).await.unwrap();
    again.ping().await.unwrap();
    again.close().await;
    db.drop_now().await;
}

struct TempDb {
    admin: String,
    name: String,
    url: String,
}

impl TempDb {
    async fn create(admin: &str) -> TempDb {
        use sqlx::Connection;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("confab_store_{}_{nanos}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.split('?').next().unwrap();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        TempDb {
            admin: admin.to_owned(),
            name,
            url,
        }
    }

    async fn drop_now(self) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}
