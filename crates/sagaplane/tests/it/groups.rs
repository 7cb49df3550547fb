//! `parallel` and `for_each`, against the binary: branches run at once as child sagas of the
//! same definition, their outputs addressable by step name afterwards; a branch that fails for
//! good stops the others and every branch that completed is compensated, newest first, before
//! the steps before the group; `for_each` runs one branch per item with `{{ item }}` and
//! `{{ index }}`, at most `concurrency` at a time, and names the failed items.

use std::time::Duration;

use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{App, Backend, Participant};

use crate::BIN;

const WAIT: Duration = Duration::from_secs(60);

/// `account`, then two branches (`dns` → `tls`, and `billing`), then `welcome`, which reads a
/// branch step's output by name and fails when the input says so.
fn onboarding() -> Value {
    fast_definition(json!([
        {"name": "account", "action": {"http": {"url": "{{ vars.P }}/account"}},
         "compensation": {"http": {"url": "{{ vars.P }}/account-undo"}}},
        {"name": "setup", "parallel": [
            [{"name": "dns", "action": {"http": {"url": "{{ vars.P }}/dns"}},
              "compensation": {"http": {"url": "{{ vars.P }}/dns-undo"}}},
             {"name": "tls", "action": {"http": {"url": "{{ vars.P }}/tls", "body": {"account": "{{ steps.account.output }}"}}},
              "compensation": {"http": {"url": "{{ vars.P }}/tls-undo"}}}],
            [{"name": "billing", "action": {"http": {"url": "{{ vars.P }}/billing"}},
              "compensation": {"http": {"url": "{{ vars.P }}/billing-undo"}}}]
        ]},
        {"name": "welcome", "action": {"builtin": "core.echo", "input": {"billing": "{{ steps.billing.output }}"}}},
        {"name": "check", "when": "{{ input.fail }}", "action": {"builtin": "core.fail", "input": {"message": "refused"}}}
    ]))
}

async fn started(participant: &Participant, backend: Backend) -> App {
    let app = App::spawn(BIN, backend, &[("SAGAPLANE_VAR_P", participant.url.clone())]).await;
    assert_eq!(app.put_definition("onboarding", &onboarding()).await.0, 201);
    app
}

