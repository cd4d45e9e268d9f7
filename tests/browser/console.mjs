// End-to-end tests of the web console in real headless Chromium (Debian's /usr/bin/chromium)
// driven by playwright-core (npm, installed by scripts/install-deps). Started by
// tests/console.rs, which runs the real gateway, PostgreSQL and the test OpenID Connect
// provider and passes their addresses in the environment; it checks the audit log afterwards.
//
//   node tests/browser/console.mjs main|ssh|reviews|evidence
//
// Environment: PLAYWRIGHT_DIR (where node_modules/playwright-core is), GW (the console's base
// URL), ISSUER, SHOTS (screenshot folder), and for `main`: PG_PORT, CA, ALICE_TOKEN; for
// `ssh`: SESSION (a recorded SSH session's id), MARKER (text the recording shows).
import { createRequire } from 'node:module';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import assert from 'node:assert/strict';

const require = createRequire(`${process.env.PLAYWRIGHT_DIR}/`);
const { chromium } = require('playwright-core');
const GW = process.env.GW;
const ISSUER = process.env.ISSUER;
const SHOTS = process.env.SHOTS;
mkdirSync(SHOTS, { recursive: true });

const step = (m) => console.log(`-- ${m}`);
const DESKTOP = { viewport: { width: 1280, height: 860 } };
const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true };

async function shot(page, name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

// Both widths of the page `path` as `who`'s browser sees it.
async function shots(browser, storage, path, name) {
  for (const [suffix, opts] of [['desktop', DESKTOP], ['phone', PHONE]]) {
    const ctx = await browser.newContext({ ...opts, storageState: storage });
    const p = await ctx.newPage();
    await p.goto(GW + path);
    await p.waitForLoadState('load');
    await p.waitForTimeout(300);
    await shot(p, `${name}-${suffix}`);
    await ctx.close();
  }
}

// Every form control has a label a screen reader reads, every button a name, and the first
// Tab lands on the skip link.
async function accessible(page) {
  const bad = await page.evaluate(() => {
    const out = [];
    document.querySelectorAll('input:not([type=hidden]), select, textarea').forEach((el) => {
      if (!el.labels?.length && !el.getAttribute('aria-label')) out.push(`unlabelled ${el.outerHTML.slice(0, 80)}`);
    });
    document.querySelectorAll('button, a').forEach((el) => {
      if (!(el.textContent.trim() || el.getAttribute('aria-label'))) out.push(`nameless ${el.outerHTML.slice(0, 80)}`);
    });
    if (!document.documentElement.lang) out.push('no lang');
    return out;
  });
  assert.deepEqual(bad, [], `${page.url()}: ${bad.join('; ')}`);
  await page.reload();
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement?.className), 'skip', 'the first Tab reaches "Skip to content"');
}

async function oidcSignIn(page, user, password, next = '/ui/') {
  await page.goto(`${GW}${next}`);
  assert.match(page.url(), /\/ui\/login\?next=/, 'not signed in: sent to the sign-in page');
  await page.click('#oidc-signin');
  await page.waitForURL((u) => u.href.startsWith(ISSUER));
  await page.fill('input[name=login]', user);
  await page.fill('input[name=password]', password);
  await page.click('button[type=submit]');
  await page.waitForURL((u) => u.href.startsWith(GW + next.split('?')[0]));
}

async function tokenSignIn(page, token, next = '/ui/') {
  await page.goto(`${GW}/ui/login?next=${encodeURIComponent(next)}`);
  await page.fill('#token', token);
  await Promise.all([page.waitForNavigation(), page.click('#token-form button[type=submit]')]);
  assert.ok(page.url().startsWith(GW + next.split('?')[0]), `token sign-in ended at ${page.url()}: ${await page.textContent('body')}`);
}

// Click a button that submits a form, and wait for the page it leads to.
async function submit(page, selector) {
  await Promise.all([page.waitForNavigation(), page.click(selector)]);
}

