//! The outbox and the claimed scheduled runs in SQLite (schema 3).

use sqlx::sqlite::SqliteRow;
use sqlx::{Row as _, SqliteConnection};

use super::SqliteStore;
use crate::{Delivery, Message, MessageState, Queued, Run, StoreError};

/// The columns of [`queued`], in order.
const QUEUED: &str =
    "seq, msg_id, topic, event, body, created_ms, state, attempts, next_ms, last_error";

impl SqliteStore {
    /// Stores messages in the caller's transaction; an id stored already is skipped.
    pub(super) async fn insert_messages(
        &self,
        conn: &mut SqliteConnection,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        for m in messages {
            sqlx::query(
                "INSERT INTO outbox (msg_id, topic, event, body, created_ms, state, attempts, \
                 next_ms) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?) ON CONFLICT (msg_id) DO NOTHING",
            )
            .bind(&m.id)
            .bind(&m.topic)
            .bind(&m.event)
            .bind(&m.body)
            .bind(m.created_ms)
            .bind(m.created_ms)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    pub(super) async fn enqueue_all(&self, messages: Vec<Message>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let result = self.insert_messages(&mut tx.conn, &messages).await;
        self.end(tx, result).await
    }

    pub(super) async fn due(&self, now_ms: i64, limit: u32) -> Result<Vec<Queued>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {QUEUED} FROM outbox WHERE state = 'pending' AND next_ms <= ? \
             ORDER BY next_ms, seq LIMIT ?"
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
        let mut tx = self.begin().await?;
        let result = async {
            let found: Option<String> =
                sqlx::query_scalar("SELECT state FROM outbox WHERE seq = ?")
                    .bind(seq)
                    .fetch_optional(&mut *tx.conn)
                    .await
                    .map_err(|e| self.error(e))?;
            match found.as_deref() {
                None => Err(StoreError::NotFound {
                    arn: format!("outbox message {seq}"),
                }),
                Some("pending") => {
                    sqlx::query(
                        "UPDATE outbox SET state = ?, attempts = attempts + 1, next_ms = ?, \
                         last_error = COALESCE(?, last_error) WHERE seq = ?",
                    )
                    .bind(state.as_str())
                    .bind(at_ms)
                    .bind(error)
                    .bind(seq)
                    .execute(&mut *tx.conn)
                    .await
                    .map_err(|e| self.error(e))?;
                    Ok(())
                }
                Some(_) => Ok(()),
            }
        }
        .await;
        self.end(tx, result).await
    }

    pub(super) async fn drop_topic(
        &self,
        topic: &str,
        at_ms: i64,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'dropped', next_ms = ?, last_error = ? \
             WHERE topic = ? AND state = 'pending'",
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
            "SELECT {QUEUED} FROM outbox WHERE topic = ? ORDER BY seq DESC LIMIT ?"
        ))
        .bind(topic)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter().map(|r| self.queued(r)).collect()
    }

    fn queued(&self, r: &SqliteRow) -> Result<Queued, StoreError> {
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
            state: MessageState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("an outbox message is in the unknown state {state:?}"),
            })?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            next_ms: r.try_get("next_ms").map_err(get)?,
            last_error: r.try_get("last_error").map_err(get)?,
        })
    }

    pub(super) async fn claim(&self, run: &Run) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO schedule_runs (pipeline, at_ms, claimed_ms, image, note) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (pipeline, at_ms) DO NOTHING",
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
            "UPDATE schedule_runs SET image = COALESCE(?, image), note = ? \
             WHERE pipeline = ? AND at_ms = ?",
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
             WHERE pipeline = ? ORDER BY at_ms DESC LIMIT ?",
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
