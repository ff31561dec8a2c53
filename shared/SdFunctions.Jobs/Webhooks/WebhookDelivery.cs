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

/// <summary>The webhooks queue (and its poison queue, which only the host uses): events wait here, never blocking a generation.</summary>
public sealed class WebhookQueue(QueueClient queue, QueueClient poison, ILogger<WebhookQueue> logger)
{
    public const string Name = "webhooks";

    public async Task EnsureCreatedAsync(CancellationToken ct)
    {
        await queue.CreateIfNotExistsAsync(cancellationToken: ct);
        await poison.CreateIfNotExistsAsync(cancellationToken: ct);
    }

    public async Task SendAsync(WebhookMessage message, TimeSpan? delay, CancellationToken ct) =>
        await queue.SendMessageAsync(JsonSerializer.Serialize(message, JobJson.Options), delay, cancellationToken: ct);

    /// <summary>
    /// Queues <paramref name="event"/> for a job that asked for it. Best effort: the job's own outcome is already written, and an
    /// outage here must not fail it (the event is then lost, and logged).
    /// </summary>
    public async Task NotifyAsync(JobRecord job, string @event)
    {
        if (job.Input.Webhook is not { } hook || !hook.Events.Contains(@event)) return;
        string id = @event == Events.Started ? $"{job.Id}-{Events.Started}-{job.Attempt}" : $"{job.Id}-{@event}";
        string? snapshot = @event == Events.Started ? JsonSerializer.Serialize(JobResource.From(job, null), JobJson.Options) : null;
        try { await SendAsync(new WebhookMessage(job.Id, @event, id, 1, snapshot), null, CancellationToken.None); }
        catch (Exception e) when (StorageErrors.IsOutage(e)) { logger.LogError(e, "Could not queue the {Event} webhook of job {JobId}; it is not sent", @event, job.Id); }
    }

    public static WebhookMessage? TryParse(string text)
    {
        try { return JsonSerializer.Deserialize<WebhookMessage>(text, JobJson.Options) is { JobId: { } id, Event: { } e, Id: { } } m && JobIds.IsWellFormed(id) && Events.All.Contains(e) ? m : null; }
        catch (JsonException) { return null; }
    }
}

/// <summary>
/// Delivers one webhook event: POSTs the job resource (what GET /api/generations/{id} answers), signed per Standard Webhooks
/// (webhook-id, webhook-timestamp, webhook-signature = v1,base64(HMAC-SHA256(secret, id.timestamp.body))). A 2xx is delivered; anything
/// else (an error status, a redirect, a timeout, a refused address) is retried with backoff up to <see cref="WebhookOptions.MaxAttempts"/>,
/// then recorded as failed; a refused address is not retried. Each event keeps its webhook-id across retries, so receivers can drop
/// repeats (delivery is at least once).
/// </summary>
public sealed class WebhookSender(JobStore store, WebhookQueue queue, ImageStore images, IOptions<WebhookOptions> options, TimeProvider time,
    ILogger<WebhookSender> logger) : IDisposable
{
    private WebhookOptions Options => options.Value;
    private readonly Lazy<HttpClient> _http = new(() => new HttpClient(OutboundAddress.Handler(options.Value.AllowHttpLoopback, options.Value.Timeout))
    {
        Timeout = options.Value.Timeout,
    });

    public async Task DeliverAsync(string messageText, CancellationToken ct)
    {
        if (WebhookQueue.TryParse(messageText) is not { } message) { logger.LogError("Malformed webhook message dropped"); return; }
        var job = await store.GetAsync(message.JobId, ct);
        if (job?.Input.Webhook is not { } hook) { logger.LogWarning("Webhook for job {JobId}, which has none, dropped", message.JobId); return; }
        if (job.Webhooks.FirstOrDefault(w => w.Id == message.Id) is { Status: not WebhookDeliveryState.Pending }) return; // a repeated message

        string? error = null;
        bool retry = true;
        var watch = Stopwatch.StartNew();
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
            if (!response.IsSuccessStatusCode) error = $"The receiver answered {(int)response.StatusCode} {response.ReasonPhrase}.";
        }
        catch (HttpRequestException e) when (e.InnerException is RefusedAddressException refused) { error = $"Refused: {refused.Message}"; retry = false; }
        catch (HttpRequestException e) { error = $"Could not deliver: {e.Message}"; }
        catch (TaskCanceledException) when (!ct.IsCancellationRequested) { error = $"No answer within {Options.Timeout.TotalSeconds:0} s."; }

        bool again = error is not null && retry && message.Attempt < Options.MaxAttempts;
        string status = error is null ? WebhookDeliveryState.Delivered : again ? WebhookDeliveryState.Pending : WebhookDeliveryState.Failed;
        var state = new WebhookDeliveryState(message.Event, message.Id, status, message.Attempt, time.GetUtcNow(), error);
        await store.ChangeAsync(job.Id, r => r with { Webhooks = [.. r.Webhooks.Where(w => w.Id != message.Id), state] }, ct);
        if (again)
        {
            var delay = TimeSpan.FromTicks(Math.Min(Options.MaxRetryDelay.Ticks, Options.RetryDelay.Ticks << Math.Min(message.Attempt - 1, 20)));
            await queue.SendAsync(message with { Attempt = message.Attempt + 1 }, delay, ct);
        }
        if (error is null) logger.LogInformation("Webhook {Event} of job {JobId} delivered in {Ms:F0} ms", message.Event, job.Id, watch.Elapsed.TotalMilliseconds);
        else logger.LogWarning("Webhook {Event} of job {JobId}, attempt {Attempt}: {Error}{Then}", message.Event, job.Id, message.Attempt, error,
            again ? "; retried later" : "; given up");
    }

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
