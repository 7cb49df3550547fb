//! The built-in tenant sagas: ordinary definitions (readable in the API and the dashboard) whose
//! steps are tenant builtins. Operators may extend `tenant.provision` with their own steps by
//! PUTting a new version; [`check_extension`] refuses one that drops or reorders a built-in step.

use saga_core::{Action, Definition, FanOut, FieldError, StepDefinition};
use saga_store::{DefinitionStore, StoreError};
use serde_json::{json, Value};

pub const PROVISION: &str = "tenant.provision";
pub const DEPROVISION: &str = "tenant.deprovision";
pub const MIGRATE: &str = "tenant.migrate";
/// A rollout: starts one `tenant.migrate` saga per tenant behind, durably, in the background.
pub const ROLLOUT: &str = "tenant.rollout";
/// The step of `tenant.deprovision` that waits out a deletion's grace period (skipped without
/// one): its end moves the tenant from `SUSPENDED` to `DEPROVISIONING`.
pub const GRACE_STEP: &str = "grace";

/// True for the built-in tenant sagas, which only the tenant lifecycle may start.
pub fn is_tenant_saga(name: &str) -> bool {
    [PROVISION, DEPROVISION, MIGRATE, ROLLOUT].contains(&name)
}

/// Builtin step names.
pub mod steps {
    pub const RECORD: &str = "tenant.record";
    pub const STORAGE_CREATE: &str = "tenant.storage.create";
    pub const STORAGE_DROP: &str = "tenant.storage.drop";
    pub const MIGRATIONS_APPLY: &str = "tenant.migrations.apply";
    /// The services whose migrations a tenant saga applies (`input.service`, or all of them).
    pub const MIGRATION_SERVICES: &str = "tenant.migrations.services";
    pub const ACTIVATE: &str = "tenant.activate";
    pub const ACCESS_SUSPEND: &str = "tenant.access.suspend";
    pub const ACCESS_RESUME: &str = "tenant.access.resume";
    pub const KEYS_REVOKE: &str = "tenant.keys.revoke";
    pub const FINALIZE_DELETE: &str = "tenant.deprovision.finalize";
    pub const ROLLOUT_FAN_OUT: &str = "tenant.rollout.fan_out";
    pub const ALL: &[&str] = &[
        RECORD,
        STORAGE_CREATE,
        STORAGE_DROP,
        MIGRATIONS_APPLY,
        MIGRATION_SERVICES,
        ACTIVATE,
        ACCESS_SUSPEND,
        ACCESS_RESUME,
        KEYS_REVOKE,
        FINALIZE_DELETE,
        ROLLOUT_FAN_OUT,
    ];
}

fn retry() -> Value {
    json!({"max_attempts": 5, "initial_interval": "500ms", "multiplier": 2.0, "max_interval": "10s", "jitter": 0.1})
}

/// How many services' migrations a tenant saga applies at once unless
/// `SAGAPLANE_TENANT_MIGRATION_CONCURRENCY` says otherwise.
pub const MIGRATION_CONCURRENCY_DEFAULT: u32 = 4;

/// The services step and the per-service migrations group of the provision and migrate sagas:
/// one branch per service (`for_each`), `concurrency` at once, each applying that service's
/// migrations; a failure fails the saga forward (MIGRATION_ERROR) for an operator to fix the file
/// and retry, which runs again only the services that failed.
fn migration_steps(concurrency: u32) -> [Value; 2] {
    [
        json!({"name": "services", "action": {"builtin": steps::MIGRATION_SERVICES,
                                               "input": {"service": "{{ input.service | default(none) }}"}}}),
        json!({"name": "migrations", "for_each": "{{ steps.services.output.services }}", "concurrency": concurrency,
               "on_failure": "fail",
               "step": {"name": "migrate_service",
                        "action": {"builtin": steps::MIGRATIONS_APPLY, "input": {"service": "{{ item }}"}}}}),
    ]
}

/// `(name, document)` of every built-in tenant saga, with the default migration concurrency.
pub fn builtin_documents() -> Vec<(&'static str, Value)> {
    builtin_documents_with(MIGRATION_CONCURRENCY_DEFAULT)
}

