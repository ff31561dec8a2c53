using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace SdFunctions.Jobs;

/// <summary>How one delivery of a job's message ended: the run span's <c>sdf.job.outcome</c> tag (<see cref="RunOutcomes.Tag"/>).</summary>
public enum RunOutcome
{
    /// <summary>No such job (deleted, or a message for a job that was rolled back).</summary>
    UnknownJob,
    /// <summary>The job had ended before this delivery: it is left as it is.</summary>
    AlreadyEnded,
    /// <summary>Another delivery runs the job and is alive: this one comes back later.</summary>
    BackedOff,
    /// <summary>This delivery claimed the job: it runs it now.</summary>
    Claimed,
    Succeeded,
    Failed,
    Canceled,
    /// <summary>The job was finished or taken over by another delivery while this one ran: it wrote nothing.</summary>
    LostOwnership,
    /// <summary>The host is stopping: the job was given back and queued again.</summary>
    Interrupted,
    /// <summary>The run failed on a fault that may pass: the job was given back for the host's next delivery.</summary>
    Retry,
}

public static class RunOutcomes
{
    public static string Tag(this RunOutcome outcome) => outcome switch
    {
        RunOutcome.UnknownJob => "unknown_job",
        RunOutcome.AlreadyEnded => "already_ended",
        RunOutcome.BackedOff => "backed_off",
        RunOutcome.LostOwnership => "lost_ownership",
        _ => outcome.ToString().ToLowerInvariant(),
    };

    /// <summary>Whether the run span ends in error.</summary>
    public static bool IsError(this RunOutcome outcome) => outcome is RunOutcome.Failed or RunOutcome.Retry;
}

/// <summary>A delivery's claim on a job: <see cref="RunOutcome.Claimed"/> with the job and this run's owner token, or why not.</summary>
public sealed record RunClaim(RunOutcome Outcome, JobRecord? Job, string? Owner = null);

