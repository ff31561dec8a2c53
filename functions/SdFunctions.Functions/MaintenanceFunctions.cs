using Microsoft.Azure.Functions.Worker;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>Housekeeping on a timer: queue the jobs whose submission or run was interrupted (see <see cref="InterruptedJobSweeper"/>).</summary>
public sealed class MaintenanceFunctions(InterruptedJobSweeper sweeper)
{
    // Also on startup: an instance that comes back after a crash picks up the runs it lost at once. A sweep is a list of
    // marks and does nothing twice, so the extra runs on scale-out cost little.
    [Function("RequeueInterruptedJobs")]
    public Task Sweep([TimerTrigger("0 */1 * * * *", RunOnStartup = true)] TimerInfo timer, CancellationToken ct) => sweeper.SweepAsync(ct);
}
