// Drives Debian's chromium through the playground page for PlaygroundBrowserTests (C#), which asserts on what this prints.
// Usage: node playground.mjs <scenario> <api base, e.g. http://127.0.0.1:7071/api/> <function key> <screenshot folder>
// Prints one JSON line: what the page showed. Waits are bounded; a wait that runs out fails the run with its reason.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [scenario, api, functionKey, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const page_url = new URL('playground', api).href;

// As the machine's notes say for a headless Debian chromium as root: no sandbox, no GPU, and none of the background
// connections a closed network refuses.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});

const consoleErrors = [];
async function openPage(viewport = { width: 1000, height: 1000 }) {
  const context = await browser.newContext({ viewport, acceptDownloads: true });
  const page = await context.newPage();
  page.on('pageerror', e => consoleErrors.push(`pageerror: ${e.message}`));
  page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  await page.goto(page_url);
  // The scheduler list is filled from /api/health (or, before the model loads, the API document).
  await page.waitForFunction(() => document.querySelectorAll('#scheduler option').length > 1, null, { timeout: 30_000 });
  return { context, page };
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

const statusOf = page => page.locator('#status').textContent();

async function fillRequest(page, { key, prompt, steps, scheduler, seed }) {
  if (key !== undefined) await page.getByLabel('Function key').fill(key);
  await page.getByLabel('Prompt', { exact: true }).fill(prompt);
  if (steps !== undefined) await page.getByLabel('Steps').fill(String(steps));
  if (scheduler !== undefined) await page.getByLabel('Scheduler').selectOption(scheduler);
  if (seed !== undefined) await page.getByLabel(/^Seed/).fill(String(seed));
}

const scenarios = {
  // Key + prompt → submit → the image, its caption, a working download link, and the job in the history after a reload.
  async generate() {
    const { page } = await openPage();
    await shot(page, '1-empty');
    await fillRequest(page, { key: functionKey, prompt: 'a lighthouse at dusk, oil painting', steps: 12, scheduler: 'ddim', seed: 7 });
    await page.getByRole('button', { name: 'Generate' }).click();
    const statuses = new Set();
    let runningShot = false;
    const deadline = Date.now() + 120_000;
    while (await page.locator('#result').isHidden()) {
      if (Date.now() > deadline) throw new Error(`no image within 120 s; statuses seen: ${[...statuses]}`);
      const status = await statusOf(page);
      statuses.add(status);
      if (!runningShot && status.startsWith('Running: step')) { await shot(page, '2-running'); runningShot = true; }
      if (!(await page.locator('#problem').isHidden())) throw new Error(`a problem was shown: ${await page.locator('#problem').textContent()}`);
      await page.waitForTimeout(50);
    }
    await page.waitForFunction(() => document.getElementById('image').complete, null, { timeout: 10_000 });
    await shot(page, '3-succeeded');
    const image = await page.locator('#image').evaluate(i => ({ naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight, alt: i.alt, visible: i.offsetWidth > 0 }));
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('link', { name: 'Download' }).click()]);
    const saved = join(shots, download.suggestedFilename());
    await download.saveAs(saved);
    const storedKey = await page.evaluate(() => sessionStorage.getItem('sdfunctions.playground.key'));
    const result = {
      image, statuses: [...statuses], status: await statusOf(page), progress: await page.locator('#progress-label').textContent(),
      caption: await page.locator('#caption').textContent(), download: { file: download.suggestedFilename(), path: saved },
      keyInSessionStorage: storedKey === functionKey, keyInUrl: page.url().includes(functionKey),
      keyInLocalStorage: await page.evaluate(k => JSON.stringify(localStorage).includes(k), functionKey),
    };
    await page.reload();
    await page.waitForSelector('#history li');
    result.historyAfterReload = await page.locator('#history li').evaluateAll(items => items.map(li => ({
      text: li.textContent, thumbnail: li.querySelector('img') ? li.querySelector('img').src.slice(0, 23) : null })));
    await shot(page, '4-history');
    // A click on the entry opens the finished job again: its status and its image.
    await page.locator('#history li button').first().click();
    await page.locator('#result').waitFor({ state: 'visible', timeout: 30_000 });
    await page.waitForFunction(() => document.getElementById('image').complete && document.getElementById('image').naturalWidth > 0, null, { timeout: 10_000 });
    result.reopened = {
      status: await statusOf(page),
      naturalWidth: await page.locator('#image').evaluate(i => i.naturalWidth),
    };
    return result;
  },

  // A long job canceled from the page while it runs ends as canceled, without an image.
  async cancel() {
    const { page } = await openPage();
    await fillRequest(page, { key: functionKey, prompt: 'a job to cancel', steps: 150, scheduler: 'ddim' });
    await page.getByRole('button', { name: 'Generate' }).click();
    const cancel = page.getByRole('button', { name: 'Cancel', exact: true });
    await cancel.waitFor({ state: 'visible', timeout: 30_000 });
    // Cancel a run in progress (the worker stops at its next check), not only a queued job.
    await page.waitForFunction(() => /^Running: step/.test(document.getElementById('status').textContent), null, { timeout: 60_000 });
    const statusBeforeCancel = await statusOf(page);
    await cancel.click();
    await page.waitForFunction(() => document.getElementById('status').dataset.status === 'canceled', null, { timeout: 60_000 });
    await shot(page, '5-canceled');
    return {
      statusBeforeCancel, status: await statusOf(page), resultHidden: await page.locator('#result').isHidden(),
      cancelDisabled: await cancel.isDisabled(), problemHidden: await page.locator('#problem').isHidden(),
    };
  },

  // Without a key the host answers 401 with no body: the page explains it. With the key, a request the API refuses shows
  // the problem's title, detail and the field's error.
  async nokey() {
    const { page } = await openPage();
    await fillRequest(page, { prompt: 'no key' });
    await page.getByRole('button', { name: 'Generate' }).click();
    await page.locator('#problem').waitFor({ state: 'visible', timeout: 30_000 });
    await shot(page, '6-unauthorized');
    const result = {
      title: await page.locator('#problem-title').textContent(), detail: await page.locator('#problem-detail').textContent(),
      jobShown: await page.locator('#job').isVisible(),
    };
    await fillRequest(page, { key: functionKey, prompt: 'too many steps', steps: 151 });
    await page.getByRole('button', { name: 'Generate' }).click();
    await page.waitForFunction(() => document.getElementById('problem-title').textContent !== 'Function key needed (401 Unauthorized)', null, { timeout: 30_000 });
    await shot(page, '7-invalid');
    result.invalid = {
      title: await page.locator('#problem-title').textContent(), errors: await page.locator('#problem-errors li').allTextContents(),
      jobShown: await page.locator('#job').isVisible(),
    };
    return result;
  },

  // The bundled model: its card's prompts are offered; one click fills the prompt; the 64 px image is shown four times larger.
  async examples() {
    const { page } = await openPage({ width: 900, height: 900 });
    await page.locator('#examples button').first().waitFor({ state: 'visible', timeout: 30_000 });
    const examples = await page.locator('#examples button').allTextContents();
    await page.getByLabel('Function key').fill(functionKey);
    await page.locator('#examples button').first().click();
    const prompt = await page.getByLabel('Prompt', { exact: true }).inputValue();
    await page.getByLabel(/^Seed/).fill('2');
    await page.getByRole('button', { name: 'Generate' }).click();
    await page.locator('#result').waitFor({ state: 'visible', timeout: 120_000 });
    await page.waitForFunction(() => document.getElementById('image').complete && document.getElementById('image').naturalWidth > 0, null, { timeout: 10_000 });
    await shot(page, '9-bundled-model');
    const image = await page.locator('#image').evaluate(i => ({ naturalWidth: i.naturalWidth, shownWidth: i.getBoundingClientRect().width, rendering: getComputedStyle(i).imageRendering }));
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('link', { name: 'Download' }).click()]);
    const saved = join(shots, download.suggestedFilename());
    await download.saveAs(saved);
    return {
      examples, prompt, placeholder: await page.getByLabel('Prompt', { exact: true }).getAttribute('placeholder'), image,
      caption: await page.locator('#caption').textContent(), download: saved,
    };
  },

  // 360 px wide, keyboard only: every control labelled, no sideways scrolling, Tab reaches each control in order, Enter submits.
  async narrow() {
    const { page } = await openPage({ width: 360, height: 740 });
    const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea, button')]
      .filter(c => !c.hidden && c.offsetParent !== null)
      .filter(c => (c.labels ? c.labels.length : 0) === 0 && !c.getAttribute('aria-label') && !c.textContent.trim())
      .map(c => c.id || c.outerHTML.slice(0, 60)));
    await page.getByLabel('Function key').focus();
    const order = [];
    for (let i = 0; i < 8; i++) {
      order.push(await page.evaluate(() => document.activeElement.id));
      await page.keyboard.press('Tab');
    }
    order.push(await page.evaluate(() => document.activeElement.id));
    await page.getByLabel('Prompt', { exact: true }).focus();
    await page.keyboard.type('typed with the keyboard');
    await page.getByRole('button', { name: 'Generate' }).focus();
    await page.keyboard.press('Enter');
    await page.locator('#problem').waitFor({ state: 'visible', timeout: 30_000 });
    await shot(page, '8-narrow');
    return {
      unlabelled, order,
      scrollWidth: await page.evaluate(() => document.documentElement.scrollWidth),
      problemTitle: await page.locator('#problem-title').textContent(),
    };
  },
};

try {
  if (!scenarios[scenario]) throw new Error(`no scenario ${scenario}; there are ${Object.keys(scenarios)}`);
  const result = await scenarios[scenario]();
  result.consoleErrors = consoleErrors;
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
