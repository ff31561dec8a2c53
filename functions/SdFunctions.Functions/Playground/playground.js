// The playground: one page over the public API (submit, poll, cancel, download). No build step, no dependencies.
'use strict';

(() => {
  // The API lives beside this script's folder: …/api/playground/playground.js → …/api/
  const api = new URL('..', document.currentScript.src);
  const keyStorage = 'sdfunctions.playground.key';        // sessionStorage: gone with the tab
  const historyStorage = 'sdfunctions.playground.history'; // localStorage: ids, prompts, thumbnails
  const historySize = 12;
  const pollMilliseconds = 1000;
  const finished = new Set(['succeeded', 'failed', 'canceled']);

  const $ = id => document.getElementById(id);
  const form = $('generate'), key = $('key');
  let current = null; // { id, startedAt (ms, this page's clock), poll (timer), tick (timer), imageUrl (object URL) }

  // --- talking to the API -------------------------------------------------------------------------------------------

  async function call(method, path, body) {
    const headers = {};
    if (key.value.trim()) headers['x-functions-key'] = key.value.trim();
    if (body !== undefined) headers['content-type'] = 'application/json';
    return fetch(new URL(path, api), { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  }

  // An error answer as a problem (RFC 9457); the host's own 401 has no body, so it is explained here.
  async function problemOf(response) {
    if (response.status === 401) {
      return {
        title: 'Function key needed (401 Unauthorized)',
        detail: key.value.trim()
          ? 'The service refused this function key. Check that it is a key of this function app (Azure portal: the app’s App keys; locally: the key run-local.sh prints).'
          : 'This service needs a function key for this. Paste one into “Function key” (Azure portal: the function app’s App keys; locally: the key run-local.sh prints) and try again.',
      };
    }
    const type = response.headers.get('content-type') || '';
    if (type.includes('json')) {
      try { return await response.json(); } catch { /* fall through */ }
    }
    return { title: `The service answered ${response.status} ${response.statusText}`.trim(), detail: '' };
  }

  // --- what the page shows ------------------------------------------------------------------------------------------

  function showProblem(problem) {
    $('problem-title').textContent = problem.title || 'Something went wrong';
    $('problem-detail').textContent = [problem.detail, problem.correlationId ? `(correlation id ${problem.correlationId})` : '']
      .filter(Boolean).join(' ');
    const list = $('problem-errors');
    list.replaceChildren(...Object.entries(problem.errors || {}).map(([field, messages]) => {
      const item = document.createElement('li');
      item.textContent = `${field}: ${[].concat(messages).join(' ')}`;
      return item;
    }));
    $('problem').hidden = false;
  }

  function hideProblem() { $('problem').hidden = true; }

  function statusText(job) {
    const p = job.progress || {};
    switch (job.status) {
      case 'queued': return job.queue && job.queue.approximateAhead > 0 ? `Queued, about ${job.queue.approximateAhead} ahead` : 'Queued';
      case 'running': return p.total ? `Running: step ${p.step} of ${p.total}` : 'Running: loading the model';
      case 'succeeded': return 'Succeeded';
      case 'failed': return 'Failed';
      case 'canceled': return 'Canceled';
      default: return job.status;
    }
  }

  function seconds(value) { return `${value.toFixed(1)} s`; }

  function render(job) {
    $('job').hidden = false;
    $('status').textContent = statusText(job);
    $('status').dataset.status = job.status;
    const p = job.progress || { step: 0, total: 0 };
    $('progress').max = Math.max(p.total || 1, 1);
    $('progress').value = p.step || 0;
    $('progress-label').textContent = `step ${p.step || 0} of ${p.total || '?'}`;
    $('cancel').disabled = finished.has(job.status);
    if (job.status === 'failed' && job.error) showProblem(job.error);
    if (finished.has(job.status) && job.createdAt && job.completedAt) {
      $('elapsed').textContent = seconds((Date.parse(job.completedAt) - Date.parse(job.createdAt)) / 1000);
    }
    if (current && current.status !== job.status) {
      current.status = job.status;
      rememberJob({ id: job.id, status: job.status });
    }
  }

  function tickElapsed() {
    if (current) $('elapsed').textContent = seconds((Date.now() - current.startedAt) / 1000);
  }

  async function showImage(job) {
    const response = await call('GET', `generations/${job.id}/image`);
    if (!response.ok) { showProblem(await problemOf(response)); return; }
    const blob = await response.blob();
    if (!current || current.id !== job.id) return; // another job was opened meanwhile
    if (current.imageUrl) URL.revokeObjectURL(current.imageUrl);
    const url = URL.createObjectURL(blob);
    current.imageUrl = url;
    const image = $('image');
    image.src = url;
    await image.decode();
    // A small model's pictures (64 px) are shown four times larger, pixels kept sharp; the download is the image itself.
    image.classList.toggle('upscaled', image.naturalWidth < 192);
    const out = job.output, t = out.timings || {};
    image.alt = `Generated image: ${job.input && job.input.prompt ? job.input.prompt : ''}`.trim();
    $('caption').textContent = `Seed ${out.seed} · ${out.scheduler}, ${out.steps} steps, guidance ${out.guidanceScale} · ` +
      `${out.width}×${out.height} · ${seconds(t.totalSeconds || 0)} on the worker (denoise ${seconds(t.denoiseSeconds || 0)}, decode ${seconds(t.decodeSeconds || 0)})`;
    const extension = (out.contentType || 'image/png').split('/')[1];
    $('download').href = url;
    $('download').download = `sdfunctions-${job.id}.${extension}`;
    $('result').hidden = false;
    rememberJob({ id: job.id, thumbnail: thumbnailOf(image) });
  }

  // A small JPEG of the image for the history (drawn from our own blob, so the canvas is not tainted).
  function thumbnailOf(image) {
    const size = 96, canvas = document.createElement('canvas');
    const scale = size / Math.max(image.naturalWidth, image.naturalHeight);
    canvas.width = Math.round(image.naturalWidth * scale);
    canvas.height = Math.round(image.naturalHeight * scale);
    canvas.getContext('2d').drawImage(image, 0, 0, canvas.width, canvas.height);
    return canvas.toDataURL('image/jpeg', 0.8);
  }

  // --- following a job ----------------------------------------------------------------------------------------------

  function stopFollowing() {
    if (!current) return;
    clearTimeout(current.poll);
    clearInterval(current.tick);
  }

  function follow(job, startedAt) {
    stopFollowing();
    if (current && current.imageUrl) URL.revokeObjectURL(current.imageUrl);
    current = { id: job.id, status: null, startedAt, poll: 0, tick: 0, imageUrl: null };
    $('result').hidden = true;
    $('elapsed').textContent = seconds(0);
    render(job);
    if (finished.has(job.status)) { finish(job); return; }
    current.tick = setInterval(tickElapsed, 100);
    schedulePoll(job.id, pollMilliseconds);
  }

  function schedulePoll(id, delay) {
    current.poll = setTimeout(() => poll(id), delay);
  }

  async function poll(id) {
    if (!current || current.id !== id) return;
    let response;
    try { response = await call('GET', `generations/${id}`); }
    catch { $('status').textContent = 'The service did not answer; trying again…'; schedulePoll(id, 3 * pollMilliseconds); return; }
    if (!current || current.id !== id) return;
    if (!response.ok) {
      const problem = await problemOf(response);
      showProblem(problem);
      if (response.status >= 500) schedulePoll(id, 5 * pollMilliseconds); // storage out or a server error: try again
      else { stopFollowing(); $('cancel').disabled = true; }
      return;
    }
    const job = await response.json();
    render(job);
    if (finished.has(job.status)) finish(job);
    else schedulePoll(id, pollMilliseconds);
  }

  function finish(job) {
    stopFollowing();
    if (job.status === 'succeeded') showImage(job).catch(e => showProblem({ title: 'The image could not be shown', detail: String(e) }));
    refreshService(); // the first job loads the model: now the lists are the model's own
  }

  async function cancel() {
    if (!current) return;
    $('cancel').disabled = true;
    const response = await call('POST', `generations/${current.id}/cancel`);
    if (!response.ok) { showProblem(await problemOf(response)); return; }
    const job = await response.json();
    render(job);
    if (finished.has(job.status)) finish(job);
    else $('status').textContent = 'Stopping at the next step…';
  }

  // --- submitting ---------------------------------------------------------------------------------------------------

  function request() {
    const body = { prompt: $('prompt').value };
    const negative = $('negative').value;
    if (negative.trim()) body.negativePrompt = negative;
    const number = (id, name) => { const v = $(id).value.trim(); if (v !== '') body[name] = Number(v); };
    number('steps', 'steps');
    number('guidance', 'guidanceScale');
    number('seed', 'seed');
    if ($('scheduler').value) body.scheduler = $('scheduler').value;
    if ($('decoder').value) body.decoder = $('decoder').value;
    return body;
  }

  async function submit(event) {
    event.preventDefault();
    hideProblem();
    if (!$('prompt').value.trim()) {
      showProblem({ title: 'A prompt is needed', detail: 'Describe the picture you want in “Prompt”.' });
      $('prompt').focus();
      return;
    }
    $('submit').disabled = true;
    const startedAt = Date.now();
    try {
      const body = request();
      const response = await call('POST', 'generations', body);
      if (!response.ok) { showProblem(await problemOf(response)); return; }
      const job = await response.json();
      rememberJob({ id: job.id, prompt: body.prompt, status: job.status, createdAt: job.createdAt }, true);
      follow(job, startedAt);
    } catch (e) {
      showProblem({ title: 'The service did not answer', detail: String(e) });
    } finally {
      $('submit').disabled = false;
    }
  }

  // --- history of this browser's jobs -------------------------------------------------------------------------------

  function loadHistory() {
    try { return JSON.parse(localStorage.getItem(historyStorage)) || []; } catch { return []; }
  }

  // Merges what is known of a job into its entry (a new job goes first); keeps the newest few.
  function rememberJob(entry, isNew = false) {
    let history = loadHistory();
    const found = history.find(h => h.id === entry.id);
    if (found) Object.assign(found, entry);
    else if (isNew) history.unshift(entry);
    else return;
    history = history.slice(0, historySize);
    try { localStorage.setItem(historyStorage, JSON.stringify(history)); } catch { /* storage full or off: history is a nicety */ }
    renderHistory(history);
  }

  function renderHistory(history = loadHistory()) {
    $('history-empty').hidden = history.length > 0;
    $('clear-history').hidden = history.length === 0;
    $('history').replaceChildren(...history.map(entry => {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'history-item';
      button.setAttribute('aria-label', `Show job “${entry.prompt || entry.id}” (${entry.status || 'unknown'})`);
      if (entry.thumbnail) {
        const thumbnail = document.createElement('img');
        thumbnail.src = entry.thumbnail;
        thumbnail.alt = '';
        button.append(thumbnail);
      } else {
        const placeholder = document.createElement('span');
        placeholder.className = 'no-thumbnail';
        placeholder.textContent = entry.status === 'failed' ? '✕' : entry.status === 'canceled' ? '–' : '…';
        button.append(placeholder);
      }
      const text = document.createElement('span');
      text.className = 'history-text';
      const prompt = document.createElement('span');
      prompt.textContent = entry.prompt || entry.id;
      const meta = document.createElement('small');
      meta.textContent = `${entry.status || ''} · ${entry.createdAt ? new Date(entry.createdAt).toLocaleString() : ''}`;
      text.append(prompt, meta);
      button.append(text);
      button.addEventListener('click', () => openJob(entry.id));
      item.append(button);
      return item;
    }));
  }

  async function openJob(id) {
    hideProblem();
    const response = await call('GET', `generations/${id}`);
    if (!response.ok) { showProblem(await problemOf(response)); return; }
    const job = await response.json();
    follow(job, Date.parse(job.createdAt) || Date.now());
    $('job-heading').focus();
  }

  // --- what the service offers --------------------------------------------------------------------------------------

  function fill(select, values, defaultValue) {
    const chosen = select.value;
    const options = [new Option(defaultValue ? `model default (${defaultValue})` : 'model default', '')]
      .concat(values.map(v => new Option(v, v)));
    select.replaceChildren(...options);
    if (values.includes(chosen)) select.value = chosen;
  }

  // The lists come from /api/health (the model's profile); should the service not know it, from the API's own document (every value).
  async function refreshService() {
    try {
      const health = await (await fetch(new URL('health', api), { cache: 'no-store' })).json();
      let schedulers = health.schedulers, decoders = health.decoders;
      if (!schedulers || !decoders) {
        const schemas = (await (await fetch(new URL('openapi.json', api))).json()).components.schemas;
        schedulers = schedulers || schemas.Scheduler.enum;
        decoders = decoders || schemas.Decoder.enum;
      }
      fill($('scheduler'), schedulers, health.defaults && health.defaults.scheduler);
      fill($('decoder'), decoders, health.defaultDecoder);
      showExamples(health.examplePrompts || []);
      if (health.defaults) {
        $('steps').placeholder = health.defaults.steps;
        $('steps').max = health.defaults.maxSteps;
        $('guidance').placeholder = health.defaults.guidanceScale;
      }
      $('service').textContent = health.modelLoaded
        ? `Model ${health.model}, ${health.imageSize} images, on ${health.cpu.model} (ONNX Runtime ${health.onnxRuntime}).`
        : `${health.imageSize} images. The model loads with the first job on this instance.`;
    } catch (e) {
      $('service').textContent = `The service did not answer /api/health (${e}).`;
    }
  }

  // The model card's prompts, as buttons that fill the prompt (text only: a card is data, not markup).
  function showExamples(prompts) {
    const box = $('examples');
    box.querySelectorAll('button').forEach(b => b.remove());
    for (const text of prompts) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'example';
      button.textContent = text;
      button.addEventListener('click', () => { $('prompt').value = text; $('prompt').focus(); });
      box.appendChild(button);
    }
    box.hidden = prompts.length === 0;
    if (prompts.length > 0 && !$('prompt').placeholder) $('prompt').placeholder = prompts[0];
  }

  // --- wiring -------------------------------------------------------------------------------------------------------

  key.value = sessionStorage.getItem(keyStorage) || '';
  key.addEventListener('input', () => sessionStorage.setItem(keyStorage, key.value));
  form.addEventListener('submit', submit);
  $('cancel').addEventListener('click', cancel);
  $('clear-history').addEventListener('click', () => { localStorage.removeItem(historyStorage); renderHistory([]); });
  $('job-heading').tabIndex = -1;
  renderHistory();
  refreshService();
})();
