// ES module entry: `import { createAdapter } from 'socket.io-amqp0-native'`.
import cjs from './index.js';

export const { createAdapter, AmqpAdapter } = cjs;
export default cjs;
