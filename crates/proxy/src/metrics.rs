//! Per-workspace counters, rendered in the Prometheus text format (version 0.0.4).
//!
//! A handful of counters per workspace do not justify a metrics library: one mutex around a
//! map, taken briefly once per exchange, and a renderer that writes the text format by hand.

use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds (seconds) of the upstream latency histogram: from a local app answering at
/// once to one that needs a while after a wake-up.
const LATENCY_BUCKETS: [f64; 8] = [0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0];

/// Counters of the proxy and of workspace lifecycles, labelled with `owner/workspace`.
#[derive(Default)]
pub struct Metrics {
    workspaces: Mutex<BTreeMap<String, Counters>>,
}

#[derive(Default)]
struct Counters {
    requests_by_code: BTreeMap<u16, u64>,
    bytes_in: u64,
    bytes_out: u64,
    /// Per bucket, not cumulative; observations above the last bound only count in `latency_count`.
    latency_buckets: [u64; LATENCY_BUCKETS.len()],
    latency_sum: f64,
    latency_count: u64,
    wakes: u64,
    idle_stops: u64,
}

impl Metrics {
    /// One forwarded exchange: its status, the bytes of the request body (from the client)
    /// and of the response body (to the client), and the time to the upstream's response headers.
    pub fn record_request(&self, label: &str, status: u16, bytes_in: u64, bytes_out: u64, upstream_latency: Duration) {
        self.update(label, |counters| {
            *counters.requests_by_code.entry(status).or_default() += 1;
            counters.bytes_in += bytes_in;
            counters.bytes_out += bytes_out;
            let seconds = upstream_latency.as_secs_f64();
            if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
                counters.latency_buckets[bucket] += 1;
            }
            counters.latency_sum += seconds;
            counters.latency_count += 1;
        });
    }

    /// Bytes that went through a WebSocket after its upgrade request was recorded.
    pub(crate) fn record_bytes(&self, label: &str, bytes_in: u64, bytes_out: u64) {
        self.update(label, |counters| {
            counters.bytes_in += bytes_in;
            counters.bytes_out += bytes_out;
        });
    }

    /// A stopped workspace was started because someone wanted it.
    pub fn record_wake(&self, label: &str) {
        self.update(label, |counters| counters.wakes += 1);
    }

    /// A workspace was stopped because nobody used it.
    pub fn record_idle_stop(&self, label: &str) {
        self.update(label, |counters| counters.idle_stops += 1);
    }

    fn update(&self, label: &str, change: impl FnOnce(&mut Counters)) {
        // A panic elsewhere while holding the lock leaves counters that are still counters.
        let mut workspaces = self.workspaces.lock().unwrap_or_else(PoisonError::into_inner);
        match workspaces.get_mut(label) {
            Some(counters) => change(counters),
            None => change(workspaces.entry(label.to_string()).or_default()),
        }
    }

    /// All counters in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let workspaces = self.workspaces.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = render(&workspaces, &mut out);
        out
    }
}

