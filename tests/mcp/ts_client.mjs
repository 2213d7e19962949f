// An MCP client built on the official TypeScript SDK (@modelcontextprotocol/sdk 1.32.2), run
// by the Rust e2e tests against Weft's MCP server (see README.md beside this file).
//
//   node ts_client.mjs --url URL [--token T] [--check NAME]...
//   node ts_client.mjs --stdio [--check NAME]... -- CMD ARGS...
//
// --url talks Streamable HTTP to URL (with `Authorization: Bearer T` when --token is given);
// --stdio launches CMD ARGS... and talks to it over its stdin/stdout (it inherits this
// process's environment; its stderr goes to ours). --check selects checks (repeatable;
// default all, in the order of CHECKS below). The SDK is imported from $MCP_NODE_MODULES, as
// printed by scripts/install-mcp-clients.
//
// Prints one JSON object on stdout:
//   {"protocolVersion": ..., "checks": {NAME: {"ok": bool, "detail": ...}}}
// and exits 0 only if every selected check is ok. The list_changed check prints the line
// `READY list_changed` on stderr once it listens, and then waits for the harness to register
// service `late`.

import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

// The SDK lives outside the checkout and ESM ignores NODE_PATH, so its modules are imported
// by path; `dist/esm/` is where the package's exports map sends `import`.
if (!process.env.MCP_NODE_MODULES) {
  console.error('ts_client.mjs: set MCP_NODE_MODULES (see scripts/install-mcp-clients)');
  process.exit(2);
}
const sdkRoot = pathToFileURL(join(process.env.MCP_NODE_MODULES, '@modelcontextprotocol/sdk/dist/esm/'));
const sdk = (module) => import(new URL(module, sdkRoot).href);
const { Client } = await sdk('client/index.js');
const { StreamableHTTPClientTransport } = await sdk('client/streamableHttp.js');
const { StdioClientTransport } = await sdk('client/stdio.js');
const { ErrorCode, McpError, ToolListChangedNotificationSchema } = await sdk('types.js');

const CLASSIFY_ARGS = { title: 'Cannot log in', body: 'password reset fails' };
const CHECK_TIMEOUT_MS = 30_000; // no check may hang the test
const LIST_CHANGED_WAIT_MS = 10_000;
const GET_STREAM_WAIT_MS = 5_000;
const CANCEL_AFTER_MS = 500;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with `promise`, or rejects once `ms` have passed. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A one-shot signal that can be awaited, with a bound on the wait. */
class Signal {
  constructor() {
    this.fired = false;
    this.promise = new Promise((resolve) => (this.resolve = resolve));
  }
  fire() {
    this.fired = true;
    this.resolve();
  }
  /** Waits up to `ms`; true when it fired. */
  wait(ms) {
    return Promise.race([this.promise.then(() => true), sleep(ms).then(() => false)]);
  }
}

/** A connected client plus what the checks observe outside of request/response. */
class Session {
  constructor(overHttp) {
    this.overHttp = overHttp;
    this.client = null;
    this.protocolVersion = null;
    this.toolsChanged = new Signal();
    // Streamable HTTP: list_changed comes on the GET stream, which the SDK opens in the
    // background after initialize. Fired when its response arrives.
    this.getStreamStatus = null;
    this.getStreamAnswered = new Signal();
  }

  /** fetch for the HTTP transport: notes the status of the first GET stream. */
  fetch = async (url, init) => {
    const response = await fetch(url, init);
    if (init?.method === 'GET' && !this.getStreamAnswered.fired) {
      this.getStreamStatus = response.status;
      this.getStreamAnswered.fire();
    }
    return response;
  };
}

const rpcError = (error) => ({ code: error.code, message: error.message });
const firstText = (result) => (result.content?.[0]?.type === 'text' ? result.content[0].text : undefined);

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Deep equality of two JSON values. */
function jsonEqual(a, b) {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((key) => jsonEqual(a[key], b[key]));
}

