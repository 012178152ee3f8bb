'use strict';
// Encodes the JS values that cross the bus inside cluster messages (server-side emit arguments,
// acknowledgement replies, fetched socket descriptions) as Socket.IO's default parser encodes a
// packet: a JSON text part plus one binary part per Buffer, so Buffers nested anywhere survive.
// Independent of the parser the Server uses for its clients.
const { Encoder, Decoder, PacketType } = require('socket.io-parser');

const encoder = new Encoder();

/** One value -> parts (strings and Buffers) for the native layer. */
function encodeValue(value) {
  return encoder.encode({ type: PacketType.ACK, nsp: '/', id: 0, data: [value] });
}

/** Parts -> the value; throws on parts that are not such an encoding. */
function decodeValue(parts) {
  const decoder = new Decoder();
  let packet;
  decoder.on('decoded', (decoded) => {
    packet = decoded;
  });
  for (const part of parts) decoder.add(part);
  decoder.destroy();
  if (!packet) throw new Error('socket.io-amqp0-native: an incomplete payload arrived from another server');
  return packet.data[0];
}

module.exports = { encodeValue, decodeValue };
