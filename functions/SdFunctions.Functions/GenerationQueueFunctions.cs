using Azure.Storage.Queues.Models;
using Microsoft.Azure.Functions.Worker;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>The queue side: run a job per message; fail for good the jobs whose messages end in the poison queue.</summary>
public sealed class GenerationQueueFunctions(GenerationWorker worker)
{
    public const string PoisonQueue = JobQueue.Name + "-poison";

    /// <summary>The message as the SDK's type: its dequeue count (1 on the first delivery) tells the worker which attempt this is.</summary>
    [Function("ProcessGeneration")]
    public Task Process([QueueTrigger(JobQueue.Name, Connection = JobsServiceCollectionExtensions.StorageSetting)] QueueMessage message,
        CancellationToken ct) =>
        worker.ProcessAsync(message.MessageText, message.DequeueCount, ct);

    [Function("FailPoisonedGeneration")]
    public Task Poison([QueueTrigger(PoisonQueue, Connection = JobsServiceCollectionExtensions.StorageSetting)] string message,
        CancellationToken ct) =>
        worker.HandlePoisonAsync(message, ct);
}