fn render(workspaces: &BTreeMap<String, Counters>, out: &mut String) -> fmt::Result {
    let labels: Vec<(String, &Counters)> =
        workspaces.iter().map(|(label, counters)| (escape(label), counters)).collect();

    header(out, "cove_proxy_requests_total", "counter", "Requests forwarded to workspace apps, by response status.")?;
    for (workspace, counters) in &labels {
        for (code, count) in &counters.requests_by_code {
            writeln!(out, "cove_proxy_requests_total{{workspace=\"{workspace}\",code=\"{code}\"}} {count}")?;
        }
    }

    header(out, "cove_proxy_bytes_total", "counter", "Body bytes from clients (in) and to clients (out).")?;
    for (workspace, counters) in &labels {
        if counters.requests_by_code.is_empty() && counters.bytes_in == 0 && counters.bytes_out == 0 {
            continue;
        }
        writeln!(out, "cove_proxy_bytes_total{{workspace=\"{workspace}\",direction=\"in\"}} {}", counters.bytes_in)?;
        writeln!(out, "cove_proxy_bytes_total{{workspace=\"{workspace}\",direction=\"out\"}} {}", counters.bytes_out)?;
    }

    let latency = "cove_proxy_upstream_latency_seconds";
    header(out, latency, "histogram", "Time from sending a request upstream to its response headers.")?;
    for (workspace, counters) in &labels {
        if counters.latency_count == 0 {
            continue;
        }
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(counters.latency_buckets) {
            cumulative += count;
            writeln!(out, "{latency}_bucket{{workspace=\"{workspace}\",le=\"{bound}\"}} {cumulative}")?;
        }
        writeln!(out, "{latency}_bucket{{workspace=\"{workspace}\",le=\"+Inf\"}} {}", counters.latency_count)?;
        writeln!(out, "{latency}_sum{{workspace=\"{workspace}\"}} {}", counters.latency_sum)?;
        writeln!(out, "{latency}_count{{workspace=\"{workspace}\"}} {}", counters.latency_count)?;
    }

    header(out, "cove_wakes_total", "counter", "Stopped workspaces started on demand.")?;
    for (workspace, counters) in &labels {
        if counters.wakes > 0 {
            writeln!(out, "cove_wakes_total{{workspace=\"{workspace}\"}} {}", counters.wakes)?;
        }
    }

    header(out, "cove_idle_stops_total", "counter", "Workspaces stopped for being idle.")?;
    for (workspace, counters) in &labels {
        if counters.idle_stops > 0 {
            writeln!(out, "cove_idle_stops_total{{workspace=\"{workspace}\"}} {}", counters.idle_stops)?;
        }
    }
    Ok(())
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) -> fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_and_escapes() {
        let metrics = Metrics::default();
        // Durations exact in binary, so the sum is too.
        metrics.record_request("alice/api", 200, 10, 100, Duration::from_nanos(3_906_250));
        metrics.record_request("alice/api", 200, 5, 50, Duration::from_millis(250));
        metrics.record_request("alice/api", 502, 0, 40, Duration::from_secs(60));
        metrics.record_wake("alice/api");
        metrics.record_idle_stop("bob/web");
        metrics.record_idle_stop("bob/web");
        metrics.record_wake("we\"ird\\\n");

        let text = metrics.render();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# TYPE cove_proxy_requests_total counter",
            "cove_proxy_requests_total{workspace=\"alice/api\",code=\"200\"} 2",
            "cove_proxy_requests_total{workspace=\"alice/api\",code=\"502\"} 1",
            "cove_proxy_bytes_total{workspace=\"alice/api\",direction=\"in\"} 15",
            "cove_proxy_bytes_total{workspace=\"alice/api\",direction=\"out\"} 190",
            "# TYPE cove_proxy_upstream_latency_seconds histogram",
            "cove_proxy_upstream_latency_seconds_bucket{workspace=\"alice/api\",le=\"0.005\"} 1",
            "cove_proxy_upstream_latency_seconds_bucket{workspace=\"alice/api\",le=\"0.1\"} 1",
            "cove_proxy_upstream_latency_seconds_bucket{workspace=\"alice/api\",le=\"0.25\"} 2",
            "cove_proxy_upstream_latency_seconds_bucket{workspace=\"alice/api\",le=\"1\"} 2",
            "cove_proxy_upstream_latency_seconds_bucket{workspace=\"alice/api\",le=\"30\"} 2",
            "cove_proxy_upstream_latency_seconds_bucket{workspace=\"alice/api\",le=\"+Inf\"} 3",
            "cove_proxy_upstream_latency_seconds_sum{workspace=\"alice/api\"} 60.25390625",
            "cove_proxy_upstream_latency_seconds_count{workspace=\"alice/api\"} 3",
            "cove_wakes_total{workspace=\"alice/api\"} 1",
            "cove_wakes_total{workspace=\"we\\\"ird\\\\\\n\"} 1",
            "cove_idle_stops_total{workspace=\"bob/web\"} 2",
            "# HELP cove_idle_stops_total Workspaces stopped for being idle.",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        // A workspace that only stopped has no request series.
        assert!(!text.contains("cove_proxy_requests_total{workspace=\"bob/web\""), "{text}");
        assert!(!text.contains("cove_proxy_bytes_total{workspace=\"bob/web\""), "{text}");
    }

    #[test]
    fn empty_render_has_every_family() {
        let text = Metrics::default().render();
        for family in [
            "cove_proxy_requests_total",
            "cove_proxy_bytes_total",
            "cove_proxy_upstream_latency_seconds",
            "cove_wakes_total",
            "cove_idle_stops_total",
        ] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing in\n{text}");
        }
    }
}
