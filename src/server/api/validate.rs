//! Input validation before anything is proposed: bad input gets a 4xx naming the
//! field and never reaches the Raft log.

use super::ApiError;
use crate::schedule::CronSchedule;
use crate::state::{JobSpec, Processor, Schedule};

pub const MAX_NAME: usize = 64;
pub const MAX_DESCRIPTION: usize = 4096;
pub const MAX_COMMAND: usize = 64 * 1024;
pub const MAX_RETRIES: u32 = 100;
/// An HTTP job's URL.
pub const MAX_URL: usize = 2048;
/// An HTTP job's headers: how many, and the bytes of one name, one value and all.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_NAME: usize = 256;
pub const MAX_HEADER_VALUE: usize = 8 * 1024;
pub const MAX_HEADERS_TOTAL: usize = 32 * 1024;
/// An HTTP job's request body.
pub const MAX_HTTP_BODY: usize = 256 * 1024;
/// Parameters (a job's, a run's, a custom processor's): encoded size and nesting.
/// They travel in every log entry, snapshot and dispatch that carries them.
pub const MAX_PARAMS_BYTES: usize = 64 * 1024;
pub const MAX_JSON_DEPTH: usize = 32;

/// Free-form JSON a user hands to processors: at most [`MAX_PARAMS_BYTES`] encoded
/// and [`MAX_JSON_DEPTH`] levels deep.
pub fn params(field: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    fn depth(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let d = depth(value);
    if d > MAX_JSON_DEPTH {
        return Err(ApiError::invalid(
            field,
            format!("nested {d} levels deep; at most {MAX_JSON_DEPTH}"),
        ));
    }
    let size = serde_json::to_vec(value).map_or(usize::MAX, |b| b.len());
    if size > MAX_PARAMS_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("{size} bytes as JSON; at most {MAX_PARAMS_BYTES}"),
        ));
    }
    Ok(())
}

