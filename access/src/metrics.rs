//! What every part that serves sessions counts (the agent, and a gateway in front of agents), in one Prometheus
//! registry encoded as OpenMetrics text. No metric carries a task, container or user name, so a scraper that
//! did not authenticate (the agent's `metrics_listen`) learns volumes and outcomes, never who did what where.
//!
//! Names, all prefixed `dcos_exec_`: `sessions_total{outcome}`, `session_errors_total{code}`,
//! `sessions_active`, `denials_total{code}`, `session_start_seconds{kind}` (a histogram), `stdin_bytes_total`,
//! `output_bytes_total`, `build_info{component,version,revision}`; with images (the agent):
//! `image_pulls_total{result}` and `image_cache_bytes`. A gateway counts what it sees of the sessions it
//! relays instead of what only an agent knows (outcomes, start times, stdin and output): `sessions_active`,
//! `denials_total{code}`, `relays_total{result}`, `relayed_bytes_total{direction}` and `build_info`.

use dcos_exec_proto::ErrorCode;
use prometheus_client::encoding::EncodeLabelSet;
/// The counter type of [`Metrics::stdin_bytes`] and [`Metrics::output_bytes`].
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The content type of [`Metrics::encode`]'s text, which Prometheus asks for and understands.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How a session ended, as counted in `dcos_exec_sessions_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionOutcome {
    /// The process exited (any exit code).
    Exited,
    /// The process was killed by a signal while its client was there.
    Signaled,
    /// The process never ran, or the session failed (the wire code goes to `session_errors_total`).
    Failed,
    /// The client went away before the process ended; the session was hung up.
    Lost,
    /// The agent hung the session up because it was shutting down.
    Shutdown,
    /// Refused before the upgrade (the wire code goes to `denials_total`).
    Refused,
}

impl SessionOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionOutcome::Exited => "exited",
            SessionOutcome::Signaled => "signaled",
            SessionOutcome::Failed => "failed",
            SessionOutcome::Lost => "lost",
            SessionOutcome::Shutdown => "shutdown",
            SessionOutcome::Refused => "refused",
        }
    }
}

/// How a debug-image pull ended, as counted in `dcos_exec_image_pulls_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullResult {
    /// Fetched from its registry or layout (blobs already cached are not fetched again).
    Pulled,
    /// Served from the cache without asking the source.
    Cached,
    /// Not made ready: the session failed with `image_failed`.
    Failed,
}

/// How a gateway's relay of an exec request ended, as counted in `dcos_exec_relays_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayResult {
    /// The agent took the session (it answered the upgrade).
    Relayed,
    /// The agent refused the request (its own ACL, an unknown task, a limit): its answer was passed back.
    Refused,
    /// No connection to the agent, or no answer from it (`node_unreachable`).
    Unreachable,
}

impl RelayResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayResult::Relayed => "relayed",
            RelayResult::Refused => "refused",
            RelayResult::Unreachable => "unreachable",
        }
    }
}

impl PullResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PullResult::Pulled => "pulled",
            PullResult::Cached => "cached",
            PullResult::Failed => "failed",
        }
    }
}

/// The wire name of a code (`forbidden`, `task_not_found`, ...), as in error bodies and statuses.
pub fn code_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{code:?}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    component: String,
    version: String,
    revision: String,
}

/// Which part is counting: the agent also counts debug images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// `dcos-exec-agent`: sessions and debug images.
    Agent,
    /// A gateway: the sessions it relays and the requests it refuses.
    Gateway,
}

/// Every metric of one process; cheap to share (`Arc`), every update is an atomic add.
pub struct Metrics {
    registry: Registry,
    sessions: Family<OutcomeLabel, Counter>,
    session_errors: Family<CodeLabel, Counter>,
    active: Gauge,
    denials: Family<CodeLabel, Counter>,
    start: Family<KindLabel, Histogram, fn() -> Histogram>,
    stdin_bytes: Counter,
    output_bytes: Counter,
    image_pulls: Family<ResultLabel, Counter>,
    image_cache_bytes: Gauge,
    relays: Family<ResultLabel, Counter>,
    relayed_bytes: Family<DirectionLabel, Counter>,
}

