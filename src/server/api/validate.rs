//! Input validation before anything is proposed: bad input gets a 4xx naming the
//! field and never reaches the Raft log.

use super::ApiError;
use crate::schedule::CronSchedule;
use crate::state::{JobSpec, Processor, Schedule};

pub const MAX_NAME: usize = 64;
pub const MAX_DESCRIPTION: usize = 4096;
pub const MAX_COMMAND: usize = 64 * 1024;
pub const MAX_RETRIES: u32 = 100;

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
            expect_status,
            ..
        } => {
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
            if headers.len() > 64 {
                return Err(ApiError::invalid("processor.headers", "at most 64 headers"));
            }
            if expect_status.is_empty() || expect_status.iter().any(|s| !(100..=599).contains(s)) {
                return Err(ApiError::invalid(
                    "processor.expect_status",
                    "one or more status codes from 100 to 599",
                ));
            }
        }
        Processor::Custom { name: n, .. } => name("processor.name", n)?,
    }
    Ok(())
}
