//! Integration tests of weft-agents against a real nats-server (and, for the `openai`
//! provider, a local HTTP server speaking the Chat Completions wire format), and the
//! cross-provider conformance suite (`conformance`: local fixtures speaking each
//! provider's wire format; no NATS needed).

mod builtins;
mod chat;
mod conformance;
mod durable;
mod openai;
mod support;
