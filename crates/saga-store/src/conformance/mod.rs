//! The conformance suites every backend runs (River's `riverdrivertest` idea): the same checks
//! against a fresh, migrated store each time, each check its own test so one failure hides no
//! other and one check runs alone by name (`cargo nextest run -E 'test(claim_sets_lease)'`).
//!
//! A backend's integration tests instantiate them with a factory for fresh stores:
//! `saga_store::store_conformance!(fresh_store);` makes the modules `engine_conformance` (one
//! test per check of the engine's store, which `engine_store_conformance!` makes alone) and
//! `store_conformance` (the control plane's and delivery's ([`delivery`]) stores); `saga_store::tenant_storage_conformance!(fresh,
//! schema: Schema, …)` makes `tenant_storage_conformance::<mode>::<check>` for
//! each storage mode the backend offers (see [`tenant_storage`]).

pub mod claims;
pub mod control;
pub mod delivery;
mod fixtures;
pub mod jobs;
pub mod retention;
pub mod sagas;
pub mod signals;
pub mod tenant_storage;

pub use claims::*;
pub use control::*;
pub use delivery::*;
pub use jobs::*;
pub use retention::*;
pub use sagas::*;
pub use signals::*;

/// A failed conformance check.
pub type CheckResult = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}
pub(crate) use ensure;

pub(crate) fn db<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<T, String> {
    result.map_err(|e| format!("store error: {e}"))
}

/// One test per [`crate::EngineStore`] check, in a module `engine_conformance`; `$fresh` is an
/// async fn in the calling module returning a fresh store as an `Arc` of `dyn EngineStore` or
/// of any trait that extends it (the simulator's in-memory store runs exactly these).
#[macro_export]
macro_rules! engine_store_conformance {
    ($fresh:ident) => {
        $crate::store_conformance!(@tests engine_conformance, $fresh;
            definitions_version_on_change_only,
            sagas_create_idempotently,
            create_for_latest_refuses_a_moved_version,
            stalled_sagas_list_least_recently_moved_first_and_page,
            create_with_a_lease_is_claimed_already,
            concurrent_creates_with_one_key_make_one_saga,
            concurrent_mixed_creates_each_get_their_own_outcome,
            claim_sets_lease_and_bumps_token,
            stale_token_write_is_rejected,
            expired_lease_is_claimable,
            concurrent_claimers_never_share_a_saga,
            commits_append_history_and_schedule,
            heartbeat_renews_and_reports_lost_leases,
            concurrent_lease_writes_never_deadlock,
            released_lease_is_claimable_at_once,
            list_filters_and_pages,
            operator_update_is_conditional,
            cancel_request_stops_unacknowledged_commits,
            cancel_request_wakes_a_parked_saga_and_refuses_terminal,
            wake_makes_a_parked_saga_due_and_a_finished_create_is_finished,
            signals_are_buffered_in_order_and_wake,
            a_delivery_during_a_lease_makes_the_parked_saga_due,
            callbacks_complete_once_and_heartbeats_extend,
            a_callback_to_any_token_of_an_attempt_settles_it,
            admission_never_exceeds_the_key_limit,
            queue_facts_read_what_the_claim_reads,
            priority_goes_first_but_old_work_is_not_starved,
        );
    };
}

/// One test per [`crate::Store`] check: the engine's (module `engine_conformance`, see
/// [`engine_store_conformance!`]) and, in a module `store_conformance`, the schema's, the
/// control plane's and delivery's ([`delivery`]); `$fresh` is an async fn in the calling module
/// returning a fresh, migrated `Arc<dyn Store>`.
#[macro_export]
macro_rules! store_conformance {
    ($fresh:ident) => {
        $crate::engine_store_conformance!($fresh);
        $crate::store_conformance!(@tests store_conformance, $fresh;
            migrations_are_idempotent,
            tenants_are_created_with_their_saga_and_change_status_conditionally,
            tenant_changes_commit_with_the_transition_or_not_at_all,
            an_operator_update_changes_its_tenant_with_it_or_not_at_all,
            tenant_keys_users_and_webhook_receipts,
            tenant_keys_are_capped_per_tenant,
            subscriptions_are_stored_patched_rotated_and_deleted,
            events_reach_exactly_the_subscriptions_that_want_them,
            the_fan_out_follows_the_one_matching_rule,
            a_transitions_events_are_written_with_it_or_not_at_all,
            a_commit_matches_the_subscriptions_of_its_moment,
            an_events_expiry_comes_back_with_its_claim,
            a_refused_tenant_change_emits_nothing,
            addressed_events_reach_their_subscription_alone,
            deliveries_are_claimed_newest_first_once_and_fenced,
            released_deliveries_are_claimable_at_once_unattempted,
            failed_attempts_retry_then_die_and_are_replayed_and_recovered,
            a_tenants_own_subscriptions_are_capped,
            finished_sagas_go_with_everything_that_belongs_to_them,
            purges_take_the_longest_finished_first_in_bounded_batches,
            a_singleton_lease_has_one_owner_at_a_time,
            a_definitions_own_retention_decides_for_its_sagas,
            deleted_tenants_go_with_their_records_after_the_retention,
            a_batch_named_for_the_archive_deletes_only_what_is_still_due,
            finished_deliveries_go_and_their_events_with_the_last,
            a_jobs_items_are_chosen_once_and_each_acted_on_once,
            a_cancelled_job_stops_and_finished_jobs_are_purged,
        );
    };
    (@tests $module:ident, $fresh:ident; $($check:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let store = super::$fresh().await;
                    if let Err(failure) = $crate::conformance::$check(store).await {
                        panic!("{}: {failure}", stringify!($check));
                    }
                }
            )*
        }
    };
}

/// One test per [`crate::tenant_storage::TenantStorage`] check and storage mode, in modules
/// `tenant_storage_conformance::<mode>`; `$fresh` is an async fn in the calling module returning
/// a fresh `Arc<dyn TenantStorage>`. Name every mode the backend offers.
#[macro_export]
macro_rules! tenant_storage_conformance {
    ($fresh:ident, $($mode_name:ident: $variant:ident),+ $(,)?) => {
        mod tenant_storage_conformance {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn modes_it_does_not_offer_are_refused() {
                let offered = [$($crate::tenant_storage::StorageMode::$variant),+];
                let storage = super::$fresh().await;
                if let Err(failure) =
                    $crate::conformance::tenant_storage::modes_it_does_not_offer_are_refused(storage, &offered).await
                {
                    panic!("modes_it_does_not_offer_are_refused: {failure}");
                }
            }
            $(
                $crate::tenant_storage_conformance!(@mode $fresh, $mode_name, $crate::tenant_storage::StorageMode::$variant;
                    storage_is_made_once_and_dropped_idempotently,
                    migrations_apply_in_order_and_are_recorded_once,
                    an_edited_migration_is_refused,
                    a_failed_migration_keeps_nothing_and_can_be_retried,
                    access_can_be_stopped_and_restored,
                );
            )+
        }
    };
    (@mode $fresh:ident, $mode_name:ident, $mode:expr; $($check:ident),* $(,)?) => {
        mod $mode_name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let storage = super::super::$fresh().await;
                    if let Err(failure) = $crate::conformance::tenant_storage::$check(storage, $mode).await {
                        panic!("{}: {failure}", stringify!($check));
                    }
                }
            )*
        }
    };
}
