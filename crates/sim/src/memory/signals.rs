//! Signals and async callbacks: buffered, each wakes its saga (a saga no driver holds is due
//! at once; a driver that parks it sees `wake_seq` moved).

use async_trait::async_trait;
use saga_store::{CallbackRecord, CallbackRegister, JobMark, SignalRecord, SignalStore, StoreError, StoreResult};
use serde_json::Value;
use uuid::Uuid;

use super::{conflict_status, Callback, MemoryStore, Signal, Tables};

/// Wakes an unfinished saga; false when it is terminal. NotFound when there is no such saga.
pub(super) fn wake(tables: &mut Tables, id: Uuid, now_ms: i64) -> StoreResult<bool> {
    let row = tables.sagas.get_mut(&id).ok_or(StoreError::NotFound)?;
    if !row.is_active() {
        return Ok(false);
    }
    let record = &mut row.record;
    record.wake_seq += 1;
    record.updated_at_ms = now_ms;
    if record.lease_owner.is_none() {
        record.run_at_ms = record.run_at_ms.min(now_ms);
    }
    Ok(true)
}

/// An open callback: not completed, deadline not passed.
fn open(callback: &Callback, now_ms: i64) -> bool {
    callback.completed_at_ms.is_none() && callback.deadline_at_ms.is_none_or(|deadline| deadline > now_ms)
}

#[async_trait]
impl SignalStore for MemoryStore {
    async fn signal_send(
        &self,
        id: Uuid,
        name: &str,
        payload: &Value,
        now_ms: i64,
        job: Option<&JobMark>,
    ) -> StoreResult<SignalRecord> {
        super::refuse_job(job)?;
        let mut tables = self.tables()?;
        if !wake(&mut tables, id, now_ms)? {
            let status = tables.sagas.get(&id).map(|r| r.record.status).ok_or(StoreError::NotFound)?;
            return Err(conflict_status(status));
        }
        let signal_id = tables.signals.len() as i64 + 1;
        tables.signals.push(Signal {
            id: signal_id,
            saga_id: id,
            name: name.to_string(),
            payload: payload.clone(),
            received_at_ms: now_ms,
        });
        drop(tables);
        self.notify_work();
        Ok(SignalRecord { id: signal_id, name: name.to_string(), payload: payload.clone(), received_at_ms: now_ms })
    }

    async fn signal_find(&self, id: Uuid, name: &str, consumed: &[i64]) -> StoreResult<Option<SignalRecord>> {
        let tables = self.tables()?;
        Ok(tables.signals.iter().find(|s| s.saga_id == id && s.name == name && !consumed.contains(&s.id)).map(|s| {
            SignalRecord {
                id: s.id,
                name: s.name.clone(),
                payload: s.payload.clone(),
                received_at_ms: s.received_at_ms,
            }
        }))
    }

    async fn callback_register(&self, params: CallbackRegister) -> StoreResult<()> {
        let mut tables = self.tables()?;
        if tables.callbacks.contains_key(&params.token_hash) {
            return Err(StoreError::Conflict("callback token exists".into()));
        }
        tables.callbacks.insert(
            params.token_hash.clone(),
            Callback {
                saga_id: params.saga_id,
                step: params.step,
                attempt: params.attempt,
                heartbeat_timeout_ms: params.heartbeat_timeout_ms,
                deadline_at_ms: params.heartbeat_timeout_ms.map(|t| params.now_ms + t),
                created_at_ms: params.now_ms,
                result: None,
                completed_at_ms: None,
            },
        );
        Ok(())
    }

    async fn callback_complete(&self, token_hash: &str, result: &Value, now_ms: i64) -> StoreResult<Uuid> {
        let mut tables = self.tables()?;
        let callback = tables.callbacks.get_mut(token_hash).filter(|c| open(c, now_ms)).ok_or(StoreError::NotFound)?;
        callback.result = Some(result.clone());
        callback.completed_at_ms = Some(now_ms);
        let saga_id = callback.saga_id;
        wake(&mut tables, saga_id, now_ms)?;
        drop(tables);
        self.notify_work();
        Ok(saga_id)
    }

    async fn callback_heartbeat(&self, token_hash: &str, now_ms: i64) -> StoreResult<()> {
        let mut tables = self.tables()?;
        let callback = tables.callbacks.get_mut(token_hash).filter(|c| open(c, now_ms)).ok_or(StoreError::NotFound)?;
        callback.deadline_at_ms = callback.heartbeat_timeout_ms.map(|t| now_ms + t);
        Ok(())
    }

    async fn callback_close(&self, id: Uuid, step: &str, attempt: u32, now_ms: i64) -> StoreResult<()> {
        let mut tables = self.tables()?;
        for callback in tables.callbacks.values_mut() {
            if callback.saga_id == id && callback.step == step && callback.attempt == attempt {
                callback.completed_at_ms = callback.completed_at_ms.or(Some(now_ms));
            }
        }
        Ok(())
    }

    async fn callback_get(&self, id: Uuid, step: &str, attempt: u32) -> StoreResult<Option<CallbackRecord>> {
        let tables = self.tables()?;
        Ok(tables
            .callbacks
            .values()
            .filter(|c| c.saga_id == id && c.step == step && c.attempt == attempt)
            .max_by_key(|c| (c.result.is_some(), c.deadline_at_ms, c.created_at_ms))
            .map(|c| CallbackRecord { result: c.result.clone(), deadline_at_ms: c.deadline_at_ms }))
    }
}
