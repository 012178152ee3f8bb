'use strict';
// Connection state recovery's packet offsets, `<ms>-<sender id>-<n>` (src/recovery/mod.rs reads
// the same shape): unique in the cluster, ordered per sender, and carrying their send time, from
// which a restore starts reading the recovery log.

const OFFSET_SHAPE = /^\d{1,20}-[0-9A-Za-z]{1,32}-\d{1,20}$/;

/** The offsets of one sender (a server's uid, or an emitter's id). */
class OffsetSequence {
  constructor(senderId) {
    this.senderId = senderId;
    this.count = 0;
  }

  next() {
    this.count += 1;
    return `${Date.now()}-${this.senderId}-${this.count}`;
  }
}

/** Whether a client's offset has the shape this adapter makes (anything else is not looked up). */
function isOffset(text) {
  return typeof text === 'string' && OFFSET_SHAPE.test(text);
}

module.exports = { OffsetSequence, isOffset };
