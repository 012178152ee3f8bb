'use strict';
// The WebSocket frame of a broadcast, built once for all of its recipients.
//
// Without it, engine.io's websocket transport frames the packet per socket: it copies the text into
// a new Buffer and builds a header for each recipient, which was most of a broadcasting server's
// JS-thread time (writev and the GC of those buffers). Socket.IO's in-memory adapter (and so the
// Redis adapters) hands the transport a pre-built frame in `packetOpts.wsPreEncodedFrame`; the
// transport sends it as is when the socket is a websocket without permessage-deflate, and ignores
// it otherwise (polling, webtransport, compression).
//
// The frame is the list `ws`'s Sender#sendFrame takes: here one Buffer, header and payload
// together, so each socket's send is one write.

const MESSAGE = 0x34; // '4', engine.io's "message" packet type: the payload's first byte
const TEXT_FINAL = 0x81; // FIN bit + opcode 1 (text)

/**
 * The frame for an encoded Socket.IO packet, or undefined when it has binary parts (those go as
 * several engine.io packets, framed by the transport).
 */
function preEncodedFrame(encoded) {
  if (encoded.length !== 1 || typeof encoded[0] !== 'string') return undefined;
  const text = encoded[0];
  const payloadLength = Buffer.byteLength(text) + 1;
  let headerLength = 2;
  if (payloadLength >= 65536) headerLength = 10;
  else if (payloadLength > 125) headerLength = 4;
  const frame = Buffer.allocUnsafe(headerLength + payloadLength);
  frame[0] = TEXT_FINAL;
  if (headerLength === 2) {
    frame[1] = payloadLength;
  } else if (headerLength === 4) {
    frame[1] = 126;
    frame.writeUInt16BE(payloadLength, 2);
  } else {
    frame[1] = 127;
    frame.writeUInt16BE(0, 2); // the top 16 of the 64 length bits: no frame is that large
    frame.writeUIntBE(payloadLength, 4, 6);
  }
  frame[headerLength] = MESSAGE;
  frame.write(text, headerLength + 1, 'utf8');
  return [frame];
}

module.exports = { preEncodedFrame };
