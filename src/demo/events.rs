//! A deterministic stream of ride-hailing events: riders request rides,
//! drivers accept them, rides complete or are cancelled, across a dozen
//! cities, with prices, coordinates and ratings, and a sprinkling of
//! malformed records (truncated JSON, wrong types, missing keys, bad
//! timestamps) for the dead-letter table.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const CITIES: [(&str, f64, f64, &str); 12] = [
    ("Lisbon", 38.72, -9.14, "EUR"),
    ("Madrid", 40.42, -3.70, "EUR"),
    ("Paris", 48.86, 2.35, "EUR"),
    ("Berlin", 52.52, 13.40, "EUR"),
    ("London", 51.51, -0.13, "GBP"),
    ("Dublin", 53.35, -6.26, "EUR"),
    ("Warsaw", 52.23, 21.01, "PLN"),
    ("Prague", 50.08, 14.44, "CZK"),
    ("Vienna", 48.21, 16.37, "EUR"),
    ("Milan", 45.46, 9.19, "EUR"),
    ("Oslo", 59.91, 10.75, "NOK"),
    ("Athens", 37.98, 23.73, "EUR"),
];
const PAYMENTS: [&str; 4] = ["card", "wallet", "cash", "voucher"];
const TAGS: [&str; 6] = ["airport", "night", "xl", "pet", "quiet", "eco"];

/// One generated event.
#[derive(Debug, Clone)]
pub struct GeneratedEvent {
    /// Message key (the rider's `user_id`, or empty for malformed records).
    pub key: String,
    /// The JSON bytes.
    pub payload: Vec<u8>,
    /// False for records meant to be dead-lettered.
    pub valid: bool,
}

/// Generates ride events; the same seed yields the same stream.
pub struct RideEvents {
    rng: StdRng,
    sequence: u64,
    bad_ratio: f64,
    users: u64,
    start_micros: i64,
}

impl RideEvents {
    /// A generator over `users` riders; `bad_ratio` of records are malformed.
    pub fn new(seed: u64, users: u64, bad_ratio: f64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            sequence: 0,
            bad_ratio,
            users: users.max(1),
            start_micros: chrono::Utc::now().timestamp_micros() - 36 * 3_600_000_000,
        }
    }

    /// The next event.
    pub fn next_event(&mut self) -> GeneratedEvent {
        self.sequence += 1;
        if self.rng.gen_bool(self.bad_ratio.clamp(0.0, 1.0)) {
            return self.malformed();
        }
        let user = self.rng.gen_range(0..self.users);
        let user_id = format!("u-{user:07}");
        let payload = self.valid_payload(&user_id);
        GeneratedEvent {
            key: user_id,
            payload,
            valid: true,
        }
    }

    fn valid_payload(&mut self, user_id: &str) -> Vec<u8> {
        let rng = &mut self.rng;
        let (city, lat, lon, currency) = CITIES[rng.gen_range(0..CITIES.len())];
        let stage = rng.gen_range(0..10);
        let event_type = match stage {
            0..=3 => "ride_requested",
            4..=6 => "ride_accepted",
            7..=8 => "ride_completed",
            _ => "ride_cancelled",
        };
        // Event times fall in the last ~36 hours, so the table has two or three dates.
        let event_micros = self.start_micros + rng.gen_range(0..36 * 3_600_000_000i64);
        let event_time = if rng.gen_bool(0.1) {
            json!(event_micros / 1000) // epoch millis, as some producers send
        } else {
            json!(chrono::DateTime::from_timestamp_micros(event_micros)
                .expect("in range")
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        let distance: f64 = rng.gen_range(0.8..35.0);
        let surge: f64 = if rng.gen_bool(0.2) {
            rng.gen_range(1.1..2.5)
        } else {
            1.0
        };
        let fare = ((2.5 + distance * 1.15) * surge * 100.0).round() / 100.0;
        let jitter = |rng: &mut StdRng| rng.gen_range(-0.08..0.08);
        let tags: Vec<&str> = (0..rng.gen_range(0..3))
            .map(|_| TAGS[rng.gen_range(0..TAGS.len())])
            .collect();
        let event = json!({
            "event_id": format!("e-{:012x}", self.sequence),
            "event_type": event_type,
            "event_time": event_time,
            "user_id": user_id,
            "driver_id": (stage > 3).then(|| format!("d-{:05}", rng.gen_range(0..5000))),
            "ride_id": format!("r-{:010}", self.sequence / 3),
            "city": city,
            "pickup": {"lat": lat + jitter(rng), "lon": lon + jitter(rng)},
            "dropoff": {"lat": lat + jitter(rng), "lon": lon + jitter(rng)},
            "fare_amount": fare,
            "currency": currency,
            "distance_km": (distance * 10.0).round() / 10.0,
            "surge_multiplier": surge,
            "payment_method": PAYMENTS[rng.gen_range(0..PAYMENTS.len())],
            "rating": (event_type == "ride_completed").then(|| rng.gen_range(1..=5)),
            "tags": tags,
        });
        serde_json::to_vec(&event).expect("event serializes")
    }

    fn malformed(&mut self) -> GeneratedEvent {
        let user_id = format!("u-{:07}", self.rng.gen_range(0..self.users));
        let good = self.valid_payload(&user_id);
        let text = String::from_utf8(good).expect("utf8");
        let payload = match self.rng.gen_range(0..4) {
            0 => text[..text.len() / 2].to_string(),
            1 => text.replacen(
                "\"fare_amount\":",
                "\"fare_amount\":\"about twelve\",\"x\":",
                1,
            ),
            // serde_json sorts keys, so `user_id` comes last, after a comma.
            2 => text.replacen(&format!(",\"user_id\":\"{user_id}\""), "", 1),
            _ => {
                let start = text.find("\"event_time\":").expect("has event_time");
                let end = start + text[start..].find(",\"").expect("more fields");
                format!(
                    "{}\"event_time\":\"not-a-time\"{}",
                    &text[..start],
                    &text[end..]
                )
            }
        };
        GeneratedEvent {
            key: String::new(),
            payload: payload.into_bytes(),
            valid: false,
        }
    }
}

/// The demo table's columns as config TOML (also used by tests and benchmarks).
pub const RIDES_TABLE_COLUMNS: &str = include_str!("../../fixtures/rides_columns.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_bad_records_are_marked() {
        let mut a = RideEvents::new(7, 100, 0.2);
        let mut b = RideEvents::new(7, 100, 0.2);
        let mut bad = 0;
        for _ in 0..500 {
            let (x, y) = (a.next_event(), b.next_event());
            assert_eq!(x.valid, y.valid);
            if x.valid {
                let value: serde_json::Value = serde_json::from_slice(&x.payload).unwrap();
                assert_eq!(value["user_id"], x.key.as_str());
            } else {
                bad += 1;
            }
        }
        assert!((50..150).contains(&bad), "about 20% malformed, got {bad}");
    }
}
