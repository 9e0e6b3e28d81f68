//! Refinements of the generated OpenAPI document, so `/openapi.json` describes what
//! the server really answers (checked by `make schemathesis`).

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{AdditionalProperties, Ref, Schema};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, Response, ResponseBuilder};

const PROBLEM: &str = "application/problem+json";

/// Errors every `/api/v1` route may answer, besides those each route declares.
const COMMON: &[(&str, &str)] = &[
    (
        "400",
        "Invalid input: a path id, a query parameter or a header (`validation_failed`)",
    ),
    ("401", "Missing or wrong bearer token (`unauthorized`)"),
    (
        "403",
        "The token may not do this (`forbidden`, `policy_denied`)",
    ),
    ("404", "Not found (`not_found`)"),
    (
        "429",
        "Too many failed token checks from this address (`too_many_failures`)",
    ),
    (
        "503",
        "No leader or outcome unknown; retry (`no_leader`, `outcome_unknown`)",
    ),
];

/// Errors of routes that write.
const WRITES: &[(&str, &str)] = &[
    (
        "409",
        "Conflicts with the current state (`already_exists`, `invalid_state`)",
    ),
    ("413", "The body is larger than 1 MiB (`payload_too_large`)"),
    (
        "415",
        "The body is not sent as JSON (`unsupported_media_type`)",
    ),
    (
        "422",
        "The Idempotency-Key was used with another request (`idempotency_key_reused`)",
    ),
];

fn problem(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                PROBLEM,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}

/// Error responses are problem documents (`application/problem+json`), and every
/// route lists the errors it can answer.
pub struct ProblemResponses;

impl utoipa::Modify for ProblemResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops: [(&mut Option<Operation>, bool); 5] = [
                (&mut item.get, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ];
            for (op, writes) in ops {
                let Some(op) = op.as_mut() else { continue };
                for (status, response) in op.responses.responses.iter_mut() {
                    let RefOr::T(r) = response else { continue };
                    if status.starts_with('4') || status.starts_with('5') {
                        if let Some(c) = r.content.shift_remove("application/json") {
                            r.content.insert(PROBLEM.to_string(), c);
                        }
                    }
                }
                if !path.starts_with("/api/v1/") {
                    continue;
                }
                let extra = COMMON.iter().chain(if writes { WRITES } else { &[] });
                for (status, why) in extra {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| problem(why));
                }
            }
        }
        open_job_spec_in_responses(openapi);
    }
}

/// `JobSpec` refuses unknown fields in requests (`additionalProperties: false`), but a
/// stored `Job` is the spec flattened with more fields (`id`, `version`, ...), so the
/// response schemas refer to an open copy, `JobSpecFields`.
fn open_job_spec_in_responses(openapi: &mut OpenApi) {
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    let Some(RefOr::T(Schema::Object(spec))) = components.schemas.get("JobSpec") else {
        return;
    };
    let mut open = spec.clone();
    open.additional_properties = None::<Box<AdditionalProperties<Schema>>>;
    components
        .schemas
        .insert("JobSpecFields".into(), RefOr::T(Schema::Object(open)));
    let spec_ref = Ref::from_schema_name("JobSpec").ref_location;
    for name in ["Job", "JobView", "JobCreated"] {
        if let Some(RefOr::T(Schema::AllOf(all))) = components.schemas.get_mut(name) {
            for item in all.items.iter_mut() {
                if let RefOr::Ref(r) = item {
                    if r.ref_location == spec_ref {
                        *item = RefOr::Ref(Ref::from_schema_name("JobSpecFields"));
                    }
                }
            }
        }
    }
}
