using Microsoft.Azure.Functions.Worker;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>The queue side: run a job per message; fail for good the jobs whose messages end in the poison queue.</summary>
public sealed class GenerationQueueFunctions(GenerationWorker worker)
{
    public const string PoisonQueue = JobQueue.Name + "-poison";

    [Function("ProcessGeneration")]
    public Task Process([QueueTrigger(JobQueue.Name, Connection = JobsServiceCollectionExtensions.StorageSetting)] string message,
        long dequeueCount, CancellationToken ct) =>
        worker.ProcessAsync(message, dequeueCount, ct);

    [Function("FailPoisonedGeneration")]
    public Task Poison([QueueTrigger(PoisonQueue, Connection = JobsServiceCollectionExtensions.StorageSetting)] string message,
        CancellationToken ct) =>
        worker.HandlePoisonAsync(message, ct);
}
