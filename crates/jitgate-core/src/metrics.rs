//! Prometheus metrics of design.md §6, registered once and shared by every crate.
//!
//! Families are created here so names, labels and help texts live in one place; front ends and
//! the control plane hold a cheap clone of [`Metrics`] and update the families directly.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// All jitgate metric families and their registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Open sessions.
    pub sessions_active: IntGaugeVec,
    /// Sessions ended, by outcome.
    pub sessions_total: IntCounterVec,
    /// Sessions killed by the gateway, by reason.
    pub sessions_killed_total: IntCounterVec,
    /// Statements seen, by class.
    pub queries_total: IntCounterVec,
    /// Statements refused under read-only grants.
    pub statements_denied_total: IntCounter,
    /// Statement duration.
    pub query_duration_seconds: Histogram,
    /// Bytes relayed.
    pub bytes_total: IntCounterVec,
    /// Authentication failures.
    pub auth_failures_total: IntCounterVec,
    /// Live grants.
    pub grants_active: IntGauge,
    /// Break-glass grants opened.
    pub break_glass_total: IntCounter,
    /// Break-glass reviews past their due time and still open.
    pub break_glass_reviews_overdue: IntGauge,
    /// Break-glass reviews still open.
    pub break_glass_reviews_open: IntGauge,
    /// Age of each on-call source's data.
    pub oncall_source_age_seconds: IntGaugeVec,
    /// 1 while a source's data is within its max_age.
    pub oncall_source_fresh: IntGaugeVec,
    /// Reads of on-call sources by result.
    pub oncall_polls_total: IntCounterVec,
    /// Requests entering each state.
    pub requests_total: IntCounterVec,
    /// Time from request to final approval.
    pub approval_latency_seconds: Histogram,
    /// Time from `expires_at` to the kill.
    pub expiry_kill_lag_seconds: Histogram,
    /// Store operation duration.
    pub store_operation_seconds: HistogramVec,
    /// Config reloads.
    pub config_reloads_total: IntCounterVec,
    /// Audit events written.
    pub audit_events_total: IntCounter,
    /// Log lines that could not be written (the reader of the log pipe went away).
    pub log_lines_dropped_total: IntCounter,
    /// 1, labelled with the running build's version and commit (set by `serve`).
    pub build_info: IntGaugeVec,
    /// Seconds until the TLS certificate a listener serves expires.
    pub tls_cert_expiry_seconds: IntGaugeVec,
    /// Webhook notifications by result (sent, failed, dropped).
    pub notifications_total: IntCounterVec,
    /// Audit events waiting for the writer (capacity 8192; emitters wait when it is full).
    pub audit_queue_depth: IntGauge,
    /// Requests waiting for approval.
    pub requests_pending: IntGauge,
    /// Age of the oldest pending request.
    pub requests_pending_oldest_seconds: prometheus::Gauge,
    /// Failures on the gateway's upstream leg (host key mismatch, login refused, unreachable).
    pub upstream_errors_total: IntCounterVec,
    /// Shared store: 1 while the store answers and its change feed is connected.
    pub store_up: IntGauge,
    /// Shared store: time from a change's commit on one replica to its arrival here.
    pub store_feed_lag_seconds: Histogram,
    /// Shared store: full re-reads of grants, kills and revocations, by reason.
    pub store_resyncs_total: IntCounterVec,
    /// Shared store: the store's clock minus this host's.
    pub store_clock_skew_seconds: prometheus::Gauge,
    /// Shared store: grant-cache misses read through to the store, by result.
    pub store_grant_reads_total: IntCounterVec,
}

/// Registers each family as it is made.
struct Reg(Registry);