/// <summary>
/// Every change of a job's state after it was created, each with its side effects in one place: the record (ETag-checked,
/// so of two writers only one ends a job), the ended-jobs metric, the completed webhook, and the running mark the sweep
/// watches (<see cref="JobMark.Running"/>). Claim, Complete, Fail, Cancel and Release are the worker's; RequestCancel is the
/// API's; FailPoisoned and FailNeverQueued end the jobs whose messages were used up or never sent.
/// </summary>
public sealed class JobTransitions(JobStore store, JobsTelemetry telemetry, Webhooks.WebhookSender webhooks, IOptions<JobsOptions> options,
    TimeProvider time, ILogger<JobTransitions> logger)
{
    private JobsOptions Options => options.Value;

    /// <summary>
    /// Claims job <paramref name="id"/> for a new run (a fresh owner token, attempt + 1) unless it has ended or a live run holds it.
    /// A job whose runs died <see cref="JobsOptions.MaxDequeueCount"/> times is failed instead, and one whose cancel was asked
    /// before any live run holds it is canceled. A claimed run has its running mark set (first: should this instance die from
    /// here on, the sweep queues the job again) and its pending mark cleared (it was delivered).
    /// </summary>
    public async Task<RunClaim> ClaimAsync(string id, string firstPhase, CancellationToken ct)
    {
        var job = await store.GetAsync(id, ct);
        if (job is null) return new(RunOutcome.UnknownJob, null);
        if (job.IsFinished) return new(RunOutcome.AlreadyEnded, job);
        if (job.CancelRequested && !HasLiveOwner(job))
        {
            await CancelAsync(id, usage: null, ct);
            return new(RunOutcome.Canceled, job);
        }

        string owner = Guid.NewGuid().ToString("N");
        var started = time.GetUtcNow();
        bool abandoned = false;
        var (claimed, written) = await store.ChangeAsync(id, r =>
        {
            abandoned = false; // the change may run again after a conflicting write
            if (r.IsFinished || HasLiveOwner(r)) return null;
            if (r.Status == JobStatus.Running && r.Attempt >= Options.MaxDequeueCount) { abandoned = true; return Abandoned(r); }
            return r with
            {
                Status = JobStatus.Running, Attempt = r.Attempt + 1, StartedAt = started, Progress = new JobProgress(0, null, Phase: firstPhase), Error = null,
                RunOwner = owner, HeartbeatAt = started,
            };
        }, ct);
        if (claimed is null) return new(RunOutcome.UnknownJob, null);
        if (written && abandoned)
        {
            logger.LogError("Job {JobId} failed: its run stopped {Attempts} times without finishing", id, claimed.Attempt);
            await EndedAsync(claimed);
            return new(RunOutcome.Failed, claimed);
        }
        if (claimed.IsFinished) return new(RunOutcome.AlreadyEnded, claimed);
        if (claimed.RunOwner != owner) return new(RunOutcome.BackedOff, claimed);

        await webhooks.NotifyAsync(claimed, Webhooks.Events.Started);
        await MarkQuietlyAsync(JobMark.Running, id);
        await ClearMarkQuietlyAsync(JobMark.Pending, id);
        return new(RunOutcome.Claimed, claimed, owner);
    }

    /// <summary>The run's images are stored: the job succeeded. False when the run no longer owns the job (nothing written).</summary>
    public async Task<bool> CompleteAsync(string id, string owner, JobOutput output, JobProgress progress, JobUsage usage, CancellationToken ct) =>
        (await EndAsync(id, r => !IsOwnedBy(r, owner) ? null : r with
        {
            Status = JobStatus.Succeeded, CompletedAt = time.GetUtcNow(), Progress = progress, Output = output, Usage = usage,
            LastError = null, RunOwner = null,
        }, ct)).Written;

    /// <summary>
    /// Fails the run's job. Clients see a refusal as it is, and for a server-side failure (one with a correlation id) only a
    /// safe text and that id; the full problem stays in <see cref="JobRecord.LastError"/>.
    /// </summary>
    public async Task FailAsync(string id, string owner, Problem problem, JobUsage usage, CancellationToken ct)
    {
        var shown = problem.CorrelationId is { } correlationId ? ServerProblems.Shown(problem, correlationId) : problem;
        await EndAsync(id, r => !IsOwnedBy(r, owner) ? null : r with
        {
            Status = JobStatus.Failed, CompletedAt = time.GetUtcNow(), Error = shown, LastError = problem, RunOwner = null, Usage = usage,
        }, ct);
        await ClearMarkQuietlyAsync(JobMark.Running, id); // also when another writer ended it first: no run of this job is left
    }

    /// <summary>Ends a job whose cancel was asked for: its run stopped (with what it used) or it never ran (<paramref name="usage"/> null).</summary>
    public async Task<bool> CancelAsync(string id, JobUsage? usage, CancellationToken ct)
    {
        var (_, canceled) = await EndAsync(id, r => r.IsFinished ? null
            : r with { Status = JobStatus.Canceled, CompletedAt = time.GetUtcNow(), RunOwner = null, Usage = usage ?? r.Usage }, ct);
        await ClearMarkQuietlyAsync(JobMark.Running, id);
        logger.LogInformation("Job {JobId} canceled", id);
        return canceled;
    }

    /// <summary>
    /// The API's cancel: a queued job is canceled at once; a running one is flagged and its run stops at its next progress check
    /// (and ends the job). Returns the job (null: no such job) and, for one that had ended, how.
    /// </summary>
    public async Task<(JobRecord? Job, JobStatus? EndedAs)> RequestCancelAsync(string id, CancellationToken ct)
    {
        JobStatus? endedAs = null;
        var (job, _) = await EndAsync(id, r =>
        {
            endedAs = r.IsFinished ? r.Status : null;
            if (r.IsFinished) return null;
            return r.Status == JobStatus.Queued
                ? r with { Status = JobStatus.Canceled, CancelRequested = true, CompletedAt = time.GetUtcNow() }
                : r with { CancelRequested = true };
        }, ct);
        return (job, endedAs);
    }

    /// <summary>
    /// The poison queue's end of a job whose deliveries are used up: failed with the last failure's correlation id, unless a live
    /// run still holds it (a duplicate delivery's failures are not the job's).
    /// </summary>
    public async Task<JobRecord?> FailPoisonedAsync(string id, CancellationToken ct)
    {
        var (job, _) = await EndAsync(id, r => r.IsFinished || HasLiveOwner(r) ? null : r with
        {
            Status = JobStatus.Failed, CompletedAt = time.GetUtcNow(), RunOwner = null, Usage = JobUsage.Nothing(billable: false),
            Error = r.LastError is { CorrelationId: { } correlationId } last ? ServerProblems.Shown(last, correlationId)
                : ServerProblems.GenerationFailed(ServerProblems.NewCorrelationId()) with
                {
                    Detail = $"The job could not be processed after {Options.MaxDequeueCount} attempts.",
                },
        }, ct);
        if (job is { IsFinished: true }) await ClearMarkQuietlyAsync(JobMark.Running, id);
        return job;
    }

    /// <summary>The sweep's end of a job whose message was never sent and that waited longer than <see cref="JobsOptions.MaxQueueWait"/>.</summary>
    public async Task<bool> FailNeverQueuedAsync(string id, CancellationToken ct) =>
        (await EndAsync(id, r => r.Status != JobStatus.Queued || r.Attempt > 0 ? null : r with
        {
            Status = JobStatus.Failed, CompletedAt = time.GetUtcNow(), Usage = JobUsage.Nothing(billable: false),
            Error = ServerProblems.Unavailable($"The job could not be queued within {Options.MaxQueueWait.TotalMinutes:0} minutes; submit it again."),
        }, ct)).Written;

    /// <summary>
    /// Gives the run's job back (queued, no owner) for the next delivery. Best effort, as storage may be why the run stopped:
    /// a stale heartbeat frees the job anyway.
    /// </summary>
    public async Task ReleaseAsync(string id, string owner, Problem? lastError)
    {
        try
        {
            await store.UpdateAsync(id, r => !IsOwnedBy(r, owner) ? null
                : r with { Status = JobStatus.Queued, RunOwner = null, HeartbeatAt = null, LastError = lastError ?? r.LastError }, CancellationToken.None);
        }
        catch (Exception e) when (StorageErrors.IsOutage(e)) { logger.LogWarning(e, "Could not release job {JobId}; it is taken over once its heartbeat is stale", id); }
    }

    /// <summary>The run's job is no longer watched by the sweep (its run ended, or the host retries its message).</summary>
    public Task ClearRunningMarkAsync(string id) => ClearMarkQuietlyAsync(JobMark.Running, id);

    public bool IsOwnedBy(JobRecord r, string owner) => !r.IsFinished && r.Status == JobStatus.Running && r.RunOwner == owner;

    public bool HasLiveOwner(JobRecord r) => r.HasLiveOwner(time.GetUtcNow(), Options.OwnerTimeout);

    /// <summary>Writes <paramref name="change"/>; when it wrote and the job has ended, what every end does.</summary>
    /// <returns>The record after the change (or as it was, when the change declined), and whether this call wrote it.</returns>
    private async Task<(JobRecord? Job, bool Written)> EndAsync(string id, Func<JobRecord, JobRecord?> change, CancellationToken ct)
    {
        var (job, written) = await store.ChangeAsync(id, change, ct);
        if (written && job is { IsFinished: true }) await EndedAsync(job);
        return (job, written);
    }

    private async Task EndedAsync(JobRecord job)
    {
        telemetry.RecordEnded(job.Status);
        await webhooks.NotifyAsync(job, Webhooks.Events.Completed);
        await ClearMarkQuietlyAsync(JobMark.Running, job.Id);
    }

    /// <summary>A job whose every run died mid-generation (its instance crashed or was killed): failed, not run again.</summary>
    private JobRecord Abandoned(JobRecord r) => r with
    {
        Status = JobStatus.Failed, CompletedAt = time.GetUtcNow(), RunOwner = null, Usage = JobUsage.Nothing(billable: false),
        Error = ServerProblems.GenerationFailed(ServerProblems.NewCorrelationId()) with
        {
            Detail = $"The job's run stopped {r.Attempt} times before it finished (its worker was stopped or crashed).",
        },
    };

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
}