async function flash(page) {
  return (await page.locator('.flash').allTextContents()).join(' | ');
}

function psql(args, env) {
  return new Promise((resolve) => {
    const p = spawn('psql', args, { env: { ...process.env, ...env } });
    let out = '', err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('close', (code) => resolve({ code, out, err }));
    resolve.child = p;
  });
}

async function main(browser) {
  const PG = (db) => `host=127.0.0.1 port=${process.env.PG_PORT} user=alice@example.com dbname=${db} sslmode=verify-full sslrootcert=${process.env.CA}`;
  const alice = await (await browser.newContext(DESKTOP)).newPage();
  const bob = await (await browser.newContext(DESKTOP)).newPage();
  const root = await (await browser.newContext(DESKTOP)).newPage();

  step('the sign-in page, and no token in any URL');
  await alice.goto(`${GW}/ui/`);
  await shot(alice, 'signin-desktop');
  const phone = await (await browser.newContext(PHONE)).newPage();
  await phone.goto(`${GW}/ui/login`);
  await shot(phone, 'signin-phone');

  step('alice and bob sign in through the real provider (code + PKCE)');
  await oidcSignIn(alice, 'alice', 'alice-password');
  assert.match(await flash(alice), /Signed in as alice@example.com/);
  const cookies = await alice.context().cookies();
  const session = cookies.find((c) => c.name === 'jitgate');
  assert.ok(session && session.httpOnly && session.sameSite === 'Lax', JSON.stringify(cookies));
  await oidcSignIn(bob, 'bob', 'bob-password', '/ui/approvals');
  const bobSignedInAt = Date.now();
  assert.match(await bob.textContent('#inbox'), /Nothing to decide/);

  step('alice requests; bob\'s open inbox shows it without a reload');
  await alice.selectOption('#resource', 'prod-db');
  await alice.selectOption('#access', 'read-only');
  await alice.fill('#duration', '30m');
  await alice.fill('#reason', 'INC-123 slow checkout <b>bold</b>');
  await alice.fill('#ticket', 'INC-123');
  await submit(alice, '#request-form button[type=submit]');
  const created = await flash(alice);
  const id = Number(/Request (\d+) is waiting for an approver from dba/.exec(created)?.[1]);
  assert.ok(id > 0, `${created} :: ${alice.url()} :: ${await alice.textContent("main")}`);
  await bob.waitForSelector(`#inbox-${id}`, { timeout: 15000 });
  const card = await bob.textContent(`#inbox-${id}`);
  for (const want of ['alice@example.com', 'groups: dev', 'read-only', '30m', 'INC-123 slow checkout <b>bold</b>', 'production', '1 of 1: approval']) {
    assert.ok(card.includes(want), `inbox card lacks ${want}: ${card}`);
  }
  assert.equal(await bob.locator(`#inbox-${id} b`).count(), 0, 'the reason is text, not markup');
  await shots(browser, await bob.context().storageState(), '/ui/approvals', 'approvals');
  await accessible(bob);

  step('alice cannot approve her own request (the engine says no, the console only relays it)');
  await alice.goto(`${GW}/ui/requests/${id}`);
  assert.equal(await alice.locator(`#approve-${id}`).count(), 0);
  assert.match(await alice.textContent('main'), /someone else decides it/);
  await Promise.all([alice.waitForNavigation(), alice.evaluate((id) => {
    const f = document.createElement('form');
    f.method = 'post'; f.action = `/ui/requests/${id}/approve`;
    const c = document.querySelector('input[name=_csrf]').cloneNode();
    f.appendChild(c); document.body.appendChild(f); f.submit();
  }, id)]);
  assert.match(await flash(alice), /cannot approve your own request/);

  step('CSRF-less and cross-site requests are refused');
  const noCsrf = await bob.evaluate(async (id) => (await fetch(`/ui/requests/${id}/deny`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'reason=no' })).status, id);
  assert.equal(noCsrf, 403);
  const bobCsrf = await bob.getAttribute('input[name=_csrf]', 'value');
  const other = await bob.context().newPage();
  await other.goto(`${ISSUER}/.well-known/openid-configuration`);
  await other.setContent(`<form id=f method=post action="${GW}/ui/requests/${id}/deny"><input name=_csrf value="${bobCsrf}"><input name=reason value=forged></form>`);
  const [cross] = await Promise.all([other.waitForNavigation(), other.evaluate(() => document.getElementById('f').submit())]);
  assert.equal(cross.status(), 403, 'a form from another origin, even with the right token');
  assert.match(await other.textContent('body'), /another (site|origin)/);
  await other.close();

  step('bob approves; alice\'s page shows the grant with a live countdown');
  await alice.goto(`${GW}/ui/`);
  await bob.fill(`#ar-${id}`, 'looks fine');
  await submit(bob, `#approve-${id}`);
  assert.match(await flash(bob), new RegExp(`Request ${id} approved`));
  await alice.waitForSelector('.grant', { timeout: 15000 });
  const grantId = Number((await alice.getAttribute('.grant', 'id')).replace('grant-', ''));
  const t1 = await alice.textContent(`#grant-${grantId} .countdown`);
  await alice.waitForTimeout(2200);
  const t2 = await alice.textContent(`#grant-${grantId} .countdown`);
  assert.notEqual(t1, t2, 'the countdown ticks');
  assert.match(t2, /^(29|30)m \d+s left$/);
  assert.match(await alice.textContent(`#grant-${grantId} .connect`), /jitgate connect prod-db/);
  await shots(browser, await alice.context().storageState(), '/ui/', 'my-access');
  await accessible(alice);

  step('alice extends; bob approves the extension; the end moves');
  const before = Number(await alice.getAttribute(`#grant-${grantId} .countdown`, 'data-expires'));
  await alice.fill(`#ext-${grantId}`, '15m');
  await alice.fill(`#extr-${grantId}`, 'INC-123 needs longer');
  await submit(alice, `#grant-${grantId} form[action$="/extend"] button`);
  const extMsg = await flash(alice);
  const ext = Number(/Extension request (\d+)/.exec(extMsg)?.[1]);
  assert.ok(ext > id, extMsg);
  await bob.goto(`${GW}/ui/approvals`);
  await submit(bob, `#approve-${ext}`);
  await alice.waitForFunction(([g, b]) => Number(document.querySelector(`#grant-${g} .countdown`)?.getAttribute('data-expires')) >= b + 900, [grantId, before], { timeout: 15000 });

  step('a psql session\'s statements reach the audit session page');
  const ok = await psql([PG('prod-db'), '-X', '-At', '-c', 'select 6*7 as answer', '-c', 'select count(*) from pg_class where false'], { PGPASSWORD: process.env.ALICE_TOKEN });
  assert.equal(ok.code, 0, ok.err);
  assert.match(ok.out, /^42$/m);

  step('root kills a live psql session from "access now"; psql gets the FATAL');
  const live = psql([PG('prod-db'), '-X', '-At', '-c', 'select pg_sleep(60)'], { PGPASSWORD: process.env.ALICE_TOKEN });
  await tokenSignIn(root, 'root-token', '/ui/now');
  let sid;
  for (let i = 0; i < 50 && !sid; i++) {
    await root.goto(`${GW}/ui/now?identity=alice`);
    sid = await root.locator('#live-sessions tbody tr[id^=live-session-]').first().getAttribute('id').catch(() => null);
    if (!sid) await root.waitForTimeout(200);
  }
  assert.ok(sid, 'the live session is listed');
  sid = sid.replace('live-session-', '');
  await shots(browser, await root.context().storageState(), '/ui/now', 'access-now');
  await accessible(root);
  await submit(root, `button[aria-label="Kill session ${sid}"]`);
  assert.match(await flash(root), new RegExp(`Session ${sid} of alice@example.com killed`));
  const killed = await live;
  assert.notEqual(killed.code, 0);
  assert.match(killed.err, /FATAL/, killed.err);

  step('root revokes the grant; alice\'s page loses it without a reload');
  await alice.goto(`${GW}/ui/`);
  await root.goto(`${GW}/ui/now`);
  await root.fill(`#rv-${grantId}`, 'done with INC-123');
  await submit(root, `#revoke-${grantId}`);
  assert.match(await flash(root), new RegExp(`Grant ${grantId} of alice@example.com revoked`));
  await alice.waitForSelector(`#grant-${grantId}`, { state: 'detached', timeout: 15000 });

  step('the audit session page lists the statements, in order, with outcome and rows');
  await root.goto(`${GW}/ui/audit?user=alice@example.com&kind=session.started`);
  const firstSession = await root.locator('table.events a[href^="/ui/audit/sessions/"]').last().getAttribute('href');
  await root.goto(GW + firstSession);
  const rows = await root.locator('#statements tbody tr').allTextContents();
  assert.equal(rows.length, 2, rows.join('\n'));
  assert.match(rows[0], /ok.*1.*select 6\*7 as answer/s);
  assert.match(rows[1], /select count\(\*\) from pg_class where false/);
  await shots(browser, await root.context().storageState(), firstSession, 'audit-session');
  await accessible(root);
  await root.goto(`${GW}/ui/audit/verify`);
  assert.match(await root.textContent('#verify-result'), /Chain intact/);

  step('step-up: an approval under `step_up = "5s"` sends bob through the provider again');
  await alice.goto(`${GW}/ui/`);
  await alice.selectOption('#resource', 'crit-db');
  await alice.fill('#reason', 'INC-124');
  await submit(alice, '#request-form button[type=submit]');
  const crit = Number(/Request (\d+) is waiting/.exec(await flash(alice))?.[1]);
  const wait = 6500 - (Date.now() - bobSignedInAt);
  if (wait > 0) await bob.waitForTimeout(wait);
  await bob.goto(`${GW}/ui/approvals`);
  assert.match(await bob.textContent(`#inbox-${crit}`), /approving sends you through the provider first/);
  await bob.fill(`#ar-${crit}`, 'checked the runbook');
  await submit(bob, `#approve-${crit}`);
  assert.match(await bob.textContent('main'), /needs a sign-in at the identity provider within the last 5s/);
  await bob.click('#step-up');
  await bob.waitForURL((u) => u.href.startsWith(ISSUER));
  assert.equal(await bob.locator('input[name=password]').count(), 1, 'the provider asks for the password again');
  await bob.fill('input[name=login]', 'bob');
  await bob.fill('input[name=password]', 'bob-password');
  await bob.click('button[type=submit]');
  await bob.waitForURL(`${GW}/ui/requests/${crit}`);
  assert.equal(await bob.inputValue(`#ar-${crit}`), 'checked the runbook', 'the note typed before the step-up is kept');
  await submit(bob, `#approve-${crit}`);
  assert.match(await flash(bob), new RegExp(`Request ${crit} approved`));

  step('without JavaScript: request, deny, approve and revoke are plain forms');
  const carolNoJs = await (await browser.newContext({ ...DESKTOP, javaScriptEnabled: false })).newPage();
  const bobNoJs = await (await browser.newContext({ ...DESKTOP, javaScriptEnabled: false })).newPage();
  await tokenSignIn(carolNoJs, 'carol-token');
  await tokenSignIn(bobNoJs, 'bob-token', '/ui/approvals');
  const ask = async (reason) => {
    await carolNoJs.selectOption('#resource', 'prod-db');
    await carolNoJs.fill('#reason', reason);
    await submit(carolNoJs, '#request-form button[type=submit]');
    return Number(/Request (\d+) is waiting/.exec(await flash(carolNoJs))?.[1]);
  };
  const noJs1 = await ask('INC-125');
  await bobNoJs.goto(`${GW}/ui/approvals`);
  await bobNoJs.fill(`#dr-${noJs1}`, 'use the replica');
  await submit(bobNoJs, `#deny-${noJs1}`);
  assert.match(await flash(bobNoJs), new RegExp(`Request ${noJs1} denied`));
  const noJs2 = await ask('INC-126');
  await bobNoJs.goto(`${GW}/ui/approvals`);
  await submit(bobNoJs, `#approve-${noJs2}`);
  assert.match(await flash(bobNoJs), new RegExp(`Request ${noJs2} approved`));
  await carolNoJs.goto(`${GW}/ui/`);
  const carolGrant = Number((await carolNoJs.getAttribute('.grant', 'id')).replace('grant-', ''));
  await bobNoJs.goto(`${GW}/ui/now?identity=carol`);
  await submit(bobNoJs, `#revoke-${carolGrant}`);
  assert.match(await flash(bobNoJs), new RegExp(`Grant ${carolGrant} of carol@example.com revoked`));

  step('sign-out ends the session');
  await submit(bob, 'header form[action="/ui/logout"] button');
  await bob.waitForURL(/signed_out=1/);
  await bob.goto(`${GW}/ui/approvals`);
  assert.match(bob.url(), /\/ui\/login\?next=/);

  for (const p of [alice, bob, root]) {
    for (const u of [p.url()]) assert.ok(!/jg2\.|root-token|code=/.test(u), `a secret in a URL: ${u}`);
  }
  console.log(JSON.stringify({ request: id, extension: ext, grant: grantId, killed: sid, step_up: crit }));
}

