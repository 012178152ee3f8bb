'use strict';
// Private RabbitMQ nodes for the tests that stop, restart or cluster a broker: each runs on its own
// ports and data folder, so the shared broker on 5672 is never touched. Needs root (the node runs
// as the rabbitmq user, like the machine's own broker) and rabbitmq-server on PATH.
const fs = require('node:fs');
const os = require('node:os');
const net = require('node:net');
const path = require('node:path');
const crypto = require('node:crypto');
const { execFile } = require('node:child_process');

function run(command, args, { env, timeout = 60000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(command, args, { env: { ...process.env, ...env }, timeout, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${command} ${args.join(' ')} failed: ${err.message}\n${stdout}${stderr}`));
      else resolve(stdout);
    });
  });
}

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

class PrivateNode {
  /**
   * `tls`: { certfile, keyfile, cacertfile } to listen for amqps instead of amqp. `featureFlags`:
   * the only feature flags the new node enables (e.g. without `stream_queue`, a broker with no
   * streams), instead of all of them.
   */
  static async create(label, { tls, featureFlags } = {}) {
    const node = new PrivateNode();
    node.featureFlags = featureFlags;
    node.name = `sio${label}${process.pid}${crypto.randomBytes(2).toString('hex')}@localhost`;
    node.dir = fs.mkdtempSync(path.join(os.tmpdir(), `sio-native-${label}-`));
    node.port = await freePort();
    node.distPort = await freePort();
    const listener = tls
      ? [
          'listeners.tcp = none',
          `listeners.ssl.default = 127.0.0.1:${node.port}`,
          `ssl_options.cacertfile = ${tls.cacertfile}`,
          `ssl_options.certfile = ${tls.certfile}`,
          `ssl_options.keyfile = ${tls.keyfile}`,
          'ssl_options.verify = verify_none',
          'ssl_options.fail_if_no_peer_cert = false',
        ]
      : [`listeners.tcp.local = 127.0.0.1:${node.port}`];
    fs.writeFileSync(path.join(node.dir, 'rabbitmq.conf'), [...listener, 'loopback_users = none', ''].join('\n'));
    fs.writeFileSync(path.join(node.dir, 'enabled_plugins'), '[].\n');
    await run('chown', ['-R', 'rabbitmq:rabbitmq', node.dir]);
    node.url = `${tls ? 'amqps' : 'amqp'}://guest:guest@127.0.0.1:${node.port}`;
    return node;
  }

  get env() {
    return {
      RABBITMQ_NODENAME: this.name,
      RABBITMQ_DIST_PORT: String(this.distPort),
      RABBITMQ_CONFIG_FILE: path.join(this.dir, 'rabbitmq.conf'),
      RABBITMQ_MNESIA_BASE: path.join(this.dir, 'mnesia'),
      RABBITMQ_LOG_BASE: path.join(this.dir, 'log'),
      RABBITMQ_ENABLED_PLUGINS_FILE: path.join(this.dir, 'enabled_plugins'),
      RABBITMQ_PID_FILE: path.join(this.dir, 'pid'),
      ...(this.featureFlags ? { RABBITMQ_FEATURE_FLAGS: this.featureFlags.join(',') } : {}),
    };
  }

  ctl(...args) {
    return run('rabbitmqctl', ['-n', this.name, ...args], { timeout: 60000 });
  }

  /** Starts the node and waits (bounded) until it accepts connections. */
  async start() {
    await run('rabbitmq-server', ['-detached'], { env: this.env });
    const deadline = Date.now() + 60000;
    for (;;) {
      try {
        await this.ctl('await_startup', '--timeout', '30');
        return;
      } catch (err) {
        // -detached returns before the node registers; until then the CLI cannot reach it.
        if (Date.now() > deadline) throw new Error(`private node ${this.name} did not start: ${err.message}`);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  }

  /** Stops the whole node (its connections drop), and waits until it is gone. */
  async stop() {
    await this.ctl('stop');
  }

  async joinCluster(other) {
    await this.ctl('stop_app');
    await this.ctl('reset');
    await this.ctl('join_cluster', other.name);
    await this.ctl('start_app');
    await this.ctl('await_startup', '--timeout', '60');
  }

  /** Stops the node if it runs and deletes its folder. */
  async destroy() {
    await this.stop().catch(() => {});
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A CA and a server certificate for localhost, made with openssl in a temporary folder. */
async function makeCertificates() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sio-native-tls-'));
  const file = (name) => path.join(dir, name);
  const ssl = (...args) => run('openssl', args);
  await ssl(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=sio-native test CA',
    '-keyout',
    file('ca.key'),
    '-out',
    file('ca.pem'),
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  );
  await ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', file('server.key'), '-out', file('server.csr'));
  fs.writeFileSync(file('ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n');
  await ssl(
    'x509',
    '-req',
    '-in',
    file('server.csr'),
    '-CA',
    file('ca.pem'),
    '-CAkey',
    file('ca.key'),
    '-CAcreateserial',
    '-days',
    '2',
    '-out',
    file('server.pem'),
    '-extfile',
    file('ext.cnf'),
  );
  await run('chown', ['-R', 'rabbitmq:rabbitmq', dir]);
  return {
    dir,
    cacertfile: file('ca.pem'),
    certfile: file('server.pem'),
    keyfile: file('server.key'),
    caPem: fs.readFileSync(file('ca.pem'), 'utf8'),
  };
}

module.exports = { PrivateNode, makeCertificates };
