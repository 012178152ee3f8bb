'use strict';
// Per-thread CPU time (schedstat) and context switches of this process, from /proc (Linux only), grouped by
// what the thread is: the JS thread, the adapter's tokio runtime, lapin's I/O threads, and the
// rest (libuv pool, V8 helpers, Redis client threads if any). A context switch is a hand-off: a
// thread that blocked (voluntary) or was preempted (nonvoluntary); the adapter's cross-thread
// wake-ups show up as voluntary switches of the thread that waits for them.
const fs = require('node:fs');

function kindOf(tid, comm) {
  if (tid === process.pid) return 'js';
  if (comm.startsWith('socket.io-amqp0')) return 'runtime';
  if (comm.startsWith('lapin')) return 'lapin';
  return 'other';
}

/** {kind: {cpuMs, switches}} summed over the process's threads now. */
function sample() {
  const totals = {};
  let tids;
  try {
    tids = fs.readdirSync('/proc/self/task');
  } catch {
    return null; // not Linux
  }
  for (const name of tids) {
    const dir = `/proc/self/task/${name}`;
    try {
      const comm = fs.readFileSync(`${dir}/comm`, 'utf8').trim();
      const cpuMs = Number(fs.readFileSync(`${dir}/schedstat`, 'utf8').split(' ')[0]) / 1e6; // ns on a CPU
      const status = fs.readFileSync(`${dir}/status`, 'utf8');
      const switches = [...status.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
      const kind = kindOf(Number(name), comm);
      totals[kind] ??= { cpuMs: 0, switches: 0 };
      const t = totals[kind];
      t.cpuMs += cpuMs;
      t.switches += switches;
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return totals;
}

/** What happened between two samples, per kind (threads that ended meanwhile are not counted). */
function difference(before, after) {
  if (!before || !after) return null;
  const out = {};
  for (const [kind, t] of Object.entries(after)) {
    const b = before[kind] ?? { cpuMs: 0, switches: 0 };
    out[kind] = { cpuMs: t.cpuMs - b.cpuMs, switches: t.switches - b.switches };
  }
  return out;
}

module.exports = { sample, difference };
