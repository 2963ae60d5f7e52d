// Round trips of a small message over Node.js child_process.fork IPC.
//
//   node fork_pingpong.js CALLS WARMUP GAP_US PAYLOAD_JSON
//
// The parent forks this same file as its child, which sends every message
// back unchanged. First the parent prints {"child_pid": N} on its own
// line and waits for a line on stdin, so that the caller can pin the
// child to a CPU before the timed calls. Then it prints one line of JSON:
// the latency of each timed round trip in ns, and the CPU time in us that
// the parent and the child used over the timed calls
// (process.cpuUsage(), user plus system). GAP_US sleeps that many
// microseconds between round trips, outside the timed span.

"use strict";

const { fork } = require("node:child_process");
const readline = require("node:readline");

const CPU_REQUEST = "__cpu_usage__";

function serveChild() {
  process.on("message", (message) => {
    if (message === CPU_REQUEST) {
      const usage = process.cpuUsage();
      process.send({ cpu_us: usage.user + usage.system });
    } else {
      process.send(message);
    }
  });
  // The parent closes the IPC channel when it is done.
  process.on("disconnect", () => process.exit(0));
}

function parseArguments(argv) {
  if (argv.length !== 4) {
    throw new Error(
      "usage: node fork_pingpong.js CALLS WARMUP GAP_US PAYLOAD_JSON",
    );
  }
  const [calls, warmup, gapUs] = argv.slice(0, 3).map(Number);
  for (const value of [calls, warmup, gapUs]) {
    if (!Number.isInteger(value) || value < 0) {
      throw new Error(`expected a whole number, got ${value}`);
    }
  }
  if (calls < 1) {
    throw new Error("CALLS must be at least 1");
  }
  return { calls, warmup, gapUs, payload: JSON.parse(argv[3]) };
}

function nextMessage(child) {
  return new Promise((resolve) => child.once("message", resolve));
}

async function roundTrip(child, message) {
  const reply = nextMessage(child);
  child.send(message);
  return reply;
}

function sleepUs(microseconds) {
  return new Promise((resolve) => setTimeout(resolve, microseconds / 1000));
}

async function childCpuUs(child) {
  const reply = await roundTrip(child, CPU_REQUEST);
  return reply.cpu_us;
}

function waitForGo() {
  const lines = readline.createInterface({ input: process.stdin });
  return new Promise((resolve) => {
    lines.once("line", () => {
      lines.close();
      resolve();
    });
  });
}

async function runParent(options) {
  const child = fork(__filename, ["child"], { stdio: "inherit" });
  process.stdout.write(JSON.stringify({ child_pid: child.pid }) + "\n");
  await waitForGo();
  for (let i = 0; i < options.warmup; i++) {
    await roundTrip(child, options.payload);
  }
  const latencies = [];
  const childStart = await childCpuUs(child);
  const parentStart = process.cpuUsage();
  for (let i = 0; i < options.calls; i++) {
    if (options.gapUs > 0) {
      await sleepUs(options.gapUs);
    }
    const start = process.hrtime.bigint();
    await roundTrip(child, options.payload);
    latencies.push(Number(process.hrtime.bigint() - start));
  }
  const parentUsage = process.cpuUsage(parentStart);
  const childEnd = await childCpuUs(child);
  child.disconnect();
  const result = {
    latencies_ns: latencies,
    parent_cpu_us: parentUsage.user + parentUsage.system,
    child_cpu_us: childEnd - childStart,
  };
  process.stdout.write(JSON.stringify(result) + "\n");
}

if (process.argv[2] === "child") {
  serveChild();
} else {
  runParent(parseArguments(process.argv.slice(2))).catch((error) => {
    process.stderr.write(`fork_pingpong: ${error.message}\n`);
    process.exit(1);
  });
}
