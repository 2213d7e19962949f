//! The MCP bridge (DESIGN §13), both ways, on the official Rust SDK ([`rmcp`]).
//!
//! - **Server** ([`server`]): the mesh as MCP tools. [`McpServer`] answers
//!   `initialize`, `tools/list` and `tools/call` from the registry, over Streamable
//!   HTTP at `/mcp` on the gateway ([`server::http_service`]) and over stdio
//!   (`weft mcp`, [`server::serve_stdio`]). Every endpoint of every registered
//!   service and agent is a tool by the rule of [`weft_bus::tool`]; registry changes
//!   send `notifications/tools/list_changed`.
//! - **Client** ([`attach`]): an external MCP server's tools as a service on the bus.
//!   [`attach::Bridge`] spawns a stdio server (or connects to a Streamable HTTP one),
//!   registers service `NAME` with one endpoint per tool and serves invokes by
//!   calling the tool; tool names that are not subject tokens are mapped reversibly
//!   ([`names`]).
//!
//! `docs/mcp.md` is the user's guide: host configuration, naming, auth, limits.

pub mod attach;
pub mod names;
pub mod server;

pub use attach::{AttachOptions, Bridge, McpSource};
pub use server::{McpOptions, McpServer};
