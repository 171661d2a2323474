//! The outbox and the claimed scheduled runs in PostgreSQL.

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row as _;

use super::{Fail, PgStore};
use crate::{Delivery, Message, MessageState, Queued, Run, StoreError};

/// The columns of [`PgStore::queued`], in order.
const QUEUED: &str =
    "seq, msg_id, topic, event, body, created_ms, state, attempts, next_ms, last_error";

impl PgStore {
    /// Stores messages in the caller's transaction, in their order; an id stored already (or
    /// being stored by another transaction, which this one waits for) is skipped.
    pub(super) async fn insert_messages(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
    ) -> Result<(), Fail> {
        for m in messages {
            sqlx::query(
                "INSERT INTO outbox (msg_id, topic, event, body, created_ms, state, attempts, \
                 next_ms) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $5) \
                 ON CONFLICT (msg_id) DO NOTHING",
            )
            .bind(&m.id)
            .bind(&m.topic)
            .bind(&m.event)
            .bind(&m.body)
            .bind(m.created_ms)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    pub(super) async fn due(&self, now_ms: i64, limit: u32) -> Result<Vec<Queued>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {QUEUED} FROM outbox WHERE state = 'pending' AND next_ms <= $1 \
             ORDER BY next_ms, seq LIMIT $2"
        ))
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter().map(|r| self.queued(r)).collect()
    }

    pub(super) async fn delivery(&self, seq: i64, outcome: Delivery) -> Result<(), StoreError> {
        let (state, at_ms, error) = match outcome {
            Delivery::Delivered { at_ms } => (MessageState::Delivered, at_ms, None),
            Delivery::Retry { at_ms, error } => (MessageState::Pending, at_ms, Some(error)),
            Delivery::Dropped { at_ms, reason } => (MessageState::Dropped, at_ms, Some(reason)),
        };
        // One statement: PostgreSQL checks `state` again on the row it waited for, so a drop
        // committed meanwhile is never undone.
        let done = sqlx::query(
            "UPDATE outbox SET state = $1, attempts = attempts + 1, next_ms = $2, \
             last_error = COALESCE($3, last_error) WHERE seq = $4 AND state = 'pending'",
        )
        .bind(state.as_str())
        .bind(at_ms)
        .bind(error)
        .bind(seq)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        if done.rows_affected() > 0 {
            return Ok(());
        }
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM outbox WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        match found {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound {
                arn: format!("outbox message {seq}"),
            }),
        }
    }

    pub(super) async fn drop_topic(
        &self,
        topic: &str,
        at_ms: i64,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'dropped', next_ms = $1, last_error = $2 \
             WHERE topic = $3 AND state = 'pending'",
        )
        .bind(at_ms)
        .bind(reason)
        .bind(topic)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(done.rows_affected())
    }

    pub(super) async fn topic_messages(
        &self,
        topic: &str,
        limit: u32,
    ) -> Result<Vec<Queued>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {QUEUED} FROM outbox WHERE topic = $1 ORDER BY seq DESC LIMIT $2"
        ))
        .bind(topic)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter().map(|r| self.queued(r)).collect()
    }

    fn queued(&self, r: &PgRow) -> Result<Queued, StoreError> {
        let get = |e: sqlx::Error| self.error(e);
        let state: String = r.try_get("state").map_err(get)?;
        let attempts: i64 = r.try_get("attempts").map_err(get)?;
        Ok(Queued {
            seq: r.try_get("seq").map_err(get)?,
            message: Message {
                id: r.try_get("msg_id").map_err(get)?,
                topic: r.try_get("topic").map_err(get)?,
                event: r.try_get("event").map_err(get)?,
                body: r.try_get("body").map_err(get)?,
                created_ms: r.try_get("created_ms").map_err(get)?,
            },
            state: MessageState::parse(&state).ok_or_else(|| {
                self.server_error(format!(
                    "an outbox message is in the unknown state {state:?}"
                ))
            })?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            next_ms: r.try_get("next_ms").map_err(get)?,
            last_error: r.try_get("last_error").map_err(get)?,
        })
    }

    pub(super) async fn claim(&self, run: &Run) -> Result<bool, StoreError> {
        // A second claim waits for the first one's transaction and then does nothing.
        let done = sqlx::query(
            "INSERT INTO schedule_runs (pipeline, at_ms, claimed_ms, image, note) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pipeline, at_ms) DO NOTHING",
        )
        .bind(&run.pipeline)
        .bind(run.at_ms)
        .bind(run.claimed_ms)
        .bind(&run.image)
        .bind(&run.note)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn finish(
        &self,
        pipeline: &str,
        at_ms: i64,
        image: Option<&str>,
        note: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE schedule_runs SET image = COALESCE($1, image), note = $2 \
             WHERE pipeline = $3 AND at_ms = $4",
        )
        .bind(image)
        .bind(note)
        .bind(pipeline)
        .bind(at_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                arn: format!("{pipeline} run at {at_ms}"),
            });
        }
        Ok(())
    }

    pub(super) async fn pipeline_runs(
        &self,
        pipeline: &str,
        limit: u32,
    ) -> Result<Vec<Run>, StoreError> {
        let rows = sqlx::query(
            "SELECT pipeline, at_ms, claimed_ms, image, note FROM schedule_runs \
             WHERE pipeline = $1 ORDER BY at_ms DESC LIMIT $2",
        )
        .bind(pipeline)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|r| {
                let get = |e: sqlx::Error| self.error(e);
                Ok(Run {
                    pipeline: r.try_get("pipeline").map_err(get)?,
                    at_ms: r.try_get("at_ms").map_err(get)?,
                    claimed_ms: r.try_get("claimed_ms").map_err(get)?,
                    image: r.try_get("image").map_err(get)?,
                    note: r.try_get("note").map_err(get)?,
                })
            })
            .collect()
    }
}
