'use strict';
// The worker side of the benchmark's IPC (bench/run.js's spawnWorker is the other side): answers
// {id, cmd, args} with {id, result} or {id, error}, and announces itself with id 0.
function serveCommands(commands) {
  process.on('message', async ({ id, cmd, args }) => {
    try {
      process.send({ id, result: await commands[cmd](args || {}) });
    } catch (err) {
      process.send({ id, error: err.stack || String(err) });
    }
  });
  process.send({ id: 0, result: { started: true } });
}

module.exports = { serveCommands };
