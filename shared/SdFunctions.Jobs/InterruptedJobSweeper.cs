using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace SdFunctions.Jobs;

/// <summary>
/// Queues the jobs that would otherwise wait for a message that never comes, or comes only after the host's lease on it
/// (minutes), going by the marks they left (<see cref="JobMark"/>). Run every minute, and when an instance starts, by a
/// timer function.
/// <list type="bullet">
/// <item>A submission whose submitter crashed or lost storage between the record and the message (its pending mark is older
/// than <see cref="JobsOptions.RequeueAfter"/>) is queued, or failed once it waited longer than <see cref="JobsOptions.MaxQueueWait"/>.</item>
/// <item>A run whose instance died (its running mark and its heartbeat are older than <see cref="JobsOptions.OwnerTimeout"/>)
/// is queued again; the delivery takes it over as the next attempt. The mark is touched, so it is queued once per timeout.</item>
/// </list>
/// </summary>
public sealed class InterruptedJobSweeper(JobStore store, JobTransitions transitions, JobQueue queue, JobsTelemetry telemetry, IOptions<JobsOptions> options, TimeProvider time,
    ILogger<InterruptedJobSweeper> logger)
{
    /// <summary>What a sweep did: never-queued submissions queued or failed, dead runs queued again, marks of settled jobs cleared.</summary>
    public sealed record SweepResult(int Requeued, int Failed, int Resumed, int Cleared);

    public async Task<SweepResult> SweepAsync(CancellationToken ct)
    {
        var (requeued, failed, cleared) = await SweepPendingAsync(ct);
        var (resumed, settled) = await SweepRunningAsync(ct);
        return new SweepResult(requeued, failed, resumed, cleared + settled);
    }

    private async Task<(int Requeued, int Failed, int Cleared)> SweepPendingAsync(CancellationToken ct)
    {
        var o = options.Value;
        int requeued = 0, failed = 0, cleared = 0;
        var now = time.GetUtcNow();
        foreach (string id in await ListAsync(JobMark.Pending, o.RequeueAfter, now, ct))
        {
            var job = await store.GetAsync(id, ct);
            if (job is { Status: JobStatus.Queued, Attempt: 0, CancelRequested: false })
            {
                if (now - job.CreatedAt > o.MaxQueueWait)
                {
                    await transitions.FailNeverQueuedAsync(id, ct);
                    logger.LogError("Job {JobId} was never queued and is failed after {Minutes:0} minutes", id, (now - job.CreatedAt).TotalMinutes);
                    failed++;
                }
                else
                {
                    await queue.SendAsync(id, job.TraceParent, ct);
                    telemetry.RecordRequeued("never_queued");
                    logger.LogWarning("Job {JobId} was never queued (its submission was interrupted); queued by the sweep", id);
                    requeued++;
                }
            }
            else cleared++; // gone (rolled back), or it has run or been canceled: nothing to do
            await store.ClearMarkAsync(JobMark.Pending, id, ct);
        }
        return (requeued, failed, cleared);
    }

    private async Task<(int Resumed, int Cleared)> SweepRunningAsync(CancellationToken ct)
    {
        var o = options.Value;
        int resumed = 0, cleared = 0;
        var now = time.GetUtcNow();
        foreach (string id in await ListAsync(JobMark.Running, o.OwnerTimeout, now, ct))
        {
            var job = await store.GetAsync(id, ct);
            if (job is null || job.IsFinished)
            {
                await store.ClearMarkAsync(JobMark.Running, id, ct);
                cleared++;
            }
            else if (!job.HasLiveOwner(now, o.OwnerTimeout))
            {
                // Dead (or given back at shutdown without its message): the delivery of this message starts the next attempt.
                await queue.SendAsync(id, job.TraceParent, ct);
                await store.MarkAsync(JobMark.Running, id, ct);
                telemetry.RecordRequeued("run_stopped");
                logger.LogWarning("Job {JobId} stopped during attempt {Attempt} (last heartbeat {Heartbeat:O}); queued again by the sweep",
                    id, job.Attempt, job.HeartbeatAt);
                resumed++;
            }
        }
        return (resumed, cleared);
    }

    /// <summary>The well-formed ids with a mark of this kind last set at least <paramref name="age"/> ago.</summary>
    private async Task<List<string>> ListAsync(JobMark mark, TimeSpan age, DateTimeOffset now, CancellationToken ct)
    {
        var ids = new List<string>();
        await foreach (var (id, markedAt) in store.ListMarksAsync(mark, ct))
            if (now - markedAt >= age && JobIds.IsWellFormed(id)) ids.Add(id);
        return ids;
    }
}