/// From 1 ms to about 33 s: a plain exec starts in milliseconds, a debug session's cold pull takes seconds.
fn start_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    /// A registry for `component`, with its build (`version`, `revision`) in `dcos_exec_build_info`.
    pub fn new(component: Component, version: &str, revision: &str) -> Metrics {
        let mut registry = Registry::with_prefix("dcos_exec");
        let m = Metrics {
            sessions: Family::default(),
            session_errors: Family::default(),
            active: Gauge::default(),
            denials: Family::default(),
            start: Family::new_with_constructor(start_histogram as fn() -> Histogram),
            stdin_bytes: Counter::default(),
            output_bytes: Counter::default(),
            image_pulls: Family::default(),
            image_cache_bytes: Gauge::default(),
            relays: Family::default(),
            relayed_bytes: Family::default(),
            registry: Registry::default(),
        };
        let build: Family<BuildLabels, Gauge> = Family::default();
        let name = match component {
            Component::Agent => "agent",
            Component::Gateway => "gateway",
        };
        build
            .get_or_create(&BuildLabels { component: name.into(), version: version.into(), revision: revision.into() })
            .set(1);
        registry.register("build_info", "Version and git revision of the running binary (always 1)", build);
        registry.register("sessions_active", "Sessions open now", m.active.clone());
        registry.register("denials", "API requests refused (audited as denied), by wire error code", m.denials.clone());
        match component {
            Component::Agent => {
                registry.register(
                    "sessions",
                    "Sessions by outcome: exited, signaled, failed, lost (client gone), shutdown, refused (before the \
                     upgrade)",
                    m.sessions.clone(),
                );
                registry.register(
                    "session_errors",
                    "Sessions that failed after the upgrade, by wire error code",
                    m.session_errors.clone(),
                );
                registry.register(
                    "session_start_seconds",
                    "From the upgrade to the process running (a debug session's pull included), by kind: exec or debug",
                    m.start.clone(),
                );
                registry.register("stdin_bytes", "Bytes of stdin delivered to processes", m.stdin_bytes.clone());
                registry.register(
                    "output_bytes",
                    "Bytes of stdout and stderr read from processes",
                    m.output_bytes.clone(),
                );
                registry.register(
                    "image_pulls",
                    "Debug-image pulls by result: pulled, cached, failed",
                    m.image_pulls.clone(),
                );
                registry.register(
                    "image_cache_bytes",
                    "Bytes in the debug-image cache, as of start or the last pull that fetched or pruned",
                    m.image_cache_bytes.clone(),
                );
            }
            Component::Gateway => {
                registry.register(
                    "relays",
                    "Exec and debug requests passed to agents, by result: relayed, refused (by the agent), \
                     unreachable",
                    m.relays.clone(),
                );
                registry.register(
                    "relayed_bytes",
                    "Bytes of relayed sessions (WebSocket frames), by direction: to_agent, to_user",
                    m.relayed_bytes.clone(),
                );
            }
        }
        Metrics { registry, ..m }
    }

    /// A session ended; `error` is the wire code of a failed one.
    pub fn session_ended(&self, outcome: SessionOutcome, error: Option<ErrorCode>) {
        self.sessions.get_or_create(&OutcomeLabel { outcome: outcome.as_str() }).inc();
        if let (SessionOutcome::Failed, Some(code)) = (outcome, error) {
            self.session_errors.get_or_create(&CodeLabel { code: code_name(code) }).inc();
        }
    }

    /// A request was refused with `code` (an exec refused so is also a session ended as `Refused`).
    pub fn refused(&self, code: ErrorCode) {
        self.denials.get_or_create(&CodeLabel { code: code_name(code) }).inc();
    }

    /// Counts a session as active until the guard is dropped.
    pub fn active_session(&self) -> ActiveSession {
        self.active.inc();
        ActiveSession(self.active.clone())
    }

    /// How long the session took from its upgrade to a running process.
    pub fn started(&self, debug: bool, took: Duration) {
        let kind = if debug { "debug" } else { "exec" };
        self.start.get_or_create(&KindLabel { kind }).observe(took.as_secs_f64());
    }

    /// The stdin byte counter, for the pumps to add to as bytes flow.
    pub fn stdin_bytes(&self) -> Counter {
        self.stdin_bytes.clone()
    }

    /// The stdout-and-stderr byte counter, for the pumps to add to as bytes flow.
    pub fn output_bytes(&self) -> Counter {
        self.output_bytes.clone()
    }

    /// A gateway's relay of an exec request got its result.
    pub fn relay(&self, result: RelayResult) {
        self.relays.get_or_create(&ResultLabel { result: result.as_str() }).inc();
    }

    /// A relayed session ended, having carried these bytes each way.
    pub fn relayed(&self, to_agent: u64, to_user: u64) {
        self.relayed_bytes.get_or_create(&DirectionLabel { direction: "to_agent" }).inc_by(to_agent);
        self.relayed_bytes.get_or_create(&DirectionLabel { direction: "to_user" }).inc_by(to_user);
    }

    /// A debug-image pull ended.
    pub fn image_pull(&self, result: PullResult) {
        self.image_pulls.get_or_create(&ResultLabel { result: result.as_str() }).inc();
    }

    /// The image cache's size, measured at start and after a pull that fetched or pruned.
    pub fn set_image_cache_bytes(&self, bytes: u64) {
        self.image_cache_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The registry in OpenMetrics text (serve it with [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would leave a truncated but well-meant page.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One active session; dropping it ends the count.
pub struct ActiveSession(Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `line_start` (name with labels) in `text`.
    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn events_show_up_under_their_names_and_labels() {
        let m = Metrics::new(Component::Agent, "1.2.3", "abc1234");
        m.session_ended(SessionOutcome::Exited, None);
        m.session_ended(SessionOutcome::Exited, None);
        m.session_ended(SessionOutcome::Failed, Some(ErrorCode::CommandNotFound));
        m.refused(ErrorCode::Forbidden);
        m.session_ended(SessionOutcome::Refused, None);
        m.refused(ErrorCode::Unauthenticated);
        let guard = m.active_session();
        m.started(false, Duration::from_millis(3));
        m.started(true, Duration::from_millis(1500));
        m.stdin_bytes().inc_by(5);
        m.output_bytes().inc_by(7);
        m.image_pull(PullResult::Pulled);
        m.set_image_cache_bytes(4096);
        let t = m.encode();
        assert_eq!(sample(&t, r#"dcos_exec_sessions_total{outcome="exited"}"#), Some(2.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_sessions_total{outcome="failed"}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_sessions_total{outcome="refused"}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_session_errors_total{code="command_not_found"}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_denials_total{code="forbidden"}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_denials_total{code="unauthenticated"}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, "dcos_exec_sessions_active"), Some(1.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_session_start_seconds_count{kind="exec"}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_session_start_seconds_bucket{le="0.004",kind="exec"}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_session_start_seconds_bucket{le="0.002",kind="exec"}"#), Some(0.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_session_start_seconds_count{kind="debug"}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, "dcos_exec_stdin_bytes_total"), Some(5.0), "{t}");
        assert_eq!(sample(&t, "dcos_exec_output_bytes_total"), Some(7.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_image_pulls_total{result="pulled"}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, "dcos_exec_image_cache_bytes"), Some(4096.0), "{t}");
        assert_eq!(
            sample(&t, r#"dcos_exec_build_info{component="agent",version="1.2.3",revision="abc1234"}"#),
            Some(1.0),
            "{t}"
        );
        assert!(t.ends_with("# EOF\n"), "{t}");
        drop(guard);
        assert_eq!(sample(&m.encode(), "dcos_exec_sessions_active"), Some(0.0));
    }

    #[test]
    fn a_gateway_counts_relays_and_nothing_only_an_agent_knows() {
        let m = Metrics::new(Component::Gateway, "1", "r");
        m.relay(RelayResult::Relayed);
        m.relay(RelayResult::Relayed);
        m.relay(RelayResult::Unreachable);
        m.relayed(10, 2000);
        m.refused(ErrorCode::Forbidden);
        let t = m.encode();
        for absent in ["image", "sessions_total", "session_start", "stdin_bytes", "output_bytes"] {
            assert!(!t.contains(absent), "{absent}: {t}");
        }
        assert_eq!(sample(&t, r#"dcos_exec_relays_total{result="relayed"}"#), Some(2.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_relays_total{result="unreachable"}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_relayed_bytes_total{direction="to_agent"}"#), Some(10.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_relayed_bytes_total{direction="to_user"}"#), Some(2000.0), "{t}");
        assert_eq!(sample(&t, r#"dcos_exec_denials_total{code="forbidden"}"#), Some(1.0), "{t}");
        assert_eq!(sample(&t, "dcos_exec_sessions_active"), Some(0.0), "{t}");
        assert!(t.contains(r#"component="gateway""#), "{t}");
    }
}