impl Reg {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, m: M) -> prometheus::Result<M> {
        self.0.register(Box::new(m.clone()))?;
        Ok(m)
    }

    fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.register(IntCounter::new(name, help)?)
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.register(IntGauge::new(name, help)?)
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
        self.register(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        )?)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every family (and the process collector on Linux).
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        // The definitions below are constants; a failure is a programming error that the unit
        // test `every_family_of_the_design_is_exposed` catches before any release.
        Self::try_new().expect("constant metric definitions are valid")
    }

    /// Like [`Metrics::new`], reporting a definition error instead of panicking.
    pub fn try_new() -> prometheus::Result<Self> {
        let r = Reg(Registry::new());
        let lat = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];
        let m = Self {
            sessions_active: r.gauges("jitgate_sessions_active", "Open client sessions.", &["protocol", "resource"])?,
            sessions_total: r.counters(
                "jitgate_sessions_total",
                "Client sessions ended, by outcome.",
                &["protocol", "resource", "outcome"],
            )?,
            sessions_killed_total: r.counters(
                "jitgate_sessions_killed_total",
                "Sessions ended by the gateway, by reason.",
                &["reason"],
            )?,
            queries_total: r.counters(
                "jitgate_queries_total",
                "SQL statements relayed, by class.",
                &["resource", "class"],
            )?,
            statements_denied_total: r.counter(
                "jitgate_statements_denied_total",
                "Statements refused under read-only grants.",
            )?,
            query_duration_seconds: r.histogram(
                "jitgate_query_duration_seconds",
                "Statement duration seen at the gateway.",
                &lat,
            )?,
            bytes_total: r.counters("jitgate_bytes_total", "Bytes relayed.", &["protocol", "direction"])?,
            upstream_errors_total: r.counters(
                "jitgate_upstream_errors_total",
                "Failures connecting or logging in upstream, by protocol and reason (host_key_mismatch alerts).",
                &["protocol", "reason"],
            )?,
            auth_failures_total: r.counters(
                "jitgate_auth_failures_total",
                "Authentication failures.",
                &["protocol", "reason"],
            )?,
            grants_active: r.gauge("jitgate_grants_active", "Live grants in the grant cache.")?,
            break_glass_total: r.counter("jitgate_break_glass_total", "Break-glass grants opened.")?,
            break_glass_reviews_overdue: r.gauge(
                "jitgate_break_glass_reviews_overdue",
                "Break-glass reviews past their due time and still open (alert on > 0).",
            )?,
            break_glass_reviews_open: r.gauge("jitgate_break_glass_reviews_open", "Break-glass reviews still open.")?,
            oncall_source_age_seconds: r.gauges(
                "jitgate_oncall_source_age_seconds",
                "Seconds since each [[oncall]] source's data was current (its last good read, file time or generated_at); absent until the first good read.",
                &["source"],
            )?,
            oncall_source_fresh: r.gauges(
                "jitgate_oncall_source_fresh",
                "1 while an [[oncall]] source's data is within its max_age; 0: its on-call auto-approvals fall back to manual approval.",
                &["source"],
            )?,
            oncall_polls_total: r.counters(
                "jitgate_oncall_polls_total",
                "Reads of [[oncall]] sources (result: ok, error).",
                &["source", "result"],
            )?,
            requests_total: r.counters(
                "jitgate_requests_total",
                "Access requests entering each state.",
                &["state"],
            )?,
            approval_latency_seconds: r.histogram(
                "jitgate_approval_latency_seconds",
                "Time from request to final approval.",
                &[1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0],
            )?,
            expiry_kill_lag_seconds: r.histogram(
                "jitgate_expiry_kill_lag_seconds",
                "Time from a grant's end to its sessions being killed.",
                &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0],
            )?,
            store_operation_seconds: r.register(HistogramVec::new(
                HistogramOpts::new("jitgate_store_operation_seconds", "Store operation duration.").buckets(lat.to_vec()),
                &["op"],
            )?)?,
            config_reloads_total: r.counters(
                "jitgate_config_reloads_total",
                "Configuration reloads, by result.",
                &["result"],
            )?,
            audit_queue_depth: r.gauge(
                "jitgate_audit_queue_depth",
                "Audit events queued for the writer (capacity 8192; at capacity, sessions wait).",
            )?,
            requests_pending: r.gauge("jitgate_requests_pending", "Requests waiting for approval.")?,
            requests_pending_oldest_seconds: r.register(prometheus::Gauge::new(
                "jitgate_requests_pending_oldest_seconds",
                "Age of the oldest request waiting for approval (0 when none).",
            )?)?,
            audit_events_total: r.counter("jitgate_audit_events_total", "Audit events written.")?,
            build_info: r.gauges(
                "jitgate_build_info",
                "1, labelled with the running build's version and git commit.",
                &["version", "commit"],
            )?,
            tls_cert_expiry_seconds: r.gauges(
                "jitgate_tls_cert_expiry_seconds",
                "Seconds until the TLS certificate a listener serves expires (negative: expired).",
                &["listener"],
            )?,
            log_lines_dropped_total: r.counter(
                "jitgate_log_lines_dropped_total",
                "Log lines dropped because standard error could not be written (a log pipe whose reader went away).",
            )?,
            notifications_total: r.counters(
                "jitgate_notifications_total",
                "Webhook notifications, by result.",
                &["result"],
            )?,
            store_up: r.gauge(
                "jitgate_store_up",
                "1 while the store answers (and, when shared, its change feed is connected).",
            )?,
            store_feed_lag_seconds: r.histogram(
                "jitgate_store_feed_lag_seconds",
                "Shared store: time from a change's commit on one replica to its arrival on this one.",
                &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            )?,
            store_resyncs_total: r.counters(
                "jitgate_store_resyncs_total",
                "Shared store: full re-reads of the live state, by reason (reconnect, periodic, lagged).",
                &["reason"],
            )?,
            store_clock_skew_seconds: r.register(prometheus::Gauge::new(
                "jitgate_store_clock_skew_seconds",
                "The store's clock minus this host's (0 for the embedded store).",
            )?)?,
            store_grant_reads_total: r.counters(
                "jitgate_store_grant_reads_total",
                "Shared store: connections that found no grant in the cache and read the store (found: a grant not yet announced by the feed; none; error: refused, fail closed).",
                &["result"],
            )?,
            registry: r.0,
        };
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        m.precreate();
        Ok(m)
    }

    /// Pre-create the label sets operators alert on, so they read 0 rather than absent.
    fn precreate(&self) {
        let m = self;
        for s in crate::model::RequestState::ALL {
            m.requests_total.with_label_values(&[s.as_str()]);
        }
        for r in ["ok", "error"] {
            m.config_reloads_total.with_label_values(&[r]);
        }
        for r in ["sent", "failed", "dropped"] {
            m.notifications_total.with_label_values(&[r]);
        }
        for p in ["postgres", "ssh"] {
            for d in ["in", "out"] {
                m.bytes_total.with_label_values(&[p, d]);
            }
        }
        for r in ["expired", "revoked", "released", "killed", "shutdown"] {
            m.sessions_killed_total.with_label_values(&[r]);
        }
        for r in ["reconnect", "periodic", "lagged"] {
            m.store_resyncs_total.with_label_values(&[r]);
        }
        for r in ["found", "none", "error"] {
            m.store_grant_reads_total.with_label_values(&[r]);
        }
        m.store_up.set(1);
        for r in ["host_key_mismatch", "login_refused", "unreachable"] {
            m.upstream_errors_total.with_label_values(&["ssh", r]);
        }
        for (p, r) in [
            ("http", "invalid_token"),
            ("http", "unavailable"),
            ("postgres", "bad_token"),
            ("postgres", "unavailable"),
            ("ssh", "unknown_key"),
            ("oidc", "denied"),
        ] {
            m.auth_failures_total.with_label_values(&[p, r]);
        }
    }

    /// Render the text exposition format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_of_the_design_is_exposed() {
        let m = Metrics::new();
        m.grants_active.set(2);
        m.sessions_active.with_label_values(&["postgres", "prod-db"]).set(1);
        m.sessions_total.with_label_values(&["postgres", "prod-db", "ok"]).inc();
        m.sessions_killed_total.with_label_values(&["expired"]).inc();
        m.queries_total.with_label_values(&["prod-db", "read"]).inc();
        m.statements_denied_total.inc();
        m.query_duration_seconds.observe(0.001);
        m.bytes_total.with_label_values(&["postgres", "in"]).inc();
        m.auth_failures_total
            .with_label_values(&["postgres", "bad_token"])
            .inc();
        m.approval_latency_seconds.observe(3.0);
        m.expiry_kill_lag_seconds.observe(0.01);
        m.store_operation_seconds.with_label_values(&["x"]).observe(0.01);
        let text = m.render();
        for name in [
            "jitgate_sessions_active",
            "jitgate_sessions_total",
            "jitgate_sessions_killed_total",
            "jitgate_queries_total",
            "jitgate_statements_denied_total",
            "jitgate_query_duration_seconds",
            "jitgate_bytes_total",
            "jitgate_auth_failures_total",
            "jitgate_grants_active",
            "jitgate_requests_total",
            "jitgate_approval_latency_seconds",
            "jitgate_expiry_kill_lag_seconds",
            "jitgate_store_operation_seconds",
            "jitgate_config_reloads_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
