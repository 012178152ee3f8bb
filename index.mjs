// ES module entry: `import { createAdapter } from 'socket.io-amqp0-native'`.
import cjs from './index.js';

export const { createAdapter, AmqpAdapter, Emitter } = cjs;
export default cjs;