/// `(name, document)` of every built-in tenant saga, applying `concurrency` services'
/// migrations at once.
pub fn builtin_documents_with(concurrency: u32) -> Vec<(&'static str, Value)> {
    let [services, migrations] = migration_steps(concurrency);
    vec![
        (
            PROVISION,
            json!({
                "name": PROVISION,
                "defaults": {"timeout": "5m", "retry": retry()},
                "steps": [
                    {"name": "record", "action": {"builtin": steps::RECORD}},
                    {"name": "storage", "action": {"builtin": steps::STORAGE_CREATE},
                     "compensation": {"builtin": steps::STORAGE_DROP}},
                    // A failing migration leaves the storage in place (MIGRATION_ERROR) for an
                    // operator to fix the file and retry this saga from here.
                    services.clone(),
                    migrations.clone(),
                    {"name": "activate", "action": {"builtin": steps::ACTIVATE}},
                ]
            }),
        ),
        (
            DEPROVISION,
            json!({
                "name": DEPROVISION,
                "defaults": {"timeout": "5m", "retry": retry()},
                "steps": [
                    {"name": "suspend_access", "action": {"builtin": steps::ACCESS_SUSPEND},
                     "compensation": {"builtin": steps::ACCESS_RESUME}},
                    {"name": GRACE_STEP, "when": "{{ input.delete_at | default('') }}",
                     "action": {"sleep": {"until": "{{ input.delete_at }}"}}},
                    {"name": "drop_storage", "pivot": true, "action": {"builtin": steps::STORAGE_DROP}},
                    {"name": "revoke_keys", "action": {"builtin": steps::KEYS_REVOKE}},
                    {"name": "finalize", "action": {"builtin": steps::FINALIZE_DELETE}},
                ]
            }),
        ),
        (
            MIGRATE,
            json!({
                "name": MIGRATE,
                "defaults": {"timeout": "10m", "retry": retry()},
                "steps": [
                    services,
                    migrations,
                    {"name": "activate", "action": {"builtin": steps::ACTIVATE}},
                ]
            }),
        ),
        (
            ROLLOUT,
            json!({
                "name": ROLLOUT,
                // Starting sagas for a large fleet takes a while; a re-run (after a crash or a
                // retry) skips the tenants it already moved, so it never starts one twice.
                "defaults": {"timeout": "1h", "retry": retry()},
                "steps": [
                    {"name": "fan_out", "action": {"builtin": steps::ROLLOUT_FAN_OUT,
                                                   "input": {"service": "{{ input.service | default(none) }}",
                                                             "concurrency": "{{ input.concurrency }}"}}},
                ]
            }),
        ),
    ]
}

/// A built-in document as every release installed it, all made alike: before `on_failure:
/// fail` on the migrations steps (a failing onboarding migration compensated everything then),
/// before the deprovision saga's `grace` step, and whatever migration concurrency it was made
/// with.
fn earlier_document(document: &Value) -> Value {
    let mut earlier = document.clone();
    if let Some(steps) = earlier["steps"].as_array_mut() {
        steps.retain(|step| step["name"] != GRACE_STEP);
        for step in steps.iter_mut().filter_map(Value::as_object_mut) {
            step.remove("on_failure");
            step.remove("concurrency");
        }
    }
    earlier
}

/// The provision and migrate sagas as releases before per-service migrations made them: one
/// `migrations` step applying every service's migrations in turn.
fn before_groups(name: &str, document: &Value) -> Value {
    let mut before = document.clone();
    let Some(steps) = before["steps"].as_array_mut() else { return before };
    let Some(at) = steps.iter().position(|s| s["name"] == "services") else { return before };
    steps.remove(at);
    let input = match name {
        MIGRATE => json!({"service": "{{ input.service | default(none) }}"}),
        _ => Value::Null,
    };
    let mut step = json!({"name": "migrations", "action": {"builtin": steps::MIGRATIONS_APPLY}, "on_failure": "fail"});
    if !input.is_null() {
        step["action"]["input"] = input;
    }
    steps[at] = step;
    before
}

