using System.Diagnostics;
using System.Globalization;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Jobs;

/// <summary>
/// What the queue function does: run a job once its message arrives. Delivery is at least once, and a message can be
/// held by two instances at once (a lease that expired under a live instance), so every run has an owner: a fresh token
/// per delivery, recorded when it starts, kept alive by a heartbeat. Only the owner writes progress and the outcome; a
/// delivery that finds a live owner backs off, one that finds a dead owner (stale heartbeat) takes over (attempt + 1), or
/// fails the job once its runs died <see cref="JobsOptions.MaxDequeueCount"/> times (a job that kills its instance must not
/// do so forever). A run keeps a running mark (<see cref="JobMark.Running"/>) so that the sweep queues the job again when
/// the instance dies with it. A finished or canceled job is left alone; a malformed message goes straight to the poison queue.
/// </summary>
public sealed class GenerationWorker(JobStore store, JobQueue queue, ImageStore images, PipelineHolder pipelines, JobsTelemetry telemetry,
    Webhooks.WebhookQueue webhooks, IOptions<JobsOptions> options, TimeProvider time, ILogger<GenerationWorker> logger)
{
    private JobsOptions Options => options.Value;

    public async Task ProcessAsync(string messageText, long dequeueCount, CancellationToken ct)
    {
        if (JobMessage.TryParse(messageText) is not { } message)
        {
            logger.LogError("Malformed generation message moved to the poison queue: {Message}", Truncate(messageText));
            await queue.SendToPoisonAsync(messageText, ct);
            return;
        }
        string id = message.JobId;
        using var span = JobsTelemetry.StartProcess(id, message.TraceParent, queue.QueueName);
        using var scope = logger.BeginScope(new Dictionary<string, object> { ["JobId"] = id });
        var job = await store.GetAsync(id, ct);
        if (job is null) { logger.LogWarning("Message for unknown job {JobId} ignored", id); Outcome(span, "unknown_job"); return; }
        if (job.IsFinished) { logger.LogInformation("Job {JobId} already {Status}; redelivered message ignored", id, job.Status); Outcome(span, "already_ended"); return; }
        if (job.CancelRequested && !HasLiveOwner(job)) { await FinishCanceledAsync(id, ct); Outcome(span, "canceled"); return; }

        string owner = Guid.NewGuid().ToString("N");
        var started = time.GetUtcNow();
        bool abandoned = false;
        job = await store.UpdateAsync(id, r =>
        {
            abandoned = false; // the change may run again after a conflicting write
            if (r.IsFinished || HasLiveOwner(r)) return null;
            if (r.Status == JobStatus.Running && r.Attempt >= Options.MaxDequeueCount) { abandoned = true; return Abandoned(r); }
            return r with
            {
                Status = JobStatus.Running, Attempt = r.Attempt + 1, StartedAt = started, Progress = new JobProgress(0, null), Error = null,
                RunOwner = owner, HeartbeatAt = started,
            };
        }, ct);
        if (job is null) return;
        if (job.IsFinished)
        {
            if (abandoned)
            {
                logger.LogError("Job {JobId} failed: its run stopped {Attempts} times without finishing", id, job.Attempt);
                telemetry.RecordEnded(JobStatus.Failed);
                await webhooks.NotifyAsync(job, Webhooks.Events.Completed);
            }
            Outcome(span, abandoned ? "failed" : "already_ended", error: abandoned);
            await ClearMarkQuietlyAsync(JobMark.Running, id);
            return;
        }
        if (job.RunOwner != owner)
        {
            // Another delivery runs it and is alive. Come back once its heartbeat could have gone stale: it may still die.
            logger.LogWarning("Job {JobId} is running under another live delivery; this one backs off for {Delay}", id, Options.OwnerTimeout);
            await queue.SendAsync(id, job.TraceParent, ct, Options.OwnerTimeout);
            Outcome(span, "backed_off");
            return;
        }
        span?.SetTag("sdf.job.attempt", job.Attempt);
        if (job.Attempt == 1) telemetry.RecordQueueWait(started - job.CreatedAt);
        logger.LogInformation("Job {JobId} attempt {Attempt} started", id, job.Attempt);
        await webhooks.NotifyAsync(job, Webhooks.Events.Started);
        await MarkQuietlyAsync(JobMark.Running, id); // first: should this instance die from here on, the sweep queues the job again
        await ClearMarkQuietlyAsync(JobMark.Pending, id); // it was delivered: the sweep need not queue it

        var total = Stopwatch.StartNew();
        UsageMeter? usage = null; // from the first generation: what a failure or a cancel records
        var run = new RunControl(CancellationTokenSource.CreateLinkedTokenSource(ct));
        using var stopMonitor = new CancellationTokenSource();
        var reporter = new LatestStep();
        var monitor = MonitorAsync(id, owner, reporter, run, stopMonitor.Token);
        try
        {
            bool wasLoaded = pipelines.IsLoaded;
            var loadWatch = Stopwatch.StartNew();
            var pipeline = await pipelines.GetAsync(run.Token);
            double loadSeconds = wasLoaded ? 0 : loadWatch.Elapsed.TotalSeconds;

            var initImage = await LoadInitImageAsync(job, run.Token);
            var input = job.Input;
            usage = UsageMeter.Start(pipeline.Bundle.Name);
            var results = new List<GenerationResult>(input.N);
            // One image after another, seeds seed + k: the UNet's batch is fixed by guidance (an optimized UNet is compiled for it),
            // and on these CPUs a bigger batch is no faster per image (the note on issue 15 has the measurement).
            for (int k = 0; k < input.N; k++)
            {
                var result = await pipeline.GenerateAsync(ToRequest(input, initImage) with { Seed = input.Seed + k }, reporter.ForImage(k, input.N), run.Token);
                telemetry.RecordGeneration(result);
                usage.Add(result);
                results.Add(result);
            }
            await StopMonitorAsync(); // before the outcome is written, so nothing else writes the record meanwhile
            run.Token.ThrowIfCancellationRequested(); // a stop that came after the last step

            var files = new List<byte[]>(results.Count);
            foreach (var result in results)
                files.Add(await result.EncodeAsync(input.OutputFormat, input.Quality,
                    GenerationParameters.Format(input.Prompt, input.NegativePrompt, result, pipeline.Bundle.Name), ct));
            // No upload for a job that was finished or taken over meanwhile.
            if (await store.GetAsync(id, ct) is not { IsFinished: false } current || current.RunOwner != owner)
            {
                logger.LogWarning("Job {JobId} was finished or taken over during this run; its image is not written", id);
                Outcome(span, "lost_ownership");
                return;
            }
            var uploadWatch = Stopwatch.StartNew();
            using (JobsTelemetry.StartUpload()?.SetTag("sdf.image.bytes", files.Sum(f => f.Length)).SetTag("sdf.images", files.Count))
            {
                for (int k = 0; k < files.Count; k++)
                    await images.UploadAsync(id, k, input.OutputFormat, files[k], ImageMetadata(input, results[k], pipeline.Bundle.Name), ct);
            }
            var first = results[0];
            var timings = new JobTimings
            {
                QueuedSeconds = (started - job.CreatedAt).TotalSeconds,
                ModelLoadSeconds = loadSeconds,
                EncodeSeconds = results.Sum(r => r.Timings.Encode.TotalSeconds + r.Timings.ImageEncode.TotalSeconds),
                DenoiseSeconds = results.Sum(r => r.Timings.Denoise.TotalSeconds),
                StepMedianSeconds = Median(results.SelectMany(r => r.Timings.Steps)),
                DecodeSeconds = results.Sum(r => r.Timings.Decode.TotalSeconds),
                UploadSeconds = uploadWatch.Elapsed.TotalSeconds,
                TotalSeconds = total.Elapsed.TotalSeconds,
            };
            int iterations = results.Sum(r => r.Timings.Steps.Count);
            var finalUsage = usage.Stop(billable: true);
            var (finished, succeeded) = await store.ChangeAsync(id, r => !IsOwnedBy(r, owner) ? null : r with
            {
                Status = JobStatus.Succeeded, CompletedAt = time.GetUtcNow(), Progress = new JobProgress(iterations, iterations, first.Steps),
                Output = new JobOutput
                {
                    Seed = first.Seed, Width = first.Width, Height = first.Height, Scheduler = first.Scheduler,
                    Steps = first.Steps, GuidanceScale = first.GuidanceScale, Decoder = first.Decoder, DecodeTileSize = first.DecodeTileSize, UNetBatch = first.UNetBatch,
                    Conditioning = first.Conditioning, UNetCalls = results.Sum(r => r.UNetCalls), Model = pipeline.Bundle.Name, Timings = timings,
                    CacheInterval = first.CacheInterval > 1 ? first.CacheInterval : null, CacheSchedule = first.CacheSchedule,
                    ShallowUNetCalls = first.CacheInterval > 1 ? results.Sum(r => r.ShallowUNetCalls) : null,
                    PeakMemoryBytes = results.Max(r => r.PeakMemoryBytes),
                    Images = [.. results.Select((r, k) => new JobImage(k, r.Seed, null))],
                    ContentType = ImageFile.ContentType(input.OutputFormat),
                    Reproducible = first.Reproducible ? null : false,
                },
                Usage = finalUsage, LastError = null, RunOwner = null,
            }, ct);
            if (!succeeded) { Outcome(span, "lost_ownership"); return; }
            telemetry.RecordEnded(JobStatus.Succeeded);
            await webhooks.NotifyAsync(finished!, Webhooks.Events.Completed);
            Outcome(span, "succeeded");
            await ClearMarkQuietlyAsync(JobMark.Running, id);
            logger.LogInformation("Job {JobId} succeeded in {Seconds:F1} s", id, total.Elapsed.TotalSeconds);
        }
        catch (OperationCanceledException) when (run.Reason == StopReason.CancelRequested && !ct.IsCancellationRequested)
        {
            await FinishCanceledAsync(id, CancellationToken.None, usage?.Stop(billable: true) ?? JobUsage.Nothing(billable: true));
            Outcome(span, "canceled");
        }
        catch (OperationCanceledException) when (run.Reason == StopReason.LostOwnership && !ct.IsCancellationRequested)
        {
            logger.LogWarning("Job {JobId} was finished or taken over by another delivery; this run stopped", id);
            Outcome(span, "lost_ownership");
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // The host is stopping: give the job back and queue it afresh, so another instance (or this one restarted) runs it
            // at once. The interrupted message stays invisible for as long as the host's lease on it (minutes); when it comes
            // back the job is finished or running, and it is ignored or backs off. The running mark stays: should the send fail,
            // the sweep queues the job. (The host may also stop the worker before this runs: the mark covers that too.)
            logger.LogWarning("Job {JobId} interrupted by shutdown; queued to run again", id);
            Outcome(span, "interrupted");
            await ReleaseQuietlyAsync(id, owner, lastError: null);
            try { await queue.SendAsync(id, job.TraceParent, CancellationToken.None); }
            catch (Exception e) when (StorageErrors.IsOutage(e)) { logger.LogWarning(e, "Could not queue job {JobId} again; its own message comes back later", id); }
            throw;
        }
        catch (InvalidGenerationRequestException e)
        {
            // The same input would fail again: no retry. The request's fault, so what ran (if anything) is billable.
            await FailAsync(id, owner, GenerationService.Refusal(e), usage?.Stop(billable: true) ?? JobUsage.Nothing(billable: true), CancellationToken.None);
            Outcome(span, "failed", error: true);
        }
        catch (Exception e)
        {
            string correlationId = ServerProblems.NewCorrelationId();
            var internalError = new Problem
            {
                Type = ProblemTypes.GenerationFailed, Title = "Generation failed", Status = 500, CorrelationId = correlationId,
                Detail = $"{e.GetType().Name}: {e.Message}",
            };
            if (dequeueCount >= Options.MaxDequeueCount || job.Attempt >= Options.MaxDequeueCount)
            {
                logger.LogError(e, "Job {JobId} failed on its last attempt (correlation id {CorrelationId})", id, correlationId);
                await FailAsync(id, owner, internalError, usage?.Stop(billable: false) ?? JobUsage.Nothing(billable: false), CancellationToken.None);
                Outcome(span, "failed", error: true);
                return;
            }
            logger.LogWarning(e, "Job {JobId} attempt failed; it will be retried (correlation id {CorrelationId})", id, correlationId);
            Outcome(span, "retry", error: true);
            // The host puts this message back for the retry, so the sweep need not; cleared before the release, which lets
            // another delivery start (and set its own mark).
            await ClearMarkQuietlyAsync(JobMark.Running, id);
            await ReleaseQuietlyAsync(id, owner, internalError);
            throw;
        }
        finally
        {
            await StopMonitorAsync();
            run.Dispose();
        }

        async Task StopMonitorAsync()
        {
            await stopMonitor.CancelAsync();
            await monitor; // never throws: an outage only pauses it
        }
    }

    /// <summary>For the poison queue: the job's retries are used up (or its message was unreadable). No poller may wait forever.</summary>
    public async Task HandlePoisonAsync(string messageText, CancellationToken ct)
    {
        if (JobMessage.TryParse(messageText) is not { } message)
        {
            logger.LogError("Unreadable message in the poison queue, dropped: {Message}", Truncate(messageText));
            return;
        }
        // A live run is left to finish: a duplicate delivery's failures are not the job's.
        var (job, failed) = await store.ChangeAsync(message.JobId, r => r.IsFinished || HasLiveOwner(r) ? null : r with
        {
            Status = JobStatus.Failed, CompletedAt = time.GetUtcNow(), RunOwner = null, Usage = JobUsage.Nothing(billable: false),
            Error = r.LastError is { CorrelationId: { } correlationId } ? ServerProblems.GenerationFailed(correlationId)
                : ServerProblems.GenerationFailed(ServerProblems.NewCorrelationId()) with
                {
                    Detail = $"The job could not be processed after {Options.MaxDequeueCount} attempts.",
                },
        }, ct);
        if (job is null) return;
        logger.LogError("Job {JobId} ended in the poison queue: {Status}", message.JobId, job.Status);
        if (failed)
        {
            telemetry.RecordEnded(JobStatus.Failed);
            await webhooks.NotifyAsync(job, Webhooks.Events.Completed);
        }
        if (job.IsFinished) await ClearMarkQuietlyAsync(JobMark.Running, message.JobId);
    }

    /// <summary>How the run span ended, as a tag (and an error status for a failure).</summary>
    private static void Outcome(System.Diagnostics.Activity? span, string outcome, bool error = false)
    {
        span?.SetTag("sdf.job.outcome", outcome);
        if (error) span?.SetStatus(System.Diagnostics.ActivityStatusCode.Error, outcome);
    }

    private bool HasLiveOwner(JobRecord r) => r.HasLiveOwner(time.GetUtcNow(), Options.OwnerTimeout);

    /// <summary>A job whose every run died mid-generation (its instance crashed or was killed): failed, not run again.</summary>
    private JobRecord Abandoned(JobRecord r) => r with
    {
        Status = JobStatus.Failed, CompletedAt = time.GetUtcNow(), RunOwner = null, Usage = JobUsage.Nothing(billable: false),
        Error = ServerProblems.GenerationFailed(ServerProblems.NewCorrelationId()) with
        {
            Detail = $"The job's run stopped {r.Attempt} times before it finished (its worker was stopped or crashed).",
        },
    };

    private static bool IsOwnedBy(JobRecord r, string owner) => !r.IsFinished && r.Status == JobStatus.Running && r.RunOwner == owner;

    /// <summary>
    /// While the job runs: writes progress (and a heartbeat at least every <see cref="JobsOptions.HeartbeatInterval"/>), stops the
    /// run when a cancel is requested or the job is finished or taken over by anyone else. A storage outage only pauses it: the
    /// generation goes on and the checks resume when storage is back.
    /// </summary>
    private async Task MonitorAsync(string id, string owner, LatestStep reporter, RunControl run, CancellationToken stop)
    {
        var lastBeat = time.GetUtcNow();
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(Options.ProgressInterval, time, stop);
                var (step, totalSteps, steps) = reporter.Current;
                var now = time.GetUtcNow();
                bool beatDue = now - lastBeat >= Options.HeartbeatInterval;
                var record = await store.UpdateAsync(id, r => !IsOwnedBy(r, owner) || (r.Progress.Step == step && !beatDue) ? null
                    : r with { Progress = new JobProgress(step, totalSteps, steps), HeartbeatAt = now }, stop);
                if (record is not null && IsOwnedBy(record, owner) && record.HeartbeatAt == now) lastBeat = now;
                if (record is null || !IsOwnedBy(record, owner)) run.Stop(record?.CancelRequested == true ? StopReason.CancelRequested : StopReason.LostOwnership);
                else if (record.CancelRequested) run.Stop(StopReason.CancelRequested);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { return; }
            catch (Exception e)
            {
                logger.LogWarning(e, "Progress update for job {JobId} failed; the generation goes on", id);
            }
        }
    }

    /// <param name="usage">What the stopped run used; null for a job canceled before it ran.</param>
    private async Task FinishCanceledAsync(string id, CancellationToken ct, JobUsage? usage = null)
    {
        var (job, canceled) = await store.ChangeAsync(id, r => r.IsFinished ? null
            : r with { Status = JobStatus.Canceled, CompletedAt = time.GetUtcNow(), RunOwner = null, Usage = usage ?? r.Usage }, ct);
        if (canceled)
        {
            telemetry.RecordEnded(JobStatus.Canceled);
            await webhooks.NotifyAsync(job!, Webhooks.Events.Completed);
        }
        await ClearMarkQuietlyAsync(JobMark.Running, id);
        logger.LogInformation("Job {JobId} canceled", id);
    }

    /// <summary>Records the outcome; clients see the refusal as is, or for a server-side failure only a safe text and the correlation id.</summary>
    private async Task FailAsync(string id, string owner, Problem problem, JobUsage usage, CancellationToken ct)
    {
        var shown = problem.CorrelationId is { } correlationId ? ServerProblems.GenerationFailed(correlationId) : problem;
        var (job, failed) = await store.ChangeAsync(id, r => !IsOwnedBy(r, owner) ? null : r with
        {
            Status = JobStatus.Failed, CompletedAt = time.GetUtcNow(), Error = shown, LastError = problem, RunOwner = null, Usage = usage,
        }, ct);
        if (failed)
        {
            telemetry.RecordEnded(JobStatus.Failed);
            await webhooks.NotifyAsync(job!, Webhooks.Events.Completed);
        }
        await ClearMarkQuietlyAsync(JobMark.Running, id);
    }

    // Back to queued for the next delivery; best effort (storage may be the reason we are here): a stale heartbeat frees it anyway.
    private async Task ReleaseQuietlyAsync(string id, string owner, Problem? lastError)
    {
        try
        {
            await store.UpdateAsync(id, r => !IsOwnedBy(r, owner) ? null
                : r with { Status = JobStatus.Queued, RunOwner = null, HeartbeatAt = null, LastError = lastError ?? r.LastError }, CancellationToken.None);
        }
        catch (Exception e) when (StorageErrors.IsOutage(e)) { logger.LogWarning(e, "Could not release job {JobId}; it is taken over once its heartbeat is stale", id); }
    }

    // Marks are a safety net: without storage the run goes on, and the sweep clears what is left over.
    private async Task MarkQuietlyAsync(JobMark mark, string id)
    {
        try { await store.MarkAsync(mark, id, CancellationToken.None); }
        catch (Exception e) when (StorageErrors.IsOutage(e)) { logger.LogWarning(e, "Could not set the {Mark} mark of job {JobId}", mark, id); }
    }

    private async Task ClearMarkQuietlyAsync(JobMark mark, string id)
    {
        try { await store.ClearMarkAsync(mark, id, CancellationToken.None); }
        catch (Exception e) when (StorageErrors.IsOutage(e)) { logger.LogWarning(e, "Could not clear the {Mark} mark of job {JobId}", mark, id); }
    }

    internal static GenerationRequest ToRequest(GenerationInput input, InitImage? initImage) => new()
    {
        Prompt = input.Prompt, NegativePrompt = input.NegativePrompt, Steps = input.Steps, GuidanceScale = input.GuidanceScale,
        Seed = input.Seed, Scheduler = input.Scheduler, Decoder = input.Decoder, TiledDecode = input.TiledDecode,
        CacheInterval = input.CacheInterval, CacheSchedule = input.CacheSchedule, Width = input.Width, Height = input.Height,
        InitImage = initImage, Strength = initImage is null ? null : input.Strength,
    };

    /// <summary>Image-to-image: the job's stored picture, decoded and fitted again (every delivery redoes the job from it).</summary>
    private async Task<InitImage?> LoadInitImageAsync(JobRecord job, CancellationToken ct)
    {
        if (job.Input.Image is null) return null;
        var bytes = await store.DownloadInputImageAsync(job.Id, ct)
            ?? throw new InvalidGenerationRequestException("image", "The job's init image is no longer stored (it expired or was deleted); submit the job again.");
        return InitImage.Decode(bytes.ToArray(), job.Input.Width, job.Input.Height);
    }

    /// <summary>
    /// An image blob's metadata: the generation parameters (as the PNG's text, for any format), one per key. Metadata is ASCII:
    /// texts are percent-encoded, and a prompt longer than 2000 encoded characters is cut (the job record keeps it whole).
    /// </summary>
    internal static Dictionary<string, string> ImageMetadata(GenerationInput input, GenerationResult result, string model)
    {
        var inv = CultureInfo.InvariantCulture;
        var metadata = new Dictionary<string, string>
        {
            ["prompt"] = Escaped(input.Prompt),
            ["negativeprompt"] = Escaped(input.NegativePrompt),
            ["seed"] = result.Seed.ToString(inv),
            ["steps"] = result.Steps.ToString(inv),
            ["scheduler"] = result.Scheduler,
            ["guidancescale"] = result.GuidanceScale.ToString(inv),
            ["size"] = $"{result.Width}x{result.Height}",
            ["decoder"] = result.Decoder,
            ["model"] = Escaped(model),
        };
        if (result.Strength is { } strength) metadata["strength"] = strength.ToString(inv);
        return metadata;

        static string Escaped(string text)
        {
            string escaped = Uri.EscapeDataString(text);
            if (escaped.Length <= 2000) return escaped;
            int cut = escaped[1999] == '%' ? 1999 : escaped[1998] == '%' ? 1998 : 2000; // never inside a %XX
            return escaped[..cut];
        }
    }

    private static double Median(IEnumerable<TimeSpan> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count == 0 ? 0 : sorted[sorted.Count / 2].TotalSeconds;
    }

    private static string Truncate(string text) => text.Length <= 200 ? text : text[..200] + "…";

    /// <summary>Keeps the last reported step; the monitor reads it. Reports arrive on the generating thread.</summary>
    private sealed class LatestStep : IProgress<GenerationProgress>
    {
        private object? _latest; // a boxed GenerationProgress, swapped whole
        public void Report(GenerationProgress value) => Volatile.Write(ref _latest, value);
        public (int Step, int? Total, int? Steps) Current =>
            Volatile.Read(ref _latest) is GenerationProgress p ? (p.Step, p.Total, p.Steps) : (0, null, null);

        /// <summary>Image <paramref name="index"/> of <paramref name="count"/>: its steps counted after the images before it.</summary>
        public IProgress<GenerationProgress> ForImage(int index, int count) => index == 0 && count == 1 ? this
            : new Offset(this, index, count);

        private sealed class Offset(LatestStep target, int index, int count) : IProgress<GenerationProgress>
        {
            public void Report(GenerationProgress p) => target.Report(p with { Step = index * p.Total + p.Step, Total = count * p.Total });
        }
    }

    private enum StopReason { None, CancelRequested, LostOwnership }

    /// <summary>The run's cancellation: the host's token, or the monitor stopping it, with why.</summary>
    private sealed class RunControl(CancellationTokenSource source) : IDisposable
    {
        private int _reason;
        public CancellationToken Token => source.Token;
        public StopReason Reason => (StopReason)Volatile.Read(ref _reason);

        public void Stop(StopReason reason)
        {
            if (Interlocked.CompareExchange(ref _reason, (int)reason, (int)StopReason.None) == (int)StopReason.None) source.Cancel();
        }

        public void Dispose() => source.Dispose();
    }
}
