using System.Diagnostics;
using System.Globalization;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Jobs;

/// <summary>
/// What the queue function does: run a job once its message arrives. Delivery is at least once, so every
/// step is safe to repeat: a finished or canceled job is left alone, a job whose worker died runs again
/// (attempt + 1) and rewrites the same image, a malformed message goes straight to the poison queue.
/// </summary>
public sealed class GenerationWorker(JobStore store, JobQueue queue, ImageStore images, PipelineHolder pipelines,
    IOptions<JobsOptions> options, TimeProvider time, ILogger<GenerationWorker> logger)
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
        var job = await store.GetAsync(id, ct);
        if (job is null) { logger.LogWarning("Message for unknown job {JobId} ignored", id); return; }
        if (job.IsFinished) { logger.LogInformation("Job {JobId} already {Status}; redelivered message ignored", id, job.Status); return; }
        if (job.CancelRequested) { await FinishCanceledAsync(id, ct); return; }

        var started = time.GetUtcNow();
        job = await store.UpdateAsync(id, r => r.IsFinished ? null : r with
        {
            Status = JobStatus.Running, Attempt = r.Attempt + 1, StartedAt = started, Progress = new JobProgress(0, null), Error = null,
        }, ct);
        if (job is null || job.Status != JobStatus.Running) return;
        logger.LogInformation("Job {JobId} attempt {Attempt} started", id, job.Attempt);

        var total = Stopwatch.StartNew();
        using var userCancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
        try
        {
            bool wasLoaded = pipelines.IsLoaded;
            var loadWatch = Stopwatch.StartNew();
            var pipeline = await pipelines.GetAsync(ct);
            double loadSeconds = wasLoaded ? 0 : loadWatch.Elapsed.TotalSeconds;

            var request = ToRequest(job.Input);
            var reporter = new LatestStep();
            using var stopMonitor = new CancellationTokenSource();
            var monitor = MonitorAsync(id, reporter, userCancel, stopMonitor.Token);
            GenerationResult result;
            try
            {
                result = await pipeline.GenerateAsync(request, reporter, userCancel.Token);
            }
            finally
            {
                await stopMonitor.CancelAsync();
                await monitor;
            }

            var uploadWatch = Stopwatch.StartNew();
            byte[] png = await result.ToPngAsync(ct);
            await images.UploadAsync(id, png, new Dictionary<string, string>
            {
                ["seed"] = result.Seed.ToString(CultureInfo.InvariantCulture),
                ["steps"] = result.Steps.ToString(CultureInfo.InvariantCulture),
                ["scheduler"] = result.Scheduler,
                ["decoder"] = result.Decoder,
                ["model"] = Uri.EscapeDataString(pipeline.Bundle.Name), // metadata must be ASCII
            }, ct);
            var t = result.Timings;
            var timings = new JobTimings
            {
                QueuedSeconds = (started - job.CreatedAt).TotalSeconds,
                ModelLoadSeconds = loadSeconds,
                EncodeSeconds = t.Encode.TotalSeconds,
                DenoiseSeconds = t.Denoise.TotalSeconds,
                StepMedianSeconds = t.Steps.Count == 0 ? 0 : t.Steps.Order().ElementAt(t.Steps.Count / 2).TotalSeconds,
                DecodeSeconds = t.Decode.TotalSeconds,
                UploadSeconds = uploadWatch.Elapsed.TotalSeconds,
                TotalSeconds = total.Elapsed.TotalSeconds,
            };
            int steps = t.Steps.Count;
            await store.UpdateAsync(id, r => r.IsFinished ? null : r with
            {
                Status = JobStatus.Succeeded, CompletedAt = time.GetUtcNow(), Progress = new JobProgress(steps, steps),
                Output = new JobOutput
                {
                    Seed = result.Seed, Width = result.Width, Height = result.Height, Scheduler = result.Scheduler,
                    Steps = result.Steps, GuidanceScale = result.GuidanceScale, Decoder = result.Decoder, UNetBatch = result.UNetBatch,
                    Conditioning = result.Conditioning, UNetCalls = result.UNetCalls, Model = pipeline.Bundle.Name, Timings = timings,
                },
                LastError = null,
            }, ct);
            logger.LogInformation("Job {JobId} succeeded in {Seconds:F1} s", id, total.Elapsed.TotalSeconds);
        }
        catch (OperationCanceledException) when (userCancel.IsCancellationRequested && !ct.IsCancellationRequested)
        {
            await FinishCanceledAsync(id, CancellationToken.None);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // The host is stopping: leave the job running; the message comes back and the next attempt redoes it.
            logger.LogWarning("Job {JobId} interrupted by shutdown; it will run again", id);
            throw;
        }
        catch (InvalidGenerationRequestException e)
        {
            await FailAsync(id, GenerationService.Refusal(e), CancellationToken.None); // the same input would fail again: no retry
        }
        catch (Exception e)
        {
            var problem = Failure($"{e.GetType().Name}: {e.Message}");
            if (dequeueCount >= Options.MaxDequeueCount)
            {
                logger.LogError(e, "Job {JobId} failed on its last attempt", id);
                await FailAsync(id, problem, CancellationToken.None);
                return;
            }
            logger.LogWarning(e, "Job {JobId} attempt failed; it will be retried", id);
            await store.UpdateAsync(id, r => r.IsFinished ? null : r with { Status = JobStatus.Queued, LastError = problem }, CancellationToken.None);
            throw;
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
        var job = await store.UpdateAsync(message.JobId, r => r.IsFinished ? null : r with
        {
            Status = JobStatus.Failed, CompletedAt = time.GetUtcNow(),
            Error = r.LastError ?? Failure($"The job could not be processed after {Options.MaxDequeueCount} attempts."),
        }, ct);
        if (job is not null) logger.LogError("Job {JobId} ended in the poison queue: {Status}", message.JobId, job.Status);
    }

    // Writes progress every interval and watches for a cancel request, while the generation runs.
    private async Task MonitorAsync(string id, LatestStep reporter, CancellationTokenSource userCancel, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(Options.ProgressInterval, time, stop);
                var (step, totalSteps) = reporter.Current;
                var record = await store.UpdateAsync(id, r => r.Status != JobStatus.Running || r.Progress.Step == step ? null
                    : r with { Progress = new JobProgress(step, totalSteps) }, stop);
                if (record is null || record.CancelRequested || record.Status == JobStatus.Canceled) await userCancel.CancelAsync();
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { return; }
            catch (Azure.RequestFailedException e) { logger.LogWarning(e, "Progress update for job {JobId} failed", id); }
        }
    }

    private async Task FinishCanceledAsync(string id, CancellationToken ct)
    {
        await store.UpdateAsync(id, r => r.IsFinished ? null : r with { Status = JobStatus.Canceled, CompletedAt = time.GetUtcNow() }, ct);
        logger.LogInformation("Job {JobId} canceled", id);
    }

    private async Task FailAsync(string id, Problem problem, CancellationToken ct) =>
        await store.UpdateAsync(id, r => r.IsFinished ? null : r with { Status = JobStatus.Failed, CompletedAt = time.GetUtcNow(), Error = problem, LastError = problem }, ct);

    private static Problem Failure(string detail) => new()
    {
        Type = ProblemTypes.GenerationFailed, Title = "Generation failed", Status = 500, Detail = detail,
    };

    internal static GenerationRequest ToRequest(GenerationInput input) => new()
    {
        Prompt = input.Prompt, NegativePrompt = input.NegativePrompt, Steps = input.Steps, GuidanceScale = input.GuidanceScale,
        Seed = input.Seed, Scheduler = input.Scheduler, Decoder = input.Decoder, Width = input.Width, Height = input.Height,
    };

    private static string Truncate(string text) => text.Length <= 200 ? text : text[..200] + "…";

    /// <summary>Keeps the last reported step; the monitor reads it. Reports arrive on the generating thread.</summary>
    private sealed class LatestStep : IProgress<GenerationProgress>
    {
        private long _packed;
        public void Report(GenerationProgress value) => Interlocked.Exchange(ref _packed, ((long)value.Step << 32) | (uint)value.Total);
        public (int Step, int? Total) Current
        {
            get
            {
                long v = Interlocked.Read(ref _packed);
                int totalSteps = (int)(v & 0xFFFFFFFF);
                return ((int)(v >> 32), totalSteps == 0 ? null : totalSteps);
            }
        }
    }
}
