//! Integration tests of weft-agents against a real nats-server (and, for the `openai`
//! provider, a local HTTP server speaking the Chat Completions wire format).

mod chat;
mod conformance;
mod openai;
mod support;
