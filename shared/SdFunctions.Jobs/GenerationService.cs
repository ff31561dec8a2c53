using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Jobs;

/// <summary>
/// What the HTTP API does, without HTTP: submit a job (validated, idempotent, queued), read it, cancel it,
/// fetch its image. Refusals are <see cref="ProblemException"/>s carrying their RFC 9457 problem.
/// </summary>
public sealed class GenerationService(JobStore store, JobTransitions transitions, JobQueue queue, ImageStore images, ModelProfiles profiles,
    IOptions<JobsOptions> options, IOptions<Webhooks.WebhookOptions> webhookOptions, TimeProvider time,
    ILogger<GenerationService> logger)
{
    private JobsOptions Options => options.Value;
    public const int MaxIdempotencyKeyLength = 200;

    /// <summary>How stale a queued job's position may be before a GET reads the queue again (one read per instance per period).</summary>
    public static readonly TimeSpan QueuePositionRefresh = TimeSpan.FromSeconds(5);
    private QueuePosition? _lastCount;

    /// <summary>
    /// Validates and queues a request. Returns the job and whether this call created it (false: idempotent replay).
    /// Idempotency keys are scoped by <paramref name="callerScope"/> (who is calling, as far as the platform tells: see
    /// <see cref="CallerScope"/>): two callers using the same key get two jobs and never learn of each other's.
    /// </summary>
    /// <param name="upload">A multipart request's picture (image-to-image); a JSON body carries it as a data URI instead.</param>
    public async Task<(JobRecord Job, bool Created)> SubmitAsync(ReadOnlyMemory<byte> body, string? idempotencyKey, CancellationToken ct,
        string callerScope = CallerScope.Anonymous, ImageUpload? upload = null)
    {
        var request = SubmitRequest.Parse(body.Span);
        if (request.Image is null && upload is null && body.Length > Options.MaxRequestBytes)
            throw new ProblemException(new Problem
            {
                Type = ProblemTypes.RequestTooLarge, Title = "Request too large", Status = 413,
                Detail = $"A request without an image may be at most {Options.MaxRequestBytes} bytes ({Options.MaxImageRequestBytes} with one).",
            });
        // What depends on the model (an LCM's negative prompt, its schedulers and decoders, an encoder for image-to-image) is
        // checked against its profile, read without loading the model: the same answer on every instance.
        var submission = request.Validate(Options, upload, webhookOptions.Value, await profiles.GetAsync(ct));
        var input = submission.Input;
        if (idempotencyKey is null) return (await CreateAndQueueAsync(JobIds.New(), submission, null, ct), true);

        if (idempotencyKey.Length is 0 or > MaxIdempotencyKeyLength)
            throw new ProblemException(new Problem
            {
                Type = ProblemTypes.Validation, Title = "Invalid request", Status = 400,
                Detail = $"The Idempotency-Key header must be 1 to {MaxIdempotencyKeyLength} characters.",
                Errors = new Dictionary<string, string[]> { ["Idempotency-Key"] = [$"1 to {MaxIdempotencyKeyLength} characters."] },
            });
        // The same request is the same JSON after parsing (field order and spacing do not matter), seed as sent; a picture counts by
        // its SHA-256, so the same picture sent as a data URI or as a multipart part is the same request.
        string requestHash = JobStore.Hash(JsonSerializer.Serialize(request with { Image = input.Image?.Sha256 }, JobJson.Options));
        string scopedKey = $"{callerScope}\n{idempotencyKey}";
        var (claimed, claim) = await store.ClaimIdempotencyKeyAsync(scopedKey, new JobStore.IdempotencyClaim(JobIds.New(), requestHash), ct);
        if (claim.RequestHash != requestHash)
            throw new ProblemException(new Problem
            {
                Type = ProblemTypes.IdempotencyConflict, Title = "Idempotency key reused", Status = 422,
                Detail = "This Idempotency-Key was used before for a different request. Use a new key for a new request.",
            });
        if (!claimed && await store.GetAsync(claim.JobId, ct) is { } existing) return (await QueueIfNeverQueuedAsync(existing, ct), false);
        // Claimed now, or claimed by an earlier call that failed before its job existed: make the job under that id.
        return (await CreateAndQueueAsync(claim.JobId, submission, scopedKey, ct), true);
    }

    private async Task<JobRecord> CreateAndQueueAsync(string id, Submission submission, string? scopedKey, CancellationToken ct)
    {
        var input = submission.Input;
        using var span = JobsTelemetry.StartSend(id, queue.QueueName);
        using var scope = logger.BeginScope(new Dictionary<string, object> { ["JobId"] = id });
        var job = new JobRecord
        {
            Id = id, Input = input, CreatedAt = time.GetUtcNow(), TraceParent = JobsTelemetry.CurrentTraceParent(),
        };
        // Marked before the record exists, cleared once the message is sent: a crash in between leaves the mark, and the
        // job is queued by a replay or the sweep (InterruptedJobSweeper) instead of waiting forever.
        await store.MarkAsync(JobMark.Pending, id, ct);
        // The picture before the record: a record that exists always has its picture, whichever delivery runs it.
        if (submission.ImageBytes is { } picture) await store.UploadInputImageAsync(id, picture, input.Image!.MediaType, ct);
        if (!await store.TryCreateAsync(job, ct)) return (await store.GetAsync(id, ct))!; // a concurrent replay made it first
        try
        {
            await queue.SendAsync(id, job.TraceParent, ct);
        }
        catch (Exception e) when (StorageErrors.IsOutage(e) || e is OperationCanceledException)
        {
            span?.SetStatus(System.Diagnostics.ActivityStatusCode.Error, "not queued");
            // Never leave a job that no worker will ever see: undo, and let the client try again.
            logger.LogError(e, "Could not queue job {JobId}; removing it", id);
            await UndoAsync(id, scopedKey);
            throw new ProblemException(ServerProblems.Unavailable("The job could not be queued. Nothing was charged or created; try again."));
        }
        await ClearPendingAsync(id);
        logger.LogInformation("Queued job {JobId}", id);
        return await RecordQueuePositionAsync(job);
    }

    // Read once the message is in (the count holds it: ahead = count − 1); best effort, as the job is queued either way.
    private async Task<JobRecord> RecordQueuePositionAsync(JobRecord job)
    {
        if (await QueueCountAsync(CancellationToken.None) is not { } count) return job;
        var position = count with { ApproximateAhead = Math.Max(0, count.ApproximateAhead - 1) };
        try { return await store.UpdateAsync(job.Id, r => r.Status == JobStatus.Queued && r.Queue is null ? r with { Queue = position } : null, CancellationToken.None) ?? job; }
        catch (Exception e) when (StorageErrors.IsOutage(e))
        {
            logger.LogWarning(e, "Could not record the queue position of job {JobId}", job.Id);
            return job with { Queue = position };
        }
    }

    // Best effort: where storage is down for this too, the pending mark stays and the sweep finds the job.
    private async Task UndoAsync(string id, string? scopedKey)
    {
        try
        {
            await store.DeleteAsync(id, CancellationToken.None);
            await store.DeleteInputImageAsync(id, CancellationToken.None);
            if (scopedKey is not null) await store.ReleaseIdempotencyKeyAsync(scopedKey, CancellationToken.None);
            await store.ClearMarkAsync(JobMark.Pending, id, CancellationToken.None);
        }
        catch (Exception e) when (StorageErrors.IsOutage(e)) { logger.LogError(e, "Could not undo job {JobId}; the sweep will queue it", id); }
    }

    private async Task ClearPendingAsync(string id)
    {
        try { await store.ClearMarkAsync(JobMark.Pending, id, CancellationToken.None); }
        catch (Exception e) when (StorageErrors.IsOutage(e)) { logger.LogWarning(e, "Could not clear the pending mark of job {JobId}; the sweep may queue it twice (harmless)", id); }
    }

    /// <summary>
    /// A replay of a job whose submitter died between its record and its message (the pending mark is older than the grace
    /// period a live submitter needs to send it): queue it now. A second message, if that submitter did send, is harmless.
    /// </summary>
    private async Task<JobRecord> QueueIfNeverQueuedAsync(JobRecord job, CancellationToken ct)
    {
        if (job.Status != JobStatus.Queued || job.Attempt > 0 || job.CancelRequested) return job;
        if (await store.MarkedAtAsync(JobMark.Pending, job.Id, ct) is not { } since || time.GetUtcNow() - since < Options.SubmitGracePeriod) return job;
        logger.LogWarning("Job {JobId} was never queued (its submission was interrupted); queuing it on replay", job.Id);
        await queue.SendAsync(job.Id, job.TraceParent, ct);
        await ClearPendingAsync(job.Id);
        return job;
    }

    public async Task<JobRecord> GetAsync(string id, CancellationToken ct)
    {
        RequireWellFormed(id);
        return await store.GetAsync(id, ct) ?? throw NotFound(id);
    }

    private static void RequireWellFormed(string id)
    {
        if (!JobIds.IsWellFormed(id))
            throw new ProblemException(new Problem
            {
                Type = ProblemTypes.MalformedId, Title = "Malformed job id", Status = 400,
                Detail = "That is not a job id: ids are exactly 32 lower-case hexadecimal digits.",
            });
    }

    /// <summary>The job as clients see it, with fresh image links when it has succeeded (SAS, else the image route with ?index=).</summary>
    public async Task<JobResource> GetResourceAsync(string id, string imageRoute, CancellationToken ct)
    {
        var job = await GetAsync(id, ct);
        if (job is { Status: JobStatus.Queued, Queue: { } position } && time.GetUtcNow() - position.AsOf > QueuePositionRefresh
            && await QueueCountAsync(ct) is { } now)
            // Our own message is in the count; those queued after it are too, so the count only bounds what is ahead.
            job = job with { Queue = new QueuePosition(Math.Min(position.ApproximateAhead, Math.Max(0, now.ApproximateAhead - 1)), now.AsOf) };
        if (job.Status != JobStatus.Succeeded) return JobResource.From(job, null);
        return JobResource.From(job, await images.GetReadUrlsAsync(job, imageRoute, ct));
    }

    /// <summary>The queue's approximate count, read at most once per <see cref="QueuePositionRefresh"/>; null when the queue cannot tell (an outage).</summary>
    private async Task<QueuePosition?> QueueCountAsync(CancellationToken ct)
    {
        if (_lastCount is { } last && time.GetUtcNow() - last.AsOf <= QueuePositionRefresh) return last;
        try
        {
            var read = new QueuePosition(await queue.ApproximateCountAsync(ct), time.GetUtcNow());
            _lastCount = read;
            return read;
        }
        catch (Exception e) when (StorageErrors.IsOutage(e))
        {
            logger.LogWarning(e, "Could not read the queue's length; the position is left out");
            return null;
        }
    }

    /// <summary>A queued job is canceled at once; a running one is flagged and its worker stops at the next check.</summary>
    public async Task<JobRecord> CancelAsync(string id, CancellationToken ct)
    {
        RequireWellFormed(id);
        var (job, finishedAs) = await transitions.RequestCancelAsync(id, ct);
        if (job is null) throw NotFound(id);
        if (finishedAs is { } status)
            throw new ProblemException(new Problem
            {
                Type = ProblemTypes.AlreadyFinished, Title = "Job already finished", Status = 409,
                Detail = $"Job {id} has already {status.ToString().ToLowerInvariant()}; there is nothing to cancel.",
            });
        return job;
    }

    /// <summary>Image <paramref name="index"/> of a succeeded job, as a file of the job's format.</summary>
    public async Task<ImageDownload> GetImageAsync(string id, int index, CancellationToken ct)
    {
        var job = await GetAsync(id, ct);
        if (index < 0 || index >= job.Input.N)
            throw new ProblemException(new Problem
            {
                Type = ProblemTypes.Validation, Title = "Invalid request", Status = 400,
                Detail = $"Job {id} has {job.Input.N} image{(job.Input.N == 1 ? "" : "s")}: index is from 0 to {job.Input.N - 1}; got {index}.",
                Errors = new Dictionary<string, string[]> { ["index"] = [$"From 0 to {job.Input.N - 1}."] },
            });
        if (job.Status != JobStatus.Succeeded)
            throw new ProblemException(new Problem
            {
                Type = ProblemTypes.NotFinished, Title = "Image not ready", Status = 409,
                Detail = job.Status switch
                {
                    JobStatus.Canceled => $"Job {id} was canceled: it has no image.",
                    JobStatus.Failed => $"Job {id} failed: it has no image (its error says why).",
                    _ => $"Job {id} is {job.Status.ToString().ToLowerInvariant()}; its image exists once it has succeeded.",
                },
            });
        var file = await images.DownloadAsync(id, index, job.Input.OutputFormat, ct) ?? throw NotFound(id);
        return new ImageDownload(file, ImageFile.ContentType(job.Input.OutputFormat), ImageStore.BlobName(id, index, job.Input.OutputFormat));
    }

    /// <summary>The 400 problem for a request the model cannot run, naming the field.</summary>
    public static Problem Refusal(InvalidGenerationRequestException e) => new()
    {
        Type = ProblemTypes.Validation, Title = "Invalid request", Status = 400, Detail = e.Reason,
        Errors = new Dictionary<string, string[]> { [e.ParamName ?? "request"] = [e.Reason] },
    };

    private static ProblemException NotFound(string id) => new(new Problem
    {
        Type = ProblemTypes.NotFound, Title = "Job not found", Status = 404, Detail = $"There is no job {id}.",
    });
}

/// <summary>An image file as the image route serves it.</summary>
public sealed record ImageDownload(BinaryData File, string ContentType, string FileName);