async function ssh(browser) {
  const root = await (await browser.newContext(DESKTOP)).newPage();
  await tokenSignIn(root, 'root-token', `/ui/audit/sessions/${process.env.SESSION}`);
  await root.waitForSelector('#player .ap-player, #player .ap-wrapper', { timeout: 15000 });
  await root.click('#player .ap-player, #player .ap-wrapper').catch(() => {});
  await root.waitForFunction((m) => document.getElementById('player').textContent.includes(m), process.env.MARKER, { timeout: 20000 });
  assert.match(await root.textContent('#commands'), /echo jitgate-marker/);
  // The recording as it plays (the marker on the terminal), and the page on a phone.
  await shot(root, 'ssh-recording-desktop');
  const phone = await (await browser.newContext({ ...PHONE, storageState: await root.context().storageState() })).newPage();
  await phone.goto(`${GW}/ui/audit/sessions/${process.env.SESSION}`);
  await phone.waitForSelector('#player .ap-player, #player .ap-wrapper', { timeout: 15000 });
  await shot(phone, 'ssh-recording-phone');
  console.log('recording played');
}

async function reviews(browser) {
  const PG = (db) => `host=127.0.0.1 port=${process.env.PG_PORT} user=alice@example.com dbname=${db} sslmode=verify-full sslrootcert=${process.env.CA}`;
  const alice = await (await browser.newContext(DESKTOP)).newPage();
  const bob = await (await browser.newContext(DESKTOP)).newPage();
  const breakGlass = async () => {
    await alice.goto(`${GW}/ui/`);
    await alice.click('#break-glass summary');
    await alice.selectOption('#bg-resource', 'prod-db');
    await alice.fill('#bg-reason', 'INC-500 checkout down');
    await submit(alice, '#break-glass-submit');
  };

  step('break-glass from the console asks for a fresh sign-in first');
  await oidcSignIn(alice, 'alice', 'alice-password');
  const signedIn = Date.now();
  await alice.waitForTimeout(Math.max(0, 6500 - (Date.now() - signedIn)));
  await breakGlass();
  assert.match(await alice.textContent('main'), /needs a sign-in at the identity provider within the last 5s/);
  await alice.click('#step-up');
  await alice.waitForURL((u) => u.href.startsWith(ISSUER));
  await alice.fill('input[name=login]', 'alice');
  await alice.fill('input[name=password]', 'alice-password');
  await alice.click('button[type=submit]');
  await alice.waitForURL((u) => u.href.startsWith(`${GW}/ui/`));
  await breakGlass();
  const said = await flash(alice);
  const m = /Break-glass grant (\d+) on prod-db is open: everyone subscribed was alerted, and \[dba\] must review it by .* \(review (\d+)\)/.exec(said);
  assert.ok(m, said);
  const [grant, review] = [Number(m[1]), Number(m[2])];

  step('the grant works at once');
  const r = await psql(['-X', '-At', '-c', "SELECT 'bg-marker'", PG('prod-db')], { PGPASSWORD: process.env.ALICE_TOKEN });
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /bg-marker/);

  step('the one who broke the glass sees the review but cannot close it');
  await alice.goto(`${GW}/ui/reviews/${review}`);
  assert.equal(await alice.locator('#close-form').count(), 0);
  assert.match(await alice.textContent('#not-yours'), /another reviewer closes the review/);

  step('a reviewer lists open reviews, reads what the grant did and closes it');
  await tokenSignIn(bob, 'bob-token', '/ui/reviews');
  assert.match(await bob.textContent(`#review-${review}`), /alice@example\.com.*prod-db.*open/s);
  await shots(browser, await bob.context().storageState(), '/ui/reviews', 'reviews');
  await submit(bob, `#review-${review} a`);
  assert.match(await bob.textContent('#events'), /break_glass\.opened/);
  assert.match(await bob.textContent('#events'), /bg-marker/);
  await shot(bob, 'review-desktop');
  await accessible(bob);
  await bob.fill('#note', 'checked: primary restarted, use justified');
  await submit(bob, '#close-review');
  assert.match(await flash(bob), new RegExp(`Review ${review} closed`));
  assert.match(await bob.textContent('main'), /closed by bob@example\.com/);
  await bob.goto(`${GW}/ui/reviews`);
  assert.equal(await bob.locator(`#review-${review}`).count(), 0, 'closed reviews leave the open list');
  await bob.goto(`${GW}/ui/reviews?all=1`);
  assert.match(await bob.textContent(`#review-${review}`), /closed by bob@example\.com/);
  console.log(JSON.stringify({ grant, review }));
}

