//! What the privacy team and auditors read: request status with deadline
//! risk, and a JSON receipt of everything done for one request.

use std::time::Duration;

use serde::Serialize;

use super::ledger::{Request, State};

/// One line of `sluice forget status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    /// The request id.
    pub id: String,
    /// `column=value`.
    pub key: String,
    /// Current state.
    pub state: State,
    /// Target tables.
    pub tables: Vec<String>,
    /// When it was filed (RFC 3339).
    pub requested: String,
    /// Its deadline (RFC 3339).
    pub deadline: String,
    /// Whole days left before the deadline (negative: overdue).
    pub days_left: i64,
    /// `overdue`, `at_risk` or `on_track` (`done` once verified).
    pub risk: &'static str,
}

/// The status of `request` at `now_ms`, assuming purges need `retention`
/// after the last deletion (the tables' deleted-file retention).
pub fn status_row(request: &Request, now_ms: i64, retention: Duration) -> StatusRow {
    let state = request.state();
    let retention_ms = retention.as_millis() as i64;
    let day_ms = 24 * 3600 * 1000;
    // The earliest time every table can be purged: a day for the next
    // background run, plus the retention after its last deletion (or now).
    let purge_by = request
        .tables
        .values()
        .filter(|t| t.purged.is_none())
        .map(|t| (t.deletions.last().map_or(now_ms, |d| d.at_ms) + retention_ms).max(now_ms))
        .max()
        .unwrap_or(now_ms)
        + day_ms;
    let risk = if state == State::Verified {
        "done"
    } else if now_ms > request.deadline_ms {
        "overdue"
    } else if state < State::Purged && purge_by > request.deadline_ms {
        "at_risk"
    } else {
        "on_track"
    };
    StatusRow {
        id: request.id.clone(),
        key: request.key().to_string(),
        state,
        tables: request.tables.keys().cloned().collect(),
        requested: rfc3339(request.requested_ms),
        deadline: rfc3339(request.deadline_ms),
        days_left: (request.deadline_ms - now_ms).div_euclid(day_ms),
        risk,
    }
}

/// RFC 3339 UTC text for ms since the epoch.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// The auditor's receipt for `request`.
pub fn receipt(request: &Request, now_ms: i64) -> serde_json::Value {
    let tables: Vec<serde_json::Value> = request
        .tables
        .iter()
        .map(|(name, progress)| {
            let deletions: Vec<serde_json::Value> = progress
                .deletions
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "version": d.version,
                        "at": rfc3339(d.at_ms),
                        "rows_deleted": d.rows_deleted,
                        "files_rewritten": d.files_rewritten,
                    })
                })
                .collect();
            let purge = progress.purged.as_ref().map(|(at, detail)| {
                serde_json::json!({
                    "vacuumed_at": rfc3339(*at),
                    "log_expired_at": rfc3339(*at),
                    "files_vacuumed": detail["files_vacuumed"],
                    "log_starts_at_checkpoint": detail["checkpoint_version"],
                    "log_files_deleted": detail["log_files_deleted"],
                })
            });
            serde_json::json!({
                "table": name,
                "commit_versions": progress.deletions.iter().filter_map(|d| d.version).collect::<Vec<_>>(),
                "rows_deleted": progress.deletions.iter().map(|d| d.rows_deleted).sum::<i64>(),
                "files_rewritten": progress.deletions.iter().map(|d| d.files_rewritten).sum::<i64>(),
                "deletions": deletions,
                "purge": purge,
            })
        })
        .collect();
    let verification = request.verification.as_ref().map(|(at, passed, detail)| {
        serde_json::json!({"at": rfc3339(*at), "passed": passed, "checks": detail})
    });
    serde_json::json!({
        "request": {
            "id": request.id,
            "key_column": request.key_column,
            "key_value": request.key().value,
            "reason": request.reason,
            "requested_at": rfc3339(request.requested_ms),
            "deadline": rfc3339(request.deadline_ms),
        },
        "state": request.state(),
        "tables": tables,
        "verification": verification,
        "issued_at": rfc3339(now_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erase::ledger::{fold, EventKind, LedgerEvent};

    const DAY: i64 = 24 * 3600 * 1000;

    fn request(requested: i64, deleted: Option<i64>) -> Request {
        let mut filed = LedgerEvent::new("r", EventKind::Requested, requested);
        filed.table = Some("t".into());
        filed.key_column = Some("user_id".into());
        filed.key_value = Some("u".into());
        filed.deadline_ms = Some(requested + 30 * DAY);
        let mut events = vec![filed];
        if let Some(at) = deleted {
            let mut e = LedgerEvent::new("r", EventKind::Deleted, at);
            e.table = Some("t".into());
            events.push(e);
        }
        fold(&events).remove(0)
    }

    #[test]
    fn flags_requests_whose_purge_cannot_make_the_deadline() {
        let week = Duration::from_secs(7 * 24 * 3600);
        // Filed today, deleted today: purge in 7 days, deadline in 30.
        let fresh = status_row(&request(0, Some(0)), 0, week);
        assert_eq!((fresh.risk, fresh.days_left), ("on_track", 30));
        // Filed 25 days ago and still not applied: 7 days of retention no longer fit.
        let late = status_row(&request(0, None), 25 * DAY, week);
        assert_eq!(late.risk, "at_risk");
        let overdue = status_row(&request(0, Some(DAY)), 31 * DAY, week);
        assert_eq!((overdue.risk, overdue.days_left), ("overdue", -1));
    }
}