async function expectInvalidParams(session, name, args) {
  try {
    const result = await session.client.callTool({ name, arguments: args });
    return [false, { unexpected_result: result }];
  } catch (error) {
    if (!(error instanceof McpError)) throw error;
    return [error.code === ErrorCode.InvalidParams, rpcError(error)];
  }
}

const toolNames = async (client) => (await client.listTools()).tools.map((tool) => tool.name).sort();

const CHECKS = {
  // tools/list has tickets_classify: an object inputSchema with a string body, title required.
  async list_tools(session) {
    const { tools } = await session.client.listTools();
    const names = tools.map((tool) => tool.name).sort();
    const classify = tools.find((tool) => tool.name === 'tickets_classify');
    if (!classify) return [false, { error: 'no tool tickets_classify', tools: names }];
    const schema = classify.inputSchema;
    const required = schema.required ?? [];
    const ok =
      schema.type === 'object' && required.includes('title') && schema.properties?.body?.type === 'string';
    return [ok, { tools: names, inputSchema: schema }];
  },

  // tickets_classify answers with structuredContent {category, priority}, also as JSON text.
  async call(session) {
    const result = await session.client.callTool({ name: 'tickets_classify', arguments: CLASSIFY_ARGS });
    const structured = result.structuredContent;
    const text = firstText(result);
    const ok =
      !result.isError &&
      typeof structured === 'object' &&
      structured !== null &&
      'category' in structured &&
      'priority' in structured &&
      text !== undefined &&
      jsonEqual(parseJson(text), structured);
    return [ok, result];
  },

  // tickets_classify with {"title": 5} is a JSON-RPC error -32602.
  async schema_violation(session) {
    // An unknown tool is -32602 too: make sure this one is known, so the error is the schema's.
    if (!(await toolNames(session.client)).includes('tickets_classify')) {
      return [false, { error: 'no tool tickets_classify' }];
    }
    return expectInvalidParams(session, 'tickets_classify', { title: 5 });
  },

  // Calling no_such_tool is a JSON-RPC error -32602.
  unknown_tool: (session) => expectInvalidParams(session, 'no_such_tool', {}),

  // tickets_get of a missing id is an isError result whose text is JSON {code, message}.
  async bus_error(session) {
    const result = await session.client.callTool({ name: 'tickets_get', arguments: { id: 'does-not-exist' } });
    const error = parseJson(firstText(result) ?? '');
    const ok =
      result.isError === true &&
      typeof error === 'object' &&
      error !== null &&
      typeof error.code === 'string' &&
      typeof error.message === 'string';
    return [ok, result];
  },

  // After READY, a tools/list_changed notification comes and the new list has a late_ tool.
  async list_changed(session) {
    const detail = { via: 'notification', notifications: 0, tools: null };
    if (session.overHttp) {
      // The notification comes on the GET stream: wait until it is open (or refused).
      await session.getStreamAnswered.wait(GET_STREAM_WAIT_MS);
      detail.getStreamStatus = session.getStreamStatus;
    }
    session.toolsChanged = new Signal(); // only changes from now on count
    process.stderr.write('READY list_changed\n');
    // Relist on every change notification until a `late_` tool shows up.
    const deadline = Date.now() + LIST_CHANGED_WAIT_MS;
    while (await session.toolsChanged.wait(deadline - Date.now())) {
      session.toolsChanged = new Signal();
      detail.notifications += 1;
      detail.tools = await toolNames(session.client);
      if (detail.tools.some((name) => name.startsWith('late_'))) break;
    }
    const ok = detail.notifications > 0 && (detail.tools ?? []).some((name) => name.startsWith('late_'));
    return [ok, detail];
  },

  // test_stream, called with a progress token, sends progress notifications and succeeds.
  async progress(session) {
    const updates = [];
    const result = await session.client.callTool({ name: 'test_stream', arguments: {} }, undefined, {
      onprogress: (progress) => updates.push(progress),
    });
    return [updates.length >= 1 && !result.isError, { progress: updates, result }];
  },

  // test_slow, which runs until cancelled, is cancelled from the client after 500 ms.
  async cancel(session) {
    // Aborting the signal makes the SDK send notifications/cancelled and reject the call.
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), CANCEL_AFTER_MS);
    const detail = { cancelled: false, afterMs: CANCEL_AFTER_MS };
    try {
      detail.unexpected_result = await session.client.callTool({ name: 'test_slow', arguments: {} }, undefined, {
        signal: controller.signal,
      });
    } catch (error) {
      detail.cancelled = controller.signal.aborted;
      detail.error = error instanceof McpError ? rpcError(error) : String(error);
    } finally {
      clearTimeout(timer);
    }
    // A request after the cancel shows the connection survived it.
    detail.toolsAfterCancel = (await toolNames(session.client)).length;
    return [detail.cancelled, detail];
  },
};

