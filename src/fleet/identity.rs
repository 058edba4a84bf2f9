//! A worker's stable identity: the id it joins Kafka consumer groups with
//! as a static member (`group.instance.id`), so a restarted worker takes
//! its partitions back without a rebalance of the whole group.
//!
//! The id comes from `--worker-id`, else `SLUICE_WORKER_ID`, else the host
//! name (a Kubernetes StatefulSet gives each pod a stable one). It must
//! stay the same across restarts of one worker and differ between workers
//! that run at the same time: two processes with one id fence each other
//! out of the group.

/// The environment variable that names the worker.
pub const WORKER_ID_ENV: &str = "SLUICE_WORKER_ID";

/// The worker id: `flag`, else `SLUICE_WORKER_ID`, else the host name;
/// checked to be a valid `group.instance.id`.
pub fn worker_id(flag: Option<&str>) -> Result<String, String> {
    let (id, origin) = match flag {
        Some(id) => (id.to_string(), "--worker-id"),
        None => match std::env::var(WORKER_ID_ENV) {
            Ok(id) if !id.trim().is_empty() => (id, WORKER_ID_ENV),
            _ => (
                host_name().ok_or(
                    "no host name to identify this worker; give --worker-id or SLUICE_WORKER_ID",
                )?,
                "the host name",
            ),
        },
    };
    check(&id).map_err(|reason| format!("worker id `{id}` (from {origin}) {reason}"))?;
    Ok(id)
}

/// Kafka's rule for group instance ids: 1 to 249 of `[A-Za-z0-9._-]`.
/// sluice adds the source's name, so it keeps the id to 200.
fn check(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 200 {
        return Err("must have 1 to 200 characters".into());
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "holds `{c}`; use letters, digits, `.`, `_` and `-`"
        )),
        None => Ok(()),
    }
}

/// The machine's host name.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

/// The static member id of `source` on worker `worker`.
pub fn instance_id(worker: &str, source: &str) -> String {
    let source: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{worker}.{source}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_kafkas_rules_and_name_their_origin() {
        assert_eq!(worker_id(Some("sluice-0")).unwrap(), "sluice-0");
        let bad = worker_id(Some("a b")).unwrap_err();
        assert!(bad.contains("--worker-id") && bad.contains("` `"), "{bad}");
        assert!(worker_id(Some("")).is_err());
        assert!(worker_id(Some(&"x".repeat(201))).is_err());
        assert_eq!(instance_id("w-1", "rides kafka"), "w-1.rides_kafka");
        // Without a flag the environment or the host name names the worker.
        assert!(worker_id(None).is_ok());
    }
}
