using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace SdFunctions.Jobs;

/// <summary>
/// Finds submissions whose message was never sent (their submitter crashed or lost storage between the record and the
/// queue: their pending mark is still there after <see cref="JobsOptions.RequeueAfter"/>) and queues them, or fails them
/// once they have waited longer than <see cref="JobsOptions.MaxQueueWait"/>. Run every minute by a timer function.
/// </summary>
public sealed class QueuedJobSweeper(JobStore store, JobQueue queue, IOptions<JobsOptions> options, TimeProvider time, ILogger<QueuedJobSweeper> logger)
{
    public sealed record SweepResult(int Requeued, int Failed, int Cleared);

    public async Task<SweepResult> SweepAsync(CancellationToken ct)
    {
        var o = options.Value;
        int requeued = 0, failed = 0, cleared = 0;
        var now = time.GetUtcNow();
        var stale = new List<string>();
        await foreach (var (id, since) in store.ListPendingAsync(ct))
            if (now - since >= o.RequeueAfter && JobIds.IsWellFormed(id)) stale.Add(id);

        foreach (string id in stale)
        {
            var job = await store.GetAsync(id, ct);
            if (job is { Status: JobStatus.Queued, Attempt: 0, CancelRequested: false })
            {
                if (now - job.CreatedAt > o.MaxQueueWait)
                {
                    await store.UpdateAsync(id, r => r.Status != JobStatus.Queued || r.Attempt > 0 ? null : r with
                    {
                        Status = JobStatus.Failed, CompletedAt = now,
                        Error = ServerProblems.Unavailable($"The job could not be queued within {o.MaxQueueWait.TotalMinutes:0} minutes; submit it again."),
                    }, ct);
                    logger.LogError("Job {JobId} was never queued and is failed after {Minutes:0} minutes", id, (now - job.CreatedAt).TotalMinutes);
                    failed++;
                }
                else
                {
                    await queue.SendAsync(id, ct);
                    logger.LogWarning("Job {JobId} was never queued (its submission was interrupted); queued by the sweep", id);
                    requeued++;
                }
            }
            else cleared++; // gone (rolled back), or it has run or been canceled: nothing to do
            await store.ClearPendingAsync(id, ct);
        }
        return new SweepResult(requeued, failed, cleared);
    }
}