function parseCommandLine(argv) {
  const split = argv.indexOf('--');
  const command = split === -1 ? [] : argv.slice(split + 1);
  const { values } = parseArgs({
    args: split === -1 ? argv : argv.slice(0, split),
    options: {
      url: { type: 'string' },
      token: { type: 'string' },
      stdio: { type: 'boolean', default: false },
      check: { type: 'string', multiple: true },
    },
  });
  const usage = (message) => {
    console.error(`ts_client.mjs: ${message}`);
    process.exit(2);
  };
  if (Boolean(values.url) === values.stdio) usage('give exactly one of --url URL and --stdio -- CMD ARGS...');
  if (values.stdio && command.length === 0) usage('--stdio needs a command after --');
  if (values.url && command.length > 0) usage('a command after -- is only for --stdio');
  if (values.token && !values.url) usage('--token is only for --url');
  const checks = values.check ?? Object.keys(CHECKS);
  const unknown = checks.filter((name) => !(name in CHECKS));
  if (unknown.length > 0) usage(`unknown check ${unknown.join(', ')}; known: ${Object.keys(CHECKS).join(', ')}`);
  return { ...values, command, checks };
}

function makeTransport(args, session) {
  if (args.stdio) {
    const [command, ...commandArgs] = args.command;
    return new StdioClientTransport({ command, args: commandArgs, env: process.env, stderr: 'inherit' });
  }
  const headers = args.token ? { Authorization: `Bearer ${args.token}` } : {};
  return new StreamableHTTPClientTransport(new URL(args.url), { requestInit: { headers }, fetch: session.fetch });
}

async function run(args) {
  const session = new Session(Boolean(args.url));
  const report = { protocolVersion: null, checks: {} };
  const transport = makeTransport(args, session);
  // The client hands the negotiated version to transports that take one (HTTP sends it as a
  // header); recording it there works for stdio too.
  const setProtocolVersion = transport.setProtocolVersion?.bind(transport);
  transport.setProtocolVersion = (version) => {
    session.protocolVersion = version;
    setProtocolVersion?.(version);
  };
  const client = new Client({ name: 'weft-test-ts-client', version: '1.0.0' });
  client.setNotificationHandler(ToolListChangedNotificationSchema, () => session.toolsChanged.fire());
  try {
    await client.connect(transport);
    session.client = client;
    report.protocolVersion = session.protocolVersion;
    for (const name of args.checks) {
      let ok, detail;
      try {
        [ok, detail] = await withTimeout(CHECKS[name](session), CHECK_TIMEOUT_MS, name);
      } catch (error) {
        // A check that threw has failed; the others still run.
        [ok, detail] = [false, { exception: error instanceof McpError ? rpcError(error) : String(error) }];
      }
      report.checks[name] = { ok, detail };
    }
  } catch (error) {
    // Could not connect.
    report.error = String(error);
  } finally {
    await client.close().catch(() => {});
  }
  for (const name of args.checks) report.checks[name] ??= { ok: false, detail: 'not run: no connection' };
  return report;
}

const report = await run(parseCommandLine(process.argv.slice(2)));
const allOk = Object.values(report.checks).every((check) => check.ok);
process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(allOk ? 0 : 1));
