'use strict';
// Publishing calls of the native layer only queue; the turn's publishes leave together at its end,
// so a turn that emits many packets hands off to the broker's thread once instead of once per
// packet. `endOfTurn(send, onError)` returns a function that runs `send` once, in a microtask,
// however often it is called during the turn. Thrown there an error would be uncaught (and end the
// process): it goes to `onError`.

function endOfTurn(send, onError) {
  let scheduled = false;
  const run = () => {
    scheduled = false;
    try {
      send();
    } catch (err) {
      onError(err);
    }
  };
  return () => {
    if (scheduled) return;
    scheduled = true;
    queueMicrotask(run);
  };
}

module.exports = { endOfTurn };
