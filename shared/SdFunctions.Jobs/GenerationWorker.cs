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
public sealed class GenerationWorker(JobTransitions transitions, JobStore store, JobQueue queue, ImageStore images, PipelineHolder pipelines,
    JobsTelemetry telemetry, IOptions<JobsOptions> options, TimeProvider time, ILogger<GenerationWorker> logger)
{
    private JobsOptions Options => options.Value;

    /// <summary>Parse → claim → generate → publish → complete; how it ended is the run span's outcome.</summary>
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
        // A new instance loads the model first (seconds): the claim says so, as the run's first phase.
        var claim = await transitions.ClaimAsync(id, pipelines.IsLoaded ? JobProgress.Generating : JobProgress.Loading, ct);
        switch (claim.Outcome)
        {
            case RunOutcome.UnknownJob: logger.LogWarning("Message for unknown job {JobId} ignored", id); break;
            case RunOutcome.AlreadyEnded: logger.LogInformation("Job {JobId} already {Status}; redelivered message ignored", id, claim.Job!.Status); break;
            case RunOutcome.BackedOff:
                // Another delivery runs it and is alive. Come back once its heartbeat could have gone stale: it may still die.
                logger.LogWarning("Job {JobId} is running under another live delivery; this one backs off for {Delay}", id, Options.OwnerTimeout);
                await queue.SendAsync(id, claim.Job!.TraceParent, ct, Options.OwnerTimeout);
                break;
        }
        if (claim.Outcome != RunOutcome.Claimed) { Tag(span, claim.Outcome); return; }
        var job = claim.Job!;
        span?.SetTag("sdf.job.attempt", job.Attempt);
        if (job.Attempt == 1) telemetry.RecordQueueWait(job.StartedAt!.Value - job.CreatedAt);
        logger.LogInformation("Job {JobId} attempt {Attempt} started", id, job.Attempt);
        var run = new Run(job, claim.Owner!, dequeueCount, CancellationTokenSource.CreateLinkedTokenSource(ct));
        try { Tag(span, await RunAsync(run, ct)); }
        catch when (run.Outcome is RunOutcome.Interrupted or RunOutcome.Retry)
        {
            Tag(span, run.Outcome);
            throw; // the host delivers the message again
        }
        finally { run.Dispose(); }
    }

    /// <summary>Generates, publishes and completes the claimed job, while the monitor keeps its progress and heartbeat.</summary>
    private async Task<RunOutcome> RunAsync(Run run, CancellationToken ct)
    {
        using var stopMonitor = new CancellationTokenSource();
        var reporter = new LatestStep();
        var monitor = MonitorAsync(run, reporter, stopMonitor.Token);
        try
        {
            var generated = await GenerateAsync(run, reporter);
            run.Token.ThrowIfCancellationRequested(); // a stop that came after the last step
            // From here the images exist only in this process: storage errors are retried for a while, not turned into a rerun.
            run.Phase = JobProgress.Publishing;
            var publish = new PublishWindow(run.Job.Id, time.GetUtcNow() + Options.PublishRetryWindow, time, logger);
            var uploaded = await UploadAsync(run, generated, publish, ct);
            await StopMonitorAsync(); // before the outcome is written, so nothing else writes the record meanwhile
            if (uploaded is null) return RunOutcome.LostOwnership;
            run.Token.ThrowIfCancellationRequested(); // canceled while it uploaded
            return await CompleteAsync(run, generated, uploaded.Value, publish, ct);
        }
        catch (Exception e)
        {
            await StopMonitorAsync();
            run.Outcome = Classify(e, run, ct);
            await EndAsync(run, e);
            if (run.Outcome is RunOutcome.Interrupted or RunOutcome.Retry) throw;
            return run.Outcome;
        }

        async Task StopMonitorAsync()
        {
            await stopMonitor.CancelAsync();
            await monitor; // never throws: an outage only pauses it
        }
    }

    /// <summary>The model (loaded once per instance), then the job's images one after another, seeds seed + k.</summary>
    private async Task<Generated> GenerateAsync(Run run, IProgress<GenerationProgress> reporter)
    {
        bool wasLoaded = pipelines.IsLoaded;
        var loadWatch = Stopwatch.StartNew();
        if (!wasLoaded) run.Phase = JobProgress.Loading;
        StableDiffusionPipeline pipeline;
        try { pipeline = await pipelines.GetAsync(run.Token); }
        catch (Exception e) when (e is not OperationCanceledException) { throw new ModelLoadException(e); }
        run.Phase = JobProgress.Generating;
        double loadSeconds = wasLoaded ? 0 : loadWatch.Elapsed.TotalSeconds;
        var input = run.Job.Input;
        var initImage = await LoadInitImageAsync(run.Job, run.Token);
        run.Usage = UsageMeter.Start(pipeline.Bundle.Name);
        var results = new List<GenerationResult>(input.N);
        // The UNet's batch is fixed by guidance (an optimized UNet is compiled for it), and on these CPUs a bigger batch is no
        // faster per image (the note on issue 15 has the measurement).
        for (int k = 0; k < input.N; k++)
        {
            var result = await pipeline.GenerateAsync(input.ToRequest(initImage) with { Seed = input.Seed + k },
                LatestStep.ForImage(reporter, k, input.N), run.Token);
            telemetry.RecordGeneration(result);
            run.Usage.Add(result);
            results.Add(result);
        }
        return new Generated(pipeline.Bundle.Name, results, loadSeconds);
    }

    /// <summary>
    /// Encodes and uploads the images, unless the job was finished or taken over meanwhile (null then); how long the upload took.
    /// The monitor still runs: the heartbeat goes on while an outage is waited out.
    /// </summary>
    private async Task<TimeSpan?> UploadAsync(Run run, Generated generated, PublishWindow window, CancellationToken ct)
    {
        var (id, input, results) = (run.Job.Id, run.Job.Input, generated.Results);
        var files = new List<byte[]>(results.Count);
        foreach (var result in results)
            files.Add(await result.EncodeAsync(input.OutputFormat, input.Quality, GenerationParameters.Format(input.Prompt, input.NegativePrompt, result, generated.Model), ct));
        if (await window.RetryAsync(() => store.GetAsync(id, ct), "reading the job", ct) is not { } current || !transitions.IsOwnedBy(current, run.Owner))
        {
            logger.LogWarning("Job {JobId} was finished or taken over during this run; its image is not written", id);
            return null;
        }
        var uploadWatch = Stopwatch.StartNew();
        using (JobsTelemetry.StartUpload()?.SetTag("sdf.image.bytes", files.Sum(f => f.Length)).SetTag("sdf.images", files.Count))
        {
            for (int k = 0; k < files.Count; k++)
            {
                int index = k;
                await window.RetryAsync(async () =>
                {
                    await images.UploadAsync(id, index, input.OutputFormat, files[index], ImageMetadata(input, results[index], generated.Model), ct);
                    return true;
                }, $"uploading image {index}", ct);
            }
        }
        return uploadWatch.Elapsed;
    }

    /// <summary>Records the job as succeeded (retried through an outage within the same window as the upload).</summary>
    private async Task<RunOutcome> CompleteAsync(Run run, Generated generated, TimeSpan upload, PublishWindow window, CancellationToken ct)
    {
        string id = run.Job.Id;
        int iterations = generated.Results.Sum(r => r.Timings.Steps.Count);
        var output = Output(run, generated, upload);
        var usage = run.Usage!.Stop(billable: true);
        if (!await window.RetryAsync(() => transitions.CompleteAsync(id, run.Owner, output, new JobProgress(iterations, iterations, output.Steps), usage, ct),
                "recording the outcome", ct))
            return RunOutcome.LostOwnership;
        logger.LogInformation("Job {JobId} succeeded in {Seconds:F1} s", id, run.Elapsed.TotalSeconds);
        return RunOutcome.Succeeded;
    }

    /// <summary>
    /// The time a finished run keeps trying to publish (<see cref="JobsOptions.PublishRetryWindow"/>): a storage step that fails with
    /// an outage is tried again after 0.5 s, 1 s, 2 s … (at most 5 s apart) until it succeeds or the window ends, then its error stands.
    /// </summary>
    private sealed class PublishWindow(string id, DateTimeOffset deadline, TimeProvider time, ILogger logger)
    {
        public async Task<T> RetryAsync<T>(Func<Task<T>> step, string what, CancellationToken ct)
        {
            var delay = TimeSpan.FromSeconds(0.5);
            for (int attempt = 1; ; attempt++)
            {
                try { return await step(); }
                catch (Exception e) when (StorageErrors.IsOutage(e) && time.GetUtcNow() + delay < deadline && !ct.IsCancellationRequested)
                {
                    logger.LogWarning(e, "Storage failed {What} for job {JobId} (try {Attempt}); the finished images are kept and it is tried again until {Deadline:O}",
                        what, id, attempt, deadline);
                    await Task.Delay(delay, time, ct);
                    delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
                }
            }
        }
    }

    /// <summary>What ran, as the job's output: the first image's parameters (all share them but the seed) and the job's timings.</summary>
    private static JobOutput Output(Run run, Generated generated, TimeSpan upload)
    {
        var (results, first, input) = (generated.Results, generated.Results[0], run.Job.Input);
        var timings = new JobTimings
        {
            QueuedSeconds = (run.Job.StartedAt!.Value - run.Job.CreatedAt).TotalSeconds,
            ModelLoadSeconds = generated.LoadSeconds,
            EncodeSeconds = results.Sum(r => r.Timings.Encode.TotalSeconds + r.Timings.ImageEncode.TotalSeconds),
            DenoiseSeconds = results.Sum(r => r.Timings.Denoise.TotalSeconds),
            StepMedianSeconds = Median(results.SelectMany(r => r.Timings.Steps)),
            DecodeSeconds = results.Sum(r => r.Timings.Decode.TotalSeconds),
            UploadSeconds = upload.TotalSeconds,
            TotalSeconds = run.Elapsed.TotalSeconds,
        };
        return new JobOutput
        {
            Seed = first.Seed, Width = first.Width, Height = first.Height, Scheduler = first.Scheduler,
            Steps = first.Steps, GuidanceScale = first.GuidanceScale, Decoder = first.Decoder, DecodeTileSize = first.DecodeTileSize, UNetBatch = first.UNetBatch,
            Conditioning = first.Conditioning, UNetCalls = results.Sum(r => r.UNetCalls), Model = generated.Model, Timings = timings,
            CacheInterval = first.CacheInterval > 1 ? first.CacheInterval : null, CacheSchedule = first.CacheSchedule,
            ShallowUNetCalls = first.CacheInterval > 1 ? results.Sum(r => r.ShallowUNetCalls) : null,
            PeakMemoryBytes = results.Max(r => r.PeakMemoryBytes),
            Images = [.. results.Select((r, k) => new JobImage(k, r.Seed, null))],
            ContentType = ImageFile.ContentType(input.OutputFormat),
            Reproducible = first.Reproducible ? null : false,
        };
    }

    /// <summary>Why a run stopped, in one place: each exception is one outcome.</summary>
    private RunOutcome Classify(Exception e, Run run, CancellationToken hostStopping) => e switch
    {
        OperationCanceledException when run.Reason == StopReason.CancelRequested && !hostStopping.IsCancellationRequested => RunOutcome.Canceled,
        OperationCanceledException when run.Reason == StopReason.LostOwnership && !hostStopping.IsCancellationRequested => RunOutcome.LostOwnership,
        OperationCanceledException when hostStopping.IsCancellationRequested => RunOutcome.Interrupted,
        // The same input would fail again: no retry.
        InvalidGenerationRequestException => RunOutcome.Failed,
        _ when run.DequeueCount >= Options.MaxDequeueCount || run.Job.Attempt >= Options.MaxDequeueCount => RunOutcome.Failed,
        _ => RunOutcome.Retry,
    };

    /// <summary>What each way of stopping does to the job.</summary>
    private async Task EndAsync(Run run, Exception e)
    {
        string id = run.Job.Id;
        switch (run.Outcome)
        {
            case RunOutcome.Canceled:
                await transitions.CancelAsync(id, run.Usage?.Stop(billable: true) ?? JobUsage.Nothing(billable: true), CancellationToken.None);
                break;
            case RunOutcome.LostOwnership:
                logger.LogWarning("Job {JobId} was finished or taken over by another delivery; this run stopped", id);
                break;
            case RunOutcome.Interrupted:
                // The host is stopping: give the job back and queue it afresh, so another instance (or this one restarted) runs it
                // at once. The interrupted message stays invisible for as long as the host's lease on it (minutes); when it comes
                // back the job is finished or running, and it is ignored or backs off. The running mark stays: should the send fail,
                // the sweep queues the job. (The host may also stop the worker before this runs: the mark covers that too.)
                logger.LogWarning("Job {JobId} interrupted by shutdown; queued to run again", id);
                await transitions.ReleaseAsync(id, run.Owner, lastError: null);
                try { await queue.SendAsync(id, run.Job.TraceParent, CancellationToken.None); }
                catch (Exception send) when (StorageErrors.IsOutage(send)) { logger.LogWarning(send, "Could not queue job {JobId} again; its own message comes back later", id); }
                break;
            case RunOutcome.Failed when e is InvalidGenerationRequestException refused:
                // The request's fault, so what ran (if anything) is billable.
                await transitions.FailAsync(id, run.Owner, GenerationService.Refusal(refused), run.Usage?.Stop(billable: true) ?? JobUsage.Nothing(billable: true), CancellationToken.None);
                break;
            case RunOutcome.Failed:
                var problem = InternalError(e);
                logger.LogError(e, "Job {JobId} failed on its last attempt (correlation id {CorrelationId})", id, problem.CorrelationId);
                await transitions.FailAsync(id, run.Owner, problem, run.Usage?.Stop(billable: false) ?? JobUsage.Nothing(billable: false), CancellationToken.None);
                break;
            case RunOutcome.Retry:
                var retried = InternalError(e);
                logger.LogWarning(e, "Job {JobId} attempt failed; it will be retried (correlation id {CorrelationId})", id, retried.CorrelationId);
                // The host puts this message back for the retry, so the sweep need not; cleared before the release, which lets
                // another delivery start (and set its own mark).
                await transitions.ClearRunningMarkAsync(id);
                await transitions.ReleaseAsync(id, run.Owner, retried);
                break;
        }
    }

    /// <summary>The failure as the record keeps it (the exception's text is for the operator: clients see <see cref="ServerProblems.Shown"/>).</summary>
    private static Problem InternalError(Exception e) => e is ModelLoadException load
        ? ServerProblems.ModelUnavailable(ServerProblems.NewCorrelationId()) with { Detail = $"{load.InnerException!.GetType().Name}: {load.InnerException.Message}" }
        : new()
        {
            Type = ProblemTypes.GenerationFailed, Title = "Generation failed", Status = 500, CorrelationId = ServerProblems.NewCorrelationId(),
            Detail = $"{e.GetType().Name}: {e.Message}",
        };

    /// <summary>The model did not load: the job is not at fault and is not billed.</summary>
    private sealed class ModelLoadException(Exception inner) : Exception("The model could not be loaded.", inner);

    /// <summary>For the poison queue: the job's retries are used up (or its message was unreadable). No poller may wait forever.</summary>
    public async Task HandlePoisonAsync(string messageText, CancellationToken ct)
    {
        if (JobMessage.TryParse(messageText) is not { } message)
        {
            logger.LogError("Unreadable message in the poison queue, dropped: {Message}", Truncate(messageText));
            return;
        }
        if (await transitions.FailPoisonedAsync(message.JobId, ct) is { } job)
            logger.LogError("Job {JobId} ended in the poison queue: {Status}", message.JobId, job.Status);
    }

    private static void Tag(Activity? span, RunOutcome outcome)
    {
        span?.SetTag("sdf.job.outcome", outcome.Tag());
        if (outcome.IsError()) span?.SetStatus(ActivityStatusCode.Error, outcome.Tag());
    }

    /// <summary>
    /// While the job runs: writes progress (and a heartbeat at least every <see cref="JobsOptions.HeartbeatInterval"/>), stops the
    /// run when a cancel is requested or the job is finished or taken over by anyone else. A storage outage only pauses it: the
    /// generation goes on and the checks resume when storage is back.
    /// </summary>
    private async Task MonitorAsync(Run run, LatestStep reporter, CancellationToken stop)
    {
        var (id, owner) = (run.Job.Id, run.Owner);
        var lastBeat = time.GetUtcNow();
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(Options.ProgressInterval, time, stop);
                var (step, totalSteps, steps) = reporter.Current;
                string phase = run.Phase;
                var now = time.GetUtcNow();
                bool beatDue = now - lastBeat >= Options.HeartbeatInterval;
                var record = await store.UpdateAsync(id, r => !transitions.IsOwnedBy(r, owner) || (r.Progress.Step == step && r.Progress.Phase == phase && !beatDue) ? null
                    : r with { Progress = new JobProgress(step, totalSteps, steps, phase), HeartbeatAt = now }, stop);
                if (record is not null && transitions.IsOwnedBy(record, owner) && record.HeartbeatAt == now) lastBeat = now;
                if (record is null || !transitions.IsOwnedBy(record, owner)) run.Stop(record?.CancelRequested == true ? StopReason.CancelRequested : StopReason.LostOwnership);
                else if (record.CancelRequested) run.Stop(StopReason.CancelRequested);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { return; }
            catch (Exception e)
            {
                logger.LogWarning(e, "Progress update for job {JobId} failed; the generation goes on", id);
            }
        }
    }

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
        public static IProgress<GenerationProgress> ForImage(IProgress<GenerationProgress> target, int index, int count) =>
            index == 0 && count == 1 ? target : new Offset(target, index, count);

        private sealed class Offset(IProgress<GenerationProgress> target, int index, int count) : IProgress<GenerationProgress>
        {
            public void Report(GenerationProgress p) => target.Report(p with { Step = index * p.Total + p.Step, Total = count * p.Total });
        }
    }

    private enum StopReason { None, CancelRequested, LostOwnership }

    /// <summary>One claimed run: the job as claimed, its owner token, its cancellation (the host's token, or the monitor stopping it, with why), what it used.</summary>
    private sealed class Run(JobRecord job, string owner, long dequeueCount, CancellationTokenSource source) : IDisposable
    {
        private int _reason;
        private readonly Stopwatch _watch = Stopwatch.StartNew();
        public JobRecord Job => job;
        public string Owner => owner;
        public long DequeueCount => dequeueCount;
        public CancellationToken Token => source.Token;
        public StopReason Reason => (StopReason)Volatile.Read(ref _reason);
        public TimeSpan Elapsed => _watch.Elapsed;

        /// <summary>From the first generation: what a failure or a cancel records.</summary>
        public UsageMeter? Usage { get; set; }
        public RunOutcome Outcome { get; set; } = RunOutcome.Claimed;

        /// <summary>What the run is doing (<see cref="JobProgress.Phases"/>), set by the run, read by the monitor.</summary>
        public string Phase { get => Volatile.Read(ref _phase); set => Volatile.Write(ref _phase, value); }
        private string _phase = job.Progress.Phase ?? JobProgress.Generating;

        public void Stop(StopReason reason)
        {
            if (Interlocked.CompareExchange(ref _reason, (int)reason, (int)StopReason.None) == (int)StopReason.None) source.Cancel();
        }

        public void Dispose() => source.Dispose();
    }

    private sealed record Generated(string Model, List<GenerationResult> Results, double LoadSeconds);
}
