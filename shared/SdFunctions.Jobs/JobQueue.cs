using System.Text.Json;
using System.Text.Json.Serialization;
using Azure.Storage.Queues;

namespace SdFunctions.Jobs;

/// <summary>
/// The message that asks a worker to run a job: its id, and the W3C traceparent of the job's trace (so the run is traced
/// as part of the request that submitted it); everything else is in the job record.
/// </summary>
public sealed record JobMessage(string JobId,
    [property: JsonPropertyName("traceparent"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? TraceParent = null)
{
    /// <summary>Reads a message; null when it is not a JSON object with a well-formed job id.</summary>
    public static JobMessage? TryParse(string text)
    {
        try
        {
            var message = JsonSerializer.Deserialize<JobMessage>(text, JobJson.Options);
            return message is { JobId: { } id } && JobIds.IsWellFormed(id) ? message : null;
        }
        catch (JsonException) { return null; }
    }
}

/// <summary>The generations queue and its poison queue (base64 messages, as the Functions queue trigger expects).</summary>
public sealed class JobQueue(QueueClient queue, QueueClient poison)
{
    /// <summary>The queue the worker function listens on.</summary>
    public const string Name = "generations";

    public const QueueMessageEncoding MessageEncoding = QueueMessageEncoding.Base64;

    public async Task EnsureCreatedAsync(CancellationToken ct)
    {
        await queue.CreateIfNotExistsAsync(cancellationToken: ct);
        await poison.CreateIfNotExistsAsync(cancellationToken: ct);
    }

    public string QueueName => queue.Name;

    /// <summary>Queues the job's message, in the job's trace (<see cref="JobRecord.TraceParent"/>), visible at once or after <paramref name="delay"/>.</summary>
    public async Task SendAsync(string jobId, string? traceParent, CancellationToken ct, TimeSpan? delay = null) =>
        await queue.SendMessageAsync(JsonSerializer.Serialize(new JobMessage(jobId, traceParent), JobJson.Options), delay, cancellationToken: ct);

    /// <summary>The queue's approximate message count (visible and invisible ones: Storage counts them lazily).</summary>
    /// <summary>Whether the queue the triggers read exists on the account (health: without it no job runs).</summary>
    public async Task<bool> ExistsAsync(CancellationToken ct) => (await queue.ExistsAsync(ct)).Value;

    public async Task<int> ApproximateCountAsync(CancellationToken ct) => (await queue.GetPropertiesAsync(ct)).Value.ApproximateMessagesCount;

    /// <summary>Moves a message that can never succeed straight to the poison queue (no pointless retries).</summary>
    public async Task SendToPoisonAsync(string text, CancellationToken ct) => await poison.SendMessageAsync(text, ct);
}

public static class JobIds
{
    public static string New() => Guid.NewGuid().ToString("N");
    /// <summary>The one id grammar: exactly 32 lower-case hexadecimal digits (a GUID without dashes), nothing around them.</summary>
    public static bool IsWellFormed(string id) => id.Length == 32 && id.All(c => char.IsAsciiDigit(c) || c is >= 'a' and <= 'f');
}
