using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Azure.Storage.Queues;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using StandardWebhooks;

namespace SdFunctions.Jobs.Webhooks;

/// <summary>Webhook settings, bound from the "Webhooks" section (Webhooks__… app settings).</summary>
public sealed class WebhookOptions
{
    public const string Section = "Webhooks";

    /// <summary>The queue events wait in. The trigger listens on <see cref="WebhookQueue.Name"/>; keep them equal.</summary>
    public string QueueName { get; set; } = WebhookQueue.Name;

    /// <summary>The Standard Webhooks signing secret (whsec_ + base64). Without one, requests with a webhook are refused.</summary>
    public string? SigningSecret { get; set; }

    /// <summary>Lets webhooks go to http://localhost / 127.0.0.1 (tests, local runs). Never on in Azure.</summary>
    public bool AllowHttpLoopback { get; set; }

    /// <summary>Deliveries tried per event before it is recorded as failed; the wait before retry k is RetryDelay · 2^(k−1), at most MaxRetryDelay.</summary>
    public int MaxAttempts { get; set; } = 6;
    public TimeSpan RetryDelay { get; set; } = TimeSpan.FromSeconds(10);
    public TimeSpan MaxRetryDelay { get; set; } = TimeSpan.FromMinutes(10);

    /// <summary>How long one delivery may take, connection included.</summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>First deliveries sent at once per instance (each at most <see cref="PerHostConcurrency"/> to one receiver's host), so a hanging receiver delays no one else.</summary>
    public int Concurrency { get; set; } = 32;
    public int PerHostConcurrency { get; set; } = 4;
}

/// <summary>What a request asks: where to send, and for which events (<see cref="Events.Completed"/> by default).</summary>
public sealed record WebhookRequest
{
    public string? Url { get; init; }
    public IReadOnlyList<string>? Events { get; init; }
}

/// <summary>A job's webhook as validated and stored: its URL and events.</summary>
public sealed record Webhook(string Url, IReadOnlyList<string> Events);

public static class Events
{
    /// <summary>The job ended: succeeded, failed or canceled.</summary>
    public const string Completed = "completed";

    /// <summary>A run began (each attempt).</summary>
    public const string Started = "started";
    public static readonly IReadOnlyList<string> All = [Completed, Started];
}

/// <summary>How one event's delivery stands, on the job record.</summary>
public sealed record WebhookDeliveryState(string Event, string Id, string Status, int Attempts, DateTimeOffset UpdatedAt, string? LastError = null)
{
    public const string Pending = "pending", Delivered = "delivered", Failed = "failed";
}

/// <summary>
/// The webhooks queue's message: deliver one event of one job (attempt = the deliveries tried so far + 1). A started event carries
/// the job as it was then (<see cref="Snapshot"/>), so a late delivery still says running; completed sends the job as it is, with fresh links.
/// </summary>
public sealed record WebhookMessage(string JobId, string Event, string Id, int Attempt, string? Snapshot = null);

/// <summary>A message on the webhooks queue, as its sender may change or delete it.</summary>
public sealed record QueuedMessage(string MessageId, string PopReceipt);

/// <summary>The webhooks queue (and its poison queue, which only the host uses): events wait here, never blocking a generation.</summary>
public sealed class WebhookQueue(QueueClient queue, QueueClient poison)
{
    public const string Name = "webhooks";

    public async Task EnsureCreatedAsync(CancellationToken ct)
    {
        await queue.CreateIfNotExistsAsync(cancellationToken: ct);
        await poison.CreateIfNotExistsAsync(cancellationToken: ct);
    }

    /// <summary>Queues <paramref name="message"/>, visible after <paramref name="delay"/>; the receipt lets its sender change or delete it.</summary>
    public async Task<QueuedMessage> SendAsync(WebhookMessage message, TimeSpan? delay, CancellationToken ct)
    {
        var receipt = (await queue.SendMessageAsync(JsonSerializer.Serialize(message, JobJson.Options), delay, cancellationToken: ct)).Value;
        return new QueuedMessage(receipt.MessageId, receipt.PopReceipt);
    }

