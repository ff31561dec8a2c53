using Microsoft.Azure.Functions.Worker;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>Housekeeping on a timer: queue the submissions that were interrupted before their message was sent.</summary>
public sealed class MaintenanceFunctions(QueuedJobSweeper sweeper)
{
    [Function("RequeueInterruptedSubmissions")]
    public Task Sweep([TimerTrigger("0 */1 * * * *")] TimerInfo timer, CancellationToken ct) => sweeper.SweepAsync(ct);
}