// An evidence pack's HTML (EVIDENCE: its path) opened from disk with the network cut: it must
// render everything from the one file. REFUSED: a refused statement it must show, COMMAND: an
// SSH command it must show.
async function evidence(browser) {
  const ctx = await browser.newContext({ ...DESKTOP, offline: true });
  const page = await ctx.newPage();
  const requests = [];
  page.on('request', (r) => { if (!r.url().startsWith('file:')) requests.push(r.url()); });
  step('the evidence pack renders offline from one file');
  await page.goto(`file://${process.env.EVIDENCE}`);
  await page.waitForLoadState('load');
  assert.deepEqual(requests, [], 'no external asset is fetched');
  assert.match(await page.textContent('h1'), /Access evidence/);
  assert.match(await page.textContent('#integrity'), /verified/);
  assert.match(await page.textContent('#approvals'), /bob@example\.com/);
  assert.match(await page.textContent('#approvals'), /root@example\.com/);
  assert.match(await page.textContent('#refused'), new RegExp(process.env.REFUSED));
  assert.equal(await page.locator('#refused tr.refused').count() >= 1, true);
  assert.match(await page.textContent('#commands'), new RegExp(process.env.COMMAND));
  assert.match(await page.textContent('#sessions'), /s-/);
  await shot(page, 'evidence-pack');
  assert.equal(await page.getAttribute('html', 'lang'), 'en');
  await ctx.close();
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  const which = process.argv[2];
  if (which === 'main') await main(browser);
  else if (which === 'ssh') await ssh(browser);
  else if (which === 'reviews') await reviews(browser);
  else if (which === 'evidence') await evidence(browser);
  else throw new Error(`unknown scenario ${which}`);
} finally {
  await browser.close();
}