/// Stores each built-in definition that has no version yet, and upgrades one whose latest
/// version is an earlier release's built-in document (or this release's with another migration
/// concurrency). An operator's extension of a tenant saga is never overwritten by a restart.
pub async fn install(store: &dyn DefinitionStore, now_ms: i64, concurrency: u32) -> Result<(), StoreError> {
    for (name, document) in builtin_documents_with(concurrency) {
        match store.definition_get(name, None).await {
            Ok(latest)
                if latest.document != document
                    && [earlier_document(&document), earlier_document(&before_groups(name, &document))]
                        .contains(&earlier_document(&latest.document)) =>
            {
                store.definition_put(name, &document, now_ms).await?;
            }
            Ok(_) => {}
            Err(StoreError::NotFound) => {
                store.definition_put(name, &document, now_ms).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn builtin_of(action: &Action) -> Option<&str> {
    match action {
        Action::Builtin(builtin) => Some(builtin.name.as_str()),
        _ => None,
    }
}

/// Where a definition uses tenant builtins: `(path, builtin)` for every action and compensation,
/// in step order, the steps of `parallel` and `for_each` groups included.
fn tenant_builtins(definition: &Definition) -> Vec<(String, &str)> {
    let mut used = Vec::new();
    collect_tenant_builtins("/steps", &definition.steps, &mut used);
    used
}

fn collect_tenant_builtins<'d>(base: &str, steps: &'d [StepDefinition], used: &mut Vec<(String, &'d str)>) {
    for (i, step) in steps.iter().enumerate() {
        if let Some(builtin) = builtin_of(&step.action).filter(|b| b.starts_with("tenant.")) {
            used.push((format!("{base}/{i}/action"), builtin));
        }
        if let Some(builtin) = step.compensation.as_ref().and_then(builtin_of).filter(|b| b.starts_with("tenant.")) {
            used.push((format!("{base}/{i}/compensation"), builtin));
        }
        if let Action::Group(group) = &step.action {
            match &group.fan_out {
                FanOut::Parallel(branches) => {
                    for (b, branch) in branches.iter().enumerate() {
                        collect_tenant_builtins(&format!("{base}/{i}/parallel/{b}"), branch, used);
                    }
                }
                FanOut::ForEach { steps, .. } => collect_tenant_builtins(&format!("{base}/{i}/steps"), steps, used),
            }
        }
    }
}

/// A new version of a built-in tenant saga must keep its built-in steps, in order, with their
/// compensations (other steps may go around them, using no tenant builtin). Other definitions may
/// not use the tenant builtins at all, as actions or as compensations.
pub fn check_extension(name: &str, definition: &Definition) -> Vec<FieldError> {
    let used = tenant_builtins(definition);
    let Some((_, required)) = builtin_documents().into_iter().find(|(n, _)| *n == name) else {
        return used
            .into_iter()
            .map(|(path, builtin)| FieldError {
                path,
                message: format!("{builtin} is a tenant builtin; it may only be used by the built-in tenant sagas"),
            })
            .collect();
    };
    let mut expected: Vec<(String, String)> = Vec::new();
    expected_builtins(&required["steps"], &mut expected);
    let found: Vec<(String, String)> = used.iter().map(|(path, b)| (kind_of(path), b.to_string())).collect();
    if found != expected {
        let list = |items: &[(String, String)]| {
            if items.is_empty() {
                "none".to_string()
            } else {
                items.iter().map(|(kind, b)| format!("{b} ({kind})")).collect::<Vec<_>>().join(", ")
            }
        };
        return vec![FieldError {
            path: "/steps".into(),
            message: format!(
                "{name} must keep its built-in steps and compensations in this order: {}; found {}",
                list(&expected),
                list(&found)
            ),
        }];
    }
    Vec::new()
}

/// The tenant builtins of a built-in document's steps, in order, groups' steps included.
fn expected_builtins(steps: &Value, expected: &mut Vec<(String, String)>) {
    for step in steps.as_array().into_iter().flatten() {
        for kind in ["action", "compensation"] {
            if let Some(builtin) = step[kind]["builtin"].as_str().filter(|b| b.starts_with("tenant.")) {
                expected.push((kind.to_string(), builtin.to_string()));
            }
        }
        if let Some(branches) = step["parallel"].as_array() {
            branches.iter().for_each(|branch| expected_builtins(branch, expected));
        }
        if step.get("step").is_some() {
            expected_builtins(&Value::Array(vec![step["step"].clone()]), expected);
        }
        expected_builtins(&step["steps"], expected);
    }
}

/// `action` or `compensation`, from a path made by [`tenant_builtins`].
fn kind_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(name: &str, document: &Value) -> Definition {
        let mut builtins: Vec<&str> = steps::ALL.to_vec();
        builtins.push("core.echo");
        saga_core::validate_definition(name, document, &builtins).expect("valid")
    }

    #[test]
    fn builtins_validate_and_pass_their_own_check() {
        for (name, document) in builtin_documents() {
            let definition = validate(name, &document);
            assert!(check_extension(name, &definition).is_empty(), "{name}");
        }
    }

    #[test]
    fn an_extension_keeps_the_builtin_steps() {
        let (_, mut document) = builtin_documents().remove(0);
        let steps = document["steps"].as_array_mut().expect("steps");
        steps.insert(3, json!({"name": "idp_realm", "action": {"builtin": "core.echo"}}));
        assert!(check_extension(PROVISION, &validate(PROVISION, &document)).is_empty());
        steps_without(&mut document, "migrations");
        let errors = check_extension(PROVISION, &validate(PROVISION, &document));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "/steps");
        let other = json!({"steps": [{"name": "sneaky", "action": {"builtin": steps::STORAGE_DROP}}]});
        assert_eq!(check_extension("custom", &validate("custom", &other))[0].path, "/steps/0/action");
        // Inside a group too.
        let grouped = json!({"steps": [{"parallel": [
            [{"name": "a", "action": {"builtin": "core.echo"}}],
            [{"name": "sneaky", "action": {"builtin": steps::STORAGE_DROP}}]]}]});
        assert_eq!(check_extension("custom", &validate("custom", &grouped))[0].path, "/steps/0/parallel/1/0/action");
    }

    #[test]
    fn the_optional_service_input_renders_to_null_when_absent() {
        let mut context = saga_core::template::TemplateContext {
            input: json!({}),
            tenant_id: Some("acme".into()),
            saga_id: "s".into(),
            step_outputs: serde_json::Map::new(),
            vars: serde_json::Map::new(),
            locals: serde_json::Map::new(),
        };
        let template = json!({"service": "{{ input.service | default(none) }}"});
        let rendered = saga_core::template::render_value(&template, &context).expect("renders");
        assert_eq!(rendered, json!({"service": null}));
        context.input = json!({"service": "accounts"});
        let rendered = saga_core::template::render_value(&template, &context).expect("renders");
        assert_eq!(rendered, json!({"service": "accounts"}));
    }

    /// A deployment of an earlier release holds the documents it installed: a restart moves them
    /// to this release's, with per-service migrations; another concurrency moves them too.
    #[test]
    fn the_documents_before_per_service_migrations_are_upgraded() {
        let retry = retry();
        let provision_before = json!({
            "name": PROVISION,
            "defaults": {"timeout": "5m", "retry": retry},
            "steps": [
                {"name": "record", "action": {"builtin": steps::RECORD}},
                {"name": "storage", "action": {"builtin": steps::STORAGE_CREATE},
                 "compensation": {"builtin": steps::STORAGE_DROP}},
                {"name": "migrations", "action": {"builtin": steps::MIGRATIONS_APPLY}, "on_failure": "fail"},
                {"name": "activate", "action": {"builtin": steps::ACTIVATE}},
            ]
        });
        let migrate_before = json!({
            "name": MIGRATE,
            "defaults": {"timeout": "10m", "retry": retry},
            "steps": [
                {"name": "migrations", "action": {"builtin": steps::MIGRATIONS_APPLY,
                                                  "input": {"service": "{{ input.service | default(none) }}"}},
                 "on_failure": "fail"},
                {"name": "activate", "action": {"builtin": steps::ACTIVATE}},
            ]
        });
        let now = builtin_documents_with(7);
        for (name, before) in [(PROVISION, provision_before), (MIGRATE, migrate_before)] {
            let (_, document) = now.iter().find(|(n, _)| *n == name).expect("built in");
            assert_eq!(earlier_document(&before_groups(name, document)), earlier_document(&before), "{name}");
            let (_, default) = builtin_documents().into_iter().find(|(n, _)| *n == name).expect("built in");
            assert_eq!(earlier_document(&default), earlier_document(document), "{name}: concurrency aside, the same");
        }
    }

    fn steps_without(document: &mut Value, step: &str) {
        if let Some(steps) = document["steps"].as_array_mut() {
            steps.retain(|s| s["name"] != step);
        }
    }
}