async fn parallel_branches_run_and_their_outputs_stay_addressable(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/billing", vec![(200, json!({"plan": "gold"}))]);
    let app = started(&participant, backend).await;
    let id = app.start("onboarding", json!({"fail": false})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(saga["output"]["welcome"]["billing"], json!({"plan": "gold"}), "{saga}");
    let setup = &saga["output"]["setup"];
    assert_eq!(setup["saga_ids"].as_array().map(Vec::len), Some(2), "{saga}");
    assert!(setup["steps"]["tls"].is_object() && setup["steps"]["dns"].is_object(), "{saga}");
    // The `tls` step saw the parent's `account` output.
    assert_eq!(participant.requests("/tls").len(), 1);
    let started: Vec<Value> = app.events(&id).await.into_iter().filter(|e| e["type"] == "branch_started").collect();
    assert_eq!(started.len(), 2, "{started:?}");
    let branch = app.saga(started[0]["data"]["child_saga_id"].as_str().unwrap_or_default()).await;
    assert_eq!(branch["parent"]["saga_id"], json!(id), "{branch}");
    assert_eq!(branch["definition"], "onboarding#setup", "a branch runs its parent's definition's group: {branch}");
    assert_eq!(branch["version"], 1, "{branch}");
    assert_eq!(branch["steps"].as_array().map(Vec::len), Some(2), "the branch's own steps: {branch}");
}
crate::on_both_backends!(parallel_branches_run_and_their_outputs_stay_addressable);

/// A step after the group fails: every branch step is compensated, and the step before the
/// group last.
async fn a_failure_after_the_group_undoes_every_branch_then_what_came_before(backend: Backend) {
    let participant = Participant::start().await;
    let app = started(&participant, backend).await;
    let id = app.start("onboarding", json!({"fail": true})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(crate::step_status(&saga, "setup"), json!("COMPENSATED"), "{saga}");
    for undo in ["/dns-undo", "/tls-undo", "/billing-undo", "/account-undo"] {
        assert_eq!(participant.requests(undo).len(), 1, "{undo}");
    }
    let order: Vec<String> =
        participant.all_requests().into_iter().map(|seen| seen.path).filter(|path| path.ends_with("-undo")).collect();
    assert_eq!(order.last().map(String::as_str), Some("/account-undo"), "before the group, last: {order:?}");
    let tls = order.iter().position(|p| p == "/tls-undo");
    let dns = order.iter().position(|p| p == "/dns-undo");
    assert!(tls < dns, "within a branch, newest first: {order:?}");
}
crate::on_both_backends!(a_failure_after_the_group_undoes_every_branch_then_what_came_before);

/// One branch fails for good: the group fails naming it, the other branch is undone, and so is
/// the step before.
async fn a_failed_branch_fails_the_group_and_the_rest_is_undone(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/billing", vec![(422, json!({"error": "card declined"}))]);
    let app = started(&participant, backend).await;
    let id = app.start("onboarding", json!({"fail": false})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    let message = saga["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("#1") && message.contains("setup"), "the failed branch is named: {saga}");
    assert_eq!(participant.requests("/billing-undo").len(), 0, "the branch that failed definitely did nothing");
    assert_eq!(participant.requests("/account-undo").len(), 1);
    // The other branch: whatever of it ran is undone.
    assert_eq!(participant.requests("/dns").len(), participant.requests("/dns-undo").len());
    assert_eq!(participant.requests("/tls").len(), participant.requests("/tls-undo").len());
}
crate::on_both_backends!(a_failed_branch_fails_the_group_and_the_rest_is_undone);

async fn for_each_runs_one_branch_per_item(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/migrate/search", vec![(422, json!({"error": "bad migration"}))]);
    let app = App::spawn(BIN, backend, &[("SAGAPLANE_VAR_P", participant.url.clone())]).await;
    let migrate = fast_definition(json!([
        {"name": "migrate", "for_each": "{{ input.services }}", "concurrency": 2,
         "step": {"name": "apply", "action": {"http": {"url": "{{ vars.P }}/migrate/{{ item }}", "body": {"index": "{{ index }}"}}},
                  "compensation": {"http": {"url": "{{ vars.P }}/rollback/{{ item }}"}}}}
    ]));
    assert_eq!(app.put_definition("migrate", &migrate).await.0, 201);
    let id = app.start("migrate", json!({"services": ["billing", "crm", "mail", "audit"]})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let items = saga["output"]["migrate"]["items"].as_array().cloned().unwrap_or_default();
    let named: Vec<&Value> = items.iter().map(|i| &i["item"]).collect();
    assert_eq!(named, [&json!("billing"), &json!("crm"), &json!("mail"), &json!("audit")], "{saga}");
    let bodies: Vec<Value> = participant.requests("/migrate/mail").into_iter().map(|r| r.body).collect();
    assert_eq!(bodies, [json!({"index": 2})], "{{ index }} keeps its type");

    // An item that fails: named in the error; the items that completed are rolled back.
    let id = app.start("migrate", json!({"services": ["billing", "search"]})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    let message = saga["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("#1 \"search\""), "{saga}");
    assert_eq!(participant.requests("/rollback/billing").len(), 1);
    assert_eq!(participant.requests("/rollback/search").len(), 0);

    // Not a list: the step fails definitely, saying what it rendered.
    let id = app.start("migrate", json!({"services": "billing"})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert!(saga["error"]["message"].as_str().unwrap_or_default().contains("must render a list"), "{saga}");
}
crate::on_both_backends!(for_each_runs_one_branch_per_item);

async fn groups_are_validated(backend: Backend) {
    let app = App::spawn(BIN, backend, &[]).await;
    let echo = json!({"builtin": "core.echo"});
    let bad = fast_definition(json!([
        {"parallel": [[{"name": "a", "action": echo}]]},
        {"name": "each", "for_each": "not a template", "steps": [{"name": "b", "action": echo, "pivot": true}]},
        {"parallel": [[{"name": "c", "action": echo}], [{"parallel": [[{"name": "d", "action": echo}], [{"name": "e", "action": echo}]]}]]},
        {"name": "a", "action": echo}
    ]));
    let (status, body) = app.put_definition("bad", &bad).await;
    assert_eq!(status, 422, "{body}");
    let paths: Vec<&str> = body["errors"].as_array().into_iter().flatten().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(
        paths,
        ["/steps/0/parallel", "/steps/1/for_each", "/steps/1/steps/0/pivot", "/steps/2/parallel/1/0"],
        "{body}"
    );
    // Names are unique across branches and the steps around them.
    let duplicate = fast_definition(json!([
        {"parallel": [[{"name": "a", "action": echo}], [{"name": "b", "action": echo}]]},
        {"name": "b", "action": echo}
    ]));
    let (status, body) = app.put_definition("duplicate", &duplicate).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("duplicate step name \\\"b\\\""), "{body}");
}
crate::on_both_backends!(groups_are_validated);

/// Past a pivot a failed branch leaves the saga FAILED; once the cause is fixed, an operator's
/// retry starts only the branch that undid itself afresh (a new generation) and keeps the one
/// that completed.
async fn a_retry_past_a_pivot_reruns_only_the_failed_branch(backend: Backend) {
    let participant = Participant::start().await;
    participant.script("/b", vec![(422, json!({"error": "not yet"}))]);
    let app = App::spawn(BIN, backend, &[("SAGAPLANE_VAR_P", participant.url.clone())]).await;
    let definition = fast_definition(json!([
        {"name": "charge", "pivot": true, "action": {"http": {"url": "{{ vars.P }}/charge"}}},
        {"name": "deliver", "parallel": [
            [{"name": "a", "action": {"http": {"url": "{{ vars.P }}/a"}}}],
            [{"name": "b", "action": {"http": {"url": "{{ vars.P }}/b"}}}]
        ]}
    ]));
    assert_eq!(app.put_definition("pivoted", &definition).await.0, 201);
    let id = app.start("pivoted", json!({})).await;
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "FAILED", "past the pivot: {saga}");
    assert_eq!(participant.requests("/a").len(), 1);

    participant.script("/b", vec![(200, json!({"ok": true}))]);
    let (status, _, body) = app.send(app.request(reqwest::Method::POST, &format!("/v1/sagas/{id}/retry"))).await;
    assert_eq!(status, 202, "{body}");
    let saga = app.wait_terminal(&id, WAIT).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(participant.requests("/a").len(), 1, "the completed branch is kept");
    assert_eq!(participant.requests("/b").len(), 2, "the failed branch ran again");
    let started: Vec<Value> = app.events(&id).await.into_iter().filter(|e| e["type"] == "branch_started").collect();
    assert_eq!(started.len(), 3, "two at first, one on the retry: {started:?}");
}
crate::on_both_backends!(a_retry_past_a_pivot_reruns_only_the_failed_branch);