/// Names: 1 to 64 of letters, digits, `.`, `_` and `-`.
pub fn name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > MAX_NAME {
        return Err(ApiError::invalid(
            field,
            format!("{field} must have 1 to {MAX_NAME} characters"),
        ));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(ApiError::invalid(
            field,
            format!("{field} may contain only letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

pub fn job_spec(spec: &JobSpec) -> Result<(), ApiError> {
    name("app", &spec.app)?;
    name("name", &spec.name)?;
    if spec.description.len() > MAX_DESCRIPTION {
        return Err(ApiError::invalid(
            "description",
            format!("at most {MAX_DESCRIPTION} bytes"),
        ));
    }
    schedule(&spec.schedule)?;
    processor(&spec.processor)?;
    if spec.retries > MAX_RETRIES {
        return Err(ApiError::invalid(
            "retries",
            format!("at most {MAX_RETRIES}"),
        ));
    }
    if spec.timeout_ms == Some(0) {
        return Err(ApiError::invalid(
            "timeout_ms",
            "must be positive; omit it for no timeout",
        ));
    }
    if let Some(tag) = &spec.worker_tag {
        name("worker_tag", tag)?;
    }
    for w in &spec.designated_workers {
        name("designated_workers", w)?;
    }
    params("params", &spec.params)?;
    if let (Some(start), Some(end)) = (spec.start_at, spec.end_at) {
        if end <= start {
            return Err(ApiError::invalid("end_at", "end_at must be after start_at"));
        }
    }
    Ok(())
}

/// The shortest fixed rate: each fire is a Raft entry and an instance, so a 1 ms
/// rate would make one job flood the cluster.
pub const MIN_FIXED_RATE_MS: u64 = 100;

fn schedule(s: &Schedule) -> Result<(), ApiError> {
    match s {
        Schedule::Cron { expr, timezone, .. } => {
            CronSchedule::validate(expr, timezone.as_deref(), chrono::Utc::now()).map_err(|e| {
                let field = if matches!(e, crate::schedule::ScheduleError::TimeZone(_)) {
                    "schedule.timezone"
                } else {
                    "schedule.expr"
                };
                ApiError::invalid(field, e.to_string())
            })?;
        }
        Schedule::FixedRate { every_ms } if *every_ms < MIN_FIXED_RATE_MS => {
            return Err(ApiError::invalid(
                "schedule.every_ms",
                format!(
                    "must be at least {MIN_FIXED_RATE_MS} (every fire is a replicated instance)"
                ),
            ));
        }
        Schedule::FixedDelay { delay_ms } if *delay_ms == 0 => {
            return Err(ApiError::invalid("schedule.delay_ms", "must be at least 1"));
        }
        _ => {}
    }
    Ok(())
}

fn processor(p: &Processor) -> Result<(), ApiError> {
    match p {
        Processor::Shell { command } => {
            if command.trim().is_empty() || command.len() > MAX_COMMAND {
                return Err(ApiError::invalid(
                    "processor.command",
                    format!("1 to {MAX_COMMAND} bytes"),
                ));
            }
        }
        Processor::Http {
            method,
            url,
            headers,
            body,
            expect_status,
        } => {
            if url.len() > MAX_URL {
                return Err(ApiError::invalid(
                    "processor.url",
                    format!("at most {MAX_URL} bytes"),
                ));
            }
            if reqwest::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
                return Err(ApiError::invalid(
                    "processor.method",
                    format!("{method:?} is not an HTTP method"),
                ));
            }
            let parsed = reqwest::Url::parse(url).map_err(|e| {
                ApiError::invalid("processor.url", format!("{url:?} is not a URL: {e}"))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ApiError::invalid(
                    "processor.url",
                    "only http and https URLs are allowed",
                ));
            }
            http_headers(headers)?;
            if body.as_ref().is_some_and(|b| b.len() > MAX_HTTP_BODY) {
                return Err(ApiError::invalid(
                    "processor.body",
                    format!("at most {MAX_HTTP_BODY} bytes"),
                ));
            }
            if expect_status.is_empty() || expect_status.iter().any(|s| !(100..=599).contains(s)) {
                return Err(ApiError::invalid(
                    "processor.expect_status",
                    "one or more status codes from 100 to 599",
                ));
            }
        }
        Processor::Custom { name: n, params: p } => {
            name("processor.name", n)?;
            params("processor.params", p)?;
        }
    }
    Ok(())
}

/// Header names and values a request can carry, within the size limits.
fn http_headers(headers: &std::collections::BTreeMap<String, String>) -> Result<(), ApiError> {
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::invalid(
            "processor.headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut total = 0;
    for (n, v) in headers {
        let field = || {
            format!(
                "processor.headers.{}",
                n.chars().take(64).collect::<String>()
            )
        };
        if n.len() > MAX_HEADER_NAME
            || reqwest::header::HeaderName::from_bytes(n.as_bytes()).is_err()
        {
            return Err(ApiError::invalid(
                field(),
                format!("not a header name (an HTTP token of at most {MAX_HEADER_NAME} bytes)"),
            ));
        }
        if v.len() > MAX_HEADER_VALUE || reqwest::header::HeaderValue::from_str(v).is_err() {
            return Err(ApiError::invalid(
                field(),
                format!("not a header value (visible characters, spaces and tabs, at most {MAX_HEADER_VALUE} bytes)"),
            ));
        }
        total += n.len() + v.len();
    }
    if total > MAX_HEADERS_TOTAL {
        return Err(ApiError::invalid(
            "processor.headers",
            format!("{total} bytes in all; at most {MAX_HEADERS_TOTAL}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn http_job(processor: serde_json::Value) -> JobSpec {
        serde_json::from_value(json!({
            "app": "a", "name": "j", "schedule": {"type": "api"}, "processor": processor,
        }))
        .unwrap()
    }

    fn field_of(r: Result<(), ApiError>) -> String {
        match r {
            Err(ApiError::Invalid { field, .. }) => field.unwrap_or_default(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn nested(levels: usize) -> serde_json::Value {
        (0..levels).fold(json!(1), |v, _| json!([v]))
    }

    #[test]
    fn every_limit_names_its_field() {
        let ok = http_job(json!({"type": "http", "url": "https://example.com/x",
            "headers": {"X-Token": "abc"}, "body": "{}"}));
        assert!(job_spec(&ok).is_ok());

        let long_url = format!("https://example.com/{}", "a".repeat(MAX_URL));
        let cases = [
            (json!({"type": "http", "url": long_url}), "processor.url"),
            (
                json!({"type": "http", "url": "ftp://example.com/"}),
                "processor.url",
            ),
            (
                json!({"type": "http", "url": "https://x/", "headers": {"bad name": "v"}}),
                "processor.headers.bad name",
            ),
            (
                json!({"type": "http", "url": "https://x/", "headers": {"X-A": "line\nbreak"}}),
                "processor.headers.X-A",
            ),
            (
                json!({"type": "http", "url": "https://x/", "headers": {"X-A": "v".repeat(MAX_HEADER_VALUE + 1)}}),
                "processor.headers.X-A",
            ),
            (
                json!({"type": "http", "url": "https://x/", "body": "b".repeat(MAX_HTTP_BODY + 1)}),
                "processor.body",
            ),
            (
                json!({"type": "custom", "name": "noop", "params": nested(MAX_JSON_DEPTH + 1)}),
                "processor.params",
            ),
        ];
        for (processor, field) in cases {
            assert_eq!(
                field_of(job_spec(&http_job(processor.clone()))),
                field,
                "{processor}"
            );
        }
        let many: serde_json::Map<String, serde_json::Value> = (0..10)
            .map(|i| (format!("X-{i}"), json!("v".repeat(MAX_HEADER_VALUE - 10))))
            .collect();
        assert_eq!(
            field_of(job_spec(&http_job(
                json!({"type": "http", "url": "https://x/", "headers": many})
            ))),
            "processor.headers"
        );

        let mut spec = ok.clone();
        spec.params = json!({"blob": "x".repeat(MAX_PARAMS_BYTES)});
        assert_eq!(field_of(job_spec(&spec)), "params");
        spec.params = nested(MAX_JSON_DEPTH);
        assert!(job_spec(&spec).is_ok(), "exactly the limit is fine");
        assert_eq!(
            field_of(params("params", &nested(MAX_JSON_DEPTH + 1))),
            "params"
        );
    }
}
