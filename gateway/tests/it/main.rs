//! Integration tests of weft-gateway: real HTTP over a socket (reqwest) against a
//! gateway bound to 127.0.0.1:0, on a real nats-server.

mod bodies;
mod common;
mod events;
mod invoke;
mod ops;
mod stream;
mod tls;
