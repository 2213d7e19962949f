//! Core messaging: durable and fire-and-forget [publish] of envelopes, and core
//! [subscriptions](subscribe). It stands on the crate's foundation (the
//! [envelope](crate::envelope), [subjects](crate::subject), the [`Bus`](crate::Bus))
//! and on [`observe`](crate::observe).

pub mod publish;
pub mod subscribe;
