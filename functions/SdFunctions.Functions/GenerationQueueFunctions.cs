using System.Globalization;
using Microsoft.Azure.Functions.Worker;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>The queue side: run a job per message; fail for good the jobs whose messages end in the poison queue.</summary>
public sealed class GenerationQueueFunctions(GenerationWorker worker)
{
    public const string PoisonQueue = JobQueue.Name + "-poison";

    [Function("ProcessGeneration")]
    public Task Process([QueueTrigger(JobQueue.Name, Connection = JobsServiceCollectionExtensions.StorageSetting)] string message,
        FunctionContext context, CancellationToken ct) =>
        worker.ProcessAsync(message, DequeueCount(context), ct);

    [Function("FailPoisonedGeneration")]
    public Task Poison([QueueTrigger(PoisonQueue, Connection = JobsServiceCollectionExtensions.StorageSetting)] string message,
        CancellationToken ct) =>
        worker.HandlePoisonAsync(message, ct);

    /// <summary>How many times the host has handed out this message (1 on the first delivery), from the trigger's metadata.</summary>
    internal static long DequeueCount(FunctionContext context) =>
        context.BindingContext.BindingData.TryGetValue("DequeueCount", out object? value) && value is not null
            ? Convert.ToInt64(value, CultureInfo.InvariantCulture)
            : 1;
}
