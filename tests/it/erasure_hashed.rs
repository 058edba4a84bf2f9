//! Keyed hashing of erased keys: with `erasure.key_hash_secret` the ledger
//! never holds the ids it erases, the clear key lives only until the
//! request is verified, and late records (rows and dead letters) are still
//! suppressed by hash, next to requests filed before the secret was set.

use std::io::Write;
use std::time::Duration;

use sluice::erase::ledger::State;
use sluice::erase::{self, keys::SubjectKey};

use crate::common::*;
use crate::erasure::{ledger_requests, now, raw_hits, request, rows, write_lines};

const SECRET: &str = "0123456789abcdef-test-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_keeps_hashes_and_suppression_still_holds() {
    let lake = Lake::new();
    let dir = lake.table("in");
    write_lines(&dir, "a.ndjson", 300, |n| format!("user-{:03}", n % 30));
    let table = format!(
        "{EVENT_COLUMNS}\nproperties = {{ \"delta.deletedFileRetentionDuration\" = \"interval 1 second\" }}"
    );
    let mut plain = file_config(&lake, &dir, "events", "max_rows = 100", &table);
    plain.erasure.enabled = false;
    ingest_to_end(&plain).await;
    // Filed before the secret was set: kept in clear, and still honoured.
    request(&plain, &["user_id=user-009"], now()).await;
    let mut config = plain.clone();
    config.erasure.key_hash_secret = Some(SECRET.into());
    let ids = request(&config, &["user_id=user-007"], now()).await;
    let again = request(&config, &["user_id=user-007"], now()).await;
    assert_eq!(ids, again, "the same key is recognised by its hash");

    let ledger = lake.table("_sluice_erasure");
    let vault = ledger.join("_sluice_keys");
    // Every object of the lake holding `needle`, but the source files.
    let lake_hits = |needle: &str| -> Vec<String> {
        raw_hits(lake.dir.path(), needle)
            .into_iter()
            .filter(|p| !std::path::Path::new(p).starts_with(&dir))
            .collect()
    };
    assert!(
        raw_hits(&ledger, "user-007")
            .iter()
            .all(|p| p.contains("_sluice_keys")),
        "the ledger's own files hold only the hash"
    );
    assert_eq!(
        raw_hits(&vault, "user-007").len(),
        1,
        "the vault holds it until verified"
    );
    let requests = ledger_requests(&config).await;
    let hashed = requests.iter().find(|r| r.id == ids[0]).unwrap();
    assert!(hashed.key_hash.is_some() && hashed.key_value.is_empty());
    assert!(hashed.key().value.starts_with("hmac-sha256:"));

    // A key that was never ingested verifies clean at once; its clear value
    // is still needed (late records, the purge), so it stays in the vault.
    let never = request(&config, &["user_id=user-999"], now()).await;
    let early = erase::verify_request(&config, &never[0], true, now())
        .await
        .unwrap();
    assert!(early.passed);
    assert_eq!(
        raw_hits(&vault, "user-999").len(),
        1,
        "kept until purged and verified"
    );

    let run = erase::apply_all(&config, now(), None).await.unwrap();
    assert_eq!(run.applied[0].rows_deleted, 20, "{:?}", run.applied[0]);

    // Late records of both keys, good and malformed, are suppressed by an
    // ingest process that knows only the hash of one of them.
    let mut late = std::fs::File::create(dir.join("b.ndjson")).unwrap();
    for (n, user) in ["user-007", "user-009", "user-001"].iter().enumerate() {
        writeln!(
            late,
            r#"{{"event_id":"late-{n}","user_id":"{user}","amount":1.0,"event_time":"2024-05-01T12:00:00Z"}}"#
        )
        .unwrap();
        writeln!(
            late,
            r#"{{"event_id":"bad-{n}","user_id":"{user}","amount":"x"}}"#
        )
        .unwrap();
    }
    drop(late);
    let stats = ingest_to_end(&config).await;
    assert_eq!(
        (stats.suppressed, stats.committed, stats.dead_lettered),
        (4, 1, 1),
        "{stats:?}"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    erase::apply_all(&config, now(), None).await.unwrap();
    let verified = erase::verify_request(&config, &ids[0], true, now())
        .await
        .unwrap();
    assert!(verified.passed, "{:?}", verified.tables);
    assert_eq!(
        ledger_requests(&config)
            .await
            .iter()
            .find(|r| r.id == ids[0])
            .unwrap()
            .state(),
        State::Verified
    );
    // Verified: the clear key is gone from every object of the lake,
    // tables, dead letters, ledger and vault alike.
    assert_eq!(lake_hits("user-007"), Vec::<String>::new());
    assert!(
        !lake_hits("user-009").is_empty(),
        "a request filed in clear stays in clear"
    );

    // Still suppressed afterwards, by hash alone.
    let mut later = std::fs::File::create(dir.join("c.ndjson")).unwrap();
    writeln!(
        later,
        r#"{{"event_id":"later-1","user_id":"user-007","amount":1.0,"event_time":"2024-05-01T12:00:00Z"}}"#
    )
    .unwrap();
    drop(later);
    let stats = ingest_to_end(&config).await;
    assert_eq!(stats.suppressed, 1, "{stats:?}");
    assert!(rows(&lake.table("events"))
        .await
        .iter()
        .all(|(_, u)| u != "user-007" && u != "user-009"));

    // Verifying again needs the key, which must match the hash.
    let error = erase::verify_request(&config, &ids[0], true, now())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("--key user_id="), "{error}");
    let wrong = SubjectKey::parse("user_id=user-008").unwrap();
    let error = erase::verify_request_with_key(&config, &ids[0], true, now(), Some(&wrong))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("is not the key"), "{error}");
    let right = SubjectKey::parse("user_id=user-007").unwrap();
    let again = erase::verify_request_with_key(&config, &ids[0], true, now(), Some(&right))
        .await
        .unwrap();
    assert!(again.passed);
}
