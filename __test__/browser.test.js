'use strict';
// The demo in a real headless Chromium (Debian's, driven by playwright-core; no browser download):
// two pages on two servers chat in a room; a page outside the room does not get the message.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { chromium } = require('playwright-core');
const { uniqueName, within, waitFor } = require('./helpers');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const OUTPUT = path.join(__dirname, '..', 'test-output');
// A first `npm test` on a machine without Chromium skips this suite and says why; CI must run it,
// so there a missing browser fails (before() below).
const MISSING_BROWSER =
  !fs.existsSync(CHROMIUM) && process.env.CI !== 'true'
    ? `no Chromium at ${CHROMIUM}: to run it, \`apt-get install chromium\` (or set CHROMIUM_PATH); under CI=true this fails instead`
    : false;

describe('the chat demo in a browser', { timeout: 120000, skip: MISSING_BROWSER }, () => {
  let demo;
  let urls;
  let browser;
  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `Chromium is needed at ${CHROMIUM} (apt-get install chromium; .ci/run does it)`);
    demo = spawn(process.execPath, [path.join(__dirname, '..', 'demo', 'cluster.js')], {
      env: { ...process.env, DEMO_PORTS: '0,0,0', DEMO_EXCHANGE: uniqueName('demo') },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let output = '';
    demo.stdout.on('data', (chunk) => (output += chunk));
    urls = await within(
      new Promise((resolve, reject) => {
        demo.stdout.on('data', () => {
          const found = [...output.matchAll(/^server-[abc] {2}(http:\/\/\S+)$/gm)].map((m) => m[1]);
          if (found.length === 3) resolve(found);
        });
        demo.on('exit', (code) => reject(new Error(`the demo exited (${code}):\n${output}`)));
      }),
      'the demo to print its three URLs',
      30000,
    );
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });
  after(async () => {
    await browser?.close();
    if (demo && demo.exitCode === null) {
      const exited = waitFor(demo, 'exit', 'the demo to stop on SIGINT', 10000);
      demo.kill('SIGINT');
      const [code] = await exited;
      assert.equal(code, 0, 'the demo exits cleanly on Ctrl-C');
    }
  });

  async function openChat(url, name, room) {
    const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
    await page.goto(`${url}/?name=${encodeURIComponent(name)}`);
    await page.getByTestId('room').fill(room);
    await page.getByTestId('join').click();
    await page
      .getByTestId('status')
      .filter({ hasText: `In #${room}` })
      .waitFor({ timeout: 10000 });
    return page;
  }

  const messages = (page) => page.getByTestId('messages').locator('li').allTextContents();

  it('two pages on two servers exchange messages in a room; a page outside it does not get them', async () => {
    const alice = await openChat(urls[0], 'alice', 'kitchen');
    const bob = await openChat(urls[1], 'bob', 'kitchen');
    const carol = await openChat(urls[2], 'carol', 'garden');
    assert.equal(await alice.getByTestId('server').textContent(), 'server-a');
    assert.equal(await bob.getByTestId('server').textContent(), 'server-b');

    await alice.getByTestId('text').fill('hello from server a');
    await alice.getByTestId('send').click();
    await bob.getByTestId('messages').getByText('hello from server a').waitFor({ timeout: 10000 });
    await bob.getByTestId('text').fill('hi alice, this is b');
    await bob.getByTestId('send').click();
    await alice.getByTestId('messages').getByText('hi alice, this is b').waitFor({ timeout: 10000 });

    // Carol's server gets a later message for her own room from server-a: by then anything for the
    // kitchen would have arrived too (one server's messages keep their order).
    const dave = await openChat(urls[0], 'dave', 'garden');
    await dave.getByTestId('text').fill('marker for the garden');
    await dave.getByTestId('send').click();
    await carol.getByTestId('messages').getByText('marker for the garden').waitFor({ timeout: 10000 });
    const carolSaw = await messages(carol);
    assert.ok(!carolSaw.some((text) => text.includes('kitchen')), `carol saw: ${carolSaw.join(' | ')}`);

    // Everyone is listed, from every server, and the page shows the cluster size.
    await alice.getByTestId('users').getByText('carol').waitFor({ timeout: 10000 });
    assert.equal(await alice.getByTestId('server-count').textContent(), '3');
    const aliceSaw = await messages(alice);
    assert.ok(
      aliceSaw.some((text) => text.includes('bob @server-b #kitchen')),
      aliceSaw.join(' | '),
    );

    fs.mkdirSync(OUTPUT, { recursive: true });
    // The screenshot is for people (README's docs/chat.png is one); what the page shows was checked
    // above through the DOM. Here: it is a PNG of the whole viewport.
    const png = await alice.screenshot({ path: path.join(OUTPUT, 'chat.png') });
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG');
    assert.deepEqual([png.readUInt32BE(16), png.readUInt32BE(20)], [1000, 640], 'of the 1000x640 viewport');
  });

  it('a page whose server is stopped moves to another server, recovered, and shows what it missed', async () => {
    const alice = await openChat(urls[0], 'alice2', 'porch');
    const bob = await openChat(urls[1], 'bob2', 'porch');
    await alice.getByTestId('text').fill('before the stop');
    await alice.getByTestId('send').click();
    await bob.getByTestId('messages').getByText('before the stop').waitFor({ timeout: 10000 });

    // The button closes server-a gracefully; the page reconnects (after 2 s) to server-b.
    await alice.getByTestId('stop').click();
    await alice.getByTestId('status').filter({ hasText: 'Disconnected' }).waitFor({ timeout: 10000 });
    await bob.getByTestId('text').fill('said while alice moved');
    await bob.getByTestId('send').click();
    await bob.getByTestId('messages').getByText('said while alice moved').waitFor({ timeout: 10000 });

    await alice.getByTestId('status').filter({ hasText: 'Recovered on server-b' }).waitFor({ timeout: 15000 });
    assert.equal(await alice.getByTestId('server').textContent(), 'server-b');
    const status = await alice.getByTestId('status').textContent();
    assert.match(status, /still in #porch, 1 missed message/);
    const missed = alice.getByTestId('messages').locator('li.recovered');
    assert.equal(await missed.count(), 1);
    assert.match(await missed.first().textContent(), /bob2 @server-b #porch: said while alice moved\s*recovered/);

    // Still in the room on the new server: live messages arrive, unmarked.
    await bob.getByTestId('text').fill('welcome back');
    await bob.getByTestId('send').click();
    await alice.getByTestId('messages').getByText('welcome back').waitFor({ timeout: 10000 });
    assert.equal(await missed.count(), 1, 'a live message is not marked recovered');
    fs.mkdirSync(OUTPUT, { recursive: true });
    await alice.screenshot({ path: path.join(OUTPUT, 'recovered.png') });
  });
});