    /// <summary>Turns a queued message into <paramref name="message"/>, visible after <paramref name="delay"/>.</summary>
    public async Task UpdateAsync(QueuedMessage queued, WebhookMessage message, TimeSpan delay, CancellationToken ct) =>
        await queue.UpdateMessageAsync(queued.MessageId, queued.PopReceipt, JsonSerializer.Serialize(message, JobJson.Options), delay, ct);

    public async Task DeleteAsync(QueuedMessage queued, CancellationToken ct) => await queue.DeleteMessageAsync(queued.MessageId, queued.PopReceipt, ct);

    public static WebhookMessage? TryParse(string text)
    {
        try { return JsonSerializer.Deserialize<WebhookMessage>(text, JobJson.Options) is { JobId: { } id, Event: { } e, Id: { } } m && JobIds.IsWellFormed(id) && Events.All.Contains(e) ? m : null; }
        catch (JsonException) { return null; }
    }
}

/// <summary>
/// Delivers webhook events: POSTs the job resource (what GET /api/generations/{id} answers), signed per Standard Webhooks
/// (webhook-id, webhook-timestamp, webhook-signature = v1,base64(HMAC-SHA256(secret, id.timestamp.body))). A 2xx is delivered; anything
/// else (an error status, a redirect, a timeout, a refused address) is retried with backoff up to <see cref="WebhookOptions.MaxAttempts"/>,
/// then recorded as failed; a refused address is not retried. Each event keeps its webhook-id across retries, so receivers can drop
/// repeats (delivery is at least once).
/// <para>
/// Sends do not wait for each other: host.json's batchSize 1 (one generation per instance) also gives the webhooks queue one slot,
/// and a receiver that hangs would hold it for its whole timeout, every try. So each attempt runs in the background, up to
/// <see cref="WebhookOptions.Concurrency"/> at once and <see cref="WebhookOptions.PerHostConcurrency"/> per receiver host, with a
/// backup message queued first (visible after <see cref="BackupDelay"/>, longer than any attempt): the attempt deletes it once it
/// is recorded, or turns it into the retry. Should the instance die mid-send, the backup delivers the event. With every slot taken
/// the queue function sends in its own invocation (backpressure), and a new event waits on the queue.
/// </para>
/// </summary>
public sealed class WebhookSender(JobStore store, WebhookQueue queue, ImageStore images, IOptions<WebhookOptions> options, TimeProvider time,
    ILogger<WebhookSender> logger) : IDisposable
{
    private WebhookOptions Options => options.Value;
    private readonly Lazy<HttpClient> _http = new(() => new HttpClient(OutboundAddress.Handler(options.Value.AllowHttpLoopback, options.Value.Timeout))
    {
        Timeout = options.Value.Timeout,
    });
    private readonly Lock _lock = new();
    private readonly Dictionary<string, int> _sendingTo = new(StringComparer.OrdinalIgnoreCase);
    private int _sending; // the sum of _sendingTo
    private readonly HashSet<Task> _inFlight = [];

    /// <summary>How long a backup message stays invisible: two timeouts and the writes around an attempt.</summary>
    public TimeSpan BackupDelay => 2 * Options.Timeout + TimeSpan.FromSeconds(10);

    /// <summary>
    /// Sends <paramref name="event"/> for a job that asked for it, now and in the background (or queued when every slot is taken).
    /// Best effort: the job's own outcome is already written, and an outage here must not fail it (the event is then lost, and logged).
    /// </summary>
    public async Task NotifyAsync(JobRecord job, string @event)
    {
        if (job.Input.Webhook is not { } hook || !hook.Events.Contains(@event)) return;
        string id = @event == Events.Started ? $"{job.Id}-{Events.Started}-{job.Attempt}" : $"{job.Id}-{@event}";
        string? snapshot = @event == Events.Started ? JsonSerializer.Serialize(JobResource.From(job, null), JobJson.Options) : null;
        var message = new WebhookMessage(job.Id, @event, id, 1, snapshot);
        try
        {
            if (!await TryStartAsync(message, job, CancellationToken.None)) await queue.SendAsync(message, null, CancellationToken.None);
        }
        catch (Exception e) when (StorageErrors.IsOutage(e)) { logger.LogError(e, "Could not queue the {Event} webhook of job {JobId}; it is not sent", @event, job.Id); }
    }

    /// <summary>The queue function: the message's attempt in the background when a slot is free, else here and now.</summary>
    public async Task DeliverAsync(string messageText, CancellationToken ct)
    {
        if (WebhookQueue.TryParse(messageText) is not { } message) { logger.LogError("Malformed webhook message dropped"); return; }
        if (await store.GetAsync(message.JobId, ct) is not { Input.Webhook: not null } job)
        {
            logger.LogWarning("Webhook for job {JobId}, which has none, dropped", message.JobId);
            return;
        }
        if (!await TryStartAsync(message, job, ct)) await AttemptAsync(message, job, backup: null, ct);
    }

    /// <summary>Waits until no attempt runs in the background (tests; a host that drains before it stops).</summary>
    public async Task IdleAsync()
    {
        while (true)
        {
            Task[] running;
            lock (_lock) running = [.. _inFlight];
            if (running.Length == 0) return;
            await Task.WhenAll(running);
        }
    }

    // Reserves a slot for the receiver's host; with one, queues the backup and starts the attempt. False: no slot free.
    // The job as just read (or just written, for a new event): the attempt sends from it without reading it again.
    private async Task<bool> TryStartAsync(WebhookMessage message, JobRecord job, CancellationToken ct)
    {
        string url = job.Input.Webhook!.Url;
        string host = Uri.TryCreate(url, UriKind.Absolute, out var uri) ? uri.Authority : url;
        lock (_lock)
        {
            int toHost = _sendingTo.GetValueOrDefault(host);
            if (_sending >= Options.Concurrency || toHost >= Options.PerHostConcurrency) return false;
            _sendingTo[host] = toHost + 1;
            _sending++;
        }
        try
        {
            var backup = await queue.SendAsync(message, BackupDelay, ct);
            var attempt = Task.Run(() => AttemptInBackgroundAsync(message, backup));
            lock (_lock) _inFlight.Add(attempt);
            _ = attempt.ContinueWith(t => { lock (_lock) _inFlight.Remove(t); }, TaskScheduler.Default);
            return true;
        }
        catch
        {
            Release(host); // the backup could not be queued: nothing was started
            throw;
        }

        async Task AttemptInBackgroundAsync(WebhookMessage m, QueuedMessage b)
        {
            try { await AttemptAsync(m, job, b, CancellationToken.None); }
            catch (Exception e) { logger.LogWarning(e, "Webhook {Event} of job {JobId}: the attempt could not be recorded; its backup message delivers it", m.Event, m.JobId); }
            finally { Release(host); }
        }
    }

    private void Release(string host)
    {
        lock (_lock)
        {
            _sending--;
            if (--_sendingTo[host] == 0) _sendingTo.Remove(host);
        }
    }

    /// <summary>
    /// One attempt of one event, recorded on the job; then its retry is queued (the backup message becomes it) or the backup deleted.
    /// </summary>
    private async Task AttemptAsync(WebhookMessage message, JobRecord job, QueuedMessage? backup, CancellationToken ct)
    {
        if (job.Input.Webhook is not { } hook || job.Webhooks.FirstOrDefault(w => w.Id == message.Id) is { Status: not WebhookDeliveryState.Pending })
        {
            if (backup is not null) await queue.DeleteAsync(backup, ct); // a repeated message, or a job gone meanwhile
            return;
        }

        var watch = Stopwatch.StartNew();
        var (error, retry) = await SendAsync(job, hook, message, ct);
        bool again = error is not null && retry && message.Attempt < Options.MaxAttempts;
        string status = error is null ? WebhookDeliveryState.Delivered : again ? WebhookDeliveryState.Pending : WebhookDeliveryState.Failed;
        var state = new WebhookDeliveryState(message.Event, message.Id, status, message.Attempt, time.GetUtcNow(), error);
        await store.ChangeAsync(job.Id, r => r with { Webhooks = [.. r.Webhooks.Where(w => w.Id != message.Id), state] }, ct);
        if (again)
        {
            var delay = TimeSpan.FromTicks(Math.Min(Options.MaxRetryDelay.Ticks, Options.RetryDelay.Ticks << Math.Min(message.Attempt - 1, 20)));
            var next = message with { Attempt = message.Attempt + 1 };
            if (backup is not null) await queue.UpdateAsync(backup, next, delay, ct);
            else await queue.SendAsync(next, delay, ct);
        }
        else if (backup is not null) await queue.DeleteAsync(backup, ct);
        if (error is null) logger.LogInformation("Webhook {Event} of job {JobId} delivered in {Ms:F0} ms", message.Event, job.Id, watch.Elapsed.TotalMilliseconds);
        else logger.LogWarning("Webhook {Event} of job {JobId}, attempt {Attempt}: {Error}{Then}", message.Event, job.Id, message.Attempt, error,
            again ? "; retried later" : "; given up");
    }

    /// <summary>The POST itself: null when delivered, else what went wrong (in our words) and whether trying again can help.</summary>
    private async Task<(string? Error, bool Retry)> SendAsync(JobRecord job, Webhook hook, WebhookMessage message, CancellationToken ct)
    {
        try
        {
            string body = message.Snapshot ?? JsonSerializer.Serialize(await ResourceAsync(job, ct), JobJson.Options);
            var now = time.GetUtcNow();
            using var request = new HttpRequestMessage(HttpMethod.Post, hook.Url) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            request.Headers.Add("webhook-id", message.Id);
            request.Headers.Add("webhook-timestamp", now.ToUnixTimeSeconds().ToString(System.Globalization.CultureInfo.InvariantCulture));
            request.Headers.Add("webhook-signature", new StandardWebhook(Options.SigningSecret!).Sign(message.Id, now, body));
            request.Headers.UserAgent.ParseAdd("SdFunctions-Webhooks/1.0");
            // The answer's body is never read: only its status counts, so a large or slow one costs nothing.
            using var response = await _http.Value.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
            return response.IsSuccessStatusCode ? (null, false) : ($"The receiver answered {(int)response.StatusCode} {response.ReasonPhrase}.", true);
        }
        catch (HttpRequestException e) when (e.InnerException is RefusedAddressException refused) { return ($"Refused: {refused.Message}", false); }
        catch (HttpRequestException e) { return ($"Could not deliver: {Reason(e)}.", true); }
        catch (TaskCanceledException) when (!ct.IsCancellationRequested) { return ($"No answer within {Options.Timeout.TotalSeconds:0} s.", true); }
    }

    /// <summary>HttpClient's text ends in "see inner exception" or names .NET types; a receiver's operator wants the network's words.</summary>
    private static string Reason(HttpRequestException e) => e.HttpRequestError switch
    {
        HttpRequestError.NameResolutionError => "its host name does not resolve",
        HttpRequestError.ConnectionError => e.InnerException is System.Net.Sockets.SocketException s ? $"the connection failed ({s.SocketErrorCode})" : "the connection failed",
        HttpRequestError.SecureConnectionError => "the TLS handshake failed (check the receiver's certificate)",
        HttpRequestError.ResponseEnded => "the receiver closed the connection before answering",
        HttpRequestError.InvalidResponse => "the receiver's answer was not valid HTTP",
        HttpRequestError.ProxyTunnelError => "the connection failed",
        _ => "the request failed",
    };

    // The resource as a poll would show it, with fresh image links (the image route is not known here: only SAS links).
    private async Task<JobResource> ResourceAsync(JobRecord job, CancellationToken ct)
    {
        if (job.Status != JobStatus.Succeeded) return JobResource.From(job, null);
        return JobResource.From(job, await images.GetReadUrlsAsync(job, imageRoute: null, ct));
    }

    public void Dispose()
    {
        if (_http.IsValueCreated) _http.Value.Dispose();
    }
}
