//! Durable delivery (DESIGN §6): [durable consumers](consumer) with
//! [retry policies](crate::retry), [dead letters](dlq), [replay] of stored events, and
//! the mesh's JetStream [resources] they live in. It stands on [`messaging`](crate::messaging),
//! [`middleware`](crate::middleware) and [`observe`](crate::observe).

pub mod consumer;
pub mod dlq;
pub mod replay;
pub mod resources;
