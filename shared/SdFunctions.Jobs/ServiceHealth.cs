using Microsoft.Extensions.Logging;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Jobs;

/// <summary>One part of the service's health: ok or not, and if not, why (in words safe to show anyone) and since when.</summary>
public sealed record HealthCheck(string Status, string? Reason = null, DateTimeOffset? Since = null)
{
    public const string Ok = "ok", Loading = "loading", NotLoaded = "notLoaded", Failed = "failed", Unavailable = "unavailable";
    [System.Text.Json.Serialization.JsonIgnore] public bool IsHealthy => Status is not (Failed or Unavailable);
}

/// <summary>Whether this instance can run jobs: its queue (the triggers' queue on JobsStorage) and its model.</summary>
public sealed record HealthReport(HealthCheck Queue, HealthCheck Model)
{
    [System.Text.Json.Serialization.JsonIgnore] public bool IsHealthy => Queue.IsHealthy && Model.IsHealthy;
}

/// <summary>
/// What /api/health reports beyond the model's profile: the queue the triggers read must exist and answer, and the model must
/// load (a failed load is shown with when it first failed, until a load succeeds). The queue is asked at most every few seconds
/// (health is anonymous: it must not become a way to load storage), within a short budget of its own.
/// </summary>
public sealed class ServiceHealth(PipelineHolder pipelines, ModelProfiles profiles, JobQueue queue, TimeProvider time, ILogger<ServiceHealth> logger)
{
    private static readonly TimeSpan CacheFor = TimeSpan.FromSeconds(5), QueueBudget = TimeSpan.FromSeconds(5);
    private readonly Lock _lock = new();
    private (HealthCheck Check, DateTimeOffset At)? _queue;

    public async Task<HealthReport> CheckAsync(CancellationToken ct) => new(await QueueAsync(ct), Model());

    private HealthCheck Model()
    {
        if (pipelines.Loaded is not null) return new(HealthCheck.Ok);
        if (pipelines.IsLoading) return new(HealthCheck.Loading);
        if ((pipelines.LastFailure ?? profiles.LastFailure) is { } failure) return new(HealthCheck.Failed, Describe(failure.Error), failure.Since);
        return new(HealthCheck.NotLoaded); // loaded by the first job
    }

    private async Task<HealthCheck> QueueAsync(CancellationToken ct)
    {
        lock (_lock)
            if (_queue is { } cached && time.GetUtcNow() - cached.At < CacheFor) return cached.Check;
        HealthCheck check;
        using var budget = CancellationTokenSource.CreateLinkedTokenSource(ct);
        budget.CancelAfter(QueueBudget);
        try
        {
            check = await queue.ExistsAsync(budget.Token) ? new(HealthCheck.Ok)
                : new(HealthCheck.Unavailable, $"The queue '{queue.QueueName}' does not exist on the JobsStorage account: submitted jobs would never run.");
        }
        catch (Exception e) when (StorageErrors.IsOutage(e) || (e is OperationCanceledException && !ct.IsCancellationRequested))
        {
            logger.LogWarning(e, "Health: the jobs queue could not be reached");
            check = new(HealthCheck.Unavailable, "The JobsStorage account does not answer: jobs can neither be queued nor run.");
        }
        var now = time.GetUtcNow();
        lock (_lock)
        {
            // An outage is reported from when it was first seen.
            if (!check.IsHealthy && _queue is { Check: { IsHealthy: false, Since: { } since } }) check = check with { Since = since };
            else if (!check.IsHealthy) check = check with { Since = now };
            _queue = (check, now);
        }
        return check;
    }

    /// <summary>Why a load failed, without paths, names or exception text (health is anonymous); the log has the exception.</summary>
    public static string Describe(Exception e) => e switch
    {
        ModelBundleException or FileNotFoundException or DirectoryNotFoundException => "The model bundle is incomplete or unreadable",
        OnnxRuntimeException => "ONNX Runtime could not load the model's graphs",
        OutOfMemoryException or InsufficientMemoryException => "The instance ran out of memory loading the model",
        _ when StorageErrors.IsOutage(e) => "The model could not be read from storage",
        _ => "The model could not be loaded",
    } + "; the instance's log has the cause.";
}
